"""Block-wise knowledge distillation of SpaceEvo (ICCV'23, arXiv 2303.08308, Sec. 3.3).

Every (stage, block type) of a hyperspace becomes a :class:`StudentStage`: a dynamic stage of that block
type over the stage's whole width list, between two 1x1 projections (teacher stage input -> student
input width, student width -> teacher stage output width). It learns to reproduce the teacher's stage
output from the teacher's stage input with the sandwich rule (per step: the largest sub-stage against
the teacher, then the smallest and two random ones against the largest sub-stage's output), first in
FP32 (reference: 5 epochs), then with LSQ+ INT8 fake quantization (1 epoch). Facts from the reference's
``train_block_kd.py`` / ``lsq_block_kd.py``: Adam with weight decay 1e-4, gradients clipped at value 1,
per-stage learning rates, cosine decay, multi-resolution inputs resized bicubically.

Loss (noise-to-signal ratio), over feature maps ``S`` (student) and ``T`` (teacher) of shape N x C x H x W::

    NSR = mean_{n,c} [ mean_{h,w} (S - T)^2 / var_{h,w}(X) ]      X = T (default) or S (the reference)

with the unbiased variance over the spatial positions (``torch.var``). The reference divides by the
*student's* variance, which lets a student lower its loss by inflating its own variance; the teacher's
is the natural normaliser and our default, the reference's form is ``variance_of="student"``.

Differences from the reference, on purpose: teacher BN in eval mode; sub-stages, data order and each
sample's augmentation drawn from per-step seeds, so every rank samples the same sub-stage and a
resumed run (at any step, with any number of loader workers) equals an
uninterrupted one (the reference's resume loop ran ``range(start, epochs - start)``); checkpoints
through :mod:`moonlit.common.train.checkpoint`; gloo on CPU, nccl on GPU via torchrun.

``python -m moonlit.spaceevo.block_kd`` (config ``configs/spaceevo/block_kd.yaml``).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from moonlit.common.config import hydra_app, to_container
from moonlit.common.data.images import ImageDatasets, build_image_data
from moonlit.common.data.loaders import SeededItems
from moonlit.common.train import checkpoint as ckpt
from moonlit.common.train import dist as mdist
from moonlit.common.train.seed import step_seed

from .ops.blocks import BlockChoice
from .ops.dynamic import DynamicConv2d
from .ops.lsq_plus import set_quant_mode
from .ops.stages import BlockSpec, DynamicStage
from .space import Hyperspace, load_hyperspace
from .teacher import (
    Teacher,
    build_teacher,
    calibrate_teacher_bn,
    finetune_teacher_lsq,
    resize_images,
)

__all__ = ["KDSettings", "StudentStage", "SubStage", "calibrate_bn", "evaluate_nsr", "hyperspace_block_spec",
           "load_student", "main", "nsr_loss", "run", "run_block_kd", "student_name", "train_student"]

logger = logging.getLogger("moonlit.spaceevo.block_kd")
VARIANCE_FORMS = ("teacher", "student")
_VARIANCE_FLOOR = 1e-12  # keeps a constant channel (variance 0) from dividing by zero
SANDWICH = ("max", "min", "random", "random")


def nsr_loss(student: Tensor, teacher: Tensor, variance_of: str = "teacher") -> Tensor:
    """Noise-to-signal ratio of ``student`` vs ``teacher`` feature maps (N x C x H x W), see the module docstring."""
    if variance_of not in VARIANCE_FORMS:
        raise ValueError(f"variance_of={variance_of!r}; expected one of {VARIANCE_FORMS}")
    if student.shape != teacher.shape or student.dim() != 4:
        raise ValueError(f"NSR needs two N x C x H x W maps of one shape, got {tuple(student.shape)} and "
                         f"{tuple(teacher.shape)}")
    reference = teacher if variance_of == "teacher" else student
    variance = torch.var(reference, dim=(2, 3)).clamp_min(_VARIANCE_FLOOR)
    return ((student - teacher) ** 2).mean(dim=(2, 3)).div(variance).mean()


def hyperspace_block_spec(spec: Hyperspace, block: int) -> BlockSpec:
    """The dynamic-block spec of block digit ``block``, from the hyperspace's YAML (works for any hyperspace)."""
    if not 0 <= block < len(spec.block_types):
        raise ValueError(f"block digit {block} is out of range for '{spec.name}' (0..{len(spec.block_types) - 1})")
    bt = spec.block_types[block]
    return BlockSpec(bt.type, tuple(bt.kernels), tuple(bt.expands) or None, bt.activation)


