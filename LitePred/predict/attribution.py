"""Error attribution: which kernels carry a model's prediction error (LitePred §6; issue "close the gap", item 1).

For one model on one platform, the predictor's per-kernel predictions are put beside the engine's own
per-node profile of the whole model (:mod:`moonlit.litepred.profile.node_profile`): every executed
node is credited to the LitePred kernels whose ONNX nodes it runs (:func:`join`). An executed node
that runs nodes of several kernels (the engine fused what the rules keep apart) is split between them
in proportion to their predicted latencies; an executed node that runs no kernel's node is
*unattributed* engine time; a kernel no executed node runs (the engine folded it away) is *unprofiled*.

The model-level error splits exactly into parts (:func:`decompose`)::

    predicted − measured = Σ_t (P_t − M_t) − U − (measured − N) + b

with ``P_t`` the predictions of the kernels of type ``t`` as they enter the model's prediction
(slope · type factor · weight floor), ``M_t`` their in-model times, ``U`` the unattributed engine
time, ``N = Σ M_t + U`` the sum of executed node times, ``measured − N`` the time between nodes
(dispatch, allocation, the runtime's per-run overhead) and ``b`` the calibration intercept.
``measured`` is the platform's own measurement of the model (its protocol and the predictor's
statistic), or the median of runs of the profiled session's setup with the profiler off when the model
is not measured apart. A node's time is its predictor's statistic (p10 or median) over the profiled
runs, as the kernels it learned from.
The tracer adds a few µs per node, partly inside the node times, so ``measured − N`` can be negative;
``traced_gap_ms`` (:attr:`~moonlit.litepred.profile.node_profile.NodeProfile.traced_gap_ms`) is the time
between nodes within each traced run.

In-context kernel samples (:func:`in_context_records`) turn the same join into records of the
isolated-kernel dataset's format, marked ``metadata["context"] = "in-model"``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from moonlit.common.errors import InputError
from moonlit.litepred.kernels.detect import Detection, KernelConfig
from moonlit.litepred.predict.features import feature_matrix, kernel_macs, kernel_params
from moonlit.litepred.predict.predictor import PlatformPredictor
from moonlit.litepred.profile.node_profile import ExecutedNode, NodeProfile

__all__ = ["KernelPrediction", "KernelTime", "ModelAttribution", "attribute_onnx", "by_family", "by_size",
           "by_type", "decompose", "in_context_records", "join", "kernel_predictions", "markdown_tables",
           "plot_attribution"]

# Parts of the model-level error that are not a kernel type (rows of decompose / by_type).
UNATTRIBUTED = "(unattributed engine nodes)"
GAP = "(between nodes: dispatch, runtime)"
INTERCEPT = "(calibration intercept)"
SIZE_BINS_MMACS = (1.0, 10.0, 100.0)  # kernels binned by MACs (millions): <1, 1-10, 10-100, >=100


@dataclasses.dataclass(frozen=True)
class KernelPrediction:
    """One detected kernel: its config, the ONNX nodes it covers and its predicted contribution (ms) to the
    model's prediction (0 for a type without a regressor, ``predicted=False``)."""

    config: KernelConfig
    nodes: tuple[str, ...]
    predicted_ms: float
    predicted: bool = True

    @property
    def type(self) -> str:
        return self.config.type


@dataclasses.dataclass(frozen=True)
class KernelTime:
    """A kernel's in-model time: the executed nodes credited to it (with the share of each), per run."""

    in_model_ms: float
    layout_ms: float
    run_ms: tuple[float, ...]
    engine_nodes: tuple[tuple[str, float], ...]  # (executed node, share of its time credited here)

    @property
    def profiled(self) -> bool:
        return bool(self.engine_nodes)

    @property
    def shared(self) -> bool:
        """Some executed node of it also runs another kernel (its time was split)."""
        return any(share < 1.0 for _, share in self.engine_nodes)


