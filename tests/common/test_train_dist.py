"""Tests for moonlit.common.train.dist: device specs, torchrun env parsing, and a real 2-process gloo run."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from moonlit.common.train import dist as mdist
from moonlit.common.train.dist import (
    DistContext,
    RankZeroFilter,
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
    is_rank_zero,
    rank_zero_only,
    resolve_device,
    spawn_local,
    wrap_ddp,
)
from moonlit.common.train.seed import step_generator

_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch):
    for name in _TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    cleanup_distributed()
    yield
    cleanup_distributed()


# ---- helpers run inside the spawned ranks (module level so the children can import them) ------


def _make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


@rank_zero_only
def _only_on_rank_zero() -> str:
    return "ran"


def _ddp_worker(features: torch.Tensor, targets: torch.Tensor) -> dict:
    torch.set_num_threads(1)
    ctx = init_distributed("cpu", timeout=timedelta(seconds=60))
    half = features.shape[0] // ctx.world_size
    rows = slice(ctx.rank * half, (ctx.rank + 1) * half)

    model = _make_model()
    ddp = wrap_ddp(model, ctx)
    F.mse_loss(ddp(features[rows]), targets[rows]).backward()

    plain = _make_model()  # second route: a plain model whose grads we average by hand
    F.mse_loss(plain(features[rows]), targets[rows]).backward()
    for p in plain.parameters():
        all_reduce_mean(p.grad)

    mean = all_reduce_mean(torch.tensor([ctx.rank + 1.0, 10.0 * ctx.rank], dtype=torch.float64))
    shared = broadcast_object({"origin": f"rank{ctx.rank}"})
    barrier()
    return {
        "rank": ctx.rank,
        "is_main": ctx.is_main,
        "backend": ctx.backend,
        "world_size": ctx.world_size,
        "is_ddp": isinstance(ddp, nn.parallel.DistributedDataParallel),
        "ddp_grads": [p.grad for p in model.parameters()],
        "manual_grads": [p.grad for p in plain.parameters()],
        "mean": mean,
        "shared": shared["origin"],
        "idempotent": init_distributed("cpu") is ctx,
        "rank_zero": is_rank_zero(),
        "decorated": _only_on_rank_zero(),
        "same_step_draw": torch.randint(0, 10**6, (4,), generator=step_generator(7, 3)),
        "per_rank_draw": torch.randint(0, 10**6, (4,), generator=step_generator(7, 3, rank_independent=False)),
    }


def _failing_worker() -> None:
    raise RuntimeError("worker failed on purpose")


def test_two_process_gloo_gradients_match_single_process() -> None:
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(8, 5, generator=generator, dtype=torch.float64)
    targets = torch.randn(8, 3, generator=generator, dtype=torch.float64)

    results = spawn_local(_ddp_worker, 2, args=(features, targets))

    reference = _make_model()
    F.mse_loss(reference(features), targets).backward()
    expected = [p.grad for p in reference.parameters()]
    assert [r["rank"] for r in results] == [0, 1]
    assert [r["is_main"] for r in results] == [True, False]
    assert [r["rank_zero"] for r in results] == [True, False]
    assert [r["decorated"] for r in results] == ["ran", None]
    for r in results:
        assert r["backend"] == "gloo" and r["world_size"] == 2 and r["is_ddp"] and r["idempotent"]
        for got_ddp, got_manual, want in zip(r["ddp_grads"], r["manual_grads"], expected):
            torch.testing.assert_close(got_ddp, want, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(got_manual, want, rtol=1e-12, atol=1e-12)
        # ranks hold (1, 0) and (2, 10): the mean by hand is (1.5, 5)
        torch.testing.assert_close(r["mean"], torch.tensor([1.5, 5.0], dtype=torch.float64))
        assert r["shared"] == "rank0"
    assert torch.equal(results[0]["same_step_draw"], results[1]["same_step_draw"])
    assert not torch.equal(results[0]["per_rank_draw"], results[1]["per_rank_draw"])


def test_spawn_local_raises_when_a_worker_fails() -> None:
    with pytest.raises(Exception, match="worker failed on purpose"):
        spawn_local(_failing_worker, 1)


# ---- single-process behaviour ---------------------------------------------------------------


def test_resolve_device_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="is_available"):
        resolve_device("cuda")
    for bad in ("gpu", "cuda:x", "cuda:-1", "", "cuda0"):
        with pytest.raises(ValueError, match="unknown device spec"):
            resolve_device(bad)


def test_resolve_device_uses_local_rank_when_cuda_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert resolve_device("auto") == torch.device("cuda", 2)
    assert resolve_device("cuda") == torch.device("cuda", 2)
    assert resolve_device("cuda:3") == torch.device("cuda", 3)
    with pytest.raises(ValueError, match="only 4 CUDA"):
        resolve_device("cuda:4")


def test_init_distributed_without_torchrun_env_is_single_process() -> None:
    ctx = init_distributed("cpu")
    assert ctx == DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"),
                              backend=None, is_distributed=False)
    assert ctx.is_main
    assert init_distributed("cpu") is ctx
    with pytest.raises(Exception):  # frozen dataclass
        ctx.rank = 3  # type: ignore[misc]


def test_init_distributed_rejects_incomplete_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="RANK"):
        init_distributed("cpu")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        init_distributed("cpu")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match=r"RANK=5 is outside"):
        init_distributed("cpu")
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ValueError, match="'one' is not an integer"):
        init_distributed("cpu")


def test_collectives_are_no_ops_in_a_single_process() -> None:
    value = torch.tensor([1.0, 2.0])
    assert all_reduce_mean(value) is value and torch.equal(value, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="floating-point"):
        all_reduce_mean(torch.tensor([1, 2]))
    assert broadcast_object({"a": 1}) == {"a": 1}
    barrier()
    model = nn.Linear(2, 2)
    assert wrap_ddp(model, init_distributed("cpu")) is model


def test_rank_zero_filter_and_decorator_follow_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    def record(level: int) -> logging.LogRecord:
        return logging.LogRecord("x", level, __file__, 1, "message", None, None)

    log_filter = RankZeroFilter()
    assert log_filter.filter(record(logging.INFO)) and _only_on_rank_zero() == "ran"
    monkeypatch.setenv("RANK", "1")
    assert not is_rank_zero()
    assert not log_filter.filter(record(logging.INFO))
    assert log_filter.filter(record(logging.WARNING))
    assert _only_on_rank_zero() is None


def test_setup_logging_installs_one_handler() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        first = mdist.setup_logging()
        second = mdist.setup_logging()
        ours = [h for h in root.handlers if getattr(h, "_moonlit_console", False)]
        assert ours == [second] and first not in root.handlers
        assert any(isinstance(f, RankZeroFilter) for f in second.filters)
    finally:
        root.handlers[:] = before
        root.setLevel(level)
