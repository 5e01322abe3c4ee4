"""OpenVINO engine: FP32 / BF16 / INT8 against independent references, IR export, the executed graph, bad inputs.

References: torch FP32 for fp32 and bf16 (tolerances derived from each precision's rounding, stated at the
constants); onnxruntime running the SAME QDQ model for int8 (a second implementation of the same integer
arithmetic, compared in units of the output's quantization step, not against FP32).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from moonlit.common.errors import InputError
from moonlit.common.export import export_onnx, export_openvino_ir, export_static_int8
from moonlit.common.profiling import available_backends, make_runner
from moonlit.common.profiling import openvino as openvino_module
from moonlit.common.profiling.openvino import (
    check_in_child,
    executed_layers,
    layers_by_original_name,
    openvino_compile,
    openvino_feed,
    per_layer_counters,
    supported_precisions,
)

# fp32: the same f32 arithmetic in another order (BN folded, blocked layouts); sums of ~100 terms differ by a
# few ulps (2^-23 ≈ 1.2e-7) each, far inside 1e-4 of the output's scale.
FP32_REL = 1e-4
# bf16 keeps 8 significant bits: rounding a weight or an activation costs at most 2^-9 relative, a product of two
# rounded factors 2^-8, accumulated in f32. Through the 2-3 rounded matmul/conv stages of these nets the norm-wise
# error is bounded by about 3 · 2^-8 ≈ 1.2e-2; 2.5e-2 leaves room for LayerNorm/softmax re-rounding.
BF16_REL = 2.5e-2
# int8: both engines compute the same u8 × s8 → s32 sums exactly; they differ only in how they requantize
# (rounding of the float rescale, f32 vs fused scales), i.e. by at most one step in an intermediate activation,
# which moves an output by about one step (observed: 1.0 step on both nets); 2 steps leave room for a carry.
INT8_MAX_STEPS = 2


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| over the output's scale (max |want|): elementwise relative error is meaningless near 0."""
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


class ConvNet(nn.Module):
    """conv-bn-relu-pool-linear with non-trivial BN statistics (so folding BN is visible)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(4), nn.Linear(16 * 16, 10)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.2, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))


class AttentionBlock(nn.Module):
    """Single-head softmax attention with a residual and LayerNorm, then a linear head on the first token."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.qkv, self.proj, self.norm = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 8)
        self.scale = dim**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        attended = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1) @ v
        return self.head(self.norm(x + self.proj(attended))[:, 0])


NETS = {"conv": (ConvNet, (3, 16, 16)), "attention": (AttentionBlock, (6, 32))}


