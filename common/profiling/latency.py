"""The latency measurement protocol used everywhere in the repo.

LitePred's profiling backends, SpaceEvo's INT8 vs FP32 tables, ElasticViT's deployment numbers
and ToP's pruned-BERT speed-ups all time through this module, so their numbers are comparable:

* a backend (registered by name, see :mod:`.backends`: ``"torch"``, ``"onnxruntime"``) turns a
  model and inputs into a :class:`Runner`, a zero-argument callable running one inference with
  the thread count pinned;
* :func:`measure_latency` warms up, times ``runs`` calls with ``time.perf_counter_ns`` and keeps
  every sample; the statistics are robust ones (median, percentiles, IQR);
* :func:`compare_latency` / :func:`compare_many` interleave the arms (A B, B A, A B, …: the first
  arm of each round rotates) so slow drifts — thermal throttling, a neighbour process — hit every
  arm alike; ratios come with the spread of the per-round ratios and a bootstrap interval;
* each result carries an environment record (CPU, cores, threads, versions, load average before
  and after, the ``under_load`` flag and its rule, see :mod:`.environment`) and serializes to JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moonlit.common.profiling.backends import (
    Runner,
    available_backends,
    get_backend,
    make_runner,
    pinned_torch_threads,
    register_backend,
)
from moonlit.common.profiling.environment import (
    CpuSnapshot,
    competing_cores,
    cpu_snapshot,
    cpu_window_s,
    environment_record,
    load_average,
)

__all__ = [
    "LatencyResult", "ComparisonResult", "MultiComparisonResult",
    "measure_latency", "benchmark", "compare_latency", "compare_many",
    # re-exported so the whole protocol is importable from here
    "Runner", "register_backend", "get_backend", "available_backends", "make_runner",
]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Results


def _percentile(samples: np.ndarray, q: float) -> float:
    return float(np.percentile(samples, q))  # numpy's default linear interpolation


@dataclasses.dataclass
class LatencyResult:
    """Timing statistics (milliseconds) of one runner; ``std_ms`` is the sample std (ddof=1)."""

    median_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    p10_ms: float
    p90_ms: float
    iqr_ms: float
    runs: int
    warmup: int
    threads: int | None
    backend: str
    samples_ms: list[float]
    environment: dict[str, Any]

    @classmethod
    def from_samples(
        cls,
        samples_ms: list[float],
        *,
        warmup: int,
        threads: int | None,
        backend: str,
        environment: dict[str, Any],
    ) -> LatencyResult:
        if not samples_ms:
            raise ValueError("cannot summarize an empty list of latency samples")
        samples = np.asarray(samples_ms, dtype=np.float64)
        return cls(
            median_ms=float(np.median(samples)),
            mean_ms=float(samples.mean()),
            std_ms=float(samples.std(ddof=1)) if len(samples) > 1 else 0.0,
            min_ms=float(samples.min()),
            p10_ms=_percentile(samples, 10),
            p90_ms=_percentile(samples, 90),
            iqr_ms=_percentile(samples, 75) - _percentile(samples, 25),
            runs=len(samples),
            warmup=warmup,
            threads=threads,
            backend=backend,
            samples_ms=[float(value) for value in samples],
            environment=environment,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyResult:
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save_json(self, path: str | Path) -> Path:
        return _save_json(self.to_dict(), path)


def _save_json(data: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


@dataclasses.dataclass
class ComparisonResult:
    """A/B comparison: ``ratio = a.median_ms / b.median_ms`` (> 1: A is slower).

    ``round_ratios`` are A/B within each interleaved round; their median and IQR show how stable
    the ratio is. ``ratio_ci95`` is a 95% bootstrap interval of the ratio of medians (rounds
    resampled with replacement, pairs kept together).
    """

    name_a: str
    name_b: str
    a: LatencyResult
    b: LatencyResult
    ratio: float
    round_ratios: list[float]
    round_ratio_median: float
    round_ratio_iqr: float
    ratio_ci95: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save_json(self, path: str | Path) -> Path:
        return _save_json(self.to_dict(), path)


def _pair(
    name_a: str, name_b: str, a: LatencyResult, b: LatencyResult, bootstrap: int, seed: int
) -> ComparisonResult:
    samples_a = np.asarray(a.samples_ms)
    samples_b = np.asarray(b.samples_ms)
    round_ratios = samples_a / samples_b
    rng = np.random.default_rng(seed)
    rounds = rng.integers(0, len(samples_a), size=(bootstrap, len(samples_a)))
    boot = np.median(samples_a[rounds], axis=1) / np.median(samples_b[rounds], axis=1)
    return ComparisonResult(
        name_a=name_a,
        name_b=name_b,
        a=a,
        b=b,
        ratio=a.median_ms / b.median_ms,
        round_ratios=[float(value) for value in round_ratios],
        round_ratio_median=float(np.median(round_ratios)),
        round_ratio_iqr=_percentile(round_ratios, 75) - _percentile(round_ratios, 25),
        ratio_ci95=(_percentile(boot, 2.5), _percentile(boot, 97.5)),
    )


@dataclasses.dataclass
class MultiComparisonResult:
    """k-way interleaved comparison; :meth:`ratio` gives any pair as a :class:`ComparisonResult`."""

    results: dict[str, LatencyResult]
    rounds: int
    warmup: int
    baseline: str
    environment: dict[str, Any]
    bootstrap: int = 1000
    seed: int = 0

    def ratio(self, numerator: str, denominator: str) -> ComparisonResult:
        for name in (numerator, denominator):
            if name not in self.results:
                raise ValueError(f"no arm named {name!r}; arms are {list(self.results)}")
        return _pair(numerator, denominator, self.results[numerator], self.results[denominator],
                     self.bootstrap, self.seed)

    def ratios_to_baseline(self) -> dict[str, ComparisonResult]:
        """Every arm's latency relative to the baseline (``arm / baseline``)."""
        return {name: self.ratio(name, self.baseline) for name in self.results}

    def to_dict(self) -> dict[str, Any]:
        ratios = {
            name: {key: value for key, value in comparison.to_dict().items() if key not in ("a", "b")}
            for name, comparison in self.ratios_to_baseline().items()
        }
        return {
            "rounds": self.rounds,
            "warmup": self.warmup,
            "baseline": self.baseline,
            "environment": self.environment,
            "results": {name: result.to_dict() for name, result in self.results.items()},
            "ratios_to_baseline": ratios,
        }

    def save_json(self, path: str | Path) -> Path:
        return _save_json(self.to_dict(), path)


