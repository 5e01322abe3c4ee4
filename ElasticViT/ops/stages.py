"""Elastic stages and classifier head of the ElasticViT supernet, with static forms (ICCV'23, Sec. 3).

* Conv stage (and the stem): ``depth`` MBConv blocks sharing width, expand and kernel; the first
  block takes the previous width and the stage's stride.
* Transformer stage: one MBConv reduction block (expand 6, 3x3, SE, the stage's stride) on the
  feature map, then ``depth`` attention+FFN layers on its tokens. Stages map NCHW to NCHW.
* Head (MobileNetV3-style, per token): Linear C -> 6 C, BatchNorm, Hardswish, mean over tokens,
  Linear -> 1984, Hardswish, dropout, Linear -> classes.

Depth is elastic by keeping the first ``depth`` blocks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from moonlit.common.nn.elastic import ElasticModule, check_no_choices, check_width

from .mbconv import ElasticMBConv, MBConvBlock
from .norms import ElasticTokenBatchNorm, TokenBatchNorm, TokenNormKind
from .transformer import ElasticTransformerBlock, TransformerBlock

__all__ = ["ClassifierHead", "ElasticClassifierHead", "ElasticConvStage", "ElasticViTStage", "ViTStage"]


def _check_depth(depth: int, max_depth: int) -> None:
    if not 1 <= depth <= max_depth:
        raise ValueError(f"depth {depth} is outside 1..{max_depth}")


class ElasticConvStage(ElasticModule):
    """``max_depth`` MBConv blocks sharing one width, expand ratio and kernel; the active depth keeps the first ones."""

    active_choices = ("out_channels", "depth", "expand_ratio", "kernel_size")

    def __init__(self, max_in_channels: int, max_width: int, max_depth: int, expands: tuple[int, ...],
                 kernels: tuple[int, ...], stride: int, se: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ElasticMBConv(max_in_channels if index == 0 else max_width, max_width, expands, kernels,
                          stride if index == 0 else 1, se)
            for index in range(max_depth))
        self.active_depth = max_depth

    @property
    def active_out_channels(self) -> int:
        return self.blocks[0].active_out_channels

    @property
    def active_expand_ratio(self) -> int:
        return self.blocks[0].active_expand_ratio

    @property
    def active_kernel_size(self) -> int:
        return self.blocks[0].active_kernel_size

    def set_active(self, *, out_channels: int | None = None, depth: int | None = None,
                   expand_ratio: int | None = None, kernel_size: int | None = None) -> None:
        if depth is not None:
            _check_depth(depth, len(self.blocks))
        for block in self.blocks:  # the first call validates; every block has the same choices
            block.set_active(expand_ratio=expand_ratio, kernel_size=kernel_size, out_channels=out_channels)
        if depth is not None:
            self.active_depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks[:self.active_depth]:
            x = block(x)
        return x

    def get_active_subnet(self, in_channels: int | None = None) -> nn.Sequential:
        in_channels = self.blocks[0].max_in_channels if in_channels is None else in_channels
        blocks = []
        for block in self.blocks[:self.active_depth]:
            blocks.append(block.get_active_subnet(in_channels))
            in_channels = block.active_out_channels
        return nn.Sequential(*blocks)


class ViTStage(nn.Module):
    def __init__(self, reduction: MBConvBlock, blocks: list[TransformerBlock]) -> None:
        super().__init__()
        self.reduction = reduction
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduction(x)
        batch, channels, height, width = x.shape
        tokens = self.blocks(x.flatten(2).transpose(1, 2))
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)


class ElasticViTStage(ElasticModule):
    """An MBConv reduction block (fixed expand and kernel) and ``max_depth`` transformer blocks."""

    active_choices = ("out_channels", "depth", "mlp_ratio", "v_scale")

    def __init__(self, max_in_channels: int, max_width: int, max_depth: int, stride: int, max_side: int,
                 mlp_ratios: tuple[int, ...], v_scales: tuple[int, ...], token_norm: TokenNormKind = "groupnorm1",
                 reduction_expand: int = 6, reduction_kernel: int = 3, head_dim: int = 16) -> None:
        super().__init__()
        self.reduction = ElasticMBConv(max_in_channels, max_width, (reduction_expand,), (reduction_kernel,), stride,
                                       se=True)
        self.blocks = nn.ModuleList(
            ElasticTransformerBlock(max_width, mlp_ratios, v_scales, max_side, token_norm, head_dim)
            for _ in range(max_depth))
        self.active_depth = max_depth

    @property
    def active_out_channels(self) -> int:
        return self.reduction.active_out_channels

    @property
    def active_mlp_ratio(self) -> int:
        return self.blocks[0].active_mlp_ratio

    @property
    def active_v_scale(self) -> int:
        return self.blocks[0].active_v_scale

    def set_active(self, *, out_channels: int | None = None, depth: int | None = None,
                   mlp_ratio: int | None = None, v_scale: int | None = None) -> None:
        if depth is not None:
            _check_depth(depth, len(self.blocks))
        self.reduction.set_active(out_channels=out_channels)
        for block in self.blocks:
            block.set_active(mlp_ratio=mlp_ratio, v_scale=v_scale)
        if depth is not None:
            self.active_depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduction(x)
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        for block in self.blocks[:self.active_depth]:
            tokens = block(tokens)
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)

    def get_active_subnet(self, in_channels: int | None = None, side: int | None = None) -> ViTStage:
        """The static stage for ``in_channels`` inputs whose token grid (after the reduction) is ``side`` wide."""
        width = self.reduction.active_out_channels
        return ViTStage(self.reduction.get_active_subnet(in_channels),
                        [block.get_active_subnet(width, side) for block in self.blocks[:self.active_depth]])


class ClassifierHead(nn.Module):
    def __init__(self, in_channels: int, width_multiplier: int, hidden: int, num_classes: int,
                 dropout: float) -> None:
        super().__init__()
        expanded = in_channels * width_multiplier
        self.token_proj = nn.Linear(in_channels, expanded)
        self.token_norm = TokenBatchNorm(expanded)
        self.act = nn.Hardswish()
        self.hidden_proj = nn.Linear(expanded, hidden)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)
        pooled = self.act(self.token_norm(self.token_proj(tokens))).mean(dim=1)
        return self.classifier(self.dropout(self.act(self.hidden_proj(pooled))))


class ElasticClassifierHead(ElasticModule):
    """:class:`ClassifierHead` at the last stage's max width; the active width is the input's."""

    def __init__(self, max_in_channels: int, width_multiplier: int, hidden: int, num_classes: int,
                 dropout: float) -> None:
        super().__init__()
        self.max_in_channels = max_in_channels
        self.width_multiplier = width_multiplier
        max_expanded = max_in_channels * width_multiplier
        self.token_proj = nn.Linear(max_in_channels, max_expanded)
        self.token_norm = ElasticTokenBatchNorm(max_expanded)
        self.hidden_proj = nn.Linear(max_expanded, hidden)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_channels = x.shape[1]
        expanded = in_channels * self.width_multiplier
        tokens = F.linear(x.flatten(2).transpose(1, 2), self.token_proj.weight[:expanded, :in_channels],
                          self.token_proj.bias[:expanded])
        pooled = F.hardswish(self.token_norm(tokens)).mean(dim=1)
        hidden = F.hardswish(F.linear(pooled, self.hidden_proj.weight[:, :expanded], self.hidden_proj.bias))
        return self.classifier(self.dropout(hidden))

    def set_active(self, **choices: Any) -> None:
        check_no_choices(self, choices)

    def get_active_subnet(self, in_channels: int | None = None) -> ClassifierHead:
        in_channels = self.max_in_channels if in_channels is None else in_channels
        check_width(in_channels, self.max_in_channels, "ElasticClassifierHead")
        expanded = in_channels * self.width_multiplier
        static = ClassifierHead(in_channels, self.width_multiplier, self.hidden_proj.out_features,
                                self.classifier.out_features, self.dropout.p)
        static.token_proj.weight.data.copy_(self.token_proj.weight.data[:expanded, :in_channels])
        static.token_proj.bias.data.copy_(self.token_proj.bias.data[:expanded])
        static.token_norm = self.token_norm.get_active_subnet(expanded)
        static.hidden_proj.weight.data.copy_(self.hidden_proj.weight.data[:, :expanded])
        static.hidden_proj.bias.data.copy_(self.hidden_proj.bias.data)
        static.classifier.load_state_dict(self.classifier.state_dict())
        return static
