"""Complexity-aware and performance-aware subnet sampling of ElasticViT (ICCV'23, arXiv 2303.09730, Sec. 3.2–3.3).

**Complexity-aware** (:class:`ComplexityAwareSampler`): each training step draws its subnets from
one FLOPs level of the offline tables (:mod:`moonlit.elasticvit.tables`), so the subnets trained
together have similar size and their gradients conflict less. Level policies (``policy``):

- ``adjacent_step`` (the paper's, the reference's default): the level index moves by −1, 0 or +1,
  each with probability 1/3, from the previous step's level, clamped at the ends (the reference's
  ``get_bank_id``: ``[0, 0, 1]`` at the lowest level). The transition matrix is doubly stochastic,
  so levels are visited uniformly in the long run while consecutive steps differ by ≤ 1 level.
- ``random`` (the reference's ``flops_sampling_method: random``): every uniform slot draws its own
  level uniformly; the min subnet is that of the highest level at or below the slots' mean MACs
  (the reference picks its min arch from the mean FLOPs of the step's uniform subnets).
- ``uniform`` (ours, the ablation's baseline; the reference has no such level policy): no levels,
  the sandwich rule of BigNAS/NASViT — uniform subnets from the whole space
  (:func:`~moonlit.elasticvit.space.random_subnet`) and the space's min subnet.

The step's ``num_uniform`` subnets are distinct rows of the level's table; the extra "min" subnet is
(``min_subnet``) ``table``: the level's smallest table entry (the notes), or ``reference``: the
reference's three hand-picked min archs (38, 162, 290 MMACs), chosen by its ``select_min_arch`` rule.

**Performance-aware** (:class:`PerformanceAwareSampler`): one memory bank per level (150 entries
below 500 MMACs, 50 from there) of subnets scored by a callback (the trainer's ``-CE`` on a batch;
higher is better). A uniform slot is drawn from its level's bank, with probability
:meth:`BankSchedule.probability` (0.2, +0.15 every 100 epochs) when the bank is more than half
full, ∝ softmax(score); otherwise ``num_candidates`` = 5 rows are drawn from the table and the one
whose transformer MACs come most from width rather than depth is kept (:func:`width_preference`;
only once the bank is half full, as the reference). :meth:`PerformanceAwareSampler.observe` scores
each newly drawn subnet and lets it replace the worst bank entry if it is better.

All randomness of step ``t`` comes from :func:`moonlit.common.train.seed.step_rng` ``(seed, t)``: every DDP rank
draws the same subnets as long as the scores it observes agree (the scorer must all-reduce them).
The walk position and the banks are in ``state_dict()`` (plain JSON data) for resume.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from omegaconf import DictConfig

from moonlit.common.config import hydra_app
from moonlit.common.train.seed import step_rng

from .space import ELASTICVIT_SPACE, SearchSpace, Subnet, decode, min_subnet, random_subnet
from .tables import FlopsTables, subnets_to_array, total_macs

__all__ = [
    "LEVEL_POLICIES",
    "REFERENCE_MIN_SUBNETS",
    "BankSchedule",
    "ComplexityAwareSampler",
    "PerformanceAwareSampler",
    "StepSample",
    "build_sampler",
    "run",
    "simulate",
    "softmax_draw",
    "width_preference",
]

LEVEL_POLICIES = ("adjacent_step", "random", "uniform")
MIN_SUBNET_CHOICES = ("table", "reference")
BANK_DRAWS = ("softmax", "uniform", "best")
CANDIDATE_SELECTIONS = ("preference", "first")

# The reference's search_space.min_archs (keys in MMACs), converted with space.from_reference_arch.
REFERENCE_MIN_SUBNETS: dict[int, str] = {
    200: "r128_s16d1k3_c16d2e3k3_c16d2e3k3_t48d1m2v2_t80d1m2v2_t144d1m2v2_t160d1m2v2",
    400: "r176_s16d1k3_c24d3e3k3_c32d3e3k3_t48d2m2v2_t96d2m3v2_t176d2m2v2_t224d2m2v2",
    800: "r224_s16d1k3_c24d3e3k3_c32d3e3k3_t64d2m2v2_t96d2m2v2_t192d2m2v2_t256d2m2v2",
}
REFERENCE_FLOPS_BOUND = 10  # MMACs; its select_min_arch shifts every key by 2 x bound


def reference_min_key(mmacs: float) -> int:
    """Key of :data:`REFERENCE_MIN_SUBNETS` the reference's ``select_min_arch`` picks for ``mmacs``."""
    keys, lower = sorted(REFERENCE_MIN_SUBNETS), 0
    if mmacs > keys[-1]:
        return keys[-1]
    for upper in keys:
        if lower + 2 * REFERENCE_FLOPS_BOUND < mmacs <= upper + 2 * REFERENCE_FLOPS_BOUND:
            return upper
        lower = upper
    return keys[0]  # at or below the first key's window: the smallest min arch


