"""Training plumbing shared by the papers: distribution, checkpoints, run logging, seeding, recipes.

``dist`` (torchrun setup, collectives, DDP), ``checkpoint`` (safetensors + JSON, atomic, resumable),
``foreign`` (released third-party checkpoints through a restricted unpickler), ``pretrained``
(local teacher weights), ``loggers`` (console + ``metrics.jsonl`` + optional wandb), ``seed``
(global seeds, RNG state, per-step generators), ``schedules`` (warm-up + cosine lr factors),
``optim`` (optimizers with weight-decay exemptions), ``evaluate`` (top-1 over labelled batches),
``classifier`` (a supervised training recipe).
"""

from .checkpoint import (
    CheckpointError,
    CheckpointState,
    checkpoint_meta,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    move_aside,
    resume_or_load,
    save_checkpoint,
)
from .dist import (
    DistContext,
    RankZeroFilter,
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup_distributed,
    get_rank,
    get_world_size,
    init_distributed,
    is_rank_zero,
    rank_zero_only,
    resolve_device,
    setup_logging,
    spawn_local,
    wrap_ddp,
)
from .foreign import load_foreign_checkpoint
from .loggers import RunLogger
from .seed import get_rng_state, seed_everything, set_rng_state, step_generator, step_rng, step_seed

__all__ = [
    "CheckpointError",
    "CheckpointState",
    "DistContext",
    "RankZeroFilter",
    "RunLogger",
    "all_reduce_mean",
    "barrier",
    "broadcast_object",
    "checkpoint_meta",
    "cleanup_distributed",
    "get_rank",
    "get_rng_state",
    "get_world_size",
    "init_distributed",
    "is_rank_zero",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_foreign_checkpoint",
    "move_aside",
    "rank_zero_only",
    "resolve_device",
    "resume_or_load",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
    "setup_logging",
    "spawn_local",
    "step_generator",
    "step_rng",
    "step_seed",
    "wrap_ddp",
]
