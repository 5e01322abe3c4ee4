"""Reading released third-party checkpoints (``.pt``/``.pth``/``.bin`` pickles, ``.safetensors``).

Pickles are read only through ``torch.load(..., weights_only=True)``, PyTorch's restricted
unpickler, which admits tensors and plain containers and refuses any other global (ARCHITECTURE.md,
"Checkpoints": foreign pickles never go through ``pickle.load``). When it refuses, the pickle
opcodes are scanned (never executed) to name the first offending global in the error. A zip's
central directory is checked before anything is decompressed, and every read is bounded, so a hostile
file (a zip bomb, a pickle padded to gigabytes) is refused in milliseconds and megabytes.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
import pickletools
import re
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .checkpoint import CheckpointError

__all__ = ["check_archive", "load_foreign_checkpoint", "offending_globals", "refused_global"]

# Globals that torch's restricted unpickler admits in ordinary state dicts; the rest are reported.
HARMLESS_GLOBALS = {"collections.OrderedDict", "_codecs.encode", "builtins.set", "builtins.frozenset",
             "builtins.bytearray", "builtins.slice", "builtins.complex"}

# Bounds that keep a hostile file (a zip bomb, a pickle padded to gigabytes) from costing time or memory.
# A state dict's data.pkl holds only structure (~130 bytes per tensor; BERT-base: 25 KB), so 2 MiB is
# generous; torch.save stores members uncompressed, so a highly compressed member is a red flag.
MAX_PICKLE_BYTES = 2 << 20          # declared size of a zip's .pkl members together (torch reads them whole)
MAX_PICKLE_MEMBERS = 16             # .pkl members of a zip (torch writes one: data.pkl)
MAX_COMPRESSION_RATIO = 100         # declared size / compressed size of any zip member ...
COMPRESSION_CHECK_BYTES = 1 << 20   # ... once it declares more than this
# Naming the refused global takes it from torch's message; failing that, opcodes are scanned in Python
# (~1 us each): the first 256 KiB of pickle, at most 16 pickles one after another (a legacy torch
# file holds five), 100k memo entries kept.
MAX_SCAN_BYTES = 256 << 10
MAX_SCANNED_PICKLES = 16
MAX_SCAN_MEMO = 100_000


def check_archive(path: Path) -> None:
    """Refuse a zip checkpoint whose central directory promises more than a checkpoint needs, before any
    member is decompressed: oversized or too many ``.pkl`` members, or a member compressed beyond
    :data:`MAX_COMPRESSION_RATIO` (a zip bomb). Files that are not zips pass (their size is their cost)."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable zip archive: {err}") from err
    pickles = [m for m in members if m.filename.endswith(".pkl")]
    if len(pickles) > MAX_PICKLE_MEMBERS:
        raise CheckpointError(f"{path} holds {len(pickles)} .pkl members; a torch checkpoint holds one "
                              f"(data.pkl), at most {MAX_PICKLE_MEMBERS} are read")
    declared = sum(m.file_size for m in pickles)
    if declared > MAX_PICKLE_BYTES:
        raise CheckpointError(f"{path}: its .pkl members declare {declared} bytes; a checkpoint's pickle is "
                              f"expected under {MAX_PICKLE_BYTES} bytes (tensors live in separate members)")
    for member in members:
        if member.compress_type != zipfile.ZIP_STORED and member.file_size > COMPRESSION_CHECK_BYTES \
                and member.file_size > MAX_COMPRESSION_RATIO * max(member.compress_size, 1):
            raise CheckpointError(
                f"{path}: member {member.filename} expands {member.compress_size} bytes to {member.file_size} "
                f"(over {MAX_COMPRESSION_RATIO}:1), refused as a possible zip bomb; torch.save stores members "
                "uncompressed, so re-save the checkpoint with torch.save")


