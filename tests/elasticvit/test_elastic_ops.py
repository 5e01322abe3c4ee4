"""ElasticViT's ops follow the common elastic-op contract: static extract == elastic op for random choices."""

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
from moonlit.elasticvit import ops
from moonlit.elasticvit.space import ELASTICVIT_SPACE, check_subnet, sample_subnet
from moonlit.elasticvit.supernet import ElasticViTSupernet


def _randomize(module: nn.Module, seed: int) -> nn.Module:
    """Every parameter and BN statistic random, so a wrong slice shows up (zero-init gammas included)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        for norm in module.modules():
            if isinstance(norm, nn.modules.batchnorm._BatchNorm):
                norm.running_mean.copy_(torch.randn(norm.num_features, generator=generator) * 0.1)
                norm.running_var.copy_(torch.rand(norm.num_features, generator=generator) + 0.5)
    return module.eval()


# name -> (build, random choices, random input) ; choices are set_active keywords
Build = Callable[[], ElasticModule]
Choose = Callable[[random.Random, Any], dict[str, Any]]
Input = Callable[[random.Random, dict[str, Any]], tuple[torch.Tensor, dict[str, Any]]]


def _image(rng: random.Random, channels: tuple[int, ...], side: int = 8) -> tuple[torch.Tensor, dict[str, Any]]:
    width = rng.choice(channels)
    return torch.randn(2, width, side, side), {"in_channels": width}


def _flat_tokens(rng: random.Random, widths: tuple[int, ...]) -> tuple[torch.Tensor, dict[str, Any]]:
    width = rng.choice(widths)
    return torch.randn(2, 9, width), {"in_channels": width}


def _tokens(rng: random.Random, widths: tuple[int, ...], side: int) -> tuple[torch.Tensor, dict[str, Any]]:
    width, grid = rng.choice(widths), rng.randint(1, side)
    return torch.randn(2, grid * grid, width), {"in_channels": width, "side": grid}


CASES: dict[str, tuple[Build, Choose, Callable[[random.Random], tuple[torch.Tensor, dict[str, Any]]]]] = {
    "ElasticTokenNorm": (lambda: ops.ElasticTokenNorm(48, "groupnorm1"), lambda rng, op: {},
                         lambda rng: _flat_tokens(rng, (16, 32, 48))),
    "ElasticTokenBatchNorm": (lambda: ops.ElasticTokenBatchNorm(48), lambda rng, op: {},
                              lambda rng: _flat_tokens(rng, (16, 32, 48))),
    "ElasticMBConv": (lambda: ops.ElasticMBConv(24, 32, (1, 3, 6), (3, 5), 2, se=True),
                      lambda rng, op: {"expand_ratio": rng.choice(op.expands), "kernel_size": rng.choice(op.kernels),
                                       "out_channels": rng.choice((16, 24, 32))},
                      lambda rng: _image(rng, (8, 16, 24))),
    "ElasticAttention": (lambda: ops.ElasticAttention(48, (2, 3, 4), 4),
                         lambda rng, op: {"v_scale": rng.choice(op.v_scales)},
                         lambda rng: _tokens(rng, (16, 32, 48), 4)),
    "ElasticFFN": (lambda: ops.ElasticFFN(48, (2, 3, 4)), lambda rng, op: {"mlp_ratio": rng.choice(op.mlp_ratios)},
                   lambda rng: _flat_tokens(rng, (16, 48))),
    "ElasticTransformerBlock": (lambda: ops.ElasticTransformerBlock(32, (2, 4), (2, 3), 3, "layernorm"),
                                lambda rng, op: {"mlp_ratio": rng.choice((2, 4)), "v_scale": rng.choice((2, 3))},
                                lambda rng: _tokens(rng, (16, 32), 3)),
    "ElasticConvStage": (lambda: ops.ElasticConvStage(16, 32, 3, (3, 6), (3, 5), 2, se=False),
                         lambda rng, op: {"out_channels": rng.choice((16, 24, 32)), "depth": rng.randint(1, 3),
                                          "expand_ratio": rng.choice((3, 6)), "kernel_size": rng.choice((3, 5))},
                         lambda rng: _image(rng, (8, 16))),
    "ElasticViTStage": (lambda: ops.ElasticViTStage(16, 32, 2, 2, 4, (2, 3), (2, 4)),
                        lambda rng, op: {"out_channels": rng.choice((16, 32)), "depth": rng.randint(1, 2),
                                         "mlp_ratio": rng.choice((2, 3)), "v_scale": rng.choice((2, 4))},
                        lambda rng: (lambda x: (x[0], {**x[1], "side": 4}))(_image(rng, (8, 16)))),
    "ElasticClassifierHead": (lambda: ops.ElasticClassifierHead(32, 2, 20, 5, 0.0), lambda rng, op: {},
                              lambda rng: _image(rng, (16, 24, 32), side=3)),
}


def test_every_elastic_op_of_the_package_has_a_case() -> None:
    concrete = {name for name, cls in inspect.getmembers(ops, inspect.isclass)
                if issubclass(cls, ElasticModule) and not inspect.isabstract(cls)}
    assert concrete == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_static_extract_equals_elastic_op(name: str) -> None:
    build, choose, make_input = CASES[name]
    rng = random.Random(name)
    op = _randomize(build(), seed=len(name))
    assert isinstance(op, ElasticModule)
    for _ in range(4):
        choices = choose(rng, op)
        op.set_active(**choices)
        assert op.active_config() == choices
        x, extract = make_input(rng)
        static = op.get_active_subnet(**extract).eval()
        assert not any(isinstance(m, ElasticModule) for m in static.modules())
        torch.testing.assert_close(static(x), op(x), rtol=1e-5, atol=1e-5)


def test_a_rejected_choice_changes_nothing() -> None:
    stage = ops.ElasticConvStage(16, 32, 3, (3, 6), (3, 5), 2, se=False)
    stage.set_active(out_channels=24, depth=2, expand_ratio=3, kernel_size=3)
    before = stage.active_config()
    with pytest.raises(ValueError, match="kernel 7"):
        stage.set_active(out_channels=16, kernel_size=7)
    with pytest.raises(ValueError, match="depth 4"):
        stage.set_active(depth=4, out_channels=16)
    assert stage.active_config() == before
    with pytest.raises(TypeError):
        stage.set_active(24, 2, 3, 3)  # keyword-only


def test_batch_norms_are_the_common_elastic_batch_norm() -> None:
    block = ops.ElasticMBConv(16, 32, (1, 6), (3,), 1, se=False)
    assert all(isinstance(norm, ElasticBatchNorm2d) for norm in (block.pw_bn, block.dw_bn, block.pwl_bn))


def test_supernet_level_contract(small_space_supernet: ElasticViTSupernet) -> None:
    net = small_space_supernet
    assert isinstance(net, ElasticSupernet)
    largest, smallest = net.set_max(), net.set_min()
    assert net.active_subnet == smallest and net.active_resolution == smallest.resolution
    assert largest.resolution == max(net.space.resolutions) and smallest.resolution == min(net.space.resolutions)
    assert all(a.width >= b.width and a.depth >= b.depth for a, b in zip(largest.stages, smallest.stages))
    sampled = net.sample_active(np.random.default_rng(4))
    check_subnet(sampled, net.space)
    assert net.active_subnet == sampled
    assert sampled == sample_subnet(net.space, np.random.default_rng(4))


@pytest.fixture(scope="module")
def small_space_supernet() -> ElasticViTSupernet:
    return ElasticViTSupernet(ELASTICVIT_SPACE, num_classes=3)
