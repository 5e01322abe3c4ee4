"""The latency protocol with fake clocks (exact statistics) and the real torch/ORT backends."""

from __future__ import annotations

import os
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from moonlit.common.profiling import backends, environment
from moonlit.common.profiling.latency import (
    LatencyResult,
    Runner,
    available_backends,
    benchmark,
    compare_latency,
    compare_many,
    get_backend,
    make_runner,
    measure_latency,
    register_backend,
)


class FakeTime:
    """A perf_counter_ns stand-in that only moves when a fake workload 'runs'."""

    def __init__(self) -> None:
        self.now_ns = 0
        self.calls: list[str] = []

    def clock(self) -> int:
        return self.now_ns

    def workload(self, name: str, durations_ms: list[float] | float) -> Callable[[], None]:
        durations = iter(durations_ms) if isinstance(durations_ms, list) else None

        def run() -> None:
            self.calls.append(name)
            ms = next(durations) if durations is not None else durations_ms
            self.now_ns += int(round(ms * 1e6))

        return run


def test_statistics_match_numpy() -> None:
    fake = FakeTime()
    rng = np.random.default_rng(0)
    warm = [100.0, 90.0, 80.0]  # warm-up calls are slow and must not be counted
    timed = list(np.round(rng.gamma(4.0, 2.0, size=37), 3))
    fn = fake.workload("x", warm + timed)
    result = measure_latency(fn, warmup=3, runs=37, clock=fake.clock)
    samples = np.asarray(timed)
    assert fake.calls == ["x"] * 40
    np.testing.assert_allclose(result.samples_ms, samples, atol=1e-9)
    assert result.median_ms == pytest.approx(np.median(samples))
    assert result.mean_ms == pytest.approx(samples.mean())
    assert result.std_ms == pytest.approx(samples.std(ddof=1))
    assert result.min_ms == pytest.approx(samples.min())
    assert result.p10_ms == pytest.approx(np.percentile(samples, 10))
    assert result.p90_ms == pytest.approx(np.percentile(samples, 90))
    assert result.iqr_ms == pytest.approx(np.percentile(samples, 75) - np.percentile(samples, 25))
    assert (result.runs, result.warmup, result.backend) == (37, 3, "callable")


