"""Environment record stored beside every latency number (part of the protocol in ``latency``).

CPU model, usable cores, thread counts, package versions, the load average before and after a run,
and the CPU time that *other* processes (and the hypervisor, as steal time) used while it ran,
plus the ``under_load`` flag.

Rule: a measurement is under load when, during it, other processes kept more than
:data:`COMPETING_CORES_LIMIT` (one half) of a core busy on average: system-wide busy time from
``/proc/stat`` (steal included: on a shared VM that is the neighbours' load) minus this process's
own CPU time, divided by the wall time, clamped to ``[0, logical cores]``. ``/proc/stat`` counts in
ticks of 10 ms, so over a short run one tick more or less reads as many "competing cores" (a 0.3 ms
run with one foreign tick: 33 cores): a run shorter than :data:`MIN_WINDOW_S` is *not judged* —
``others_cores`` is None, ``under_load`` False, and the rule says why. The load average is kept for
the record but is not the rule: it lags by about a minute, so it still counts this process's own training or previous
benchmark, and on a 2-core machine a job that just finished looks like competition. Where
``/proc/stat`` is missing (not Linux), the fallback rule is a 1-minute load average before the run
above :data:`UNDER_LOAD_FRACTION` of the usable cores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import platform
import sys
import time
from typing import Any

import numpy as np
import torch

__all__ = ["COMPETING_CORES_LIMIT", "MIN_WINDOW_S", "UNDER_LOAD_FRACTION", "CpuSnapshot", "competing_cores",
           "cpu_model", "cpu_snapshot", "cpu_window_s", "load_average", "environment_record"]

logger = logging.getLogger(__name__)

COMPETING_CORES_LIMIT = 0.5  # cores kept busy by others during the run; see the module docstring
UNDER_LOAD_FRACTION = 0.5  # fallback without /proc/stat: 1-min load average vs usable cores
# Shortest run the /proc/stat rule judges. Each of the two snapshots can be off by about a tick (10 ms)
# per busy core; over 0.25 s two ticks read as 0.08 cores, well under COMPETING_CORES_LIMIT. Over the
# 0.3 ms windows of a single kernel timing the same two ticks read as 67 cores.
MIN_WINDOW_S = 0.25


@dataclasses.dataclass(frozen=True)
class CpuSnapshot:
    """System busy and total CPU seconds (all cores), this process's CPU seconds, and wall time."""

    system_busy_s: float | None
    own_cpu_s: float
    wall_s: float


def cpu_snapshot(stat_path: str = "/proc/stat") -> CpuSnapshot:
    busy = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(stat_path, encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal [guest guest_nice: already inside user/nice]
        idle = fields[3] + fields[4]
        busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    return CpuSnapshot(busy, time.process_time(), time.monotonic())


def cpu_window_s(before: CpuSnapshot, after: CpuSnapshot) -> float | None:
    """Wall seconds between two snapshots that both read /proc/stat (None where either could not)."""
    if before.system_busy_s is None or after.system_busy_s is None:
        return None
    return after.wall_s - before.wall_s


def competing_cores(before: CpuSnapshot, after: CpuSnapshot, min_window_s: float = MIN_WINDOW_S) -> float | None:
    """Average number of cores that others kept busy between two snapshots, in ``[0, logical cores]``.

    None without /proc/stat, and over a window shorter than ``min_window_s``, where the 10 ms ticks of
    /proc/stat cannot resolve it (see :data:`MIN_WINDOW_S`).
    """
    wall = cpu_window_s(before, after)
    if wall is None or wall <= 0 or wall < min_window_s:
        return None
    others = (after.system_busy_s - before.system_busy_s) - (after.own_cpu_s - before.own_cpu_s)
    return round(min(max(0.0, others) / wall, float(os.cpu_count() or 1)), 3)


def cpu_model(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    """CPU model name from /proc/cpuinfo (x86 "model name", ARM "Hardware"/"Model"), else platform."""
    with contextlib.suppress(OSError):
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Model", "cpu model") and value.strip():
                    return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> tuple[float, float, float] | None:
    """(1, 5, 15)-minute load averages, or None where the OS has none (Windows)."""
    try:
        return tuple(round(value, 3) for value in os.getloadavg())  # type: ignore[return-value]
    except (AttributeError, OSError):
        return None


def _usable_cores() -> int:
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _package_version(name: str) -> str | None:
    module = sys.modules.get(name)
    if module is None:
        try:
            module = __import__(name)
        except ImportError:
            return None
    return getattr(module, "__version__", None)


def environment_record(
    threads: int | None,
    load_before: tuple[float, float, float] | None,
    load_after: tuple[float, float, float] | None,
    others_cores: float | None = None,
    window_s: float | None = None,
) -> dict[str, Any]:
    """What a latency number depends on, recorded beside it; logs a warning when under load.

    ``others_cores`` is :func:`competing_cores` over the run and ``window_s`` the run's /proc/stat window
    (:func:`cpu_window_s`). A window shorter than :data:`MIN_WINDOW_S` is not judged (``under_load``
    False); without /proc/stat (``window_s`` None) the load-average rule applies.
    """
    usable = _usable_cores()
    if others_cores is not None:
        others_cores = min(max(0.0, float(others_cores)), float(os.cpu_count() or 1))
    if others_cores is None and window_s is not None and window_s < MIN_WINDOW_S:
        under_load = False
        rule = (f"not judged: the run took {window_s * 1e3:.1f} ms, shorter than the {MIN_WINDOW_S * 1e3:.0f} ms "
                "/proc/stat's 10 ms ticks need")
    elif others_cores is not None:
        under_load = others_cores > COMPETING_CORES_LIMIT
        rule = f"other processes kept > {COMPETING_CORES_LIMIT} cores busy during the run (/proc/stat)"
        if under_load:
            logger.warning("machine under load: other processes kept %.2f cores busy during the run "
                           "(limit %.2f); latencies may be inflated", others_cores, COMPETING_CORES_LIMIT)
    else:
        threshold = UNDER_LOAD_FRACTION * usable
        under_load = bool(load_before is not None and load_before[0] > threshold)
        rule = f"1-min load average before > {UNDER_LOAD_FRACTION} x usable cores"
        if under_load:
            logger.warning(
                "machine under load: 1-min load average %.2f > %.2f (%.1f x %d usable cores); "
                "latencies may be inflated", load_before[0], threshold, UNDER_LOAD_FRACTION, usable,
            )
    return {
        "threads": threads,
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "load_avg_before": list(load_before) if load_before else None,
        "load_avg_after": list(load_after) if load_after else None,
        "others_cores": others_cores,
        "cpu_window_s": None if window_s is None else round(window_s, 6),
        "under_load": under_load,
        "under_load_rule": rule,
        "torch_version": torch.__version__,
        "onnxruntime_version": _package_version("onnxruntime"),
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }

