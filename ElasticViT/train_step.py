"""One step of ElasticViT's conflict-aware supernet training (ICCV'23, arXiv 2303.09730, Sec. 3.2–3.3 and Sec. 4).

A step trains the subnets a sampler (:mod:`moonlit.elasticvit.sampling`) drew for it, all from one
FLOPs level under the paper's policy:

1. every **uniform** subnet learns from the teacher ensemble's averaged softmax at temperature 0.2
   (:class:`~moonlit.elasticvit.teachers.TeacherEnsemble`) by soft cross-entropy — or, without
   teachers, from the (mixup / label-smoothed) labels;
2. the level's **min** subnet learns from the mean of the uniform subnets' softmax by AlphaNet's
   adaptive alpha-divergence (alpha in [-1, 1], importance weight clipped at 5);
3. gradients of the passes are summed, averaged over ranks once, clipped adaptively (AGC, factor
   0.1, timm's ``adaptive_clip_grad``), and one AdamW step follows.

**Performance-aware** sampling needs each newly drawn subnet's score: :func:`make_scorer` returns
``-CE`` on the step's un-mixed batch, computed without gradients, with batch statistics in BN
and dropout off, and averaged over ranks so that every rank keeps identical banks. Differences from
the reference, on purpose: its scoring forward ran in train mode and so moved the supernet's BN
running statistics (and its dropout, had it been on); here the scoring forward leaves no trace.

AdamW's weight decay (0.05) skips the convolutional part — the first conv and every MBConv block
(stem, C stages, the transformer stages' reduction blocks; :func:`conv_block_parameters`), as the
paper's Sec. 4 and the reference's ``no_weight_decay`` list — and every 1-D parameter (norms,
biases), as timm does (:func:`moonlit.common.train.optim.build_optimizer`). The learning rate
follows timm's ``CosineLRScheduler`` as the reference configures it, per step
(:func:`moonlit.common.train.schedules.warmup_cosine`, ``style="timm"``): linear warm-up from
``warmup_lr`` to ``lr``, then ``min_lr + (lr - min_lr)(1 + cos(pi t / T)) / 2`` with ``t`` counted
from step 0 (timm's ``warmup_prefix=False``) up to ``T`` = the cosine epochs, then ``min_lr`` for
the cool-down epochs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moonlit.common.train.dist import DistContext, all_reduce_mean
from moonlit.common.train.losses import (
    adaptive_alpha_divergence,
    soft_target_cross_entropy,
)
from moonlit.common.train.supernet import average_gradients, batch_statistics_forward

from .conflict import GradientConflict
from .ops import ElasticMBConv
from .sampling import StepSample
from .space import SearchSpace, Subnet
from .supernet import ElasticViTSupernet
from .teachers import TeacherEnsemble

__all__ = ["StepSettings", "conv_block_parameters", "make_scorer", "space_from_config", "train_step"]


@dataclass(frozen=True)
class StepSettings:
    """Loss and clipping constants of one step: the reference's values by default."""

    alpha_min: float = -1.0
    alpha_max: float = 1.0
    alpha_clip: float = 5.0
    agc_clip_factor: float | None = 0.1   # None: no gradient clipping
    label_smoothing: float = 0.1          # label targets only (no teachers, no mixup)


def conv_block_parameters(supernet: nn.Module) -> set[int]:
    """ids of the parameters of the first conv and of every MBConv block (exempt from weight decay)."""
    ids = {id(p) for m in supernet.modules() if isinstance(m, ElasticMBConv) for p in m.parameters()}
    first_conv = getattr(supernet, "first_conv", None)
    if first_conv is not None:
        ids |= {id(p) for p in first_conv.parameters()}
    return ids


def make_scorer(supernet: ElasticViTSupernet, images: Tensor, labels: Tensor,
                ctx: DistContext | None = None) -> Callable[[Subnet], float]:
    """``score(subnet)`` = ``-CE`` on (images, labels), averaged over ranks; leaves the supernet unchanged."""

    def score(subnet: Subnet) -> float:
        active = supernet.active_subnet
        supernet.set_active(subnet)
        try:
            with torch.no_grad(), batch_statistics_forward(supernet):
                loss = F.cross_entropy(supernet(images), labels).detach().reshape(1).double()
        finally:
            supernet.set_active(active)
        if ctx is not None and ctx.is_distributed:
            all_reduce_mean(loss)
        return -float(loss)

    return score


def _label_targets(labels: Tensor, num_classes: int, smoothing: float) -> Tensor:
    off = smoothing / num_classes
    return torch.full((labels.numel(), num_classes), off, device=labels.device).scatter_(
        1, labels.view(-1, 1), 1.0 - smoothing + off)


def train_step(supernet: ElasticViTSupernet, sample: StepSample, images: Tensor, labels: Tensor,
               optimizer: torch.optim.Optimizer, teachers: TeacherEnsemble | None = None,
               mixup: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
               settings: StepSettings = StepSettings(), ctx: DistContext | None = None,
               conflict: GradientConflict | None = None) -> dict[str, Any]:
    """Train ``sample``'s uniform subnets and its min subnet on one batch; returns each pass's loss.

    With ``conflict``, the step's summed gradient (before clipping) is also compared with the previous
    step's; the result's ``grad_cos`` is the cosine (None on the first observed step).
    """
    optimizer.zero_grad(set_to_none=True)
    num_classes = supernet.head.classifier.out_features
    if mixup is not None:
        inputs, label_targets = mixup(images, labels)
    else:
        inputs, label_targets = images, _label_targets(labels, num_classes, settings.label_smoothing)
    targets = teachers(inputs) if teachers is not None else label_targets
    losses: dict[str, float] = {}
    uniform_log_probs = []
    for index, subnet in enumerate(sample.uniform):
        supernet.set_active(subnet)
        logits = supernet(inputs)
        loss = soft_target_cross_entropy(logits, targets)
        loss.backward()
        losses[f"uniform{index}"] = loss.item()
        uniform_log_probs.append(F.log_softmax(logits.detach(), dim=1))
    # log of the mean of the uniform subnets' softmax, without underflow: logsumexp - log n
    ensemble_logits = torch.logsumexp(torch.stack(uniform_log_probs), dim=0) - math.log(len(uniform_log_probs))
    supernet.set_active(sample.min)
    loss = adaptive_alpha_divergence(supernet(inputs), ensemble_logits, settings.alpha_min, settings.alpha_max,
                                     settings.alpha_clip)
    loss.backward()
    losses["min"] = loss.item()
    average_gradients(supernet, ctx)
    grad_cos = conflict.observe() if conflict is not None else None
    if settings.agc_clip_factor:
        from timm.utils import adaptive_clip_grad

        adaptive_clip_grad(supernet.parameters(), settings.agc_clip_factor)
    optimizer.step()
    return {"losses": losses, "uniform": [str(s) for s in sample.uniform], "min": str(sample.min),
            "levels": list(sample.levels), "from_bank": list(sample.from_bank), "grad_cos": grad_cos}


def space_from_config(node: Mapping[str, Any] | None) -> SearchSpace:
    """The search space a config's ``space`` node describes; None is the paper's space.

    The node holds :class:`~moonlit.elasticvit.space.SearchSpace`'s fields (lists for tuples; stages
    as lists of ``{name, widths, depths, downsample[, se]}``): a reduced space for smoke runs. It is
    checked by :func:`~moonlit.elasticvit.space.search_space_from_dict` (InputError naming the key).
    """
    from .space import ELASTICVIT_SPACE, search_space_from_dict

    if node is None:
        return ELASTICVIT_SPACE
    return search_space_from_dict(dict(node), "space config")
