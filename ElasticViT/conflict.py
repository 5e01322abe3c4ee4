"""Gradient conflict between the subnets of consecutive training steps (ElasticViT, ICCV'23, Sec. 3.1).

The paper's argument for its samplers: subnets of very different size, trained one after the other on
shared weights, pull those weights in conflicting directions; drawing the subnets of adjacent steps
from the same or a neighbouring FLOPs level lowers the conflict. :class:`GradientConflict` measures it
during training as the cosine similarity between the gradient of step ``t`` and that of step ``t - 1``,
taken over the *shared* weight elements only — the elements both steps' subnets used, i.e. those with a
non-zero gradient in both steps (an element a smaller subnet slices away gets no gradient). A cosine
near 1 means the two steps agree; near 0 or below, they conflict.

The gradient is read after the step's passes are summed and averaged over ranks and before clipping
(the direction the step asks for, not what the optimizer made of it). The previous step's gradient is a
buffer, so a run resumed from a checkpoint that saved the monitor (``modules=``) continues the series.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["ConflictSummary", "GradientConflict", "shared_cosine", "summarize_cosines"]


def shared_cosine(current: Tensor, previous: Tensor) -> float:
    """Cosine similarity of two flat gradients over the elements non-zero in both; NaN when none is."""
    if current.shape != previous.shape:
        raise ValueError(f"gradients of different sizes: {tuple(current.shape)} and {tuple(previous.shape)}")
    shared = (current != 0) & (previous != 0)
    if not bool(shared.any()):
        return math.nan
    a, b = current[shared].double(), previous[shared].double()
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


class GradientConflict(nn.Module):
    """Per-step shared-weight gradient cosine with the previous step (module docstring)."""

    def __init__(self, parameters: Iterable[nn.Parameter]) -> None:
        super().__init__()
        self._watched = [p for p in parameters if p.requires_grad]
        if not self._watched:
            raise ValueError("GradientConflict needs at least one parameter that requires a gradient")
        size = sum(p.numel() for p in self._watched)
        self.register_buffer("previous", torch.zeros(size))
        self.register_buffer("has_previous", torch.zeros((), dtype=torch.bool))

    def flat_gradient(self) -> Tensor:
        """The watched parameters' gradients as one float vector (zeros where a gradient is None)."""
        parts = [p.grad.detach().reshape(-1).float() if p.grad is not None else torch.zeros(p.numel())
                 for p in self._watched]
        return torch.cat([part.to(self.previous.device) for part in parts])

    @torch.no_grad()
    def observe(self) -> float | None:
        """Record this step's gradient; the cosine with the previous step's (None on the first step)."""
        current = self.flat_gradient()
        cosine = shared_cosine(current, self.previous) if bool(self.has_previous) else None
        self.previous.copy_(current)
        self.has_previous.fill_(True)
        return cosine


@dataclass(frozen=True)
class ConflictSummary:
    """Statistics of a run's per-step cosines (steps without shared weights left out)."""

    steps: int
    mean: float
    median: float
    negative_fraction: float

    def to_dict(self) -> dict[str, float | int]:
        return {"steps": self.steps, "mean": self.mean, "median": self.median,
                "negative_fraction": self.negative_fraction}


def summarize_cosines(cosines: Sequence[float | None]) -> ConflictSummary:
    """Mean, median and fraction below zero of the finite cosines of a run."""
    values = sorted(c for c in cosines if c is not None and math.isfinite(c))
    if not values:
        return ConflictSummary(0, math.nan, math.nan, math.nan)
    n = len(values)
    median = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
    return ConflictSummary(n, sum(values) / n, median, sum(v < 0 for v in values) / n)
