"""OpenVINO as the second CPU engine: compiled models at FP32 / BF16 / INT8, the ``"openvino"`` latency backend,
and what the engine really executed (fused layers, runtime precisions, kernels, per-layer counters).

Part of the measurement protocol in :mod:`moonlit.common.profiling.latency`: :func:`openvino_runner` is registered
as the ``"openvino"`` backend beside ``"onnxruntime"`` and takes the same models (``.onnx`` paths, bytes,
``onnx.ModelProto``) and the same input feeds, so both engines are timed interleaved in one
:func:`~moonlit.common.profiling.latency.compare_many` run. ``openvino`` itself is imported inside the functions,
so importing :mod:`moonlit.common.profiling` stays cheap.

Precisions (``INFERENCE_PRECISION_HINT`` of the CPU plugin):

* ``"fp32"``: every layer in f32.
* ``"bf16"``: layers the plugin supports in bf16 run in bf16 (8-bit mantissa); needs BF16 in the CPU's
  ``OPTIMIZATION_CAPABILITIES`` (AVX-512 BF16 or AMX).
* ``"int8"``: the model must already be quantized: QDQ (``QuantizeLinear``/``DequantizeLinear``) ONNX such as
  :func:`moonlit.common.export.int8.export_static_int8` writes, or an IR with ``FakeQuantize``. The plugin's
  low-precision transformations turn those into u8/i8 kernels (check with :func:`executed_layers`); the layers left
  float run at ``rest_precision`` (``"fp32"`` by default, or ``"bf16"``).

:func:`executed_layers` reads ``compiled.get_runtime_model()``: one node per executed primitive, whose rt_info holds
the original layers fused into it, its runtime precision and its kernel. LitePred derives its OpenVINO fusion
rules from it. :func:`per_layer_counters` reads ``InferRequest.get_profiling_info()`` (compile with
``perf_counters=True``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moonlit.common.errors import InputError
from moonlit.common.profiling.backends import Runner, register_backend

__all__ = ["PRECISIONS", "INT8_HINT", "ExecutedLayer", "LayerCounter", "openvino_compile", "openvino_runner",
           "openvino_feed", "executed_layers", "per_layer_counters", "layers_by_original_name",
           "supported_precisions", "is_quantized", "check_in_child"]

PRECISIONS = ("fp32", "bf16", "int8")
_HINTS = {"fp32": "f32", "bf16": "bf16"}
_MODEL_SUFFIXES = (".onnx", ".xml")
# Runtime-model nodes that hold data rather than run a kernel; executed_layers leaves them out unless asked.
_DATA_LAYER_TYPES = frozenset({"Input", "Output", "Const"})
INT8_HINT = "int8 needs a quantized (QDQ) model; export one with moonlit.common.export.export_static_int8"


@functools.lru_cache(maxsize=1)
def _core() -> Any:
    import openvino as ov

    return ov.Core()


def supported_precisions() -> list[str]:
    """The precisions of :data:`PRECISIONS` this CPU runs natively (``OPTIMIZATION_CAPABILITIES``)."""
    capabilities = set(_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    wanted = {"fp32": "FP32", "bf16": "BF16", "int8": "INT8"}
    return [precision for precision in PRECISIONS if wanted[precision] in capabilities]


def _read_model(model: Any) -> tuple[Any, str]:
    """``(ov.Model, label)``: the model read from a path, ONNX bytes, an ``onnx.ModelProto`` or taken as is."""
    import openvino as ov

    if isinstance(model, ov.Model):
        return model, f"OpenVINO model {model.get_friendly_name()!r}"
    if isinstance(model, (str, Path)):
        path = Path(model)
        label = str(path)
        if path.suffix not in _MODEL_SUFFIXES:
            raise InputError(f"model file {path} should be an ONNX (.onnx) or OpenVINO IR (.xml) file")
        if not path.is_file():
            raise InputError(f"model file {path} does not exist; expected an .onnx or .xml model")
        source: Any = str(path)
    elif isinstance(model, (bytes, bytearray)):
        label, source = f"ONNX bytes ({len(model)} B)", bytes(model)
    elif hasattr(model, "SerializeToString"):
        label, source = "onnx.ModelProto", model.SerializeToString()
    else:
        raise InputError(f"model must be an .onnx/.xml path, ONNX bytes, an onnx.ModelProto or an ov.Model, "
                         f"got {type(model).__name__}")
    from moonlit.common.export.openvino import validate_onnx_model

    if isinstance(source, bytes) or source.endswith(".onnx"):
        validate_onnx_model(source, label)
    try:
        return _core().read_model(source), label
    except (RuntimeError, UnicodeDecodeError) as error:  # OpenVINO reports over many lines
        first = next((line for line in str(error).splitlines() if "Unable" in line or "Error" in line), "")
        raise InputError(f"{label} is not a model OpenVINO can read ({first.strip()[:200]}); expected ONNX or IR"
                         ) from None


def is_quantized(model: Any) -> bool:
    """Whether ``model`` (an ``ov.Model``) holds ``FakeQuantize`` nodes (what QDQ pairs become on reading)."""
    return any(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())


def _compile_config(precision: str, rest_precision: str | None, threads: int, perf_counters: bool,
                    cache_dir: str | Path | None) -> dict[str, Any]:
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if rest_precision is not None and precision != "int8":
        raise InputError(f"rest_precision applies to precision 'int8' only, got it with {precision!r}")
    rest = rest_precision or "fp32"
    if rest not in _HINTS:
        raise InputError(f"rest_precision must be one of {list(_HINTS)}, got {rest_precision!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads must be a positive int, got {threads!r}")
    hint = _HINTS[rest if precision == "int8" else precision]
    if hint == "bf16" and "bf16" not in supported_precisions():
        raise InputError("precision bf16 needs a CPU with BF16 in OPTIMIZATION_CAPABILITIES (AVX-512 BF16 or AMX); "
                         f"this one has {list(_core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))}")
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": hint,  # the float layers' precision; int8 comes from the graph's FakeQuantize
        "INFERENCE_NUM_THREADS": threads,  # the thread count the timing protocol pins and records
        "NUM_STREAMS": 1,  # one stream: one request at a time uses all `threads` threads
        "PERFORMANCE_HINT": "LATENCY",  # optimise one request's latency, not throughput across requests
        # Threads not bound to cores, as the ORT and torch arms are not: on a shared machine a bound thread cannot
        # move off a core another process holds, which would charge that process's load to OpenVINO alone.
        "ENABLE_CPU_PINNING": False,
        "PERF_COUNT": bool(perf_counters),  # per-layer counters for per_layer_counters (small overhead)
    }
    if cache_dir is not None:
        config["CACHE_DIR"] = str(cache_dir)  # compiled blobs are reused across processes
    return config


def openvino_compile(model: Any, *, precision: str = "fp32", threads: int = 1, cache_dir: str | Path | None = None,
                     rest_precision: str | None = None, perf_counters: bool = False) -> Any:
    """Compile ``model`` for the CPU plugin at ``precision``; returns an ``ov.CompiledModel``.

    ``model``: an ``.onnx``/``.xml`` path, ONNX bytes, an ``onnx.ModelProto`` or an ``ov.Model``.
    ``precision``: ``"fp32"`` (``INFERENCE_PRECISION_HINT=f32``), ``"bf16"`` (``bf16``; :class:`InputError` when the
    CPU has no BF16) or ``"int8"`` (the model must hold QDQ/FakeQuantize nodes; its non-quantized rest runs at
    ``rest_precision``, f32 unless ``"bf16"`` is asked for). ``threads``: ``INFERENCE_NUM_THREADS``, with one
    stream and the LATENCY hint (threads not bound to cores, like the other engines').
    ``cache_dir``: OpenVINO's ``CACHE_DIR`` for compiled blobs.
    ``perf_counters``: ``PERF_COUNT``, needed by :func:`per_layer_counters`.
    """
    config = _compile_config(precision, rest_precision, threads, perf_counters, cache_dir)
    ov_model, label = _read_model(model)
    if precision == "int8" and not is_quantized(ov_model):
        raise InputError(f"{label} has no QuantizeLinear/DequantizeLinear (FakeQuantize) nodes: {INT8_HINT}")
    return _core().compile_model(ov_model, "CPU", config)


def _input_specs(compiled: Any) -> list[tuple[str, Any]]:
    """``(name, numpy dtype or None)`` of each input port, the specs ``feed_for_specs`` takes."""
    specs = []
    for port in compiled.inputs:
        element_type = port.get_element_type()
        dtype = None if element_type.is_dynamic() else element_type.to_dtype()
        specs.append((port.get_any_name(), dtype))
    return specs


def openvino_feed(compiled: Any, inputs: Any) -> dict[str, Any]:
    """``inputs`` (one tensor, a sequence by position or a mapping by name) as the ``{name: ndarray}`` feed of
    ``compiled``, with the conventions of :func:`moonlit.common.export.onnx.onnx_input_feed`."""
    from moonlit.common.export.onnx import feed_for_specs

    return feed_for_specs(_input_specs(compiled), inputs)


@register_backend("openvino")
def openvino_runner(model: Any, inputs: Any, *, threads: int = 1, precision: str = "fp32",
                    rest_precision: str | None = None, cache_dir: str | Path | None = None) -> Runner:
    """OpenVINO CPU model (:func:`openvino_compile`) running ``inputs`` through one reusable ``InferRequest``.

    The feed is converted once; each call runs ``request.infer`` on it (inputs shared, outputs copied, as
    onnxruntime's ``session.run`` returns fresh arrays) and returns the outputs in port order.
    """
    compiled = openvino_compile(model, precision=precision, threads=threads, rest_precision=rest_precision,
                                cache_dir=cache_dir)
    feed = openvino_feed(compiled, inputs)
    request = compiled.create_infer_request()

    def run() -> list[Any]:
        return list(request.infer(feed, share_inputs=True).values())

    return Runner(run, "openvino", threads)


@dataclasses.dataclass(frozen=True)
class ExecutedLayer:
    """One node of the executed (runtime) graph.

    ``name``: the executed node's name; ``layer_type``: the plugin's node type (``Convolution``,
    ``FullyConnected``, ``Subgraph`` for a JIT-fused elementwise chain, ``Reorder`` for a layout/precision
    change the plugin inserted, ...); ``original_names``: the names of the source model's ops fused into it
    (empty for inserted reorders; a transformation that merges ops may rename one: BatchNorm folded into a
    convolution leaves the convolution named after the scale ``Multiply`` it absorbed, with the BN op's name
    beside it); ``runtime_precision``: the precision the kernel computes in (``f32``,
    ``bf16``, ``u8``, ``i8``, ...); ``output_precisions``: one per output; ``primitive_type``: the kernel
    (``brgconv_avx512_amx_I8``, ``jit_avx512_f32``, ``gemm_mlas_f32``, ...); ``exec_order``: its position.
    """

    name: str
    layer_type: str
    original_names: tuple[str, ...]
    runtime_precision: str
    output_precisions: tuple[str, ...]
    primitive_type: str
    exec_order: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _rt_value(info: Any, key: str) -> str:
    try:
        return info[key].astype(str) if key in info else ""
    except UnicodeDecodeError:  # a name from an IR file that is not UTF-8
        raise InputError(f"the runtime graph's {key} is not UTF-8 text; the model's op names should be") from None


def _split_names(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.split(",") if part)


def executed_layers(compiled: Any, *, include_data: bool = False) -> list[ExecutedLayer]:
    """The layers ``compiled`` (an ``ov.CompiledModel``) executes, in execution order.

    Read from ``compiled.get_runtime_model()``: rt_info ``layerType``, ``originalLayersNames``,
    ``runtimePrecision``, ``outputPrecisions``, ``primitiveType`` and ``execOrder`` of each node. Input, Output and
    Const nodes hold data rather than run a kernel and are left out unless ``include_data``.
    """
    import openvino as ov

    if not isinstance(compiled, ov.CompiledModel):
        raise InputError(f"executed_layers needs an ov.CompiledModel (see openvino_compile), got "
                         f"{type(compiled).__name__}")
    layers = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer_type = _rt_value(info, "layerType")
        if layer_type in _DATA_LAYER_TYPES and not include_data:
            continue
        order = _rt_value(info, "execOrder")
        layers.append(ExecutedLayer(
            name=op.get_friendly_name(),
            layer_type=layer_type,
            original_names=_split_names(_rt_value(info, "originalLayersNames")),
            runtime_precision=_rt_value(info, "runtimePrecision"),
            output_precisions=_split_names(_rt_value(info, "outputPrecisions")),
            primitive_type=_rt_value(info, "primitiveType"),
            exec_order=int(order) if order.lstrip("-").isdigit() else -1,
        ))
    return sorted(layers, key=lambda layer: layer.exec_order)


@dataclasses.dataclass(frozen=True)
class LayerCounter:
    """One layer's counters from the last inference: ``status`` is ``EXECUTED``, ``NOT_RUN`` or
    ``OPTIMIZED_OUT``; ``exec_type`` is the kernel (as :attr:`ExecutedLayer.primitive_type`); times in µs."""

    name: str
    layer_type: str
    exec_type: str
    status: str
    real_time_us: float
    cpu_time_us: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def per_layer_counters(request: Any) -> list[LayerCounter]:
    """Per-layer counters of ``request``'s last inference (``InferRequest.get_profiling_info()``).

    The request's model must be compiled with ``perf_counters=True`` (``PERF_COUNT``) and have run once.
    """
    import openvino as ov

    if not isinstance(request, ov.InferRequest):
        raise InputError(f"per_layer_counters needs an ov.InferRequest, got {type(request).__name__}")
    if str(request.get_compiled_model().get_property("PERF_COUNT")).upper() not in ("YES", "TRUE"):  # 'YES'/'NO'
        raise InputError("per_layer_counters needs a model compiled with perf_counters=True (PERF_COUNT)")
    counters = []
    for info in request.get_profiling_info():
        counters.append(LayerCounter(
            name=info.node_name,
            layer_type=info.node_type,
            exec_type=info.exec_type,
            status=info.status.name,
            real_time_us=info.real_time.total_seconds() * 1e6,
            cpu_time_us=info.cpu_time.total_seconds() * 1e6,
        ))
    return counters


def layers_by_original_name(layers: Sequence[ExecutedLayer]) -> dict[str, ExecutedLayer]:
    """``{original op name: the executed layer it was fused into}``."""
    return {name: layer for layer in layers for name in layer.original_names}



# Run by check_in_child in a fresh interpreter: compile and run each job, one JSON line per finished job.
_CHILD = """
import json, sys
import numpy as np
from moonlit.common.profiling.openvino import openvino_compile
for index, (model, precision, threads) in enumerate(json.loads(sys.argv[1])):
    try:
        compiled = openvino_compile(model, precision=precision, threads=threads)
        feed = {}
        for port in compiled.inputs:
            shape = [d.get_length() if d.is_static else 1 for d in port.get_partial_shape()]
            feed[port.get_any_name()] = np.zeros(shape, port.get_element_type().to_dtype())
        compiled.create_infer_request().infer(feed)
        error = None
    except Exception as failure:
        error = (str(failure).strip().splitlines() or [type(failure).__name__])[0][:300]
    print(json.dumps({"index": index, "error": error}), flush=True)
"""


def check_in_child(jobs: Sequence[tuple[str | Path, str]], *, threads: int = 1) -> list[str | None]:
    """Compile and run once (zeros, dynamic dimensions at 1) each ``(model file, precision)`` in a child process;
    per job None if it works, else why not.

    The CPU plugin can kill the process on a graph it mishandles (a segfault compiling some QDQ graphs, e.g.
    timm's GhostNet at INT8); a long benchmark probes its OpenVINO arms here first. After a crash the job being run
    is reported as crashed and a fresh child goes on with the rest.
    """
    pending = [(str(model), precision, threads) for model, precision in jobs]
    results: list[str | None] = []
    while pending:
        child = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(pending)], capture_output=True, text=True,
                               check=False)
        done = [json.loads(line)["error"] for line in child.stdout.splitlines() if line.startswith('{"index"')]
        results += done
        pending = pending[len(done):]
        if pending:  # the child died on pending[0]
            how = f"signal {-child.returncode}" if child.returncode < 0 else f"exit status {child.returncode}"
            last = (child.stderr.strip().splitlines() or [""])[-1][:200]
            detail = f": {last}" if last else ""
            results.append(f"OpenVINO crashed the process ({how}) compiling or running it{detail}")
            pending = pending[1:]
    return results
