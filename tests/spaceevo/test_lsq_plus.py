"""LSQ+ quantizers (moonlit.spaceevo.ops.lsq_plus) against hand formulas, finite differences and ORT."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from moonlit.common.export.onnx import lower_ir_version
from moonlit.spaceevo.ops.lsq_plus import (
    ActivationQuantizer,
    QuantConv2d,
    QuantLinear,
    WeightQuantizer,
    export_quant_params,
    set_quant_mode,
)


def _calibrated_activation_quantizer(scale: float, offset: float, dtype=torch.float32) -> ActivationQuantizer:
    quantizer = ActivationQuantizer(bits=8).to(dtype)
    with torch.no_grad():
        quantizer.scale.fill_(scale)
        quantizer.offset.fill_(offset)
    quantizer.initialized.fill_(True)
    return quantizer


def _calibrated_weight_quantizer(scale: float, dtype=torch.float32) -> WeightQuantizer:
    quantizer = WeightQuantizer(bits=8).to(dtype)
    with torch.no_grad():
        quantizer.scale.fill_(scale)
    quantizer.initialized.fill_(True)
    return quantizer


# --- initialisation --------------------------------------------------------------------------

def test_activation_min_max_init_on_first_quantized_forward() -> None:
    x = torch.randn(4, 3, 6, 6) * 2.0 + 0.7
    quantizer = ActivationQuantizer()
    quantizer(x)  # FP32 mode: no initialisation
    assert not bool(quantizer.initialized) and quantizer.scale.item() == 1.0
    quantizer.bits = 8
    quantizer(x)
    assert bool(quantizer.initialized)
    expected_scale = (x.max() - x.min()).item() / 255
    assert quantizer.scale.item() == pytest.approx(expected_scale, rel=1e-6)
    assert quantizer.offset.item() == pytest.approx(x.min().item(), rel=1e-6)
    # A second batch does not re-initialise.
    quantizer(x * 10)
    assert quantizer.scale.item() == pytest.approx(expected_scale, rel=1e-6)


def test_weight_init_is_max_abs_over_127_and_no_weight_clips() -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 32, 3, 3, generator=generator)
    quantizer = WeightQuantizer(bits=8)
    quantized = quantizer(weight)
    scale = quantizer.scale.item()
    assert scale == pytest.approx(weight.abs().max().item() / 127, rel=1e-6)
    # No clipping: every weight is within half a step of its quantized value.
    assert (quantized - weight).abs().max().item() <= scale / 2 * (1 + 1e-5)
    # The reference's scale, max|w| / 255, would clip this tensor (so the check above can fail).
    buggy_scale = weight.abs().max().item() / 255
    assert (weight.abs() / buggy_scale > 127.5).float().mean().item() > 0.01


# --- forward: grid, clamping, idempotence, hand formula -------------------------------------

def test_activation_outputs_lie_on_the_uint8_grid_and_clamp() -> None:
    scale, offset = 0.05, -1.3
    quantizer = _calibrated_activation_quantizer(scale, offset)
    x = torch.linspace(-5.0, 15.0, 2001).reshape(1, -1)
    levels = ((quantizer(x) - offset) / scale).detach()
    assert torch.allclose(levels, levels.round(), atol=1e-3)
    assert levels.min().item() == pytest.approx(0.0, abs=1e-3)
    assert levels.max().item() == pytest.approx(255.0, abs=1e-3)
    # Values below beta map to beta, values above beta + 255 s map to the top level.
    far = quantizer(torch.tensor([[-100.0, 1000.0]])).detach()
    assert far[0, 0].item() == pytest.approx(offset, abs=1e-6)
    assert far[0, 1].item() == pytest.approx(offset + 255 * scale, abs=1e-5)


def test_weight_outputs_lie_on_the_int8_grid_and_clamp() -> None:
    scale = 0.01
    quantizer = _calibrated_weight_quantizer(scale)
    weight = torch.linspace(-3.0, 3.0, 3001)
    levels = (quantizer(weight) / scale).detach()
    assert torch.allclose(levels, levels.round(), atol=1e-3)
    assert levels.min().item() == pytest.approx(-128.0, abs=1e-3)
    assert levels.max().item() == pytest.approx(127.0, abs=1e-3)


def test_quantization_is_idempotent() -> None:
    x = torch.randn(8, 50) * 3
    act = _calibrated_activation_quantizer(0.03, -2.0)
    once = act(x).detach()
    assert torch.allclose(act(once), once, atol=1e-6)
    weight = torch.randn(40, 20)
    wq = _calibrated_weight_quantizer(0.02)
    once = wq(weight).detach()
    assert torch.allclose(wq(once), once, atol=1e-6)


def test_quant_conv_matches_numpy_hand_quantization() -> None:
    torch.manual_seed(0)
    conv = QuantConv2d(3, 5, 3, padding=1, bias=True)
    set_quant_mode(conv, 8)
    x = torch.randn(2, 3, 7, 7)
    y = conv(x).detach()  # first forward calibrates
    s_a, beta, s_w = conv.act_quant.scale.item(), conv.act_quant.offset.item(), conv.weight_quant.scale.item()
    x_np, w_np = x.numpy(), conv.weight.detach().numpy()
    # np.round rounds half to even, like torch.round and ORT's QuantizeLinear.
    x_hat = np.round(np.clip((x_np - np.float32(beta)) / np.float32(s_a), 0, 255)) * np.float32(s_a) + np.float32(beta)
    w_hat = np.round(np.clip(w_np / np.float32(s_w), -128, 127)) * np.float32(s_w)
    expected = F.conv2d(torch.from_numpy(x_hat.astype(np.float32)), torch.from_numpy(w_hat.astype(np.float32)),
                        conv.bias.detach(), padding=1)
    assert torch.allclose(y, expected, atol=1e-5)


# --- gradients -------------------------------------------------------------------------------

def _central_difference(function, value: float, step: float = 1e-6) -> float:
    return (function(value + step) - function(value - step)) / (2 * step)


def test_activation_gradients_match_hand_derivation_and_finite_differences() -> None:
    generator = torch.Generator().manual_seed(1)
    scale, offset = 0.1, -0.3
    quantizer = _calibrated_activation_quantizer(scale, offset, torch.float64)
    # Covers all three regions: below beta, inside [beta, beta + 255 s], above.
    x = (torch.rand(4, 3, 5, 5, generator=generator, dtype=torch.float64) * 30.0 - 2.0).requires_grad_()
    upstream = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    (quantizer(x) * upstream).sum().backward()

    # Hand derivation for x_hat = s * round(clamp((x - b) / s, 0, Qp)) + b, straight-through round:
    #   inside: d/ds = round(v) - v, d/db = 0, d/dx = 1;  below: 0, 1, 0;  above: Qp, 1, 0;
    # then d/ds and d/db are multiplied by g = 1 / sqrt(N * Qp), N = features per sample.
    v = ((x.detach() - offset) / scale)
    inside, below, above = (v > 0) & (v < 255), v <= 0, v >= 255
    assert inside.any() and below.any() and above.any()
    grad_factor = 1 / math.sqrt(3 * 5 * 5 * 255)
    expected_ds = (upstream * torch.where(inside, v.round() - v, torch.where(above, 255.0, 0.0))).sum()
    expected_db = (upstream * (below | above).double()).sum()
    assert quantizer.scale.grad.item() == pytest.approx(grad_factor * expected_ds.item(), rel=1e-9)
    assert quantizer.offset.grad.item() == pytest.approx(grad_factor * expected_db.item(), rel=1e-9)
    assert torch.allclose(x.grad, upstream * inside.double())

    # Finite differences of the straight-through surrogate: round(v) replaced by v + c with the
    # rounding residual c frozen at the evaluation point.
    residual = (v.clamp(0, 255).round() - v.clamp(0, 255))

    def surrogate(s: float, b: float) -> float:
        levels = ((x.detach() - b) / s).clamp(0, 255) + residual
        return float((upstream * (levels * s + b)).sum())

    fd_scale = _central_difference(lambda s: surrogate(s, offset), scale)
    fd_offset = _central_difference(lambda b: surrogate(scale, b), offset)
    assert quantizer.scale.grad.item() / grad_factor == pytest.approx(fd_scale, rel=1e-6)
    assert quantizer.offset.grad.item() / grad_factor == pytest.approx(fd_offset, rel=1e-6)


def test_weight_gradients_match_hand_derivation_and_finite_differences() -> None:
    generator = torch.Generator().manual_seed(2)
    scale = 0.01
    quantizer = _calibrated_weight_quantizer(scale, torch.float64)
    weight = (torch.randn(6, 4, 3, 3, generator=generator, dtype=torch.float64) * 0.8).requires_grad_()
    upstream = torch.randn(weight.shape, generator=generator, dtype=torch.float64)
    (quantizer(weight) * upstream).sum().backward()

    # w_hat = s * round(clamp(w / s, -128, 127)): inside d/ds = round(v) - v, below -128, above 127.
    v = weight.detach() / scale
    inside, below, above = (v > -128) & (v < 127), v <= -128, v >= 127
    assert inside.any() and below.any() and above.any()
    grad_factor = 1 / math.sqrt(weight.numel() * 127)
    expected_ds = (upstream * torch.where(inside, v.round() - v, torch.where(above, 127.0, -128.0))).sum()
    assert quantizer.scale.grad.item() == pytest.approx(grad_factor * expected_ds.item(), rel=1e-9)
    assert torch.allclose(weight.grad, upstream * inside.double())

    residual = v.clamp(-128, 127).round() - v.clamp(-128, 127)

    def surrogate(s: float) -> float:
        return float((upstream * (((weight.detach() / s).clamp(-128, 127) + residual) * s)).sum())

    assert quantizer.scale.grad.item() / grad_factor == pytest.approx(_central_difference(surrogate, scale), rel=1e-6)


# --- modes, state, export --------------------------------------------------------------------

def test_set_quant_mode_switches_every_quantizer_and_fp32_is_exact() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(QuantConv2d(3, 4, 3, padding=1), torch.nn.Flatten(), QuantLinear(4 * 36, 5))
    x = torch.randn(2, 3, 6, 6)
    plain = F.linear(F.conv2d(x, model[0].weight, model[0].bias, padding=1).flatten(1), model[2].weight, model[2].bias)
    assert torch.equal(model(x), plain)
    assert set_quant_mode(model, 8) == 4
    assert all(m.bits == 8 for m in model.modules() if hasattr(m, "initialized"))
    assert not torch.allclose(model(x), plain, atol=1e-6)
    assert set_quant_mode(model, None) == 4
    assert torch.equal(model(x), plain)
    assert set_quant_mode(model, True) == 4 and model[0].act_quant.bits == 8
    assert set_quant_mode(model, False) == 4 and model[0].act_quant.bits is None
    for bad in (1, 40, 7.5):
        with pytest.raises(ValueError, match=str(bad)):
            set_quant_mode(model, bad)


def test_state_dict_round_trip_keeps_calibration() -> None:
    conv = QuantConv2d(3, 4, 1)
    set_quant_mode(conv, 8)
    conv(torch.randn(2, 3, 4, 4))
    assert {"act_quant.scale", "act_quant.offset", "act_quant.initialized", "weight_quant.scale",
            "weight_quant.initialized"} <= set(conv.state_dict())
    restored = QuantConv2d(3, 4, 1)
    restored.load_state_dict(conv.state_dict())
    set_quant_mode(restored, 8)
    restored(torch.randn(2, 3, 4, 4) * 100)  # would change the scales if it re-initialised
    assert restored.act_quant.scale.item() == conv.act_quant.scale.item()
    assert restored.weight_quant.scale.item() == conv.weight_quant.scale.item()


def _ort_quantize_dequantize(x: np.ndarray, scale: float, zero_point: int, dtype: int) -> np.ndarray:
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero_point"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "scale", "zero_point"], ["y"])]
    initializers = [helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
                    helper.make_tensor("zero_point", dtype, [], [zero_point])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))], initializers)
    model = lower_ir_version(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_exported_params_reproduce_the_fake_quantizer_in_onnxruntime() -> None:
    torch.manual_seed(3)
    conv = QuantConv2d(3, 4, 3)
    set_quant_mode(conv, 8)
    x = torch.randn(2, 3, 8, 8) * 2 + 0.5
    conv(x)
    params = export_quant_params(torch.nn.Sequential(conv))
    assert set(params) == {"0.act_quant", "0.weight_quant"}
    act, weight = params["0.act_quant"], params["0.weight_quant"]
    assert (act.dtype, weight.dtype, weight.zero_point) == ("uint8", "int8", 0)
    assert act.zero_point == round(-conv.act_quant.offset.item() / conv.act_quant.scale.item())
    assert act.offset_residual != 0.0  # min-max init puts beta off the integer grid

    conv.act_quant.snap_offset_to_grid_()
    assert conv.act_quant.export_params().offset_residual == pytest.approx(0.0, abs=1e-4 * act.scale)
    probe = (torch.randn(2, 3, 8, 8) * 3).numpy()
    ours = conv.act_quant(torch.from_numpy(probe)).detach().numpy()
    theirs = _ort_quantize_dequantize(probe, act.scale, act.zero_point, TensorProto.UINT8)
    assert np.allclose(ours, theirs, atol=1e-5)

    w = conv.weight.detach().numpy()
    ours_w = conv.weight_quant(conv.weight).detach().numpy()
    theirs_w = _ort_quantize_dequantize(w, weight.scale, 0, TensorProto.INT8)
    assert np.allclose(ours_w, theirs_w, atol=1e-7)
