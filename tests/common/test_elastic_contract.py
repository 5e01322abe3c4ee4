"""The elastic-op contract of moonlit.common.nn: static extract == elastic op; ElasticBatchNorm2d by hand."""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable

import pytest
import torch
from torch import nn

from moonlit.common.errors import InputError
from moonlit.common.nn import elastic
from moonlit.common.nn.elastic import ElasticBatchNorm2d, ElasticModule


def _randomized_bn(max_width: int, seed: int, **flags: bool) -> ElasticBatchNorm2d:
    generator = torch.Generator().manual_seed(seed)
    norm = ElasticBatchNorm2d(max_width, **flags)
    with torch.no_grad():
        if norm.affine:
            norm.weight.copy_(torch.rand(max_width, generator=generator) + 0.5)
            norm.bias.copy_(torch.randn(max_width, generator=generator))
        if norm.track_running_stats:
            norm.running_mean.copy_(torch.randn(max_width, generator=generator))
            norm.running_var.copy_(torch.rand(max_width, generator=generator) + 0.5)
    return norm


# One case per concrete ElasticModule of common.nn: build(seed) -> (op, random choices, input width).
Case = Callable[[random.Random], tuple[ElasticModule, dict, int]]
CASES: dict[str, Case] = {
    "ElasticBatchNorm2d": lambda rng: (_randomized_bn(12, rng.randrange(100)), {}, rng.randint(1, 12)),
}


def test_every_elastic_class_of_common_nn_has_a_case() -> None:
    concrete = {name for name, cls in inspect.getmembers(elastic, inspect.isclass)
                if issubclass(cls, ElasticModule) and not inspect.isabstract(cls)}
    assert concrete == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("training", [False, True])
def test_static_extract_equals_elastic_op(name: str, training: bool) -> None:
    rng = random.Random(f"{name}{training}")
    for _ in range(5):
        op, choices, in_channels = CASES[name](rng)
        op.set_active(**choices)
        static = op.get_active_subnet(in_channels)
        assert not isinstance(static, ElasticModule) and type(static).__module__.startswith("torch.")
        op.train(training)
        static.train(training)
        x = torch.randn(4, in_channels, 5, 5)
        torch.testing.assert_close(static(x), op(x), rtol=1e-5, atol=1e-5)
        assert op.active_config() == choices


def test_batch_norm_training_uses_hand_computed_batch_statistics() -> None:
    norm = _randomized_bn(8, seed=0)
    norm.momentum = 0.25
    old_mean, old_var = norm.running_mean.clone(), norm.running_var.clone()
    x = torch.randn(6, 5, 3, 3, dtype=torch.float64).float() * 2 + 1
    out = norm.train()(x)
    # per channel over (batch, height, width): biased variance to normalise, unbiased for the running one
    flat = x.double().transpose(0, 1).reshape(5, -1)
    count = flat.shape[1]
    mean = flat.sum(1) / count
    biased = ((flat - mean[:, None]) ** 2).sum(1) / count
    unbiased = biased * count / (count - 1)
    gamma, beta = norm.weight[:5].detach().double(), norm.bias[:5].detach().double()
    expected = (x.double() - mean[None, :, None, None]) / torch.sqrt(biased + norm.eps)[None, :, None, None]
    expected = expected * gamma[None, :, None, None] + beta[None, :, None, None]
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm.running_mean[:5].double(), 0.75 * old_mean[:5].double() + 0.25 * mean,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(norm.running_var[:5].double(), 0.75 * old_var[:5].double() + 0.25 * unbiased,
                               rtol=1e-5, atol=1e-6)
    assert torch.equal(norm.running_mean[5:], old_mean[5:]) and torch.equal(norm.running_var[5:], old_var[5:])
    assert int(norm.num_batches_tracked) == 1


def test_batch_norm_eval_uses_the_running_slice() -> None:
    norm = _randomized_bn(8, seed=1).eval()
    x = torch.randn(2, 3, 4, 4)
    mean, var = norm.running_mean[:3], norm.running_var[:3]
    expected = (x - mean[None, :, None, None]) / torch.sqrt(var + norm.eps)[None, :, None, None]
    expected = expected * norm.weight[:3, None, None] + norm.bias[:3, None, None]
    torch.testing.assert_close(norm(x), expected.detach(), rtol=1e-5, atol=1e-6)


def test_batch_norm_cumulative_average_when_momentum_is_none() -> None:
    norm = ElasticBatchNorm2d(6, momentum=None).train()
    batches = [torch.randn(3, 4, 2, 2) + i for i in range(3)]
    for x in batches:
        norm(x)
    means = torch.stack([x.transpose(0, 1).reshape(4, -1).mean(1) for x in batches])
    # cumulative moving average from the initial 0: (0 + m1 + m2 + m3) with weights 1/1, 1/2, 1/3 == plain mean
    torch.testing.assert_close(norm.running_mean[:4], means.mean(0), rtol=1e-5, atol=1e-6)
    assert int(norm.num_batches_tracked) == 3


@pytest.mark.parametrize("flags", [{"affine": False}, {"track_running_stats": False},
                                   {"affine": False, "track_running_stats": False}])
def test_batch_norm_without_affine_or_running_stats(flags: dict) -> None:
    norm = _randomized_bn(7, seed=2, **flags)
    x = torch.randn(5, 4, 3, 3)
    for training in (True, False):
        norm.train(training)
        static = norm.get_active_subnet(4).train(training)
        assert (static.affine, static.track_running_stats) == (norm.affine, norm.track_running_stats)
        reference = nn.BatchNorm2d(4, affine=norm.affine, track_running_stats=norm.track_running_stats)
        reference.load_state_dict(static.state_dict())
        reference.train(training)
        torch.testing.assert_close(norm(x), reference(x), rtol=1e-5, atol=1e-5)


def test_batch_norm_rejects_a_wider_input_and_choices() -> None:
    norm = ElasticBatchNorm2d(4)
    with pytest.raises(InputError, match="6 channels requested, expected 1..4"):
        norm(torch.randn(1, 6, 2, 2))
    with pytest.raises(InputError, match="expected 1..4"):
        norm.get_active_subnet(5)
    with pytest.raises(InputError, match="no choices"):
        norm.set_active(out_channels=2)
    assert norm.get_active_subnet().num_features == 4  # None: the largest width
