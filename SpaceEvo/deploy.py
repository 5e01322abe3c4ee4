"""INT8 deployment of SpaceEvo subnets to ONNX Runtime (SpaceEvo, ICCV'23, §4.1 "deployment" and §5).

Two routes to a QDQ model that onnxruntime runs with integer kernels (QLinearConv / QGemm, U8S8):

* :func:`export_lsq_qdq` deploys the model whose accuracy was measured: the **learned** LSQ+ grids
  of a quantization-aware subnet become the QuantizeLinear/DequantizeLinear parameters. The
  reference instead re-calibrated every exported model on 30 random inputs, so the INT8 model it
  timed was not the one it evaluated (flaw 5 in the notes).
* :func:`quantize_with_calibration` is plain onnxruntime static quantization with real calibration
  batches (``quant_pre_process`` first, see :mod:`moonlit.common.export.int8`) for models that
  were never trained with LSQ+ (FP32 SEQnets, timm baselines).

How :func:`export_lsq_qdq` builds its graph:

1. FP32 ONNX of the subnet with its quantizers off. The exporter folds each eval-mode BatchNorm
   into the preceding conv: ``W' = g * W`` per output channel, ``g = gamma / sqrt(var + eps)``.
2. Conv/Gemm nodes are matched to the QuantConv2d/QuantLinear modules in execution order; the
   match is checked: every exported weight must be a per-channel multiple ``g`` of the module's.
3. Weights: int8 levels ``q = clamp(round(W / s_w), -128, 127)``, LSQ+'s own levels, with the
   folded per-channel scale ``s_w * |g|`` (the sign of ``g`` moves into ``q``). Biases become
   int32 at scale ``s_x * s_w * |g|``, the form onnxruntime's QDQ conv fusion requires.
4. Inputs: one Q/DQ pair per quantized op with its learned activation grid (uint8, zero point
   ``round(-beta / s)``; :func:`snap_offsets_to_grid_` makes beta exactly ``-zp * s``).
5. Outputs: an integer conv kernel needs a Q right after its Conv. Where the trained model
   quantizes that tensor itself — the conv output reaches, through ReLU/ReLU6 or nothing, only
   quantized ops that share one grid — that grid is used, which is exact:
   ``Q(act(DQ(Q(y)))) = Q(act(y))`` for clamp-type activations. Elsewhere (residual adds, swish,
   hswish, SE products) the trained model keeps the tensor in float, and a min-max grid from the
   calibration batches is the one quantization step added beyond the trained model.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import logging
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper
from torch import Tensor, nn

from moonlit.common.export.int8 import export_static_int8, quantization_summary
from moonlit.common.export.onnx import export_onnx, save_onnx
from moonlit.spaceevo.ops.lsq_plus import (
    ActivationQuantizer,
    QuantConv2d,
    QuantLinear,
    set_quant_mode,
)

__all__ = ["QdqExport", "export_lsq_qdq", "optimized_op_counts", "quantize_with_calibration",
           "snap_offsets_to_grid_"]

logger = logging.getLogger(__name__)

# Activations through which a conv output keeps the next quantizer's grid exactly (see step 5).
_CLAMP_ACTIVATIONS = ("Relu", "Clip")
# A folded weight must equal g * W per channel to this relative tolerance, else the match is wrong.
_FOLD_TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class QdqExport:
    """What :func:`export_lsq_qdq` wrote: the path and how each quantization point got its grid."""

    path: Path
    quantized_ops: int          # Conv/Gemm nodes with learned input and weight grids
    learned_output_grids: int   # conv outputs quantized with the trained model's own next grid
    calibrated_output_grids: int  # conv outputs given a min-max grid (kept in float by the trained model)
    negative_fold_channels: int   # output channels whose BN scale was negative (sign moved into q)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "path": str(self.path)}


@dataclasses.dataclass
class _QuantOp:
    """One QuantConv2d/QuantLinear as it ran: its learned grids and FP32 weight."""

    name: str
    weight: np.ndarray
    weight_scale: float
    input_scale: float
    input_zero_point: int


def snap_offsets_to_grid_(model: nn.Module) -> float:
    """Move every activation offset beta onto its exportable grid (``beta = -zp * s``).

    Returns the largest shift in grid steps (< 0.5). Evaluate after snapping so the reported
    accuracy is that of the deployed INT8 model.
    """
    largest = 0.0
    for module in model.modules():
        if isinstance(module, ActivationQuantizer) and bool(module.initialized):
            params = module.export_params()
            largest = max(largest, abs(params.offset_residual) / params.scale)
            module.snap_offset_to_grid_()
    return largest


def _record_quant_ops(model: nn.Module, example: Tensor) -> list[_QuantOp]:
    """Run ``model`` once and list its quantized convs/linears in call order with their grids."""
    for name, module in model.named_modules():
        if isinstance(module, (QuantConv2d, QuantLinear)):
            for quantizer in (module.act_quant, module.weight_quant):
                if quantizer.bits != 8 or not bool(quantizer.initialized):
                    raise ValueError(f"{name}: its LSQ+ quantizers must be in 8-bit mode with learned scales "
                                     f"(bits={quantizer.bits}, initialized={bool(quantizer.initialized)}); call "
                                     "set_quant_mode(model, 8) and run a calibration forward or load lsq weights")
    calls: list[str] = []
    names = {module: name for name, module in model.named_modules()}
    handles = [module.register_forward_hook(lambda m, _i, _o: calls.append(names[m]))
               for module in model.modules() if isinstance(module, (QuantConv2d, QuantLinear))]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    modules = dict(model.named_modules())
    ops = []
    for name in calls:
        module = modules[name]
        act, weight = module.act_quant.export_params(), module.weight_quant.export_params()
        ops.append(_QuantOp(name, module.weight.detach().double().numpy(), weight.scale, act.scale,
                            act.zero_point))
    return ops


def _fold_factors(folded: np.ndarray, original: np.ndarray, name: str) -> np.ndarray:
    """Per-output-channel g with ``folded = g * original`` (least squares), checked to be exact."""
    flat_folded = folded.reshape(folded.shape[0], -1).astype(np.float64)
    flat_original = original.reshape(original.shape[0], -1)
    norms = (flat_original ** 2).sum(1)
    factors = np.where(norms > 0, (flat_folded * flat_original).sum(1) / np.maximum(norms, 1e-300), 1.0)
    error = np.abs(flat_folded - factors[:, None] * flat_original).max()
    if error > _FOLD_TOLERANCE * max(np.abs(flat_folded).max(), 1e-12):
        raise ValueError(f"exported weight of '{name}' is not a per-channel multiple of the module's "
                         f"(max error {error:.3g}): the ONNX graph's conv order does not match the model's")
    return factors


class _GraphEditor:
    """Accumulates the nodes and initializers of the QDQ graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.initializers = {tensor.name: tensor for tensor in model.graph.initializer}
        self.new_initializers: list[onnx.TensorProto] = []

    def constant(self, name: str, value: np.ndarray) -> str:
        self.new_initializers.append(numpy_helper.from_array(value, name))
        return name

    def qdq(self, tensor: str, output: str, scale: float, zero_point: int) -> list[onnx.NodeProto]:
        scale_name = self.constant(f"{output}_scale", np.array(scale, dtype=np.float32))
        zp_name = self.constant(f"{output}_zero_point", np.array(zero_point, dtype=np.uint8))
        return [helper.make_node("QuantizeLinear", [tensor, scale_name, zp_name], [f"{output}_q"]),
                helper.make_node("DequantizeLinear", [f"{output}_q", scale_name, zp_name], [output])]

    def array(self, name: str) -> np.ndarray:
        if name not in self.initializers:
            raise ValueError(f"'{name}' is not an initializer: only constant weights can be quantized")
        return numpy_helper.to_array(self.initializers[name])


