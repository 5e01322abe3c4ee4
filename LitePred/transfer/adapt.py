"""Adapt to a new platform in one go: probe, similarity, sampling, profiling, transfer (LitePred, NSDI'24, Sec. 5).

:func:`moonlit.litepred.apps.adapt.run` (``moonlit-litepred adapt platform=<target> adapt.budget=N``) does
what the paper's adaptation does, on a local backend, with the steps of this module:

1. the target's *real* kernel configurations: the training architectures' kernels under the
   target's fusion rules (:class:`~moonlit.litepred.profile.sampler.KernelPool`);
2. a *probe* of ``adapt.probe`` real configurations is profiled on the target;
3. every platform of the knowledge pool (``adapt.pool_dir``, minus the target) predicts the probe;
   the platforms are ranked by similarity (:mod:`.similarity`) and the best one is the source;
4. ``adapt.budget`` more configurations are chosen (``adapt.sampler``: the VAE, uniform, or the
   build's frequency sampler) and profiled on the target;
5. the source's regressors are adapted on probe + budget kernels (:mod:`.methods`) and the
   overhead term re-fitted on ``adapt.calibration_models`` whole models measured on the target;
6. the adapted predictor is saved and scored on the held-out models (measured on the target,
   twice, for the ceiling; that measurement is the evaluation, not part of the adaptation cost).

Target kernels go to their own dataset (``adapt.dataset``), never mixed with a full build's data
on the same backend: the adapted predictor sees only what the budget paid for. The adaptation
cost reported is the profiling time of exactly the kernels and models used (each record keeps its
share of its group's wall time), so re-runs that reuse earlier measurements still report it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moonlit.litepred.kernels.detect import KernelConfig
from moonlit.litepred.pipeline import (
    KernelCache,
    _model_config,
    build_pool,
    latency_of,
    measured_models,
    model_rows,
    predict_architectures,
    profile_kernels,
    profile_models,
)
from moonlit.litepred.predict.features import feature_matrix, feature_names
from moonlit.litepred.predict.metrics import accuracy_report
from moonlit.litepred.predict.predictor import PlatformPredictor
from moonlit.litepred.profile.dataset import ProfileDataset, record_key
from moonlit.litepred.profile.sampler import KernelPool, sample_configs
from moonlit.litepred.profile.vae import sample_configs_uniform, sample_configs_vae
from moonlit.litepred.transfer.methods import adapt_predictor
from moonlit.litepred.transfer.pool import KnowledgePool
from moonlit.litepred.transfer.similarity import (
    SimilarityScore,
    rank_platforms,
)
from moonlit.litepred.zoo import (
    ArchSpec,
)

__all__ = ["SAMPLERS", "TargetKernels", "choose_configs", "evaluate_predictor", "measure_configs",
           "measured_calibration", "save_json", "similarity_ranking"]

logger = logging.getLogger(__name__)

SAMPLERS = ("vae", "uniform", "real")


@dataclass
class TargetKernels:
    """Kernels measured on the target: configs, latency (ms, by the statistic) and profiling seconds."""

    configs: list[KernelConfig]
    latency_ms: np.ndarray
    seconds: np.ndarray

    def __add__(self, other: TargetKernels) -> TargetKernels:
        seen = {c.key() for c in self.configs}
        extra = [i for i, c in enumerate(other.configs) if c.key() not in seen]
        return TargetKernels(self.configs + [other.configs[i] for i in extra],
                             np.r_[self.latency_ms, other.latency_ms[extra]], np.r_[self.seconds, other.seconds[extra]])

    def by_type(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        groups: dict[str, list[int]] = {}
        for i, c in enumerate(self.configs):
            groups.setdefault(c.type, []).append(i)
        return {t: (feature_matrix([self.configs[i] for i in idx]), self.latency_ms[idx]) for t, idx in groups.items()}


def measure_configs(configs: Sequence[KernelConfig], backend: Any, dataset: ProfileDataset, statistic: str,
                    desc: str) -> TargetKernels:
    """Profile what ``dataset`` lacks, then read every config's latency and profiling seconds back."""
    profile_kernels(configs, backend, dataset, desc=desc)
    by_key = {r.key: r for r in dataset.records(backend=backend.name, kind="kernel")}
    kept = [c for c in configs if record_key(c.type, dict(c.params)) in by_key]
    records = [by_key[record_key(c.type, dict(c.params))] for c in kept]
    if len(kept) < len(configs):
        logger.warning("%d of %d configurations could not be profiled on %s", len(configs) - len(kept), len(configs),
                       backend.name)
    return TargetKernels(kept, np.array([max(latency_of(r, statistic), 1e-4) for r in records]),
                         np.array([float(r.metadata.get("seconds", 0.0)) for r in records]))