# ---------------------------------------------------------------------------------------------
# Measurement


def _environment(threads: int | None, load_before: tuple[float, float, float] | None,
                 cpu_before: CpuSnapshot) -> dict[str, Any]:
    """The environment record of a run that began at ``cpu_before`` (warm-up included) and ends now."""
    cpu_after = cpu_snapshot()
    return environment_record(threads, load_before, load_average(), competing_cores(cpu_before, cpu_after),
                              window_s=cpu_window_s(cpu_before, cpu_after))


def _as_runner(target: Runner | Callable[[], Any]) -> Runner:
    if isinstance(target, Runner):
        return target
    if callable(target):
        return Runner(target)
    raise ValueError(f"expected a Runner or a zero-argument callable, got {type(target).__name__}")


def _check_counts(warmup: int, runs: int, what: str) -> None:
    if not isinstance(runs, int) or runs < 1:
        raise ValueError(f"{what} must be a positive int, got {runs!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")


def measure_latency(
    target: Runner | Callable[[], Any],
    *,
    warmup: int = 10,
    runs: int = 50,
    clock: Callable[[], int] | None = None,
) -> LatencyResult:
    """Time ``target`` (a :class:`Runner` or any zero-arg callable) ``runs`` times after ``warmup``.

    ``clock`` returns nanoseconds; default ``time.perf_counter_ns`` (looked up at call time).
    """
    _check_counts(warmup, runs, "runs")
    runner = _as_runner(target)
    clock = clock or time.perf_counter_ns
    load_before, cpu_before = load_average(), cpu_snapshot()
    samples_ms = []
    with runner.context(), pinned_torch_threads(runner.torch_threads):
        for _ in range(warmup):
            runner()
        for _ in range(runs):
            start = clock()
            runner()
            samples_ms.append((clock() - start) / 1e6)
    environment = _environment(runner.threads, load_before, cpu_before)
    return LatencyResult.from_samples(
        samples_ms, warmup=warmup, threads=runner.threads, backend=runner.backend,
        environment=environment,
    )