@dataclass(frozen=True)
class StepSample:
    """The subnets of one step: ``uniform`` (with their levels and bank origin) and ``min``."""

    step: int
    uniform: tuple[Subnet, ...]
    levels: tuple[float | None, ...]
    from_bank: tuple[bool, ...]
    min: Subnet

    @property
    def level(self) -> float | None:
        """The step's level when all uniform slots share one (``adjacent_step``), else None."""
        return self.levels[0] if len(set(self.levels)) == 1 else None


class ComplexityAwareSampler:
    """Per-step subnets from one FLOPs level (policy, min subnet: module docstring)."""

    def __init__(self, tables: FlopsTables | None, *, policy: str = "adjacent_step", num_uniform: int = 3,
                 seed: int = 0, min_subnet: str = "table", space: SearchSpace = ELASTICVIT_SPACE) -> None:
        if policy not in LEVEL_POLICIES:
            raise ValueError(f"policy {policy!r} is not one of {LEVEL_POLICIES}")
        if min_subnet not in MIN_SUBNET_CHOICES:
            raise ValueError(f"min_subnet {min_subnet!r} is not one of {MIN_SUBNET_CHOICES}")
        if tables is None and policy != "uniform":
            raise ValueError(f"policy {policy!r} needs FLOPs tables; only 'uniform' runs without")
        if num_uniform < 1:
            raise ValueError(f"num_uniform {num_uniform} must be >= 1")
        self.tables, self.policy, self.num_uniform = tables, policy, num_uniform
        self.seed, self.min_subnet_choice, self.space = seed, min_subnet, space
        self.levels: tuple[float, ...] = tables.levels if tables is not None else ()
        self.level_index = 0
        self.last_step = -1

    # ---- levels -------------------------------------------------------------------------------
    def _walk(self, rng: np.random.Generator) -> int:
        move = int(rng.integers(-1, 2))
        return min(max(self.level_index + move, 0), len(self.levels) - 1)

    def _slot_levels(self, rng: np.random.Generator) -> list[int]:
        if self.policy == "adjacent_step":
            self.level_index = self._walk(rng)
            return [self.level_index] * self.num_uniform
        return [int(i) for i in rng.integers(0, len(self.levels), self.num_uniform)]

    def _min_for(self, slot_levels: Sequence[int], uniform: Sequence[Subnet]) -> Subnet:
        assert self.tables is not None
        if self.policy == "random":
            mmacs = float(np.mean(total_macs(subnets_to_array(uniform), self.tables.counter,
                                             self.tables.num_classes, self.space))) / 1e6
            below = [i for i, level in enumerate(self.levels) if level <= mmacs]
            level_index = below[-1] if below else 0
        else:
            level_index = slot_levels[0]
            mmacs = self.levels[level_index]
        if self.min_subnet_choice == "reference":
            return decode(REFERENCE_MIN_SUBNETS[reference_min_key(mmacs)], self.space)
        return self.tables.min_subnet(self.levels[level_index])

    def _table_rows(self, level_index: int, count: int, rng: np.random.Generator) -> list[Subnet]:
        assert self.tables is not None
        level = self.levels[level_index]
        size = self.tables.size(level)
        rows = rng.choice(size, size=count, replace=count > size)
        return [self.tables.subnet(level, int(row)) for row in rows]

    # ---- sampling ------------------------------------------------------------------------------
    def _draw_slots(self, slot_levels: Sequence[int], rng: np.random.Generator,
                    epoch: int) -> tuple[list[Subnet], list[bool]]:
        """The uniform subnets and whether each came from a bank (never, here)."""
        if len(set(slot_levels)) == 1:  # distinct rows of the one level
            return self._table_rows(slot_levels[0], len(slot_levels), rng), [False] * len(slot_levels)
        return [self._table_rows(index, 1, rng)[0] for index in slot_levels], [False] * len(slot_levels)

    def sample(self, step: int, epoch: int = 0) -> StepSample:
        """The subnets of ``step`` (call once per step, in order: the level walk moves each call)."""
        if step <= self.last_step:
            raise ValueError(f"step {step} was already sampled (last step {self.last_step}); steps must increase")
        rng = step_rng(self.seed, step)
        self.last_step = step
        if self.policy == "uniform":
            python_rng = random.Random(int(rng.integers(0, 2 ** 63)))
            uniform = tuple(random_subnet(python_rng, self.space) for _ in range(self.num_uniform))
            return StepSample(step, uniform, (None,) * self.num_uniform, (False,) * self.num_uniform,
                              min_subnet(self.space))
        slot_levels = self._slot_levels(rng)
        uniform, from_bank = self._draw_slots(slot_levels, rng, epoch)
        return StepSample(step, tuple(uniform), tuple(self.levels[i] for i in slot_levels), tuple(from_bank),
                          self._min_for(slot_levels, uniform))

    # ---- resume ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "seed": self.seed, "levels": list(self.levels),
                "level_index": self.level_index, "last_step": self.last_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, ours in (("policy", self.policy), ("seed", self.seed), ("levels", list(self.levels))):
            if state[key] != ours:
                raise ValueError(f"sampler state has {key} {state[key]!r}, this sampler {ours!r}")
        self.level_index, self.last_step = int(state["level_index"]), int(state["last_step"])


