"""Loader plumbing shared by the data modules: rank/world resolution and per-epoch reseeding.

A resumed run must see, from the epoch it resumes at, exactly the batches of the uninterrupted run:
the sample order *and* the random augmentation. :class:`EpochLoader` makes both a function of
(seed, rank, epoch): ``set_epoch`` reshuffles the sampler and reseeds the generator from which
every iterator draws its workers' seeds (workers are not persistent, so each epoch starts fresh).
A run that resumes mid-epoch (block-wise KD) instead keys each sample's augmentation to its step:
:class:`SeededItems` draws item ``(index, seed)`` under RNGs seeded by ``seed``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["EpochLoader", "SeededItems", "epoch_seed", "resolve_rank_world", "set_epoch"]


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


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of ``rank``'s loader generator in ``epoch`` (numpy ``SeedSequence([seed, rank, epoch])``)."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class EpochLoader(DataLoader):
    """A DataLoader whose randomness is a function of (seed, rank, epoch) once ``set_epoch`` is called.

    Each iterator draws its worker base seed (workers seed torch, ``random`` and numpy from it;
    with no workers the draw is made but augmentation uses the main process's global RNGs) from
    ``self.generator``, which ``set_epoch`` reseeds; the sampler, if it has ``set_epoch``, reshuffles.
    """

    def __init__(self, *args, seed: int = 0, rank: int = 0, **kwargs) -> None:
        if kwargs.get("persistent_workers"):
            raise ValueError("EpochLoader reseeds its workers every epoch; persistent_workers must be False")
        super().__init__(*args, generator=torch.Generator(), **kwargs)
        self.seed, self.rank = seed, rank
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = epoch
        self.generator.manual_seed(epoch_seed(self.seed, self.rank, epoch))
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Prepare ``loader`` for ``epoch``: reseed an :class:`EpochLoader`, else reshuffle its sampler."""
    if isinstance(loader, EpochLoader):
        loader.set_epoch(epoch)
    elif hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)



class SeededItems(Dataset):
    """``dataset[index]`` for item ``(index, seed)``, drawn with python, numpy and torch seeded by ``seed``.

    The random augmentation of an item is then a function of its key alone, whichever worker loads
    it and wherever a resumed run restarted. The caller's RNG states are restored after each item.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])
