"""``moonlit-litepred build``: profile, then one regressor per kernel type and the overhead fit, saved.

    python -m moonlit.litepred.apps.build platform=ort-fp32
    python -m moonlit.litepred.apps.build platform=debug budget.kernels=300 architectures.train=12

Writes the predictor and ``build.json`` (what was profiled, the regressors chosen, the overhead) to
``predictor_dir``; kernels already in ``dataset`` are reused. ``in_context.path`` adds kernels timed inside
training models (``moonlit-litepred attribute attribute.in_context=true``) to the isolated kernels' rows.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from moonlit.common.config import hydra_app, to_container
from moonlit.litepred.pipeline import KernelCache, calibrate_overhead, measured_models, train_predictor
from moonlit.litepred.profile.dataset import ProfileDataset
from moonlit.litepred.zoo import calibration_architectures

from . import profile, settings

logger = logging.getLogger("moonlit.litepred")

SELECTION_KEYS = ("within_10pct", "mape", "fit_seconds")  # per regressor candidate, in build.json


def run(cfg: DictConfig) -> dict[str, Any]:
    """:func:`.profile.run`, then one regressor per kernel type, the overhead fit, saved to ``predictor_dir``."""
    start = time.perf_counter()
    backend = settings.backend(cfg)
    in_context = settings.in_context_records(cfg, backend.name)  # checked before anything is profiled
    profiled = profile.run(cfg, backend)
    dataset = ProfileDataset(cfg.dataset)
    metadata = {**backend.metadata(), "rules": cfg.rules}
    if in_context:
        metadata["in_context"] = {"path": str(cfg.in_context.path), "records": len(in_context),
                                  "models": len({r.metadata["model"] for r in in_context})}
    predictor = train_predictor(dataset, backend.name, regressor=cfg.regressor,
                                options=OmegaConf.to_container(cfg.regressor_options, resolve=True),
                                metadata=metadata, min_rows=int(cfg.min_rows),
                                seed=int(cfg.budget.seed), statistic=cfg.statistic, extra=in_context)
    specs = calibration_architectures(settings.training_specs(cfg), settings.calibration_count(cfg))
    cache = KernelCache(cfg.kernel_cache, cfg.rules)
    overhead = calibrate_overhead(predictor, cache, specs,
                                  measured_models(dataset, backend.name, specs, statistic=cfg.statistic),
                                  per_type=bool(cfg.overhead.per_type), ridge=cfg.overhead.ridge,
                                  weight_rates=settings.weight_rates(cfg.overhead.get("weight_rates")),
                                  kernel_offsets=settings.kernel_offsets(cfg.overhead.get("kernel_offsets")))
    out = Path(cfg.predictor_dir)
    predictor.save(out)
    kernel_seconds = sum(float(r.metadata.get("seconds", 0.0))
                         for r in dataset.records(backend=backend.name, kind="kernel"))
    summary = {**profiled, "overhead": overhead, "kernel_types": predictor.kernel_types,
               "in_context": metadata.get("in_context"),
               "selection": {t: {"selected": c["selected"], **{name: {k: r[k] for k in SELECTION_KEYS}
                                                           for name, r in c["candidates"].items()}}
                             for t, c in predictor.platform.get("selection", {}).items()},
               "build_seconds": time.perf_counter() - start, "kernel_profiling_seconds_total": kernel_seconds,
               "config": to_container(cfg)}
    (out / "build.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    logger.info("predictor for %s saved to %s (%d kernel types, overhead %.3f x + %.3f ms)", backend.name, out,
                len(predictor.kernel_types), overhead["slope"], overhead["intercept"])
    return summary


@hydra_app("litepred", "litepred")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
