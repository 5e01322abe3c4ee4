"""Latency of whole image models on this CPU per engine and precision, the table and the latency-vs-MACs plot.

Shared by the vision papers' benchmarks (SpaceEvo's SEQnets, ElasticViT's named models) and their
baselines. Every model is exported to FP32 ONNX and to INT8 QDQ (U8S8, ``quant_pre_process`` first:
:func:`moonlit.common.export.int8.export_static_int8`, or a paper's own exporter, e.g. SpaceEvo's
learned LSQ+ grids). The arms (:data:`ENGINES`) are onnxruntime FP32 and INT8 and OpenVINO FP32, BF16 and
INT8 (the same QDQ file as onnxruntime's INT8; :mod:`moonlit.common.profiling.openvino`); all arms of all
models are timed on one thread, interleaved in one :func:`moonlit.common.profiling.latency.compare_many` run
(medians; speed-ups over onnxruntime FP32 with bootstrap intervals), and each row names its fastest arm.
MACs come from :func:`moonlit.common.profiling.flops.count_macs`.

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

from moonlit.common.errors import InputError
from moonlit.common.export.int8 import export_static_int8, quantization_summary
from moonlit.common.export.onnx import export_onnx
from moonlit.common.profiling.backends import make_runner
from moonlit.common.profiling.flops import count_macs
from moonlit.common.profiling.latency import compare_many

__all__ = ["ENGINES", "BenchModel", "benchmark_models", "best_arm", "calibration_batches", "default_engines",
           "export_model", "int8_front", "plot_latency_vs_macs", "render_table"]

log = logging.getLogger(__name__)

Int8Exporter = Callable[[nn.Module, Path, list[torch.Tensor]], Any]

# engine-precision arm → (latency backend, the exported file it runs, backend options). The reference arm, ort-fp32,
# keeps the row keys fp32_ms / int8_ms / speedup of onnxruntime and the arm names "<model>/fp32", "<model>/int8".
ENGINES: dict[str, tuple[str, str, dict[str, str]]] = {
    "ort-fp32": ("onnxruntime", "fp32_onnx", {}),
    "ort-int8": ("onnxruntime", "int8_onnx", {}),
    "ov-fp32": ("openvino", "fp32_onnx", {"precision": "fp32"}),
    "ov-bf16": ("openvino", "fp32_onnx", {"precision": "bf16"}),
    "ov-int8": ("openvino", "int8_onnx", {"precision": "int8"}),
}
REFERENCE_ENGINE = "ort-fp32"
_ORT_ARM_SUFFIX = {"ort-fp32": "fp32", "ort-int8": "int8"}


def default_engines() -> list[str]:
    """Every arm of :data:`ENGINES` this CPU runs: both onnxruntime arms and the OpenVINO precisions it supports."""
    from moonlit.common.profiling.openvino import supported_precisions

    supported = set(supported_precisions())
    return [engine for engine in ENGINES if engine.startswith("ort-") or engine.removeprefix("ov-") in supported]


def _check_engines(engines: Sequence[str] | None) -> list[str]:
    if engines is None:
        return default_engines()
    engines = list(engines)
    unknown = [engine for engine in engines if engine not in ENGINES]
    if unknown or len(set(engines)) != len(engines):
        raise InputError(f"engines {engines} should be distinct names from {list(ENGINES)}")
    if REFERENCE_ENGINE not in engines:
        raise InputError(f"engines {engines} should include {REFERENCE_ENGINE!r}, the reference of every speed-up")
    return engines


def _arm(name: str, engine: str) -> str:
    return f"{name}/{_ORT_ARM_SUFFIX.get(engine, engine)}"


def _ms_key(engine: str) -> str:
    """The row key of an arm's median: ``fp32_ms`` / ``int8_ms`` for onnxruntime, ``ov_bf16_ms`` etc. for OpenVINO."""
    return f"{_ORT_ARM_SUFFIX[engine]}_ms" if engine in _ORT_ARM_SUFFIX else f"{engine.replace('-', '_')}_ms"


