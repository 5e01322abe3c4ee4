"""ONNX model → a small graph IR with static shapes, the input of kernel detection (LitePred §3).

LitePred (like nn-Meter) predicts a model's latency as the sum of its *kernels*; finding the
kernels starts from the deployed graph. :func:`load_graph` reads an ONNX model (a path or a
``ModelProto``), fixes dynamic input dimensions from ``input_shapes``, and infers every tensor's
shape (:func:`moonlit.litepred.graph_shapes.infer_static_shapes`: onnx's shape inference, then
onnxruntime's symbolic inference for the exporter's run-time shape chains). A graph whose shapes
cannot all be resolved is an error that names the tensors.

The :class:`Graph` keeps nodes in topological order with attributes as Python values, tensor
shapes, weight shapes, producer/consumer maps, and which tensors are *static* — computable
without the graph inputs (weights, constants, shapes of statically shaped tensors and anything
derived only from those). Static subgraphs cost nothing at run time (onnxruntime folds them).

A file is a user's input: :func:`load_graph` checks it before anything reads it further, and every
problem is an :class:`~moonlit.common.errors.InputError` naming the file and what was expected —
bytes that are not an ONNX model (a ``DecodeError`` from protobuf, kept as ``__cause__``), a model
without nodes or default opset, graph inputs of an unsupported element type, a zero-sized or
unresolvable dimension, weights whose data does not match their shape, a node input nothing
provides, a tensor written twice, a cycle, a node that breaks its op's schema (``onnx.checker``
per node), shapes that cannot be inferred, or an activation with no elements.
"""

from __future__ import annotations

import copy
import functools
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from moonlit.common.errors import InputError
from moonlit.litepred.graph_shapes import infer_static_shapes, set_input_shapes, value_dims

__all__ = ["Node", "Graph", "load_graph", "graph_from_torch"]

logger = logging.getLogger(__name__)


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


# ---- loading ---------------------------------------------------------------------------------
# Element types a graph input may have: what the exporters write for images, tokens and masks.
INPUT_ELEMENT_TYPES = frozenset({
    TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE, TensorProto.INT8,
    TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16, TensorProto.INT32, TensorProto.INT64, TensorProto.BOOL,
})


def _shown(text: str | bytes) -> str:
    """``text`` for a one-line message: as is when printable, else its repr (a mutated name may hold a newline)."""
    return text if isinstance(text, str) and text.isprintable() else repr(text)


def _check_names(model: onnx.ModelProto, nodes: Sequence[Node]) -> None:
    """Every name is text: protobuf hands a string field that is not valid UTF-8 over as ``bytes``."""
    graph = model.graph
    named = [("graph input", v.name) for v in graph.input] + [("graph output", v.name) for v in graph.output]
    named += [("weight", t.name) for t in graph.initializer] + [("opset domain", o.domain) for o in model.opset_import]
    for index, node in enumerate(nodes):
        named += [(f"node {index}", node.name), (f"node {index}'s op type", node.op_type),
                  (f"node {index}'s domain", node.domain)]
        named += [(f"node {index}'s input or output", name) for name in (*node.inputs, *node.outputs)]
    for what, name in named:
        if not isinstance(name, str):
            raise InputError(f"{what} is named {name!r}, which is not UTF-8 text; expected a text name")


def _type_name(elem_type: int) -> str:
    try:
        return TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"unknown type {elem_type}"


