"""Elastic and static normalisation and linear layers of the ElasticViT supernet (ICCV'23, Sec. 3).

Elastic layers hold weights at the largest width and use the leading slice that the input's width
selects (the active width is read from the input, as in the reference). ``get_active_subnet(width)``
returns a plain static layer with those slices copied. The elastic BatchNorm2d is
:class:`moonlit.common.nn.elastic.ElasticBatchNorm2d`, shared with SpaceEvo.

Token norms come in two variants, chosen by ``token_norm``:

* ``"groupnorm1"`` — the reference's "LayerNorm": statistics over tokens x channels of each image
  together (GroupNorm with one group), per-channel affine. Released checkpoints were trained with it.
* ``"layernorm"`` — the standard per-token LayerNorm that the paper names.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from moonlit.common.nn.elastic import (
    ElasticModule,
    check_no_choices,
    check_width,
    copy_batch_norm_slice,
    elastic_batch_norm,
)

__all__ = [
    "TOKEN_NORMS",
    "ElasticTokenBatchNorm",
    "ElasticTokenNorm",
    "TokenBatchNorm",
    "TokenGroupNorm",
    "TokenNormKind",
    "check_token_norm",
    "make_token_norm",
]

TokenNormKind = Literal["groupnorm1", "layernorm"]
TOKEN_NORMS: tuple[str, ...] = ("groupnorm1", "layernorm")
NORM_EPS = 1e-5  # torch's LayerNorm/BatchNorm default, used by the reference


def check_token_norm(kind: str) -> None:
    if kind not in TOKEN_NORMS:
        raise ValueError(f"token_norm {kind!r} is not one of {TOKEN_NORMS}")


def _group_norm_tokens(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalise (B, N, C) tokens over N x C per image; affine per channel.

    Written as a LayerNorm over the flattened N*C features with the affine tiled N times, which is
    the same arithmetic as the (N, C) LayerNorm with the affine expanded, but exports as a
    LayerNormalization with 1-D scale and bias. With an (N, C) scale and bias, onnxruntime's (1.31)
    QDQ quantizer quantizes the bias to int32 with per-channel scales along C yet writes its
    DequantizeLinear with axis 0 (it assumes a 1-D bias), and the INT8 session fails at that node.
    """
    tokens, channels = x.shape[1], x.shape[2]
    normed = F.layer_norm(x.flatten(1), (tokens * channels,), weight.repeat(tokens), bias.repeat(tokens), eps)
    return normed.reshape_as(x)


class TokenGroupNorm(nn.Module):
    """The reference's token "LayerNorm": GroupNorm(1) over (tokens, channels) of (B, N, C) input."""

    def __init__(self, channels: int, eps: float = NORM_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _group_norm_tokens(x, self.weight, self.bias, self.eps)


def make_token_norm(kind: TokenNormKind, channels: int) -> nn.Module:
    check_token_norm(kind)
    return TokenGroupNorm(channels) if kind == "groupnorm1" else nn.LayerNorm(channels, eps=NORM_EPS)


class ElasticTokenNorm(ElasticModule):
    """Token norm at ``max_channels`` whose active width is the input's last dimension."""

    def __init__(self, max_channels: int, kind: TokenNormKind = "groupnorm1") -> None:
        super().__init__()
        check_token_norm(kind)
        self.kind = kind
        self.weight = nn.Parameter(torch.ones(max_channels))
        self.bias = nn.Parameter(torch.zeros(max_channels))

    def set_active(self, **choices: Any) -> None:
        check_no_choices(self, choices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[-1]
        weight, bias = self.weight[:channels], self.bias[:channels]
        if self.kind == "groupnorm1":
            return _group_norm_tokens(x, weight, bias, NORM_EPS)
        return F.layer_norm(x, (channels,), weight, bias, NORM_EPS)

    def get_active_subnet(self, in_channels: int | None = None) -> nn.Module:
        channels = self.weight.shape[0] if in_channels is None else in_channels
        check_width(channels, self.weight.shape[0], "ElasticTokenNorm")
        static = make_token_norm(self.kind, channels)
        static.weight.data.copy_(self.weight.data[:channels])
        static.bias.data.copy_(self.bias.data[:channels])
        return static


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over the channels of (B, N, C) tokens (statistics over B x N)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(0, 1)).reshape_as(x)


class ElasticTokenBatchNorm(nn.BatchNorm1d, ElasticModule):
    """:class:`TokenBatchNorm` at max width; the active width is the input's last dimension."""

    def set_active(self, **choices: Any) -> None:
        check_no_choices(self, choices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return elastic_batch_norm(self, x.flatten(0, 1), x.shape[-1], "ElasticTokenBatchNorm").reshape_as(x)

    def get_active_subnet(self, in_channels: int | None = None) -> TokenBatchNorm:
        channels = self.num_features if in_channels is None else in_channels
        check_width(channels, self.num_features, "ElasticTokenBatchNorm")
        static = TokenBatchNorm(channels, self.eps, self.momentum)
        copy_batch_norm_slice(self, static, channels)
        return static
