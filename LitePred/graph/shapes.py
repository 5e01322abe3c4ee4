"""Static shapes for ONNX models, the step before LitePred's graph IR (LitePred §3).

Kernel detection needs every tensor's shape. :func:`infer_static_shapes` infers them on a
``ModelProto``: first ``onnx.shape_inference`` with data propagation, then, if shapes computed at
run time (``Shape → Slice → Concat → Reshape`` chains of the TorchScript exporter) are still
unknown, onnxruntime's symbolic shape inference; a model whose shapes cannot all be resolved is an
error that names the tensors. Dynamic graph-input dimensions are fixed beforehand from the caller's
``input_shapes`` (:func:`moonlit.litepred.graph.onnx_import.load_graph`). Every problem with the model or the
shapes given is an :class:`~moonlit.common.errors.InputError`.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence

import onnx

from moonlit.common.errors import InputError

__all__ = ["infer_static_shapes", "set_input_shapes", "value_dims"]

logger = logging.getLogger(__name__)


def value_dims(type_proto: onnx.TypeProto) -> tuple[int, ...] | None:
    """Static dims of a tensor type, or None if the rank or any dim is unknown."""
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    dims = []
    for dim in type_proto.tensor_type.shape.dim:
        if not dim.HasField("dim_value") or dim.dim_value < 0:
            return None
        dims.append(int(dim.dim_value))
    return tuple(dims)


def _wanted_shape(name: str, shape: object) -> list[int]:
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise InputError(f"input_shapes[{name!r}] = {shape!r}; expected a list of positive ints")
    if any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in shape):
        raise InputError(f"input_shapes[{name!r}] = {list(shape)} must be positive ints")
    return [int(d) for d in shape]


def set_input_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None) -> None:
    """Give every graph input a static shape: ``input_shapes[name]`` where given (it must agree with the
    graph's fixed dims), else the graph's own, which must then be static with no zero dims."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    graph_inputs = [value for value in model.graph.input if value.name not in initializers]
    names = [value.name for value in graph_inputs]
    if input_shapes is not None and not isinstance(input_shapes, Mapping):
        raise InputError(f"input_shapes = {input_shapes!r}; expected {{input name: shape}}")
    input_shapes = dict(input_shapes or {})
    unknown = sorted(set(input_shapes) - set(names), key=str)
    if unknown:
        raise InputError(f"input_shapes names {unknown} are not graph inputs; the inputs are {names}")
    for value in graph_inputs:
        dims = value.type.tensor_type.shape.dim
        shown = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
        if value.name in input_shapes:
            wanted = _wanted_shape(value.name, input_shapes[value.name])
            if len(dims) and len(dims) != len(wanted):
                raise InputError(
                    f"input_shapes[{value.name!r}] has rank {len(wanted)} but the graph input has rank {len(dims)}"
                )
            for dim, size in zip(dims, wanted):
                if dim.HasField("dim_value") and dim.dim_value not in (size, 0):
                    raise InputError(
                        f"input_shapes[{value.name!r}] = {wanted} conflicts with the graph's fixed shape {shown}"
                    )
            value.type.tensor_type.shape.Clear()
            for size in wanted:
                value.type.tensor_type.shape.dim.add().dim_value = size
        elif value_dims(value.type) is None:
            raise InputError(
                f"graph input {value.name!r} has dynamic shape {shown}; pass "
                f"input_shapes={{{value.name!r}: (...)}} with the concrete shape to analyse"
            )
        elif 0 in value_dims(value.type):
            raise InputError(
                f"graph input {value.name!r} has shape {shown} with a zero-sized dimension; pass "
                f"input_shapes={{{value.name!r}: (...)}} with positive sizes (e.g. batch 1)"
            )


def _unresolved(model: onnx.ModelProto) -> list[str]:
    known = {
        value.name
        for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]
        if value_dims(value.type) is not None
    }
    known.update(tensor.name for tensor in model.graph.initializer)
    return [out for node in model.graph.node for out in node.output if out and out not in known]


def _symbolic_shapes(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """onnxruntime's symbolic shape inference, or None where it fails.

    On failure it saves ``sym_shape_infer_temp.onnx`` into the working directory, so it runs
    inside a temporary one.
    """
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="litepred-shapes-") as workdir:
        os.chdir(workdir)
        try:
            return SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        except Exception as error:  # noqa: BLE001 — its failures are plain Exceptions/AssertionErrors
            logger.debug("symbolic shape inference failed: %s", error)
            return None
        finally:
            os.chdir(previous)


# Initializers above this many bytes are weights no shape depends on: shape inference runs without
# their data, which it would otherwise serialize (most of the time of predicting a model's latency).
_WEIGHT_BYTES = 4096


def _check_raw_size(tensor: onnx.TensorProto, size: int) -> None:
    """A weight stored as raw bytes holds exactly its shape's worth (types without a fixed size: not checked)."""
    if not size or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return  # an unknown element type is reported by the graph's checks
    needed = math.prod(tensor.dims) * itemsize
    if size != needed:
        name = onnx.TensorProto.DataType.Name(tensor.data_type)
        raise InputError(f"weight {tensor.name!r} holds {size} bytes; its shape {list(tensor.dims)} of {name} "
                         f"needs {needed}")


def infer_static_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return ``model`` with a static shape for every node output, or raise :class:`InputError`."""
    for value_info in list(model.graph.value_info):  # stale partial entries block inference
        if value_dims(value_info.type) is None:
            model.graph.value_info.remove(value_info)
    weights = {}
    for i, tensor in enumerate(model.graph.initializer):
        data = tensor.raw_data  # a copy: read once here, where every weight's size is checked too
        _check_raw_size(tensor, len(data))
        if len(data) > _WEIGHT_BYTES:
            weights[i] = data
    for i in weights:
        model.graph.initializer[i].ClearField("raw_data")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError, ValueError,
            TypeError) as error:
        # onnx's own reading of the model: a graph it cannot type (a node of an opset not imported, an element
        # type number that does not exist — "Invalid tensor data type 36" is a ValueError)
        message = (str(error).strip().splitlines() or [type(error).__name__])[0]
        message = message if message.isprintable() else repr(message)
        raise InputError(f"ONNX shape inference failed: {message}") from error
    finally:
        for i, data in weights.items():
            model.graph.initializer[i].raw_data = data
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    for target, source in ((model.graph.output, inferred.graph.output), (model.graph.input, inferred.graph.input)):
        types = {value.name: value.type for value in source}
        for value in target:
            if value.name in types:
                value.type.CopyFrom(types[value.name])
    missing = _unresolved(model)
    if missing:
        # The TorchScript exporter computes Reshape/Expand targets from Shape ops at run time;
        # onnxruntime's symbolic inference (which reads the weights) evaluates those chains where ONNX's gives up.
        symbolic = _symbolic_shapes(model)
        if symbolic is not None and len(_unresolved(symbolic)) < len(missing):
            model, missing = symbolic, _unresolved(symbolic)
    if missing:
        raise InputError(
            f"could not infer static shapes for {len(missing)} tensors, e.g. {missing[:5]}; "
            "kernel detection needs every shape (fix the input shapes or export with static axes)"
        )
    return model
