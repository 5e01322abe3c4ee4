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

The engine runs an *optimized* graph, so its node names are not the ONNX file's. How executed nodes
are mapped back to the ONNX nodes they run (:func:`map_ort_nodes`; ORT's optimized model is saved with
``optimized_model_filepath``):

1. *anchors*: an executed node named like an ONNX node runs that node; a node named ``<tensor>_nchwc``
   (ORT's NCHWc layout transformer names a converted node after the ONNX tensor it computes) runs that
   tensor's producer; otherwise, an output that keeps an ONNX tensor name marks its producer; else the
   longest leading part of its name that names an ONNX node (``<node>/QuickGeluFusion/``).
2. an executed node that runs no ONNX node of its own (a layout change the engine inserted) goes with
   the node its anchor belongs to (a ``ReorderOutput`` writing an ONNX tensor: the node that computed it),
   else the executed node that consumes its output (a ``ReorderInput``), else the one that produced its
   input; ``ReorderInput``/``ReorderOutput`` time is also counted as layout time.
3. ONNX nodes no executed node names were fused away. One whose consumer also reads its input joins
   that consumer (x · sigmoid(x) run as one QuickGelu named after the Mul). An elementwise one (Add,
   Mul, activations, BatchNormalization) whose input an executed node computes joins the latest such
   node (ORT fuses sums and activations into the preceding convolution: a residual Add joins the conv
   before it);
   every other one joins the executed node that consumes its output (a Conv fused with the Relu
   the executed node is named after; constant and shape subgraphs folded into their consumer).

The INT8 platforms run a QDQ graph derived from the ONNX file. ORT's QDQ fusions name their nodes
``<node>_token_<n>`` and their outputs after the fused node; an unnamed op (HardSwish inlined as
HardSigmoid and Mul) is anchored to the op of its kind (``QLinearMul`` → ``Mul``) that reads what its
input stands for. The QDQ graph's nodes are then named as in the ONNX file
(:func:`timed_to_original`: same name, else the node writing the same tensor); Q/DQ nodes drop out.

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
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from moonlit.common.errors import InputError

__all__ = ["LAYOUT_OPS", "ExecutedNode", "NodeProfile", "map_ort_nodes", "node_profile", "ort_node_profile",
           "openvino_node_profile", "parse_ort_trace", "timed_to_original"]

# Ops ORT inserts to change a tensor's layout between kernels (NCHW <-> NCHWc blocks).
LAYOUT_OPS = frozenset({"ReorderInput", "ReorderOutput"})
# ONNX ops ORT fuses into the node that computes their input (conv + activation / sum / BN).
_ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh",
    "BatchNormalization", "Gelu", "Erf",
})
_QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})
_TOKEN = re.compile(r"_token_\d+$")  # ORT's suffix on the nodes its QDQ fusions create
_QUANTIZED_PREFIX = re.compile(r"^(QLinear|Q)(?=[A-Z])")  # QLinearMul -> Mul, QGemm -> Gemm
_KERNEL_SUFFIX = "_kernel_time"
_NCHWC_SUFFIX = "_nchwc"


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


def _node_names(model: onnx.ModelProto) -> list[str]:
    """ONNX node names as :func:`moonlit.litepred.graph.onnx_import.load_graph` names them (``#i`` if unnamed)."""
    return [node.name or f"#{index}" for index, node in enumerate(model.graph.node)]


