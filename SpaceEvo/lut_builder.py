"""Block LUTs from block-wise KD students (SpaceEvo, ICCV'23, arXiv 2303.08308, Sec. 3.3;
reference ``eval_block_kd.py``).

For each (stage, block type, width window) of a hyperspace, ``num_samples`` random sub-stages of the
trained :class:`~moonlit.spaceevo.block_kd.StudentStage` (input width from the previous stage's widths,
depth, and per block kernel / width inside the window / expand ratio; the LUT resolutions in turn, where
the reference drew one at random, so that every resolution has rows even in a small LUT) are measured:

* **NSR** on held-out images, after re-estimating the sub-stage's BatchNorm statistics on
  ``calib_batches`` training batches at the row's resolution (the reference's ``calibrate_bn_params``);
* **MFLOPs** and **Mparams** of the static sub-stage (projections excluded) from
  :func:`moonlit.common.profiling.flops.count_macs`: multiply-accumulates of convs and linears / 1e6 (the
  reference's counter also counts MACs and calls them FLOPs) and all parameters / 1e6, LSQ+ scales
  included as in the reference;
* **latency** from a :class:`LatencySource`: :class:`LitePredLatency` (a LitePred predictor built for a
  local platform: export to ONNX, detect kernels, sum the kernel predictions) or :class:`ConstantLatency`
  (a given table of milliseconds per MFLOP for each block type).

Rows are written with :class:`~moonlit.spaceevo.lut.BlockLUT` in the reference's exact CSV format, so
the released LUTs and ours are interchangeable in :mod:`moonlit.spaceevo.space_search`.

``python -m moonlit.spaceevo.lut_builder`` (config ``configs/spaceevo/lut_builder.yaml``).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from moonlit.common.config import hydra_app, to_container
from moonlit.common.data.images import ImageFolderData, build_image_data
from moonlit.common.errors import InputError
from moonlit.common.profiling.flops import count_macs
from moonlit.common.train.seed import step_seed

from .block_kd import (
    StudentStage,
    calibrate_bn,
    evaluate_nsr,
    load_student,
    student_name,
)
from .lut import BlockLUT, LUTRow
from .ops.lsq_plus import set_quant_mode
from .space import load_hyperspace
from .teacher import Teacher, build_teacher, resize_images

__all__ = ["ConstantLatency", "LatencySource", "LitePredLatency", "StageFeatures", "build_luts", "image_batches",
           "latency_source", "main", "run", "run_lut_builder", "sample_block_lut"]

logger = logging.getLogger("moonlit.spaceevo.lut_builder")


class LatencySource(Protocol):
    """Latency in ms of a static sub-stage fed a ``1 x C x H x W`` input."""

    def __call__(self, substage: nn.Module, input_shape: tuple[int, int, int, int], block_type: str,
                 mflops: float) -> float: ...


class ConstantLatency:
    """A given constant table: ``ms = table[block type] * MFLOPs`` (key ``"*"``: every other block type).

    A stand-in where no latency predictor exists for the target; per-block-type constants let a
    depthwise-heavy block cost more per MAC than a dense one, as on INT8 CPUs.
    """

    def __init__(self, table: Mapping[str, float] | float) -> None:
        entries = {"*": table} if isinstance(table, (int, float)) else table
        if not isinstance(entries, Mapping) or not entries:
            raise InputError(f"latency table {table!r:.100} is not a number or a non-empty mapping of block type "
                             "to ms per MFLOP")
        self.table = {}
        for key, value in entries.items():
            if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise InputError(f"latency table entry {key!r:.60}: {value!r:.60} is not a finite number >= 0 "
                                 "(ms per MFLOP) under a block-type name")
            self.table[key] = float(value)

    def __call__(self, substage: nn.Module, input_shape: tuple[int, int, int, int], block_type: str,
                 mflops: float) -> float:
        if block_type in self.table:
            return self.table[block_type] * mflops
        if "*" in self.table:
            return self.table["*"] * mflops
        raise InputError(f"no latency constant for block type {block_type!r}; table has {sorted(self.table)} "
                         "(add it or a '*' entry)")

    def describe(self) -> dict[str, Any]:
        return {"source": "constant", "ms_per_mflop": self.table}


class LitePredLatency:
    """Latency predicted by a LitePred platform predictor (``moonlit-litepred build platform=...``).

    The sub-stage is exported in FP32 (LSQ+ quantizers off; eval mode folds BN into the convs), its
    kernels are detected with the predictor's fusion rules, and the kernel predictions are summed.
    The whole-model overhead term (``a * sum + b``) is left out by default: it belongs to whole
    networks, and a LUT row is one of the six stages a network's latency is summed from.
    """

    def __init__(self, predictor_dir: str | Path, platform: str | None = None, apply_overhead: bool = False) -> None:
        from moonlit.litepred.api import load_predictor

        self.predictor_dir = Path(predictor_dir)
        self.predictor = load_predictor(self.predictor_dir)
        try:
            self.rules = platform or self.predictor.rules
        except InputError as error:
            raise InputError(f"predictor {self.predictor_dir}: {error}; pass platform=<rules name>") from None
        self.apply_overhead = apply_overhead
        self.unpredicted_kernels = 0

    def __call__(self, substage: nn.Module, input_shape: tuple[int, int, int, int], block_type: str,
                 mflops: float) -> float:
        from moonlit.litepred.api import predict_module

        model = copy.deepcopy(substage).eval()
        set_quant_mode(model, None)
        prediction = predict_module(self.predictor, model, (torch.zeros(input_shape),), rules=self.rules,
                                    apply_overhead=self.apply_overhead)
        unknown = prediction.unpredicted_kernels
        if unknown:
            self.unpredicted_kernels += len(unknown)
            logger.warning("%s sub-stage %s: kernels without a regressor left out: %s", block_type, input_shape,
                           unknown[:3])
        if not prediction.predicted_kernels:
            raise InputError(f"no kernel of the {block_type} sub-stage at {input_shape} has a regressor in "
                             f"{self.predictor_dir} (kernel types {self.predictor.kernel_types})")
        return prediction.latency_ms

    def describe(self) -> dict[str, Any]:
        return {"source": "litepred", "predictor_dir": str(self.predictor_dir), "rules": self.rules,
                "apply_overhead": self.apply_overhead, "unpredicted_kernels": self.unpredicted_kernels}


def latency_source(cfg: Mapping[str, Any]) -> LatencySource:
    """``{source: constant, table: {...}}`` or ``{source: litepred, predictor_dir, platform, apply_overhead}``."""
    kind = cfg.get("source")
    if kind == "constant":
        if "table" not in cfg:
            raise InputError("latency.source=constant needs latency.table=<ms per MFLOP, or "
                             "{block type: ms per MFLOP}>")
        return ConstantLatency(cfg["table"])
    if kind == "litepred":
        if not cfg.get("predictor_dir"):
            raise InputError("latency.source=litepred needs latency.predictor_dir=<a built LitePred predictor>")
        return LitePredLatency(cfg["predictor_dir"], cfg.get("platform"), bool(cfg.get("apply_overhead", False)))
    raise InputError(f"latency.source={kind!r}; expected 'constant' or 'litepred'")


class StageFeatures:
    """Teacher (input, output) of one stage for calibration and held-out images, cached per resolution."""

    def __init__(self, teacher: Teacher, stage: str, calib_images: Sequence[Tensor],
                 eval_images: Sequence[Tensor]) -> None:
        self.teacher, self.stage = teacher, stage
        self.calib_images, self.eval_images = list(calib_images), list(eval_images)
        self._cache: dict[int, tuple[list[Tensor], list[tuple[Tensor, Tensor]]]] = {}

    def at(self, resolution: int) -> tuple[list[Tensor], list[tuple[Tensor, Tensor]]]:
        if resolution not in self._cache:
            def io(images: Tensor) -> tuple[Tensor, Tensor]:
                return self.teacher.stage_io(resize_images(images, resolution), [self.stage])[self.stage]
            self._cache[resolution] = ([io(x)[0] for x in self.calib_images], [io(x) for x in self.eval_images])
        return self._cache[resolution]


def sample_block_lut(student: StudentStage, features: StageFeatures, window: int, num_samples: int,
                     resolutions: Sequence[int], latency: LatencySource, seed: int = 0,
                     variance_of: str = "teacher", progress: bool = False, bar: tqdm | None = None) -> BlockLUT:
    """``num_samples`` random sub-stages of ``student`` with widths in ``window``, as one LUT.

    Progress: ``bar`` (a caller's bar over many LUTs) advances once per sample; otherwise ``progress``
    shows a bar of this LUT's own.
    """
    spec = load_hyperspace(student.hyperspace)
    widths = student.stage_spec.window_widths(window)
    downsample = spec.input_downsample(f"stage{student.stage_index}")
    bad = [r for r in resolutions if r % downsample]
    if bad:
        raise InputError(f"resolutions {bad} are not multiples of {downsample}, the downsampling before "
                         f"stage{student.stage_index} of '{spec.name}'")
    rng = random.Random(step_seed(seed, (student.stage_index * 100 + student.block) * 100 + window))
    rows = []
    own = tqdm(total=num_samples, desc=f"{student.name}_{window}", disable=bar is not None or not progress)
    for index in range(num_samples):
        sub = student.sample(rng, widths)
        # Resolutions in turn (the reference drew one at random): every resolution gets rows even for small N.
        resolution = resolutions[index % len(resolutions)]
        calib_inputs, eval_pairs = features.at(resolution)
        calibrate_bn(student, calib_inputs)
        nsr = evaluate_nsr(student, eval_pairs, variance_of)
        substage = student.get_active_substage().eval()
        shape = (1, sub.in_channels, resolution // downsample, resolution // downsample)
        complexity = count_macs(substage, torch.zeros(shape))
        mflops, mparams = complexity.macs / 1e6, complexity.params / 1e6
        rows.append(LUTRow(sub.blocks, shape, nsr, mflops, mparams,
                           float(latency(substage, shape, student.block_spec.name, mflops))))
        (bar or own).update()
    own.close()
    return BlockLUT(student.stage_index, student.block, window, rows)


def build_luts(students_dir: str | Path, teacher: Teacher, hyperspace: str, out_dir: str | Path,
               calib_images: Sequence[Tensor], eval_images: Sequence[Tensor], latency: LatencySource,
               num_samples: int, stages: Sequence[int] | None = None, blocks: Sequence[int] | None = None,
               windows: Sequence[int] | None = None, resolutions: Sequence[int] | None = None, seed: int = 0,
               variance_of: str = "teacher", progress: bool = True) -> list[Path]:
    """Write ``stage{i}_{block}_{window}.csv`` for every selected student and window; returns the paths.

    Progress is one bar over every sample of every LUT.
    """
    spec = load_hyperspace(hyperspace)
    resolutions = list(resolutions or spec.lut_resolutions)
    plan = {stage: [(block, [w for w in (windows if windows is not None else range(spec.stages[stage + 1].num_windows))
                             if w in range(spec.stages[stage + 1].num_windows)])
                    for block in (blocks if blocks is not None else range(len(spec.block_types)))]
            for stage in stages or range(1, len(spec.searchable_stages) + 1)}
    total = num_samples * sum(len(ws) for per_block in plan.values() for _, ws in per_block)
    written = []
    with tqdm(total=total, desc="block LUTs", unit="sub-stage", disable=not progress) as bar:
        for stage, per_block in plan.items():
            features = StageFeatures(teacher, f"stage{stage}", calib_images, eval_images)
            for block, stage_windows in per_block:
                student = load_student(Path(students_dir) / student_name(stage, block))
                if student.hyperspace != spec.name:
                    raise InputError(f"student {student.name} in {students_dir} belongs to '{student.hyperspace}', "
                                     f"not '{spec.name}'")
                for window in stage_windows:
                    bar.set_postfix_str(f"{student.name}_{window}")
                    lut = sample_block_lut(student, features, window, num_samples, resolutions, latency, seed,
                                           variance_of, bar=bar)
                    written.append(lut.write(out_dir))
    return written


def image_batches(dataset: Dataset, batch_size: int, count: int, seed: int) -> list[Tensor]:
    """The images of the first ``count`` batches of a seeded shuffle of ``dataset`` (calibration, NSR).

    No batch beyond them is loaded: a training transform draws from the global RNG per image.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    return [images for _, (images, _) in zip(range(count), loader)]


def run_lut_builder(cfg: DictConfig) -> dict[str, Any]:
    """Rebuild the block-KD teacher from ``block_kd.json``, then sample and write every LUT."""
    start = time.perf_counter()
    block_kd_dir = Path(cfg.block_kd_dir)
    summary_path = block_kd_dir / "block_kd.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path} not found; run python -m moonlit.spaceevo.block_kd first "
                                f"(or point block_kd_dir= at its output_dir)")
    try:
        kd = json.loads(summary_path.read_text(encoding="utf-8"))
        kd["hyperspace"], kd["teacher"]["model"], kd["teacher"]["weights"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"{summary_path} is not a block-KD summary with 'hyperspace' and 'teacher' "
                         f"{{model, weights}} ({type(exc).__name__}: {exc})") from None
    if kd["hyperspace"] != cfg.hyperspace:
        raise InputError(f"{summary_path} trained '{kd['hyperspace']}' students, this run asks for '{cfg.hyperspace}'")
    info = kd["teacher"]
    teacher = build_teacher(info["model"], cfg.hyperspace, info["weights"], info.get("num_classes"),
                            info.get("segments"), info.get("stage_ends"), info.get("lsq", False),
                            info.get("model_kwargs"))
    spec = load_hyperspace(cfg.hyperspace)
    resolutions = list(cfg.resolutions or spec.lut_resolutions)
    # the block-KD run's data node (an ImageFolder root in summaries without _target_), with this run's non-null keys
    data = ({"_target_": f"{ImageFolderData.__module__}.ImageFolderData", "seed": kd["config"].get("seed", 0)}
            | kd["config"].get("data", {})
            | {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if v is not None})
    datasets = build_image_data(data, img_size=max(resolutions))
    calib = image_batches(datasets["train"], cfg.batch_size, cfg.calib_batches, cfg.seed)
    held_out = image_batches(datasets.get("holdout", datasets["val"]), cfg.batch_size, cfg.eval_batches, cfg.seed)
    latency = latency_source(OmegaConf.to_container(cfg.latency, resolve=True))
    paths = build_luts(block_kd_dir / "students", teacher, cfg.hyperspace, cfg.output_dir, calib, held_out, latency,
                       cfg.num_samples, cfg.stages, cfg.blocks, cfg.windows, resolutions, cfg.seed, cfg.variance_of,
                       cfg.progress)
    result = {"hyperspace": cfg.hyperspace, "files": [p.name for p in paths], "rows_per_file": cfg.num_samples,
              "latency": latency.describe() if hasattr(latency, "describe") else repr(latency),
              "seconds": time.perf_counter() - start, "config": to_container(cfg)}
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.output_dir) / "lut_builder.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def run(cfg: DictConfig) -> dict[str, Any]:
    """The work behind ``python -m moonlit.spaceevo.lut_builder``: :func:`run_lut_builder`'s result."""
    return run_lut_builder(cfg)


@hydra_app("spaceevo", "lut_builder")
def main(cfg: DictConfig) -> None:
    result = run(cfg)
    print(f"{len(result['files'])} LUTs of {result['rows_per_file']} rows in {cfg.output_dir} "
          f"({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
