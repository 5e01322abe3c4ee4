"""Per-kernel-type calibration: known factors recovered, the one-line fit as the limit, round trips."""

from __future__ import annotations

import numpy as np
import pytest

from moonlit.litepred.predict.calibration import (
    SCALE_BOUNDS,
    Overhead,
    fit_overhead,
    fit_type_scales,
)
from moonlit.litepred.predict.predictor import PlatformPredictor
from moonlit.litepred.predict.regressors import ForestRegressor

TYPES = ["conv", "layout", "matmul"]


def synthetic_sums(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    S = rng.uniform(0.5, 5.0, (n, 3))
    S[:, 1] *= rng.integers(0, 2, n)  # half the models have no layout kernels (CNNs)
    return S


def test_known_type_factors_are_recovered() -> None:
    S = synthetic_sums(60, 0)
    r_true, a_true, b_true = np.array([1.0, 1.6, 0.7]), 0.9, 0.2
    measured = a_true * S @ r_true + b_true
    fit = fit_type_scales(S, measured, TYPES, ridge=1e-6)
    # a and r are identified only up to a common factor: compare the products a · r_t
    got = np.array([fit.slope * fit.type_scales[t] for t in TYPES])
    np.testing.assert_allclose(got, a_true * r_true, rtol=1e-3)
    assert fit.intercept == pytest.approx(b_true, abs=1e-3)
    cv = fit_type_scales(S, measured, TYPES)  # noiseless: leave-one-out must prefer weak ridge
    assert cv.ridge is not None and cv.ridge <= 0.1
    pred = cv.slope * S @ np.array([cv.type_scales[t] for t in TYPES]) + cv.intercept
    assert np.max(np.abs(pred - measured) / measured) < 0.02


def test_one_line_data_gives_the_one_line_fit() -> None:
    S = synthetic_sums(30, 1)
    rng = np.random.default_rng(2)
    measured = (0.8 * S.sum(1) + 0.1) * (1 + 0.05 * rng.standard_normal(30))  # pure noise around one line
    fit = fit_type_scales(S, measured, TYPES)
    line = fit_overhead(S.sum(1), measured)
    pred_types = fit.slope * S @ np.array([fit.type_scales.get(t, 1.0) for t in TYPES]) + fit.intercept
    pred_line = line.apply(S.sum(1))
    # whatever ridge leave-one-out picks, it stays close to the line: no factor moved far from 1
    assert all(abs(v - 1) < 0.3 for v in fit.type_scales.values())
    assert np.max(np.abs(pred_types / pred_line - 1)) < 0.1


def test_fallback_bounds_and_unused_types() -> None:
    S = synthetic_sums(4, 3)
    assert fit_type_scales(S, S.sum(1), TYPES, min_models=5) == Overhead(1.0, 0.0, 4, False)
    S = synthetic_sums(40, 4)
    S[:, 2] = 0.0  # no model has matmuls: their factor is not fitted
    measured = S @ np.array([1.0, 10.0, 1.0])  # layout 10× off: clipped to the upper bound
    fit = fit_type_scales(S, measured, TYPES, ridge=1e-6)
    assert "matmul" not in fit.type_scales
    assert fit.type_scales["layout"] == pytest.approx(SCALE_BOUNDS[1]) or fit.type_scales["conv"] == pytest.approx(SCALE_BOUNDS[0])
    with pytest.raises(ValueError, match="expected \\(models, 3 kernel types\\)"):
        fit_type_scales(S[:, :2], measured, TYPES)
    with pytest.raises(ValueError, match="ridge = -1"):
        fit_type_scales(S, measured, TYPES, ridge=-1)


@pytest.fixture(scope="module")
def predictor() -> PlatformPredictor:
    rng = np.random.default_rng(5)
    regs = {}
    for t in TYPES:
        X = rng.uniform(1, 10, (80, 2))
        regs[t] = ForestRegressor(n_estimators=20).fit(X, X[:, 0] * X[:, 1] / 10, ["a", "b"])
    return PlatformPredictor(regs, {"name": "p"})


def test_predictor_applies_type_factors_and_round_trips(predictor, tmp_path) -> None:
    rng = np.random.default_rng(6)
    models = [{t: rng.uniform(1, 10, (int(rng.integers(1, 5)), 2)) for t in TYPES if rng.random() < 0.8 or t == "conv"}
              for _ in range(30)]
    by_type = predictor.kernel_sums(models, by_type=True)
    hand = np.array([[predictor.predict_kernels(t, m[t]).sum() if t in m else 0.0 for t in TYPES] for m in models])
    np.testing.assert_allclose(by_type, hand, rtol=1e-12)
    measured = 0.95 * hand @ np.array([1.0, 1.4, 0.8]) + 0.05
    overhead = predictor.calibrate(models, measured, per_type=True, ridge=1e-6)
    np.testing.assert_allclose(predictor.predict_models(models), measured, rtol=1e-3)
    expected = overhead.slope * hand @ np.array([overhead.scale(t) for t in TYPES]) + overhead.intercept
    np.testing.assert_allclose(predictor.predict_models(models), expected, rtol=1e-12)
    predictor.save(tmp_path / "p")
    loaded = PlatformPredictor.load(tmp_path / "p")
    assert loaded.overhead == overhead
    np.testing.assert_array_equal(loaded.predict_models(models), predictor.predict_models(models))
    line = predictor.calibrate(models, measured)  # back to one line: factors dropped
    assert line.type_scales == {}
    np.testing.assert_allclose(predictor.kernel_sums(models), hand.sum(1), rtol=1e-12)


def test_weight_read_floor_rate_is_recovered_by_calibration() -> None:
    """Models whose latency is Σ max(kernel, rate · params) (a brute-force ground truth): the rate is chosen."""
    from moonlit.litepred.predict.features import feature_names
    from moonlit.litepred.predict.forest import ForestRegressor
    from moonlit.litepred.predict.predictor import PlatformPredictor

    names = feature_names("fc")
    column = names.index("params_m")
    rng = np.random.default_rng(0)
    X_train = rng.uniform(0.1, 1.0, (40, len(names)))
    fc = ForestRegressor(n_estimators=2).fit(X_train, np.full(40, 0.05), names)  # every fc kernel: 0.05 ms hot
    predictor = PlatformPredictor({"fc": fc}, {"name": "synthetic"})
    true_rate = 0.1  # in WEIGHT_RATE_GRID
    models, measured = [], []
    for _ in range(30):
        X = rng.uniform(0.1, 1.0, (int(rng.integers(2, 12)), len(names)))
        X[:, column] = rng.uniform(0.0, 2.0, len(X))  # 0-2 M params: some kernels weight-bound, some not
        models.append({"fc": X})
        measured.append(1.1 * np.maximum(0.05, true_rate * X[:, column]).sum() + 0.2)
    overhead = predictor.calibrate(models, np.array(measured), per_type=True, weight_rates=(0.0, 0.05, 0.1, 0.2))
    assert overhead.weight_ms_per_mparam == 0.1
    np.testing.assert_allclose(predictor.predict_models(models), measured, rtol=1e-6)
    assert predictor.kernel_sums(models[:1], weight_rate=0.0)[0] == pytest.approx(0.05 * len(models[0]["fc"]))


def test_per_kernel_offset_is_recovered_by_calibration() -> None:
    """Kernels timed alone at t = 0.02 + x ms (x the work); inside a model each takes t - 0.015 (a per-call cost
    of 0.015 ms that isolation adds). Models differ in kernel count and size, so no factor on the sum fits them;
    the offset chosen from the grid makes the fit exact (brute-force ground truth: the hand sum)."""
    from moonlit.litepred.predict.calibration import KERNEL_OFFSET_GRID, OFFSET_KEEP
    from moonlit.litepred.predict.features import feature_names
    from moonlit.litepred.predict.predictor import PlatformPredictor

    names = feature_names("add")
    rng = np.random.default_rng(1)
    levels = np.array([0.0, 0.005, 0.05, 0.5])  # isolated extra work per kernel of each size class

    class Lookup:  # an exact regressor: the isolated time of a kernel of size class X[:, 0]
        def predict(self, X: np.ndarray) -> np.ndarray:
            return 0.02 + levels[np.asarray(X)[:, 0].astype(int)]

    add = Lookup()
    predictor = PlatformPredictor({"add": add}, {"name": "synthetic"})
    true_offset = 0.015
    assert true_offset in KERNEL_OFFSET_GRID
    models, measured = [], []
    for _ in range(30):
        kinds = rng.integers(0, 4, int(rng.integers(3, 60)))
        models.append({"add": kinds[:, None] * np.ones((1, len(names)))})
        isolated = 0.02 + levels[kinds]
        measured.append(np.maximum(isolated - true_offset, OFFSET_KEEP * isolated).sum())
    overhead = predictor.calibrate(models, np.array(measured), per_type=True, weight_rates=(0.0,),
                                   kernel_offsets=KERNEL_OFFSET_GRID)
    assert overhead.kernel_offset_ms == true_offset
    np.testing.assert_allclose(predictor.predict_models(models), measured, rtol=1e-6)
    without = PlatformPredictor({"add": add}, {"name": "synthetic"})
    line = without.calibrate(models, np.array(measured), per_type=True, weight_rates=(0.0,), kernel_offsets=(0.0,))
    assert line.cv_error > 0.01 > overhead.cv_error  # kernel count, not work: a factor on the sum cannot fit it
    # an offset larger than a kernel keeps OFFSET_KEEP of it: the smallest kernel (0.02 ms) at offset 0.05
    one = {"add": np.zeros((1, len(names)))}
    assert predictor.kernel_sums([one], kernel_offset=0.05)[0] == pytest.approx(OFFSET_KEEP * 0.02)


# ---- non-negative overhead and the latency floor ------------------------------------------------


def _nnls_line(s: np.ndarray, m: np.ndarray, weighting: str) -> np.ndarray:
    """(a, b) minimizing Σ w (m - a s - b)² over a, b >= 0, by scipy's NNLS on the sqrt(w)-scaled system."""
    from scipy.optimize import nnls

    root_w = 1 / m if weighting == "relative" else np.ones_like(m)
    return nnls(np.c_[s, np.ones_like(s)] * root_w[:, None], m * root_w)[0]


@pytest.mark.parametrize("weighting", ["relative", "absolute"])
def test_negative_intercept_is_fitted_as_zero_like_nnls(weighting: str) -> None:
    # tiny models much faster than the line through the big ones: unconstrained b = -0.7 ms
    sums = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    measured = np.array([0.6, 1.9, 4.5, 9.6, 20.0])
    unconstrained = np.linalg.lstsq(np.c_[sums, np.ones(5)], measured, rcond=None)[0]
    assert unconstrained[1] < 0  # the data set does what it is meant to
    fit = fit_overhead(sums, measured, weighting=weighting)
    expected = _nnls_line(sums, measured, weighting)
    assert expected[1] == 0.0
    assert (fit.slope, fit.intercept) == pytest.approx((expected[0], 0.0), rel=1e-10)
    # by hand on the edge b = 0: a = Σ w s m / Σ w s²
    w = 1 / measured**2 if weighting == "relative" else np.ones(5)
    assert fit.slope == pytest.approx(np.sum(w * sums * measured) / np.sum(w * sums**2), rel=1e-12)
    assert np.all(fit.apply(np.array([0.0, 1e-6, 0.01])) >= 0)


def test_line_fit_matches_nnls_on_random_data(fuzz_settings) -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    @fuzz_settings
    @given(st.lists(st.tuples(st.floats(0.01, 100), st.floats(0.01, 100)), min_size=5, max_size=30),
           st.sampled_from(["relative", "absolute"]))
    def check(pairs: list[tuple[float, float]], weighting: str) -> None:
        sums, measured = np.array(pairs).T
        fit = fit_overhead(sums, measured, weighting=weighting)
        assert fit.slope >= 0 and fit.intercept >= 0
        a, b = _nnls_line(sums, measured, weighting)
        w = 1 / measured**2 if weighting == "relative" else np.ones_like(measured)

        def loss(slope: float, intercept: float) -> float:
            return float(np.sum(w * (measured - slope * sums - intercept) ** 2))

        # same optimum as NNLS (compared by objective: near-flat problems have many near-optimal lines)
        assert loss(fit.slope, fit.intercept) <= loss(a, b) * (1 + 1e-9) + 1e-12

    check()


def test_per_type_fit_keeps_the_intercept_non_negative() -> None:
    S = synthetic_sums(40, 7)
    measured = S @ np.array([1.2, 1.5, 0.9]) - 0.5  # a true negative offset
    measured = np.maximum(measured, 0.05)
    for ridge in (1e-6, "cv"):
        fit = fit_type_scales(S, measured, TYPES, ridge=ridge)
        assert fit.intercept >= 0.0 and fit.slope >= 0.0


def test_predictions_are_floored_at_the_minimum_latency(predictor) -> None:
    from moonlit.litepred.predict.predictor import MIN_LATENCY_MS, floor_latency

    tiny = {"conv": np.array([[1.0, 1.0]])}  # ~0.1 ms of kernels
    kernel = float(predictor.predict_kernels("conv", tiny["conv"])[0])
    saved = predictor.overhead
    try:
        # an overhead stored by an older fit, with a negative intercept: the line is below 0 at this model
        predictor.overhead = Overhead(1.291, -0.708, 12, True)
        assert 1.291 * kernel - 0.708 < 0
        assert predictor.predict_model(tiny) == MIN_LATENCY_MS
        assert predictor.predict_models([tiny, {}]).tolist() == [MIN_LATENCY_MS, MIN_LATENCY_MS]
        predictor.overhead = Overhead(1.0, 0.0)
        assert predictor.predict_model(tiny) == pytest.approx(kernel)  # a valid value is untouched
    finally:
        predictor.overhead = saved
    np.testing.assert_array_equal(floor_latency([-3.0, 0.0, 2.0]), [MIN_LATENCY_MS, MIN_LATENCY_MS, 2.0])
    with pytest.raises(ValueError, match="not finite"):
        floor_latency([1.0, np.inf])
