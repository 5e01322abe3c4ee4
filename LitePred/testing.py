"""Stand-in LitePred predictors for the tests of packages that use LitePred (through :mod:`moonlit.litepred.api`).

- :func:`stand_in_predictor`: a predictor built without profiling anything, whose answer a test can
  recompute by hand: every kernel of type ``t`` with feature row ``x`` is predicted as
  ``kernel_ms + Σ_j coef_t[j] · x[j]`` (``coef_t`` = ``predictor.regressors[t].coef``, drawn from
  ``seed``), a model as the sum over its kernels (no overhead term: ``a = 1``, ``b = 0``).
- :func:`debug_predictor_dir`: a small predictor built by ``moonlit-litepred build`` on the
  deterministic ``debug`` backend, for tests that need the whole build pipeline's output.
- :func:`debug_latency_ms`: what the ``debug`` backend measures for one model (its p10).
- For the tests of a family plug-in: the zoo's lookup and sampling (:func:`get_family`,
  :func:`list_families`, :func:`plugins`, :func:`sample`, :func:`sample_architectures`,
  :func:`training_architectures`, :func:`heldout_architectures`, :func:`is_heldout`), the CLI's
  :func:`resolve_spec`, and :func:`kernel_summary` / :func:`rule_kernel_types` (the kernels LitePred
  detects in a spec).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from moonlit.common.errors import InputError
from moonlit.litepred.api import ArchSpec, Predictor
from moonlit.litepred.predict.features import feature_names, feature_schema
from moonlit.litepred.predict.regressors import FeatureTransform
from moonlit.litepred.transfer.methods import LinearRegressor
from moonlit.litepred.zoo import (
    get_family,
    heldout_architectures,
    is_heldout,
    list_families,
    plugins,
    sample,
    sample_architectures,
    training_architectures,
)

__all__ = [
    "STAND_IN_KERNEL_TYPES",
    "debug_latency_ms",
    "debug_predictor_dir",
    "get_family",
    "heldout_architectures",
    "is_heldout",
    "kernel_summary",
    "list_families",
    "plugins",
    "resolve_spec",
    "rule_kernel_types",
    "sample",
    "sample_architectures",
    "stand_in_predictor",
    "training_architectures",
]

# every kernel type that has features: a stand-in predicts whatever a detection can produce
STAND_IN_KERNEL_TYPES: tuple[str, ...] = tuple(sorted(feature_schema()["types"]))


def stand_in_predictor(kernel_types: Sequence[str] = STAND_IN_KERNEL_TYPES, seed: int = 0, *,
                       platform: Mapping[str, Any] | None = None, kernel_ms: float = 0.01,
                       ms_per_unit: float = 1e-4) -> Predictor:
    """A predictor of linear per-kernel latencies (module docstring); saves and loads like a built one.

    ``coef_t[j] = ms_per_unit · u`` with ``u`` uniform in [0.5, 1.5), drawn from ``seed`` type by type
    in sorted order, so every feature moves the latency and candidates rarely tie. ``platform``: the
    predictor's metadata (default ``{"name": "ort-fp32"}``).
    """
    types = sorted(set(kernel_types))
    if not types:
        raise InputError("kernel_types is empty; expected kernel types such as ('conv', 'fc')")
    known = set(STAND_IN_KERNEL_TYPES)
    unknown = [t for t in types if t not in known]
    if unknown:
        raise InputError(f"kernel types {unknown} have no features; expected some of {sorted(known)}")
    if kernel_ms < 0 or ms_per_unit < 0:
        raise InputError(f"kernel_ms={kernel_ms}, ms_per_unit={ms_per_unit}; expected both >= 0")
    rng = np.random.default_rng(seed)
    regressors = {}
    for kernel_type in types:
        names = feature_names(kernel_type)
        regressor = LinearRegressor(names, floor=0.0)
        regressor.transform = FeatureTransform(names, np.zeros(len(names)), np.zeros(len(names)), np.ones(len(names)))
        regressor.coef = ms_per_unit * rng.uniform(0.5, 1.5, len(names))
        regressor.intercept = float(kernel_ms)
        regressors[kernel_type] = regressor
    return Predictor(regressors, dict(platform) if platform is not None else {"name": "ort-fp32"})


def debug_predictor_dir(tmp_path: Path, platform: str = "debug") -> Path:
    """Build a small predictor with ``moonlit-litepred build`` under ``tmp_path``; returns its directory.

    ``platform`` is a profiling platform name; the default ``debug`` platform is deterministic and
    takes seconds (160 kernels, 6 training and 6 calibration architectures, forest regressors).
    """
    from moonlit.common.config import compose_config
    from moonlit.litepred.apps import build

    cfg = compose_config("litepred", "litepred", [
        f"platform={platform}", "architectures.train=6", "architectures.calibration=6", "budget.kernels=160",
        "budget.min_per_type=10", "regressor=forest", f"paths.output_root={tmp_path}"])
    build.run(cfg)
    return Path(cfg.predictor_dir)


def debug_latency_ms(module: Any, example_inputs: tuple[Any, ...]) -> float:
    """The ``debug`` backend's p10 latency (ms) of one model: deterministic, computed from its graph."""
    from moonlit.litepred.profile import get_platform

    measurement = get_platform("debug").measure_many([(module, tuple(example_inputs))])[0]
    if isinstance(measurement, Exception):
        raise measurement
    return float(measurement.p10_ms)


def resolve_spec(text: str) -> ArchSpec:
    """A zoo architecture from ``family/description@res``, ``family:description@res`` or a default spec's name
    (what ``moonlit-litepred predict model=...`` accepts)."""
    from moonlit.litepred.apps.settings import resolve_spec as resolve

    return resolve(text)


def kernel_summary(spec: ArchSpec, rules: str = "ort-fp32") -> dict[str, Any]:
    """The kernels detected in ``spec`` (batch 1) under ``rules``: ``kernels``, ``by_type`` (counts),
    ``macs`` (summed over kernels), ``unassigned_nodes`` (nodes in no kernel), …"""
    from moonlit.litepred.pipeline import detect_architecture

    return detect_architecture(spec, rules).summary()


def rule_kernel_types(rules: str = "ort-fp32") -> set[str]:
    """The kernel types the fusion rules ``rules`` can produce."""
    from moonlit.litepred.kernels.detect import load_platform_rules

    return {rule.kernel for rule in load_platform_rules(rules).rules}
