"""The LitePred pipeline: architectures → kernels → profiling → predictors → model latency (NSDI'24 §4).

Each step is a function over plain objects, so the CLI (:mod:`moonlit.litepred.cli`), the
quickstart and the tests compose them:

* :class:`KernelCache` — the kernels of each architecture under a platform's fusion rules
  (export → :func:`~moonlit.litepred.graph.onnx_import.load_graph` →
  :func:`~moonlit.litepred.kernels.detect.detect_kernels`), appended to a JSON Lines file so an
  interrupted run resumes where it stopped;
* :func:`profile_kernels` / :func:`profile_models` — measure on a backend, appending every
  result to a :class:`~moonlit.litepred.profile.dataset.ProfileDataset` (already measured keys are skipped);
* :func:`train_predictor` — one regressor per kernel type from the dataset, then
  :func:`calibrate_overhead` on whole models measured on the same backend;
* :func:`model_rows` / :func:`predict_architectures` — a model's kernels as feature rows, and the
  batched prediction of many models.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from moonlit.common.errors import InputError
from moonlit.litepred.kernels.detect import Detection, KernelConfig, detect_kernels
from moonlit.litepred.predict.features import feature_matrix, feature_names
from moonlit.litepred.predict.predictor import PlatformPredictor
from moonlit.litepred.profile.base import Backend
from moonlit.litepred.profile.dataset import ProfileDataset, ProfileRecord, record_key
from moonlit.litepred.profile.sampler import KernelPool
from moonlit.litepred.zoo import ArchSpec

__all__ = [
    "KernelCache", "build_pool", "calibrate_overhead", "detect_architecture", "measurement_times", "model_rows",
    "predict_architectures", "profile_kernels", "profile_models", "train_predictor",
]

logger = logging.getLogger(__name__)


def detect_architecture(spec: ArchSpec, platform: str) -> Detection:
    """Export ``spec`` (batch 1) and detect its kernels with ``platform``'s fusion rules."""
    from moonlit.litepred.graph.onnx_import import graph_from_torch

    model = spec.build()
    return detect_kernels(graph_from_torch(model, (spec.example_input(),)), platform)


