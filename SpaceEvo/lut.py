"""Block look-up tables of SpaceEvo's search-space search (ICCV'23, arXiv 2303.08308, Sec. 3.3).

After block-wise KD, each (stage, block type, width window) of a hyperspace gets a table of random
sub-stages with their distillation loss and predicted INT8 latency. The file format is the
reference's, so its released LUTs and ours are interchangeable:

* file ``stage{i}_{block}_{window}.csv`` (i = 1..6), no header, one sub-stage per line;
* ``k#w#e_k#w#e…,1xCxHxW,NSR,MFLOPs,Mparams,latency_ms`` — one ``k#w#e`` per block (expand printed
  as Python prints the block's value: ``4``, ``1.0``, or ``None`` for blocks without expand ratio),
  the stage's input shape, then four numbers with 4 decimals.

The input height of a row identifies its resolution: ``H * (product of the strides before the stage)``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .space import Hyperspace, load_hyperspace

__all__ = ["BlockLUT", "LUTRow", "LUTSet", "format_expand", "lut_file_name", "parse_lut_file_name"]

_FILE_PATTERN = re.compile(r"^stage(?P<stage>\d+)_(?P<block>\d+)_(?P<window>\d+)\.csv$")
BlockChoice = tuple[int, int, int | float | None]  # kernel, width, expand


def lut_file_name(stage: int, block: int, window: int) -> str:
    return f"stage{stage}_{block}_{window}.csv"


def parse_lut_file_name(name: str) -> tuple[int, int, int]:
    match = _FILE_PATTERN.match(name)
    if match is None:
        raise ValueError(f"LUT file name '{name}' does not match 'stage<i>_<block>_<window>.csv'")
    return int(match["stage"]), int(match["block"]), int(match["window"])


def format_expand(expand: float | None) -> str:
    return "None" if expand is None else str(expand)


def _parse_expand(text: str, where: str) -> int | float | None:
    if text == "None":
        return None
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise ValueError(f"expand '{text}' in {where} is not a number or None") from None


@dataclass(frozen=True)
class LUTRow:
    """One sampled sub-stage: its blocks, input shape (1, C, H, W), NSR loss, MFLOPs, Mparams, latency."""

    blocks: tuple[BlockChoice, ...]
    input_shape: tuple[int, int, int, int]
    nsr: float
    mflops: float
    mparams: float
    latency_ms: float

    def to_line(self) -> str:
        config = "_".join(f"{k}#{w}#{format_expand(e)}" for k, w, e in self.blocks)
        shape = "x".join(map(str, self.input_shape))
        return f"{config},{shape},{self.nsr:.4f},{self.mflops:.4f},{self.mparams:.4f},{self.latency_ms:.4f}\n"

    @classmethod
    def from_line(cls, line: str, where: str = "a LUT line") -> LUTRow:
        cells = line.rstrip("\r\n").split(",")
        if len(cells) != 6:
            raise ValueError(f"{where} has {len(cells)} comma-separated cells, expected 6 "
                             f"(k#w#e_…, 1xCxHxW, NSR, MFLOPs, Mparams, latency_ms): '{line.rstrip()}'")
        config, shape, *numbers = cells
        blocks = []
        for block in config.split("_"):
            parts = block.split("#")
            if len(parts) != 3:
                raise ValueError(f"block '{block}' in {where} is not k#w#e")
            try:
                blocks.append((int(parts[0]), int(parts[1]), _parse_expand(parts[2], where)))
            except ValueError as exc:
                raise ValueError(f"block '{block}' in {where}: {exc}") from None
        dims = shape.split("x")
        if len(dims) != 4 or not all(d.isdigit() for d in dims):
            raise ValueError(f"input shape '{shape}' in {where} is not 1xCxHxW")
        try:
            nsr, mflops, mparams, latency = (float(v) for v in numbers)
        except ValueError:
            raise ValueError(f"numbers {numbers} in {where} are not all floats") from None
        return cls(tuple(blocks), tuple(int(d) for d in dims), nsr, mflops, mparams, latency)  # type: ignore[arg-type]


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
        path = Path(path)
        stage, block, window = parse_lut_file_name(path.name)
        with open(path, newline="") as f:
            rows = [LUTRow.from_line(line, f"line {n} of {path}") for n, line in enumerate(f, 1) if line.strip()]
        if not rows:
            raise ValueError(f"LUT {path} has no rows")
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
            raise ValueError(f"{self.file_name}: input heights give resolutions {unknown}, expected only "
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
                raise ValueError(f"LUT {lut_file_name(stage, block, window)} is not a (stage, block, window) "
                                 f"of '{hyperspace}' (blocks 0-{len(self.spec.block_types) - 1}, "
                                 f"windows per stage {list(self.spec.num_windows)})")

    @classmethod
    def read(cls, folder: str | os.PathLike[str], hyperspace: str) -> LUTSet:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"LUT folder {folder} does not exist")
        files = sorted(p for p in folder.iterdir() if _FILE_PATTERN.match(p.name))
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
