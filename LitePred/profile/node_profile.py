"""Per-node profiles of whole models, taken by the engines' own profilers (LitePred §6, error attribution).

A kernel measured alone is not the kernel inside a model: the cache holds what the previous node
left, the engine may change layouts between nodes or fuse neighbours. The engines time each node of
a whole model as it runs:

* **ONNX Runtime** (``enable_profiling``): a JSON trace (Chrome trace format) with one ``"cat": "Node"``
  event per executed node and run (``"name"`` = node name + ``_kernel_time``, ``"dur"`` in µs,
  ``args.op_name``) and one ``"cat": "Session"``, ``"name": "model_run"`` event per run;
  :func:`parse_ort_trace` splits the node events into runs by those windows.
* **OpenVINO** (``PERF_COUNT``): each executed layer's ``real_time`` per inference
  (:func:`moonlit.common.profiling.openvino.per_layer_counters`).

The engine runs an *optimized* graph, so its node names are not the ONNX file's: executed nodes are
mapped back to the ONNX nodes they run by :mod:`moonlit.litepred.profile.node_map`.

OpenVINO's executed layers are grouped into ONNX node sets by
:func:`moonlit.litepred.kernels.ov_fusion.executed_partition`; an executed layer outside every group
runs the node of the (QDQ) graph it is named after, if any (a FakeQuantize named after a Q/DQ node);
an inserted Reorder (named ``<source>_<layout>_<layout>_<consumer>``) goes with its consumer (else its
source), as layout time.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from moonlit.common.errors import InputError
from moonlit.common.profiling.backends import onnxruntime_session_options
from moonlit.litepred.profile.node_map import LAYOUT_OPS, map_ort_nodes, node_names, timed_to_original, translate

__all__ = ["ExecutedNode", "NodeProfile", "node_profile", "ort_node_profile", "openvino_node_profile",
           "parse_ort_trace"]

_KERNEL_SUFFIX = "_kernel_time"


@dataclasses.dataclass(frozen=True)
class ExecutedNode:
    """One node (ORT) or layer (OpenVINO) as the engine ran it: its time in each profiled run and the ONNX
    nodes it runs (empty: no ONNX node could be found for it)."""

    name: str
    op_type: str
    run_ms: tuple[float, ...]
    covers: tuple[str, ...]
    layout: bool = False
    statistic: str = "median"  # what ms reports over the runs: "median" or "p10" (a predictor's statistic)

    def __post_init__(self) -> None:
        if self.statistic not in ("median", "p10"):
            raise InputError(f"statistic {self.statistic!r}; expected 'median' or 'p10'")

    @property
    def median_ms(self) -> float:
        return float(np.median(self.run_ms)) if self.run_ms else 0.0

    @property
    def ms(self) -> float:
        """The node's time by :attr:`statistic` over its runs."""
        if not self.run_ms:
            return 0.0
        return self.median_ms if self.statistic == "median" else float(np.percentile(self.run_ms, 10))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op_type": self.op_type, "ms": self.ms, "statistic": self.statistic,
                "run_ms": list(self.run_ms), "covers": list(self.covers), "layout": self.layout}


@dataclasses.dataclass
class NodeProfile:
    """Every executed node of one model over the profiled runs; ``run_ms``: whole runs of the same session setup
    with the profiler off (tracing adds per-node bookkeeping: the traced runs are ``traced_run_ms``)."""

    engine: str
    nodes: list[ExecutedNode]
    run_ms: list[float]
    traced_run_ms: list[float] = dataclasses.field(default_factory=list)

    @property
    def model_ms(self) -> float:
        """Median whole-run time, profiler off (same session options, same feed)."""
        return float(np.median(self.run_ms))

    @property
    def node_sum_ms(self) -> float:
        """Sum over executed nodes of each node's median time."""
        return float(sum(node.median_ms for node in self.nodes))

    @property
    def traced_gap_ms(self) -> float | None:
        """Median over the traced runs of (the run's time − its nodes' times): the time between nodes, taken
        within each run, so it does not depend on how loaded the machine was across runs (it includes what
        tracing itself costs). None without traced runs."""
        if not self.traced_run_ms:
            return None
        node_sums = np.sum([node.run_ms for node in self.nodes], axis=0) if self.nodes else 0.0
        return float(np.median(np.asarray(self.traced_run_ms) - node_sums))

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "model_ms": self.model_ms, "node_sum_ms": self.node_sum_ms,
                "traced_gap_ms": self.traced_gap_ms,
                "run_ms": self.run_ms, "traced_run_ms": self.traced_run_ms, "nodes": [n.to_dict() for n in self.nodes]}


# ---- ONNX Runtime ------------------------------------------------------------------------------
def _number(event: Mapping[str, Any], key: str, where: str) -> float:
    value = event.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
        raise InputError(f"{where}: field {key!r} is {value!r}; expected a number >= 0 (µs)")
    return float(value)


