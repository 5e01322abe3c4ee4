"""Q-T score of a SpaceEvo search space from its block LUTs (ICCV'23, arXiv 2303.08308, Sec. 3.3).

**Q-T score** of a search space (the reference's ``BlockKDSearcher``): draw N sub-networks from the
block LUTs, in batches of ``batch_size`` that share one resolution r from the LUT resolutions; each
stage contributes a uniformly random LUT row of its (stage, block, window) table at r.
``loss = Σ NSR``, ``latency = Σ ms + other(r)`` (first_conv + stage0 + head). For each constraint c::

    p_c = #{latency <= c} / N + 1e-5
    L_c = max(1, (t / p_c) ** a)                 # penalty for spaces that rarely meet c
    A_c = mean of the `top` smallest losses with latency <= c   (1e5 if none)
    score = Σ_c 1 / (L_c * A_c)

Differences from the reference, on purpose: vectorized numpy with an explicit ``Generator``
(6-8 ms per evaluation with two constraints, vs ~0.12 s per constraint) and one sample set shared by
all constraints. The search over spaces is in :mod:`moonlit.spaceevo.space_search`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import math
import numbers

import numpy as np
from moonlit.common.errors import InputError

from .lut import LUTSet
from .space import SEARCHABLE_STAGES, SpaceEncoding

__all__ = ["Draw", "QTScore", "QTScorer"]

NO_FEASIBLE_LOSS = 1e5  # the reference's top-loss when no sample meets the constraint
P_EPSILON = 1e-5        # added to p_c by the reference so that L_c stays finite


@dataclass(frozen=True)
class QTScore:
    score: float
    p: tuple[float, ...]             # fraction of samples meeting each constraint (+1e-5)
    latency_loss: tuple[float, ...]  # L_c
    top_loss: tuple[float, ...]      # A_c


@dataclass(frozen=True)
class Draw:
    """Random numbers for one Q-T evaluation: samples per resolution (contiguous) and a uniform per stage/sample."""

    samples_per_resolution: tuple[int, ...]
    uniforms: np.ndarray  # (stages, N) in [0, 1)


class QTScorer:
    """Q-T score of search spaces from a LUT folder; ``other_latency_ms[i]`` belongs to ``lut_resolutions[i]``."""

    def __init__(self, luts: LUTSet, other_latency_ms: Sequence[float], constraints_ms: Sequence[float],
                 t: float = 0.1, a: float = 0.01, top: int = 50, num_samples: int = 100_000,
                 batch_size: int = 500) -> None:
        self.spec = luts.spec
        self.resolutions = self.spec.lut_resolutions
        if len(other_latency_ms) != len(self.resolutions):
            raise InputError(f"{len(other_latency_ms)} other-latency values {list(other_latency_ms)}, expected one "
                             f"per LUT resolution {list(self.resolutions)}")
        if not constraints_ms:
            raise InputError("no latency constraint given; expected at least one, e.g. [10, 15]")
        for name, values, low in (("other_latency_ms", other_latency_ms, 0.0), ("constraints_ms", constraints_ms, None),
                                  ("t", [t], None), ("a", [a], None)):
            for value in values:
                if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                        or not math.isfinite(value) or (value < low if low is not None else value <= 0):
                    raise InputError(f"{name} {list(values) if len(values) > 1 else value!r} holds {value!r}; "
                                     f"expected finite numbers {'>= 0' if low is not None else '> 0'}")
        if isinstance(top, bool) or not isinstance(top, numbers.Integral) or top < 1:
            raise InputError(f"top {top!r} is not a positive integer (the number of smallest losses averaged)")
        if num_samples % batch_size or num_samples <= 0:
            raise InputError(f"num_samples {num_samples} is not a positive multiple of batch_size {batch_size}")
        missing = luts.missing()
        if missing:
            raise InputError(f"LUT set for '{self.spec.name}' lacks {len(missing)} tables, e.g. {missing[:3]}")
        self.other_latency_ms = np.asarray(other_latency_ms, dtype=np.float64)
        self.constraints_ms = tuple(float(c) for c in constraints_ms)
        self.t, self.a, self.top = float(t), float(a), int(top)
        self.num_samples, self.batch_size = int(num_samples), int(batch_size)
        # All tables in two flat arrays, each table's rows grouped by resolution: (start, count) per resolution.
        losses, latencies, self.segments = [], [], {}
        offset = 0
        for lut in luts:
            resolution = lut.resolutions(self.spec)
            loss, latency = lut.arrays()
            if (loss <= 0).any():  # A_c is a mean of summed NSRs and the score divides by it
                rows = (np.flatnonzero(loss <= 0) + 1).tolist()
                raise InputError(f"{lut.file_name}: NSR 0 in row(s) {rows[:5]}; the Q-T score needs NSRs > 0 "
                                 "(a block-KD student never matches its teacher exactly)")
            bounds = []
            for r in self.resolutions:
                rows = np.flatnonzero(resolution == r)
                if rows.size == 0:
                    raise InputError(f"{lut.file_name} has no rows at resolution {r}")
                losses.append(loss[rows])
                latencies.append(latency[rows])
                bounds.append((offset, rows.size))
                offset += rows.size
            self.segments[(lut.stage, lut.block, lut.window)] = bounds
        self.loss_table = np.concatenate(losses)
        self.latency_table = np.concatenate(latencies)

    def draw(self, rng: np.random.Generator) -> Draw:
        batches = rng.integers(len(self.resolutions), size=self.num_samples // self.batch_size)
        counts = np.bincount(batches, minlength=len(self.resolutions)) * self.batch_size
        return Draw(tuple(int(c) for c in counts), rng.random((SEARCHABLE_STAGES, self.num_samples)))

    def stage_samples(self, stage: int, block: int, window: int, draw: Draw) -> tuple[np.ndarray, np.ndarray]:
        """(loss, latency) of every sample's sub-stage in ``stage`` (1..6) under ``draw``."""
        rows = np.empty(self.num_samples, dtype=np.intp)
        lo = 0
        for (start, count), n in zip(self.segments[(stage, block, window)], draw.samples_per_resolution):
            rows[lo: lo + n] = draw.uniforms[stage - 1, lo: lo + n] * count
            rows[lo: lo + n] += start
            lo += n
        return self.loss_table[rows], self.latency_table[rows]

    def sample_space(self, space: SpaceEncoding, draw: Draw,
                     cache: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Total (loss, latency) of the N sampled subnets; ``cache`` reuses stage samples of the same draw."""
        if space.hyperspace != self.spec.name:
            raise InputError(f"space '{space}' is not of hyperspace '{self.spec.name}' of these LUTs")
        loss = np.zeros(self.num_samples)
        latency = np.repeat(self.other_latency_ms, draw.samples_per_resolution)
        for stage, (block, window) in enumerate(zip(space.blocks, space.windows), 1):
            key = (stage, block, window)
            if cache is not None and key in cache:
                stage_loss, stage_latency = cache[key]
            else:
                stage_loss, stage_latency = self.stage_samples(stage, block, window, draw)
                if cache is not None:
                    cache[key] = (stage_loss, stage_latency)
            loss += stage_loss
            latency += stage_latency
        return loss, latency

    def score_samples(self, loss: np.ndarray, latency: np.ndarray) -> QTScore:
        score, ps, penalties, top_losses = 0.0, [], [], []
        for constraint in self.constraints_ms:
            feasible = loss[latency <= constraint]
            p = feasible.size / self.num_samples + P_EPSILON
            if feasible.size == 0:
                top_loss = NO_FEASIBLE_LOSS
            elif feasible.size <= self.top:
                top_loss = float(feasible.mean())
            else:
                top_loss = float(np.partition(feasible, self.top - 1)[: self.top].mean())
            penalty = max(1.0, (self.t / p) ** self.a)
            score += 1.0 / (penalty * top_loss)
            ps.append(p), penalties.append(penalty), top_losses.append(top_loss)
        return QTScore(score, tuple(ps), tuple(penalties), tuple(top_losses))

    def score(self, space: SpaceEncoding, rng: np.random.Generator) -> QTScore:
        """One single-pass Q-T evaluation with fresh random numbers (what the reference does)."""
        return self.score_samples(*self.sample_space(space, self.draw(rng)))

    def latency_range(self, space: SpaceEncoding) -> tuple[float, float]:
        """(smallest latency at the lowest LUT resolution, largest at the highest) over the LUT rows."""
        low = high = 0.0
        for stage, (block, window) in enumerate(zip(space.blocks, space.windows), 1):
            bounds = self.segments[(stage, block, window)]
            (s0, n0), (s1, n1) = bounds[0], bounds[-1]
            low += float(self.latency_table[s0: s0 + n0].min())
            high += float(self.latency_table[s1: s1 + n1].max())
        return low + float(self.other_latency_ms[0]), high + float(self.other_latency_ms[-1])
