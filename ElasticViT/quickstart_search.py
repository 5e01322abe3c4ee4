"""Quickstart step "latency-constrained search": find an ElasticViT subnet that should run
``speedup`` times faster than a timm baseline on this CPU, then measure it (ICCV'23, Sec. 3.4).

1. The baseline (EfficientNet-B0) is exported to ONNX and timed on onnxruntime, one thread; the
   latency limit is its latency divided by ``speedup`` and the MACs budget is its MACs.
2. :func:`moonlit.elasticvit.search.run_search` searches the full ElasticViT space under the
   predicted latency of a LitePred ``ort-fp32`` predictor (the quickstart's LitePred section
   builds one; when it is missing this step builds it the same way) and the MACs budget. The
   fitness is the proxy (log MACs + log params: the biggest subnet that fits), since the
   quickstart's toy supernet says nothing about ImageNet accuracy.
3. The ``verify`` best subnets by fitness and the baseline are exported and timed together,
   interleaved; the result is the first whose *measured* speed-up meets the target (a search exploits
   a predictor's systematic errors, so a small predictor's pick alone is not trusted), and the
   section reports predicted vs measured latency for each.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import timm
import torch
from omegaconf import DictConfig

from moonlit.common.config import compose_config
from moonlit.common.export.onnx import export_onnx
from moonlit.common.profiling.compare import Arm, median_ms, time_arms
from moonlit.common.profiling.flops import count_macs

from .models import build_model
from .space import decode

__all__ = ["ensure_predictor", "measure_fp32", "run_search_step"]

log = logging.getLogger(__name__)


def ensure_predictor(predictor_dir: str | Path, output_root: str | Path) -> Path:
    """``predictor_dir`` if it holds a predictor, else build it with the LitePred quickstart (a subprocess,
    so its Hydra app composes its own config tree)."""
    predictor_dir = Path(predictor_dir)
    if not (predictor_dir / "platform.json").is_file():
        log.info("no LitePred predictor at %s: building it with python -m moonlit.litepred.quickstart", predictor_dir)
        subprocess.run([sys.executable, "-m", "moonlit.litepred.quickstart", f"paths.output_root={output_root}"],
                       check=True)
        if not (predictor_dir / "platform.json").is_file():
            raise FileNotFoundError(f"the LitePred quickstart ran but wrote no predictor to {predictor_dir}; "
                                    "set search.predictor_dir to a built ort-fp32 predictor")
    return predictor_dir


def measure_fp32(models: dict[str, tuple[torch.nn.Module, int]], *, rounds: int, warmup: int = 5, burst: int = 3,
                 threads: int = 1) -> dict[str, float]:
    """Median onnxruntime FP32 latency (ms) of each ``name -> (model, resolution)``, timed interleaved."""
    arms = {}
    with tempfile.TemporaryDirectory(prefix="elasticvit-qs-") as workdir:
        for name, (model, resolution) in models.items():
            image = torch.randn(1, 3, resolution, resolution)
            path = export_onnx(model.eval(), (image,), Path(workdir) / f"{name}.onnx", check=False)
            arms[name] = Arm("onnxruntime", path, [image])
        return median_ms(time_arms(arms, threads=threads, rounds=rounds, warmup=warmup, burst=burst))


def run_search_step(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Measure the baseline, search under its latency / ``speedup`` and its MACs, measure the result."""
    s = cfg.search
    torch.manual_seed(cfg.seed)
    baseline = timm.create_model(s.baseline, pretrained=False).eval()
    resolution = int(s.baseline_resolution)
    baseline_mmacs = count_macs(baseline, torch.randn(1, 3, resolution, resolution)).macs / 1e6
    baseline_ms = measure_fp32({s.baseline: (baseline, resolution)}, rounds=int(s.rounds))[s.baseline]
    limit_ms = baseline_ms / float(s.speedup)
    predictor_dir = ensure_predictor(s.predictor_dir, cfg.paths.output_root)
    from .search import run_search

    search_cfg = compose_config("elasticvit", "search", [
        "fitness=proxy", "constraint.kind=latency", f"constraint.predictor_dir={predictor_dir}",
        f"constraint.limit_ms={limit_ms}", f"constraint.macs_budget={baseline_mmacs}",
        f"constraint.kernel_cache={out / 'part_kernels.jsonl'}", f"output_dir={out / 'search'}", "resume=false",
        *(f"evolution.{k}={v}" for k, v in s.evolution.items())])
    result = run_search(search_cfg)
    # Verify by measurement: the top candidates by fitness, timed beside the baseline. A search exploits
    # any systematic gap in its predictor, so the first candidate whose *measured* speed-up meets the
    # target is the result (or, if none does, the fastest), and every one is reported.
    ranked = json.loads((out / "search" / "best_subnets.json").read_text())[: max(1, int(s.verify))]
    arms = {f"candidate-{i}": (build_model(decode(r["encoding"])), decode(r["encoding"]).resolution)
            for i, r in enumerate(ranked)}
    measured = measure_fp32({**arms, s.baseline: (baseline, resolution)}, rounds=int(s.rounds))
    base = measured[s.baseline]
    candidates = [{"encoding": r["encoding"], "fitness": float(r["fitness"]), "mmacs": float(r["objectives"]["mmacs"]),
                   "params_m": float(r["objectives"]["params_m"]), "predicted_ms": float(r["objectives"]["latency_ms"]),
                   "measured_ms": measured[f"candidate-{i}"], "speedup": base / measured[f"candidate-{i}"]}
                  for i, r in enumerate(ranked)]
    for c in candidates:
        c["prediction_error"] = c["predicted_ms"] / c["measured_ms"] - 1
    meeting = [c for c in candidates if c["speedup"] >= float(s.speedup)]
    chosen = meeting[0] if meeting else max(candidates, key=lambda c: c["speedup"])
    return {
        "baseline": s.baseline, "baseline_mmacs": baseline_mmacs, "baseline_ms_before": baseline_ms,
        "limit_ms": limit_ms, "target_speedup": float(s.speedup), "predictor_dir": str(predictor_dir),
        **{k: chosen[k] for k in ("encoding", "mmacs", "params_m", "predicted_ms", "measured_ms", "speedup",
                                  "prediction_error")},
        "baseline_ms": base, "met_target": bool(meeting), "rank_of_result": candidates.index(chosen),
        "candidates": candidates, "evaluated": result["evaluated"], "generations": result["generations"],
    }


