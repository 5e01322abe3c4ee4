"""Quickstart section "common": the shared export and measurement path, end to end.

For each timm model (random weights; no hub downloads here): count MACs/params, export to ONNX,
quantize to INT8 (static QDQ, U8S8, calibrated on real images from a generated ImageFolder), check
that INT8 still tracks FP32, and time torch FP32 / ORT FP32 / ORT INT8 side by side (1 thread,
interleaved rounds, medians). Writes ``metrics.json``, ``section.json`` and ``latency.png`` into
``outputs/quickstart/common/``.

    python -m moonlit.common.quickstart
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from moonlit.common.config import hydra_app, to_container
from moonlit.common.data.imagenet import build_imagenet_datasets
from moonlit.common.data.synthetic import write_image_folder
from moonlit.common.export.int8 import quantize_static_int8, quantization_summary
from moonlit.common.export.onnx import export_onnx
from moonlit.common.profiling.flops import count_macs
from moonlit.common.profiling.latency import compare_many, get_backend
from moonlit.common.report import write_section

log = logging.getLogger(__name__)

ARMS = ("torch FP32", "ORT FP32", "ORT INT8")


def _calibration_images(cfg: DictConfig, out_dir: Path) -> torch.Tensor:
    """Eval-transformed images from a generated ImageFolder, as one (N, 3, S, S) tensor."""
    root = write_image_folder(
        out_dir / "images",
        num_classes=cfg.data.num_classes,
        images_per_class=cfg.data.images_per_class,
        image_size=cfg.data.image_size,
        seed=cfg.data.seed,
    )
    datasets = build_imagenet_datasets(root, img_size=cfg.img_size)
    val = datasets["val"]
    return torch.stack([val[i][0] for i in range(len(val))])


def _onnx_logits(path: Path, images: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: img[None].numpy()})[0] for img in images])


def profile_model(name: str, cfg: DictConfig, images: torch.Tensor, out_dir: Path) -> dict[str, Any]:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    example = images[:1]
    complexity = count_macs(model, example)

    fp32_path = export_onnx(model, (example,), out_dir / f"{name}.fp32.onnx", opset=cfg.opset)
    calibration = [images[i : i + 1] for i in range(min(cfg.int8.calibration_batches, len(images)))]
    int8_path = quantize_static_int8(
        fp32_path,
        out_dir / f"{name}.int8.onnx",
        calibration,
        per_channel=cfg.int8.per_channel,
        quant_format=cfg.int8.quant_format,
    )

    # INT8 vs FP32 on every generated image (random weights: a consistency check, not accuracy).
    fp32_logits = _onnx_logits(fp32_path, images)
    int8_logits = _onnx_logits(int8_path, images)
    agreement = float(np.mean(fp32_logits.argmax(1) == int8_logits.argmax(1)))
    cosine = float(
        np.mean(
            np.sum(fp32_logits * int8_logits, 1)
            / (np.linalg.norm(fp32_logits, axis=1) * np.linalg.norm(int8_logits, axis=1) + 1e-12)
        )
    )

    lat = cfg.latency
    feed = images[:1]
    arms = {
        "torch FP32": get_backend("torch")(model, feed, threads=lat.threads),
        "ORT FP32": get_backend("onnxruntime")(
            fp32_path, feed, threads=lat.threads, graph_optimization=lat.graph_optimization
        ),
        "ORT INT8": get_backend("onnxruntime")(
            int8_path, feed, threads=lat.threads, graph_optimization=lat.graph_optimization
        ),
    }
    comparison = compare_many(arms, rounds=lat.runs, warmup=lat.warmup, threads=lat.threads)
    medians = {arm: comparison.results[arm].median_ms for arm in ARMS}
    return {
        "model": name,
        "macs": complexity.macs,
        "params": complexity.params,
        "uncounted_ops": complexity.uncounted_ops,
        "onnx_fp32": fp32_path.name,
        "onnx_int8": int8_path.name,
        "quantization": quantization_summary(int8_path),
        "int8_top1_agreement": agreement,
        "int8_logit_cosine": cosine,
        "agreement_images": int(len(images)),
        "latency": comparison.to_dict(),
        "median_ms": medians,
        "p10_ms": {arm: comparison.results[arm].p10_ms for arm in ARMS},
        "p90_ms": {arm: comparison.results[arm].p90_ms for arm in ARMS},
        "ratio_ort_fp32_over_int8": medians["ORT FP32"] / medians["ORT INT8"],
        "ratio_torch_over_ort_fp32": medians["torch FP32"] / medians["ORT FP32"],
    }


def plot_latency(results: list[dict[str, Any]], path: Path, threads: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2.8 + 2.4 * len(results), 4.2))
    width = 0.8 / len(ARMS)
    colors = ("#8c8c8c", "#4c72b0", "#dd8452")
    for j, arm in enumerate(ARMS):
        xs = np.arange(len(results)) + (j - (len(ARMS) - 1) / 2) * width
        med = np.array([r["median_ms"][arm] for r in results])
        lo = med - np.array([r["p10_ms"][arm] for r in results])
        hi = np.array([r["p90_ms"][arm] for r in results]) - med
        ax.bar(xs, med, width, yerr=np.stack([lo, hi]), capsize=3, label=arm, color=colors[j])
        for x, m in zip(xs, med):
            ax.annotate(f"{m:.1f}", (x, m), ha="center", va="bottom", fontsize=8, xytext=(0, 3), textcoords="offset points")
    ax.set_xticks(np.arange(len(results)))
    ax.set_xticklabels([f"{r['model']}\nINT8 {r['ratio_ort_fp32_over_int8']:.2f}× vs ORT FP32" for r in results], fontsize=9)
    ax.set_ylabel("median latency (ms), bars p10–p90")
    ax.set_title(f"batch 1, {threads} thread(s), interleaved rounds")
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def build_section(results: list[dict[str, Any]], cfg: DictConfig, environment: dict[str, Any]) -> dict[str, Any]:
    source = "this repo on generated data, random weights (`python -m moonlit.common.quickstart`)"
    latency_rows = [
        [
            r["model"],
            r["macs"] / 1e6,
            r["params"] / 1e6,
            r["median_ms"]["torch FP32"],
            r["median_ms"]["ORT FP32"],
            r["median_ms"]["ORT INT8"],
            r["ratio_ort_fp32_over_int8"],
            r["ratio_torch_over_ort_fp32"],
        ]
        for r in results
    ]
    quant_rows = [
        [
            r["model"],
            r["quantization"].get("quantized_conv", 0),
            r["quantization"].get("float_conv", 0),
            r["quantization"].get("quantized_matmul", 0),
            r["quantization"].get("float_matmul", 0),
            r["int8_top1_agreement"],
            r["int8_logit_cosine"],
        ]
        for r in results
    ]
    under_load = bool(environment.get("under_load"))
    notes = [
        f"CPU: {environment.get('cpu_model', '?')}; threads pinned to {cfg.latency.threads}; "
        f"load average before the run: {environment.get('loadavg_before')}; "
        f"{'MEASURED UNDER LOAD — ratios less trustworthy' if under_load else 'no competing load flagged'}.",
        "INT8 is static QDQ (uint8 activations, int8 per-channel weights) after "
        "`onnxruntime.quantization.quant_pre_process`; calibration on generated images.",
        "Depthwise convolutions gain little from INT8 on x86 (see the SpaceEvo notes), which is why "
        "MobileNetV3's INT8 speedup is small while ResNet-18's dense convs gain several-fold.",
    ]
    return {
        "name": "common",
        "title": "common: ONNX export, INT8 quantization and CPU latency",
        "order": 0,
        "command": "python -m moonlit.common.quickstart",
        "summary": (
            f"timm models with random weights at {cfg.img_size}×{cfg.img_size}, exported to ONNX "
            f"(opset {cfg.opset}) and quantized to INT8, timed with `moonlit.common.profiling.latency` "
            f"({cfg.latency.runs} interleaved rounds after {cfg.latency.warmup} warm-up runs, medians)."
        ),
        "tables": [
            {
                "caption": "Latency, batch 1 (ms, median)",
                "columns": ["model", "MMACs", "Mparams", "torch FP32", "ORT FP32", "ORT INT8",
                            "INT8 speedup (ORT FP32 / INT8)", "ORT speedup (torch / ORT FP32)"],
                "rows": latency_rows,
                "floatfmt": ".2f",
                "source": source,
            },
            {
                "caption": "What INT8 quantized, and how far it moved the outputs",
                "columns": ["model", "int8 Conv", "float Conv", "int8 MatMul/Gemm", "float MatMul/Gemm",
                            "top-1 agreement with FP32", "logit cosine"],
                "rows": quant_rows,
                "floatfmt": ".3f",
                "source": source + f"; agreement over {results[0]['agreement_images'] if results else 0} generated images",
            },
        ],
        "figures": [{"path": "latency.png", "caption": "torch FP32 / ORT FP32 / ORT INT8 latency per model"}],
        "notes": notes,
    }


def run_quickstart(cfg: DictConfig) -> dict[str, Any]:
    """The importable work behind ``python -m moonlit.common.quickstart``; returns the metrics."""
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = _calibration_images(cfg, out_dir)
    results = []
    for name in tqdm(list(cfg.models), desc="quickstart common", unit="model"):
        log.info("profiling %s", name)
        results.append(profile_model(name, cfg, images, out_dir))
    environment = results[0]["latency"].get("environment", {}) if results else {}
    metrics = {"config": to_container(cfg), "models": results, "environment": environment}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    plot_latency(results, out_dir / "latency.png", cfg.latency.threads)
    write_section(out_dir, build_section(results, cfg, environment))
    for r in results:
        log.info(
            "%s: torch %.2f ms, ORT FP32 %.2f ms, ORT INT8 %.2f ms, INT8 speedup %.2fx",
            r["model"], r["median_ms"]["torch FP32"], r["median_ms"]["ORT FP32"], r["median_ms"]["ORT INT8"],
            r["ratio_ort_fp32_over_int8"],
        )
    return metrics


@hydra_app("common", "quickstart")
def main(cfg: DictConfig) -> None:
    run_quickstart(cfg)


if __name__ == "__main__":
    main()
