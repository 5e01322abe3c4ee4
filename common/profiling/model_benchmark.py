"""FP32 vs INT8 latency of whole image models on this CPU, the table and the latency-vs-MACs plot.

Shared by the vision papers' benchmarks (SpaceEvo's SEQnets, ElasticViT's named models) and their
baselines. Every model is exported to FP32 ONNX and to INT8 QDQ (U8S8, ``quant_pre_process`` first:
:func:`moonlit.common.export.int8.export_static_int8`, or a paper's own exporter, e.g. SpaceEvo's
learned LSQ+ grids), and all of them, FP32 and INT8, are timed with onnxruntime on one thread,
interleaved in one :func:`moonlit.common.profiling.latency.compare_many` run (medians; per-model
INT8 speed-up with a bootstrap interval). MACs come from :func:`moonlit.common.profiling.flops.count_macs`.

Weights are random (latency does not depend on them), and so is the default INT8 calibration:
the models are timed, not scored, so their activation grids come from random-normal batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moonlit.common.export.int8 import export_static_int8, quantization_summary
from moonlit.common.export.onnx import export_onnx
from moonlit.common.profiling.backends import make_runner
from moonlit.common.profiling.flops import count_macs
from moonlit.common.profiling.latency import compare_many

__all__ = ["BenchModel", "benchmark_models", "calibration_batches", "export_model", "int8_front",
           "plot_latency_vs_macs", "render_table"]

log = logging.getLogger(__name__)

Int8Exporter = Callable[[nn.Module, Path, list[torch.Tensor]], Any]


@dataclass
class BenchModel:
    """One model to time: ``family`` groups it in the plot; ``int8_export`` overrides static quantization."""

    name: str
    model: nn.Module
    resolution: int
    family: str = "baselines"
    int8_export: Int8Exporter | None = None
    int8_route: str = "static"


def calibration_batches(resolution: int, count: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """Random-normal calibration batches (latency only: the INT8 models are timed, not scored)."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch_size, 3, resolution, resolution, generator=generator) for _ in range(count)]


def export_model(entry: BenchModel, out_dir: Path, calibration: list[torch.Tensor]) -> dict[str, Any]:
    """FP32 ONNX + INT8 QDQ of ``entry.model`` under ``out_dir``; returns paths, MACs and the INT8 op summary."""
    model = entry.model.eval()
    example = torch.randn(1, 3, entry.resolution, entry.resolution)
    complexity = count_macs(model, example)
    safe = entry.name.replace("@", "_at_").replace("/", "_")
    fp32_path = export_onnx(model, example, out_dir / f"{safe}_fp32.onnx", atol=1e-3, rtol=1e-2)
    int8_path = out_dir / f"{safe}_int8.onnx"
    if entry.int8_export is None:  # batch 1, as timed; no check: the FP32 graph above was checked
        export_static_int8(model, int8_path, calibration, dynamic_batch=False, check=False)
    else:
        entry.int8_export(model, int8_path, calibration)
    summary = quantization_summary(int8_path)
    return {"name": entry.name, "family": entry.family, "resolution": entry.resolution, "macs": complexity.macs,
            "params": complexity.params, "fp32_onnx": str(fp32_path), "int8_onnx": str(int8_path),
            "int8_route": entry.int8_route, "quantized_conv_fraction": summary.fraction_quantized("Conv")}


def int8_front(rows: list[dict[str, Any]]) -> set[str]:
    """Models whose INT8 latency no other model beats at equal or more MACs (the latency-vs-MACs front)."""
    front = set()
    for row in rows:
        dominated = any(other is not row and other["macs"] >= row["macs"] and other["int8_ms"] <= row["int8_ms"]
                        and (other["macs"] > row["macs"] or other["int8_ms"] < row["int8_ms"]) for other in rows)
        if not dominated:
            front.add(row["name"])
    return front


