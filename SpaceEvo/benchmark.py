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
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from moonlit.common.config import hydra_app, to_container
from moonlit.common.models import create_model
from moonlit.common.profiling.model_benchmark import BenchModel, benchmark_models, int8_front, render_table
from moonlit.common.profiling.model_benchmark import plot_latency_vs_macs as plot_models
from moonlit.common.report import write_section
from moonlit.spaceevo.deploy import export_lsq_qdq, quantize_with_calibration
from moonlit.spaceevo.models import load_search_result, resolve_model
from moonlit.spaceevo.ops.lsq_plus import set_quant_mode

__all__ = ["BASELINES", "int8_front", "plot_latency_vs_macs", "render_table", "run", "run_benchmark"]

log = logging.getLogger(__name__)

BASELINES = ("mobilenetv3_large_100", "efficientnet_b0", "resnet18")


def _lsq_int8(model: nn.Module, path: Path, calibration: list[torch.Tensor]) -> Path:
    """The deployment route: LSQ+ min-max grids (stand-ins for learned ones) exported as QDQ."""
    set_quant_mode(model, 8)
    with torch.no_grad():
        model(calibration[0])
    export_lsq_qdq(model, path, calibration)
    set_quant_mode(model, None)
    return path


def _static_int8(model: nn.Module, path: Path, calibration: list[torch.Tensor]) -> Path:
    return quantize_with_calibration(model, path, calibration)


def _family(name: str) -> str:
    return name.split("-")[0] if name.startswith("SEQnet@") else "baselines"


