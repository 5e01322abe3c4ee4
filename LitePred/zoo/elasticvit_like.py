"""The ``elasticvit-like`` family of LitePred's model zoo: a stand-in for ElasticViT's hybrid space.

A *stand-in* for ElasticViT's hybrid space (ICCV'23, §3.1) that needs no paper package (the real
space plugs in as the ``elasticvit`` family): MBConv stages followed by plain pre-norm transformer
stages (matmul + softmax attention, LayerNorm, GELU).
The description grammar is documented on :class:`ElasticViTLikeArch`; ``decode(encode(a)) == a``
and bad strings raise ``ValueError`` naming the bad token.
"""

from __future__ import annotations

import dataclasses
import random
import re
from functools import partial

import torch
from timm.models._efficientnet_blocks import (
    DepthwiseSeparableConv,
    InvertedResidual,
    SqueezeExcite,
)
from torch import nn

from moonlit.litepred.zoo import ArchFamily, ArchSpec, register_family

__all__ = ["ELASTICVIT_RESOLUTIONS", "ConvStage", "ElasticViTLike", "ElasticViTLikeArch", "TransformerStage"]


@dataclasses.dataclass(frozen=True)
class ConvStage:
    """MBConv stage: first block strided by 2, Hardswish, optional squeeze-excite."""

    width: int
    depth: int
    kernel: int
    expand: int
    se: bool = False

    def encode(self) -> str:
        return f"c{self.width}d{self.depth}k{self.kernel}e{self.expand}" + ("se" if self.se else "")


@dataclasses.dataclass(frozen=True)
class TransformerStage:
    """A strided 3×3 conv + BN (patch merging) then ``depth`` pre-norm blocks of ``width/16`` heads."""

    width: int
    depth: int
    mlp_ratio: int
    stride: int

    def encode(self) -> str:
        return f"t{self.width}d{self.depth}m{self.mlp_ratio}s{self.stride}"


_CONV_TOKEN = re.compile(r"c(\d+)d(\d+)k(\d+)e(\d+)(se)?")
_TRANSFORMER_TOKEN = re.compile(r"t(\d+)d(\d+)m(\d+)s(\d+)")


@dataclasses.dataclass(frozen=True)
class ElasticViTLikeArch:
    """An ElasticViT-like hybrid, encoded as ``_``-joined tokens:
    ``stem<W>`` (3×3/2 conv + one depthwise-separable block), then conv stages
    ``c<W>d<D>k<K>e<E>[se]``, then transformer stages ``t<W>d<D>m<MLP ratio>s<stride>``.
    Conv widths are multiples of 8, transformer widths multiples of 16 (heads = width / 16).
    Example: ``stem16_c24d2k3e4_c40d3k5e6se_t96d2m3s2_t160d3m4s2``.
    """

    stem_width: int
    conv_stages: tuple[ConvStage, ...]
    transformer_stages: tuple[TransformerStage, ...]

    def encode(self) -> str:
        stages = [stage.encode() for stage in (*self.conv_stages, *self.transformer_stages)]
        return "_".join([f"stem{self.stem_width}", *stages])

    @classmethod
    def decode(cls, text: str) -> ElasticViTLikeArch:
        stem, *tokens = text.split("_")
        stem_match = re.fullmatch(r"stem(\d+)", stem)
        if not stem_match or int(stem_match[1]) % 8 or int(stem_match[1]) == 0:
            raise ValueError(f"first token {stem!r} of {text!r} should be stem<W> with W a positive multiple of 8")
        conv_stages: list[ConvStage] = []
        transformer_stages: list[TransformerStage] = []
        for token in tokens:
            conv, transformer = _CONV_TOKEN.fullmatch(token), _TRANSFORMER_TOKEN.fullmatch(token)
            if conv and not transformer_stages:
                width, depth, kernel, expand = map(int, conv.groups()[:4])
                if width % 8 or not width or not depth or kernel % 2 == 0 or not expand:
                    raise ValueError(f"conv stage {token!r} of {text!r}: expected a width multiple of 8, "
                                     "depth >= 1, odd kernel, expand >= 1")
                conv_stages.append(ConvStage(width, depth, kernel, expand, conv[5] is not None))
            elif transformer:
                width, depth, mlp_ratio, stride = map(int, transformer.groups())
                if width % 16 or not width or not depth or not mlp_ratio or stride not in (1, 2):
                    raise ValueError(f"transformer stage {token!r} of {text!r}: expected a width multiple "
                                     "of 16, depth >= 1, mlp ratio >= 1, stride 1 or 2")
                transformer_stages.append(TransformerStage(width, depth, mlp_ratio, stride))
            else:
                raise ValueError(f"token {token!r} of {text!r} is not c<W>d<D>k<K>e<E>[se] or t<W>d<D>m<M>s<S>"
                                 " (conv stages come before transformer stages)")
        if not conv_stages or not transformer_stages:
            raise ValueError(f"{text!r} needs at least one conv stage and one transformer stage")
        return cls(int(stem_match[1]), tuple(conv_stages), tuple(transformer_stages))