def _read_model(source: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(source, onnx.ModelProto):
        return copy.deepcopy(source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        try:
            return onnx.load(str(path))
        except Exception as error:  # noqa: BLE001 — the parser's errors (protobuf DecodeError, external data), wrapped
            raise InputError(f"{path} is not a readable ONNX model ({type(error).__name__}: {_shown(str(error))}); "
                             "expected a file written by torch.onnx.export or onnx.save") from error
    raise TypeError(
        f"expected an .onnx path or an onnx.ModelProto, got {type(source).__name__}"
    )


@functools.lru_cache(maxsize=64)
def _itemsize(data_type: int) -> int | None:
    """Bytes per element of an ONNX element type; None for types without a fixed size or unknown ones."""
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(data_type)
    except (KeyError, ValueError, TypeError):
        return None
    return None if dtype.kind in "OUS" else dtype.itemsize


def _check_initializer(tensor: onnx.TensorProto) -> None:
    dims = tuple(tensor.dims)
    if any(d < 0 for d in dims):
        raise InputError(f"weight {tensor.name!r} has negative dims {list(dims)}")
    itemsize = _itemsize(tensor.data_type)
    if itemsize is None:
        raise InputError(f"weight {tensor.name!r} has element type {_type_name(tensor.data_type)}; expected a "
                         "numeric ONNX element type")
    if tensor.data_location == TensorProto.EXTERNAL:
        return  # onnx.load already read (or failed to read) the external file
    if not tensor.HasField("raw_data"):  # raw bytes: their size is checked where shape inference reads them
        try:
            numpy_helper.to_array(tensor)  # typed fields: small tensors only (exporters write raw_data)
        except (ValueError, TypeError, KeyError) as error:
            raise InputError(f"weight {tensor.name!r} does not match its shape {list(dims)} "
                             f"({type(error).__name__}: {_shown(str(error))})") from error


def _validate_model(model: onnx.ModelProto) -> None:
    """The structural checks (see the module docstring); each failure is one :class:`InputError` line."""
    graph = model.graph
    if not model.HasField("graph") or not graph.node:
        raise InputError("the model has no graph nodes (an empty or non-ONNX file?); expected an ONNX ModelProto")
    for entry in [*model.opset_import, *graph.node]:  # "ai.onnx" is the default domain "" (onnx's checker knows only "")
        if entry.domain == "ai.onnx":
            entry.domain = ""
    # each node's fields read once (protobuf accessors are slow); attributes are not needed here
    nodes = [Node(node.name or f"#{index}", node.op_type, node.domain, tuple(node.input), tuple(node.output), {})
             for index, node in enumerate(graph.node)]
    _check_names(model, nodes)
    opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    if "ai.onnx" not in opsets:
        raise InputError(f"the model imports no default-domain opset (imports {sorted(opsets)}); expected one")
    for tensor in graph.initializer:
        _check_initializer(tensor)
    initializers = {tensor.name for tensor in graph.initializer}
    provided = set(initializers)
    for value in graph.input:
        provided.add(value.name)
        if value.name in initializers:
            continue
        if not value.type.HasField("tensor_type"):
            raise InputError(f"graph input {value.name!r} is not a tensor; expected tensor inputs")
        elem_type = value.type.tensor_type.elem_type
        if elem_type not in INPUT_ELEMENT_TYPES:
            raise InputError(f"graph input {value.name!r} has element type {_type_name(elem_type)}; expected one of "
                             f"{sorted(_type_name(t) for t in INPUT_ELEMENT_TYPES)}")
    writer: dict[str, str] = {}
    for node in nodes:
        for output in node.outputs:
            if not output:
                continue
            if output in writer or output in provided:
                first = writer.get(output, "a graph input or weight")
                raise InputError(f"tensor {output!r} is written by node {node.name!r} ({_shown(node.op_type)}) and by "
                                 f"{first}; expected each tensor written once")
            writer[output] = repr(node.name)
    known = provided | set(writer)
    for node in nodes:
        for name in node.inputs:
            if name and name not in known:
                raise InputError(f"node {node.name!r} ({_shown(node.op_type)}) reads {name!r}, which no node, graph "
                                 "input or weight provides; expected a connected graph")
    for value in graph.output:
        if value.name not in known:
            raise InputError(f"graph output {value.name!r} is produced by no node; expected a connected graph")
    _check_node_schemas(model, opsets)
    _topological(nodes, (), {})  # a cycle, before shape inference meets it


def _check_node_schemas(model: onnx.ModelProto, opsets: Mapping[str, int]) -> None:
    """``onnx.checker`` per node: the op exists in its opset and its inputs and attributes fit the schema.

    Per node rather than ``check_model``: the whole-model check serializes every weight (0.2 s for a
    ResNet-50, against a 50 ms budget for a whole prediction).
    """
    context = onnx.checker.C.CheckerContext()
    context.ir_version = model.ir_version if model.ir_version > 0 else onnx.IR_VERSION
    context.opset_imports = {("" if domain == "ai.onnx" else domain): version for domain, version in opsets.items()}
    scope = onnx.checker.C.LexicalScopeContext()
    for index, node in enumerate(model.graph.node):
        try:
            onnx.checker.check_node(node, context, scope)
        except (onnx.checker.ValidationError, UnicodeDecodeError) as error:  # the latter: a name that is not UTF-8
            message = _shown((str(error).strip().splitlines() or [type(error).__name__])[0])
            raise InputError(f"node {node.name or f'#{index}'!r} ({_shown(node.op_type)}) breaks its op's schema: "
                             f"{message}") from error


def _check_activations(graph: Graph) -> None:
    """A tensor computed from the inputs with no elements: the kernels' sizes would be 0 (nothing to predict)."""
    for node in graph.nodes:
        for output in node.outputs:
            if output and not graph.is_static(output) and 0 in graph.shapes.get(output, (1,)):
                raise InputError(f"tensor {output!r} (output of {node.name!r}, {_shown(node.op_type)}) has shape "
                                 f"{list(graph.shapes[output])}: no elements; expected every activation to hold some")


def load_graph(
    source: str | Path | onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> Graph:
    """Read an ONNX model, check it, fix dynamic inputs from ``input_shapes`` and infer all shapes.

    ``input_shapes`` maps graph input names to concrete shapes; it is required for inputs with a
    symbolic or unknown dimension (e.g. a dynamic batch axis) and must agree with fixed ones. A model
    that fails a check raises :class:`~moonlit.common.errors.InputError` naming the file (see the
    module docstring).
    """
    model = _read_model(source)
    label = str(source) if isinstance(source, (str, Path)) else f"ONNX model {model.graph.name or '(unnamed)'!r}"
    try:
        _validate_model(model)
        set_input_shapes(model, input_shapes)
        graph = Graph(infer_static_shapes(model))
        _check_activations(graph)
    except InputError as error:
        raise InputError(f"{label}: {error}") from error
    return graph


def graph_from_torch(
    model: Any,
    example_inputs: Any,
    path: str | Path | None = None,
    *,
    opset: int | None = None,
    exporter: str = "torchscript",
) -> Graph:
    """Export ``model`` with :func:`moonlit.common.export.onnx.export_onnx` and load its graph.

    Eval-mode export folds BatchNorm into the preceding Conv. ``opset`` defaults to the exporter's
    (17 for TorchScript, 18 for ``exporter="dynamo"``, the one that exports ``nn.TransformerEncoderLayer``
    and ``nn.MultiheadAttention`` with the installed torch). The ``.onnx`` file is written to ``path``
    if given, else to a temporary directory that is removed afterwards.
    """
    from moonlit.common.export.onnx import export_onnx

    options = {"opset": opset, "check": False, "exporter": exporter}
    if path is not None:
        return load_graph(export_onnx(model, example_inputs, path, **options))
    with tempfile.TemporaryDirectory(prefix="litepred-graph-") as workdir:
        return load_graph(export_onnx(model, example_inputs, Path(workdir) / "model.onnx", **options))
