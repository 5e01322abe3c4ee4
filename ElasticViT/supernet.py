"""The ElasticViT hybrid CNN+ViT supernet (ICCV'23, arXiv 2303.09730, Sec. 3, Fig. 2).

One network holds every subnet of :data:`~moonlit.elasticvit.space.ELASTICVIT_SPACE`: weights at
their largest size, ``set_active(subnet)`` selects the slices (``sample_active(rng)``, ``set_max()``
and ``set_min()`` pick the subnet too; the network-level contract of :mod:`moonlit.common.nn.elastic`),
``forward`` runs the active subnet
(resizing the input bicubically to the subnet's resolution, as the reference does, so one data
loader feeds every sampled resolution), and ``get_active_subnet()`` extracts a static
:class:`~moonlit.elasticvit.models.ElasticViTModel` whose output equals the supernet's.

Parameter shapes equal the reference's ``FusedSuperNet`` (40.49 M parameters for 1000 classes).
Its state-dict keys map onto ours as (``s`` = stage index, ``i`` = layer index)::

    first_conv.weight                              -> first_conv.weight
    first_conv_bn.*                                -> first_bn.*
    conv_stem.layers.{i}.0.*                       -> stem.blocks.{i}.*
    feature_exactor.{s}.layers.{i}.0.*     (C)     -> stages.{s}.blocks.{i}.*
    feature_exactor.{s}.layers.0.reduction.* (T)   -> stages.{s}.reduction.*
    feature_exactor.{s}.layers.{2i}.*      (T)     -> stages.{s}.blocks.{i}.attn.*   (relative_position_index: dropped, recomputed)
    feature_exactor.{s}.layers.{2i+1}.*    (T)     -> stages.{s}.blocks.{i}.ffn.*
    pre_head_0.* / pre_head_norm_0.* / pre_head_1.* / classifer.*
                                                   -> head.token_proj.* / head.token_norm.* / head.hidden_proj.* / head.classifier.*

MBConv leaf names (pw_conv, pw_bn, dw_conv, dw_bn, se_conv1, se_conv2, pwl_conv, pwl_bn,
shortcut_conv) and attention/FFN leaf names (norm1, qkv, dw_v_conv, attention_bias, proj, fc1, fc2)
are the reference's.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from moonlit.common.nn.elastic import ElasticBatchNorm2d, ElasticSupernet

from .models import ElasticViTModel
from .ops import (
    ElasticClassifierHead,
    ElasticConvStage,
    ElasticViTStage,
    TokenNormKind,
)
from .ops.norms import check_token_norm
from .space import (
    ELASTICVIT_SPACE,
    SearchSpace,
    Subnet,
    check_subnet,
    max_subnet,
    min_subnet,
    sample_subnet,
    stage_sides,
)

__all__ = ["ElasticViTSupernet"]


class ElasticViTSupernet(ElasticSupernet):
    def __init__(self, space: SearchSpace = ELASTICVIT_SPACE, num_classes: int = 1000,
                 token_norm: TokenNormKind = "groupnorm1", dropout: float = 0.2) -> None:
        super().__init__()
        check_token_norm(token_norm)
        self.space = space
        max_stem = max(space.first_conv_widths)
        self.first_conv = nn.Conv2d(3, max_stem, 3, 2, 1, bias=False)
        self.first_bn = ElasticBatchNorm2d(max_stem)
        self.stem = ElasticConvStage(max_stem, max_stem, max(space.stem_depths), (1,), space.stem_kernels, 1,
                                     se=False)
        # The relative-position tables are sized for each stage's grid at the largest resolution.
        max_sides = stage_sides(max(space.resolutions), space)
        stages: list[nn.Module] = []
        in_width = max_stem
        for stage in space.conv_stages:
            stages.append(ElasticConvStage(in_width, max(stage.widths), max(stage.depths), space.conv_expands,
                                           space.conv_kernels, 2 if stage.downsample else 1, stage.se))
            in_width = max(stage.widths)
        for index, stage in enumerate(space.transformer_stages):
            stages.append(ElasticViTStage(
                in_width, max(stage.widths), max(stage.depths), 2 if stage.downsample else 1,
                max_sides[1 + len(space.conv_stages) + index], space.mlp_ratios, space.v_scales, token_norm,
                space.reduction_expand, space.reduction_kernel, space.head_dim))
            in_width = max(stage.widths)
        self.stages = nn.ModuleList(stages)
        self.head = ElasticClassifierHead(in_width, space.head_width_multiplier, space.head_hidden, num_classes,
                                          dropout)
        self.set_active(max_subnet(space))

    @property
    def active_subnet(self) -> Subnet:
        return self._active_subnet

    @property
    def active_resolution(self) -> int:
        return self._active_subnet.resolution

    def set_active(self, subnet: Subnet) -> None:
        """Select ``subnet``'s slices in every elastic op (ValueError if it is outside the space)."""
        check_subnet(subnet, self.space)
        self.stem.set_active(out_channels=subnet.stem_width, depth=subnet.stem_depth, expand_ratio=1,
                             kernel_size=subnet.stem_kernel)
        for module, stage in zip(self.stages, subnet.stages):
            if isinstance(module, ElasticViTStage):
                module.set_active(out_channels=stage.width, depth=stage.depth, mlp_ratio=stage.mlp_ratio,
                                  v_scale=stage.v_scale)
            else:
                module.set_active(out_channels=stage.width, depth=stage.depth, expand_ratio=stage.expand,
                                  kernel_size=stage.kernel)
        self._active_subnet = subnet

    def sample_active(self, rng: np.random.Generator) -> Subnet:
        """Activate a uniformly random subnet (:func:`~moonlit.elasticvit.space.sample_subnet`)."""
        subnet = sample_subnet(self.space, rng)
        self.set_active(subnet)
        return subnet

    def set_max(self) -> Subnet:
        subnet = max_subnet(self.space)
        self.set_active(subnet)
        return subnet

    def set_min(self) -> Subnet:
        subnet = min_subnet(self.space)
        self.set_active(subnet)
        return subnet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        resolution = self._active_subnet.resolution
        if x.shape[-2:] != (resolution, resolution):
            x = F.interpolate(x, size=(resolution, resolution), mode="bicubic", align_corners=False)
        width = self._active_subnet.stem_width
        x = F.conv2d(x, self.first_conv.weight[:width], None, 2, 1)
        x = F.hardswish(self.first_bn(x))
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)

    def get_active_subnet(self) -> ElasticViTModel:
        """A static copy of the active subnet (its weights are copies, not views)."""
        subnet = self._active_subnet
        sides = stage_sides(subnet.resolution, self.space)
        width = subnet.stem_width
        first_conv = nn.Conv2d(3, width, 3, 2, 1, bias=False)
        first_conv.weight.data.copy_(self.first_conv.weight.data[:width])
        stem = self.stem.get_active_subnet(width)
        stages: list[nn.Module] = []
        for index, (module, stage) in enumerate(zip(self.stages, subnet.stages)):
            if isinstance(module, ElasticViTStage):
                stages.append(module.get_active_subnet(width, side=sides[1 + index]))
            else:
                stages.append(module.get_active_subnet(width))
            width = stage.width
        model = ElasticViTModel(subnet, first_conv, self.first_bn.get_active_subnet(subnet.stem_width), stem, stages,
                                self.head.get_active_subnet(width))
        return model.train(self.training)
