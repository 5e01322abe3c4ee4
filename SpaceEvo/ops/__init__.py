"""SpaceEvo's quantizable elastic ops: LSQ+ fake quantization, dynamic convs/SE, blocks and stages (SpaceEvo §3.3)."""

from moonlit.spaceevo.ops.blocks import (
    BLOCK_CLASSES,
    BlockChoice,
    DynamicBlock,
    StaticBlock,
)
from moonlit.spaceevo.ops.dynamic import (
    DynamicConv2d,
    DynamicConvBnAct,
    DynamicDepthwiseConv2d,
    DynamicLinear,
    DynamicSqueezeExcite,
    DynamicStackedDepthwiseConv2d,
    SqueezeExcite,
    make_divisible,
)
from moonlit.spaceevo.ops.lsq_plus import (
    ActivationQuantizer,
    QuantConv2d,
    QuantLinear,
    QuantParams,
    WeightQuantizer,
    export_quant_params,
    set_quant_mode,
)
from moonlit.spaceevo.ops.stages import (
    HYPERSPACE_BLOCKS,
    STAGE0_BLOCKS,
    BlockSpec,
    DynamicStage,
    StageChoice,
    block_spec,
    build_block,
)

__all__ = [
    "BLOCK_CLASSES", "HYPERSPACE_BLOCKS", "STAGE0_BLOCKS", "BlockChoice", "BlockSpec", "DynamicBlock",
    "DynamicStage", "StageChoice", "StaticBlock", "block_spec", "build_block",
    "DynamicConv2d", "DynamicConvBnAct", "DynamicDepthwiseConv2d", "DynamicLinear",
    "DynamicSqueezeExcite", "DynamicStackedDepthwiseConv2d", "SqueezeExcite", "make_divisible",
    "ActivationQuantizer", "QuantConv2d", "QuantLinear", "QuantParams", "WeightQuantizer",
    "export_quant_params", "set_quant_mode",
]
