"""FP32 vs INT8 latency of the SEQnets and CNN baselines on this CPU (SpaceEvo, ICCV'23, §5.1, Fig. 1 / Table 2).

``python -m moonlit.spaceevo.benchmark``: every model is exported to FP32 ONNX and to INT8 QDQ
(U8S8), and all of them, FP32 and INT8, are timed with onnxruntime on one thread, interleaved in
one :func:`moonlit.common.profiling.latency.compare_many` run (medians, per-model INT8 speed-up
with a bootstrap interval). MACs come from :func:`moonlit.common.profiling.flops.count_macs`.
Outputs: ``benchmark.json``, ``benchmark.md`` (the table), ``latency_vs_macs.png`` and a report
``section.json``.

Weights are random (latency does not depend on them), and so is the INT8 calibration: the models
are timed, not scored, so their activation grids come from random-normal batches
(``seqnet_int8=static``: onnxruntime static quantization, the baselines' route too) or from LSQ+
min-max grids exported the deployment way (``seqnet_int8=lsq``: :func:`~moonlit.spaceevo.deploy.export_lsq_qdq`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import timm
import torch
from moonlit.common.config import hydra_app, to_container
from moonlit.common.export.int8 import quantization_summary
from moonlit.common.export.onnx import export_onnx
from moonlit.common.profiling.backends import make_runner
from moonlit.common.profiling.flops import count_macs
from moonlit.common.profiling.latency import compare_many
from moonlit.common.report import write_section
from moonlit.spaceevo.deploy import export_lsq_qdq, quantize_with_calibration
from moonlit.spaceevo.models import create_seqnet, load_search_result
from moonlit.spaceevo.ops.lsq_plus import set_quant_mode
from omegaconf import DictConfig
from torch import nn

__all__ = ["BASELINES", "export_model", "int8_front", "plot_latency_vs_macs", "render_table", "run_benchmark"]

log = logging.getLogger(__name__)

BASELINES = ("mobilenetv3_large_100", "efficientnet_b0", "resnet18")


def _calibration_batches(resolution: int, count: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch_size, 3, resolution, resolution, generator=generator) for _ in range(count)]


def export_model(name: str, model: nn.Module, resolution: int, out_dir: Path, int8_route: str,
                 calibration: list[torch.Tensor]) -> dict[str, Any]:
    """FP32 ONNX + INT8 QDQ of ``model`` under ``out_dir``; returns paths, MACs and the INT8 op summary."""
    if int8_route not in ("static", "lsq"):
        raise ValueError(f"INT8 route {int8_route!r} of {name} is not 'static' or 'lsq'")
    model = model.eval()
    example = torch.randn(1, 3, resolution, resolution)
    complexity = count_macs(model, example)
    safe = name.replace("@", "_at_")
    fp32_path = export_onnx(model, example, out_dir / f"{safe}_fp32.onnx", atol=1e-3, rtol=1e-2)
    int8_path = out_dir / f"{safe}_int8.onnx"
    if int8_route == "lsq":
        set_quant_mode(model, 8)
        with torch.no_grad():
            model(calibration[0])  # min-max LSQ+ grids stand in for learned ones
        export_lsq_qdq(model, int8_path, calibration)
        set_quant_mode(model, None)
    else:
        quantize_with_calibration(model, int8_path, calibration)
    summary = quantization_summary(int8_path)
    return {"name": name, "resolution": resolution, "macs": complexity.macs, "params": complexity.params,
            "fp32_onnx": str(fp32_path), "int8_onnx": str(int8_path), "int8_route": int8_route,
            "quantized_conv_fraction": summary.fraction_quantized("Conv")}


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
    """The markdown table of ``benchmark.json`` rows."""
    lines = ["| model | res | MMACs | params (M) | FP32 ms | INT8 ms | INT8 speed-up (95% CI) | INT8 convs | INT8 front |",
             "|---|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for row in rows:
        low, high = row["speedup_ci95"]
        lines.append(f"| {row['name']} | {row['resolution']} | {row['macs'] / 1e6:.0f} | {row['params'] / 1e6:.2f} | "
                     f"{row['fp32_ms']:.2f} | {row['int8_ms']:.2f} | {row['speedup']:.2f}x ({low:.2f}-{high:.2f}) | "
                     f"{row['quantized_conv_fraction']:.0%} | {'yes' if row['on_int8_front'] else ''} |")
    return "\n".join(lines) + "\n"


def _family(name: str) -> str:
    return name.split("-")[0] if name.startswith("SEQnet@") else "baselines"


def plot_latency_vs_macs(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Latency (ms) against MACs: INT8 filled, FP32 hollow, one colour per model family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 5))
    families = sorted({_family(row["name"]) for row in rows})
    colours = dict(zip(families, plt.get_cmap("tab10").colors))
    for family in families:
        members = sorted((row for row in rows if _family(row["name"]) == family), key=lambda row: row["macs"])
        macs = [row["macs"] / 1e6 for row in members]
        axes.plot(macs, [row["int8_ms"] for row in members], "o-" if family != "baselines" else "o",
                  color=colours[family], label=f"{family} INT8")
        axes.plot(macs, [row["fp32_ms"] for row in members], "o--" if family != "baselines" else "o",
                  color=colours[family], markerfacecolor="none", label=f"{family} FP32")
        for row in members:
            axes.annotate(row["name"].replace("SEQnet@", ""), (row["macs"] / 1e6, row["int8_ms"]), fontsize=7,
                          xytext=(3, 3), textcoords="offset points")
    axes.set_xlabel("MMACs")
    axes.set_ylabel("latency (ms, onnxruntime, 1 thread, median)")
    axes.set_title("SEQnets vs baselines: INT8 (filled) and FP32 (hollow)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _models(cfg: DictConfig) -> list[tuple[str, nn.Module, int, str]]:
    """(name, model, resolution, INT8 route) of every benchmarked model."""
    names = list(load_search_result(cfg.search_result)) if cfg.seqnets is None else list(cfg.seqnets)
    models = []
    for name in names:
        model = create_seqnet(name, search_result=cfg.search_result)
        models.append((name, model, model.resolution, cfg.seqnet_int8))
    for name in cfg.baselines:
        models.append((name, timm.create_model(name, pretrained=False), cfg.baseline_resolution, "static"))
    return models


def run_benchmark(cfg: DictConfig) -> dict[str, Any]:
    """Export, time and report every model; returns what ``benchmark.json`` holds."""
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.output_dir)
    onnx_dir = out_dir / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    exported, arms = [], {}
    for name, model, resolution, route in _models(cfg):
        start = time.perf_counter()
        calibration = _calibration_batches(resolution, cfg.calibration.batches, cfg.calibration.batch_size, cfg.seed)
        info = export_model(name, model, resolution, onnx_dir, route, calibration)
        log.info("%s: %.0f MMACs, INT8 convs %.0f%% (%s), exported in %.1f s", name, info["macs"] / 1e6,
                 100 * info["quantized_conv_fraction"], route, time.perf_counter() - start)
        image = torch.randn(1, 3, resolution, resolution)
        for precision in ("fp32", "int8"):
            arms[f"{name}/{precision}"] = make_runner("onnxruntime", info[f"{precision}_onnx"], image,
                                                      threads=cfg.timing.threads)
        exported.append(info)
    timing = compare_many(arms, rounds=cfg.timing.rounds, warmup=cfg.timing.warmup, burst=cfg.timing.burst,
                          seed=cfg.seed)
    rows = []
    for info in exported:
        name = info["name"]
        ratio = timing.ratio(f"{name}/fp32", f"{name}/int8")
        rows.append({**info, "fp32_ms": timing.results[f"{name}/fp32"].median_ms,
                     "int8_ms": timing.results[f"{name}/int8"].median_ms, "speedup": ratio.ratio,
                     "speedup_ci95": list(ratio.ratio_ci95)})
    front = int8_front(rows)
    for row in rows:
        row["on_int8_front"] = row["name"] in front
    result = {"rows": rows, "environment": timing.environment, "timing": to_container(cfg)["timing"],
              "calibration": "random-normal batches (latency only; the models are not scored)",
              "samples_ms": {arm: r.samples_ms for arm, r in timing.results.items()}}
    (out_dir / "benchmark.json").write_text(json.dumps(result, indent=1) + "\n")
    table = render_table(rows)
    (out_dir / "benchmark.md").write_text(table)
    plot_latency_vs_macs(rows, out_dir / "latency_vs_macs.png")
    write_section(out_dir, {
        "name": "spaceevo_benchmark", "title": "SpaceEvo: SEQnets vs baselines, FP32 vs INT8 (onnxruntime)",
        "command": "python -m moonlit.spaceevo.benchmark",
        "summary": (f"onnxruntime {cfg.timing.threads} thread(s), {cfg.timing.rounds} interleaved rounds, medians; "
                    "random weights; INT8 grids from random-normal calibration batches."),
        "tables": [{"caption": "Latency vs MACs", "source": "benchmark.json",
                    "columns": ["model", "MMACs", "FP32 ms", "INT8 ms", "speed-up"],
                    "rows": [[r["name"], r["macs"] / 1e6, r["fp32_ms"], r["int8_ms"], r["speedup"]] for r in rows],
                    "floatfmt": ".2f"}],
        "figures": [{"path": "latency_vs_macs.png", "caption": "latency vs MACs, INT8 filled, FP32 hollow"}],
    })
    log.info("\n%s", table)
    return result


@hydra_app("spaceevo", "benchmark")
def main(cfg: DictConfig) -> None:
    run_benchmark(cfg)


if __name__ == "__main__":
    main()
