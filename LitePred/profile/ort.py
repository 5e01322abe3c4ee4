"""onnxruntime CPU backends for LitePred's profiling (NSDI'24, §5: ORT platforms of the pool).

Registered names (all 1 intra-op thread, one inter-op thread, sequential execution, unless the
name ends in ``-<n>t``):

* ``ort-fp32`` — FP32, ``ORT_ENABLE_ALL`` graph optimizations (fusions, layout transforms);
* ``ort-fp32-noopt`` — FP32, ``ORT_DISABLE_ALL``: every ONNX node runs as its own kernel;
* ``ort-int8`` — static QDQ INT8 (per-channel S8 weights, U8 activations: the VNNI ``vpdpbusd``
  combination) after ``quant_pre_process``, calibrated on seeded random inputs of the model's
  shapes, ``ORT_ENABLE_ALL`` (which fuses DQ → op → Q into integer kernels);
* ``ort-fp32-2t``, ``ort-int8-2t`` — two intra-op threads (optional: on a shared 2-core VM these
  were 0.3–2× off under contention).

A torch module is exported with :func:`moonlit.common.export.onnx.export_onnx` into a temp dir;
timing uses the common ``"onnxruntime"`` runner, so the per-call overhead model (a one-element
Add session) goes through the same session options and input feed.
"""

from __future__ import annotations

import abc
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from moonlit.common.export.int8 import quantization_summary, quantize_static_int8
from moonlit.common.export.onnx import export_onnx, save_onnx
from moonlit.common.profiling.backends import Runner, make_runner
from moonlit.litepred.profile.base import Backend, fixed_threads, register_platform
from moonlit.litepred.profile.kernel_io import strip_boundaries
from moonlit.litepred.profile.protocol import Measurement

__all__ = ["OnnxPlatform", "OrtBackend", "CALIBRATION_BATCHES", "is_quantized", "random_calibration",
           "resolve_onnx_inputs"]

CALIBRATION_BATCHES = 4  # activation ranges only need to cover the random inputs' scale
_QUANTIZED_OP_TYPES = frozenset({
    "QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
    "MatMulInteger", "DynamicQuantizeLinear", "QGemm", "QLinearAdd", "QLinearMul",
})


def is_quantized(model: str | Path | onnx.ModelProto) -> bool:
    """Whether an ONNX graph already holds quantization ops (QDQ pairs or integer kernels)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return any(node.op_type in _QUANTIZED_OP_TYPES for node in model.graph.node)


def random_calibration(feed: dict[str, np.ndarray], batches: int = CALIBRATION_BATCHES,
                       seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``batches`` feeds shaped like ``feed``: standard normal floats, other dtypes copied."""
    rng = np.random.default_rng(seed)
    return [
        {name: rng.standard_normal(value.shape).astype(value.dtype)
         if np.issubdtype(value.dtype, np.floating) else value.copy()
         for name, value in feed.items()}
        for _ in range(batches)
    ]


