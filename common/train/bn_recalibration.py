"""Batch-norm recalibration of a subnet taken from a weight-sharing supernet.

A supernet's BN running statistics are averages over every subnet sampled in training, so they do
not fit any single subnet; before a subnet is evaluated its statistics are re-estimated on a few
training batches (ElasticViT, ICCV'23, Sec. 4 "BN recalibration before eval"; SpaceEvo, ICCV'23,
Sec. 5; once-for-all's ``set_running_statistics``). The statistics are reset and accumulated as a
cumulative average (``momentum=None``: after n batches the running mean is the mean of the n batch
means, the running variance the mean of the n unbiased batch variances), with the rest of the
network in eval mode (no dropout, no drop-path).

Works for any module whose norms subclass ``torch.nn.modules.batchnorm._BatchNorm`` — plain
``BatchNorm1d/2d`` and elastic ones that slice max-width buffers
(:class:`moonlit.common.nn.elastic.ElasticBatchNorm2d`), which honour ``momentum=None`` the same way.
Differences from the reference's ``bn_cal``: exactly ``num_batches`` batches (it ran one more),
gradients off, and the modules' training flags and momenta restored afterwards.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["batch_norm_layers", "recalibrate_batch_norm", "reset_batch_norm_stats"]

logger = logging.getLogger(__name__)


def batch_norm_layers(model: nn.Module) -> list[_BatchNorm]:
    """Every batch-norm module of ``model`` that tracks running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def reset_batch_norm_stats(model: nn.Module) -> list[_BatchNorm]:
    """Zero the running mean, set the running variance to 1 and the batch count to 0; returns the layers."""
    layers = batch_norm_layers(model)
    for layer in layers:
        layer.reset_running_stats()
    return layers


def _inputs_of(batch: Any) -> Any:
    """The model input of a loader item: a tensor as is, the first element of an (inputs, labels) pair."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(f"a calibration batch must be a tensor or an (inputs, labels) pair, got {type(batch).__name__}")


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, batches: Iterable[Any], num_batches: int,
                           forward: Callable[[nn.Module, Any], Any] | None = None,
                           device: torch.device | str | None = None) -> int:
    """Reset ``model``'s BN statistics and re-estimate them on the first ``num_batches`` of ``batches``.

    ``batches`` yields tensors or (inputs, labels) pairs (a DataLoader); ``forward(model, inputs)``
    replaces ``model(inputs)`` when given. Returns the number of batches used (fewer than
    ``num_batches`` when ``batches`` runs out, which is logged). The model's training flags and its
    BN momenta are restored afterwards; the running statistics keep the recalibrated values.
    """
    if num_batches < 1:
        raise ValueError(f"num_batches = {num_batches}; expected >= 1 calibration batches")
    layers = reset_batch_norm_stats(model)
    if not layers:
        return 0
    modes = {module: module.training for module in model.modules()}
    momenta = [layer.momentum for layer in layers]
    model.eval()
    for layer in layers:
        layer.train()
        layer.momentum = None  # cumulative average over the calibration batches
    used = 0
    try:
        for batch in itertools.islice(batches, num_batches):
            inputs = _inputs_of(batch)
            if device is not None:
                inputs = inputs.to(device)
            forward(model, inputs) if forward is not None else model(inputs)
            used += 1
    finally:
        for module, training in modes.items():
            module.training = training
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    if used == 0:
        raise ValueError("batches yielded nothing; expected at least one calibration batch")
    if used < num_batches:
        logger.warning("BN recalibration used %d of %d batches (the loader ran out)", used, num_batches)
    return used
