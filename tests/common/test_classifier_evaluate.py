"""Top-1 evaluation (moonlit.common.train.evaluate, re-exported by classifier): counts, loss and units by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from moonlit.common.train.classifier import evaluate_top1 as evaluate_top1_from_classifier
from moonlit.common.train.evaluate import evaluate_top1, top1_percent


class Fixed(nn.Module):
    """The "logits" are the inputs; remembers the mode it was called in."""

    def __init__(self) -> None:
        super().__init__()
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return x


LOGITS = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.0, 1.0]])
LABELS = torch.tensor([1, 0, 0, 0, 0])
BATCHES = [(LOGITS[:3], LABELS[:3]), (LOGITS[3:], LABELS[3:])]


def _cross_entropy(row: list[float], label: int) -> float:
    return -(row[label] - math.log(sum(math.exp(v) for v in row)))


def test_fraction_loss_and_count_by_hand() -> None:
    model = Fixed().train()
    result = evaluate_top1(model, BATCHES, torch.device("cpu"))
    assert result["top1"] == pytest.approx(3 / 5) and result["count"] == 5  # right: rows 0, 1, 3
    expected_loss = sum(_cross_entropy(r, int(y)) for r, y in zip(LOGITS.tolist(), LABELS, strict=True)) / 5
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-6)
    assert model.modes == [False, False] and model.training  # ran in eval mode, given back in train mode
    assert evaluate_top1_from_classifier is evaluate_top1


def test_max_batches_and_percent() -> None:
    first = evaluate_top1(Fixed(), BATCHES, max_batches=1)
    assert first["top1"] == pytest.approx(2 / 3) and first["count"] == 3
    assert top1_percent(Fixed(), BATCHES) == 100.0 * 3 / 5  # the searches' unit, computed as they stored it
    assert top1_percent(Fixed(), BATCHES, max_batches=1) == 100.0 * 2 / 3
    assert top1_percent(Fixed(), iter(BATCHES), max_batches=5) == 60.0  # a one-shot iterator, fewer batches than max
    model = Fixed().eval()
    top1_percent(model, BATCHES)
    assert not model.training  # a model in eval mode stays there


def test_empty_batches_and_bad_max_batches_are_errors() -> None:
    with pytest.raises(ValueError, match="evaluation batches were empty"):
        evaluate_top1(Fixed(), [])
    with pytest.raises(ValueError, match="evaluation batches were empty"):
        top1_percent(Fixed(), [])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_batches must be None or an int >= 1"):
            top1_percent(Fixed(), BATCHES, max_batches=bad)
    model = Fixed().train()
    with pytest.raises(RuntimeError):
        evaluate_top1(model, [(LOGITS, torch.tensor([0, 1]))])  # 5 logits rows, 2 labels
    assert model.training  # the mode is given back on errors too
