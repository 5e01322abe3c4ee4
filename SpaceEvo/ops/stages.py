"""Block types of SpaceEvo's hyperspaces and the elastic stage built from them (SpaceEvo §3.1 "hyperspace", §3.3).

:class:`BlockSpec` names a block class of :mod:`moonlit.spaceevo.ops.blocks` with its kernel /
expand choices and activation; ``HYPERSPACE_BLOCKS`` / ``STAGE0_BLOCKS`` list them per hyperspace
(a space encoding's block digit indexes the first). :class:`DynamicStage` stacks ``max(depth)``
blocks of one type (sub-modules ``blocks.<i>``, as in the reference) with an elastic active depth,
and ``get_active_subnet()`` returns the static blocks of the active depth.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import NamedTuple

from torch import Tensor, nn

from moonlit.common.nn.elastic import ElasticModule
from moonlit.spaceevo.ops.blocks import BLOCK_CLASSES, BlockChoice, DynamicBlock

__all__ = ["BlockSpec", "HYPERSPACE_BLOCKS", "STAGE0_BLOCKS", "block_spec", "build_block", "StageChoice",
           "DynamicStage"]


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """A block type of a hyperspace: class name plus its kernel / expand choices and activation."""

    name: str
    kernel_list: tuple[int, ...]
    expand_list: tuple[float, ...] | None
    activation: str

    @property
    def block_class(self) -> type[DynamicBlock]:
        return BLOCK_CLASSES[self.name]

    def build(self, in_channels: int, width_list: Sequence[int], stride: int) -> DynamicBlock:
        return self.block_class(in_channels, width_list, self.kernel_list, self.expand_list, stride, self.activation)


_K357, _E368 = (3, 5, 7), (3, 6, 8)
# Block digit i of a space encoding is HYPERSPACE_BLOCKS[hyperspace][i] (reference superspaces
# MobileSuperSpaceW / OnnxSuperSpaceW).
HYPERSPACE_BLOCKS: dict[str, tuple[BlockSpec, ...]] = {
    "mobilew": (
        BlockSpec("MobileNetV1Dual", _K357, None, "relu"),
        BlockSpec("MobileNetV2Res", _K357, _E368, "relu6"),
        BlockSpec("MobileNetV3Res", _K357, _E368, "swish"),
        BlockSpec("ResNet", (3, 5), (0.5, 1.0, 1.5), "relu"),
        BlockSpec("FusedMBConvSERes", _K357, (1, 2, 3, 4), "swish"),
        BlockSpec("MobileNetV3K3Res", _K357, _E368, "swish"),
        BlockSpec("MobileNetV2K3Res", _K357, _E368, "relu6"),
    ),
    "onnxw": (
        BlockSpec("MobileNetV1Dual", (3, 5), None, "relu"),
        BlockSpec("MobileNetV2Res", (3, 5), (4, 6, 8), "relu6"),
        BlockSpec("MobileNetV3Res", (3, 5), (4, 6, 8), "hswish"),
        BlockSpec("ResNet", _K357, (0.5, 1.0, 1.5), "relu"),
        BlockSpec("ResNetSE", _K357, (0.5, 1.0, 1.5), "relu"),
        BlockSpec("FusedMBConvRes", _K357, (1, 2, 3, 4), "swish"),
    ),
}
# The fixed (not searched) stage 0 of each hyperspace.
STAGE0_BLOCKS: dict[str, BlockSpec] = {
    "mobilew": BlockSpec("MobileNetV2", (3,), (1,), "relu"),
    "onnxw": BlockSpec("ResNet", (3,), (0.5,), "relu"),
}


def block_spec(hyperspace: str, block: int | str) -> BlockSpec:
    """The block type with digit ``block`` (or name, or ``"stage0"``) of ``hyperspace``."""
    if hyperspace not in HYPERSPACE_BLOCKS:
        raise ValueError(f"unknown hyperspace {hyperspace!r}; expected one of {sorted(HYPERSPACE_BLOCKS)}")
    specs = HYPERSPACE_BLOCKS[hyperspace]
    if block == "stage0":
        return STAGE0_BLOCKS[hyperspace]
    if isinstance(block, str):
        for spec in specs:
            if spec.name == block:
                return spec
        raise ValueError(f"block {block!r} is not a block type of {hyperspace}; expected one of "
                         f"{[s.name for s in specs]} or 'stage0'")
    if not 0 <= block < len(specs):
        raise ValueError(f"block digit {block} is out of range for {hyperspace} (0..{len(specs) - 1})")
    return specs[block]


def build_block(hyperspace: str, block: int | str, in_channels: int, width_list: Sequence[int],
                stride: int) -> DynamicBlock:
    return block_spec(hyperspace, block).build(in_channels, width_list, stride)


class StageChoice(NamedTuple):
    depth: int
    blocks: tuple[BlockChoice, ...]


class DynamicStage(ElasticModule):
    """``max(depth_list)`` blocks of one type; the first takes the stage input and stride.

    ``active_depth`` is the stage's own choice; each active block holds its (width, kernel, expand).
    """

    active_choices = ("depth",)

    def __init__(self, spec: BlockSpec, in_channels: int, width_list: Sequence[int], depth_list: Sequence[int],
                 stride: int) -> None:
        super().__init__()
        if not depth_list or min(depth_list) < 1:
            raise ValueError(f"depth list {list(depth_list)} must be non-empty positive depths")
        self.spec = spec
        self.in_channels = in_channels
        self.width_list = tuple(width_list)
        self.depth_list = tuple(depth_list)
        self.stride = stride
        self.blocks = nn.Sequential(*(
            spec.build(in_channels if i == 0 else max(self.width_list), self.width_list, stride if i == 0 else 1)
            for i in range(max(self.depth_list))))
        self.active_depth = max(self.depth_list)

    @property
    def active_blocks(self) -> list[DynamicBlock]:
        return list(self.blocks)[:self.active_depth]

    @property
    def active_choice(self) -> StageChoice:
        return StageChoice(self.active_depth, tuple(b.active_choice for b in self.active_blocks))

    def set_active(self, *, depth: int | None = None, blocks: Sequence[BlockChoice] | None = None) -> None:
        """Set the depth and, if given, one choice per active block (``len(blocks) == depth``)."""
        depth = len(blocks) if depth is None and blocks is not None else depth
        if depth is not None and depth not in self.depth_list:
            raise ValueError(f"depth {depth} is not in the depth list {list(self.depth_list)}")
        target = self.active_depth if depth is None else depth
        if blocks is not None and len(blocks) != target:
            raise ValueError(f"{len(blocks)} block choices given for depth {target}")
        if depth is not None:
            self.active_depth = depth
        if blocks is not None:
            for block, choice in zip(self.active_blocks, blocks, strict=True):
                block.set_choice(BlockChoice(*choice))

    def active_config(self) -> dict[str, object]:
        return {"depth": self.active_depth, "blocks": [block.active_choice for block in self.active_blocks]}

    def sample_active(self, rng: random.Random) -> StageChoice:
        self.active_depth = rng.choice(self.depth_list)
        for block in self.active_blocks:
            block.sample_active(rng)
        return self.active_choice

    def set_max(self) -> None:
        self.active_depth = max(self.depth_list)
        for block in self.active_blocks:
            block.set_max()

    def set_min(self) -> None:
        self.active_depth = min(self.depth_list)
        for block in self.active_blocks:
            block.set_min()

    def forward(self, x: Tensor) -> Tensor:
        for block in self.active_blocks:
            x = block(x)
        return x

    def get_active_subnet(self, in_channels: int | None = None) -> nn.Sequential:
        cin = self.in_channels if in_channels is None else in_channels
        static_blocks = []
        for block in self.active_blocks:
            static_blocks.append(block.get_active_subnet(cin))
            cin = block.active_out_channels
        return nn.Sequential(*static_blocks)