def map_ort_nodes(original: onnx.ModelProto, optimized: onnx.ModelProto) -> dict[str, tuple[tuple[str, ...], bool]]:
    """``{executed node name: (ONNX nodes of original it runs, is a layout node)}``; see the module docstring."""
    names = _node_names(original)
    name_set = set(names)
    producer = {out: names[i] for i, node in enumerate(original.graph.node) for out in node.output if out}
    node_inputs = {names[i]: [x for x in node.input if x] for i, node in enumerate(original.graph.node)}
    op_of = {names[i]: node.op_type for i, node in enumerate(original.graph.node)}

    consumers_of: dict[str, list[str]] = {}
    for i, node in enumerate(original.graph.node):
        for x in node.input:
            consumers_of.setdefault(x, []).append(names[i])
    outputs_of = {names[i]: [out for out in node.output if out] for i, node in enumerate(original.graph.node)}

    def source(tensor: str) -> str | None:
        """The ONNX node an optimized graph's tensor stands for: its producer, or the node it is named after
        (ORT names the outputs of the QDQ fusions after the fused node)."""
        return producer.get(tensor) or (tensor if tensor in name_set else None)

    def downstream(onnx_node: str) -> list[str]:
        """Consumers of ``onnx_node``, looking through QuantizeLinear/DequantizeLinear."""
        found, frontier = [], [onnx_node]
        for _ in range(3):
            frontier = [c for n in frontier for out in outputs_of[n] for c in consumers_of.get(out, [])]
            found += frontier
            frontier = [n for n in frontier if op_of[n] in _QDQ]
        return found

    executed = [(node.name or f"#{i}", node) for i, node in enumerate(optimized.graph.node)]
    anchors: dict[str, set[str]] = {}
    for name, node in executed:
        base = _TOKEN.sub("", name)
        if name in name_set or base in name_set:
            found = {name if name in name_set else base}
        elif name.endswith(_NCHWC_SUFFIX) and name[: -len(_NCHWC_SUFFIX)] in producer:
            found = {producer[name[: -len(_NCHWC_SUFFIX)]]}
        else:
            found = {s for out in node.output if (s := source(out))}
        if not found:  # "<node>/QuickGeluFusion/" and the like: the longest leading ONNX node name
            cuts = [i for i, char in enumerate(name) if char in "/_" and i > 0]
            found = next(({name[:i]} for i in reversed(cuts) if name[:i] in name_set), set())
        anchors[name] = found
    taken = {a for found in anchors.values() for a in found}
    for name, node in executed:  # an unnamed op (e.g. of an inlined function): the op of its kind it reads from
        if anchors[name] or node.op_type in LAYOUT_OPS:
            continue
        kind = _QUANTIZED_PREFIX.sub("", node.op_type)
        for x in node.input:
            feeder = source(x)
            match = next((c for c in downstream(feeder) if op_of[c] == kind and c not in taken), None) \
                if feeder else None
            if match:
                anchors[name] = {match}
                taken.add(match)
                break
    # owner: ONNX node -> the executed (non-layout first) node that runs it
    owner: dict[str, str] = {}
    order = {name: i for i, (name, _) in enumerate(executed)}
    for layout_pass in (False, True):
        for name, node in executed:
            if (node.op_type in LAYOUT_OPS) == layout_pass:
                for onnx_node in sorted(anchors[name]):
                    owner.setdefault(onnx_node, name)
    for onnx_node in names:  # step 3a: a node closing a diamond over it (x * sigmoid(x) as one QuickGelu)
        if onnx_node in owner:
            continue
        inputs = set(node_inputs[onnx_node])
        closing = [owner[c] for out in outputs_of[onnx_node] for c in consumers_of.get(out, [])
                   if c in owner and inputs & set(node_inputs[c])]
        if closing:
            owner[onnx_node] = closing[0]
    for onnx_node in names:  # step 3b: elementwise nodes fused into what computes their input
        if onnx_node in owner or op_of[onnx_node] not in _ELEMENTWISE:
            continue
        feeders = [owner[producer[x]] for x in node_inputs[onnx_node] if x in producer and producer[x] in owner]
        if feeders:
            owner[onnx_node] = max(feeders, key=order.__getitem__)
    for onnx_node in reversed(names):  # step 3c: the rest joins its consumer (reverse topological order)
        if onnx_node not in owner:
            continue
        for x in node_inputs[onnx_node]:
            if x in producer and producer[x] not in owner:
                owner[producer[x]] = owner[onnx_node]
    groups: dict[str, list[str]] = {}
    for onnx_node in names:
        if onnx_node in owner:
            groups.setdefault(owner[onnx_node], []).append(onnx_node)

    consumers: dict[str, list[str]] = {}
    producers: dict[str, str] = {}
    for name, node in executed:
        for x in node.input:
            consumers.setdefault(x, []).append(name)
        for out in node.output:
            producers[out] = name

    def served(name: str, seen: frozenset[str] = frozenset()) -> str | None:
        """The executed node whose group a layout node's time belongs to."""
        node = executed[order[name]][1]
        if name in groups and node.op_type not in LAYOUT_OPS:
            return name
        owners = {owner[a] for a in anchors[name] if a in owner}
        if owners:  # e.g. a ReorderOutput writing an ONNX tensor: the node that computed it
            return min(owners, key=order.__getitem__)
        for out in node.output:  # e.g. a ReorderInput: the node it feeds
            for consumer in consumers.get(out, []):
                if consumer not in seen and (found := served(consumer, seen | {name})):
                    return found
        for x in node.input:
            if x in producers and producers[x] not in seen and (found := served(producers[x], seen | {name})):
                return found
        return None

    mapping: dict[str, tuple[tuple[str, ...], bool]] = {}
    for name, node in executed:
        group = served(name)
        mapping[name] = (tuple(groups.get(group, ())) if group else (), node.op_type in LAYOUT_OPS)
    return mapping


