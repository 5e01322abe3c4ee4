"""Offline FLOPs tables of ElasticViT subnets (ICCV'23, arXiv 2303.09730, Sec. 3.2 "complexity-aware sampling").

A FLOPs level ``b`` (MMACs) holds subnets whose MACs lie in ``[b, b + band]``. The reference fills
each level by blind rejection (uniform subnets until 150,000 land in the band: 7–35 h per level).
Here a level is built by **completion**: every column but the last stage's is drawn from the
uniform proposal (:func:`moonlit.elasticvit.space.random_subnet`, vectorized); the last stage and
the head, whose MACs depend only on the resolution and the previous stage's width, are then chosen
among the completions that put the total inside the band. A partial subnet is kept with
probability ``f / f_max`` (``f``: the fraction of its completions that land in the band,
``f_max``: its maximum over every context and band position, computed exactly), so a table has
exactly the distribution of blind rejection (before de-duplication) at ``1 / f_max`` times the
yield per proposal, and each proposal costs a few vectorized integer operations.

The MAC counter that defines the levels is a choice (``counter``): ``"exact"`` is
:func:`moonlit.elasticvit.flops.subnet_complexity` (what ``torch.utils.flop_counter`` counts),
``"reference"`` is :func:`moonlit.elasticvit.flops.reference_mmacs` (what the reference's levels,
tables and papers use; 0.3–3 % lower). Both are re-implemented here on integer arrays and tested
equal to the scalar functions.

Tables are stored in one ``.npz`` (no pickle): ``arch_<level>`` (int16, one row per subnet, columns
:func:`table_columns`), ``macs_<level>`` (int64) and ``meta`` (a JSON string).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from moonlit.common.config import hydra_app

from .flops import SE_REDUCTION, V_CONV_KERNEL
from .space import ELASTICVIT_SPACE, ConvStage, SearchSpace, Subnet, TransformerStage, check_subnet, stage_sides

__all__ = [
    "COUNTERS",
    "DEFAULT_BAND",
    "DEFAULT_LEVELS",
    "FlopsTables",
    "array_to_subnets",
    "build_level",
    "build_tables",
    "part_macs",
    "propose",
    "run",
    "subnets_to_array",
    "table_columns",
    "total_macs",
]

logger = logging.getLogger("moonlit.elasticvit")

DEFAULT_LEVELS: tuple[int, ...] = (100, 200, 300, 400, 500, 700, 900, 1200)  # MMACs, the paper's banks
DEFAULT_BAND = 20   # MMACs above the level; the reference trains with [b, b + 2 * flops_bound], bound 10
COUNTERS = ("exact", "reference")
FORMAT_VERSION = 1


def table_columns(space: SearchSpace = ELASTICVIT_SPACE) -> tuple[str, ...]:
    """Column names of a table row: resolution, stem, then 4 choices per stage."""
    columns = ["resolution", "stem_width", "stem_depth", "stem_kernel"]
    for stage in space.conv_stages:
        columns += [f"{stage.name}_{c}" for c in ("width", "depth", "expand", "kernel")]
    for stage in space.transformer_stages:
        columns += [f"{stage.name}_{c}" for c in ("width", "depth", "mlp_ratio", "v_scale")]
    return tuple(columns)


def subnets_to_array(subnets: Sequence[Subnet]) -> np.ndarray:
    rows = [[s.resolution, s.stem_width, s.stem_depth, s.stem_kernel,
             *(value for stage in s.conv_stages for value in (stage.width, stage.depth, stage.expand, stage.kernel)),
             *(value for stage in s.transformer_stages
               for value in (stage.width, stage.depth, stage.mlp_ratio, stage.v_scale))] for s in subnets]
    return np.asarray(rows, dtype=np.int16).reshape(len(rows), -1)


def array_to_subnets(array: np.ndarray, space: SearchSpace = ELASTICVIT_SPACE) -> list[Subnet]:
    """Rows of a table back to checked :class:`Subnet` objects."""
    expected = len(table_columns(space))
    if array.ndim != 2 or array.shape[1] != expected:
        raise ValueError(f"table array has shape {array.shape}, expected (n, {expected}) for this space")
    num_conv = len(space.conv_stages)
    subnets = []
    for row in array.tolist():
        stages = [row[4 + 4 * i: 8 + 4 * i] for i in range(len(space.stages))]
        subnet = Subnet(row[0], row[1], row[2], row[3], tuple(ConvStage(*s) for s in stages[:num_conv]),
                        tuple(TransformerStage(*s) for s in stages[num_conv:]))
        check_subnet(subnet, space)
        subnets.append(subnet)
    return subnets


def _uniform_choice(rng: np.random.Generator, choices: Sequence[int], n: int) -> np.ndarray:
    return np.asarray(choices, dtype=np.int64)[rng.integers(0, len(choices), n)]


def _width_at_least(rng: np.random.Generator, widths: Sequence[int], previous: np.ndarray) -> np.ndarray:
    """Uniform among ``widths`` (ascending) that are >= ``previous``, row by row."""
    options = np.asarray(widths, dtype=np.int64)
    first = np.searchsorted(options, previous, side="left")
    if np.any(first >= len(options)):
        raise ValueError(f"widths {tuple(widths)} have no choice >= {int(previous.max())}")
    return options[first + (rng.random(len(previous)) * (len(options) - first)).astype(np.int64)]


def propose(rng: np.random.Generator, n: int, space: SearchSpace = ELASTICVIT_SPACE) -> np.ndarray:
    """``n`` rows drawn as :func:`~moonlit.elasticvit.space.random_subnet` draws one (int64)."""
    columns = [_uniform_choice(rng, space.resolutions, n)]
    previous = _uniform_choice(rng, space.first_conv_widths, n)
    columns += [previous, _uniform_choice(rng, space.stem_depths, n), _uniform_choice(rng, space.stem_kernels, n)]
    for stage in space.stages:
        previous = _width_at_least(rng, stage.widths, previous)
        extra = (space.conv_expands, space.conv_kernels) if stage.kind == "C" else (space.mlp_ratios, space.v_scales)
        columns += [previous, _uniform_choice(rng, stage.depths, n), *(_uniform_choice(rng, c, n) for c in extra)]
    return np.stack(columns, axis=1)


def _mbconv(cin: np.ndarray, cout: np.ndarray, expand: Any, kernel: Any, in_side: np.ndarray, out_side: np.ndarray,
            se: bool) -> np.ndarray:
    inner = cin * expand
    macs = np.where(np.asarray(expand) != 1, cin * inner * in_side ** 2, 0)
    macs = macs + inner * kernel ** 2 * out_side ** 2 + inner * cout * out_side ** 2
    if se:
        macs = macs + 2 * inner * (inner // SE_REDUCTION)
    return macs + np.where(cin != cout, cin * cout * out_side ** 2, 0)


def _side_table(arch: np.ndarray, space: SearchSpace) -> np.ndarray:
    """(n, 1 + stages) feature-map sides of every row, from its resolution."""
    resolutions = np.asarray(space.resolutions)
    index = np.searchsorted(resolutions, arch[:, 0])
    if np.any(index >= len(resolutions)) or np.any(resolutions[np.minimum(index, len(resolutions) - 1)] != arch[:, 0]):
        raise ValueError(f"resolutions {sorted(set(arch[:, 0].tolist()))} not all in {space.resolutions}")
    return np.asarray([stage_sides(r, space) for r in space.resolutions], dtype=np.int64)[index]


def part_macs(arch: np.ndarray, counter: str = "exact", num_classes: int = 1000,
              space: SearchSpace = ELASTICVIT_SPACE) -> dict[str, np.ndarray]:
    """MACs per part (``stem`` incl. first conv, stage names, ``head``) of every row; int64."""
    if counter not in COUNTERS:
        raise ValueError(f"counter {counter!r} is not one of {COUNTERS}")
    arch = np.asarray(arch, dtype=np.int64)
    sides = _side_table(arch, space)
    reference = counter == "reference"
    width, stem_depth, stem_kernel = arch[:, 1], arch[:, 2], arch[:, 3]
    parts = {"stem": 27 * width * sides[:, 0] ** 2
             + stem_depth * (width * stem_kernel ** 2 + width * width) * sides[:, 0] ** 2}
    for index, stage in enumerate(space.stages):
        w, depth, a, b = (arch[:, 4 + 4 * index + j] for j in range(4))
        in_side, side = sides[:, index], sides[:, index + 1]
        if stage.kind == "C":
            if reference:  # expand conv sized by stride x output side; a 1x1 shortcut on every strided block
                stride = 2 if stage.downsample else 1
                inner = width * a
                first = width * inner * (side * stride) ** 2 + inner * b ** 2 * side ** 2 + inner * w * side ** 2
                if stage.se:
                    first = first + 2 * inner * (inner // SE_REDUCTION)
                if stride == 2:
                    first = first + width * w * side ** 2
                inner = w * a
                rest = w * inner * side ** 2 + inner * b ** 2 * side ** 2 + inner * w * side ** 2
                if stage.se:
                    rest = rest + 2 * inner * (inner // SE_REDUCTION)
            else:
                first = _mbconv(width, w, a, b, in_side, side, stage.se)
                rest = _mbconv(w, w, a, b, side, side, stage.se)
            parts[stage.name] = first + (depth - 1) * rest
        else:
            tokens, heads = side ** 2, w // space.head_dim
            if reference:  # no SE or shortcut in the reduction block; V conv 1 MAC/element; softmax counted
                stride = 2 if stage.downsample else 1
                inner = width * space.reduction_expand
                reduction = (width * inner * (side * stride) ** 2 + inner * space.reduction_kernel ** 2 * side ** 2
                             + inner * w * side ** 2)
                values = heads * space.head_dim * b
                layer = (heads * tokens ** 2 * (space.head_dim + 1) + values * tokens ** 2
                         + w * tokens * (2 * heads * space.head_dim + values) + tokens * values * w + tokens * values
                         + 2 * w * w * a * tokens)
            else:
                values = w * b
                reduction = _mbconv(width, w, space.reduction_expand, space.reduction_kernel, in_side, side, se=True)
                layer = (tokens * w * (2 * w + values) + values * V_CONV_KERNEL ** 2 * tokens
                         + heads * tokens ** 2 * space.head_dim * (1 + b) + tokens * values * w
                         + 2 * tokens * w * w * a)
            parts[stage.name] = reduction + depth * layer
        width = w
    expanded = width * space.head_width_multiplier
    parts["head"] = (sides[:, -1] ** 2 * width * expanded + expanded * space.head_hidden
                     + space.head_hidden * num_classes)
    return parts


def total_macs(arch: np.ndarray, counter: str = "exact", num_classes: int = 1000,
               space: SearchSpace = ELASTICVIT_SPACE) -> np.ndarray:
    """MACs of every row (int64): equal to ``subnet_complexity(...).macs`` or ``reference_mmacs(...) * 1e6``."""
    return np.sum(np.stack(list(part_macs(arch, counter, num_classes, space).values())), axis=0)


@dataclass(frozen=True)
class _Completions:
    """Every last-stage choice per context (resolution, previous stage's width), sorted by its MACs.

    ``keys`` = ``context * KEY_STRIDE + closing MACs`` (last stage + head), ascending, so one
    ``searchsorted`` finds the in-band completions of many partial subnets at once.
    """

    keys: np.ndarray        # int64, flat over contexts
    choices: np.ndarray     # (len(keys), 4) last-stage columns of each completion
    counts: np.ndarray      # completions per context
    previous_widths: np.ndarray

    KEY_STRIDE = 10 ** 12   # above any MAC count of the space


def _completions(counter: str, num_classes: int, space: SearchSpace) -> _Completions:
    last, before = space.stages[-1], space.stages[-2]
    extra = (space.conv_expands, space.conv_kernels) if last.kind == "C" else (space.mlp_ratios, space.v_scales)
    keys, choices, counts = [], [], []
    template = propose(np.random.default_rng(0), 1, space)[0]
    for r_index, resolution in enumerate(space.resolutions):
        for p_index, previous in enumerate(before.widths):
            grid = np.array(np.meshgrid([w for w in last.widths if w >= previous], last.depths, *extra,
                                        indexing="ij")).reshape(4, -1).T
            arch = np.repeat(template[None], len(grid), axis=0)
            arch[:, 0], arch[:, -8], arch[:, -4:] = resolution, previous, grid
            parts = part_macs(arch, counter, num_classes, space)
            closing = parts[last.name] + parts["head"]
            order = np.argsort(closing, kind="stable")
            context = r_index * len(before.widths) + p_index
            keys.append(context * _Completions.KEY_STRIDE + closing[order])
            choices.append(grid[order])
            counts.append(len(grid))
    return _Completions(np.concatenate(keys), np.concatenate(choices), np.asarray(counts),
                        np.asarray(before.widths))


def _max_in_band_fraction(completions: _Completions, band_macs: int) -> float:
    """Max over contexts and band positions of (#completions in a window of ``band_macs``) / #completions."""
    best, start = 0.0, 0
    for count in completions.counts:
        values = completions.keys[start:start + count]
        inside = np.searchsorted(values, values + band_macs, side="right") - np.arange(count)
        best = max(best, float(inside.max()) / count)
        start += count
    return best


def build_level(level: float, count: int, *, band: float = DEFAULT_BAND, counter: str = "exact",
                seed: int = 0, num_classes: int = 1000, space: SearchSpace = ELASTICVIT_SPACE,
                batch_size: int = 200_000, max_proposals: int = 500_000_000,
                progress: tqdm | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``count`` distinct rows with MACs in ``[level, level + band]`` MMACs; returns (arch, macs, stats)."""
    if count <= 0:
        raise ValueError(f"count {count} must be positive")
    low, high = round(level * 1e6), round((level + band) * 1e6)
    completions = _completions(counter, num_classes, space)
    max_fraction = _max_in_band_fraction(completions, high - low)
    rng = np.random.default_rng([seed, round(level * 1000)])
    num_previous = len(completions.previous_widths)
    resolutions = np.asarray(space.resolutions)
    kept: list[np.ndarray] = []
    seen: set[bytes] = set()
    proposals = 0
    while sum(len(k) for k in kept) < count:
        if proposals >= max_proposals:
            raise RuntimeError(f"level {level} MMACs: only {sum(len(k) for k in kept)} of {count} distinct subnets "
                               f"after {proposals} proposals; is the band reachable in this space?")
        arch = propose(rng, batch_size, space)
        proposals += batch_size
        parts = part_macs(arch, counter, num_classes, space)
        partial = sum(parts.values()) - parts[space.stages[-1].name] - parts["head"]
        context = (np.searchsorted(resolutions, arch[:, 0]) * num_previous
                   + np.searchsorted(completions.previous_widths, arch[:, -8]))
        base = context * _Completions.KEY_STRIDE
        first = np.searchsorted(completions.keys, base + np.maximum(low - partial, 0), side="left")
        last = np.searchsorted(completions.keys, base + np.clip(high - partial, -1, _Completions.KEY_STRIDE - 1),
                               side="right")
        in_band = last - first
        fraction = in_band / completions.counts[context]
        accept = rng.random(batch_size) * max_fraction < fraction
        pick = first + (rng.random(batch_size) * in_band).astype(np.int64)
        arch, pick = arch[accept], pick[accept]
        arch[:, -4:] = completions.choices[pick]
        fresh = []
        for index, row in enumerate(arch.astype(np.int16)):
            key = row.tobytes()
            if key not in seen:
                seen.add(key)
                fresh.append(index)
        kept.append(arch[fresh])
        if progress is not None:
            progress.update(min(len(fresh), count - (sum(len(k) for k in kept) - len(fresh))))
    arch = np.concatenate(kept)[:count]
    macs = total_macs(arch, counter, num_classes, space)
    if np.any(macs < low) or np.any(macs > high):
        raise AssertionError(f"level {level}: a completed subnet fell outside [{low}, {high}] MACs")
    stats = {"proposals": proposals, "max_in_band_fraction": max_fraction,
             "yield": len(seen) / proposals}
    return arch.astype(np.int16), macs, stats


def _level_key(level: float) -> str:
    return f"{level:g}"


class FlopsTables:
    """Tables of distinct subnets per FLOPs level: load/save, query, stats."""

    def __init__(self, arrays: dict[float, np.ndarray], macs: dict[float, np.ndarray], *, band: float,
                 counter: str, num_classes: int = 1000, space: SearchSpace = ELASTICVIT_SPACE,
                 meta: dict[str, Any] | None = None) -> None:
        if counter not in COUNTERS:
            raise ValueError(f"counter {counter!r} is not one of {COUNTERS}")
        if set(arrays) != set(macs):
            raise ValueError(f"levels of arrays {sorted(arrays)} and macs {sorted(macs)} differ")
        self.levels: tuple[float, ...] = tuple(sorted(arrays))
        self.arrays, self.macs = dict(arrays), dict(macs)
        self.band, self.counter, self.num_classes, self.space = band, counter, num_classes, space
        self.meta = dict(meta or {})
        self._subnets: dict[float, list[Subnet]] = {}

    def _check_level(self, level: float) -> float:
        if level not in self.arrays:
            raise KeyError(f"level {level} MMACs is not in the tables; levels: {list(self.levels)}")
        return level

    def __len__(self) -> int:
        return len(self.levels)

    def size(self, level: float) -> int:
        return len(self.arrays[self._check_level(level)])

    def subnets(self, level: float) -> list[Subnet]:
        """Every subnet of a level, as :class:`Subnet` (decoded once, then cached)."""
        if level not in self._subnets:
            self._subnets[level] = array_to_subnets(self.arrays[self._check_level(level)], self.space)
        return self._subnets[level]

    def subnet(self, level: float, index: int) -> Subnet:
        return self.subnets(level)[index]

    def min_index(self, level: float) -> int:
        """Row of the level's smallest subnet (fewest MACs; first row on ties)."""
        return int(np.argmin(self.macs[self._check_level(level)]))

    def min_subnet(self, level: float) -> Subnet:
        return self.subnet(level, self.min_index(level))

    def stats(self) -> dict[str, Any]:
        """Per level: size, distinct rows, MMACs min/mean/max, resolution histogram."""
        per_level = {}
        for level in self.levels:
            arch, mmacs = self.arrays[level], self.macs[level] / 1e6
            resolutions, counts = np.unique(arch[:, 0], return_counts=True)
            per_level[_level_key(level)] = {
                "size": len(arch), "distinct": len(np.unique(arch, axis=0)),
                "mmacs_min": float(mmacs.min()), "mmacs_mean": float(mmacs.mean()), "mmacs_max": float(mmacs.max()),
                "resolutions": {int(r): int(c) for r, c in zip(resolutions, counts)}}
        return {"counter": self.counter, "band": self.band, "levels": per_level, **self.meta}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write one compressed ``.npz`` atomically (temp file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format_version": FORMAT_VERSION, "levels": list(self.levels), "band": self.band,
                "counter": self.counter, "num_classes": self.num_classes, "columns": list(table_columns(self.space)),
                **self.meta}
        payload = {"meta": np.asarray(json.dumps(meta))}
        for level in self.levels:
            payload[f"arch_{_level_key(level)}"] = self.arrays[level].astype(np.int16)
            payload[f"macs_{_level_key(level)}"] = self.macs[level].astype(np.int64)
        handle, temp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez_compressed(file, **payload)
            os.chmod(temp, 0o644)  # mkstemp creates 0600
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], space: SearchSpace = ELASTICVIT_SPACE) -> FlopsTables:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"{path}: format_version {meta.get('format_version')}, expected {FORMAT_VERSION}")
            if meta["columns"] != list(table_columns(space)):
                raise ValueError(f"{path}: columns {meta['columns']} do not match the space's {table_columns(space)}")
            levels = meta.pop("levels")
            arrays = {float(b): data[f"arch_{_level_key(b)}"] for b in levels}
            macs = {float(b): data[f"macs_{_level_key(b)}"] for b in levels}
        known = ("format_version", "band", "counter", "num_classes", "columns")
        return cls(arrays, macs, band=meta["band"], counter=meta["counter"], num_classes=meta["num_classes"],
                   space=space, meta={k: v for k, v in meta.items() if k not in known})


