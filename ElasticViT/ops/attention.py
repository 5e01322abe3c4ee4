"""Elastic LeViT-style attention of the ElasticViT supernet and its static form (ICCV'23, Sec. 3).

Per head: Q and K of ``head_dim`` (16) dims, V of ``16 * v_scale`` dims; heads = width / 16.
One bias-free Linear produces ``[Q | K | V]``; as in LeViT and the reference, that output is viewed
as ``(heads, 2 * 16 + 16 * v_scale)`` and split per head, so head ``h`` reads a contiguous chunk of
the concatenation. V passes through a 3x3 depthwise conv on the token grid; a learned
relative-position bias (one table per layer, sized for the largest feature map, indexed by the
2-D offset between tokens, so any smaller square grid uses it) is added to the logits;
Hardswish precedes the output projection. The layer is pre-norm with a residual.

Weight sharing (reference): Q rows ``[0, C)``, K rows ``[C_max, C_max + C)``, V rows
``[2 C_max, 2 C_max + L)`` of one ``(6 C_max, C_max)`` matrix, ``L = heads * 16 * v_scale``;
leading slices of the V conv, the projection and the bias table's head columns.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from moonlit.common.nn.elastic import ElasticModule

from .norms import ElasticTokenNorm, TokenNormKind, make_token_norm

__all__ = ["AttentionLayer", "ElasticAttention", "levit_attention", "relative_position_index", "token_grid_side"]


@functools.lru_cache(maxsize=64)
def relative_position_index(side: int, table_side: int) -> torch.Tensor:
    """(side², side²) indices into a ((2 table_side - 1)², heads) table for a side x side grid.

    Token offsets (dy, dx) in [-(side-1), side-1] map to row (dy + t - 1) * (2t - 1) + (dx + t - 1),
    t = table_side: the same row for the same offset at every grid size.
    """
    if not 0 < side <= table_side:
        raise ValueError(f"token grid side {side} is outside 1..{table_side} (the bias table's largest grid)")
    # Built on CPU explicitly: the result is cached, so it must not follow a device context.
    coords = torch.arange(side, device="cpu")
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    offset_y = rows[:, None] - rows[None, :] + table_side - 1
    offset_x = cols[:, None] - cols[None, :] + table_side - 1
    return offset_y * (2 * table_side - 1) + offset_x


def token_grid_side(num_tokens: int) -> int:
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"{num_tokens} tokens do not form a square grid")
    return side


def levit_attention(x: torch.Tensor, qkv_weight: torch.Tensor, heads: int, key_dim: int, value_dim: int,
                    dw_v_weight: torch.Tensor, bias_table: torch.Tensor, bias_index: torch.Tensor,
                    proj_weight: torch.Tensor, proj_bias: torch.Tensor) -> torch.Tensor:
    """Attention of (B, N, C) tokens (no norm, no residual); ``bias_table`` holds ``heads`` columns."""
    batch, tokens, _ = x.shape
    side = token_grid_side(tokens)
    values = heads * value_dim
    q, k, v = F.linear(x, qkv_weight).view(batch, tokens, heads, -1).split([key_dim, key_dim, value_dim], dim=3)
    v = v.reshape(batch, tokens, values).transpose(1, 2).reshape(batch, values, side, side)
    v = F.conv2d(v, dw_v_weight, padding=1, groups=values)
    v = v.flatten(2).transpose(1, 2).reshape(batch, tokens, heads, value_dim).permute(0, 2, 1, 3)
    logits = (q.permute(0, 2, 1, 3) @ k.permute(0, 2, 3, 1)) * key_dim ** -0.5
    bias = bias_table[bias_index.reshape(-1)].view(tokens, tokens, heads).permute(2, 0, 1)
    out = (logits + bias).softmax(dim=-1) @ v
    out = out.transpose(1, 2).reshape(batch, tokens, values)
    return F.linear(F.hardswish(out), proj_weight, proj_bias)


class AttentionLayer(nn.Module):
    """Static pre-norm attention with residual for a ``side`` x ``side`` token grid."""

    def __init__(self, width: int, v_scale: int, side: int, token_norm: TokenNormKind = "groupnorm1",
                 head_dim: int = 16) -> None:
        super().__init__()
        if width % head_dim:
            raise ValueError(f"width {width} is not a multiple of the head dim {head_dim}")
        self.heads, self.key_dim, self.value_dim = width // head_dim, head_dim, head_dim * v_scale
        values = self.heads * self.value_dim
        self.norm1 = make_token_norm(token_norm, width)
        self.qkv = nn.Linear(width, 2 * width + values, bias=False)
        self.dw_v_conv = nn.Conv2d(values, values, 3, padding=1, groups=values, bias=False)
        self.attention_bias = nn.Parameter(torch.zeros((2 * side - 1) ** 2, self.heads))
        self.register_buffer("bias_index", relative_position_index(side, side).clone(), persistent=False)
        self.proj = nn.Linear(values, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + levit_attention(self.norm1(x), self.qkv.weight, self.heads, self.key_dim, self.value_dim,
                                   self.dw_v_conv.weight, self.attention_bias, self.bias_index, self.proj.weight,
                                   self.proj.bias)


class ElasticAttention(ElasticModule):
    """Attention at ``max_width`` / max V scale / ``max_side`` grid; width and grid come from the input."""

    active_choices = ("v_scale",)

    def __init__(self, max_width: int, v_scales: tuple[int, ...], max_side: int,
                 token_norm: TokenNormKind = "groupnorm1", head_dim: int = 16) -> None:
        super().__init__()
        self.max_width, self.v_scales, self.max_side, self.head_dim = max_width, tuple(v_scales), max_side, head_dim
        max_values = max_width * max(v_scales)
        self.norm1 = ElasticTokenNorm(max_width, token_norm)
        self.qkv = nn.Linear(max_width, 2 * max_width + max_values, bias=False)
        self.dw_v_conv = nn.Conv2d(max_values, max_values, 3, padding=1, groups=max_values, bias=False)
        self.attention_bias = nn.Parameter(torch.zeros((2 * max_side - 1) ** 2, max_width // head_dim))
        trunc_normal_(self.attention_bias, std=0.02)
        self.proj = nn.Linear(max_values, max_width)
        self.active_v_scale = max(self.v_scales)

    def set_active(self, *, v_scale: int | None = None) -> None:
        if v_scale is None:
            return
        if v_scale not in self.v_scales:
            raise ValueError(f"v_scale {v_scale} is not one of {self.v_scales}")
        self.active_v_scale = v_scale

    def _active_weights(self, width: int) -> tuple[int, int, torch.Tensor]:
        if width % self.head_dim or not 0 < width <= self.max_width:
            raise ValueError(f"width {width} must be a multiple of {self.head_dim} in 1..{self.max_width}")
        heads, values = width // self.head_dim, width * self.active_v_scale
        weight, cmax = self.qkv.weight, self.max_width
        qkv = torch.cat([weight[:width, :width], weight[cmax:cmax + width, :width],
                         weight[2 * cmax:2 * cmax + values, :width]])
        return heads, values, qkv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = x.shape[-1]
        heads, values, qkv = self._active_weights(width)
        side = token_grid_side(x.shape[1])
        index = relative_position_index(side, self.max_side).to(x.device)
        return x + levit_attention(self.norm1(x), qkv, heads, self.head_dim, self.head_dim * self.active_v_scale,
                                   self.dw_v_conv.weight[:values], self.attention_bias[:, :heads], index,
                                   self.proj.weight[:width, :values], self.proj.bias[:width])

    def get_active_subnet(self, in_channels: int | None = None, side: int | None = None) -> AttentionLayer:
        """The static layer for ``in_channels``-wide tokens on a ``side`` x ``side`` grid (default: the largest)."""
        width = self.max_width if in_channels is None else in_channels
        side = self.max_side if side is None else side
        if not 0 < side <= self.max_side:
            raise ValueError(f"token grid side {side} is outside 1..{self.max_side}")
        heads, values, qkv = self._active_weights(width)
        static = AttentionLayer(width, self.active_v_scale, side, self.norm1.kind, self.head_dim)
        static.norm1 = self.norm1.get_active_subnet(width)
        static.qkv.weight.data.copy_(qkv.data)
        static.dw_v_conv.weight.data.copy_(self.dw_v_conv.weight.data[:values])
        # A side x side grid needs offsets in [-(side-1), side-1]: the table's central rows.
        grid = 2 * self.max_side - 1
        table = self.attention_bias.data.view(grid, grid, -1)
        lo, hi = self.max_side - side, self.max_side + side - 1
        static.attention_bias.data.copy_(table[lo:hi, lo:hi, :heads].reshape(-1, heads))
        static.proj.weight.data.copy_(self.proj.weight.data[:width, :values])
        static.proj.bias.data.copy_(self.proj.bias.data[:width])
        return static
