"""Elastic MBConv block of the ElasticViT supernet and its static form (ICCV'23, Sec. 3, "CNN stages").

Block: [1x1 expand conv, BN, Hardswish] (absent in the stem's depthwise-separable blocks),
kxk depthwise conv (stride s), BN, Hardswish, [SE: mean, 1x1, ReLU, 1x1, Hardsigmoid],
1x1 projection conv, BN. Shortcut: identity when shapes agree; otherwise a 2x2 average pool
(padding 1 on odd sides) when strided, then a 1x1 conv (no BN) when the width changes.

Weight sharing follows the reference: the expand width is ``in_channels * expand``; every conv uses
its leading channel slices; a 3x3 kernel is the centre of the 5x5 one. Parameter shapes match the
reference's (the expand conv and the shortcut conv are sized by the block's max *output* width) so
its checkpoints load through a key map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import SEModule
from torch import nn

from moonlit.common.nn.elastic import ElasticBatchNorm2d, ElasticModule, check_width

__all__ = ["ElasticMBConv", "MBConvBlock", "mbconv_shortcut_pool"]


def mbconv_shortcut_pool(x: torch.Tensor) -> torch.Tensor:
    """The reference's strided shortcut: 2x2 average pool, padding 1 on an odd side (count_include_pad)."""
    return F.avg_pool2d(x, 2, padding=x.shape[-1] % 2)


def _centre_kernel(weight: torch.Tensor, kernel: int) -> torch.Tensor:
    start = (weight.shape[-1] - kernel) // 2
    return weight[:, :, start:start + kernel, start:start + kernel]


