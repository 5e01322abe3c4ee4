"""``moonlit-litepred calibrate``: re-measure the calibration models and re-fit a built predictor's overhead.

    python -m moonlit.litepred.apps.calibrate platform=ort-fp32 calibrate.repeat=1

The kernel regressors are kept; only the whole-model term (slope, per-type factors, weight floor)
is fitted again, on measurements taken now. On a machine whose speed drifts between sessions this
brings a predictor built in one session to the next one's speed in the time the calibration models
take to measure (a few minutes), instead of a new build.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from moonlit.common.config import hydra_app
from moonlit.common.errors import InputError
from moonlit.litepred.pipeline import KernelCache, calibrate_overhead, measured_models, profile_models
from moonlit.litepred.predict.predictor import PlatformPredictor
from moonlit.litepred.profile.dataset import ProfileDataset
from moonlit.litepred.zoo import calibration_architectures

from . import settings


def run(cfg: DictConfig, backend: Any = None) -> dict[str, Any]:
    """Measure the calibration models again (pass ``calibrate.repeat``) and re-fit the overhead term;
    the predictor goes to ``calibrate.out_dir`` (default: over the one in ``predictor_dir``)."""
    start = time.perf_counter()
    repeat = int(cfg.calibrate.repeat)
    if repeat < 0:
        raise InputError(f"calibrate.repeat must be >= 0, got {repeat}")
    predictor = PlatformPredictor.load(cfg.predictor_dir)
    backend = backend or settings.backend(cfg)
    if predictor.platform.get("name", backend.name) != backend.name:
        raise InputError(f"the predictor in {cfg.predictor_dir} is for {predictor.platform.get('name')!r}, "
                         f"not for platform={backend.name!r}")
    statistic = predictor.platform.get("statistic", cfg.statistic)
    specs = calibration_architectures(settings.training_specs(cfg), settings.calibration_count(cfg))
    dataset = ProfileDataset(cfg.dataset)
    profiling = profile_models(specs, backend, dataset, first_repeat=repeat, desc=f"calibration models, pass {repeat}")
    measured = measured_models(dataset, backend.name, specs, repeat, statistic=statistic)
    built = measured_models(dataset, backend.name, specs, 0, statistic=statistic)
    cache = KernelCache(cfg.kernel_cache, cfg.rules)
    before = dataclasses.asdict(predictor.overhead)
    overhead = calibrate_overhead(predictor, cache, specs, measured, per_type=bool(cfg.overhead.per_type),
                                  ridge=cfg.overhead.ridge,
                                  weight_rates=settings.weight_rates(cfg.overhead.get("weight_rates")),
                                  kernel_offsets=settings.kernel_offsets(cfg.overhead.get("kernel_offsets")))
    out = Path(cfg.calibrate.out_dir or cfg.predictor_dir)
    predictor.save(out)
    both = np.isfinite(built) & np.isfinite(measured)
    summary = {"platform": backend.name, "repeat": repeat, "models": len(specs), "profiling": profiling,
               "now_vs_pass0": float(np.median(measured[both] / built[both])) if both.any() and repeat else None,
               "overhead_before": before, "overhead": overhead, "predictor_dir": str(out),
               "seconds": time.perf_counter() - start}
    (out / "calibrate.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    ratio = summary["now_vs_pass0"]
    print(f"{backend.name}: overhead re-fitted on {overhead['models']} calibration models measured in pass {repeat}"
          + (f" (they take {ratio:.2f}x as long as when the predictor was built)" if ratio else "")
          + f"; slope {before['slope']:.3f} -> {overhead['slope']:.3f}, leave-one-out error "
          + (f"{before['cv_error']:.1%} -> " if before.get("cv_error") is not None else "")
          + (f"{overhead['cv_error']:.1%}" if overhead.get("cv_error") is not None else "n/a")
          + f"; saved to {out}")
    return summary


@hydra_app("litepred", "litepred")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
