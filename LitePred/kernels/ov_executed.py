"""OpenVINO's executed graph as groups of ONNX nodes: the kernels the engine really runs (LitePred §3).

The CPU plugin's runtime model (``compiled.get_runtime_model()``, read by
:func:`moonlit.common.profiling.openvino.executed_layers`) lists one node per executed primitive with
the names of the source ops fused into it, and the per-layer counters
(:func:`~moonlit.common.profiling.openvino.per_layer_counters`) say which of them ran.
:func:`executed_partition` turns that into groups of the ONNX graph's nodes:

1. the ONNX frontend's ops (``Core.read_model``) are traced back to ONNX nodes by their output
   tensor names (an op without one, e.g. the Convolution a Conv with bias becomes, belongs to the
   node its output feeds);
2. each executed layer's original names are resolved to those nodes (suffixes the plugin adds,
   ``/WithoutBiases``, ``/transpose_b``, ``_flatten_reshape``, a ``_0`` copy marker, are dropped);
   nodes named by several layers merge those layers' groups; a layer the counters show as
   ``NOT_RUN`` ran in place (its nodes are in no kernel);
3. a layer whose names all fail to resolve (the plugin built it anew, e.g. a BatchNorm after a
   MatMul as a ``Multiply_<n>`` Subgraph) takes the unplaced nodes of its kind that read only what
   the layers feeding it computed (not at INT8, where such layers are the dequantization glue);
4. a node still unplaced (the MatMul of a FullyConnected named after its bias Add, a GELU fused
   into it) joins the group that reads all its outputs, else, if it is elementwise or its producer
   was named by a layer, the group it reads from.

At INT8 the low-precision transformations carry op names along when they move dequantization, so a
layer can name ops it does not run (in LeViT, one residual Add names every earlier one of its stage):
such groups come out too large and show up as one wide mismatch.

Only *compute* nodes are placed: QuantizeLinear/DequantizeLinear, views and shape arithmetic (free
under the rules) and constant subgraphs are left out. Executed layers with no compute node (inserted
Reorders, the model-input quantization, ops renamed beyond recognition) are listed as ``engine_only``.
:mod:`moonlit.litepred.kernels.ov_fusion` compares the groups with the fusion rules.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from moonlit.common.errors import InputError
from moonlit.litepred.graph.ir import Graph
from moonlit.litepred.graph.onnx_import import load_graph
from moonlit.litepred.kernels.detect import detect_kernels, load_platform_rules

__all__ = ["OV_PLATFORMS", "EngineKernel", "EnginePartition", "platform_precision", "executed_partition"]

OV_PLATFORMS = {"ov-fp32": "fp32", "ov-bf16": "bf16", "ov-int8": "int8"}
_QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})
# Suffixes the CPU plugin appends to the names of ops it splits or rewrites.
_SUFFIXES = ("/WithoutBiases", "/transpose_a", "/transpose_b", "/sink_port_0", "_flatten_reshape")
_COPY_MARKER = re.compile(r"_\d+$")
_STATUS_RUNS = 3


def platform_precision(platform: str) -> str:
    """The OpenVINO precision of ``platform`` (``ov-fp32``, ``ov-bf16``, ``ov-int8``, optionally ``-<n>t``)."""
    base = re.sub(r"-\d+t$", "", platform)
    if base not in OV_PLATFORMS:
        raise InputError(f"platform {platform!r} is not an OpenVINO platform; expected one of {sorted(OV_PLATFORMS)}")
    return OV_PLATFORMS[base]


@dataclasses.dataclass(frozen=True)
class EngineKernel:
    """One executed kernel: the executed layers (names, types, primitives, runtime precisions) and the
    ONNX compute nodes they run, in graph order."""

    nodes: tuple[str, ...]
    layers: tuple[str, ...]
    layer_types: tuple[str, ...]
    primitives: tuple[str, ...]
    precisions: tuple[str, ...]
    inferred: tuple[str, ...] = ()  # nodes placed by step 3 (no layer named them)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class EnginePartition:
    """The executed graph as groups of ONNX compute nodes, and the executed layers that hold none."""

    kernels: list[EngineKernel]
    engine_only: list[tuple[str, str]]  # (layer name, layer type)
    compute_nodes: tuple[str, ...]
    in_place: tuple[str, ...] = ()  # nodes whose layer ran in place (NOT_RUN): no kernel on the engine


# ---- the executed graph as groups of ONNX nodes --------------------------------------------
def _compute_nodes(graph: Graph, platform: str) -> list[str]:
    """Nodes that do work under the rules: not Q/DQ, not a free op (views, Shape, ``free_when``: a no-op Slice),
    not constant-only."""
    rules = load_platform_rules(platform)
    skipped = _QDQ | rules.free_ops | rules.transparent_ops
    free = {name for name, _ in detect_kernels(graph, platform).free}
    return [node.name for node in graph.nodes if node.op_type not in skipped and node.name not in free
            and not all(graph.is_static(x) for x in node.present_inputs)]


def _frontend_origins(ov_model: Any, graph: Graph) -> dict[str, frozenset[str]]:
    """``{name of an op of the frontend's model: the ONNX nodes it comes from}``."""
    producer = {out: node.name for node in graph.nodes for out in node.outputs if out}
    ops = list(ov_model.get_ordered_ops())
    own: dict[str, frozenset[str]] = {}
    for op in ops:
        tensors = {name for output in op.outputs() for name in output.get_names()}
        own[op.get_friendly_name()] = frozenset(producer[t] for t in tensors if t in producer)
    origins: dict[str, frozenset[str]] = {}
    for op in reversed(ops):  # an op without named outputs belongs to the node its output feeds
        name = op.get_friendly_name()
        if own[name] or op.get_type_name() in ("Parameter", "Result", "Constant"):
            origins[name] = own[name]
            continue
        readers = [target.get_node().get_friendly_name() for output in op.outputs()
                   for target in output.get_target_inputs()]
        origins[name] = next((origins[r] for r in readers if origins.get(r)), frozenset())
    return origins


def _resolve(name: str, origins: dict[str, frozenset[str]]) -> frozenset[str]:
    candidates = [name]
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            candidates.append(name[: -len(suffix)])
    candidates += [_COPY_MARKER.sub("", c) for c in list(candidates)]
    return next((origins[c] for c in candidates if origins.get(c)), frozenset())


class _Groups:
    """Union-find over executed layers, each holding a set of ONNX nodes."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.nodes: dict[int, set[str]] = {}
        self.layers: dict[int, list[Any]] = {}
        self.inferred: dict[int, set[str]] = {}

    def add(self, layer: Any, nodes: Iterable[str]) -> int:
        key = len(self.parent)
        self.parent[key], self.nodes[key], self.layers[key], self.inferred[key] = key, set(nodes), [layer], set()
        return key

    def find(self, key: int) -> int:
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[b] = a
            self.nodes[a] |= self.nodes.pop(b)
            self.layers[a] += self.layers.pop(b)
            self.inferred[a] |= self.inferred.pop(b)
        return a


def _neighbours(graph: Graph, name: str, stop: set[str], forward: bool) -> set[str]:
    """The first nodes of ``stop`` that read ``name``'s outputs (forward) or write its inputs, seen through the
    nodes outside ``stop`` (views, unnamed Q/DQ)."""
    found: set[str] = set()
    stack = [name]
    seen = {name}
    while stack:
        node = graph.node(stack.pop())
        if forward:
            nxt = [c.name for out in node.outputs if out for c in graph.consumers(out)]
        else:
            nxt = [p.name for x in node.present_inputs if not graph.is_static(x)
                   for p in [graph.producer(x)] if p is not None]
        for other in nxt:
            if other in seen:
                continue
            seen.add(other)
            if other in stop:
                found.add(other)
            else:
                stack.append(other)
    return found


_ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Erf", "Tanh", "Neg", "Abs", "Reciprocal", "Clip",
    "Max", "Min", "Where", "Relu", "LeakyRelu", "Elu", "Softplus", "Sigmoid", "HardSigmoid", "HardSwish",
    "BatchNormalization", "Floor", "Ceil", "Round", "PRelu"})
# Which ONNX ops an executed layer of each plugin type can be (for layers whose names no longer resolve).
_LAYER_OPS: dict[str, frozenset[str]] = {
    "Subgraph": _ELEMENTWISE, "Eltwise": _ELEMENTWISE, "Math": _ELEMENTWISE,
    "HSwish": frozenset({"HardSwish"}), "HSigmoid": frozenset({"HardSigmoid"}),
    "StridedSlice": frozenset({"Slice"}), "Slice": frozenset({"Slice"}), "Transpose": frozenset({"Transpose"}),
    "MVN": frozenset({"LayerNormalization", "ReduceMean"}), "Softmax": frozenset({"Softmax"}),
    "Reduce": frozenset({"ReduceMean", "ReduceMax", "ReduceSum", "GlobalAveragePool"}),
    "Pooling": frozenset({"MaxPool", "AveragePool", "GlobalAveragePool"}), "Concatenation": frozenset({"Concat"}),
    "Gather": frozenset({"Gather"}), "Interpolate": frozenset({"Resize"}), "MatMul": frozenset({"MatMul"}),
    "FullyConnected": frozenset({"MatMul", "Gemm"}), "Convolution": frozenset({"Conv"}),
    "Split": frozenset({"Split"}),
}


def _runtime_inputs(compiled: Any) -> dict[str, list[str]]:
    """``{executed node: the executed nodes it reads}`` from the runtime model's edges."""
    return {op.get_friendly_name(): [port.get_source_output().get_node().get_friendly_name() for port in op.inputs()]
            for op in compiled.get_runtime_model().get_ordered_ops()}


def _upstream_nodes(name: str, sources: dict[str, list[str]], layer_key: dict[str, int],
                    groups: _Groups) -> set[str] | None:
    """ONNX nodes of the nearest placed layers feeding ``name`` (walking back through reorders and in-place
    layers); None where a path reaches only the model input."""
    found: set[str] = set()
    reached_input = False
    stack, seen = list(sources.get(name, ())), set()
    while stack:
        source = stack.pop()
        if source in seen:
            continue
        seen.add(source)
        if source in layer_key:
            found |= groups.nodes[groups.find(layer_key[source])]
        elif sources.get(source):
            stack.extend(sources[source])
        elif source not in sources or not sources[source]:
            reached_input = reached_input or not found
    return found if found or not reached_input else None


def executed_partition(path: str | Path, platform: str, *, graph: Graph | None = None) -> EnginePartition:
    """Compile ``path`` (the ONNX file the platform times: FP32, or QDQ for ``ov-int8``) with ``platform``'s
    precision, run it once with per-layer counters, and return its executed kernels as ONNX node groups."""
    import openvino

    from moonlit.common.profiling.openvino import executed_layers, openvino_compile, per_layer_counters
    from moonlit.litepred.profile.ort import resolve_onnx_inputs

    precision = platform_precision(platform)
    graph = graph if graph is not None else load_graph(path)
    compute = _compute_nodes(graph, platform)
    compute_set = set(compute)
    ov_model = openvino.Core().read_model(str(path))
    origins = _frontend_origins(ov_model, graph)
    # Compiled from the same frontend model, so the plugin's original names are the ones traced above.
    if precision == "int8" and not any(node.op_type in _QDQ for node in graph.nodes):
        precision = "fp32"  # nothing the quantizer could quantize: the platform runs it in f32
    compiled = openvino_compile(ov_model, precision=precision, threads=1, perf_counters=True)
    request = compiled.create_infer_request()
    # A layer counts as executed if any of a few inferences ran it (one run was seen reporting a layer of a
    # bf16 model as not run).
    feed = resolve_onnx_inputs(path)
    status: dict[str, str] = {}
    for _ in range(_STATUS_RUNS):
        request.infer(feed)
        for counter in per_layer_counters(request):
            if status.get(counter.name) != "EXECUTED":
                status[counter.name] = counter.status

    groups = _Groups()
    layer_key: dict[str, int] = {}
    engine_only: list[tuple[str, str]] = []
    in_place: set[str] = set()
    marks: dict[str, set[int]] = {}  # a Q/DQ (or other skipped) node -> the layers that name it
    pending: list[tuple[Any, int]] = []  # executed layers none of whose names resolve, with their unnamed count
    for layer in executed_layers(compiled):
        named = {n for original in layer.original_names for n in _resolve(original, origins)}
        nodes = named & compute_set
        if status.get(layer.name) == "NOT_RUN":
            in_place |= nodes  # runs in place (views, splits on the outer axis): no kernel
        elif status.get(layer.name) != "EXECUTED":
            continue  # constant (weight transposes, folded at compile time) or optimized out
        elif nodes:
            key = groups.add(layer, nodes)
            layer_key[layer.name] = key
            for node in named - compute_set:  # where a fused quantize/dequantize ran tells where its neighbour ran
                marks.setdefault(node, set()).add(key)
        else:
            unnamed = sum(1 for original in layer.original_names if not _resolve(original, origins))
            pending.append((layer, max(1, unnamed)))
    in_place -= {n for nodes in groups.nodes.values() for n in nodes}
    all_compute = tuple(compute)
    compute = [name for name in compute if name not in in_place]
    compute_set -= in_place
    owner: dict[str, int] = {}
    for key in range(len(groups.parent)):  # a node named by several layers merges them
        for node in list(groups.nodes.get(groups.find(key), ())):
            root = groups.find(key)
            owner[node] = groups.union(owner[node], root) if node in owner else root

    def roots(nodes: set[str], direct_only: bool) -> set[int] | None:
        """The groups holding ``nodes``, None if one of them is in no group yet (or, ``direct_only``, was only
        placed by inference)."""
        found: set[int] = set()
        for node in nodes:
            if node in owner and not (direct_only and node in inferred):
                found.add(groups.find(owner[node]))
            elif node in marks:
                found |= {groups.find(key) for key in marks[node]}
            else:
                return None
        return found

    # Step 3a: an executed layer whose names all failed to resolve (the plugin named it anew) takes the
    # unplaced nodes of its kind that read only what the layers feeding it computed.
    # Not for INT8: there the renamed layers are mostly the dequantize/requantize glue around integer kernels.
    sources = _runtime_inputs(compiled)
    for layer, count in pending:
        kinds = _LAYER_OPS.get(layer.layer_type, frozenset()) if precision != "int8" else frozenset()
        upstream = _upstream_nodes(layer.name, sources, layer_key, groups)
        taken: set[str] = set()
        for name in compute:
            if len(taken) == count:
                break
            node = graph.node(name)
            if name in owner or node.op_type not in kinds:
                continue
            producers = _neighbours(graph, name, compute_set, forward=False)
            if producers <= (upstream or set()) | taken and (bool(producers) or upstream is None):
                taken.add(name)
        if not taken:
            engine_only.append((layer.name, layer.layer_type))
            continue
        key = groups.add(layer, taken)
        layer_key[layer.name] = key
        for name in taken:
            owner[name] = key

    # Step 3b: nodes no layer names join the group reading all their outputs (through readers placed this way
    # too: a GELU's chain into its FullyConnected), else the one they read from (only an elementwise node
    # through a producer placed this way: a MatMul, Transpose or Split must follow a node a layer names).
    order = {name: i for i, name in enumerate(compute)}
    inferred: set[str] = set()
    stop = compute_set | set(marks)
    for forward in (True, False):
        for name in sorted(compute, key=order.__getitem__, reverse=forward):
            if name in owner:
                continue
            direct_only = not forward and graph.node(name).op_type not in _ELEMENTWISE
            neighbours = _neighbours(graph, name, stop, forward)
            if not forward:  # the producers that are placed (a node may also read the model input)
                neighbours = {n for n in neighbours
                              if n in marks or (n in owner and not (direct_only and n in inferred))}
            placed = roots(neighbours, direct_only)
            if placed is not None and len(placed) == 1:
                root = placed.pop()
                groups.nodes[root].add(name)
                groups.inferred[root].add(name)
                owner[name] = root
                inferred.add(name)
    kernels = []
    for root in sorted({groups.find(k) for k in owner.values()}, key=lambda r: min(order[n] for n in groups.nodes[r])):
        layers = groups.layers[root]
        kernels.append(EngineKernel(
            nodes=tuple(sorted(groups.nodes[root], key=order.__getitem__)),
            layers=tuple(layer.name for layer in layers), layer_types=tuple(layer.layer_type for layer in layers),
            primitives=tuple(layer.primitive_type for layer in layers),
            precisions=tuple(layer.runtime_precision for layer in layers),
            inferred=tuple(sorted(groups.inferred[root], key=order.__getitem__))))
    for name in compute:  # a compute node the engine shows nowhere: its own group, flagged
        if name not in owner:
            kernels.append(EngineKernel((name,), (), (), (), (), (name,)))
    return EnginePartition(kernels, engine_only, all_compute, tuple(sorted(in_place)))
