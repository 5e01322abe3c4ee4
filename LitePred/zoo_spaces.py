"""The built-in architecture families of LitePred's model zoo (see :mod:`moonlit.litepred.zoo`).

- ``timm-mobile``: the named timm mobile models (MobileNetV2/V3, EfficientNet, MnasNet, FBNet,
  GhostNet, LeViT, MobileViT), random weights, all held out for evaluation.
- ``spaceevo-like``: a *stand-in* for SpaceEvo's mobilew hyperspace (ICCV'23, §3; see
  ``shared/papers/SpaceEvo.md``) until ``moonlit.spaceevo`` exists: per stage a random block type
  and width window, per layer random kernel/expansion, built with timm's EfficientNet builder.
- ``elasticvit-like``: a *stand-in* for ElasticViT's hybrid space (ICCV'23, §3.1): MBConv stages
  followed by plain pre-norm transformer stages (matmul + softmax attention, LayerNorm, GELU).
- ``resnet-like``: ResNet-18/34-style basic-block nets of random widths and depths.

Each family's description grammar is documented on its arch class; ``decode(encode(a)) == a``
and bad strings raise ``ValueError`` naming the bad token.
"""

from __future__ import annotations

import dataclasses
import random
import re
from functools import partial

import timm
import torch
from timm.layers import get_act_layer
from timm.models._efficientnet_blocks import (
    DepthwiseSeparableConv,
    InvertedResidual,
    SqueezeExcite,
)
from timm.models._efficientnet_builder import decode_arch_def
from timm.models.efficientnet import EfficientNet
from torch import nn

from moonlit.litepred.zoo import ArchFamily, ArchSpec, register_family

__all__ = [
    "ELASTICVIT_RESOLUTIONS",
    "MOBILEW_STAGES",
    "RESNET_RESOLUTIONS",
    "SPACEEVO_RESOLUTIONS",
    "TIMM_MOBILE_MODELS",
    "ConvStage",
    "ElasticViTLike",
    "ElasticViTLikeArch",
    "ResNetLike",
    "ResNetLikeArch",
    "SpaceEvoLikeArch",
    "TransformerStage",
]

# ---------------------------------------------------------------------------------- timm-mobile
# Present in timm 1.0.3 and 1.0.31, all export to ONNX opset 17 (tests/litepred/test_zoo.py).
TIMM_MOBILE_MODELS: tuple[str, ...] = (
    "mobilenetv2_050", "mobilenetv2_100", "mobilenetv2_140", "mobilenetv3_small_100",
    "mobilenetv3_large_075", "mobilenetv3_large_100", "efficientnet_b0", "efficientnet_b1",
    "efficientnet_lite0", "mnasnet_100", "fbnetc_100", "ghostnet_100", "levit_128s", "levit_128",
    "mobilevit_xxs", "mobilevit_xs",
)
# Extra resolutions for fully convolutional models (LeViT's attention biases fix it at 224).
_TIMM_EXTRA_RESOLUTIONS: dict[str, tuple[int, ...]] = {
    "mobilenetv2_100": (160, 192), "mobilenetv3_large_100": (160, 192),
    "mobilenetv3_small_100": (160,), "efficientnet_b0": (192,), "mnasnet_100": (192,),
}


@register_family("timm-mobile")
class TimmMobile(ArchFamily):
    """Fixed timm models (``timm.create_model(name, pretrained=False)``); description = model name."""

    heldout_only = True

    def validate(self, description: str) -> None:
        if not timm.is_model(description):
            raise ValueError(f"{description!r} is not a timm model name (timm {timm.__version__})")

    def label(self, description: str) -> str:
        return description

    def build(self, description: str, num_classes: int) -> nn.Module:
        self.validate(description)
        return timm.create_model(description, pretrained=False, num_classes=num_classes)

    def fixed_specs(self) -> list[ArchSpec]:
        return [self.make_spec(model, resolution) for model in TIMM_MOBILE_MODELS
                for resolution in (224, *_TIMM_EXTRA_RESOLUTIONS.get(model, ()))]


