"""Dynamic building blocks of SpaceEvo's hyperspaces (SpaceEvo §3.1 "hyperspace", §3.3).

One elastic block class per block type, each with the elastic-op contract
(:class:`moonlit.common.nn.elastic.ElasticModule`): weights at the largest (width, kernel, expand)
choice, ``set_active(out_channels=, kernel_size=, expand_ratio=)``, slicing in ``forward`` (input
channels follow the input; each block sets its ops' active widths from its choice and the input
width), and ``get_active_subnet(in_channels)`` -> a :class:`StaticBlock` whose output equals the
supernet block's (FP32 and LSQ+ quantized).

Channel arithmetic (from the reference; ``md`` = :func:`make_divisible` to 8):

==========================  ===========================================  ==========================
block                        hidden width                                 SE middle width
==========================  ===========================================  ==========================
MobileNetV2/V3(K3)Res        md(in * expand); 1x1 expand skipped if = in  md(hidden // 4)
ResNet / ResNetSE            md(expand * width)  (expand 0.5, 1, 1.5)     md(in // 4)
FusedMBConv(SE)Res           md(in * expand)                              md(in // 4)
==========================  ===========================================  ==========================

Residuals: "Res" types, MobileNetV1Dual and ResNet always add one — the input itself when shapes
match (stride 1, in == width), otherwise a strided 1x1 conv + BN (``downsample``); plain
MobileNetV2 (mobilew stage 0) adds one only when shapes match; ResNet applies its activation
after the sum. Sub-module names follow the reference (``point_conv1``, ``depth_conv.dwconv``,
``se.fc.reduce``, ``conv1``..``conv3``, ``fused_conv``, ``downsample``). The hyperspaces' block
specs and the elastic stage are in :mod:`moonlit.spaceevo.ops.stages`.
"""

from __future__ import annotations

import itertools
import random
from collections import OrderedDict
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

from torch import Tensor, nn

from moonlit.common.nn.elastic import ElasticModule
from moonlit.spaceevo.ops.dynamic import (
    DynamicConvBnAct,
    DynamicSqueezeExcite,
    make_activation,
    make_divisible,
)

__all__ = [
    "BlockChoice", "StaticBlock", "DynamicBlock",
    "DynamicMobileNetV1DualBlock", "DynamicMobileNetV2Block", "DynamicMobileNetV2ResBlock",
    "DynamicMobileNetV3ResBlock", "DynamicMobileNetV2K3ResBlock", "DynamicMobileNetV3K3ResBlock",
    "DynamicResNetBlock", "DynamicResNetSEBlock", "DynamicFusedMBConvResBlock",
    "DynamicFusedMBConvSEResBlock", "BLOCK_CLASSES",
]


class BlockChoice(NamedTuple):
    width: int
    kernel: int
    expand: float | None = None


class StaticBlock(nn.Module):
    """A block extracted from a supernet: body layers in order, optional shortcut, optional post-activation."""

    def __init__(self, layers: OrderedDict[str, nn.Module], out_channels: int, residual: bool,
                 downsample: nn.Module | None = None, activation: nn.Module | None = None) -> None:
        super().__init__()
        self.body_names = list(layers)
        for name, layer in layers.items():
            self.add_module(name, layer)
        self.out_channels = out_channels
        self.residual = residual
        self.downsample = downsample
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        shortcut = (self.downsample(x) if self.downsample is not None else x) if self.residual else None
        for name in self.body_names:
            x = getattr(self, name)(x)
        if shortcut is not None:
            x = x + shortcut
        return self.activation(x) if self.activation is not None else x


