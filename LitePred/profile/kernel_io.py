"""Kernels timed as they run inside a model: the runtime's boundary ops stripped (LitePred, NSDI'24, §3).

LitePred predicts a model as the sum of its kernels, each profiled alone. With graph
optimizations on, onnxruntime wraps an isolated kernel in ops a whole model pays once, not once
per kernel:

* FP32: NCHWc convolutions get ``ReorderInput``/``ReorderOutput`` (to and from the blocked
  layout); consecutive NCHWc kernels in a model pass blocked tensors to each other;
* INT8 (QDQ): the float input is quantized and the output dequantized, and QLinearConv runs in
  NHWC behind two ``Transpose``; in a model, 8-bit NHWC tensors flow from kernel to kernel.

Measured here ad hoc (a 3x3 conv-BN-ReLU, 32 channels, 56x56): the boundary ops were 13% of the
isolated INT8 kernel's time, and much more for cheap kernels (a 1x1 conv or an activation costs
about what its reorders cost). :func:`strip_boundaries` takes the optimized graph onnxruntime
builds, removes those ops where they touch the graph's inputs and outputs, and returns a graph
whose inputs and outputs are the tensors the kernel reads and writes inside a model (8-bit,
NHWC or blocked), with a feed of those shapes. It is timed with optimizations off (they have
run). The per-model overhead term (:mod:`moonlit.litepred.predict.calibration`) keeps the one reorder or
quantize pair a whole model pays at its ends.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from moonlit.common.export.onnx import save_onnx

__all__ = ["BOUNDARY_OPS", "StrippedKernel", "optimized_model", "strip_boundaries"]

# Ops that move a tensor between a model's float NCHW interface and a kernel's internal form.
BOUNDARY_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "Transpose", "ReorderInput", "ReorderOutput"})

_INTEGER_TYPES = {onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT8: np.int8}


@dataclasses.dataclass
class StrippedKernel:
    """The graph to time, its feed, and the boundary ops taken off each end (by op type)."""

    path: Path
    feed: dict[str, np.ndarray]
    stripped_inputs: list[str]
    stripped_outputs: list[str]


def optimized_model(path: str | Path, out: str | Path, optimization_level: str = "all") -> Path:
    """The graph onnxruntime runs for ``path`` after its optimizations, written to ``out``."""
    levels = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
    if optimization_level not in levels:
        raise ValueError(f"optimization_level must be one of {list(levels)}, got {optimization_level!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, levels[optimization_level])
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3  # the "hardware-specific optimizations" warning: we run it on this machine
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Path(out)


def _zero_point_type(initializers: dict[str, onnx.TensorProto], node: onnx.NodeProto) -> int:
    if len(node.input) > 2 and node.input[2] in initializers:
        return initializers[node.input[2]].data_type
    return onnx.TensorProto.UINT8  # onnx's default zero point type


def _output_type(node: onnx.NodeProto, input_type: int, initializers: dict[str, onnx.TensorProto]) -> int:
    if node.op_type == "QuantizeLinear":
        return _zero_point_type(initializers, node)
    if node.op_type == "DequantizeLinear":
        return onnx.TensorProto.FLOAT
    return input_type


def _input_type(node: onnx.NodeProto, output_type: int, initializers: dict[str, onnx.TensorProto]) -> int:
    if node.op_type == "QuantizeLinear":
        return onnx.TensorProto.FLOAT
    if node.op_type == "DequantizeLinear":
        return _zero_point_type(initializers, node)
    return output_type


def _random(shape: tuple[int, ...], elem_type: int, rng: np.random.Generator) -> np.ndarray:
    if elem_type in _INTEGER_TYPES:
        info = np.iinfo(_INTEGER_TYPES[elem_type])
        return rng.integers(info.min, info.max + 1, size=shape, dtype=_INTEGER_TYPES[elem_type])
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    return rng.standard_normal(shape).astype(dtype)


def strip_boundaries(path: str | Path, feed: dict[str, np.ndarray], out: str | Path, *,
                     optimization_level: str = "all", seed: int = 0) -> StrippedKernel:
    """Optimize ``path`` as onnxruntime does, strip the boundary ops at its ends, save to ``out``.

    Graph inputs read by exactly one boundary op (as its data input) are replaced by that op's
    output, repeatedly; graph outputs written by a boundary op whose result nothing else reads are
    replaced by its data input, repeatedly. Shapes of the new ends come from one run of the
    optimized graph. Returns the stripped graph (run it with optimizations off) and a seeded feed.
    """
    out = Path(out)
    optimized = onnx.load(str(optimized_model(path, out.with_suffix(".optimized.onnx"), optimization_level)))
    graph = optimized.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in graph.node]
    graph_outputs = {v.name: v.type.tensor_type.elem_type for v in graph.output}

    def readers(name: str, live: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
        return [n for n in live if name in n.input]

    removed: set[int] = set()
    live = list(nodes)
    ends_in: dict[str, tuple[str, int]] = {}  # original input → (new input, elem type)
    stripped_in: list[str] = []
    for value in graph.input:
        if value.name in initializers:
            continue
        name, elem_type = value.name, value.type.tensor_type.elem_type
        while name not in graph_outputs:
            users = readers(name, live)
            if len(users) != 1 or users[0].op_type not in BOUNDARY_OPS or users[0].input[0] != name:
                break
            node = users[0]
            if node.output[0] in graph_outputs:  # the whole graph is boundary ops: nothing to time
                break
            elem_type = _output_type(node, elem_type, initializers)
            name = node.output[0]
            stripped_in.append(node.op_type)
            removed.add(id(node))
            live = [n for n in live if id(n) not in removed]
        ends_in[value.name] = (name, elem_type)
    producers = {output: n for n in live for output in n.output}
    new_inputs = {name for name, _ in ends_in.values()}
    ends_out: dict[str, tuple[str, int]] = {}
    stripped_out: list[str] = []
    for value in graph.output:
        name, elem_type = value.name, value.type.tensor_type.elem_type
        while name in producers and producers[name].op_type in BOUNDARY_OPS:
            node = producers[name]
            source = node.input[0]
            if source in new_inputs or source in initializers or readers(source, live) != [node]:
                break
            elem_type = _input_type(node, elem_type, initializers)
            name = source
            stripped_out.append(node.op_type)
            removed.add(id(node))
            live = [n for n in live if id(n) not in removed]
        ends_out[value.name] = (name, elem_type)

    # Shapes of the new ends: run the optimized graph once with them exposed as outputs.
    probe = onnx.ModelProto.FromString(optimized.SerializeToString())
    known = {v.name for v in probe.graph.output} | set(feed)
    exposed = [(n, t) for n, t in list(ends_in.values()) + list(ends_out.values()) if n not in known]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, t, None) for n, t in exposed)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(None, feed)))
    values.update(feed)

    rng = np.random.default_rng(seed)
    kept = [n for n in nodes if id(n) not in removed]
    new_feed: dict[str, np.ndarray] = {}
    inputs, outputs = [], []
    for original, (name, elem_type) in ends_in.items():
        shape = values[name].shape
        inputs.append(onnx.helper.make_tensor_value_info(name, elem_type, list(shape)))
        new_feed[name] = feed[original] if name == original else _random(shape, elem_type, rng)
    for name, elem_type in ends_out.values():
        outputs.append(onnx.helper.make_tensor_value_info(name, elem_type, list(values[name].shape)))
    boundary = {v.name for v in inputs} | {v.name for v in outputs}
    value_info = [v for v in graph.value_info if v.name not in boundary]
    stripped = onnx.helper.make_graph(kept, graph.name, inputs, outputs, initializer=list(graph.initializer),
                                      value_info=value_info)
    model = onnx.helper.make_model(stripped, opset_imports=list(optimized.opset_import))
    model.ir_version = optimized.ir_version
    return StrippedKernel(save_onnx(model, out), new_feed, stripped_in, stripped_out)