def benchmark(
    backend: str, model: Any, inputs: Any, *, threads: int = 1, warmup: int = 10, runs: int = 50,
    **options: Any,
) -> LatencyResult:
    """:func:`make_runner` then :func:`measure_latency`: one call from model to statistics."""
    return measure_latency(make_runner(backend, model, inputs, threads=threads, **options),
                           warmup=warmup, runs=runs)


def compare_many(
    arms: Mapping[str, Runner | Callable[[], Any]],
    *,
    rounds: int = 50,
    warmup: int = 10,
    baseline: str | None = None,
    clock: Callable[[], int] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    burst: int = 1,
) -> MultiComparisonResult:
    """Interleave any number of arms: each round calls every arm once, rotating who goes first.

    Round ``r`` calls the arms in order ``r mod k, r+1 mod k, …`` (for two arms: A B, B A, A B…);
    warm-up rounds are interleaved the same way. ``baseline`` (default: the first arm) is the
    denominator of :meth:`MultiComparisonResult.ratios_to_baseline`.

    ``burst > 1``: each round calls an arm ``burst`` times in a row and keeps the last ``burst - 1``
    calls (``rounds * (burst - 1)`` samples per arm). The first call of a burst pays for the cache
    state the other arms left; single calls interleaved among many small arms measure that
    disturbance instead of the arm (here, 120 kernels timed in two different groupings agreed within
    ±10% for 60% of them with single calls, for 97-100% with bursts of 11).
    """
    _check_counts(warmup, rounds, "rounds")
    if not isinstance(burst, int) or burst < 1:
        raise ValueError(f"burst must be an int >= 1, got {burst!r}")
    if len(arms) < 2:
        raise ValueError(f"need at least two arms to compare, got {list(arms)}")
    names = list(arms)
    baseline = names[0] if baseline is None else baseline
    if baseline not in arms:
        raise ValueError(f"baseline {baseline!r} is not one of the arms {names}")
    runners = {name: _as_runner(arm) for name, arm in arms.items()}
    clock = clock or time.perf_counter_ns
    torch_threads = {r.torch_threads for r in runners.values() if r.torch_threads is not None}
    # One shared torch thread count is pinned once; several are switched before each call
    # (outside the timed region) — interleaving then pays a pool resize, so warn about it.
    switch_threads = len(torch_threads) > 1
    if switch_threads:
        logger.warning("arms pin different torch thread counts %s; switching before every call",
                       sorted(torch_threads))
    samples: dict[str, list[float]] = {name: [] for name in names}
    load_before, cpu_before = load_average(), cpu_snapshot()
    with contextlib.ExitStack() as stack:
        for runner in runners.values():
            stack.enter_context(runner.context())
        if switch_threads:  # pinning the current count just restores it at the end
            pin = torch.get_num_threads()
        else:
            pin = next(iter(torch_threads)) if torch_threads else None
        stack.enter_context(pinned_torch_threads(pin))
        for round_index in range(warmup + rounds):
            start_arm = round_index % len(names)
            for name in names[start_arm:] + names[:start_arm]:
                runner = runners[name]
                if switch_threads and runner.torch_threads is not None:
                    torch.set_num_threads(runner.torch_threads)
                for call in range(burst):
                    start = clock()
                    runner()
                    elapsed_ms = (clock() - start) / 1e6
                    if round_index >= warmup and (burst == 1 or call > 0):
                        samples[name].append(elapsed_ms)
    environment = _environment(None, load_before, cpu_before)
    results = {
        name: LatencyResult.from_samples(
            samples[name], warmup=warmup, threads=runners[name].threads,
            backend=runners[name].backend, environment={**environment, "threads": runners[name].threads},
        )
        for name in names
    }
    return MultiComparisonResult(results, rounds, warmup, baseline, environment, bootstrap, seed)


def compare_latency(
    a: Runner | Callable[[], Any],
    b: Runner | Callable[[], Any],
    *,
    rounds: int = 50,
    warmup: int = 10,
    names: tuple[str, str] = ("a", "b"),
    clock: Callable[[], int] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> ComparisonResult:
    """Interleaved A/B timing (A B, B A, A B, …); ``ratio = median_a / median_b``."""
    if names[0] == names[1]:
        raise ValueError(f"the two arms need different names, got {names}")
    comparison = compare_many(
        {names[0]: a, names[1]: b}, rounds=rounds, warmup=warmup, clock=clock,
        bootstrap=bootstrap, seed=seed,
    )
    return comparison.ratio(names[0], names[1])