class DynamicBlock(ElasticModule):
    """Common state of the elastic blocks: choice lists, ``active_*`` and validation."""

    name: ClassVar[str]
    uses_expand: ClassVar[bool] = True
    always_residual: ClassVar[bool] = True
    active_choices = ("out_channels", "kernel_size", "expand_ratio")

    def __init__(self, in_channels: int, width_list: Sequence[int], kernel_list: Sequence[int],
                 expand_list: Sequence[float] | None = None, stride: int = 1, activation: str = "relu") -> None:
        super().__init__()
        if in_channels < 1 or not width_list or any(int(w) != w or w < 1 for w in width_list):
            raise ValueError(f"{self.name}: in_channels {in_channels} / width list {list(width_list)} must be "
                             "positive integers (non-empty list)")
        if stride not in (1, 2):
            raise ValueError(f"{self.name}: stride {stride} is not 1 or 2")
        if self.uses_expand != bool(expand_list):
            expected = "a non-empty expand list" if self.uses_expand else "no expand list"
            raise ValueError(f"{self.name}: got expand list {expand_list!r}, expected {expected}")
        self.in_channels = in_channels
        self.width_list = tuple(int(w) for w in width_list)
        self.kernel_list = tuple(int(k) for k in kernel_list)
        self.expand_list = tuple(expand_list) if expand_list else None
        self.stride = stride
        self.activation_name = activation
        self.active_out_channels = max(self.width_list)
        self.active_kernel_size = max(self.kernel_list)
        self.active_expand_ratio = max(self.expand_list) if self.expand_list else None

    @property
    def max_width(self) -> int:
        return max(self.width_list)

    @property
    def active_choice(self) -> BlockChoice:
        return BlockChoice(self.active_out_channels, self.active_kernel_size, self.active_expand_ratio)

    def set_active(self, *, out_channels: int | None = None, kernel_size: int | None = None,
                   expand_ratio: float | None = None) -> None:
        """Select a sub-block; None keeps the current value."""
        if out_channels is not None and out_channels not in self.width_list:
            raise ValueError(f"{self.name}: width {out_channels} is not in the width list {list(self.width_list)}")
        if kernel_size is not None and kernel_size not in self.kernel_list:
            raise ValueError(f"{self.name}: kernel {kernel_size} is not in the kernel list {list(self.kernel_list)}")
        if expand_ratio is not None and (self.expand_list is None or expand_ratio not in self.expand_list):
            raise ValueError(f"{self.name}: expand ratio {expand_ratio} is not in {self.expand_list}")
        if out_channels is not None:
            self.active_out_channels = int(out_channels)
        if kernel_size is not None:
            self.active_kernel_size = int(kernel_size)
            self._set_kernel(self.active_kernel_size)
        if expand_ratio is not None:
            self.active_expand_ratio = expand_ratio

    def set_choice(self, choice: BlockChoice) -> None:
        self.set_active(out_channels=choice.width, kernel_size=choice.kernel, expand_ratio=choice.expand)

    def choices(self) -> list[BlockChoice]:
        """Every (width, kernel, expand) of this block."""
        expands = self.expand_list or (None,)
        return [BlockChoice(*c) for c in itertools.product(self.width_list, self.kernel_list, expands)]

    def sample_active(self, rng: random.Random) -> BlockChoice:
        choice = BlockChoice(rng.choice(self.width_list), rng.choice(self.kernel_list),
                             rng.choice(self.expand_list) if self.expand_list else None)
        self.set_choice(choice)
        return choice

    def set_max(self) -> None:
        self.set_choice(BlockChoice(max(self.width_list), max(self.kernel_list), max(self.expand_list or (None,))))

    def set_min(self) -> None:
        self.set_choice(BlockChoice(min(self.width_list), min(self.kernel_list), min(self.expand_list or (None,))))

    def _set_kernel(self, kernel: int) -> None:
        raise NotImplementedError

    def _activate(self, in_channels: int) -> None:
        """Set the ops' active widths from the block's choice and an input of ``in_channels`` channels."""
        self._check_input(in_channels)
        if self.always_residual and not self._identity_shortcut(in_channels):
            self.downsample.set_active(out_channels=self.active_out_channels)

    def _identity_shortcut(self, in_channels: int) -> bool:
        return self.stride == 1 and in_channels == self.active_out_channels

    def _shortcut(self, x: Tensor) -> Tensor | None:
        if self._identity_shortcut(x.shape[1]):
            return x
        return self.downsample(x) if self.always_residual else None

    def _static(self, in_channels: int, layers: list[tuple[str, nn.Module]],
                activation: nn.Module | None = None) -> StaticBlock:
        identity = self._identity_shortcut(in_channels)
        downsample = None
        if self.always_residual and not identity:
            downsample = self.downsample.get_active_subnet(in_channels)
        return StaticBlock(OrderedDict(layers), self.active_out_channels, identity or self.always_residual,
                           downsample, activation)

    def _check_input(self, in_channels: int) -> None:
        if not 0 < in_channels <= self.in_channels:
            raise ValueError(f"{self.name}: input has {in_channels} channels, expected 1..{self.in_channels}")

    def extra_repr(self) -> str:
        return (f"in={self.in_channels}, widths={list(self.width_list)}, kernels={list(self.kernel_list)}, "
                f"expands={list(self.expand_list or [])}, stride={self.stride}, act={self.activation_name}")


