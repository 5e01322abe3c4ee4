"""LitePred's PlatformPredictor under common's LatencyConstraint: the batch in one call equals per-model
predictions and the calibrated kernel sums written out; unknown kernel types and negative lines are handled."""

from __future__ import annotations

import numpy as np
import pytest

from moonlit.common.nas import LatencyConstraint
from moonlit.litepred.predict.calibration import Overhead
from moonlit.litepred.predict.predictor import MIN_LATENCY_MS, PlatformPredictor
from moonlit.litepred.predict.regressors import ForestRegressor


@pytest.fixture(scope="module")
def predictor() -> PlatformPredictor:
    rng = np.random.default_rng(0)
    regs = {}
    for kernel_type, scale in (("conv", 1e-3), ("matmul", 5e-4)):
        X = rng.uniform(8, 48, (200, 2))
        regs[kernel_type] = ForestRegressor(n_estimators=10).fit(X, scale * X[:, 0] * X[:, 1], ["cin", "cout"])
    overhead = Overhead(slope=1.2, intercept=0.3, fitted=True, type_scales={"conv": 0.9})
    return PlatformPredictor(regs, {"name": "toy-cpu"}, overhead)


def kernel_rows(widths: tuple[int, ...]) -> dict[str, np.ndarray]:
    """A toy network: a conv per stage (previous width -> width) from 16 input channels, a 10-class matmul."""
    channels = (16,) + widths
    return {"conv": np.array([channels[:-1], channels[1:]], dtype=float).T,
            "matmul": np.array([[widths[-1], 10.0]])}


def widths_batch(seed: int, n: int) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(w) for w in rng.choice((8, 16, 24, 32, 48), 4)) for _ in range(n)]


def test_batched_latency_equals_per_model_predictions(predictor) -> None:
    batch = widths_batch(1, 40)
    calls = []

    class Counting:
        platform = predictor.platform

        def predict_models(self, models, apply_overhead=True):
            calls.append(len(models))
            return predictor.predict_models(models, apply_overhead=apply_overhead)

    constraint = LatencyConstraint(Counting(), kernel_rows, limit_ms=2.0)
    batched = constraint.predict(batch)
    assert calls == [40]
    assert constraint.description.startswith("predicted latency on 'toy-cpu': ")
    np.testing.assert_allclose(batched, [predictor.predict_model(kernel_rows(w)) for w in batch], rtol=1e-12)
    for widths, latency in zip(batch, batched):
        rows = kernel_rows(widths)
        conv = predictor.predict_kernels("conv", rows["conv"]).sum()
        matmul = predictor.predict_kernels("matmul", rows["matmul"]).sum()
        assert latency == pytest.approx(1.2 * (0.9 * conv + matmul) + 0.3, rel=1e-12)  # the overhead above
    raw = LatencyConstraint(predictor, kernel_rows, limit_ms=2.0, apply_overhead=False).predict(batch)
    np.testing.assert_allclose(raw, [predictor.kernel_sums([kernel_rows(w)])[0] for w in batch], rtol=1e-12)


def test_unknown_kernel_type_is_an_error(predictor) -> None:
    with pytest.raises(ValueError, match="'pool' has no predictor on platform 'toy-cpu'"):
        LatencyConstraint(predictor, lambda w: {"pool": np.ones((1, 2))}, 1.0).predict(widths_batch(2, 1))


def test_latency_below_zero_is_floored(predictor) -> None:
    saved = predictor.overhead
    try:
        predictor.overhead = Overhead(1.0, -100.0, 10, True)  # a stored line below zero for every candidate
        latency = LatencyConstraint(predictor, kernel_rows, limit_ms=2.0).predict(widths_batch(3, 5))
        np.testing.assert_array_equal(latency, np.full(5, MIN_LATENCY_MS))
    finally:
        predictor.overhead = saved
