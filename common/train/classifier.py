"""Supervised image-classifier training and evaluation on top of the shared plumbing.

A plain recipe — DDP-aware loaders, AdamW-style optimizer built by the caller, cosine schedule over
steps, a checkpoint at every epoch end (atomic, keep-last-k) and resume from the last one — that the
quickstart uses to get a *trained* model to export, and that the vision papers reuse for evaluation
(``evaluate_top1``, defined in :mod:`.evaluate` and importable from here: sharded over ranks, counts all-reduced).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from moonlit.common.data.loaders import set_epoch

from .checkpoint import resume_or_load, save_checkpoint
from .dist import DistContext, barrier, wrap_ddp
from .evaluate import evaluate_top1
from .loggers import RunLogger
from .schedules import warmup_cosine

log = logging.getLogger(__name__)


@dataclass
class ClassifierRun:
    """What :func:`train_classifier` did: the step it ended at and its per-epoch metrics."""

    step: int
    epochs_run: list[int] = field(default_factory=list)
    resumed_from: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def train_classifier(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    *,
    ctx: DistContext,
    make_optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
    epochs: int,
    checkpoint_dir: str | Path,
    logger: RunLogger | None = None,
    label_smoothing: float = 0.0,
    warmup_steps: int = 0,
    keep_last: int = 2,
    log_every: int = 10,
    arch: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> ClassifierRun:
    """Train ``model`` (already on ``ctx.device``) for ``epochs``, resuming from ``checkpoint_dir``.

    The learning rate follows linear warm-up then cosine decay to 0 over all steps. Checkpoints
    hold model, optimizer, scheduler and RNG state, so an interrupted run continues bit-for-bit
    from the last completed epoch.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError("the training loader is empty: fewer images than one batch with drop_last?")
    total_steps = epochs * steps_per_epoch
    optimizer = make_optimizer(model.parameters())
    schedule = warmup_cosine(warmup_steps, total_steps, style="after_warmup")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    step = resume_or_load(checkpoint_dir, model, optimizer, scheduler)
    if step % steps_per_epoch:
        raise ValueError(f"checkpoint step {step} in {checkpoint_dir} is not at an epoch end "
                         f"({steps_per_epoch} steps per epoch): was the batch size or data changed?")
    run = ClassifierRun(step=step, resumed_from=step)
    if step:
        log.info("resumed from step %d (epoch %d of %d)", step, step // steps_per_epoch, epochs)
    trained = wrap_ddp(model, ctx)
    device = ctx.device

    for epoch in range(step // steps_per_epoch, epochs):
        set_epoch(train_loader, epoch)
        trained.train()
        progress = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not ctx.is_main, leave=False)
        for images, labels in progress:
            images, labels = images.to(device), labels.to(device)
            loss = F.cross_entropy(trained(images), labels, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            progress.set_postfix(loss=f"{loss.item():.3f}")
            if logger is not None and step % log_every == 0:
                logger.log({"train/loss": loss.item(), "train/lr": scheduler.get_last_lr()[0]}, step=step)
        sync_buffers(model, ctx)
        metrics = {f"val/{k}": v for k, v in evaluate_top1(model, val_loader, device, ctx).items()}
        metrics["epoch"] = epoch + 1
        run.history.append(metrics)
        run.epochs_run.append(epoch + 1)
        if logger is not None:
            logger.log(metrics, step=step)
        if ctx.is_main:
            save_checkpoint(checkpoint_dir, step=step, model=model, optimizer=optimizer, scheduler=scheduler,
                            arch=arch, config=config, extra={"epoch": epoch + 1, **metrics}, keep_last=keep_last)
        barrier()
    run.step = step
    return run


@torch.no_grad()
def sync_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's buffers (BN running statistics).

    DDP broadcasts buffers at the start of each training forward, so after the last step each
    rank holds statistics updated by its own last batch: a sharded evaluation would otherwise mix
    slightly different models, and the checkpoint (rank 0) would not be the model evaluated.
    """
    if not ctx.is_distributed:
        return
    for buffer in model.buffers():
        torch.distributed.broadcast(buffer, src=0)
