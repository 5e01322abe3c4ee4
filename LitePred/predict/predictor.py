"""A platform's latency predictor: per-kernel regressors summed, plus an overhead term (LitePred, NSDI'24, Sec. 4).

The reference predicts a model's latency as the sum of its kernels' predicted latencies. Isolated
kernels overshoot whole models by ~10% on our CPUs (fusion, caches, per-call overhead), so we add
a per-platform linear calibration ``model_ms = a * sum + b`` fitted on a few measured models, or
one factor per kernel type on top of it (:mod:`moonlit.litepred.predict.calibration`); with too few models
it falls back to the plain sum (a = 1, b = 0).

:func:`select_regressor` trains candidate regressors (the reference's MLP, nn-Meter's random
forest, ...) on one split and keeps the one with the best held-out ±10% accuracy (MAPE breaks
ties). :meth:`PlatformPredictor.predict_models` is the batch mode for NAS: rows of each kernel type
from all models are concatenated, predicted in one call and summed back per model with
``np.bincount``.

Every latency this module returns, per kernel and per model, passes through :func:`floor_latency`:
at least :data:`MIN_LATENCY_MS` and finite, so no regressor extrapolation or calibration line can
report a zero, negative or infinite latency.

On disk: ``<dir>/platform.json`` (format, schema version, platform metadata, overhead, the kernel
types and their subfolders) and ``<dir>/kernels/<type>/`` holding each saved regressor.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from moonlit.common.errors import InputError
from moonlit.litepred.predict.calibration import OFFSET_KEEP, Overhead, fit_overhead, fit_type_scales
from moonlit.litepred.predict.metrics import accuracy_report
from moonlit.litepred.predict.regressors import (
    ForestRegressor,
    MLPRegressor,
    Regressor,
    RegressorFormatError,
    load_regressor,
)

__all__ = [
    "DEFAULT_REGRESSOR",
    "MIN_LATENCY_MS",
    "Overhead",
    "PlatformPredictor",
    "fit_overhead",
    "floor_latency",
    "make_regressor",
    "select_regressor",
]

FORMAT = "moonlit-litepred-platform"
SCHEMA_VERSION = 1
PLATFORM_FILE = "platform.json"
# Chosen by select_regressor on 2000 conv-relu kernels profiled with ORT FP32 (1 thread), 5 random
# 80/20 splits: held-out ±10% accuracy GBDT 67.2%, MLP 63.7%, random forest 55.2% (the noise
# ceiling was 99%: the gap is model error on random channel counts); GBDT also fits ~2.5x faster.
# The MLP stays the choice for cross-platform fine-tuning (forests cannot be).
DEFAULT_REGRESSOR = "forest"  # ForestRegressor's default kind is "gbdt"
REGRESSOR_NAMES = ("mlp", "forest", "random_forest", "extra_trees", "gbdt")
# The smallest latency a prediction reports: 1 µs, below the per-call cost of any runtime we time
# (a one-element Add through onnxruntime takes ~5 µs here), so it only replaces values that are
# impossible (<= 0), never a plausible one.
MIN_LATENCY_MS = 1e-3


def floor_latency(values: Any, what: str = "prediction") -> np.ndarray:
    """``max(values, MIN_LATENCY_MS)``; a NaN or infinite value is a ``ValueError`` naming ``what``
    (features outside anything a regressor was fitted on), never a silent number."""
    values = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise InputError(f"{what}: {int(bad.sum())} of {values.size} latencies are not finite "
                         f"(e.g. {values[bad].flat[0]}); expected finite predictions")
    return np.maximum(values, MIN_LATENCY_MS)


def make_regressor(name: str = DEFAULT_REGRESSOR, **options: Any) -> Regressor:
    """An unfitted regressor: ``"mlp"``, ``"forest"`` (GBDT, or ``kind=`` in options), or a tree
    ensemble kind by name (``"random_forest"``, ``"extra_trees"``, ``"gbdt"``)."""
    if name == "mlp":
        return MLPRegressor(**options)
    if name == "forest":
        return ForestRegressor(**options)
    if name in ("random_forest", "extra_trees", "gbdt"):
        return ForestRegressor(name, **options)
    raise ValueError(f"regressor {name!r} is unknown; expected one of {REGRESSOR_NAMES}")


def select_regressor(X: Any, y: Any, feature_names: Sequence[str], candidates: Sequence[str] = ("forest", "mlp"), *,
                     holdout_fraction: float = 0.2, seed: int = 0,
                     options: Mapping[str, Mapping[str, Any]] | None = None,
                     refit: bool = False) -> tuple[Regressor, dict[str, Any]]:
    """Train each candidate on a train split, compare on a held-out split, return the best.

    Ranking: held-out ±10% accuracy, then lower MAPE. ``options[name]`` holds a candidate's
    constructor options. ``refit=True`` retrains the winner on all rows (the comparison still
    describes the held-out evaluation). Returns ``(regressor, comparison)`` where comparison is
    ``{"selected", "n_train", "n_holdout", "candidates": {name: accuracy_report + fit_seconds}}``.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if not candidates:
        raise ValueError("candidates is empty; expected names such as ('forest', 'mlp')")
    if len(set(candidates)) != len(candidates):
        raise ValueError(f"candidates {list(candidates)} hold duplicates")
    options = dict(options or {})
    unused = sorted(set(options) - set(candidates))
    if unused:
        raise ValueError(f"options given for {unused}, which are not among the candidates {list(candidates)}")
    n_holdout = int(round(len(y) * holdout_fraction))
    if not 0 < n_holdout < len(y):
        raise ValueError(f"holdout_fraction {holdout_fraction} of {len(y)} rows leaves {n_holdout} held-out rows; "
                         "expected at least one row on each side")
    order = np.random.default_rng(seed).permutation(len(y))
    train, holdout = np.sort(order[n_holdout:]), np.sort(order[:n_holdout])
    fitted: dict[str, Regressor] = {}
    reports: dict[str, dict[str, Any]] = {}
    for name in candidates:
        start = time.perf_counter()
        fitted[name] = make_regressor(name, **options.get(name, {})).fit(X[train], y[train], feature_names)
        fit_seconds = time.perf_counter() - start
        reports[name] = {**accuracy_report(fitted[name].predict(X[holdout]), y[holdout]), "fit_seconds": fit_seconds}
    best = max(candidates, key=lambda n: (reports[n]["within_10pct"], -reports[n]["mape"]))
    regressor = fitted[best]
    if refit:
        regressor = make_regressor(best, **options.get(best, {})).fit(X, y, feature_names)
    comparison = {"selected": best, "n_train": int(len(train)), "n_holdout": int(n_holdout), "refit": bool(refit),
                  "candidates": reports}
    return regressor, comparison