# -------------------------------------------------------------------------------- spaceevo-like
_ACTIVATIONS = {"re": "relu", "r6": "relu6", "hs": "hard_swish", "sw": "swish"}
_BLOCK_OPTION = re.compile(r"(?P<key>se|[rksce])(?P<value>\d*\.?\d+)|n(?P<act>re|r6|hs|sw)|(?P<flag>skip|noskip)")
_REQUIRED_KEYS = {"ir": {"r", "k", "s", "e", "c"}, "er": {"r", "k", "s", "e", "c"}, "ds": {"r", "k", "s", "c"},
                  "cn": {"r", "k", "s", "c"}}
_OPTIONAL_KEYS = {"ir": {"se", "n", "skip", "noskip"}, "er": {"se", "n", "skip", "noskip"},
                  "ds": {"se", "n", "skip", "noskip"}, "cn": {"n", "skip", "noskip"}}


def _check_block(block: str, where: str) -> None:
    """Validate one timm block string (``ir_r2_k5_s2_e6_c32_se0.25_nsw``) of our subset."""
    block_type, *options = block.split("_")
    if block_type not in _REQUIRED_KEYS:
        raise ValueError(f"block type {block_type!r} in {where} is not one of {sorted(_REQUIRED_KEYS)}")
    values: dict[str, str] = {}
    for option in options:
        match = _BLOCK_OPTION.fullmatch(option)
        key = match and (match["key"] or ("n" if match["act"] else match["flag"]))
        if not key or key in values:
            raise ValueError(f"option {option!r} of block {block!r} in {where} is repeated or not one of r<n>, "
                             "k<n>, s<n>, e<x>, c<n>, se<x>, n<re|r6|hs|sw>, skip, noskip")
        values[key] = match["value"] or ""
    missing = _REQUIRED_KEYS[block_type] - set(values)
    extra = set(values) - _REQUIRED_KEYS[block_type] - _OPTIONAL_KEYS[block_type]
    if missing or extra:
        raise ValueError(f"block {block!r} in {where} misses options {sorted(missing)} / has options "
                         f"{sorted(extra)} a {block_type!r} block does not take")
    if not all(values[key].isdigit() for key in ("r", "k", "s", "c")):
        raise ValueError(f"block {block!r} in {where}: r, k, s and c must be integers")
    if int(values["r"]) < 1 or int(values["s"]) not in (1, 2) or int(values["k"]) % 2 == 0:
        raise ValueError(f"block {block!r} in {where}: expected r >= 1, s in (1, 2) and an odd k")
    if int(values["c"]) % 8 or int(values["c"]) == 0:
        # timm rounds widths to multiples of 8; other widths would build a different net.
        raise ValueError(f"width c{values['c']} of block {block!r} in {where} is not a positive multiple of 8")
    if "e" in values and not float(values["e"]) > 0 or "se" in values and not 0 < float(values["se"]) <= 1:
        raise ValueError(f"block {block!r} in {where}: expected e > 0 and 0 < se <= 1")


@dataclasses.dataclass(frozen=True)
class SpaceEvoLikeArch:
    """A SpaceEvo-like (mobilew stand-in) network, encoded as

    ``stem<W>_n<act>/<stage>/.../<stage>/head<F>`` where a stage is one or more timm block strings
    joined by ``+`` (grammar of timm's ``_decode_block_str``, types ir/er/ds/cn), ``<act>`` the
    model default activation (re, r6, hs, sw) and ``<F>`` the width of the 1×1 head conv.
    Example (timm's mobilenetv2_100): ``stem32_nr6/ds_r1_k3_s1_c16/ir_r2_k3_s2_e6_c24/…/head1280``.
    """

    stem_width: int
    act: str
    stages: tuple[tuple[str, ...], ...]
    head_width: int

    def encode(self) -> str:
        stages = "/".join("+".join(blocks) for blocks in self.stages)
        return f"stem{self.stem_width}_n{self.act}/{stages}/head{self.head_width}"

    @classmethod
    def decode(cls, text: str) -> SpaceEvoLikeArch:
        tokens = text.split("/")
        stem = re.fullmatch(r"stem(\d+)_n(re|r6|hs|sw)", tokens[0])
        if not stem or int(stem[1]) == 0:
            raise ValueError(f"stem token {tokens[0]!r} of {text!r} should be stem<W>_n<re|r6|hs|sw>")
        head = re.fullmatch(r"head(\d+)", tokens[-1])
        if not head or int(head[1]) == 0:
            raise ValueError(f"last token {tokens[-1]!r} of {text!r} should be head<F>")
        stages = tuple(tuple(token.split("+")) for token in tokens[1:-1])
        if len(tokens) < 3:
            raise ValueError(f"{text!r} has no stages; expected 'stem<W>_n<act>/<stage>/.../head<F>'")
        for index, blocks in enumerate(stages):
            for block in blocks:
                _check_block(block, f"stage {index} of {text!r}")
        return cls(int(stem[1]), stem[2], stages, int(head[1]))

    def build(self, num_classes: int = 1000) -> nn.Module:
        block_args = decode_arch_def([list(blocks) for blocks in self.stages])
        return EfficientNet(
            block_args, num_classes=num_classes, num_features=self.head_width, stem_size=self.stem_width,
            fix_stem=True, act_layer=get_act_layer(_ACTIVATIONS[self.act]),
        )