def test_default_clock_is_perf_counter_ns(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeTime()
    monkeypatch.setattr(time, "perf_counter_ns", fake.clock)
    result = measure_latency(fake.workload("x", [1.0, 2.0, 3.0, 4.0, 10.0]), warmup=0, runs=5)
    assert result.median_ms == 3.0
    assert result.mean_ms == 4.0


def test_interleaving_alternates_who_goes_first() -> None:
    fake = FakeTime()
    compare_latency(fake.workload("a", 1.0), fake.workload("b", 1.0), rounds=3, warmup=1,
                    clock=fake.clock)
    assert fake.calls == ["a", "b", "b", "a", "a", "b", "b", "a"]

    fake = FakeTime()
    arms = {name: fake.workload(name, 1.0) for name in "xyz"}
    compare_many(arms, rounds=4, warmup=0, clock=fake.clock)
    assert fake.calls == list("xyz" "yzx" "zxy" "xyz")


def test_ratio_of_controlled_durations(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeTime()
    monkeypatch.setattr(time, "perf_counter_ns", fake.clock)
    rounds = 9
    a_ms = [3.0, 3.3, 2.9, 3.1, 6.0, 3.0, 3.2, 2.8, 3.0]
    b_ms = [2.0, 2.0, 2.1, 1.9, 2.0, 4.0, 2.2, 2.0, 1.8]
    result = compare_latency(fake.workload("a", [9.0] + a_ms), fake.workload("b", [9.0] + b_ms),
                             rounds=rounds, warmup=1, names=("slow", "fast"))
    assert (result.name_a, result.name_b) == ("slow", "fast")
    assert result.ratio == pytest.approx(np.median(a_ms) / np.median(b_ms))
    assert result.ratio == pytest.approx(3.0 / 2.0)
    per_round = np.asarray(a_ms) / np.asarray(b_ms)
    np.testing.assert_allclose(result.round_ratios, per_round)
    assert result.round_ratio_median == pytest.approx(np.median(per_round))
    assert result.round_ratio_iqr == pytest.approx(
        np.percentile(per_round, 75) - np.percentile(per_round, 25))
    low, high = result.ratio_ci95
    assert low <= result.ratio <= high
    assert result.a.median_ms == pytest.approx(3.0) and result.b.median_ms == pytest.approx(2.0)


def test_bootstrap_interval_collapses_for_an_exact_ratio() -> None:
    fake = FakeTime()
    b_ms = list(np.random.default_rng(1).uniform(1.0, 5.0, size=20))
    a_ms = [2.5 * value for value in b_ms]
    result = compare_latency(fake.workload("a", a_ms), fake.workload("b", b_ms), rounds=20,
                             warmup=0, clock=fake.clock)
    assert result.ratio == pytest.approx(2.5)
    assert result.ratio_ci95 == pytest.approx((2.5, 2.5), rel=1e-6)
    assert result.round_ratio_iqr == pytest.approx(0.0, abs=1e-6)


def test_k_way_ratios_to_baseline(tmp_path: Path) -> None:
    fake = FakeTime()
    arms = {"torch_fp32": fake.workload("t", 4.0), "ort_fp32": fake.workload("f", 2.0),
            "ort_int8": fake.workload("i", 1.0)}
    result = compare_many(arms, rounds=5, warmup=2, clock=fake.clock)
    assert result.baseline == "torch_fp32"
    ratios = {name: comparison.ratio for name, comparison in result.ratios_to_baseline().items()}
    assert ratios == pytest.approx({"torch_fp32": 1.0, "ort_fp32": 0.5, "ort_int8": 0.25})
    assert result.ratio("ort_fp32", "ort_int8").ratio == pytest.approx(2.0)
    saved = json.loads(result.save_json(tmp_path / "out" / "cmp.json").read_text())
    assert saved["ratios_to_baseline"]["ort_int8"]["ratio"] == pytest.approx(0.25)
    assert saved["results"]["ort_fp32"]["samples_ms"] == pytest.approx([2.0] * 5)
    with pytest.raises(ValueError, match="no arm named 'gpu'"):
        result.ratio("gpu", "ort_int8")


def test_result_json_round_trip(tmp_path: Path) -> None:
    fake = FakeTime()
    result = measure_latency(fake.workload("x", [1.0, 2.0, 4.0]), warmup=0, runs=3,
                             clock=fake.clock)
    path = result.save_json(tmp_path / "latency.json")
    assert LatencyResult.from_dict(json.loads(path.read_text())) == result
    assert {"cpu_model", "logical_cores", "load_avg_before", "load_avg_after", "under_load",
            "torch_version", "onnxruntime_version", "threads"} <= set(result.environment)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="runs must be a positive int, got 0"):
        measure_latency(lambda: None, runs=0)
    with pytest.raises(ValueError, match="at least two arms"):
        compare_many({"only": lambda: None})
    with pytest.raises(ValueError, match="baseline 'c' is not one of the arms"):
        compare_many({"a": lambda: None, "b": lambda: None}, baseline="c")
    with pytest.raises(ValueError, match="zero-argument callable"):
        measure_latency(42)  # type: ignore[arg-type]


def test_backend_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "_BACKENDS", dict(backends._BACKENDS))
    assert {"torch", "onnxruntime"} <= set(available_backends())
    with pytest.raises(ValueError, match=r"unknown latency backend 'tvm'.*onnxruntime.*torch"):
        get_backend("tvm")

    @register_backend("debug")
    def debug_backend(model: object, inputs: object, *, threads: int = 1) -> Runner:
        return Runner(lambda: None, "debug", threads)

    assert get_backend("debug") is debug_backend
    assert make_runner("debug", None, None, threads=3).threads == 3
    with pytest.raises(ValueError, match="already registered"):
        register_backend("debug")(debug_backend)
    with pytest.raises(ValueError, match="threads must be a positive int"):
        make_runner("debug", None, None, threads=0)


