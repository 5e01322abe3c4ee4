"""SpaceEvo supernet (moonlit.spaceevo.supernet): weight sharing, the published A0 subnets, active state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from moonlit.spaceevo.ops import HYPERSPACE_BLOCKS, STAGE0_BLOCKS, set_quant_mode
from moonlit.spaceevo.space import (
    SubnetEncoding,
    list_hyperspaces,
    load_hyperspace,
    sample_subnet,
)
from moonlit.spaceevo.supernet import (
    LAST_NORM_OF_RESIDUAL_BODY,
    StaticSubnet,
    Supernet,
    block_spec_of,
)

SEARCH_RESULT = Path(__file__).resolve().parents[3] / "shared" / "data" / "spaceevo" / "search_result.yaml"
# Published in the reference's data/search_result.yaml (spaceevo@vnni and spaceevo@pixel4-tiny with the
# A0 of spaceevo@vnni and spaceevo@pixel4): kept here so the test runs without the data folder.
PUBLISHED_A0 = {
    "onnxw-151122-023231": "d1#1#2#2#2#2#2#1_k3#3#3#3#3#3#3#3#3#3#3#3#3_w16#16#32#32#64#64#112#112#144#144#240#240"
                           "#320_e0#0.5#4.0#4.0#1.0#1.0#4.0#4.0#4.0#4.0#4.0#4.0#4.0_r160",
    "mobilew-122222-155400": "d1#1#2#2#2#2#2#1_k3#3#3#3#3#3#3#3#3#3#3#3#3_w16#16#32#32#64#64#96#96#144#144#192#192"
                             "#216_e0#1.0#3.0#3.0#3.0#3.0#3.0#3.0#3.0#3.0#3.0#3.0#3.0_r160",
}
# vnni: MobileNetV2Res, FusedMBConvRes, MobileNetV1Dual, ResNet...; pixel4-tiny: ResNet, MobileNetV3Res,
# FusedMBConvSERes, MobileNetV2K3Res (stacked 3x3 depthwise), MobileNetV1Dual.
SPACES = ["onnxw-151122-023231", "mobilew-332160-134200"]
SMALL_RESOLUTIONS = [32, 40]


def _randomize_norms(module: nn.Module, seed: int) -> None:
    """Non-trivial BN statistics and gammas (the supernet zeroes some), so wrong slices show up."""
    generator = torch.Generator().manual_seed(seed)
    for norm in module.modules():
        if isinstance(norm, nn.BatchNorm2d):
            size = norm.num_features
            with torch.no_grad():
                norm.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                norm.bias.copy_(torch.randn(size, generator=generator) * 0.1)
                norm.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
                norm.running_var.copy_(torch.rand(size, generator=generator) + 0.5)


@pytest.fixture(scope="module", params=SPACES)
def supernet(request: pytest.FixtureRequest) -> Supernet:
    torch.manual_seed(0)
    net = Supernet.from_encoding(request.param, num_classes=10, resolutions=SMALL_RESOLUTIONS)
    _randomize_norms(net, 0)
    return net.eval()


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "int8"])
def test_random_subnets_equal_their_static_copy(supernet: Supernet, quantized: bool) -> None:
    rng = np.random.default_rng(1)
    set_quant_mode(supernet, 8 if quantized else None)
    try:
        for trial in range(3):
            subnet = supernet.sample_active(rng)
            images = torch.randn(2, 3, subnet.resolution, subnet.resolution, generator=torch.Generator().manual_seed(trial))
            with torch.no_grad():
                expected = supernet(images)  # quantized: the first pass initialises the quantizers it uses
                static = supernet.get_active_subnet().eval()
                actual = static(images)
            assert isinstance(static, StaticSubnet) and static.encoding == subnet
            assert expected.shape == (2, 10)
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
            assert _count(static) < _count(supernet)
    finally:
        set_quant_mode(supernet, None)


def test_quantized_output_differs_from_fp32(supernet: Supernet) -> None:
    supernet.set_max()
    images = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        fp32 = supernet(images)
        set_quant_mode(supernet, 8)
        int8 = supernet(images)
        set_quant_mode(supernet, None)
    assert not torch.allclose(fp32, int8)  # the quantizers are active in the supernet's forward


def test_static_subnet_keeps_the_supernet_weights(supernet: Supernet) -> None:
    subnet = supernet.set_min()
    static = supernet.get_active_subnet()
    # first conv: the first w of the max-width weight; a block's conv: the leading slice
    width = subnet.widths[0]
    torch.testing.assert_close(static.first_conv.conv.weight, supernet.first_conv.conv.weight[:width])
    torch.testing.assert_close(static.classifier.weight, supernet.classifier.weight)
    assert static.resolution == min(SMALL_RESOLUTIONS)


def test_input_is_resized_to_the_active_resolution(supernet: Supernet) -> None:
    supernet.set_min()
    images = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    resized = torch.nn.functional.interpolate(images, size=(32, 32), mode="bicubic", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(supernet(images), supernet(resized))


@pytest.mark.parametrize("space", sorted(PUBLISHED_A0))
def test_min_subnet_is_the_published_a0(space: str) -> None:
    net = Supernet.from_encoding(space, num_classes=10)
    net.set_min()
    assert net.active_encoding() == SubnetEncoding.decode(PUBLISHED_A0[space])
    assert net.active_encoding().encode() == PUBLISHED_A0[space]


def test_published_a0_strings_match_the_data_file() -> None:
    if not SEARCH_RESULT.is_file():
        pytest.skip(f"{SEARCH_RESULT} not found (shared data folder absent)")
    data = yaml.safe_load(SEARCH_RESULT.read_text())
    spaces, subnets = data["specific_supernet_encoding_dict"], data["specific_subnet_encoding_dict"]
    published = {spaces[supernet_name]: encoding for name, (supernet_name, encoding) in subnets.items()
                 if name.endswith("-A0")}
    assert published == PUBLISHED_A0


def test_set_active_reads_back_and_sampling_is_seeded(supernet: Supernet) -> None:
    first = supernet.sample_active(np.random.default_rng(7))
    assert supernet.active_encoding() == first
    supernet.set_max()
    assert supernet.sample_active(np.random.default_rng(7)) == first
    supernet.set_active(first.encode())
    assert supernet.active_encoding() == first
    assert supernet.set_max().depths == tuple(max(o.depths) for o in supernet.options)


def test_sample_active_is_the_space_sampler_over_our_resolutions(supernet: Supernet) -> None:
    for seed in range(20):
        ours, reference = np.random.default_rng(seed), np.random.default_rng(seed)
        subnet = supernet.sample_active(ours)
        assert subnet == sample_subnet(supernet.space, reference, SMALL_RESOLUTIONS)
        assert subnet.resolution in SMALL_RESOLUTIONS
        # nothing else is drawn: both generators continue with the same stream
        assert ours.integers(2 ** 32) == reference.integers(2 ** 32)


def test_bad_subnets_are_rejected_with_the_reason(supernet: Supernet) -> None:
    subnet = supernet.set_max()
    with pytest.raises(ValueError, match="resolution 224 is not one of this supernet's"):
        supernet.set_active(SubnetEncoding(subnet.depths, subnet.kernels, subnet.widths, subnet.expands, 224))
    widths = list(subnet.widths)
    widths[-1] = 8
    with pytest.raises(ValueError, match="width 8 of block 1 of stage6"):
        supernet.set_active(SubnetEncoding(subnet.depths, subnet.kernels, tuple(widths), subnet.expands, 32))
    assert supernet.active_encoding() == subnet  # a rejected subnet changes nothing


def test_residual_blocks_start_as_their_shortcut() -> None:
    net = Supernet.from_encoding("onnxw-151122-023231", num_classes=10)
    # stage1: MobileNetV2Res (closing BN: point_conv2.norm); stage2: FusedMBConvRes (point_conv.norm)
    assert all(float(b.point_conv2.norm.weight.detach().abs().sum()) == 0 for b in net.stages.stage1.blocks)
    assert all(float(b.point_conv.norm.weight.detach().abs().sum()) == 0 for b in net.stages.stage2.blocks)
    assert float(net.stages.stage1.blocks[0].point_conv1.norm.weight.detach().min()) == 1.0


def test_head_sizes_follow_the_hyperspace() -> None:
    net = Supernet.from_encoding("mobilew-332160-134200")
    assert net.final_expand.op.weight.shape[:2] == (1280, max(net.options[-1].widths))
    assert net.feature_mix.op.weight.shape[:2] == (1920, 1280)
    assert tuple(net.classifier.weight.shape) == (1000, 1920)
    assert isinstance(net.final_expand.act, nn.SiLU)  # mobilew head: swish; onnxw: hswish
    assert isinstance(Supernet.from_encoding("onnxw-000000-000000").final_expand.act, nn.Hardswish)
    with pytest.raises(ValueError, match="is not a space encoding"):
        Supernet.from_encoding("onnxw-15112-02323x")


@pytest.mark.parametrize("hyperspace", ["onnxw", "mobilew"])
def test_block_types_from_the_hyperspace_file_match_the_block_registry(hyperspace: str) -> None:
    spec = load_hyperspace(hyperspace)
    assert [block_spec_of(b) for b in spec.block_types] == list(HYPERSPACE_BLOCKS[hyperspace])
    assert block_spec_of(spec.fixed_blocks["stage0"]) == STAGE0_BLOCKS[hyperspace]


def test_every_hyperspace_file_builds_a_supernet() -> None:
    for name in list_hyperspaces():
        spec = load_hyperspace(name)
        # the last block type and the last window of every stage: the widest choices
        encoding = f"{name}-{str(len(spec.block_types) - 1) * 6}-{''.join(str(n - 1) for n in spec.num_windows)}"
        net = Supernet.from_encoding(encoding, num_classes=3, resolutions=[32])
        subnet = net.sample_active(np.random.default_rng(0))
        with torch.no_grad():
            assert net.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3), subnet


def test_zeroed_last_gammas_have_no_activation_after_them() -> None:
    """A zero gamma is only harmless (the block starts as its shortcut, and learns) when nothing like a
    ReLU follows it: ReLU(0) has zero gradient, so the body would never train (MobileNetV1Dual)."""
    zeroed, dual = 0, []
    for block in (b for e in SPACES for s in Supernet.from_encoding(e).stages for b in s.blocks):
        if block.name == "MobileNetV1Dual":
            dual.append(block)
        name = LAST_NORM_OF_RESIDUAL_BODY.get(block.name)
        if name is None or not block.always_residual:
            continue
        layer = getattr(block, name)
        assert not hasattr(layer, "act"), f"{block.name}.{name} zeroes a gamma followed by {layer.act}"
        assert torch.count_nonzero(layer.norm.weight) == 0
        zeroed += 1
    assert zeroed > 0
    assert dual and all(torch.count_nonzero(b.point_conv2.norm.weight) > 0 for b in dual)