# SpaceEvo's mobilew hyperspace, stages 1–6: (stride, width list, window size, max depth).
# Depths are 1–4 (the paper: 2–8, stage 6 1–2) to keep whole-model profiling cheap.
MOBILEW_STAGES = (
    (2, tuple(range(24, 41, 8)), 2, 4),
    (2, tuple(range(24, 73, 8)), 2, 4),
    (2, tuple(range(56, 113, 8)), 3, 4),
    (1, tuple(range(112, 177, 8)), 3, 4),
    (2, (192, 200, 208, 216, 224, 240, 256, 272, 288), 5, 4),
    (1, tuple(range(216, 361, 16)), 7, 2),
)
SPACEEVO_RESOLUTIONS = (160, 176, 192, 208, 224)
# Fused (er) blocks only in stages 1–4, as EfficientNetV2 places them: at stage 5–6 widths
# a k5 e4 fused block alone costs ~0.4 GMACs.
_BLOCK_TYPES_BY_STAGE = [("mbv2", "mbv3", "fused", "resnet", "ds")] * 4 + [("mbv2", "mbv3", "resnet", "ds")] * 2


def _merge_repeats(blocks: list[str]) -> list[str]:
    """['ir_k3_s1_c32', 'ir_k3_s1_c32'] -> ['ir_r2_k3_s1_c32'] (consecutive equal blocks)."""
    merged: list[list] = []  # [block, count] pairs
    for block in blocks:
        if merged and merged[-1][0] == block:
            merged[-1][1] += 1
        else:
            merged.append([block, 1])
    return [block.replace("_", f"_r{count}_", 1) for block, count in merged]


def _sample_spaceevo_stage(rng: random.Random, block_type: str, stride: int, width: int, depth: int) -> list[str]:
    act = rng.choice(("hs", "sw"))
    fused_se = rng.random() < 0.5
    blocks = []
    for layer in range(2 * depth if block_type in ("resnet", "ds") else depth):
        s = stride if layer == 0 else 1
        if block_type == "mbv2":
            blocks.append(f"ir_k{rng.choice((3, 5, 7))}_s{s}_e{rng.choice((3, 4, 6, 8))}_c{width}_nre")
        elif block_type == "mbv3":
            blocks.append(f"ir_k{rng.choice((3, 5, 7))}_s{s}_e{rng.choice((3, 4, 6, 8))}_c{width}_se0.25_n{act}")
        elif block_type == "fused":
            se = "_se0.25" if fused_se else ""
            blocks.append(f"er_k{rng.choice((3, 5))}_s{s}_e{rng.choice((1, 2, 3, 4))}_c{width}{se}_nsw")
        elif block_type == "resnet":  # ResNet-style: pairs of k×k conv-bn-act, residual where shapes allow
            blocks.append(f"cn_k{rng.choice((3, 5))}_s{s}_c{width}_nre_skip")
        else:  # MobileNetV1-style depthwise-separable pairs
            blocks.append(f"ds_k{rng.choice((3, 5, 7))}_s{s}_c{width}_nre")
    return _merge_repeats(blocks)


