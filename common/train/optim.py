"""Optimizers with weight-decay exemptions, built by name: the shared half of every training recipe.

:func:`build_optimizer` puts the trainable parameters a ``no_decay(name, parameter)`` rule exempts
into a second group with weight decay 0; everything else gets ``weight_decay``. The rules differ
between papers on purpose: :func:`is_one_dim` (norms, biases, LSQ+ scales; timm's and SpaceEvo's
rule) and :func:`one_dim_or_in` (ElasticViT: also every parameter of its convolutional blocks).
Hydra configs pick the optimizer with the ``optim`` group (``configs/optim/{sgd,adamw}.yaml``), read by
:func:`build_optimizer_from_config`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from moonlit.common.errors import InputError

__all__ = ["OPTIMIZERS", "OPTIMIZER_OPTIONS", "build_optimizer", "build_optimizer_from_config", "is_one_dim",
           "one_dim_or_in"]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}
# The config keys of each optimizer, beyond lr and weight_decay, that are passed on to it.
OPTIMIZER_OPTIONS: dict[str, tuple[str, ...]] = {"sgd": ("momentum", "nesterov"), "adamw": ("betas", "eps")}

NoDecayRule = Callable[[str, nn.Parameter], bool]


def is_one_dim(name: str, parameter: nn.Parameter) -> bool:
    """True for parameters with at most one dimension (norm affines, biases, quantizer scales)."""
    return parameter.dim() <= 1


def one_dim_or_in(exempt_ids: Collection[int]) -> NoDecayRule:
    """A rule exempting 1-D parameters and the parameters whose ``id`` is in ``exempt_ids``."""
    exempt = frozenset(exempt_ids)
    return lambda name, parameter: parameter.dim() <= 1 or id(parameter) in exempt


def build_optimizer(model: nn.Module | Iterable[nn.Parameter], name: str, lr: float, weight_decay: float, *,
                    no_decay: NoDecayRule | None = is_one_dim, **kwargs: Any) -> torch.optim.Optimizer:
    """``OPTIMIZERS[name]`` over ``model``'s trainable parameters (``requires_grad``), in module order.

    With a ``no_decay`` rule the param groups are ``[{decayed, weight_decay}, {exempt, 0.0}]``;
    with ``no_decay=None`` there is one group and every parameter decays (then ``model`` may also be
    a plain iterable of parameters). ``kwargs`` go to the optimizer (``momentum``, ``nesterov``,
    ``betas``, ``eps`` ...).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} is not one of {sorted(OPTIMIZERS)}")
    if no_decay is None:
        parameters = model.parameters() if isinstance(model, nn.Module) else model
        groups = [{"params": [p for p in parameters if p.requires_grad]}]
        return OPTIMIZERS[name](groups, lr=lr, weight_decay=weight_decay, **kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"no_decay needs parameter names: pass the nn.Module, not a {type(model).__name__}")
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    exempt = [no_decay(n, p) for n, p in trainable]
    decayed = [p for (_, p), skip in zip(trainable, exempt, strict=True) if not skip]
    plain = [p for (_, p), skip in zip(trainable, exempt, strict=True) if skip]
    return OPTIMIZERS[name]([{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}],
                            lr=lr, **kwargs)


def build_optimizer_from_config(model: nn.Module | Iterable[nn.Parameter], node: Mapping[str, Any],
                                lr: float | None = None, *, no_decay: NoDecayRule | None = is_one_dim
                                ) -> torch.optim.Optimizer:
    """:func:`build_optimizer` from an ``optim`` config node: its ``name``, ``weight_decay``, ``lr``
    (unless ``lr`` is given, e.g. scaled with the batch) and that optimizer's :data:`OPTIMIZER_OPTIONS`
    present in the node. Other keys (an app's schedule keys) are not the optimizer's and are left alone.
    """
    name = node.get("name")
    if name not in OPTIMIZERS:
        raise InputError(f"optim.name = {name!r}; expected one of {sorted(OPTIMIZERS)} (configs/optim/)")
    for key in ("weight_decay",) + (("lr",) if lr is None else ()):
        if node.get(key) is None:
            raise InputError(f"optim.{key} is missing for optimizer {name!r}; expected a number")
    options = {key: node[key] for key in OPTIMIZER_OPTIONS[name] if node.get(key) is not None}
    if "betas" in options:
        options["betas"] = tuple(options["betas"])
    return build_optimizer(model, name, float(node["lr"]) if lr is None else lr, float(node["weight_decay"]),
                           no_decay=no_decay, **options)
