"""ONNX export (checked in onnxruntime against torch) and INT8 quantization."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from moonlit.common.errors import InputError
from moonlit.common.export.int8 import (
    CalibrationReader,
    export_static_int8,
    quantization_summary,
    quantize_dynamic_int8,
    quantize_static_int8,
)
from moonlit.common.export.onnx import (
    ExportVerificationError,
    export_onnx,
    lower_ir_version,
    max_supported_ir_version,
    onnx_input_feed,
)


def ort_run(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def op_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


class SmallConvNet(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.head = nn.Linear(16 * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class TinyEncoderBlock(nn.Module):
    """Pre-norm BERT-style block: masked multi-head self-attention + GELU MLP, both residual."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = hidden.shape
        q, k, v = self.qkv(self.norm1(hidden)).view(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) / math.sqrt(dim // self.heads)
        scores = scores.masked_fill(mask[:, None, None, :] == 0, -1e4)
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, tokens, dim)
        hidden = hidden + self.proj(attended)
        return hidden + self.mlp(self.norm2(hidden))


# --- ONNX export ---------------------------------------------------------------------------


def test_max_supported_ir_version_is_the_boundary() -> None:
    limit = max_supported_ir_version()
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = limit
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    if limit < onnx.IR_VERSION:
        model.ir_version = limit + 1
        with pytest.raises(Exception):
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        assert lower_ir_version(model).ir_version == limit


