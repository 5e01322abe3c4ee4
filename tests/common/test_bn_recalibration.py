"""BN recalibration: running stats equal the hand-computed cumulative average of batch statistics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from moonlit.common.nn.elastic import ElasticBatchNorm2d
from moonlit.common.train.bn_recalibration import (
    recalibrate_batch_norm,
    reset_batch_norm_stats,
)


def batches(count: int, channels: int = 3, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    # batches of different sizes and offsets, so a per-sample average would differ from the per-batch one
    return [(torch.randn(2 + i, channels, 5, 5, generator=generator) * (1 + i) + i,
             torch.zeros(2 + i, dtype=torch.long)) for i in range(count)]


def hand_statistics(weight: torch.Tensor, data: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over batches of the batch mean and of the unbiased batch variance of conv(x) per channel."""
    means, variances = [], []
    for x in data:
        y = torch.einsum("oc,nchw->nohw", weight[:, :, 0, 0].double(), x.double())
        flat = y.transpose(0, 1).reshape(y.shape[1], -1)
        means.append(flat.mean(1))
        variances.append(flat.var(1, unbiased=True))
    return torch.stack(means).mean(0), torch.stack(variances).mean(0)


class Recorder(nn.Module):
    """Dropout stand-in that records whether it ran in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return x


def test_running_stats_are_the_cumulative_average_of_batch_statistics() -> None:
    torch.manual_seed(0)
    recorder = Recorder()
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4, momentum=0.3), nn.ReLU(), recorder)
    model.train()
    model[1].running_mean.fill_(7.0)  # stale supernet statistics
    data = batches(5)
    used = recalibrate_batch_norm(model, data, num_batches=4)
    assert used == 4
    mean, var = hand_statistics(model[0].weight.detach(), [x for x, _ in data[:4]])
    torch.testing.assert_close(model[1].running_mean.double(), mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[1].running_var.double(), var, rtol=1e-5, atol=1e-5)
    assert int(model[1].num_batches_tracked) == 4
    # the rest of the network ran in eval mode; flags and momentum are restored
    assert recorder.modes == [False] * 4
    assert model.training and model[1].training and recorder.training
    assert model[1].momentum == 0.3


def test_elastic_batch_norm_recalibrates_its_active_slice() -> None:
    torch.manual_seed(1)
    weight = torch.randn(3, 3, 1, 1)
    data = [x for x, _ in batches(3, seed=1)]
    mean, var = hand_statistics(weight, data)
    norm = ElasticBatchNorm2d(6)  # max width 6, active width 3 (the conv's output)
    norm.running_mean.fill_(5.0)
    model = nn.Sequential(nn.Conv2d(3, 3, 1, bias=False), norm).eval()
    model[0].weight.data.copy_(weight)
    recalibrate_batch_norm(model, data, num_batches=10)  # more than available: uses all 3
    torch.testing.assert_close(norm.running_mean[:3].double(), mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm.running_var[:3].double(), var, rtol=1e-5, atol=1e-5)
    # inactive channels were reset, not left stale
    torch.testing.assert_close(norm.running_mean[3:], torch.zeros(3))
    torch.testing.assert_close(norm.running_var[3:], torch.ones(3))
    assert not norm.training


def test_forward_override_reset_and_errors() -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    data = batches(2)
    seen: list[tuple[int, ...]] = []

    def forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return module(F.interpolate(x, size=(3, 3)))

    assert recalibrate_batch_norm(model, (x for x, _ in data), 2, forward=forward) == 2
    assert seen == [tuple(x.shape) for x, _ in data]
    layers = reset_batch_norm_stats(model)
    assert layers == [model[1]] and float(model[1].running_mean.abs().sum()) == 0.0
    with pytest.raises(ValueError, match="num_batches = 0"):
        recalibrate_batch_norm(model, data, 0)
    with pytest.raises(ValueError, match="yielded nothing"):
        recalibrate_batch_norm(model, [], 3)
    with pytest.raises(TypeError, match="tensor or an \\(inputs, labels\\) pair"):
        recalibrate_batch_norm(model, [{"x": 1}], 1)
    assert recalibrate_batch_norm(nn.Linear(2, 2), data, 1) == 0  # no BN: nothing to do
