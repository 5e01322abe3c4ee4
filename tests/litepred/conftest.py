"""Fixtures of the LitePred tests."""

from __future__ import annotations

import numpy as np
import pytest

from moonlit.litepred.kernels.detect import KERNEL_TYPES
from moonlit.litepred.predict.features import feature_names
from moonlit.litepred.predict.forest import ForestRegressor
from moonlit.litepred.predict.predictor import PlatformPredictor


@pytest.fixture(scope="session")
def synthetic_predictor() -> PlatformPredictor:
    """A regressor for every kernel type, fitted on synthetic rows in a second: for tests of what is read,
    detected and summed, not of accuracy. Tree ensembles predict within their leaves (finite, > 0 here)."""
    rng = np.random.default_rng(0)
    regressors = {}
    for kernel_type in sorted(KERNEL_TYPES):
        names = feature_names(kernel_type)
        X = rng.uniform(0, 100, (30, len(names)))
        regressors[kernel_type] = ForestRegressor(n_estimators=3).fit(X, 0.01 + X.mean(1) / 1000, names)
    return PlatformPredictor(regressors, {"name": "synthetic"})