def read_jsonl_cache(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, entry)`` of an append-only JSONL cache; a line cut by an interrupted write is skipped."""
    if not path.is_file():
        return
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); expected a JSON Lines "
                         "cache") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s:%d: unreadable line skipped (an interrupted write)", path, number)


class KernelCache:
    """``{architecture name: its kernel configs}`` for one platform's rules, in an append-only JSONL file."""

    def __init__(self, path: str | Path, platform: str) -> None:
        self.path = Path(path)
        self.platform = platform
        self._entries: dict[str, dict[str, Any]] = {}
        for _, entry in read_jsonl_cache(self.path):
            if entry.get("platform") == platform:
                self._entries[entry["name"]] = entry

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, spec: ArchSpec) -> list[KernelConfig]:
        """The kernels of ``spec``, detected now and stored if not cached."""
        if spec.name not in self._entries:
            detection = detect_architecture(spec, self.platform)
            entry = {"name": spec.name, "platform": self.platform, "spec": spec.to_dict(),
                     "kernels": [k.config.to_dict() for k in detection.kernels],
                     "unassigned": [[u.node, u.op_type, u.reason] for u in detection.unassigned]}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as handle:
                handle.write(json.dumps(entry) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            self._entries[spec.name] = entry
        return [KernelConfig.from_dict(k) for k in self._entries[spec.name]["kernels"]]

    def unassigned(self, name: str) -> list[list[str]]:
        return list(self._entries[name]["unassigned"])

    def fill(self, specs: Sequence[ArchSpec], desc: str = "detecting kernels") -> None:
        missing = [s for s in specs if s.name not in self._entries]
        for spec in tqdm(missing, desc=desc, disable=not missing):
            self.get(spec)


def build_pool(cache: KernelCache, specs: Sequence[ArchSpec]) -> KernelPool:
    """Count the kernel configurations of ``specs`` (detected through ``cache``)."""
    cache.fill(specs)
    pool = KernelPool(platform=cache.platform)
    for spec in specs:
        pool.add_configs(cache.get(spec), spec.name)
    return pool


def _groups(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    if size < 1:
        raise ValueError(f"group size must be >= 1, got {size}")
    for begin in range(0, len(items), size):
        yield items[begin : begin + size]


def profile_kernels(configs: Sequence[KernelConfig], backend: Backend, dataset: ProfileDataset, *,
                    group_size: int = 128, desc: str | None = None) -> dict[str, Any]:
    """Measure every config not yet in ``dataset`` for ``backend``, ``group_size`` at a time timed
    interleaved (:meth:`Backend.measure_many`); each group is appended as soon as it is measured."""
    from moonlit.litepred.profile.kernel_builder import build_kernel_module

    done = dataset.measured_keys(backend.name, "kernel")
    todo = [c for c in configs if record_key(c.type, dict(c.params)) not in done]
    failures: list[dict[str, str]] = []
    start = time.perf_counter()
    with tqdm(total=len(todo), desc=desc or f"profiling kernels on {backend.name}", disable=not todo) as bar:
        for group in _groups(todo, group_size):
            began = time.perf_counter()
            items, built = [], []
            for config in group:
                try:
                    items.append(build_kernel_module(config))
                    built.append(config)
                except ValueError as error:  # a config the builder rejects: recorded, not fatal
                    failures.append({"config": config.key(), "error": str(error)[:300]})
            measurements = backend.measure_many(items, kernels=True) if items else []
            # seconds = this kernel's share of the group's cost (build, export, session, timing)
            share = (time.perf_counter() - began) / max(1, len(group))
            for config, measurement in zip(built, measurements):
                if isinstance(measurement, Exception):
                    failures.append({"config": config.key(), "error": str(measurement)[:300]})
                    logger.warning("could not profile %s: %s", config.key(), measurement)
                    continue
                dataset.append(ProfileRecord.create(backend.name, "kernel", config.type, dict(config.params),
                                                    measurement, {"seconds": share}))
            bar.update(len(group))
    return {"requested": len(configs), "already_measured": len(configs) - len(todo),
            "measured": len(todo) - len(failures), "failed": failures, "seconds": time.perf_counter() - start}


def _model_config(spec: ArchSpec, repeat: int) -> dict[str, Any]:
    return {"family": spec.family, "description": spec.description, "input_size": list(spec.input_size),
            "repeat": repeat}


def profile_models(specs: Sequence[ArchSpec], backend: Backend, dataset: ProfileDataset, *, repeats: int = 1,
                   group_size: int = 12, desc: str | None = None, first_repeat: int = 0,
                   skip_failed: bool = False) -> dict[str, Any]:
    """Measure whole models ``repeats`` times each, in separate passes (independent measurements).

    Each pass times ``group_size`` models interleaved; pass ``r`` shuffles the order with seed ``r``,
    so the passes group different models together. Passes are numbered from ``first_repeat``: a new
    measurement campaign (e.g. on another day, when the machine may run at another speed) takes
    fresh numbers instead of the stored ones. A model the backend cannot run raises, or with
    ``skip_failed`` is logged, left unmeasured and listed under ``"failed"`` (name, pass, error).
    """
    start = time.perf_counter()
    measured = 0
    failed: list[dict[str, Any]] = []
    for repeat in range(first_repeat, first_repeat + repeats):
        done = dataset.measured_keys(backend.name, "model")
        todo = [s for s in specs if record_key(s.name, _model_config(s, repeat)) not in done]
        if repeat:
            todo = [todo[i] for i in np.random.default_rng(repeat).permutation(len(todo))]
        label = desc or f"profiling models on {backend.name}"
        with tqdm(total=len(todo), desc=f"{label} (pass {repeat - first_repeat + 1}/{repeats})",
                  disable=not todo) as bar:
            for group in _groups(todo, group_size):
                began = time.perf_counter()
                measurements = backend.measure_many([(s.build(), (s.example_input(),)) for s in group])
                share = (time.perf_counter() - began) / len(group)
                for spec, measurement in zip(group, measurements):
                    if isinstance(measurement, Exception):
                        if not skip_failed:
                            raise RuntimeError(f"could not measure model {spec.name} on {backend.name}") \
                                from measurement
                        error = (str(measurement).strip().splitlines() or [type(measurement).__name__])[0][:300]
                        logger.warning("%s does not run on %s (%s); left out", spec.name, backend.name, error)
                        failed.append({"model": spec.name, "repeat": repeat, "error": error})
                        continue
                    dataset.append(ProfileRecord.create(backend.name, "model", spec.name, _model_config(spec, repeat),
                                                        measurement, {"seconds": share}))
                    measured += 1
                bar.update(len(group))
    return {"measured": measured, "failed": failed, "seconds": time.perf_counter() - start}


# The latency statistic predictors learn and are scored on. Contention on a shared VM only slows runs
# down, in phases longer than a kernel's timing window: the 10th percentile of interleaved samples
# tracks the uncontended speed. Measured here (40 kernels timed 3 times, interleaved): p10 agreed
# within ±10% between repeats for 100% of kernels, the median for 17.5-97.5% depending on the phase.
STATISTICS = {"p10": "p10_ms", "median": "median_ms"}


def latency_of(record: ProfileRecord, statistic: str = "p10") -> float:
    """``record``'s latency (ms, overhead subtracted) by ``statistic`` ("p10" or "median")."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {sorted(STATISTICS)}, got {statistic!r}")
    return float(record.measurement[STATISTICS[statistic]])


def measured_models(dataset: ProfileDataset, backend: str, specs: Sequence[ArchSpec], repeat: int = 0,
                    statistic: str = "p10") -> np.ndarray:
    """Latency (ms) of each spec's ``repeat``-th measurement by ``statistic``; NaN where missing."""
    by_key = {r.key: latency_of(r, statistic) for r in dataset.records(backend=backend, kind="model")}
    return np.array([by_key.get(record_key(s.name, _model_config(s, repeat)), np.nan) for s in specs])


def measurement_times(dataset: ProfileDataset, backend: str, specs: Sequence[ArchSpec], repeat: int = 0
                      ) -> list[datetime.datetime | None]:
    """When each spec's ``repeat``-th measurement was taken (UTC); None where missing."""
    by_key = {r.key: r.time for r in dataset.records(backend=backend, kind="model")}
    times = [by_key.get(record_key(s.name, _model_config(s, repeat))) for s in specs]
    return [datetime.datetime.fromisoformat(t) if t else None for t in times]


def kernel_training_data(dataset: ProfileDataset, backend: str, min_rows: int = 10, statistic: str = "p10",
                         extra: Sequence[ProfileRecord] = ()) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    """``{kernel type: (X, y, feature names)}`` from the kernel records of ``backend`` (y by ``statistic``),
    followed by the ``extra`` kernel records (e.g. kernels timed inside training models)."""
    configs: dict[str, list[KernelConfig]] = {}
    latency: dict[str, list[float]] = {}
    for record in [*dataset.records(backend=backend, kind="kernel"), *extra]:
        configs.setdefault(record.name, []).append(KernelConfig(record.name, record.config))
        latency.setdefault(record.name, []).append(max(latency_of(record, statistic), 1e-4))
    data = {}
    for kernel_type in sorted(configs):
        if len(configs[kernel_type]) < min_rows:
            logger.warning("%s: only %d profiled kernels (< %d): no regressor", kernel_type,
                           len(configs[kernel_type]), min_rows)
            continue
        data[kernel_type] = (feature_matrix(configs[kernel_type]), np.array(latency[kernel_type]),
                             feature_names(kernel_type))
    if not data:
        raise ValueError(f"no kernel type of backend {backend!r} has {min_rows} or more profiled kernels")
    return data


def train_predictor(dataset: ProfileDataset, backend: str, *, regressor: str = "forest",
                    options: Mapping[str, Any] | None = None, metadata: Mapping[str, Any] | None = None,
                    min_rows: int = 10, seed: int = 0, statistic: str = "p10",
                    extra: Sequence[ProfileRecord] = ()) -> PlatformPredictor:
    """One regressor per kernel type from ``dataset``'s kernels on ``backend`` and the ``extra`` kernel records
    (``regressor="select"`` compares)."""
    data = kernel_training_data(dataset, backend, min_rows, statistic, extra)
    platform = {"name": backend, **dict(metadata or {}), "statistic": statistic,
                "kernel_rows": {t: int(len(y)) for t, (_, y, _) in data.items()}}
    return PlatformPredictor.train(data, regressor=regressor, options=options, platform=platform, seed=seed)


def model_rows(configs: Iterable[KernelConfig], known_types: Sequence[str] | None = None
               ) -> tuple[dict[str, np.ndarray], list[str]]:
    """A model's kernels as ``{type: feature rows}``; kernels of types not in ``known_types`` are returned apart."""
    grouped: dict[str, list[KernelConfig]] = {}
    unknown: list[str] = []
    for config in configs:
        if known_types is not None and config.type not in known_types:
            unknown.append(config.key())
            continue
        grouped.setdefault(config.type, []).append(config)
    return {t: feature_matrix(c) for t, c in grouped.items()}, unknown


def predict_architectures(predictor: PlatformPredictor, cache: KernelCache, specs: Sequence[ArchSpec], *,
                          apply_overhead: bool = True) -> tuple[np.ndarray, list[list[str]]]:
    """Predicted latency (ms) of each spec and, per spec, the kernels no regressor covers (left out, reported)."""
    rows, unknown = [], []
    for spec in specs:
        model, missing = model_rows(cache.get(spec), predictor.kernel_types)
        rows.append(model)
        unknown.append(missing)
    return predictor.predict_models(rows, apply_overhead=apply_overhead), unknown


def calibrate_overhead(predictor: PlatformPredictor, cache: KernelCache, specs: Sequence[ArchSpec],
                       measured_ms: np.ndarray, min_models: int = 5, per_type: bool = False,
                       ridge: float | str = "cv", weight_rates: Sequence[float] = (0.0,),
                       kernel_offsets: Sequence[float] = (0.0,)) -> dict[str, Any]:
    """Fit the overhead term on measured calibration models (stored in the predictor).

    ``per_type=False``: ``model_ms = a · Σ kernels + b``; True: one factor per kernel type on top, and
    the weight-read floor per kernel with its rate picked from ``weight_rates`` and the per-kernel call offset
    from ``kernel_offsets`` (:mod:`.predict.calibration`).
    """
    keep = np.isfinite(measured_ms)
    chosen = [s for s, k in zip(specs, keep) if k]
    rows = [model_rows(cache.get(s), predictor.kernel_types)[0] for s in chosen]
    overhead = predictor.calibrate(rows, measured_ms[keep], min_models=min_models, per_type=per_type, ridge=ridge,
                                   weight_rates=weight_rates, kernel_offsets=kernel_offsets)
    return {"models": len(chosen), "slope": overhead.slope, "intercept": overhead.intercept,
            "fitted": overhead.fitted, "type_scales": dict(overhead.type_scales), "ridge": overhead.ridge,
            "weight_ms_per_mparam": overhead.weight_ms_per_mparam, "kernel_offset_ms": overhead.kernel_offset_ms,
            "cv_error": overhead.cv_error}


def timed_predict_onnx(predictor: PlatformPredictor, path: str | Path, platform: str,
                       input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """Predict one ``.onnx`` file end to end (load, shapes, kernels, regressors) and time each part.

    The latency is finite and at least :data:`~moonlit.litepred.predict.predictor.MIN_LATENCY_MS`; a file that
    cannot be predicted raises :class:`~moonlit.common.errors.InputError` naming it.
    """
    from moonlit.litepred.graph.onnx_import import load_graph

    start = time.perf_counter()
    graph = load_graph(path, input_shapes)  # an InputError naming the file for a broken one
    loaded = time.perf_counter()
    try:
        detection = detect_kernels(graph, platform)
        detected = time.perf_counter()
        rows, unknown = model_rows((k.config for k in detection.kernels), predictor.kernel_types)
        latency = predictor.predict_model(rows)
    except InputError as error:  # a node attribute or size no kernel can have: name the file too
        raise InputError(f"{path}: {error}") from error
    done = time.perf_counter()
    return {"latency_ms": latency, "kernels": len(detection.kernels), "unpredicted_kernels": unknown,
            "unassigned_nodes": [[u.node, u.op_type, u.reason] for u in detection.unassigned],
            "seconds": {"load": loaded - start, "detect": detected - loaded, "predict": done - detected,
                        "total": done - start}}


def measure_like_predictor(platform: Mapping[str, Any], items: Sequence[tuple[Any, Any]], repeats: int = 2
                           ) -> list[list[float]]:
    """Latency of whole models as a predictor's platform measured its training data: its backend (same
    quantization, threads, interleaving) and its statistic (``platform["statistic"]``, p10 by default),
    ``repeats`` independent passes per model. ``items`` are ``(module, example_inputs)``; returns the
    passes of each item. What a prediction should be scored against (a plain benchmark median is
    another statistic, and an INT8 model quantized another way is another model)."""
    from moonlit.litepred.profile import get_platform

    backend = get_platform(platform.get("backend") or platform["name"])
    field = STATISTICS[platform.get("statistic", "p10")]
    passes: list[list[float]] = [[] for _ in items]
    for _ in range(repeats):
        for i, measurement in enumerate(backend.measure_many(list(items))):
            if isinstance(measurement, Exception):
                raise RuntimeError(f"could not measure model {i} on {backend.name}") from measurement
            passes[i].append(getattr(measurement, field))
    return passes


def protocol_summary(passes: Sequence[float], fallback_ms: float | None) -> tuple[float | None, str]:
    """The latency a prediction is scored against (the mean of the protocol passes, else ``fallback_ms``)
    and how the passes agree ("+2.1%": pass 2 vs pass 1; "–" for one pass or none)."""
    measured = float(np.mean(passes)) if len(passes) else fallback_ms
    agree = f"{100 * (passes[1] / passes[0] - 1):+.1f}%" if len(passes) > 1 else "–"
    return measured, agree


def export_spec(spec: ArchSpec, path: str | Path) -> Path:
    """``spec`` as an ``.onnx`` file (batch 1)."""
    from moonlit.common.export.onnx import export_onnx

    return export_onnx(spec.build(), (spec.example_input(),), path, check=False)