class DynamicMobileNetV1DualBlock(DynamicBlock):
    """Two depthwise-separable convs (dw k -> 1x1 -> dw k -> 1x1, ReLU) plus a residual."""

    name = "MobileNetV1Dual"
    uses_expand = False

    def __init__(self, in_channels: int, width_list: Sequence[int], kernel_list: Sequence[int],
                 expand_list: Sequence[float] | None = None, stride: int = 1, activation: str = "relu") -> None:
        super().__init__(in_channels, width_list, kernel_list, expand_list, stride, activation)
        self.depth_conv1 = DynamicConvBnAct.depthwise(in_channels, self.kernel_list, stride, activation)
        self.point_conv1 = DynamicConvBnAct.pointwise(in_channels, self.max_width, activation)
        self.depth_conv2 = DynamicConvBnAct.depthwise(self.max_width, self.kernel_list, 1, activation)
        self.point_conv2 = DynamicConvBnAct.pointwise(self.max_width, self.max_width, activation)
        self.downsample = DynamicConvBnAct.pointwise(in_channels, self.max_width, None, stride)

    def _set_kernel(self, kernel: int) -> None:
        self.depth_conv1.set_active(kernel_size=kernel)
        self.depth_conv2.set_active(kernel_size=kernel)

    def _activate(self, in_channels: int) -> None:
        super()._activate(in_channels)
        self.point_conv1.set_active(out_channels=self.active_out_channels)
        self.point_conv2.set_active(out_channels=self.active_out_channels)

    def forward(self, x: Tensor) -> Tensor:
        self._activate(x.shape[1])
        shortcut = self._shortcut(x)
        x = self.point_conv1(self.depth_conv1(x))
        x = self.point_conv2(self.depth_conv2(x))
        return x + shortcut

    def get_active_subnet(self, in_channels: int | None = None) -> StaticBlock:
        cin = self.in_channels if in_channels is None else in_channels
        self._activate(cin)
        width = self.active_out_channels
        return self._static(cin, [
            ("depth_conv1", self.depth_conv1.get_active_subnet(cin)),
            ("point_conv1", self.point_conv1.get_active_subnet(cin)),
            ("depth_conv2", self.depth_conv2.get_active_subnet(width)),
            ("point_conv2", self.point_conv2.get_active_subnet(width)),
        ])


