"""Plumbing that weight-sharing supernet training needs beyond a plain classifier (SpaceEvo, ElasticViT).

Both papers train several subnets per step on one shared set of weights (SpaceEvo ICCV'23 Sec. 4.1,
the sandwich rule; ElasticViT ICCV'23 Sec. 3.2, complexity-aware sampling), so data parallelism is
done by hand rather than by DDP hooks: every rank samples the same subnets (seeded from the step),
runs all its backward passes, and the gradients are averaged once (:func:`average_gradients`).
Evaluation re-estimates a subnet's BN statistics on its own shard and averages them over ranks
(:func:`average_bn_statistics`, :func:`evaluate_recalibrated`). :func:`batch_statistics_forward`
runs an extra scoring forward (ElasticViT's bank scores) with batch statistics while leaving every
running statistic and the training flags as they were. An EMA of the supernet (:func:`build_ema`)
is saved inside the training checkpoint (``modules={"ema": ...}``), so a resumed run gets the
supernet, optimizer, sampler, RNGs and EMA of one step, or none of them (:func:`resume_training`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .bn_recalibration import batch_norm_layers, recalibrate_batch_norm
from .checkpoint import CheckpointError, CheckpointState, checkpoint_meta, latest_checkpoint, load_checkpoint
from .classifier import evaluate_top1
from .dist import DistContext

__all__ = ["EMA_MODULE", "average_bn_statistics", "average_gradients", "batch_statistics_forward", "build_ema",
           "check_epoch_aligned", "check_resumable", "evaluate_recalibrated", "ema_modules", "resume_training",
           "start_training"]

log = logging.getLogger(__name__)

EMA_MODULE = "ema"  # the name of the EMA weights in a checkpoint (ema.safetensors)


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


def build_ema(model: nn.Module, enabled: bool, decay: float) -> Any:
    """timm's ``ModelEmaV2`` of ``model`` (a copy of its current weights), or None when EMA is off."""
    if not enabled:
        return None
    from timm.utils import ModelEmaV2

    return ModelEmaV2(model, decay=decay)


def ema_modules(ema: Any) -> dict[str, nn.Module]:
    """The ``modules`` argument of save/load_checkpoint for ``ema`` (empty when it is None)."""
    return {} if ema is None else {EMA_MODULE: ema.module}


def check_resumable(checkpoint_dir: str | Path, ema_enabled: bool) -> Path | None:
    """The checkpoint a resume would load from ``checkpoint_dir`` (None: a fresh start), verified.

    Reads only ``meta.json`` and file sizes, so it can run before anything is written: a truncated
    checkpoint, or one without EMA weights while EMA is on, raises :class:`CheckpointError` here.
    """
    if latest_checkpoint(checkpoint_dir) is None:
        return None
    path, meta = checkpoint_meta(checkpoint_dir)
    if ema_enabled and EMA_MODULE not in meta.get("modules", []):
        raise CheckpointError(f"checkpoint {path} has no EMA weights but ema.enabled=true: it was saved with "
                              "EMA off; resume with ema.enabled=false, or start afresh with resume=false")
    return path


def resume_training(checkpoint_dir: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    ema: Any = None, modules: Mapping[str, nn.Module] | None = None) -> CheckpointState | None:
    """Load the latest checkpoint of ``checkpoint_dir`` into model, optimizer, scheduler, RNGs, ``ema`` and
    the further named ``modules`` (saved with ``save_checkpoint(modules=...)``).

    Returns what was loaded (``extra`` holds e.g. the sampler's state), or None when there is no
    checkpoint yet. EMA weights in the checkpoint while ``ema`` is None are ignored, with a warning.
    """
    if check_resumable(checkpoint_dir, ema is not None) is None:
        return None
    state = load_checkpoint(checkpoint_dir, model, optimizer, scheduler, restore_rng=True,
                            modules={**ema_modules(ema), **(modules or {})})
    if ema is None and EMA_MODULE in state.modules:
        log.warning("checkpoint %s holds EMA weights but EMA is off: they are ignored, and later checkpoints "
                    "have none", state.path)
    log.info("resumed from %s at step %d", state.path, state.step)
    return state
