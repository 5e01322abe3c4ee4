"""ONNX export that onnxruntime can load, verified against torch.

All four papers deploy through ONNX (ToP's pruned BERT, SpaceEvo/ElasticViT subnets, LitePred's
kernel graphs), so the export recipe lives here once:

1. ``torch.onnx.export`` with one of two exporters:
   ``"torchscript"`` (default, ``dynamo=False``): honours opset 17 exactly, takes
   ``dynamic_axes``, folds eval-mode BatchNorm into convs, and is fast (~0.3 s for ResNet-18).
   It is deprecated upstream but present in torch 2.11 and the installed torch; tracing bakes
   Python control flow into the graph, which the ORT check below only partly guards against
   (pass ``check_inputs`` that take the other branches).
   ``"dynamo"`` (``torch.export`` based): the future default; needs opset >= 18 (it has no
   lower-opset implementations and its down-converter fails on common graphs), takes
   ``dynamic_shapes``.
2. The IR version is lowered to what the installed onnxruntime accepts: onnx >= 1.23 writes
   IR 14 while onnxruntime 1.31 reads at most IR 13. The limit is probed once per process by
   loading minimal models into onnxruntime (:func:`max_supported_ir_version`) instead of a
   hand-kept table, so it stays right as either package moves.
3. ``onnx.checker``, then (``check=True``) onnxruntime is run on the example inputs and every
   output is compared with torch's, raising :class:`ExportVerificationError` with the max abs
   difference when one is off.

The file is written as one self-contained ``.onnx`` unless the model exceeds protobuf's 2 GiB
limit, in which case the weights go to ``<name>.data`` beside it.
"""

from __future__ import annotations

import functools
import inspect
import logging
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

__all__ = [
    "ExportVerificationError",
    "export_onnx",
    "max_supported_ir_version",
    "lower_ir_version",
    "onnx_input_feed",
    "feed_for_specs",
    "graph_input_specs",
    "save_onnx",
]

logger = logging.getLogger(__name__)

# protobuf cannot serialize a message of 2 GiB or more; keep a margin for the graph itself.
_SINGLE_FILE_LIMIT_BYTES = 2**31 - 2**26

class ExportVerificationError(RuntimeError):
    """The exported ONNX model does not reproduce the torch model's outputs."""


@functools.lru_cache(maxsize=1)
def max_supported_ir_version() -> int:
    """Highest ONNX IR version the installed onnxruntime loads (13 for onnxruntime 1.31).

    Found by loading a one-node Identity model at each IR version from ``onnx.IR_VERSION``
    downwards; the first one onnxruntime accepts is the answer (cached per process).
    """
    value_in = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    value_out = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "ir_probe", [value_in], [value_out]
    )
    # Opset 13 is what IR 7 introduced, so every probed IR version is consistent with it.
    probe = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    errors = []
    for ir_version in range(onnx.IR_VERSION, 6, -1):
        probe.ir_version = ir_version
        try:
            ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
            errors.append(f"IR {ir_version}: {error}")
            continue
        return ir_version
    raise RuntimeError(
        f"onnxruntime {ort.__version__} loaded none of IR versions {onnx.IR_VERSION}..7: "
        + "; ".join(errors)
    )


def lower_ir_version(model: onnx.ModelProto) -> onnx.ModelProto:
    """Lower ``model.ir_version`` (in place) to :func:`max_supported_ir_version` if above it.

    Safe for graphs that use no element types newer than that IR (float8/int4/float4), which is
    every graph the torch exporters and onnxruntime's quantizer write for FP32/INT8 models.
    """
    limit = max_supported_ir_version()
    if model.ir_version > limit:
        logger.debug("lowering ONNX IR version %d -> %d for onnxruntime %s",
                     model.ir_version, limit, ort.__version__)
        model.ir_version = limit
    return model


