"""Predicted latency of SpaceEvo subnets from LitePred kernel predictors (ICCV'23, arXiv 2303.08308, Sec. 4
"subnet search": candidates kept when their predicted latency lies in ``[c − δ, c]``).

The reference predicted subnet latency with nn-Meter's development branch and per-platform files
from a Drive (notes, flaw 3); here the predictor is a LitePred platform predictor built on the
local machine (default ``ort-int8``). A subnet of a search space is cut into blocks
(:func:`subnet_parts`): the first conv (conv-BN-act), each block of stage0…stage6 at its own input
shape (a stage's first block carries the stride and the width change, the rest repeat at the
stage's width), and the head (final_expand 1x1 conv-BN-act, global mean, feature_mix 1x1
conv-BN-act, flatten, classifier). The cuts fall between a block's last op (its residual Add or
the activation after it) and the next block's first conv, where no fusion rule of ours applies;
tests/spaceevo/test_spaceevo_latency.py checks block-wise against whole-model detection of the
static subnet the supernet extracts. A block's key names everything its kernels depend on (block
type, activation, in/out width, kernel, expand, stride, input side), so
:class:`~moonlit.litepred.api.PartCache` exports each distinct block once.

Parts are exported in FP32 with the LSQ+ quantizers off, as LitePred's ``ort-int8`` backend
expects: it quantizes the FP32 graph itself and its fusion rules describe that graph.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from moonlit.litepred.api import ModelPart, PartCache, PartsLatency, Predictor

from .ops.dynamic import DynamicConvBnAct, DynamicLinear
from .space import SpaceEncoding, SubnetEncoding, check_subnet
from .supernet import block_spec_of

__all__ = ["DEFAULT_PLATFORM", "SubnetLatency", "check_choices", "output_side", "predict_latency", "subnet_parts"]

DEFAULT_PLATFORM = "ort-int8"


def output_side(side: int, stride: int) -> int:
    """Feature-map side after a ``k x k`` conv with padding ``k // 2`` (odd k) and ``stride``."""
    return (side - 1) // stride + 1


