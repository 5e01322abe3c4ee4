"""Distillation losses (moonlit.common.train.losses) against hand formulas and autograd."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from moonlit.common.train.losses import (
    AdaptiveAlphaDivergence,
    adaptive_alpha_divergence,
    alpha_divergence,
    soft_target_cross_entropy,
)


def _logits(seed: int, rows: int = 5, classes: int = 7, scale: float = 1.5) -> torch.Tensor:
    return torch.randn(rows, classes, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def _hand_divergence(p: list[float], q: list[float], alpha: float) -> float:
    """sum_i q_i ((p_i/q_i)^alpha - 1) / (alpha (alpha - 1)), written out with plain floats."""
    return sum(qi * ((pi / qi) ** alpha - 1) / (alpha * (alpha - 1)) for pi, qi in zip(p, q))


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p * (p / q).log()).sum(1)


def test_alpha_divergence_matches_hand_computation() -> None:
    student = torch.tensor([[0.0, 1.0, -1.0]], dtype=torch.float64)
    teacher = torch.tensor([[2.0, 0.0, 0.5]], dtype=torch.float64)
    q = [math.exp(v) / sum(math.exp(u) for u in (0.0, 1.0, -1.0)) for v in (0.0, 1.0, -1.0)]
    p = [math.exp(v) / sum(math.exp(u) for u in (2.0, 0.0, 0.5)) for v in (2.0, 0.0, 0.5)]
    for alpha in (-1.0, 0.5, 2.0):
        assert alpha_divergence(student, teacher, alpha).item() == pytest.approx(_hand_divergence(p, q, alpha), rel=1e-12)


def test_alpha_limits_are_the_two_kl_divergences() -> None:
    student, teacher = _logits(0), _logits(1)
    p, q = F.softmax(teacher, 1), F.softmax(student, 1)
    forward_kl, reverse_kl = _kl(p, q), _kl(q, p)
    # the limit branches
    torch.testing.assert_close(alpha_divergence(student, teacher, 1.0, reduction="none"), forward_kl)
    torch.testing.assert_close(alpha_divergence(student, teacher, 0.0, reduction="none"), reverse_kl)
    # the general formula approaches them (error O(|alpha - limit|))
    near_one = alpha_divergence(student, teacher, 1.0 + 2e-3, reduction="none")
    near_zero = alpha_divergence(student, teacher, -2e-3, reduction="none")
    torch.testing.assert_close(near_one, forward_kl, rtol=5e-3, atol=1e-4)
    torch.testing.assert_close(near_zero, reverse_kl, rtol=5e-3, atol=1e-4)


@pytest.mark.parametrize("alpha", [-1.0, 0.0, 0.5, 1.0, 1.5])
def test_gradient_is_the_divergence_gradient_without_clipping(alpha: float) -> None:
    student, teacher = _logits(2).requires_grad_(), _logits(3)
    alpha_divergence(student, teacher, alpha, clip=1e12).backward()

    reference = student.detach().clone().requires_grad_()
    p, q = F.softmax(teacher, 1), F.softmax(reference, 1)
    if alpha == 1.0:
        value = _kl(p, q)
    elif alpha == 0.0:
        value = _kl(q, p)
    else:
        value = (q * ((p / q) ** alpha - 1) / (alpha * (alpha - 1))).sum(1)
    value.mean().backward()
    torch.testing.assert_close(student.grad, reference.grad)


def test_clipping_bounds_the_weight_and_the_value() -> None:
    student = torch.tensor([[4.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor([[-4.0, 0.0, 0.0]], dtype=torch.float64)
    q, p = F.softmax(student.detach(), 1)[0], F.softmax(teacher, 1)[0]
    clip, alpha = 5.0, -1.0
    weights = [min((pi / qi).item() ** alpha, clip) for pi, qi in zip(p, q)]
    expected_value = sum(qi.item() * (w - 1) / (alpha * (alpha - 1)) for qi, w in zip(q, weights))
    loss = alpha_divergence(student, teacher, alpha, clip=clip)
    assert loss.item() == pytest.approx(expected_value, rel=1e-12)
    assert max(weights) == clip  # the test case does clip
    # gradient: -sum_i q_i rho_i d log q_i with rho = w / alpha + 1 / (alpha (alpha - 1))
    rho = torch.tensor([w / alpha + 1 / (alpha * (alpha - 1)) for w in weights], dtype=torch.float64)
    jacobian = torch.diag(q) - torch.outer(q, q)  # d q_i / d z_j; d log q_i = jacobian_ij / q_i
    expected_grad = -(rho @ jacobian)
    loss.backward()
    torch.testing.assert_close(student.grad[0], expected_grad)


def test_adaptive_takes_the_larger_divergence_per_sample() -> None:
    student, teacher = _logits(4, rows=16, scale=3.0), _logits(5, rows=16, scale=3.0)
    low = alpha_divergence(student, teacher, -1.0, clip=5.0, reduction="none")
    high = alpha_divergence(student, teacher, 1.0, clip=5.0, reduction="none")
    values = adaptive_alpha_divergence(student, teacher, -1.0, 1.0, 5.0, reduction="none")
    torch.testing.assert_close(values, torch.maximum(low, high))
    assert (low > high).any() and (low < high).any()  # both branches exercised
    torch.testing.assert_close(AdaptiveAlphaDivergence()(student, teacher), values.mean())


def test_adaptive_gradient_follows_the_chosen_branch() -> None:
    student, teacher = _logits(6, rows=16, scale=3.0), _logits(7, rows=16, scale=3.0)
    chosen = adaptive_alpha_divergence(student.clone().requires_grad_(), teacher, reduction="none")
    low = alpha_divergence(student, teacher, -1.0, clip=5.0, reduction="none")
    high = alpha_divergence(student, teacher, 1.0, clip=5.0, reduction="none")
    for row in range(16):
        alpha = -1.0 if low[row] > high[row] else 1.0
        x = student[row: row + 1].clone().requires_grad_()
        alpha_divergence(x, teacher[row: row + 1], alpha, clip=5.0).backward()
        y = student.clone().requires_grad_()
        adaptive_alpha_divergence(y, teacher, reduction="none")[row].backward()
        torch.testing.assert_close(y.grad[row], x.grad[0])
    assert chosen.shape == (16,)


def test_identical_distributions_give_zero() -> None:
    logits = _logits(8)
    assert adaptive_alpha_divergence(logits, logits.clone()).item() == pytest.approx(0.0, abs=1e-12)


def test_soft_target_cross_entropy_and_label_smoothing() -> None:
    logits, labels = _logits(9), torch.tensor([0, 3, 6, 2, 1])
    eps, classes = 0.1, logits.shape[1]
    smoothed = F.one_hot(labels, classes).double() * (1 - eps) + eps / classes
    expected = -(smoothed * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(soft_target_cross_entropy(logits, smoothed), expected)
    # torch's label smoothing is the same target (the reference's CrossEntropyLossSmooth)
    torch.testing.assert_close(F.cross_entropy(logits, labels, label_smoothing=eps), expected)


def test_errors_name_the_bad_input() -> None:
    with pytest.raises(ValueError, match="alpha_min 1.0 must not exceed alpha_max -1.0"):
        adaptive_alpha_divergence(_logits(0), _logits(1), 1.0, -1.0)
    with pytest.raises(ValueError, match=r"\(5, 7\).*\(5, 6\)"):
        alpha_divergence(_logits(0), _logits(1, classes=6), 0.5)
    with pytest.raises(ValueError, match="reduction 'avg'"):
        alpha_divergence(_logits(0), _logits(1), 0.5, reduction="avg")


def test_underflowing_student_probabilities_stay_finite() -> None:
    # softmax of the student underflows to exactly 0 for class 1 in float32 (logit gap > 104)
    student = torch.tensor([[60.0, -60.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 5.0, 0.0]])
    assert F.softmax(student.detach(), 1)[0, 1].item() == 0.0
    for alpha in (-1.0, 0.0, 0.5, 1.0):
        loss = alpha_divergence(student, teacher, alpha, clip=5.0)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(student.grad).all(), alpha
        student.grad = None
    # alpha = 1 is KL(p || q) with q_1 = e^-120: p_1 (log p_1 - log q_1) dominates, finite
    p = F.softmax(teacher, 1)[0]
    log_q = F.log_softmax(student.detach(), 1)[0]
    expected = float((p * (p.log() - log_q)).sum())
    assert alpha_divergence(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-5)
