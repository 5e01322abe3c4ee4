"""Training checkpoints as safetensors + JSON, written atomically, resumable bit for bit.

Implements the repository's checkpoint convention (ARCHITECTURE.md, "Checkpoints"). One checkpoint
is a directory ``step_{step:08d}/`` holding

- ``model.safetensors``: the model's ``state_dict`` (tied/shared tensors stored as separate copies);
- ``<name>.safetensors``: the ``state_dict`` of each named extra module (``modules={"ema": ...}``:
  an EMA copy of the model), so that everything a resumed run needs is one atomic checkpoint;
- ``optimizer.safetensors``: the tensors of the optimizer and scheduler state;
- ``rng.safetensors``: torch CPU (uint8) and CUDA generator states;
- ``state.json``: everything else of the optimizer/scheduler state (param_groups, counters) and the
  python/numpy RNG states, with ``{"__tensor__": key}`` where a tensor was (see ``state_codec``);
- ``meta.json``: step, arch, config, extra (e.g. a sampler's state, the epoch), the names of the
  extra modules, library versions, and the byte size of every file.

A checkpoint is written into a hidden temporary directory beside it, fsynced, and renamed into
place; then the ``latest`` pointer file is replaced atomically. A crash leaves at worst a hidden
temporary directory, which lookups ignore and the next save deletes. Only one process (rank 0)
should save into a directory. A fresh run that must not resume moves an earlier run's checkpoints
aside (:func:`move_aside`) instead of deleting them.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import torch
from safetensors.torch import load_file, save_file

from .seed import get_rng_state, set_rng_state
from .state_codec import CheckpointError, decode_state, encode_state, storage_safe

__all__ = [
    "CheckpointError",
    "CheckpointState",
    "checkpoint_meta",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "move_aside",
    "resume_or_load",
    "save_checkpoint",
]

_log = logging.getLogger(__name__)

FORMAT = "moonlit-checkpoint"
FORMAT_VERSION = 1
MODEL_FILE, OPTIMIZER_FILE, RNG_FILE = "model.safetensors", "optimizer.safetensors", "rng.safetensors"
STATE_FILE, META_FILE, LATEST_FILE = "state.json", "meta.json", "latest"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")
_MODULE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_RESERVED_NAMES = {"model", "optimizer", "rng"}
_TMP_PREFIX, _TRASH_PREFIX, _LATEST_TMP_PREFIX = ".tmp-", ".trash-", ".latest.tmp-"


@dataclass(frozen=True)
class CheckpointState:
    """What ``load_checkpoint`` read besides the tensors it loaded into the objects given."""

    path: Path
    step: int
    arch: Any
    config: Any
    extra: Any
    versions: dict[str, str]
    rng: dict[str, Any]
    modules: tuple[str, ...] = ()
    missing_keys: tuple[str, ...] = ()
    unexpected_keys: tuple[str, ...] = ()


# ---- files -----------------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    if os.name != "posix" and path.is_dir():
        return  # directories cannot be opened for fsync outside POSIX
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file(storage_safe(tensors), str(path), metadata={"format": FORMAT})
    _fsync(path)


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _read_tensors(path: Path, map_location: str | torch.device) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete")
    try:
        return load_file(str(path), device=str(torch.device(map_location)))
    except Exception as err:  # safetensors raises its own SafetensorError and OSErrors alike
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} should hold a JSON object, found a {type(data).__name__}")
    return data


def _plain(value: Any, field: str) -> Any:
    """OmegaConf configs become containers; anything else must already be JSON-serialisable."""
    if type(value).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        value = OmegaConf.to_container(value, resolve=True)
    try:
        json.dumps(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {field} must be JSON-serialisable: {err}") from err
    return value


def _versions() -> dict[str, str]:
    try:
        moonlit = importlib.metadata.version("moonlit")
    except importlib.metadata.PackageNotFoundError:
        moonlit = "unknown"
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "safetensors": safetensors.__version__, "moonlit": moonlit}


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose state_dict keys carry no ``module.``/``_orig_mod.`` prefix (DDP, compile)."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def _step_of(path: Path) -> int | None:
    match = _STEP_DIR.match(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """Checkpoint directories (``step_N`` with a ``meta.json``) under ``directory``, by step."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _step_of(p) is not None and (p / META_FILE).is_file()]
    return sorted(found, key=lambda p: _step_of(p) or 0)


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """The checkpoint the ``latest`` pointer names, else the highest complete step, else None."""
    root = Path(directory)
    pointer = root / LATEST_FILE
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8").strip()
        if _STEP_DIR.match(name) and (root / name).is_dir():
            return root / name
        _log.warning("%s names %r, which is not a checkpoint here; using the highest step instead", pointer, name)
    found = list_checkpoints(root)
    return found[-1] if found else None


def _remove_leftovers(root: Path) -> None:
    for entry in root.iterdir():
        if entry.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.startswith(_LATEST_TMP_PREFIX):
            entry.unlink(missing_ok=True)


def _point_latest(root: Path, name: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=_LATEST_TMP_PREFIX, dir=root)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / LATEST_FILE)