def search_table(step: dict[str, Any], output_dir: str) -> dict[str, Any]:
    """The report table of the search step: the verified candidates (the result marked) and the baseline."""
    rows = [[f"{'**result** ' if i == step['rank_of_result'] else ''}#{i + 1} `{c['encoding']}`", c["mmacs"],
             c["predicted_ms"], c["measured_ms"], 100 * c["prediction_error"], c["speedup"]]
            for i, c in enumerate(step["candidates"])]
    rows.append([step["baseline"], step["baseline_mmacs"], None, step["baseline_ms"], None, 1.0])
    return {"caption": (f"Latency-constrained search: predicted ort-fp32 latency <= {step['limit_ms']:.2f} ms "
                        f"({step['baseline']} measured {step['baseline_ms_before']:.2f} ms "
                        f"/ {step['target_speedup']:g}) "
                        f"and MMACs <= {step['baseline_mmacs']:.0f}; the top candidates by fitness then timed beside "
                        "the baseline, interleaved (onnxruntime, 1 thread)"),
            "source": f"{output_dir}/results.json (search)",
            "columns": ["candidate (by fitness)", "MMACs", "predicted ms", "measured ms", "prediction error %",
                        "speed-up vs baseline"],
            "rows": rows, "floatfmt": ".3g"}