def parse_ort_trace(events: Any, runs: int | None = None, source: str = "ORT trace"
                    ) -> tuple[dict[str, tuple[str, list[float]]], list[float]]:
    """``({node name: (op type, ms in each run)}, [ms of each run])`` from an ORT profiling trace.

    ``events`` is the trace's JSON list. Runs are the ``model_run`` session events; node events are
    assigned to the run whose window holds their start. ``runs``: keep only the last ``runs`` runs (the
    earlier ones were warm-up). A node absent from a run counts 0 ms in it; a node that ran twice in one
    run (a loop body) counts the sum.
    """
    if not isinstance(events, list):
        raise InputError(f"{source} is a JSON {type(events).__name__}; expected a list of trace events")
    windows: list[tuple[float, float]] = []
    node_events: list[tuple[float, str, str, float]] = []
    for index, event in enumerate(events):
        where = f"{source} event {index}"
        if not isinstance(event, Mapping):
            raise InputError(f"{where} is {type(event).__name__}; expected a JSON object")
        category, name = event.get("cat"), event.get("name")
        if category == "Session" and name == "model_run":
            start = _number(event, "ts", where)
            windows.append((start, start + _number(event, "dur", where)))
        elif category == "Node" and isinstance(name, str) and name.endswith(_KERNEL_SUFFIX):
            args = event.get("args")
            op_type = args.get("op_name", "?") if isinstance(args, Mapping) else "?"
            node_events.append((_number(event, "ts", where), name[: -len(_KERNEL_SUFFIX)], str(op_type),
                                _number(event, "dur", where)))
    if not windows:
        raise InputError(f"{source} holds no 'model_run' session events; expected a trace of at least one run")
    windows.sort()
    if runs is not None:
        if runs < 1 or runs > len(windows):
            raise InputError(f"runs={runs}: {source} holds {len(windows)} runs; expected 1 <= runs <= {len(windows)}")
        windows = windows[-runs:]
    starts = [start for start, _ in windows]
    per_node_us: dict[str, tuple[str, list[float]]] = {}
    for ts, node, op_type, us in node_events:
        run = bisect.bisect_right(starts, ts) - 1
        if run < 0 or ts > windows[run][1]:
            continue  # session initialization or a warm-up run
        entry = per_node_us.setdefault(node, (op_type, [0.0] * len(windows)))
        entry[1][run] += us
    per_node = {node: (op_type, [us / 1000 for us in runs_us]) for node, (op_type, runs_us) in per_node_us.items()}
    return per_node, [(end - start) / 1000 for start, end in windows]


def _timed_runs(run: Any, warmup: int, runs: int) -> list[float]:
    """Wall time (ms) of ``runs`` calls of ``run`` after ``warmup`` untimed ones."""
    import time

    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return times


