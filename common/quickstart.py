"""Quickstart section "common": the shared toolkit end to end, on data the project generates.

1. Write an ImageFolder of JPEGs with a learnable rule; hold out a calibration split from train.
2. Train a small timm classifier on it with the shared plumbing (DDP-aware loaders, checkpoints
   every epoch with resume, run logger).
3. Export it to ONNX, quantize to INT8 (static QDQ, U8S8, calibrated on the held-out split) and
   compare top-1 on the val split: torch FP32 vs ORT FP32 vs ORT INT8.
4. Time torch FP32 / ORT FP32 / ORT INT8 (1 thread, interleaved rounds, medians) for the trained
   classifier and for timm deployment models at 224×224.

Writes ``results.json``, ``metrics.json`` (run logger summary), ``section.json`` and ``latency.png``
into ``outputs/quickstart/common/``.

    python -m moonlit.common.quickstart
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from moonlit.common.config import hydra_app, to_container
from moonlit.common.data.imagenet import build_imagenet_datasets, build_loader
from moonlit.common.data.synthetic import write_image_folder
from moonlit.common.export.int8 import export_static_int8, quantization_summary
from moonlit.common.export.onnx import onnx_input_feed
from moonlit.common.profiling.compare import Arm, time_arms
from moonlit.common.profiling.flops import count_macs
from moonlit.common.report import write_section
from moonlit.common.train.checkpoint import move_aside
from moonlit.common.train.classifier import evaluate_top1, train_classifier
from moonlit.common.train.dist import DistContext, cleanup_distributed
from moonlit.common.train.supernet import start_training

log = logging.getLogger(__name__)

ARMS = ("torch FP32", "ORT FP32", "ORT INT8")


def prepare_data(cfg: DictConfig, ctx: DistContext) -> dict[str, Any]:
    data = cfg.data
    root = Path(data.root)
    if ctx.is_main:
        write_image_folder(root, num_classes=data.num_classes,
                           images_per_class={"train": data.train_per_class, "val": data.val_per_class},
                           image_size=data.image_size, seed=data.seed)
    if ctx.is_distributed:
        torch.distributed.barrier()
    return build_imagenet_datasets(root, img_size=cfg.classifier.img_size, holdout_per_class=data.holdout_per_class,
                                   holdout_seed=data.seed, train_aug=OmegaConf.to_container(cfg.classifier.train_aug))


def train(cfg: DictConfig, ctx: DistContext, datasets: dict[str, Any], out_dir: Path) -> tuple[torch.nn.Module, dict]:
    import timm

    clf = cfg.classifier
    model = timm.create_model(clf.model, pretrained=False, num_classes=cfg.data.num_classes).to(ctx.device)
    seed = cfg.trainer.seed
    train_loader = build_loader(datasets["train"], clf.batch_size, shuffle=True, seed=seed, drop_last=True,
                                num_workers=cfg.trainer.num_workers, rank=ctx.rank, world_size=ctx.world_size)
    val_loader = build_loader(datasets["val"], clf.batch_size, shuffle=False, rank=ctx.rank, world_size=ctx.world_size)
    checkpoint_dir = out_dir / "checkpoints"
    if not cfg.resume and ctx.is_main:
        move_aside(checkpoint_dir)  # a fresh start keeps the earlier run's checkpoints beside it
    with instantiate(cfg.logger)(out_dir, run_name="quickstart-common", config=to_container(cfg)) as logger:
        run = train_classifier(
            model, train_loader, val_loader, ctx=ctx, make_optimizer=instantiate(clf.optimizer),
            epochs=clf.epochs, checkpoint_dir=checkpoint_dir, logger=logger, label_smoothing=clf.label_smoothing,
            warmup_steps=clf.warmup_steps, keep_last=clf.keep_last,
            arch={"timm_model": clf.model, "num_classes": cfg.data.num_classes, "img_size": clf.img_size},
            config=to_container(cfg),
        )
        final = evaluate_top1(model, val_loader, ctx.device, ctx)
        logger.log_summary({"val/top1": final["top1"], "steps": run.step})
    return model.eval(), {"history": run.history, "resumed_from_step": run.resumed_from, "steps": run.step,
                          "val_top1": final["top1"]}


def _stack(dataset: Any, limit: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
    count = len(dataset) if limit is None else min(limit, len(dataset))
    items = [dataset[i] for i in range(count)]
    return torch.stack([x for x, _ in items]), np.array([y for _, y in items])


def _ort_predict(path: Path, images: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, onnx_input_feed(session, img[None]))[0] for img in images])


def export_and_quantize(model: torch.nn.Module, name: str, example: torch.Tensor, calibration: list[torch.Tensor],
                        cfg: DictConfig, out_dir: Path) -> tuple[Path, Path]:
    exp = cfg.export
    fp32 = out_dir / f"{name}.fp32.onnx"
    int8 = export_static_int8(model, out_dir / f"{name}.int8.onnx", calibration, example=example, fp32_path=fp32,
                              opset=exp.opset, per_channel=exp.per_channel, quant_format=exp.quant_format,
                              dynamic_batch=False)
    return fp32, int8


def time_precisions(model: torch.nn.Module, fp32: Path, int8: Path, example: torch.Tensor,
                    cfg: DictConfig) -> dict[str, Any]:
    """torch FP32 / ORT FP32 / ORT INT8 of one model, timed interleaved by
    :func:`moonlit.common.profiling.compare.time_arms`."""
    lat = cfg.latency
    ort_options = {"optimization_level": lat.optimization_level}
    arms = {
        "torch FP32": Arm("torch", model, [example]),
        "ORT FP32": Arm("onnxruntime", fp32, [example], ort_options),
        "ORT INT8": Arm("onnxruntime", int8, [example], ort_options),
    }
    comparison = time_arms(arms, threads=lat.threads, rounds=lat.rounds, warmup=lat.warmup, baseline="ORT FP32")
    result = comparison.to_dict()
    result["median_ms"] = {arm: comparison.results[arm].median_ms for arm in ARMS}
    result["p10_ms"] = {arm: comparison.results[arm].p10_ms for arm in ARMS}
    result["p90_ms"] = {arm: comparison.results[arm].p90_ms for arm in ARMS}
    # Speedups as round-paired medians (robust to drifting load), and their IQR.
    int8_speedup = comparison.ratio("ORT FP32", "ORT INT8")
    ort_speedup = comparison.ratio("torch FP32", "ORT FP32")
    result["int8_speedup"] = int8_speedup.round_ratio_median
    result["int8_speedup_iqr"] = int8_speedup.round_ratio_iqr
    result["ort_speedup"] = ort_speedup.round_ratio_median
    return result


def deploy_entry(name: str, model: torch.nn.Module, example: torch.Tensor, calibration: list[torch.Tensor],
                 cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    complexity = count_macs(model, example)
    fp32, int8 = export_and_quantize(model, name, example, calibration, cfg, out_dir)
    return {
        "model": name,
        "img_size": int(example.shape[-1]),
        "macs": complexity.macs,
        "params": complexity.params,
        "uncounted_ops": complexity.uncounted_ops,
        "onnx": {"fp32": fp32.name, "int8": int8.name},
        "quantization": quantization_summary(int8).to_dict(),
        "latency": time_precisions(model, fp32, int8, example, cfg),
    }


def run_quickstart(cfg: DictConfig) -> dict[str, Any] | None:
    """The work behind ``python -m moonlit.common.quickstart``; returns the results on rank 0."""
    ctx = start_training(cfg.trainer)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        datasets = prepare_data(cfg, ctx)
        model, training = train(cfg, ctx, datasets, out_dir)
        if not ctx.is_main:
            return None
        model = model.to("cpu")
        val_images, val_labels = _stack(datasets["val"])
        calib_images, _ = _stack(datasets["holdout"], cfg.export.calibration_batches)
        calibration = [img[None] for img in calib_images]

        trained = deploy_entry(f"{cfg.classifier.model}-trained", model, val_images[:1], calibration, cfg, out_dir)
        with torch.inference_mode():
            torch_pred = model(val_images).argmax(1).numpy()
        fp32_pred = _ort_predict(out_dir / trained["onnx"]["fp32"], val_images).argmax(1)
        int8_pred = _ort_predict(out_dir / trained["onnx"]["int8"], val_images).argmax(1)
        trained["accuracy"] = {
            "torch FP32": float(np.mean(torch_pred == val_labels)),
            "ORT FP32": float(np.mean(fp32_pred == val_labels)),
            "ORT INT8": float(np.mean(int8_pred == val_labels)),
            "int8_agreement_with_fp32": float(np.mean(int8_pred == fp32_pred)),
            "val_images": int(len(val_labels)),
        }

        deployed = []
        import timm

        for name in cfg.deploy.models:
            log.info("exporting and timing %s at %d px", name, cfg.deploy.img_size)
            torch.manual_seed(cfg.trainer.seed)
            net = timm.create_model(name, pretrained=False).eval()
            size = cfg.deploy.img_size
            example = torch.randn(1, 3, size, size)
            calib = [torch.nn.functional.interpolate(img[None], size=(size, size), mode="bilinear")
                     for img in calib_images]
            deployed.append(deploy_entry(name, net, example, calib, cfg, out_dir))

        results = {"config": to_container(cfg), "training": training, "trained": trained, "deployed": deployed,
                   "environment": _worst_environment([trained, *deployed])}
        (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        entries = [trained, *deployed]
        plot_latency(entries, out_dir / "latency.png", cfg.latency.threads)
        write_section(out_dir, build_section(results, cfg))
        for entry in entries:
            med = entry["latency"]["median_ms"]
            log.info("%s @%d: torch %.2f ms, ORT FP32 %.2f ms, ORT INT8 %.2f ms; INT8 speedup %.2fx",
                     entry["model"], entry["img_size"], med["torch FP32"], med["ORT FP32"], med["ORT INT8"],
                     entry["latency"]["int8_speedup"])
        return results
    finally:
        cleanup_distributed()


def _worst_environment(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The environment record of the timing run with the most competing load (flagged if any was)."""
    records = [entry["latency"]["environment"] for entry in entries]
    worst = max(records, key=lambda record: record.get("others_cores") or 0.0)
    return {**worst, "under_load": any(record.get("under_load") for record in records)}


