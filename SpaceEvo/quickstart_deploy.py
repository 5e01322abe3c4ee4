"""Quickstart section "SpaceEvo", second half: supernet -> subnet search -> INT8 export -> measured speed-up.

The rest of the SpaceEvo pipeline (ICCV'23, arXiv 2303.08308, §4.1 supernet training and INT8
deployment, §4 "subnet search") at toy scale, on the space the quickstart's space search ranked first
(or a fixed one), through the real apps:

1. :func:`moonlit.spaceevo.train_supernet.train_supernet` with ``experiment=smoke`` and overrides: a
   few sandwich steps in FP32, then a few LSQ+ QAT steps, on the quickstart's generated images (the
   held-out images are left out of training);
2. :func:`moonlit.spaceevo.subnet_search.run_search` at small evolution sizes: fitness = INT8
   fake-quant (LSQ+) top-1 on the held-out images after BN recalibration; the constraint is an MMACs
   band between the space's smallest and largest subnets (a stand-in for latency that needs no
   LitePred predictor);
3. the best subnet, BN recalibrated as the search scored it and its activation offsets snapped to
   the exportable grid, is exported to INT8 QDQ with its learned LSQ+ grids
   (:func:`moonlit.spaceevo.deploy.export_lsq_qdq`) and to FP32 ONNX; onnxruntime's INT8 top-1 is
   compared with the fake-quant torch model's on the generated images, and FP32 vs INT8 are timed
   on one thread, interleaved, medians (:func:`moonlit.common.profiling.model_benchmark.benchmark_models`).
"""

from __future__ import annotations

import copy
import itertools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from moonlit.common.config import compose_config
from moonlit.common.data.imagenet import build_imagenet_datasets
from moonlit.common.profiling.flops import count_macs
from moonlit.common.profiling.model_benchmark import BenchModel, benchmark_models

from .deploy import export_lsq_qdq, snap_offsets_to_grid_
from .ops.lsq_plus import set_quant_mode
from .space import SpaceEncoding, SubnetEncoding, max_subnet, min_subnet
from .subnet_search import (
    SubnetComplexity,
    SupernetFitness,
    build_data,
    load_supernet,
    run_search,
)
from .train_supernet import train_supernet

__all__ = ["compose_app_config", "deploy_best_subnet", "generated_images", "macs_band", "onnx_logits",
           "run_deploy_steps", "search_best_subnet", "top1_agreement", "train_space_supernet"]


def compose_app_config(name: str, overrides: Sequence[str]) -> DictConfig:
    """``configs/spaceevo/<name>.yaml`` with ``overrides``, inside a running Hydra app or outside one."""
    return compose_config("spaceevo", name, overrides)


def _resolutions(space: SpaceEncoding) -> list[int]:
    return [int(r) for r in space.spec.resolutions]


def _list_override(key: str, values: Sequence[int]) -> str:
    return f"{key}=[{','.join(str(int(v)) for v in values)}]"


def train_space_supernet(cfg: DictConfig, space: SpaceEncoding, images: Path, out: Path) -> dict[str, Any]:
    """FP32 sandwich steps then LSQ+ QAT steps of the supernet of ``space``; returns the run's summary."""
    sc = cfg.supernet
    overrides = [
        "experiment=smoke", f"space={space}", f"output_dir={out}", "resume=false", f"data.root={images}",
        "data=imagenet", f"data.img_size={max(_resolutions(space))}",
        f"data.holdout_per_class={cfg.data.holdout_per_class}", f"supernet.num_classes={cfg.data.num_classes}",
        _list_override("supernet.resolutions", _resolutions(space)), f"trainer.seed={cfg.seed}",
        f"optim.lr={sc.lr}", f"fp32.epochs={sc.fp32_epochs}", f"fp32.warmup_epochs={min(1, sc.fp32_epochs)}",
        f"fp32.batch_size={sc.batch_size}", f"qat.epochs={sc.qat_epochs}", "qat.warmup_epochs=0",
        f"qat.batch_size={sc.batch_size}", f"max_steps_per_epoch={sc.steps_per_epoch}",
        f"eval.every_epochs={max(sc.fp32_epochs, sc.qat_epochs)}", f"eval.bn_calibration_batches={sc.bn_batches}",
        "trainer.log_every=1000", *sc.train_overrides]
    summary = train_supernet(compose_app_config("train_supernet", overrides))
    phases = {}
    for phase, result in summary["phases"].items():
        losses = [step["losses"] for step in result["history"]]
        phases[phase] = {"steps": result["steps"], "eval": result["eval"],
                         "first_losses": losses[0] if losses else None, "last_losses": losses[-1] if losses else None}
    return {"space": str(space), "phases": phases, "checkpoint": str(out / "checkpoints" / "qat")}