def student_name(stage: int, block: int) -> str:
    """``stage{i}_{block}``: the reference's model name, also the LUT file prefix."""
    return f"stage{stage}_{block}"


@dataclass(frozen=True)
class SubStage:
    """An active sub-stage: its input width and its blocks as the LUT writes them, ``(kernel, width, expand)``."""

    in_channels: int
    blocks: tuple[tuple[int, int, int | float | None], ...]


class StudentStage(nn.Module):
    """in_proj (1x1) -> :class:`DynamicStage` of one block type -> out_proj (1x1), see the module docstring."""

    def __init__(self, hyperspace: str | Hyperspace, stage: int, block: int, teacher_in: int, teacher_out: int) -> None:
        super().__init__()
        spec = load_hyperspace(hyperspace) if isinstance(hyperspace, str) else hyperspace
        if not 1 <= stage <= len(spec.searchable_stages):
            raise ValueError(f"stage {stage} is not a searchable stage of '{spec.name}' "
                             f"(1..{len(spec.searchable_stages)})")
        self.hyperspace, self.stage_index, self.block = spec.name, stage, block
        self.stage_spec = spec.stages[stage + 1]
        self.in_channels_list = tuple(spec.stages[stage].widths)  # the previous stage's widths
        self.block_spec = hyperspace_block_spec(spec, block)
        self.in_proj = DynamicConv2d(teacher_in, max(self.in_channels_list), (1,))
        self.stage = DynamicStage(self.block_spec, max(self.in_channels_list), self.stage_spec.widths,
                                  self.stage_spec.depths, self.stage_spec.stride)
        self.out_proj = DynamicConv2d(max(self.stage_spec.widths), teacher_out, (1,))
        self.active_in_channels = max(self.in_channels_list)

    @property
    def name(self) -> str:
        return student_name(self.stage_index, self.block)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_proj(self.stage(self.in_proj(x)))

    def set_active(self, sub: SubStage) -> None:
        if sub.in_channels not in self.in_channels_list:
            raise ValueError(f"{self.name}: input width {sub.in_channels} is not one of {list(self.in_channels_list)}")
        self._set_in_channels(sub.in_channels)
        self.stage.set_active(depth=len(sub.blocks), blocks=[BlockChoice(w, k, e) for k, w, e in sub.blocks])

    def active(self) -> SubStage:
        return SubStage(self.active_in_channels,
                        tuple((b.active_kernel_size, b.active_out_channels, b.active_expand_ratio)
                              for b in self.stage.active_blocks))

    def set_max(self) -> None:
        self.stage.set_max()
        self._set_in_channels(max(self.in_channels_list))

    def set_min(self) -> None:
        self.stage.set_min()
        self._set_in_channels(min(self.in_channels_list))

    def _set_in_channels(self, width: int) -> None:
        """The stage's input width is the input projection's output width."""
        self.in_proj.set_active(out_channels=width)
        self.active_in_channels = width

    def sample(self, rng: random.Random, widths: Sequence[int] | None = None) -> SubStage:
        """Uniform input width, depth, and per block kernel, width (from ``widths``, default all) and expand."""
        widths = tuple(widths or self.stage_spec.widths)
        bad = sorted(set(widths) - set(self.stage_spec.widths))
        if bad:
            raise ValueError(
                f"{self.name}: widths {bad} are not in the stage's width list {list(self.stage_spec.widths)}")
        spec = self.block_spec
        blocks = tuple((rng.choice(spec.kernel_list), rng.choice(widths),
                        rng.choice(spec.expand_list) if spec.expand_list else None)
                       for _ in range(rng.choice(self.stage_spec.depths)))
        sub = SubStage(rng.choice(self.in_channels_list), blocks)
        self.set_active(sub)
        return sub

    def set_kind(self, kind: str, rng: random.Random) -> None:
        {"max": self.set_max, "min": self.set_min, "random": lambda: self.sample(rng)}[kind]()

    def get_active_substage(self) -> nn.Sequential:
        """The active sub-stage without projections, as static modules (what the LUT measures)."""
        return self.stage.get_active_subnet(self.active_in_channels)


