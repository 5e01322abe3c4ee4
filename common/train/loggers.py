"""Run logging: console lines, a ``metrics.jsonl`` record per step, optional wandb, a summary.

Implements the repository's logging convention (ARCHITECTURE.md, "Logging" and "Outputs"): stdlib
``logging`` for the console, JSON files under the run directory that reports are rendered from,
and wandb only when configured (offline mode needs no network).

Files written under ``out_dir``: ``metrics.jsonl`` (appended, one JSON object per ``log`` call with
``step`` and ``time`` (unix seconds) beside the metrics; non-finite floats are written as Python's
json writes them, ``NaN``/``Infinity``), ``config.json`` when a config is given, and ``metrics.json``
at close: the last value of every metric, overridden by ``log_summary``.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import torch

from .dist import get_rank, setup_logging

__all__ = ["RunLogger"]

_RESERVED = ("step", "time")
_WANDB_MODES = ("offline", "online", "disabled")


def _scalar(name: str, value: Any) -> float | int | bool:
    """A metric value as a JSON number: python/numpy numbers and one-element tensors."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"metric {name!r} is a tensor of shape {tuple(value.shape)}; expected one element")
        value = value.item()
    if hasattr(value, "item") and not isinstance(value, (bool, int, float)):  # numpy scalars
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise ValueError(f"metric {name!r} has value {value!r} of type {type(value).__name__}; expected a number")


def _plain_config(config: Any) -> Any:
    if type(config).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(config, resolve=True)
    return config


class RunLogger:
    """Log metrics of one run to the console, ``metrics.jsonl`` and, if configured, wandb.

    ``wandb`` is ``None`` (off) or a dict of ``wandb.init`` arguments that must contain ``project``
    and ``mode`` (``"offline"``, ``"online"`` or ``"disabled"``); its files go to ``out_dir/wandb``.
    With ``rank_zero_only`` (default) ranks other than 0 write nothing; otherwise rank r > 0 writes
    ``metrics_rank{r}.jsonl`` and never talks to wandb. If the root logger has no handler yet (no
    Hydra app, no caller setup), a console handler is installed with ``dist.setup_logging``.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        run_name: str,
        config: Any = None,
        wandb: dict[str, Any] | None = None,
        rank_zero_only: bool = True,
    ) -> None:
        if not isinstance(run_name, str) or not run_name:
            raise ValueError(f"run_name must be a non-empty string, got {run_name!r}")
        if wandb is not None:
            missing = {"project", "mode"} - set(wandb)
            if missing:
                raise ValueError(f"wandb settings lack {sorted(missing)}; got keys {sorted(wandb)}")
            if wandb["mode"] not in _WANDB_MODES:
                raise ValueError(f"wandb mode {wandb['mode']!r} is not one of {_WANDB_MODES}")
        self.out_dir = Path(out_dir)
        self.run_name = run_name
        self.rank = get_rank()
        self.active = self.rank == 0 or not rank_zero_only
        self.summary: dict[str, Any] = {}
        self._explicit_summary: dict[str, Any] = {}
        self._console = logging.getLogger(f"moonlit.run.{run_name}")
        self._wandb_run: Any = None
        self._closed = False
        self._file: TextIO | None = None
        self.metrics_path: Path | None = None
        if not logging.getLogger().handlers:  # nobody (Hydra, the caller) configured logging yet
            setup_logging()
        if not self.active:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        config = _plain_config(config)
        if config is not None and self.rank == 0:
            try:
                text = json.dumps(config, indent=1)
            except (TypeError, ValueError) as err:
                raise ValueError(f"config must be JSON-serialisable: {err}") from err
            (self.out_dir / "config.json").write_text(text + "\n", encoding="utf-8")
        name = "metrics.jsonl" if self.rank == 0 else f"metrics_rank{self.rank}.jsonl"
        self.metrics_path = self.out_dir / name
        self._file = open(self.metrics_path, "a", encoding="utf-8")
        if wandb is not None and self.rank == 0:
            try:
                self._wandb_run = self._init_wandb(dict(wandb), config)
            except BaseException:
                self._file.close()
                raise

    def _init_wandb(self, settings: dict[str, Any], config: Any) -> Any:
        import wandb as wandb_lib  # imported only when asked for: it is slow to import

        mode = settings.pop("mode")
        settings.setdefault("dir", str(self.out_dir))  # wandb writes into <dir>/wandb/
        settings.setdefault("name", self.run_name)
        return wandb_lib.init(mode=mode, config=config, **settings)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Record ``metrics`` at ``step``: one jsonl line, one console line, one wandb row."""
        if self._closed:
            raise ValueError(f"RunLogger {self.run_name!r} is closed; log() was called after close()")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        clash = [k for k in metrics if k in _RESERVED]
        if clash:
            raise ValueError(f"metric names {clash} are reserved for the record's own fields {_RESERVED}")
        values = {str(k): _scalar(str(k), v) for k, v in metrics.items()}
        if not self.active:
            return
        record = {"step": step, "time": time.time(), **values}
        assert self._file is not None
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()  # a crashed run keeps every line logged before the crash
        self.summary.update(values)
        self._console.info("step %d | %s", step, "  ".join(f"{k}={_fmt(v)}" for k, v in values.items()))
        if self._wandb_run is not None:
            self._wandb_run.log(values, step=step)

    def log_summary(self, values: dict[str, Any]) -> None:
        """Set final values (e.g. best accuracy) that override the last logged ones in ``metrics.json``."""
        self._explicit_summary.update({str(k): _scalar(str(k), v) for k, v in values.items()})

    def close(self, exit_code: int = 0) -> None:
        """Write ``metrics.json``, close the jsonl file and finish the wandb run. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self.active:
            return
        final = {**self.summary, **self._explicit_summary}
        if self.rank == 0:
            (self.out_dir / "metrics.json").write_text(json.dumps(final, indent=1) + "\n", encoding="utf-8")
        if self._file is not None:
            self._file.close()
        if self._wandb_run is not None:
            self._wandb_run.summary.update(final)
            self._wandb_run.finish(exit_code=exit_code)

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(exit_code=0 if exc_type is None else 1)


def _fmt(value: float | int | bool) -> str:
    if isinstance(value, float) and math.isfinite(value) and value != 0 and not 1e-3 <= abs(value) < 1e5:
        return f"{value:.4e}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
