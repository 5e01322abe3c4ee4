"""Profiling backends for LitePred (NSDI'24, §3 "kernel profiling" and §5 platforms): the contract.

A *backend* is one platform of the knowledge pool (runtime × precision × threads × optimization
level on this CPU). Backends are plug-ins registered by name, in the manner of nn-Meter's backend
interface: :func:`register_backend` decorates a thin factory, :func:`get_backend` builds one with
options, :func:`list_backends` lists them. Each backend profiles a torch module (a single kernel or
a whole model, :meth:`Backend.measure`) or an ``.onnx`` file (:meth:`Backend.measure_onnx`) and
describes itself (:meth:`Backend.metadata`) so every number in the dataset says where it came from.

The measurement protocol (:func:`measure_runner`) fixes the reference's profiling flaws (mean of
one run, no load control). Timing goes through :func:`moonlit.common.profiling.latency.measure_latency`
(warm-up, then ``runs`` timed calls, robust statistics, load record); on top of it:

* **per-call overhead**: each backend times a trivial model (a one-element Add) through the same
  runtime and input-feeding path once per process (:meth:`Backend.overhead_ms`) and subtracts it
  from the median, clamped at zero, so kernel latencies add up without counting the call cost
  once per kernel;
* **noisy samples are re-measured**: a sample is noisy when its relative spread
  ``(p90 - p10) / median`` exceeds ``noise_threshold`` or other processes used the CPU during it
  (the ``under_load`` rule of :mod:`moonlit.common.profiling.environment`, trusted only over
  timed windows of at least :data:`MIN_LOAD_WINDOW_MS`, see :func:`under_load`); it is then measured
  again, up to ``max_remeasures`` times, and the least noisy sample is kept (not under load first,
  then the smallest spread). Every attempt is recorded in the :class:`Measurement`.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import functools
import importlib
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from moonlit.common.profiling.backends import Runner
from moonlit.common.profiling.environment import cpu_model
from moonlit.common.profiling.latency import LatencyResult, compare_many, measure_latency

__all__ = [
    "Backend", "Measurement", "Protocol", "register_backend", "get_backend", "list_backends",
    "measure_runner", "under_load", "MIN_LOAD_WINDOW_MS", "cpu_isa_flags",
    "fixed_threads", "BUILTIN_BACKEND_MODULES",
]

logger = logging.getLogger(__name__)

OVERHEAD_ARM = "__overhead__"
INTERLEAVED_NOTE = (
    "On shared VMs the machine alternates between fast and slow phases of ~0.2-1 s (35% slower; "
    "measured here: 12 bursts of one model, medians 2.96-4.09 ms). 50 back-to-back runs of a kernel "
    "last a few ms and fall in one phase, so two measurements of it disagree. Timing a group of "
    "modules round-robin in bursts (the first call of each burst dropped: it pays for the cache "
    "state the others left) spreads each one's samples over seconds and over phases.")

# ---------------------------------------------------------------------------------------------
# Measurement and protocol


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


def _spread(result: LatencyResult) -> float:
    if result.median_ms > 0:
        return (result.p90_ms - result.p10_ms) / result.median_ms
    return 0.0 if result.p90_ms == result.p10_ms else math.inf


# /proc/stat counts CPU time in 10 ms ticks: over a window shorter than this, one tick already
# reads as several "competing cores", so only the spread rule applies to such short samples.
MIN_LOAD_WINDOW_MS = 100.0


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
def _unresolved_load_warnings_dropped() -> Iterator[None]:
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
    with _unresolved_load_warnings_dropped():
        for _ in range(1 + protocol.max_remeasures):
            result = measure_latency(runner, warmup=protocol.warmup, runs=protocol.runs, clock=clock)
            attempts.append((bool(load_check(result)), _spread(result), result))
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


# ---------------------------------------------------------------------------------------------
# Machine description

# ISA extensions that decide kernel speed (x86 "flags", ARM "Features" in /proc/cpuinfo).
_ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
    "asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve", "sve2",
)


@functools.lru_cache(maxsize=4)
def cpu_isa_flags(cpuinfo_path: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """The speed-relevant ISA extensions this CPU reports (empty where /proc/cpuinfo is missing)."""
    flags: set[str] = set()
    with contextlib.suppress(OSError), open(cpuinfo_path, encoding="utf-8", errors="replace") as cpuinfo:
        for line in cpuinfo:
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                flags.update(value.split())
                break
    return tuple(flag for flag in _ISA_FLAGS if flag in flags)


# ---------------------------------------------------------------------------------------------
# Backends and their registry

_OVERHEAD_CACHE: dict[tuple[Any, ...], float] = {}


class Backend(abc.ABC):
    """One profiling platform. Subclasses set the class attributes and implement the ``_`` hooks.

    ``threads`` (default 1) names multi-thread variants ``<name>-<threads>t``. ``warmup``,
    ``runs``, ``noise_threshold``, ``max_remeasures`` and ``overhead_runs`` set the
    :class:`Protocol`. ``overhead_ms`` fixes the per-call overhead instead of measuring it;
    ``clock``/``load_check`` are passed to :func:`measure_runner` (tests inject fakes).
    """

    runtime: str = ""
    precision: str = "fp32"
    optimization_level: str = ""

    def __init__(
        self,
        name: str,
        *,
        threads: int = 1,
        warmup: int = 10,
        runs: int = 50,
        noise_threshold: float = 0.25,
        max_remeasures: int = 2,
        overhead_runs: int = 200,
        burst: int = 11,
        overhead_ms: float | None = None,
        clock: Callable[[], int] | None = None,
        load_check: Callable[[LatencyResult], bool] | None = None,
    ) -> None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads must be a positive int, got {threads!r}")
        if overhead_ms is not None and not (overhead_ms >= 0 and math.isfinite(overhead_ms)):
            raise ValueError(f"overhead_ms must be a finite number >= 0 or None, got {overhead_ms!r}")
        self.name = name if threads == 1 else f"{name}-{threads}t"
        self.threads = threads
        self.protocol = Protocol(warmup=warmup, runs=runs, noise_threshold=noise_threshold,
                                 max_remeasures=max_remeasures, overhead_runs=overhead_runs, burst=burst)
        self._fixed_overhead_ms = overhead_ms
        self._clock = clock
        self._load_check = load_check

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, threads={self.threads})"

    def metadata(self) -> dict[str, Any]:
        """Runtime and version, precision, threads, optimization level, CPU model and ISA flags."""
        return {
            "backend": self.name,
            "runtime": self.runtime,
            "runtime_version": self._runtime_version(),
            "precision": self.precision,
            "threads": self.threads,
            "optimization_level": self.optimization_level,
            "cpu_model": cpu_model(),
            "isa_flags": list(cpu_isa_flags()),
            "logical_cores": os.cpu_count(),
            "protocol": dataclasses.asdict(self.protocol),
        }

    def overhead_ms(self) -> float:
        """Per-call overhead of this runtime, measured on a trivial model once per process."""
        if self._fixed_overhead_ms is not None:
            return self._fixed_overhead_ms
        if self._clock is not None:  # a fake clock must not poison the per-process cache
            return self._measure_overhead()
        key = self._overhead_key()
        if key not in _OVERHEAD_CACHE:
            _OVERHEAD_CACHE[key] = self._measure_overhead()
        return _OVERHEAD_CACHE[key]

    def _measure_overhead(self) -> float:
        overhead_protocol = dataclasses.replace(self.protocol, runs=self.protocol.overhead_runs)
        return self._time(self._overhead_runner(), protocol=overhead_protocol, overhead_ms=0.0).raw_median_ms

    def _time(self, runner: Runner, *, protocol: Protocol | None = None,
              overhead_ms: float | None = None) -> Measurement:
        return measure_runner(
            runner, protocol or self.protocol,
            overhead_ms=self.overhead_ms() if overhead_ms is None else overhead_ms,
            backend=self.name, clock=self._clock, load_check=self._load_check,
        )

    @abc.abstractmethod
    def measure(self, model: nn.Module, example_inputs: Any) -> Measurement:
        """Latency of a torch module (one kernel or a whole model) on ``example_inputs``."""

    def prepare_runner(self, model: nn.Module, example_inputs: Any, workdir: Path, *, kernel: bool = False) -> Runner:
        """A ready-to-time runner of ``model`` on this backend (files go to ``workdir``); ``kernel``:
        one kernel of a model, timed as it runs inside one where the backend can (ORT strips the
        layout/quantization ops at its ends)."""
        raise NotImplementedError(f"backend {self.name!r} cannot prepare runners for interleaved timing")

    def measure_many(self, items: Sequence[tuple[nn.Module, Any]], *, kernels: bool = False
                     ) -> list[Measurement | Exception]:
        """Latency of several modules timed *interleaved* (see :data:`INTERLEAVED_NOTE`); ``kernels``:
        the items are single kernels (see :meth:`prepare_runner`).

        Each of ``protocol.runs`` rounds calls every module once (and the trivial overhead model,
        whose median is subtracted), so each module's samples spread over the whole group's time
        instead of one short window. Returns a Measurement per item, or the exception that kept an
        item from being prepared (a config the exporter or runtime rejects).
        """
        results: list[Measurement | Exception | None] = [None] * len(items)
        with tempfile.TemporaryDirectory(prefix=f"litepred-{self.name}-") as workdir:
            runners: dict[str, Runner] = {}
            for index, (model, example_inputs) in enumerate(items):
                folder = Path(workdir) / str(index)
                folder.mkdir()
                try:
                    runners[str(index)] = self.prepare_runner(model, example_inputs, folder, kernel=kernels)
                except (ValueError, RuntimeError) as error:
                    results[index] = error
            if runners:
                arms = {OVERHEAD_ARM: self._overhead_runner(), **runners}
                with _unresolved_load_warnings_dropped():
                    # runs split into bursts: ceil(runs / (burst - 1)) rounds, the first call of a burst dropped
                    burst = self.protocol.burst
                    rounds = -(-self.protocol.runs // max(1, burst - 1))
                    comparison = compare_many(arms, rounds=rounds, warmup=max(1, self.protocol.warmup // burst),
                                              baseline=OVERHEAD_ARM, clock=self._clock, burst=burst)
                overhead = comparison.results[OVERHEAD_ARM].median_ms
                others = comparison.environment.get("others_cores")
                for key, result in comparison.results.items():
                    if key == OVERHEAD_ARM:
                        continue
                    spread = _spread(result)
                    results[int(key)] = Measurement(
                        backend=self.name, median_ms=max(0.0, result.median_ms - overhead),
                        raw_median_ms=result.median_ms, p10_ms=max(0.0, result.p10_ms - overhead),
                        p90_ms=max(0.0, result.p90_ms - overhead), runs=result.runs, warmup=result.warmup,
                        overhead_ms=overhead, spread=spread, noisy=spread > self.protocol.noise_threshold,
                        load={"others_cores": others, "window_ms": sum(result.samples_ms)},
                        details={"interleaved_with": len(runners) - 1})
        assert all(r is not None for r in results)  # every item was prepared (and timed) or failed
        return results  # type: ignore[return-value]

    @abc.abstractmethod
    def measure_onnx(self, path: str | Path, inputs: Any = None) -> Measurement:
        """Latency of an ``.onnx`` file; ``inputs`` are arrays or shapes, as taken by
        :func:`moonlit.litepred.profile.ort.resolve_onnx_inputs` (None: the file's static shapes)."""

    @abc.abstractmethod
    def _runtime_version(self) -> str: ...

    @abc.abstractmethod
    def _overhead_key(self) -> tuple[Any, ...]:
        """What the per-call overhead depends on (runtime, threads, options)."""

    @abc.abstractmethod
    def _overhead_runner(self) -> Runner:
        """A runner of the trivial model through the same runtime and input-feeding path."""


BackendFactory = Callable[..., Backend]
_REGISTRY: dict[str, BackendFactory] = {}

# Modules whose import registers the built-in backends (imported on first lookup).
BUILTIN_BACKEND_MODULES = (
    "moonlit.litepred.profile.ort",
    "moonlit.litepred.profile.torch_backend",
    "moonlit.litepred.profile.debug",
)


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    """Decorator registering ``factory(**options) -> Backend`` under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"backend name must be a non-empty string, got {name!r}")

    def decorator(factory: BackendFactory) -> BackendFactory:
        if name in _REGISTRY:
            raise ValueError(f"profiling backend {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def _load_builtin_backends() -> None:
    for module in BUILTIN_BACKEND_MODULES:
        importlib.import_module(module)


def list_backends() -> list[str]:
    """Names of all registered backends, sorted."""
    _load_builtin_backends()
    return sorted(_REGISTRY)


def get_backend(name: str, /, **options: Any) -> Backend:
    """Build the backend registered as ``name`` with ``options`` (threads, runs, warmup, …)."""
    _load_builtin_backends()
    if name not in _REGISTRY:
        raise ValueError(f"unknown profiling backend {name!r}; known backends: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**options)


def fixed_threads(variant: str, threads: int, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with ``threads`` set for a ``-<n>t`` variant (rejects a different count)."""
    given = options.get("threads", threads)
    if given != threads:
        raise ValueError(f"backend {variant!r} runs {threads} threads, got threads={given!r}")
    return {**options, "threads": threads}

