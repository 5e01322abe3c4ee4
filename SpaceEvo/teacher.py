"""The block-wise KD teacher of SpaceEvo (ICCV'23, arXiv 2303.08308, Sec. 3.3 "block-wise knowledge distillation").

SpaceEvo scores a search space by how well its blocks imitate a strong teacher stage by stage: the
teacher (EfficientNet-B5, fine-tuned with LSQ+ INT8) is cut at the boundaries of the hyperspace's
stages, and every student stage learns to map the teacher's stage input to the teacher's stage output.

:class:`Teacher` wraps any timm model as an ordered list of *segments* (dotted module names run one
after the other) and a map from hyperspace stages to the segment that ends each. For timm's
EfficientNet / MobileNetV3 classes (``conv_stem``, ``bn1``, ``blocks`` of seven stages) the map is
automatic: ``first_conv`` ends at ``bn1`` and ``stage{i}`` at ``blocks.{i}``, whose strides
(2 | 1, 2, 2, 2, 1, 2, 1) are those of the hyperspaces. Other models pass ``segments`` and
``stage_ends``. Either way the strides are checked once with a probe forward: each stage's output
must be ``resolution / (product of the hyperspace strides up to it)`` high, else a ValueError names
the stage.

Differences from the reference, on purpose: the teacher's BatchNorm stays in eval mode during block
KD (the reference left the teacher in train mode, so its targets moved with every batch); weights come
from a local ``pretrained`` file only (safetensors, or a released ``.pth`` through the restricted
unpickler), never from a hub download.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moonlit.common.train.pretrained import load_local_weights

from .ops.lsq_plus import QuantConv2d, QuantLinear, set_quant_mode
from .space import Hyperspace, load_hyperspace

__all__ = ["StageBoundary", "Teacher", "build_teacher", "calibrate_teacher_bn", "finetune_teacher_lsq",
           "quantize_teacher", "resize_images"]

logger = logging.getLogger("moonlit.spaceevo.teacher")

TEACHER_STAGES = ("first_conv", "stage0", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6")


@dataclass(frozen=True)
class StageBoundary:
    """Where a hyperspace stage sits in the teacher: segment range, channels, input downsampling."""

    name: str
    first_segment: int       # index of the first segment of this stage
    last_segment: int        # index of the segment whose output ends it
    in_channels: int
    out_channels: int
    input_downsample: int    # resolution / input height of this stage
    stride: int


def resize_images(images: Tensor, resolution: int) -> Tensor:
    """Bicubic resize to ``resolution`` x ``resolution`` (the reference's multi-resolution KD), no-op if equal."""
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images
    return F.interpolate(images, size=(resolution, resolution), mode="bicubic", align_corners=False)


def _default_segments(model: nn.Module) -> tuple[list[str], dict[str, str]] | None:
    """Segments and stage ends of timm's EfficientNet-style models, None for other models."""
    blocks = getattr(model, "blocks", None)
    if not (hasattr(model, "conv_stem") and hasattr(model, "bn1") and isinstance(blocks, nn.Sequential)):
        return None
    if len(blocks) != len(TEACHER_STAGES) - 1:
        return None
    segments = ["conv_stem", "bn1"] + [f"blocks.{i}" for i in range(len(blocks))]
    ends = {"first_conv": "bn1", **{f"stage{i}": f"blocks.{i}" for i in range(len(blocks))}}
    return segments, ends


class Teacher(nn.Module):
    """A frozen image model cut into the hyperspace's stages; :meth:`stage_io` returns (input, output) pairs.

    The wrapped model is always in eval mode (``train()`` does not change that) and has no gradients;
    :func:`finetune_teacher_lsq` is the one place that trains it.
    """

    def __init__(self, model: nn.Module, hyperspace: str | Hyperspace, segments: Sequence[str] | None = None,
                 stage_ends: Mapping[str, str] | None = None, probe_resolution: int | None = None) -> None:
        super().__init__()
        self.spec = load_hyperspace(hyperspace) if isinstance(hyperspace, str) else hyperspace
        if segments is None or stage_ends is None:
            found = _default_segments(model)
            if found is None:
                raise ValueError(f"{type(model).__name__} is not an EfficientNet-style timm model (conv_stem, bn1 and "
                                 f"{len(TEACHER_STAGES) - 1} stages in blocks); pass segments=[...] and stage_ends="
                                 f"{{stage: segment}} for the stages {list(TEACHER_STAGES)}")
            segments = list(segments or found[0])
            stage_ends = dict(stage_ends or found[1])
        self.model = model
        self.segment_names = list(segments)
        modules = dict(model.named_modules())
        missing = [name for name in self.segment_names if name not in modules]
        if missing:
            raise ValueError(f"segments {missing} are not modules of {type(model).__name__}")
        self._segments = [modules[name] for name in self.segment_names]
        self.boundaries = self._locate(dict(stage_ends), probe_resolution or min(self.spec.lut_resolutions))
        self.requires_grad_(False)
        self.model.eval()

    def _locate(self, stage_ends: dict[str, str], resolution: int) -> dict[str, StageBoundary]:
        unknown = sorted(set(stage_ends) - set(TEACHER_STAGES))
        if unknown:
            raise ValueError(f"stage_ends names {unknown}; expected stages among {list(TEACHER_STAGES)}")
        ends = []
        for stage in TEACHER_STAGES:
            if stage not in stage_ends:
                raise ValueError(f"stage_ends has no entry for {stage}; expected one segment per stage "
                                 f"{list(TEACHER_STAGES)}")
            if stage_ends[stage] not in self.segment_names:
                raise ValueError(f"stage_ends[{stage!r}] = {stage_ends[stage]!r} is not one of the segments "
                                 f"{self.segment_names}")
            ends.append(self.segment_names.index(stage_ends[stage]))
        if any(b <= a for a, b in itertools.pairwise(ends)):
            raise ValueError(f"stage ends {dict(zip(TEACHER_STAGES, ends))} are not strictly increasing segments")
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            x = torch.zeros(1, 3, resolution, resolution)
            shapes_in, shapes_out = [], []
            for index, module in enumerate(self._segments[: ends[-1] + 1]):
                shapes_in.append(x.shape)
                x = module(x)
                shapes_out.append(x.shape)
        self.model.train(was_training)
        boundaries, start, downsample = {}, 0, 1
        for stage, end in zip(TEACHER_STAGES, ends):
            spec_stage = next(s for s in self.spec.stages if s.name == stage)
            in_shape, out_shape = shapes_in[start], shapes_out[end]
            expected = resolution // (downsample * spec_stage.stride)
            if in_shape[-1] != resolution // downsample or out_shape[-1] != expected:
                raise ValueError(
                    f"teacher stage {stage} (segments {self.segment_names[start]}..{self.segment_names[end]}) maps "
                    f"{in_shape[-1]}px to {out_shape[-1]}px at resolution {resolution}; hyperspace "
                    f"'{self.spec.name}' expects {resolution // downsample}px -> {expected}px (stride {spec_stage.stride})")
            boundaries[stage] = StageBoundary(stage, start, end, int(in_shape[1]), int(out_shape[1]), downsample,
                                              spec_stage.stride)
            downsample *= spec_stage.stride
            start = end + 1
        return boundaries

    def train(self, mode: bool = True) -> Teacher:
        # Eval-mode BatchNorm always: block-KD targets must not depend on the batch.
        super().train(False)
        return self

    def boundary(self, stage: str) -> StageBoundary:
        if stage not in self.boundaries:
            raise ValueError(f"unknown teacher stage {stage!r}; expected one of {list(self.boundaries)}")
        return self.boundaries[stage]

    @torch.no_grad()
    def stage_io(self, images: Tensor, stages: Iterable[str]) -> dict[str, tuple[Tensor, Tensor]]:
        """``{stage: (teacher input of the stage, teacher output)}`` from one forward pass of ``images``."""
        wanted = {self.boundary(s).name: self.boundary(s) for s in stages}
        if not wanted:
            return {}
        last = max(b.last_segment for b in wanted.values())
        starts = {b.first_segment: name for name, b in wanted.items()}
        ends = {b.last_segment: name for name, b in wanted.items()}
        inputs: dict[str, Tensor] = {}
        result: dict[str, tuple[Tensor, Tensor]] = {}
        x = images
        for index, module in enumerate(self._segments[: last + 1]):
            if index in starts:
                inputs[starts[index]] = x
            x = module(x)
            if index in ends:
                result[ends[index]] = (inputs[ends[index]], x)
        return result

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)


