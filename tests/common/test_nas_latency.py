"""LatencyConstraint: batched LitePred prediction equals per-candidate sums; the band [c − δ, c] in a search."""

from __future__ import annotations

import numpy as np
import pytest
from moonlit.common.nas import (
    EvolutionConfig,
    EvolutionSearch,
    LatencyConstraint,
    SearchProblem,
)
from moonlit.litepred.calibration import Overhead
from moonlit.litepred.predictor import PlatformPredictor
from moonlit.litepred.regressors import ForestRegressor

WIDTHS = (8, 16, 24, 32, 48)
STAGES = 4


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
    """A toy network: one conv per stage (previous width -> width), a classifier matmul at the end."""
    convs = np.array([[cin, cout] for cin, cout in zip((16,) + widths[:-1], widths)], dtype=float)
    return {"conv": convs, "matmul": np.array([[widths[-1], 10.0]])}


def hand_latency(predictor: PlatformPredictor, widths: tuple[int, ...]) -> float:
    rows = kernel_rows(widths)
    conv = predictor.predict_kernels("conv", rows["conv"]).sum()
    matmul = predictor.predict_kernels("matmul", rows["matmul"]).sum()
    return 1.2 * (0.9 * conv + matmul) + 0.3  # the overhead above, written out


def random_widths(rng: np.random.Generator, n: int) -> list[tuple[int, ...]]:
    return [tuple(int(w) for w in rng.choice(WIDTHS, STAGES)) for _ in range(n)]


def test_batched_latency_equals_per_candidate_sums(predictor) -> None:
    batch = random_widths(np.random.default_rng(1), 40)
    calls = []
    original = predictor.predict_models

    class Counting:
        platform = predictor.platform

        def predict_models(self, models, apply_overhead=True):
            calls.append(len(models))
            return original(models, apply_overhead=apply_overhead)

    constraint = LatencyConstraint(Counting(), kernel_rows, limit_ms=2.0)
    batched = constraint.predict(batch)
    assert calls == [40]  # one predictor call for the whole batch
    single = [predictor.predict_model(kernel_rows(w)) for w in batch]
    np.testing.assert_allclose(batched, single, rtol=1e-12)
    np.testing.assert_allclose(batched, [hand_latency(predictor, w) for w in batch], rtol=1e-12)
    raw = LatencyConstraint(predictor, kernel_rows, limit_ms=2.0, apply_overhead=False).predict(batch)
    np.testing.assert_allclose(raw, [predictor.kernel_sums([kernel_rows(w)])[0] for w in batch], rtol=1e-12)


def test_band_and_description(predictor) -> None:
    batch = random_widths(np.random.default_rng(2), 60)
    latency = np.array([hand_latency(predictor, w) for w in batch])
    limit, delta = float(np.median(latency)), 0.2
    check = LatencyConstraint(predictor, kernel_rows, limit, delta).check(batch)
    np.testing.assert_array_equal(check.feasible, (latency >= limit - delta) & (latency <= limit))
    np.testing.assert_allclose(check.values["latency_ms"], latency, rtol=1e-12)
    assert 0 < check.feasible.sum() < len(batch)
    upper_only = LatencyConstraint(predictor, kernel_rows, limit)
    np.testing.assert_array_equal(upper_only(batch), latency <= limit)
    assert upper_only.description == f"predicted latency on 'toy-cpu': latency_ms in [-inf, {limit:g}] ms"
    with pytest.raises(ValueError, match="limit_ms = 0"):
        LatencyConstraint(predictor, kernel_rows, 0)
    with pytest.raises(ValueError, match="delta_ms = -1"):
        LatencyConstraint(predictor, kernel_rows, 1.0, -1)
    with pytest.raises(ValueError, match="'pool' has no predictor"):
        LatencyConstraint(predictor, lambda w: {"pool": np.ones((1, 2))}, 1.0).predict(batch[:1])


def test_search_under_latency_band(predictor) -> None:
    all_latency = [hand_latency(predictor, w) for w in random_widths(np.random.default_rng(3), 200)]
    limit, delta = float(np.percentile(all_latency, 60)), 0.25
    constraint = LatencyConstraint(predictor, kernel_rows, limit, delta)

    def mutate(w, rng, prob):
        return tuple(int(rng.choice(WIDTHS)) if rng.random() < prob else x for x in w)

    problem = SearchProblem(
        sample=lambda rng: random_widths(rng, 1)[0], mutate=mutate,
        crossover=lambda a, b, rng: tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b)),
        encode=lambda w: "-".join(map(str, w)), decode=lambda s: tuple(int(x) for x in s.split("-")),
        fitness=lambda batch: [float(sum(w)) for w in batch], constraint=constraint)
    search = EvolutionSearch(problem, EvolutionConfig(population=24, parents=12, mutations=6, crossovers=6,
                                                      iterations=4, max_attempts=30, seed=0))
    search.run()
    for record in search.records.values():
        expected = hand_latency(predictor, record.candidate)
        assert record.objectives["latency_ms"] == pytest.approx(expected, rel=1e-12)
        assert limit - delta <= expected <= limit
    assert search.objective_names() == ["latency_ms"]
    assert search.pareto_front()[0].objectives["latency_ms"] == min(
        r.objectives["latency_ms"] for r in search.records.values())


def test_predictions_are_positive_or_an_error(predictor) -> None:
    from moonlit.litepred.predictor import MIN_LATENCY_MS

    batch = random_widths(np.random.default_rng(3), 5)
    saved = predictor.overhead
    try:
        predictor.overhead = Overhead(1.0, -100.0, 10, True)  # a stored line below zero for every candidate
        latency = LatencyConstraint(predictor, kernel_rows, limit_ms=2.0).predict(batch)
        np.testing.assert_array_equal(latency, np.full(5, MIN_LATENCY_MS))
    finally:
        predictor.overhead = saved

    class Broken:
        platform: dict = {}

        def __init__(self, values: list[float]) -> None:
            self.values = values

        def predict_models(self, models, apply_overhead=True):
            return np.array(self.values[: len(models)])

    for values in ([0.5, -0.1, 0.5, 0.5, 0.5], [0.5, float("nan"), 0.5, 0.5, 0.5], [0.5, 0.5]):
        with pytest.raises(ValueError, match="expected one finite latency > 0 each"):
            LatencyConstraint(Broken(values), kernel_rows, limit_ms=2.0).predict(batch)
