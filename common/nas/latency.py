"""Predicted-latency constraint of a subnet search (SpaceEvo, ICCV'23, Sec. 4; ElasticViT's latency-limited search).

SpaceEvo keeps a subnet when its predicted latency ``t`` lies in ``[c − δ, c]``: under the budget
``c`` but not so far under it that capacity is wasted. The latency comes from a predictor of a local
platform, such as LitePred's (NSDI'24, Sec. 4): the paper package supplies
``kernel_rows(candidate) -> {kernel_type: feature rows}``, and the whole batch is predicted with one
``predict_models`` call, which concatenates the rows of each kernel type over all candidates.

``common`` does not depend on a paper package: any object of the shape :class:`KernelRowsPredictor` works.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
from numpy.typing import ArrayLike

from .constraints import BandConstraint

__all__ = ["KernelRowsPredictor", "LatencyConstraint"]

C = TypeVar("C")
KernelRows = Mapping[str, Any]  # {kernel_type: (kernels, features) array} of one candidate


class KernelRowsPredictor(Protocol):
    """What :class:`LatencyConstraint` uses of a latency predictor.

    An optional ``platform`` mapping is read too: its ``"name"``, where set, labels the constraint's description.
    """

    def predict_models(self, models: Sequence[KernelRows], apply_overhead: bool = True) -> ArrayLike:
        """Latency (ms) of each model, given the kernel rows of each; ``apply_overhead`` adds the calibrated
        whole-model overhead to the sum of kernel latencies."""


class LatencyConstraint(BandConstraint[C]):
    """Predicted latency (ms) in ``[limit_ms − delta_ms, limit_ms]``; ``delta_ms=None`` keeps only the upper bound."""

    def __init__(self, predictor: KernelRowsPredictor, kernel_rows: Callable[[C], KernelRows], limit_ms: float,
                 delta_ms: float | None = None, apply_overhead: bool = True, metric: str = "latency_ms") -> None:
        if not limit_ms > 0:
            raise ValueError(f"limit_ms = {limit_ms}; expected a latency budget > 0 ms")
        if delta_ms is not None and not delta_ms >= 0:
            raise ValueError(f"delta_ms = {delta_ms}; expected >= 0 (band [limit - delta, limit]) or None")
        self.predictor = predictor
        self.kernel_rows = kernel_rows
        self.limit_ms = float(limit_ms)
        self.delta_ms = None if delta_ms is None else float(delta_ms)
        self.apply_overhead = apply_overhead
        lower = -math.inf if delta_ms is None else limit_ms - delta_ms
        super().__init__(self.predict, metric, limit_ms, lower, unit="ms")
        platform = getattr(predictor, "platform", {}).get("name")
        if platform:
            self.description = f"predicted latency on {platform!r}: {self.description}"

    def predict(self, candidates: Sequence[C]) -> np.ndarray:
        """Predicted latency (ms) of each candidate, all kernel rows of the batch in one predictor call."""
        rows = [self.kernel_rows(c) for c in candidates]
        latency = np.asarray(self.predictor.predict_models(rows, apply_overhead=self.apply_overhead), dtype=np.float64)
        if latency.shape != (len(rows),) or not np.all(np.isfinite(latency) & (latency > 0)):
            # LitePred's predictors floor at a positive minimum; a band test on 0, a negative or NaN would pass silently
            raise ValueError(f"{type(self.predictor).__name__}.predict_models returned {latency.ravel()[:5].tolist()} "
                             f"(shape {latency.shape}) for {len(rows)} candidates; expected one finite latency > 0 each")
        return latency
