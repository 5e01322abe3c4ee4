"""Per-kernel regressors and the platform predictor (moonlit.litepred.predict.regressors / .predictor).

Reference values come from elsewhere: sklearn's own ``predict`` for the exported trees, numpy
formulas for the feature transform and the least-squares overhead, a per-model Python loop for
the batched prediction, a known synthetic function for the MLP.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from moonlit.litepred.predict.metrics import mape, within
from moonlit.litepred.predict.predictor import (
    Overhead,
    PlatformPredictor,
    fit_overhead,
    make_regressor,
    select_regressor,
)
from moonlit.litepred.predict.regressors import (
    FeatureTransform,
    ForestRegressor,
    MLPRegressor,
    RegressorFormatError,
    export_trees,
    load_regressor,
    tree_ensemble_predict,
)

NAMES = ["a", "b", "onehot"]
SMALL_MLP = {"hidden_layers": 2, "hidden_width": 64, "batch_size": 32, "max_epochs": 150, "patience": 20}


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """y = 0.01 a b + 0.3 (+0.2 when the one-hot is set): a smooth, multiplicative latency-like target."""
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(1, 100, n), rng.uniform(1, 100, n)
    onehot = rng.integers(0, 2, n).astype(float)
    return np.c_[a, b, onehot], 0.01 * a * b + 0.3 + 0.2 * onehot


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return synthetic(600, seed=0)


@pytest.fixture(scope="module")
def fitted_mlp(data) -> MLPRegressor:
    X, y = data
    return MLPRegressor(**SMALL_MLP, seed=0).fit(X[:500], y[:500], NAMES)


# ---- feature transform ----------------------------------------------------------------------------


def test_feature_transform_matches_numpy_formula() -> None:
    rng = np.random.default_rng(1)
    X = np.c_[rng.uniform(0.5, 500, 40),          # wide positive range: logged
              rng.integers(0, 2, 40),               # one-hot: not logged
              rng.choice([1.0, 3.0, 5.0, 7.0], 40),  # kernel size, range 7 < 10: not logged
              rng.normal(0, 1, 40),                  # negative values: not logged
              np.r_[0.0, rng.uniform(0.01, 10, 39)]]  # zeros plus range 1000: log1p(x / min positive)
    names = ["hw", "relu", "k", "noise", "macs"]
    transform = FeatureTransform.fit(X, names)
    scale0, scale4 = X[:, 0].min(), X[X[:, 4] > 0, 4].min()
    np.testing.assert_array_equal(transform.log_scale, [scale0, 0, 0, 0, scale4])
    Z = X.copy()
    Z[:, 0], Z[:, 4] = np.log1p(X[:, 0] / scale0), np.log1p(X[:, 4] / scale4)
    expected = (Z - Z.mean(0)) / Z.std(0)
    np.testing.assert_allclose(transform.apply(X), expected, rtol=1e-12, atol=1e-12)
    explicit = FeatureTransform.fit(X, names, log_features=["k"])
    np.testing.assert_array_equal(explicit.log_scale, [0, 0, 1.0, 0, 0])
    with pytest.raises(ValueError, match="'noise' has negative values"):
        FeatureTransform.fit(X, names, log_features=["noise"])
    with pytest.raises(ValueError, match="'hw' is log-transformed"):
        transform.apply(np.c_[-X[:1, :1], X[:1, 1:]])
    with pytest.raises(ValueError, match="expects 5"):
        transform.apply(X[:, :4])


# ---- trees -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random_forest", "extra_trees", "gbdt"])
def test_tree_traversal_equals_sklearn(kind: str) -> None:
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(300, 5)), rng.uniform(0.1, 5.0, 300)
    reg = ForestRegressor(kind, n_estimators=30, seed=3).fit(X, y, list("vwxyz"))
    # points from another distribution, plus exact training values (ties with thresholds)
    Z = np.r_[rng.normal(0, 3, size=(200, 5)), reg.transform.apply(X[:50])]
    np.testing.assert_allclose(reg.raw_predict(Z), reg.sklearn_model.predict(Z), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(reg.predict(X), np.exp(reg.sklearn_model.predict(reg.transform.apply(X))),
                               rtol=1e-9)


def test_export_trees_of_independent_sklearn_trees() -> None:
    from sklearn.tree import DecisionTreeRegressor

    rng = np.random.default_rng(4)
    X, y = rng.integers(0, 10, size=(200, 3)).astype(float), rng.normal(size=200)
    trees = [DecisionTreeRegressor(max_depth=d, random_state=d).fit(X, y) for d in (1, 3, None)]
    exported = export_trees(trees)
    half = rng.integers(-1, 21, size=(100, 3)) / 2.0  # thresholds are half-integers: exact ties go left
    # 2.5 + 1e-12 is 2.5 in float32, so sklearn sends it left too; a float64 comparison would not
    Z = np.r_[half, half + 1e-12, half - 1e-12, rng.uniform(-1, 11, size=(100, 3))]
    expected = np.stack([t.predict(Z) for t in trees], axis=1)
    np.testing.assert_array_equal(tree_ensemble_predict(exported, Z), expected)
    assert exported["roots"].tolist() == [0, trees[0].tree_.node_count,
                                          trees[0].tree_.node_count + trees[1].tree_.node_count]


def test_forest_rejects_parameters_of_another_kind() -> None:
    with pytest.raises(ValueError, match=r"\['learning_rate'\] are not parameters of a 'random_forest'"):
        ForestRegressor("random_forest", learning_rate=0.1)
    with pytest.raises(ValueError, match="kind = 'xgboost'"):
        ForestRegressor("xgboost")


# ---- MLP ---------------------------------------------------------------------------------------


def test_mlp_learns_a_known_function(data, fitted_mlp) -> None:
    X, y = data
    assert within(fitted_mlp.predict(X[500:]), y[500:], 0.10) >= 0.90


def test_mlp_is_deterministic_given_a_seed(data, fitted_mlp) -> None:
    X, y = data
    options = {**SMALL_MLP, "max_epochs": 3}
    first = MLPRegressor(**options, seed=5).fit(X[:200], y[:200], NAMES).predict(X[500:])
    again = MLPRegressor(**options, seed=5).fit(X[:200], y[:200], NAMES).predict(X[500:])
    other = MLPRegressor(**options, seed=6).fit(X[:200], y[:200], NAMES).predict(X[500:])
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-4


def test_early_stopping_restores_the_best_epoch() -> None:
    # 40 noisy rows and a wide net: validation error bottoms out early, then the net overfits
    rng = np.random.default_rng(7)
    X = rng.uniform(1, 100, size=(40, 2))
    y = (0.01 * X[:, 0] * X[:, 1] + 0.3) * rng.lognormal(0, 0.3, 40)
    patience = 15
    reg = MLPRegressor(2, 256, lr=3e-3, batch_size=8, max_epochs=400, patience=patience, val_fraction=0.3,
                       seed=0).fit(X, y, ["a", "b"])
    val_mapes = [h["val_mape"] for h in reg.history]
    best = int(np.argmin(val_mapes))
    summary = reg.training["fit"]
    assert summary["best_epoch"] == best
    assert len(reg.history) == best + patience + 1 < 400  # stopped exactly `patience` epochs later
    assert val_mapes[-1] > val_mapes[best]
    val = reg.val_index
    assert len(val) == 12
    # the restored weights reproduce the best epoch's validation MAPE, not the last one's
    assert mape(reg.predict(X[val]), y[val]) == pytest.approx(val_mapes[best], rel=1e-5)


def test_fine_tune_adapts_and_keeps_or_refits_normalization(data, fitted_mlp, tmp_path) -> None:
    X, y = data
    fitted_mlp.save(tmp_path / "source")
    # the "new platform" is 1.6x slower with a smaller intercept
    new_y = 1.6 * (y - 0.2 * X[:, 2]) + 0.05
    before = mape(fitted_mlp.predict(X[500:]), new_y[500:])
    tuned = load_regressor(tmp_path / "source")
    mean_before = tuned.transform.mean.copy()
    tuned.fine_tune(X[:100], new_y[:100], lr=1e-3, epochs=40)
    assert mape(tuned.predict(X[500:]), new_y[500:]) < before / 3
    np.testing.assert_array_equal(tuned.transform.mean, mean_before)
    assert tuned.training["fine_tune"][0]["n_train"] == 100

    refit = load_regressor(tmp_path / "source")
    refit.fine_tune(X[:100], new_y[:100], lr=1e-3, epochs=2, renormalize=True)
    logged = np.log1p(X[:100] / np.where(refit.transform.log_scale > 0, refit.transform.log_scale, 1.0))
    Z = np.where(refit.transform.log_scale > 0, logged, X[:100])
    np.testing.assert_allclose(refit.transform.mean, Z.mean(0), rtol=1e-12)
    np.testing.assert_allclose(refit.transform.log_scale, fitted_mlp.transform.log_scale)


# ---- serialization -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "gbdt", "random_forest"])
def test_save_load_round_trip_is_exact(name: str, data, fitted_mlp, tmp_path) -> None:
    X, y = data
    reg = fitted_mlp if name == "mlp" else make_regressor(name, n_estimators=20).fit(X[:500], y[:500], NAMES)
    reg.save(tmp_path / name)
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["regressor.json", "regressor.safetensors"]
    loaded = load_regressor(tmp_path / name, feature_names=NAMES)
    assert type(loaded) is type(reg)
    np.testing.assert_array_equal(loaded.predict(X[500:]), reg.predict(X[500:]))
    meta = json.loads((tmp_path / name / "regressor.json").read_text())
    assert meta["feature_names"] == NAMES and meta["schema_version"] == 1


def test_load_checks_feature_names_and_schema(data, tmp_path) -> None:
    X, y = data
    make_regressor("gbdt", n_estimators=5).fit(X, y, NAMES).save(tmp_path / "r")
    with pytest.raises(RegressorFormatError, match=r"missing \['c'\], extra \['onehot'\]"):
        load_regressor(tmp_path / "r", feature_names=["a", "b", "c"])
    with pytest.raises(RegressorFormatError, match="different order"):
        load_regressor(tmp_path / "r", feature_names=["b", "a", "onehot"])
    with pytest.raises(RegressorFormatError, match="holds a 'forest' regressor, not a 'mlp'"):
        MLPRegressor.load(tmp_path / "r")
    meta_path = tmp_path / "r" / "regressor.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "schema_version": 99}))
    with pytest.raises(RegressorFormatError, match="schema version 99; this code reads version 1"):
        load_regressor(tmp_path / "r")
    with pytest.raises(RegressorFormatError, match="missing"):
        load_regressor(tmp_path / "nowhere")


# ---- selection ---------------------------------------------------------------------------------


def test_select_regressor_keeps_the_better_candidate(data) -> None:
    X, y = data
    crippled_mlp = {"hidden_layers": 1, "hidden_width": 2, "max_epochs": 1}
    crippled_forest = {"n_estimators": 1, "max_depth": 1}
    reg, comparison = select_regressor(X, y, NAMES, ("gbdt", "mlp"), seed=1,
                                       options={"mlp": crippled_mlp, "gbdt": {"n_estimators": 100}})
    assert comparison["selected"] == "gbdt" and isinstance(reg, ForestRegressor)
    assert comparison["n_holdout"] == 120 and comparison["n_train"] == 480
    scores = comparison["candidates"]
    assert scores["gbdt"]["within_10pct"] > scores["mlp"]["within_10pct"]
    reg, comparison = select_regressor(X, y, NAMES, ("gbdt", "mlp"), seed=1,
                                       options={"mlp": SMALL_MLP, "gbdt": crippled_forest})
    assert comparison["selected"] == "mlp" and isinstance(reg, MLPRegressor)
    with pytest.raises(ValueError, match=r"options given for \['forest'\]"):
        select_regressor(X, y, NAMES, ("mlp",), options={"forest": {}})


# ---- overhead and platform predictor -------------------------------------------------------------


@pytest.mark.parametrize("weighting", ["relative", "absolute"])
def test_fit_overhead_recovers_known_line(weighting: str) -> None:
    sums = np.array([2.0, 5.0, 9.0, 14.0, 30.0, 41.0])
    fit = fit_overhead(sums, 0.9 * sums + 0.4, weighting=weighting)
    assert (fit.slope, fit.intercept) == pytest.approx((0.9, 0.4), rel=1e-12)
    assert fit.fitted and fit.n_models == 6
    # noisy points: compare with numpy's weighted least squares
    measured = 0.9 * sums + 0.4 + np.array([0.1, -0.2, 0.05, 0.3, -0.4, 0.2])
    w = np.sqrt(1 / measured**2) if weighting == "relative" else np.ones(6)
    expected = np.linalg.lstsq(np.c_[sums, np.ones(6)] * w[:, None], measured * w, rcond=None)[0]
    fit = fit_overhead(sums, measured, weighting=weighting)
    assert (fit.slope, fit.intercept) == pytest.approx(tuple(expected), rel=1e-10)


def test_fit_overhead_constraint_and_fallback() -> None:
    sums = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    measured = np.array([5.0, 4.0, 3.0, 2.5, 2.0])  # decreasing: unconstrained slope < 0
    fit = fit_overhead(sums, measured, weighting="absolute")
    assert (fit.slope, fit.intercept) == (0.0, pytest.approx(measured.mean()))
    fallback = fit_overhead(sums[:3], measured[:3], min_models=5)
    assert (fallback.slope, fallback.intercept, fallback.fitted) == (1.0, 0.0, False)
    flat = fit_overhead(np.full(5, 2.0), np.full(5, 3.0))  # no spread in the sums: fit through 0
    assert (flat.slope, flat.intercept) == pytest.approx((1.5, 0.0))


@pytest.fixture(scope="module")
def platform(data) -> PlatformPredictor:
    X, y = data
    rng = np.random.default_rng(8)
    pool_x = rng.uniform(1, 50, size=(200, 2))
    datasets = {"conv-bn-relu": (X, y, NAMES), "add": (pool_x, 0.02 * pool_x[:, 0] + 0.01, ["hw", "cin"])}
    return PlatformPredictor.train(datasets, "gbdt", {"n_estimators": 40}, platform={"name": "ort-fp32"})


def random_models(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Models with 1-5 conv rows and (for two in three) 0-3 add rows, on coarse integer grids."""
    rng = np.random.default_rng(seed)
    models = []
    for i in range(n):
        k = int(rng.integers(1, 6))
        model = {"conv-bn-relu": np.c_[rng.integers(1, 20, (k, 2)) * 5.0, rng.integers(0, 2, k)]}
        if i % 3:
            model["add"] = rng.integers(1, 10, (int(rng.integers(0, 4)), 2)) * 5.0
        models.append(model)
    return models


