"""Foreign checkpoints that are hostile in size: zip bombs and padded pickles are refused cheaply.

The bombs are written by hand (local headers, central directory, end record) so that a member's
deflate stream can be repeated blocks of zeros: 256 MiB of pickle from ~270 KB of file, built in
well under a second. Peak memory is measured in a subprocess (``ru_maxrss`` after minus before the
load); time is printed, not asserted.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from moonlit.common.errors import InputError
from moonlit.common.train.checkpoint import CheckpointError
from moonlit.common.train.foreign import (MAX_PICKLE_BYTES, MAX_SCAN_BYTES, check_archive, load_foreign_checkpoint,
                                          offending_globals)

MIB = 1 << 20
MEMORY_BOUND = 100 * MIB


class _Reduces:
    """Pickles as ``func(*args)``: what a hostile checkpoint does to run code on load."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _member(name: str, data_head: bytes, zero_mib: int = 0, *, declared: int | None = None) -> tuple:
    """(name, deflated bytes, crc, size) of ``data_head`` followed by ``zero_mib`` MiB of zeros.

    After a full flush a deflate stream starts afresh, so the zeros are one compressed MiB repeated;
    ``declared`` overrides the size written to the headers (a lying archive).
    """
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = head.compress(data_head) + head.flush(zlib.Z_FULL_FLUSH)
    zeros = bytes(MIB)
    stream += _zero_block() * zero_mib
    stream += zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    crc = zlib.crc32(data_head)
    for _ in range(zero_mib):
        crc = zlib.crc32(zeros, crc)
    size = len(data_head) + zero_mib * MIB
    return name, stream, crc, size if declared is None else declared


@functools.lru_cache(maxsize=1)
def _zero_block() -> bytes:
    """One MiB of zeros as a self-contained stretch of deflate stream (~1 KB)."""
    block = zlib.compressobj(9, zlib.DEFLATED, -15)
    return block.compress(bytes(MIB)) + block.flush(zlib.Z_FULL_FLUSH)


def _stored(name: str, data: bytes) -> tuple:
    return name, data, zlib.crc32(data), len(data), zipfile_stored


zipfile_stored = 0  # ZIP_STORED; deflated members carry 8


def _write_zip(path: Path, members: list[tuple]) -> Path:
    """A zip of pre-compressed members: (name, payload, crc, size[, method]); method 8 (deflate) by default."""
    out, central = bytearray(), bytearray()
    for name, payload, crc, size, *method in members:
        method = method[0] if method else 8
        raw_name = name.encode()
        header = struct.pack("<HHHHHIIIHH", 20, 0, method, 0, 0x21, crc, len(payload), size, len(raw_name), 0)
        central += b"PK\x01\x02" + struct.pack("<H", 20) + header + struct.pack("<HHHII", 0, 0, 0, 0, len(out)) + raw_name
        out += b"PK\x03\x04" + header + raw_name + payload
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, len(members), len(members), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + end))
    return path


def _evil_pickle(marker: Path) -> bytes:
    return pickle.dumps({"weight": [1.0], "payload": _Reduces(os.system, f"touch {marker}")}, protocol=2)


def _torch_parts() -> list[tuple]:
    return [_stored("archive/byteorder", b"little"), _stored("archive/version", b"3\n")]


def zip_bomb(path: Path, marker: Path, zero_mib: int) -> Path:
    """A torch-shaped zip whose data.pkl (a hostile pickle) is padded with ``zero_mib`` MiB of zeros."""
    return _write_zip(path, [_member("archive/data.pkl", _evil_pickle(marker), zero_mib), *_torch_parts()])


def many_member_bomb(path: Path, marker: Path, members: int, zero_mib: int = 1) -> Path:
    pickles = [_member(f"archive/part{i}.pkl", _evil_pickle(marker), zero_mib) for i in range(members)]
    return _write_zip(path, [_member("archive/data.pkl", _evil_pickle(marker)), *pickles, *_torch_parts()])


def _refusal(file: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_foreign_checkpoint(file)
    assert isinstance(info.value, InputError) and str(file) in str(info.value)
    return str(info.value)


def test_zip_bomb_is_refused_from_the_central_directory(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    bomb = zip_bomb(tmp_path / "bomb.pt", marker, zero_mib=256)
    assert bomb.stat().st_size < 300_000  # 256 MiB of pickle behind it
    message = _refusal(bomb)
    assert f"declare {256 * MIB + len(_evil_pickle(marker))} bytes" in message
    assert not marker.exists()


def test_many_pickle_members_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    assert "holds 201 .pkl members" in _refusal(many_member_bomb(tmp_path / "many.pt", marker, members=200))
    # few members, each under the limit, but together over it
    few = many_member_bomb(tmp_path / "few.pt", marker, members=9, zero_mib=1)
    assert "declare" in _refusal(few) and 9 * MIB > MAX_PICKLE_BYTES
    assert not marker.exists()


def test_highly_compressed_tensor_member_is_refused(tmp_path: Path) -> None:
    """A legitimate pickle whose storage member inflates 256 MiB from ~270 KB (torch stores members)."""
    saved = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(4)}, saved)
    import zipfile

    with zipfile.ZipFile(saved) as archive:
        names = archive.namelist()
        parts = [_stored(name, archive.read(name)) for name in names if not name.endswith("data/0")]
        storage = next(name for name in names if name.endswith("data/0"))
    bomb = _write_zip(tmp_path / "storage_bomb.pt", [*parts, _member(storage, b"", 256)])
    assert "expands" in _refusal(bomb) and "possible zip bomb" in _refusal(bomb)


