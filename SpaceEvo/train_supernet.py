"""Sandwich training of a SpaceEvo supernet, then LSQ+ QAT (SpaceEvo §4.1; AlphaNet, arXiv 2102.07954).

    python -m moonlit.spaceevo.train_supernet experiment=vnni paths.data_dir=/data   # ImageNet at /data/imagenet
    python -m moonlit.spaceevo.train_supernet experiment=smoke                       # CPU, generated images
    torchrun --standalone --nproc_per_node=8 -m moonlit.spaceevo.train_supernet experiment=vnni trainer=ddp

Each step (the sandwich rule, as the reference's ``train_supernet.py``): the largest subnet on the
labels (label-smoothed CE, dropout), then ``num_random`` random subnets and the smallest subnet
distilled in place from the largest's logits with AlphaNet's adaptive alpha-divergence
(alpha in [-1, 1], weight clip 5); gradients of the four passes are summed, clipped by value
(1.0), and one SGD step (Nesterov, momentum 0.9) follows. The learning rate follows a linear
warm-up (from 0.001x) times a half cosine over all steps, per step; base lr 0.1 per 256 images.

Phase ``fp32`` (360 epochs at paper scale) is followed by phase ``qat``: ``set_quant_mode`` (8-bit
LSQ+), lr / 10, 3 warm-up epochs, 50 epochs, starting from the FP32 weights — the reference's
``checkpoint.pth`` then ``lsq.pth``. Each phase checkpoints into its own folder
(``checkpoints/{fp32,qat}/step_N/``) at every epoch end — supernet, EMA (``ema.enabled``),
optimizer, scheduler and RNG states in one atomic checkpoint — and resumes from it bit for bit.
Every input (space, data, checkpoints) is checked before anything is written; ``resume=false`` over
an earlier run moves its checkpoints aside (``checkpoints.replaced-<UTC time>``).

Differences from the reference, on purpose: subnets are sampled from ``step_rng(seed, step)``
(every rank draws the same subnet without a shared global RNG; a resumed run draws what the
uninterrupted run would have), at the space's resolutions (the reference hard-coded 192/208/224 for
random subnets); weight decay skips every 1-D parameter (BN affine, biases, LSQ+ scales/offsets;
the reference's ``".bn" in name`` test never matched its ``norm`` modules); gradients are averaged
across ranks once per step after the four backward passes rather than by DDP hooks in each pass;
subnets are evaluated on a static copy with re-calibrated BN, leaving the supernet's statistics alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable
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
from moonlit.common.train.checkpoint import move_aside, save_checkpoint
from moonlit.common.train.classifier import sync_buffers
from moonlit.common.train.dist import (
    DistContext,
    barrier,
    cleanup_distributed,
)
from moonlit.common.train.losses import adaptive_alpha_divergence
from moonlit.common.train.optim import build_optimizer_from_config
from moonlit.common.train.schedules import warmup_cosine
from moonlit.common.train.seed import step_rng
from moonlit.common.train.supernet import (
    average_bn_statistics,
    average_gradients,
    build_ema,
    check_epoch_aligned,
    check_resumable,
    ema_modules,
    evaluate_recalibrated,
    resume_training,
    start_training,
)
from moonlit.spaceevo.ops.lsq_plus import set_quant_mode
from moonlit.spaceevo.space import SubnetEncoding
from moonlit.spaceevo.supernet import Supernet

__all__ = ["SandwichSettings", "average_bn_statistics", "average_gradients", "evaluate_subnet", "run", "sandwich_step",
           "train_supernet"]

log = logging.getLogger(__name__)

PHASES = ("fp32", "qat")


@dataclasses.dataclass(frozen=True)
class SandwichSettings:
    """One sandwich step: the reference's ``train.yaml`` values by default."""

    num_random: int = 2
    label_smoothing: float = 0.1
    dropout: float = 0.2                 # largest subnet only
    alpha_min: float = -1.0
    alpha_max: float = 1.0
    clip: float = 5.0
    grad_clip_value: float | None = 1.0


def sandwich_step(supernet: Supernet, images: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
                  rng: np.random.Generator, settings: SandwichSettings = SandwichSettings(),
                  ctx: DistContext | None = None) -> dict[str, Any]:
    """One optimisation step by the sandwich rule; returns each subnet's loss and encoding."""
    optimizer.zero_grad(set_to_none=True)
    losses, subnets = {}, {}
    subnets["max"] = supernet.set_max()
    supernet.dropout.p = settings.dropout
    logits = supernet(images)
    loss = F.cross_entropy(logits, labels, label_smoothing=settings.label_smoothing)
    loss.backward()
    losses["max"] = loss.item()
    teacher = logits.detach()
    supernet.dropout.p = 0.0
    for index in range(settings.num_random + 1):
        name = "min" if index == settings.num_random else f"random{index}"
        subnets[name] = supernet.set_min() if name == "min" else supernet.sample_active(rng)
        loss = adaptive_alpha_divergence(supernet(images), teacher, settings.alpha_min, settings.alpha_max,
                                         settings.clip)
        loss.backward()
        losses[name] = loss.item()
    average_gradients(supernet, ctx)
    if settings.grad_clip_value:
        nn.utils.clip_grad_value_(supernet.parameters(), settings.grad_clip_value)
    optimizer.step()
    return {"losses": losses, "subnets": {k: str(v) for k, v in subnets.items()}}


