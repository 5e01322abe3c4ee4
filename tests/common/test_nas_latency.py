"""LatencyConstraint: one predictor call per batch, the band [c − δ, c] in a search, bad predictions refused.

The predictor is written here (kernel latency = a per-type factor times the product of the row's features,
summed per model, then ``slope · Σ + intercept``), and the expected latencies are written out from the
widths by hand. LitePred's predictor under the same constraint is tested in ``tests/litepred``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from moonlit.common.nas import (
    EvolutionConfig,
    EvolutionSearch,
    LatencyConstraint,
    SearchProblem,
)

WIDTHS = (8, 16, 24, 32, 48)
STAGES = 4
SCALES = {"conv": 1e-3, "matmul": 5e-4}  # ms per unit of the product of a row's features
SLOPE, INTERCEPT = 1.2, 0.3


class ProductSumPredictor:
    """Latency of a model: ``SLOPE · Σ_rows SCALES[type] · Π row + INTERCEPT``; records the batch sizes asked."""

    def __init__(self, platform: Mapping[str, Any] | None = None) -> None:
        if platform is not None:
            self.platform = platform
        self.calls: list[int] = []

    def predict_models(self, models: Sequence[Mapping[str, np.ndarray]], apply_overhead: bool = True) -> np.ndarray:
        self.calls.append(len(models))
        sums = np.array([sum(SCALES[t] * np.prod(X, axis=1).sum() for t, X in rows.items()) for rows in models])
        return SLOPE * sums + INTERCEPT if apply_overhead else sums


def kernel_rows(widths: tuple[int, ...]) -> dict[str, np.ndarray]:
    """A toy network: one conv per stage (previous width -> width), a classifier matmul at the end."""
    convs = np.array([[cin, cout] for cin, cout in zip((16,) + widths[:-1], widths)], dtype=float)
    return {"conv": convs, "matmul": np.array([[widths[-1], 10.0]])}


def hand_latency(widths: tuple[int, ...], apply_overhead: bool = True) -> float:
    """The predictor's latency of ``kernel_rows(widths)``, written out from the widths."""
    channels = (16,) + widths
    total = 1e-3 * sum(channels[i] * channels[i + 1] for i in range(STAGES)) + 5e-4 * widths[-1] * 10
    return 1.2 * total + 0.3 if apply_overhead else total


def random_widths(rng: np.random.Generator, n: int) -> list[tuple[int, ...]]:
    return [tuple(int(w) for w in rng.choice(WIDTHS, STAGES)) for _ in range(n)]


def test_batch_is_predicted_in_one_call() -> None:
    batch = random_widths(np.random.default_rng(1), 40)
    predictor = ProductSumPredictor({"name": "toy-cpu"})
    latency = LatencyConstraint(predictor, kernel_rows, limit_ms=2.0).predict(batch)
    assert predictor.calls == [40]
    np.testing.assert_allclose(latency, [hand_latency(w) for w in batch], rtol=1e-12)
    raw = LatencyConstraint(predictor, kernel_rows, limit_ms=2.0, apply_overhead=False).predict(batch)
    assert predictor.calls == [40, 40]
    np.testing.assert_allclose(raw, [hand_latency(w, apply_overhead=False) for w in batch], rtol=1e-12)


def test_band_and_description() -> None:
    predictor = ProductSumPredictor({"name": "toy-cpu"})
    batch = random_widths(np.random.default_rng(2), 60)
    latency = np.array([hand_latency(w) for w in batch])
    limit, delta = float(np.median(latency)), 0.2
    check = LatencyConstraint(predictor, kernel_rows, limit, delta).check(batch)
    np.testing.assert_array_equal(check.feasible, (latency >= limit - delta) & (latency <= limit))
    np.testing.assert_allclose(check.values["latency_ms"], latency, rtol=1e-12)
    assert 0 < check.feasible.sum() < len(batch)
    upper_only = LatencyConstraint(predictor, kernel_rows, limit)
    np.testing.assert_array_equal(upper_only(batch), latency <= limit)
    assert upper_only.description == f"predicted latency on 'toy-cpu': latency_ms in [-inf, {limit:g}] ms"
    for unnamed in (ProductSumPredictor(), ProductSumPredictor({})):  # no platform, or one without a name
        description = LatencyConstraint(unnamed, kernel_rows, limit, delta).description
        assert description == f"latency_ms in [{limit - delta:g}, {limit:g}] ms"
    with pytest.raises(ValueError, match="limit_ms = 0"):
        LatencyConstraint(predictor, kernel_rows, 0)
    with pytest.raises(ValueError, match="delta_ms = -1"):
        LatencyConstraint(predictor, kernel_rows, 1.0, -1)


def test_search_under_latency_band() -> None:
    all_latency = [hand_latency(w) for w in random_widths(np.random.default_rng(3), 200)]
    limit, delta = float(np.percentile(all_latency, 60)), 0.25
    constraint = LatencyConstraint(ProductSumPredictor(), kernel_rows, limit, delta)

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
        expected = hand_latency(record.candidate)
        assert record.objectives["latency_ms"] == pytest.approx(expected, rel=1e-12)
        assert limit - delta <= expected <= limit
    assert search.objective_names() == ["latency_ms"]
    assert search.pareto_front()[0].objectives["latency_ms"] == min(
        r.objectives["latency_ms"] for r in search.records.values())


def test_predictions_must_be_finite_and_positive() -> None:
    batch = random_widths(np.random.default_rng(3), 5)

    class Fixed:
        def __init__(self, values: list[float]) -> None:
            self.values = values

        def predict_models(self, models, apply_overhead=True):
            return np.array(self.values[: len(models)])

    np.testing.assert_array_equal(LatencyConstraint(Fixed([0.5] * 5), kernel_rows, 2.0).predict(batch), [0.5] * 5)
    for values in ([0.5, -0.1, 0.5, 0.5, 0.5], [0.5, 0.0, 0.5, 0.5, 0.5], [0.5, float("nan"), 0.5, 0.5, 0.5],
                   [0.5, float("inf"), 0.5, 0.5, 0.5], [0.5, 0.5]):
        with pytest.raises(ValueError, match="expected one finite latency > 0 each"):
            LatencyConstraint(Fixed(values), kernel_rows, limit_ms=2.0).predict(batch)
