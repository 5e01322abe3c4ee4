"""Adapting a platform's predictors to a new platform from a few profiled kernels (LitePred, NSDI'24, Sec. 5).

LitePred's point is that a new platform needs minutes of profiling, not days: take the predictor
of the most similar platform in the knowledge pool (:mod:`.similarity`) and fine-tune it on a few
hundred kernels profiled on the target. :func:`adapt_predictor` builds a target
:class:`~moonlit.litepred.predict.predictor.PlatformPredictor` from a source one and per-type target data
``{kernel type: (X, y)}`` by one of these methods (all compared in the transfer experiment):

``fine-tune``  the paper's method. MLP regressors are fine-tuned (all layers, Adam, a learning
               rate 10× below training, early stopping when there is enough data). Tree ensembles
               cannot be fine-tuned, so they are *boosted* instead: the target's log-latency
               residual from the source is modelled by a per-type offset (shrunk towards the
               platform-wide offset when a type has few rows) plus, with enough rows, a small
               GBDT on the features — the source's trees are the prior, the new trees the
               correction (:class:`ResidualRegressor`).
``residual``   the boosting above for every type, MLP or not.
``affine``     ``log y = α + β · log source(x)``, one (α, β) for the whole platform: the source
               rescaled, nothing learnt per type.
``scratch``    new GBDT regressors trained on the target rows alone (the baseline that transfer
               must beat at the same budget); a type with too few rows gets the FLOPs-linear fit.
``flops-linear`` ``latency = a_t · MACs + c_t`` per type (non-negative least squares); types
               without MACs (activations, layout) are a constant: the roofline-free baseline.
``source``     the source predictor unchanged (budget 0).

Types the target has data for but the source lacks are trained from scratch; types the source
has but the target data lacks keep the source regressor with the platform-wide offset.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from moonlit.litepred.predict.calibration import Overhead
from moonlit.litepred.predict.forest import ForestRegressor
from moonlit.litepred.predict.mlp import MLPRegressor
from moonlit.litepred.predict.predictor import PlatformPredictor
from moonlit.litepred.predict.regressors import (
    ARRAYS_FILE,
    FORMAT,
    META_FILE,
    SCHEMA_VERSION,
    FeatureTransform,
    Regressor,
    _check_xy,
)

__all__ = ["METHODS", "LinearRegressor", "ResidualRegressor", "adapt_predictor", "flops_linear_regressor",
           "fit_log_affine"]

METHODS = ("fine-tune", "residual", "affine", "scratch", "flops-linear", "source")
# Rows a type needs before its own residual trees / its own scratch regressor are fitted; below it
# the per-type offset (shrunk) or the FLOPs-linear fit carries the type. Chosen so a 100-kernel
# budget over ~12 types (8 rows each) stays in the offset regime, where variance is lowest.
MIN_ROWS_FOR_TREES = 20
# Shrinkage of a type's log offset towards the platform's: weight n / (n + SHRINK_ROWS).
SHRINK_ROWS = 5.0
CORRECTION_GBDT = {"n_estimators": 60, "max_depth": 2, "learning_rate": 0.1, "subsample": 1.0}


def _identity_transform(feature_names: Sequence[str]) -> FeatureTransform:
    n = len(feature_names)
    return FeatureTransform(feature_names, np.zeros(n), np.zeros(n), np.ones(n))


class ResidualRegressor(Regressor):
    """``log ŷ = offset + power · log base(x) + log correction(x)``: a source regressor adapted to a target."""

    kind = "residual"

    def __init__(self, base: Regressor, offset: float = 0.0, power: float = 1.0,
                 correction: Regressor | None = None, method: str = "residual"):
        super().__init__("log", None)
        self.base, self.offset, self.power, self.correction, self.method = base, float(offset), float(power), correction, method
        self.transform = base.transform

    def hyperparameters(self) -> dict[str, Any]:
        return {"offset": self.offset, "power": self.power, "method": self.method,
                "correction": self.correction is not None}

    def predict(self, X: Any) -> np.ndarray:
        X, _ = _check_xy(X, None, len(self.feature_names))
        log_pred = self.offset + self.power * np.log(np.maximum(self.base.predict(X), 1e-9))
        if self.correction is not None:
            log_pred += np.log(self.correction.predict(X))
        return np.exp(log_pred)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        self.base.save(path / "base")
        if self.correction is not None:
            self.correction.save(path / "correction")
        meta = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "kind": self.kind,
                "feature_names": self.feature_names, "target": self.target, "log_features": None,
                "hyperparameters": self.hyperparameters(), "training": self.training}
        arrays = {"offset": np.array([self.offset]), "power": np.array([self.power])}
        tmp = path / f".{ARRAYS_FILE}.tmp-{os.getpid()}"
        save_file(arrays, str(tmp), metadata={"format": FORMAT})
        os.replace(tmp, path / ARRAYS_FILE)
        tmp = path / f".{META_FILE}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8")
        os.replace(tmp, path / META_FILE)
        return path

    @classmethod
    def _load_dir(cls, path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> ResidualRegressor:
        from moonlit.litepred.predict.regressors import load_regressor

        hp = meta["hyperparameters"]
        base = load_regressor(path / "base", meta["feature_names"])
        correction = load_regressor(path / "correction", meta["feature_names"]) if hp["correction"] else None
        reg = cls(base, float(arrays["offset"][0]), float(arrays["power"][0]), correction, hp.get("method", "residual"))
        reg.training = meta["training"]
        return reg


class LinearRegressor(Regressor):
    """``ŷ = max(Σ_j coef_j · x_j + intercept, floor)`` on raw feature columns (non-negative fit)."""

    kind = "linear"

    def __init__(self, columns: Sequence[str] = (), floor: float = 1e-4):
        super().__init__("raw", None)
        self.columns, self.floor = list(columns), float(floor)
        self.coef = np.zeros(len(self.columns))
        self.intercept = 0.0

    def hyperparameters(self) -> dict[str, Any]:
        return {"columns": self.columns, "floor": self.floor}

    def fit(self, X: Any, y: Any, feature_names: Sequence[str]) -> LinearRegressor:
        from scipy.optimize import nnls

        X, y = _check_xy(X, y, len(feature_names))
        missing = sorted(set(self.columns) - set(feature_names))
        if missing:
            raise ValueError(f"columns {missing} are not among the feature names {list(feature_names)}")
        self.transform = _identity_transform(feature_names)
        idx = [list(feature_names).index(c) for c in self.columns]
        A = np.c_[X[:, idx], np.ones(len(y))]
        w = 1.0 / y  # relative residuals, as the ±k% metric
        solution, _ = nnls(A * w[:, None], y * w)
        self.coef, self.intercept = solution[:-1], float(solution[-1])
        self.training = {"fit": {"n_train": int(len(y))}, "target_range": [float(y.min()), float(y.max())]}
        return self

    def predict(self, X: Any) -> np.ndarray:
        X, _ = _check_xy(X, None, len(self.feature_names))
        idx = [self.feature_names.index(c) for c in self.columns]
        return np.maximum(X[:, idx] @ self.coef + self.intercept, self.floor)

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"coef": np.asarray(self.coef, dtype=np.float64), "intercept": np.array([self.intercept])}

    @classmethod
    def _from_saved(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> LinearRegressor:
        hp = meta["hyperparameters"]
        reg = cls(hp["columns"], hp["floor"])
        reg.coef, reg.intercept = arrays["coef"], float(arrays["intercept"][0])
        return reg


def flops_linear_regressor(X: Any, y: Any, feature_names: Sequence[str]) -> LinearRegressor:
    """``a · MACs + c`` on the type's ``macs_m`` column, a constant for types without one."""
    columns = ["macs_m"] if "macs_m" in feature_names else []
    return LinearRegressor(columns).fit(X, y, feature_names)