def similarity_ranking(pool: KnowledgePool, platforms: Sequence[str], probe: TargetKernels, metric: str,
                       cache: KernelCache | None = None, model_specs: Sequence[ArchSpec] = (),
                       model_ms: Any = None) -> tuple[list[SimilarityScore], dict[str, PlatformPredictor]]:
    """Rank the pool on the probe kernels; with ``model_specs`` measured on the target (``model_ms``) each
    platform's whole-model fit is scored too (:func:`~moonlit.litepred.transfer.similarity.model_line_error`)."""
    from moonlit.litepred.transfer.similarity import model_line_error

    predictors = {name: pool.load(name) for name in platforms}
    errors = None
    if cache is not None and len(model_specs) >= 3:
        errors = {name: model_line_error(predict_architectures(p, cache, model_specs)[0], model_ms)
                  for name, p in predictors.items()}
    return rank_platforms(predictors, probe.configs, probe.latency_ms, metric, errors), predictors


def choose_configs(kernel_pool: KernelPool, n: int, sampler: str, seed: int, exclude: Sequence[str]) -> list[KernelConfig]:
    """``n`` configurations to profile by ``sampler`` (vae | uniform | real), none of ``exclude``."""
    if n <= 0:
        return []
    if sampler == "vae":
        return sample_configs_vae(kernel_pool, n, seed=seed, exclude=exclude)
    if sampler == "uniform":
        return sample_configs_uniform(kernel_pool, n, seed=seed, exclude=exclude)
    if sampler == "real":
        skip = set(exclude)
        return [c for c in sample_configs(kernel_pool, n + len(skip), seed=seed,
                                          min_per_type=max(2, n // (4 * len(kernel_pool.kernel_types))))
                if c.key() not in skip][:n]
    raise ValueError(f"sampler = {sampler!r}; expected one of {SAMPLERS}")


def measured_calibration(specs: Sequence[ArchSpec], backend: Any, dataset: ProfileDataset,
                         statistic: str) -> tuple[np.ndarray, float]:
    """Latency of ``specs`` measured once on the target (profiled if missing) and the seconds it cost."""
    if not specs:
        return np.zeros(0), 0.0
    profile_models(specs, backend, dataset, desc="measuring calibration models")
    by_key = {r.key: r for r in dataset.records(backend=backend.name, kind="model")}
    records = [by_key[record_key(s.name, _model_config(s, 0))] for s in specs]
    return (np.array([latency_of(r, statistic) for r in records]),
            float(sum(float(r.metadata.get("seconds", 0.0)) for r in records)))


def calibrate_on_target(predictor: PlatformPredictor, cache: KernelCache, specs: Sequence[ArchSpec],
                        measured_ms: np.ndarray, min_models: int = 5) -> None:
    """Re-fit the one-line overhead on the target's calibration models (type factors dropped: too few models)."""
    if len(specs) < min_models:
        return
    rows = [model_rows(cache.get(s), predictor.kernel_types)[0] for s in specs]
    predictor.calibrate(rows, measured_ms, min_models=min_models)


def evaluate_predictor(predictor: PlatformPredictor, cache: KernelCache, specs: Sequence[ArchSpec],
                       truth: np.ndarray, repeat: np.ndarray | None) -> dict[str, Any]:
    """±5/±10%, RMSE, MAPE of ``predictor`` on ``specs`` against ``truth`` (and the ceiling vs ``repeat``)."""
    predicted, _ = predict_architectures(predictor, cache, specs)
    keep = np.isfinite(truth) & np.isfinite(predicted)
    return {**accuracy_report(predicted[keep], truth[keep], repeat=None if repeat is None else repeat[keep]),
            "predicted": predicted.tolist()}


def heldout_truth(specs: Sequence[ArchSpec], backend: Any, dataset: ProfileDataset, statistic: str,
                  repeats: int = 2, first_repeat: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Held-out models measured ``repeats`` times on the target (the evaluation; reused when already measured)."""
    profile_models(specs, backend, dataset, repeats=repeats, desc="measuring held-out models",
                   first_repeat=first_repeat)
    measured = [measured_models(dataset, backend.name, specs, r, statistic)
                for r in range(first_repeat, first_repeat + repeats)]
    return measured[0], (measured[1] if repeats > 1 else None)


def save_json(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def adapt_once(*, target_kernels: TargetKernels, source: PlatformPredictor | None, method: str,
               cache: KernelCache, calibration_specs: Sequence[ArchSpec], calibration_ms: np.ndarray,
               platform: Mapping[str, Any], fine_tune: Mapping[str, Any], seed: int) -> tuple[PlatformPredictor, float]:
    """One adapted predictor (regressors + target overhead) and the seconds the fitting took."""
    start = time.perf_counter()
    types = {c.type for c in target_kernels.configs} | (set(source.regressors) if source else set())
    predictor = adapt_predictor(source, target_kernels.by_type(), method,
                                feature_names={t: feature_names(t) for t in types}, platform=platform,
                                lr=float(fine_tune.get("lr", 1e-4)), epochs=int(fine_tune.get("epochs", 200)), seed=seed)
    calibrate_on_target(predictor, cache, calibration_specs, calibration_ms)
    return predictor, time.perf_counter() - start


def kernel_pool_for(cache: KernelCache, specs: Sequence[ArchSpec]) -> KernelPool:
    return build_pool(cache, specs)