def render_table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of benchmark rows."""
    lines = ["| model | res | MMACs | params (M) | FP32 ms | INT8 ms | INT8 speed-up (95% CI) | INT8 convs | INT8 front |",
             "|---|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for row in rows:
        if row["int8_ms"] is None:
            int8 = "fails in onnxruntime | – | –"
        else:
            low, high = row["speedup_ci95"]
            int8 = f"{row['int8_ms']:.2f} | {row['speedup']:.2f}x ({low:.2f}-{high:.2f}) | {row['quantized_conv_fraction']:.0%}"
        lines.append(f"| {row['name']} | {row['resolution']} | {row['macs'] / 1e6:.0f} | {row['params'] / 1e6:.2f} | "
                     f"{row['fp32_ms']:.2f} | {int8} | {'yes' if row['on_int8_front'] else ''} |")
    return "\n".join(lines) + "\n"


def plot_latency_vs_macs(rows: list[dict[str, Any]], path: str | Path, title: str, label: Callable[[str], str] = str
                         ) -> Path:
    """Latency (ms) against MACs: INT8 filled, FP32 hollow, one colour per ``family``; lines join a family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 5))
    families = sorted({row["family"] for row in rows})
    colours = dict(zip(families, plt.get_cmap("tab10").colors))
    for family in families:
        members = sorted((row for row in rows if row["family"] == family), key=lambda row: row["macs"])
        macs = [row["macs"] / 1e6 for row in members]
        joined = family != "baselines"
        int8 = [(row["macs"] / 1e6, row["int8_ms"]) for row in members if row["int8_ms"] is not None]
        if int8:
            axes.plot(*zip(*int8), "o-" if joined else "o", color=colours[family], label=f"{family} INT8")
        axes.plot(macs, [row["fp32_ms"] for row in members], "o--" if joined else "o", color=colours[family],
                  markerfacecolor="none", label=f"{family} FP32")
        for row in members:
            y = row["int8_ms"] if row["int8_ms"] is not None else row["fp32_ms"]
            axes.annotate(label(row["name"]), (row["macs"] / 1e6, y), fontsize=7, xytext=(3, 3),
                          textcoords="offset points")
    axes.set_xlabel("MMACs")
    axes.set_ylabel("latency (ms, onnxruntime, 1 thread, median)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def benchmark_models(models: Sequence[BenchModel], out_dir: str | Path, *, threads: int = 1, rounds: int = 100,
                     warmup: int = 10, burst: int = 2, calibration_count: int = 8, calibration_batch: int = 4,
                     seed: int = 0) -> dict[str, Any]:
    """Export every model, time FP32 and INT8 of all of them interleaved; rows with the INT8 front marked."""
    torch.manual_seed(seed)
    onnx_dir = Path(out_dir) / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    exported, arms = [], {}
    for entry in models:
        start = time.perf_counter()
        calibration = calibration_batches(entry.resolution, calibration_count, calibration_batch, seed)
        info = export_model(entry, onnx_dir, calibration)
        log.info("%s: %.0f MMACs, INT8 convs %.0f%% (%s), exported in %.1f s", entry.name, info["macs"] / 1e6,
                 100 * info["quantized_conv_fraction"], entry.int8_route, time.perf_counter() - start)
        image = torch.randn(1, 3, entry.resolution, entry.resolution)
        for precision in ("fp32", "int8"):
            runner = make_runner("onnxruntime", info[f"{precision}_onnx"], image, threads=threads)
            try:
                runner.fn()  # an INT8 graph onnxruntime cannot run is reported, not fatal
            except Exception as error:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidArgument types
                if precision == "fp32":
                    raise
                log.warning("%s: the INT8 model does not run in onnxruntime (%s); FP32 only", entry.name,
                            str(error).splitlines()[0][:200])
                info["int8_error"] = str(error)[:500]
                continue
            arms[f"{entry.name}/{precision}"] = runner
        exported.append(info)
    timing = compare_many(arms, rounds=rounds, warmup=warmup, burst=burst, seed=seed)
    rows = []
    for info in exported:
        name = info["name"]
        row = {**info, "fp32_ms": timing.results[f"{name}/fp32"].median_ms, "int8_ms": None, "speedup": None,
               "speedup_ci95": None}
        if f"{name}/int8" in timing.results:
            ratio = timing.ratio(f"{name}/fp32", f"{name}/int8")
            row.update(int8_ms=timing.results[f"{name}/int8"].median_ms, speedup=ratio.ratio,
                       speedup_ci95=list(ratio.ratio_ci95))
        rows.append(row)
    front = int8_front([row for row in rows if row["int8_ms"] is not None])
    for row in rows:
        row["on_int8_front"] = row["name"] in front
    return {"rows": rows, "environment": timing.environment,
            "timing": {"threads": threads, "rounds": rounds, "warmup": warmup, "burst": burst},
            "calibration": "random-normal batches (latency only; the models are not scored)",
            "samples_ms": {arm: r.samples_ms for arm, r in timing.results.items()}}