def kernel_predictions(predictor: PlatformPredictor, detection: Detection) -> list[KernelPrediction]:
    """Each kernel's contribution to ``predictor``'s model latency: ``slope · type factor · max(regressor,
    weight floor)``, so that their sum plus the intercept is the model prediction (before its 1 µs floor)."""
    kernels = detection.kernels
    predicted = np.zeros(len(kernels))
    by_type: dict[str, list[int]] = {}
    for index, kernel in enumerate(kernels):
        by_type.setdefault(kernel.config.type, []).append(index)
    known = set(predictor.kernel_types)
    for kernel_type, index in by_type.items():
        if kernel_type not in known:
            continue
        rows = feature_matrix([kernels[i].config for i in index])
        # one "model" per row: the per-row value of the calibrated sum (type factor and weight floor)
        per_row = predictor.kernel_sums_flat({kernel_type: (rows, np.arange(len(index)))}, len(index),
                                             deduplicate=False)
        predicted[index] = predictor.overhead.slope * per_row
    return [KernelPrediction(k.config, tuple(k.nodes), float(p), k.config.type in known)
            for k, p in zip(kernels, predicted)]


def join(kernels: Sequence[KernelPrediction], executed: Sequence[ExecutedNode]
         ) -> tuple[list[KernelTime], list[ExecutedNode]]:
    """Credit each executed node to the kernels whose nodes it runs; returns (one :class:`KernelTime` per
    kernel, the executed nodes that run no kernel's node).

    A node's time is :attr:`ExecutedNode.ms`; one running several kernels is split in proportion to their
    predicted ms (equally if all are 0).
    """
    kernel_of: dict[str, int] = {}
    for index, kernel in enumerate(kernels):
        for node in kernel.nodes:
            kernel_of[node] = index
    n_runs = max((len(e.run_ms) for e in executed), default=0)
    in_model = np.zeros(len(kernels))
    layout = np.zeros(len(kernels))
    runs = np.zeros((len(kernels), n_runs))
    credited: list[list[tuple[str, float]]] = [[] for _ in kernels]
    unattributed: list[ExecutedNode] = []
    for node in executed:
        owners = sorted({kernel_of[n] for n in node.covers if n in kernel_of})
        if not owners:
            unattributed.append(node)
            continue
        weights = np.array([kernels[i].predicted_ms for i in owners], dtype=float)
        weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(owners), 1 / len(owners))
        node_runs = np.zeros(n_runs)
        node_runs[: len(node.run_ms)] = node.run_ms
        for owner, share in zip(owners, weights):
            in_model[owner] += share * node.ms
            runs[owner] += share * node_runs
            if node.layout:
                layout[owner] += share * node.ms
            credited[owner].append((node.name, float(share)))
    times = [KernelTime(float(in_model[i]), float(layout[i]), tuple(float(v) for v in runs[i]), tuple(credited[i]))
             for i in range(len(kernels))]
    return times, unattributed


@dataclasses.dataclass
class ModelAttribution:
    """One model's kernels, predicted and timed in context, and the split of its model-level error."""

    model: str
    family: str
    platform: str
    predicted_ms: float
    measured_ms: float
    untraced_ms: float  # median whole run of the profiled setup, profiler off
    intercept: float
    kernels: list[KernelPrediction]
    times: list[KernelTime]
    unattributed: list[ExecutedNode]
    engine: str = ""
    measurement: dict[str, Any] | None = None  # the platform's measurement of the model (all its statistics)
    node_sum_median_ms: float | None = None  # Σ of the executed nodes' medians (whatever statistic ms uses)
    traced_gap_ms: float | None = None  # NodeProfile.traced_gap_ms: time between nodes within each traced run

    @property
    def node_sum_ms(self) -> float:
        return float(sum(t.in_model_ms for t in self.times) + sum(n.ms for n in self.unattributed))

    @property
    def error_ms(self) -> float:
        return self.predicted_ms - self.measured_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "family": self.family, "platform": self.platform, "engine": self.engine,
            "predicted_ms": self.predicted_ms, "measured_ms": self.measured_ms, "untraced_ms": self.untraced_ms,
            "node_sum_ms": self.node_sum_ms, "intercept": self.intercept, "error_ms": self.error_ms,
            "node_sum_median_ms": self.node_sum_median_ms, "traced_gap_ms": self.traced_gap_ms,
            "measurement": self.measurement,
            "decomposition": decompose(self),
            "kernels": [{"type": k.type, "config": k.config.key(), "nodes": list(k.nodes),
                         "macs": kernel_macs(k.config),
                         "params": kernel_params(k.config), "predicted_ms": k.predicted_ms, "predicted": k.predicted,
                         "in_model_ms": t.in_model_ms if t.profiled else None, "layout_ms": t.layout_ms,
                         "shared": t.shared, "engine_nodes": [list(e) for e in t.engine_nodes]}
                        for k, t in zip(self.kernels, self.times)],
            "unattributed": [n.to_dict() for n in self.unattributed],
            "unattributed_by_op": {op: float(sum(n.ms for n in self.unattributed if n.op_type == op))
                                   for op in sorted({n.op_type for n in self.unattributed})},
            "unprofiled_kernels": [k.config.key() for k, t in zip(self.kernels, self.times) if not t.profiled],
        }