def evaluate_subnet(supernet: Supernet, subnet: SubnetEncoding, val_loader: Iterable, calib_loader: Iterable,
                    calib_batches: int, device: torch.device, ctx: DistContext | None = None) -> dict[str, float]:
    """Top-1 of ``subnet`` as a static copy with BN re-calibrated on ``calib_batches`` batches."""
    supernet.set_active(subnet)
    static = supernet.get_active_subnet().to(device)
    return evaluate_recalibrated(static, val_loader, calib_loader, calib_batches, device, ctx)


# --- the app ----------------------------------------------------------------------------------------

def _phase_settings(cfg: DictConfig, phase: str) -> DictConfig:
    return cfg.fp32 if phase == "fp32" else cfg.qat


def _evaluate(supernet: Supernet, loaders: dict[str, Any], cfg: DictConfig, ctx: DistContext,
              prefix: str) -> dict[str, float]:
    was_training = supernet.training
    subnets = {"max": supernet.set_max(), "min": supernet.set_min()}
    metrics = {}
    for name, subnet in subnets.items():
        result = evaluate_subnet(supernet, subnet, loaders["val"], loaders["train"], cfg.eval.bn_calibration_batches,
                                 ctx.device, ctx)
        metrics[f"{prefix}/{name}_top1"] = result["top1"]
    supernet.train(was_training)
    return metrics


def _run_phase(phase: str, supernet: Supernet, loaders: dict[str, Any], cfg: DictConfig, ctx: DistContext,
               logger: Any, out_dir: Path, step_offset: int) -> dict[str, Any]:
    """Train one phase to its last epoch (or ``stop_after_epochs``); returns its summary."""
    settings_cfg = _phase_settings(cfg, phase)
    loader = loaders["train"]
    steps_per_epoch = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
    if steps_per_epoch < 1:
        raise ValueError(f"the {phase} training loader has no full batch: {len(loader.dataset)} images, "
                         f"batch {loader.batch_size} per process with drop_last")
    total_steps = settings_cfg.epochs * steps_per_epoch
    global_batch = loader.batch_size * ctx.world_size
    # The reference scales lr 0.1 linearly with the global batch over 256 (never below 1x).
    lr = cfg.optim.lr * max(1, global_batch // 256) * settings_cfg.lr_scale
    # weight decay on conv/linear weights only: 1-D parameters (BN, biases, LSQ+ scales/offsets) get none
    optimizer = build_optimizer_from_config(supernet, cfg.optim, lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        settings_cfg.warmup_epochs * steps_per_epoch, total_steps, style="multiply",
        warmup_start=cfg.optim.warmup_factor))
    checkpoint_dir = out_dir / "checkpoints" / phase
    ema = build_ema(supernet, cfg.ema.enabled, cfg.ema.decay)
    resumed = resume_training(checkpoint_dir, supernet, optimizer, scheduler, ema) if cfg.resume else None
    step = 0 if resumed is None else resumed.step
    check_epoch_aligned(step, steps_per_epoch, checkpoint_dir)
    settings = SandwichSettings(**OmegaConf.to_container(cfg.sandwich, resolve=True))
    first_epoch = step // steps_per_epoch
    last_epoch = settings_cfg.epochs
    if cfg.stop_after_epochs is not None:
        last_epoch = min(last_epoch, first_epoch + cfg.stop_after_epochs)
    history, evaluation = [], {}
    for epoch in range(first_epoch, last_epoch):
        set_epoch(loader, epoch)
        supernet.train()
        progress = tqdm(loader, total=steps_per_epoch, desc=f"{phase} epoch {epoch + 1}/{settings_cfg.epochs}",
                        disable=not ctx.is_main, leave=False)
        for batch_index, (images, labels) in enumerate(progress):
            if batch_index >= steps_per_epoch:
                break
            global_step = step_offset + step
            rng = step_rng(cfg.trainer.seed, global_step)
            result = sandwich_step(supernet, images.to(ctx.device), labels.to(ctx.device), optimizer, rng, settings,
                                   ctx)
            scheduler.step()
            if ema is not None:
                ema.update(supernet)
            step += 1
            history.append(result)
            progress.set_postfix(max=f"{result['losses']['max']:.3f}", min=f"{result['losses']['min']:.3f}")
            if (global_step + 1) % cfg.trainer.log_every == 0 or step == total_steps:
                logger.log({**{f"{phase}/loss_{k}": v for k, v in result["losses"].items()},
                            f"{phase}/lr": scheduler.get_last_lr()[0]}, step=global_step + 1)
        sync_buffers(supernet, ctx)
        if (epoch + 1) % cfg.eval.every_epochs == 0 or epoch + 1 == settings_cfg.epochs:
            evaluation = _evaluate(supernet, loaders, cfg, ctx, phase)
            logger.log({**evaluation, "epoch": epoch + 1}, step=step_offset + step)
        if ctx.is_main:
            extra = {"phase": phase, "epoch": epoch + 1, "space": str(supernet.space)}
            save_checkpoint(checkpoint_dir, step=step, model=supernet, optimizer=optimizer, scheduler=scheduler,
                            modules=ema_modules(ema), arch={"space": str(supernet.space),
                                                            "num_classes": supernet.num_classes,
                                                            "resolutions": list(supernet.resolutions)},
                            config=to_container(cfg), extra=extra, keep_last=cfg.keep_last)
        barrier()
    return {"steps": step, "total_steps": total_steps, "complete": step == total_steps, "lr": lr,
            "steps_per_epoch": steps_per_epoch, "eval": evaluation, "history": history, "ema": ema}