@pytest.fixture(scope="module", params=list(NETS))
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A seeded net, its FP32 ONNX and its QDQ INT8 ONNX, both with a dynamic batch axis."""
    factory, shape = NETS[request.param]
    torch.manual_seed(0)
    model = factory().eval()
    folder = tmp_path_factory.mktemp(request.param)
    axes = {"input": {0: "batch"}, "output": {0: "batch"}}
    fp32 = export_onnx(model, torch.randn(1, *shape), folder / "fp32.onnx", output_names=["output"],
                       dynamic_axes=axes)
    generator = torch.Generator().manual_seed(1)
    calibration = [torch.randn(8, *shape, generator=generator) for _ in range(4)]
    int8 = export_static_int8(model, folder / "int8.onnx", calibration)
    inputs = torch.randn(16, *shape, generator=generator)
    with torch.no_grad():
        expected = model(inputs).numpy()
    return {"name": request.param, "model": model, "shape": shape, "fp32": fp32, "int8": int8, "inputs": inputs,
            "expected": expected, "folder": folder}


def ov_run(model: object, inputs: torch.Tensor, **options: object) -> np.ndarray:
    (output,) = make_runner("openvino", model, inputs, **options)()
    return output


def test_fp32_matches_torch_at_two_batch_sizes(net: dict, tmp_path: Path) -> None:
    compiled = openvino_compile(net["fp32"], precision="fp32", cache_dir=tmp_path / "cache")
    request = compiled.create_infer_request()  # one request, two batch sizes through the dynamic batch axis
    for batch in (16, 1):
        (got,) = request.infer(openvino_feed(compiled, net["inputs"][:batch])).values()
        assert got.shape == net["expected"][:batch].shape
        assert relative_error(got, net["expected"][:batch]) < FP32_REL
    assert any((tmp_path / "cache").iterdir())  # CACHE_DIR holds the compiled blob
    cached = openvino_compile(net["fp32"], precision="fp32", cache_dir=tmp_path / "cache")
    (again,) = cached.create_infer_request().infer(openvino_feed(cached, net["inputs"][:1])).values()
    np.testing.assert_array_equal(again, got)


def test_bf16_matches_torch_within_bf16_rounding(net: dict) -> None:
    if "bf16" not in supported_precisions():
        with pytest.raises(InputError, match="BF16"):
            openvino_compile(net["fp32"], precision="bf16")
        return
    got = ov_run(net["fp32"], net["inputs"], precision="bf16")
    error = relative_error(got, net["expected"])
    assert error < BF16_REL
    assert error > FP32_REL, "bf16 output as exact as fp32: the model did not run in bf16"
    compiled = openvino_compile(net["fp32"], precision="bf16")
    compute = [layer for layer in executed_layers(compiled) if layer.layer_type in ("Convolution", "FullyConnected")]
    assert compute and all(layer.runtime_precision == "bf16" for layer in compute)


def output_step(path: Path) -> float:
    """Quantization step of the graph output: the scale of the DequantizeLinear that produces it."""
    model = onnx.load(str(path))
    output = model.graph.output[0].name
    initializers = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    (node,) = [node for node in model.graph.node if output in node.output]
    assert node.op_type == "DequantizeLinear"
    return float(initializers[node.input[1]])


def test_int8_matches_onnxruntime_on_the_same_qdq_model(net: dict) -> None:
    session = ort.InferenceSession(str(net["int8"]), providers=["CPUExecutionProvider"])
    (reference,) = session.run(None, {"input": net["inputs"].numpy()})
    got = ov_run(net["int8"], net["inputs"], precision="int8")
    step = output_step(net["int8"])
    assert np.abs(got - reference).max() <= INT8_MAX_STEPS * step * (1 + 1e-6)
    assert (got.argmax(-1) == reference.argmax(-1)).mean() >= 15 / 16
    # both ran quantized: the outputs sit on the output grid (multiples of the step from the zero point)
    offsets = got / step - np.round(got / step)
    assert np.abs(offsets).max() < 1e-2


def test_int8_runs_quantized_kernels_and_bf16_rest(net: dict) -> None:
    compiled = openvino_compile(net["int8"], precision="int8")
    compute = [layer for layer in executed_layers(compiled) if layer.layer_type in ("Convolution", "FullyConnected")]
    assert compute and all(layer.runtime_precision in ("u8", "i8") for layer in compute), compute
    if "bf16" in supported_precisions():
        rest = openvino_compile(net["int8"], precision="int8", rest_precision="bf16")
        assert str(rest.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'bfloat16'>"


def conv_bn_relu_onnx() -> bytes:
    """Conv → BatchNormalization → Relu written by hand (BN left unfolded); each node's output is named as the node."""
    rng = np.random.default_rng(0)
    tensors = {"w": rng.standard_normal((4, 3, 3, 3)), "scale": rng.uniform(0.5, 1.5, 4),
               "shift": rng.uniform(-0.2, 0.2, 4), "mean": rng.uniform(-0.5, 0.5, 4), "var": rng.uniform(0.5, 2, 4)}
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["x", "w"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
         onnx.helper.make_node("BatchNormalization", ["conv", "scale", "shift", "mean", "var"], ["bn"], name="bn"),
         onnx.helper.make_node("Relu", ["bn"], ["relu"], name="relu")],
        "conv_bn_relu",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("relu", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
        [onnx.numpy_helper.from_array(value.astype(np.float32), name) for name, value in tensors.items()],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_conv_bn_relu_fuse_into_one_executed_layer() -> None:
    data = conv_bn_relu_onnx()
    layers = executed_layers(openvino_compile(data))
    # the plugin only adds layout changes (Reorder) and weight reshapes around the one fused convolution
    (fused,) = [layer for layer in layers if layer.layer_type not in ("Reorder", "Reshape")]
    assert fused.layer_type == "Convolution"
    # BN folds into the conv weights and bias (the conv takes the name of the scale Multiply it absorbed), and
    # the ReLU is a post-op of the same kernel
    assert {"bn", "relu"} <= set(fused.original_names)
    assert layers_by_original_name(layers)["bn"] is layers_by_original_name(layers)["relu"] is fused
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    (want,) = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert relative_error(ov_run(data, x), want) < FP32_REL


def test_exported_conv_and_relu_fuse(net: dict) -> None:
    relus = [node.name for node in onnx.load(str(net["fp32"])).graph.node if node.op_type == "Relu"]
    if net["name"] != "conv":
        assert not relus
        return
    (relu,) = relus  # the exporter folded BN into the conv already
    fused = layers_by_original_name(executed_layers(openvino_compile(net["fp32"])))[relu]
    assert fused.layer_type == "Convolution"


def test_per_layer_counters_name_the_executed_layers(net: dict) -> None:
    compiled = openvino_compile(net["fp32"], perf_counters=True)
    request = compiled.create_infer_request()
    request.infer(openvino_feed(compiled, net["inputs"][:2]))
    counters = {counter.name: counter for counter in per_layer_counters(request)}
    layers = {layer.name: layer for layer in executed_layers(compiled)}
    executed = {name for name, counter in counters.items() if counter.status == "EXECUTED"}
    assert executed and executed <= set(layers)  # every kernel that ran is a node of the runtime graph
    for layer in layers.values():
        if layer.layer_type in ("Convolution", "FullyConnected"):
            assert layer.name in executed
            assert counters[layer.name].exec_type == layer.primitive_type
            assert counters[layer.name].real_time_us >= 0
    with pytest.raises(InputError, match="perf_counters=True"):
        per_layer_counters(openvino_compile(net["fp32"]).create_infer_request())


def test_ir_export_round_trips(net: dict, tmp_path: Path) -> None:
    inputs = net["inputs"][:3]
    from_onnx = export_openvino_ir(net["fp32"], tmp_path / "from_onnx.xml")
    from_torch = export_openvino_ir(net["model"], tmp_path / "torch" / "from_torch.xml",
                                    example=torch.randn(1, *net["shape"]),
                                    dynamic_axes={"input": {0: "batch"}})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["from_onnx.bin", "from_onnx.xml", "torch"]
    assert sorted(path.name for path in (tmp_path / "torch").iterdir()) == ["from_torch.bin", "from_torch.xml"]
    want = ov_run(net["fp32"], inputs)
    np.testing.assert_allclose(ov_run(from_onnx, inputs), want, rtol=0, atol=1e-6)
    assert relative_error(ov_run(from_torch, inputs), want) < FP32_REL
    int8_ir = export_openvino_ir(net["int8"], tmp_path / "int8.xml")  # QDQ survives as FakeQuantize
    np.testing.assert_allclose(ov_run(int8_ir, inputs, precision="int8"),
                               ov_run(net["int8"], inputs, precision="int8"), rtol=0, atol=1e-6)
    half = export_openvino_ir(net["fp32"], tmp_path / "half.xml", compress_to_fp16=True)
    # fp16 weights take 2 bytes instead of 4: the .bin shrinks to about half
    assert half.with_suffix(".bin").stat().st_size < 0.6 * from_onnx.with_suffix(".bin").stat().st_size


def test_runner_feeds_by_name_and_position(net: dict) -> None:
    assert "openvino" in available_backends()
    x = net["inputs"][:2]
    by_position = ov_run(net["fp32"], [x])
    by_name = ov_run(net["fp32"], {"input": x.numpy().astype(np.float64)})  # cast to the graph's f32
    np.testing.assert_array_equal(by_position, by_name)
    with pytest.raises(ValueError, match="missing from the feed"):
        make_runner("openvino", net["fp32"], {"other": x})


def bad_input_cases(folder: Path, fp32: Path) -> list[tuple[object, dict, str]]:
    garbage = folder / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    garbage_ir = folder / "garbage.xml"
    garbage_ir.write_text("<net><layers><layer")
    return [
        (folder / "missing.onnx", {}, "does not exist"),
        (folder / "model.pt", {}, r"\.onnx.*\.xml"),
        (b"not a model at all", {}, "not a valid ONNX model"),
        (b"", {}, "no ONNX graph nodes"),
        (garbage, {}, "garbage.onnx is not a valid ONNX model"),
        (garbage_ir, {}, "garbage.xml is not a model OpenVINO can read"),
        (fp32, {"precision": "int8"}, "fp32.onnx.*export_static_int8"),
        (fp32, {"precision": "fp16"}, r"precision must be one of \['fp32', 'bf16', 'int8'\]"),
        (fp32, {"threads": 0}, "threads must be a positive int"),
        (fp32, {"rest_precision": "bf16"}, "rest_precision applies to precision 'int8' only"),
        (12, {}, "got int"),
    ]


def non_utf8_models() -> list[tuple[bytes, str]]:
    """The hand-made graph with an op type / a node name that is not UTF-8 (OpenVINO's ONNX reader segfaults on
    the first and hands back names that cannot be decoded for the second)."""
    valid = conv_bn_relu_onnx()
    op_type, name = b'"\x04Conv', b"\x1a\x02bn"  # field 4 (op_type) and field 3 (name), length-delimited
    assert valid.count(op_type) == 1 and valid.count(name) == 1
    return [(valid.replace(op_type, b'"\x04\x80onv'), "not a valid ONNX model|not UTF-8"),
            (valid.replace(name, b"\x1a\x02\xfe\xa3"), "model.graph.node.name that is not UTF-8")]


def test_bad_inputs_raise_one_line_input_errors(net: dict, tmp_path: Path) -> None:
    for model, message in non_utf8_models():
        with pytest.raises(InputError, match=message):
            openvino_compile(model)
        path = tmp_path / "non_utf8.onnx"
        path.write_bytes(model)
        with pytest.raises(InputError, match=message):
            openvino_compile(path)
    for model, options, message in bad_input_cases(tmp_path, net["fp32"]):
        with pytest.raises(InputError, match=message) as raised:
            openvino_compile(model, **options)
        assert "\n" not in str(raised.value), str(raised.value)
    with pytest.raises(InputError, match="executed_layers needs an ov.CompiledModel"):
        executed_layers("model.onnx")


def test_ir_export_bad_inputs_write_nothing(net: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cases = [
        ((net["fp32"], out / "model.onnx"), {}, r"should end in \.xml"),
        ((net["model"], out / "model.xml"), {}, "needs example inputs"),
        ((tmp_path / "missing.onnx", out / "model.xml"), {}, "does not exist"),
        ((net["fp32"], out / "model.xml"), {"example": net["inputs"]}, "torch modules only"),
        ((b"bytes", out / "model.xml"), {}, "torch.nn.Module or an .onnx path"),
    ]
    for args, options, message in cases:
        with pytest.raises(InputError, match=message) as raised:
            export_openvino_ir(*args, **options)
        assert "\n" not in str(raised.value)
    assert not out.exists()
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"garbage")
    with pytest.raises(InputError, match="garbage.onnx is not a valid ONNX model"):
        export_openvino_ir(garbage, tmp_path / "g.xml")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["garbage.onnx"]  # temp folder removed too


def test_fuzzed_model_bytes_compile_or_raise_input_error(fuzz_settings) -> None:
    valid = conv_bn_relu_onnx()

    @fuzz_settings
    @given(st.one_of(
        st.binary(max_size=64),
        st.tuples(st.integers(0, len(valid) - 1), st.binary(min_size=1, max_size=8)).map(
            lambda cut: valid[: cut[0]] + cut[1] + valid[cut[0] + len(cut[1]):]),
    ))
    def check(data: bytes) -> None:
        try:
            compiled = openvino_compile(data)
        except InputError as error:
            assert "\n" not in str(error)
            return
        assert executed_layers(compiled)

    check()


def test_importing_profiling_does_not_import_openvino() -> None:
    code = ("import sys, moonlit.common.profiling as p; "
            "assert 'openvino' in p.available_backends(); assert 'openvino' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# A stand-in child that crashes (SIGSEGV, as the CPU plugin does on some QDQ graphs) on files named crash*.onnx.
CRASHING_CHILD = """
import json, os, signal, sys
for index, (model, precision, threads) in enumerate(json.loads(sys.argv[1])):
    if os.path.basename(model).startswith("crash"):
        os.kill(os.getpid(), signal.SIGSEGV)
    print(json.dumps({"index": index, "error": None}), flush=True)
"""


def test_check_in_child_reports_errors_and_survives_crashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fp32 = tmp_path / "conv_bn_relu.onnx"
    fp32.write_bytes(conv_bn_relu_onnx())
    assert check_in_child([(fp32, "fp32"), (fp32, "int8")]) == [
        None, f"{fp32} has no QuantizeLinear/DequantizeLinear (FakeQuantize) nodes: {openvino_module.INT8_HINT}"]
    monkeypatch.setattr(openvino_module, "_CHILD", CRASHING_CHILD)
    results = check_in_child([("a.onnx", "fp32"), ("crash1.onnx", "fp32"), ("b.onnx", "int8"), ("crash2.onnx", "bf16")])
    assert results[0] is None and results[2] is None
    assert all(text.startswith("OpenVINO crashed the process (signal 11)") for text in (results[1], results[3]))
