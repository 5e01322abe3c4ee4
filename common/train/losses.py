"""Distillation losses for weight-sharing supernets: soft-target CE and AlphaNet's adaptive alpha-divergence.

In-place distillation (Yu et al., BigNAS/Slimmable) trains the sampled subnets of a supernet on the
largest subnet's predictions. AlphaNet (Wang et al., ICML 2021, arXiv 2102.07954, §3) replaces the
KL divergence with an alpha-divergence between teacher p and student q,

    D_alpha(p || q) = sum_i q_i f(p_i / q_i),   f(t) = (t^alpha - 1) / (alpha (alpha - 1)),

whose limits are KL(p || q) (alpha -> 1, f(t) = t log t) and KL(q || p) (alpha -> 0, f(t) = -log t).
Per sample it takes the larger of D_alpha_min and D_alpha_max (default alpha in {-1, 1}), and clips
the importance weight t^alpha at ``clip`` (default 5) to bound the gradient variance.

The gradient with respect to the student logits is
``d D = -sum_i q_i (t_i^alpha / alpha + 1 / (alpha (alpha - 1))) d log q_i`` (for alpha = 1:
``-sum_i q_i t_i d log q_i``; alpha = 0: ``-sum_i q_i (log t_i - 1) d log q_i``) with the clipped
weight in place of t^alpha, which is what AlphaNet back-propagates. :func:`adaptive_alpha_divergence`
returns a tensor whose *value* is the (clipped) divergence and whose *gradient* is that one —
the reference returned the surrogate whose value is not the divergence, so its logged losses
were not divergences. The teacher receives no gradient.

Label-smoothed CE is ``torch.nn.functional.cross_entropy(label_smoothing=eps)``: the same target
``(1 - eps) one_hot + eps / n_classes`` as the reference's ``CrossEntropyLossSmooth``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AdaptiveAlphaDivergence", "adaptive_alpha_divergence", "alpha_divergence", "soft_target_cross_entropy"]

# alpha within this distance of 0 or 1 uses the limit (KL) form, as AlphaNet's implementation.
_LIMIT_TOLERANCE = 1e-3


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"reduction {reduction!r} is not one of 'mean', 'sum', 'none'")


def _check_logits(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must both be (batch, classes)")


def soft_target_cross_entropy(logits: Tensor, target_probs: Tensor, reduction: str = "mean") -> Tensor:
    """``-sum_i target_i log softmax(logits)_i`` per sample; targets are probabilities (rows sum to 1)."""
    _check_logits(logits, target_probs)
    return _reduce(-(target_probs * F.log_softmax(logits, dim=1)).sum(1), reduction)


def _weighted_terms(log_teacher: Tensor, log_student: Tensor, alpha: float,
                    clip: float) -> tuple[Tensor, Tensor]:
    """Per class ``q (f(t) - f(1))`` and ``q rho(t)`` (see the module docstring), t = p / q.

    Computed from log-probabilities so that a student probability that underflows to 0 gives 0,
    not 0 * inf = NaN (the reference divided probabilities).
    """
    student_probs = log_student.exp()
    log_ratio = log_teacher - log_student
    if abs(alpha) < _LIMIT_TOLERANCE:
        log_ratio = log_ratio.clamp(max=math.log(clip))
        return -student_probs * log_ratio, student_probs * (log_ratio - 1.0)
    if abs(alpha - 1.0) < _LIMIT_TOLERANCE:
        teacher_probs = log_teacher.exp()
        return teacher_probs * log_ratio, teacher_probs  # q t log t = p log t, q t = p
    weight = torch.exp((alpha * log_ratio).clamp(max=math.log(clip)))
    base = 1.0 / (alpha * (alpha - 1.0))
    return student_probs * (weight - 1.0) * base, student_probs * (weight / alpha + base)


def _divergence_and_surrogate(student_logits: Tensor, teacher_logits: Tensor, alpha: float,
                              clip: float) -> tuple[Tensor, Tensor]:
    log_student = F.log_softmax(student_logits, dim=1)
    terms, weights = _weighted_terms(F.log_softmax(teacher_logits, dim=1).detach(), log_student.detach(),
                                     float(alpha), clip)
    # Its gradient is the divergence's (with the clipped weight); its value is not the divergence.
    surrogate = -(weights * log_student).sum(1)
    return terms.sum(1), surrogate


def alpha_divergence(student_logits: Tensor, teacher_logits: Tensor, alpha: float, clip: float = float("inf"),
                     reduction: str = "mean") -> Tensor:
    """``D_alpha(teacher || student)`` from logits, importance weights clipped at ``clip``.

    The value is the divergence; the gradient (student only) is AlphaNet's clipped one.
    """
    _check_logits(student_logits, teacher_logits)
    divergence, surrogate = _divergence_and_surrogate(student_logits, teacher_logits, alpha, clip)
    return _reduce(divergence + (surrogate - surrogate.detach()), reduction)


def adaptive_alpha_divergence(student_logits: Tensor, teacher_logits: Tensor, alpha_min: float = -1.0,
                              alpha_max: float = 1.0, clip: float = 5.0, reduction: str = "mean") -> Tensor:
    """AlphaNet's loss: per sample the larger of ``D_alpha_min`` and ``D_alpha_max`` (ties take alpha_max)."""
    _check_logits(student_logits, teacher_logits)
    if not alpha_min <= alpha_max:
        raise ValueError(f"alpha_min {alpha_min} must not exceed alpha_max {alpha_max}")
    if not clip > 0:
        raise ValueError(f"clip {clip} must be positive")
    low, low_surrogate = _divergence_and_surrogate(student_logits, teacher_logits, alpha_min, clip)
    high, high_surrogate = _divergence_and_surrogate(student_logits, teacher_logits, alpha_max, clip)
    take_low = low > high
    divergence = torch.where(take_low, low, high)
    surrogate = torch.where(take_low, low_surrogate, high_surrogate)
    return _reduce(divergence + (surrogate - surrogate.detach()), reduction)


class AdaptiveAlphaDivergence(torch.nn.Module):
    """Module form of :func:`adaptive_alpha_divergence` (for configs: ``_target_`` with the alpha range)."""

    def __init__(self, alpha_min: float = -1.0, alpha_max: float = 1.0, clip: float = 5.0,
                 reduction: str = "mean") -> None:
        super().__init__()
        self.alpha_min, self.alpha_max, self.clip, self.reduction = alpha_min, alpha_max, clip, reduction

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return adaptive_alpha_divergence(student_logits, teacher_logits, self.alpha_min, self.alpha_max, self.clip,
                                         self.reduction)

    def extra_repr(self) -> str:
        return f"alpha=[{self.alpha_min}, {self.alpha_max}], clip={self.clip}"