def test_predict_models_equals_a_per_model_loop(platform) -> None:
    models = random_models(30, seed=9)  # integer grids: many duplicate rows across models
    platform.overhead = Overhead(0.9, 0.25, 10, True)
    batched = platform.predict_models(models)
    loop = []
    for model in models:
        total = sum(float(platform.predict_kernels(t, X).sum()) for t, X in model.items())
        loop.append(0.9 * total + 0.25)
    np.testing.assert_allclose(batched, loop, rtol=1e-12)
    np.testing.assert_allclose(platform.predict_models(models, deduplicate=False), loop, rtol=1e-12)
    assert platform.predict_model(models[0]) == pytest.approx(loop[0], rel=1e-12)
    platform.overhead = Overhead()


def test_unknown_kernel_type_is_named(platform) -> None:
    with pytest.raises(ValueError, match=r"'gelu' has no predictor .*known types: \['add', 'conv-bn-relu'\]"):
        platform.predict_models([{"gelu": np.ones((1, 2))}])


def test_calibrate_and_platform_round_trip(platform, tmp_path) -> None:
    models = random_models(12, seed=10)
    sums = platform.kernel_sums(models)
    overhead = platform.calibrate(models, 0.88 * sums + 0.3)
    assert (overhead.slope, overhead.intercept) == pytest.approx((0.88, 0.3), rel=1e-9)
    platform.save(tmp_path / "p")
    assert (tmp_path / "p" / "platform.json").is_file()
    loaded = PlatformPredictor.load(tmp_path / "p", expected_features={"add": ["hw", "cin"]})
    assert loaded.kernel_types == ["add", "conv-bn-relu"] and loaded.platform == {"name": "ort-fp32"}
    assert loaded.overhead == overhead
    np.testing.assert_array_equal(loaded.predict_models(models), platform.predict_models(models))
    with pytest.raises(RegressorFormatError, match="feature names differ"):
        PlatformPredictor.load(tmp_path / "p", expected_features={"add": ["cin", "hw"]})
    with pytest.raises(RegressorFormatError, match=r"no predictors for kernel types \['se'\]"):
        PlatformPredictor.load(tmp_path / "p", expected_features={"se": ["hw"]})
    platform.overhead = Overhead()


