"""ONNX → LitePred prediction on broken files: every input ends in a finite positive latency or an InputError.

Three tiny torch models (a CNN with a residual, an attention block, an SE block) are exported once;
the properties mutate their bytes (truncation, flips, insertions, deletions) or their protobuf
fields (dims, op types, attributes, edges, dtypes, weights) and predict with a synthetic
predictor. Named cases check that the error names the file and what was wrong.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper
from torch import nn

from moonlit.common.errors import InputError
from moonlit.common.export.onnx import export_onnx
from moonlit.litepred.pipeline import timed_predict_onnx
from moonlit.litepred.predict.predictor import PlatformPredictor


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.BatchNorm2d(8), nn.Hardswish())
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.dw(x)
        return self.head(x.mean((2, 3)))


class TinyAttention(nn.Module):
    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attention = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(-1)
        x = x + self.proj((attention @ v).transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(x)


class TinySE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 1)
        self.reduce, self.expand = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        gate = torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
        return self.pool(x * gate)


MODELS = {"cnn": (TinyCNN, (1, 3, 8, 8)), "attention": (TinyAttention, (1, 4, 8)), "se": (TinySE, (1, 4, 6, 6))}


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("fuzz-models")
    files = {}
    for name, (cls, shape) in MODELS.items():
        torch.manual_seed(0)
        path = export_onnx(cls().eval(), (torch.randn(*shape),), folder / f"{name}.onnx", check=False)
        files[name] = path.read_bytes()
    return files


@pytest.fixture(scope="module")
def predictor(synthetic_predictor: PlatformPredictor) -> PlatformPredictor:
    return synthetic_predictor


def _predict_or_input_error(predictor: PlatformPredictor, path: Path) -> str:
    """'ok' for a finite positive prediction, 'input' for an InputError; anything else fails the test."""
    try:
        result = timed_predict_onnx(predictor, path, "debug")
    except InputError as error:
        assert str(error) and "\n" not in str(error)
        return "input"
    latency = result["latency_ms"]
    assert np.isfinite(latency) and latency > 0, f"prediction {latency} for {path}"
    return "ok"


def test_the_unmutated_models_predict(onnx_files, predictor, tmp_path) -> None:
    for name, data in onnx_files.items():
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(data)
        result = timed_predict_onnx(predictor, path, "debug")
        assert result["latency_ms"] > 0 and not result["unassigned_nodes"] and not result["unpredicted_kernels"]


def test_byte_mutations_give_a_prediction_or_an_input_error(onnx_files, predictor, tmp_path, fuzz_settings) -> None:
    path = tmp_path / "mutated.onnx"

    @fuzz_settings
    @given(st.sampled_from(sorted(MODELS)), st.sampled_from(["truncate", "flip", "insert", "delete", "zeros"]),
           st.integers(0, 2**31), st.binary(min_size=1, max_size=8))
    def check(name: str, kind: str, position: int, noise: bytes) -> None:
        data = bytearray(onnx_files[name])
        at = position % len(data)
        if kind == "truncate":
            data = data[:at]
        elif kind == "flip":
            data[at: at + len(noise)] = noise[: len(data) - at]
        elif kind == "insert":
            data[at:at] = noise
        elif kind == "delete":
            del data[at: at + len(noise)]
        else:
            data[at: at + 16] = bytes(len(data[at: at + 16]))
        path.write_bytes(bytes(data))
        _predict_or_input_error(predictor, path)

    check()


def _mutate(model: onnx.ModelProto, kind: str, pick: int, value: int) -> None:
    """One protobuf-level edit of ``model``; ``pick`` chooses where, ``value`` the new number."""
    graph = model.graph
    node = graph.node[pick % len(graph.node)]
    numbers = [0, -1, 1, 2, 3, 7, 1000, value]
    if kind == "input_dim":
        dims = graph.input[0].type.tensor_type.shape.dim
        dim = dims[pick % len(dims)]
        if value % 5 == 0:
            dim.dim_param = "N"
        else:
            dim.dim_value = numbers[value % len(numbers)]
    elif kind == "op_type":
        node.op_type = ["Conv", "Relu", "Add", "MatMul", "Softmax", "Reshape", "Transpose", "Gemm", "Concat",
                        "LayerNormalization", "GlobalAveragePool", "Slice", "NotAnOp"][value % 13]
    elif kind == "attribute" and node.attribute:
        attribute = node.attribute[value % len(node.attribute)]
        if attribute.ints:
            attribute.ints[pick % len(attribute.ints)] = numbers[value % len(numbers)]
        elif attribute.type == onnx.AttributeProto.INT:
            attribute.i = numbers[value % len(numbers)]
        elif attribute.type == onnx.AttributeProto.FLOAT:
            attribute.f = [0.0, -1.0, float("nan"), 1e30][value % 4]
    elif kind == "drop_node":
        del graph.node[pick % len(graph.node)]
    elif kind == "rewire" and node.input:
        names = [output for n in graph.node for output in n.output] + ["dangling", ""]
        node.input[value % len(node.input)] = names[pick % len(names)]
    elif kind == "dtype":
        graph.input[0].type.tensor_type.elem_type = [0, 2, 3, 6, 7, 8, 9, 10, 11, 14, 16, 99][value % 12]
    elif kind == "weight_dim" and graph.initializer:
        tensor = graph.initializer[pick % len(graph.initializer)]
        if tensor.dims:
            tensor.dims[value % len(tensor.dims)] = numbers[value % len(numbers)]
    elif kind == "swap_nodes":
        other = graph.node[value % len(graph.node)]
        first, second = copy.deepcopy(node), copy.deepcopy(other)
        node.CopyFrom(second)
        other.CopyFrom(first)


def test_protobuf_mutations_give_a_prediction_or_an_input_error(onnx_files, predictor, tmp_path,
                                                                fuzz_settings) -> None:
    protos = {name: onnx.load_from_string(data) for name, data in onnx_files.items()}
    path = tmp_path / "mutated.onnx"
    kinds = ["input_dim", "op_type", "attribute", "drop_node", "rewire", "dtype", "weight_dim", "swap_nodes"]

    @fuzz_settings
    @given(st.sampled_from(sorted(MODELS)),
           st.lists(st.tuples(st.sampled_from(kinds), st.integers(0, 10**6), st.integers(-(10**6), 10**6)),
                    min_size=1, max_size=3))
    def check(name: str, edits: list[tuple[str, int, int]]) -> None:
        model = copy.deepcopy(protos[name])
        for kind, pick, value in edits:
            _mutate(model, kind, pick, value)
        path.write_bytes(model.SerializeToString())
        _predict_or_input_error(predictor, path)

    check()


# ---- named cases: the error names the file and what was wrong -------------------------------------


def _conv_model(batch: int | str = 1, elem_type: int = TensorProto.FLOAT, **conv_attrs) -> onnx.ModelProto:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.ones(4 * 27, np.float32))
    attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], **conv_attrs}
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs),
             helper.make_node("Relu", ["y"], ["z"], name="relu")]
    x = helper.make_tensor_value_info("x", elem_type, [batch, 3, 8, 8])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, None)
    return helper.make_model(helper.make_graph(nodes, "g", [x], [z], [weight]),
                             opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _write(tmp_path: Path, data: bytes | onnx.ModelProto, name: str = "model.onnx") -> Path:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.SerializeToString())
    return path


@pytest.mark.parametrize("data, message", [
    (b"", "no graph nodes"),
    (b"not an onnx model, just text\n", "not a readable ONNX model|no graph nodes"),
    (b"\xff\xfe\x00garbage\x12\x34", "not a readable ONNX model"),
])
def test_non_onnx_files_are_input_errors(tmp_path, predictor, data: bytes, message: str) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(InputError, match=message) as caught:
        timed_predict_onnx(predictor, path, "debug")
    assert str(path) in str(caught.value)


def test_truncated_file_keeps_the_decode_error_as_cause(tmp_path, predictor, onnx_files) -> None:
    path = _write(tmp_path, onnx_files["cnn"][: len(onnx_files["cnn"]) // 2])
    with pytest.raises(InputError, match="not a readable ONNX model") as caught:
        timed_predict_onnx(predictor, path, "debug")
    assert isinstance(caught.value.__cause__, DecodeError) and str(path) in str(caught.value)


def test_model_errors_name_the_field(tmp_path, predictor) -> None:
    cases = {
        "zero_batch": (_conv_model(batch=0), r"graph input 'x' has shape \[0, 3, 8, 8\] with a zero-sized dimension"),
        "symbolic_batch": (_conv_model(batch="N"), r"'x' has dynamic shape \['N', 3, 8, 8\].*input_shapes"),
        "string_input": (_conv_model(elem_type=TensorProto.STRING), "element type STRING; expected one of"),
        "negative_kernel": (_conv_model(strides=[0, 1]), r"strides \[0, 1\]; expected ints >= 1|breaks|could not infer"),
        "bad_group": (_conv_model(group=2), "group=2|could not infer|shape inference failed"),
    }
    dangling = _conv_model()
    dangling.graph.node[1].input[0] = "nowhere"
    cases["dangling"] = (dangling, "node 'relu' \\(Relu\\) reads 'nowhere', which no node")
    cyclic = _conv_model()
    cyclic.graph.node[0].input[0] = "z"
    cases["cycle"] = (cyclic, "cycle")
    twice = _conv_model()
    twice.graph.node[1].output[0] = "y"
    cases["written_twice"] = (twice, "tensor 'y' is written by node 'relu'")
    short_weight = _conv_model()
    short_weight.graph.initializer[0].raw_data = b"\0" * 8
    del short_weight.graph.initializer[0].float_data[:]
    cases["short_weight"] = (short_weight, "weight 'w' holds 8 bytes; its shape \\[4, 3, 3, 3\\] of FLOAT needs 432")
    unknown_op = _conv_model()
    unknown_op.graph.node[1].op_type = "Relux"
    cases["unknown_op"] = (unknown_op, "node 'relu' \\(Relux\\) breaks its op's schema: No Op registered for Relux")
    no_opset = _conv_model()
    del no_opset.opset_import[:]
    no_opset.opset_import.append(helper.make_opsetid("com.example", 1))
    cases["no_opset"] = (no_opset, "imports no default-domain opset")
    # a Reshape whose target shape is a graph input: no static shape exists for its output
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    target = helper.make_tensor_value_info("target", TensorProto.INT64, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    cases["missing_shapes"] = (helper.make_model(
        helper.make_graph([helper.make_node("Reshape", ["x", "target"], ["r"], name="reshape"),
                           helper.make_node("Relu", ["r"], ["y"], name="relu")], "g", [x, target], [y]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8), r"could not infer static shapes for 2 tensors")
    for name, (model, message) in cases.items():
        path = _write(tmp_path, model, f"{name}.onnx")
        with pytest.raises(InputError, match=message) as caught:
            timed_predict_onnx(predictor, path, "debug")
        assert str(caught.value).startswith(f"{path}: "), name
    # the symbolic batch predicts once its size is given, and equals the fixed-batch model's prediction
    fixed = timed_predict_onnx(predictor, _write(tmp_path, _conv_model(batch=2), "fixed.onnx"), "debug")
    given_shape = timed_predict_onnx(predictor, tmp_path / "symbolic_batch.onnx", "debug", {"x": [2, 3, 8, 8]})
    assert given_shape["latency_ms"] == fixed["latency_ms"] > 0
    with pytest.raises(InputError, match=r"input_shapes\['x'\] = \[0, 3, 8, 8\] must be positive"):
        timed_predict_onnx(predictor, tmp_path / "symbolic_batch.onnx", "debug", {"x": [0, 3, 8, 8]})


def test_unnamed_nodes_and_the_explicit_default_domain_are_valid(tmp_path, predictor) -> None:
    model = _conv_model()
    for node in model.graph.node:
        node.name = ""
    model.graph.node[1].domain = "ai.onnx"
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("ai.onnx", 17))
    result = timed_predict_onnx(predictor, _write(tmp_path, model), "debug")
    assert result["latency_ms"] > 0 and result["kernels"] == 1 and not result["unassigned_nodes"]
    model.graph.node[1].input[0] = "nowhere"
    with pytest.raises(InputError, match="node '#1' \\(Relu\\) reads 'nowhere'"):
        timed_predict_onnx(predictor, _write(tmp_path, model, "dangling.onnx"), "debug")


def test_predict_app_on_a_corrupt_file_is_an_input_error(tmp_path, predictor, onnx_files) -> None:
    from moonlit.common.config import compose_config
    from moonlit.litepred.apps import predict

    predictor.save(tmp_path / "predictor")
    path = _write(tmp_path, onnx_files["se"][:100], "cut.onnx")
    cfg = compose_config("litepred", "litepred", ["platform=debug", f"work_dir={tmp_path}", f"model={path}",
                                                  f"predictor_dir={tmp_path / 'predictor'}"])
    with pytest.raises(InputError, match="cut.onnx is not a readable ONNX model"):
        predict.run(cfg)
