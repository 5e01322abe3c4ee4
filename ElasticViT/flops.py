"""Analytic MACs and parameters of an ElasticViT subnet, without a forward (ICCV'23, Sec. 3.2).

:func:`subnet_complexity` counts exactly what ``torch.utils.flop_counter`` counts on a forward of
the static model (``moonlit.common.profiling.count_macs``): one MAC per multiply-accumulate of every
convolution, linear layer and attention matmul (``conv``, ``mm``/``addmm``, ``bmm``), with
``MACs(conv) = out_elements * in_channels / groups * k²``. Norms, activations, softmax, pooling,
the SE multiply and residual adds are not MACs there and not here. Parameters are those of
:func:`moonlit.elasticvit.models.build_model` (the relative-position table of a static model covers
its own grid: ``(2 side - 1)² x heads``).

:func:`reference_mmacs` reproduces the reference's ``FusedSuperNet.compute_flops`` (the numbers its
FLOPs levels, tables and papers use). Against :func:`subnet_complexity` it
(1) omits the SE and the shortcut 1x1 conv of each transformer stage's reduction block,
(2) counts a 1x1 shortcut conv for every strided conv-stage block, even when the width does not
change and the shortcut is only a pool, (3) counts the V depthwise 3x3 conv as 1 MAC per element
instead of 9, (4) adds the softmax as ``heads x N²`` MACs, (5) sizes each strided reduction's
expand conv by twice the output side, which overcounts when the input side is odd (T4 at 176/224).
"""

from __future__ import annotations

from dataclasses import dataclass

from .space import ELASTICVIT_SPACE, SearchSpace, Subnet, check_subnet, stage_sides

__all__ = ["SubnetComplexity", "reference_mmacs", "subnet_complexity"]

SE_REDUCTION = 4          # SE hidden width = expanded width / 4 (reference)
V_CONV_KERNEL = 3         # depthwise conv on V


@dataclass(frozen=True)
class SubnetComplexity:
    """MACs and parameters, in total and per part (``first_conv``, ``stem``, stage names, ``head``)."""

    macs: int
    params: int
    macs_by_part: dict[str, int]
    params_by_part: dict[str, int]


def _mbconv(in_channels: int, out_channels: int, expand: int, kernel: int, in_side: int, out_side: int,
            se: bool) -> tuple[int, int]:
    inner = in_channels * expand
    macs = params = 0
    if expand != 1:
        macs += in_channels * inner * in_side ** 2
        params += in_channels * inner + 2 * inner
    macs += inner * kernel ** 2 * out_side ** 2
    params += inner * kernel ** 2 + 2 * inner
    if se:
        reduced = inner // SE_REDUCTION
        macs += 2 * inner * reduced
        params += 2 * inner * reduced + reduced + inner
    macs += inner * out_channels * out_side ** 2
    params += inner * out_channels + 2 * out_channels
    if in_channels != out_channels:
        macs += in_channels * out_channels * out_side ** 2
        params += in_channels * out_channels
    return macs, params


def _transformer_layer(width: int, mlp_ratio: int, v_scale: int, side: int, head_dim: int) -> tuple[int, int]:
    tokens, heads, values, hidden = side ** 2, width // head_dim, width * v_scale, width * mlp_ratio
    macs = tokens * width * (2 * width + values)            # qkv
    macs += values * V_CONV_KERNEL ** 2 * tokens            # depthwise conv on V
    macs += heads * tokens ** 2 * (head_dim + head_dim * v_scale)  # Q K^T and attn V
    macs += tokens * values * width                         # proj
    macs += 2 * tokens * width * hidden                     # fc1, fc2
    params = 2 * width + width * (2 * width + values) + values * V_CONV_KERNEL ** 2
    params += (2 * side - 1) ** 2 * heads + values * width + width
    params += 2 * width + width * hidden + hidden + hidden * width + width
    return macs, params


