"""Training losses of ToP (KDD'23): prediction distillation and ranking distillation.

Prediction distillation is Hinton et al.'s KL loss at temperature T (times T^2); STS-B, a
regression task, uses MSE on the labels instead. Ranking distillation teaches the early layers'
token scores the teacher's last-layer token ranking with the LambdaLoss ARP-2 pairwise loss
(Wang et al., "The LambdaLoss Framework for Ranking Metric Optimization", CIKM'18; the reference
uses pytorchltr's `LambdaARPLoss2`) on the teacher's top-K tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "arp2_pairwise_loss",
    "prediction_distillation_loss",
    "ranking_distillation_loss",
    "ranking_loss_weight",
    "regression_loss",
]


def prediction_distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0) -> Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch.

    The teacher is a fixed target: no gradient flows into `teacher_logits`.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def regression_loss(predictions: Tensor, labels: Tensor) -> Tensor:
    """Mean squared error; predictions [B] or [B, 1] (one regression output), labels [B]."""
    if predictions.ndim == 2 and predictions.shape[-1] == 1:
        predictions = predictions.squeeze(-1)
    if predictions.shape != labels.shape:
        raise ValueError(
            f"predictions {tuple(predictions.shape)} do not match labels {tuple(labels.shape)}; "
            "expected [B] or [B, 1] against [B]"
        )
    return F.mse_loss(predictions, labels.to(predictions.dtype))


def arp2_pairwise_loss(scores: Tensor, relevance: Tensor, mask: Tensor | None = None) -> Tensor:
    """LambdaLoss ARP-2 per list, [N]: sum over pairs with y_i > y_j of
    (y_i - y_j) * log2(1 + exp(-(s_i - s_j))).

    scores, relevance [N, K]; `mask` [N, K] (bool, optional) leaves out the entries that are False.
    """
    if scores.shape != relevance.shape or scores.ndim != 2:
        raise ValueError(
            f"expected scores and relevance of the same shape [N, K], got {tuple(scores.shape)} and {tuple(relevance.shape)}"
        )
    relevance = relevance.to(scores.dtype)
    if mask is not None:
        if mask.shape != scores.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match scores {tuple(scores.shape)}")
        # Zero the left-out scores first so that inf/nan there cannot leak into the gradient.
        scores = torch.where(mask, scores, torch.zeros_like(scores))
    rel_gap = relevance.unsqueeze(-1) - relevance.unsqueeze(-2)  # [N, i, j] = y_i - y_j
    score_gap = scores.unsqueeze(-1) - scores.unsqueeze(-2)
    pair_loss = rel_gap * F.softplus(-score_gap) / math.log(2.0)  # log2(1 + e^-x) = softplus(-x) / ln 2
    valid = rel_gap > 0
    if mask is not None:
        valid = valid & mask.unsqueeze(-1) & mask.unsqueeze(-2)
    return torch.where(valid, pair_loss, torch.zeros_like(pair_loss)).sum(dim=(-2, -1))


def ranking_distillation_loss(
    student_scores: Sequence[Tensor], teacher_scores: Tensor, candidate_mask: Tensor, top_k: int
) -> Tensor:
    """ARP-2 distillation of the teacher's top-K token ranking into each student layer's scores.

    Per row, K = min(top_k, #candidates); the teacher's K best candidates get relevance K..1
    (best = K); the row's loss is ARP-2 of the student's scores at those tokens / K^2; rows with
    fewer than 2 candidates contribute 0 (they still count in the mean over rows). Returns the sum
    over student layers of the mean over rows. scores [B, T]; candidate_mask [B, T] bool (tokens
    that can be ranked: not padding, not CLS).
    """
    if top_k < 2:
        raise ValueError(f"top_k must be >= 2 for a pairwise loss, got {top_k}")
    if teacher_scores.ndim != 2 or candidate_mask.shape != teacher_scores.shape:
        raise ValueError(
            f"expected teacher_scores and candidate_mask of shape [B, T], got {tuple(teacher_scores.shape)} "
            f"and {tuple(candidate_mask.shape)}"
        )
    if candidate_mask.dtype != torch.bool:
        raise ValueError(f"candidate_mask must be a bool tensor, got {candidate_mask.dtype}")
    if len(student_scores) == 0:
        raise ValueError("student_scores is empty: expected at least one layer's scores")
    k_max = min(top_k, teacher_scores.shape[-1])
    teacher = teacher_scores.detach().masked_fill(~candidate_mask, float("-inf"))
    top_index = teacher.topk(k_max, dim=-1, sorted=True).indices  # [B, k_max], position j = teacher rank j
    k_row = candidate_mask.sum(-1).clamp(max=top_k)  # [B]
    position = torch.arange(k_max, device=teacher.device)
    selected = position < k_row.unsqueeze(-1)
    relevance = (k_row.unsqueeze(-1) - position).to(teacher_scores.dtype)
    k_sq = k_row.clamp_min(1).to(teacher_scores.dtype) ** 2
    has_pairs = k_row >= 2
    total = teacher_scores.new_zeros(())
    for layer, scores in enumerate(student_scores):
        if scores.shape != teacher_scores.shape:
            raise ValueError(
                f"student layer {layer} scores {tuple(scores.shape)} do not match teacher {tuple(teacher_scores.shape)}"
            )
        picked = scores.gather(-1, top_index)
        per_row = arp2_pairwise_loss(picked, relevance, selected) / k_sq
        per_row = torch.where(has_pairs, per_row, torch.zeros_like(per_row))
        total = total + per_row.mean()
    return total


def ranking_loss_weight(alpha: float, warmup_progress: float) -> float:
    """alpha * max(0.01, 1 - warmup_progress): the ranking loss fades as the sparsity ramps up."""
    return alpha * max(0.01, 1.0 - warmup_progress)
