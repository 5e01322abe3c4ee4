"""MAC counts of moonlit.common.profiling.flops against hand-derived formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from moonlit.common.profiling.flops import FREE_OPS, count_macs, measure_complexity


def conv_macs(batch: int, c_in: int, c_out: int, h_out: int, w_out: int, k: int, groups: int = 1) -> int:
    return batch * c_out * h_out * w_out * (c_in // groups) * k * k


def conv_out(size: int, k: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - k) // stride + 1


def test_conv_macs_and_params() -> None:
    conv = nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1)
    report = count_macs(conv, torch.randn(2, 3, 17, 17))
    side = conv_out(17, 3, 2, 1)
    assert side == 9
    assert report.macs == conv_macs(2, 3, 8, side, side, 3)
    assert report.flops == 2 * report.macs
    assert report.params == 8 * 3 * 3 * 3 + 8
    assert set(report.macs_by_op) == {"aten.convolution"}


def test_depthwise_conv_divides_by_groups() -> None:
    depthwise = nn.Conv2d(16, 16, kernel_size=5, padding=2, groups=16, bias=False)
    report = count_macs(depthwise, torch.randn(1, 16, 10, 10))
    assert report.macs == 16 * 10 * 10 * 1 * 5 * 5
    assert report.params == 16 * 25


def test_linear_on_token_batch() -> None:
    linear = nn.Linear(20, 30)
    report = count_macs(linear, torch.randn(4, 7, 20))
    assert report.macs == 4 * 7 * 20 * 30  # bias adds are not MACs
    assert report.params == 20 * 30 + 30


def test_batched_matmul_with_keyword_inputs() -> None:
    class MatMul(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.matmul(a, b)

    report = count_macs(MatMul(), a=torch.randn(2, 3, 5, 6), b=torch.randn(2, 3, 6, 4))
    assert report.macs == 2 * 3 * 5 * 6 * 4
    assert report.params == 0


class SelfAttention(nn.Module):
    """Q/K/V/output projections with explicit or fused (SDPA) attention."""

    def __init__(self, dim: int, heads: int, fused: bool) -> None:
        super().__init__()
        self.heads, self.fused = heads, fused
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, tokens, self.heads, dim // self.heads).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        if self.fused:
            attended = F.scaled_dot_product_attention(q, k, v)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(dim // self.heads)
            attended = scores.softmax(-1) @ v
        return self.out(attended.transpose(1, 2).reshape(batch, tokens, dim))


@pytest.mark.parametrize("fused", [False, True])
def test_attention_macs(fused: bool) -> None:
    batch, tokens, dim, heads = 2, 12, 32, 4
    report = count_macs(SelfAttention(dim, heads, fused), torch.randn(batch, tokens, dim))
    projections = 4 * batch * tokens * dim * dim
    # Q·Kᵀ and A·V: per head n² · d/h each, summed over h heads → 2 · n² · d per sequence.
    attention = batch * 2 * tokens * tokens * dim
    assert report.macs == projections + attention
    assert report.macs_by_module == {"q": projections // 4, "k": projections // 4,
                                     "v": projections // 4, "out": projections // 4}


def test_sequential_net_summed_by_hand_and_uncounted_ops() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # 0
        nn.BatchNorm2d(4),  # 1
        nn.ReLU(),  # 2
        nn.Conv2d(4, 6, 3, stride=2),  # 3: 16 -> 7
        nn.AdaptiveAvgPool2d(1),  # 4
        nn.Flatten(),  # 5
        nn.Linear(6, 5),  # 6
        nn.Softmax(dim=-1),  # 7
    )
    report = count_macs(net, torch.randn(3, 3, 16, 16))
    expected = {
        "0": conv_macs(3, 3, 4, 16, 16, 3),
        "3": conv_macs(3, 4, 6, 7, 7, 3),
        "6": 3 * 6 * 5,
    }
    assert report.macs_by_module == expected
    assert report.top_level() == expected
    assert report.macs == sum(expected.values())
    assert report.params == sum(p.numel() for p in net.parameters())
    assert report.params == (4 * 27 + 4) + (4 + 4) + (6 * 36 + 6) + (6 * 5 + 5)
    uncounted = report.uncounted_ops
    assert uncounted["aten.relu"] == 1
    assert uncounted["aten._softmax"] == 1
    assert any("batch_norm" in op for op in uncounted)
    assert not any(op in FREE_OPS for op in uncounted)
    assert "aten.view" not in uncounted and "aten.convolution" not in uncounted


def test_residual_add_and_reused_module_are_reported() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.fc(x)) + x  # fc called twice

    report = count_macs(Residual(), torch.randn(5, 8))
    assert report.macs == 2 * 5 * 8 * 8
    assert report.macs_by_module == {"fc": 2 * 5 * 8 * 8}
    assert report.uncounted_ops == {"aten.add": 1}


def test_eval_mode_and_grad_state_restored() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    net.train()
    net[2].eval()  # mixed states must come back exactly
    running_mean = net[1].running_mean.clone()
    report = measure_complexity(net, (torch.randn(6, 4),))
    assert report.macs == 6 * 4 * 4
    assert [m.training for m in net] == [True, True, False]
    assert net.training
    # Eval mode: BN used (and did not update) its running statistics.
    assert torch.equal(net[1].running_mean, running_mean)
    measure_complexity(net, (torch.randn(6, 4),), eval_mode=False)
    assert not torch.equal(net[1].running_mean, running_mean)


def test_resnet18_matches_torchvision_metadata() -> None:
    # torchvision publishes "_ops" (GMACs, documented as GFLOPS) and num_params for its weights.
    meta = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta
    report = count_macs(torchvision.models.resnet18(), torch.randn(1, 3, 224, 224))
    assert report.params == meta["num_params"]
    assert round(report.macs / 1e9, 3) == meta["_ops"]
    assert set(report.top_level()) == {"conv1", "layer1", "layer2", "layer3", "layer4", "fc"}
    assert sum(report.top_level().values()) == report.macs
    assert report.to_dict()["macs"] == report.macs


def test_rejects_non_module() -> None:
    with pytest.raises(ValueError, match="nn.Module"):
        count_macs(lambda x: x, torch.randn(1))  # type: ignore[arg-type]