def _weight_layout(node: onnx.NodeProto, weight: np.ndarray, torch_weight: np.ndarray) -> bool:
    """True when the ONNX weight is the transpose of torch's ([in, out] Gemm without transB)."""
    if node.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transB", 0) == 0:
            return True
    if weight.shape != torch_weight.shape:
        raise ValueError(f"{node.name}: ONNX weight {weight.shape} vs module weight {torch_weight.shape}")
    return False


def _quantize_node_inputs(editor: _GraphEditor, index: int, node: onnx.NodeProto,
                          op: _QuantOp) -> tuple[list[onnx.NodeProto], int]:
    """Q/DQ for the activation input, int8 weight + DQ, int32 bias + DQ; returns the nodes before ``node``."""
    prefix = f"lsq{index}"
    nodes = editor.qdq(node.input[0], f"{prefix}_input", op.input_scale, op.input_zero_point)
    node.input[0] = f"{prefix}_input"
    weight = editor.array(node.input[1])
    transposed = _weight_layout(node, weight, op.weight)
    if transposed:
        weight = weight.T
    factors = _fold_factors(weight, op.weight, op.name)
    levels = np.clip(np.round(op.weight / op.weight_scale), -128, 127)
    signs = np.where(factors < 0, -1.0, 1.0).reshape((-1,) + (1,) * (levels.ndim - 1))
    levels = np.clip(levels * signs, -128, 127).astype(np.int8)
    levels[factors == 0] = 0  # a zero BN gamma folds the channel's weight to zero (its scale is a placeholder)
    channel_scales = (op.weight_scale * np.where(factors == 0, 1.0, np.abs(factors))).astype(np.float32)
    per_channel = node.op_type == "Conv"
    if per_channel:
        weight_scale, weight_zp, axis = channel_scales, np.zeros(len(channel_scales), np.int8), 0
    else:  # QGemm takes one weight scale: an unfolded linear has g = 1 everywhere
        if not np.allclose(channel_scales, channel_scales[0], rtol=1e-6):
            raise ValueError(f"{op.name}: a Gemm weight needs one scale, got per-row scales (folded BN?)")
        weight_scale, weight_zp, axis = np.array(channel_scales[0], np.float32), np.array(0, np.int8), None
        channel_scales = np.full_like(channel_scales, channel_scales[0])
    if transposed:
        levels = np.ascontiguousarray(levels.T)
    kwargs = {} if axis is None else {"axis": axis}
    nodes.append(helper.make_node(
        "DequantizeLinear",
        [editor.constant(f"{prefix}_weight_int8", levels), editor.constant(f"{prefix}_weight_scale", weight_scale),
         editor.constant(f"{prefix}_weight_zero_point", weight_zp)], [f"{prefix}_weight"], **kwargs))
    node.input[1] = f"{prefix}_weight"
    if len(node.input) > 2 and node.input[2]:
        bias = editor.array(node.input[2]).astype(np.float64)
        bias_scales = (np.float32(op.input_scale) * channel_scales).astype(np.float32)
        bias_levels = np.clip(np.round(bias / bias_scales), -2**31, 2**31 - 1).astype(np.int32)
        scale_value = bias_scales if per_channel else np.array(bias_scales[0], np.float32)
        zp_value = np.zeros(len(bias_scales), np.int32) if per_channel else np.array(0, np.int32)
        nodes.append(helper.make_node(
            "DequantizeLinear",
            [editor.constant(f"{prefix}_bias_int32", bias_levels),
             editor.constant(f"{prefix}_bias_scale", scale_value),
             editor.constant(f"{prefix}_bias_zero_point", zp_value)], [f"{prefix}_bias"], **kwargs))
        node.input[2] = f"{prefix}_bias"
    return nodes, int((factors < 0).sum())


