"""Accuracy metrics vs hand-computed values; scatter plot output (moonlit.litepred.predict.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moonlit.litepred.predict.metrics import (
    accuracy_report,
    mape,
    measurement_ceiling,
    plot_scatter,
    rmse,
    within,
)

# relative errors: 0.02, 0.08, 0.10 (boundary), 0.25
TRUE = [1.0, 2.0, 10.0, 4.0]
PRED = [1.02, 1.84, 11.0, 5.0]


def test_within_counts_by_hand() -> None:
    assert within(PRED, TRUE, 0.05) == pytest.approx(1 / 4)
    assert within(PRED, TRUE, 0.10) == pytest.approx(3 / 4)  # 11 vs 10 sits on the boundary: inside
    assert within(PRED, TRUE, 0.30) == pytest.approx(1.0)
    assert within([1.1], [1.0], 0.10) == 1.0  # |1.1 - 1.0| is 0.10000000000000009 in floats
    assert within([1.1000001], [1.0], 0.10) == 0.0


def test_rmse_and_mape_by_hand() -> None:
    squared = (0.02**2 + 0.16**2 + 1.0**2 + 1.0**2) / 4
    assert rmse(PRED, TRUE) == pytest.approx(math.sqrt(squared), rel=1e-12)
    assert mape(PRED, TRUE) == pytest.approx((0.02 + 0.08 + 0.10 + 0.25) / 4, rel=1e-12)


def test_accuracy_report_with_and_without_repeat() -> None:
    report = accuracy_report(PRED, TRUE)
    assert report == pytest.approx({"n": 4, "within_5pct": 0.25, "within_10pct": 0.75,
                                    "rmse_ms": rmse(PRED, TRUE), "mape": 0.1125})
    repeat = [1.04, 2.3, 10.0, 4.1]  # vs the mean of the two runs: 0.0392, 0.1395, 0, 0.0247
    report = accuracy_report(PRED, TRUE, repeat=repeat)
    assert report["ceiling_within_5pct"] == pytest.approx(0.75)
    assert report["ceiling_within_10pct"] == pytest.approx(0.75)


def test_measurement_ceiling_mean_vs_first() -> None:
    first, second = [100.0, 100.0, 100.0], [109.0, 111.0, 90.0]
    # relative to the mean: 9/104.5=0.086, 11/105.5=0.104, 10/95=0.105
    assert measurement_ceiling(first, second, 0.10) == pytest.approx(1 / 3)
    # relative to the first: 0.09, 0.11, 0.10 (boundary, inside)
    assert measurement_ceiling(first, second, 0.10, reference="first") == pytest.approx(2 / 3)
    # symmetric: swapping the runs changes nothing with the mean reference
    assert measurement_ceiling(second, first, 0.10) == measurement_ceiling(first, second, 0.10)


@pytest.mark.parametrize("call, message", [
    (lambda: within([1.0, 2.0], [1.0], 0.1), "same length"),
    (lambda: mape([1.0, 2.0], [1.0, 0.0]), r"true\[1\] = 0.0"),
    (lambda: rmse([1.0, float("nan")], [1.0, 2.0]), r"pred\[1\] = nan"),
    (lambda: within([1.0], [1.0], 0.0), "positive fraction"),
    (lambda: within([], [], 0.1), "empty"),
    (lambda: measurement_ceiling([1.0], [1.0], 0.1, reference="median"), "'mean' or 'first'"),
    (lambda: accuracy_report(np.ones((2, 2)), np.ones((2, 2))), "1-D"),
])
def test_invalid_inputs_raise_clearly(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_plot_scatter_writes_a_png(tmp_path) -> None:
    from matplotlib.image import imread

    rng = np.random.default_rng(0)
    true = rng.uniform(0.05, 50.0, 60)
    pred = true * rng.uniform(0.85, 1.15, 60)
    path = plot_scatter(pred, true, tmp_path / "plots" / "cpu.png", "ort-fp32 models", ceiling=0.97)
    assert path == tmp_path / "plots" / "cpu.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert image.shape[0] == 600 and image.shape[1] == 600  # 5 in x 120 dpi
    assert image[..., :3].std() > 0.05  # not a blank canvas
    with pytest.raises(ValueError, match=r"\.png"):
        plot_scatter(pred, true, tmp_path / "cpu.jpg", "x")
    with pytest.raises(ValueError, match="log axes"):
        plot_scatter(-pred, true, tmp_path / "neg.png", "x")