def build_teacher(model_name: str, hyperspace: str | Hyperspace, pretrained: str | os.PathLike[str] | None = None,
                  num_classes: int | None = None, segments: Sequence[str] | None = None,
                  stage_ends: Mapping[str, str] | None = None, lsq: bool = False,
                  model_kwargs: Mapping[str, Any] | None = None) -> Teacher:
    """A timm ``model_name`` (random init, or ``pretrained`` weights from a local file) cut into stages.

    ``lsq``: replace its convs/linears by LSQ+ ops in 8-bit mode *before* loading, so a checkpoint of a
    fine-tuned INT8 teacher (with its quantizer scales) loads as it was saved.
    """
    import timm

    kwargs = dict(model_kwargs or {})
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = timm.create_model(model_name, pretrained=False, **kwargs)
    if lsq:
        quantize_teacher(model)
    if pretrained:
        load_local_weights(model, pretrained)
    return Teacher(model, hyperspace, segments, stage_ends)


def quantize_teacher(model: nn.Module, bits: int = 8) -> int:
    """Swap every plain ``nn.Conv2d`` / ``nn.Linear`` for its LSQ+ twin (weights copied), switched to ``bits``.

    Returns the number of swapped layers. Subclasses with their own forward (timm's ``Conv2dSame``)
    are left in FP32 and logged.
    """
    swapped, skipped = 0, []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if type(child) is nn.Conv2d:
                square = all(len(set(v)) == 1 for v in (child.kernel_size, child.stride, child.dilation))
                if not square or not isinstance(child.padding, tuple) or len(set(child.padding)) != 1 \
                        or child.padding_mode != "zeros":
                    skipped.append(full)
                    continue
                new = QuantConv2d(child.in_channels, child.out_channels, child.kernel_size[0], child.stride[0],
                                  child.padding[0], child.dilation[0], child.groups, child.bias is not None)
            elif type(child) is nn.Linear:
                new = QuantLinear(child.in_features, child.out_features, child.bias is not None)
            else:
                if isinstance(child, (nn.Conv2d, nn.Linear)):
                    skipped.append(full)
                continue
            with torch.no_grad():
                new.weight.copy_(child.weight)
                if child.bias is not None:
                    new.bias.copy_(child.bias)
            new.to(child.weight.device)
            setattr(parent, name, new)
            swapped += 1
    if skipped:
        logger.warning("left %d layers in FP32 (not plain Conv2d/Linear): %s", len(skipped), skipped[:5])
    set_quant_mode(model, bits)
    return swapped


