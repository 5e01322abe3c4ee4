"""Kernel feature rows of NAS candidates, assembled from cached parts (LitePred, NSDI'24, Sec. 4 and 6.4).

LitePred predicts a model's latency from its kernels (export → graph → kernel detection →
feature rows → per-type regressors). Exporting each of the 512 x 40 candidates of an evolutionary
search to ONNX would take hours, yet candidates share most of their pieces. So a candidate is
described as a list of :class:`ModelPart` — a key naming the piece's architecture *and* input
shape, a factory building it as a standalone module, the input shape — and each distinct key is
exported, detected under the platform's fusion rules and turned into feature rows once. A
candidate's rows are the concatenation of its parts' rows (a part repeated ``d`` times, e.g. the
``d`` identical layers of a stage, is listed ``d`` times).

This is exact when no fusion rule spans a cut between parts; the paper packages cut between
blocks (a conv/MBConv block, a transformer layer, a layout op), where none of our rules fuse. The
tests check that block-wise and whole-model detection agree for whole networks.

:class:`PartKernelCache` keeps the detected kernels in memory and, given a path, appends them to a
JSON Lines file so later searches (and resumed ones) skip the exports.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from moonlit.common.errors import InputError
from moonlit.litepred.graph.ir import Graph
from moonlit.litepred.graph.onnx_import import graph_from_torch
from moonlit.litepred.kernels.detect import (
    KernelConfig,
    detect_kernels,
    load_platform_rules,
)
from moonlit.litepred.kernels.fusion import RuleSet
from moonlit.litepred.pipeline import read_jsonl_cache
from moonlit.litepred.predict.features import feature_matrix

__all__ = ["ModelPart", "PartKernelCache"]

logger = logging.getLogger(__name__)

CACHE_FORMAT = "moonlit-litepred-part-kernels"


@dataclass(frozen=True)
class ModelPart:
    """A piece of a candidate network: ``key`` identifies its kernels (architecture and input shape)."""

    key: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]


class PartKernelCache:
    """Kernel configs and feature rows of model parts under one platform's fusion rules, detected once per key.

    ``path``: an append-only JSONL file shared between runs (entries of other platforms are kept
    apart by their ``platform`` field). ``rules``: explicit fusion rules instead of the platform's.
    """

    def __init__(self, platform: str = "ort-fp32", path: str | os.PathLike[str] | None = None,
                 rules: RuleSet | None = None, opset: int = 17) -> None:
        self.platform = platform
        self.rules = rules if rules is not None else load_platform_rules(platform)
        self.path = None if path is None else Path(path)
        self.opset = opset
        self._configs: dict[str, list[KernelConfig]] = {}
        self._rows: dict[str, dict[str, np.ndarray]] = {}
        self.stats = {"hits": 0, "detected": 0, "loaded": 0, "export_seconds": 0.0}
        self.unpredicted: Counter[str] = Counter()  # kernel types left out of rows (no regressor), by count
        if self.path is not None and self.path.is_file():
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        for number, entry in read_jsonl_cache(self.path):
            where = f"{self.path}:{number}"
            if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT:
                found = entry.get("format") if isinstance(entry, dict) else type(entry).__name__
                raise InputError(f"{where} has format {found!r}; expected {CACHE_FORMAT!r}")
            try:
                if entry["platform"] == self.platform and entry["rules"] == self.rules.source:
                    self._configs[str(entry["key"])] = [KernelConfig.from_dict(k) for k in entry["kernels"]]
                    self.stats["loaded"] += 1
            except (KeyError, TypeError, AttributeError, ValueError) as error:
                raise InputError(f"{where} is not a part-kernels entry ({type(error).__name__}: {error}); expected "
                                 "the fields platform, rules, key and kernels") from None

    def __contains__(self, key: str) -> bool:
        return key in self._configs

    def __len__(self) -> int:
        return len(self._configs)

    def _export(self, part: ModelPart, module: nn.Module) -> Graph:
        with torch.no_grad(), warnings.catch_warnings():
            # shape checks in forward become constants of the trace: right for a part of fixed input shape
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return graph_from_torch(module, (torch.zeros(part.input_shape),), opset=self.opset)

    def _detect(self, part: ModelPart) -> list[KernelConfig]:
        start = time.perf_counter()
        module = part.build().eval()
        graph = self._export(part, module)
        detection = detect_kernels(graph, self.platform, self.rules)
        self.stats["export_seconds"] += time.perf_counter() - start
        self.stats["detected"] += 1
        if detection.unassigned:
            logger.warning("part %s: %d nodes in no kernel, e.g. %s", part.key, len(detection.unassigned),
                           detection.unassigned[0])
        configs = [kernel.config for kernel in detection.kernels]
        if self.path is not None:
            entry = {"format": CACHE_FORMAT, "platform": self.platform, "rules": self.rules.source, "key": part.key,
                     "input_shape": list(part.input_shape), "kernels": [c.to_dict() for c in configs],
                     "unassigned": [[u.node, u.op_type, u.reason] for u in detection.unassigned]}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as handle:
                handle.write(json.dumps(entry) + "\n")
        return configs

    def configs(self, part: ModelPart) -> list[KernelConfig]:
        """The kernels of one part, in graph order (detected now if its key is new)."""
        if part.key in self._configs:
            self.stats["hits"] += 1
        else:
            self._configs[part.key] = self._detect(part)
        return self._configs[part.key]

    def model_configs(self, parts: Iterable[ModelPart]) -> list[KernelConfig]:
        """The kernels of a candidate: its parts' kernels concatenated in order."""
        return [config for part in parts for config in self.configs(part)]

    def _part_rows(self, part: ModelPart) -> dict[str, np.ndarray]:
        if part.key not in self._rows:
            grouped: dict[str, list[KernelConfig]] = {}
            for config in self.configs(part):
                grouped.setdefault(config.type, []).append(config)
            self._rows[part.key] = {t: feature_matrix(c) for t, c in grouped.items()}
        else:
            self.stats["hits"] += 1
        return self._rows[part.key]

    def rows(self, parts: Sequence[ModelPart], known_types: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """``{kernel type: feature rows}`` of a candidate (the shape of :func:`~moonlit.litepred.pipeline.model_rows`).

        Kernels of types outside ``known_types`` (a predictor's :attr:`kernel_types`) are left out
        and counted in :attr:`unpredicted`, as :func:`~moonlit.litepred.pipeline.predict_architectures` reports them.
        """
        known = None if known_types is None else set(known_types)
        blocks: dict[str, list[np.ndarray]] = {}
        for part in parts:
            for kernel_type, matrix in self._part_rows(part).items():
                if known is not None and kernel_type not in known:
                    if kernel_type not in self.unpredicted:
                        logger.warning("kernel type %r has no regressor: its kernels are left out of the rows "
                                       "(first in part %s)", kernel_type, part.key)
                    self.unpredicted[kernel_type] += len(matrix)
                    continue
                blocks.setdefault(kernel_type, []).append(matrix)
        return {t: np.concatenate(arrays) for t, arrays in blocks.items()}

    def summary(self) -> dict[str, Any]:
        return {"platform": self.platform, "rules": self.rules.source, "parts": len(self._configs), **self.stats,
                "unpredicted": dict(self.unpredicted)}
