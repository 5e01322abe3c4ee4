"""Accuracy of a platform predictor on held-out models, beside the measurement ceiling (LitePred §6).

Each held-out architecture is measured ``repeats`` times, in separate passes over the whole set
(so slow drifts of the machine show up as disagreement). The first measurement is the truth the
prediction is scored against; the agreement of the first two is the *measurement ceiling*: no
predictor can be scored more accurate than the measurements agree with themselves.

That ceiling compares two passes a few minutes apart. A predictor is built in one session and
used in another, and on a shared VM the machine's speed drifts between sessions. When the held-out
set was also measured in an earlier session (``first_repeat`` > 0), each earlier pass is scored as
if it were a prediction of today's measurement (:func:`earlier_pass_agreement`): how far the
machine itself moved between the sessions, reported beside the predictor.

Also timed: predicting a model from its ``.onnx`` file end to end (load, shape inference, kernel
detection, regressors) and predicting many architectures in one batch from their kernel rows
(the NAS use, where a search space lists a subnet's kernels without exporting it).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from moonlit.common.report import write_section
from moonlit.litepred.pipeline import (
    STATISTICS,
    KernelCache,
    export_spec,
    latency_of,
    measured_models,
    measurement_times,
    model_rows,
    predict_architectures,
    profile_models,
    timed_predict_onnx,
)
from moonlit.litepred.predict.metrics import accuracy_report, plot_scatter
from moonlit.litepred.predict.predictor import PlatformPredictor
from moonlit.litepred.profile import get_platform
from moonlit.litepred.profile.dataset import ProfileDataset
from moonlit.litepred.zoo import ArchSpec, heldout_architectures

__all__ = ["batch_throughput", "earlier_pass_agreement", "evaluate_platform", "kernel_level"]

logger = logging.getLogger(__name__)


def earlier_pass_agreement(earlier_ms: Any, now_ms: Any) -> dict[str, float]:
    """An earlier measurement of the same models scored as a prediction of ``now_ms``.

    ±5/±10% and MAPE relative to ``now_ms`` (the predictor's definitions), and the median of
    ``now / earlier``: how much slower (> 1) or faster the machine runs these models now.
    """
    earlier, now = np.asarray(earlier_ms, dtype=float), np.asarray(now_ms, dtype=float)
    report = accuracy_report(earlier, now)
    return {"within_5pct": report["within_5pct"], "within_10pct": report["within_10pct"], "mape": report["mape"],
            "median_ratio": float(np.median(now / earlier))}


def _earlier_passes(dataset: ProfileDataset, backend: str, specs: Sequence[ArchSpec], truth: np.ndarray,
                    first_repeat: int, statistic: str) -> list[dict[str, Any]]:
    """:func:`earlier_pass_agreement` for every earlier pass that measured all of ``specs``, with its age."""
    def pass_time(repeat: int) -> datetime.datetime:
        times = sorted(measurement_times(dataset, backend, specs, repeat))
        return times[len(times) // 2]  # the median: a pass may have been resumed later

    passes = []
    now = pass_time(first_repeat) if first_repeat > 0 else None
    for repeat in range(first_repeat):
        earlier = measured_models(dataset, backend, specs, repeat, statistic)
        if not np.isfinite(earlier).all():
            continue
        hours = (now - pass_time(repeat)).total_seconds() / 3600
        passes.append({"pass": repeat, "hours_before": hours, **earlier_pass_agreement(earlier, truth)})
    return passes


def batch_throughput(predictor: PlatformPredictor, cache: KernelCache, specs: list[ArchSpec], n: int,
                     rounds: int = 3) -> dict[str, float]:
    """Architectures per second predicted in one batch of ``n`` (the held-out models' kernel rows, cycled)."""
    rows = [model_rows(cache.get(s), predictor.kernel_types)[0] for s in specs]
    batch = [rows[i % len(rows)] for i in range(n)]
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        predictor.predict_models(batch)
        best = min(best, time.perf_counter() - start)
    return {"architectures": n, "seconds": best, "architectures_per_second": n / best}


def kernel_level(predictor: PlatformPredictor, dataset: ProfileDataset, backend: Any, remeasure: int,
                 seed: int = 0, statistic: str = "p10") -> dict[str, Any]:
    """Kernel-level numbers: each type's held-out accuracy from the regressor selection (if it ran), and
    the kernel measurement ceiling from ``remeasure`` profiled kernels measured again now."""
    from moonlit.litepred.kernels.detect import KernelConfig
    from moonlit.litepred.profile.kernel_builder import build_kernel_module

    selection = predictor.platform.get("selection", {})
    per_type = {t: {"selected": c["selected"], "n_holdout": c["n_holdout"],
                    **{k: c["candidates"][c["selected"]][k] for k in ("within_5pct", "within_10pct", "mape")}}
                for t, c in selection.items()}
    records = dataset.records(backend=backend.name, kind="kernel")
    rng = np.random.default_rng(seed)
    chosen = [records[i] for i in sorted(rng.choice(len(records), size=min(remeasure, len(records)), replace=False))]
    items = [build_kernel_module(KernelConfig(record.name, record.config)) for record in chosen]
    again = [m for group_start in range(0, len(items), 128)
             for m in backend.measure_many(items[group_start : group_start + 128], kernels=True)]
    field = STATISTICS[statistic]
    first = [latency_of(r, statistic) for r, m in zip(chosen, again) if not isinstance(m, Exception)]
    second = [getattr(m, field) for m in again if not isinstance(m, Exception)]
    types = [r.name for r, m in zip(chosen, again) if not isinstance(m, Exception)]
    first_a, second_a = np.maximum(np.array(first), 1e-6), np.maximum(np.array(second), 1e-6)
    ceiling = {"n": len(first)}
    if first:
        from moonlit.litepred.predict.metrics import measurement_ceiling

        ceiling.update({"within_5pct": measurement_ceiling(first_a, second_a, 0.05),
                        "within_10pct": measurement_ceiling(first_a, second_a, 0.10)})
        for t in sorted(set(types)):
            index = [i for i, name in enumerate(types) if name == t]
            per_type.setdefault(t, {})["ceiling_within_10pct"] = measurement_ceiling(first_a[index], second_a[index])
            per_type[t]["ceiling_n"] = len(index)
    return {"per_type": per_type, "ceiling": ceiling}


def evaluate_platform(predictor_dir: str | Path, dataset_path: str | Path, cache: KernelCache, out_dir: str | Path, *,
                      platform: str, backend_options: dict[str, Any] | None = None, n: int = 120, seed: int = 7,
                      families: list[str] | None = None, repeats: int = 2, speed_models: int = 5,
                      batch_architectures: int = 1000, kernel_remeasure: int = 200,
                      extra_models: Sequence[ArchSpec] = (), first_repeat: int = 0,
                      section: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure held-out models on ``platform``, predict them, write results.json, scatter.png and a report section.

    The models are ``heldout_architectures(n, seed, families)`` plus ``extra_models``; ``section``
    overrides fields of the report section (name, title, order, command).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    predictor = PlatformPredictor.load(predictor_dir)
    specs = heldout_architectures(n, seed=seed, families=families) if n > 0 else []
    specs += [s for s in extra_models if s.name not in {t.name for t in specs}]
    if not specs:
        raise ValueError("no held-out models: n is 0 and no extra models were given")
    backend = get_platform(platform, **(backend_options or {}))
    dataset = ProfileDataset(dataset_path)
    cache.fill(specs, desc="detecting held-out kernels")
    profiling = profile_models(specs, backend, dataset, repeats=repeats, desc="measuring held-out models",
                               first_repeat=first_repeat, skip_failed=True)
    statistic = predictor.platform.get("statistic", "median")
    measured = [measured_models(dataset, backend.name, specs, r, statistic)
                for r in range(first_repeat, first_repeat + repeats)]
    # a model the engine cannot run (the OpenVINO plugin crashing on a QDQ graph) is reported, not scored
    runs = np.all([np.isfinite(m) for m in measured], axis=0)
    unmeasured = [s.name for s, ok in zip(specs, runs) if not ok]
    if not runs.any():
        raise RuntimeError(f"none of the {len(specs)} held-out models could be measured on {backend.name}")
    specs = [s for s, ok in zip(specs, runs) if ok]
    measured = [m[runs] for m in measured]
    predicted, unpredicted = predict_architectures(predictor, cache, specs)
    truth = measured[0]
    report = accuracy_report(predicted, truth, repeat=measured[1] if repeats > 1 else None)
    report["earlier_passes"] = _earlier_passes(dataset, backend.name, specs, truth, first_repeat, statistic)
    by_family = {}
    for family in sorted({s.family for s in specs}):
        index = [i for i, s in enumerate(specs) if s.family == family]
        by_family[family] = accuracy_report(predicted[index], truth[index],
                                            repeat=measured[1][index] if repeats > 1 else None)
    ceiling = report.get("ceiling_within_10pct")
    plot_scatter(predicted, truth, out / "scatter.png", f"{platform}: {len(specs)} held-out models", ceiling=ceiling)

    speed = []
    for spec in specs[:speed_models]:
        path = export_spec(spec, out / "onnx" / f"{spec.name.replace('/', '_')}.onnx")
        timed_predict_onnx(predictor, path, cache.platform)  # warm: imports, rule loading
        speed.append({"model": spec.name, **timed_predict_onnx(predictor, path, cache.platform)["seconds"]})
    results = {
        "platform": platform, "predictor_dir": str(predictor_dir), "metadata": backend.metadata(),
        "predictor": predictor.platform, "overhead": dataclasses.asdict(predictor.overhead),
        "models": [{"name": s.name, "family": s.family, "predicted_ms": float(p),
                    "measured_ms": [float(m[i]) for m in measured], "unpredicted_kernels": u}
                   for i, (s, p, u) in enumerate(zip(specs, predicted, unpredicted))],
        "accuracy": report, "by_family": by_family, "profiling": profiling, "unmeasured_models": unmeasured,
        "single_model_seconds": speed,
        "batch": batch_throughput(predictor, cache, specs, batch_architectures),
        "kernels": kernel_level(predictor, dataset, backend, kernel_remeasure, statistic=statistic),
        "statistic": statistic,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    write_section(out, {**_section(results), **(section or {})})
    return results


def _section(results: dict[str, Any]) -> dict[str, Any]:
    platform = results["platform"]
    rows = [[family, r["n"], r["within_5pct"], r["within_10pct"], r.get("ceiling_within_10pct"), r["mape"],
             r["rmse_ms"]] for family, r in [("all", results["accuracy"]), *results["by_family"].items()]]
    single = [s["total"] * 1000 for s in results["single_model_seconds"]]
    return {
        "name": f"litepred_{platform}",
        "title": f"LitePred on {platform}: held-out model accuracy",
        "order": 30,
        "command": f"moonlit-litepred evaluate platform={platform}",
        "summary": (f"Predicted vs measured latency of {results['accuracy']['n']} held-out models (none of them, nor "
                    f"their kernel configurations' sources, used in training). Measurement ceiling = share of models "
                    f"whose two independent measurements agree within ±10%."),
        "tables": [{
            "caption": "Model-level accuracy (fractions; MAPE as a fraction, RMSE in ms)",
            "columns": ["models", "n", "±5%", "±10%", "ceiling ±10%", "MAPE", "RMSE ms"],
            "rows": rows, "floatfmt": ".3f",
            "source": f"this repo, measured on this machine (`moonlit-litepred evaluate platform={platform}`)",
        }, {
            "caption": "Prediction speed",
            "columns": ["what", "value"],
            "rows": [["one model from its .onnx file, median ms", float(np.median(single)) if single else None],
                     ["batch mode, architectures/s", results["batch"]["architectures_per_second"]]],
            "floatfmt": ".1f",
            "source": "this repo, on this machine",
        }],
        **({"notes": notes} if (notes := _notes(results)) else {}),
        "figures": [{"path": "scatter.png", "caption": "predicted vs measured latency (y = x, ±10% band)"}],
    }


def _notes(results: dict[str, Any]) -> list[str]:
    notes = [_earlier_pass_note(p) for p in results["accuracy"].get("earlier_passes", [])]
    if results.get("unmeasured_models"):
        notes.append(f"Not scored: {len(results['unmeasured_models'])} held-out model(s) the engine could not run "
                     f"({', '.join(results['unmeasured_models'])}).")
    if results.get("kernels", {}).get("per_type"):
        notes.append(_kernel_note(results["kernels"]))
    return notes


def _earlier_pass_note(earlier: dict[str, Any]) -> str:
    return (f"The same models measured {earlier['hours_before']:.1f} h earlier (pass {earlier['pass']}), taken as a "
            f"prediction of this measurement: {earlier['within_10pct']:.0%} within ±10%, {earlier['within_5pct']:.0%} "
            f"within ±5% (the machine took {earlier['median_ratio']:.2f}× as long now). That is how far the machine "
            f"moved between sessions; a predictor calibrated in one session inherits that drift in another.")


def _kernel_note(kernels: dict[str, Any]) -> str:
    parts = [f"{t} {r['within_10pct']:.0%}" + (f" (ceiling {r['ceiling_within_10pct']:.0%})"
                                               if "ceiling_within_10pct" in r else "")
             for t, r in sorted(kernels["per_type"].items()) if "within_10pct" in r]
    ceiling = kernels["ceiling"]
    return ("Kernel level, ±10% on each type's held-out split: " + ", ".join(parts)
            + (f". {ceiling['n']} profiled kernels re-measured: {ceiling['within_10pct']:.0%} agree within ±10%."
               if ceiling.get("n") else "."))
