"""From a sum of isolated kernels to a whole model's latency: the overhead term (LitePred, NSDI'24, Sec. 4).

The reference predicts a model as the plain sum of its kernels. Profiled alone, a kernel pays for
things a whole model does not (cold caches, its own call, on INT8 its own Quantize/Dequantize pair)
and misses some it does (layout changes ORT schedules differently inside a graph). We correct the
sum with a fit on a few measured whole models:

* :func:`fit_overhead` — ``model_ms = a · Σ kernels + b`` with ``a, b >= 0`` (one line per platform);
* :func:`fit_type_scales` — ``model_ms = a · Σ_t r_t · Σ_{kernels of type t} + b``: one factor per
  kernel type, ridge-regularized towards 1 with the strength chosen by leave-one-out
  cross-validation, so a handful of calibration models gives (nearly) the one-line fit and more
  models let the types that are mis-timed in isolation (on ort-fp32 the ViT layout and attention
  kernels: ElasticViT-like models were under-predicted by ~20% with one line) move on their own.

Both minimize squared *relative* residuals by default (weights 1/measured²): the ±k% metric is
relative and model latencies span two orders of magnitude.

A third correction is per kernel, not per model: a kernel profiled alone is timed in bursts, with its
weights in cache; inside a model every weight is read from memory once per inference. A kernel with
many weights and little work per weight (a Linear on the 4 tokens of a small ViT stage) is bound by
that read, so inside a model it takes at least ``weight_ms_per_mparam · (its parameters, millions)``.
The rate is one number per platform, chosen from :data:`WEIGHT_RATE_GRID` by the leave-one-out error of
the rest of the fit (``PlatformPredictor.calibrate``). Measured here: a searched ElasticViT subnet at
128 px with 23 M parameters ran 6.5 ms while its hot kernels summed to 4.4 ms.

A fourth is a per-kernel offset: a kernel compiled and called as a model of its own pays a fixed cost
per call that the same kernel inside a model does not (OpenVINO: the inference request and the layout
reorders or precision converts at the kernel's ends). Summed over a model's kernels this grows with
the kernel count, not with the work, so no factor on the sum removes it: small-kernel models are
over-predicted and big-kernel ones under-predicted. Inside a model a kernel takes
``max(isolated − kernel_offset_ms, OFFSET_KEEP · isolated)``; the offset is chosen from
:data:`KERNEL_OFFSET_GRID` with the weight rate, by the leave-one-out error of the fit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Overhead", "fit_overhead", "fit_type_scales", "KERNEL_OFFSET_GRID", "OFFSET_KEEP", "RIDGE_GRID",
           "SCALE_BOUNDS", "WEIGHT_RATE_GRID"]

# Ridge strengths tried by leave-one-out (relative to each type's own curvature, so scale-free).
RIDGE_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)
# A type's factor stays within these: beyond them the fit is explaining noise, not a timing bias.
SCALE_BOUNDS = (0.5, 2.0)
# ms per million weights read inside a model (0: kernels as timed alone). FP32 weights at 4 bytes and
# ~10-40 GB/s of memory bandwidth give 0.1-0.4; INT8 at 1 byte a quarter of that.
WEIGHT_RATE_GRID = (0.0, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6)
# ms a kernel timed alone pays per call beyond what it costs inside a model (0: none).
KERNEL_OFFSET_GRID = (0.0, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.15, 0.2)
# the share of its isolated time a kernel keeps at least, whatever the offset (no kernel is free)
OFFSET_KEEP = 0.1


@dataclass(frozen=True)
class Overhead:
    """``model_ms = slope · Σ_t type_scales[t] · (sum of type t's kernels) + intercept``.

    ``fitted`` is False for the fallback (1, 0); a type missing from ``type_scales`` has factor 1.
    """

    slope: float = 1.0
    intercept: float = 0.0
    n_models: int = 0
    fitted: bool = False
    weighting: str = "relative"
    type_scales: Mapping[str, float] = field(default_factory=dict)
    ridge: float | None = None  # the chosen ridge strength (None: one-line fit)
    weight_ms_per_mparam: float = 0.0  # a kernel in a model takes >= this x its parameters (millions)
    kernel_offset_ms: float = 0.0  # a kernel in a model takes its isolated time less this (>= OFFSET_KEEP of it)
    cv_error: float | None = None  # leave-one-out mean relative error of the fit (per-type fits)

    def scale(self, kernel_type: str) -> float:
        return float(self.type_scales.get(kernel_type, 1.0))

    def apply(self, kernel_sums: Any) -> np.ndarray:
        """Calibrate per-model sums that already carry the type factors (see ``PlatformPredictor``)."""
        return self.slope * np.asarray(kernel_sums, dtype=np.float64) + self.intercept


def _check(s: np.ndarray, m: np.ndarray, weighting: str, min_models: int) -> None:
    if len(s) != len(m) or m.ndim != 1:
        raise ValueError(f"kernel sums for {len(s)} models and measured_ms of shape {m.shape}; "
                         "expected one measured latency per model")
    if np.any(~np.isfinite(s)) or np.any(~(np.isfinite(m) & (m > 0))):
        raise ValueError("kernel sums must be finite and measured_ms finite and > 0")
    if weighting not in ("relative", "absolute"):
        raise ValueError(f"weighting = {weighting!r}; expected 'relative' or 'absolute'")
    if min_models < 2:
        raise ValueError(f"min_models = {min_models}; expected >= 2 (two parameters are fitted)")


def _weights(m: np.ndarray, weighting: str) -> np.ndarray:
    return 1.0 / m**2 if weighting == "relative" else np.ones_like(m)


def _line(s: np.ndarray, m: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted least squares ``m ≈ a s + b`` with ``a >= 0`` and ``b >= 0``; no spread in ``s`` → through the origin.

    Both bounds are physical: a model cannot get faster as its kernels get slower (``a``), and a
    whole model cannot cost less than its kernels by a fixed amount (``b``: a negative intercept
    predicts tiny models at negative latency). When the unconstrained optimum breaks a bound, the
    constrained one (a two-variable non-negative least squares) lies on the edge ``a = 0`` or
    ``b = 0``; the better of the two is taken.
    """
    sw, mw = np.sum(w * s) / w.sum(), np.sum(w * m) / w.sum()
    var = np.sum(w * (s - sw) ** 2)
    through_origin = (float(np.sum(w * s * m) / np.sum(w * s * s)), 0.0) if np.sum(w * s * s) > 0 else (0.0, float(mw))
    if var <= 1e-12 * max(np.sum(w * s**2), 1e-300):
        return through_origin
    slope = float(np.sum(w * (s - sw) * (m - mw)) / var)
    intercept = float(mw - slope * sw)
    if slope >= 0 and intercept >= 0:
        return slope, intercept
    edges = [(0.0, float(mw)), through_origin]  # a = 0 (b = weighted mean), b = 0 (a >= 0 as s, m >= 0)
    return min(edges, key=lambda ab: float(np.sum(w * (m - ab[0] * s - ab[1]) ** 2)))


def fit_overhead(kernel_sums: Any, measured_ms: Any, min_models: int = 5, weighting: str = "relative") -> Overhead:
    """Least-squares fit of ``measured ≈ a · sum + b`` with ``a >= 0`` and ``b >= 0``.

    ``weighting="relative"`` minimizes squared relative residuals, ``"absolute"`` plain ones. Fewer
    than ``min_models`` pairs give the fallback (1, 0); sums that are all equal give a fit through
    the origin (b = 0).
    """
    s = np.asarray(kernel_sums, dtype=np.float64)
    m = np.asarray(measured_ms, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"kernel_sums has shape {s.shape}; expected 1-D (one sum per model)")
    _check(s, m, weighting, min_models)
    if len(s) < min_models:
        return Overhead(1.0, 0.0, int(len(s)), False, weighting)
    slope, intercept = _line(s, m, _weights(m, weighting))
    return Overhead(slope, intercept, int(len(s)), True, weighting)


def _ridge_scales(S: np.ndarray, m: np.ndarray, w: np.ndarray, ridge: float) -> tuple[np.ndarray, float, float]:
    """Joint weighted ridge fit of ``m ≈ Σ_t c_t S_t + b`` with each c_t pulled towards the one-line
    slope a; returns (r = c / a clipped to :data:`SCALE_BOUNDS`, a, b refitted after clipping)."""
    a, b = _line(S.sum(1), m, w)
    if a <= 0:
        return np.ones(S.shape[1]), a, b
    A = np.c_[S, np.ones(len(m))]
    gram = A.T @ (w[:, None] * A)
    penalty = np.zeros(len(gram))
    penalty[:-1] = ridge * np.maximum(np.diag(gram)[:-1], 1e-300)  # per type: scale-free in its own units
    prior = np.r_[np.full(S.shape[1], a), 0.0]
    theta = np.linalg.solve(gram + np.diag(penalty), A.T @ (w * m) + penalty * prior)
    r = np.clip(theta[:-1] / a, *SCALE_BOUNDS)
    b = max(0.0, float(np.sum(w * (m - a * S @ r)) / w.sum()))  # the best b >= 0 for these factors
    return r, a, b


def fit_type_scales(sums_by_type: Any, measured_ms: Any, kernel_types: Sequence[str], *, min_models: int = 5,
                    weighting: str = "relative", ridge: float | str = "cv",
                    ridge_grid: Sequence[float] = RIDGE_GRID) -> Overhead:
    """Fit ``measured ≈ a · Σ_t r_t S_t + b`` on ``sums_by_type`` (models × types, unscaled kernel sums).

    ``ridge="cv"`` picks the ridge strength from ``ridge_grid`` by leave-one-out relative error (the
    one-line fit, i.e. all r_t = 1, competes as strength ∞); a number fixes it. Types whose
    column is zero for every model keep r_t = 1. Fewer than ``min_models`` models: the fallback.
    """
    S = np.asarray(sums_by_type, dtype=np.float64)
    m = np.asarray(measured_ms, dtype=np.float64)
    if S.ndim != 2 or S.shape[1] != len(kernel_types):
        raise ValueError(f"sums_by_type has shape {S.shape}; expected (models, {len(kernel_types)} kernel types)")
    _check(S, m, weighting, min_models)
    if len(m) < min_models:
        return Overhead(1.0, 0.0, int(len(m)), False, weighting)
    w = _weights(m, weighting)
    used = np.flatnonzero(np.any(S != 0, axis=0))
    Su = S[:, used]

    def predict_left_out(strength: float) -> np.ndarray:
        out = np.empty(len(m))
        for i in range(len(m)):
            keep = np.arange(len(m)) != i
            if np.isinf(strength):
                a, b = _line(Su[keep].sum(1), m[keep], w[keep])
                out[i] = a * Su[i].sum() + b
            else:
                r, a, b = _ridge_scales(Su[keep], m[keep], w[keep], strength)
                out[i] = a * Su[i] @ r + b
        return out

    if ridge == "cv":
        candidates = [*map(float, ridge_grid), np.inf]
        errors = [float(np.mean(np.abs(predict_left_out(c) - m) / m)) for c in candidates]
        strength, cv_error = candidates[int(np.argmin(errors))], min(errors)
    elif isinstance(ridge, (int, float)) and ridge > 0:
        strength = float(ridge)
        cv_error = float(np.mean(np.abs(predict_left_out(strength) - m) / m))
    else:
        raise ValueError(f"ridge = {ridge!r}; expected 'cv' or a positive number")
    if np.isinf(strength):
        a, b = _line(Su.sum(1), m, w)
        return Overhead(a, b, int(len(m)), True, weighting, {}, None, cv_error=cv_error)
    r, a, b = _ridge_scales(Su, m, w, strength)
    scales = {kernel_types[j]: float(r[k]) for k, j in enumerate(used)}
    return Overhead(a, b, int(len(m)), True, weighting, scales, strength, cv_error=cv_error)
