"""The graph IR of kernel detection: ONNX nodes in topological order with static shapes (LitePred §3).

LitePred (like nn-Meter) predicts a model's latency as the sum of its *kernels*; finding the
kernels starts from the deployed graph. A :class:`Graph` is built from an ONNX model whose tensor
shapes are all known (:func:`moonlit.litepred.graph.onnx_import.load_graph` checks a file and infers
them). It keeps nodes in topological order with attributes as Python values, tensor shapes, weight
shapes, producer/consumer maps, and which tensors are *static* — computable without the graph
inputs (weights, constants, shapes of statically shaped tensors and anything derived only from
those). Static subgraphs cost nothing at run time (onnxruntime folds them).

An attribute that cannot be read (bytes that are not UTF-8, a tensor whose data does not match its
shape) and a cycle among the nodes are :class:`~moonlit.common.errors.InputError`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from moonlit.common.errors import InputError
from moonlit.litepred.graph.shapes import value_dims

__all__ = ["Node", "Graph"]

logger = logging.getLogger(__name__)


def _shown(text: str | bytes) -> str:
    """``text`` for a one-line message: as is when printable, else its repr (a mutated name may hold a newline)."""
    return text if isinstance(text, str) and text.isprintable() else repr(text)


@dataclass(frozen=True)
class Node:
    """One ONNX node. ``inputs`` keeps ``''`` for omitted optional inputs (ONNX positions)."""

    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any]

    @property
    def present_inputs(self) -> tuple[str, ...]:
        return tuple(name for name in self.inputs if name)


def _decode(text: bytes, attribute: onnx.AttributeProto) -> str:
    try:
        return text.decode()
    except UnicodeDecodeError as error:
        raise InputError(f"attribute {attribute.name!r} holds bytes that are not UTF-8 text; expected a string") from error


def _attribute_value(attribute: onnx.AttributeProto) -> Any:
    value = onnx.helper.get_attribute_value(attribute)
    if isinstance(value, bytes):
        return _decode(value, attribute)
    if isinstance(value, onnx.TensorProto):
        try:
            return numpy_helper.to_array(value)
        except (ValueError, TypeError, KeyError) as error:
            raise InputError(f"attribute {attribute.name!r} holds a tensor that does not match its shape "
                             f"{list(value.dims)} ({type(error).__name__}: {_shown(str(error))})") from error
    if isinstance(value, list):
        return [_decode(item, attribute) if isinstance(item, bytes) else item for item in value]
    return value


# Value folding for small static tensors (shape arithmetic, scalar constants); weights are only
# materialised when asked for. Ops not listed here give value() == None.
def _fold_gather(values: list[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    return np.take(values[0], values[1], axis=attrs.get("axis", 0))


def _fold_slice(values: list[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    data, starts, ends = values[0], values[1], values[2]
    axes = values[3] if len(values) > 3 else np.arange(len(starts))
    steps = values[4] if len(values) > 4 else np.ones(len(starts), dtype=np.int64)
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[int(axis)] = slice(int(start), int(end), int(step))
    return data[tuple(index)]


def _fold_unsqueeze(values: list[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    axes = values[1] if len(values) > 1 else attrs["axes"]
    out = values[0]
    rank = out.ndim + len(axes)
    for axis in sorted(int(a) % rank for a in axes):
        out = np.expand_dims(out, axis)
    return out


def _fold_squeeze(values: list[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    axes = values[1] if len(values) > 1 else attrs.get("axes")
    return np.squeeze(values[0], axis=None if axes is None else tuple(int(a) for a in axes))


def _fold_reshape(values: list[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    target = [int(d) for d in values[1]]
    if not attrs.get("allowzero", 0):  # 0 copies the input's dim
        target = [values[0].shape[i] if d == 0 else d for i, d in enumerate(target)]
    return values[0].reshape(target)


def _fold_constant_of_shape(values: list[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    fill = np.asarray(attrs.get("value", np.zeros(1, dtype=np.float32))).reshape(-1)
    return np.full([int(d) for d in values[0]], fill[0], dtype=fill.dtype)


_FOLDERS = {
    "Identity": lambda v, a: v[0],
    "Cast": lambda v, a: v[0].astype(onnx.helper.tensor_dtype_to_np_dtype(a["to"])),
    "Sqrt": lambda v, a: np.sqrt(v[0]),
    "Add": lambda v, a: v[0] + v[1],
    "Sub": lambda v, a: v[0] - v[1],
    "Mul": lambda v, a: v[0] * v[1],
    "Div": lambda v, a: v[0] / v[1] if v[0].dtype.kind == "f" else v[0] // v[1],
    "Concat": lambda v, a: np.concatenate(v, axis=a["axis"]),
    "Gather": _fold_gather,
    "Slice": _fold_slice,
    "Unsqueeze": _fold_unsqueeze,
    "Squeeze": _fold_squeeze,
    "Reshape": _fold_reshape,
    "Transpose": lambda v, a: np.transpose(v[0], a.get("perm")),
    "ConstantOfShape": _fold_constant_of_shape,
    "Expand": lambda v, a: v[0] * np.ones([int(d) for d in v[1]], dtype=v[0].dtype),
    "Equal": lambda v, a: np.equal(v[0], v[1]),
    "Where": lambda v, a: np.where(v[0], v[1], v[2]),
    "Neg": lambda v, a: -v[0],
}


class Graph:
    """Topologically ordered nodes of a shape-inferred ONNX model, with lookup tables.

    Tensor names are ONNX value names. ``shapes`` holds every tensor's static shape (graph
    inputs, node outputs and initializers); ``initializers`` holds weight shapes only.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.model = model
        self.opset = next(
            (entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0
        )
        self._initializer_protos = {tensor.name: tensor for tensor in graph.initializer}
        self.initializers: dict[str, tuple[int, ...]] = {
            name: tuple(int(d) for d in tensor.dims) for name, tensor in self._initializer_protos.items()
        }
        self.inputs: tuple[str, ...] = tuple(
            value.name for value in graph.input if value.name not in self._initializer_protos
        )
        self.outputs: tuple[str, ...] = tuple(value.name for value in graph.output)
        self.shapes: dict[str, tuple[int, ...]] = dict(self.initializers)
        for value in [*graph.input, *graph.value_info, *graph.output]:
            dims = value_dims(value.type)
            if dims is not None:
                self.shapes.setdefault(value.name, dims)
        self.nodes: tuple[Node, ...] = _topological(_read_nodes(graph), self.inputs, self.initializers)
        self._by_name = {node.name: node for node in self.nodes}
        self._producer: dict[str, Node] = {}
        self._consumers: dict[str, list[Node]] = {}
        for node in self.nodes:
            for output in node.outputs:
                if output:
                    self._producer[output] = node
            for name in node.present_inputs:
                self._consumers.setdefault(name, []).append(node)
        self._static = self._static_tensors()
        self._values: dict[str, np.ndarray | None] = {}

    # ---- lookups -------------------------------------------------------------------------
    def node(self, name: str) -> Node:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no node named {name!r} in the graph ({len(self.nodes)} nodes)") from None

    def producer(self, tensor: str) -> Node | None:
        """The node writing ``tensor`` (None for graph inputs and initializers)."""
        return self._producer.get(tensor)

    def consumers(self, tensor: str) -> tuple[Node, ...]:
        return tuple(self._consumers.get(tensor, ()))

    def shape(self, tensor: str) -> tuple[int, ...]:
        try:
            return self.shapes[tensor]
        except KeyError:
            raise KeyError(f"tensor {tensor!r} has no inferred static shape") from None

    def numel(self, tensor: str) -> int:
        return int(np.prod(self.shape(tensor), dtype=np.int64))

    def is_static(self, tensor: str) -> bool:
        """True if ``tensor`` can be computed without the graph inputs (constant-foldable)."""
        return tensor in self._static

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
        return counts

    def value(self, tensor: str) -> np.ndarray | None:
        """The value of a static tensor when it can be folded here (weights, constants, shape
        arithmetic); None for activations and for static tensors of ops we do not fold."""
        if tensor in self._values:
            return self._values[tensor]
        result = None
        if tensor in self._initializer_protos:
            result = numpy_helper.to_array(self._initializer_protos[tensor])
        elif tensor in self._static:
            result = self._fold(self._producer[tensor], tensor)
        self._values[tensor] = result
        return result

    # ---- internals -----------------------------------------------------------------------
    def _fold(self, node: Node, tensor: str) -> np.ndarray | None:
        if node.op_type == "Constant":
            for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
                if key in node.attrs:
                    return np.asarray(node.attrs[key])
            return None
        if node.op_type == "Shape":
            dims = np.asarray(self.shapes[node.inputs[0]], dtype=np.int64)
            return dims[node.attrs.get("start", 0) : node.attrs.get("end", len(dims))]
        folder = _FOLDERS.get(node.op_type)
        if folder is None or node.outputs[0] != tensor:
            return None
        values = [self.value(name) for name in node.present_inputs]
        if any(v is None for v in values):
            return None
        try:
            return np.asarray(folder(values, node.attrs))
        except (ValueError, IndexError, KeyError, TypeError) as error:
            logger.debug("could not fold %s (%s): %s", tensor, node.op_type, error)
            return None

    def _static_tensors(self) -> set[str]:
        static = set(self.initializers)
        for node in self.nodes:
            inputs = node.present_inputs
            if node.op_type in ("Shape", "Size"):
                is_static = bool(inputs) and inputs[0] in self.shapes
            else:
                is_static = all(name in static for name in inputs)
            if is_static:
                static.update(output for output in node.outputs if output)
        return static


def _read_nodes(graph: onnx.GraphProto) -> list[Node]:
    nodes, seen = [], set()
    for index, proto in enumerate(graph.node):
        name = proto.name or f"{proto.op_type}_{index}"
        if name in seen:
            name = f"{name}__{index}"
        seen.add(name)
        nodes.append(
            Node(
                name=name,
                op_type=proto.op_type,
                domain=proto.domain or "",
                inputs=tuple(proto.input),
                outputs=tuple(proto.output),
                attrs={attr.name: _attribute_value(attr) for attr in proto.attribute},
            )
        )
    return nodes


def _topological(nodes: list[Node], inputs: Sequence[str], initializers: Mapping[str, Any]) -> tuple[Node, ...]:
    """Kahn's algorithm, stable with respect to the file order."""
    produced_by = {out: i for i, node in enumerate(nodes) for out in node.outputs if out}
    pending = [
        len({produced_by[name] for name in node.present_inputs if name in produced_by}) for node in nodes
    ]
    users: dict[int, set[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.present_inputs:
            if name in produced_by:
                users.setdefault(produced_by[name], set()).add(i)
    ready = [i for i, count in enumerate(pending) if count == 0]
    order: list[int] = []
    while ready:
        ready.sort(reverse=True)
        current = ready.pop()
        order.append(current)
        for user in users.get(current, ()):
            pending[user] -= 1
            if pending[user] == 0:
                ready.append(user)
    if len(order) != len(nodes):
        stuck = [nodes[i].name for i in range(len(nodes)) if i not in set(order)][:5]
        raise InputError(f"the ONNX graph has a cycle; nodes that never become ready: {stuck}")
    return tuple(nodes[i] for i in order)
