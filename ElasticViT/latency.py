"""Predicted latency of ElasticViT subnets from LitePred kernel predictors (ICCV'23 Sec. 3.4, searched
under the latency of the user's own hardware, which the reference left unimplemented).

A subnet is cut into blocks (:func:`subnet_parts`): the first conv (+BN+Hardswish), each stem and
conv-stage MBConv block, each transformer stage's reduction block (with its map-to-tokens
transpose), each attention+FFN layer, the tokens-to-map transpose closing the stage, and the
classifier head. A block's key holds everything its kernels depend on (widths, choices, input
side), so :class:`~moonlit.litepred.api.PartCache` exports every distinct block once and the
whole search space needs a few thousand small exports, not one per candidate. The cuts fall where
the static model (:func:`~moonlit.elasticvit.models.build_model`) has no fusion across them;
tests/elasticvit/test_latency_parts.py checks block-wise against whole-model kernel detection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from moonlit.litepred.api import ModelPart, PartCache, PartsLatency, Predictor

from .ops import (
    AttentionLayer,
    ClassifierHead,
    FeedForward,
    MBConvBlock,
    TokenNormKind,
    TransformerBlock,
)
from .space import ELASTICVIT_SPACE, SearchSpace, Subnet, check_subnet, stage_sides

__all__ = ["SubnetLatency", "predict_latency", "subnet_parts"]


class _MapToTokens(nn.Module):
    """A transformer stage's reduction block followed by NCHW -> (B, N, C), as in ``ViTStage.forward``."""

    def __init__(self, reduction: MBConvBlock) -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(x).flatten(2).transpose(1, 2)


class _TokensToMap(nn.Module):
    """(B, N, C) -> NCHW at the end of a transformer stage."""

    def __init__(self, side: int) -> None:
        super().__init__()
        self.side = side

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, _, channels = tokens.shape
        return tokens.transpose(1, 2).reshape(batch, channels, self.side, self.side)


def _first_conv(width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.Hardswish())


def _mbconv_part(in_width: int, out_width: int, expand: int, kernel: int, stride: int, se: bool, side: int
                 ) -> ModelPart:
    key = f"evit-mbconv:c{in_width}-{out_width}e{expand}k{kernel}s{stride}se{int(se)}h{side}"
    return ModelPart(key, lambda: MBConvBlock(in_width, out_width, expand, kernel, stride, se),
                     (1, in_width, side, side))


def subnet_parts(subnet: Subnet, num_classes: int = 1000, token_norm: TokenNormKind = "groupnorm1",
                 space: SearchSpace = ELASTICVIT_SPACE) -> list[ModelPart]:
    """The blocks of ``subnet`` (batch 1), in network order; repeated layers appear once per layer."""
    check_subnet(subnet, space)
    sides = stage_sides(subnet.resolution, space)
    width = subnet.stem_width
    parts = [ModelPart(f"evit-first-conv:c{width}h{subnet.resolution}", lambda w=width: _first_conv(w),
                       (1, 3, subnet.resolution, subnet.resolution))]
    parts += [_mbconv_part(width, width, 1, subnet.stem_kernel, 1, False, sides[0])] * subnet.stem_depth
    for index, (stage, stage_space) in enumerate(zip(subnet.stages, space.stages)):
        in_side, side = sides[index], sides[index + 1]
        stride = 2 if stage_space.downsample else 1
        if stage_space.kind == "C":
            parts.append(_mbconv_part(width, stage.width, stage.expand, stage.kernel, stride, stage_space.se, in_side))
            parts += [_mbconv_part(stage.width, stage.width, stage.expand, stage.kernel, 1, stage_space.se, side)
                      ] * (stage.depth - 1)
        else:
            reduction = _mbconv_part(width, stage.width, space.reduction_expand, space.reduction_kernel, stride, True,
                                     in_side)
            parts.append(ModelPart(f"evit-reduction-tokens:{reduction.key}",
                                   lambda r=reduction: _MapToTokens(r.build()), reduction.input_shape))
            w, m, v = stage.width, stage.mlp_ratio, stage.v_scale
            layer_key = f"evit-layer:c{w}m{m}v{v}h{side}hd{space.head_dim}n{token_norm}"
            parts += [ModelPart(layer_key, lambda w=w, m=m, v=v, s=side: TransformerBlock(
                AttentionLayer(w, v, s, token_norm, space.head_dim), FeedForward(w, m, token_norm)),
                (1, side * side, w))] * stage.depth
            parts.append(ModelPart(f"evit-tokens-map:c{w}h{side}", lambda s=side: _TokensToMap(s),
                                   (1, side * side, w)))
        width = stage.width
    side = sides[-1]
    parts.append(ModelPart(
        f"evit-head:c{width}x{space.head_width_multiplier}-{space.head_hidden}-{num_classes}h{side}",
        lambda w=width: ClassifierHead(w, space.head_width_multiplier, space.head_hidden, num_classes, 0.0),
        (1, width, side, side)))
    return parts


class SubnetLatency(PartsLatency[Subnet]):
    """Predicted latency (ms) of ElasticViT subnets on one LitePred platform, block rows cached.

    ``cache`` defaults to an in-memory :class:`~moonlit.litepred.api.PartCache` under the predictor's
    fusion rules (:attr:`~moonlit.litepred.api.Predictor.rules`).
    """

    def __init__(self, predictor: Predictor, cache: PartCache | None = None, num_classes: int = 1000,
                 token_norm: TokenNormKind = "groupnorm1", space: SearchSpace = ELASTICVIT_SPACE) -> None:
        self.num_classes, self.token_norm, self.space = num_classes, token_norm, space
        super().__init__(predictor, self.subnet_parts, cache)

    def subnet_parts(self, subnet: Subnet) -> list[ModelPart]:
        return subnet_parts(subnet, self.num_classes, self.token_norm, self.space)


def predict_latency(subnets: Sequence[Subnet], predictor: Predictor, cache: PartCache | None = None,
                    **options: Any) -> np.ndarray:
    """Predicted latency (ms) of each subnet (``options``: ``num_classes``, ``token_norm``, ``space``)."""
    return SubnetLatency(predictor, cache, **options).predict(subnets)
