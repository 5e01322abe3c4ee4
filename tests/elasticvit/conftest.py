"""Fixtures shared by the ElasticViT tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def make_stand_in_predictor() -> Callable[..., object]:
    """Build a stand-in LitePred predictor for ElasticViT subnets, without profiling anything.

    ``make(root, space=..., subnets=2, seed=0, trees=4, ms_per_unit=1e-9)`` samples ``subnets``
    random subnets of ``space``, detects their kernels through a ``PartKernelCache`` written to
    ``root/parts.jsonl``, fits one forest per kernel type on "latency" = 0.01 ms + ``ms_per_unit`` ×
    the sum of |features| (so larger kernels are slower), saves the predictor to ``root/predictor``
    and returns it. Latency-constrained search tests need a predictor whose answer they can
    recompute; what it predicts does not have to be a real machine's latency.
    """
    from moonlit.elasticvit.latency import subnet_parts
    from moonlit.elasticvit.search import sample_subnet
    from moonlit.elasticvit.space import ELASTICVIT_SPACE
    from moonlit.litepred.forest import ForestRegressor
    from moonlit.litepred.nas import PartKernelCache
    from moonlit.litepred.predictor import PlatformPredictor

    def make(root: Path, *, space=ELASTICVIT_SPACE, subnets: int = 2, seed: int = 0, trees: int = 4,
             ms_per_unit: float = 1e-9) -> PlatformPredictor:
        cache = PartKernelCache("ort-fp32", root / "parts.jsonl")
        rng = np.random.default_rng(seed)
        pooled: dict[str, list[np.ndarray]] = {}
        for _ in range(subnets):
            parts = subnet_parts(sample_subnet(rng, space), space=space)
            for kernel_type, rows in cache.rows(parts).items():
                pooled.setdefault(kernel_type, []).append(rows)
        regressors = {}
        for kernel_type, arrays in pooled.items():
            features = np.concatenate(arrays)
            target = 0.01 + ms_per_unit * np.abs(features).sum(1)
            names = [f"f{i}" for i in range(features.shape[1])]
            regressors[kernel_type] = ForestRegressor(n_estimators=trees).fit(features, target, names)
        predictor = PlatformPredictor(regressors, {"name": "ort-fp32"})
        predictor.save(root / "predictor")
        return predictor

    return make
