"""Warm-up + cosine learning-rate factors, per step, for ``torch.optim.lr_scheduler.LambdaLR``.

Three recipes share the idea "linear warm-up, then half a cosine" but differ in how the two join,
and each paper keeps the one its reference used (``style``):

``after_warmup`` (the shared classifier recipe)
    ``(s + 1) / w`` for ``s < w``, then ``min + (1 - min) * 0.5 * (1 + cos(pi * min(1, (s - w) / (T - w))))``:
    the ramp reaches 1 at the warm-up's last step and the cosine runs over the steps after it.
``multiply`` (SpaceEvo; the reference's ``WarmupCosineLR``)
    ``warm(s) * 0.5 * (1 + cos(pi * min(s, T) / T))`` with ``warm = a * (1 - s / w) + s / w`` for ``s < w``
    (``a`` = ``warmup_start``), else 1: the cosine runs over the warm-up too and the two terms multiply.
``timm`` (ElasticViT; timm's ``CosineLRScheduler`` with ``warmup_prefix=False``)
    ``a + (1 - a) * s / w`` for ``s < w``, else ``min + (1 - min) * 0.5 * (1 + cos(pi * min(s, T) / T))``:
    the cosine counts from step 0, so the factor drops at ``s = w``; ``T`` is the cosine length and
    later steps (a cool-down) stay at ``min``.

``min`` is ``min_ratio`` (final lr / base lr). The arithmetic of each style is kept in the order its
recipe wrote it, so the factors equal the recipes' bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

__all__ = ["SCHEDULE_STYLES", "warmup_cosine"]

ScheduleStyle = Literal["after_warmup", "multiply", "timm"]
SCHEDULE_STYLES: tuple[str, ...] = ("after_warmup", "multiply", "timm")


def warmup_cosine(warmup_steps: int, total_steps: int, *, style: ScheduleStyle, warmup_start: float | None = None,
                  min_ratio: float = 0.0) -> Callable[[int], float]:
    """The lr factor of step ``s`` (0-based) under ``style`` (module docstring).

    ``warmup_start`` is the factor at step 0 for ``multiply`` and ``timm`` (required there); the
    ``after_warmup`` ramp starts at ``1 / warmup_steps`` and takes none. ``multiply`` has no floor
    (``min_ratio`` must be 0).
    """
    if style not in SCHEDULE_STYLES:
        raise ValueError(f"style {style!r} is not one of {SCHEDULE_STYLES}")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio!r}")
    if style == "after_warmup":
        if warmup_start is not None:
            raise ValueError(f"style 'after_warmup' ramps from 1 / warmup_steps; got warmup_start={warmup_start!r}")
        return _after_warmup(warmup_steps, total_steps, min_ratio)
    if warmup_start is None:
        raise ValueError(f"style {style!r} needs warmup_start (the factor at step 0)")
    if style == "multiply":
        if min_ratio != 0.0:
            raise ValueError(f"style 'multiply' decays to 0; got min_ratio={min_ratio!r}")
        return _multiply(warmup_steps, total_steps, warmup_start)
    return _timm(warmup_steps, total_steps, warmup_start, min_ratio)


def _after_warmup(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _multiply(warmup_steps: int, total_steps: int, warmup_start: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        warm = 1.0
        if step < warmup_steps:
            progress = step / warmup_steps
            warm = warmup_start * (1.0 - progress) + progress
        return warm * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))

    return factor


def _timm(warmup_steps: int, cosine_steps: int, warmup_start: float, min_ratio: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return warmup_start + (1.0 - warmup_start) * step / warmup_steps
        progress = min(step, cosine_steps) / cosine_steps
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
