"""Distributed setup for torchrun launches: device resolution, process group, collectives.

Implements the repository's distribution convention (ARCHITECTURE.md, "Distribution"): torchrun +
``torch.distributed`` with gloo on CPU and nccl on CUDA. A run without the torchrun environment is a
single process and every collective here degrades to a no-op, so training code calls them
unconditionally. ``spawn_local`` starts N local processes with that environment (tests, debugging).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "DistContext",
    "RankZeroFilter",
    "all_reduce_mean",
    "barrier",
    "broadcast_object",
    "cleanup_distributed",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_rank_zero",
    "rank_zero_only",
    "resolve_device",
    "setup_logging",
    "spawn_local",
    "wrap_ddp",
]

_CUDA_SPEC = re.compile(r"^cuda(?::(\d+))?$")
_T = TypeVar("_T")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the run: its ranks, its device, and the backend in use."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None
    is_distributed: bool

    @property
    def is_main(self) -> bool:
        """True on global rank 0, the process that logs and writes checkpoints."""
        return self.rank == 0


_CONTEXT: DistContext | None = None


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise ValueError(f"environment variable {name} is not set; torchrun sets it for every process")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """Turn a device spec into a ``torch.device``.

    ``"auto"`` is ``cuda:$LOCAL_RANK`` when CUDA is available and ``cpu`` otherwise; ``"cuda"``
    means ``cuda:$LOCAL_RANK`` (0 outside torchrun); ``"cuda:N"`` and ``"cpu"`` are taken as given.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    if not isinstance(spec, str):
        raise ValueError(f"device spec must be a string such as 'auto', 'cpu', 'cuda:0'; got {spec!r}")
    text = spec.strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    local_rank = _env_int("LOCAL_RANK", 0)
    if text == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        index = local_rank
    else:
        match = _CUDA_SPEC.match(text)
        if match is None:
            raise ValueError(f"unknown device spec {spec!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if not torch.cuda.is_available():
            raise ValueError(f"device spec {spec!r} asks for CUDA but torch.cuda.is_available() is False")
        index = local_rank if match.group(1) is None else int(match.group(1))
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"device spec {spec!r} resolves to cuda:{index} but only {count} CUDA device(s) exist")
    return torch.device("cuda", index)


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Global rank: from the process group when initialised, else ``$RANK``, else 0."""
    return dist.get_rank() if _is_distributed() else _env_int("RANK", 0)


def get_world_size() -> int:
    """Number of processes: from the process group when initialised, else 1."""
    return dist.get_world_size() if _is_distributed() else 1


def is_rank_zero() -> bool:
    """True in the process that should log and write files."""
    return get_rank() == 0


def init_distributed(
    device: str | torch.device = "auto",
    backend: str | None = None,
    timeout: timedelta = timedelta(minutes=30),
) -> DistContext:
    """Join the process group described by the torchrun environment, or run as a single process.

    Reads ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; without
    ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) nothing is initialised. The backend defaults to nccl
    on CUDA and gloo on CPU. Calling it again returns the same context.
    """
    global _CONTEXT
    resolved = resolve_device(device)
    if _CONTEXT is not None:
        if _CONTEXT.device != resolved:
            raise ValueError(
                f"init_distributed was already called with device {_CONTEXT.device}; now asked for {resolved}. "
                "Call cleanup_distributed() first to change it"
            )
        return _CONTEXT
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size < 1:
        raise ValueError(f"WORLD_SIZE={world_size} must be at least 1")
    if world_size == 1 and not _is_distributed():
        _CONTEXT = DistContext(0, _env_int("LOCAL_RANK", 0), 1, resolved, None, False)
        return _CONTEXT

    if _is_distributed():  # someone else initialised the group: describe it rather than re-init
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = _env_int("LOCAL_RANK", rank)
        chosen_backend = str(dist.get_backend())
    else:
        rank = _env_int("RANK")
        local_rank = _env_int("LOCAL_RANK", rank)
        if not 0 <= rank < world_size:
            raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={world_size})")
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise ValueError(f"environment variable {name} is not set; torchrun sets it for every process")
        chosen_backend = backend or ("nccl" if resolved.type == "cuda" else "gloo")
        if chosen_backend not in ("gloo", "nccl"):
            raise ValueError(f"backend {chosen_backend!r} is not supported; expected 'gloo' or 'nccl'")
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group(
            backend=chosen_backend, init_method="env://", rank=rank, world_size=world_size, timeout=timeout
        )
    _CONTEXT = DistContext(rank, local_rank, world_size, resolved, chosen_backend, True)
    return _CONTEXT


def cleanup_distributed() -> None:
    """Destroy the process group (if any) and forget the cached context."""
    global _CONTEXT
    if _is_distributed():
        dist.destroy_process_group()
    _CONTEXT = None


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over all ranks in place and return it; unchanged in a single process.

    gloo has no AVG reduction, so this is a SUM followed by a division by the world size.
    """
    if not tensor.is_floating_point():
        raise ValueError(f"all_reduce_mean needs a floating-point tensor, got dtype {tensor.dtype}")
    if not _is_distributed():
        return tensor
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    tensor.div_(dist.get_world_size())
    return tensor


