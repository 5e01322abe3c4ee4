"""Profiling platforms for LitePred (NSDI'24, §3 "kernel profiling" and §5 platforms): the contract.

A *platform* is one entry of the knowledge pool (runtime × precision × threads × optimization
level on this CPU), measured by a :class:`Backend` object that times through the runners of
:mod:`moonlit.common.profiling.backends` (the one registry of runtime backends). Platforms are
plug-ins registered by name, in the manner of nn-Meter's backend interface: :func:`register_platform`
decorates a thin factory, :func:`get_platform` builds one with options, :func:`list_platforms` lists
them. Each platform's backend profiles a torch module (a single kernel or
a whole model, :meth:`Backend.measure`) or an ``.onnx`` file (:meth:`Backend.measure_onnx`) and
describes itself (:meth:`Backend.metadata`) so every number in the dataset says where it came from.
Every sample is taken with the measurement protocol of :mod:`moonlit.litepred.profile.protocol`.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import functools
import importlib
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from moonlit.common.profiling.backends import Runner
from moonlit.common.profiling.environment import cpu_model
from moonlit.common.profiling.latency import LatencyResult, compare_many
from moonlit.litepred.profile.protocol import (
    Measurement,
    Protocol,
    load_warnings_dropped,
    measure_runner,
    measurement_spread,
)

__all__ = [
    "Backend", "register_platform", "get_platform", "list_platforms", "cpu_isa_flags",
    "fixed_threads", "BUILTIN_PLATFORM_MODULES",
]


OVERHEAD_ARM = "__overhead__"
INTERLEAVED_NOTE = (
    "On shared VMs the machine alternates between fast and slow phases of ~0.2-1 s (35% slower; "
    "measured here: 12 bursts of one model, medians 2.96-4.09 ms). 50 back-to-back runs of a kernel "
    "last a few ms and fall in one phase, so two measurements of it disagree. Timing a group of "
    "modules round-robin in bursts (the first call of each burst dropped: it pays for the cache "
    "state the others left) spreads each one's samples over seconds and over phases.")


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
                with load_warnings_dropped():
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
                    spread = measurement_spread(result)
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


PlatformFactory = Callable[..., Backend]
_REGISTRY: dict[str, PlatformFactory] = {}

# Modules whose import registers the built-in platforms (imported on first lookup).
BUILTIN_PLATFORM_MODULES = (
    "moonlit.litepred.profile.ort",
    "moonlit.litepred.profile.torch_backend",
    "moonlit.litepred.profile.openvino",
    "moonlit.litepred.profile.debug",
)


def register_platform(name: str) -> Callable[[PlatformFactory], PlatformFactory]:
    """Decorator registering ``factory(**options) -> Backend`` under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"platform name must be a non-empty string, got {name!r}")

    def decorator(factory: PlatformFactory) -> PlatformFactory:
        if name in _REGISTRY:
            raise ValueError(f"profiling platform {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def _load_builtin_platforms() -> None:
    for module in BUILTIN_PLATFORM_MODULES:
        importlib.import_module(module)


def list_platforms() -> list[str]:
    """Names of all registered platforms, sorted."""
    _load_builtin_platforms()
    return sorted(_REGISTRY)


def get_platform(name: str, /, **options: Any) -> Backend:
    """Build the backend of the platform registered as ``name`` with ``options`` (threads, runs, warmup, …)."""
    _load_builtin_platforms()
    if name not in _REGISTRY:
        raise ValueError(f"unknown profiling platform {name!r}; known platforms: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**options)


def fixed_threads(variant: str, threads: int, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with ``threads`` set for a ``-<n>t`` variant (rejects a different count)."""
    given = options.get("threads", threads)
    if given != threads:
        raise ValueError(f"backend {variant!r} runs {threads} threads, got threads={given!r}")
    return {**options, "threads": threads}