def _learned_output_grid(output: str, consumers: dict[str, list[onnx.NodeProto]],
                         grids: dict[int, tuple[float, int]]) -> tuple[float, int] | None:
    """The grid shared by every quantized op this conv output reaches through clamp activations only."""
    reached = consumers.get(output, [])
    if len(reached) == 1 and reached[0].op_type in _CLAMP_ACTIVATIONS:
        reached = consumers.get(reached[0].output[0], [])
    node_grids = {grids.get(id(node)) for node in reached}
    if not reached or None in node_grids or len(node_grids) != 1:
        return None
    return node_grids.pop()


def _min_max_grids(model: onnx.ModelProto, tensors: Sequence[str],
                   calibration: Iterable[Tensor]) -> dict[str, tuple[float, int]]:
    """uint8 min-max grids (range widened to hold 0) of ``tensors`` over the calibration batches."""
    probe = copy.deepcopy(model)
    known = {output.name for output in probe.graph.output}
    for name in tensors:
        if name not in known:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    low = {name: 0.0 for name in tensors}
    high = {name: 0.0 for name in tensors}
    batches = 0
    for batch in calibration:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        values = session.run(list(tensors), {input_name: np.asarray(images, dtype=np.float32)})
        for name, value in zip(tensors, values):
            low[name], high[name] = min(low[name], float(value.min())), max(high[name], float(value.max()))
        batches += 1
    if batches == 0:
        raise ValueError("calibration yielded no batches; expected at least one input batch")
    grids = {}
    for name in tensors:
        scale = max(high[name] - low[name], 1e-8) / 255.0
        grids[name] = (scale, int(np.clip(round(-low[name] / scale), 0, 255)))
    return grids


