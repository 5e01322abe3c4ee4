"""The knowledge pool: built predictors of known platforms, listable and loadable by name (LitePred, NSDI'24, Sec. 5).

A pool is a directory with one sub-directory per platform, each written by
:meth:`~moonlit.litepred.predict.predictor.PlatformPredictor.save` (``moonlit-litepred build`` writes
``outputs/litepred/predictors/<platform>/``). A platform's metadata — runtime and version,
precision, threads, optimization level, CPU model and ISA flags, the fusion rules and the kernel
rows each regressor saw — is read from its ``platform.json`` without loading any regressor.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moonlit.litepred.predict.predictor import PLATFORM_FILE, PlatformPredictor

__all__ = ["KnowledgePool"]

SUMMARY_KEYS = ("runtime", "runtime_version", "precision", "threads", "optimization_level", "cpu_model", "rules")


class KnowledgePool:
    """Predictors under ``root``, one folder per platform name."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"knowledge pool {self.root} does not exist; build predictors first "
                                    "(moonlit-litepred build platform=<name>) or pass the directory that holds them")

    def names(self, exclude: Sequence[str] = ()) -> list[str]:
        """Platforms in the pool (folders holding a ``platform.json``), sorted, minus ``exclude``."""
        return sorted(p.name for p in self.root.iterdir()
                      if (p / PLATFORM_FILE).is_file() and p.name not in set(exclude))

    def _check(self, name: str) -> Path:
        path = self.root / name
        if not (path / PLATFORM_FILE).is_file():
            raise KeyError(f"platform {name!r} is not in the knowledge pool {self.root}; it holds {self.names()}")
        return path

    def metadata(self, name: str) -> dict[str, Any]:
        """``platform.json``'s platform metadata plus the overhead term and kernel types."""
        meta = json.loads((self._check(name) / PLATFORM_FILE).read_text(encoding="utf-8"))
        platform = dict(meta.get("platform", {}))
        platform.pop("selection", None)  # per-type regressor comparisons: long, and in build.json anyway
        return {**platform, "name": name, "kernel_types": sorted(meta.get("kernels", {})),
                "overhead": meta.get("overhead", {})}

    def load(self, name: str) -> PlatformPredictor:
        return PlatformPredictor.load(self._check(name))

    def table(self, exclude: Sequence[str] = ()) -> list[dict[str, Any]]:
        """One row per platform: name, the :data:`SUMMARY_KEYS`, kernel types and profiled kernel rows."""
        rows = []
        for name in self.names(exclude):
            meta = self.metadata(name)
            rows.append({"name": name, **{k: meta.get(k) for k in SUMMARY_KEYS},
                         "kernel_types": len(meta["kernel_types"]),
                         "kernel_rows": int(sum((meta.get("kernel_rows") or {}).values()))})
        return rows
