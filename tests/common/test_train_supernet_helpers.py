"""Shared training start/resume helpers (moonlit.common.train.supernet)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from moonlit.common.train.checkpoint import save_checkpoint
from moonlit.common.train.supernet import check_epoch_aligned, resume_ema, start_training
from torch import nn


def test_check_epoch_aligned_names_the_checkpoint() -> None:
    check_epoch_aligned(30, 10, "ckpt")
    with pytest.raises(ValueError, match="ckpt holds step 25, not an epoch end of 10 steps"):
        check_epoch_aligned(25, 10, "ckpt")


def test_resume_ema_restores_saved_weights(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    assert resume_ema(model, False, 0.9, tmp_path / "ema") is None
    fresh = resume_ema(model, True, 0.9, tmp_path / "ema")  # nothing saved yet: a copy of the model
    assert torch.equal(fresh.module.weight, model.weight) and fresh.decay == 0.9
    saved = nn.Linear(3, 2)
    with torch.no_grad():
        saved.weight.fill_(0.5)
    save_checkpoint(tmp_path / "ema", step=4, model=saved)
    restored = resume_ema(model, True, 0.9, tmp_path / "ema")
    assert torch.equal(restored.module.weight, torch.full((2, 3), 0.5))
    assert not torch.equal(model.weight, restored.module.weight)  # the live model is untouched


def test_start_training_seeds_and_sets_threads() -> None:
    threads = torch.get_num_threads()
    try:
        ctx = start_training(SimpleNamespace(device="cpu", backend=None, seed=3, threads=1))
        first = torch.rand(3)
        start_training(SimpleNamespace(device="cpu", backend=None, seed=3, threads=1))
        assert torch.equal(first, torch.rand(3)) and torch.get_num_threads() == 1 and ctx.world_size == 1
    finally:
        torch.set_num_threads(threads)