@torch.no_grad()
def calibrate_teacher_bn(teacher: Teacher, batches: Iterable[Tensor]) -> int:
    """Re-estimate the teacher's BatchNorm statistics (cumulative average) on ``batches``; returns the count.

    For randomly initialised teachers (quickstart, tests): eval-mode BN with the default running
    statistics leaves activations badly scaled; this gives them the statistics of the data.
    """
    norms = [m for m in teacher.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    count = 0
    for images in batches:
        teacher.model(images)
        count += 1
    for norm in norms:
        norm.eval()
    return count


def finetune_teacher_lsq(teacher: Teacher, batches: Iterable[tuple[Tensor, Tensor]], lr: float = 1e-3,
                         momentum: float = 0.9, weight_decay: float = 1e-4, bits: int = 8) -> list[float]:
    """The reference's LSQ+ INT8 fine-tune step: quantize (if not yet), then SGD on cross-entropy.

    Defaults from the reference's ``lsq_finetune_teacher.py`` (SGD, lr 1e-3, momentum 0.9, wd 1e-4,
    one epoch at paper scale). The model trains in train mode (BN statistics adapt) and is frozen in
    eval mode afterwards. Returns the loss of every step.
    """
    model = teacher.model
    if not any(isinstance(m, (QuantConv2d, QuantLinear)) for m in model.modules()):
        quantize_teacher(model, bits)
    else:
        set_quant_mode(model, bits)
    model.requires_grad_(True)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    losses = []
    model.train()
    try:
        for images, labels in batches:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        model.eval()
        model.requires_grad_(False)
    return losses