def barrier() -> None:
    """Wait for every rank; a no-op in a single process."""
    if _is_distributed():
        dist.barrier()


def broadcast_object(obj: _T, src: int = 0) -> _T:
    """Return rank ``src``'s ``obj`` on every rank (picklable objects); identity in a single process."""
    if not _is_distributed():
        return obj
    holder = [obj]
    device = _CONTEXT.device if _CONTEXT is not None and _CONTEXT.device.type == "cuda" else None
    dist.broadcast_object_list(holder, src=src, device=device)
    return holder[0]


def rank_zero_only(fn: Callable[..., _T]) -> Callable[..., _T | None]:
    """Decorator: run ``fn`` on rank 0 only; other ranks get ``None``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> _T | None:
        return fn(*args, **kwargs) if is_rank_zero() else None

    return wrapper


class RankZeroFilter(logging.Filter):
    """Pass every record on rank 0 and only WARNING and above on the other ranks."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or is_rank_zero()


def setup_logging(level: int = logging.INFO, *, rank_zero_only: bool = True) -> logging.Handler:
    """Attach one console handler to the root logger, with the rank in each line.

    With ``rank_zero_only`` the handler drops INFO/DEBUG on ranks other than 0. Calling it again
    replaces the handler it installed before instead of adding a second one.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_moonlit_console", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler._moonlit_console = True  # type: ignore[attr-defined]
    handler.setFormatter(
        logging.Formatter(f"[rank {get_rank()}] %(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    if rank_zero_only:
        handler.addFilter(RankZeroFilter())
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def wrap_ddp(model: torch.nn.Module, ctx: DistContext, **ddp_kwargs: Any) -> torch.nn.Module:
    """Wrap ``model`` (already on ``ctx.device``) in DDP; returned unchanged in a single process.

    ``device_ids`` is only given on CUDA: DDP requires it to be unset for CPU modules.
    """
    if not ctx.is_distributed:
        return model
    params = list(model.parameters())
    if params and params[0].device != ctx.device:
        raise ValueError(f"model is on {params[0].device} but the context device is {ctx.device}; move it first")
    if ctx.device.type == "cuda":
        index = ctx.device.index
        return DistributedDataParallel(model, device_ids=[index], output_device=index, **ddp_kwargs)
    return DistributedDataParallel(model, **ddp_kwargs)


def _free_local_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_files(paths: Sequence[Path], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(path.exists() for path in paths):
        if time.monotonic() > deadline:
            return  # a sibling died; the parent reports its exit code
        time.sleep(0.02)


def _spawn_entry(
    local_rank: int, fn: Callable[..., Any], world_size: int, port: int, args: Sequence[Any], out_dir: str
) -> None:
    os.environ.update(
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    # Share the cores instead of oversubscribing them: N processes each running the parent's
    # thread count spin-wait on each other (a 2-process test ran 10x slower on 2 cores).
    torch.set_num_threads(max(1, torch.get_num_threads() // world_size))
    try:
        result = fn(*args)
    except BaseException:
        cleanup_distributed()
        raise
    # Orderly teardown. Rank 0 hosts the rendezvous store and every rank holds gloo sockets to
    # the others: a rank that exits while a sibling is still inside a collective or inside
    # destroy_process_group can make that sibling abort ("terminate called without an active
    # exception", seen once in CI). So: all ranks meet, each destroys its group, and no process
    # exits before every rank has finished destroying.
    if _is_distributed():
        dist.barrier()
    cleanup_distributed()
    torch.save(result, Path(out_dir) / f"rank{local_rank}.pt")
    done = Path(out_dir)
    (done / f"done{local_rank}").touch()
    _wait_for_files([done / f"done{r}" for r in range(world_size)], timeout_s=120.0)


def spawn_local(fn: Callable[..., Any], world_size: int, args: Sequence[Any] = ()) -> list[Any]:
    """Run ``fn(*args)`` in ``world_size`` fresh processes on this machine, as torchrun would.

    Each child gets the torchrun environment (master on 127.0.0.1, a free port) and should call
    ``init_distributed``. ``fn`` must be importable (module level) and return tensors or plain data;
    the results come back as a list indexed by rank. A failing child raises in the parent.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    with tempfile.TemporaryDirectory(prefix="moonlit-spawn-") as out_dir:
        port = _free_local_port()
        mp.spawn(_spawn_entry, args=(fn, world_size, port, tuple(args), out_dir), nprocs=world_size, join=True)
        # Files this function wrote a moment ago; weights_only keeps the read restricted anyway.
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
