"""Elastic ops, blocks and stages (moonlit.spaceevo.ops): weight sharing, channel arithmetic, residuals."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from moonlit.common.nn.elastic import ElasticBatchNorm2d
from moonlit.spaceevo.ops import (
    HYPERSPACE_BLOCKS,
    STAGE0_BLOCKS,
    BlockChoice,
    DynamicDepthwiseConv2d,
    DynamicLinear,
    DynamicStage,
    block_spec,
    build_block,
    make_divisible,
    set_quant_mode,
)

ALL_SPECS = [(hs, i) for hs, specs in HYPERSPACE_BLOCKS.items() for i in range(len(specs))]
ALL_SPECS += [(hs, "stage0") for hs in STAGE0_BLOCKS]
SPEC_IDS = [f"{hs}-{block}-{block_spec(hs, block).name}" for hs, block in ALL_SPECS]
IN_CHANNELS, WIDTHS = 24, (16, 24, 32)


def _randomize_norms(module: nn.Module, seed: int) -> None:
    """Non-trivial BN statistics and affine parameters, so that wrong channel slices show up."""
    generator = torch.Generator().manual_seed(seed)
    for norm in module.modules():
        if isinstance(norm, nn.BatchNorm2d):
            size = norm.num_features
            with torch.no_grad():
                norm.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                norm.bias.copy_(torch.randn(size, generator=generator) * 0.1)
                norm.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
                norm.running_var.copy_(torch.rand(size, generator=generator) + 0.5)


def _build(hyperspace: str, block, stride: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    module = build_block(hyperspace, block, IN_CHANNELS, WIDTHS, stride)
    _randomize_norms(module, seed)
    return module.eval()


def _random_cases(module, rng: random.Random, count: int):
    """Random (choice, input channels); the first case forces an identity shortcut where possible."""
    cases = []
    for index in range(count):
        widths = [w for w in module.width_list if w <= module.in_channels] if index == 0 else module.width_list
        choice = BlockChoice(*(rng.choice(options) if options else None
                               for options in (widths, module.kernel_list, module.expand_list)))
        in_channels = choice.width if index == 0 else rng.choice((8, 16, 24))
        cases.append((choice, in_channels))
    return cases


# --- supernet block == extracted static block -------------------------------------------------

@pytest.mark.parametrize("hyperspace, block", ALL_SPECS, ids=SPEC_IDS)
@pytest.mark.parametrize("stride", [1, 2])
def test_extracted_block_equals_supernet_block_fp32(hyperspace: str, block, stride: int) -> None:
    module = _build(hyperspace, block, stride)
    rng = random.Random(f"{hyperspace}{block}{stride}")
    for choice, in_channels in _random_cases(module, rng, 4):
        module.set_choice(choice)
        x = torch.randn(2, in_channels, 8, 8)
        static = module.get_active_subnet(in_channels).eval()
        expected = module(x)
        assert expected.shape == (2, choice.width, 8 // stride, 8 // stride)
        assert torch.allclose(static(x), expected, atol=1e-5), choice


@pytest.mark.parametrize("hyperspace, block", ALL_SPECS, ids=SPEC_IDS)
def test_extracted_block_equals_supernet_block_quantized(hyperspace: str, block) -> None:
    module = _build(hyperspace, block, stride=2, seed=1)
    assert set_quant_mode(module, 8) > 0
    rng = random.Random(f"q{hyperspace}{block}")
    (choice, in_channels), = _random_cases(module, rng, 2)[1:]
    module.set_choice(choice)
    module(torch.randn(4, in_channels, 8, 8))  # calibration: min-max init of the active quantizers
    static = module.get_active_subnet(in_channels).eval()

    static_state, super_state = static.state_dict(), module.state_dict()
    quant_keys = [key for key in static_state if "_quant." in key]
    assert quant_keys and all(key in super_state for key in quant_keys)
    for key in quant_keys:
        assert torch.equal(static_state[key], super_state[key]), key
    assert all(static_state[key].item() for key in quant_keys if key.endswith("initialized"))
    assert all(m.bits == 8 for m in static.modules() if hasattr(m, "initialized"))

    x = torch.randn(2, in_channels, 8, 8) * 1.5  # fresh data, partly outside the calibrated range
    quantized = module(x)
    assert torch.allclose(static(x), quantized, atol=1e-5)
    set_quant_mode(module, None)
    assert not torch.allclose(module(x), quantized, atol=1e-4)  # quant mode did change the output


# --- channel arithmetic and structure against hand-computed values ---------------------------

def test_make_divisible_hand_values() -> None:
    # round to nearest multiple of 8, at least 8, bumped up when more than 10% is lost.
    for value, expected in [(4, 8), (10, 16), (12, 16), (20, 24), (27.5, 32), (36, 40), (48, 48), (92, 96),
                            (100, 104), (132, 136)]:
        assert make_divisible(value) == expected, value


@pytest.mark.parametrize("hyperspace, block, in_channels, choice, expected_shapes", [
    # ResNet: hidden = md(1.5 * 32) = 48, a fraction of the output width (of the input: md(24) = 24).
    ("onnxw", "ResNet", 16, BlockChoice(32, 3, 1.5),
     {"conv1.conv.weight": (48, 16, 1, 1), "conv2.conv.weight": (48, 48, 3, 3), "conv3.conv.weight": (32, 48, 1, 1),
      "downsample.conv.weight": (32, 16, 1, 1)}),
    # ResNetSE: SE middle = md(in // 4) = md(6) = 8, on the hidden md(0.5 * 32) = 16 channels.
    ("onnxw", "ResNetSE", 24, BlockChoice(32, 5, 0.5),
     {"conv2.conv.weight": (16, 16, 5, 5), "se.fc.reduce.weight": (8, 16, 1, 1), "se.fc.expand.weight": (16, 8, 1, 1)}),
    # MobileNetV3Res: hidden = md(16 * 3) = 48, SE middle = md(48 // 4) = 16.
    ("mobilew", "MobileNetV3Res", 16, BlockChoice(24, 7, 3),
     {"point_conv1.conv.weight": (48, 16, 1, 1), "depth_conv.dwconv.weight": (48, 1, 7, 7),
      "se.fc.reduce.weight": (16, 48, 1, 1), "point_conv2.conv.weight": (24, 48, 1, 1)}),
    # FusedMBConvSERes: hidden = md(16 * 3) = 48, SE middle = md(16 // 4) = 8.
    ("mobilew", "FusedMBConvSERes", 16, BlockChoice(16, 5, 3),
     {"fused_conv.conv.weight": (48, 16, 5, 5), "se.fc.reduce.weight": (8, 48, 1, 1),
      "point_conv.conv.weight": (16, 48, 1, 1)}),
    # Stacked 3x3: kernel 7 is three 3x3 depthwise convs on md(8 * 6) = 48 channels.
    ("mobilew", "MobileNetV2K3Res", 8, BlockChoice(16, 7, 6),
     {"depth_conv.dwconv.0.weight": (48, 1, 3, 3), "depth_conv.dwconv.2.weight": (48, 1, 3, 3)}),
    # MobileNetV1Dual: dw k on the input, 1x1 to the width, dw k and 1x1 on the width.
    ("onnxw", "MobileNetV1Dual", 16, BlockChoice(24, 5, None),
     {"depth_conv1.dwconv.weight": (16, 1, 5, 5), "point_conv1.conv.weight": (24, 16, 1, 1),
      "depth_conv2.dwconv.weight": (24, 1, 5, 5), "point_conv2.conv.weight": (24, 24, 1, 1)}),
])
def test_extracted_shapes_follow_the_reference_arithmetic(hyperspace, block, in_channels, choice,
                                                          expected_shapes) -> None:
    module = build_block(hyperspace, block, IN_CHANNELS, WIDTHS, stride=2)
    module.set_choice(choice)
    shapes = {key: tuple(value.shape) for key, value in module.get_active_subnet(in_channels).state_dict().items()}
    for key, shape in expected_shapes.items():
        assert shapes.get(key) == shape, key


def test_expand_one_skips_the_pointwise_expansion() -> None:
    # mobilew stage 0: MobileNetV2 e1 — md(16 * 1) = 16 = in, so no 1x1 expansion; identity residual.
    module = build_block("mobilew", "stage0", 16, [16], stride=1)
    static = module.get_active_subnet(16)
    assert not hasattr(static, "point_conv1") and static.body_names == ["depth_conv", "point_conv2"]
    assert static.residual and static.downsample is None


def test_stacked_depthwise_shares_one_stack_across_kernels() -> None:
    torch.manual_seed(0)
    module = build_block("mobilew", "MobileNetV2K3Res", 16, [16], stride=2).eval()
    convs = module.depth_conv.op
    hidden = make_divisible(16 * 8)
    x = torch.randn(1, hidden, 8, 8)
    for kernel, count in [(3, 1), (5, 2), (7, 3)]:
        module.set_active(kernel_size=kernel)
        static = module.depth_conv.get_active_subnet(hidden).dwconv
        assert len(static) == count and [c.stride for c in static] == [(2, 2)] + [(1, 1)] * (count - 1)
        expected = x
        for index in range(count):  # hand composition of the shared 3x3 weights
            expected = F.conv2d(expected, convs.get_submodule(str(index)).weight, stride=2 if index == 0 else 1,
                                padding=1, groups=hidden)
        assert torch.allclose(convs(x), expected, atol=1e-5)
        for index in range(count):
            assert torch.equal(static[index].weight, convs.get_submodule(str(index)).weight)


def test_smaller_kernels_are_centre_slices_and_train_only_the_centre() -> None:
    torch.manual_seed(0)
    conv = DynamicDepthwiseConv2d(8, [3, 5, 7])
    conv.set_active(kernel_size=3)
    static = conv.get_active_subnet(6)
    assert torch.equal(static.weight, conv.weight[:6, :, 2:5, 2:5])
    conv(torch.randn(2, 6, 9, 9)).sum().backward()
    touched = conv.weight.grad.abs() > 0
    assert touched[:6, :, 2:5, 2:5].all()
    assert touched.sum() == 6 * 9  # nothing outside the centre 3x3 of the first 6 channels


_LAST_NORM = {"MobileNetV1Dual": "point_conv2", "ResNet": "conv3", "ResNetSE": "conv3", "FusedMBConvRes": "point_conv",
              "FusedMBConvSERes": "point_conv"}


@pytest.mark.parametrize("hyperspace, block", ALL_SPECS, ids=SPEC_IDS)
@pytest.mark.parametrize("stride, in_channels, width", [(1, 24, 24), (1, 16, 32), (2, 24, 24)])
def test_residual_is_identity_or_strided_projection(hyperspace, block, stride, in_channels, width) -> None:
    module = _build(hyperspace, block, stride, seed=2)
    spec = block_spec(hyperspace, block)
    module.set_active(out_channels=width)
    last = module.get_submodule(_LAST_NORM.get(spec.name, "point_conv2")).norm
    with torch.no_grad():  # the body now outputs exactly 0, leaving the shortcut alone
        last.weight.zero_()
        last.bias.zero_()
    x = torch.randn(2, in_channels, 8, 8)
    if stride == 1 and in_channels == width:
        shortcut = x
    elif spec.name == "MobileNetV2":  # the only block without a forced residual
        shortcut = torch.zeros(2, width, 8 // stride, 8 // stride)
    else:
        projection, norm = module.downsample.op.weight, module.downsample.norm
        shortcut = F.batch_norm(F.conv2d(x, projection[:width, :in_channels], stride=stride),
                                norm.running_mean[:width], norm.running_var[:width], norm.weight[:width],
                                norm.bias[:width], False, 0.0, norm.eps)
    if spec.name in ("ResNet", "ResNetSE"):
        shortcut = F.relu(shortcut)
    assert torch.allclose(module(x), shortcut, atol=1e-5)
    assert torch.allclose(module.get_active_subnet(in_channels).eval()(x), shortcut, atol=1e-5)


_EXPECTED_ACTIVATION = {("mobilew", 1): nn.ReLU6, ("mobilew", 2): nn.SiLU, ("mobilew", 4): nn.SiLU,
                        ("mobilew", 5): nn.SiLU, ("mobilew", 6): nn.ReLU6, ("onnxw", 1): nn.ReLU6,
                        ("onnxw", 2): nn.Hardswish, ("onnxw", 5): nn.SiLU, ("mobilew", 0): nn.ReLU,
                        ("mobilew", 3): nn.ReLU, ("onnxw", 0): nn.ReLU, ("onnxw", 3): nn.ReLU, ("onnxw", 4): nn.ReLU}


def test_registry_matches_the_hyperspace_table() -> None:
    names = {hs: [spec.name for spec in specs] for hs, specs in HYPERSPACE_BLOCKS.items()}
    assert names == {
        "mobilew": ["MobileNetV1Dual", "MobileNetV2Res", "MobileNetV3Res", "ResNet", "FusedMBConvSERes",
                    "MobileNetV3K3Res", "MobileNetV2K3Res"],
        "onnxw": ["MobileNetV1Dual", "MobileNetV2Res", "MobileNetV3Res", "ResNet", "ResNetSE", "FusedMBConvRes"],
    }
    assert block_spec("mobilew", 3).kernel_list == (3, 5) and block_spec("onnxw", 3).kernel_list == (3, 5, 7)
    assert block_spec("onnxw", 1).expand_list == (4, 6, 8) and block_spec("mobilew", 1).expand_list == (3, 6, 8)
    assert block_spec("onnxw", "ResNetSE") is block_spec("onnxw", 4)
    for (hyperspace, index), activation in _EXPECTED_ACTIVATION.items():
        static = build_block(hyperspace, index, 16, [16], 1).get_active_subnet()
        kinds = {type(m) for m in static.modules()}
        assert activation in kinds, (hyperspace, index)
        assert not (kinds & {nn.ReLU6, nn.SiLU, nn.Hardswish}) - {activation}, (hyperspace, index)
    with pytest.raises(ValueError, match="7"):
        block_spec("onnxw", 7)
    with pytest.raises(ValueError, match="ResNetSE"):
        block_spec("mobilew", "ResNetSE")


def test_bad_choices_and_inputs_name_the_value() -> None:
    module = build_block("onnxw", 3, IN_CHANNELS, WIDTHS, 1)
    with pytest.raises(ValueError, match="width 50"):
        module.set_active(out_channels=50)
    with pytest.raises(ValueError, match="kernel 9"):
        module.set_active(kernel_size=9)
    with pytest.raises(ValueError, match="expand ratio 2"):
        module.set_active(expand_ratio=2)
    with pytest.raises(ValueError, match="40 channels"):
        module(torch.randn(1, 40, 4, 4))


def test_dynamic_batchnorm_trains_only_the_active_channels() -> None:
    torch.manual_seed(0)
    dynamic, reference = ElasticBatchNorm2d(10), nn.BatchNorm2d(6)
    _randomize_norms(dynamic, 0)
    before = dynamic.running_mean.clone()
    reference.load_state_dict({k: v[:6] if v.dim() == 1 else v for k, v in dynamic.state_dict().items()})
    x = torch.randn(4, 6, 5, 5)
    assert torch.allclose(dynamic(x), reference(x), atol=1e-6)
    assert torch.allclose(dynamic.running_mean[:6], reference.running_mean)
    assert torch.allclose(dynamic.running_var[:6], reference.running_var)
    assert torch.equal(dynamic.running_mean[6:], before[6:])


@pytest.mark.parametrize("quantized", [False, True])
def test_dynamic_linear_subnet(quantized: bool) -> None:
    torch.manual_seed(0)
    linear = DynamicLinear(32, 10)
    linear.set_active(out_channels=7)
    if quantized:
        set_quant_mode(linear, 8)
    x = torch.randn(3, 20)
    output = linear(x)
    static = linear.get_active_subnet(20)
    assert static.weight.shape == (7, 20) and torch.equal(static.weight, linear.weight[:7, :20])
    assert torch.allclose(static(x), output, atol=1e-6)
    if not quantized:  # independent check against the plain formula
        assert torch.allclose(output, x @ linear.weight[:7, :20].T + linear.bias[:7], atol=1e-6)


def test_quantization_aware_training_step_reaches_every_active_quantizer() -> None:
    module = _build("onnxw", "ResNetSE", stride=2, seed=4).train()
    set_quant_mode(module, 8)
    module.set_active(out_channels=16, kernel_size=5, expand_ratio=1.0)
    with torch.no_grad():
        module(torch.randn(4, IN_CHANNELS, 8, 8))  # calibration
    module(torch.randn(4, IN_CHANNELS, 8, 8) * 2).square().mean().backward()  # partly clipped batch
    scales = {name: p.grad for name, p in module.named_parameters() if name.endswith(("scale", "offset"))}
    # 6 quantized convs (conv1-3, SE reduce / expand, downsample) x (input scale, input offset, weight scale)
    assert len(scales) == 6 * 3
    assert all(grad is not None and torch.isfinite(grad).all() and grad.abs().item() > 0
               for grad in scales.values())


def test_extracted_block_exports_to_onnx(tmp_path) -> None:
    from moonlit.common.export.onnx import export_onnx

    module = _build("mobilew", "MobileNetV3K3Res", stride=2, seed=5)
    module.set_active(out_channels=24, kernel_size=5, expand_ratio=6)
    path = export_onnx(module.get_active_subnet(16).eval(), (torch.randn(1, 16, 16, 16),), tmp_path / "block.onnx")
    assert path.exists()  # export_onnx checks onnxruntime's output against torch


# --- stages -----------------------------------------------------------------------------------

@pytest.mark.parametrize("quantized", [False, True])
def test_stage_subnet_equals_supernet_stage(quantized: bool) -> None:
    torch.manual_seed(0)
    stage = DynamicStage(block_spec("onnxw", "ResNetSE"), 16, [16, 32], [2, 3, 4], stride=2)
    _randomize_norms(stage, 3)
    stage.eval()
    assert len(stage.blocks) == 4 and [b.stride for b in stage.blocks] == [2, 1, 1, 1]
    assert [b.in_channels for b in stage.blocks] == [16, 32, 32, 32]
    if quantized:
        set_quant_mode(stage, 8)
    rng = random.Random(5)
    for _ in range(3):
        choice = stage.sample_active(rng)
        x = torch.randn(2, rng.choice((8, 16)), 8, 8)
        output = stage(x)  # also calibrates, in quant mode
        static = stage.get_active_subnet(x.shape[1]).eval()
        assert len(static) == choice.depth
        assert torch.allclose(static(x), output, atol=1e-5)
    stage.set_active(blocks=[BlockChoice(16, 3, 0.5), BlockChoice(32, 7, 1.5)])
    assert stage.active_choice.depth == 2 and stage.blocks[1].active_kernel_size == 7
    with pytest.raises(ValueError, match="depth 5"):
        stage.set_active(depth=5)
    stage.set_min()
    assert stage.active_choice == (2, (BlockChoice(16, 3, 0.5),) * 2)
    stage.set_max()
    assert stage.active_choice == (4, (BlockChoice(32, 7, 1.5),) * 4)
    assert len(stage.blocks[0].choices()) == 2 * 3 * 3  # widths x kernels x expand ratios