def timed_to_original(timed: onnx.ModelProto, original: onnx.ModelProto) -> dict[str, str]:
    """``{node of the timed graph: node of the original graph}`` for a timed graph derived from the original (the
    INT8 QDQ graph): the node of the same name, else the one that writes the same output tensor, else (an
    inserted QuantizeLinear/DequantizeLinear, an op of an inlined function) that of the nearest node downstream
    that has one (within 5 hops): the glue around a float op in an INT8 graph is part of what running it costs."""
    names = _node_names(original)
    name_set = set(names)
    producer = {out: names[i] for i, node in enumerate(original.graph.node) for out in node.output if out}
    timed_names = _node_names(timed)
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(timed.graph.node):
        for x in node.input:
            consumers.setdefault(x, []).append(i)
    direct: dict[int, str] = {}
    for i, (name, node) in enumerate(zip(timed_names, timed.graph.node)):
        if name in name_set:
            direct[i] = name
        elif found := next((producer[out] for out in node.output if out in producer), None):
            direct[i] = found
    result = {}
    for i, name in enumerate(timed_names):
        frontier = [i]
        for _ in range(5):  # a node with no counterpart: that of the first node downstream with one
            hit = next((direct[j] for j in frontier if j in direct), None)
            if hit:
                result[name] = hit
                break
            frontier = [c for j in frontier for out in timed.graph.node[j].output for c in consumers.get(out, [])]
    return result


def _translate(covers: tuple[str, ...], names: Mapping[str, str] | None) -> tuple[str, ...]:
    if names is None:
        return covers
    return tuple(dict.fromkeys(names[n] for n in covers if n in names))


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


def _ort_session_options(threads: int, optimization_level: str) -> Any:
    """The options of :func:`moonlit.common.profiling.backends.onnxruntime_session` (the platform's timed
    sessions: ``threads`` intra-op, one inter-op thread, sequential), to which profiling is added."""
    import onnxruntime as ort

    levels = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, levels[optimization_level])
    return options


def ort_node_profile(backend: Any, path: str | Path, feed: dict[str, np.ndarray], *, warmup: int = 5,
                     runs: int = 20) -> NodeProfile:
    """Profile ``path`` on an :class:`~moonlit.litepred.profile.ort.OrtBackend` as its timed sessions run it
    (the backend's own ``prepare_onnx``: the INT8 QDQ graph for ``ort-int8``), ``warmup`` + ``runs`` runs."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="litepred-nodes-") as workdir:
        timed = Path(backend.prepare_onnx(path, feed, workdir))
        options = _ort_session_options(backend.threads, backend.optimization_level)
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
        optimized_nodes = list(zip(_node_names(optimized), optimized.graph.node))
        names = None if timed == Path(path) else timed_to_original(timed_model, onnx.load(str(path)))
        untraced = ort.InferenceSession(str(timed), _ort_session_options(backend.threads, backend.optimization_level),
                                        providers=["CPUExecutionProvider"])
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
        nodes.append(ExecutedNode(name, op_type, tuple(ms), _translate(covers, names), layout))
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
        timed_nodes = set(_node_names(timed_model))
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
        covered = _translate(tuple(covers.get(name, ())), names)
        if not covered and name in timed_nodes:
            covered = _translate((name,), names)
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