def _input_batch(batch: Any) -> Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _export_fp32(model: nn.Module, example: Tensor, path: Path, opset: int) -> Path:
    """FP32 export checked against torch; the tolerance follows the logits' magnitude (BN folding reorders sums)."""
    with torch.no_grad():
        magnitude = float(model(example).abs().max())
    return export_onnx(model, example, path, opset=opset, output_names=["output"],
                       dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                       atol=1e-4 * max(1.0, magnitude), rtol=1e-3)


def export_lsq_qdq(model: nn.Module, path: str | Path, calibration: Iterable[Any], *,
                   example_input: Tensor | None = None, opset: int = 17,
                   quantize_float_outputs: bool = True) -> QdqExport:
    """Export an LSQ+-quantized subnet (8-bit mode, learned scales) to an ONNX QDQ model at ``path``.

    ``calibration`` (tensors or (images, labels) pairs; re-iterable) sets only the grids of the conv
    outputs the trained model keeps in float (module docstring, step 5); its first batch is the
    export example unless ``example_input`` is given. Activation offsets that are off their
    exportable grid are used as rounded; snap them first with :func:`snap_offsets_to_grid_`.
    ``quantize_float_outputs=False`` leaves those outputs in float: the graph then computes exactly
    the fake-quant model (up to float rounding), but the convs whose outputs stay float do not run
    as integer kernels.
    """
    model = copy.deepcopy(model).eval()
    batches = list(calibration)
    if not batches:
        raise ValueError("calibration is empty; expected at least one input batch")
    example = (_input_batch(batches[0]) if example_input is None else example_input)[:1]
    ops = _record_quant_ops(model, example)
    set_quant_mode(model, None)
    with tempfile.TemporaryDirectory(prefix="moonlit-lsq-qdq-") as workdir:
        fp32_path = _export_fp32(model, example, Path(workdir) / "fp32.onnx", opset)
        graph_model = onnx.load(str(fp32_path))
    _inline_initializer_identities(graph_model)
    graph = graph_model.graph
    quantizable = [node for node in graph.node if node.op_type in ("Conv", "Gemm")]
    if len(quantizable) != len(ops):
        raise ValueError(f"the ONNX graph has {len(quantizable)} Conv/Gemm nodes but the model ran {len(ops)} "
                         "quantized convs/linears; every conv and linear must be an LSQ+ QuantConv2d/QuantLinear")
    editor = _GraphEditor(graph_model)
    grids = {id(node): (op.input_scale, op.input_zero_point) for node, op in zip(quantizable, ops)}
    consumers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    # Decide output grids on the untouched graph (consumers still read the original tensors).
    output_plan = {}
    for node in quantizable:
        if node.op_type == "Conv":
            output_plan[id(node)] = _learned_output_grid(node.output[0], consumers, grids)

    new_nodes: list[onnx.NodeProto] = []
    calibrated: list[onnx.NodeProto] = []
    negative = 0
    op_of = {id(node): (index, op) for index, (node, op) in enumerate(zip(quantizable, ops))}
    for node in graph.node:
        if id(node) in op_of:
            index, op = op_of[id(node)]
            before, flipped = _quantize_node_inputs(editor, index, node, op)
            negative += flipped
            new_nodes.extend(before)
        new_nodes.append(node)
        if id(node) in output_plan:
            grid = output_plan[id(node)]
            if grid is None:
                calibrated.append(node)
            else:
                new_nodes.extend(_requantize_output(editor, node, grid))
    # Calibrate the float conv outputs on the model as quantized so far, then insert their Q/DQ.
    calibrated_outputs = [node.output[0] for node in calibrated]
    _replace_graph(graph_model, new_nodes, editor)
    if calibrated_outputs and quantize_float_outputs:
        grids_found = _min_max_grids(graph_model, calibrated_outputs, (_input_batch(b).numpy() for b in batches))
        new_nodes = []
        for node in graph.node:
            new_nodes.append(node)
            if node.op_type == "Conv" and node.output[0] in grids_found:
                new_nodes.extend(_requantize_output(editor, node, grids_found[node.output[0]]))
        _replace_graph(graph_model, new_nodes, editor)
    onnx.checker.check_model(graph_model)
    path = save_onnx(graph_model, path)
    result = QdqExport(path, len(ops), sum(g is not None for g in output_plan.values()),
                       len(calibrated) if quantize_float_outputs else 0, negative)
    logger.info("LSQ+ QDQ export %s: %s", path, result)
    return result