# --- training ----------------------------------------------------------------------------------------

@dataclass
class KDSettings:
    """One student's training: step counts per phase, optimiser, resolutions, loss form, checkpoints."""

    fp32_steps: int
    lsq_steps: int
    fp32_lr: float = 0.01
    lsq_lr: float = 0.00025
    weight_decay: float = 1e-4
    grad_clip_value: float | None = 1.0
    batch_size: int = 64
    resolutions: tuple[int, ...] = (224,)
    variance_of: str = "teacher"
    distill_from_teacher: bool = False  # True: min/random sub-stages learn from the teacher, not the max sub-stage
    seed: int = 0
    checkpoint_every: int = 500
    num_workers: int = 0

    @property
    def total_steps(self) -> int:
        return self.fp32_steps + self.lsq_steps


class StepBatchSampler:
    """Index batches for steps ``start..stop-1``: a per-epoch permutation seeded by (seed, epoch), split by rank."""

    def __init__(self, size: int, batch_size: int, seed: int, start: int, stop: int, rank: int = 0,
                 world_size: int = 1) -> None:
        self.per_step = batch_size * world_size
        if size < self.per_step:
            raise ValueError(f"dataset of {size} images is smaller than one step's {batch_size} x {world_size} ranks")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start, self.stop, self.rank = start, stop, rank
        self.steps_per_epoch = size // self.per_step

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, order = -1, None
        for step in range(self.start, self.stop):
            if step // self.steps_per_epoch != epoch:
                epoch = step // self.steps_per_epoch
                order = torch.randperm(self.size, generator=torch.Generator().manual_seed(step_seed(self.seed, epoch)))
            offset = (step % self.steps_per_epoch) * self.per_step + self.rank * self.batch_size
            yield order[offset: offset + self.batch_size].tolist()


class _KeyedBatches:
    """The sampler's batches as ``(index, seed)`` items for :class:`SeededItems`: each sample's
    augmentation is seeded by (seed, step, its place in the global batch), so a run resumed at any
    step loads exactly the images of the uninterrupted run, with any number of workers."""

    def __init__(self, sampler: StepBatchSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        first = self.sampler.rank * self.sampler.batch_size
        for step, batch in enumerate(self.sampler, start=self.sampler.start):
            yield [(index, step_seed(self.sampler.seed, step, first + place)) for place, index in enumerate(batch)]


def _optimizer(student: nn.Module, settings: KDSettings, phase: str) -> tuple[torch.optim.Optimizer, Any]:
    lr = settings.fp32_lr if phase == "fp32" else settings.lsq_lr
    steps = settings.fp32_steps if phase == "fp32" else settings.lsq_steps
    optimizer = torch.optim.Adam(student.parameters(), lr=lr, weight_decay=settings.weight_decay)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))


def _sandwich_step(student: StudentStage, model: nn.Module, teacher: Teacher, images: Tensor, step: int,
                   settings: KDSettings) -> list[float]:
    """Four forward/backward passes (max, min, random, random); gradients accumulate."""
    rng = random.Random(step_seed(settings.seed, step))  # same sub-stages and resolutions on every rank
    stage = f"stage{student.stage_index}"
    features: dict[int, tuple[Tensor, Tensor]] = {}
    losses = []
    for kind in SANDWICH:
        resolution = {"max": max, "min": min}.get(kind, rng.choice)(settings.resolutions)
        if resolution not in features:
            features[resolution] = teacher.stage_io(resize_images(images, resolution), [stage])[stage]
        teacher_in, teacher_out = features[resolution]
        target = teacher_out
        if kind != "max" and not settings.distill_from_teacher:
            student.set_max()
            with torch.no_grad():
                target = student(teacher_in)
        student.set_kind(kind, rng)
        loss = nsr_loss(model(teacher_in), target, settings.variance_of)
        loss.backward()
        losses.append(float(loss.detach()))
    return losses


