"""The ``spaceevo-like`` family of LitePred's model zoo: a stand-in for SpaceEvo's mobilew hyperspace.

A *stand-in* for SpaceEvo's mobilew hyperspace (ICCV'23, §3; see ``shared/papers/SpaceEvo.md``)
that needs no paper package (the real spaces plug in as the ``spaceevo`` family): per stage a random
block type and width window, per layer random kernel/expansion, built with timm's EfficientNet builder.
The description grammar is documented on :class:`SpaceEvoLikeArch`; ``decode(encode(a)) == a`` and
bad strings raise ``ValueError`` naming the bad token.
"""

from __future__ import annotations

import dataclasses
import random
import re

from timm.layers import get_act_layer
from timm.models._efficientnet_builder import decode_arch_def
from timm.models.efficientnet import EfficientNet
from torch import nn

from moonlit.litepred.zoo import ArchFamily, ArchSpec, register_family

__all__ = ["MOBILEW_STAGES", "SPACEEVO_RESOLUTIONS", "SpaceEvoLikeArch"]

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