def build_tables(levels: Sequence[float] = DEFAULT_LEVELS, per_level: int = 10_000, *, band: float = DEFAULT_BAND,
                 counter: str = "exact", seed: int = 0, num_classes: int = 1000,
                 space: SearchSpace = ELASTICVIT_SPACE, show_progress: bool = False) -> FlopsTables:
    """One table per level (see :func:`build_level`); build time and yields go into ``meta``."""
    if counter not in COUNTERS:  # checked before the progress bar starts
        raise ValueError(f"counter {counter!r} is not one of {COUNTERS}")
    start = time.perf_counter()
    arrays, macs, level_stats = {}, {}, {}
    with tqdm(total=per_level * len(levels), desc="FLOPs tables", unit="subnet", disable=not show_progress) as bar:
        for level in levels:
            level_start = time.perf_counter()
            arrays[float(level)], macs[float(level)], stats = build_level(
                level, per_level, band=band, counter=counter, seed=seed, num_classes=num_classes, space=space,
                progress=bar)
            level_stats[_level_key(level)] = {**stats, "seconds": time.perf_counter() - level_start}
    meta = {"seed": seed, "build_seconds": time.perf_counter() - start, "build": level_stats}
    return FlopsTables(arrays, macs, band=band, counter=counter, num_classes=num_classes, space=space, meta=meta)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Build the tables the config names and write them to ``cfg.output``; returns their stats."""
    tables = build_tables(tuple(cfg.levels), int(cfg.per_level), band=float(cfg.band), counter=str(cfg.counter),
                          seed=int(cfg.seed), num_classes=int(cfg.num_classes), show_progress=bool(cfg.progress))
    path = tables.save(cfg.output)
    stats = tables.stats()
    logger.info("wrote %s (%.1f s)", path, stats["build_seconds"])
    return {"path": str(path), **stats}


@hydra_app("elasticvit", "tables")
def main(cfg: DictConfig) -> None:
    """``python -m moonlit.elasticvit.tables``: build the tables, print one line per level."""
    result = run(cfg)
    for level, row in result["levels"].items():
        print(f"level {level:>5} MMACs: {row['size']} subnets ({row['distinct']} distinct), "
              f"{row['mmacs_min']:.1f}-{row['mmacs_max']:.1f} MMACs")
    print(f"built in {result['build_seconds']:.1f} s -> {result['path']}")


if __name__ == "__main__":
    main()
