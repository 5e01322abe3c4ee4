"""Per-kernel latency regressors: an MLP and tree ensembles, saved without pickle (LitePred, NSDI'24, Sec. 4).

The reference trains one MLP per kernel type (16 layers, ~0.5 M params, MAPE loss, raw features,
350 epochs, no validation); nn-Meter uses random forests. Both live here behind one interface
(``fit``, ``predict``, ``save``, ``load``) so a :mod:`.predictor` can pick either:

- :class:`FeatureTransform`: ``log1p(x / s)`` on heavy-tailed columns (``s`` = smallest positive
  training value, so the transform is ~``log x`` above ``s`` and still defined at 0), then
  standardization; both fitted on training rows only.
- :class:`MLPRegressor` (torch, CPU): a ``hidden_layers x hidden_width`` ReLU MLP, deterministic
  validation split, Adam + cosine schedule, early stopping on validation MAPE with best-weights
  restore, and :meth:`MLPRegressor.fine_tune` for cross-platform transfer.
- :class:`ForestRegressor`: sklearn random forest / extra trees / gradient boosting, whose trees
  are exported to flat arrays and evaluated by a vectorized numpy traversal; prediction needs
  neither sklearn objects nor pickle.

Target ``"log"`` (default) regresses standardized log latency with squared error, i.e. relative
error, which the ±k% metric measures; ``"raw"`` regresses latency itself (the MLP then uses the
reference's MAPE loss). Picked on 2000 ORT FP32 conv kernels (held-out ±10% accuracy, 2 splits):
MLP log 65.5/70.8% vs raw 65.5/63.3%, GBDT log 69.8/65.3% vs raw 57.3/50.8%; log features
("auto") vs none lifted the MLP from 63.5/60.8% to 65.5/70.8%.

On disk a regressor is a directory holding ``regressor.safetensors`` (arrays) and
``regressor.json`` (format, schema version, kind, hyper-parameters, feature names, transform,
training summary, library versions). :func:`load_regressor` reads either kind back.

This module holds the transform, the shared :class:`Regressor` base and the on-disk format; the
models live in :mod:`.mlp` and :mod:`.forest` and are re-exported here (loaded on first access,
since those modules import this one).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors.numpy import load_file, save_file

if TYPE_CHECKING:  # at run time these come from __getattr__ below
    from moonlit.litepred.predict.forest import (
        ForestRegressor,
        export_trees,
        tree_ensemble_predict,
    )
    from moonlit.litepred.predict.mlp import MLPRegressor

__all__ = [
    "FeatureTransform",
    "ForestRegressor",
    "MLPRegressor",
    "Regressor",
    "RegressorFormatError",
    "export_trees",
    "load_regressor",
    "tree_ensemble_predict",
]

FORMAT = "moonlit-litepred-regressor"
SCHEMA_VERSION = 1
META_FILE, ARRAYS_FILE = "regressor.json", "regressor.safetensors"
TARGETS = ("log", "raw")
# mlp, forest: trained per platform; residual, linear: built by moonlit.litepred.transfer.methods
KINDS = ("mlp", "forest", "residual", "linear")


class RegressorFormatError(ValueError):
    """A saved regressor is missing, of another schema version, or has other feature names."""


def _check_xy(X: Any, y: Any | None, n_features: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (rows, features), got shape {X.shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"X has {X.shape[1]} feature columns; this regressor expects {n_features}")
    if not np.all(np.isfinite(X)):
        row, col = np.argwhere(~np.isfinite(X))[0]
        raise ValueError(f"X[{row}, {col}] = {X[row, col]} is not finite")
    if y is None:
        return X, None
    y = np.asarray(y, dtype=np.float64)
    if y.shape != (X.shape[0],):
        raise ValueError(f"y has shape {y.shape}; expected ({X.shape[0]},) to match X")
    if X.shape[0] == 0:
        raise ValueError("X and y are empty; expected at least one training row")
    bad = np.flatnonzero(~(np.isfinite(y) & (y > 0)))
    if bad.size:
        raise ValueError(f"y[{bad[0]}] = {y[bad[0]]}; latencies must be finite and > 0")
    return X, y


class FeatureTransform:
    """``log1p(x / scale)`` on selected columns (``scale == 0`` means no log), then ``(z - mean) / std``."""

    def __init__(self, feature_names: Sequence[str], log_scale: np.ndarray, mean: np.ndarray, std: np.ndarray):
        self.feature_names = list(feature_names)
        self.log_scale = np.asarray(log_scale, dtype=np.float64)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        n = len(self.feature_names)
        if len(set(self.feature_names)) != n:
            raise ValueError(f"feature_names {self.feature_names} hold duplicates")
        for name, arr in (("log_scale", self.log_scale), ("mean", self.mean), ("std", self.std)):
            if arr.shape != (n,):
                raise ValueError(f"{name} has shape {arr.shape}; expected ({n},) for {n} feature names")

    @classmethod
    def fit(cls, X: np.ndarray, feature_names: Sequence[str], log_features: str | Sequence[str] | None = "auto",
            min_dynamic_range: float = 10.0) -> FeatureTransform:
        """Fit on training rows. ``log_features``: ``"auto"`` (non-binary columns with values >= 0 and
        ``max / smallest positive >= min_dynamic_range``), a list of names, or None for no log."""
        X, _ = _check_xy(X, None, len(feature_names))
        names = list(feature_names)
        log_scale = np.zeros(len(names))
        for j, name in enumerate(names):
            col = X[:, j]
            positive = col[col > 0]
            if log_features is None:
                wanted = False
            elif isinstance(log_features, str):
                if log_features != "auto":
                    raise ValueError(f"log_features = {log_features!r}; expected 'auto', a list of names or None")
                binary = np.all((col == 0) | (col == 1))
                wanted = (not binary and col.min() >= 0 and positive.size > 0
                          and positive.max() / positive.min() >= min_dynamic_range)
            else:
                wanted = name in log_features
                if wanted and col.min() < 0:
                    raise ValueError(f"feature {name!r} has negative values (min {col.min()}); cannot log it")
            if wanted:
                log_scale[j] = positive.min() if positive.size else 1.0
        if log_features is not None and not isinstance(log_features, str):
            unknown = sorted(set(log_features) - set(names))
            if unknown:
                raise ValueError(f"log_features {unknown} are not among the feature names {names}")
        transform = cls(names, log_scale, np.zeros(len(names)), np.ones(len(names)))
        transform.fit_standardization(X)
        return transform

    def fit_standardization(self, X: np.ndarray) -> None:
        """(Re)fit mean and std on ``X``, keeping the log columns and scales."""
        Z = self._log(np.asarray(X, dtype=np.float64))
        self.mean = Z.mean(axis=0)
        std = Z.std(axis=0)
        self.std = np.where(std > 1e-12, std, 1.0)  # constant columns (e.g. an unused one-hot) stay 0

    def _log(self, X: np.ndarray) -> np.ndarray:
        logged = self.log_scale > 0
        if not logged.any():
            return X.copy()
        Z = X.copy()
        cols = X[:, logged]
        if np.any(cols < 0):
            j = np.flatnonzero(logged)[np.argwhere(cols < 0)[0][1]]
            raise ValueError(f"feature {self.feature_names[j]!r} is log-transformed but got a negative value "
                             f"{X[:, j].min()}; expected values >= 0")
        Z[:, logged] = np.log1p(cols / self.log_scale[logged])
        return Z

    def apply(self, X: Any) -> np.ndarray:
        """Transform raw feature rows (n, f) into model inputs."""
        X, _ = _check_xy(X, None, len(self.feature_names))
        return (self._log(X) - self.mean) / self.std

    def arrays(self, prefix: str = "transform.") -> dict[str, np.ndarray]:
        return {prefix + "log_scale": self.log_scale, prefix + "mean": self.mean, prefix + "std": self.std}

    @classmethod
    def from_arrays(cls, names: Sequence[str], arrays: dict[str, np.ndarray],
                    prefix: str = "transform.") -> FeatureTransform:
        return cls(names, arrays[prefix + "log_scale"], arrays[prefix + "mean"], arrays[prefix + "std"])


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def _versions(*modules: str) -> dict[str, str]:
    import importlib.metadata

    out = {}
    for name in modules:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


class Regressor:
    """Common part of the regressors: feature schema, transform, target, save/load scaffolding."""

    kind: str = ""

    def __init__(self, target: str, log_features: str | Sequence[str] | None):
        if target not in TARGETS:
            raise ValueError(f"target = {target!r}; expected one of {TARGETS}")
        if isinstance(log_features, str) and log_features != "auto":
            raise ValueError(f"log_features = {log_features!r}; expected 'auto', a list of names or None")
        self.target = target
        self.log_features = (log_features if log_features is None or isinstance(log_features, str)
                             else list(log_features))
        self.transform: FeatureTransform | None = None
        self.training: dict[str, Any] = {}

    @property
    def feature_names(self) -> list[str]:
        return self._fitted().feature_names

    def _fitted(self) -> FeatureTransform:
        if self.transform is None:
            raise RuntimeError(f"this {type(self).__name__} is not fitted; call fit(X, y, feature_names) first")
        return self.transform

    def check_feature_names(self, expected: Sequence[str]) -> None:
        """Raise :class:`RegressorFormatError` unless ``expected`` equals the training feature names."""
        have = self.feature_names
        if list(expected) != have:
            missing = [n for n in expected if n not in have]
            extra = [n for n in have if n not in expected]
            raise RegressorFormatError(
                f"feature names differ: expected {list(expected)}, the regressor has {have} "
                f"(missing {missing}, extra {extra}, or a different order)")

    def hyperparameters(self) -> dict[str, Any]:
        raise NotImplementedError

    def _arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def predict(self, X: Any) -> np.ndarray:
        raise NotImplementedError

    def save(self, path: str | Path) -> Path:
        """Write ``regressor.safetensors`` + ``regressor.json`` into directory ``path``; returns it."""
        transform = self._fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays = {k: np.ascontiguousarray(v) for k, v in {**transform.arrays(), **self._arrays()}.items()}
        meta = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "kind": self.kind,
                "feature_names": transform.feature_names, "target": self.target,
                "log_features": self.log_features, "hyperparameters": self.hyperparameters(),
                "training": self.training, "versions": _versions("numpy", "torch", "scikit-learn", "moonlit")}
        _atomic_write(path / ARRAYS_FILE, lambda p: save_file(arrays, str(p), metadata={"format": FORMAT}))
        _atomic_write(path / META_FILE, lambda p: p.write_text(json.dumps(meta, indent=1), encoding="utf-8"))
        return path

    @classmethod
    def load(cls, path: str | Path, feature_names: Sequence[str] | None = None) -> Regressor:
        """Read a regressor saved by :meth:`save`; ``feature_names``, if given, must match the saved ones."""
        meta, arrays = _read_saved(Path(path))
        if cls is not Regressor and meta["kind"] != cls.kind:
            raise RegressorFormatError(f"{path} holds a {meta['kind']!r} regressor, not a {cls.kind!r} one")
        # imported here: both modules import this one
        from moonlit.litepred.predict.forest import ForestRegressor
        from moonlit.litepred.predict.mlp import MLPRegressor

        if meta["kind"] == "residual":
            from moonlit.litepred.transfer.methods import ResidualRegressor

            reg = ResidualRegressor._load_dir(Path(path), meta, arrays)
            if feature_names is not None:
                reg.check_feature_names(feature_names)
            return reg
        if meta["kind"] == "linear":
            from moonlit.litepred.transfer.methods import LinearRegressor

            target_cls: Any = LinearRegressor
        else:
            target_cls = {"mlp": MLPRegressor, "forest": ForestRegressor}[meta["kind"]]
        reg = target_cls._from_saved(meta, arrays)
        reg.transform = FeatureTransform.from_arrays(meta["feature_names"], arrays)
        reg.training = meta["training"]
        if feature_names is not None:
            reg.check_feature_names(feature_names)
        return reg

    @classmethod
    def _from_saved(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Regressor:
        raise NotImplementedError


def _read_saved(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    meta_path, arrays_path = path / META_FILE, path / ARRAYS_FILE
    for p in (meta_path, arrays_path):
        if not p.is_file():
            raise RegressorFormatError(f"{p} is missing; expected a directory written by Regressor.save")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise RegressorFormatError(f"{meta_path} has format {meta.get('format')!r}; expected {FORMAT!r}")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise RegressorFormatError(f"{meta_path} has schema version {meta.get('schema_version')!r}; "
                                   f"this code reads version {SCHEMA_VERSION}")
    if meta.get("kind") not in KINDS:
        raise RegressorFormatError(f"{meta_path} has kind {meta.get('kind')!r}; expected one of {KINDS}")
    return meta, load_file(str(arrays_path))


def load_regressor(path: str | Path, feature_names: Sequence[str] | None = None) -> Regressor:
    """Load a regressor of any of :data:`KINDS` saved by ``save``; checks schema version and feature names."""
    return Regressor.load(path, feature_names)


_LAZY_EXPORTS = {"MLPRegressor": "mlp", "ForestRegressor": "forest", "export_trees": "forest",
                 "tree_ensemble_predict": "forest"}


def __getattr__(name: str) -> Any:
    # PEP 562 re-export: importing .mlp/.forest at the top would be an import cycle.
    if name in _LAZY_EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY_EXPORTS[name]}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