def train_supernet(cfg: DictConfig) -> dict[str, Any]:
    """The work behind ``python -m moonlit.spaceevo.train_supernet``; returns the run summary."""
    ctx = start_training(cfg.trainer)
    out_dir = Path(cfg.output_dir)
    try:
        # Every input is checked before anything is written, moved or generated.
        sc = cfg.supernet
        supernet = Supernet.from_encoding(cfg.space, num_classes=sc.num_classes, dropout=cfg.sandwich.dropout,
                                          resolutions=None if sc.resolutions is None else list(sc.resolutions))
        check_image_data(cfg.data, sc.num_classes, "supernet.num_classes")
        if cfg.resume:
            for phase in PHASES:
                check_resumable(out_dir / "checkpoints" / phase, cfg.ema.enabled)
        if not cfg.resume and ctx.is_main:
            move_aside(out_dir / "checkpoints")
        barrier()
        datasets = build_image_data(cfg.data, is_main=ctx.is_main)
        supernet.to(ctx.device)
        summary: dict[str, Any] = {"space": cfg.space, "phases": {}}
        with instantiate(cfg.logger)(out_dir, run_name=f"supernet-{cfg.space}", config=to_container(cfg)) as logger:
            step_offset = 0
            for phase in PHASES:
                phase_cfg = _phase_settings(cfg, phase)
                if phase_cfg.epochs == 0:
                    continue
                if phase == "qat":
                    set_quant_mode(supernet, phase_cfg.bits)
                loaders = {
                    "train": build_loader(datasets["train"], phase_cfg.batch_size, shuffle=True, seed=cfg.trainer.seed,
                                          drop_last=True, num_workers=cfg.trainer.num_workers, rank=ctx.rank,
                                          world_size=ctx.world_size),
                    "val": build_loader(datasets["val"], cfg.data.eval_batch_size, shuffle=False,
                                        num_workers=cfg.trainer.num_workers, rank=ctx.rank, world_size=ctx.world_size),
                }
                result = _run_phase(phase, supernet, loaders, cfg, ctx, logger, out_dir, step_offset)
                summary["phases"][phase] = {k: v for k, v in result.items() if k not in ("history", "ema")}
                summary["phases"][phase]["history"] = result["history"]
                step_offset += result["total_steps"]
                if not result["complete"]:
                    break
            logger.log_summary({f"{p}/steps": v["steps"] for p, v in summary["phases"].items()})
        summary["supernet"] = supernet
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            printable = {"space": cfg.space, "phases": {p: {k: v for k, v in r.items() if k != "history"}
                                                        for p, r in summary["phases"].items()}}
            (out_dir / "train_supernet.json").write_text(json.dumps(printable, indent=1) + "\n")
        return summary
    finally:
        cleanup_distributed()


def run(cfg: DictConfig) -> dict[str, Any]:
    """The work behind ``python -m moonlit.spaceevo.train_supernet``: :func:`train_supernet`'s summary."""
    return train_supernet(cfg)


@hydra_app("spaceevo", "train_supernet")
def main(cfg: DictConfig) -> None:
    summary = run(cfg)
    for phase, result in summary["phases"].items():
        log.info("%s: %d/%d steps", phase, result["steps"], result["total_steps"])


if __name__ == "__main__":
    main()
