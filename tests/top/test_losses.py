"""ToP losses (moonlit.top.losses) against hand formulas and brute-force Python loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from moonlit.top.losses import (
    arp2_pairwise_loss,
    prediction_distillation_loss,
    ranking_distillation_loss,
    ranking_loss_weight,
    regression_loss,
)


def softmax_np(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def arp2_brute(scores: list[float], relevance: list[float]) -> float:
    total = 0.0
    for i in range(len(scores)):
        for j in range(len(scores)):
            if relevance[i] > relevance[j]:
                total += (relevance[i] - relevance[j]) * math.log2(1 + math.exp(-(scores[i] - scores[j])))
    return total


def test_prediction_distillation_matches_kl_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    loss = prediction_distillation_loss(student, teacher, temperature=2.0)
    p_t = softmax_np(teacher.detach().numpy() / 2.0)
    p_s = softmax_np(student.detach().numpy() / 2.0)
    hand = (p_t * np.log(p_t / p_s)).sum() / 5 * 4.0
    assert loss.item() == pytest.approx(hand, rel=1e-10)
    loss.backward()
    assert teacher.grad is None and student.grad is not None
    same = torch.randn(4, 2, dtype=torch.float64)
    assert prediction_distillation_loss(same, same).item() == pytest.approx(0.0, abs=1e-12)


def test_regression_loss() -> None:
    predictions = torch.tensor([[1.0], [2.5], [0.0]])
    labels = torch.tensor([1.5, 2.0, 3.0])
    assert regression_loss(predictions, labels).item() == pytest.approx((0.25 + 0.25 + 9.0) / 3)
    with pytest.raises(ValueError, match="labels"):
        regression_loss(torch.zeros(3, 2), labels)


def test_arp2_matches_brute_force_with_ties_and_mask() -> None:
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    relevance = torch.randint(0, 4, (4, 6), generator=gen)  # ties included
    got = arp2_pairwise_loss(scores, relevance)
    for row in range(4):
        assert got[row].item() == pytest.approx(arp2_brute(scores[row].tolist(), relevance[row].tolist()), rel=1e-12)
    mask = torch.rand(4, 6, generator=gen) > 0.3
    masked_scores = scores.masked_fill(~mask, float("inf"))  # left-out entries must not matter
    got = arp2_pairwise_loss(masked_scores, relevance, mask)
    for row in range(4):
        keep = mask[row]
        hand = arp2_brute(scores[row][keep].tolist(), relevance[row][keep].tolist())
        assert got[row].item() == pytest.approx(hand, rel=1e-12)


def ranking_brute(students: list[torch.Tensor], teacher: torch.Tensor, candidates: torch.Tensor, top_k: int) -> float:
    total = 0.0
    for scores in students:
        rows = []
        for b in range(teacher.shape[0]):
            cand = [t for t in range(teacher.shape[1]) if candidates[b, t]]
            k = min(top_k, len(cand))
            if k < 2:
                rows.append(0.0)
                continue
            best = sorted(cand, key=lambda t: -teacher[b, t].item())[:k]
            relevance = [k - r for r in range(k)]
            rows.append(arp2_brute([scores[b, t].item() for t in best], relevance) / k**2)
        total += sum(rows) / len(rows)
    return total


def test_ranking_distillation_matches_brute_force() -> None:
    gen = torch.Generator().manual_seed(2)
    batch, length, top_k = 6, 12, 5
    teacher = torch.rand(batch, length, generator=gen, dtype=torch.float64)
    candidates = torch.zeros(batch, length, dtype=torch.bool)
    for b, n in enumerate([11, 0, 1, 2, 4, 8]):  # rows with none, one, too few and enough candidates
        candidates[b, 1 : 1 + n] = True
    students = [torch.randn(batch, length, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    loss = ranking_distillation_loss(students, teacher, candidates, top_k)
    assert loss.item() == pytest.approx(ranking_brute(students, teacher, candidates, top_k), rel=1e-10)
    loss.backward()
    for s in students:
        assert torch.isfinite(s.grad).all()
        assert (s.grad[~candidates] == 0).all() and (s.grad[0] != 0).any()


def test_ranking_distillation_ignores_inf_outside_candidates() -> None:
    gen = torch.Generator().manual_seed(3)
    teacher = torch.rand(3, 8, generator=gen)
    candidates = torch.tensor([[False] + [True] * 3 + [False] * 4] * 3)
    student = torch.randn(3, 8, generator=gen).masked_fill(~candidates, float("-inf")).requires_grad_()
    loss = ranking_distillation_loss([student], teacher, candidates, top_k=6)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(student.grad).all()
    finite = student.detach().masked_fill(~candidates, 0.0)
    assert loss.item() == pytest.approx(ranking_brute([finite], teacher, candidates, 6), rel=1e-6)


def test_ranking_loss_weight() -> None:
    assert ranking_loss_weight(0.01, 0.0) == pytest.approx(0.01)
    assert ranking_loss_weight(0.01, 0.25) == pytest.approx(0.0075)
    assert ranking_loss_weight(0.01, 1.0) == pytest.approx(0.0001)  # floor at 1% of alpha
