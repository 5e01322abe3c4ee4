"""Stand-in LitePred predictors for the tests of packages that use LitePred (through :mod:`moonlit.litepred.api`).

- :func:`stand_in_predictor`: a predictor built without profiling anything, whose answer a test can
  recompute by hand: every kernel of type ``t`` with feature row ``x`` is predicted as
  ``kernel_ms + Σ_j coef_t[j] · x[j]`` (``coef_t`` = ``predictor.regressors[t].coef``, drawn from
  ``seed``), a model as the sum over its kernels (no overhead term: ``a = 1``, ``b = 0``).
- :func:`debug_predictor_dir`: a small predictor built by ``moonlit-litepred build`` on the
  deterministic ``debug`` backend, for tests that need the whole build pipeline's output.
- :func:`debug_latency_ms`: what the ``debug`` backend measures for one model (its p10).
- For the tests of a family plug-in: the contract every family keeps, asserted by :func:`check_family`
  (registration, seeded sampling, train/held-out split, a small build runs), :func:`check_build` (a
  named spec builds the package's own model) and :func:`check_kernels` (LitePred detects every node
  and counts the model's MACs); the zoo's lookup and sampling (:func:`get_family`,
  :func:`list_families`, :func:`plugins`, :func:`sample`, :func:`sample_architectures`,
  :func:`training_architectures`, :func:`heldout_architectures`, :func:`is_heldout`), the CLI's
  :func:`resolve_spec`, and :func:`kernel_summary` / :func:`rule_kernel_types` (the kernels LitePred
  detects in a spec).
"""

from __future__ import annotations

import random
import warnings
from collections import Counter
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
    "check_build",
    "check_family",
    "check_kernels",
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


def _content(spec: ArchSpec) -> tuple[Any, ...]:
    return spec.family, spec.description, spec.input_size


def _forward(model: Any, x: Any) -> Any:
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model(x)


def check_family(name: str, module: str, family_type: type | None = None) -> None:
    """Assert the contract every architecture family plug-in keeps with the zoo:

    - the ``moonlit.litepred.families`` entry point ``name`` loads ``module``, the zoo lists the family,
      and its object is a ``family_type`` (when given);
    - sampling is deterministic in the seed: 12 specs of seed 4, distinct by name and by content, none
      shared with seed 5, and the same 12 when drawn beside another family;
    - training and held-out specs are disjoint by name and by content, held-out specs of the family are
      all the family's, and the hash rule holds out between 18% and 32% of 400 samples (about a quarter);
    - the smallest-resolution spec of 6 samples, made with 10 classes, builds and gives one row of 10 logits.
    """
    assert plugins().get(name) == module, f"entry point {name!r}: {plugins().get(name)!r}, expected {module!r}"
    assert name in list_families(), f"{name!r} is not among the families {list_families()}"
    if family_type is not None:
        assert isinstance(get_family(name), family_type), f"{type(get_family(name))} is not a {family_type}"

    first = sample(name, 12, seed=4)
    assert first == sample(name, 12, seed=4), f"{name}: two draws of seed 4 differ"
    assert len({s.name for s in first}) == 12 and len({_content(s) for s in first}) == 12
    assert not {s.name for s in first} & {s.name for s in sample(name, 12, seed=5)}
    mixed = sample_architectures(24, seed=4, families=["resnet-like", name])
    assert [s for s in mixed if s.family == name] == first, f"{name}: draws depend on the other families sampled"

    training = training_architectures(80, seed=1, families=[name])
    heldout = heldout_architectures(40, seed=7, families=[name])
    assert Counter(s.family for s in heldout) == {name: 40}
    assert not {s.name for s in training} & {s.name for s in heldout}
    assert not {_content(s) for s in training} & {_content(s) for s in heldout}
    assert all(map(is_heldout, heldout)) and not any(map(is_heldout, training))
    pool = sample(name, 400, seed=11)
    share = sum(map(is_heldout, pool)) / len(pool)
    assert 0.18 < share < 0.32, f"{name}: the hash rule holds out {share:.0%} of 400 samples, expected about 25%"

    sampled = min(sample(name, 6, seed=3), key=lambda s: s.resolution)
    small = get_family(name).make_spec(sampled.description, sampled.resolution, num_classes=10)
    assert _forward(small.build(), small.example_input(seed=random.Random(0).randrange(9))).shape == (1, 10)


def check_build(spec: ArchSpec, reference: Any) -> None:
    """Assert that ``spec.build()`` is the package's own model ``reference`` (a ``torch.nn.Module``) in
    eval mode: the same parameter names and shapes, 1000 finite logits per image of a batch of 2, and
    the same output when built again (the spec's name seeds the weights)."""
    import torch

    model = spec.build()
    assert not model.training, f"{spec.name}: built in training mode"
    shapes = {k: v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes, f"{spec.name}: not the reference's tensors"
    x = spec.example_input(batch_size=2)
    out = _forward(model, x)
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    assert torch.equal(out, _forward(spec.build(), x)), f"{spec.name}: two builds give different outputs"


def check_kernels(spec: ArchSpec, rules: str = "ort-fp32") -> Counter[str]:
    """Assert that LitePred detects ``spec`` fully under ``rules`` (every kernel type one the rules
    produce, no unassigned node) and that the kernels' MACs add up to torch's FLOP counter of the
    built model; returns the kernel counts by type."""
    from moonlit.common.profiling.flops import count_macs

    summary = kernel_summary(spec, rules)
    counts = Counter(summary["by_type"])
    assert set(counts) <= rule_kernel_types(rules), f"{spec.name}: kernel types {sorted(counts)} beyond the rules'"
    assert summary["unassigned_nodes"] == 0, f"{spec.name}: {summary['unassigned_nodes']} nodes in no kernel"
    assert summary["macs"] == count_macs(spec.build(), spec.example_input()).macs
    return counts
