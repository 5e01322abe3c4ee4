"""Tests for moonlit.common.train.checkpoint and .foreign: atomic saves, exact resume, corruption."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

from moonlit.common.train import checkpoint as ckpt_module
from moonlit.common.train.checkpoint import (
    CheckpointError,
    checkpoint_meta,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    move_aside,
    resume_or_load,
    save_checkpoint,
)
from moonlit.common.train.foreign import load_foreign_checkpoint
from moonlit.common.train.seed import get_rng_state, seed_everything, set_rng_state, step_generator
from moonlit.common.train.state_codec import decode_state, encode_state


@pytest.fixture(autouse=True)
def _keep_global_rng():
    state = get_rng_state()
    yield
    set_rng_state(state)


class TinyLM(nn.Module):
    """Embedding tied to the output head, dropout, and a BatchNorm (integer buffer)."""

    def __init__(self, vocab: int = 12, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.hidden = nn.Linear(width, width)
        self.norm = nn.BatchNorm1d(width)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens).mean(dim=1)
        return self.head(self.drop(torch.tanh(self.norm(self.hidden(x)))))


def _setup(seed: int):
    torch.manual_seed(seed)
    model = TinyLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, betas=(0.8, 0.95))
    scheduler = torch.optim.lr_scheduler.SequentialLR(
        optimizer,
        [torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=3),
         torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=8)],
        milestones=[3],
    )
    return model, optimizer, scheduler


def _data():
    generator = torch.Generator().manual_seed(2024)
    return torch.randint(0, 12, (64, 5), generator=generator), torch.randint(0, 12, (64,), generator=generator)


def _train(model, optimizer, scheduler, start: int, stop: int) -> None:
    tokens, labels = _data()
    model.train()
    for step in range(start, stop):
        batch = torch.randperm(len(tokens), generator=step_generator(99, step))[:16]
        # python and numpy RNGs feed the loss too, so restoring them is checked as well
        scale = 1.0 + 0.1 * random.random() + 0.1 * float(np.random.rand())
        loss = scale * F.cross_entropy(model(tokens[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def _assert_same_training_state(a, b) -> None:
    (model_a, opt_a, sched_a), (model_b, opt_b, sched_b) = a, b
    for (name, ta), (_, tb) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(ta, tb), name
    state_a, state_b = opt_a.state_dict(), opt_b.state_dict()
    assert state_a["param_groups"] == state_b["param_groups"]
    assert state_a["state"].keys() == state_b["state"].keys()
    for key in state_a["state"]:
        for field, value in state_a["state"][key].items():
            assert torch.equal(value, state_b["state"][key][field]), (key, field)
    assert sched_a.state_dict() == sched_b.state_dict()


def test_resume_is_bit_for_bit(tmp_path: Path) -> None:
    seed_everything(0)
    reference = _setup(1)
    _train(*reference, 0, 10)

    seed_everything(0)
    first_half = _setup(1)
    _train(*first_half, 0, 5)
    save_checkpoint(tmp_path, step=5, model=first_half[0], optimizer=first_half[1], scheduler=first_half[2])

    seed_everything(123)  # a fresh process: other global RNG state, other initial weights
    resumed = _setup(7)
    assert resume_or_load(tmp_path, *resumed) == 5
    _train(*resumed, 5, 10)
    _assert_same_training_state(reference, resumed)

    # control: without restoring the RNGs, dropout and the loss scale diverge
    seed_everything(123)
    unrestored = _setup(7)
    assert resume_or_load(tmp_path, *unrestored, restore_rng=False) == 5
    _train(*unrestored, 5, 10)
    assert not torch.equal(unrestored[0].hidden.weight, reference[0].hidden.weight)


def test_round_trip_keeps_tied_weights_types_and_meta(tmp_path: Path) -> None:
    model, optimizer, scheduler = _setup(3)
    _train(model, optimizer, scheduler, 0, 2)
    path = save_checkpoint(tmp_path, step=2, model=model, optimizer=optimizer, scheduler=scheduler,
                           arch="tiny-lm-8", config={"lr": 1e-2, "layers": [1, 2]}, extra={"best": 0.5})
    assert path == tmp_path / "step_00000002"
    assert (tmp_path / "latest").read_text().strip() == "step_00000002"
    stored = load_file(str(path / "model.safetensors"))
    assert set(stored) == set(model.state_dict())  # both names of the tied weight are stored
    assert torch.equal(stored["head.weight"], stored["embed.weight"])

    fresh_model, fresh_optimizer, fresh_scheduler = _setup(4)
    state = load_checkpoint(tmp_path, fresh_model, fresh_optimizer, fresh_scheduler)
    assert (state.step, state.arch, state.config, state.extra) == (2, "tiny-lm-8", {"lr": 1e-2, "layers": [1, 2]},
                                                                   {"best": 0.5})
    assert state.versions["torch"] == torch.__version__
    assert fresh_model.head.weight is fresh_model.embed.weight  # loading keeps the tie
    assert fresh_optimizer.state_dict()["param_groups"][0]["betas"] == (0.8, 0.95)  # a tuple again
    _assert_same_training_state((model, optimizer, scheduler), (fresh_model, fresh_optimizer, fresh_scheduler))


def test_data_parallel_wrapper_is_saved_without_prefix(tmp_path: Path) -> None:
    model = TinyLM()
    path = save_checkpoint(tmp_path, step=0, model=nn.DataParallel(model))
    assert set(load_file(str(path / "model.safetensors"))) == set(model.state_dict())


def test_crash_during_save_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, optimizer, scheduler = _setup(0)
    save_checkpoint(tmp_path, step=1, model=model, optimizer=optimizer, scheduler=scheduler)
    saved_weight = model.hidden.weight.detach().clone()
    with torch.no_grad():
        model.hidden.weight.add_(1.0)

    real_write = ckpt_module._write_tensors

    def write_then_crash(path: Path, tensors: dict) -> None:
        real_write(path, tensors)
        if path.name == "optimizer.safetensors":  # model.safetensors is already on disk by now
            raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt_module, "_write_tensors", write_then_crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(tmp_path, step=2, model=model, optimizer=optimizer, scheduler=scheduler)
    monkeypatch.undo()

    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000001"
    assert not (tmp_path / "step_00000002").exists()
    fresh, fresh_optimizer, fresh_scheduler = _setup(5)
    assert resume_or_load(tmp_path, fresh, fresh_optimizer, fresh_scheduler, restore_rng=False) == 1
    assert torch.equal(fresh.hidden.weight, saved_weight)


def test_extra_modules_live_in_the_same_checkpoint(tmp_path: Path) -> None:
    model, optimizer, scheduler = _setup(0)
    ema = nn.Linear(3, 2)
    with torch.no_grad():
        ema.weight.copy_(torch.arange(6.0).view(2, 3))
        ema.bias.fill_(-1.0)
    path = save_checkpoint(tmp_path, step=3, model=model, optimizer=optimizer, scheduler=scheduler,
                           modules={"ema": ema})
    meta = json.loads((path / "meta.json").read_text())
    assert meta["modules"] == ["ema"]
    assert meta["files"]["ema.safetensors"] == (path / "ema.safetensors").stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000003"]  # no second folder
    restored = nn.Linear(3, 2)
    state = load_checkpoint(tmp_path, modules={"ema": restored})
    assert state.modules == ("ema",)
    assert torch.equal(restored.weight, torch.arange(6.0).view(2, 3)) and torch.equal(restored.bias, -torch.ones(2))
    assert checkpoint_meta(tmp_path) == (path, meta)

    with pytest.raises(CheckpointError, match=r"has no \['teacher'\] weights \(it holds model, ema\)"):
        load_checkpoint(tmp_path, modules={"teacher": nn.Linear(3, 2)})
    with pytest.raises(CheckpointError, match="ema.safetensors does not fit the 'ema' module"):
        load_checkpoint(tmp_path, modules={"ema": nn.Linear(4, 2)})
    for bad in ("model", "Ema", "ema-2", ""):
        with pytest.raises(ValueError, match="module name"):
            save_checkpoint(tmp_path, step=4, model=model, modules={bad: ema})
    (path / "ema.safetensors").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="ema.safetensors has 9 bytes"):
        checkpoint_meta(tmp_path)


def test_crash_inside_a_save_with_modules_keeps_model_and_ema_paired(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    model, ema = nn.Linear(2, 2), nn.Linear(2, 2)
    save_checkpoint(tmp_path, step=1, model=model, modules={"ema": ema})
    real_write = ckpt_module._write_tensors

    def crash_after_model(path: Path, tensors: dict) -> None:
        real_write(path, tensors)
        if path.name == "model.safetensors":
            raise OSError("killed (simulated)")

    monkeypatch.setattr(ckpt_module, "_write_tensors", crash_after_model)
    with torch.no_grad():
        model.weight.fill_(7.0)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(tmp_path, step=2, model=model, modules={"ema": ema})
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001"]
    assert load_checkpoint(tmp_path, nn.Linear(2, 2), modules={"ema": nn.Linear(2, 2)}).step == 1


def test_move_aside_renames_and_never_deletes(tmp_path: Path) -> None:
    assert move_aside(tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    assert move_aside(tmp_path / "empty") is None and (tmp_path / "empty").is_dir()
    runs = tmp_path / "run"
    save_checkpoint(runs / "checkpoints", step=5, model=nn.Linear(2, 2))
    before = sorted((str(p.relative_to(runs / "checkpoints")), p.stat().st_size)
                    for p in (runs / "checkpoints").rglob("*") if p.is_file())
    first = move_aside(runs / "checkpoints")
    assert not (runs / "checkpoints").exists() and first.name.startswith("checkpoints.replaced-")
    assert before == sorted((str(p.relative_to(first)), p.stat().st_size) for p in first.rglob("*") if p.is_file())
    save_checkpoint(runs / "checkpoints", step=1, model=nn.Linear(2, 2))
    second = move_aside(runs / "checkpoints")  # the same second: a distinct name, nothing overwritten
    assert second != first and first.is_dir() and second.is_dir()
    assert latest_checkpoint(first).name == "step_00000005" and latest_checkpoint(second).name == "step_00000001"


def test_leftover_temp_dir_is_ignored_then_cleaned(tmp_path: Path) -> None:
    model = TinyLM()
    first = save_checkpoint(tmp_path, step=1, model=model)
    # what a killed process leaves: a complete-looking checkpoint under the temp name, newer step
    leftover = tmp_path / ".tmp-step_00000009-abc123"
    shutil.copytree(first, leftover)
    (tmp_path / "latest").unlink()  # even the fallback scan must skip it
    assert latest_checkpoint(tmp_path) == first
    assert list_checkpoints(tmp_path) == [first]
    save_checkpoint(tmp_path, step=2, model=model)
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000001", "step_00000002"]


def test_keep_last_deletes_the_oldest(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    for step in range(1, 6):
        save_checkpoint(tmp_path, step=step, model=model, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004", "step_00000005"]
    # re-saving an older step (a resumed run) keeps the new one and the highest other one
    save_checkpoint(tmp_path, step=3, model=model, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000005"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000003"

    keep_all = tmp_path / "all"
    for step in range(4):
        save_checkpoint(keep_all, step=step, model=model, keep_last=None)
    assert len(list_checkpoints(keep_all)) == 4
    with pytest.raises(ValueError, match="keep_last"):
        save_checkpoint(keep_all, step=9, model=model, keep_last=0)


def test_same_step_is_replaced(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    save_checkpoint(tmp_path, step=4, model=model)
    with torch.no_grad():
        model.weight.fill_(3.0)
    save_checkpoint(tmp_path, step=4, model=model)
    fresh = nn.Linear(2, 2)
    load_checkpoint(tmp_path / "step_00000004", fresh)
    assert torch.equal(fresh.weight, torch.full((2, 2), 3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000004"]


def test_corrupt_checkpoints_raise_naming_the_file(tmp_path: Path) -> None:
    model = TinyLM()
    path = save_checkpoint(tmp_path, step=1, model=model, keep_last=None)
    weights = path / "model.safetensors"
    original = weights.read_bytes()

    weights.write_bytes(original[: len(original) // 2])
    with pytest.raises(CheckpointError, match="truncated") as info:
        load_checkpoint(path, TinyLM())
    assert str(weights) in str(info.value)

    weights.write_bytes(b"\xff" * 16 + original[16:])  # same size, garbage header
    with pytest.raises(CheckpointError, match="not a readable safetensors") as info:
        load_checkpoint(path, TinyLM())
    assert str(weights) in str(info.value)
    weights.write_bytes(original)

    meta = path / "meta.json"
    meta_text = meta.read_text()
    meta.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON") as info:
        load_checkpoint(path, TinyLM())
    assert str(meta) in str(info.value)
    meta.unlink()
    with pytest.raises(CheckpointError, match="missing") as info:
        resume_or_load(tmp_path, TinyLM())
    assert str(meta) in str(info.value)
    meta.write_text(meta_text)

    (path / "rng.safetensors").unlink()
    with pytest.raises(CheckpointError, match="rng.safetensors is missing"):
        load_checkpoint(path)


def test_mismatches_raise(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, step=1, model=TinyLM())
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_checkpoint(path, nn.Linear(3, 3))
    state = load_checkpoint(path, nn.Linear(3, 3), strict=False)
    assert "weight" in state.missing_keys and "embed.weight" in state.unexpected_keys
    _, optimizer, _ = _setup(0)
    with pytest.raises(CheckpointError, match="optimizer"):
        load_checkpoint(path, TinyLM(), optimizer)
    with pytest.raises(ValueError, match="config must be JSON-serialisable"):
        save_checkpoint(tmp_path, step=2, model=TinyLM(), config={"path": Path("/x")})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001"]


def test_resume_or_load_paths(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    assert resume_or_load(tmp_path / "not-yet", model) == 0
    assert resume_or_load(tmp_path, model) == 0  # exists, but empty
    with pytest.raises(FileNotFoundError, match="step_00000003"):
        resume_or_load(tmp_path / "step_00000003", model)
    save_checkpoint(tmp_path, step=3, model=model)
    save_checkpoint(tmp_path, step=6, model=model)
    assert resume_or_load(tmp_path, model) == 6
    assert resume_or_load(tmp_path / "step_00000003", model) == 3


# ---- foreign checkpoints ----------------------------------------------------------------------


class _RunsShell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_foreign_pickle_with_os_system_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    offending = f"{os.system.__module__}.system"  # posix.system on Linux
    evil_torch = tmp_path / "evil.pt"
    torch.save({"weight": torch.ones(2), "payload": _RunsShell(f"touch {marker}")}, evil_torch)
    evil_raw = tmp_path / "evil.bin"
    with open(evil_raw, "wb") as f:
        pickle.dump({"payload": _RunsShell(f"touch {marker}")}, f, protocol=4)
    for file in (evil_torch, evil_raw):
        with pytest.raises(CheckpointError) as info:
            load_foreign_checkpoint(file)
        assert str(file) in str(info.value) and offending in str(info.value)
    assert not marker.exists()


def test_refusal_names_only_the_offending_global(tmp_path: Path) -> None:
    """torch.save writes protocol 2, where a harmless set is ``__builtin__.set``: it must not be blamed."""
    file = tmp_path / "mixed.pt"
    torch.save({"names": {"a", "b"}, "payload": _RunsShell("true")}, file)
    with pytest.raises(CheckpointError) as info:
        load_foreign_checkpoint(file)
    message = str(info.value)
    assert f"{os.system.__module__}.system" in message
    assert "__builtin__" not in message and "builtins.set" not in message


def test_foreign_plain_checkpoints_load(tmp_path: Path) -> None:
    state = TinyLM().state_dict()
    for name, kwargs in (("new.pt", {}), ("legacy.pth", {"_use_new_zipfile_serialization": False})):
        torch.save({"model": state, "epoch": 3}, tmp_path / name, **kwargs)
        loaded = load_foreign_checkpoint(tmp_path / name)
        assert loaded["epoch"] == 3 and loaded["model"].keys() == state.keys()
        assert all(torch.equal(loaded["model"][k], v) for k, v in state.items())

    save_file({"w": torch.arange(4.0)}, str(tmp_path / "w.safetensors"))
    assert torch.equal(load_foreign_checkpoint(tmp_path / "w.safetensors")["w"], torch.arange(4.0))

    torch.save(torch.zeros(2), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_foreign_checkpoint(tmp_path / "tensor.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_foreign_checkpoint(tmp_path / "missing.pt")


def test_foreign_allowed_globals(tmp_path: Path) -> None:
    file = tmp_path / "with_args.pt"
    torch.save({"args": argparse.Namespace(lr=0.1), "w": torch.ones(1)}, file)
    with pytest.raises(CheckpointError, match="argparse.Namespace"):
        load_foreign_checkpoint(file)
    loaded = load_foreign_checkpoint(file, allowed_globals=[argparse.Namespace])
    assert loaded["args"].lr == 0.1


def test_meta_json_is_plain_json(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    config = OmegaConf.create({"optim": {"lr": 0.1}, "lr": "${optim.lr}"})
    path = save_checkpoint(tmp_path, step=12, model=nn.Linear(1, 1), arch={"depth": [1, 2]}, config=config)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["step"] == 12 and meta["arch"] == {"depth": [1, 2]}
    assert meta["config"] == {"optim": {"lr": 0.1}, "lr": 0.1}  # interpolation resolved
    assert meta["files"]["model.safetensors"] == (path / "model.safetensors").stat().st_size


# ---- the JSON/tensor split used for optimizer, scheduler and RNG state -------------------------

_leaves = st.one_of(st.none(), st.booleans(), st.integers(-2**62, 2**62), st.text(max_size=5),
                    st.floats(allow_nan=False), st.builds(lambda n: torch.arange(float(n)), st.integers(0, 4)))
_keys = st.one_of(st.integers(-5, 50), st.text(max_size=4), st.sampled_from(["__tensor__", "__tuple__"]))
_nested = st.recursive(
    _leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner, inner),
                            st.dictionaries(_keys, inner, max_size=3)),
    max_leaves=12,
)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=150, deadline=None)
@given(_nested)
def test_state_codec_round_trips_through_json(value) -> None:
    tensors: dict = {}
    try:
        skeleton = encode_state(value, "root", tensors)
    except ValueError as err:  # only a path collision, e.g. keys 1 and "1" in one dict, is refused
        assert "two tensors map to the key" in str(err)
        return
    restored = decode_state(json.loads(json.dumps(skeleton)), tensors, Path("state.json"))
    assert _same(value, restored)