@dataclass(frozen=True)
class BankSchedule:
    """Probability of drawing a uniform slot from its bank: ``start + increment * (epoch // every_epochs)``.

    The reference adds the increment at the start of epochs 99, 199, … (and recomputes it as
    ``epoch // 100`` on resume); here the same formula holds with and without resume.
    """

    start: float = 0.2
    increment: float = 0.15
    every_epochs: int = 100
    maximum: float = 1.0

    def probability(self, epoch: int) -> float:
        if self.every_epochs <= 0:
            raise ValueError(f"every_epochs {self.every_epochs} must be positive")
        return min(self.maximum, self.start + self.increment * (epoch // self.every_epochs))


def softmax_draw(scores: Sequence[float], rng: np.random.Generator) -> int:
    """Index drawn with probability ∝ exp(score)."""
    values = np.asarray(scores, dtype=np.float64)
    weights = np.exp(values - values.max())
    return int(rng.choice(len(values), p=weights / weights.sum()))


def width_preference(candidate: Subnet, anchor: Subnet, counter: str = "exact", num_classes: int = 1000,
                     space: SearchSpace = ELASTICVIT_SPACE) -> int:
    """MACs(candidate with the anchor's transformer widths) − MACs(candidate with the anchor's transformer depths).

    The first term keeps the candidate's depths (its MACs grow with depth), the second its widths;
    the lower the value, the more of the candidate's transformer MACs come from width rather than
    depth (the reference's ``_importance_comparison``; the candidate with the lowest value is kept).
    """
    anchor_widths = replace(candidate, transformer_stages=tuple(
        replace(stage, width=a.width) for stage, a in zip(candidate.transformer_stages, anchor.transformer_stages)))
    anchor_depths = replace(candidate, transformer_stages=tuple(
        replace(stage, depth=a.depth) for stage, a in zip(candidate.transformer_stages, anchor.transformer_stages)))
    macs = total_macs(subnets_to_array([anchor_widths, anchor_depths]), counter, num_classes, space)
    return int(macs[0] - macs[1])


class PerformanceAwareSampler(ComplexityAwareSampler):
    """:class:`ComplexityAwareSampler` plus per-level banks of well-performing subnets."""

    def __init__(self, tables: FlopsTables, *, policy: str = "adjacent_step", num_uniform: int = 3, seed: int = 0,
                 min_subnet: str = "table", space: SearchSpace = ELASTICVIT_SPACE,
                 bank_sizes: Mapping[float, int] | None = None, schedule: BankSchedule = BankSchedule(),
                 num_candidates: int = 5, candidate_selection: str = "preference", bank_draw: str = "softmax",
                 rescore_every_steps: int = 0) -> None:
        if policy == "uniform":
            raise ValueError("policy 'uniform' has no levels, so no banks; use ComplexityAwareSampler")
        super().__init__(tables, policy=policy, num_uniform=num_uniform, seed=seed, min_subnet=min_subnet, space=space)
        if candidate_selection not in CANDIDATE_SELECTIONS:
            raise ValueError(f"candidate_selection {candidate_selection!r} is not one of {CANDIDATE_SELECTIONS}")
        if bank_draw not in BANK_DRAWS:
            raise ValueError(f"bank_draw {bank_draw!r} is not one of {BANK_DRAWS}")
        if num_candidates < 1:
            raise ValueError(f"num_candidates {num_candidates} must be >= 1")
        sizes = dict(bank_sizes) if bank_sizes is not None else {b: (150 if b < 500 else 50) for b in self.levels}
        if set(sizes) != set(self.levels):
            raise ValueError(f"bank_sizes levels {sorted(sizes)} differ from the tables' {list(self.levels)}")
        self.bank_sizes = sizes
        self.schedule, self.num_candidates = schedule, num_candidates
        self.candidate_selection, self.bank_draw = candidate_selection, bank_draw
        self.rescore_every_steps = rescore_every_steps
        self.banks: dict[float, list[tuple[Subnet, float]]] = {level: [] for level in self.levels}

    def _half_full(self, level: float) -> bool:
        return len(self.banks[level]) > self.bank_sizes[level] // 2

    def _anchor(self, level_index: int) -> Subnet:
        assert self.tables is not None
        lowest = self.levels[0]
        if level_index > 0 and self.banks[lowest]:
            return max(self.banks[lowest], key=lambda entry: entry[1])[0]
        return self.tables.min_subnet(lowest)

    def _draw_slots(self, slot_levels: Sequence[int], rng: np.random.Generator,
                    epoch: int) -> tuple[list[Subnet], list[bool]]:
        drawn = [self._draw_slot(index, rng, epoch) for index in slot_levels]
        return [subnet for subnet, _ in drawn], [from_bank for _, from_bank in drawn]

    def _draw_slot(self, level_index: int, rng: np.random.Generator, epoch: int) -> tuple[Subnet, bool]:
        level = self.levels[level_index]
        bank = self.banks[level]
        if rng.random() < self.schedule.probability(epoch) and self._half_full(level):
            if self.bank_draw == "softmax":
                index = softmax_draw([score for _, score in bank], rng)
            elif self.bank_draw == "uniform":
                index = int(rng.integers(0, len(bank)))
            else:
                index = int(np.argmax([score for _, score in bank]))
            return bank[index][0], True
        if self.candidate_selection == "first" or not self._half_full(level):
            return self._table_rows(level_index, 1, rng)[0], False
        candidates = self._table_rows(level_index, self.num_candidates, rng)
        anchor = self._anchor(level_index)
        assert self.tables is not None
        values = [width_preference(c, anchor, self.tables.counter, self.tables.num_classes, self.space)
                  for c in candidates]
        return candidates[int(np.argmin(values))], False

    # ---- banks ---------------------------------------------------------------------------------
    def insert(self, level: float, subnet: Subnet, score: float) -> bool:
        """Add ``subnet`` to the level's bank (or update its score); True if it is in the bank afterwards."""
        bank = self.banks[level]
        for index, (entry, _) in enumerate(bank):
            if entry == subnet:
                bank[index] = (subnet, score)
                return True
        if len(bank) < self.bank_sizes[level]:
            bank.append((subnet, score))
            return True
        worst = int(np.argmin([s for _, s in bank]))
        if score > bank[worst][1]:
            bank[worst] = (subnet, score)
            return True
        return False

    def rescore(self, score: Callable[[Subnet], float], levels: Sequence[float] | None = None) -> None:
        """Re-score every entry of ``levels`` (all by default) with the current network."""
        for level in self.levels if levels is None else levels:
            self.banks[level] = [(subnet, float(score(subnet))) for subnet, _ in self.banks[level]]

    def observe(self, sample: StepSample, score: Callable[[Subnet], float]) -> None:
        """Score the step's table-drawn subnets and offer them to their banks (re-scoring first when due)."""
        if self.rescore_every_steps > 0 and (sample.step + 1) % self.rescore_every_steps == 0:
            self.rescore(score, sorted({level for level in sample.levels if level is not None}))
        for subnet, level, from_bank in zip(sample.uniform, sample.levels, sample.from_bank):
            if not from_bank and level is not None:
                self.insert(level, subnet, float(score(subnet)))

    def bank_fill(self) -> dict[float, float]:
        return {level: len(self.banks[level]) / self.bank_sizes[level] for level in self.levels}

    def state_dict(self) -> dict[str, Any]:
        banks = {f"{level:g}": [[subnet.encode(), score] for subnet, score in self.banks[level]]
                 for level in self.levels}
        return {**super().state_dict(), "banks": banks}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.banks = {level: [(decode(encoding, self.space), float(score))
                              for encoding, score in state["banks"][f"{level:g}"]] for level in self.levels}


def build_sampler(cfg: Mapping[str, Any], tables: FlopsTables | None, seed: int = 0,
                  space: SearchSpace = ELASTICVIT_SPACE) -> ComplexityAwareSampler:
    """The sampler a ``sampling`` config group describes (configs/elasticvit/sampling/*.yaml)."""
    common = {"policy": str(cfg["policy"]), "num_uniform": int(cfg["num_uniform"]), "seed": seed,
              "min_subnet": str(cfg.get("min_subnet", "table")), "space": space}
    if not cfg["performance_aware"]:
        return ComplexityAwareSampler(tables, **common)
    if tables is None:
        raise ValueError("performance-aware sampling needs FLOPs tables")
    bank = cfg["bank"]
    sizes = {level: int(bank["small_size"] if level < bank["large_from_level"] else bank["large_size"])
             for level in tables.levels}
    schedule = BankSchedule(**{key: cfg["probability"][key] for key in ("start", "increment", "every_epochs",
                                                                         "maximum")})
    return PerformanceAwareSampler(tables, **common, bank_sizes=sizes, schedule=schedule,
                                   num_candidates=int(cfg["candidates"]["count"]),
                                   candidate_selection=str(cfg["candidates"]["selection"]),
                                   bank_draw=str(bank["draw"]), rescore_every_steps=int(cfg["rescore_every_steps"]))


def simulate(sampler: ComplexityAwareSampler, steps: int, score: Callable[[Subnet], float],
             steps_per_epoch: int = 100) -> dict[str, Any]:
    """Run ``steps`` steps without a network; statistics of the walk, the MACs and the banks."""
    counter = sampler.tables.counter if sampler.tables is not None else "exact"
    walk, step_mmacs, bank_draws = [], [], 0
    for step in range(sampler.last_step + 1, sampler.last_step + 1 + steps):
        sample = sampler.sample(step, epoch=step // steps_per_epoch)
        walk.append(sample.level)
        step_mmacs.append(float(np.mean(total_macs(subnets_to_array(sample.uniform), counter))) / 1e6)
        bank_draws += sum(sample.from_bank)
        if isinstance(sampler, PerformanceAwareSampler):
            sampler.observe(sample, score)
    result: dict[str, Any] = {
        "policy": sampler.policy, "steps": steps,
        "mean_mmacs_gap": float(np.mean(np.abs(np.diff(step_mmacs)))) if steps > 1 else 0.0,
        "bank_draw_fraction": bank_draws / (steps * sampler.num_uniform)}
    if sampler.policy == "adjacent_step":
        indices = [sampler.levels.index(level) for level in walk]
        result["max_level_change"] = int(np.max(np.abs(np.diff(indices)))) if steps > 1 else 0
        result["occupancy"] = {f"{level:g}": walk.count(level) / steps for level in sampler.levels}
        result["walk"] = walk
    if isinstance(sampler, PerformanceAwareSampler):
        result["bank_fill"] = {f"{level:g}": fill for level, fill in sampler.bank_fill().items()}
    return result


def run(cfg: DictConfig) -> dict[str, Any]:
    """Sampler statistics for the config's ``sampling`` group, with a MACs proxy as the scorer."""
    from pathlib import Path

    from .tables import build_tables

    tables = None
    if cfg.sampling.policy != "uniform":
        path = Path(cfg.tables)
        if path.exists():
            tables = FlopsTables.load(path)
        elif cfg.build_if_missing:
            tables = build_tables(per_level=int(cfg.per_level), seed=int(cfg.seed))
            tables.save(path)
        else:
            raise FileNotFoundError(f"no FLOPs tables at {path}; build them with python -m moonlit.elasticvit.tables")
    sampler = build_sampler(cfg.sampling, tables, seed=int(cfg.seed))
    counter = tables.counter if tables is not None else "exact"

    def proxy_score(subnet: Subnet) -> float:  # accuracy grows with MACs inside a band
        return float(total_macs(subnets_to_array([subnet]), counter)[0]) / 1e9

    return simulate(sampler, int(cfg.steps), proxy_score, int(cfg.steps_per_epoch))


@hydra_app("elasticvit", "sampling_stats")
def main(cfg: DictConfig) -> None:
    """``python -m moonlit.elasticvit.sampling``: the run's statistics as JSON (the step-by-step walk left out)."""
    result = run(cfg)
    result.pop("walk", None)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
