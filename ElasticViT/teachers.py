"""The teacher ensemble of ElasticViT supernet training (ICCV'23, arXiv 2303.09730, Sec. 4 "Training recipe").

The uniform subnets of every step learn from the average of the teachers' softmax at temperature
``T`` (the reference: ``swsl_resnext101_32x4d`` and ``swsl_resnext101_32x8d``, T = 0.2, i.e. targets
sharpened five-fold). Any timm model serves, by name; weights come from a local file only
(``.safetensors`` or a released ``.pth`` through the restricted unpickler) — the reference fell back
to a hub download when ``t1.pth``/``t2.pth`` were missing, here random weights are allowed for smoke
runs and logged as a warning. Teachers stay in eval mode and receive no gradients.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from moonlit.common.errors import InputError
from moonlit.common.train.pretrained import load_local_weights
from torch import Tensor, nn

__all__ = ["TeacherEnsemble", "build_teacher", "build_teachers"]

logger = logging.getLogger(__name__)


def build_teacher(name: str, pretrained: str | os.PathLike[str] | None = None, num_classes: int | None = None,
                  model_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """timm ``name`` with weights from the local file ``pretrained`` (None: random init, a warning)."""
    import timm

    kwargs = dict(model_kwargs or {})
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if not timm.is_model(name):
        raise InputError(f"teacher {name!r} is not a timm model name (timm.list_models() lists them)")
    model = timm.create_model(name, pretrained=False, **kwargs)
    if pretrained:
        load_local_weights(model, pretrained)
    else:
        logger.warning("teacher %s has random weights (no 'pretrained' file): fine for a smoke run, "
                       "useless for distillation", name)
    return model


class TeacherEnsemble(nn.Module):
    """Average of the teachers' ``softmax(logits / temperature)``; frozen, always in eval mode."""

    def __init__(self, teachers: Sequence[nn.Module], temperature: float = 0.2) -> None:
        super().__init__()
        if not teachers:
            raise ValueError("a teacher ensemble needs at least one teacher")
        if temperature <= 0:
            raise ValueError(f"temperature {temperature} must be positive")
        self.teachers = nn.ModuleList(teachers)
        self.temperature = temperature
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> TeacherEnsemble:
        return super().train(False)  # teachers never leave eval mode (BN statistics, dropout)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """Target probabilities (batch, classes); rows sum to 1."""
        probs = [(teacher(images) / self.temperature).softmax(dim=-1) for teacher in self.teachers]
        return torch.stack(probs).mean(0)


def build_teachers(specs: Sequence[Mapping[str, Any]], temperature: float, num_classes: int | None = None
                   ) -> TeacherEnsemble | None:
    """The ensemble of config entries ``{name, pretrained, kwargs}``; None when ``specs`` is empty."""
    if not specs:
        return None
    teachers = []
    for spec in specs:
        unknown = set(spec) - {"name", "pretrained", "kwargs"}
        if unknown or "name" not in spec:
            raise InputError(f"teacher entry {dict(spec)} must have 'name' and only 'pretrained'/'kwargs' besides")
        teachers.append(build_teacher(str(spec["name"]), spec.get("pretrained"), num_classes, spec.get("kwargs")))
    return TeacherEnsemble(teachers, temperature)