class ThreadProbe(nn.Module):
    """Tiny model that records torch's intra-op thread count and grad mode at each call."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 8)
        self.seen: list[tuple[int, bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((torch.get_num_threads(), torch.is_inference_mode_enabled(), self.training))
        return self.fc(x).relu()


def test_torch_backend_pins_and_restores_threads() -> None:
    model = ThreadProbe().train()
    model.fc.eval()  # mixed train/eval states must come back exactly
    before = torch.get_num_threads()
    target = 2 if before == 1 else 1
    result = benchmark("torch", model, torch.randn(4, 16), threads=target, warmup=2, runs=5)
    assert torch.get_num_threads() == before
    assert model.training and not model.fc.training  # restored
    assert model.seen == [(target, True, False)] * 7
    assert result.backend == "torch" and result.threads == target
    assert result.environment["threads"] == target
    assert len(result.samples_ms) == 5 and all(value > 0 for value in result.samples_ms)
    assert result.median_ms > 0


def test_interleaved_torch_arms_with_different_threads() -> None:
    one, two = ThreadProbe(), ThreadProbe()
    before = torch.get_num_threads()
    x = torch.randn(2, 16)
    compare_latency(make_runner("torch", one, x, threads=1), make_runner("torch", two, (x,), threads=2),
                    rounds=3, warmup=1)
    assert {threads for threads, _, _ in one.seen} == {1}
    assert {threads for threads, _, _ in two.seen} == {2}
    assert torch.get_num_threads() == before


def _tiny_onnx(path: Path) -> Path:
    """y = relu(x @ W) built directly with onnx.helper (independent of the export module)."""
    weight = onnx.numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), "W")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "W"], ["h"]), onnx.helper.make_node("Relu", ["h"], ["y"])],
        "tiny",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 16])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 8])],
        initializer=[weight],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("level", ["disable", "basic", "extended", "all"])
def test_onnxruntime_backend_runs(tmp_path: Path, level: str) -> None:
    path = _tiny_onnx(tmp_path / "tiny.onnx")
    runner = make_runner("onnxruntime", path, torch.randn(3, 16), threads=1, optimization_level=level)
    (output,) = runner()
    assert output.shape == (3, 8)
    result = measure_latency(runner, warmup=1, runs=4)
    assert result.backend == "onnxruntime" and result.threads == 1
    assert all(value > 0 for value in result.samples_ms)


def test_onnxruntime_backend_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        make_runner("onnxruntime", tmp_path / "missing.onnx", torch.randn(1, 16))
    path = _tiny_onnx(tmp_path / "tiny.onnx")
    with pytest.raises(ValueError, match="optimization_level must be one of"):
        make_runner("onnxruntime", path, torch.randn(1, 16), optimization_level="max")


def test_under_load_rule(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(environment, "_usable_cores", lambda: 4)
    with caplog.at_level(logging.WARNING, logger=environment.__name__):
        calm = environment.environment_record(1, (1.9, 1.0, 1.0), (2.0, 1.0, 1.0))
        assert not calm["under_load"] and not caplog.records
        busy = environment.environment_record(1, (2.1, 1.0, 1.0), (2.0, 1.0, 1.0))
    assert busy["under_load"]
    assert "under load" in caplog.text and "2.10" in caplog.text
    assert busy["load_avg_before"] == [2.1, 1.0, 1.0] and busy["usable_cores"] == 4
    assert not environment.environment_record(1, None, None)["under_load"]


def test_cpu_model_parsing(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: Fake\nmodel name\t: Fake CPU 9000 @ 3GHz\n")
    assert environment.cpu_model(str(cpuinfo)) == "Fake CPU 9000 @ 3GHz"
    assert environment.cpu_model(str(tmp_path / "absent"))  # falls back to platform, non-empty


def test_competing_cores_from_snapshots(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice: busy = 100+0+50+0+0+5 = 155 ticks
    stat.write_text("cpu  100 0 50 1000 10 0 0 5 0 0\ncpu0 50 0 25 500 5 0 0 2 0 0\n")
    snap = environment.cpu_snapshot(str(stat))
    assert snap.system_busy_s == pytest.approx(155 / os.sysconf("SC_CLK_TCK"))
    assert environment.cpu_snapshot(str(tmp_path / "missing")).system_busy_s is None
    # 3 busy core-seconds system-wide in 2 s of wall time, 1 of them ours: others kept 1.0 core busy.
    before = environment.CpuSnapshot(system_busy_s=10.0, own_cpu_s=5.0, wall_s=100.0)
    after = environment.CpuSnapshot(system_busy_s=13.0, own_cpu_s=6.0, wall_s=102.0)
    assert environment.competing_cores(before, after) == pytest.approx(1.0)
    assert environment.competing_cores(environment.CpuSnapshot(None, 0, 0), after) is None
    busy = environment.environment_record(1, (0.1, 0.1, 0.1), None, others_cores=1.0)
    calm = environment.environment_record(1, (3.0, 3.0, 3.0), None, others_cores=0.2)
    assert busy["under_load"] and not calm["under_load"]  # the load average no longer decides
    assert "/proc/stat" in calm["under_load_rule"]


def test_compare_many_bursts_drop_the_first_call_of_each_burst() -> None:
    from moonlit.common.profiling.latency import compare_many

    now = {"ns": 0}
    calls = {"a": 0, "b": 0}

    def make(name: str, first_ms: float, rest_ms: float):  # noqa: ANN202
        def run() -> None:
            # a call right after another arm's burst is slow (cold caches), the next ones fast
            cold = calls["last"] != name if "last" in calls else True
            now["ns"] += int((first_ms if cold else rest_ms) * 1e6)
            calls[name] += 1
            calls["last"] = name
        return run

    result = compare_many({"a": make("a", 10.0, 1.0), "b": make("b", 20.0, 2.0)}, rounds=4, warmup=1,
                          clock=lambda: now["ns"], burst=3)
    assert calls["a"] == calls["b"] == (4 + 1) * 3
    assert result.results["a"].samples_ms == [1.0] * 8 and result.results["b"].samples_ms == [2.0] * 8
    single = compare_many({"a": make("a", 10.0, 1.0), "b": make("b", 20.0, 2.0)}, rounds=4, warmup=1,
                          clock=lambda: now["ns"])
    assert single.results["a"].samples_ms.count(10.0) >= 2  # single calls: cold ones are counted
    with pytest.raises(ValueError, match="burst"):
        compare_many({"a": make("a", 1, 1), "b": make("b", 1, 1)}, burst=0)
