"""Complexity- and performance-aware sampling with a fake scorer: walk, occupancy, bands, banks,
preference, per-step seeding (DDP agreement) and resume."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import replace
from itertools import pairwise

import numpy as np
import pytest

from moonlit.common.config import compose_config
from moonlit.common.train.seed import step_rng
from moonlit.elasticvit.flops import reference_mmacs, subnet_complexity
from moonlit.elasticvit.sampling import (
    REFERENCE_MIN_SUBNETS,
    BankSchedule,
    ComplexityAwareSampler,
    PerformanceAwareSampler,
    StepSample,
    build_sampler,
    reference_min_key,
    simulate,
    softmax_draw,
    width_preference,
)
from moonlit.elasticvit.space import check_subnet, decode, from_reference_arch, min_subnet, random_subnet
from moonlit.elasticvit.tables import DEFAULT_LEVELS, FlopsTables, build_tables


@pytest.fixture(scope="module")
def tables() -> FlopsTables:
    return build_tables(DEFAULT_LEVELS, 200, seed=7)


def fake_score(subnet) -> float:
    """Deterministic stand-in for -CE: a hash of the encoding in [-1, 0)."""
    return -(sum(ord(c) * (i + 1) for i, c in enumerate(subnet.encode())) % 9973) / 9973


def _mmacs(subnet) -> float:
    return subnet_complexity(subnet).macs / 1e6


def test_level_walk_changes_at_most_one_level_and_visits_levels_uniformly(tables: FlopsTables) -> None:
    sampler = ComplexityAwareSampler(tables, seed=1)
    indices = [tables.levels.index(sampler.sample(step).level) for step in range(6000)]
    moves = np.diff(indices)
    assert set(moves.tolist()) <= {-1, 0, 1}
    # Transition matrix from the walk vs the reference's get_bank_id: 1/3 each way, [0, 0, +1] at the ends.
    n = len(tables.levels)
    counts = np.zeros((n, n))
    for a, b in pairwise(indices):
        counts[a, b] += 1
    empirical = counts / counts.sum(axis=1, keepdims=True)
    expected = np.zeros((n, n))
    for i in range(n):
        for move in (-1, 0, 1):
            expected[i, min(max(i + move, 0), n - 1)] += 1 / 3
    np.testing.assert_allclose(empirical, expected, atol=0.06)
    # doubly stochastic -> uniform stationary distribution; the walk's occupancy approaches it
    np.testing.assert_allclose(expected.sum(axis=0), 1.0)
    occupancy = np.bincount(indices, minlength=n) / len(indices)
    assert np.all(np.abs(occupancy - 1 / n) < 0.35 / n), occupancy


@pytest.mark.parametrize("policy", ["adjacent_step", "random"])
def test_every_sampled_subnet_is_inside_its_band(tables: FlopsTables, policy: str) -> None:
    sampler = PerformanceAwareSampler(tables, policy=policy, seed=2, bank_sizes={b: 4 for b in tables.levels},
                                      schedule=BankSchedule(start=0.5))
    for step in range(60):
        sample = sampler.sample(step)
        sampler.observe(sample, fake_score)
        assert len(sample.uniform) == 3
        for subnet, level in zip(sample.uniform, sample.levels):
            assert level <= _mmacs(subnet) <= level + 20
        if policy == "adjacent_step":
            assert sample.level is not None and sample.level <= _mmacs(sample.min) <= sample.level + 20
            assert _mmacs(sample.min) == min(_mmacs(s) for s in tables.subnets(sample.level))
    assert any(any(s.from_bank) for s in [sampler.sample(60 + k) for k in range(20)])


def test_random_policy_draws_levels_per_slot_and_min_from_mean(tables: FlopsTables) -> None:
    sampler = ComplexityAwareSampler(tables, policy="random", seed=4)
    samples = [sampler.sample(step) for step in range(200)]
    assert any(len(set(s.levels)) > 1 for s in samples)
    jumps = [abs(tables.levels.index(a.levels[0]) - tables.levels.index(b.levels[0])) for a, b in pairwise(samples)]
    assert max(jumps) > 1
    for sample in samples[:20]:
        mean = np.mean([_mmacs(s) for s in sample.uniform])
        level = max([b for b in tables.levels if b <= mean], default=tables.levels[0])
        assert sample.min == tables.min_subnet(level)


def test_uniform_policy_uses_the_whole_space(tables: FlopsTables) -> None:
    sampler = ComplexityAwareSampler(None, policy="uniform", seed=0)
    samples = [sampler.sample(step) for step in range(50)]
    for sample in samples:
        assert sample.min == min_subnet() and sample.levels == (None, None, None)
        for subnet in sample.uniform:
            check_subnet(subnet)
    mmacs = [_mmacs(s) for sample in samples for s in sample.uniform]
    assert max(mmacs) - min(mmacs) > 500  # not confined to a band


def test_reference_min_subnets_follow_select_min_arch(tables: FlopsTables) -> None:
    # the reference's rule with keys 200/400/800 and flops_bound 10: (0+20, 220] -> 200, (220, 420] -> 400, ...
    assert [reference_min_key(b) for b in DEFAULT_LEVELS] == [200, 200, 400, 400, 800, 800, 800, 800]
    reference_arch_200 = [128, [16, 16, 16, 48, 80, 144, 160], [1, 2, 2, 1, 1, 1, 1], [1, 3, 3, 3, 3],
                          [3, 3, 3, 3, 3], [2, 2, 2, 2], [3, 5, 9, 10], [1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 2, 2]]
    assert decode(REFERENCE_MIN_SUBNETS[200]) == from_reference_arch(reference_arch_200)
    assert round(reference_mmacs(decode(REFERENCE_MIN_SUBNETS[200])), 2) == 37.37  # the notes' smallest subnet
    sampler = ComplexityAwareSampler(tables, seed=0, min_subnet="reference")
    for step in range(30):
        sample = sampler.sample(step)
        assert sample.min == decode(REFERENCE_MIN_SUBNETS[reference_min_key(sample.level)])


def test_same_seed_and_step_give_the_same_subnets_on_every_rank(tables: FlopsTables) -> None:
    def run(seed: int) -> list[StepSample]:
        sampler = PerformanceAwareSampler(tables, seed=seed, bank_sizes={b: 6 for b in tables.levels},
                                          schedule=BankSchedule(start=0.5))
        samples = []
        for step in range(80):
            samples.append(sampler.sample(step, epoch=step // 20))
            sampler.observe(samples[-1], fake_score)
        return samples

    rank0, rank1, other = run(3), run(3), run(4)
    assert rank0 == rank1
    assert rank0 != other
    assert np.array_equal(step_rng(3, 17).random(4), step_rng(3, 17).random(4))


def _replayed_rng(seed: int, step: int) -> np.random.Generator:
    # the per-step stream, derived here from its definition: SHA-256 of "seed:step", first 8 bytes little-endian
    digest = hashlib.sha256(f"{seed}:{step}".encode("ascii")).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def test_each_step_draws_from_the_shared_step_stream(tables: FlopsTables) -> None:
    uniform = ComplexityAwareSampler(None, policy="uniform", seed=5)
    for step in (0, 3, 11):
        python_rng = random.Random(int(_replayed_rng(5, step).integers(0, 2 ** 63)))
        expected = tuple(random_subnet(python_rng) for _ in range(3))
        assert uniform.sample(step).uniform == expected, step
    walk = ComplexityAwareSampler(tables, seed=6)
    level_index = 0
    for step in range(12):
        rng = _replayed_rng(6, step)
        level_index = min(max(level_index + int(rng.integers(-1, 2)), 0), len(tables.levels) - 1)
        level = tables.levels[level_index]
        rows = rng.choice(tables.size(level), size=3, replace=3 > tables.size(level))
        sample = walk.sample(step)
        assert sample.level == level and sample.uniform == tuple(tables.subnet(level, int(r)) for r in rows), step
    assert np.array_equal(step_rng(6, 4).random(3), _replayed_rng(6, 4).random(3))


def test_resume_continues_exactly(tables: FlopsTables) -> None:
    def make() -> PerformanceAwareSampler:
        return PerformanceAwareSampler(tables, seed=9, bank_sizes={b: 5 for b in tables.levels},
                                       schedule=BankSchedule(start=0.6), rescore_every_steps=7)

    straight = make()
    expected = []
    for step in range(100):
        expected.append(straight.sample(step))
        straight.observe(expected[-1], fake_score)
    first = make()
    for step in range(50):
        first.observe(first.sample(step), fake_score)
    state = json.loads(json.dumps(first.state_dict()))  # plain JSON data
    resumed = make()
    resumed.load_state_dict(state)
    got = []
    for step in range(50, 100):
        got.append(resumed.sample(step))
        resumed.observe(got[-1], fake_score)
    assert got == expected[50:]
    assert resumed.banks == straight.banks
    with pytest.raises(ValueError, match="seed 9"):
        PerformanceAwareSampler(tables, seed=1).load_state_dict(state)


def test_bank_keeps_the_best_k(tables: FlopsTables) -> None:
    k = 10
    sampler = PerformanceAwareSampler(tables, seed=5, bank_sizes={b: k for b in tables.levels},
                                      schedule=BankSchedule(start=0.0, increment=0.0))
    offered: dict[float, dict[str, float]] = {b: {} for b in tables.levels}
    for step in range(400):
        sample = sampler.sample(step)
        sampler.observe(sample, fake_score)
        for subnet, level in zip(sample.uniform, sample.levels):
            offered[level][subnet.encode()] = fake_score(subnet)
    for level in tables.levels:
        best = sorted(offered[level].values(), reverse=True)[:k]
        kept = sorted((score for _, score in sampler.banks[level]), reverse=True)
        assert kept == best
        assert len({s.encode() for s, _ in sampler.banks[level]}) == len(sampler.banks[level])


def test_insert_replaces_the_worst_only_when_better(tables: FlopsTables) -> None:
    sampler = PerformanceAwareSampler(tables, bank_sizes={b: 2 for b in tables.levels})
    a, b, c, d = tables.subnets(300.0)[:4]
    assert sampler.insert(300.0, a, -2.0) and sampler.insert(300.0, b, -1.0)
    assert not sampler.insert(300.0, c, -3.0)
    assert sampler.insert(300.0, d, -1.5)
    assert sampler.banks[300.0] == [(d, -1.5), (b, -1.0)]


def test_bank_probability_schedule() -> None:
    schedule = BankSchedule()
    assert [schedule.probability(e) for e in (0, 99, 100, 250, 599, 10_000)] == pytest.approx(
        [0.2, 0.2, 0.35, 0.5, 0.95, 1.0])


def test_bank_draws_follow_softmax_and_the_probability(tables: FlopsTables) -> None:
    rng = np.random.default_rng(0)
    draws = [softmax_draw([0.0, np.log(3.0)], rng) for _ in range(4000)]
    assert abs(np.mean(draws) - 0.75) < 0.03  # exp(log 3) / (1 + 3)
    for probability, low, high in ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.5, 0.4, 0.6)):
        sampler = PerformanceAwareSampler(tables, seed=1, bank_sizes={b: 4 for b in tables.levels},
                                          schedule=BankSchedule(start=probability, increment=0.0))
        for level in tables.levels:  # fill every bank (> half full enables bank draws)
            for subnet in tables.subnets(level)[:4]:
                sampler.insert(level, subnet, fake_score(subnet))
        samples = [sampler.sample(step) for step in range(100)]
        fraction = np.mean([flag for s in samples for flag in s.from_bank])
        assert low <= fraction <= high
        for sample in samples:
            for subnet, level, flag in zip(sample.uniform, sample.levels, sample.from_bank):
                assert not flag or subnet in [s for s, _ in sampler.banks[level]]


def test_width_preference_matches_hand_computation_and_prefers_width() -> None:
    anchor = min_subnet()
    wide = decode("r192_s16d1k3_c24d2e3k3_c32d2e3k3_t96d1m2v2_t160d1m2v2_t288d1m2v2_t320d1m2v2")
    deep = decode("r192_s16d1k3_c24d2e3k3_c32d2e3k3_t48d4m2v2_t80d4m2v2_t144d4m2v2_t160d4m2v2")
    for candidate in (wide, deep):
        with_anchor_widths = replace(candidate, transformer_stages=tuple(
            replace(t, width=a.width) for t, a in zip(candidate.transformer_stages, anchor.transformer_stages)))
        with_anchor_depths = replace(candidate, transformer_stages=tuple(
            replace(t, depth=a.depth) for t, a in zip(candidate.transformer_stages, anchor.transformer_stages)))
        expected = subnet_complexity(with_anchor_widths).macs - subnet_complexity(with_anchor_depths).macs
        assert width_preference(candidate, anchor) == expected
    assert width_preference(wide, anchor) < 0 < width_preference(deep, anchor)


def test_preference_picks_the_widest_shallowest_candidate(tables: FlopsTables, monkeypatch) -> None:
    level = 400.0
    sampler = PerformanceAwareSampler(tables, seed=0, bank_sizes={b: 4 for b in tables.levels},
                                      schedule=BankSchedule(start=0.0, increment=0.0))
    for subnet in tables.subnets(level)[:4]:
        sampler.insert(level, subnet, -1.0)  # bank half full: preference is on
    # five candidates of one family: T widths one step down per extra layer of depth
    base = "r176_s16d1k3_c24d2e3k3_c32d2e3k3_"
    family = [decode(base + "_".join(f"t{max(w - 16 * i, low)}d{1 + i}m2v2" for w, low in
                                     ((96, 48), (160, 80), (288, 144), (320, 160)))) for i in range(5)]
    monkeypatch.setattr(sampler, "_table_rows", lambda index, count, rng: list(reversed(family))[:count])
    sampler.level_index = sampler.levels.index(level)
    monkeypatch.setattr(sampler, "_walk", lambda rng: sampler.levels.index(level))
    sample = sampler.sample(0)
    assert sample.uniform == (family[0],) * 3  # the widest and shallowest, whatever the order
    first = PerformanceAwareSampler(tables, seed=0, candidate_selection="first",
                                    bank_sizes={b: 4 for b in tables.levels},
                                    schedule=BankSchedule(start=0.0, increment=0.0))
    first.banks = sampler.banks
    monkeypatch.setattr(first, "_table_rows", lambda index, count, rng: list(reversed(family))[:count])
    monkeypatch.setattr(first, "_walk", lambda rng: first.levels.index(level))
    assert first.sample(0).uniform == (family[-1],) * 3


def test_configs_build_the_samplers(tables: FlopsTables) -> None:
    expected = {"adjacent_step": (PerformanceAwareSampler, "adjacent_step"),
                "random": (PerformanceAwareSampler, "random"),
                "complexity_only": (ComplexityAwareSampler, "adjacent_step"),
                "uniform": (ComplexityAwareSampler, "uniform")}
    for name, (kind, policy) in expected.items():
        cfg = compose_config("elasticvit", "sampling_stats", [f"sampling={name}"])
        sampler = build_sampler(cfg.sampling, tables, seed=0)
        assert type(sampler) is kind and sampler.policy == policy
    paper = build_sampler(compose_config("elasticvit", "sampling_stats", []).sampling, tables)
    assert isinstance(paper, PerformanceAwareSampler)
    assert paper.bank_sizes == {b: (150 if b < 500 else 50) for b in tables.levels}
    assert paper.num_candidates == 5 and paper.schedule == BankSchedule(0.2, 0.15, 100, 1.0)


def test_simulate_reports_walk_and_banks(tables: FlopsTables) -> None:
    sampler = PerformanceAwareSampler(tables, seed=0, bank_sizes={b: 6 for b in tables.levels})
    stats = simulate(sampler, 300, fake_score, steps_per_epoch=50)
    assert stats["max_level_change"] == 1
    assert sum(stats["occupancy"].values()) == pytest.approx(1.0)
    assert set(stats["bank_fill"]) == {f"{b:g}" for b in tables.levels}
    random_stats = simulate(ComplexityAwareSampler(tables, policy="random"), 300, fake_score)
    assert stats["mean_mmacs_gap"] < random_stats["mean_mmacs_gap"]


def test_bad_settings_name_the_value(tables: FlopsTables) -> None:
    with pytest.raises(ValueError, match="policy 'cyclic'"):
        ComplexityAwareSampler(tables, policy="cyclic")
    with pytest.raises(ValueError, match="needs FLOPs tables"):
        ComplexityAwareSampler(None, policy="adjacent_step")
    sampler = ComplexityAwareSampler(tables)
    sampler.sample(3)
    with pytest.raises(ValueError, match="step 3 was already sampled"):
        sampler.sample(3)