class MBConvBlock(nn.Module):
    """Static MBConv (see module docstring); ``expand == 1`` means no expand conv."""

    def __init__(self, in_channels: int, out_channels: int, expand: int, kernel: int, stride: int,
                 se: bool) -> None:
        super().__init__()
        inner = in_channels * expand
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.pw_conv = self.pw_bn = None
        if expand != 1:
            self.pw_conv = nn.Conv2d(in_channels, inner, 1, bias=False)
            self.pw_bn = nn.BatchNorm2d(inner)
        self.dw_conv = nn.Conv2d(inner, inner, kernel, stride, kernel // 2, groups=inner, bias=False)
        self.dw_bn = nn.BatchNorm2d(inner)
        self.act = nn.Hardswish()
        self.se = SEModule(inner, rd_channels=inner // 4, act_layer=nn.ReLU, gate_layer=nn.Hardsigmoid) if se else None
        self.pwl_conv = nn.Conv2d(inner, out_channels, 1, bias=False)
        self.pwl_bn = nn.BatchNorm2d(out_channels)
        needs_conv = in_channels != out_channels
        self.shortcut_conv = nn.Conv2d(in_channels, out_channels, 1, bias=False) if needs_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.pw_conv is not None:
            x = self.act(self.pw_bn(self.pw_conv(x)))
        x = self.act(self.dw_bn(self.dw_conv(x)))
        if self.se is not None:
            x = self.se(x)
        x = self.pwl_bn(self.pwl_conv(x))
        if self.stride > 1:
            shortcut = mbconv_shortcut_pool(shortcut)
        if self.shortcut_conv is not None:
            shortcut = self.shortcut_conv(shortcut)
        return x + shortcut


class ElasticMBConv(ElasticModule):
    """MBConv with elastic input width (from the input), expand ratio, kernel and output width.

    ``active_expand_ratio``, ``active_kernel_size`` and ``active_out_channels`` are set by :meth:`set_active`.
    """

    active_choices = ("expand_ratio", "kernel_size", "out_channels")

    def __init__(self, max_in_channels: int, max_out_channels: int, expands: tuple[int, ...],
                 kernels: tuple[int, ...], stride: int, se: bool) -> None:
        super().__init__()
        if max_in_channels > max_out_channels:
            raise ValueError(f"max input width {max_in_channels} exceeds max output width {max_out_channels}: "
                             "widths never decrease across stages")
        self.max_in_channels, self.max_out_channels = max_in_channels, max_out_channels
        self.expands, self.kernels, self.stride, self.use_se = tuple(expands), tuple(kernels), stride, se
        max_inner = max_out_channels * max(expands)
        if max(expands) > 1:
            self.pw_conv = nn.Conv2d(max_out_channels, max_inner, 1, bias=False)
            self.pw_bn = ElasticBatchNorm2d(max_inner)
        self.dw_conv = nn.Conv2d(max_inner, max_inner, max(kernels), stride, max(kernels) // 2, groups=max_inner,
                                 bias=False)
        self.dw_bn = ElasticBatchNorm2d(max_inner)
        if se:
            self.se_conv1 = nn.Conv2d(max_inner, max_inner // 4, 1, bias=True)
            self.se_conv2 = nn.Conv2d(max_inner // 4, max_inner, 1, bias=True)
        self.pwl_conv = nn.Conv2d(max_inner, max_out_channels, 1, bias=False)
        self.pwl_bn = ElasticBatchNorm2d(max_out_channels)
        if stride == 1:
            nn.init.zeros_(self.pwl_bn.weight)  # residual branch starts as identity, as in the reference
        self.shortcut_conv = nn.Conv2d(max_out_channels, max_out_channels, 1, bias=False)
        self.active_expand_ratio, self.active_kernel_size = max(expands), max(kernels)
        self.active_out_channels = max_out_channels

    def set_active(self, *, expand_ratio: int | None = None, kernel_size: int | None = None,
                   out_channels: int | None = None) -> None:
        if expand_ratio is not None and expand_ratio not in self.expands:
            raise ValueError(f"expand {expand_ratio} is not one of {self.expands}")
        if kernel_size is not None and kernel_size not in self.kernels:
            raise ValueError(f"kernel {kernel_size} is not one of {self.kernels}")
        if out_channels is not None and not 0 < out_channels <= self.max_out_channels:
            raise ValueError(f"output width {out_channels} is outside 1..{self.max_out_channels}")
        if expand_ratio is not None:
            self.active_expand_ratio = expand_ratio
        if kernel_size is not None:
            self.active_kernel_size = kernel_size
        if out_channels is not None:
            self.active_out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_channels = x.shape[1]
        inner = in_channels * self.active_expand_ratio
        out_channels, kernel = self.active_out_channels, self.active_kernel_size
        shortcut = x
        if hasattr(self, "pw_conv"):
            x = F.conv2d(x, self.pw_conv.weight[:inner, :in_channels])
            x = F.hardswish(self.pw_bn(x))
        x = F.conv2d(x, _centre_kernel(self.dw_conv.weight[:inner], kernel), None, self.stride, kernel // 2,
                     groups=inner)
        x = F.hardswish(self.dw_bn(x))
        if self.use_se:
            reduced = inner // 4
            gate = x.mean((2, 3), keepdim=True)
            gate = F.relu(F.conv2d(gate, self.se_conv1.weight[:reduced, :inner], self.se_conv1.bias[:reduced]))
            gate = F.conv2d(gate, self.se_conv2.weight[:inner, :reduced], self.se_conv2.bias[:inner])
            x = x * F.hardsigmoid(gate)
        x = self.pwl_bn(F.conv2d(x, self.pwl_conv.weight[:out_channels, :inner]))
        if self.stride > 1:
            shortcut = mbconv_shortcut_pool(shortcut)
        if in_channels != out_channels:
            shortcut = F.conv2d(shortcut, self.shortcut_conv.weight[:out_channels, :in_channels])
        return x + shortcut

    def get_active_subnet(self, in_channels: int | None = None) -> MBConvBlock:
        in_channels = self.max_in_channels if in_channels is None else in_channels
        check_width(in_channels, self.max_in_channels, "ElasticMBConv input")
        inner = in_channels * self.active_expand_ratio
        out_channels = self.active_out_channels
        static = MBConvBlock(in_channels, out_channels, self.active_expand_ratio, self.active_kernel_size,
                             self.stride, self.use_se)
        if static.pw_conv is not None:
            static.pw_conv.weight.data.copy_(self.pw_conv.weight.data[:inner, :in_channels])
            static.pw_bn = self.pw_bn.get_active_subnet(inner)
        static.dw_conv.weight.data.copy_(_centre_kernel(self.dw_conv.weight.data[:inner], self.active_kernel_size))
        static.dw_bn = self.dw_bn.get_active_subnet(inner)
        if static.se is not None:
            reduced = inner // 4
            static.se.fc1.weight.data.copy_(self.se_conv1.weight.data[:reduced, :inner])
            static.se.fc1.bias.data.copy_(self.se_conv1.bias.data[:reduced])
            static.se.fc2.weight.data.copy_(self.se_conv2.weight.data[:inner, :reduced])
            static.se.fc2.bias.data.copy_(self.se_conv2.bias.data[:inner])
        static.pwl_conv.weight.data.copy_(self.pwl_conv.weight.data[:out_channels, :inner])
        static.pwl_bn = self.pwl_bn.get_active_subnet(out_channels)
        if static.shortcut_conv is not None:
            static.shortcut_conv.weight.data.copy_(self.shortcut_conv.weight.data[:out_channels, :in_channels])
        return static
