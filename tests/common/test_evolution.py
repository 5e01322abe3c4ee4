"""Evolution engine on a proxy problem with a brute-forced optimum: invariants, optimum, determinism, resume."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest
from moonlit.common.nas import (
    AllConstraints,
    BandConstraint,
    ConstraintUnsatisfiable,
    EvolutionConfig,
    EvolutionSearch,
    MacsConstraint,
    PredicateConstraint,
    SearchProblem,
    pareto_indices,
)

DIMS, LEVELS = 8, 4
_rng = np.random.default_rng(1234)
# separable knapsack: level k of dimension i is worth VALUE[i, k] and costs COST[i, k]; both grow with k
VALUE = np.cumsum(_rng.uniform(0.5, 2.0, (DIMS, LEVELS)), axis=1)
COST = np.cumsum(_rng.integers(1, 6, (DIMS, LEVELS)), axis=1).astype(float)
BUDGET, DELTA = 50.0, 6.0

ALL = np.array(list(itertools.product(range(LEVELS), repeat=DIMS)))  # 65536 candidates
ALL_VALUE = VALUE[np.arange(DIMS), ALL].sum(1)
ALL_COST = COST[np.arange(DIMS), ALL].sum(1)
FEASIBLE = (ALL_COST <= BUDGET) & (ALL_COST >= BUDGET - DELTA)
OPTIMUM = ALL_VALUE[FEASIBLE].max()


def cost(x: tuple[int, ...]) -> float:
    return float(sum(COST[i, k] for i, k in enumerate(x)))


def value(x: tuple[int, ...]) -> float:
    return float(sum(VALUE[i, k] for i, k in enumerate(x)))


def make_problem(constraint=None, calls: list | None = None, probs: list | None = None) -> SearchProblem:
    def sample(rng):
        return tuple(int(v) for v in rng.integers(0, LEVELS, DIMS))

    def mutate(x, rng, prob):
        if probs is not None:
            probs.append(prob)
        return tuple(int(rng.integers(LEVELS)) if rng.random() < prob else k for k in x)

    def crossover(a, b, rng):
        return tuple(a[i] if rng.random() < 0.5 else b[i] for i in range(DIMS))

    def fitness(batch):
        if calls is not None:
            calls.append(list(batch))
        return [value(x) for x in batch]

    if constraint is None:
        constraint = BandConstraint(lambda batch: [cost(x) for x in batch], "cost", BUDGET, BUDGET - DELTA)
    return SearchProblem(sample=sample, mutate=mutate, crossover=crossover,
                         encode=lambda x: "".join(map(str, x)), decode=lambda s: tuple(int(c) for c in s),
                         fitness=fitness, constraint=constraint)


CONFIG = EvolutionConfig(population=48, parents=24, mutations=12, crossovers=12, iterations=25,
                         mutation_prob=0.3, max_attempts=60, seed=0)


def test_proxy_problem_is_not_trivial() -> None:
    assert 0.001 < FEASIBLE.mean() < 0.2  # the band rejects most of the space
    assert ALL_VALUE[FEASIBLE].argmax() != ALL_VALUE.argmax()  # the unconstrained best is infeasible


@pytest.mark.parametrize("seed", [0, 1])
def test_invariants_and_optimum(seed: int) -> None:
    calls: list[list] = []
    probs: list[float] = []
    config = EvolutionConfig(**{**CONFIG.__dict__, "seed": seed})
    search = EvolutionSearch(make_problem(calls=calls, probs=probs), config)
    best = search.run()
    evaluated = [x for batch in calls for x in batch]
    # no candidate evaluated twice; every evaluated one is in the records and meets the band
    assert len(evaluated) == len(set(evaluated)) == len(search.records)
    assert all(BUDGET - DELTA <= cost(x) <= BUDGET for x in evaluated)
    assert all(r.objectives["cost"] == pytest.approx(cost(r.candidate)) for r in search.records.values())
    # elitism: the best never decreases and is the best ever evaluated
    bests = [entry.best for entry in search.log]
    assert len(bests) == CONFIG.iterations + 1
    assert all(b2 >= b1 for b1, b2 in itertools.pairwise(bests))
    assert best.fitness == max(value(x) for x in evaluated) == bests[-1]
    assert best.fitness == pytest.approx(OPTIMUM)  # brute force over all 4^8 candidates
    # far fewer evaluations than the feasible set, and the log accounts for them
    assert len(evaluated) < FEASIBLE.sum()
    assert sum(e.evaluated for e in search.log) == len(evaluated) == search.log[-1].evaluated_total
    assert search.log[0].evaluated == CONFIG.population
    assert all(e.rejected > 0 for e in search.log)
    assert set(probs) == {CONFIG.mutation_prob}
    # the population is parents + children: at most parents + mutations + crossovers
    assert len(search.population) <= CONFIG.parents + CONFIG.mutations + CONFIG.crossovers
    assert len(set(search.population)) == len(search.population)


def test_deterministic_under_seed() -> None:
    small = EvolutionConfig(**{**CONFIG.__dict__, "iterations": 5})
    a = EvolutionSearch(make_problem(), small)
    b = EvolutionSearch(make_problem(), small)
    a.run(), b.run()
    assert a.state_dict() == b.state_dict()
    c = EvolutionSearch(make_problem(), EvolutionConfig(**{**small.__dict__, "seed": 7}))
    c.run()
    assert c.state_dict()["records"] != a.state_dict()["records"]


def test_resume_equals_uninterrupted(tmp_path) -> None:
    config = EvolutionConfig(**{**CONFIG.__dict__, "iterations": 8})
    whole = EvolutionSearch(make_problem(), config)
    whole.run()

    state = tmp_path / "state.json"
    first = EvolutionSearch(make_problem(), EvolutionConfig(**{**config.__dict__, "iterations": 3}))
    first.run(state_path=state)
    assert json.loads(state.read_text())["generation"] == 3
    resumed = EvolutionSearch.resume(make_problem(), state, config)
    assert resumed.generation == 3 and len(resumed.records) == len(first.records)
    resumed.run(state_path=state)
    assert resumed.state_dict() == whole.state_dict()
    assert json.loads(state.read_text()) == json.loads(json.dumps(whole.state_dict()))

    with pytest.raises(ValueError, match="differs in \\{'seed'"):
        EvolutionSearch.resume(make_problem(), state, EvolutionConfig(**{**config.__dict__, "seed": 3}))


def test_unsatisfiable_constraint_names_it() -> None:
    impossible = BandConstraint(lambda batch: [cost(x) for x in batch], "cost", 2.0)  # min cost is >= 8
    search = EvolutionSearch(make_problem(constraint=impossible), CONFIG)
    with pytest.raises(ConstraintUnsatisfiable, match=r"cost in \[-inf, 2\]"):
        search.run()
    with pytest.raises(ConstraintUnsatisfiable, match="<lambda>: ") as error:
        EvolutionSearch(make_problem(constraint=lambda x: False), CONFIG).run()
    rejected, duplicates = map(int, re.search(r"(\d+) proposals rejected, (\d+) duplicates", str(error.value)).groups())
    assert rejected + duplicates == CONFIG.population * CONFIG.max_attempts  # the whole sampling budget was spent

    def never(x):
        return False
    with pytest.raises(ConstraintUnsatisfiable, match="no candidate satisfies never"):
        EvolutionSearch(make_problem(constraint=never), CONFIG).run()


def test_predicate_forms_agree_and_batches_are_used() -> None:
    batch_sizes: list[int] = []

    def in_band_batch(batch):
        batch_sizes.append(len(batch))
        return np.array([BUDGET - DELTA <= cost(x) <= BUDGET for x in batch])

    small = EvolutionConfig(**{**CONFIG.__dict__, "iterations": 4})
    runs = [EvolutionSearch(make_problem(constraint=c), small) for c in (
        PredicateConstraint(in_band_batch, "band", batched=True),
        lambda x: BUDGET - DELTA <= cost(x) <= BUDGET)]
    for search in runs:
        search.run()
    assert [r.encoding for r in runs[0].ranked()] == [r.encoding for r in runs[1].ranked()]
    assert max(batch_sizes) >= CONFIG.population // 2  # the first round checks many proposals at once


def test_seeds_fill_the_population_first_and_infeasible_seeds_are_dropped() -> None:
    feasible = [tuple(int(v) for v in x) for x in ALL[FEASIBLE][:10]]
    infeasible = [tuple(int(v) for v in x) for x in ALL[~FEASIBLE][:5]]
    search = EvolutionSearch(make_problem(), EvolutionConfig(**{**CONFIG.__dict__, "iterations": 0}))
    search.run(seeds=infeasible + feasible + feasible[:3])
    origins = [r.origin for r in search.records.values()]
    assert origins[:10] == ["seed"] * 10 and set(origins[10:]) == {"sample"}
    assert search.log[0].rejected >= 5 and search.log[0].duplicates >= 3


def test_fitness_length_is_checked() -> None:
    problem = make_problem()
    problem.fitness = lambda batch: [1.0]
    with pytest.raises(ValueError, match="expected one finite float each"):
        EvolutionSearch(problem, CONFIG).run()


def test_pareto_indices_match_brute_force() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        pts = rng.integers(0, 6, (int(rng.integers(1, 40)), int(rng.integers(1, 4)))).astype(float)
        dominated = [any(np.all(q <= p) and np.any(q < p) for q in pts) for p in pts]
        assert sorted(pareto_indices(pts).tolist()) == [i for i, d in enumerate(dominated) if not d]


def test_pareto_front_log_and_plot(tmp_path) -> None:
    macs = MacsConstraint(cost, max_macs=BUDGET, min_macs=BUDGET - DELTA)
    search = EvolutionSearch(make_problem(constraint=macs), EvolutionConfig(**{**CONFIG.__dict__, "iterations": 4}))
    search.run()
    front = search.pareto_front()
    records = list(search.records.values())
    def dominates(a, b) -> bool:  # fewer-or-equal MACs and higher-or-equal fitness, one strictly
        return (a.objectives["macs"] <= b.objectives["macs"] and a.fitness >= b.fitness
                and (a.objectives["macs"] < b.objectives["macs"] or a.fitness > b.fitness))

    for r in records:
        beaten = any(dominates(o, r) for o in records)
        assert beaten == (r not in front)
    assert search.best in front
    summary = json.loads(search.save_log(tmp_path / "log.json").read_text())
    assert summary["objectives"] == ["macs"] and summary["constraint"] == "macs in [44, 50]"
    assert len(summary["log"]) == 5 and summary["best"]["fitness"] == search.best.fitness
    assert {p["encoding"] for p in summary["pareto_front"]} == {r.encoding for r in front}
    png = search.plot(tmp_path / "search.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match=r"mutation_prob = 1\.5"):
        EvolutionConfig(mutation_prob=1.5)
    with pytest.raises(ValueError, match="parents = 0"):
        EvolutionConfig(parents=0)


def test_crossover_fallback_and_exhausted_space() -> None:
    problem = make_problem()
    problem.crossover = lambda a, b, rng: a  # always a duplicate of a parent: every crossover slot falls back
    config = EvolutionConfig(**{**CONFIG.__dict__, "iterations": 3, "max_attempts": 5})
    search = EvolutionSearch(problem, config)
    search.run()
    assert all(e.fallbacks == config.crossovers for e in search.log[1:])
    assert all(r.origin != "crossover" for r in search.records.values())

    allowed = {tuple(int(v) for v in x) for x in ALL[FEASIBLE][:5]}  # only five candidates exist
    tiny = EvolutionSearch(make_problem(constraint=lambda x: x in allowed),
                           EvolutionConfig(population=10, parents=4, mutations=3, crossovers=3, iterations=2,
                                           mutation_prob=1.0, max_attempts=3000))
    tiny.run(seeds=sorted(allowed))
    assert len(tiny.records) == 5 and tiny.log[0].failed == 5
    assert [e.failed for e in tiny.log[1:]] == [6, 6] and [e.evaluated for e in tiny.log[1:]] == [0, 0]
    assert tiny.best.fitness == max(value(x) for x in allowed)


def test_all_constraints_is_the_conjunction_and_skips_later_checks_for_rejected() -> None:
    seen: list[list[int]] = []

    def expensive(batch: list[int]) -> list[float]:
        seen.append(list(batch))
        return [10.0 * c for c in batch]

    cheap = BandConstraint(lambda batch: [float(c) for c in batch], "macs", upper=5.0)
    latency = BandConstraint(expensive, "latency_ms", upper=30.0, lower=20.0)
    both = AllConstraints(cheap, latency)
    candidates = list(range(8))
    check = both.check(candidates)
    # brute force: 0 <= c <= 5 and 20 <= 10 c <= 30  <=>  c in {2, 3}
    assert check.feasible.tolist() == [c in (2, 3) for c in candidates]
    assert seen == [[0, 1, 2, 3, 4, 5]]  # the expensive one only saw what the cheap one passed
    assert np.isnan(check.values["latency_ms"][6]) and check.values["latency_ms"][3] == 30.0
    assert both.metric == "latency_ms" and "macs" in both.description and "latency_ms" in both.description
    with pytest.raises(ValueError, match="at least one"):
        AllConstraints()