def save_onnx(model: onnx.ModelProto, path: str | Path) -> Path:
    """Lower the IR version, save as one file (external ``.data`` only past 2 GiB), run the checker."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lower_ir_version(model)
    large = model.ByteSize() >= _SINGLE_FILE_LIMIT_BYTES
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
    )
    onnx.checker.check_model(str(path))  # path form: also works for external data
    return path


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def graph_input_specs(source: Any) -> list[tuple[str, np.dtype | None]]:
    """(name, numpy dtype) of each real graph input of an ONNX session, file path or ModelProto."""
    if isinstance(source, ort.InferenceSession):
        specs = []
        for node_arg in source.get_inputs():
            onnx_type = node_arg.type  # e.g. "tensor(float)"
            dtype = _ORT_TYPE_TO_NUMPY.get(onnx_type)
            specs.append((node_arg.name, dtype))
        return specs
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        source = onnx.load(str(path), load_external_data=False)
    if not isinstance(source, onnx.ModelProto):
        raise ValueError(
            "expected an onnxruntime.InferenceSession, an .onnx path or an onnx.ModelProto, "
            f"got {type(source).__name__}"
        )
    initializers = {tensor.name for tensor in source.graph.initializer}
    specs = []
    for value_info in source.graph.input:
        if value_info.name in initializers:  # IR < 4 lists weights as inputs
            continue
        elem_type = value_info.type.tensor_type.elem_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type) if elem_type else None
        specs.append((value_info.name, dtype))
    return specs


_ORT_TYPE_TO_NUMPY = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(bool)": np.dtype(np.bool_),
}


def onnx_input_feed(source: Any, tensors: Any) -> dict[str, np.ndarray]:
    """Turn torch tensors / arrays into the ``{name: ndarray}`` feed an onnxruntime session takes.

    ``source`` is an ``InferenceSession``, an ``.onnx`` path or an ``onnx.ModelProto``.
    ``tensors`` is one tensor, a sequence matched to the graph inputs by position, or a mapping
    matched by name (names the graph does not have are ignored: the TorchScript exporter drops
    unused inputs). Arrays are cast to the dtype the graph declares (e.g. int32 ids → int64).
    """
    return feed_for_specs(graph_input_specs(source), tensors)


def feed_for_specs(specs: Sequence[tuple[str, np.dtype | None]], tensors: Any) -> dict[str, np.ndarray]:
    """:func:`onnx_input_feed` for graph inputs already read with :func:`graph_input_specs`."""
    names = [name for name, _ in specs]
    if isinstance(tensors, Mapping):
        missing = [name for name in names if name not in tensors]
        if missing:
            raise ValueError(
                f"inputs {missing} of the ONNX graph are missing from the feed; "
                f"graph inputs are {names}, got keys {list(tensors)}"
            )
        values = [tensors[name] for name in names]
    else:
        if isinstance(tensors, (torch.Tensor, np.ndarray)):
            tensors = [tensors]
        values = list(tensors)
        if len(values) != len(names):
            raise ValueError(
                f"got {len(values)} positional inputs but the ONNX graph has {len(names)}: {names}"
            )
    feed = {}
    for (name, dtype), value in zip(specs, values):
        array = _to_numpy(value)
        if dtype is not None and array.dtype != dtype:
            array = array.astype(dtype)
        feed[name] = np.ascontiguousarray(array)
    return feed


def _split_inputs(model: nn.Module, example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Normalise example inputs to (args, kwargs); kwargs are put in ``forward`` signature order.

    The TorchScript exporter names graph inputs in signature order whatever the dict order,
    so a dict out of order would silently swap names.
    """
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, Mapping):
        kwargs = dict(example_inputs)
        try:
            order = list(inspect.signature(model.forward).parameters)
        except (TypeError, ValueError):
            return (), kwargs
        ordered = {name: kwargs[name] for name in order if name in kwargs}
        ordered.update({name: value for name, value in kwargs.items() if name not in ordered})
        return (), ordered
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise ValueError(
        "example_inputs must be a tensor, a tuple/list of positional inputs or a dict of keyword "
        f"inputs, got {type(example_inputs).__name__}"
    )