class _Head(nn.Module):
    """final_expand -> global mean -> feature_mix -> flatten -> classifier, as :class:`StaticSubnet` ends."""

    def __init__(self, final_expand: nn.Module, feature_mix: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.final_expand, self.feature_mix, self.classifier = final_expand, feature_mix, classifier

    def forward(self, x: Tensor) -> Tensor:
        x = self.feature_mix(self.final_expand(x).mean((2, 3), keepdim=True))
        return self.classifier(torch.flatten(x, 1))


def _first_conv(width: int, kernel: int, stride: int, activation: str) -> nn.Module:
    return DynamicConvBnAct.dense(3, width, (kernel,), stride, activation).get_active_subnet(3)


def _block(block_type: Any, in_width: int, width: int, kernel: int, expand: float | None, stride: int) -> nn.Module:
    """The static block of one choice, built from a dynamic block whose only choice it is."""
    spec = dataclasses.replace(block_spec_of(block_type), kernel_list=(kernel,),
                               expand_list=None if expand is None else (expand,))
    return spec.build(in_width, (width,), stride).get_active_subnet(in_width)


def _head(in_width: int, head: dict[str, Any], num_classes: int) -> nn.Module:
    expand, mix, act = int(head["final_expand"]), int(head["feature_mix"]), head["activation"]
    return _Head(DynamicConvBnAct.pointwise(in_width, expand, act).get_active_subnet(in_width),
                 DynamicConvBnAct.pointwise(expand, mix, act).get_active_subnet(expand),
                 DynamicLinear(mix, num_classes).get_active_subnet(mix))


def _expand_text(expand: float | None) -> str:
    return "0" if expand is None else f"{float(expand):g}"


def check_choices(space: SpaceEncoding, subnet: SubnetEncoding, resolutions: Sequence[int] | None = None) -> None:
    """:func:`~moonlit.spaceevo.space.check_subnet`, with ``resolutions`` allowed instead of the hyperspace's.

    A supernet may be built with its own resolutions (32-64 px for CPU smoke runs).
    """
    if resolutions is None:
        check_subnet(subnet, space)
        return
    if subnet.resolution not in resolutions:
        raise ValueError(f"resolution {subnet.resolution} is not one of the allowed {list(resolutions)}")
    check_subnet(dataclasses.replace(subnet, resolution=space.spec.resolutions[0]), space)


def subnet_parts(space: SpaceEncoding, subnet: SubnetEncoding, num_classes: int | None = None,
                 resolutions: Sequence[int] | None = None) -> list[ModelPart]:
    """The blocks of ``subnet`` (batch 1, input at its resolution), in network order.

    ``num_classes`` None: the hyperspace head's (1000); ``resolutions``: see :func:`check_choices`.
    """
    spec = space.spec
    check_choices(space, subnet, resolutions)
    classes = int(spec.head["num_classes"] if num_classes is None else num_classes)
    stages = subnet.stages()
    resolution = subnet.resolution
    (first_kernel, first_width, _), = stages[0]
    first_block, first_stage = spec.fixed_blocks["first_conv"], spec.stages[0]
    parts = [ModelPart(
        f"seq-first-conv:{spec.name}:c{first_width}k{first_kernel}s{first_stage.stride}a{first_block.activation}"
        f"h{resolution}",
        lambda: _first_conv(first_width, first_kernel, first_stage.stride, first_block.activation),
        (1, 3, resolution, resolution))]
    side, width = output_side(resolution, first_stage.stride), first_width
    for index, (stage, blocks) in enumerate(zip(spec.stages[1:], stages[1:])):
        block_type = spec.fixed_blocks["stage0"] if index == 0 else spec.block_types[space.blocks[index - 1]]
        for position, (kernel, out_width, expand) in enumerate(blocks):
            stride = stage.stride if position == 0 else 1
            key = (f"seq-block:{spec.name}:{block_type.type}a{block_type.activation}:c{width}-{out_width}k{kernel}"
                   f"e{_expand_text(expand)}s{stride}h{side}")
            parts.append(ModelPart(key, lambda b=block_type, i=width, w=out_width, k=kernel, e=expand, s=stride:
                                   _block(b, i, w, k, e, s), (1, width, side, side)))
            side, width = output_side(side, stride), out_width
    head = spec.head
    parts.append(ModelPart(
        f"seq-head:{spec.name}:c{width}-{head['final_expand']}-{head['feature_mix']}-{classes}a{head['activation']}"
        f"h{side}", lambda: _head(width, head, classes), (1, width, side, side)))
    return parts


class SubnetLatency(PartsLatency[SubnetEncoding]):
    """Predicted latency (ms) of the subnets of one SpaceEvo search space on one LitePred platform.

    ``cache`` defaults to an in-memory :class:`~moonlit.litepred.api.PartCache` under the predictor's
    fusion rules (:attr:`~moonlit.litepred.api.Predictor.rules`). ``resolutions``: see :func:`check_choices`.
    """

    def __init__(self, predictor: Predictor, space: SpaceEncoding | str, cache: PartCache | None = None,
                 num_classes: int | None = None, resolutions: Sequence[int] | None = None) -> None:
        self.space = SpaceEncoding.decode(space) if isinstance(space, str) else space
        self.num_classes = num_classes
        self.resolutions = None if resolutions is None else tuple(int(r) for r in resolutions)
        super().__init__(predictor, self.subnet_parts, cache)

    def subnet_parts(self, subnet: SubnetEncoding) -> list[ModelPart]:
        return subnet_parts(self.space, subnet, self.num_classes, self.resolutions)


def predict_latency(space: SpaceEncoding | str, subnets: Sequence[SubnetEncoding], predictor: Predictor,
                    cache: PartCache | None = None, **options: Any) -> np.ndarray:
    """Predicted latency (ms) of each subnet of ``space`` (``options``: ``num_classes``, ``resolutions``)."""
    return SubnetLatency(predictor, space, cache, **options).predict(subnets)
