"""Keep schedules: the deployed 0/1 token gates the ToP latency benchmark times (ToP, KDD'23, §5 speedup on CPU).

A :class:`KeepSchedule` is a number of kept rank bins per pruning location. :func:`uniform_schedule`
finds the one keep ratio rho, shared by every location, whose MAC reduction on the ToP MAC model
(``constraint.encoder_macs`` of ``constraint.expected_lengths``) meets a target, by bisection, then
snaps it to ``k`` of ``bin_num`` bins by the *integer* kept counts (a location keeps
``ceil(k * c / bin_num)`` of its ``c`` candidates, :func:`integer_kept_lengths`);
:func:`learned_schedule` reads one from a saved pruned model, carried to another depth by
:func:`resample_schedule`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from .constraint import EncoderDims, encoder_macs, expected_lengths
from .masks import GateValues
from .model import PruningConfig

__all__ = ["KeepSchedule", "integer_kept_lengths", "learned_schedule", "resample_schedule", "uniform_schedule"]


@dataclasses.dataclass(frozen=True)
class KeepSchedule:
    """Deployed 0/1 gates as kept bins per location (``bin_num`` = the location keeps every token)."""

    name: str
    prune_layers: tuple[int, ...]
    bin_num: int
    kept_bins: tuple[int, ...]
    target_reduction: float | None = None  # MAC reduction vs dense at the same real input
    keep_ratio: float | None = None  # the continuous ratio the bisection found

    def gate_values(self) -> GateValues:
        kept = torch.tensor(self.kept_bins, dtype=torch.float32).unsqueeze(-1)
        bins = (torch.arange(self.bin_num, dtype=torch.float32) < kept).to(torch.float32)
        layers = (kept.squeeze(-1) < self.bin_num).to(torch.float32)
        return GateValues(bins=bins, layers=layers)

    def pruning(self, special_token_ids: Sequence[int]) -> PruningConfig:
        return PruningConfig(self.prune_layers, self.bin_num, special_token_ids=tuple(special_token_ids))



def integer_kept_lengths(real_length: int, protected: int, schedule: KeepSchedule, num_layers: int) -> list[int]:
    """Tokens entering each layer under ``schedule``: a location keeps ceil(k * c / bin_num) of its c candidates.

    Exact for 0/1 monotone gates: a candidate of rank r falls in bin floor(r * bin_num / c)
    (``masks.rank_to_bin``) and is kept iff that bin is < k, i.e. iff r * bin_num < k * c.
    """
    location_of = {layer: p for p, layer in enumerate(schedule.prune_layers)}
    candidates = real_length - protected
    lengths = []
    for layer in range(num_layers):
        if layer in location_of:
            kept = schedule.kept_bins[location_of[layer]]
            candidates = -(-kept * candidates // schedule.bin_num)
        lengths.append(protected + candidates)
    return lengths


def uniform_schedule(target_reduction: float, real_length: int, protected: int, dims: EncoderDims,
                     prune_layers: Sequence[int], bin_num: int, iterations: int = 60) -> KeepSchedule:
    """The constant-keep-ratio schedule whose MAC reduction vs dense (same real input) is closest to the target."""
    if target_reduction < 1:
        raise ValueError(f"target MAC reduction must be >= 1 (dense = 1), got {target_reduction}")
    dense = encoder_macs([real_length] * dims.num_layers, dims)
    n0 = torch.tensor([float(real_length)], dtype=torch.float64)

    def reduction(ratio: float) -> float:
        keep = torch.full((len(prune_layers),), ratio, dtype=torch.float64)
        lengths = expected_lengths(n0, protected, keep, prune_layers, dims.num_layers)
        return dense / float(encoder_macs(lengths, dims)[0])

    if reduction(0.0) < target_reduction:
        raise ValueError(f"MAC reduction {target_reduction}x is out of reach at input length {real_length} with "
                         f"prune_layers {list(prune_layers)}: dropping every unprotected token gives "
                         f"{reduction(0.0):.3f}x")
    low, high = 0.0, 1.0  # reduction decreases with the keep ratio
    for _ in range(iterations):
        middle = (low + high) / 2
        low, high = (middle, high) if reduction(middle) > target_reduction else (low, middle)
    ratio = (low + high) / 2

    def candidate(kept: int) -> KeepSchedule:
        return KeepSchedule(f"{target_reduction:g}x", tuple(prune_layers), bin_num, (kept,) * len(prune_layers),
                            target_reduction=float(target_reduction), keep_ratio=ratio)

    def error(schedule: KeepSchedule) -> float:
        lengths = integer_kept_lengths(real_length, protected, schedule, dims.num_layers)
        return abs(dense / encoder_macs(lengths, dims) / target_reduction - 1)

    # Every k is tried: at short inputs the integer counts are coarse and the nearest k may not be the best.
    return min((candidate(k) for k in range(bin_num + 1)), key=lambda s: (error(s), abs(s.kept_bins[0] - ratio * bin_num)))


def resample_schedule(schedule: KeepSchedule, source_layers: int, num_layers: int) -> KeepSchedule:
    """Carry a learned schedule to a model of another depth by the *relative depth* of each layer.

    The schedule's share of prunable tokens entering each source layer, ``F(l)`` (a product of
    per-location keep ratios ``k / bin_num``), is interpolated linearly at ``x = j (L_s - 1) / (L - 1)``
    for each target layer ``j``; every target layer from 1 on becomes a pruning location keeping
    ``F(j) / F(j - 1)`` of its candidates, snapped to whole bins. ``F`` is non-increasing, so the
    result is a valid (monotone) schedule with the same keep-vs-depth profile.
    """
    if source_layers < 2 or num_layers < 2:
        raise ValueError(f"resampling needs at least 2 layers on both sides, got {source_layers} -> {num_layers}")
    location_of = {layer: p for p, layer in enumerate(schedule.prune_layers)}
    share, shares = 1.0, []
    for layer in range(source_layers):
        if layer in location_of:
            share *= schedule.kept_bins[location_of[layer]] / schedule.bin_num
        shares.append(share)
    kept, previous = [], 1.0
    for j in range(1, num_layers):
        x = j * (source_layers - 1) / (num_layers - 1)
        low = min(int(x), source_layers - 2)
        value = shares[low] + (x - low) * (shares[low + 1] - shares[low])
        ratio = value / previous if previous > 0 else 1.0
        kept.append(min(schedule.bin_num, max(0, round(ratio * schedule.bin_num))))
        previous = previous * kept[-1] / schedule.bin_num
    name = f"{schedule.name} ({source_layers}->{num_layers} layers)"
    return KeepSchedule(name, tuple(range(1, num_layers)), schedule.bin_num, tuple(kept))


def learned_schedule(folder: str | Path, num_layers: int, name: str | None = None) -> KeepSchedule:
    """The deployed schedule of a saved pruned model (``artifacts.save_pruned``): its gates' kept bins.

    A model of another depth (e.g. the 4-layer quickstart model for the 12-layer benchmark) has its
    schedule carried over by relative depth (:func:`resample_schedule`); the name says so.
    """
    from .artifacts import load_pruned

    top, _ = load_pruned(folder)
    kept = tuple(int(k) for k in top.gates.deployed_bins().tolist())
    schedule = KeepSchedule(f"learned:{name or Path(folder).name}", tuple(top.pruning.prune_layers),
                            top.pruning.bin_num, kept)
    if top.dims.num_layers != num_layers:
        schedule = resample_schedule(schedule, top.dims.num_layers, num_layers)
    return schedule