def best_arm(row: dict[str, Any]) -> tuple[str, float] | None:
    """``(engine, speed-up over ORT FP32)`` of the row's fastest arm (among those that ran), None without timings."""
    timings = {engine: row[_ms_key(engine)] for engine in ENGINES if row.get(_ms_key(engine)) is not None}
    if not timings or row.get("fp32_ms") is None:
        return None
    engine = min(timings, key=timings.__getitem__)
    return engine, row["fp32_ms"] / timings[engine]


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
    """The markdown table of benchmark rows: onnxruntime FP32/INT8, the OpenVINO arms any row has, the best arm."""
    ov_engines = [engine for engine in ENGINES if engine.startswith("ov-")
                  and any(_ms_key(engine) in row or engine in row.get("errors", {}) for row in rows)]
    ov_header = "".join(f" OV {engine.removeprefix('ov-').upper()} ms |" for engine in ov_engines)
    lines = ["| model | res | MMACs | params (M) | ORT FP32 ms | ORT INT8 ms | ORT INT8 speed-up (95% CI) | INT8 convs "
             f"| INT8 front |{ov_header} best engine (speed-up vs ORT FP32) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|:---:|" + "---:|" * len(ov_engines) + "---|"]
    for row in rows:
        if row["int8_ms"] is None:  # an ort-int8 arm that failed has an error; one not asked for has none
            int8 = "fails in onnxruntime | – | –" if "ort-int8" in row.get("errors", {}) else "not timed | – | –"
        else:
            low, high = row["speedup_ci95"]
            int8 = (f"{row['int8_ms']:.2f} | {row['speedup']:.2f}x ({low:.2f}-{high:.2f}) | "
                    f"{row['quantized_conv_fraction']:.0%}")
        ov = ""
        for engine in ov_engines:
            ms = row.get(_ms_key(engine))
            ov += f" {ms:.2f} |" if ms is not None else (" fails |" if engine in row.get("errors", {}) else " – |")
        best = best_arm(row)
        best_text = f"{best[0]} {best[1]:.2f}x" if best else "–"
        lines.append(f"| {row['name']} | {row['resolution']} | {row['macs'] / 1e6:.0f} | {row['params'] / 1e6:.2f} | "
                     f"{row['fp32_ms']:.2f} | {int8} | {'yes' if row['on_int8_front'] else ''} |{ov} {best_text} |")
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


def _arm_failed(info: dict[str, Any], engine: str, error: str) -> None:
    log.warning("%s: %s does not run (%s); left out", info["name"], engine, error.splitlines()[0][:200])
    info["errors"][engine] = error[:500]
    if engine == "ort-int8":
        info["int8_error"] = error[:500]


def _probe_openvino_arms(exported: list[dict[str, Any]], engines: list[str], threads: int) -> None:
    """Compile and run every OpenVINO arm once in a child process; record the arms that fail or crash it."""
    from moonlit.common.profiling.openvino import check_in_child

    jobs = [(info, engine) for info in exported for engine in engines if ENGINES[engine][0] == "openvino"]
    if not jobs:
        return
    start = time.perf_counter()
    errors = check_in_child([(info[ENGINES[engine][1]], ENGINES[engine][2]["precision"]) for info, engine in jobs],
                            threads=threads)
    for (info, engine), error in zip(jobs, errors):
        if error is not None:
            _arm_failed(info, engine, error)
    log.info("probed %d OpenVINO arms in a child process in %.1f s", len(jobs), time.perf_counter() - start)