def _flat_tensors(value: Any) -> list[torch.Tensor]:
    """Tensors of a (nested) output in the order the exporters flatten it."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):  # dicts and transformers' ModelOutput (ordered, None-free)
        return [t for item in value.values() for t in _flat_tensors(item)]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _flat_tensors(item)]
    return []


def _default_input_names(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
    if kwargs:
        return list(kwargs)
    if len(args) == 1:
        return ["input"]
    return [f"input_{index}" for index in range(len(args))]


def _run_exporter(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    path: Path,
    *,
    exporter: str,
    opset: int,
    input_names: list[str],
    output_names: list[str] | None,
    dynamic_axes: Mapping[str, Any] | None,
    dynamic_shapes: Any,
    large: bool,
) -> None:
    common = dict(
        kwargs=kwargs or None,
        input_names=input_names,
        output_names=output_names,
        opset_version=opset,
        dynamic_axes=dynamic_axes,
    )
    if exporter == "torchscript":
        with warnings.catch_warnings():
            # We chose the legacy exporter on purpose (see module docstring); keep its
            # deprecation notices out of every export, but let TracerWarnings through.
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*feature will be removed.*")
            torch.onnx.export(model, args, str(path), dynamo=False, do_constant_folding=True, **common)
    else:
        torch.onnx.export(
            model, args, str(path), dynamo=True, dynamic_shapes=dynamic_shapes,
            external_data=large, verbose=False, **common,
        )


def _verify(
    model: nn.Module,
    session: ort.InferenceSession,
    input_names: list[str],
    inputs: Any,
    atol: float,
    rtol: float,
) -> None:
    args, kwargs = _split_inputs(model, inputs)
    with torch.no_grad():
        expected = _flat_tensors(model(*args, **kwargs))
    named = dict(zip(input_names, list(args) + list(kwargs.values())))
    outputs = session.run(None, onnx_input_feed(session, named))
    output_names = [node_arg.name for node_arg in session.get_outputs()]
    if len(outputs) != len(expected):
        raise ExportVerificationError(
            f"ONNX model has {len(outputs)} outputs {output_names}, torch returned {len(expected)} tensors"
        )
    for index, (name, got, want) in enumerate(zip(output_names, outputs, expected)):
        want = _to_numpy(want)
        if got.shape != want.shape:
            raise ExportVerificationError(
                f"ONNX output {index} ({name!r}) has shape {got.shape}, torch's has {want.shape}"
            )
        if not np.allclose(got, want, atol=atol, rtol=rtol):
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
            raise ExportVerificationError(
                f"ONNX output {index} ({name!r}, shape {want.shape}) differs from torch: "
                f"max abs diff {diff.max():.3g} at {np.unravel_index(diff.argmax(), diff.shape)}, "
                f"allowed atol={atol:g} + rtol={rtol:g}·|torch|"
            )


def export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | Path,
    *,
    opset: int | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: Mapping[str, Any] | None = None,
    dynamic_shapes: Any = None,
    exporter: Literal["torchscript", "dynamo"] = "torchscript",
    check: bool = True,
    check_inputs: Sequence[Any] = (),
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> Path:
    """Export ``model`` (in eval mode) to a single ONNX file onnxruntime can load; return its path.

    ``example_inputs``: a tensor, a tuple of positional tensors, or a dict of keyword tensors
    (HF-style ``{"input_ids": ..., "attention_mask": ...}``). ``opset`` defaults to 17 for the
    TorchScript exporter and 18 for dynamo (its minimum). ``input_names`` default to the dict keys,
    or ``input`` / ``input_0, input_1, …``. ``dynamic_axes`` (``{"input": {0: "batch"}}``) works with
    both exporters, ``dynamic_shapes`` only with ``exporter="dynamo"``. With ``check``, outputs on
    ``example_inputs`` and every entry of ``check_inputs`` must match torch within ``atol``/``rtol``.
    """
    if exporter not in ("torchscript", "dynamo"):
        raise ValueError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")
    if opset is None:
        opset = 17 if exporter == "torchscript" else 18
    if exporter == "dynamo" and opset < 18:
        raise ValueError(f"the dynamo exporter implements opset >= 18 only, got opset={opset}")
    if dynamic_shapes is not None and exporter != "dynamo":
        raise ValueError("dynamic_shapes needs exporter='dynamo'; use dynamic_axes with torchscript")
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"ONNX path should end in .onnx, got {path}")

    args, kwargs = _split_inputs(model, example_inputs)
    if kwargs and input_names is not None and set(input_names) != set(kwargs):
        raise ValueError(
            f"with dict example_inputs the graph inputs are named by its keys {list(kwargs)}; "
            f"got input_names {list(input_names)}"
        )
    if input_names is None or kwargs:
        names = _default_input_names(args, kwargs)
    else:
        names = list(input_names)
    if len(names) != len(args) + len(kwargs):
        raise ValueError(
            f"{len(names)} input_names {names} for {len(args) + len(kwargs)} example inputs"
        )
    size_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    large = size_bytes >= _SINGLE_FILE_LIMIT_BYTES

    previous_modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with tempfile.TemporaryDirectory(prefix="moonlit-onnx-") as workdir:
            raw_path = Path(workdir) / "model.onnx"
            _run_exporter(
                model, args, kwargs, raw_path, exporter=exporter, opset=opset,
                input_names=names, output_names=list(output_names) if output_names else None,
                dynamic_axes=dynamic_axes, dynamic_shapes=dynamic_shapes, large=large,
            )
            save_onnx(onnx.load(str(raw_path)), path)
        if check:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            for inputs in [example_inputs, *check_inputs]:
                _verify(model, session, names, inputs, atol, rtol)
    finally:
        for module, training in previous_modes.items():
            module.training = training
    # DEBUG: one line per file, thousands in a LitePred build; a caller that wants them sets this logger's level
    logger.debug("exported %s to %s (opset %d, %s exporter)", type(model).__name__, path, opset, exporter)
    return path