def _prune(root: Path, keep_last: int, newest: Path) -> None:
    """Keep ``newest`` and the ``keep_last - 1`` highest other steps."""
    others = sorted((p for p in root.iterdir() if _step_of(p) is not None and p.is_dir() and p != newest),
                    key=lambda p: _step_of(p) or 0)
    for old in others[: max(len(others) - (keep_last - 1), 0)]:
        shutil.rmtree(old)


def move_aside(directory: str | os.PathLike[str]) -> Path | None:
    """Rename ``directory`` (an earlier run's checkpoints) to ``<name>.replaced-<UTC time>`` beside it.

    For a fresh start (``resume=false``) over an existing run: nothing is deleted. Returns the new
    path, or None when ``directory`` does not exist or is empty.
    """
    root = Path(directory)
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = root.with_name(f"{root.name}.replaced-{stamp}")
    suffix = 1
    while target.exists():
        suffix += 1
        target = root.with_name(f"{root.name}.replaced-{stamp}-{suffix}")
    os.replace(root, target)
    _log.warning("moved the earlier checkpoints %s aside to %s (a fresh run deletes nothing)", root, target)
    return target


def _module_file(name: str) -> str:
    return f"{name}.safetensors"


def _check_module_names(modules: Mapping[str, torch.nn.Module]) -> None:
    for name, module in modules.items():
        if not isinstance(name, str) or not _MODULE_NAME.match(name) or name in _RESERVED_NAMES:
            raise ValueError(f"checkpoint module name {name!r} must match [a-z][a-z0-9_]* and not be one of "
                             f"{sorted(_RESERVED_NAMES)}")
        if not isinstance(module, torch.nn.Module):
            raise ValueError(f"checkpoint module {name!r} must be a torch.nn.Module, got {type(module).__name__}")


# ---- save / load -----------------------------------------------------------------------------


def save_checkpoint(
    directory: str | os.PathLike[str],
    *,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    modules: Mapping[str, torch.nn.Module] | None = None,
    arch: Any = None,
    config: Any = None,
    extra: Any = None,
    keep_last: int | None = 3,
) -> Path:
    """Write ``directory/step_{step:08d}/`` atomically, point ``latest`` at it, prune old ones.

    ``step`` is the number of optimisation steps done; ``resume_or_load`` returns it as the step to
    continue from. ``modules`` are further models saved beside ``model`` in the same checkpoint
    (``{"ema": ema_model}`` → ``ema.safetensors``). ``arch``/``config``/``extra`` must be
    JSON-serialisable (OmegaConf is converted). ``keep_last=None`` keeps every checkpoint. A
    checkpoint of the same step is replaced.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1):
        raise ValueError(f"keep_last must be a positive int or None, got {keep_last!r}")
    modules = dict(modules or {})
    _check_module_names(modules)
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    name = f"step_{step:08d}"
    meta: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step,
                            "arch": _plain(arch, "arch"), "config": _plain(config, "config"),
                            "extra": _plain(extra, "extra"), "modules": sorted(modules), "versions": _versions(),
                            "created": time.time()}

    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{name}-", dir=root))
    try:
        _write_tensors(tmp / MODEL_FILE, _unwrap(model).state_dict())
        for module_name, module in sorted(modules.items()):
            _write_tensors(tmp / _module_file(module_name), _unwrap(module).state_dict())
        train_tensors: dict[str, torch.Tensor] = {}
        rng_tensors: dict[str, torch.Tensor] = {}
        state: dict[str, Any] = {"rng": encode_state(get_rng_state(), "rng", rng_tensors)}
        for key, source in (("optimizer", optimizer), ("scheduler", scheduler)):
            state[key] = None if source is None else encode_state(source.state_dict(), key, train_tensors)
        if optimizer is not None or scheduler is not None:
            _write_tensors(tmp / OPTIMIZER_FILE, train_tensors)
        _write_tensors(tmp / RNG_FILE, rng_tensors)
        _write_json(tmp / STATE_FILE, state)
        meta["files"] = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        _write_json(tmp / META_FILE, meta)  # written last: its presence marks a complete checkpoint
        _fsync(tmp)
        final = root / name
        if final.exists():
            trash = root / f"{_TRASH_PREFIX}{name}-{uuid.uuid4().hex}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync(root)
    _point_latest(root, name)
    _fsync(root)
    if keep_last is not None:
        _prune(root, keep_last, final)
    return final


def _checkpoint_dir(path: Path) -> Path:
    """``path`` itself if it is one checkpoint, else the latest checkpoint under it."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file; expected a checkpoint directory or a directory of checkpoints")
    if _step_of(path) is not None or (path / META_FILE).exists() or (path / MODEL_FILE).exists():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"{path} holds no checkpoint (no step_* directory, no {LATEST_FILE} file)")
    return found


