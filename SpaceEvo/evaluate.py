"""Top-1 of a SEQnet in FP32 or LSQ+ INT8, and of its deployed ONNX model (SpaceEvo, ICCV'23, §5.1, Table 2).

``python -m moonlit.spaceevo.evaluate model=SEQnet@vnni-A0 quant=true checkpoint=/ckpt/lsq.pth``

The steps follow the reference's ``eval_specific_net.py`` (subnet taken from the supernet, BN
statistics re-estimated on training batches, top-1 on the validation folder), with two changes:

* with ``quant=true`` the activation offsets are first snapped onto their exportable grid, so the
  accuracy reported is that of the INT8 model :func:`moonlit.spaceevo.deploy.export_lsq_qdq`
  deploys (quantizers that never ran — a random or FP32 checkpoint — get min-max scales from one
  calibration batch, which is logged);
* ``onnx.enabled=true`` also exports that deployed model (QDQ with the learned scales, or FP32 ONNX)
  and scores it with onnxruntime, reporting its top-1 agreement with the torch model.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from omegaconf import DictConfig
from torch import nn

from moonlit.common.config import hydra_app, to_container
from moonlit.common.data.imagenet import build_loader
from moonlit.common.data.images import ImageDatasets, build_image_data
from moonlit.common.export.onnx import export_onnx
from moonlit.common.models import create_model
from moonlit.common.train.bn_recalibration import recalibrate_batch_norm
from moonlit.common.train.classifier import evaluate_top1
from moonlit.common.train.seed import seed_everything
from moonlit.spaceevo.deploy import (
    export_lsq_qdq,
    optimized_op_counts,
    snap_offsets_to_grid_,
)
from moonlit.spaceevo.models import resolve_model
from moonlit.spaceevo.ops.lsq_plus import ActivationQuantizer, WeightQuantizer

__all__ = ["evaluate", "evaluate_onnx_top1", "prepare_quantized", "run"]

log = logging.getLogger(__name__)


@torch.no_grad()
def prepare_quantized(model: nn.Module, calibration: Iterable[Any]) -> dict[str, Any]:
    """Give never-run quantizers min-max scales from one batch, then snap offsets onto the export grid."""
    quantizers = [m for m in model.modules() if isinstance(m, (ActivationQuantizer, WeightQuantizer))]
    if not quantizers or any(q.bits is None for q in quantizers):
        raise ValueError("prepare_quantized needs a model in LSQ+ 8-bit mode (set_quant_mode(model, 8))")
    fresh = sum(not bool(q.initialized) for q in quantizers)
    if fresh:
        log.warning("%d of %d LSQ+ quantizers were never trained; initialising them min-max on one batch",
                    fresh, len(quantizers))
        batch = next(iter(calibration))
        was_training = model.training
        model.eval()
        model(batch[0] if isinstance(batch, (tuple, list)) else batch)
        model.train(was_training)
    return {"min_max_initialised_quantizers": fresh, "max_offset_snap_steps": snap_offsets_to_grid_(model)}


def evaluate_onnx_top1(path: str | Path, loader: Iterable[Any], reference: nn.Module | None = None,
                       max_batches: int | None = None) -> dict[str, float]:
    """Top-1 of an ONNX classifier with onnxruntime; with ``reference``, also the top-1 agreement with it."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    correct = agree = count = 0
    for images, labels in itertools.islice(loader, max_batches):
        logits = session.run(None, {input_name: images.numpy().astype(np.float32)})[0]
        predicted = logits.argmax(1)
        correct += int((predicted == labels.numpy()).sum())
        if reference is not None:
            with torch.no_grad():
                agree += int((predicted == reference(images).argmax(1).numpy()).sum())
        count += len(labels)
    if count == 0:
        raise ValueError("evaluate_onnx_top1 got an empty loader")
    result = {"top1": correct / count, "count": count}
    if reference is not None:
        result["agreement_with_torch"] = agree / count
    return result


def _datasets(cfg: DictConfig, resolution: int) -> ImageDatasets:
    """The ``data`` group's splits (configs/data/) at ``data.img_size``, or the subnet's resolution when null."""
    return build_image_data(cfg.data, img_size=cfg.data.img_size or resolution)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Build, calibrate and score ``cfg.model``; writes ``evaluate.json`` under ``cfg.output_dir``."""
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    spec = resolve_model(cfg.model, cfg.search_result)
    datasets = _datasets(cfg, spec.subnet.resolution)
    num_classes = cfg.num_classes or datasets.num_classes
    model = create_model(spec.model_name, checkpoint=cfg.checkpoint, num_classes=num_classes,
                         quantized=bool(cfg.quant))
    calib_loader = build_loader(datasets["train"], cfg.data.batch_size, shuffle=True, seed=cfg.seed,
                                num_workers=cfg.data.num_workers)
    val_loader = build_loader(datasets["val"], cfg.data.batch_size, shuffle=False, num_workers=cfg.data.num_workers)
    result: dict[str, Any] = {"model": cfg.model, "space": str(spec.space), "subnet": spec.subnet.encode(),
                              "quant": bool(cfg.quant), "checkpoint": cfg.checkpoint}
    if cfg.quant:
        result.update(prepare_quantized(model, calib_loader))
    if cfg.bn_calibration_batches > 0:
        result["bn_calibration_batches"] = recalibrate_batch_norm(model, calib_loader, cfg.bn_calibration_batches)
    val_batches = val_loader if cfg.max_val_batches is None else list(itertools.islice(val_loader, cfg.max_val_batches))
    result["torch"] = evaluate_top1(model.eval(), val_batches, torch.device("cpu"))
    log.info("%s %s top-1 %.4f on %d images", cfg.model, "INT8 (LSQ+)" if cfg.quant else "FP32",
             result["torch"]["top1"], result["torch"]["count"])
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.onnx.enabled:
        calibration = [images for images, _ in itertools.islice(calib_loader, cfg.onnx.calibration_batches)]
        onnx_path = out_dir / ("int8_lsq_qdq.onnx" if cfg.quant else "fp32.onnx")
        if cfg.quant:
            result["onnx_export"] = export_lsq_qdq(model, onnx_path, calibration).to_dict()
            result["onnx_export"]["ort_op_counts"] = dict(optimized_op_counts(onnx_path))
        else:
            export_onnx(model, calibration[0][:1], onnx_path, dynamic_axes={"input": {0: "batch"}},
                        atol=1e-3, rtol=1e-2)
        result["onnx"] = evaluate_onnx_top1(onnx_path, val_batches, reference=model)
        log.info("ONNX %s: top-1 %.4f, agreement with torch %.4f", onnx_path.name, result["onnx"]["top1"],
                 result["onnx"]["agreement_with_torch"])
    result["config"] = to_container(cfg)
    (out_dir / "evaluate.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


def run(cfg: DictConfig) -> dict[str, Any]:
    """The app's work (what ``main`` runs): :func:`evaluate`."""
    return evaluate(cfg)


@hydra_app("spaceevo", "evaluate")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
