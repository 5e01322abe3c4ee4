"""Transfer to a new platform: similarity ranking, adaptation methods, the VAE sampler, the adapt CLI.

Known answers are built in: a platform trained on the target's own data must rank first; an
affine target must be recovered by the affine method; a target that is a smooth distortion of the
source must be learnt better by transfer than from scratch at the same small budget.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import entropy

from moonlit.litepred.kernels.detect import KernelConfig
from moonlit.litepred.predict.forest import ForestRegressor
from moonlit.litepred.predict.metrics import mape
from moonlit.litepred.predict.mlp import MLPRegressor
from moonlit.litepred.predict.predictor import PlatformPredictor
from moonlit.litepred.transfer.methods import (
    LinearRegressor,
    ResidualRegressor,
    adapt_predictor,
    fit_log_affine,
)
from moonlit.litepred.transfer.pool import KnowledgePool
from moonlit.litepred.transfer.similarity import kl_divergence, rank_platforms

NAMES = ["hw", "cin", "macs_m"]


def kernels(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hw, cin = rng.integers(4, 64, n).astype(float), rng.integers(8, 256, n).astype(float)
    return np.c_[hw, cin, hw * hw * cin * cin / 1e6]


def platform_a(X: np.ndarray) -> np.ndarray:  # compute-bound: latency follows MACs
    return 0.02 + 0.5 * X[:, 2]


def platform_b(X: np.ndarray) -> np.ndarray:  # memory-bound: latency follows activation size
    return 0.02 + 2e-4 * X[:, 0] ** 2 * np.sqrt(X[:, 1])


def trained(fn, n: int = 600, seed: int = 0, name: str = "p") -> PlatformPredictor:
    X = kernels(n, seed)
    return PlatformPredictor({"conv": ForestRegressor(n_estimators=150).fit(X, fn(X), NAMES)}, {"name": name})


def as_configs(X: np.ndarray) -> list[KernelConfig]:
    return [KernelConfig("conv", {"batch": 1, "h": int(h), "w": int(h), "cin": int(c), "cout": int(c), "kh": 1,
                                  "kw": 1, "sh": 1, "sw": 1, "ph": 0, "pw": 0, "dh": 1, "dw": 1, "groups": 1,
                                  "hout": int(h), "wout": int(h), "act": "none", "residual": "none"})
            for h, c, _ in X]


def test_kl_matches_scipy_and_is_scale_free() -> None:
    p, q = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 2.0])
    assert kl_divergence(p, q) == pytest.approx(entropy(p / 6, q / 6))
    assert kl_divergence(5 * p, 0.1 * q) == pytest.approx(kl_divergence(p, q))
    assert kl_divergence(p, p) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="must be > 0"):
        kl_divergence(p, np.array([1.0, 0.0, 1.0]))


def test_platform_built_from_the_targets_own_data_ranks_first(monkeypatch) -> None:
    import moonlit.litepred.transfer.similarity as similarity

    # the feature pipeline is bypassed: the probe's rows are given directly
    probe = kernels(60, 5)
    monkeypatch.setattr(similarity, "feature_matrix", lambda configs: probe[[c.params["i"] for c in configs]])

    def target(X: np.ndarray) -> np.ndarray:  # a faster memory-bound platform, slower on wide kernels
        return 0.3 * platform_b(X) * (1 + 0.5 * (X[:, 1] > 128))

    pool = {"compute": trained(platform_a, name="compute"), "memory": trained(platform_b, name="memory"),
            "target-own": trained(target, seed=3, name="target-own")}
    measured = target(probe)

    class Probe:  # KernelConfig-like: type + params carrying the row index
        def __init__(self, i: int):
            self.type, self.params = "conv", {"i": i}

    configs = [Probe(i) for i in range(len(probe))]
    by_kl = rank_platforms(pool, configs, measured, "kl")
    by_rho = rank_platforms(pool, configs, measured, "spearman")
    assert [s.platform for s in by_kl][0] == "target-own" and by_kl[-1].platform == "compute"
    assert by_rho[0].platform == "target-own"
    assert by_kl[0].kl < by_kl[1].kl < by_kl[2].kl  # ascending: the reference's descending sort picks 'compute'
    assert by_kl[1].platform == "memory" and 0.3 <= by_kl[1].median_ratio <= 0.45
    # ranked on whole models instead: the given errors decide, whatever the kernels say
    by_models = rank_platforms(pool, configs, measured, "models", {"compute": 0.02, "memory": 0.1, "target-own": 0.05})
    assert [s.platform for s in by_models] == ["compute", "target-own", "memory"]
    assert by_models[0].model_error == 0.02 and by_kl[0].model_error is None


def test_affine_recovers_a_rescaled_platform() -> None:
    source = trained(platform_a)
    X = kernels(40, 11)
    y = 0.4 * source.predict_kernels("conv", X) ** 1.1
    alpha, beta = fit_log_affine(source.predict_kernels("conv", X), y)
    assert (alpha, beta) == pytest.approx((np.log(0.4), 1.1), rel=1e-6)
    adapted = adapt_predictor(source, {"conv": (X, y)}, "affine", feature_names={"conv": NAMES})
    X_test = kernels(200, 12)
    np.testing.assert_allclose(adapted.predict_kernels("conv", X_test),
                               0.4 * source.predict_kernels("conv", X_test) ** 1.1, rtol=1e-9)


def distorted(X: np.ndarray) -> np.ndarray:
    """The target: the source at 0.45x, 30% slower on wide kernels (an INT8-like change of the pattern)."""
    return 0.45 * platform_a(X) * (1 + 0.3 * (X[:, 1] > 128))


@pytest.mark.parametrize("method", ["fine-tune", "residual"])
def test_transfer_beats_scratch_at_the_same_small_budget(method: str) -> None:
    source = trained(platform_a, n=800)
    X_test = kernels(400, 21)
    truth = distorted(X_test)
    errors = {}
    for budget in (30, 60):
        X = kernels(budget, 20 + budget)
        data = {"conv": (X, distorted(X))}
        for m in (method, "scratch"):
            adapted = adapt_predictor(source, data, m, feature_names={"conv": NAMES})
            errors[m, budget] = mape(adapted.predict_kernels("conv", X_test), truth)
    for budget in (30, 60):
        assert errors[method, budget] < 0.7 * errors["scratch", budget], errors
    assert errors[method, 60] < 0.08, errors


def test_fine_tune_uses_the_mlp_and_keeps_the_source_intact() -> None:
    X = kernels(400, 1)
    mlp = MLPRegressor(hidden_layers=2, hidden_width=32, max_epochs=150, seed=0).fit(X, platform_a(X), NAMES)
    source = PlatformPredictor({"conv": mlp}, {"name": "src"})
    before = source.predict_kernels("conv", X[:20]).copy()
    X_t = kernels(50, 2)
    adapted = adapt_predictor(source, {"conv": (X_t, distorted(X_t))}, "fine-tune", feature_names={"conv": NAMES},
                              lr=1e-3, epochs=100)
    assert isinstance(adapted.regressors["conv"], MLPRegressor)
    assert "MLP fine-tuned on 50 rows" in adapted.platform["transfer"]["types"]["conv"]
    np.testing.assert_array_equal(source.predict_kernels("conv", X[:20]), before)  # a copy was tuned
    X_test = kernels(200, 3)
    tuned_error = mape(adapted.predict_kernels("conv", X_test), distorted(X_test))
    assert tuned_error < 0.5 * mape(source.predict_kernels("conv", X_test), distorted(X_test))


def test_types_without_target_rows_and_types_new_to_the_source() -> None:
    source = trained(platform_a)
    X = kernels(30, 4)
    data = {"conv": (X, 0.5 * source.predict_kernels("conv", X)), "act": (X[:25], 0.01 + X[:25, 0] * 1e-3)}
    names = {"conv": NAMES, "act": NAMES}
    adapted = adapt_predictor(source, data, "residual", feature_names=names)
    assert set(adapted.kernel_types) == {"conv", "act"}
    assert "not in the source" in adapted.platform["transfer"]["types"]["act"]
    only_act = adapt_predictor(source, {"act": data["act"]}, "residual", feature_names=names)
    assert isinstance(only_act.regressors["conv"], ResidualRegressor)  # kept, with the platform offset
    scratch = adapt_predictor(source, {"act": data["act"]}, "scratch", feature_names=names)
    assert scratch.kernel_types == ["act"]  # scratch knows only what the target data shows
    with pytest.raises(ValueError, match="method 'fine-tune' needs a source"):
        adapt_predictor(None, data, "fine-tune", feature_names=names)


def test_flops_linear_recovers_a_linear_platform_and_everything_round_trips(tmp_path: Path) -> None:
    X = kernels(50, 6)
    y = 0.03 + 0.7 * X[:, 2]
    linear = LinearRegressor(["macs_m"]).fit(X, y, NAMES)
    assert (linear.coef[0], linear.intercept) == pytest.approx((0.7, 0.03), rel=1e-6)
    source = trained(platform_a)
    for method in ("residual", "flops-linear", "affine"):
        adapted = adapt_predictor(source, {"conv": (X, distorted(X))}, method, feature_names={"conv": NAMES})
        adapted.save(tmp_path / method)
        loaded = PlatformPredictor.load(tmp_path / method)
        np.testing.assert_allclose(loaded.predict_kernels("conv", X), adapted.predict_kernels("conv", X), rtol=1e-12)


def test_knowledge_pool_lists_and_loads(tmp_path: Path) -> None:
    trained(platform_a, name="a").save(tmp_path / "a")
    trained(platform_b, name="b").save(tmp_path / "b")
    (tmp_path / "not-a-platform").mkdir()
    pool = KnowledgePool(tmp_path)
    assert pool.names() == ["a", "b"] and pool.names(exclude=["a"]) == ["b"]
    assert pool.metadata("b")["kernel_types"] == ["conv"]
    assert [r["name"] for r in pool.table()] == ["a", "b"]
    assert pool.load("a").kernel_types == ["conv"]
    with pytest.raises(KeyError, match="'c' is not in the knowledge pool"):
        pool.load("c")
    with pytest.raises(FileNotFoundError, match="build predictors first"):
        KnowledgePool(tmp_path / "missing")


def correlated_pool():
    """Real conv configs where channels double as resolution halves (h · cin constant), as in CNN stages."""
    from moonlit.litepred.profile.sampler import KernelPool

    pool = KernelPool(platform="test")
    configs = []
    for h, cin in [(56, 24), (28, 48), (14, 96), (7, 192)]:
        for cout in (cin, 2 * cin):
            for k in (1, 3):
                configs.append(KernelConfig("conv", {"batch": 1, "h": h, "w": h, "cin": cin, "cout": cout, "kh": k,
                                                     "kw": k, "sh": 1, "sw": 1, "ph": k // 2, "pw": k // 2, "dh": 1,
                                                     "dw": 1, "groups": 1, "hout": h, "wout": h, "act": "relu",
                                                     "residual": "none"}))
    pool.add_configs(configs * 3, "stage-net")
    return pool, configs


def test_vae_sampler_keeps_the_joint_distribution_uniform_does_not() -> None:
    from moonlit.litepred.profile.vae import sample_configs_uniform, sample_configs_vae

    pool, real = correlated_pool()
    exclude = [real[0].key()]
    vae = sample_configs_vae(pool, 40, seed=0, exclude=exclude)
    uniform = sample_configs_uniform(pool, 40, seed=0, exclude=exclude)
    for sample in (vae, uniform):
        assert len(sample) == 40 and len({c.key() for c in sample}) == 40 and exclude[0] not in {c.key() for c in sample}
        for c in sample:  # valid: channels multiples of 8, sizes seen, same padding kept, output size recomputed
            p = c.params
            assert p["cin"] % 8 == 0 and p["h"] in (56, 28, 14, 7) and p["kh"] in (1, 3)
            assert p["ph"] == p["kh"] // 2 and p["hout"] == p["h"]

    def stage_error(sample) -> float:  # |log2(h · cin / 1344)|: 0 on every real config
        return float(np.mean([abs(np.log2(c.params["h"] * c.params["cin"] / 1344)) for c in sample]))

    assert stage_error(vae) < 0.5 * stage_error(uniform), (stage_error(vae), stage_error(uniform))


def test_model_line_error_is_zero_for_an_affine_platform_and_ranks_by_models() -> None:
    from moonlit.litepred.transfer.similarity import model_line_error

    rng = np.random.default_rng(0)
    predicted = rng.uniform(1.0, 10.0, 12)
    measured = 0.4 * predicted + 0.3  # a platform that is an affine map of the source: perfectly explained
    assert model_line_error(predicted, measured) == pytest.approx(0.0, abs=1e-12)
    noisy = measured * rng.uniform(0.8, 1.2, 12)
    # brute force: leave each model out, fit the weighted line on the rest, average the relative errors
    errors = []
    for i in range(12):
        keep = np.arange(12) != i
        w = 1 / noisy[keep] ** 2
        A = np.c_[predicted[keep], np.ones(11)] * np.sqrt(w)[:, None]
        a, b = np.linalg.lstsq(A, noisy[keep] * np.sqrt(w), rcond=None)[0]
        errors.append(abs(a * predicted[i] + b - noisy[i]) / noisy[i])
    assert model_line_error(predicted, noisy) == pytest.approx(np.mean(errors), rel=1e-9)
    with pytest.raises(ValueError, match=">= 3 models"):
        model_line_error(predicted[:2], measured[:2])
    with pytest.raises(ValueError, match="needs whole models"):
        rank_platforms({"a": None}, [], [], metric="models")  # type: ignore[dict-item]