def test_archive_lying_about_its_size_is_refused(tmp_path: Path) -> None:
    """Headers declare a small data.pkl, the deflate stream holds 256 MiB: nothing reads past the declared size."""
    marker = tmp_path / "executed"
    evil = _evil_pickle(marker)
    lying = _write_zip(tmp_path / "lying.pt",
                       [_member("archive/data.pkl", evil, 256, declared=len(evil) + 100), *_torch_parts()])
    check_archive(lying)  # the central directory looks harmless ...
    _refusal(lying)  # ... and the read stops at the declared size
    assert not marker.exists()


def test_hostile_globals_are_still_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    command = f"touch {marker}"
    import builtins
    import subprocess as sp

    payloads = {
        f"{os.system.__module__}.system": _Reduces(os.system, command),
        "builtins.eval": _Reduces(builtins.eval, f"__import__('os').system({command!r})"),
        "subprocess.Popen": _Reduces(sp.Popen, ["touch", str(marker)]),
        "builtins.exec": _Reduces(builtins.exec, f"open({str(marker)!r}, 'w')"),
    }
    for offending, payload in payloads.items():
        for protocol in (2, 4):
            file = tmp_path / f"evil_{protocol}.bin"
            file.write_bytes(pickle.dumps({"w": [1.0], "x": payload}, protocol=protocol))
            assert f"it needs {offending}." in _refusal(file)
            assert offending_globals(file, set()) == [offending]  # the opcode scan alone names it too
            torch_file = tmp_path / "evil.pt"
            torch.save({"w": torch.ones(2), "x": payload}, torch_file)
            assert f"it needs {offending}." in _refusal(torch_file)
    assert not marker.exists()


def test_global_past_the_scan_window_is_refused(tmp_path: Path) -> None:
    """Refusal is torch's restricted unpickler's; the opcode scan (used when torch's message names no global)
    reads only the first MAX_SCAN_BYTES, so a global placed after them is not found by it."""
    marker = tmp_path / "executed"
    padding = [0.5] * (MAX_SCAN_BYTES // 9 + 1000)  # BINFLOAT: 9 bytes each
    file = tmp_path / "padded.bin"
    file.write_bytes(pickle.dumps({"pad": padding, "x": _Reduces(os.system, f"touch {marker}")}, protocol=2))
    assert file.stat().st_size > MAX_SCAN_BYTES
    assert offending_globals(file, set()) == []
    assert f"it needs {os.system.__module__}.system." in _refusal(file)  # named by torch's own refusal
    assert not marker.exists()


def test_legitimate_checkpoints_pass_the_checks(tmp_path: Path) -> None:
    state = {f"layer{i}.weight": torch.full((2, 2), float(i)) for i in range(500)}
    file = tmp_path / "many_tensors.pt"
    torch.save({"model": state, "epoch": 3}, file)
    check_archive(file)
    loaded = load_foreign_checkpoint(file)
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["layer7.weight"], torch.full((2, 2), 7.0))


_MEASURE = """
import json, resource, sys, time
from pathlib import Path
from moonlit.common.train.foreign import load_foreign_checkpoint
from moonlit.common.train.checkpoint import CheckpointError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    load_foreign_checkpoint(Path(sys.argv[1]))
    outcome = "loaded"
except CheckpointError as err:
    outcome = "refused"
seconds = time.perf_counter() - start
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps({"outcome": outcome, "seconds": seconds, "peak_bytes": grown}))
"""


def _measure(file: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(file)], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["single", "many"])
def test_refusing_a_zip_bomb_stays_under_100_mb(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "executed"
    if kind == "single":
        bomb = zip_bomb(tmp_path / "bomb.pt", marker, zero_mib=512)
    else:
        bomb = many_member_bomb(tmp_path / "bomb.pt", marker, members=500)
    measured = _measure(bomb)
    print(f"{kind} zip bomb of {bomb.stat().st_size} bytes: {measured}")
    assert measured["outcome"] == "refused"
    assert measured["peak_bytes"] < MEMORY_BOUND, measured
    assert not marker.exists()


def test_arbitrary_bytes_load_or_raise_checkpoint_error(tmp_path: Path, fuzz_settings) -> None:
    """Any file content ends in a dict or a CheckpointError (an InputError), never another exception."""
    saved = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, saved)
    good = saved.read_bytes()

    @fuzz_settings
    @given(st.one_of(st.binary(max_size=512),
                     st.tuples(st.integers(0, len(good) - 1), st.binary(min_size=1, max_size=16)).map(
                         lambda cut: good[: cut[0]] + cut[1] + good[cut[0] + len(cut[1]):])))
    def check(content: bytes) -> None:
        file = tmp_path / "fuzz.pt"
        file.write_bytes(content)
        try:
            assert isinstance(load_foreign_checkpoint(file), dict)
        except CheckpointError:
            pass

    check()
