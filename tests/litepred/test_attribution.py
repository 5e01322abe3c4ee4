"""Error attribution: the ORT trace parser, the node mapping, the join and its sums, the app end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper
from torch import nn

from moonlit.common.config import compose_config
from moonlit.common.errors import InputError
from moonlit.litepred.kernels.detect import KernelConfig
from moonlit.litepred.predict.attribution import (
    GAP,
    INTERCEPT,
    UNATTRIBUTED,
    KernelPrediction,
    ModelAttribution,
    by_type,
    decompose,
    in_context_records,
    join,
)
from moonlit.litepred.profile.node_map import map_ort_nodes, timed_to_original
from moonlit.litepred.profile.node_profile import ExecutedNode, NodeProfile, parse_ort_trace


def _run(ts: float, dur: float) -> dict:
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur, "ph": "X"}


def _node(name: str, ts: float, dur: float, op: str = "Conv") -> dict:
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}


# ---- the trace parser ----------------------------------------------------------------------------
def test_parse_ort_trace_gives_the_median_of_each_node_over_the_kept_runs() -> None:
    events = [
        {"cat": "Session", "name": "session_initialization", "ts": 0, "dur": 50},
        _node("init_only", 10, 999),  # before any run: ignored
        _run(100, 100), _node("a", 110, 9000),  # warm-up run, dropped by runs=3
        _run(300, 100), _node("a", 310, 1000), _node("b", 320, 200, "Relu"),
        {"cat": "Node", "name": "a_fence_before", "ts": 305, "dur": 7},  # not a kernel event
        _run(500, 100), _node("a", 510, 3000), _node("b", 520, 100, "Relu"), _node("b", 530, 50, "Relu"),
        _run(700, 100), _node("a", 710, 2000),  # b did not run: 0 ms in this run
    ]
    per_node, run_ms = parse_ort_trace(events, runs=3)
    assert run_ms == [0.1, 0.1, 0.1]
    assert set(per_node) == {"a", "b"}
    assert per_node["a"] == ("Conv", [1.0, 3.0, 2.0])
    assert per_node["b"] == ("Relu", [0.2, 0.15, 0.0])  # two events in one run add up
    medians = {name: float(np.median(ms)) for name, (_, ms) in per_node.items()}
    assert medians == {"a": 2.0, "b": 0.15}
    all_runs, _ = parse_ort_trace(events)
    assert all_runs["a"][1] == [9.0, 1.0, 3.0, 2.0]


@pytest.mark.parametrize("events, runs, match", [
    ({"traceEvents": []}, None, "expected a list"),
    ([_node("a", 0, 1)], None, "no 'model_run'"),
    ([_run(0, 10), _node("a", 1, -5)], None, "'dur' is -5"),
    ([_run(0, 10)], 2, "holds 1 runs"),
    ([_run(0, 10), "text"], None, "expected a JSON object"),
])
def test_parse_ort_trace_errors_are_one_line(events: object, runs: int | None, match: str) -> None:
    with pytest.raises(InputError, match=match) as error:
        parse_ort_trace(events, runs)
    assert "\n" not in str(error.value)


def test_parse_ort_trace_never_fails_unclearly(fuzz_settings) -> None:
    value = st.one_of(st.none(), st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=5))
    event = st.fixed_dictionaries({"cat": st.sampled_from(["Node", "Session", "x"]),
                                   "name": st.sampled_from(["model_run", "a_kernel_time", "b"]),
                                   "ts": value, "dur": value}, optional={"args": st.one_of(value, st.just({}))})

    @fuzz_settings
    @given(st.lists(st.one_of(event, value), max_size=8), st.one_of(st.none(), st.integers(-1, 3)))
    def check(events: list, runs: int | None) -> None:
        try:
            per_node, run_ms = parse_ort_trace(events, runs)
        except InputError:
            return
        assert all(ms >= 0 for ms in run_ms)
        assert all(len(ms) == len(run_ms) for _, ms in per_node.values())

    check()


def test_the_gap_between_nodes_is_taken_within_each_traced_run() -> None:
    nodes = [ExecutedNode("a", "Conv", (1.0, 2.0, 3.0), ("x",)), ExecutedNode("b", "Relu", (0.5, 0.5, 0.5), ("y",))]
    # run totals 2, 3 and 10 ms (the last one slowed down between nodes): gaps 0.5, 0.5, 6.5
    profile = NodeProfile("test", nodes, [9.0, 9.5, 9.9], [2.0, 3.0, 10.0])
    assert profile.traced_gap_ms == pytest.approx(0.5)
    assert profile.node_sum_ms == pytest.approx(2.0 + 0.5) and profile.model_ms == pytest.approx(9.5)
    assert NodeProfile("test", nodes, [1.0]).traced_gap_ms is None


# ---- mapping the optimized graph back to the ONNX nodes ------------------------------------------
def _model(nodes: list, inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
    value = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs]
    result = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs]
    return helper.make_model(helper.make_graph(nodes, "g", value, result))


def test_map_ort_nodes_follows_names_fusions_and_layout_nodes() -> None:
    # x -> Conv_0 -> BN_0 -> Relu_0 (r) -> Conv_1 -> Add_0 (+ r) -> y ; Shape_0 -> Reshape_0 folded into Conv_1's input
    original = _model([
        helper.make_node("Conv", ["x", "w0"], ["c0"], name="Conv_0"),
        helper.make_node("BatchNormalization", ["c0", "s", "b", "m", "v"], ["bn0"], name="BN_0"),
        helper.make_node("Relu", ["bn0"], ["r"], name="Relu_0"),
        helper.make_node("Shape", ["w1"], ["shape"], name="Shape_0"),
        helper.make_node("Reshape", ["w1", "shape"], ["w1r"], name="Reshape_0"),
        helper.make_node("Conv", ["r", "w1r"], ["c1"], name="Conv_1"),
        helper.make_node("Add", ["c1", "r"], ["y"], name="Add_0"),
    ], ["x", "w0", "s", "b", "m", "v", "w1"], ["y"])
    optimized = _model([
        helper.make_node("ReorderInput", ["x"], ["t0"], name="ReorderInput", domain="com.microsoft.nchwc"),
        helper.make_node("Conv", ["t0", "w0f"], ["t1"], name="r_nchwc", domain="com.microsoft.nchwc"),
        helper.make_node("ReorderOutput", ["t1"], ["r"], name="ReorderOutput_1", domain="com.microsoft.nchwc"),
        helper.make_node("FusedConv", ["r", "w1f", "r"], ["y"], name="Conv_1", domain="com.microsoft"),
        helper.make_node("Mystery", ["x"], ["z"], name="Inserted_0"),
    ], ["x", "w0f", "w1f"], ["y", "z"])
    mapping = map_ort_nodes(original, optimized)
    first = ("Conv_0", "BN_0", "Relu_0")
    second = ("Shape_0", "Reshape_0", "Conv_1", "Add_0")  # Add joins the conv before it; Shape/Reshape its consumer
    assert mapping["r_nchwc"] == (first, False)
    assert mapping["ReorderInput"] == (first, True)  # a layout node goes to the node it feeds
    assert mapping["ReorderOutput_1"] == (first, True)
    assert mapping["Conv_1"] == (second, False)
    assert mapping["Inserted_0"] == ((), False)  # nothing names an ONNX node: unattributed


def test_map_ort_nodes_puts_a_fused_swish_with_the_node_named_after_its_mul() -> None:
    original = _model([
        helper.make_node("Conv", ["x", "w"], ["c"], name="Conv_0"),
        helper.make_node("Sigmoid", ["c"], ["s"], name="Sig_0"),
        helper.make_node("Mul", ["c", "s"], ["y"], name="Mul_0"),
    ], ["x", "w"], ["y"])
    optimized = _model([
        helper.make_node("Conv", ["x", "w"], ["t"], name="c_nchwc", domain="com.microsoft.nchwc"),
        helper.make_node("ReorderOutput", ["t"], ["c"], name="ReorderOutput_0", domain="com.microsoft.nchwc"),
        helper.make_node("QuickGelu", ["c"], ["q"], name="Mul_0/QuickGeluFusion/", domain="com.microsoft"),
        helper.make_node("ReorderInput", ["q"], ["z"], name="ReorderInput_1", domain="com.microsoft.nchwc"),
    ], ["x", "w"], ["z"])
    mapping = map_ort_nodes(original, optimized)
    assert mapping["c_nchwc"] == (("Conv_0",), False)
    # named after the Mul (its output tensor is new); the Sigmoid whose consumer also reads its input joins it
    assert mapping["Mul_0/QuickGeluFusion/"] == (("Sig_0", "Mul_0"), False)


def test_map_ort_nodes_reads_qdq_fusions_and_unnamed_ops_of_inlined_functions() -> None:
    # QDQ graph: x -> Q -> DQ -> Conv_0 (c) -> Q -> DQ -> [HardSwish inlined: HardSigmoid, Mul] (h) -> y
    qdq = _model([
        helper.make_node("QuantizeLinear", ["x", "s"], ["xq"], name="x_Q"),
        helper.make_node("DequantizeLinear", ["xq", "s"], ["xd"], name="x_DQ"),
        helper.make_node("Conv", ["xd", "w"], ["c"], name="Conv_0"),
        helper.make_node("QuantizeLinear", ["c", "s"], ["cq"], name="c_Q"),
        helper.make_node("DequantizeLinear", ["cq", "s"], ["cd"], name="c_DQ"),
        helper.make_node("HardSigmoid", ["cd"], ["hs"]),
        helper.make_node("Mul", ["cd", "hs"], ["h"]),
        helper.make_node("Identity", ["h"], ["y"], name="Out"),
    ], ["x", "s", "w"], ["y"])
    optimized = _model([
        helper.make_node("QuantizeLinear", ["x", "s"], ["x_Q"], name="x_Q"),
        helper.make_node("QLinearConv", ["x_Q", "s", "w"], ["Conv_0"], name="Conv_0_token_3"),
        helper.make_node("DequantizeLinear", ["Conv_0", "s"], ["c_DQ"], name="c_DQ"),
        helper.make_node("HardSigmoid", ["c_DQ"], ["t1"]),
        helper.make_node("QLinearMul", ["Conv_0", "s", "t1"], ["t2"]),
        helper.make_node("Identity", ["t2"], ["y"], name="Out"),
    ], ["x", "s", "w"], ["y"])
    mapping = map_ort_nodes(qdq, optimized)
    assert mapping["x_Q"] == (("x_Q",), False)
    assert mapping["Conv_0_token_3"] == (("x_DQ", "Conv_0"), False)  # "<node>_token_<n>" runs <node>
    assert mapping["c_DQ"] == (("c_Q", "c_DQ"), False)  # the Q the fusion removed joins its consumer
    assert mapping["#3"] == (("#5",), False)  # the unnamed HardSigmoid: the QDQ graph's unnamed HardSigmoid
    assert mapping["#4"] == (("#6",), False)  # QLinearMul: the Mul of the QDQ graph it stands for
    assert mapping["Out"] == (("Out",), False)
    # the QDQ graph's nodes named as in the FP32 graph: by name, by written tensor, else downstream
    fp32 = _model([helper.make_node("Conv", ["x", "w"], ["c"], name="Conv_0"),
                   helper.make_node("HardSwish", ["c"], ["h"], name="Act_0"),
                   helper.make_node("Identity", ["h"], ["y"], name="Out")], ["x", "w"], ["y"])
    names = timed_to_original(qdq, fp32)
    assert names == {"x_Q": "Conv_0", "x_DQ": "Conv_0", "Conv_0": "Conv_0", "c_Q": "Act_0", "c_DQ": "Act_0",
                     "#5": "Act_0", "#6": "Act_0", "Out": "Out"}


# ---- the join and the error decomposition --------------------------------------------------------
def _conv(cout: int) -> KernelConfig:
    return KernelConfig("conv", {"batch": 1, "h": 8, "w": 8, "cin": 4, "cout": cout, "kh": 3, "kw": 3, "sh": 1,
                                 "sw": 1, "ph": 1, "pw": 1, "dh": 1, "dw": 1, "groups": 1, "hout": 8, "wout": 8,
                                 "act": "relu", "residual": "none"})


def _act() -> KernelConfig:
    return KernelConfig("act", {"batch": 1, "c": 4, "h": 8, "w": 8, "act": "relu"})


def _example() -> tuple[list[KernelPrediction], list[ExecutedNode]]:
    kernels = [KernelPrediction(_conv(8), ("conv", "bn"), 2.0), KernelPrediction(_act(), ("relu",), 1.0),
               KernelPrediction(_conv(16), ("conv2",), 3.0), KernelPrediction(_act(), ("relu2",), 0.5)]
    executed = [
        ExecutedNode("e_conv", "Conv", (1.0, 2.0, 3.0), ("conv",)),        # median 2.0 -> kernel 0
        ExecutedNode("e_bn", "Bn", (0.5, 0.5, 0.5), ("bn",)),              # 0.5 -> kernel 0
        ExecutedNode("e_fused", "FusedConv", (4.0, 4.0, 4.0), ("relu", "conv2")),  # split 1:3 -> 1.0 / 3.0
        ExecutedNode("e_reorder", "ReorderOutput", (0.2, 0.2, 0.2), ("conv",), layout=True),  # -> kernel 0
        ExecutedNode("e_shape", "Shape", (0.1, 0.3, 0.2), ("shape",)),     # no kernel: unattributed 0.2
    ]
    return kernels, executed


def test_join_credits_executed_nodes_to_kernels_as_summed_by_hand() -> None:
    kernels, executed = _example()
    times, unattributed = join(kernels, executed)
    assert [t.in_model_ms for t in times] == pytest.approx([2.0 + 0.5 + 0.2, 1.0, 3.0, 0.0])
    assert times[0].layout_ms == pytest.approx(0.2)
    assert times[0].run_ms == pytest.approx((1.7, 2.7, 3.7))
    assert [t.shared for t in times] == [False, True, True, False]
    assert [t.profiled for t in times] == [True, True, True, False]  # relu2: no executed node (unprofiled)
    assert [n.name for n in unattributed] == ["e_shape"]


def test_decomposition_adds_up_to_the_model_error() -> None:
    kernels, executed = _example()
    times, unattributed = join(kernels, executed)
    # predicted = 2 + 1 + 3 + 0.5 + intercept 0.25 = 6.75; node sum = 2.7 + 1 + 3 + 0 + 0.2 = 6.9; measured 7.4
    result = ModelAttribution("m", "fam", "ort-fp32", 6.75, 7.4, 8.0, 0.25, kernels, times, unattributed)
    assert result.node_sum_ms == pytest.approx(6.9)
    parts = decompose(result)
    assert parts == pytest.approx({"conv": (2.0 - 2.7) + (3.0 - 3.0), "act": (1.0 - 1.0) + (0.5 - 0.0),
                                   UNATTRIBUTED: -0.2, GAP: -(7.4 - 6.9), INTERCEPT: 0.25})
    assert sum(parts.values()) == pytest.approx(6.75 - 7.4)
    rows = {row["group"]: row for row in by_type([result, result])}
    assert rows["conv"]["kernels"] == 4 and rows["conv"]["residual_ms"] == pytest.approx(2 * -0.7)
    total = 2 * (0.7 + 0.5 + 0.2 + 0.5 + 0.25)
    assert rows["act"]["share_of_abs_error"] == pytest.approx(2 * 0.5 / total)
    assert sum(r["share_of_abs_error"] for r in rows.values()) == pytest.approx(1.0)


def test_in_context_records_take_kernels_run_alone_in_the_dataset_format() -> None:
    kernels, executed = _example()
    times, unattributed = join(kernels, executed)
    result = ModelAttribution("m", "fam", "ort-fp32", 6.75, 7.4, 8.0, 0.25, kernels, times, unattributed)
    records = in_context_records(result, "ort-fp32")
    assert len(records) == 1  # kernel 0 only: 1 and 2 share a node, 3 was not profiled
    record = records[0]
    assert record.kind == "kernel" and record.name == "conv" and record.config == dict(_conv(8).params)
    assert record.metadata["context"] == "in-model" and record.metadata["nodes"] == ["conv", "bn"]
    assert record.measurement["median_ms"] == pytest.approx(2.7)
    assert record.measurement["p10_ms"] == pytest.approx(1.7 + 0.2 * (2.7 - 1.7))  # numpy's linear p10 of 3 runs
    assert type(record).from_dict(json.loads(json.dumps(record.to_dict()))) == record


# ---- the app -------------------------------------------------------------------------------------
class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU())
        self.pw = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = self.pw(self.dw(y)) + y
        return self.fc(y.mean((2, 3)))


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from moonlit.common.export.onnx import export_onnx
    from moonlit.litepred.testing import stand_in_predictor

    root = tmp_path_factory.mktemp("attribution")
    torch.manual_seed(0)
    model = export_onnx(_Tiny().eval(), (torch.randn(1, 3, 32, 32),), root / "tiny.onnx", check=False)
    for platform in ("ort-fp32", "ort-int8", "ov-fp32", "ov-int8"):
        stand_in_predictor(platform={"name": platform, "statistic": "median"}).save(root / "predictor" / platform)
    return model, root


def _cfg(root: Path, *overrides: str, platform: str = "ort-fp32"):
    return compose_config("litepred", "attribute", [
        f"platform={platform}", f"predictor_dir={root / 'predictor' / platform}", f"paths.output_root={root / 'out'}",
        "attribute.runs=3", "attribute.warmup=1", "attribute.measure=false", *overrides])


@pytest.mark.parametrize("platform", ["ort-fp32", "ort-int8", "ov-fp32", "ov-int8"])
def test_attribute_app_end_to_end(tiny_setup: tuple[Path, Path], platform: str) -> None:
    if platform.startswith("ov-"):
        pytest.importorskip("openvino")
    from moonlit.litepred.apps import attribute
    from moonlit.litepred.pipeline import timed_predict_onnx
    from moonlit.litepred.predict.predictor import PlatformPredictor

    model, root = tiny_setup
    summary = attribute.run(_cfg(root, f"model={model}", platform=platform))
    out = root / "out" / "litepred" / "attribution" / platform
    assert {p.name for p in out.iterdir()} >= {"attribution.json", "attribution.md", "attribution.png"}
    [result] = json.loads((out / "attribution.json").read_text())["models"]
    assert result == json.loads(json.dumps(summary["models"][0]))
    # the per-kernel predictions add up to what `predict` says for the same file (a second code path)
    predictor = PlatformPredictor.load(root / "predictor" / platform)
    assert result["predicted_ms"] == pytest.approx(timed_predict_onnx(predictor, model, platform)["latency_ms"])
    assert sum(result["decomposition"].values()) == pytest.approx(result["predicted_ms"] - result["measured_ms"])
    # every kernel of this plain CNN runs as (part of) an executed node or layer (at INT8 too, through the QDQ
    # graph), and the engine's nodes sum to the kernels' in-model times plus the unattributed ones
    assert result["unprofiled_kernels"] == []
    in_model = sum(k["in_model_ms"] for k in result["kernels"]) + sum(n["ms"] for n in result["unattributed"])
    assert in_model == pytest.approx(result["node_sum_ms"])
    assert 0 < result["node_sum_ms"] == pytest.approx(result["node_sum_median_ms"])  # statistic: median
    assert np.isfinite(result["traced_gap_ms"])
    assert "| conv |" in (out / "attribution.md").read_text()


def test_attribute_rejects_a_file_that_is_not_onnx(tiny_setup: tuple[Path, Path]) -> None:
    from moonlit.litepred.apps import attribute

    _, root = tiny_setup
    bad = root / "notes.onnx"
    bad.write_text("not a model\n")
    with pytest.raises(InputError, match="notes.onnx") as error:
        attribute.run(_cfg(root, f"model={bad}"))
    assert "\n" not in str(error.value)


def test_attribute_rejects_a_platform_without_predictor(tiny_setup: tuple[Path, Path]) -> None:
    from moonlit.litepred.apps import attribute

    model, root = tiny_setup
    cfg = _cfg(root, f"model={model}", f"predictor_dir={root / 'nowhere'}", platform="ort-fp32-noopt")
    with pytest.raises(InputError, match="platform 'ort-fp32-noopt' has no predictor") as error:
        attribute.run(cfg)
    assert "\n" not in str(error.value)
    assert not (root / "out" / "litepred" / "attribution" / "ort-fp32-noopt").exists()


def test_a_platform_without_per_node_profiler_is_a_one_line_error(tiny_setup: tuple[Path, Path]) -> None:
    from moonlit.litepred.profile import get_platform
    from moonlit.litepred.profile.node_profile import node_profile

    model, _ = tiny_setup
    with pytest.raises(InputError, match="platform 'debug' runs on 'debug' without a per-node profiler") as error:
        node_profile(get_platform("debug"), "debug", model, {})
    assert "\n" not in str(error.value)
