"""Constrained evolutionary search over opaque candidates, shared by SpaceEvo's subnet search (ICCV'23, Sec. 4)
and ElasticViT's evolutionary search (ICCV'23, Sec. 3.4).

One generation, as in both references: the ``parents`` fittest of the population are kept, and
``mutations`` children (mutate one random parent) plus ``crossovers`` children (cross two distinct
random parents) are added; the next generation selects from parents + children, so the best
fitness never decreases (elitism). The initial population is the caller's seeds (ElasticViT's
banks and tables) topped up with ``sample(rng)``. Fitness is maximized.

Every child slot proposes up to ``max_attempts`` candidates. A proposal is dropped when its
encoding was evaluated already or is already proposed (no evaluation runs twice) or when the
constraint rejects it; the constraint sees each round's proposals as one batch (one LitePred call
for all of them). A crossover slot that runs out of attempts falls back to mutation (SpaceEvo's
reference does the same); a slot that still fails is counted in the log and left empty. When not
one initial candidate satisfies the constraint, :class:`ConstraintUnsatisfiable` names it.

Differences from the references, on purpose: a real duplicate check (SpaceEvo compares fresh
objects), every random draw from one seeded ``numpy.random.Generator`` (so a run is reproducible,
and resumable from the JSON state written after each generation), bounded retries instead of
SpaceEvo's unbounded ``while True``, and mutation of every dimension left to the problem's
``mutate`` (the ElasticViT script never applies its resolution mutation).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
from tqdm import tqdm

from .constraints import Constraint, as_constraint
from .pareto import pareto_front, plot_search

__all__ = ["ConstraintUnsatisfiable", "EvolutionConfig", "EvolutionSearch", "GenerationLog", "Record",
           "SearchProblem"]

logger = logging.getLogger("moonlit.common.nas.evolution")
C = TypeVar("C")
STATE_FORMAT = "moonlit-nas-evolution"
STATE_VERSION = 1
RESUMABLE_CHANGES = ("iterations",)  # config fields a resumed search may change (extend the search)


class ConstraintUnsatisfiable(RuntimeError):
    """No candidate satisfying the constraint was found within the attempt limit."""


@dataclass(frozen=True)
class EvolutionConfig:
    """Sizes of the search. Defaults: the papers' 512 / 256 / 128 + 128 (SpaceEvo: 20 iterations, ElasticViT: 40)."""

    population: int = 512      # initial population
    parents: int = 256         # top-k kept each generation
    mutations: int = 128       # mutated children per generation
    crossovers: int = 128      # crossed children per generation
    iterations: int = 20       # generations after the initial population
    mutation_prob: float = 0.3  # handed to ``mutate``: per-dimension probability (SpaceEvo 0.3, ElasticViT 0.2)
    max_attempts: int = 50     # proposals per child slot (SpaceEvo's max_crossover_try); the initial samples
    #                            share population x max_attempts
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("population", "parents", "max_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)}; expected >= 1")
        for name in ("mutations", "crossovers", "iterations"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} = {getattr(self, name)}; expected >= 0")
        if not 0.0 <= self.mutation_prob <= 1.0:
            raise ValueError(f"mutation_prob = {self.mutation_prob}; expected a probability in [0, 1]")


@dataclass
class SearchProblem(Generic[C]):
    """The callbacks that make candidates of one search space searchable.

    ``sample(rng)`` draws a random candidate; ``mutate(c, rng, mutation_prob)`` and
    ``crossover(a, b, rng)`` return new candidates (never modify their arguments);
    ``encode``/``decode`` map a candidate to its string and back (dedup and the JSON state);
    ``fitness(batch)`` returns one float per candidate (higher is better; batched so that a
    supernet evaluates many subnets at once); ``constraint`` is a :class:`Constraint`, a predicate
    ``c -> bool`` or None; ``objectives(batch)`` optionally returns ``{name: cost}`` per candidate
    (costs are minimized on the Pareto front, next to the constraint's own measured value).
    """

    sample: Callable[[np.random.Generator], C]
    mutate: Callable[[C, np.random.Generator, float], C]
    crossover: Callable[[C, C, np.random.Generator], C]
    encode: Callable[[C], str]
    decode: Callable[[str], C]
    fitness: Callable[[Sequence[C]], Sequence[float]]
    constraint: Constraint[C] | Callable[[C], Any] | None = None
    objectives: Callable[[Sequence[C]], Sequence[Mapping[str, float]]] | None = None


