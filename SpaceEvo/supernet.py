"""SpaceEvo's weight-sharing supernet of one search space (ICCV'23, arXiv 2303.08308, §3.3 and §4.1).

A search space ``<hyperspace>-<6 block digits>-<6 window digits>`` becomes one supernet::

    first_conv   3x3 conv-BN-act, stride 2, elastic width            (hyperspace fixed block)
    stages       stage0 (the hyperspace's fixed block) and stage1..stage6, each a DynamicStage of
                 the block type its digit names, over the widths of its window
    head         final_expand 1x1 conv-BN-act (1280) -> global mean -> feature_mix 1x1 conv-BN-act
                 (1920) -> dropout -> classifier (1000 classes)

Block types (class, kernels, expands, activation), head sizes and the head activation (hswish for
onnxw, swish for mobilew) come from the hyperspace file, so any file under ``spaces/`` builds; the
structure is the reference's ``Supernet`` with one ``Stage`` per macro stage.
Stage sub-modules keep the reference's names (``stages.stage3.blocks.0.conv1.conv.weight``), so a
released checkpoint maps onto this module with a short key map (:mod:`moonlit.spaceevo.checkpoints`).

The active subnet is a :class:`~moonlit.spaceevo.space.SubnetEncoding`; the input is resized
(bicubic, as the reference) to its resolution when it arrives at another size. Resolutions are
the hyperspace's unless the supernet is built with its own list (CPU smoke runs at 32-64 px).
``get_active_subnet()`` returns a :class:`StaticSubnet` of plain modules whose output equals the
supernet's, in FP32 and in LSQ+ quantized mode (``set_quant_mode``) alike. The supernet follows the
network-level contract of :class:`moonlit.common.nn.elastic.ElasticSupernet` (``set_active``,
``active_subnet``, ``sample_active``, ``set_max``, ``set_min``).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moonlit.common.nn.elastic import ElasticSupernet
from moonlit.spaceevo.ops.blocks import BlockChoice, DynamicBlock
from moonlit.spaceevo.ops.dynamic import DynamicConvBnAct, DynamicLinear
from moonlit.spaceevo.ops.stages import BlockSpec, DynamicStage
from moonlit.spaceevo.space import (
    BlockType,
    SpaceEncoding,
    SubnetEncoding,
    check_subnet,
    max_subnet,
    min_subnet,
    sample_subnet,
    stage_options,
)

__all__ = ["LAST_NORM_OF_RESIDUAL_BODY", "StaticSubnet", "Supernet", "block_spec_of"]

# The BN that closes the body of each always-residual block: its gamma starts at zero, so every
# residual block starts as its shortcut (the reference's ``zero_last_gamma``, Goyal et al. 2017).
# Not MobileNetV1Dual: a ReLU follows its last BN, and ReLU(0) passes no gradient, so a zero gamma
# (with its zero bias) would keep the whole body at zero for ever (the reference does zero it).
LAST_NORM_OF_RESIDUAL_BODY = {
    "MobileNetV2Res": "point_conv2", "MobileNetV3Res": "point_conv2",
    "MobileNetV2K3Res": "point_conv2", "MobileNetV3K3Res": "point_conv2", "ResNet": "conv3", "ResNetSE": "conv3",
    "FusedMBConvRes": "point_conv", "FusedMBConvSERes": "point_conv",
}


def block_spec_of(block_type: BlockType) -> BlockSpec:
    """The dynamic-block recipe of a hyperspace file's block type (its ``type`` names the block class)."""
    return BlockSpec(block_type.type, tuple(block_type.kernels), tuple(block_type.expands) or None,
                     block_type.activation)


def _resize(x: Tensor, resolution: int) -> Tensor:
    if x.shape[-2:] == (resolution, resolution):
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bicubic", align_corners=False)


class StaticSubnet(nn.Module):
    """A subnet extracted from a :class:`Supernet`: plain (LSQ+-quantizable) convs, BNs and a linear."""

    def __init__(self, encoding: SubnetEncoding, first_conv: nn.Module, stages: nn.Sequential,
                 final_expand: nn.Module, feature_mix: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.encoding = encoding
        self.resolution = encoding.resolution
        self.first_conv = first_conv
        self.stages = stages
        self.final_expand = final_expand
        self.feature_mix = feature_mix
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.first_conv(_resize(x, self.resolution)))
        x = self.feature_mix(self.final_expand(x).mean((2, 3), keepdim=True))
        return self.classifier(torch.flatten(x, 1))


