"""Top-1 accuracy of a classifier over labelled batches: the one counting loop the vision papers share.

:func:`evaluate_top1` returns the fraction, the mean cross-entropy and the image count (counts summed
over ranks when distributed); :func:`top1_percent` is the same count as a percentage, the unit of
the searches' fitness and of their stored results. Both run the model in eval mode under
``torch.no_grad`` and give it back in the mode it came in.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .dist import DistContext

__all__ = ["evaluate_top1", "top1_percent"]


@torch.no_grad()
def _top1_totals(model: nn.Module, batches: Iterable, device: torch.device | None, ctx: DistContext | None,
                 max_batches: int | None) -> torch.Tensor:
    """float64 (correct, cross-entropy sum, count) over the first ``max_batches`` of ``batches``."""
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise ValueError(f"max_batches must be None or an int >= 1, got {max_batches!r}")
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    try:
        for images, labels in itertools.islice(batches, max_batches):
            if device is not None:
                images, labels = images.to(device), labels.to(device)
            logits = model(images)
            batch = torch.stack([(logits.argmax(1) == labels).sum().double(),
                                 F.cross_entropy(logits, labels, reduction="sum").double(),
                                 torch.tensor(labels.numel(), dtype=torch.float64, device=labels.device)])
            totals += batch.to(totals.device)
        if ctx is not None and ctx.is_distributed:
            torch.distributed.all_reduce(totals)
    finally:
        model.train(was_training)
    if totals[2] == 0:
        raise ValueError("the evaluation batches were empty; expected at least one labelled image")
    return totals


def evaluate_top1(model: nn.Module, loader: Iterable, device: torch.device | None = None,
                  ctx: DistContext | None = None, *, max_batches: int | None = None) -> dict[str, float]:
    """``{"top1": fraction, "loss": mean cross-entropy, "count": images}`` over ``loader``.

    ``device``: where the batches go (the model must be there already; None leaves them where they
    are). ``max_batches`` caps the batches read (None: all). With a distributed ``ctx`` the counts
    are summed over ranks, so every rank gets the accuracy of the whole sharded set.
    """
    totals = _top1_totals(model, loader, device, ctx, max_batches)
    return {"top1": float(totals[0] / totals[2]), "loss": float(totals[1] / totals[2]), "count": int(totals[2])}


def top1_percent(model: nn.Module, batches: Iterable, *, device: torch.device | None = None,
                 max_batches: int | None = None, ctx: DistContext | None = None) -> float:
    """Top-1 in percent, ``100 * correct / count`` (the searches' fitness); arguments as :func:`evaluate_top1`."""
    totals = _top1_totals(model, batches, device, ctx, max_batches)
    return 100.0 * int(totals[0]) / int(totals[2])
