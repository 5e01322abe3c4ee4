"""LitePred profiling backends: registry, protocol (fake clock), debug formula, real ORT/torch runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from moonlit.common.export.int8 import quantization_summary
from moonlit.common.export.onnx import export_onnx, save_onnx
from moonlit.common.profiling.backends import Runner
from moonlit.common.profiling.latency import LatencyResult
from moonlit.litepred.profile import (
    Backend,
    DebugCostModel,
    Measurement,
    Protocol,
    base,
    cpu_isa_flags,
    get_platform,
    list_platforms,
    measure_runner,
    register_platform,
)
from moonlit.litepred.profile.ort import is_quantized
from moonlit.litepred.profile.protocol import MIN_LOAD_WINDOW_MS, under_load

FAST = {"warmup": 2, "runs": 5, "max_remeasures": 1}


# --- registry ---------------------------------------------------------------------------------

def test_registry_names_and_unknown_name() -> None:
    names = list_platforms()
    for required in ("ort-fp32", "ort-fp32-noopt", "ort-int8", "torch-fp32", "debug"):
        assert required in names
    with pytest.raises(ValueError, match="unknown profiling platform 'tflite'.*ort-fp32"):
        get_platform("tflite")


def test_register_custom_backend_and_duplicate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    @register_platform("debug-slow")
    def debug_slow(**options: Any) -> Backend:
        return get_platform("debug", name="debug-slow", cost_model=DebugCostModel(macs_per_ms=1e6), **options)

    backend = get_platform("debug-slow")
    assert backend.name == "debug-slow" and "debug-slow" in list_platforms()
    assert backend.metadata()["cost_model"]["macs_per_ms"] == 1e6
    with pytest.raises(ValueError, match="already registered"):
        register_platform("debug-slow")(debug_slow)


def test_thread_variants_are_named_by_thread_count() -> None:
    assert get_platform("ort-fp32", threads=2).name == "ort-fp32-2t"
    two = get_platform("ort-fp32-2t")
    assert (two.name, two.threads, two.metadata()["threads"]) == ("ort-fp32-2t", 2, 2)
    assert get_platform("torch-fp32-2t").threads == 2
    with pytest.raises(ValueError, match="runs 2 threads, got threads=1"):
        get_platform("ort-int8-2t", threads=1)
    with pytest.raises(ValueError, match="threads must be a positive int"):
        get_platform("ort-fp32", threads=0)


def test_metadata_describes_the_platform() -> None:
    meta = get_platform("ort-fp32-noopt").metadata()
    assert meta["runtime"] == "onnxruntime" and meta["optimization_level"] == "disable"
    assert meta["precision"] == "fp32" and meta["threads"] == 1
    assert get_platform("ort-int8").metadata()["precision"] == "int8"
    torch_meta = get_platform("torch-fp32").metadata()
    assert torch_meta["runtime_version"] == torch.__version__
    # ISA flags agree with an independent read of /proc/cpuinfo
    flags_line = next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith(("flags", "Features"))), "") if Path("/proc/cpuinfo").exists() else ""
    flags = set(flags_line.partition(":")[2].split())
    assert ("avx512_vnni" in meta["isa_flags"]) == ("avx512_vnni" in flags)
    assert set(meta["isa_flags"]) <= flags


def test_isa_flags_parse_x86_and_arm(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Test\nflags\t\t: fpu avx2 avx512f avx512_vnni sse4_2\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\n")
    assert cpu_isa_flags(str(x86)) == ("sse4_2", "avx2", "avx512f", "avx512_vnni")
    assert cpu_isa_flags(str(arm)) == ("asimd", "asimddp", "i8mm")
    assert cpu_isa_flags(str(tmp_path / "missing")) == ()


# --- protocol with a fake clock ---------------------------------------------------------------

class FakeTime:
    """A nanosecond clock that only moves when the fake workload runs (scripted durations)."""

    def __init__(self, durations_ms: list[float]) -> None:
        self.now_ns = 0
        self.calls = 0
        self._durations: Iterator[float] = iter(durations_ms)

    def clock(self) -> int:
        return self.now_ns

    def run(self) -> None:
        self.calls += 1
        self.now_ns += round(next(self._durations) * 1e6)


def _attempt(warmup: int, timed: list[float]) -> list[float]:
    return [9.0] * warmup + timed


def measurement_spread(samples: list[float]) -> float:
    values = np.asarray(samples)
    return float((np.percentile(values, 90) - np.percentile(values, 10)) / np.median(values))


WIDE = [1.0] * 5 + [3.0] * 5  # spread (p90 - p10) / median = (3 - 1) / 2 = 1.0
MEDIUM = [2.0] * 4 + [2.5] * 2 + [3.0] * 4
TIGHT = [2.0] * 10


def test_noisy_sample_is_remeasured_and_the_clean_one_kept() -> None:
    protocol = Protocol(warmup=1, runs=10, noise_threshold=0.2, max_remeasures=3)
    fake = FakeTime(_attempt(1, WIDE) + _attempt(1, TIGHT))
    m = measure_runner(fake.run, protocol, overhead_ms=0.5, clock=fake.clock, load_check=lambda r: False)
    assert fake.calls == 22  # two attempts of 1 warm-up + 10 runs, then it stops
    assert m.remeasured == 1 and len(m.attempts) == 2 and not m.noisy
    assert m.attempts[0]["spread"] == pytest.approx(measurement_spread(WIDE)) == pytest.approx(1.0)
    assert m.raw_median_ms == pytest.approx(2.0) and m.median_ms == pytest.approx(1.5)
    assert m.p10_ms == pytest.approx(1.5) and m.p90_ms == pytest.approx(1.5)
    assert m.overhead_ms == 0.5 and m.runs == 10 and m.warmup == 1


def test_all_attempts_noisy_keeps_the_least_noisy() -> None:
    protocol = Protocol(warmup=0, runs=10, noise_threshold=0.1, max_remeasures=2)
    fake = FakeTime(WIDE + MEDIUM + WIDE)
    m = measure_runner(fake.run, protocol, clock=fake.clock, load_check=lambda r: False)
    assert fake.calls == 30 and m.remeasured == 2 and m.noisy
    assert [a["spread"] for a in m.attempts] == pytest.approx([measurement_spread(WIDE), measurement_spread(MEDIUM), measurement_spread(WIDE)])
    assert m.spread == pytest.approx(measurement_spread(MEDIUM))
    assert m.raw_median_ms == pytest.approx(float(np.median(MEDIUM)))


def test_under_load_sample_is_remeasured_even_when_tight() -> None:
    protocol = Protocol(warmup=0, runs=10, noise_threshold=0.2, max_remeasures=2)
    loaded = iter([True, False])
    fake = FakeTime(TIGHT + [3.0] * 10)
    m = measure_runner(fake.run, protocol, clock=fake.clock, load_check=lambda r: next(loaded))
    assert m.remeasured == 1 and [a["under_load"] for a in m.attempts] == [True, False]
    assert m.raw_median_ms == pytest.approx(3.0) and not m.noisy and m.load["under_load"] is False


def test_not_under_load_beats_a_smaller_spread() -> None:
    protocol = Protocol(warmup=0, runs=10, noise_threshold=0.05, max_remeasures=2)
    loaded = iter([True, False, False])
    fake = FakeTime(TIGHT + WIDE + MEDIUM)
    m = measure_runner(fake.run, protocol, clock=fake.clock, load_check=lambda r: next(loaded))
    assert m.remeasured == 2 and m.noisy
    assert m.raw_median_ms == pytest.approx(float(np.median(MEDIUM)))  # not TIGHT: that one was loaded


def test_no_remeasure_budget_and_overhead_clamp() -> None:
    protocol = Protocol(warmup=0, runs=10, noise_threshold=0.1, max_remeasures=0)
    fake = FakeTime(WIDE)
    m = measure_runner(fake.run, protocol, overhead_ms=5.0, clock=fake.clock, load_check=lambda r: False)
    assert fake.calls == 10 and m.remeasured == 0 and m.noisy
    assert m.median_ms == 0.0 and m.p10_ms == 0.0 and m.p90_ms == 0.0 and m.raw_median_ms == 2.0
    with pytest.raises(ValueError, match="overhead_ms"):
        measure_runner(fake.run, protocol, overhead_ms=-1.0)


def test_default_load_check_ignores_unresolvable_windows() -> None:
    def result(samples: list[float], flagged: bool) -> LatencyResult:
        return LatencyResult.from_samples(samples, warmup=0, threads=1, backend="x",
                                          environment={"under_load": flagged})

    short = [MIN_LOAD_WINDOW_MS / 20] * 10  # half the window /proc/stat can resolve
    long = [MIN_LOAD_WINDOW_MS / 5] * 10
    assert under_load(result(short, True)) is False
    assert under_load(result(long, True)) is True and under_load(result(long, False)) is False


def test_protocol_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="runs must be an int >= 1, got 0"):
        Protocol(runs=0)
    with pytest.raises(ValueError, match="noise_threshold"):
        Protocol(noise_threshold=0)


class _FakeBackend(Backend):
    """A backend whose 'kernel' takes 2 ms and whose trivial model takes 0.5 ms of fake time."""

    runtime = "fake"
    overhead_runners_built = 0

    def __init__(self, fake: FakeTime, **options: Any) -> None:
        super().__init__("fake", **options)
        self.fake = fake

    def _runtime_version(self) -> str:
        return "0"

    def _overhead_key(self) -> tuple[Any, ...]:
        return ("fake", self.threads)

    def _overhead_runner(self) -> Runner:
        type(self).overhead_runners_built += 1
        return Runner(self.fake.run)

    def measure(self, model: nn.Module, example_inputs: Any) -> Measurement:
        return self._time(Runner(self.fake.run))

    def measure_onnx(self, path: str | Path, inputs: Any = None) -> Measurement:
        raise NotImplementedError


def test_backend_measures_and_subtracts_its_overhead() -> None:
    fake = FakeTime([0.5] * (1 + 20) + [2.0] * (1 + 5))
    backend = _FakeBackend(fake, warmup=1, runs=5, overhead_runs=20, clock=fake.clock, load_check=lambda r: False)
    m = backend.measure(nn.Identity(), None)
    assert fake.calls == 27
    assert m.overhead_ms == pytest.approx(0.5) and m.raw_median_ms == pytest.approx(2.0)
    assert m.median_ms == pytest.approx(1.5) and m.backend == "fake"


def test_overhead_is_measured_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_OVERHEAD_CACHE", {})
    monkeypatch.setattr(_FakeBackend, "overhead_runners_built", 0)
    fake = FakeTime([0.0] * 10_000)  # real clock here: the cache is only used without a fake one
    first = _FakeBackend(fake, **FAST).overhead_ms()
    second = _FakeBackend(fake, **FAST).overhead_ms()
    assert first == second and _FakeBackend.overhead_runners_built == 1
    _FakeBackend(fake, threads=2, **FAST).overhead_ms()
    assert _FakeBackend.overhead_runners_built == 2  # another thread count: another overhead
    assert _FakeBackend(fake, overhead_ms=0.25).overhead_ms() == 0.25


# --- debug backend ----------------------------------------------------------------------------

def _conv_relu_graph(path: Path, batch: int | str = 1, cin: int = 4, cout: int = 8, hw: int = 8) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, cin, hw, hw])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [batch, cout, hw, hw])
    weight = helper.make_tensor("w", TensorProto.FLOAT, [cout, cin, 3, 3], np.zeros(cout * cin * 9).tolist())
    bias = helper.make_tensor("b", TensorProto.FLOAT, [cout], np.zeros(cout).tolist())
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["y"], ["z"])]
    graph = helper.make_graph(nodes, "conv_relu", [x], [z], initializer=[weight, bias])
    return save_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _hand_conv_relu_ms(c: DebugCostModel, cin: int = 4, cout: int = 8, hw: int = 8,
                       input_warm: bool = False) -> float:
    """The docstring formula worked out by hand for Conv(3x3, pad 1) + Relu, float32."""
    x_bytes, y_bytes = 4 * cin * hw * hw, 4 * cout * hw * hw
    w_bytes, b_bytes = 4 * cout * cin * 9, 4 * cout

    def factor(ws: float) -> float:
        return 1.0 if ws <= c.cache_bytes else 1 + c.cache_penalty * (1 - c.cache_bytes / ws)

    conv_moved = x_bytes * (1 - c.reuse_discount if input_warm else 1) + w_bytes + b_bytes + y_bytes
    conv = (c.compute_fixed_ms + cout * hw * hw * cin * 9 / c.macs_per_ms
            + conv_moved / c.bytes_per_ms * factor(x_bytes + w_bytes + b_bytes + y_bytes))
    relu_moved = y_bytes * (1 - c.reuse_discount) + y_bytes  # y comes warm from the conv
    relu = c.other_fixed_ms + cout * hw * hw / c.vector_ops_per_ms + relu_moved / c.bytes_per_ms * factor(2 * y_bytes)
    return conv + relu


@pytest.mark.parametrize("cache_bytes", [1 << 20, 3000])  # 3000 B: both nodes pay the cache penalty
def test_debug_formula_on_a_hand_computed_graph(tmp_path: Path, cache_bytes: int) -> None:
    cost_model = DebugCostModel(noise=0.0, cache_bytes=cache_bytes)
    path = _conv_relu_graph(tmp_path / "g.onnx")
    m = get_platform("debug", cost_model=cost_model).measure_onnx(path)
    expected = _hand_conv_relu_ms(cost_model)
    assert m.median_ms == pytest.approx(expected, rel=1e-12)
    assert m.raw_median_ms == pytest.approx(expected + cost_model.call_overhead_ms)
    assert m.overhead_ms == cost_model.call_overhead_ms and m.runs == 0
    assert m.details["macs"] == 8 * 8 * 8 * 4 * 9 and m.details["nodes"] == 2


def test_debug_symbolic_batch_takes_input_shapes(tmp_path: Path) -> None:
    cost_model = DebugCostModel(noise=0.0)
    backend = get_platform("debug", cost_model=cost_model)
    dynamic = _conv_relu_graph(tmp_path / "dyn.onnx", batch="N")
    static = _conv_relu_graph(tmp_path / "static.onnx", batch=2)
    assert backend.measure_onnx(dynamic, [(2, 4, 8, 8)]).median_ms == backend.measure_onnx(static).median_ms
    assert backend.measure_onnx(dynamic, {"x": np.zeros((2, 4, 8, 8), np.float32)}).median_ms == \
        backend.measure_onnx(static).median_ms
    with pytest.raises(ValueError, match="symbolic shape"):
        backend.measure_onnx(dynamic)


def _conv_relu(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU())


def test_debug_module_matches_the_hand_formula_and_is_deterministic(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 8)
    noiseless = get_platform("debug", cost_model=DebugCostModel(noise=0.0))
    assert noiseless.measure(_conv_relu(4, 8), x).median_ms == pytest.approx(_hand_conv_relu_ms(noiseless.cost_model))
    backend = get_platform("debug")
    first = backend.measure(_conv_relu(4, 8), x)
    again = get_platform("debug").measure(_conv_relu(4, 8), torch.randn(1, 4, 8, 8))  # new weights/inputs
    assert first.median_ms == again.median_ms
    noise = backend.cost_model.noise
    assert abs(first.details["noise_factor"] - 1) <= noise
    assert first.median_ms == pytest.approx(first.details["noiseless_ms"] * first.details["noise_factor"])
    factors = {backend.measure(_conv_relu(4, cout), x).details["noise_factor"] for cout in (8, 12, 16, 24)}
    assert len(factors) == 4 and all(abs(f - 1) <= noise for f in factors)


def test_debug_model_costs_less_than_its_kernels_by_the_reuse_saving() -> None:
    c = DebugCostModel(noise=0.0)
    backend = get_platform("debug", cost_model=c)
    model = nn.Sequential(_conv_relu(4, 8), _conv_relu(8, 8))
    x = torch.randn(1, 4, 8, 8)
    whole = backend.measure(model, x).median_ms
    kernels = (backend.measure(_conv_relu(4, 8), x).median_ms
               + backend.measure(_conv_relu(8, 8), torch.randn(1, 8, 8, 8)).median_ms)
    # Only difference: conv 2 reads relu 1's output warm inside the model, cold when profiled alone.
    saving = c.reuse_discount * (4 * 8 * 8 * 8) / c.bytes_per_ms
    assert kernels - whole == pytest.approx(saving, rel=1e-9)
    assert whole == pytest.approx(_hand_conv_relu_ms(c, 4, 8) + _hand_conv_relu_ms(c, 8, 8, input_warm=True))


def test_debug_shape_arithmetic_is_free(tmp_path: Path) -> None:
    c = DebugCostModel(noise=0.0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])
    outputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 8, 4, 4]),
               helper.make_tensor_value_info("s", TensorProto.FLOAT, [4])]
    nodes = [helper.make_node("Relu", ["x"], ["z"]), helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Cast", ["shape"], ["shape_f"], to=TensorProto.FLOAT),
             helper.make_node("Sqrt", ["shape_f"], ["s"])]
    graph = helper.make_graph(nodes, "scalars", [x], outputs)
    path = save_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "s.onnx")
    m = get_platform("debug", cost_model=c).measure_onnx(path)
    relu_bytes = 4 * 8 * 4 * 4  # a cold graph input read, the output written
    assert m.median_ms == pytest.approx(c.other_fixed_ms + 128 / c.vector_ops_per_ms + 2 * relu_bytes / c.bytes_per_ms)
    assert m.details["nodes"] == 1


class _ClsTokenAttention(nn.Module):
    """A cls token expanded to the batch, then attention: shapes computed from ``Shape`` ops."""

    def __init__(self) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, 8))
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.fc(torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1))
        return nn.functional.scaled_dot_product_attention(tokens, tokens, tokens)


def test_debug_computed_shapes_match_a_real_run(tmp_path: Path) -> None:
    import onnxruntime as ort

    from moonlit.litepred.profile.debug import graph_cost

    path = export_onnx(_ClsTokenAttention().eval(), torch.randn(2, 4, 8), tmp_path / "attn.onnx", check=False)
    model = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    expand = next(node for node in model.graph.node if node.op_type == "Expand")
    assert expand.output[0] not in {v.name for v in inferred.graph.value_info
                                    if all(d.HasField("dim_value") for d in v.type.tensor_type.shape.dim)}
    backend = get_platform("debug")
    # Independent shapes: run the graph with every intermediate exposed and read what it produced.
    probe = onnx.load(str(path))
    names = [name for node in probe.graph.node for name in node.output if name]
    probe.graph.output.extend([onnx.ValueInfoProto(name=name) for name in names
                               if name not in {o.name for o in probe.graph.output}])
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(None, {"input": np.zeros((2, 4, 8), np.float32)})
    produced = dict(zip([o.name for o in session.get_outputs()], values))
    annotated = onnx.load(str(path))
    annotated.graph.value_info.extend([
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape)
        for name, array in produced.items() if name not in {o.name for o in annotated.graph.output}
    ])
    expected = graph_cost(annotated, backend.cost_model)
    assert backend.measure_onnx(path).median_ms == pytest.approx(expected.latency_ms, rel=1e-12)
    assert backend.cost(path).macs == expected.macs == 2 * 5 * 8 * 8 + 2 * (2 * 5 * 5 * 8)


def test_debug_rejects_threads_and_bad_cost_model() -> None:
    with pytest.raises(ValueError, match="one thread"):
        get_platform("debug", threads=2)
    with pytest.raises(ValueError, match="macs_per_ms must be > 0"):
        DebugCostModel(macs_per_ms=0)


# --- real runtimes (few runs; no wall-clock assertions) ---------------------------------------

@pytest.fixture(scope="module")
def tiny_conv() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()).eval()
    return model, torch.randn(1, 16, 16, 16)


def _check_measurement(m: Measurement, backend: str) -> None:
    assert m.backend == backend and m.runs == 5 and m.warmup == 2
    # A kernel of a few µs can time below the separately measured call overhead: clamped at 0.
    assert m.raw_median_ms > 0 and m.overhead_ms > 0
    assert m.median_ms == pytest.approx(max(0.0, m.raw_median_ms - m.overhead_ms))
    assert 1 <= len(m.attempts) <= 2 and m.remeasured == len(m.attempts) - 1
    assert m.p10_ms <= m.median_ms <= m.p90_ms
    assert set(m.load) >= {"load_avg_before", "others_cores", "under_load"}


@pytest.mark.parametrize("name", ["ort-fp32", "ort-fp32-noopt", "ort-int8"])
def test_ort_backends_measure_a_conv(name: str, tiny_conv: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = tiny_conv
    m = get_platform(name, **FAST).measure(model, x)
    _check_measurement(m, name)
    if name == "ort-int8":
        assert m.details["quantized_fraction"] == 1.0


def test_ort_int8_graph_is_quantized(tmp_path: Path, tiny_conv: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = tiny_conv
    backend = get_platform("ort-int8", **FAST)
    timed, feed = backend.export(model, x, tmp_path)
    ops = {node.op_type for node in onnx.load(str(timed)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert quantization_summary(timed).fraction_quantized("Conv") == 1.0
    assert not is_quantized(tmp_path / "model.onnx") and is_quantized(timed)
    assert list(feed) == ["input"] and feed["input"].shape == (1, 16, 16, 16)
    # an ONNX file that is already quantized is timed as it is
    assert backend.prepare_onnx(timed, feed, tmp_path) == timed


def test_ort_measure_onnx_with_shapes(tmp_path: Path) -> None:
    linear = nn.Linear(32, 16)
    path = export_onnx(linear, torch.randn(4, 32), tmp_path / "linear.onnx", dynamic_axes={"input": {0: "batch"}})
    m = get_platform("ort-fp32", **FAST).measure_onnx(path, [(4, 32)])
    _check_measurement(m, "ort-fp32")
    with pytest.raises(ValueError, match="1 graph inputs"):
        get_platform("ort-fp32", **FAST).measure_onnx(path, [(4, 32), (4, 32)])
    with pytest.raises(FileNotFoundError):
        get_platform("ort-fp32", **FAST).measure_onnx(tmp_path / "missing.onnx")


def test_torch_backend_restores_threads_and_modes(tiny_conv: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = tiny_conv
    model.train()
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        m = get_platform("torch-fp32", **FAST).measure(model, x)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    assert model.training and all(module.training for module in model.modules())
    model.eval()
    _check_measurement(m, "torch-fp32")
    with pytest.raises(NotImplementedError, match="cannot run the ONNX file"):
        get_platform("torch-fp32").measure_onnx("model.onnx")


def test_measure_many_interleaves_and_subtracts_the_overhead() -> None:
    import torch

    from moonlit.litepred.profile import get_platform

    backend = get_platform("ort-fp32", runs=5, warmup=1)
    small, large = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Conv2d(32, 32, 3, padding=1)
    x8, x32 = torch.randn(1, 8, 16, 16), torch.randn(1, 32, 32, 32)

    class Bad(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("cannot run")

    results = backend.measure_many([(small, (x8,)), (Bad(), (x8,)), (large, (x32,))])
    assert isinstance(results[1], Exception)  # a module that cannot be exported is reported, not fatal
    for m in (results[0], results[2]):
        assert m.runs == 10 and m.details["interleaved_with"] == 1  # runs=5 → one burst of 11, 10 kept
        assert m.median_ms == pytest.approx(max(0.0, m.raw_median_ms - m.overhead_ms))
    # 32 channels at 32x32 is 64x the MACs of 8 channels at 16x16: clearly slower even on a noisy machine
    assert results[2].median_ms > results[0].median_ms
