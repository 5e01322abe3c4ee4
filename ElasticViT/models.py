"""Static ElasticViT networks and the registry of the paper's named models (ICCV'23, Table 2).

:class:`ElasticViTModel` is what :meth:`ElasticViTSupernet.get_active_subnet` returns and what
:func:`build_model` creates from a :class:`~moonlit.elasticvit.space.Subnet` with fresh weights:
first conv 3x3/2 + BN + Hardswish, the stem, six stages, the classifier head (all layers static).

The nine searched models of the reference's eval config (``elastic_T1`` … ``elastic_L3``) are
registered in the model registry (:mod:`moonlit.common.models`, and with timm) as ``elasticvit_t1``
… ``elasticvit_l3``, with the paper's short names (``T1``, ``L1.5``) and the reference's
(``elastic_L1.5``) as aliases: ``create_model("elasticvit_s1")``, ``create_model("S1")``,
``timm.create_model("elasticvit_s1")``. Any subnet is ``create_model("elasticvit:<encoding>")``.
Weights come from a supernet checkpoint (``checkpoint=``), cut down to the subnet.

Two functions here are architecture-level, not "a model by name": :func:`named_subnet` looks up the
:class:`~moonlit.elasticvit.space.Subnet` of a name (no weights), and :func:`build_model` is the
constructor of a static network from a ``Subnet`` (like a timm model class; the registry's builders
call it). ``python -m moonlit.common.models paper=elasticvit`` lists the registered models.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from moonlit.common import models as registry
from moonlit.common.errors import InputError

from .ops import (
    AttentionLayer,
    ClassifierHead,
    FeedForward,
    MBConvBlock,
    TokenNormKind,
    TransformerBlock,
    ViTStage,
)
from .ops.norms import check_token_norm
from .space import (
    ELASTICVIT_SPACE,
    SearchSpace,
    Subnet,
    check_subnet,
    decode,
    stage_sides,
)

__all__ = ["MODEL_NAMES", "NAMED_SUBNETS", "ElasticViTModel", "build_model", "display_name", "named_models_table",
           "named_subnet"]

# From the reference's configs/final_3min_space_eval.yaml, converted with space.from_reference_arch
# (tests/elasticvit/test_space.py checks the conversion against the reference's lists).
NAMED_SUBNETS: dict[str, str] = {
    "elasticvit_t1": "r128_s16d1k3_c24d2e3k3_c32d3e3k3_t64d1m2v2_t96d1m2v2_t176d1m3v2_t272d1m4v2",
    "elasticvit_t2": "r160_s16d1k3_c24d2e3k3_c40d3e3k3_t48d1m3v2_t96d1m4v2_t176d2m3v2_t256d2m2v2",
    "elasticvit_s1": "r192_s16d1k3_c24d3e3k3_c40d3e3k3_t64d2m2v2_t96d2m2v2_t192d2m3v2_t272d2m4v2",
    "elasticvit_s2": "r224_s16d1k3_c24d3e3k3_c48d3e3k3_t64d2m2v2_t96d2m2v2_t192d2m2v2_t256d2m4v2",
    "elasticvit_m": "r224_s16d1k5_c32d3e3k3_c48d5e3k3_t64d2m2v2_t96d2m4v2_t192d2m4v2_t288d2m5v2",
    "elasticvit_l1": "r256_s16d1k5_c24d3e3k5_c40d3e6k5_t64d2m4v2_t96d2m3v2_t192d2m4v2_t320d2m4v2",
    "elasticvit_l1_5": "r256_s16d2k3_c24d4e3k3_c48d4e4k5_t64d2m4v2_t96d2m5v2_t256d2m3v2_t320d2m5v2",
    "elasticvit_l2": "r256_s16d1k3_c24d3e6k3_c40d4e6k3_t80d2m3v2_t128d2m2v2_t256d2m3v2_t304d2m5v3",
    "elasticvit_l3": "r256_s16d1k5_c32d3e5k3_c48d4e5k5_t80d2m4v2_t128d2m4v2_t256d2m3v2_t320d2m5v2",
}
MODEL_NAMES: tuple[str, ...] = tuple(NAMED_SUBNETS)


class ElasticViTModel(nn.Module):
    """A static ElasticViT network; ``subnet`` records its architecture.

    The input must be ``subnet.resolution`` square (the supernet resizes, this model does not).
    """

    def __init__(self, subnet: Subnet, first_conv: nn.Conv2d, first_bn: nn.BatchNorm2d, stem: nn.Sequential,
                 stages: list[nn.Module], head: ClassifierHead) -> None:
        super().__init__()
        self.subnet = subnet
        self.first_conv, self.first_bn = first_conv, first_bn
        self.stem = stem
        self.stages = nn.Sequential(*stages)
        self.head = head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.hardswish(self.first_bn(self.first_conv(x)))
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def build_model(subnet: Subnet, num_classes: int = 1000, token_norm: TokenNormKind = "groupnorm1",
                dropout: float = 0.2, space: SearchSpace = ELASTICVIT_SPACE) -> ElasticViTModel:
    """A freshly initialised static network for ``subnet`` (same layers as the supernet extracts): the
    constructor behind the registry's builders; build a model by name with ``create_model``."""
    check_subnet(subnet, space)
    check_token_norm(token_norm)
    sides = stage_sides(subnet.resolution, space)
    width = subnet.stem_width
    first_conv = nn.Conv2d(3, width, 3, 2, 1, bias=False)
    stem = nn.Sequential(*(MBConvBlock(width, width, 1, subnet.stem_kernel, 1, se=False)
                           for _ in range(subnet.stem_depth)))
    stages: list[nn.Module] = []
    for stage, stage_space in zip(subnet.conv_stages, space.conv_stages):
        stride = 2 if stage_space.downsample else 1
        stages.append(nn.Sequential(*(
            MBConvBlock(width if index == 0 else stage.width, stage.width, stage.expand, stage.kernel,
                        stride if index == 0 else 1, stage_space.se)
            for index in range(stage.depth))))
        width = stage.width
    for index, (stage, stage_space) in enumerate(zip(subnet.transformer_stages, space.transformer_stages)):
        side = sides[1 + len(space.conv_stages) + index]
        reduction = MBConvBlock(width, stage.width, space.reduction_expand, space.reduction_kernel,
                                2 if stage_space.downsample else 1, se=True)
        blocks = [TransformerBlock(AttentionLayer(stage.width, stage.v_scale, side, token_norm, space.head_dim),
                                   FeedForward(stage.width, stage.mlp_ratio, token_norm))
                  for _ in range(stage.depth)]
        stages.append(ViTStage(reduction, blocks))
        width = stage.width
    head = ClassifierHead(width, space.head_width_multiplier, space.head_hidden, num_classes, dropout)
    return ElasticViTModel(subnet, first_conv, nn.BatchNorm2d(subnet.stem_width), stem, stages, head)


