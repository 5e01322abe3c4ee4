"""Block look-up tables of SpaceEvo's search-space search (ICCV'23, arXiv 2303.08308, Sec. 3.3).

After block-wise KD, each (stage, block type, width window) of a hyperspace gets a table of random
sub-stages with their distillation loss and predicted INT8 latency. The file format is the
reference's, so its released LUTs and ours are interchangeable:

* file ``stage{i}_{block}_{window}.csv`` (i = 1..6), no header, one sub-stage per line;
* ``k#w#e_k#w#e…,1xCxHxW,NSR,MFLOPs,Mparams,latency_ms`` — one ``k#w#e`` per block (expand printed
  as Python prints the block's value: ``4``, ``1.0``, or ``None`` for blocks without expand ratio),
  the stage's input shape, then four numbers with 4 decimals.

The input height of a row identifies its resolution: ``H * (product of the strides before the stage)``.

The reader accepts exactly this grammar (printable ASCII; ``INT`` = ``[1-9][0-9]{0,4}``)::

    file    := (row? EOL)+              EOL = "\n" or "\r\n"; empty lines are skipped; the last row
                                        must end with EOL (a file cut mid-row is refused)
    row     := block ("_" block)* "," "1x" INT "x" INT "x" INT "," NUMBER "," NUMBER "," NUMBER "," NUMBER
    block   := INT "#" INT "#" ("None" | INT | DECIMAL)     DECIMAL as Python prints a float (1.0, 0.5)
    NUMBER  := [0-9]+ ("." [0-9]+)?    at most 20 characters: NSR, MFLOPs, Mparams, latency_ms, all >= 0

Zero is accepted in every number (the writer rounds to 4 decimals, so a tiny latency prints as
0.0000; the Q-T scorer refuses an NSR of 0); NaN, infinities, negative values, exponents and non-ASCII digits are not. Lines are at
most 65,536 characters. Anything else raises :class:`~moonlit.common.errors.InputError` naming the
file, line and cell.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from moonlit.common.errors import InputError

from .space import Hyperspace, load_hyperspace

__all__ = ["BlockLUT", "LUTRow", "LUTSet", "format_expand", "lut_file_name", "parse_lut_file_name"]

_FILE_PATTERN = re.compile(r"stage(?P<stage>[1-9])_(?P<block>0|[1-9][0-9]?)_(?P<window>0|[1-9][0-9]?)\.csv")
_INT = re.compile(r"[1-9][0-9]{0,4}")
_DECIMAL = re.compile(r"[0-9]+\.[0-9]+")
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
MAX_LINE_CHARS = 65_536
MAX_NUMBER_CHARS = 20
NUMBER_CELLS = ("NSR", "MFLOPs", "Mparams", "latency_ms")
BlockChoice = tuple[int, int, int | float | None]  # kernel, width, expand


def lut_file_name(stage: int, block: int, window: int) -> str:
    return f"stage{stage}_{block}_{window}.csv"


def parse_lut_file_name(name: str) -> tuple[int, int, int]:
    """``(stage, block, window)`` of ``stage<i>_<block>_<window>.csv`` (no leading zeros, ASCII digits)."""
    match = _FILE_PATTERN.fullmatch(name)
    if match is None:
        raise InputError(f"LUT file name {name!r:.100} does not match 'stage<i>_<block>_<window>.csv' "
                         "(i 1-9, block and window 0-99 without leading zeros)")
    return int(match["stage"]), int(match["block"]), int(match["window"])


def format_expand(expand: float | None) -> str:
    return "None" if expand is None else str(expand)


def _clip(text: str, limit: int = 40) -> str:
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}… ({len(text)} characters)"


def _parse_int(text: str, what: str, where: str) -> int:
    if _INT.fullmatch(text) is None:
        raise InputError(f"{where}: {what} {_clip(text)} is not an integer 1-99999 (ASCII digits, no leading zero)")
    return int(text)


def _parse_expand(text: str, where: str) -> int | float | None:
    if text == "None":
        return None
    if _INT.fullmatch(text):
        return int(text)
    if _DECIMAL.fullmatch(text) and len(text) <= MAX_NUMBER_CHARS and float(text) > 0 and str(float(text)) == text:
        return float(text)
    raise InputError(f"{where}: expand {_clip(text)} is not None, a positive integer or a positive float as "
                     "Python prints it (e.g. 4, 1.0)")


def _parse_number(text: str, what: str, where: str) -> float:
    if _NUMBER.fullmatch(text) and len(text) <= MAX_NUMBER_CHARS:
        return float(text)
    problem = "is negative" if text.startswith("-") else f"is longer than {MAX_NUMBER_CHARS} characters" \
        if _NUMBER.fullmatch(text) else "is not a finite decimal number"
    raise InputError(f"{where}: {what} {_clip(text)} {problem}; expected a number >= 0 written with ASCII "
                     f"digits, e.g. 0.4991")


@dataclass(frozen=True)
class LUTRow:
    """One sampled sub-stage: its blocks, input shape (1, C, H, W), NSR loss, MFLOPs, Mparams, latency."""

    blocks: tuple[BlockChoice, ...]
    input_shape: tuple[int, int, int, int]
    nsr: float
    mflops: float
    mparams: float
    latency_ms: float

    def __post_init__(self) -> None:
        for name, value in zip(NUMBER_CELLS, (self.nsr, self.mflops, self.mparams, self.latency_ms)):
            if not (math.isfinite(value) and value >= 0):
                raise InputError(f"LUT row {self.blocks}: {name} {value!r} is not a finite number >= 0")

    def to_line(self) -> str:
        config = "_".join(f"{k}#{w}#{format_expand(e)}" for k, w, e in self.blocks)
        shape = "x".join(map(str, self.input_shape))
        return f"{config},{shape},{self.nsr:.4f},{self.mflops:.4f},{self.mparams:.4f},{self.latency_ms:.4f}\n"

    @classmethod
    def from_line(cls, line: str, where: str = "a LUT line") -> LUTRow:
        """One row of the grammar in the module docstring (a trailing ``\n`` or ``\r\n`` is dropped)."""
        line = line.removesuffix("\n").removesuffix("\r")
        if len(line) > MAX_LINE_CHARS:
            raise InputError(f"{where} has {len(line)} characters, more than a LUT row's {MAX_LINE_CHARS}")
        cells = line.split(",")
        if len(cells) != 6:
            raise InputError(f"{where} has {len(cells)} comma-separated cells, expected 6 "
                             f"(k#w#e_…, 1xCxHxW, NSR, MFLOPs, Mparams, latency_ms): {_clip(line, 100)}")
        config, shape, *numbers = cells
        blocks = []
        for block in config.split("_"):
            parts = block.split("#")
            if len(parts) != 3:
                raise InputError(f"{where}: block {_clip(block)} is not k#w#e")
            blocks.append((_parse_int(parts[0], "kernel", where), _parse_int(parts[1], "width", where),
                           _parse_expand(parts[2], where)))
        dims = shape.split("x")
        if len(dims) != 4 or dims[0] != "1":
            raise InputError(f"{where}: input shape {_clip(shape)} is not 1xCxHxW")
        input_shape = (1, *(_parse_int(d, f"input shape {_clip(shape)} dimension", where) for d in dims[1:]))
        nsr, mflops, mparams, latency = (_parse_number(text, name, where) for text, name in zip(numbers, NUMBER_CELLS))
        return cls(tuple(blocks), input_shape, nsr, mflops, mparams, latency)  # type: ignore[arg-type]


@dataclass
class BlockLUT:
    """All rows of one ``stage{i}_{block}_{window}.csv``."""

    stage: int
    block: int
    window: int
    rows: list[LUTRow]

    @property
    def file_name(self) -> str:
        return lut_file_name(self.stage, self.block, self.window)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> BlockLUT:
        """Read one LUT file (grammar in the module docstring); InputError names file, line and cell."""
        path = Path(path)
        stage, block, window = parse_lut_file_name(path.name)
        data = path.read_bytes()
        bad = re.search(rb"[^\x20-\x7e\r\n]", data)
        if bad is not None:
            line = data.count(b"\n", 0, bad.start()) + 1
            column = bad.start() - (data.rfind(b"\n", 0, bad.start()) + 1) + 1
            raise InputError(f"{path}, line {line}, column {column}: byte {bad.group()!r} is not printable ASCII; "
                             "a LUT is ASCII text")
        text = data.decode("ascii")
        lines = text.split("\n")
        if lines[-1] != "":
            raise InputError(f"{path}, line {len(lines)}: the last line {_clip(lines[-1])} does not end with a "
                             "newline; the file looks truncated")
        rows = [LUTRow.from_line(line, f"{path}, line {n}") for n, line in enumerate(lines[:-1], 1)
                if line not in ("", "\r")]
        if not rows:
            raise InputError(f"LUT {path} has no rows")
        return cls(stage, block, window, rows)

    def write(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``folder/<file_name>`` atomically (temp file + rename)."""
        path = Path(folder) / self.file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            f.writelines(row.to_line() for row in self.rows)
        os.replace(tmp, path)
        return path

    def resolutions(self, spec: Hyperspace) -> np.ndarray:
        """Input resolution of each row, from its input height and the strides before the stage."""
        factor = spec.input_downsample(f"stage{self.stage}")
        found = np.array([row.input_shape[2] * factor for row in self.rows])
        unknown = sorted(set(found.tolist()) - set(spec.lut_resolutions))
        if unknown:
            raise InputError(f"{self.file_name}: input heights give resolutions {unknown}, expected only "
                             f"{list(spec.lut_resolutions)} of '{spec.name}'")
        return found

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(NSR loss, latency ms) of every row."""
        return (np.array([r.nsr for r in self.rows]), np.array([r.latency_ms for r in self.rows]))


class LUTSet:
    """Every block LUT of a hyperspace found in one folder, keyed by (stage, block, window)."""

    def __init__(self, hyperspace: str, luts: Iterable[BlockLUT]) -> None:
        self.spec = load_hyperspace(hyperspace)
        self.luts = {(t.stage, t.block, t.window): t for t in luts}
        for stage, block, window in self.luts:
            stage_spec = self.spec.stages[stage + 1] if 1 <= stage <= 6 else None
            if stage_spec is None or not (0 <= block < len(self.spec.block_types)) \
                    or not (0 <= window < stage_spec.num_windows):
                raise InputError(f"LUT {lut_file_name(stage, block, window)} is not a (stage, block, window) "
                                 f"of '{hyperspace}' (blocks 0-{len(self.spec.block_types) - 1}, "
                                 f"windows per stage {list(self.spec.num_windows)})")

    @classmethod
    def read(cls, folder: str | os.PathLike[str], hyperspace: str) -> LUTSet:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"LUT folder {folder} does not exist")
        files = sorted(p for p in folder.iterdir() if _FILE_PATTERN.fullmatch(p.name))
        if not files:
            raise FileNotFoundError(f"no stage<i>_<block>_<window>.csv files in {folder}")
        return cls(hyperspace, (BlockLUT.read(p) for p in files))

    def write(self, folder: str | os.PathLike[str]) -> list[Path]:
        return [lut.write(folder) for lut in self.luts.values()]

    def missing(self) -> list[str]:
        """File names of the (stage, block, window) tables a complete LUT folder would have but this lacks."""
        wanted = [(i, b, w) for i, n in enumerate(self.spec.num_windows, 1)
                  for b in range(len(self.spec.block_types)) for w in range(n)]
        return [lut_file_name(*key) for key in wanted if key not in self.luts]

    def __getitem__(self, key: tuple[int, int, int]) -> BlockLUT:
        if key not in self.luts:
            raise KeyError(f"no LUT {lut_file_name(*key)} in this '{self.spec.name}' LUT set")
        return self.luts[key]

    def __iter__(self) -> Iterator[BlockLUT]:
        return iter(self.luts.values())

    def __len__(self) -> int:
        return len(self.luts)