def test_conv_net_export_matches_torch_at_other_batch_size(tmp_path: Path) -> None:
    model = SmallConvNet().eval()
    path = export_onnx(model, torch.randn(1, 1, 8, 8), tmp_path / "net.onnx",
                       dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                       output_names=["logits"])
    assert path == tmp_path / "net.onnx" and path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx"]  # single file
    loaded = onnx.load(str(path))
    assert loaded.ir_version <= max_supported_ir_version()
    assert loaded.opset_import[0].version == 17
    x = torch.randn(5, 1, 8, 8)
    (logits,) = ort_run(path, {"input": x.numpy()})
    np.testing.assert_allclose(logits, model(x).detach().numpy(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_transformer_block_export_matches_torch(tmp_path: Path, exporter: str) -> None:
    torch.manual_seed(0)
    block = TinyEncoderBlock().eval()
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    inputs = (torch.randn(2, 6, 32), mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo exporter chatter about dynamic_axes
        path = export_onnx(block, inputs, tmp_path / "block.onnx", input_names=["hidden", "mask"],
                           dynamic_axes={"hidden": {0: "b", 1: "n"}, "mask": {0: "b", 1: "n"}},
                           exporter=exporter)
    if exporter == "dynamo":
        assert onnx.load(str(path)).opset_import[0].version >= 18
    other_mask = torch.ones(3, 9, dtype=torch.int32)  # int32: the feed casts to the graph's int64
    other_mask[0, 5:] = 0
    other = torch.randn(3, 9, 32)
    (out,) = ort_run(path, onnx_input_feed(path, {"hidden": other, "mask": other_mask}))
    np.testing.assert_allclose(out, block(other, other_mask).detach().numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:Exporting aten")
def test_hf_bert_export_with_dict_inputs_out_of_signature_order(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, num_labels=3)
    model = BertForSequenceClassification(config).eval()
    ids = torch.randint(0, 64, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, 7:] = 0
    longer_ids = torch.randint(0, 64, (3, 14))
    longer_mask = torch.ones(3, 14, dtype=torch.long)
    longer_mask[1, 5:] = 0
    dynamic = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    # Keys deliberately not in forward() order: the TorchScript exporter would swap their names.
    path = export_onnx(model, {"attention_mask": mask, "input_ids": ids}, tmp_path / "bert.onnx",
                       output_names=["logits"], dynamic_axes=dynamic,
                       check_inputs=[{"input_ids": longer_ids, "attention_mask": longer_mask}])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert session.get_inputs()[0].type == "tensor(int64)"
    (logits,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    np.testing.assert_allclose(logits, model(input_ids=ids, attention_mask=mask).logits.detach().numpy(),
                               atol=1e-5)


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3_large_100"])
def test_timm_models_export(tmp_path: Path, name: str) -> None:
    model = timm.create_model(name, pretrained=False)
    path = export_onnx(model, torch.randn(1, 3, 64, 64), tmp_path / f"{name}.onnx",
                       dynamic_axes={"input": {0: "batch"}})
    x = torch.randn(2, 3, 64, 64)
    (out,) = ort_run(path, {"input": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, model.eval()(x).numpy(), atol=1e-4, rtol=1e-3)
    assert op_counts(path).get("BatchNormalization", 0) == 0  # folded into the convs


def test_traced_control_flow_is_caught_by_check_inputs(tmp_path: Path) -> None:
    class SignSwitch(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum() > 0 else x * 3

    positive = torch.ones(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarning about the bool conversion
        export_onnx(SignSwitch(), positive, tmp_path / "ok.onnx")  # consistent on its own input
        with pytest.raises(ExportVerificationError, match=r"max abs diff 1 "):
            export_onnx(SignSwitch(), positive, tmp_path / "bad.onnx", check_inputs=[-positive])


def test_export_argument_errors(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="should end in .onnx"):
        export_onnx(model, torch.randn(1, 3), tmp_path / "model.pt")
    with pytest.raises(ValueError, match="opset >= 18"):
        export_onnx(model, torch.randn(1, 3), tmp_path / "m.onnx", exporter="dynamo", opset=17)
    with pytest.raises(ValueError, match="2 input_names"):
        export_onnx(model, torch.randn(1, 3), tmp_path / "m.onnx", input_names=["a", "b"])
    with pytest.raises(ValueError, match="exporter must be"):
        export_onnx(model, torch.randn(1, 3), tmp_path / "m.onnx", exporter="jit")  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_onnx_input_feed_errors(tmp_path: Path) -> None:
    path = export_onnx(TinyEncoderBlock(), (torch.randn(1, 3, 32), torch.ones(1, 3)),
                       tmp_path / "block.onnx", input_names=["hidden", "mask"])
    with pytest.raises(ValueError, match=r"inputs \['mask'\] .* missing"):
        onnx_input_feed(path, {"hidden": torch.randn(1, 3, 32)})
    with pytest.raises(ValueError, match="got 1 positional inputs but the ONNX graph has 2"):
        onnx_input_feed(path, [torch.randn(1, 3, 32)])
    with pytest.raises(FileNotFoundError, match="nowhere.onnx"):
        onnx_input_feed(tmp_path / "nowhere.onnx", [])


# --- INT8 ------------------------------------------------------------------------------------


def quadrant_images(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """8x8 noisy images; the label is the quadrant holding a bright 2x2 patch."""
    labels = torch.randint(0, 4, (count,), generator=generator)
    images = 0.3 * torch.randn(count, 1, 8, 8, generator=generator)
    offsets = torch.randint(0, 3, (count, 2), generator=generator)
    for index in range(count):
        row = 4 * (labels[index] // 2) + offsets[index, 0]
        col = 4 * (labels[index] % 2) + offsets[index, 1]
        images[index, 0, row:row + 2, col:col + 2] += 2.0
    return images, labels


@pytest.fixture(scope="module")
def trained_classifier(tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    train_x, train_y = quadrant_images(2048, generator)
    test_x, test_y = quadrant_images(1000, generator)
    model = SmallConvNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(200):
        batch = torch.randint(0, len(train_x), (64,), generator=generator)
        loss = F.cross_entropy(model(train_x[batch]), train_y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    path = export_onnx(model, train_x[:1], tmp_path_factory.mktemp("int8") / "fp32.onnx",
                       dynamic_axes={"input": {0: "batch"}})
    return {"model": model, "path": path, "train_x": train_x, "test_x": test_x, "test_y": test_y}


def test_static_int8_agrees_with_fp32(trained_classifier: dict, tmp_path: Path) -> None:
    fp32_path, test_x = trained_classifier["path"], trained_classifier["test_x"]
    calibration = [trained_classifier["train_x"][i:i + 64] for i in range(0, 512, 64)]
    int8_path = quantize_static_int8(fp32_path, tmp_path / "int8.onnx", calibration)

    (fp32_logits,) = ort_run(fp32_path, {"input": test_x.numpy()})
    (int8_logits,) = ort_run(int8_path, {"input": test_x.numpy()})
    fp32_pred, int8_pred = fp32_logits.argmax(1), int8_logits.argmax(1)
    assert (fp32_pred == trained_classifier["test_y"].numpy()).mean() > 0.9  # it learned the rule
    assert (int8_pred == fp32_pred).mean() >= 0.95

    fp32_ops = op_counts(fp32_path)
    summary = quantization_summary(int8_path)
    assert summary.quantized["Conv"] == fp32_ops["Conv"] == 2
    assert summary.quantized["Gemm"] == fp32_ops.get("Gemm", 0) == 1
    assert summary.unquantized == {"Conv": 0, "MatMul": 0, "Gemm": 0}
    assert summary.fraction_quantized() == 1.0
    assert op_counts(int8_path)["DequantizeLinear"] == summary.dequantize_linear_nodes > 0
    assert onnx.load(str(int8_path)).ir_version <= max_supported_ir_version()


def test_dynamic_int8_linear_stack_agrees(tmp_path: Path) -> None:
    torch.manual_seed(0)
    stack = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, 16)).eval()
    tokens = torch.randn(4, 10, 64)  # 3-D input: Linear exports as MatMul + Add
    fp32_path = export_onnx(stack, tokens, tmp_path / "fp32.onnx")
    int8_path = quantize_dynamic_int8(fp32_path, tmp_path / "int8.onnx")
    (int8_out,) = ort_run(int8_path, {"input": tokens.numpy()})
    with torch.no_grad():
        expected = stack(tokens).numpy()
    relative_error = np.linalg.norm(int8_out - expected) / np.linalg.norm(expected)
    assert relative_error < 0.03
    summary = quantization_summary(int8_path)
    assert summary.quantized["MatMul"] == op_counts(fp32_path)["MatMul"] == 3
    assert summary.unquantized["MatMul"] == 0


def test_calibration_reader_formats(trained_classifier: dict) -> None:
    path, x = trained_classifier["path"], trained_classifier["train_x"][:6]
    batches = [x[:2], (x[2:4],), {"input": x[4:6].double().numpy(), "unused": 0}]
    reader = CalibrationReader(batches, path)
    feeds = [reader.get_next() for _ in range(3)]
    assert reader.get_next() is None
    for feed, expected in zip(feeds, (x[:2], x[2:4], x[4:6])):
        assert list(feed) == ["input"] and feed["input"].dtype == np.float32
        np.testing.assert_allclose(feed["input"], expected.numpy(), rtol=1e-6)
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["input"], feeds[0]["input"])
    limited = CalibrationReader(batches, path, max_batches=2)
    assert [limited.get_next() is None for _ in range(3)] == [False, False, True]


def test_int8_bad_inputs(trained_classifier: dict, tmp_path: Path) -> None:
    path = trained_classifier["path"]
    with pytest.raises(ValueError, match="calibration iterable yielded no batches"):
        quantize_static_int8(path, tmp_path / "q.onnx", [])
    with pytest.raises(ValueError, match="calibration iterable yielded no batches"):
        quantize_static_int8(path, tmp_path / "q.onnx", iter(()))
    with pytest.raises(FileNotFoundError, match="absent.onnx"):
        quantize_static_int8(tmp_path / "absent.onnx", tmp_path / "q.onnx", [torch.randn(1, 1, 8, 8)])
    with pytest.raises(FileNotFoundError, match="absent.onnx"):
        quantize_dynamic_int8(tmp_path / "absent.onnx", tmp_path / "q.onnx")
    with pytest.raises(ValueError, match="calibrate_method must be one of"):
        quantize_static_int8(path, tmp_path / "q.onnx", [torch.randn(1, 1, 8, 8)], calibrate_method="kl")
    with pytest.raises(ValueError, match="weight_type must be one of"):
        quantize_static_int8(path, tmp_path / "q.onnx", [torch.randn(1, 1, 8, 8)], weight_type="int7")
    assert not (tmp_path / "q.onnx").exists()


def _quantize_scales(path: Path) -> dict[str, float]:
    """Scale of every activation QuantizeLinear, keyed by the tensor it quantizes."""
    model = onnx.load(str(path))
    inits = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    return {node.input[0]: float(inits[node.input[1]]) for node in model.graph.node
            if node.op_type == "QuantizeLinear" and node.input[1] in inits and inits[node.input[1]].size == 1}


def test_export_static_int8_pairs_tensors_and_batch_modes(trained_classifier: dict, tmp_path: Path) -> None:
    model, train_x, test_x = trained_classifier["model"], trained_classifier["train_x"], trained_classifier["test_x"]
    batches = [train_x[i:i + 64] for i in range(0, 256, 64)]
    labels = torch.zeros(64, dtype=torch.long)
    tensors = export_static_int8(model, tmp_path / "tensors.onnx", batches, fp32_path=tmp_path / "fp32.onnx")
    pairs = export_static_int8(model, tmp_path / "pairs.onnx", [(batch, labels) for batch in batches])
    assert tensors.read_bytes() == pairs.read_bytes()
    assert (tmp_path / "fp32.onnx").is_file()  # kept where asked
    assert quantization_summary(tensors).fraction_quantized() == 1.0
    (logits,) = ort_run(tensors, {"input": test_x.numpy()})  # the symbolic batch axis takes 1,000 images
    with torch.no_grad():
        reference = model(test_x).argmax(1).numpy()
    assert (logits.argmax(1) == reference).mean() >= 0.95
    # One image per step over a batch-1 graph sees the same minima and maxima, so the same min-max grids.
    fixed = export_static_int8(model, tmp_path / "fixed.onnx", batches, dynamic_batch=False, check=False)
    dims = onnx.load(str(fixed)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 1, 8, 8]
    fixed_scales, dynamic_scales = _quantize_scales(fixed), _quantize_scales(tensors)
    assert len(dynamic_scales) >= 4 and len(fixed_scales) == len(dynamic_scales)  # (the logits' name differs)
    assert sorted(fixed_scales.values()) == pytest.approx(sorted(dynamic_scales.values()), rel=1e-6)


@pytest.mark.parametrize(("calibration", "options", "message"), [
    ([], {}, "calibration is empty"),
    (torch.randn(4, 1, 8, 8), {}, "iterable of image batches, got Tensor"),
    ([("images", "labels")], {}, "calibration item 0 is str"),
    ([torch.randn(2, 1, 8, 8), torch.zeros(2, 1, 8, 8, dtype=torch.long)], {}, "item 1 is torch.int64 tensor"),
    ([torch.randn(2, 1, 8, 8)], {"quant_format": "qint"}, "quant_format must be one of"),
    ([torch.randn(2, 1, 8, 8)], {"calibrate_method": "kl"}, "calibrate_method must be one of"),
    ([torch.randn(2, 1, 8, 8)], {"max_batches": 0}, "max_batches must be >= 1"),
    ([torch.randn(2, 1, 8, 8)], {"example": torch.randn(2, 1, 8, 8), "dynamic_batch": False}, "expects batch 1"),
])
def test_export_static_int8_bad_inputs(trained_classifier: dict, tmp_path: Path, calibration, options,
                                       message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        export_static_int8(trained_classifier["model"], tmp_path / "q.onnx", calibration, **options)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "q.onnx").exists()


class _MatrixNorm(nn.Module):
    """A LayerNorm over (channels, positions): its bias is 2-D, which onnxruntime's int32-bias adjustment trips on."""

    def __init__(self, positions: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.LayerNorm([4, positions])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x).flatten(2))


def test_export_static_int8_retries_without_int32_bias_adjustment(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model, calibration = _MatrixNorm(positions=4).eval(), [torch.randn(2, 3, 4, 4) for _ in range(2)]
    fp32 = export_onnx(model, calibration[0], tmp_path / "fp32.onnx")
    with pytest.raises(ValueError, match="truth value of an array"):  # the graph does need the retry
        quantize_static_int8(fp32, tmp_path / "plain.onnx", calibration)
    with caplog.at_level("WARNING", logger="moonlit.common.export.int8"):
        path = export_static_int8(model, tmp_path / "int8.onnx", calibration, check=False)
    assert "retrying with QDQDisableWeightAdjustForInt32Bias" in caplog.text
    assert quantization_summary(path).quantized["Conv"] == 1
    (out,) = ort_run(path, {"input": calibration[0].numpy()})
    with torch.no_grad():
        expected = model(calibration[0]).numpy()
    assert np.linalg.norm(out - expected) / np.linalg.norm(expected) < 0.1


def test_export_static_int8_says_when_the_retried_model_does_not_run(tmp_path: Path) -> None:
    # After the retry onnxruntime 1.31 gives a non-square 2-D normalization bias (4, 36) per-channel scales
    # that do not fit its axis, and its DequantizeLinear refuses them at run time (a square one runs, above).
    torch.manual_seed(0)
    model, calibration = _MatrixNorm(positions=36).eval(), [torch.randn(2, 3, 8, 8)]
    with pytest.raises(RuntimeError, match="does not run in onnxruntime.*per_channel=False"):
        export_static_int8(model, tmp_path / "int8.onnx", calibration, per_channel=True, check=False)
    assert not (tmp_path / "int8.onnx").exists()


def test_quantization_summary_on_handmade_graph() -> None:
    def dq(name: str) -> onnx.NodeProto:
        return onnx.helper.make_node("DequantizeLinear", [f"{name}_q", "s", "z"], [name])

    nodes = [
        dq("x"), dq("w"), dq("b"),
        onnx.helper.make_node("Conv", ["x", "w", "b"], ["c1"]),  # all inputs from DQ: quantized
        onnx.helper.make_node("Identity", ["b"], ["b_copy"]),
        onnx.helper.make_node("Conv", ["x", "w", "b_copy"], ["c2"]),  # bias via Identity: float
        onnx.helper.make_node("Conv", ["c1", "w_float"], ["c3"]),  # float weights
        onnx.helper.make_node("QLinearMatMul", list("abcdefgh"), ["m1"]),
        onnx.helper.make_node("MatMulInteger", ["p", "q"], ["m2"]),
        onnx.helper.make_node("MatMul", ["c3", "w_float"], ["m3"]),
        onnx.helper.make_node("QuantizeLinear", ["m3", "s", "z"], ["out"]),
    ]
    graph = onnx.helper.make_graph(nodes, "g", [], [])
    summary = quantization_summary(onnx.helper.make_model(graph))
    assert summary.quantized == {"Conv": 1, "MatMul": 2, "Gemm": 0}
    assert summary.unquantized == {"Conv": 2, "MatMul": 1, "Gemm": 0}
    assert (summary.quantize_linear_nodes, summary.dequantize_linear_nodes) == (1, 3)
    assert summary.fraction_quantized("MatMul") == pytest.approx(2 / 3)
    assert summary.fraction_quantized() == pytest.approx(3 / 6)


def test_export_static_int8_keeps_excluded_nodes_float(trained_classifier: dict, tmp_path: Path) -> None:
    model, train_x = trained_classifier["model"], trained_classifier["train_x"]
    batches = [train_x[i:i + 64] for i in range(0, 128, 64)]
    full = export_static_int8(model, tmp_path / "full.onnx", batches, fp32_path=tmp_path / "fp32.onnx")
    convs = [node.name for node in onnx.load(str(tmp_path / "fp32.onnx")).graph.node if node.op_type == "Conv"]
    assert convs
    mixed = export_static_int8(model, tmp_path / "mixed.onnx", batches, nodes_to_exclude=convs[:1])
    full_summary, mixed_summary = quantization_summary(full), quantization_summary(mixed)
    assert full_summary.quantized["Conv"] == len(convs) and full_summary.unquantized.get("Conv", 0) == 0
    assert mixed_summary.quantized["Conv"] == len(convs) - 1 and mixed_summary.unquantized["Conv"] == 1
    with pytest.raises(InputError, match="nodes_to_exclude names \\['no_such_conv'\\]"):
        export_static_int8(model, tmp_path / "bad.onnx", batches, nodes_to_exclude=["no_such_conv"])
    assert not (tmp_path / "bad.onnx").exists()