@dataclass
class Record(Generic[C]):
    """One evaluated candidate. ``rank`` is its evaluation order (the tie-breaker in selection)."""

    encoding: str
    candidate: C
    fitness: float
    objectives: dict[str, float]
    generation: int
    origin: str  # seed | sample | mutation | crossover
    rank: int

    def to_json(self) -> dict[str, Any]:
        return {"encoding": self.encoding, "fitness": self.fitness, "objectives": self.objectives,
                "generation": self.generation, "origin": self.origin}


@dataclass(frozen=True)
class GenerationLog:
    """Per generation (0 = initial population): population fitness and what happened to the proposals."""

    generation: int
    best: float
    mean: float
    best_encoding: str
    evaluated: int        # new evaluations in this generation
    evaluated_total: int
    rejected: int         # proposals the constraint rejected
    duplicates: int       # proposals already evaluated or already proposed
    failed: int           # child slots left empty after all attempts
    fallbacks: int        # crossover slots that fell back to mutation


@dataclass
class _Slot:
    kind: str  # sample | mutation | crossover
    attempts_left: int
    filled: bool = False


class EvolutionSearch(Generic[C]):
    """Constrained evolution with deduplication, elitism, a per-generation log and a JSON state.

    ``run(seeds)`` initializes (if needed) and runs until ``config.iterations`` generations are
    done, writing the state to ``state_path`` after each one; :meth:`resume` continues from it.
    """

    def __init__(self, problem: SearchProblem[C], config: EvolutionConfig | None = None) -> None:
        self.problem = problem
        self.config = config or EvolutionConfig()
        self.constraint = as_constraint(problem.constraint)
        self.rng = np.random.default_rng(self.config.seed)
        self.records: dict[str, Record[C]] = {}
        self.population: list[str] = []
        self.generation = -1  # -1: not initialized; 0: initial population evaluated
        self.log: list[GenerationLog] = []
        self._infeasible: set[str] = set()  # rejected encodings: not re-checked (not saved; counts stay equal)

    # ---- proposing and checking ----------------------------------------------------------------
    @property
    def constraint_description(self) -> str:
        return self.constraint.description if self.constraint is not None else "no constraint"

    def _propose(self, kind: str, parents: Sequence[Record[C]]) -> C:
        if kind == "sample":
            return self.problem.sample(self.rng)
        if kind == "mutation":
            parent = parents[int(self.rng.integers(len(parents)))]
            return self.problem.mutate(parent.candidate, self.rng, self.config.mutation_prob)
        first, second = self.rng.choice(len(parents), size=2, replace=False)
        return self.problem.crossover(parents[int(first)].candidate, parents[int(second)].candidate, self.rng)

    def _screen(self, proposals: Sequence[tuple[Any, str, C]], stats: dict[str, int], pending: set[str]
                ) -> list[tuple[Any, str, C, dict[str, float]]]:
        """Proposals that are new and feasible, with the constraint's measured values; counts the rest.

        ``pending``: encodings accepted but not yet evaluated; the accepted ones are added to it.
        """
        fresh: list[tuple[Any, str, C]] = []
        seen: set[str] = set()
        for key, encoding, candidate in proposals:
            if encoding in self.records or encoding in pending or encoding in seen:
                stats["duplicates"] += 1
            elif encoding in self._infeasible:
                stats["rejected"] += 1
            else:
                seen.add(encoding)
                fresh.append((key, encoding, candidate))
        if self.constraint is None or not fresh:
            pending.update(enc for _, enc, _ in fresh)
            return [(key, enc, cand, {}) for key, enc, cand in fresh]
        check = self.constraint.check([cand for _, _, cand in fresh])
        feasible = np.asarray(check.feasible, dtype=bool)
        if feasible.shape != (len(fresh),):
            raise ValueError(f"constraint {self.constraint_description!r} returned {feasible.shape} results "
                             f"for {len(fresh)} candidates")
        accepted = []
        for i, (key, encoding, candidate) in enumerate(fresh):
            if feasible[i]:
                values = {name: float(v[i]) for name, v in check.values.items()}
                accepted.append((key, encoding, candidate, values))
                pending.add(encoding)
            else:
                stats["rejected"] += 1
                self._infeasible.add(encoding)
        return accepted

    def _round(self, slots: Sequence[_Slot], parents: Sequence[Record[C]], stats: dict[str, int], pending: set[str],
               children: list[tuple[str, C, str, dict[str, float]]]) -> None:
        """One proposal per slot, screened as one batch; accepted ones fill their slot and join ``children``."""
        proposals = []
        for slot in slots:
            slot.attempts_left -= 1
            candidate = self._propose(slot.kind, parents)
            proposals.append((slot, self.problem.encode(candidate), candidate))
        for slot, encoding, candidate, values in self._screen(proposals, stats, pending):
            slot.filled = True
            children.append((encoding, candidate, slot.kind, values))

    def _fill(self, kinds: Sequence[str], parents: Sequence[Record[C]], stats: dict[str, int]
              ) -> list[tuple[str, C, str, dict[str, float]]]:
        """Fill one child slot per kind, ``max_attempts`` proposals each; crossover falls back to mutation."""
        slots = [_Slot(kind, self.config.max_attempts) for kind in kinds]
        if len(parents) < 2:
            for slot in slots:
                slot.kind = "mutation" if slot.kind == "crossover" else slot.kind
        children: list[tuple[str, C, str, dict[str, float]]] = []
        pending: set[str] = set()
        open_slots = slots
        while open_slots:
            self._round(open_slots, parents, stats, pending, children)
            still_open = []
            for slot in open_slots:
                if slot.filled:
                    continue
                if slot.attempts_left == 0 and slot.kind == "crossover":
                    slot.kind, slot.attempts_left = "mutation", self.config.max_attempts
                    stats["fallbacks"] += 1
                if slot.attempts_left > 0:
                    still_open.append(slot)
                else:
                    stats["failed"] += 1
            open_slots = still_open
        return children

    def _sample(self, count: int, stats: dict[str, int], pending: set[str]
                ) -> list[tuple[str, C, str, dict[str, float]]]:
        """``count`` random candidates; samples are interchangeable, so the slots share ``count × max_attempts``."""
        budget = count * self.config.max_attempts
        open_slots = [_Slot("sample", budget) for _ in range(count)]
        children: list[tuple[str, C, str, dict[str, float]]] = []
        while open_slots and budget > 0:
            batch = open_slots[:budget]
            budget -= len(batch)
            self._round(batch, [], stats, pending, children)
            open_slots = [slot for slot in open_slots if not slot.filled]
        stats["failed"] += len(open_slots)
        return children

    def _evaluate(self, children: Sequence[tuple[str, C, str, dict[str, float]]]) -> list[Record[C]]:
        if not children:
            return []
        batch = [candidate for _, candidate, _, _ in children]
        fitness = [float(f) for f in self.problem.fitness(batch)]
        if len(fitness) != len(batch) or not all(math.isfinite(f) for f in fitness):
            raise ValueError(f"fitness returned {fitness[:8]}{'...' if len(fitness) > 8 else ''} "
                             f"for {len(batch)} candidates; expected one finite float each")
        extra: Sequence[Mapping[str, float]] = [{}] * len(batch)
        if self.problem.objectives is not None:
            extra = list(self.problem.objectives(batch))
            if len(extra) != len(batch):
                raise ValueError(f"objectives returned {len(extra)} entries for {len(batch)} candidates")
        records = []
        for (encoding, candidate, origin, values), f, more in zip(children, fitness, extra):
            objectives = {**values, **{k: float(v) for k, v in more.items()}}
            record = Record(encoding, candidate, f, objectives, self.generation + 1, origin, len(self.records))
            self.records[encoding] = record
            records.append(record)
        return records

    # ---- generations ---------------------------------------------------------------------------
    def ranked(self, encodings: Sequence[str] | None = None) -> list[Record[C]]:
        """Records by fitness, best first; ties keep evaluation order. Default: the population."""
        chosen = self.population if encodings is None else encodings
        return sorted((self.records[e] for e in chosen), key=lambda r: (-r.fitness, r.rank))

    def initialize(self, seeds: Sequence[C] = ()) -> GenerationLog:
        """Generation 0: feasible, distinct ``seeds`` (at most ``population``) topped up with samples."""
        if self.generation >= 0:
            raise RuntimeError(f"the search is at generation {self.generation}; initialize only once")
        stats = dict.fromkeys(("rejected", "duplicates", "failed", "fallbacks"), 0)
        seeded = self._screen([(None, self.problem.encode(c), c) for c in seeds], stats, set())
        if len(seeded) > self.config.population:
            logger.warning("%d feasible seeds for a population of %d: keeping the first %d",
                           len(seeded), self.config.population, self.config.population)
        children = [(enc, cand, "seed", values) for _, enc, cand, values in seeded[:self.config.population]]
        pending = {enc for enc, _, _, _ in children}  # excess seeds may be sampled again
        sampled = self._sample(self.config.population - len(children), stats, pending)
        children += sampled
        if not children:
            raise ConstraintUnsatisfiable(
                f"no candidate satisfies {self.constraint_description}: {stats['rejected']} proposals rejected, "
                f"{stats['duplicates']} duplicates, in {len(seeds)} seeds + {self.config.population} x "
                f"{self.config.max_attempts} samples (population x max_attempts); widen the constraint or raise "
                "max_attempts")
        if len(children) < self.config.population:
            logger.warning("initial population has %d of %d candidates (%d slots failed: %s)", len(children),
                           self.config.population, stats["failed"], self.constraint_description)
        new = self._evaluate(children)
        self.population = [r.encoding for r in new]
        return self._close_generation(len(new), stats)

    def step(self) -> GenerationLog:
        """One generation: keep the top ``parents``, add mutated and crossed children."""
        if self.generation < 0:
            raise RuntimeError("the search has no population yet; call initialize() or run() first")
        parents = self.ranked()[:self.config.parents]
        stats = dict.fromkeys(("rejected", "duplicates", "failed", "fallbacks"), 0)
        kinds = ["mutation"] * self.config.mutations + ["crossover"] * self.config.crossovers
        new = self._evaluate(self._fill(kinds, parents, stats))
        self.population = [r.encoding for r in parents] + [r.encoding for r in new]
        return self._close_generation(len(new), stats)

    def _close_generation(self, evaluated: int, stats: Mapping[str, int]) -> GenerationLog:
        self.generation += 1
        ranked = self.ranked()
        entry = GenerationLog(self.generation, ranked[0].fitness, float(np.mean([r.fitness for r in ranked])),
                              ranked[0].encoding, evaluated, len(self.records), **stats)
        self.log.append(entry)
        logger.debug("generation %d: best %.4g, mean %.4g, %d evaluated, %d rejected, %d duplicates, %d failed",
                    entry.generation, entry.best, entry.mean, evaluated, entry.rejected, entry.duplicates,
                    entry.failed)
        return entry

    def run(self, seeds: Sequence[C] = (), state_path: str | os.PathLike[str] | None = None) -> Record[C]:
        """Initialize (unless resumed) and evolve to ``config.iterations``; returns the best record.

        Progress is one bar over the generations (the initial population is generation 0) with the best
        fitness so far; the per-generation statistics are in :attr:`log` (and at DEBUG level).
        """
        with tqdm(total=self.config.iterations + 1, initial=max(self.generation + 1, 0), desc="evolution",
                  unit="generation") as bar:
            if self.generation < 0:
                self.initialize(seeds)
                if state_path is not None:
                    self.save_state(state_path)
                bar.set_postfix(best=f"{self.log[-1].best:.4g}")
                bar.update()
            while self.generation < self.config.iterations:
                self.step()
                if state_path is not None:
                    self.save_state(state_path)
                bar.set_postfix(best=f"{self.log[-1].best:.4g}")
                bar.update()
        return self.best

    @property
    def best(self) -> Record[C]:
        if self.generation < 0:
            raise RuntimeError("the search has no population yet")
        return self.ranked()[0]

    # ---- Pareto front --------------------------------------------------------------------------
    def objective_names(self) -> list[str]:
        """Objectives every evaluated candidate has, in first-seen order."""
        records = list(self.records.values())
        if not records:
            return []
        return [name for name in records[0].objectives if all(name in r.objectives for r in records)]

    def pareto_front(self, objectives: Sequence[str] | None = None) -> list[Record[C]]:
        """Evaluated candidates not dominated in (objectives minimized, fitness maximized), by first objective."""
        return pareto_front(list(self.records.values()),
                            self.objective_names() if objectives is None else objectives)

    # ---- state, log, plot ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "config": dataclasses.asdict(self.config),
                "generation": self.generation, "rng": self.rng.bit_generator.state,
                "population": list(self.population),
                "records": [r.to_json() for r in sorted(self.records.values(), key=lambda r: r.rank)],
                "log": [dataclasses.asdict(entry) for entry in self.log]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a saved search; the config may differ only in ``iterations``."""
        if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise ValueError(f"state format {state.get('format')!r} v{state.get('version')}; "
                             f"expected {STATE_FORMAT!r} v{STATE_VERSION}")
        saved, ours = state["config"], dataclasses.asdict(self.config)
        changed = {k: (saved.get(k), v) for k, v in ours.items() if saved.get(k) != v and k not in RESUMABLE_CHANGES}
        if changed:
            raise ValueError(f"saved search config differs in {changed} (saved, given); only "
                             f"{list(RESUMABLE_CHANGES)} may change on resume")
        if state["rng"].get("bit_generator") != self.rng.bit_generator.state["bit_generator"]:
            raise ValueError(f"saved random generator {state['rng'].get('bit_generator')!r}; expected "
                             f"{self.rng.bit_generator.state['bit_generator']!r}")
        records: dict[str, Record[C]] = {}
        for rank, item in enumerate(state["records"]):
            candidate = self.problem.decode(item["encoding"])
            if self.problem.encode(candidate) != item["encoding"]:
                raise ValueError(f"encoding {item['encoding']!r} does not round-trip through decode/encode "
                                 f"(got {self.problem.encode(candidate)!r})")
            records[item["encoding"]] = Record(item["encoding"], candidate, float(item["fitness"]),
                                               dict(item["objectives"]), int(item["generation"]), item["origin"], rank)
        unknown = [e for e in state["population"] if e not in records]
        if unknown:
            raise ValueError(f"population member {unknown[0]!r} has no evaluated record in the state")
        self.records, self.population = records, list(state["population"])
        self.generation = int(state["generation"])
        self.rng.bit_generator.state = state["rng"]
        self.log = [GenerationLog(**entry) for entry in state["log"]]
        self._infeasible = set()

    def save_state(self, path: str | os.PathLike[str]) -> Path:
        """Write the state as JSON atomically (temporary file, then rename)."""
        return _write_json_atomic(Path(path), self.state_dict())

    @classmethod
    def resume(cls, problem: SearchProblem[C], path: str | os.PathLike[str],
               config: EvolutionConfig | None = None) -> EvolutionSearch[C]:
        """A search restored from ``path``; ``config`` defaults to the saved one (pass one to extend ``iterations``)."""
        state = json.loads(Path(path).read_text())
        search = cls(problem, config or EvolutionConfig(**state["config"]))
        search.load_state_dict(state)
        return search

    def summary(self) -> dict[str, Any]:
        """What ``save_log`` writes: config, constraint, per-generation log, best record and Pareto front."""
        names = self.objective_names()
        return {"config": dataclasses.asdict(self.config), "constraint": self.constraint_description,
                "log": [dataclasses.asdict(entry) for entry in self.log],
                "best": self.best.to_json() if self.generation >= 0 else None,
                "objectives": names, "pareto_front": [r.to_json() for r in self.pareto_front(names)],
                "evaluated": len(self.records)}

    def save_log(self, path: str | os.PathLike[str]) -> Path:
        return _write_json_atomic(Path(path), self.summary())

    def plot(self, path: str | os.PathLike[str], objective: str | None = None) -> Path:
        """PNG: best and mean fitness per generation, and (with objectives) fitness vs ``objective`` with the front."""
        return plot_search(self, path, objective)


def _write_json_atomic(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)
    return path