def resolve_onnx_inputs(path: str | Path, inputs: Any = None, *, seed: int = 0) -> dict[str, np.ndarray]:
    """The feed for an ``.onnx`` file from arrays/tensors, from shapes, or from its static shapes.

    ``inputs`` is None (every graph input must have a static shape), a mapping ``name → array or
    shape``, or a sequence of arrays or shapes in graph-input order (one array alone also works).
    Inputs made from shapes are standard normal for float types and zeros otherwise (seeded).
    """
    model = onnx.load(str(path), load_external_data=False)
    initializers = {tensor.name for tensor in model.graph.initializer}
    graph_inputs = [value for value in model.graph.input if value.name not in initializers]
    names = [value.name for value in graph_inputs]
    if inputs is None:
        inputs = {}
        for value in graph_inputs:
            dims = value.type.tensor_type.shape.dim
            if not all(dim.HasField("dim_value") for dim in dims):
                raise ValueError(
                    f"graph input {value.name!r} of {path} has a symbolic shape "
                    f"{[d.dim_param or d.dim_value for d in dims]}; pass inputs or input shapes"
                )
            inputs[value.name] = tuple(dim.dim_value for dim in dims)
    elif isinstance(inputs, (np.ndarray, torch.Tensor)):
        inputs = [inputs]
    if not isinstance(inputs, Mapping):
        inputs = list(inputs)
        if len(inputs) != len(names):
            raise ValueError(f"got {len(inputs)} inputs for the {len(names)} graph inputs {names} of {path}")
        inputs = dict(zip(names, inputs))
    missing = [name for name in names if name not in inputs]
    if missing:
        raise ValueError(f"graph inputs {missing} of {path} are missing; got {list(inputs)}")
    rng = np.random.default_rng(seed)
    feed = {}
    for value in graph_inputs:
        given = inputs[value.name]
        elem_type = value.type.tensor_type.elem_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type) if elem_type else np.dtype(np.float32)
        if isinstance(given, torch.Tensor):
            given = given.detach().cpu().numpy()
        if isinstance(given, np.ndarray):
            feed[value.name] = np.ascontiguousarray(given.astype(dtype, copy=False))
            continue
        shape = tuple(given)
        if not all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
            raise ValueError(f"shape of input {value.name!r} must be non-negative ints, got {given!r}")
        if np.issubdtype(dtype, np.floating):
            feed[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[value.name] = np.zeros(shape, dtype=dtype)
    return feed


def _tiny_add_model(path: Path) -> Path:
    """``y = x + 1`` on a one-element float tensor: the per-call overhead model."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    one = onnx.helper.make_tensor("one", onnx.TensorProto.FLOAT, [1], [1.0])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Add", ["x", "one"], ["y"])],
                                   "overhead", [x], [y], initializer=[one])
    return save_onnx(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), path)


class OnnxPlatform(Backend):
    """What the platforms that time an exported ONNX file share (``ort-*``, ``ov-*``): the file timed for a
    model (FP32, or its static QDQ INT8 version with random calibration batches), measuring a module or an
    ``.onnx`` file, and the INT8 quantization summary in each measurement's details. Subclasses set
    ``precision``, ``calibration_batches`` and implement ``_runner``; ``_check_timed`` runs before timing."""

    precision: str
    calibration_batches: int
    _workdir_prefix = "litepred-onnx-"

    @abc.abstractmethod
    def _runner(self, path: Path, feed: dict[str, np.ndarray]) -> Runner:
        """The runner that times ``path`` on this platform's engine."""

    def _check_timed(self, timed: Path) -> None:
        """A check of the file about to be timed (none by default)."""

    def prepare_onnx(self, path: str | Path, feed: dict[str, np.ndarray], workdir: str | Path) -> Path:
        """The file this backend times for ``path``: itself (not INT8, or already quantized) or its
        static QDQ INT8 version written into ``workdir``."""
        path = Path(path)
        if self.precision != "int8" or is_quantized(path):
            return path
        calibration = random_calibration(feed, self.calibration_batches)
        return quantize_static_int8(path, Path(workdir) / f"{path.stem}.int8.onnx", calibration)

    def export(self, model: nn.Module, example_inputs: Any, workdir: str | Path) -> tuple[Path, dict[str, np.ndarray]]:
        """Export ``model`` into ``workdir``; return the file this backend times and its feed."""
        if not isinstance(model, nn.Module):
            raise ValueError(f"expected an nn.Module, got {type(model).__name__}; "
                             "use measure_onnx() for .onnx files")
        fp32 = export_onnx(model, example_inputs, Path(workdir) / "model.onnx", check=False)
        feed = resolve_onnx_inputs(fp32, example_inputs)
        return self.prepare_onnx(fp32, feed, workdir), feed

    def measure(self, model: nn.Module, example_inputs: Any) -> Measurement:
        with tempfile.TemporaryDirectory(prefix=self._workdir_prefix) as workdir:
            return self._measure_prepared(*self.export(model, example_inputs, workdir))

    def measure_onnx(self, path: str | Path, inputs: Any = None) -> Measurement:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        feed = resolve_onnx_inputs(path, inputs)
        with tempfile.TemporaryDirectory(prefix=self._workdir_prefix) as workdir:
            return self._measure_prepared(self.prepare_onnx(path, feed, workdir), feed)

    def _measure_prepared(self, timed: Path, feed: dict[str, np.ndarray]) -> Measurement:
        self._check_timed(timed)
        measurement = self._time(self._runner(timed, feed))
        if self.precision == "int8":
            summary = quantization_summary(timed)
            measurement.details["quantized_fraction"] = summary.fraction_quantized()
            measurement.details["quantization"] = summary.to_dict()
        return measurement


class OrtBackend(OnnxPlatform):
    """onnxruntime CPU session; ``precision`` "fp32" or "int8", ``optimization_level`` as in
    :func:`moonlit.common.profiling.backends.onnxruntime_runner` ("disable" … "all")."""

    runtime = "onnxruntime"

    def __init__(self, name: str, *, precision: str = "fp32", optimization_level: str = "all",
                 calibration_batches: int = CALIBRATION_BATCHES, kernel_boundaries: str = "strip",
                 **options: Any) -> None:
        if precision not in ("fp32", "int8"):
            raise ValueError(f"precision must be 'fp32' or 'int8', got {precision!r}")
        if optimization_level not in ("disable", "basic", "extended", "all"):
            raise ValueError(
                f"optimization_level must be one of 'disable', 'basic', 'extended', 'all', got {optimization_level!r}"
            )
        if not isinstance(calibration_batches, int) or calibration_batches < 1:
            raise ValueError(f"calibration_batches must be a positive int, got {calibration_batches!r}")
        if kernel_boundaries not in ("strip", "keep"):
            raise ValueError(f"kernel_boundaries must be 'strip' or 'keep', got {kernel_boundaries!r}")
        super().__init__(name, **options)
        self.kernel_boundaries = kernel_boundaries
        self.precision = precision
        self.optimization_level = optimization_level
        self.calibration_batches = calibration_batches

    _workdir_prefix = "litepred-ort-"

    def _runtime_version(self) -> str:
        return ort.__version__

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["kernel_boundaries"] = self.kernel_boundaries if self.optimization_level != "disable" else "none"
        if self.precision == "int8":
            meta["quantization"] = {"format": "QDQ", "activations": "uint8", "weights": "int8 per-channel",
                                    "calibration": f"{self.calibration_batches} random batches, minmax",
                                    "preprocess": "quant_pre_process"}
        return meta

    def _overhead_key(self) -> tuple[Any, ...]:
        return (self.runtime, self.threads, self.optimization_level)

    def _overhead_runner(self) -> Runner:
        with tempfile.TemporaryDirectory(prefix="litepred-overhead-") as workdir:
            path = _tiny_add_model(Path(workdir) / "add.onnx")
            # The session reads the file while it is built; the runner keeps only the session.
            return self._runner(path, {"x": np.zeros(1, dtype=np.float32)})

    def _runner(self, path: Path, feed: dict[str, np.ndarray]) -> Runner:
        return make_runner("onnxruntime", path, feed, threads=self.threads,
                           optimization_level=self.optimization_level)

    def prepare_runner(self, model: nn.Module, example_inputs: Any, workdir: Path, *, kernel: bool = False) -> Runner:
        """A runner of ``model``; a ``kernel`` (with ``kernel_boundaries="strip"`` and graph optimizations
        on) is timed as it runs inside a model: see :mod:`moonlit.litepred.profile.kernel_io`."""
        timed, feed = self.export(model, example_inputs, workdir)
        if not kernel or self.kernel_boundaries == "keep" or self.optimization_level == "disable":
            return self._runner(timed, feed)
        stripped = strip_boundaries(timed, feed, Path(workdir) / "kernel.stripped.onnx",
                                    optimization_level=self.optimization_level)
        return make_runner("onnxruntime", stripped.path, stripped.feed, threads=self.threads,
                           optimization_level="disable")

@register_platform("ort-fp32")
def ort_fp32(**options: Any) -> OrtBackend:
    """FP32, all graph optimizations."""
    return OrtBackend("ort-fp32", precision="fp32", optimization_level="all", **options)


@register_platform("ort-fp32-noopt")
def ort_fp32_noopt(**options: Any) -> OrtBackend:
    """FP32, graph optimizations off (one kernel per ONNX node)."""
    return OrtBackend("ort-fp32-noopt", precision="fp32", optimization_level="disable", **options)


@register_platform("ort-int8")
def ort_int8(**options: Any) -> OrtBackend:
    """Static QDQ INT8 (U8S8, per-channel), all graph optimizations."""
    return OrtBackend("ort-int8", precision="int8", optimization_level="all", **options)


@register_platform("ort-fp32-2t")
def ort_fp32_2t(**options: Any) -> OrtBackend:
    """``ort-fp32`` with two intra-op threads."""
    return OrtBackend("ort-fp32", precision="fp32", optimization_level="all",
                      **fixed_threads("ort-fp32-2t", 2, options))


@register_platform("ort-int8-2t")
def ort_int8_2t(**options: Any) -> OrtBackend:
    """``ort-int8`` with two intra-op threads."""
    return OrtBackend("ort-int8", precision="int8", optimization_level="all",
                      **fixed_threads("ort-int8-2t", 2, options))