def fit_log_affine(pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least squares ``log y = α + β log pred``; with fewer than 3 rows or no spread, β = 1."""
    lp, ly = np.log(np.maximum(pred, 1e-9)), np.log(y)
    if len(y) >= 3 and np.var(lp) > 1e-12:
        beta, alpha = np.polyfit(lp, ly, 1)
        return float(alpha), float(beta)
    return float(np.mean(ly - lp)) if len(y) else 0.0, 1.0


def _scratch(X: np.ndarray, y: np.ndarray, names: Sequence[str], seed: int) -> Regressor:
    if len(y) >= MIN_ROWS_FOR_TREES:
        return ForestRegressor(kind="gbdt", seed=seed).fit(X, y, names)
    return flops_linear_regressor(X, y, names)


def _residual(source: Regressor, X: np.ndarray, y: np.ndarray, platform_offset: float, seed: int,
              method: str) -> ResidualRegressor:
    log_ratio = np.log(y) - np.log(np.maximum(source.predict(X), 1e-9))
    weight = len(y) / (len(y) + SHRINK_ROWS)
    offset = weight * float(np.mean(log_ratio)) + (1 - weight) * platform_offset
    correction = None
    if len(y) >= MIN_ROWS_FOR_TREES:
        remaining = log_ratio - offset
        correction = ForestRegressor(kind="gbdt", seed=seed, **CORRECTION_GBDT).fit(X, np.exp(remaining),
                                                                                    source.feature_names)
    return ResidualRegressor(source, offset, 1.0, correction, method)


def _fine_tune_mlp(source: MLPRegressor, X: np.ndarray, y: np.ndarray, lr: float, epochs: int,
                   seed: int) -> MLPRegressor:
    tuned = copy.deepcopy(source)
    val_fraction = 0.2 if len(y) >= 2 * MIN_ROWS_FOR_TREES else 0.0
    tuned.fine_tune(X, y, lr=lr, epochs=epochs, val_fraction=val_fraction, patience=max(10, epochs // 5), seed=seed)
    return tuned


def adapt_predictor(source: PlatformPredictor | None, target_data: Mapping[str, tuple[Any, Any]], method: str,
                    *, feature_names: Mapping[str, Sequence[str]], platform: Mapping[str, Any] | None = None,
                    lr: float = 1e-4, epochs: int = 200, seed: int = 0) -> PlatformPredictor:
    """A target predictor from ``source`` and ``target_data = {kernel type: (X, y)}`` by ``method`` (see module doc).

    ``feature_names[type]`` names the columns of the type's X. The source's overhead term is kept
    (re-fit it with target models via ``PlatformPredictor.calibrate`` when some are measured).
    Returns a new predictor; ``platform["transfer"]`` records what was done per type.
    """
    if method not in METHODS:
        raise ValueError(f"method = {method!r}; expected one of {METHODS}")
    if source is None and method not in ("scratch", "flops-linear"):
        raise ValueError(f"method {method!r} needs a source predictor; only 'scratch' and 'flops-linear' do not")
    data = {t: _check_xy(X, y, len(feature_names[t])) for t, (X, y) in target_data.items() if len(y)}
    report: dict[str, str] = {}
    regressors: dict[str, Regressor] = {}
    # Platform-wide log offset of the target from the source: the fallback for types without data.
    platform_offset, alpha, beta = 0.0, 0.0, 1.0
    if source is not None and method not in ("scratch", "flops-linear"):
        shared = [t for t in data if t in source.regressors]
        if shared:
            pred = np.concatenate([source.predict_kernels(t, data[t][0]) for t in shared])
            y_all = np.concatenate([data[t][1] for t in shared])
            platform_offset = float(np.median(np.log(y_all) - np.log(np.maximum(pred, 1e-9))))
            if method == "affine":
                alpha, beta = fit_log_affine(pred, y_all)
    types = sorted(set(data) | (set(source.regressors) if source is not None else set()))
    for t in types:
        X, y = data.get(t, (None, None))
        src = source.regressors.get(t) if source is not None else None
        if method == "flops-linear" or (method == "scratch" and X is not None):
            if X is None:
                continue
            regressors[t] = flops_linear_regressor(X, y, feature_names[t]) if method == "flops-linear" \
                else _scratch(X, y, feature_names[t], seed)
            report[t] = f"{regressors[t].kind} on {len(y)} target rows"
        elif method == "scratch":
            continue  # no target rows: scratch has nothing for this type
        elif src is None:
            regressors[t] = _scratch(X, y, feature_names[t], seed)
            report[t] = f"not in the source: {regressors[t].kind} on {len(y)} target rows"
        elif method == "source":
            regressors[t] = src
            report[t] = "source unchanged"
        elif method == "affine":
            regressors[t] = ResidualRegressor(src, alpha, beta, None, "affine")
            report[t] = f"affine (platform α={alpha:.3f}, β={beta:.3f})"
        elif X is None:
            regressors[t] = ResidualRegressor(src, platform_offset, 1.0, None, "platform-offset")
            report[t] = f"no target rows: source × exp({platform_offset:.3f})"
        elif method == "fine-tune" and isinstance(src, MLPRegressor):
            regressors[t] = _fine_tune_mlp(src, X, y, lr, epochs, seed)
            report[t] = f"MLP fine-tuned on {len(y)} rows (lr {lr}, {epochs} epochs)"
        else:
            regressors[t] = _residual(src, X, y, platform_offset, seed, method)
            kind = "offset + residual GBDT" if regressors[t].correction is not None else "shrunk offset"
            report[t] = f"{kind} on {len(y)} rows"
    if not regressors:
        raise ValueError("no kernel type could be predicted: the target data is empty and there is no source")
    meta = {**dict(platform or {}), "transfer": {"method": method, "source": source.platform.get("name") if source
                                                  else None, "types": report,
                                                  "target_rows": {t: int(len(v[1])) for t, v in data.items()}}}
    keep_overhead = source is not None and method not in ("scratch", "flops-linear")
    return PlatformPredictor(regressors, meta, source.overhead if keep_overhead else Overhead())
