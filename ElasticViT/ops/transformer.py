"""Elastic transformer layer (attention + FFN) of the ElasticViT supernet and its static form (ICCV'23, Sec. 3).

FFN: pre-norm, Linear C -> r C, Hardswish, Linear r C -> C, residual; the MLP ratio ``r`` is
elastic and weights are shared as leading slices of the ``5 C_max`` hidden layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moonlit.common.nn.elastic import ElasticModule, check_width

from .attention import AttentionLayer, ElasticAttention
from .norms import ElasticTokenNorm, TokenNormKind, make_token_norm

__all__ = ["ElasticFFN", "ElasticTransformerBlock", "FeedForward", "TransformerBlock"]


class FeedForward(nn.Module):
    def __init__(self, width: int, mlp_ratio: int, token_norm: TokenNormKind = "groupnorm1") -> None:
        super().__init__()
        self.norm1 = make_token_norm(token_norm, width)
        self.fc1 = nn.Linear(width, width * mlp_ratio)
        self.act = nn.Hardswish()
        self.fc2 = nn.Linear(width * mlp_ratio, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm1(x))))


class ElasticFFN(ElasticModule):
    """FFN at ``max_width`` x max ratio; the active width is the input's, the ratio ``active_mlp_ratio``."""

    active_choices = ("mlp_ratio",)

    def __init__(self, max_width: int, mlp_ratios: tuple[int, ...], token_norm: TokenNormKind = "groupnorm1") -> None:
        super().__init__()
        self.mlp_ratios = tuple(mlp_ratios)
        self.norm1 = ElasticTokenNorm(max_width, token_norm)
        self.fc1 = nn.Linear(max_width, max_width * max(mlp_ratios))
        self.fc2 = nn.Linear(max_width * max(mlp_ratios), max_width)
        self.active_mlp_ratio = max(self.mlp_ratios)

    def set_active(self, *, mlp_ratio: int | None = None) -> None:
        if mlp_ratio is None:
            return
        if mlp_ratio not in self.mlp_ratios:
            raise ValueError(f"MLP ratio {mlp_ratio} is not one of {self.mlp_ratios}")
        self.active_mlp_ratio = mlp_ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = x.shape[-1]
        hidden = width * self.active_mlp_ratio
        h = F.linear(self.norm1(x), self.fc1.weight[:hidden, :width], self.fc1.bias[:hidden])
        return x + F.linear(F.hardswish(h), self.fc2.weight[:width, :hidden], self.fc2.bias[:width])

    def get_active_subnet(self, in_channels: int | None = None) -> FeedForward:
        width = self.fc2.out_features if in_channels is None else in_channels
        check_width(width, self.fc2.out_features, "ElasticFFN")
        hidden = width * self.active_mlp_ratio
        static = FeedForward(width, self.active_mlp_ratio, self.norm1.kind)
        static.norm1 = self.norm1.get_active_subnet(width)
        static.fc1.weight.data.copy_(self.fc1.weight.data[:hidden, :width])
        static.fc1.bias.data.copy_(self.fc1.bias.data[:hidden])
        static.fc2.weight.data.copy_(self.fc2.weight.data[:width, :hidden])
        static.fc2.bias.data.copy_(self.fc2.bias.data[:width])
        return static


class TransformerBlock(nn.Module):
    def __init__(self, attn: AttentionLayer, ffn: FeedForward) -> None:
        super().__init__()
        self.attn, self.ffn = attn, ffn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.attn(x))


class ElasticTransformerBlock(ElasticModule):
    """Attention then FFN; ``active_mlp_ratio`` and ``active_v_scale`` are its children's."""

    active_choices = ("mlp_ratio", "v_scale")

    def __init__(self, max_width: int, mlp_ratios: tuple[int, ...], v_scales: tuple[int, ...], max_side: int,
                 token_norm: TokenNormKind = "groupnorm1", head_dim: int = 16) -> None:
        super().__init__()
        self.attn = ElasticAttention(max_width, v_scales, max_side, token_norm, head_dim)
        self.ffn = ElasticFFN(max_width, mlp_ratios, token_norm)

    @property
    def active_mlp_ratio(self) -> int:
        return self.ffn.active_mlp_ratio

    @property
    def active_v_scale(self) -> int:
        return self.attn.active_v_scale

    def set_active(self, *, mlp_ratio: int | None = None, v_scale: int | None = None) -> None:
        if mlp_ratio is not None and mlp_ratio not in self.ffn.mlp_ratios:  # validate both before changing either
            raise ValueError(f"MLP ratio {mlp_ratio} is not one of {self.ffn.mlp_ratios}")
        self.attn.set_active(v_scale=v_scale)
        self.ffn.set_active(mlp_ratio=mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.attn(x))

    def get_active_subnet(self, in_channels: int | None = None, side: int | None = None) -> TransformerBlock:
        return TransformerBlock(self.attn.get_active_subnet(in_channels, side), self.ffn.get_active_subnet(in_channels))