def plot_latency_vs_macs(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Latency against MACs, INT8 filled, FP32 hollow, one colour per SEQnet family and the baselines."""
    return plot_models(rows, path, "SEQnets vs baselines: INT8 (filled) and FP32 (hollow)",
                       label=lambda name: name.replace("SEQnet@", ""))


def _models(cfg: DictConfig) -> list[BenchModel]:
    """Every benchmarked model with its INT8 route, each built by ``create_model`` (baselines by their timm names)."""
    names = list(load_search_result(cfg.search_result)) if cfg.seqnets is None else list(cfg.seqnets)
    models = []
    for name in names:
        model = create_model(resolve_model(name, cfg.search_result).model_name)
        route = _lsq_int8 if cfg.seqnet_int8 == "lsq" else _static_int8
        if cfg.seqnet_int8 not in ("static", "lsq"):
            raise ValueError(f"seqnet_int8 = {cfg.seqnet_int8!r}; expected 'static' or 'lsq'")
        models.append(BenchModel(name, model, model.resolution, _family(name), route, cfg.seqnet_int8))
    for name in cfg.baselines:
        models.append(BenchModel(name, create_model(name), cfg.baseline_resolution, "baselines", _static_int8,
                                 "static"))
    return models


def predict_rows(rows: list[dict[str, Any]], predictors: dict[str, str | None],
                 models: list[BenchModel] | None = None, repeats: int = 2) -> str:
    """LitePred predictions beside measurements, for each precision with a predictor directory.

    Kernels are detected on the FP32 ONNX graph. The benchmark's own medians come from its INT8 route
    and statistic; a predictor learns its platform's: its backend's quantization and the 10th
    percentile of interleaved samples (``statistic`` in its metadata). So with ``models`` each one is
    also measured ``repeats`` times through the predictor's backend (``<precision>_litepred_ms``,
    the mean of the passes; the passes' agreement is the measurement ceiling) and the error is taken
    against that. Returns a markdown table, or "" when no predictor is given.
    """
    from moonlit.litepred.api import load_predictor, measure_like_predictor, predict_onnx, protocol_summary

    lines = []
    for precision, directory in predictors.items():
        if precision not in ("fp32", "int8"):
            raise ValueError(f"predictors.{precision}: expected the keys fp32 and int8")
        if not directory:
            continue
        predictor = load_predictor(directory)
        meta = predictor.platform
        own: list[list[float]] = [[] for _ in rows]
        if models is not None:
            inputs = [(entry.model.eval(), (torch.randn(1, 3, entry.resolution, entry.resolution),))
                      for entry in models]
            own = measure_like_predictor(predictor, inputs, repeats)
        for row, passes in zip(rows, own):
            predicted = predict_onnx(predictor, row["fp32_onnx"]).latency_ms
            row[f"predicted_{precision}_ms"] = predicted
            measured, agree = protocol_summary(passes, row.get(f"{precision}_ms"))
            if passes:
                row[f"{precision}_litepred_ms"] = passes
            row[f"{precision}_prediction_error"] = None if not measured else predicted / measured - 1
            if measured:
                lines.append(f"| {row['name']} | {meta['name']} | {row.get(f'{precision}_ms') or float('nan'):.2f} | "
                             f"{measured:.2f} | {agree} | {predicted:.2f} | {100 * (predicted / measured - 1):+.1f}% |")
    if not lines:
        return ""
    return ("\n| model | predictor | benchmark median ms | measured, predictor's protocol ms | pass 2 vs pass 1 | "
            "predicted ms | error |\n|---|---|---:|---:|---:|---:|---:|\n" + "\n".join(lines) + "\n")


def run_benchmark(cfg: DictConfig) -> dict[str, Any]:
    """Export, time and report every model; returns what ``benchmark.json`` holds."""
    out_dir = Path(cfg.output_dir)
    t = cfg.timing
    models = _models(cfg)
    result = benchmark_models(models, out_dir, threads=t.threads, rounds=t.rounds, warmup=t.warmup,
                              burst=t.burst, calibration_count=cfg.calibration.batches,
                              calibration_batch=cfg.calibration.batch_size, seed=cfg.seed,
                              engines=None if t.engines is None else list(t.engines))
    engines = list(result["timing"]["engines"])
    rows = result["rows"]
    result["timing"] = {**to_container(cfg)["timing"], "engines": engines}
    predictions = predict_rows(rows, dict(cfg.predictors), models if cfg.predictor_protocol else None)
    result["predictors"] = to_container(cfg)["predictors"]
    (out_dir / "benchmark.json").write_text(json.dumps(result, indent=1) + "\n")
    table = render_table(rows) + predictions
    (out_dir / "benchmark.md").write_text(table)
    plot_latency_vs_macs(rows, out_dir / "latency_vs_macs.png")
    write_section(out_dir, {
        "name": "spaceevo_benchmark",
        "title": "SpaceEvo: SEQnets vs baselines, FP32 / BF16 / INT8 (ONNX Runtime, OpenVINO)",
        "command": "python -m moonlit.spaceevo.benchmark",
        "summary": (f"{', '.join(engines)}; {cfg.timing.threads} thread(s), {cfg.timing.rounds} "
                    "interleaved rounds, medians; random weights; INT8 grids from random-normal calibration batches."),
        "tables": [{"caption": "Latency vs MACs; best = fastest engine/precision, speed-up over ORT FP32",
                    "source": "benchmark.json",
                    "columns": ["model", "MMACs", "ORT FP32 ms", "ORT INT8 ms", "best", "best speed-up"],
                    "rows": [[r["name"], r["macs"] / 1e6, r["fp32_ms"], r["int8_ms"], r.get("best_engine"),
                              r.get("best_speedup")] for r in rows],
                    "floatfmt": ".2f"}],
        "figures": [{"path": "latency_vs_macs.png", "caption": "latency vs MACs, INT8 filled, FP32 hollow"}],
    })
    log.info("\n%s", table)
    return result


def run(cfg: DictConfig) -> dict[str, Any]:
    """The app's work (what ``main`` runs): :func:`run_benchmark`."""
    return run_benchmark(cfg)


@hydra_app("spaceevo", "benchmark")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