class _Attention(nn.Module):
    """Standard multi-head self-attention with explicit matmul + softmax (export-friendly)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attention = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.proj((attention @ v).transpose(1, 2).reshape(batch, tokens, dim))


class _TransformerBlock(nn.Module):
    def __init__(self, dim: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, dim // 16)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _TransformerStageModule(nn.Module):
    def __init__(self, in_chs: int, stage: TransformerStage) -> None:
        super().__init__()
        self.merge = nn.Sequential(
            nn.Conv2d(in_chs, stage.width, 3, stage.stride, 1, bias=False), nn.BatchNorm2d(stage.width)
        )
        self.blocks = nn.Sequential(*[_TransformerBlock(stage.width, stage.mlp_ratio) for _ in range(stage.depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.merge(x)
        batch, channels, height, width = x.shape
        tokens = self.blocks(x.flatten(2).transpose(1, 2))
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)


class ElasticViTLike(nn.Module):
    """The network an :class:`ElasticViTLikeArch` denotes; head = LayerNorm, token mean, Linear."""

    def __init__(self, arch: ElasticViTLikeArch, num_classes: int = 1000) -> None:
        super().__init__()
        act = nn.Hardswish
        self.stem = nn.Sequential(
            nn.Conv2d(3, arch.stem_width, 3, 2, 1, bias=False), nn.BatchNorm2d(arch.stem_width), act(),
            DepthwiseSeparableConv(arch.stem_width, arch.stem_width, 3, act_layer=act),
        )
        layers: list[nn.Module] = []
        in_chs = arch.stem_width
        for stage in arch.conv_stages:
            se_layer = partial(SqueezeExcite, rd_ratio=0.25) if stage.se else None
            for index in range(stage.depth):
                layers.append(InvertedResidual(
                    in_chs, stage.width, dw_kernel_size=stage.kernel, stride=2 if index == 0 else 1,
                    exp_ratio=float(stage.expand), act_layer=act, se_layer=se_layer,
                ))
                in_chs = stage.width
        for stage in arch.transformer_stages:
            layers.append(_TransformerStageModule(in_chs, stage))
            in_chs = stage.width
        self.stages = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(in_chs)
        self.head = nn.Linear(in_chs, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(self.norm(x.flatten(2).transpose(1, 2)).mean(dim=1))


ELASTICVIT_RESOLUTIONS = (128, 160, 192, 224, 256)
_CONV_WIDTH_WINDOWS = (range(16, 33, 8), range(16, 49, 8), range(32, 65, 8))
_TRANSFORMER_WIDTH_WINDOWS = (range(64, 129, 16), range(96, 193, 16), range(160, 321, 16))


@register_family("elasticvit-like")
class ElasticViTLikeFamily(ArchFamily):
    """Stand-in for ElasticViT's space: 2–3 MBConv stages (k 3/5, expand 1–6), 2–3 transformer
    stages (depth 1–5, width 64–320, MLP ratio 2–4), non-decreasing widths, total stride 32."""

    def validate(self, description: str) -> None:
        ElasticViTLikeArch.decode(description)

    def build(self, description: str, num_classes: int) -> nn.Module:
        return ElasticViTLike(ElasticViTLikeArch.decode(description), num_classes)

    def sample_one(self, rng: random.Random) -> ArchSpec:
        width = stem_width = rng.choice((16, 24))
        conv_stages = []
        for window in _CONV_WIDTH_WINDOWS[: rng.choice((2, 3))]:
            width = max(width, rng.choice(window))
            conv_stages.append(ConvStage(width, rng.randint(1, 4), rng.choice((3, 5)), rng.randint(1, 6),
                                         rng.random() < 0.5))
        downsamples = 1 + len(conv_stages)  # the stem and each conv stage halve the resolution
        transformer_stages = []
        for window in _TRANSFORMER_WIDTH_WINDOWS[: rng.choice((2, 3))]:
            width = max(width, rng.choice(window))
            stride = 2 if downsamples < 5 or not transformer_stages else 1
            downsamples += stride == 2
            transformer_stages.append(TransformerStage(width, rng.randint(1, 5), rng.randint(2, 4), stride))
        arch = ElasticViTLikeArch(stem_width, tuple(conv_stages), tuple(transformer_stages))
        return self.make_spec(arch.encode(), rng.choice(ELASTICVIT_RESOLUTIONS))
