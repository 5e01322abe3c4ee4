"""``moonlit-litepred adapt``: transfer to ``platform`` from the knowledge pool (LitePred, NSDI'24, Sec. 5).

    python -m moonlit.litepred.apps.adapt platform=ort-int8 adapt.budget=300

Profiles a probe of real kernels on the target, ranks the pool's platforms by similarity, profiles
``adapt.budget`` more kernels, adapts the source's regressors, re-fits the overhead on
``adapt.calibration_models`` whole models and scores the result on the held-out models; the steps
are those of :mod:`moonlit.litepred.transfer.adapt`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from moonlit.common.config import hydra_app
from moonlit.common.errors import InputError
from moonlit.litepred.pipeline import KernelCache
from moonlit.litepred.profile.dataset import ProfileDataset
from moonlit.litepred.transfer.adapt import (
    adapt_once,
    choose_configs,
    evaluate_predictor,
    heldout_truth,
    kernel_pool_for,
    measure_configs,
    measured_calibration,
    save_json,
    similarity_ranking,
)
from moonlit.litepred.transfer.pool import KnowledgePool
from moonlit.litepred.transfer.similarity import SimilarityScore, probe_configs
from moonlit.litepred.zoo import calibration_architectures, heldout_architectures, training_architectures

from . import settings


def format_ranking(ranking: Sequence[SimilarityScore], metric: str) -> str:
    """The pool ranked by similarity to the target, one platform a line."""
    lines = [f"similarity on {ranking[0].kernels} probe kernels (ranked by {metric}, most similar first):"]
    for i, r in enumerate(ranking):
        lines.append(f"  {i + 1}. {r.platform:<20} KL {r.kl:.4f}  Spearman {r.spearman:+.3f}  "
                     f"target/source latency {r.median_ratio:.2f}x"
                     + (f"  whole-model LOO error {r.model_error:.1%}" if r.model_error is not None else ""))
    return "\n".join(lines)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Adapt a predictor to ``platform`` (module docstring); writes ``adapt.out_dir``/{predictor/, adapt.json}."""
    a = cfg.adapt
    target, statistic, seed = str(cfg.platform), str(cfg.statistic), int(a.seed)
    started = time.perf_counter()
    pool = KnowledgePool(a.pool_dir)
    platforms = [str(p) for p in a.pool] if a.pool else pool.names(exclude=[target])
    platforms = [p for p in platforms if p != target]
    if not platforms:
        raise InputError(f"the knowledge pool {a.pool_dir} holds no platform other than the target {target!r}: "
                         f"it has {pool.names()}; build one first (moonlit-litepred build platform=<name>)")
    backend = settings.backend(cfg)
    dataset = ProfileDataset(a.dataset)
    families = list(cfg.architectures.families) if cfg.architectures.families else None
    train_specs = training_architectures(int(cfg.architectures.train), seed=int(cfg.architectures.seed),
                                         families=families)
    cache = KernelCache(cfg.kernel_cache, cfg.rules)
    kernel_pool = kernel_pool_for(cache, train_specs)

    probe = measure_configs(probe_configs(kernel_pool, int(a.probe), seed), backend, dataset, statistic,
                            f"probe kernels on {target}")
    calibration_specs = calibration_architectures(train_specs, int(a.calibration_models))
    calibration_ms, calibration_s = measured_calibration(calibration_specs, backend, dataset, statistic)
    ranking, predictors = similarity_ranking(pool, platforms, probe, str(a.similarity), cache, calibration_specs,
                                             calibration_ms)
    print(format_ranking(ranking, str(a.similarity)))
    uses_source = str(a.method) not in ("scratch", "flops-linear")
    source_name = (str(a.source) if a.source else ranking[0].platform) if uses_source else None
    if source_name is not None and source_name not in predictors:
        predictors[source_name] = pool.load(source_name)
    chosen = choose_configs(kernel_pool, int(a.budget), str(a.sampler), seed, [c.key() for c in probe.configs])
    budget = measure_configs(chosen, backend, dataset, statistic, f"{a.sampler}-sampled kernels on {target}")
    data = probe + budget
    platform = {"name": target, **backend.metadata(), "rules": str(cfg.rules), "statistic": statistic}
    predictor, fit_s = adapt_once(target_kernels=data, source=predictors.get(source_name), method=str(a.method),
                                  cache=cache, calibration_specs=calibration_specs, calibration_ms=calibration_ms,
                                  platform=platform, fine_tune=OmegaConf.to_container(a.fine_tune, resolve=True),
                                  seed=seed)
    out = Path(a.out_dir)
    predictor.save(out / "predictor")
    cost = {"probe_kernels": len(probe.configs), "budget_kernels": len(budget.configs),
            "kernel_profiling_seconds": float(data.seconds.sum()), "calibration_models": len(calibration_specs),
            "calibration_seconds": calibration_s, "fit_seconds": fit_s}
    cost["total_seconds"] = cost["kernel_profiling_seconds"] + calibration_s + fit_s
    summary: dict[str, Any] = {"target": target, "source": source_name, "method": str(a.method),
                               "sampler": str(a.sampler), "similarity": [r.to_dict() for r in ranking], "cost": cost,
                               "transfer": predictor.platform.get("transfer"),
                               "overhead": {"slope": predictor.overhead.slope,
                                            "intercept": predictor.overhead.intercept}}
    h = cfg.heldout
    if int(h.n) > 0:
        specs = heldout_architectures(int(h.n), seed=int(h.seed), families=list(h.families) if h.families else None)
        cache.fill(specs, desc="detecting held-out kernels")
        truth, repeat = heldout_truth(specs, backend, ProfileDataset(cfg.dataset), statistic, int(h.repeats),
                                      int(h.first_repeat))
        summary["accuracy"] = evaluate_predictor(predictor, cache, specs, truth, repeat)
        acc = summary["accuracy"]
        print(f"{target} adapted from {source_name or 'nothing'} ({a.method}, {len(data.configs)} target kernels + "
              f"{len(calibration_specs)} models, {cost['total_seconds'] / 60:.1f} min): {acc['n']} held-out models "
              f"±5% {acc['within_5pct']:.1%}, ±10% {acc['within_10pct']:.1%}"
              + (f" (ceiling {acc['ceiling_within_10pct']:.1%})" if "ceiling_within_10pct" in acc else "")
              + f", MAPE {acc['mape']:.1%}")
    summary["wall_seconds"] = time.perf_counter() - started
    save_json(out / "adapt.json", summary)
    return summary


@hydra_app("litepred", "litepred")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