def _phase(step: int, settings: KDSettings) -> str:
    return "fp32" if step < settings.fp32_steps else "lsq"


def train_student(student: StudentStage, teacher: Teacher, dataset: Dataset, settings: KDSettings,
                  checkpoint_dir: str | Path, ctx: mdist.DistContext | None = None,
                  stop_after: int | None = None) -> dict[str, Any]:
    """Train (or resume) one student for ``settings.total_steps`` steps; ``stop_after`` ends early (tests: a kill).

    Returns ``{"steps", "resumed_from", "losses"}`` (losses of the steps run here, max sub-stage first).
    """
    ctx = ctx or mdist.init_distributed("cpu")
    student.to(ctx.device)
    teacher.to(ctx.device)
    checkpoint_dir = Path(checkpoint_dir)
    latest = ckpt.latest_checkpoint(checkpoint_dir)
    start = 0
    if latest is not None:
        start = int(json.loads((latest / "meta.json").read_text())["step"])
    phase = _phase(start, settings)
    if phase == "lsq":
        set_quant_mode(student, 8)
    optimizer, scheduler = _optimizer(student, settings, phase)
    if latest is not None:
        state = ckpt.load_checkpoint(latest, student, optimizer, scheduler, map_location=ctx.device)
        logger.info("%s: resumed from %s at step %d", student.name, state.path, state.step)
    model = mdist.wrap_ddp(student, ctx, find_unused_parameters=True)
    stop = settings.total_steps if stop_after is None else min(stop_after, settings.total_steps)
    sampler = StepBatchSampler(len(dataset), settings.batch_size, settings.seed, start, stop, ctx.rank, ctx.world_size)
    loader = DataLoader(SeededItems(dataset), batch_sampler=_KeyedBatches(sampler), num_workers=settings.num_workers)
    arch = {"hyperspace": student.hyperspace, "stage": student.stage_index, "block": student.block,
            "teacher_in": student.in_proj.max_in_channels, "teacher_out": student.out_proj.max_out_channels}
    history = []
    step = start
    student.train()
    for step, (images, _) in enumerate(loader, start=start):
        if _phase(step, settings) != phase:  # FP32 -> LSQ+: quantizers on, fresh optimiser at the LSQ+ lr
            phase = "lsq"
            set_quant_mode(student, 8)
            optimizer, scheduler = _optimizer(student, settings, phase)
        losses = _sandwich_step(student, model, teacher, images.to(ctx.device), step, settings)
        if settings.grad_clip_value:
            torch.nn.utils.clip_grad_value_(student.parameters(), settings.grad_clip_value)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        history.append(losses)
        done = step + 1
        if done % settings.checkpoint_every == 0 or done in (settings.fp32_steps, stop):
            _average_bn_statistics(student)
            if ctx.is_main:
                ckpt.save_checkpoint(checkpoint_dir, step=done, model=student, optimizer=optimizer, scheduler=scheduler,
                                     arch=arch, extra={"phase": _phase(done - 1, settings), "losses": losses})
            mdist.barrier()
    return {"steps": stop, "resumed_from": start, "losses": history}


def _average_bn_statistics(student: nn.Module) -> None:
    """Average BN running statistics over ranks (the no-grad max-sub-stage passes update them per rank)."""
    for norm in student.modules():
        if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.running_mean is not None:
            mdist.all_reduce_mean(norm.running_mean)
            mdist.all_reduce_mean(norm.running_var)


def load_student(checkpoint_dir: str | Path, device: str | torch.device = "cpu") -> StudentStage:
    """The student saved last in ``checkpoint_dir`` (quant mode on if it had reached the LSQ+ phase)."""
    latest = ckpt.latest_checkpoint(checkpoint_dir)
    if latest is None:
        raise FileNotFoundError(f"no student checkpoint in {checkpoint_dir}; run moonlit.spaceevo.block_kd first")
    meta = json.loads((latest / "meta.json").read_text())
    arch = meta["arch"]
    student = StudentStage(arch["hyperspace"], arch["stage"], arch["block"], arch["teacher_in"], arch["teacher_out"])
    if (meta.get("extra") or {}).get("phase") == "lsq":
        set_quant_mode(student, 8)
    ckpt.load_checkpoint(latest, student, map_location=device)
    return student.eval()


