"""ElasticViT supernet training with conflict-aware sampling (ICCV'23, arXiv 2303.09730, Sec. 3.2–3.3, Sec. 4).

    # ImageNet in /data/imagenet, teachers in /data/elasticvit/teachers:
    python -m moonlit.elasticvit.train paths.data_dir=/data
    torchrun --standalone --nproc_per_node=8 -m moonlit.elasticvit.train trainer=ddp paths.data_dir=/data
    python -m moonlit.elasticvit.train experiment=smoke                      # CPU: reduced space, generated images
    python -m moonlit.elasticvit.train sampling=uniform                      # the ablation's samplers: sampling=...

Each step draws its subnets from the sampler (``sampling`` group: complexity-aware level walk, with
performance-aware banks by default), scores the newly drawn ones for the banks, and trains them
(:func:`moonlit.elasticvit.train_step.train_step`: soft CE to the teachers for the uniform subnets,
alpha-divergence to their mean for the min subnet, AGC, AdamW). The recipe's numbers are the
reference's ``final_3min_space.yaml``: 96 images per process, lr 5e-4 per 512 images, cosine to
5e-6 after 5 warm-up epochs over 600 epochs plus 10 cool-down epochs, weight decay 0.05, EMA 0.99985,
RandAugment ``rand-n1-m1-mstd0.5-inc1``, mixup/cutmix 0.01, no dropout while training (NASViT).

Every rank draws the same subnets (the sampler is seeded by the step and its bank scores are
all-reduced); gradients are averaged once per step after the backward passes. A checkpoint at every
epoch end holds, in one atomic ``checkpoints/step_N/``, the supernet, its EMA, optimizer, scheduler,
RNG states and the sampler's state (walk position, banks); ``resume=true`` continues from it bit for
bit. Every input (space, teachers, data, tables, checkpoint) is checked before anything is written;
``resume=false`` over an earlier run moves its checkpoints aside (``checkpoints.replaced-<UTC time>``).
Evaluation (every ``eval.every_epochs``) measures, per FLOPs level, the table's median-MACs subnet as a static copy
whose BN statistics are re-estimated on training batches, leaving the supernet's own untouched.
The FLOPs tables come from ``tables.path`` (built there first when missing).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from moonlit.common.config import hydra_app, to_container
from moonlit.common.data.imagenet import build_loader
from moonlit.common.data.images import build_image_data, check_image_data
from moonlit.common.data.loaders import set_epoch
from moonlit.common.errors import InputError
from moonlit.common.train.checkpoint import move_aside, save_checkpoint
from moonlit.common.train.classifier import sync_buffers
from moonlit.common.train.dist import (
    DistContext,
    barrier,
    cleanup_distributed,
)
from moonlit.common.train.optim import build_optimizer_from_config, one_dim_or_in
from moonlit.common.train.schedules import warmup_cosine
from moonlit.common.train.supernet import (
    build_ema,
    check_epoch_aligned,
    check_resumable,
    ema_modules,
    evaluate_recalibrated,
    resume_training,
    start_training,
)

from .conflict import GradientConflict, summarize_cosines
from .sampling import ComplexityAwareSampler, PerformanceAwareSampler, build_sampler
from .space import SearchSpace, Subnet
from .supernet import ElasticViTSupernet
from .tables import FlopsTables, build_tables, subnets_to_array, total_macs
from .teachers import build_teachers
from .train_step import (
    StepSettings,
    conv_block_parameters,
    make_scorer,
    space_from_config,
    train_step,
)

__all__ = ["ResizedInput", "evaluate_levels", "load_or_build_tables", "representative_subnets", "run",
           "sampler_statistics", "train"]

log = logging.getLogger(__name__)

CONFLICT_MODULE = "gradient_conflict"  # checkpoint module holding the previous step's gradient
REFERENCE_BATCH = 512  # the reference scales lr, min_lr and warmup_lr by world x batch / 512


class ResizedInput(nn.Module):
    """A static subnet behind the supernet's bicubic resize to the subnet's resolution."""

    def __init__(self, model: nn.Module, resolution: int) -> None:
        super().__init__()
        self.model, self.resolution = model, resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bicubic", align_corners=False)
        return self.model(x)


def check_tables(node: DictConfig, space: SearchSpace, num_classes: int) -> FlopsTables | None:
    """The FLOPs tables at ``node.path`` if they exist and fit; None if they are to be built; writes nothing."""
    path = Path(node.path)
    if not path.exists():
        if not node.build_if_missing:
            raise InputError(f"tables.path: no FLOPs tables at {path}; build them with python -m "
                             "moonlit.elasticvit.tables or set tables.build_if_missing=true")
        return None
    tables = FlopsTables.load(path, space)
    if tables.num_classes != num_classes:
        raise InputError(f"tables.path: FLOPs tables {path} count a {tables.num_classes}-class head; the supernet "
                         f"has {num_classes} classes (build tables for it, or point tables.path elsewhere)")
    return tables


def load_or_build_tables(node: DictConfig, space: SearchSpace, num_classes: int, ctx: DistContext) -> FlopsTables:
    """The FLOPs tables at ``node.path``; rank 0 builds and saves them first when missing and allowed."""
    if not Path(node.path).exists() and node.build_if_missing:
        if ctx.is_main:
            build_tables(tuple(node.levels), int(node.per_level), band=float(node.band), counter=str(node.counter),
                         seed=int(node.seed), num_classes=num_classes, space=space).save(node.path)
        barrier()
    tables = check_tables(node, space, num_classes)
    assert tables is not None
    return tables


def check_teachers(specs: Sequence[Mapping[str, Any]]) -> None:
    """Each ``teachers.models`` entry names a timm model and an existing weights file (or null); writes nothing."""
    import timm

    for index, spec in enumerate(specs):
        field = f"teachers.models[{index}]"
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise InputError(f"{field} is {spec!r}; expected {{name, pretrained}}")
        if not timm.is_model(str(spec["name"])):
            raise InputError(f"{field}.name: {spec['name']!r} is not a timm model name "
                             "(see timm.list_models())")
        pretrained = spec.get("pretrained")
        if pretrained and not Path(str(pretrained)).is_file():
            raise InputError(f"{field}.pretrained: {pretrained} is not a file; expected the teacher's weights "
                             "(.safetensors/.pth), or null for random weights")


def representative_subnets(tables: FlopsTables) -> dict[float, Subnet]:
    """Per level, the table row with the median MACs (first of equals): the level's evaluated subnet."""
    chosen = {}
    for level in tables.levels:
        order = np.argsort(tables.macs[level], kind="stable")
        chosen[level] = tables.subnet(level, int(order[len(order) // 2]))
    return chosen


def evaluate_levels(supernet: ElasticViTSupernet, subnets: dict[float, Subnet], val_loader: Any, calib_loader: Any,
                    calib_batches: int, ctx: DistContext) -> dict[str, float]:
    """Top-1 of each level's subnet (static copy, BN re-estimated); the supernet is left as it was."""
    active, metrics = supernet.active_subnet, {}
    for level, subnet in subnets.items():
        supernet.set_active(subnet)
        static = ResizedInput(supernet.get_active_subnet(), subnet.resolution).to(ctx.device)
        metrics[f"top1/{level:g}"] = evaluate_recalibrated(static, val_loader, calib_loader, calib_batches,
                                                           ctx.device, ctx)["top1"]
    supernet.set_active(active)
    return metrics


def sampler_statistics(history: list[dict[str, Any]], sampler: ComplexityAwareSampler) -> dict[str, Any]:
    """Level walk, mean |MMACs change| between consecutive steps, bank draws and fill, from a run's steps."""
    walk = [step["level"] for step in history]
    mmacs = [step["mean_mmacs"] for step in history]
    draws = [flag for step in history for flag in step["from_bank"]]
    stats: dict[str, Any] = {
        "policy": sampler.policy, "steps": len(history), "walk": walk,
        "mean_mmacs_gap": float(np.mean(np.abs(np.diff(mmacs)))) if len(mmacs) > 1 else 0.0,
        "bank_draw_fraction": float(np.mean(draws)) if draws else 0.0}
    if sampler.policy == "adjacent_step" and len(walk) > 1:
        indices = [sampler.levels.index(level) for level in walk]
        stats["max_level_change"] = int(np.max(np.abs(np.diff(indices))))
    if isinstance(sampler, PerformanceAwareSampler):
        stats["bank_fill"] = {f"{level:g}": fill for level, fill in sampler.bank_fill().items()}
    return stats


def _mixup(cfg: DictConfig, num_classes: int) -> Any:
    if not cfg.enabled:
        return None
    from timm.data import Mixup

    mixup = Mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=cfg.prob,
                  switch_prob=cfg.switch_prob, mode=cfg.mode, label_smoothing=cfg.label_smoothing,
                  num_classes=num_classes)
    return lambda images, labels: mixup(images.clone(), labels)  # timm mixes in place; scores use the clean batch


def train(cfg: DictConfig) -> dict[str, Any]:
    """The work behind ``python -m moonlit.elasticvit.train``; returns the run summary."""
    ctx = start_training(cfg.trainer)
    out_dir = Path(cfg.output_dir)
    checkpoint_dir = out_dir / "checkpoints"
    try:
        # Every input is checked before anything is written, moved or generated.
        space = space_from_config(None if cfg.space is None else OmegaConf.to_container(cfg.space, resolve=True))
        num_classes = int(cfg.supernet.num_classes)
        teacher_specs = OmegaConf.to_container(cfg.teachers.models, resolve=True)
        check_teachers(teacher_specs)
        check_image_data(cfg.data, num_classes, "supernet.num_classes")
        check_tables(cfg.tables, space, num_classes)
        if cfg.resume:
            check_resumable(checkpoint_dir, cfg.ema.enabled)
        supernet = ElasticViTSupernet(space, num_classes, cfg.supernet.token_norm, cfg.supernet.dropout).to(ctx.device)
        teachers = build_teachers(teacher_specs, float(cfg.teachers.temperature), num_classes)
        if teachers is not None:
            teachers.to(ctx.device)
        if not cfg.resume and ctx.is_main:
            move_aside(checkpoint_dir)
        barrier()
        datasets = build_image_data(cfg.data, is_main=ctx.is_main)
        tables = load_or_build_tables(cfg.tables, space, num_classes, ctx)
        sampler = build_sampler(cfg.sampling, tables, seed=int(cfg.trainer.seed), space=space)
        loader = build_loader(datasets["train"], cfg.data.batch_size, shuffle=True, seed=cfg.trainer.seed,
                              drop_last=True, num_workers=cfg.trainer.num_workers, rank=ctx.rank,
                              world_size=ctx.world_size)
        val_loader = build_loader(datasets["val"], cfg.data.eval_batch_size, shuffle=False,
                                  num_workers=cfg.trainer.num_workers, rank=ctx.rank, world_size=ctx.world_size)
        steps_per_epoch = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
        if steps_per_epoch < 1:
            raise ValueError(f"the training loader has no full batch: {len(loader.dataset)} images, batch "
                             f"{cfg.data.batch_size} per process with drop_last")
        epochs = cfg.epochs + cfg.cooldown_epochs
        total_steps = epochs * steps_per_epoch
        lr = cfg.optim.lr * ctx.world_size * cfg.data.batch_size / REFERENCE_BATCH
        optimizer = build_optimizer_from_config(supernet, cfg.optim, lr,
                                                no_decay=one_dim_or_in(conv_block_parameters(supernet)))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
            cfg.warmup_epochs * steps_per_epoch, cfg.epochs * steps_per_epoch, style="timm",
            warmup_start=cfg.optim.warmup_lr / cfg.optim.lr, min_ratio=cfg.optim.min_lr / cfg.optim.lr))
        ema = build_ema(supernet, cfg.ema.enabled, cfg.ema.decay)
        conflict = GradientConflict(supernet.parameters()) if cfg.monitor.gradient_conflict else None
        monitors = {} if conflict is None else {CONFLICT_MODULE: conflict}
        resumed = resume_training(checkpoint_dir, supernet, optimizer, scheduler, ema, monitors) if cfg.resume else None
        step = 0
        # per-step gradient cosines and training seconds of the whole run, carried across resumes
        grad_cos: list[float | None] = []
        train_seconds = 0.0
        if resumed is not None:
            step = resumed.step
            sampler.load_state_dict(resumed.extra["sampler"])
            grad_cos = list(resumed.extra.get("grad_cos", []))
            train_seconds = float(resumed.extra.get("train_seconds", 0.0))
        check_epoch_aligned(step, steps_per_epoch, checkpoint_dir)
        mixup = _mixup(cfg.mixup, num_classes)
        settings = StepSettings(**OmegaConf.to_container(cfg.step, resolve=True))
        representatives = representative_subnets(tables)
        first_epoch, last_epoch = step // steps_per_epoch, epochs
        if cfg.stop_after_epochs is not None:
            last_epoch = min(last_epoch, first_epoch + cfg.stop_after_epochs)
        history: list[dict[str, Any]] = []
        evaluation: dict[str, float] = {}
        with instantiate(cfg.logger)(out_dir, run_name="elasticvit-supernet", config=to_container(cfg)) as logger:
            for epoch in range(first_epoch, last_epoch):
                epoch_start = time.perf_counter()
                set_epoch(loader, epoch)
                supernet.train()
                progress = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}",
                                disable=not ctx.is_main, leave=False)
                for batch_index, (images, labels) in enumerate(progress):
                    if batch_index >= steps_per_epoch:
                        break
                    images, labels = images.to(ctx.device), labels.to(ctx.device)
                    sample = sampler.sample(step, epoch)
                    if isinstance(sampler, PerformanceAwareSampler):
                        sampler.observe(sample, make_scorer(supernet, images, labels, ctx))
                    result = train_step(supernet, sample, images, labels, optimizer, teachers, mixup, settings, ctx,
                                        conflict)
                    scheduler.step()
                    if ema is not None:
                        ema.update(supernet)
                    step += 1
                    mmacs = total_macs(subnets_to_array(sample.uniform), tables.counter, num_classes, space) / 1e6
                    history.append({**result, "step": step, "level": sample.level, "mean_mmacs": float(mmacs.mean())})
                    if conflict is not None:  # NaN (no shared weight element) kept as None: extras are JSON
                        cosine = result["grad_cos"]
                        grad_cos.append(None if cosine is None or math.isnan(cosine) else cosine)
                    progress.set_postfix(min=f"{result['losses']['min']:.3f}")
                    if step % cfg.trainer.log_every == 0 or step == total_steps:
                        logger.log({**{f"train/loss_{k}": v for k, v in result["losses"].items()},
                                    "train/lr": scheduler.get_last_lr()[0], "train/mean_mmacs": float(mmacs.mean())},
                                   step=step)
                sync_buffers(supernet, ctx)
                train_seconds += time.perf_counter() - epoch_start
                if (epoch + 1) % cfg.eval.every_epochs == 0 or epoch + 1 == epochs:
                    evaluation = evaluate_levels(supernet, representatives, val_loader, loader,
                                                 cfg.eval.bn_calibration_batches, ctx)
                    logger.log({**evaluation, "epoch": epoch + 1}, step=step)
                if ctx.is_main:
                    extra = {"epoch": epoch + 1, "sampler": sampler.state_dict(), "train_seconds": train_seconds}
                    if conflict is not None:
                        extra["grad_cos"] = grad_cos
                    save_checkpoint(checkpoint_dir, step=step, model=supernet, optimizer=optimizer, scheduler=scheduler,
                                    modules={**ema_modules(ema), **monitors},
                                    arch={"space": repr(space), "num_classes": num_classes,
                                          "token_norm": cfg.supernet.token_norm},
                                    config=to_container(cfg), extra=extra, keep_last=cfg.keep_last)
                barrier()
            statistics = sampler_statistics(history, sampler)
            logger.log_summary({"steps": step, **{k: v for k, v in statistics.items()
                                                  if isinstance(v, (int, float)) and not isinstance(v, bool)}})
        summary = {"steps": step, "total_steps": total_steps, "complete": step == total_steps, "lr": lr,
                   "train_seconds": round(train_seconds, 1),
                   "steps_per_epoch": steps_per_epoch, "eval": evaluation, "sampler_statistics": statistics,
                   "representatives": {f"{level:g}": str(s) for level, s in representatives.items()}}
        if conflict is not None:
            summary["gradient_conflict"] = summarize_cosines(grad_cos).to_dict()
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "train.json").write_text(json.dumps(summary, indent=1) + "\n")
        return {**summary, "history": history, "supernet": supernet, "sampler": sampler, "tables": tables, "ema": ema}
    finally:
        cleanup_distributed()


def run(cfg: DictConfig) -> dict[str, Any]:
    """The work behind ``python -m moonlit.elasticvit.train``: :func:`train`'s summary."""
    return train(cfg)


@hydra_app("elasticvit", "train")
def main(cfg: DictConfig) -> None:
    summary = run(cfg)
    log.info("%d/%d steps; per-level top-1 %s", summary["steps"], summary["total_steps"], summary["eval"])


if __name__ == "__main__":
    main()
