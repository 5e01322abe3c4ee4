"""SpaceEvo's ops follow the common elastic-op contract: static extract == elastic op for random choices."""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from moonlit.common.nn.elastic import ElasticBatchNorm2d, ElasticModule, ElasticSupernet
from moonlit.spaceevo.ops import blocks, dynamic, set_quant_mode, stages
from moonlit.spaceevo.ops.blocks import BLOCK_CLASSES
from moonlit.spaceevo.ops.dynamic import (
    DynamicConv2d,
    DynamicConvBnAct,
    DynamicDepthwiseConv2d,
    DynamicLinear,
    DynamicSqueezeExcite,
    DynamicStackedDepthwiseConv2d,
)
from moonlit.spaceevo.ops.stages import DynamicStage, block_spec
from moonlit.spaceevo.space import sample_subnet
from moonlit.spaceevo.supernet import Supernet


def _randomize(module: nn.Module, seed: int) -> nn.Module:
    """Every parameter and BN statistic random, so a wrong slice shows up (zeroed gammas included)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if "_quant." not in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        for norm in module.modules():
            if isinstance(norm, nn.BatchNorm2d):
                norm.running_mean.copy_(torch.randn(norm.num_features, generator=generator) * 0.1)
                norm.running_var.copy_(torch.rand(norm.num_features, generator=generator) + 0.5)
    return module.eval()


def _pick(rng: random.Random, values: tuple[Any, ...]) -> Any:
    return rng.choice(values)


# name -> (build, random set_active keywords, input channels to try); inputs are (2, C, 8, 8) images
Case = tuple[Callable[[], ElasticModule], Callable[[random.Random, Any], dict[str, Any]], tuple[int, ...]]
CASES: dict[str, Case] = {
    "DynamicConv2d": (lambda: DynamicConv2d(24, 32, (1, 3, 5), stride=2, bias=True),
                      lambda rng, op: {"out_channels": rng.randint(1, 32), "kernel_size": _pick(rng, (1, 3, 5))},
                      (8, 24)),
    "DynamicDepthwiseConv2d": (lambda: DynamicDepthwiseConv2d(24, (3, 5, 7), stride=2),
                               lambda rng, op: {"kernel_size": _pick(rng, (3, 5, 7))}, (8, 24)),
    "DynamicStackedDepthwiseConv2d": (lambda: DynamicStackedDepthwiseConv2d(24, (3, 5, 7), stride=2),
                                      lambda rng, op: {"kernel_size": _pick(rng, (3, 5, 7))}, (8, 24)),
    "DynamicConvBnAct": (lambda: DynamicConvBnAct.dense(16, 32, (3, 5), 1, "hswish"),
                         lambda rng, op: {"out_channels": rng.randint(1, 32), "kernel_size": _pick(rng, (3, 5))},
                         (4, 16)),
    "DynamicSqueezeExcite": (lambda: DynamicSqueezeExcite(32, 8), lambda rng, op: {"mid_channels": rng.randint(1, 8)},
                             (16, 32)),
    "DynamicStage": (lambda: DynamicStage(block_spec("onnxw", "ResNetSE"), 16, [16, 32], [1, 2], stride=2),
                     lambda rng, op: {"depth": _pick(rng, (1, 2))}, (8, 16)),
    **{name: ((lambda cls=cls: cls(24, (16, 24, 32), (3, 5), (1.0, 4.0) if cls.uses_expand else None, 2)),
              (lambda rng, op: {"out_channels": _pick(rng, op.width_list), "kernel_size": _pick(rng, op.kernel_list),
                                "expand_ratio": _pick(rng, op.expand_list) if op.expand_list else None}),
              (16, 24))
       for name, cls in ((cls.__name__, cls) for cls in BLOCK_CLASSES.values())},
}


def test_every_elastic_op_of_the_package_has_a_case() -> None:
    # DynamicLinear takes (N, features) inputs: test_linear_contract checks it
    members = [m for module in (dynamic, blocks, stages) for m in inspect.getmembers(module, inspect.isclass)]
    concrete = {name for name, cls in members
                if issubclass(cls, ElasticModule) and not inspect.isabstract(cls) and not name.startswith("_")
                and cls.__module__.startswith("moonlit.spaceevo.")}
    assert concrete == set(CASES) | {"DynamicLinear"}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "int8"])
def test_static_extract_equals_elastic_op(name: str, quantized: bool) -> None:
    build, choose, in_channels = CASES[name]
    rng = random.Random(f"{name}{quantized}")
    op = _randomize(build(), seed=len(name))
    assert isinstance(op, ElasticModule)
    if quantized:
        set_quant_mode(op, 8)
    for _ in range(4):
        choices = choose(rng, op)
        op.set_active(**choices)
        config = op.active_config()
        assert {key: config[key] for key in choices} == choices
        x = torch.randn(2, rng.choice(in_channels), 8, 8)
        output = op(x)  # in quant mode this also calibrates the active quantizers
        static = op.get_active_subnet(x.shape[1]).eval()
        assert not any(isinstance(m, ElasticModule) for m in static.modules())
        torch.testing.assert_close(static(x), output, rtol=1e-5, atol=1e-5)


def test_linear_contract() -> None:
    linear = _randomize(DynamicLinear(32, 10), seed=1)
    for out_channels, in_features in [(10, 32), (3, 20), (7, 5)]:
        linear.set_active(out_channels=out_channels)
        assert linear.active_config() == {"out_channels": out_channels}
        x = torch.randn(3, in_features)
        static = linear.get_active_subnet(in_features)
        torch.testing.assert_close(static(x), x @ linear.weight[:out_channels, :in_features].T
                                   + linear.bias[:out_channels], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(static(x), linear(x), rtol=0, atol=0)


def test_set_active_is_keyword_only_and_a_rejected_choice_changes_nothing() -> None:
    conv = DynamicConv2d(8, 16, (3, 5))
    with pytest.raises(TypeError):
        conv.set_active(8, 3)
    conv.set_active(out_channels=8, kernel_size=3)
    with pytest.raises(ValueError, match="20 channels requested"):
        conv.set_active(out_channels=20, kernel_size=5)
    assert conv.active_config() == {"out_channels": 8, "kernel_size": 3}
    depthwise = DynamicConvBnAct.depthwise(8, (3, 5), 1, "relu")
    assert depthwise.active_config() == {"kernel_size": 5}
    with pytest.raises(ValueError, match="keeps its input channels"):
        depthwise.set_active(out_channels=4)


def test_norms_are_the_common_elastic_batch_norm() -> None:
    block = BLOCK_CLASSES["MobileNetV3Res"](16, (16, 24), (3,), (3.0,), 1)
    norms = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(isinstance(norm, ElasticBatchNorm2d) for norm in norms)


def test_supernet_level_contract() -> None:
    net = Supernet.from_encoding("onnxw-151122-023231", num_classes=5, resolutions=[32, 48])
    assert isinstance(net, ElasticSupernet)
    largest = net.set_max()
    assert net.active_subnet == largest == net.active_encoding() and largest.resolution == 48
    smallest = net.set_min()
    assert net.active_subnet == smallest and net.active_resolution == 32
    assert sum(largest.depths) > sum(smallest.depths)
    sampled = net.sample_active(np.random.default_rng(2))
    assert net.active_subnet == sampled == sample_subnet(net.space, np.random.default_rng(2), (32, 48))
    assert isinstance(net.get_active_subnet(), nn.Module)
