"""Loader plumbing shared by the data modules: rank/world resolution and per-epoch reshuffling."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader


def resolve_rank_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): as given, else from an initialised ``torch.distributed``, else (0, 1)."""
    if (rank is None) != (world_size is None):
        raise ValueError(f"pass both rank and world_size or neither, got rank={rank}, world_size={world_size}")
    if rank is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1} for world_size {world_size}")
    return rank, world_size


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle for ``epoch``: forwards to the sampler's ``set_epoch`` when it has one."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