# --- evaluation --------------------------------------------------------------------------------------

@torch.no_grad()
def calibrate_bn(student: nn.Module, inputs: Sequence[Tensor]) -> None:
    """Reset the BatchNorm statistics and re-estimate them (cumulative average) on ``inputs``; eval mode after."""
    norms = [m for m in student.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    student.train()
    for x in inputs:
        student(x)
    student.eval()
    _average_bn_statistics(student)  # ranks saw different batches


@torch.no_grad()
def evaluate_nsr(student: nn.Module, pairs: Sequence[tuple[Tensor, Tensor]], variance_of: str = "teacher") -> float:
    """Image-weighted mean NSR of ``student`` on (teacher input, teacher output) batches (eval mode)."""
    student.eval()
    total, count = 0.0, 0
    for teacher_in, teacher_out in pairs:
        total += float(nsr_loss(student(teacher_in), teacher_out, variance_of)) * len(teacher_in)
        count += len(teacher_in)
    if count == 0:
        raise ValueError("evaluate_nsr got no batches")
    return total / count



# --- the app -----------------------------------------------------------------------------------------

def build_datasets(cfg: DictConfig, is_main: bool = True) -> ImageDatasets:
    """The ``data`` group's train / holdout splits (configs/data/) at the largest KD resolution; the main
    rank writes generated images (``data=generated``) while the others wait."""
    return build_image_data(cfg.data, is_main=is_main, img_size=max(cfg.resolutions))


def _batches(dataset: Dataset, batch_size: int, count: int, labels: bool = False) -> list[Any]:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    out = []
    for i, (images, targets) in enumerate(loader):
        if i >= count:
            break
        out.append((images, targets) if labels else images)
    return out


def prepare_teacher(cfg: DictConfig, datasets: dict[str, Dataset], out_dir: Path, ctx: mdist.DistContext) -> Teacher:
    """Build the teacher; optionally re-estimate its BN statistics and LSQ+ fine-tune it (rank 0, then shared)."""
    t = cfg.teacher
    kwargs = {key: OmegaConf.to_container(t[key], resolve=True) if OmegaConf.is_config(t[key]) else t[key]
              for key in ("num_classes", "segments", "stage_ends", "model_kwargs")}
    teacher = build_teacher(t.model, cfg.hyperspace, t.pretrained, lsq=t.pretrained_is_lsq, **kwargs)
    info = {"model": t.model, "weights": t.pretrained, "lsq": bool(t.pretrained_is_lsq), **kwargs}
    teacher.info = info  # what the LUT builder needs to rebuild this teacher (written to block_kd.json)
    if not (t.calibrate_bn_batches or t.lsq_finetune.steps):
        return teacher
    saved = out_dir / "teacher" / "model.safetensors"
    if ctx.is_main and not saved.exists():
        if t.calibrate_bn_batches:
            calibrate_teacher_bn(teacher, _batches(datasets["train"], cfg.batch_size, t.calibrate_bn_batches))
        if t.lsq_finetune.steps:
            finetune_teacher_lsq(teacher, _batches(datasets["train"], cfg.batch_size, t.lsq_finetune.steps, True),
                                 lr=t.lsq_finetune.lr)
        saved.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in teacher.model.state_dict().items()}, str(saved))
    mdist.barrier()
    info.update(weights=str(saved), lsq=bool(t.pretrained_is_lsq or t.lsq_finetune.steps))
    teacher = build_teacher(info["model"], cfg.hyperspace, info["weights"], lsq=info["lsq"], **kwargs)
    teacher.info = info
    return teacher