def decompose(result: ModelAttribution) -> dict[str, float]:
    """``{kernel type: P_t − M_t, UNATTRIBUTED: −U, GAP: −(measured − N), INTERCEPT: b}``; the values sum to
    ``predicted − measured`` (module docstring)."""
    parts: dict[str, float] = {}
    for kernel, time in zip(result.kernels, result.times):
        parts[kernel.type] = parts.get(kernel.type, 0.0) + kernel.predicted_ms - time.in_model_ms
    parts[UNATTRIBUTED] = -float(sum(n.ms for n in result.unattributed))
    parts[GAP] = -(result.measured_ms - result.node_sum_ms)
    parts[INTERCEPT] = result.intercept
    return parts


def _summary(results: Sequence[ModelAttribution], key: Any) -> list[dict[str, Any]]:
    """Rows grouped by ``key(result, kernel) -> label``: counts, sums and the share of the absolute error."""
    rows: dict[str, dict[str, Any]] = {}
    total_abs = 0.0
    for result in results:
        per_model: dict[str, float] = {}
        for kernel, time in zip(result.kernels, result.times):
            label = key(result, kernel)
            row = rows.setdefault(label, {"group": label, "kernels": 0, "unprofiled": 0, "predicted_ms": 0.0,
                                          "in_model_ms": 0.0, "layout_ms": 0.0})
            row["kernels"] += 1
            row["unprofiled"] += 0 if time.profiled else 1
            row["predicted_ms"] += kernel.predicted_ms
            row["in_model_ms"] += time.in_model_ms
            row["layout_ms"] += time.layout_ms
            per_model[label] = per_model.get(label, 0.0) + kernel.predicted_ms - time.in_model_ms
        parts = decompose(result)
        for label in (UNATTRIBUTED, GAP, INTERCEPT):
            row = rows.setdefault(label, {"group": label, "kernels": 0, "unprofiled": 0, "predicted_ms": 0.0,
                                          "in_model_ms": 0.0, "layout_ms": 0.0})
            row["predicted_ms"] += parts[label] if label == INTERCEPT else 0.0
            row["in_model_ms"] += -parts[label] if label != INTERCEPT else 0.0
            per_model[label] = parts[label]
        for label, residual in per_model.items():
            rows[label]["residual_ms"] = rows[label].get("residual_ms", 0.0) + residual
            rows[label]["abs_residual_ms"] = rows[label].get("abs_residual_ms", 0.0) + abs(residual)
        total_abs += sum(abs(v) for v in per_model.values())
    for row in rows.values():
        row["share_of_abs_error"] = row["abs_residual_ms"] / total_abs if total_abs > 0 else 0.0
    return sorted(rows.values(), key=lambda r: (r["group"].startswith("("), -r["abs_residual_ms"]))


def by_type(results: Sequence[ModelAttribution]) -> list[dict[str, Any]]:
    """Per kernel type over ``results`` (plus the non-kernel parts): kernels, Σ predicted, Σ in-model, residual
    ``Σ (P − M)`` and its share of the absolute error ``Σ_models |part| / Σ_models Σ_parts |part|``."""
    return _summary(results, lambda result, kernel: kernel.type)