def checkpoint_meta(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """The checkpoint ``path`` names (itself, or the latest under it) and its verified ``meta.json``.

    Checks the format, the step, and every listed file's presence and byte size, reading no
    tensors: a cheap way to validate a resume before anything is written.
    """
    ckpt = _checkpoint_dir(Path(path))
    meta = _read_json(ckpt / META_FILE)
    if meta.get("format") != FORMAT or not isinstance(meta.get("step"), int) or not isinstance(meta.get("files"), dict):
        raise CheckpointError(f"{ckpt / META_FILE} is not a {FORMAT} meta file (needs 'format', int 'step', 'files')")
    modules = meta.get("modules", [])
    if not isinstance(modules, list) or not all(isinstance(m, str) and _MODULE_NAME.match(m) for m in modules):
        raise CheckpointError(f"{ckpt / META_FILE} has 'modules' {modules!r}; expected a list of module names")
    for name, size in meta["files"].items():
        file = ckpt / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing but {META_FILE} lists it; the checkpoint is incomplete")
        if file.stat().st_size != size:
            raise CheckpointError(f"{file} has {file.stat().st_size} bytes but {META_FILE} records {size}; "
                                  "it is truncated or was modified")
    for name in modules:
        if _module_file(name) not in meta["files"]:
            raise CheckpointError(f"{ckpt / META_FILE} names module {name!r} but lists no {_module_file(name)}")
    return ckpt, meta


def load_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    strict: bool = True,
    map_location: str | torch.device = "cpu",
    restore_rng: bool = False,
    modules: Mapping[str, torch.nn.Module] | None = None,
) -> CheckpointState:
    """Load a checkpoint directory (or the latest one in a directory of checkpoints).

    Loads tensors into whichever of ``model``/``optimizer``/``scheduler``/``modules`` are given and
    restores the global RNGs when ``restore_rng``. Every file's size is checked against
    ``meta.json`` first. A module asked for that the checkpoint was saved without is an error.
    """
    ckpt, meta = checkpoint_meta(path)
    modules = dict(modules or {})
    _check_module_names(modules)
    saved_modules = tuple(meta.get("modules", ()))
    absent = sorted(set(modules) - set(saved_modules))
    if absent:
        raise CheckpointError(f"checkpoint {ckpt} has no {absent} weights (it holds model"
                              f"{''.join(', ' + m for m in saved_modules)}): it was saved with them switched off; "
                              "resume with the settings it was saved with, or start afresh with resume=false")
    state_path = ckpt / STATE_FILE
    state = _read_json(state_path)

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    if model is not None:
        weights = _read_tensors(ckpt / MODEL_FILE, map_location)
        try:
            result = _unwrap(model).load_state_dict(weights, strict=strict)
        except RuntimeError as err:
            raise CheckpointError(f"{ckpt / MODEL_FILE} does not fit the model: {err}") from err
        missing, unexpected = tuple(result.missing_keys), tuple(result.unexpected_keys)
    for module_name, module in modules.items():
        file = ckpt / _module_file(module_name)
        try:
            _unwrap(module).load_state_dict(_read_tensors(file, map_location), strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"{file} does not fit the {module_name!r} module: {err}") from err

    if optimizer is not None or scheduler is not None:
        train_tensors = _read_tensors(ckpt / OPTIMIZER_FILE, map_location)
        for key, target in (("optimizer", optimizer), ("scheduler", scheduler)):
            if target is None:
                continue
            if state.get(key) is None:
                raise CheckpointError(f"{state_path} holds no {key} state; the checkpoint was saved without one")
            try:
                target.load_state_dict(decode_state(state[key], train_tensors, state_path))
            except (ValueError, KeyError, RuntimeError) as err:
                raise CheckpointError(f"{key} state in {ckpt} does not fit the {key} given: {err}") from err

    if "rng" not in state:
        raise CheckpointError(f"{state_path} has no 'rng' entry")
    rng = decode_state(state["rng"], _read_tensors(ckpt / RNG_FILE, "cpu"), state_path)
    if restore_rng:
        set_rng_state(rng)
    return CheckpointState(path=ckpt, step=meta["step"], arch=meta.get("arch"), config=meta.get("config"),
                           extra=meta.get("extra"), versions=meta.get("versions", {}), rng=rng,
                           modules=saved_modules, missing_keys=missing, unexpected_keys=unexpected)


def resume_or_load(
    directory_or_path: str | os.PathLike[str],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng: bool = True,
    *,
    modules: Mapping[str, torch.nn.Module] | None = None,
    strict: bool = True,
    map_location: str | torch.device = "cpu",
) -> int:
    """Resume from a checkpoint directory, or the latest one in a run directory; return its step.

    Returns 0 (and loads nothing) when the run directory does not exist yet or holds no checkpoint.
    A path named like a checkpoint (``step_N``) that does not exist is an error, not a fresh start.
    """
    path = Path(directory_or_path)
    if not path.exists():
        if _step_of(path) is not None:
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        return 0
    is_checkpoint = path.is_dir() and (_step_of(path) is not None or (path / META_FILE).exists())
    if not is_checkpoint and path.is_dir() and latest_checkpoint(path) is None:
        return 0
    state = load_checkpoint(path, model, optimizer, scheduler, strict=strict, map_location=map_location,
                            restore_rng=restore_rng, modules=modules)
    _log.info("resumed from %s at step %d", state.path, state.step)
    return state.step