def ort_node_profile(backend: Any, path: str | Path, feed: dict[str, np.ndarray], *, warmup: int = 5,
                     runs: int = 20) -> NodeProfile:
    """Profile ``path`` on an :class:`~moonlit.litepred.profile.ort.OrtBackend` as its timed sessions run it
    (the backend's own ``prepare_onnx``: the INT8 QDQ graph for ``ort-int8``), ``warmup`` + ``runs`` runs."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="litepred-nodes-") as workdir:
        timed = Path(backend.prepare_onnx(path, feed, workdir))
        options = onnxruntime_session_options(threads=backend.threads, optimization_level=backend.optimization_level)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(workdir) / "trace")
        options.optimized_model_filepath = str(Path(workdir) / "optimized.onnx")
        options.log_severity_level = 3  # the NCHWc "hardware specific" warning on saving the optimized model
        session = ort.InferenceSession(str(timed), options, providers=["CPUExecutionProvider"])
        for _ in range(warmup + runs):
            session.run(None, feed)
        trace = Path(session.end_profiling())
        events = json.loads(trace.read_text(encoding="utf-8"))
        timed_model = onnx.load(str(timed), load_external_data=False)
        optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
        mapping = map_ort_nodes(timed_model, optimized)
        optimized_nodes = list(zip(node_names(optimized), optimized.graph.node))
        names = None if timed == Path(path) else timed_to_original(timed_model, onnx.load(str(path)))
        plain = onnxruntime_session_options(threads=backend.threads, optimization_level=backend.optimization_level)
        untraced = ort.InferenceSession(str(timed), plain, providers=["CPUExecutionProvider"])
        run_ms = _timed_runs(lambda: untraced.run(None, feed), warmup, runs)
    per_node, traced_ms = parse_ort_trace(events, runs, source=str(trace.name))
    # The trace names an unnamed node "<op>_<index>"; the saved optimized model leaves it unnamed ("#i" here):
    # paired by op type in execution order.
    unnamed = [(name, node.op_type) for name, node in optimized_nodes if name.startswith("#")]
    traced = [name for name in per_node if name not in mapping]
    for op_type in sorted({op for _, op in unnamed}):
        pool = [name for name, op in unnamed if op == op_type]
        for trace_name, model_name in zip([n for n in traced if per_node[n][0] == op_type], pool):
            mapping[trace_name] = mapping[model_name]
    nodes = []
    for name, (op_type, ms) in per_node.items():
        covers, layout = mapping.get(name, ((), op_type in LAYOUT_OPS))
        nodes.append(ExecutedNode(name, op_type, tuple(ms), translate(covers, names), layout))
    return NodeProfile(f"onnxruntime {ort.__version__}", nodes, run_ms, traced_ms)


# ---- OpenVINO --------------------------------------------------------------------------------------
def openvino_node_profile(backend: Any, platform: str, path: str | Path, feed: dict[str, np.ndarray], *,
                          warmup: int = 5, runs: int = 20) -> NodeProfile:
    """Per-layer counters of ``path`` on an OpenVINO platform (``backend.prepare_onnx``: the QDQ graph for
    ``ov-int8``), grouped into ONNX nodes by :func:`~moonlit.litepred.kernels.ov_fusion.executed_partition`."""
    import time

    import openvino

    from moonlit.common.profiling.openvino import openvino_compile, per_layer_counters
    from moonlit.litepred.kernels.ov_fusion import executed_partition, platform_precision

    with tempfile.TemporaryDirectory(prefix="litepred-nodes-") as workdir:
        timed = Path(backend.prepare_onnx(path, feed, workdir))
        partition = executed_partition(timed, platform)
        timed_model = onnx.load(str(timed), load_external_data=False)
        timed_nodes = set(node_names(timed_model))
        names = None if timed == Path(path) else timed_to_original(timed_model, onnx.load(str(path)))
        compiled = openvino_compile(openvino.Core().read_model(str(timed)), precision=platform_precision(platform),
                                    threads=backend.threads, perf_counters=True)
        untraced = openvino_compile(openvino.Core().read_model(str(timed)), precision=platform_precision(platform),
                                    threads=backend.threads)
    request = compiled.create_infer_request()
    layer_ms: dict[str, tuple[str, list[float]]] = {}
    run_ms: list[float] = []
    for index in range(warmup + runs):
        start = time.perf_counter()
        request.infer(feed)
        elapsed = (time.perf_counter() - start) * 1000
        if index < warmup:
            continue
        run_ms.append(elapsed)
        for counter in per_layer_counters(request):
            if counter.status == "EXECUTED":
                layer_ms.setdefault(counter.name, (counter.exec_type, [0.0] * runs))[1][index - warmup] += \
                    counter.real_time_us / 1000
    covers = {layer: kernel.nodes for kernel in partition.kernels for layer in kernel.layers}
    # a layer outside every group but named after a node of the timed graph (at INT8: a FakeQuantize named after
    # a Q/DQ node, often with the float op around it fused in) runs that node

    def covered_by(name: str) -> tuple[str, ...]:
        covered = translate(tuple(covers.get(name, ())), names)
        if not covered and name in timed_nodes:
            covered = translate((name,), names)
        return covered

    nodes = []
    for name, (exec_type, ms) in layer_ms.items():
        covered, layout = covered_by(name), False
        if not covered:
            # an inserted Reorder is named "<source>_<layout>_<layout>_<consumer>": it goes with its consumer,
            # else with its source
            parts = name.split("_")
            ends = ["_".join(parts[i:]) for i in range(1, len(parts))] + ["_".join(parts[:i])
                                                                           for i in range(len(parts) - 1, 0, -1)]
            end = next((e for e in ends if e and covered_by(e)), None)
            covered, layout = (covered_by(end), True) if end else ((), "reorder" in exec_type.lower())
        nodes.append(ExecutedNode(name, exec_type, tuple(ms), covered, layout))
    untraced_request = untraced.create_infer_request()
    return NodeProfile(f"openvino {openvino.__version__}", nodes,
                       _timed_runs(lambda: untraced_request.infer(feed), warmup, runs), run_ms)


def node_profile(backend: Any, platform: str, path: str | Path, feed: dict[str, np.ndarray], *, warmup: int = 5,
                 runs: int = 20) -> NodeProfile:
    """The per-node profile of ``path`` on ``backend`` (an ORT or OpenVINO platform); other runtimes have no
    per-node profiler here: an :class:`InputError` naming the platform."""
    if runs < 1 or warmup < 0:
        raise InputError(f"runs={runs}, warmup={warmup}; expected runs >= 1 and warmup >= 0")
    runtime = getattr(backend, "runtime", "")
    if runtime == "onnxruntime":
        return ort_node_profile(backend, path, feed, warmup=warmup, runs=runs)
    if runtime == "openvino":
        return openvino_node_profile(backend, platform, path, feed, warmup=warmup, runs=runs)
    raise InputError(f"platform {platform!r} runs on {runtime or 'a runtime'!r} without a per-node profiler; "
                     "expected an ONNX Runtime (ort-*) or OpenVINO (ov-*) platform")