def by_family(results: Sequence[ModelAttribution]) -> list[dict[str, Any]]:
    """As :func:`by_type`, kernels grouped by the model family (``<family>: <type>``)."""
    return _summary(results, lambda result, kernel: f"{result.family}: {kernel.type}")


def by_size(results: Sequence[ModelAttribution]) -> list[dict[str, Any]]:
    """As :func:`by_type`, kernels grouped by type and MACs bin (:data:`SIZE_BINS_MMACS`)."""
    def label(result: ModelAttribution, kernel: KernelPrediction) -> str:
        mmacs = kernel_macs(kernel.config) / 1e6
        bin_index = int(np.searchsorted(SIZE_BINS_MMACS, mmacs, side="right"))
        edges = ("<1", "1-10", "10-100", ">=100")
        return f"{kernel.type} {edges[bin_index]} MMACs"

    return _summary(results, label)


def attribute_onnx(predictor: PlatformPredictor, backend: Any, platform: str, path: str | Path, *, name: str,
                   family: str = "onnx", input_shapes: Mapping[str, Sequence[int]] | None = None, warmup: int = 5,
                   runs: int = 20, measure: bool = True) -> ModelAttribution:
    """Attribute ``predictor``'s error on the ONNX file ``path`` on ``backend`` (the platform ``platform``).

    Kernels are detected with the predictor's rules on the file's own graph, so their node names are the
    profiled ones. ``measure``: the model is also timed by the platform's protocol (the predictor's
    statistic); otherwise the median untraced run (:attr:`NodeProfile.model_ms`) is the measured latency.
    """
    from moonlit.litepred.graph.onnx_import import load_graph
    from moonlit.litepred.kernels.detect import detect_kernels
    from moonlit.litepred.pipeline import STATISTICS
    from moonlit.litepred.profile.node_profile import node_profile
    from moonlit.litepred.profile.ort import resolve_onnx_inputs

    graph = load_graph(path, input_shapes)  # an InputError naming the file when it is not a readable ONNX model
    detection = detect_kernels(graph, predictor.rules)
    kernels = kernel_predictions(predictor, detection)
    feed = resolve_onnx_inputs(path, dict(input_shapes) if input_shapes else None)
    profile: NodeProfile = node_profile(backend, platform, path, feed, warmup=warmup, runs=runs)
    statistic = predictor.platform.get("statistic", "median")
    nodes = [dataclasses.replace(node, statistic=statistic) for node in profile.nodes]
    times, unattributed = join(kernels, nodes)
    measured, measurement = profile.model_ms, None
    if measure:
        taken = backend.measure_onnx(path, feed)
        measured, measurement = float(getattr(taken, STATISTICS[statistic])), taken.to_dict()
    predicted = sum(k.predicted_ms for k in kernels) + predictor.overhead.intercept
    return ModelAttribution(name, family, platform, float(predicted), measured, profile.model_ms,
                            float(predictor.overhead.intercept), kernels, times, unattributed, profile.engine,
                            measurement, profile.node_sum_ms, profile.traced_gap_ms)


def in_context_records(result: ModelAttribution, backend: str, warmup: int = 0) -> list[Any]:
    """Kernel samples timed inside ``result``'s model, as :class:`~moonlit.litepred.profile.dataset.ProfileRecord`
    of kind ``kernel`` (the isolated-kernel format) with ``metadata["context"] = "in-model"``.

    Only kernels that executed nodes ran alone are taken (no split time, no unprofiled kernel). Latency
    statistics are over the profiled runs; nothing is subtracted (the engine's node time has no call overhead).
    """
    from moonlit.litepred.profile.dataset import ProfileRecord

    records = []
    for kernel, time in zip(result.kernels, result.times):
        if not time.profiled or time.shared:
            continue
        runs = np.asarray(time.run_ms, dtype=float)
        median = float(np.median(runs))
        p10, p90 = (float(v) for v in np.percentile(runs, [10, 90]))
        measurement = {"backend": backend, "median_ms": median, "raw_median_ms": median, "p10_ms": p10,
                       "p90_ms": p90, "runs": int(len(runs)), "warmup": warmup, "overhead_ms": 0.0,
                       "spread": (p90 - p10) / median if median > 0 else 0.0}
        metadata = {"context": "in-model", "model": result.model, "family": result.family, "engine": result.engine,
                    "nodes": list(kernel.nodes), "engine_nodes": [name for name, _ in time.engine_nodes]}
        records.append(ProfileRecord.create(backend, "kernel", kernel.type, dict(kernel.config.params), measurement,
                                            metadata))
    return records