def plot_latency(entries: list[dict[str, Any]], path: Path, threads: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2.8 + 2.6 * len(entries), 4.4))
    width = 0.8 / len(ARMS)
    colors = ("#8c8c8c", "#4c72b0", "#dd8452")
    for j, arm in enumerate(ARMS):
        xs = np.arange(len(entries)) + (j - (len(ARMS) - 1) / 2) * width
        lat = [e["latency"] for e in entries]
        med = np.array([x["median_ms"][arm] for x in lat])
        err = np.stack([med - [x["p10_ms"][arm] for x in lat], np.array([x["p90_ms"][arm] for x in lat]) - med])
        ax.bar(xs, med, width, yerr=np.clip(err, 0, None), capsize=3, label=arm, color=colors[j])
        for x, m in zip(xs, med):
            ax.annotate(f"{m:.1f}", (x, m), ha="center", va="bottom", fontsize=8, xytext=(0, 3),
                        textcoords="offset points")
    ax.set_xticks(np.arange(len(entries)))
    ax.set_xticklabels([f"{e['model']} @{e['img_size']}\nINT8 {e['latency']['int8_speedup']:.2f}× vs ORT FP32"
                        for e in entries], fontsize=9)
    ax.set_ylabel("median latency (ms); bars p10–p90")
    ax.set_title(f"batch 1, {threads} thread(s), interleaved rounds")
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def build_section(results: dict[str, Any], cfg: DictConfig) -> dict[str, Any]:
    source = "this repo on generated data (`python -m moonlit.common.quickstart`)"
    trained, env = results["trained"], results["environment"]
    entries = [trained, *results["deployed"]]
    latency_rows = []
    for e in entries:
        med, lat = e["latency"]["median_ms"], e["latency"]
        latency_rows.append([e["model"], e["img_size"], e["macs"] / 1e6, e["params"] / 1e6, med["torch FP32"],
                             med["ORT FP32"], med["ORT INT8"], lat["int8_speedup"], lat["ort_speedup"]])
    quant_rows = []
    for e in entries:
        q = e["quantization"]
        quant_rows.append([e["model"], _count(q, "quantized", "Conv"), _count(q, "unquantized", "Conv"),
                           _count(q, "quantized", "MatMul") + _count(q, "quantized", "Gemm"),
                           _count(q, "unquantized", "MatMul") + _count(q, "unquantized", "Gemm")])
    acc = trained["accuracy"]
    training = results["training"]
    epochs = ", ".join(f"{h['val/top1']:.3f}" for h in training["history"]) or "none (resumed after the last epoch)"
    notes = [
        f"CPU: {env.get('cpu_model', '?')}; threads pinned to {cfg.latency.threads}; "
        + (f"other processes kept {env['others_cores']:.2f} cores busy during the worst timing run"
           if env.get("others_cores") is not None else "competing load not judged (every timing run was too short)")
        + f" (load average before it: {env.get('load_avg_before')}); "
        + ("**measured under load: ratios less trustworthy**" if env.get("under_load") else "no competing load flagged")
        + ".",
        "INT8 = static QDQ (uint8 activations, int8 per-channel weights) after "
        "`onnxruntime.quantization.quant_pre_process`, calibrated on images held out of the training split.",
        "Speedups are medians of per-round ratios (each round times every arm back to back).",
        "Depthwise convolutions gain little from INT8 on x86, so MobileNetV3's INT8 speedup stays small "
        "while ResNet-18's dense convolutions gain several-fold — the premise of SpaceEvo.",
        f"Training: {training['steps']} steps; val top-1 after each epoch run here: {epochs}"
        + (f" (resumed from step {training['resumed_from_step']})" if training["resumed_from_step"] else "") + ".",
    ]
    return {
        "name": "common",
        "title": "common: train, export to ONNX, quantize to INT8, measure CPU latency",
        "order": 0,
        "command": "python -m moonlit.common.quickstart",
        "summary": (
            f"A `{cfg.classifier.model}` trained for {cfg.classifier.epochs} epochs on a generated "
            f"{cfg.data.num_classes}-class ImageFolder at {cfg.classifier.img_size}×{cfg.classifier.img_size}, "
            f"exported (opset {cfg.export.opset}) and quantized; then timm deployment models with random "
            f"weights at {cfg.deploy.img_size}×{cfg.deploy.img_size}. Latency via "
            f"`moonlit.common.profiling.latency`: {cfg.latency.rounds} interleaved rounds after "
            f"{cfg.latency.warmup} warm-up runs, medians."
        ),
        "tables": [
            {
                "caption": f"Accuracy of the trained classifier on {acc['val_images']} generated val images",
                "columns": ["torch FP32 top-1", "ORT FP32 top-1", "ORT INT8 top-1", "INT8 = FP32 prediction"],
                "rows": [[acc["torch FP32"], acc["ORT FP32"], acc["ORT INT8"], acc["int8_agreement_with_fp32"]]],
                "floatfmt": ".3f",
                "source": source,
            },
            {
                "caption": "Latency, batch 1 (ms, median)",
                "columns": ["model", "res", "MMACs", "Mparams", "torch FP32", "ORT FP32", "ORT INT8",
                            "INT8 speedup (ORT FP32 / INT8)", "ORT speedup (torch / ORT FP32)"],
                "rows": latency_rows,
                "floatfmt": ".2f",
                "source": source + "; deployment models have random weights",
            },
            {
                "caption": "Nodes the INT8 model runs in integer arithmetic",
                "columns": ["model", "int8 Conv", "float Conv", "int8 MatMul/Gemm", "float MatMul/Gemm"],
                "rows": quant_rows,
                "source": source,
            },
        ],
        "figures": [{"path": "latency.png", "caption": "torch FP32 / ORT FP32 / ORT INT8 latency per model"}],
        "notes": notes,
    }


def _count(summary: dict[str, Any], kind: str, op: str) -> int:
    return int(summary.get(kind, {}).get(op, 0))


def run(cfg: DictConfig) -> dict[str, Any] | None:
    """The work behind ``python -m moonlit.common.quickstart``: :func:`run_quickstart`'s result."""
    return run_quickstart(cfg)


@hydra_app("common", "quickstart")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
