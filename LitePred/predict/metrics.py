"""Latency-prediction accuracy metrics and the measurement ceiling (LitePred, NSDI'24, Sec. 6).

±k% accuracy is the reference's (and nn-Meter's) definition: the fraction of samples with
``|pred - true| / true <= k``; the boundary counts as inside (a 1e-12 slack absorbs float round-off
such as ``|1.1 - 1.0| / 1.0 > 0.1``). RMSE is in the unit of the inputs (ms); MAPE and all
accuracies are fractions (0.05 means 5%), never percentages.

The *measurement ceiling* is the accuracy a perfect predictor could reach given measurement noise:
the fraction of samples whose two independent measurements agree within ±k. By default the
disagreement is taken relative to the mean of the two measurements (symmetric in the two runs);
``reference="first"`` uses the first run as the truth, like :func:`within`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "accuracy_report",
    "mape",
    "measurement_ceiling",
    "plot_scatter",
    "rmse",
    "within",
]

# Slack on the ±k boundary so that e.g. 1.1 vs 1.0 counts as within ±10%.
_BOUNDARY_SLACK = 1e-12


def _as_pair(pred: Any, true: Any, pred_name: str = "pred", true_name: str = "true") -> tuple[np.ndarray, np.ndarray]:
    """Validate and return two 1-D float64 arrays of equal, non-zero length with ``true > 0``."""
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    if p.ndim != 1 or t.ndim != 1:
        raise ValueError(f"{pred_name} and {true_name} must be 1-D, got shapes {p.shape} and {t.shape}")
    if p.shape != t.shape:
        raise ValueError(f"{pred_name} has {p.size} values but {true_name} has {t.size}; expected the same length")
    if p.size == 0:
        raise ValueError(f"{pred_name} and {true_name} are empty; expected at least one sample")
    if not np.all(np.isfinite(p)):
        bad = int(np.flatnonzero(~np.isfinite(p))[0])
        raise ValueError(f"{pred_name}[{bad}] = {p[bad]} is not finite")
    bad_true = np.flatnonzero(~(np.isfinite(t) & (t > 0)))
    if bad_true.size:
        i = int(bad_true[0])
        raise ValueError(f"{true_name}[{i}] = {t[i]}; expected finite latencies > 0 "
                         f"({bad_true.size} bad values)")
    return p, t


def _check_k(k: float) -> float:
    if not (isinstance(k, (int, float)) and np.isfinite(k) and k > 0):
        raise ValueError(f"k = {k!r}; expected a positive fraction such as 0.05 or 0.10")
    return float(k)


def within(pred: Any, true: Any, k: float) -> float:
    """Fraction of samples with ``|pred - true| / true <= k`` (k as a fraction: 0.10 is ±10%)."""
    k = _check_k(k)
    p, t = _as_pair(pred, true)
    return float(np.mean(np.abs(p - t) / t <= k + _BOUNDARY_SLACK))


def rmse(pred: Any, true: Any) -> float:
    """Root mean squared error, in the unit of the inputs."""
    p, t = _as_pair(pred, true)
    return float(np.sqrt(np.mean((p - t) ** 2)))


def mape(pred: Any, true: Any) -> float:
    """Mean absolute percentage error as a fraction: ``mean(|pred - true| / true)``."""
    p, t = _as_pair(pred, true)
    return float(np.mean(np.abs(p - t) / t))


def measurement_ceiling(first: Any, second: Any, k: float = 0.10, reference: str = "mean") -> float:
    """Fraction of samples whose two independent measurements agree within ±k.

    ``reference="mean"``: ``|first - second| / ((first + second) / 2) <= k`` (symmetric);
    ``reference="first"``: ``|second - first| / first <= k`` (the first run plays the truth).
    """
    k = _check_k(k)
    a, b = _as_pair(first, second, "first", "second")
    if not np.all(a > 0):
        i = int(np.flatnonzero(a <= 0)[0])
        raise ValueError(f"first[{i}] = {a[i]}; expected latencies > 0")
    if reference == "mean":
        rel = np.abs(a - b) / ((a + b) / 2.0)
    elif reference == "first":
        rel = np.abs(b - a) / a
    else:
        raise ValueError(f"reference = {reference!r}; expected 'mean' or 'first'")
    return float(np.mean(rel <= k + _BOUNDARY_SLACK))


def accuracy_report(pred: Any, true: Any, repeat: Any | None = None) -> dict[str, float | int]:
    """±5% / ±10% accuracy, RMSE (ms), MAPE (fraction) and n.

    ``repeat``: a second, independent measurement of the same samples; when given, the measurement
    ceilings (``ceiling_within_5pct``/``ceiling_within_10pct``, relative to the mean of the two
    runs) are reported beside the accuracies, as the paper's evaluation asks.
    """
    p, t = _as_pair(pred, true)
    report: dict[str, float | int] = {
        "n": int(p.size),
        "within_5pct": within(p, t, 0.05),
        "within_10pct": within(p, t, 0.10),
        "rmse_ms": rmse(p, t),
        "mape": mape(p, t),
    }
    if repeat is not None:
        report["ceiling_within_5pct"] = measurement_ceiling(t, repeat, 0.05)
        report["ceiling_within_10pct"] = measurement_ceiling(t, repeat, 0.10)
    return report


def plot_scatter(pred: Any, true: Any, path: str | Path, title: str, ceiling: float | None = None) -> Path:
    """Predicted-vs-measured scatter on log axes with the y = x line and the ±10% band; writes a PNG.

    The legend box shows n, ±5%/±10% accuracy and MAPE, and ``ceiling`` (the ±10% measurement
    ceiling as a fraction) when given. Returns the path written.
    """
    # Figure + Agg canvas directly: no pyplot global state, works without a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    p, t = _as_pair(pred, true)
    if not np.all(p > 0):
        i = int(np.flatnonzero(p <= 0)[0])
        raise ValueError(f"pred[{i}] = {p[i]} cannot be drawn on log axes; expected predictions > 0")
    if ceiling is not None and not (0.0 <= ceiling <= 1.0):
        raise ValueError(f"ceiling = {ceiling!r}; expected a fraction in [0, 1]")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path {str(path)!r} should end in .png")

    fig = Figure(figsize=(5.0, 5.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    lo = min(p.min(), t.min()) / 1.3
    hi = max(p.max(), t.max()) * 1.3
    line = np.geomspace(lo, hi, 64)
    ax.fill_between(line, line * 0.9, line * 1.1, color="tab:green", alpha=0.15, label="±10%")
    ax.plot(line, line, color="black", linewidth=1.0, label="y = x")
    ax.scatter(t, p, s=8, alpha=0.6, color="tab:blue", edgecolors="none")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(title)
    text = (f"n = {p.size}\n±5%: {within(p, t, 0.05):.1%}\n±10%: {within(p, t, 0.10):.1%}\n"
            f"MAPE: {mape(p, t):.1%}")
    if ceiling is not None:
        text += f"\nceiling ±10%: {ceiling:.1%}"
    ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", ha="left", fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