def macs_band(space: SpaceEncoding, num_classes: int, fractions: Sequence[float]) -> tuple[float, float]:
    """(low, high) MMACs at ``fractions`` of the way from the space's smallest subnet to its largest."""
    low_fraction, high_fraction = (float(f) for f in fractions)
    if not 0.0 <= low_fraction < high_fraction <= 1.0:
        raise ValueError(f"macs band fractions {list(fractions)} must satisfy 0 <= low < high <= 1")
    resolutions = _resolutions(space)
    complexity = SubnetComplexity(space, num_classes, resolutions)
    smallest = complexity(min_subnet(space, resolution=min(resolutions)))[0] / 1e6
    largest = complexity(max_subnet(space, resolution=max(resolutions)))[0] / 1e6
    return smallest + low_fraction * (largest - smallest), smallest + high_fraction * (largest - smallest)


def _search_data_overrides(cfg: DictConfig, space: SpaceEncoding, images: Path) -> list[str]:
    return [f"data.root={images}", "data=imagenet", f"data.img_size={max(_resolutions(space))}",
            f"data.holdout_per_class={cfg.data.holdout_per_class}", f"data.batch_size={cfg.subnet_search.batch_size}",
            "data.num_workers=0", f"data.seed={cfg.seed}", "data.cache=true"]


def search_best_subnet(cfg: DictConfig, space: SpaceEncoding, checkpoint: str, images: Path, out: Path
                       ) -> dict[str, Any]:
    """Evolutionary subnet search in the trained supernet under the MMACs band; returns run_search's result."""
    ss = cfg.subnet_search
    low, high = macs_band(space, cfg.data.num_classes, ss.macs_band)
    overrides = [
        f"space={space}", "fitness=supernet", f"checkpoint={checkpoint}", "quantized=true",
        f"num_classes={cfg.data.num_classes}", _list_override("resolutions", _resolutions(space)),
        f"bn_batches={ss.bn_batches}", "constraint.kind=macs", f"constraint.max_mmacs={high}",
        f"constraint.min_mmacs={low}", f"evolution.population={ss.population}", f"evolution.parents={ss.parents}",
        f"evolution.mutations={ss.mutations}", f"evolution.crossovers={ss.crossovers}",
        f"evolution.iterations={ss.iterations}", f"evolution.seed={cfg.seed}", "resume=false",
        f"output_dir={out}", *_search_data_overrides(cfg, space, images), *ss.search_overrides]
    search_cfg = compose_app_config("subnet_search", overrides)
    result = run_search(search_cfg)
    result["constraint_mmacs"] = [low, high]
    result["bn_batches"] = int(search_cfg.bn_batches)
    result["data"] = OmegaConf.to_container(search_cfg.data, resolve=True)
    return result


def onnx_logits(session: ort.InferenceSession, images: Tensor) -> np.ndarray:
    """Logits of ``images``, one image per run when the model's batch dimension is fixed."""
    model_input = session.get_inputs()[0]
    batch = model_input.shape[0]
    if isinstance(batch, int) and batch != len(images):
        return np.concatenate([session.run(None, {model_input.name: images[i: i + batch].numpy()})[0]
                               for i in range(0, len(images), batch)])
    return session.run(None, {model_input.name: images.numpy()})[0]


def top1_agreement(session: ort.InferenceSession, model: nn.Module, images: Tensor) -> dict[str, float]:
    """Share of ``images`` on which the ONNX model and ``model`` pick the same class, and the mean logit gap."""
    logits = onnx_logits(session, images)
    with torch.no_grad():
        torch_logits = model(images).numpy()
    agreement = float((logits.argmax(1) == torch_logits.argmax(1)).mean())
    gap = float(np.abs(logits - torch_logits).mean() / max(float(torch_logits.std()), 1e-12))
    return {"agreement": agreement, "mean_abs_logit_gap_over_std": gap, "images": len(images)}


def generated_images(root: Path, img_size: int) -> tuple[Tensor, Tensor]:
    """Every image under ``root`` (train and val) with the evaluation transform, and its label."""
    datasets = build_imagenet_datasets(root, img_size=img_size)
    train = copy.copy(datasets["train"])  # shares the sample list; only the transform differs
    train.transform = datasets["val"].transform
    samples = [dataset[i] for dataset in (train, datasets["val"]) for i in range(len(dataset))]
    return torch.stack([image for image, _ in samples]), torch.tensor([label for _, label in samples])


def _accuracy(logits: np.ndarray, labels: Tensor) -> float:
    return float((logits.argmax(1) == labels.numpy()).mean())


def _all_images(loaders: Sequence[Any]) -> tuple[Tensor, Tensor]:
    images, labels = zip(*itertools.chain.from_iterable(loaders))
    return torch.cat(images), torch.cat(labels)


