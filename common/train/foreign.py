"""Reading released third-party checkpoints (``.pt``/``.pth``/``.bin`` pickles, ``.safetensors``).

Pickles are read only through ``torch.load(..., weights_only=True)``, PyTorch's restricted
unpickler, which admits tensors and plain containers and refuses any other global (ARCHITECTURE.md,
"Checkpoints": foreign pickles never go through ``pickle.load``). When it refuses, the pickle
opcodes are scanned (never executed) to name the offending globals in the error.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
import pickletools
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .checkpoint import CheckpointError

__all__ = ["load_foreign_checkpoint"]

# Globals that torch's restricted unpickler admits in ordinary state dicts; the rest are reported.
HARMLESS_GLOBALS = {"collections.OrderedDict", "_codecs.encode", "builtins.set", "builtins.frozenset",
             "builtins.bytearray", "builtins.slice", "builtins.complex"}


def _pickle_globals(data: bytes) -> list[str]:
    """``module.name`` of every GLOBAL/STACK_GLOBAL in the pickles concatenated in ``data``."""
    found: list[str] = []
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        # STACK_GLOBAL takes module and name from the two values pushed last, possibly via the memo;
        # ``pushed`` holds each push's string value (None for non-strings).
        pushed: list[str | None] = []
        memo: dict[int, str | None] = {}
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                if opcode.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL":
                    if len(pushed) >= 2 and pushed[-2] and pushed[-1]:
                        found.append(f"{pushed[-2]}.{pushed[-1]}")
                elif opcode.name == "MEMOIZE":
                    memo[len(memo)] = pushed[-1] if pushed else None
                elif opcode.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[int(arg)] = pushed[-1] if pushed else None
                elif opcode.name in ("GET", "BINGET", "LONG_BINGET"):
                    pushed.append(memo.get(int(arg)))
                elif opcode.name not in ("PROTO", "FRAME"):
                    pushed.append(arg if isinstance(arg, str) else None)
        except (ValueError, EOFError, pickle.UnpicklingError):
            break  # past the last pickle (legacy torch files continue with raw storage bytes)
    return list(dict.fromkeys(found))


def _python3_name(name: str) -> str:
    """``__builtin__.set`` (how protocol-2 pickles, e.g. torch.save's, spell it) → ``builtins.set``."""
    module, _, attr = name.rpartition(".")
    module, attr = _compat_pickle.NAME_MAPPING.get((module, attr), (module, attr))
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{attr}"


def offending_globals(path: Path, allowed: set[str]) -> list[str]:
    """Globals a pickle file needs beyond tensors, plain containers and ``allowed`` (scanned, not run)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            data = b"".join(archive.read(n) for n in archive.namelist() if n.endswith(".pkl"))
    else:
        data = path.read_bytes()
    names = [_python3_name(g) for g in _pickle_globals(data)]
    return [g for g in dict.fromkeys(names) if not g.startswith("torch.") and g not in HARMLESS_GLOBALS and g not in allowed]


def load_foreign_checkpoint(path: str | os.PathLike[str], *, allowed_globals: Sequence[Any] = ()) -> dict[str, Any]:
    """Load a third-party checkpoint onto the CPU without running code from it.

    ``.safetensors`` files are read directly. Anything else goes through torch's restricted
    unpickler; classes a trusted checkpoint legitimately holds (e.g. ``argparse.Namespace`` in
    saved training args) can be admitted with ``allowed_globals``. A pickle wanting any other
    global raises :class:`CheckpointError` naming the file and the global.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint file {file} does not exist")
    if file.suffix == ".safetensors":
        try:
            return load_file(str(file), device="cpu")
        except Exception as err:  # SafetensorError is not exported under a stable name
            raise CheckpointError(f"{file} is not a readable safetensors file: {err}") from err
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            loaded = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        allowed = {f"{getattr(g, '__module__', '')}.{getattr(g, '__qualname__', g)}" for g in allowed_globals}
        offending = offending_globals(file, allowed)
        named = ", ".join(offending) if offending else "an object outside tensors and plain containers"
        raise CheckpointError(
            f"{file} was refused by the restricted unpickler: it needs {named}. "
            "Pass allowed_globals=[...] only for classes you trust; functions such as os.system never belong there"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{file} is not a readable torch checkpoint: {err}") from err
    if not isinstance(loaded, dict):
        kind = type(loaded).__name__
        raise CheckpointError(f"{file} holds a {kind}; expected a dict (a state_dict or a wrapper of one)")
    return loaded