class Supernet(ElasticSupernet):
    """The supernet of ``space``; starts with its largest subnet active."""

    def __init__(self, space: SpaceEncoding | str, num_classes: int | None = None, dropout: float = 0.0,
                 resolutions: Sequence[int] | None = None) -> None:
        super().__init__()
        self.space = SpaceEncoding.decode(space) if isinstance(space, str) else space
        spec = self.space.spec
        self.options = stage_options(self.space)
        self.resolutions = tuple(int(r) for r in (resolutions or spec.resolutions))
        if not self.resolutions or min(self.resolutions) < 8:
            raise ValueError(f"resolutions {list(self.resolutions)} of '{self.space}' must be non-empty, each >= 8")
        head = spec.head
        self.num_classes = int(head["num_classes"] if num_classes is None else num_classes)

        first_options, first_stage = self.options[0], spec.stages[0]
        self.first_conv = DynamicConvBnAct.dense(3, max(first_options.widths), first_options.kernels,
                                                 first_stage.stride, spec.fixed_blocks["first_conv"].activation)
        stages, in_channels = [], max(first_options.widths)
        for index, (options, stage) in enumerate(zip(self.options[1:], spec.stages[1:])):
            block = spec.fixed_blocks["stage0"] if index == 0 else spec.block_types[self.space.blocks[index - 1]]
            stages.append((stage.name, DynamicStage(block_spec_of(block), in_channels, options.widths, options.depths,
                                                    stage.stride)))
            in_channels = max(options.widths)
        self.stages = nn.Sequential(OrderedDict(stages))
        self.final_expand = DynamicConvBnAct.pointwise(in_channels, int(head["final_expand"]), head["activation"])
        self.feature_mix = DynamicConvBnAct.pointwise(int(head["final_expand"]), int(head["feature_mix"]),
                                                      head["activation"])
        self.dropout = nn.Dropout(dropout)
        self.classifier = DynamicLinear(int(head["feature_mix"]), self.num_classes)
        self.active_resolution = max(self.resolutions)
        self.zero_last_gamma()

    @classmethod
    def from_encoding(cls, text: str, num_classes: int | None = None, dropout: float = 0.0,
                      resolutions: Sequence[int] | None = None) -> Supernet:
        """The supernet of a space written as text, e.g. ``Supernet.from_encoding("onnxw-151122-023231")``."""
        return cls(SpaceEncoding.decode(text), num_classes, dropout, resolutions)

    # --- the active subnet -----------------------------------------------------------------------

    def check(self, subnet: SubnetEncoding) -> None:
        """Raise ValueError unless ``subnet`` belongs to this supernet (space choices and resolution)."""
        if subnet.resolution not in self.resolutions:
            raise ValueError(f"resolution {subnet.resolution} is not one of this supernet's {list(self.resolutions)}")
        # The space check knows only the hyperspace's resolutions; ours were checked above.
        check_subnet(dataclasses.replace(subnet, resolution=self.space.spec.resolutions[0]), self.space)

    def set_active(self, subnet: SubnetEncoding | str) -> None:
        subnet = SubnetEncoding.decode(subnet) if isinstance(subnet, str) else subnet
        self.check(subnet)
        grouped = subnet.stages()
        (first_kernel, first_width, _), = grouped[0]
        self.first_conv.set_active(out_channels=first_width, kernel_size=first_kernel)
        for stage, blocks in zip(self.stages, grouped[1:]):
            stage.set_active(depth=len(blocks),
                             blocks=[BlockChoice(width, kernel, expand) for kernel, width, expand in blocks])
        self.active_resolution = subnet.resolution

    @property
    def first_conv_width(self) -> int:
        return self.first_conv.active_out_channels

    @property
    def active_subnet(self) -> SubnetEncoding:
        """The active subnet, read back from the active state of every stage and block."""
        depths, kernels, widths, expands = [1], [self.first_conv.active_kernel_size], [self.first_conv_width], [None]
        for stage in self.stages:
            depths.append(stage.active_depth)
            for block in stage.active_blocks:
                kernels.append(block.active_kernel_size)
                widths.append(block.active_out_channels)
                expands.append(None if block.active_expand_ratio is None else float(block.active_expand_ratio))
        return SubnetEncoding(tuple(depths), tuple(kernels), tuple(widths), tuple(expands), self.active_resolution)

    def active_encoding(self) -> SubnetEncoding:
        """The active subnet (:attr:`active_subnet`; the name SpaceEvo's search and tests use)."""
        return self.active_subnet

    def sample_active(self, rng: np.random.Generator) -> SubnetEncoding:
        """Activate a uniformly random subnet (``space.sample_subnet``, resolution drawn once from ours)."""
        subnet = sample_subnet(self.space, rng, self.resolutions)
        self.set_active(subnet)
        return subnet

    def set_max(self) -> SubnetEncoding:
        subnet = max_subnet(self.space, resolution=max(self.resolutions))
        self.set_active(subnet)
        return subnet

    def set_min(self) -> SubnetEncoding:
        subnet = min_subnet(self.space, resolution=min(self.resolutions))
        self.set_active(subnet)
        return subnet

    # --- forward and extraction ------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        x = self.first_conv(_resize(x, self.active_resolution))
        x = self.stages(x)
        x = self.feature_mix(self.final_expand(x).mean((2, 3), keepdim=True))
        return self.classifier(self.dropout(torch.flatten(x, 1)))

    def get_active_subnet(self) -> StaticSubnet:
        """A static copy of the active subnet (weights, BN statistics and LSQ+ state copied)."""
        first_conv = self.first_conv.get_active_subnet(3)
        stages, in_channels = [], self.first_conv_width
        for name, stage in self.stages.named_children():
            stages.append((name, stage.get_active_subnet(in_channels)))
            in_channels = stage.active_blocks[-1].active_out_channels
        return StaticSubnet(self.active_encoding(), first_conv, nn.Sequential(OrderedDict(stages)),
                            self.final_expand.get_active_subnet(in_channels),
                            self.feature_mix.get_active_subnet(self.final_expand.op.max_out_channels),
                            self.classifier.get_active_subnet(self.classifier.max_in_features))

    @torch.no_grad()
    def zero_last_gamma(self) -> None:
        """Zero the closing BN gamma of every always-residual block (done once at construction)."""
        for stage in self.stages:
            for block in stage.blocks:
                assert isinstance(block, DynamicBlock)
                if block.always_residual and block.name in LAST_NORM_OF_RESIDUAL_BODY:
                    getattr(block, LAST_NORM_OF_RESIDUAL_BODY[block.name]).norm.weight.zero_()

    def extra_repr(self) -> str:
        return f"space={self.space}, num_classes={self.num_classes}, resolutions={list(self.resolutions)}"