@functools.lru_cache(maxsize=None)
def _params_column(kernel_type: str) -> int | None:
    """Index of ``params_m`` in a kernel type's feature vector (None: the type has no weights feature)."""
    from moonlit.litepred.predict.features import feature_names

    try:
        return feature_names(kernel_type).index("params_m")
    except (KeyError, ValueError):
        return None


ModelKernels = Mapping[str, Any]  # {kernel_type: (rows, features) array} for one model


class PlatformPredictor:
    """Per-kernel-type regressors of one platform, summed per model and calibrated by :class:`Overhead`."""

    def __init__(self, regressors: Mapping[str, Regressor], platform: Mapping[str, Any] | None = None,
                 overhead: Overhead | None = None):
        if not regressors:
            raise ValueError("regressors is empty; expected {kernel_type: fitted regressor}")
        self.regressors = dict(regressors)
        self.platform = dict(platform or {})
        self.overhead = overhead or Overhead()

    @classmethod
    def train(cls, datasets: Mapping[str, tuple[Any, Any, Sequence[str]]], regressor: str = DEFAULT_REGRESSOR,
              options: Mapping[str, Any] | None = None, platform: Mapping[str, Any] | None = None,
              seed: int = 0) -> PlatformPredictor:
        """Fit one regressor per kernel type from ``{kernel_type: (X, y, feature_names)}``.

        ``regressor``: a :func:`make_regressor` name with constructor ``options``, or ``"select"``
        to run :func:`select_regressor` (``options`` passed through as its keyword arguments, with
        ``refit=True`` by default) per type; the comparisons are kept in ``platform["selection"]``.
        """
        options = dict(options or {})
        platform = dict(platform or {})
        regs: dict[str, Regressor] = {}
        for kernel_type, (X, y, names) in datasets.items():
            if regressor == "select":
                kwargs = {"seed": seed, "refit": True, **options}
                regs[kernel_type], comparison = select_regressor(X, y, names, **kwargs)
                platform.setdefault("selection", {})[kernel_type] = comparison
            else:
                regs[kernel_type] = make_regressor(regressor, **options).fit(X, y, names)
        return cls(regs, platform)

    @property
    def kernel_types(self) -> list[str]:
        return sorted(self.regressors)

    @property
    def rules(self) -> str:
        """The fusion rules its kernels were detected under: ``platform["rules"]``, else ``platform["name"]``.

        Every caller that detects kernels for this predictor uses this one choice.
        """
        rules = self.platform.get("rules") or self.platform.get("name")
        if not rules:
            raise InputError(f"the predictor's platform metadata {sorted(self.platform)} records neither 'rules' nor "
                             "'name'; expected one of them (or pass the fusion rules explicitly)")
        return str(rules)

    def _regressor(self, kernel_type: str) -> Regressor:
        try:
            return self.regressors[kernel_type]
        except KeyError:
            raise ValueError(f"kernel type {kernel_type!r} has no predictor on platform "
                             f"{self.platform.get('name', '?')!r}; known types: {self.kernel_types}") from None

    def predict_kernels(self, kernel_type: str, X: Any) -> np.ndarray:
        """Latency (ms) of each kernel row of one type (at least :data:`MIN_LATENCY_MS`)."""
        return floor_latency(self._regressor(kernel_type).predict(X), f"kernels of type {kernel_type!r}")

    def _weight_floor(self, kernel_type: str, X: np.ndarray, pred: np.ndarray, rate: float,
                      offset: float = 0.0) -> np.ndarray:
        """``pred`` less the per-call ``offset`` (keeping at least ``OFFSET_KEEP`` of it), then
        ``max(·, rate · params_m)`` for types whose features hold their parameter count."""
        if offset > 0:
            pred = np.maximum(pred - offset, OFFSET_KEEP * pred)
        column = _params_column(kernel_type)
        if rate <= 0 or column is None:
            return pred
        return np.maximum(pred, rate * X[:, column])

    def kernel_sums_flat(self, rows: Mapping[str, tuple[Any, Any]], n_models: int,
                         deduplicate: bool = True, by_type: bool = False,
                         weight_rate: float | None = None, kernel_offset: float | None = None) -> np.ndarray:
        """Per-model sums of kernel predictions from ``{kernel_type: (X rows, model index per row)}``.

        Each type's predictions carry the overhead's per-type factor; ``by_type=True`` returns the
        unscaled sums as a (models × :attr:`kernel_types`) matrix instead (what calibration fits).
        ``deduplicate`` predicts each distinct row once (NAS batches repeat kernel configs a lot).
        Each kernel takes at least ``weight_rate`` ms per million parameters (default: the overhead's
        ``weight_ms_per_mparam``; see :mod:`moonlit.litepred.predict.calibration`), after the per-call offset
        ``kernel_offset`` (default: the overhead's ``kernel_offset_ms``) is taken off.
        """
        types = self.kernel_types
        rate = self.overhead.weight_ms_per_mparam if weight_rate is None else weight_rate
        offset = self.overhead.kernel_offset_ms if kernel_offset is None else kernel_offset
        sums = np.zeros((n_models, len(types))) if by_type else np.zeros(n_models)
        for kernel_type, (X, model_index) in rows.items():
            reg = self._regressor(kernel_type)
            X = np.asarray(X, dtype=np.float64)
            model_index = np.asarray(model_index, dtype=np.int64)
            if X.ndim != 2 or len(X) != len(model_index):
                raise ValueError(f"{kernel_type!r}: rows of shape {X.shape} and {len(model_index)} model indices; "
                                 "expected a 2-D array with one model index per row")
            if len(model_index) == 0:
                continue
            if model_index.min() < 0 or model_index.max() >= n_models:
                raise ValueError(f"model indices of {kernel_type!r} span [{model_index.min()}, "
                                 f"{model_index.max()}]; expected them in [0, {n_models})")
            what = f"kernels of type {kernel_type!r}"
            if deduplicate:
                unique, inverse = np.unique(X, axis=0, return_inverse=True)
                pred = self._weight_floor(kernel_type, unique, floor_latency(reg.predict(unique), what),
                                          rate, offset)[inverse.reshape(-1)]
            else:
                pred = self._weight_floor(kernel_type, X, floor_latency(reg.predict(X), what), rate, offset)
            per_model = np.bincount(model_index, weights=pred, minlength=n_models)
            if by_type:
                sums[:, types.index(kernel_type)] += per_model
            else:
                sums += self.overhead.scale(kernel_type) * per_model
        return sums

    def kernel_sums(self, models: Sequence[ModelKernels], deduplicate: bool = True,
                    by_type: bool = False, weight_rate: float | None = None,
                    kernel_offset: float | None = None) -> np.ndarray:
        """Per-model sums of kernel predictions (no overhead), one batched call per kernel type.

        ``by_type``: unscaled sums per kernel type, a (models × :attr:`kernel_types`) matrix.
        """
        blocks: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        for i, model in enumerate(models):
            for kernel_type, X in model.items():
                self._regressor(kernel_type)  # fail early, naming the model's unknown type
                X = np.asarray(X, dtype=np.float64)
                if X.ndim != 2:
                    raise ValueError(f"model {i}, kernel type {kernel_type!r}: rows have shape {X.shape}; "
                                     "expected 2-D (kernels, features)")
                arrays, owners = blocks.setdefault(kernel_type, ([], []))
                arrays.append(X)
                owners.append(np.full(len(X), i, dtype=np.int64))
        rows = {t: (np.concatenate(a), np.concatenate(o)) for t, (a, o) in blocks.items()}
        return self.kernel_sums_flat(rows, len(models), deduplicate, by_type, weight_rate, kernel_offset)

    def predict_models(self, models: Sequence[ModelKernels], apply_overhead: bool = True,
                       deduplicate: bool = True) -> np.ndarray:
        """Latency (ms) of each model: calibrated sum of its kernels' predictions (batch mode), at least
        :data:`MIN_LATENCY_MS` (also for a model without predictable kernels)."""
        sums = self.kernel_sums(models, deduplicate)
        return floor_latency(self.overhead.apply(sums) if apply_overhead else sums, "model latency")

    def predict_model(self, model: ModelKernels, apply_overhead: bool = True) -> float:
        """Latency (ms) of one model."""
        return float(self.predict_models([model], apply_overhead)[0])

    def calibrate(self, models: Sequence[ModelKernels], measured_ms: Any, min_models: int = 5,
                  weighting: str = "relative", per_type: bool = False, ridge: float | str = "cv",
                  weight_rates: Sequence[float] = (0.0,), kernel_offsets: Sequence[float] = (0.0,)) -> Overhead:
        """Fit and store the overhead term from measured whole-model latencies.

        ``per_type=False``: one line ``a · Σ + b``; True: one factor per kernel type on top
        (:func:`~moonlit.litepred.predict.calibration.fit_type_scales`, ``ridge`` = its strength or "cv"),
        with the weight-read floor's rate and the per-kernel offset chosen together from ``weight_rates`` x
        ``kernel_offsets`` by leave-one-out error (ties: the smaller rate, then the smaller offset).
        """
        if per_type:
            fits = []
            for rate in weight_rates:
                for offset in kernel_offsets:
                    sums = self.kernel_sums(models, by_type=True, weight_rate=float(rate), kernel_offset=float(offset))
                    fit = fit_type_scales(sums, measured_ms, self.kernel_types, min_models=min_models,
                                          weighting=weighting, ridge=ridge)
                    fits.append(replace(fit, weight_ms_per_mparam=float(rate), kernel_offset_ms=float(offset)))
            self.overhead = min(fits, key=lambda f: (f.cv_error if f.cv_error is not None else np.inf,
                                                     f.weight_ms_per_mparam, f.kernel_offset_ms))
        else:
            self.overhead = Overhead()  # the one-line fit is on unscaled sums
            self.overhead = fit_overhead(self.kernel_sums(models), measured_ms, min_models, weighting)
        return self.overhead

    def save(self, path: str | Path) -> Path:
        """Write ``platform.json`` and one ``kernels/<type>/`` regressor folder per kernel type."""
        path = Path(path)
        folders: dict[str, str] = {}
        for i, kernel_type in enumerate(self.kernel_types):
            folder = f"kernels/{re.sub(r'[^A-Za-z0-9._-]', '_', kernel_type)}"
            if folder in folders.values():
                folder = f"{folder}-{i}"  # two types that sanitize to the same name
            folders[kernel_type] = folder
            self.regressors[kernel_type].save(path / folder)
        meta = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "platform": self.platform,
                "overhead": asdict(self.overhead), "kernels": folders}
        tmp = path / f".{PLATFORM_FILE}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8")
        os.replace(tmp, path / PLATFORM_FILE)
        return path

    @classmethod
    def load(cls, path: str | Path,
             expected_features: Mapping[str, Sequence[str]] | None = None) -> PlatformPredictor:
        """Read a predictor written by :meth:`save`; ``expected_features[type]``, if given, must match."""
        path = Path(path)
        meta_path = path / PLATFORM_FILE
        if not meta_path.is_file():
            raise RegressorFormatError(f"{meta_path} is missing; "
                                       "expected a directory written by PlatformPredictor.save")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or meta.get("schema_version") != SCHEMA_VERSION:
            raise RegressorFormatError(f"{meta_path} has format {meta.get('format')!r} version "
                                       f"{meta.get('schema_version')!r}; expected {FORMAT!r} version {SCHEMA_VERSION}")
        expected = dict(expected_features or {})
        missing = sorted(set(expected) - set(meta["kernels"]))
        if missing:
            raise RegressorFormatError(f"{path} has no predictors for kernel types {missing}; "
                                       f"it holds {sorted(meta['kernels'])}")
        regressors = {t: load_regressor(path / folder, expected.get(t)) for t, folder in meta["kernels"].items()}
        return cls(regressors, meta["platform"], Overhead(**meta["overhead"]))