def _pickle_globals(data: bytes) -> Iterator[str]:
    """``module.name`` of each GLOBAL/STACK_GLOBAL, in order, in the pickles concatenated in ``data``
    (scanned, never run); stops at the end of ``data`` or at bytes that are not a pickle."""
    stream = io.BytesIO(data)
    for _ in range(MAX_SCANNED_PICKLES):
        # STACK_GLOBAL takes module and name from the two values pushed last, possibly via the memo;
        # ``pushed`` holds each push's string value (None for non-strings).
        pushed: list[str | None] = []
        memo: dict[int, str] = {}  # string values only, up to MAX_SCAN_MEMO of them
        memoized = 0  # MEMOIZE's next index
        stopped = False
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                if opcode.name == "GLOBAL":
                    yield str(arg).replace(" ", ".")
                elif opcode.name == "STACK_GLOBAL":
                    if len(pushed) >= 2 and pushed[-2] and pushed[-1]:
                        yield f"{pushed[-2]}.{pushed[-1]}"
                elif opcode.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                    key = memoized if opcode.name == "MEMOIZE" else int(arg)
                    memoized += opcode.name == "MEMOIZE"
                    value = pushed[-1] if pushed else None
                    if value is None:
                        memo.pop(key, None)
                    elif len(memo) < MAX_SCAN_MEMO:
                        memo[key] = value
                elif opcode.name in ("GET", "BINGET", "LONG_BINGET"):
                    pushed.append(memo.get(int(arg)))
                elif opcode.name == "STOP":
                    stopped = True
                elif opcode.name not in ("PROTO", "FRAME"):
                    pushed.append(arg if isinstance(arg, str) else None)
                del pushed[:-2]  # STACK_GLOBAL reads only the last two pushes
        except (ValueError, EOFError, pickle.UnpicklingError):
            return  # past the last pickle (legacy torch files continue with raw storage bytes)
        if not stopped or stream.tell() >= len(data):
            return


def _python3_name(name: str) -> str:
    """``__builtin__.set`` (how protocol-2 pickles, e.g. torch.save's, spell it) → ``builtins.set``."""
    module, _, attr = name.rpartition(".")
    module, attr = _compat_pickle.NAME_MAPPING.get((module, attr), (module, attr))
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{attr}"


def offending_globals(path: Path, allowed: set[str]) -> list[str]:
    """The first global a pickle file needs beyond tensors, plain containers and ``allowed``, as a
    one-element list (empty when none is found); scanned, not run. A zip is checked with
    :func:`check_archive` first; at most :data:`MAX_SCAN_BYTES` of pickle are read in all."""
    check_archive(path)
    chunks: list[bytes] = []
    budget = MAX_SCAN_BYTES
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for member in archive.infolist():
                    if member.filename.endswith(".pkl") and budget > 0:
                        with archive.open(member) as stream:
                            chunks.append(stream.read(budget))
                        budget -= len(chunks[-1])
        else:
            with open(path, "rb") as stream:
                chunks.append(stream.read(budget))
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError):
        pass  # a damaged member (bad CRC, truncated stream): name what was read before it, if anything
    for chunk in chunks:  # members one at a time: a member's pickle does not run on into the next
        for name in map(_python3_name, _pickle_globals(chunk)):
            if not name.startswith("torch.") and name not in HARMLESS_GLOBALS and name not in allowed:
                return [name]
    return []


# How torch's restricted unpickler names the global it refuses (torch.serialization parses it the same way).
_TORCH_REFUSAL = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module)")


def refused_global(path: Path, err: BaseException, allowed: set[str]) -> str | None:
    """The global that made torch's restricted unpickler refuse ``path``: from its message, else from a
    bounded opcode scan (:func:`offending_globals`); None when neither names one."""
    found = _TORCH_REFUSAL.search(str(err))
    if found:
        name = found.group(1)
        return _python3_name(name if "." in name else f"builtins.{name}")  # torch drops "builtins."
    offending = offending_globals(path, allowed)
    return offending[0] if offending else None


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
    check_archive(file)
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            loaded = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        allowed = {f"{getattr(g, '__module__', '')}.{getattr(g, '__qualname__', g)}" for g in allowed_globals}
        named = refused_global(file, err, allowed) or "an object outside tensors and plain containers"
        raise CheckpointError(
            f"{file} was refused by the restricted unpickler: it needs {named}. "
            "Pass allowed_globals=[...] only for classes you trust; functions such as os.system never belong there"
        ) from err
    except Exception as err:  # damaged files surface as RuntimeError, EOFError, struct.error, KeyError, ...
        raise CheckpointError(f"{file} is not a readable torch checkpoint: {type(err).__name__}: {err}") from err
    if not isinstance(loaded, dict):
        kind = type(loaded).__name__
        raise CheckpointError(f"{file} holds a {kind}; expected a dict (a state_dict or a wrapper of one)")
    return loaded