@register_family("spaceevo-like")
class SpaceEvoLike(ArchFamily):
    """Stand-in for SpaceEvo's mobilew hyperspace: a random space (block type + width window per
    stage) and a random subnet in it (width, depth, per-layer kernel/expansion), one draw each."""

    def validate(self, description: str) -> None:
        SpaceEvoLikeArch.decode(description)

    def build(self, description: str, num_classes: int) -> nn.Module:
        return SpaceEvoLikeArch.decode(description).build(num_classes)

    def sample_one(self, rng: random.Random) -> ArchSpec:
        stem_width = rng.choice((16, 24, 32))
        stages = [(f"ds_r{rng.choice((1, 2))}_k3_s1_c{rng.choice((16, 24, 32))}",)]  # stage0: MBv2 e1 k3
        for (stride, widths, window, max_depth), types in zip(MOBILEW_STAGES, _BLOCK_TYPES_BY_STAGE):
            start = rng.randrange(len(widths) - window + 1)
            width = rng.choice(widths[start:start + window])
            depth = rng.randint(1, max_depth)
            stages.append(tuple(_sample_spaceevo_stage(rng, rng.choice(types), stride, width, depth)))
        arch = SpaceEvoLikeArch(stem_width, rng.choice(("re", "hs", "sw")), tuple(stages), 1280)
        return self.make_spec(arch.encode(), rng.choice(SPACEEVO_RESOLUTIONS))


# ------------------------------------------------------------------------------ elasticvit-like
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


# ---------------------------------------------------------------------------------- resnet-like
@dataclasses.dataclass(frozen=True)
class ResNetLikeArch:
    """A basic-block ResNet, encoded as ``stem<W>_<width>x<depth>_…`` (7×7/2 stem conv + max-pool,
    then stages strided 1, 2, 2, …). ``stem64_64x2_128x2_256x2_512x2`` is ResNet-18."""

    stem_width: int
    stages: tuple[tuple[int, int], ...]

    def encode(self) -> str:
        return "_".join([f"stem{self.stem_width}", *(f"{width}x{depth}" for width, depth in self.stages)])

    @classmethod
    def decode(cls, text: str) -> ResNetLikeArch:
        stem, *tokens = text.split("_")
        stem_match = re.fullmatch(r"stem([1-9]\d*)", stem)
        if not stem_match:
            raise ValueError(f"first token {stem!r} of {text!r} should be stem<W> with W >= 1")
        stages = []
        for token in tokens:
            match = re.fullmatch(r"([1-9]\d*)x([1-9]\d*)", token)
            if not match:
                raise ValueError(f"stage token {token!r} of {text!r} should be <width>x<depth>, both >= 1")
            stages.append((int(match[1]), int(match[2])))
        if not stages:
            raise ValueError(f"{text!r} has no stages; expected stem<W>_<width>x<depth>_...")
        return cls(int(stem_match[1]), tuple(stages))


class _BasicBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), nn.BatchNorm2d(out_chs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(x)) + shortcut)


class ResNetLike(nn.Module):
    """The network a :class:`ResNetLikeArch` denotes (torchvision's ResNet layout, basic blocks)."""

    def __init__(self, arch: ResNetLikeArch, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, arch.stem_width, 7, 2, 3, bias=False), nn.BatchNorm2d(arch.stem_width),
            nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
        )
        blocks, in_chs = [], arch.stem_width
        for index, (width, depth) in enumerate(arch.stages):
            for layer in range(depth):
                blocks.append(_BasicBlock(in_chs, width, 2 if index > 0 and layer == 0 else 1))
                in_chs = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_chs, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


RESNET_RESOLUTIONS = (160, 192, 224)
# Per stage (width choices, max depth): around ResNet-18/34's (64, 128, 256, 512) × (3, 4, 6, 3).
_RESNET_STAGES = ((range(32, 97, 16), 3), (range(64, 193, 16), 4), (range(128, 385, 32), 6), (range(256, 641, 64), 3))


@register_family("resnet-like")
class ResNetLikeFamily(ArchFamily):
    """ResNet-18/34-style nets: stem 32–64, four basic-block stages of random width and depth."""

    def validate(self, description: str) -> None:
        ResNetLikeArch.decode(description)

    def build(self, description: str, num_classes: int) -> nn.Module:
        return ResNetLike(ResNetLikeArch.decode(description), num_classes)

    def sample_one(self, rng: random.Random) -> ArchSpec:
        stages, width = [], 0
        for widths, max_depth in _RESNET_STAGES:
            width = max(width, rng.choice(widths))
            stages.append((width, rng.randint(1, max_depth)))
        arch = ResNetLikeArch(rng.choice((32, 48, 64)), tuple(stages))
        return self.make_spec(arch.encode(), rng.choice(RESNET_RESOLUTIONS))