def subnet_complexity(subnet: Subnet, num_classes: int = 1000,
                      space: SearchSpace = ELASTICVIT_SPACE) -> SubnetComplexity:
    """MACs of one image at ``subnet.resolution`` and parameters of the static model."""
    check_subnet(subnet, space)
    sides = stage_sides(subnet.resolution, space)
    macs: dict[str, int] = {}
    params: dict[str, int] = {}
    width = subnet.stem_width
    macs["first_conv"] = 3 * 3 ** 2 * width * sides[0] ** 2
    params["first_conv"] = 3 * 3 ** 2 * width + 2 * width
    stem = _mbconv(width, width, 1, subnet.stem_kernel, sides[0], sides[0], se=False)
    macs["stem"], params["stem"] = stem[0] * subnet.stem_depth, stem[1] * subnet.stem_depth
    for index, (stage, stage_space) in enumerate(zip(subnet.stages, space.stages)):
        in_side, out_side = sides[index], sides[index + 1]
        if stage_space.kind == "C":
            parts = [_mbconv(width if layer == 0 else stage.width, stage.width, stage.expand, stage.kernel,
                             in_side if layer == 0 else out_side, out_side, stage_space.se)
                     for layer in range(stage.depth)]
        else:
            parts = [_mbconv(width, stage.width, space.reduction_expand, space.reduction_kernel, in_side, out_side,
                             se=True)]
            parts += [_transformer_layer(stage.width, stage.mlp_ratio, stage.v_scale, out_side, space.head_dim)
                      ] * stage.depth
        macs[stage_space.name] = sum(part[0] for part in parts)
        params[stage_space.name] = sum(part[1] for part in parts)
        width = stage.width
    expanded, hidden = width * space.head_width_multiplier, space.head_hidden
    macs["head"] = sides[-1] ** 2 * width * expanded + expanded * hidden + hidden * num_classes
    params["head"] = (width * expanded + expanded + 2 * expanded + expanded * hidden + hidden
                      + hidden * num_classes + num_classes)
    return SubnetComplexity(sum(macs.values()), sum(params.values()), macs, params)


def reference_mmacs(subnet: Subnet, num_classes: int = 1000, space: SearchSpace = ELASTICVIT_SPACE) -> float:
    """MMACs as the reference's ``compute_flops`` counts them (differences: module docstring)."""
    check_subnet(subnet, space)
    sides = stage_sides(subnet.resolution, space)
    width = subnet.stem_width
    total = 3 * width * sides[0] ** 2 * 9
    total += (width * sides[0] ** 2 * subnet.stem_kernel ** 2 + width * width * sides[0] ** 2) * subnet.stem_depth
    for index, (stage, stage_space) in enumerate(zip(subnet.stages, space.stages)):
        side = sides[index + 1]
        stride = 2 if stage_space.downsample else 1
        if stage_space.kind == "C":
            for layer in range(stage.depth):
                in_channels = width if layer == 0 else stage.width
                inner = in_channels * stage.expand
                layer_stride = stride if layer == 0 else 1
                total += in_channels * inner * (side * layer_stride) ** 2
                total += inner * stage.kernel ** 2 * side ** 2 + inner * stage.width * side ** 2
                if stage_space.se:
                    total += 2 * inner * (inner // SE_REDUCTION)
                if layer_stride == 2:
                    total += in_channels * stage.width * side ** 2
        else:
            inner = width * space.reduction_expand
            total += width * inner * (side * stride) ** 2 + inner * space.reduction_kernel ** 2 * side ** 2
            total += inner * stage.width * side ** 2
            tokens, heads = side ** 2, stage.width // space.head_dim
            values = heads * space.head_dim * stage.v_scale
            per_layer = heads * tokens ** 2 * (space.head_dim + 1) + values * tokens ** 2
            per_layer += stage.width * tokens * (2 * heads * space.head_dim + values) + tokens * values * stage.width
            per_layer += tokens * values
            per_layer += 2 * stage.width * stage.width * stage.mlp_ratio * tokens
            total += per_layer * stage.depth
        width = stage.width
    expanded = width * space.head_width_multiplier
    total += width * expanded * sides[-1] ** 2 + expanded * space.head_hidden + space.head_hidden * num_classes
    return total / 1e6