def run_block_kd(cfg: DictConfig) -> dict[str, Any]:
    """Train every selected (stage, block type) student; writes ``block_kd.json`` beside the students."""
    ctx = mdist.init_distributed(cfg.device)
    out_dir = Path(cfg.output_dir)
    spec = load_hyperspace(cfg.hyperspace)
    datasets = build_datasets(cfg, ctx.is_main)
    teacher = prepare_teacher(cfg, datasets, out_dir, ctx)
    steps_per_epoch = len(datasets["train"]) // (cfg.batch_size * ctx.world_size)
    stages = list(cfg.stages or range(1, len(spec.searchable_stages) + 1))
    blocks = list(cfg.blocks if cfg.blocks is not None else range(len(spec.block_types)))
    eval_batches = _batches(datasets.get("holdout", datasets["val"]), cfg.batch_size, cfg.eval_batches)
    results = {}
    # one bar over the students; each student's result goes into block_kd.json and main's printout
    bar = tqdm(total=len(stages) * len(blocks), desc="block KD", unit="student", disable=not ctx.is_main)
    for stage in stages:
        boundary = teacher.boundary(f"stage{stage}")
        for block in blocks:
            student = StudentStage(spec, stage, block, boundary.in_channels, boundary.out_channels)
            settings = KDSettings(
                fp32_steps=cfg.fp32.steps if cfg.fp32.steps is not None else round(cfg.fp32.epochs * steps_per_epoch),
                lsq_steps=cfg.lsq.steps if cfg.lsq.steps is not None else round(cfg.lsq.epochs * steps_per_epoch),
                fp32_lr=cfg.fp32.lr[stage - 1], lsq_lr=cfg.lsq.lr[stage - 1], weight_decay=cfg.weight_decay,
                grad_clip_value=cfg.grad_clip_value, batch_size=cfg.batch_size, resolutions=tuple(cfg.resolutions),
                variance_of=cfg.variance_of, distill_from_teacher=cfg.distill_from_teacher, seed=cfg.seed,
                checkpoint_every=cfg.checkpoint_every, num_workers=cfg.data.num_workers)
            trained = train_student(student, teacher, datasets["train"], settings, out_dir / "students" / student.name,
                                    ctx)
            results[student.name] = {"steps": trained["steps"], "resumed_from": trained["resumed_from"],
                                     "last_losses": trained["losses"][-1] if trained["losses"] else None,
                                     **_final_eval(student, teacher, eval_batches, settings, stage)}
            logger.debug("%s: %s", student.name, results[student.name])
            bar.set_postfix_str(student.name, refresh=False)
            bar.update()
    bar.close()
    summary = {"hyperspace": spec.name, "teacher": teacher.info, "world_size": ctx.world_size, "students": results,
               "config": to_container(cfg)}
    if ctx.is_main:
        (out_dir / "block_kd.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def _final_eval(student: StudentStage, teacher: Teacher, images: Sequence[Tensor], settings: KDSettings,
                stage: int) -> dict[str, float]:
    """Held-out NSR of the largest and smallest sub-stages at the largest resolution (BN recalibrated)."""
    if not images:
        return {}
    name = f"stage{stage}"
    pairs = [teacher.stage_io(resize_images(x, max(settings.resolutions)), [name])[name] for x in images]
    result = {}
    for kind in ("max", "min"):
        student.set_kind(kind, random.Random(0))
        calibrate_bn(student, [p[0] for p in pairs])
        result[f"nsr_{kind}"] = evaluate_nsr(student, pairs, settings.variance_of)
    return result


def run(cfg: DictConfig) -> dict[str, Any]:
    """The work behind ``python -m moonlit.spaceevo.block_kd``: rank-aware logging, :func:`run_block_kd`, and the
    process group torn down afterwards (also on error); returns the summary."""
    mdist.setup_logging()
    try:
        return run_block_kd(cfg)
    finally:
        mdist.cleanup_distributed()


@hydra_app("spaceevo", "block_kd")
def main(cfg: DictConfig) -> None:
    summary = run(cfg)
    if mdist.is_rank_zero():  # the process group is gone: the rank comes from torchrun's $RANK
        for name, row in summary["students"].items():
            print(name, {k: v for k, v in row.items() if k != "last_losses"})
        print(f"outputs in {cfg.output_dir}")


if __name__ == "__main__":
    main()
