"""Executed nodes of an engine's optimized graph mapped back to the ONNX nodes they run (LitePred §6, attribution).

An engine runs an *optimized* graph, so its node names are not the ONNX file's. How ORT's executed
nodes are mapped back to the ONNX nodes they run (:func:`map_ort_nodes`; ORT's optimized model is
saved with ``optimized_model_filepath``):

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
   before it); every other one joins the executed node that consumes its output (a Conv fused with
   the Relu the executed node is named after; constant and shape subgraphs folded into their consumer).

The INT8 platforms run a QDQ graph derived from the ONNX file. ORT's QDQ fusions name their nodes
``<node>_token_<n>`` and their outputs after the fused node; an unnamed op (HardSwish inlined as
HardSigmoid and Mul) is anchored to the op of its kind (``QLinearMul`` → ``Mul``) that reads what its
input stands for. The QDQ graph's nodes are then named as in the ONNX file
(:func:`timed_to_original`: same name, else the node writing the same tensor, else that of the nearest
node downstream that has one: Q/DQ glue goes with the op it serves).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import onnx

__all__ = ["LAYOUT_OPS", "map_ort_nodes", "node_names", "timed_to_original", "translate"]

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
_NCHWC_SUFFIX = "_nchwc"


def node_names(model: onnx.ModelProto) -> list[str]:
    """ONNX node names as :func:`moonlit.litepred.graph.onnx_import.load_graph` names them (``#i`` if unnamed)."""
    return [node.name or f"#{index}" for index, node in enumerate(model.graph.node)]


def map_ort_nodes(original: onnx.ModelProto, optimized: onnx.ModelProto) -> dict[str, tuple[tuple[str, ...], bool]]:
    """``{executed node name: (ONNX nodes of original it runs, is a layout node)}``; see the module docstring."""
    names = node_names(original)
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
    names = node_names(original)
    name_set = set(names)
    producer = {out: names[i] for i, node in enumerate(original.graph.node) for out in node.output if out}
    timed_names = node_names(timed)
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


def translate(covers: tuple[str, ...], names: Mapping[str, str] | None) -> tuple[str, ...]:
    """``covers`` renamed by ``names`` (a :func:`timed_to_original` map; None: unchanged), in order, each once."""
    if names is None:
        return covers
    return tuple(dict.fromkeys(names[n] for n in covers if n in names))