def _canonical_name(name: str) -> str:
    if not isinstance(name, str):
        raise InputError(f"an ElasticViT model name must be a string, got {type(name).__name__} {name!r:.80}")
    key = name.strip().lower().replace(".", "_").replace("-", "_")
    for prefix in ("elasticvit_", "elastic_"):
        key = key.removeprefix(prefix)
    return "elasticvit_" + key


def named_subnet(name: str) -> Subnet:
    """The architecture of a named model (``elasticvit_t1``, ``T1``, ``elastic_L1.5`` …): a lookup, no weights."""
    key = _canonical_name(name)
    if key not in NAMED_SUBNETS:
        raise InputError(f"unknown ElasticViT model {name!r:.80}; known: {', '.join(MODEL_NAMES)}")
    return decode(NAMED_SUBNETS[key])


def display_name(name: str) -> str:
    """The paper's short name of a registered model: ``elasticvit_l1_5`` -> ``L1.5``."""
    return name.removeprefix("elasticvit_").upper().replace("_", ".")


def _from_subnet(subnet: Subnet, label: str, pretrained: bool, checkpoint: str | Path | None, *,
                 num_classes: int = 1000, token_norm: TokenNormKind = "groupnorm1",
                 dropout: float = 0.2) -> ElasticViTModel:
    """Fresh weights, or (``checkpoint`` given) the subnet cut from a supernet checkpoint."""
    if checkpoint is None:
        if pretrained:
            raise InputError(f"no local weights for ElasticViT model {label!r}: pretrained=True needs "
                             "checkpoint=<the reference's released supernet .pth(.tar) or one of our checkpoint "
                             "directories>")
        return build_model(subnet, num_classes=num_classes, token_norm=token_norm, dropout=dropout)
    from .evaluate import check_checkpoint, load_supernet

    check_checkpoint(checkpoint)  # a missing or unreadable file is an InputError naming it
    supernet = load_supernet(checkpoint, num_classes=num_classes, token_norm=token_norm)
    supernet.set_active(subnet)
    return supernet.get_active_subnet().eval()


def _register_named(name: str) -> None:
    short = display_name(name)

    @registry.register_model(name, family="elasticvit", paper="elasticvit", loads_weights=True,
                             aliases=(short, "elastic_" + short),
                             description=f"ElasticViT {short} ({NAMED_SUBNETS[name].split('_')[0][1:]} px)")
    def build(pretrained: bool = False, checkpoint: Path | None = None, *, num_classes: int = 1000,
              token_norm: TokenNormKind = "groupnorm1", dropout: float = 0.2) -> ElasticViTModel:
        return _from_subnet(named_subnet(name), name, pretrained, checkpoint, num_classes=num_classes,
                            token_norm=token_norm, dropout=dropout)


for _model_name in MODEL_NAMES:
    _register_named(_model_name)
del _model_name


@registry.register_family("elasticvit", paper="elasticvit", description="'elasticvit:<subnet encoding>'")
def elasticvit_from_encoding(encoding: str, pretrained: bool = False, checkpoint: Path | None = None, *,
                             num_classes: int = 1000, token_norm: TokenNormKind = "groupnorm1",
                             dropout: float = 0.2) -> ElasticViTModel:
    """Any subnet of the space, ``encoding`` as :func:`moonlit.elasticvit.space.decode` reads it."""
    return _from_subnet(decode(encoding), encoding, pretrained, checkpoint, num_classes=num_classes,
                        token_norm=token_norm, dropout=dropout)


def named_models_table() -> str:
    """Markdown table of the named models: encoding, resolution, MMACs (ours and the reference counter's),
    parameters."""
    from .flops import reference_mmacs, subnet_complexity
    from .space import encode

    lines = ["| model | encoding | res | MMACs (ours) | reference MMACs | parameters (M) |",
             "|---|---|---|---|---|---|"]
    for name in MODEL_NAMES:
        subnet = named_subnet(name)
        complexity = subnet_complexity(subnet)
        lines.append(f"| {name} | `{encode(subnet)}` | {subnet.resolution} | {complexity.macs / 1e6:.1f} | "
                     f"{reference_mmacs(subnet):.1f} | {complexity.params / 1e6:.2f} |")
    return "\n".join(lines) + "\n"