def benchmark_models(models: Sequence[BenchModel], out_dir: str | Path, *, threads: int = 1, rounds: int = 100,
                     warmup: int = 10, burst: int = 2, calibration_count: int = 8, calibration_batch: int = 4,
                     seed: int = 0, engines: Sequence[str] | None = None, probe_openvino: bool = True
                     ) -> dict[str, Any]:
    """Export every model and time every arm of ``engines`` of all of them interleaved; rows with the INT8 front
    and the fastest arm marked.

    ``engines``: names from :data:`ENGINES` (default :func:`default_engines`: all this CPU runs); ``"ort-fp32"``
    is required, as the reference of every speed-up. An arm other than it that fails on a model (an INT8 graph an
    engine cannot run) is logged and left out of that row (``row["errors"]``), not fatal. With ``probe_openvino``
    the OpenVINO arms are first compiled and run once in a child process
    (:func:`~moonlit.common.profiling.openvino.check_in_child`), so a graph that crashes the CPU plugin is reported
    as such instead of ending the run.
    """
    engines = _check_engines(engines)
    torch.manual_seed(seed)
    onnx_dir = Path(out_dir) / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    exported, images = [], []
    for entry in models:
        start = time.perf_counter()
        calibration = calibration_batches(entry.resolution, calibration_count, calibration_batch, seed)
        info = export_model(entry, onnx_dir, calibration)
        log.info("%s: %.0f MMACs, INT8 convs %.0f%% (%s), exported in %.1f s", entry.name, info["macs"] / 1e6,
                 100 * info["quantized_conv_fraction"], entry.int8_route, time.perf_counter() - start)
        info["errors"] = {}
        exported.append(info)
        images.append(torch.randn(1, 3, entry.resolution, entry.resolution))  # drawn here: the seeded order
    if probe_openvino:
        _probe_openvino_arms(exported, engines, threads)
    arms = {}
    for entry, info, image in zip(models, exported, images):
        for engine in engines:
            if engine in info["errors"]:
                continue
            backend, source, options = ENGINES[engine]
            try:
                runner = make_runner(backend, info[source], image, threads=threads, **options)
                runner.fn()  # an INT8 graph an engine cannot run is reported, not fatal
            except Exception as error:  # noqa: BLE001 - onnxruntime and OpenVINO raise their own types
                if engine == REFERENCE_ENGINE:
                    raise
                _arm_failed(info, engine, str(error))
                continue
            arms[_arm(entry.name, engine)] = runner
    timing = compare_many(arms, rounds=rounds, warmup=warmup, burst=burst, seed=seed)
    rows = []
    for info in exported:
        name = info["name"]
        reference = _arm(name, REFERENCE_ENGINE)
        row = {**info, "fp32_ms": timing.results[reference].median_ms, "int8_ms": None, "speedup": None,
               "speedup_ci95": None, "speedups": {}}
        for engine in engines:
            arm = _arm(name, engine)
            if engine == REFERENCE_ENGINE or arm not in timing.results:
                continue
            ratio = timing.ratio(reference, arm)
            row["speedups"][engine] = {"speedup": ratio.ratio, "speedup_ci95": list(ratio.ratio_ci95)}
            if engine == "ort-int8":
                row.update(int8_ms=timing.results[arm].median_ms, speedup=ratio.ratio,
                           speedup_ci95=list(ratio.ratio_ci95))
            else:
                row[_ms_key(engine)] = timing.results[arm].median_ms
        best = best_arm(row)
        row["best_engine"], row["best_speedup"] = best
        if best[0] != REFERENCE_ENGINE:
            row["best_speedup_ci95"] = row["speedups"][best[0]]["speedup_ci95"]
        rows.append(row)
    front = int8_front([row for row in rows if row["int8_ms"] is not None])
    for row in rows:
        row["on_int8_front"] = row["name"] in front
    return {"rows": rows, "environment": timing.environment,
            "timing": {"threads": threads, "rounds": rounds, "warmup": warmup, "burst": burst, "engines": engines},
            "calibration": "random-normal batches (latency only; the models are not scored)",
            "samples_ms": {arm: r.samples_ms for arm, r in timing.results.items()}}