def _inline_initializer_identities(model: onnx.ModelProto) -> None:
    """Point readers of ``Identity(initializer)`` at the initializer itself and drop those Identity nodes.

    (The TorchScript exporter de-duplicates equal initializers that way — untrained BNs fold to
    equal biases — and a weight reached through an Identity is not a constant to quantize.)
    """
    graph = model.graph
    initializers = {tensor.name for tensor in graph.initializer}
    outputs = {output.name for output in graph.output}
    alias = {node.output[0]: node.input[0] for node in graph.node
             if node.op_type == "Identity" and node.input[0] in initializers and node.output[0] not in outputs}
    kept = [node for node in graph.node if not (node.op_type == "Identity" and node.output[0] in alias)]
    for node in kept:
        for position, name in enumerate(node.input):
            if name in alias:
                node.input[position] = alias[name]
    graph.ClearField("node")
    graph.node.extend(kept)


def _replace_graph(model: onnx.ModelProto, nodes: list[onnx.NodeProto], editor: _GraphEditor) -> None:
    """Install ``nodes`` and the editor's new initializers; drop initializers nothing reads any more."""
    nodes = [copy.deepcopy(node) for node in nodes]  # detached before the field is cleared
    graph = model.graph
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.initializer.extend(editor.new_initializers)
    editor.new_initializers.clear()
    used = {name for node in graph.node for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    graph.ClearField("initializer")
    graph.initializer.extend(kept)
    editor.initializers = {tensor.name: tensor for tensor in kept}


def _requantize_output(editor: _GraphEditor, node: onnx.NodeProto, grid: tuple[float, int]) -> list[onnx.NodeProto]:
    """Rename ``node``'s output and route it through a Q/DQ pair back to the original name."""
    original = node.output[0]
    node.output[0] = f"{original}_float"
    return editor.qdq(f"{original}_float", original, grid[0], grid[1])


def optimized_op_counts(path: str | Path, level: str = "extended") -> collections.Counter[str]:
    """Op types of the graph onnxruntime actually runs after its optimizations (QDQ fusions at "extended")."""
    levels = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
    if level not in levels:
        raise ValueError(f"level must be one of {list(levels)}, got {level!r}")
    with tempfile.TemporaryDirectory(prefix="moonlit-ort-opt-") as workdir:
        optimized = Path(workdir) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, levels[level])
        options.optimized_model_filepath = str(optimized)
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return collections.Counter(node.op_type for node in onnx.load(str(optimized)).graph.node)


def quantize_with_calibration(model: nn.Module, path: str | Path, calibration: Iterable[Any], *,
                              max_batches: int | None = None, opset: int = 17, per_channel: bool = True) -> Path:
    """Plain static INT8 (:func:`moonlit.common.export.int8.export_static_int8`) of a copy of ``model`` with
    its LSQ+ quantizers switched off (their grids are ignored on this route).

    ``calibration`` yields image tensors or (images, labels) pairs — real batches for a deployed
    model; the benchmark uses random-normal ones because it times, and does not score, its models.
    """
    model = copy.deepcopy(model).eval()
    set_quant_mode(model, None)
    path = export_static_int8(model, path, calibration, opset=opset, per_channel=per_channel, max_batches=max_batches)
    logger.info("static INT8 %s: %s", path, quantization_summary(path))
    return path
