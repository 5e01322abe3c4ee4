"""ONNX file or torch module → a checked :class:`~moonlit.litepred.graph.ir.Graph` with static shapes (LitePred §3).

:func:`load_graph` reads an ONNX model (a path or a ``ModelProto``), fixes dynamic input dimensions
from ``input_shapes``, and infers every tensor's shape
(:func:`moonlit.litepred.graph.shapes.infer_static_shapes`: onnx's shape inference, then
onnxruntime's symbolic inference for the exporter's run-time shape chains). A graph whose shapes
cannot all be resolved is an error that names the tensors. :func:`graph_from_torch` exports a
module first.

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
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, numpy_helper

from moonlit.common.errors import InputError
from moonlit.litepred.graph.ir import Graph, Node, _shown, _topological
from moonlit.litepred.graph.shapes import infer_static_shapes, set_input_shapes

__all__ = ["load_graph", "graph_from_torch"]

# Element types a graph input may have: what the exporters write for images, tokens and masks.
INPUT_ELEMENT_TYPES = frozenset({
    TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE, TensorProto.INT8,
    TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16, TensorProto.INT32, TensorProto.INT64, TensorProto.BOOL,
})


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
