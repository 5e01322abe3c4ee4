"""Shared training start/resume helpers (moonlit.common.train.supernet)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from moonlit.common.train.checkpoint import CheckpointError, save_checkpoint
from moonlit.common.train.supernet import (
    build_ema,
    check_epoch_aligned,
    check_resumable,
    ema_modules,
    resume_training,
    start_training,
)
from torch import nn


def test_check_epoch_aligned_names_the_checkpoint() -> None:
    check_epoch_aligned(30, 10, "ckpt")
    with pytest.raises(ValueError, match="ckpt holds step 25, not an epoch end of 10 steps"):
        check_epoch_aligned(25, 10, "ckpt")


def _training(seed: int, ema_on: bool) -> tuple[nn.Module, torch.optim.Optimizer, object, object]:
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)
    return model, optimizer, scheduler, build_ema(model, ema_on, 0.9)


def test_ema_is_saved_and_resumed_with_the_model(tmp_path: Path) -> None:
    model, optimizer, scheduler, ema = _training(0, True)
    assert build_ema(model, False, 0.9) is None and ema_modules(None) == {}
    assert torch.equal(ema.module.weight, model.weight) and ema.decay == 0.9  # a fresh EMA copies the model
    assert resume_training(tmp_path / "ckpt", model, optimizer, scheduler, ema) is None  # nothing saved yet
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    save_checkpoint(tmp_path / "ckpt", step=4, model=model, optimizer=optimizer, scheduler=scheduler,
                    modules=ema_modules(ema))
    torch.manual_seed(0)
    initial = nn.Linear(3, 2).weight.detach()  # the weights the EMA started from
    expected_ema = 0.9 * initial + 0.1 * torch.ones(2, 3)  # one update with decay 0.9

    other, other_optimizer, other_scheduler, other_ema = _training(1, True)
    state = resume_training(tmp_path / "ckpt", other, other_optimizer, other_scheduler, other_ema)
    assert state.step == 4 and state.modules == ("ema",)
    assert torch.equal(other.weight, torch.ones(2, 3))
    torch.testing.assert_close(other_ema.module.weight, expected_ema, rtol=0, atol=1e-7)
    assert not torch.equal(other.weight, other_ema.module.weight)  # two tensors, not one


def test_resume_with_ema_on_needs_ema_weights(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model, optimizer, scheduler, _ = _training(0, False)
    save_checkpoint(tmp_path / "plain", step=2, model=model, optimizer=optimizer, scheduler=scheduler)
    assert check_resumable(tmp_path / "plain", ema_enabled=False) == tmp_path / "plain" / "step_00000002"
    with pytest.raises(CheckpointError, match="no EMA weights but ema.enabled=true"):
        check_resumable(tmp_path / "plain", ema_enabled=True)
    model, optimizer, scheduler, ema = _training(0, True)
    with pytest.raises(CheckpointError, match="no EMA weights"):
        resume_training(tmp_path / "plain", model, optimizer, scheduler, ema)
    # EMA weights present but EMA off: loaded into nothing, and said so
    save_checkpoint(tmp_path / "with_ema", step=2, model=model, optimizer=optimizer, scheduler=scheduler,
                    modules=ema_modules(ema))
    with caplog.at_level("WARNING"):
        assert resume_training(tmp_path / "with_ema", model, optimizer, scheduler, None).step == 2
    assert "holds EMA weights but EMA is off" in caplog.text


def test_start_training_seeds_and_sets_threads() -> None:
    threads = torch.get_num_threads()
    try:
        ctx = start_training(SimpleNamespace(device="cpu", backend=None, seed=3, threads=1))
        first = torch.rand(3)
        start_training(SimpleNamespace(device="cpu", backend=None, seed=3, threads=1))
        assert torch.equal(first, torch.rand(3)) and torch.get_num_threads() == 1 and ctx.world_size == 1
    finally:
        torch.set_num_threads(threads)
