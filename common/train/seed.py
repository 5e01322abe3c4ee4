"""Seeding: global seeds, RNG state capture/restore, and per-step generators all ranks agree on.

Supernet training (OFA-style progressive shrinking, SpaceEvo, ElasticViT) samples a subnet at each
step; all ranks must pick the same one, so the sampler is reseeded from ``(base_seed, step)`` rather
than drawing from a global RNG whose state may diverge between ranks.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from typing import Any

import numpy as np
import torch

from .dist import get_rank

__all__ = ["get_rng_state", "seed_everything", "set_rng_state", "step_generator", "step_rng", "step_seed"]

_log = logging.getLogger(__name__)

# numpy's legacy global RNG takes seeds in [0, 2**32).
_MAX_GLOBAL_SEED = 2**32 - 1


def seed_everything(seed: int, deterministic: bool = False) -> int:
    """Seed python ``random``, numpy's global RNG and torch (CPU and every CUDA device).

    ``deterministic`` is passed to ``torch.use_deterministic_algorithms`` and
    ``cudnn.deterministic``; when True, cudnn benchmarking is switched off and
    ``CUBLAS_WORKSPACE_CONFIG`` is set (cuBLAS needs it for reproducible GEMMs) unless already set.
    ``PYTHONHASHSEED`` cannot be changed for a running interpreter; set it in the launcher.
    Returns ``seed``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_GLOBAL_SEED:
        raise ValueError(f"seed must be an int in [0, {_MAX_GLOBAL_SEED}], got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic)
    return seed


def get_rng_state() -> dict[str, Any]:
    """States of python ``random``, numpy's global RNG, torch CPU and (if initialised) CUDA."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"bit_generator": name, "keys": keys.tolist(), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch_cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    missing = {"python", "numpy", "torch_cpu"} - set(state)
    if missing:
        raise ValueError(f"RNG state lacks {sorted(missing)}; expected the dict from get_rng_state()")
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state((np_state["bit_generator"], np.asarray(np_state["keys"], dtype=np.uint32),
                         np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch_cpu"].to("cpu", torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.to("cpu", torch.uint8) for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            _log.warning("RNG state holds %d CUDA generators but %d devices are visible; CUDA RNG not restored",
                         len(cuda_states), torch.cuda.device_count())


def step_seed(base_seed: int, step: int, rank: int | None = None) -> int:
    """A 64-bit seed derived from ``(base_seed, step)`` and, if given, ``rank``.

    Hash: the first 8 bytes, read little-endian, of SHA-256 over the ASCII text
    ``f"{base_seed}:{step}"`` (``f"{base_seed}:{step}:{rank}"`` with a rank). A hash instead of
    ``base_seed + step`` keeps e.g. (seed 0, step 5) and (seed 5, step 0) apart; SHA-256 instead of
    ``hash()`` is stable across processes and Python versions.
    """
    for name, value in (("base_seed", base_seed), ("step", step), ("rank", rank)):
        if value is None and name == "rank":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    text = f"{base_seed}:{step}" if rank is None else f"{base_seed}:{step}:{rank}"
    return int.from_bytes(hashlib.sha256(text.encode("ascii")).digest()[:8], "little")


def step_rng(base_seed: int, step: int, rank: int | None = None) -> np.random.Generator:
    """A numpy ``Generator`` seeded with :func:`step_seed`: the same on every rank unless ``rank`` is given."""
    return np.random.default_rng(step_seed(base_seed, step, rank))


def step_generator(
    base_seed: int,
    step: int,
    rank_independent: bool = True,
    *,
    rank: int | None = None,
    device: str | torch.device = "cpu",
) -> torch.Generator:
    """A ``torch.Generator`` seeded with :func:`step_seed`.

    With ``rank_independent`` (the default) every rank gets the same generator at a given step, so
    subnet sampling agrees across ranks. Otherwise the rank (``rank`` or the process's global rank)
    is mixed in, e.g. for per-rank data augmentation.
    """
    if rank_independent and rank is not None:
        raise ValueError(f"rank={rank} was given but rank_independent=True ignores it; pass rank_independent=False")
    mixed_rank = None if rank_independent else (get_rank() if rank is None else rank)
    generator = torch.Generator(device=device)
    generator.manual_seed(step_seed(base_seed, step, mixed_rank))
    return generator
