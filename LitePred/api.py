"""LitePred's public API: the only LitePred module other packages import (LitePred, NSDI'24).

A paper package that wants predicted latency uses these names and nothing else of LitePred:

- :class:`Predictor` (a platform's kernel regressors plus overhead term) and :func:`load_predictor`;
  :attr:`Predictor.rules` names the fusion rules kernels are detected under for it.
- :func:`predict_onnx` (an ``.onnx`` file) and :func:`predict_module` (a torch module, exported
  first) return a :class:`Prediction`.
- NAS candidates: a candidate is a list of :class:`ModelPart`; :class:`PartCache` detects each
  distinct part once; :class:`PartsLatency` predicts candidates from their parts and builds the
  search constraint.
- :func:`measure_like_predictor` and :func:`protocol_summary`: measure whole models the way a
  predictor's platform measured its training data, and the value a prediction is scored against.
- :class:`ArchFamily`, :class:`ArchSpec` and :func:`register_family`: a package plugs its
  architecture family into LitePred's zoo (see ``moonlit.litepred.families`` entry points in
  ``LitePred/zoo.py``).

Paper tests build stand-in predictors with :mod:`moonlit.litepred.testing`.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from moonlit.common.errors import InputError
from moonlit.litepred.pipeline import measure_like_predictor as _measure_like_platform
from moonlit.litepred.pipeline import protocol_summary
from moonlit.litepred.predict.parts import ModelPart
from moonlit.litepred.predict.parts import PartKernelCache as PartCache
from moonlit.litepred.predict.predictor import PlatformPredictor as Predictor
from moonlit.litepred.zoo import ArchFamily, ArchSpec, register_family

if TYPE_CHECKING:
    from torch import Tensor, nn

    from moonlit.common.nas import LatencyConstraint

__all__ = [
    "ArchFamily",
    "ArchSpec",
    "ModelPart",
    "PartCache",
    "PartsLatency",
    "Prediction",
    "Predictor",
    "load_predictor",
    "measure_like_predictor",
    "predict_module",
    "predict_onnx",
    "protocol_summary",
    "register_family",
]

C = TypeVar("C")


def load_predictor(path: str | os.PathLike[str]) -> Predictor:
    """The predictor saved in directory ``path`` (``moonlit-litepred build`` writes one per platform)."""
    return Predictor.load(Path(path))


@dataclass(frozen=True)
class Prediction:
    """One model's predicted latency and how it was reached.

    ``kernels``: kernels detected; ``unpredicted_kernels``: the keys of those whose type has no
    regressor (left out of the sum); ``unassigned_nodes``: ``(node, op type, reason)`` of graph
    nodes in no kernel; ``seconds``: time spent per stage (``load``/``export``, ``detect``,
    ``predict``, ``total``).
    """

    latency_ms: float
    kernels: int
    unpredicted_kernels: list[str] = field(default_factory=list)
    unassigned_nodes: list[tuple[str, str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def predicted_kernels(self) -> int:
        """Kernels whose predictions make up the latency."""
        return self.kernels - len(self.unpredicted_kernels)


def predict_onnx(predictor: Predictor, path: str | os.PathLike[str], *, rules: str | None = None,
                 input_shapes: Mapping[str, Sequence[int]] | None = None) -> Prediction:
    """Predict an ``.onnx`` file end to end; ``rules`` default to :attr:`Predictor.rules`.

    A file that cannot be predicted raises :class:`~moonlit.common.errors.InputError` naming it.
    """
    from moonlit.litepred.pipeline import timed_predict_onnx

    result = timed_predict_onnx(predictor, path, predictor.rules if rules is None else rules, input_shapes)
    return Prediction(float(result["latency_ms"]), int(result["kernels"]), list(result["unpredicted_kernels"]),
                      [tuple(node) for node in result["unassigned_nodes"]], dict(result["seconds"]))


def predict_module(predictor: Predictor, module: nn.Module, example_inputs: tuple[Tensor, ...], *,
                   rules: str | None = None, apply_overhead: bool = True, opset: int = 17) -> Prediction:
    """Predict a torch module: export it (as it is, so call ``.eval()`` first), detect its kernels
    under ``rules`` (default :attr:`Predictor.rules`), sum the kernel predictions.

    ``apply_overhead=False`` leaves the whole-model overhead term out (for a piece of a network).
    """
    import torch

    from moonlit.litepred.graph.onnx_import import graph_from_torch
    from moonlit.litepred.kernels.detect import detect_kernels
    from moonlit.litepred.pipeline import model_rows

    start = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        graph = graph_from_torch(module, tuple(example_inputs), opset=opset)
    exported = time.perf_counter()
    detection = detect_kernels(graph, predictor.rules if rules is None else rules)
    detected = time.perf_counter()
    rows, unknown = model_rows((k.config for k in detection.kernels), predictor.kernel_types)
    latency = predictor.predict_model(rows, apply_overhead=apply_overhead)
    done = time.perf_counter()
    return Prediction(latency, len(detection.kernels), unknown,
                      [(u.node, u.op_type, u.reason) for u in detection.unassigned],
                      {"export": exported - start, "detect": detected - exported, "predict": done - detected,
                       "total": done - start})


class PartsLatency(Generic[C]):
    """Predicted latency (ms) of NAS candidates of type ``C``, each described by its parts.

    ``parts(candidate)`` lists the candidate's :class:`ModelPart` in network order; ``cache``
    defaults to an in-memory :class:`PartCache` under ``rules`` (default :attr:`Predictor.rules`).
    """

    def __init__(self, predictor: Predictor, parts: Callable[[C], Sequence[ModelPart]],
                 cache: PartCache | None = None, *, rules: str | None = None) -> None:
        self.predictor = predictor
        self.parts = parts
        if cache is None:
            cache = PartCache(predictor.rules if rules is None else rules)
        elif rules is not None and rules != cache.platform:
            raise InputError(f"rules {rules!r} differ from the cache's {cache.platform!r}; expected one choice")
        self.cache = cache

    def kernel_rows(self, candidate: C) -> dict[str, np.ndarray]:
        """``{kernel type: feature rows}`` of ``candidate`` for the kernel types the predictor knows."""
        return self.cache.rows(self.parts(candidate), self.predictor.kernel_types)

    def predict(self, candidates: Sequence[C], apply_overhead: bool = True) -> np.ndarray:
        """Latency (ms) of each candidate, all rows in one batched predictor call."""
        rows = [self.kernel_rows(candidate) for candidate in candidates]
        return np.asarray(self.predictor.predict_models(rows, apply_overhead=apply_overhead), dtype=np.float64)

    def constraint(self, limit_ms: float, delta_ms: float | None = None, apply_overhead: bool = True
                   ) -> LatencyConstraint[C]:
        """A search constraint: predicted latency in ``[limit_ms - delta_ms, limit_ms]``."""
        from moonlit.common.nas import LatencyConstraint

        return LatencyConstraint(self.predictor, self.kernel_rows, limit_ms, delta_ms, apply_overhead)


def measure_like_predictor(predictor: Predictor | Mapping[str, Any], items: Sequence[tuple[Any, Any]],
                           repeats: int = 2) -> list[list[float]]:
    """Latency of whole models as the predictor's platform measured its training data (its backend,
    quantization, threads and statistic), ``repeats`` passes per model. ``items`` are
    ``(module, example_inputs)``; returns the passes of each item. ``predictor`` may also be its
    platform metadata (``Predictor.platform``)."""
    platform = predictor.platform if isinstance(predictor, Predictor) else predictor
    return _measure_like_platform(platform, items, repeats)