def deploy_best_subnet(cfg: DictConfig, space: SpaceEncoding, checkpoint: str, subnet: SubnetEncoding,
                       search_data: dict[str, Any], evaluation_images: tuple[Tensor, Tensor], out: Path
                       ) -> dict[str, Any]:
    """Export ``subnet`` (LSQ+ INT8 QDQ and FP32), check INT8 against fake quant, time FP32 vs INT8."""
    dc = cfg.deploy
    data = OmegaConf.create(search_data)
    calibration, holdout, _ = build_data(data, cfg.subnet_search.bn_batches)
    supernet = load_supernet(space, checkpoint, cfg.data.num_classes, _resolutions(space), quantized=True)
    # the search's fitness: same quantizer initialization, BN recalibration and held-out score
    fitness = SupernetFitness(supernet, calibration, holdout, cfg.subnet_search.bn_batches)
    search_top1 = fitness.accuracy(subnet)
    quantized = supernet.get_active_subnet().eval()
    offset_shift = snap_offsets_to_grid_(quantized)
    fp32 = copy.deepcopy(quantized)
    set_quant_mode(fp32, None)
    export_batches = [images for images, _ in calibration][: dc.calibration_batches]
    exports: dict[str, Any] = {}

    def lsq_int8(_model: nn.Module, path: Path, _random_calibration: list[Tensor]) -> Path:
        # the learned grids; real images (not benchmark_models' random batches) for the float conv outputs
        exports["int8"] = export_lsq_qdq(quantized, path, export_batches).to_dict()
        return path

    name = f"best@{subnet.resolution}"
    bench = benchmark_models([BenchModel(name, fp32, subnet.resolution, "SpaceEvo quickstart", lsq_int8, "lsq")],
                             out, threads=dc.threads, rounds=dc.rounds, warmup=dc.warmup, burst=dc.burst, seed=cfg.seed,
                             engines=["ort-fp32", "ort-int8"])  # the quickstart's minutes: ORT only
    row = bench["rows"][0]
    if row["int8_ms"] is None:
        raise RuntimeError(f"the INT8 ONNX model of {subnet.encode()} does not run in onnxruntime: "
                           f"{row.get('int8_error')}")
    images, labels = evaluation_images
    options = ort.SessionOptions()
    options.intra_op_num_threads = dc.threads
    sessions = {precision: ort.InferenceSession(row[f"{precision}_onnx"], options, providers=["CPUExecutionProvider"])
                for precision in ("fp32", "int8")}
    agreement = top1_agreement(sessions["int8"], quantized, images)
    holdout_images, holdout_labels = _all_images([holdout])
    with torch.no_grad():
        fake_quant_holdout = _accuracy(quantized(holdout_images).numpy(), holdout_labels)
    int8_holdout = _accuracy(onnx_logits(sessions["int8"], holdout_images), holdout_labels)
    fp32_holdout = _accuracy(onnx_logits(sessions["fp32"], holdout_images), holdout_labels)
    macs = count_macs(fp32, torch.zeros(1, 3, subnet.resolution, subnet.resolution)).macs
    result = {"subnet": subnet.encode(), "mmacs": macs / 1e6, "search_fitness_rescored": search_top1,
              "offset_snap_steps": offset_shift,
              "export": exports.get("int8"), "agreement": agreement,
              "agreement_labels_top1": _accuracy(onnx_logits(sessions["int8"], images), labels),
              "holdout_top1": {"fake_quant": fake_quant_holdout, "int8_onnx": int8_holdout, "fp32_onnx": fp32_holdout},
              "fp32_ms": row["fp32_ms"], "int8_ms": row["int8_ms"], "speedup": row["speedup"],
              "speedup_ci95": row["speedup_ci95"], "quantized_conv_fraction": row["quantized_conv_fraction"],
              "fp32_onnx": row["fp32_onnx"], "int8_onnx": row["int8_onnx"], "threads": dc.threads,
              "rounds": dc.rounds, "environment": bench["environment"],
              "samples_ms": {precision: bench["samples_ms"][f"{name}/{precision}"] for precision in ("fp32", "int8")}}
    (out / "deploy.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


def run_deploy_steps(cfg: DictConfig, space: SpaceEncoding, images: Path, out: Path) -> dict[str, Any]:
    """Steps 1-3 of the module docstring on the ImageFolder ``images``, under ``out``; returns results and timings."""
    timings = {}
    t0 = time.perf_counter()
    training = train_space_supernet(cfg, space, images, out / "supernet")
    timings["supernet_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    search = search_best_subnet(cfg, space, training["checkpoint"], images, out / "subnet_search")
    timings["subnet_search_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    best = SubnetEncoding.decode(search["best"]["encoding"])
    deployment = deploy_best_subnet(cfg, space, training["checkpoint"], best, search["data"],
                                    generated_images(images, max(_resolutions(space))), out / "deploy")
    timings["deploy_s"] = time.perf_counter() - t0
    search_summary = {key: search[key] for key in ("best", "generations", "evaluated", "constraint_mmacs")}
    return {"space": str(space), "supernet": training, "subnet_search": search_summary, "deploy": deployment,
            "timing": timings}
