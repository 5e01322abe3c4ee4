"""Plumbing that weight-sharing supernet training needs beyond a plain classifier (SpaceEvo, ElasticViT).

Both papers train several subnets per step on one shared set of weights (SpaceEvo ICCV'23 Sec. 4.1,
the sandwich rule; ElasticViT ICCV'23 Sec. 3.2, complexity-aware sampling), so data parallelism is
done by hand rather than by DDP hooks: every rank samples the same subnets (seeded from the step),
runs all its backward passes, and the gradients are averaged once (:func:`average_gradients`).
Evaluation re-estimates a subnet's BN statistics on its own shard and averages them over ranks
(:func:`average_bn_statistics`, :func:`evaluate_recalibrated`). :func:`batch_statistics_forward`
runs an extra scoring forward (ElasticViT's bank scores) with batch statistics while leaving every
running statistic and the training flags as they were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .bn_recalibration import batch_norm_layers, recalibrate_batch_norm
from .classifier import evaluate_top1
from .dist import DistContext

__all__ = ["average_bn_statistics", "average_gradients", "batch_statistics_forward", "check_epoch_aligned",
           "evaluate_recalibrated", "resume_ema", "start_training"]


@torch.no_grad()
def average_gradients(model: nn.Module, ctx: DistContext | None) -> None:
    """Average ``.grad`` over ranks in one flat all-reduce (all ranks trained the same subnets)."""
    if ctx is None or not ctx.is_distributed:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset: offset + grad.numel()].view_as(grad))
        offset += grad.numel()


@torch.no_grad()
def average_bn_statistics(model: nn.Module, ctx: DistContext | None) -> None:
    """Average every BN's running mean and variance over ranks (each calibrated on its own shard)."""
    if ctx is None or not ctx.is_distributed:
        return
    for norm in batch_norm_layers(model):
        for stat in (norm.running_mean, norm.running_var):
            torch.distributed.all_reduce(stat)
            stat /= ctx.world_size


def evaluate_recalibrated(model: nn.Module, val_loader: Iterable, calib_loader: Iterable, calib_batches: int,
                          device: torch.device, ctx: DistContext | None = None) -> dict[str, float]:
    """Top-1 of ``model`` (a static subnet) after re-estimating its BN statistics on ``calib_batches`` batches."""
    if calib_batches > 0:
        recalibrate_batch_norm(model, calib_loader, calib_batches, device=device)
        average_bn_statistics(model, ctx)
    return evaluate_top1(model.eval(), val_loader, device, ctx)


@contextlib.contextmanager
def batch_statistics_forward(model: nn.Module) -> Iterator[nn.Module]:
    """Inside: eval mode (no dropout) except BN layers, which normalise with the batch's statistics.

    Every BN buffer (running mean/var, batch count) and every module's training flag is restored on
    exit, so a scoring forward leaves no trace in the model.
    """
    modes = {module: module.training for module in model.modules()}
    layers = batch_norm_layers(model)
    saved = [(layer.running_mean.clone(), layer.running_var.clone(), layer.num_batches_tracked.clone())
             for layer in layers]
    model.eval()
    for layer in layers:
        layer.train()
    try:
        yield model
    finally:
        with torch.no_grad():
            for layer, (mean, var, count) in zip(layers, saved):
                layer.running_mean.copy_(mean)
                layer.running_var.copy_(var)
                layer.num_batches_tracked.copy_(count)
        for module, training in modes.items():
            module.training = training


def start_training(trainer: Any) -> DistContext:
    """The start of every training entry point: join the process group (``trainer.device``,
    ``trainer.backend``), seed everything (``trainer.seed``), set torch's threads (``trainer.threads``)."""
    from .dist import init_distributed
    from .seed import seed_everything

    ctx = init_distributed(trainer.device, trainer.backend)
    seed_everything(trainer.seed)
    if trainer.threads:
        torch.set_num_threads(trainer.threads)
    return ctx


def check_epoch_aligned(step: int, steps_per_epoch: int, checkpoint_dir: str | Path) -> None:
    """A resumed run restarts at an epoch boundary; any other step means the data or batch changed."""
    if step % steps_per_epoch:
        raise ValueError(f"{checkpoint_dir} holds step {step}, not an epoch end of {steps_per_epoch} steps: "
                         "was the batch size, data or max_steps_per_epoch changed?")


def resume_ema(model: nn.Module, enabled: bool, decay: float, ema_dir: str | Path) -> Any:
    """timm's ``ModelEmaV2`` of ``model`` restored from ``ema_dir`` when it holds a checkpoint; None if off."""
    if not enabled:
        return None
    from timm.utils import ModelEmaV2

    from .checkpoint import resume_or_load

    ema = ModelEmaV2(model, decay=decay)
    resume_or_load(Path(ema_dir), ema.module, restore_rng=False)
    return ema