class _DynamicInvertedResidual(DynamicBlock):
    """MobileNetV2/V3: 1x1 expand -> depthwise k (optionally stacked 3x3) -> [SE] -> 1x1 project."""

    use_se: ClassVar[bool] = False
    stacked_depthwise: ClassVar[bool] = False

    def __init__(self, in_channels: int, width_list: Sequence[int], kernel_list: Sequence[int],
                 expand_list: Sequence[float] | None = None, stride: int = 1, activation: str = "relu") -> None:
        super().__init__(in_channels, width_list, kernel_list, expand_list, stride, activation)
        max_hidden = make_divisible(in_channels * max(self.expand_list))
        self.point_conv1 = DynamicConvBnAct.pointwise(in_channels, max_hidden, activation)
        self.depth_conv = DynamicConvBnAct.depthwise(max_hidden, self.kernel_list, stride, activation,
                                                     stacked=self.stacked_depthwise)
        if self.use_se:
            self.se = DynamicSqueezeExcite(max_hidden, make_divisible(max_hidden // 4))
        self.point_conv2 = DynamicConvBnAct.pointwise(max_hidden, self.max_width, None)
        if self.always_residual:
            self.downsample = DynamicConvBnAct.pointwise(in_channels, self.max_width, None, stride)

    def hidden_channels(self, in_channels: int) -> int:
        return make_divisible(in_channels * self.active_expand_ratio)

    def _set_kernel(self, kernel: int) -> None:
        self.depth_conv.set_active(kernel_size=kernel)

    def _activate(self, in_channels: int) -> None:
        super()._activate(in_channels)
        hidden = self.hidden_channels(in_channels)
        if hidden != in_channels:
            self.point_conv1.set_active(out_channels=hidden)
        if self.use_se:
            self.se.set_active(mid_channels=make_divisible(hidden // 4))
        self.point_conv2.set_active(out_channels=self.active_out_channels)

    def forward(self, x: Tensor) -> Tensor:
        in_channels = x.shape[1]
        self._activate(in_channels)
        shortcut = self._shortcut(x)
        if self.hidden_channels(in_channels) != in_channels:
            x = self.point_conv1(x)
        x = self.depth_conv(x)
        if self.use_se:
            x = self.se(x)
        x = self.point_conv2(x)
        return x if shortcut is None else x + shortcut

    def get_active_subnet(self, in_channels: int | None = None) -> StaticBlock:
        cin = self.in_channels if in_channels is None else in_channels
        self._activate(cin)
        hidden = self.hidden_channels(cin)
        layers: list[tuple[str, nn.Module]] = []
        if hidden != cin:
            layers.append(("point_conv1", self.point_conv1.get_active_subnet(cin)))
        layers.append(("depth_conv", self.depth_conv.get_active_subnet(hidden)))
        if self.use_se:
            layers.append(("se", self.se.get_active_subnet(hidden)))
        layers.append(("point_conv2", self.point_conv2.get_active_subnet(hidden)))
        return self._static(cin, layers)


class DynamicMobileNetV2Block(_DynamicInvertedResidual):
    name = "MobileNetV2"
    always_residual = False


class DynamicMobileNetV2ResBlock(_DynamicInvertedResidual):
    name = "MobileNetV2Res"


class DynamicMobileNetV3ResBlock(_DynamicInvertedResidual):
    name = "MobileNetV3Res"
    use_se = True


class DynamicMobileNetV2K3ResBlock(_DynamicInvertedResidual):
    name = "MobileNetV2K3Res"
    stacked_depthwise = True


class DynamicMobileNetV3K3ResBlock(_DynamicInvertedResidual):
    name = "MobileNetV3K3Res"
    use_se = True
    stacked_depthwise = True


class _DynamicResNetBottleneck(DynamicBlock):
    """ResNet bottleneck: 1x1 -> k x k (strided) -> [SE] -> 1x1, + shortcut, then activation."""

    use_se: ClassVar[bool] = False

    def __init__(self, in_channels: int, width_list: Sequence[int], kernel_list: Sequence[int],
                 expand_list: Sequence[float] | None = None, stride: int = 1, activation: str = "relu") -> None:
        super().__init__(in_channels, width_list, kernel_list, expand_list, stride, activation)
        max_hidden = make_divisible(max(self.expand_list) * self.max_width)
        self.conv1 = DynamicConvBnAct.pointwise(in_channels, max_hidden, activation)
        self.conv2 = DynamicConvBnAct.dense(max_hidden, max_hidden, self.kernel_list, stride, activation)
        if self.use_se:
            self.se = DynamicSqueezeExcite(max_hidden, make_divisible(in_channels // 4))
        self.conv3 = DynamicConvBnAct.pointwise(max_hidden, self.max_width, None)
        self.downsample = DynamicConvBnAct.pointwise(in_channels, self.max_width, None, stride)
        self.activation = make_activation(activation)

    @property
    def hidden_channels(self) -> int:
        # The bottleneck width is a fraction of the *output* width (not of the input).
        return make_divisible(self.active_expand_ratio * self.active_out_channels)

    def _set_kernel(self, kernel: int) -> None:
        self.conv2.set_active(kernel_size=kernel)

    def _activate(self, in_channels: int) -> None:
        super()._activate(in_channels)
        hidden = self.hidden_channels
        self.conv1.set_active(out_channels=hidden)
        self.conv2.set_active(out_channels=hidden)
        if self.use_se:
            self.se.set_active(mid_channels=make_divisible(in_channels // 4))
        self.conv3.set_active(out_channels=self.active_out_channels)

    def forward(self, x: Tensor) -> Tensor:
        self._activate(x.shape[1])
        shortcut = self._shortcut(x)
        x = self.conv2(self.conv1(x))
        if self.use_se:
            x = self.se(x)
        x = self.conv3(x)
        return self.activation(x + shortcut)

    def get_active_subnet(self, in_channels: int | None = None) -> StaticBlock:
        cin = self.in_channels if in_channels is None else in_channels
        self._activate(cin)
        hidden = self.hidden_channels
        layers = [("conv1", self.conv1.get_active_subnet(cin)),
                  ("conv2", self.conv2.get_active_subnet(hidden))]
        if self.use_se:
            layers.append(("se", self.se.get_active_subnet(hidden)))
        layers.append(("conv3", self.conv3.get_active_subnet(hidden)))
        return self._static(cin, layers, make_activation(self.activation_name))


class DynamicResNetBlock(_DynamicResNetBottleneck):
    name = "ResNet"


class DynamicResNetSEBlock(_DynamicResNetBottleneck):
    name = "ResNetSE"
    use_se = True


class _DynamicFusedMBConv(DynamicBlock):
    """EfficientNetV2 FusedMBConv: k x k expand conv (strided) -> [SE] -> 1x1 project, + shortcut."""

    use_se: ClassVar[bool] = False

    def __init__(self, in_channels: int, width_list: Sequence[int], kernel_list: Sequence[int],
                 expand_list: Sequence[float] | None = None, stride: int = 1, activation: str = "relu") -> None:
        super().__init__(in_channels, width_list, kernel_list, expand_list, stride, activation)
        max_hidden = make_divisible(in_channels * max(self.expand_list))
        self.fused_conv = DynamicConvBnAct.dense(in_channels, max_hidden, self.kernel_list, stride, activation)
        if self.use_se:
            self.se = DynamicSqueezeExcite(max_hidden, make_divisible(in_channels // 4))
        self.point_conv = DynamicConvBnAct.pointwise(max_hidden, self.max_width, None)
        self.downsample = DynamicConvBnAct.pointwise(in_channels, self.max_width, None, stride)

    def hidden_channels(self, in_channels: int) -> int:
        return make_divisible(in_channels * self.active_expand_ratio)

    def _set_kernel(self, kernel: int) -> None:
        self.fused_conv.set_active(kernel_size=kernel)

    def _activate(self, in_channels: int) -> None:
        super()._activate(in_channels)
        self.fused_conv.set_active(out_channels=self.hidden_channels(in_channels))
        if self.use_se:
            self.se.set_active(mid_channels=make_divisible(in_channels // 4))
        self.point_conv.set_active(out_channels=self.active_out_channels)

    def forward(self, x: Tensor) -> Tensor:
        self._activate(x.shape[1])
        shortcut = self._shortcut(x)
        x = self.fused_conv(x)
        if self.use_se:
            x = self.se(x)
        return self.point_conv(x) + shortcut

    def get_active_subnet(self, in_channels: int | None = None) -> StaticBlock:
        cin = self.in_channels if in_channels is None else in_channels
        self._activate(cin)
        hidden = self.hidden_channels(cin)
        layers = [("fused_conv", self.fused_conv.get_active_subnet(cin))]
        if self.use_se:
            layers.append(("se", self.se.get_active_subnet(hidden)))
        layers.append(("point_conv", self.point_conv.get_active_subnet(hidden)))
        return self._static(cin, layers)


class DynamicFusedMBConvResBlock(_DynamicFusedMBConv):
    name = "FusedMBConvRes"


class DynamicFusedMBConvSEResBlock(_DynamicFusedMBConv):
    name = "FusedMBConvSERes"
    use_se = True


BLOCK_CLASSES: dict[str, type[DynamicBlock]] = {cls.name: cls for cls in (
    DynamicMobileNetV1DualBlock, DynamicMobileNetV2Block, DynamicMobileNetV2ResBlock,
    DynamicMobileNetV3ResBlock, DynamicMobileNetV2K3ResBlock, DynamicMobileNetV3K3ResBlock,
    DynamicResNetBlock, DynamicResNetSEBlock, DynamicFusedMBConvResBlock, DynamicFusedMBConvSEResBlock,
)}
