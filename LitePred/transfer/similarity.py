"""Which known platform is most like a new one: similarity on a probe set (LitePred, NSDI'24, Sec. 5.1).

A few kernel configurations (the *probe*) are profiled on the new platform; each platform of the
knowledge pool predicts them; the platform whose predictions best explain the measurements is the
one to transfer from. Two scores, both blind to a global speed factor (an INT8 runtime is faster
across the board, but it is the *pattern* of which kernels are slow that transfers):

* ``kl`` (the reference's): both vectors normalized to sum 1, ``KL(measured ‖ predicted)``;
  lower is more similar. The reference sorted it in descending order and so transferred from the
  *least* similar platform; here the ranking sorts by how similar, best first, whatever the score.
* ``spearman``: rank correlation of predictions and measurements; higher is more similar.
* ``models``: a few *whole models* measured on the new platform (the calibration models the
  adaptation measures anyway); each platform's model-level predictions are mapped onto them by a
  line, and the leave-one-out mean relative error of that line is the score (lower is more
  similar). What transfers to model latency is not only the kernels' pattern but how a platform's
  kernel sum relates to its models, which kernels alone do not show (measured here: KL on
  kernels picked the source that fine-tuned worst on two of three local targets).

Platforms are compared on the same kernels: those every candidate has a regressor for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from moonlit.litepred.kernels.detect import KernelConfig
from moonlit.litepred.predict.features import feature_matrix
from moonlit.litepred.predict.predictor import PlatformPredictor
from moonlit.litepred.profile.sampler import KernelPool, sample_configs

__all__ = ["METRICS", "SimilarityScore", "kl_divergence", "model_line_error", "probe_configs", "rank_platforms"]

METRICS = ("kl", "spearman", "models")


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
    model_error: float | None = None  # leave-one-out relative error of a line through whole-model predictions

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


def model_line_error(predicted_ms: Any, measured_ms: Any) -> float:
    """Leave-one-out mean relative error of ``measured ≈ a · predicted + b`` (least squares on relative
    residuals) over whole models: how well one platform's model predictions explain another's."""
    from moonlit.litepred.predict.calibration import fit_overhead

    p, m = np.asarray(predicted_ms, dtype=np.float64), np.asarray(measured_ms, dtype=np.float64)
    if p.shape != m.shape or p.ndim != 1 or len(p) < 3:
        raise ValueError(f"predicted {p.shape} and measured {m.shape} must be 1-D, of one length, >= 3 models")
    errors = []
    for i in range(len(m)):
        keep = np.arange(len(m)) != i
        line = fit_overhead(p[keep], m[keep], min_models=2)
        errors.append(abs(line.slope * p[i] + line.intercept - m[i]) / m[i])
    return float(np.mean(errors))


def rank_platforms(predictors: Mapping[str, PlatformPredictor], configs: Sequence[KernelConfig], measured_ms: Any,
                   metric: str = "kl", model_errors: Mapping[str, float] | None = None) -> list[SimilarityScore]:
    """Score every platform on the probe (``configs`` measured as ``measured_ms``); most similar first.

    ``model_errors`` (platform → :func:`model_line_error` on whole models measured on the target) is
    recorded with each score, and ``metric="models"`` ranks by it.
    """
    if metric not in METRICS:
        raise ValueError(f"metric = {metric!r}; expected one of {METRICS}")
    if metric == "models" and not model_errors:
        raise ValueError("similarity metric 'models' needs whole models measured on the target (model_errors)")
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
                                      float(np.median(m / p)), (model_errors or {}).get(name)))
    if metric == "models":
        return sorted(scores, key=lambda s: (np.inf if s.model_error is None else s.model_error, s.platform))
    if metric == "kl":
        return sorted(scores, key=lambda s: (s.kl, s.platform))  # ascending: smallest divergence first
    return sorted(scores, key=lambda s: (-s.spearman, s.platform))  # descending: highest correlation first
