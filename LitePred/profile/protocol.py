"""The measurement protocol of LitePred's profiling backends (NSDI'24, §3 "kernel profiling").

How one latency sample of a kernel or model is taken (:class:`Protocol`), what it records
(:class:`Measurement`) and when it is re-taken. The protocol (:func:`measure_runner`) fixes the
reference's profiling flaws (mean of one run, no load control). Timing goes through
:func:`moonlit.common.profiling.latency.measure_latency` (warm-up, then ``runs`` timed calls,
robust statistics, load record); on top of it:

* **per-call overhead**: each backend times a trivial model (a one-element Add) through the same
  runtime and input-feeding path once per process
  (:meth:`moonlit.litepred.profile.base.Backend.overhead_ms`) and subtracts it from the median,
  clamped at zero, so kernel latencies add up without counting the call cost once per kernel;
* **noisy samples are re-measured**: a sample is noisy when its relative spread
  ``(p90 - p10) / median`` exceeds ``noise_threshold`` or other processes used the CPU during it
  (the ``under_load`` rule of :mod:`moonlit.common.profiling.environment`, trusted only over
  timed windows of at least :data:`MIN_LOAD_WINDOW_MS`, see :func:`under_load`); it is then measured
  again, up to ``max_remeasures`` times, and the least noisy sample is kept (not under load first,
  then the smallest spread). Every attempt is recorded in the :class:`Measurement`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from moonlit.common.profiling.backends import Runner
from moonlit.common.profiling.environment import MIN_WINDOW_S
from moonlit.common.profiling.latency import LatencyResult, measure_latency

__all__ = ["MIN_LOAD_WINDOW_MS", "Measurement", "Protocol", "load_warnings_dropped", "measure_runner",
           "measurement_spread", "under_load"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How one latency sample is taken and when it is re-taken (see the module docstring)."""

    warmup: int = 10
    runs: int = 50
    noise_threshold: float = 0.25  # (p90 - p10) / median above this → re-measure
    max_remeasures: int = 2
    overhead_runs: int = 200  # the trivial model is cheap: more runs for a stable overhead
    burst: int = 11  # measure_many: consecutive calls per arm and round (the first is dropped)

    def __post_init__(self) -> None:
        for field, minimum in (("warmup", 0), ("runs", 1), ("max_remeasures", 0), ("overhead_runs", 1), ("burst", 1)):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"protocol {field} must be an int >= {minimum}, got {value!r}")
        if not (isinstance(self.noise_threshold, (int, float)) and self.noise_threshold > 0):
            raise ValueError(f"protocol noise_threshold must be a positive number, got {self.noise_threshold!r}")


@dataclasses.dataclass
class Measurement:
    """Latency of one kernel or model on one backend (milliseconds).

    ``median_ms``, ``p10_ms`` and ``p90_ms`` have the per-call ``overhead_ms`` subtracted and are
    never negative; ``raw_median_ms`` is the median as timed. ``spread`` is ``(p90 - p10) / median``
    of the raw samples. ``remeasured`` counts the extra attempts; ``attempts`` records each one;
    ``noisy`` says the kept sample still broke the noise rule. ``load`` is the kept sample's load
    record (load average before/after, cores used by others, ``under_load``). ``details`` holds
    backend-specific facts (e.g. how much of an INT8 graph is quantized).
    """

    backend: str
    median_ms: float
    raw_median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    warmup: int
    overhead_ms: float
    spread: float
    remeasured: int = 0
    noisy: bool = False
    attempts: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    load: dict[str, Any] = dataclasses.field(default_factory=dict)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown Measurement fields {unknown}; expected a subset of {sorted(names)}")
        return cls(**data)


def measurement_spread(result: LatencyResult) -> float:
    """(p90 - p10) / median of one timing: how much its samples disagree (0 or inf when the median is 0)."""
    if result.median_ms > 0:
        return (result.p90_ms - result.p10_ms) / result.median_ms
    return 0.0 if result.p90_ms == result.p10_ms else math.inf


# /proc/stat counts CPU time in 10 ms ticks: over a window shorter than this, one tick already
# reads as several "competing cores", so only the spread rule applies to such short samples.
MIN_LOAD_WINDOW_MS = 1000 * MIN_WINDOW_S


def under_load(result: LatencyResult) -> bool:
    """The default load check: the environment's ``under_load`` flag, if the timed window
    (sum of the samples) was long enough for /proc/stat to resolve it."""
    if sum(result.samples_ms) < MIN_LOAD_WINDOW_MS:
        return False
    return bool(result.environment.get("under_load", False))


class _DropLoadWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("machine under load")


@contextlib.contextmanager
def load_warnings_dropped() -> Iterator[None]:
    """The environment module warns on every sample it flags; most of ours are too short for the
    flag to mean anything (:func:`under_load`), so we warn ourselves, once per measurement."""
    environment_logger, drop = logging.getLogger("moonlit.common.profiling.environment"), _DropLoadWarnings()
    environment_logger.addFilter(drop)
    try:
        yield
    finally:
        environment_logger.removeFilter(drop)


def measure_runner(
    runner: Runner | Callable[[], Any],
    protocol: Protocol,
    *,
    overhead_ms: float = 0.0,
    backend: str = "callable",
    clock: Callable[[], int] | None = None,
    load_check: Callable[[LatencyResult], bool] | None = None,
) -> Measurement:
    """Time ``runner`` with the protocol: re-measure noisy samples, keep the least noisy one.

    ``clock`` (nanoseconds) and ``load_check`` (is this sample under load?) default to
    ``time.perf_counter_ns`` and :func:`under_load`; tests inject both.
    """
    if overhead_ms < 0 or not math.isfinite(overhead_ms):
        raise ValueError(f"overhead_ms must be a finite number >= 0, got {overhead_ms!r}")
    load_check = load_check or under_load
    attempts: list[tuple[bool, float, LatencyResult]] = []
    with load_warnings_dropped():
        for _ in range(1 + protocol.max_remeasures):
            result = measure_latency(runner, warmup=protocol.warmup, runs=protocol.runs, clock=clock)
            attempts.append((bool(load_check(result)), measurement_spread(result), result))
            if not attempts[-1][0] and attempts[-1][1] <= protocol.noise_threshold:
                break
    kept_under_load, spread, kept = min(attempts, key=lambda attempt: attempt[:2])
    if kept_under_load:
        logger.warning("%s: all %d attempts ran under load (others kept %s cores busy); keeping the "
                       "least noisy", backend, len(attempts), kept.environment.get("others_cores"))
    environment = kept.environment
    return Measurement(
        backend=backend,
        median_ms=max(0.0, kept.median_ms - overhead_ms),
        raw_median_ms=kept.median_ms,
        p10_ms=max(0.0, kept.p10_ms - overhead_ms),
        p90_ms=max(0.0, kept.p90_ms - overhead_ms),
        runs=kept.runs,
        warmup=kept.warmup,
        overhead_ms=overhead_ms,
        spread=spread,
        remeasured=len(attempts) - 1,
        noisy=kept_under_load or spread > protocol.noise_threshold,
        attempts=[
            {"raw_median_ms": r.median_ms, "p10_ms": r.p10_ms, "p90_ms": r.p90_ms, "spread": s,
             "under_load": u, "others_cores": r.environment.get("others_cores"),
             "window_ms": sum(r.samples_ms)}
            for u, s, r in attempts
        ],
        load={key: environment.get(key) for key in
              ("load_avg_before", "load_avg_after", "others_cores")}
        | {"under_load": kept_under_load, "window_ms": sum(kept.samples_ms)},
    )