def markdown_tables(results: Sequence[ModelAttribution]) -> str:
    """The per-model table and the residual-by-kernel-type table, as markdown."""
    lines = ["| model | measured ms | predicted ms | error | Σ node times ms | Σ nodes / measured | unattributed ms "
             "| between nodes in a traced run, ms |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        gap = f"{r.traced_gap_ms:.3f}" if r.traced_gap_ms is not None else "–"
        lines.append(f"| {r.model} | {r.measured_ms:.3f} | {r.predicted_ms:.3f} | "
                     f"{100 * r.error_ms / r.measured_ms:+.1f}% | {r.node_sum_ms:.3f} | "
                     f"{r.node_sum_ms / r.measured_ms:.2f} | {-decompose(r)[UNATTRIBUTED]:.3f} | {gap} |")
    lines += ["", "| kernel type | kernels | Σ predicted ms | Σ in-model ms | residual ms (P − M) "
              "| share of abs. error |",
              "|---|---:|---:|---:|---:|---:|"]
    for row in by_type(results):
        lines.append(f"| {row['group']} | {row['kernels']} | {row['predicted_ms']:.3f} | {row['in_model_ms']:.3f} | "
                     f"{row['residual_ms']:+.3f} | {row['share_of_abs_error']:.1%} |")
    return "\n".join(lines) + "\n"


def plot_attribution(results: Sequence[ModelAttribution], path: str | Path, title: str) -> Path:
    """Predicted vs in-model ms per kernel (log-log, one colour per type) beside the residual share by type."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"plot path {str(path)!r} should end in .png")
    fig = Figure(figsize=(11.0, 5.0), dpi=110)
    FigureCanvasAgg(fig)
    scatter, bars = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    points: dict[str, list[tuple[float, float]]] = {}
    for result in results:
        for kernel, time in zip(result.kernels, result.times):
            if time.profiled and kernel.predicted and time.in_model_ms > 0 and kernel.predicted_ms > 0:
                points.setdefault(kernel.type, []).append((time.in_model_ms, kernel.predicted_ms))
    every = [v for pairs in points.values() for pair in pairs for v in pair]
    if every:
        line = np.geomspace(min(every) / 1.3, max(every) * 1.3, 32)
        scatter.fill_between(line, line * 0.9, line * 1.1, color="tab:green", alpha=0.15, label="±10%")
        scatter.plot(line, line, color="black", linewidth=1.0)
        palette = colormaps["tab20"]  # the default cycle repeats after 10 types
        for index, (kernel_type, pairs) in enumerate(sorted(points.items())):
            xs, ys = zip(*pairs)
            scatter.scatter(xs, ys, s=10, alpha=0.7, label=kernel_type, color=palette(index % 20))
        scatter.set_xscale("log")
        scatter.set_yscale("log")
        scatter.legend(fontsize=7, loc="upper left")
    scatter.set_xlabel("in-model time (ms, engine profile)")
    scatter.set_ylabel("predicted (ms)")
    scatter.set_title("kernels: predicted vs in-model")
    rows = by_type(results)
    labels = [r["group"] for r in rows]
    bars.barh(range(len(rows)), [r["share_of_abs_error"] for r in rows],
              color=["tab:red" if r["residual_ms"] > 0 else "tab:blue" for r in rows])
    bars.set_yticks(range(len(rows)), labels, fontsize=7)
    bars.invert_yaxis()
    bars.set_xlabel("share of absolute error (red: over-predicted, blue: under)")
    bars.set_title("residual by kernel type")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
