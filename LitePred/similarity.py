"""Which known platform is most like a new one: similarity on a probe set (LitePred, NSDI'24, Sec. 5.1).

A few kernel configurations (the *probe*) are profiled on the new platform; each platform of the
knowledge pool predicts them; the platform whose predictions best explain the measurements is the
one to transfer from. Two scores, both blind to a global speed factor (an INT8 runtime is faster
across the board, but it is the *pattern* of which kernels are slow that transfers):

* ``kl`` (the reference's): both vectors normalized to sum 1, ``KL(measured ‖ predicted)``;
  lower is more similar. The reference sorted it in descending order and so transferred from the
  *least* similar platform; here the ranking sorts by how similar, best first, whatever the score.
* ``spearman``: rank correlation of predictions and measurements; higher is more similar.

Platforms are compared on the same kernels: those every candidate has a regressor for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from .features import feature_matrix
from .kernels import KernelConfig
from .predictor import PlatformPredictor
from .sampler import KernelPool, sample_configs

__all__ = ["METRICS", "SimilarityScore", "kl_divergence", "probe_configs", "rank_platforms"]

METRICS = ("kl", "spearman")


def kl_divergence(measured: Any, predicted: Any) -> float:
    """``KL(p ‖ q)`` with ``p``, ``q`` the two latency vectors normalized to sum 1 (natural log)."""
    p, q = np.asarray(measured, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 1 or len(p) == 0:
        raise ValueError(f"measured {p.shape} and predicted {q.shape} must be non-empty 1-D vectors of one length")
    if np.any(p <= 0) or np.any(q <= 0):
        raise ValueError("latencies must be > 0 to normalize them into distributions")
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * np.log(p / q)))


@dataclass(frozen=True)
class SimilarityScore:
    platform: str
    kl: float
    spearman: float
    kernels: int  # probe kernels scored (covered by every candidate)
    median_ratio: float  # median measured / predicted: how much faster or slower the target is

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe_configs(pool: KernelPool, n: int, seed: int = 0) -> list[KernelConfig]:
    """``n`` real configurations of the pool, by frequency with at least 2 per type (no neighbours)."""
    types = [t for t in pool.kernel_types if pool.occurrences(t)]
    return sample_configs(pool, n, seed=seed, min_per_type=max(2, n // (3 * max(1, len(types)))),
                          neighbour_fraction=0.0)


def _predict(predictor: PlatformPredictor, configs: Sequence[KernelConfig]) -> np.ndarray:
    out = np.full(len(configs), np.nan)
    by_type: dict[str, list[int]] = {}
    for i, c in enumerate(configs):
        by_type.setdefault(c.type, []).append(i)
    for t, idx in by_type.items():
        if t in predictor.regressors:
            out[idx] = predictor.predict_kernels(t, feature_matrix([configs[i] for i in idx]))
    return out


def rank_platforms(predictors: Mapping[str, PlatformPredictor], configs: Sequence[KernelConfig], measured_ms: Any,
                   metric: str = "kl") -> list[SimilarityScore]:
    """Score every platform on the probe (``configs`` measured as ``measured_ms``); most similar first."""
    if metric not in METRICS:
        raise ValueError(f"metric = {metric!r}; expected one of {METRICS}")
    if not predictors:
        raise ValueError("no platforms to rank: the knowledge pool is empty")
    measured = np.asarray(measured_ms, dtype=np.float64)
    if measured.shape != (len(configs),):
        raise ValueError(f"{len(configs)} probe configs but measured_ms has shape {measured.shape}")
    predictions = {name: _predict(p, configs) for name, p in predictors.items()}
    covered = np.isfinite(measured) & (measured > 0)
    for pred in predictions.values():
        covered &= np.isfinite(pred)
    if covered.sum() < 3:
        raise ValueError(f"only {int(covered.sum())} probe kernels are covered by every platform's predictors; "
                         "expected at least 3 (profile a larger probe, or drop a platform with few kernel types)")
    scores = []
    for name, pred in predictions.items():
        m, p = measured[covered], np.maximum(pred[covered], 1e-9)
        rho = spearmanr(m, p).statistic if np.ptp(m) > 0 and np.ptp(p) > 0 else 0.0
        scores.append(SimilarityScore(name, kl_divergence(m, p), float(rho), int(covered.sum()),
                                      float(np.median(m / p))))
    if metric == "kl":
        return sorted(scores, key=lambda s: (s.kl, s.platform))  # ascending: smallest divergence first
    return sorted(scores, key=lambda s: (-s.spearman, s.platform))  # descending: highest correlation first
