"""The ``resnet-like`` family of LitePred's model zoo: ResNet-18/34-style basic-block nets.

Basic-block nets of random widths and depths around ResNet-18/34's; in the default training mix
(:data:`moonlit.litepred.zoo.DEFAULT_FAMILY_WEIGHTS`) they cover the conv-heavy end. The
description grammar is documented on :class:`ResNetLikeArch`; ``decode(encode(a)) == a`` and bad
strings raise ``ValueError`` naming the bad token.
"""

from __future__ import annotations

import dataclasses
import random
import re

import torch
from torch import nn

from moonlit.litepred.zoo import ArchFamily, ArchSpec, register_family

__all__ = ["RESNET_RESOLUTIONS", "ResNetLike", "ResNetLikeArch"]


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