def test_train_with_selection_records_the_comparison(data, tmp_path) -> None:
    X, y = data
    crippled_mlp = {"hidden_layers": 1, "hidden_width": 2, "max_epochs": 1}
    options = {"candidates": ("gbdt", "mlp"), "options": {"gbdt": {"n_estimators": 60}, "mlp": crippled_mlp}}
    predictor = PlatformPredictor.train({"conv": (X, y, NAMES)}, "select", options, platform={"name": "p"})
    selection = predictor.platform["selection"]["conv"]
    assert selection["selected"] == "gbdt" and selection["refit"] is True
    assert isinstance(predictor.regressors["conv"], ForestRegressor)
    assert predictor.regressors["conv"].training["fit"]["n_train"] == len(y)  # refit on all rows
    predictor.save(tmp_path / "p")
    assert PlatformPredictor.load(tmp_path / "p").platform["selection"]["conv"]["selected"] == "gbdt"


def test_mlp_predictions_stay_near_the_training_latencies(tmp_path) -> None:  # noqa: ANN001
    from moonlit.litepred.predict.mlp import EXTRAPOLATION_LIMIT, MLPRegressor

    rng = np.random.default_rng(0)
    X = rng.uniform(1, 10, size=(200, 2))
    y = 0.1 * X[:, 0] * X[:, 1]  # 0.1 .. 10 ms
    reg = MLPRegressor(hidden_layers=2, hidden_width=32, max_epochs=30, seed=0).fit(X, y, ["a", "b"])
    far = np.array([[1e6, 1e6], [1e-6, 1e-6]])  # far outside the training features
    low, high = y.min() / EXTRAPOLATION_LIMIT, y.max() * EXTRAPOLATION_LIMIT
    predicted = reg.predict(far)
    assert np.all((predicted >= low - 1e-12) & (predicted <= high + 1e-12))
    loaded = type(reg).load(reg.save(tmp_path / "mlp"))  # the range travels with the saved regressor
    np.testing.assert_allclose(loaded.predict(far), predicted)
