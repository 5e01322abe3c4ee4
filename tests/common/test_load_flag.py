"""The under-load flag: cores kept busy by others, judged only over windows /proc/stat can resolve, clamped."""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moonlit.common.profiling import environment
from moonlit.common.profiling.environment import MIN_WINDOW_S, CpuSnapshot, competing_cores, environment_record


def _pair(busy_s: float, own_s: float, wall_s: float) -> tuple[CpuSnapshot, CpuSnapshot]:
    """Snapshots ``wall_s`` apart in which the system was busy ``busy_s`` core-seconds, ``own_s`` of them ours."""
    return CpuSnapshot(100.0, 10.0, 1000.0), CpuSnapshot(100.0 + busy_s, 10.0 + own_s, 1000.0 + wall_s)


def test_hand_computed_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    # 1.5 busy core-seconds in 1 s, 0.7 of them ours: others 0.8 core
    assert competing_cores(*_pair(1.5, 0.7, 1.0)) == pytest.approx(0.8)
    # exactly the minimum window is judged: 0.1 foreign core-seconds over 0.25 s = 0.4 core
    assert competing_cores(*_pair(0.1, 0.0, MIN_WINDOW_S)) == pytest.approx(0.4)
    # ours counted by process_time but not yet by /proc/stat's ticks: never below 0
    assert competing_cores(*_pair(0.0, 0.3, 1.0)) == 0.0
    # 30 foreign core-seconds in 1 s cannot happen on 2 cores: clamped to 2
    assert competing_cores(*_pair(30.0, 0.0, 1.0)) == 2.0


def test_short_window_is_not_judged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(environment, "_usable_cores", lambda: 2)
    # one foreign 10 ms tick in a 0.3 ms run read as 33 cores before; now no number at all
    before, after = _pair(0.01, 0.0, 0.0003)
    assert competing_cores(before, after) is None
    assert competing_cores(before, after, min_window_s=0.0) == pytest.approx(min(33.333, os.cpu_count() or 1))
    record = environment_record(1, (3.0, 3.0, 3.0), None, None, window_s=0.0003)  # high load average too
    assert record["under_load"] is False and record["others_cores"] is None
    assert record["under_load_rule"].startswith("not judged: the run took 0.3 ms")
    # without /proc/stat (no window) the load-average fallback still decides
    assert environment_record(1, (3.0, 3.0, 3.0), None, None, window_s=None)["under_load"] is True
    # a long window judged from /proc/stat; an out-of-range value passed in is clamped
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    busy = environment_record(1, None, None, 38.5, window_s=1.0)
    assert busy["under_load"] is True and busy["others_cores"] == 2.0


def test_cores_are_none_or_within_the_machine(fuzz_settings) -> None:
    cores = float(os.cpu_count() or 1)

    @fuzz_settings
    @given(st.floats(-10, 100), st.floats(-10, 100), st.floats(-1, 10))
    def check(busy: float, own: float, wall: float) -> None:
        value = competing_cores(*_pair(busy, own, wall))
        if wall < MIN_WINDOW_S:
            assert value is None
        else:
            assert value is not None and 0.0 <= value <= cores

    check()


def test_idle_sub_millisecond_runs_never_flag() -> None:
    """100 real runs of a 0.3 ms busy loop: none is flagged, whatever else the machine runs."""
    from moonlit.common.profiling.latency import measure_latency

    def spin() -> None:
        start = time.perf_counter()
        while time.perf_counter() - start < 0.0003 / 4:
            pass

    flagged = short = 0
    for _ in range(100):
        record = measure_latency(spin, warmup=0, runs=4).environment
        if record["cpu_window_s"] is not None and record["cpu_window_s"] < MIN_WINDOW_S:
            short += 1
            assert record["others_cores"] is None
            flagged += record["under_load"]
        if record["others_cores"] is not None:
            assert 0 <= record["others_cores"] <= (os.cpu_count() or 1)
    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat: the load-average rule applies")
    assert short >= 90 and flagged == 0
