"""ONNX → Graph IR: loading, shape inference (checked against onnxruntime), static tensors, errors."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from moonlit.common.export.onnx import export_onnx, lower_ir_version
from moonlit.litepred.graph.ir import Graph
from moonlit.litepred.graph.onnx_import import graph_from_torch, load_graph


def _model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return lower_ir_version(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def _conv_relu_model(batch: int | str = 1) -> onnx.ModelProto:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [16, 3, 3, 3], np.zeros(16 * 27, np.float32))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["y"], ["z"], name="relu"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 15, 17])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, None)
    return _model(nodes, [x], [z], [weight])


def test_conv_shapes_follow_the_conv_formula(tmp_path):
    path = tmp_path / "conv.onnx"
    onnx.save(_conv_relu_model(), str(path))
    for source in (path, str(path), onnx.load(str(path))):
        graph = load_graph(source)
        # floor((15 + 2 - 3) / 2) + 1 = 8, floor((17 + 2 - 3) / 2) + 1 = 9
        assert graph.shape("y") == (1, 16, 8, 9) == graph.shape("z")
        assert graph.initializers == {"w": (16, 3, 3, 3)}
        assert graph.inputs == ("x",) and graph.outputs == ("z",)
        assert [n.name for n in graph.nodes] == ["conv", "relu"]
        assert graph.node("conv").attrs["strides"] == [2, 2]
        assert graph.producer("y").name == "conv" and [n.name for n in graph.consumers("y")] == ["relu"]
        assert graph.numel("z") == 16 * 8 * 9


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        load_graph(tmp_path / "missing.onnx")
    with pytest.raises(TypeError, match="int"):
        load_graph(3)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="nope"):
        load_graph(_conv_relu_model()).node("nope")


def test_dynamic_inputs_need_input_shapes():
    dynamic = _conv_relu_model(batch="N")
    with pytest.raises(ValueError, match=r"'x' has dynamic shape \['N', 3, 15, 17\].*input_shapes"):
        load_graph(dynamic)
    graph = load_graph(dynamic, input_shapes={"x": (4, 3, 15, 17)})
    assert graph.shape("z") == (4, 16, 8, 9)
    with pytest.raises(ValueError, match="not graph inputs"):
        load_graph(dynamic, input_shapes={"y": (1, 3, 15, 17)})
    with pytest.raises(ValueError, match="rank 3 but the graph input has rank 4"):
        load_graph(dynamic, input_shapes={"x": (1, 15, 17)})
    with pytest.raises(ValueError, match="conflicts"):
        load_graph(_conv_relu_model(batch=1), input_shapes={"x": (2, 3, 15, 17)})


def test_unresolvable_shapes_are_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    node = helper.make_node("Mystery", ["x"], ["y"], name="m", domain="custom.domain")
    model = helper.make_model(
        helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.domain", 1)],
    )
    with pytest.raises(ValueError, match=r"could not infer static shapes for 1 tensors, e.g. \['y'\]"):
        load_graph(model)
    assert list(tmp_path.iterdir()) == []  # onnxruntime's failure dump went to a temporary directory


class _Tokens(nn.Module):
    """Conv → flatten(2).transpose → Linear: the exporter writes Shape→Slice→Concat→Reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 4, 4)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        return self.fc(torch.cat([tokens[:, :1] * 2.0, tokens], dim=1))


def test_every_shape_matches_onnxruntime(tmp_path):
    path = export_onnx(_Tokens().eval(), torch.randn(1, 3, 16, 12), tmp_path / "tokens.onnx")
    graph = load_graph(path)
    # Expose every node output of the inferred model as a graph output and run it.
    model = graph.model
    names = [out for node in model.graph.node for out in node.output if out]
    infos = {info.name: info for info in model.graph.value_info}
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(infos[name] for name in names if name not in known)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(None, {"input": np.random.rand(1, 3, 16, 12).astype(np.float32)})
    checked = 0
    for info, value in zip(session.get_outputs(), values):
        assert graph.shape(info.name) == tuple(value.shape), info.name
        checked += 1
    assert checked == len(names)
    assert graph.shape(names[-1]) == (1, 13, 5)  # 4x3 patches + the duplicated first token


def test_static_tensors_and_folded_values(tmp_path):
    path = export_onnx(_Tokens().eval(), torch.randn(1, 3, 16, 12), tmp_path / "tokens.onnx")
    graph = load_graph(path)
    shape_nodes = [n for n in graph.nodes if n.op_type == "Shape"]
    assert shape_nodes, "the exporter should compute the reshape target at run time"
    for node in shape_nodes:
        assert graph.is_static(node.outputs[0])
        np.testing.assert_array_equal(graph.value(node.outputs[0]), graph.shape(node.inputs[0]))
    reshape = next(n for n in graph.nodes if n.op_type == "Reshape")
    np.testing.assert_array_equal(graph.value(reshape.inputs[1]), [1, 8, -1])  # Concat(Slice(Shape), [-1])
    assert not graph.is_static(reshape.outputs[0]) and graph.value(reshape.outputs[0]) is None
    weight = graph.node("/proj/Conv").inputs[1]
    assert graph.is_static(weight) and graph.value(weight).shape == (8, 3, 4, 4)


def test_topological_order_and_cycles():
    nodes = [helper.make_node("Relu", ["a"], ["b"], name="second"), helper.make_node("Neg", ["x"], ["a"], name="first")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])
    a_info = helper.make_tensor_value_info("a", TensorProto.FLOAT, [2])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [b], value_info=[a_info]))
    assert [n.name for n in Graph(model).nodes] == ["first", "second"]
    cyclic = [helper.make_node("Relu", ["b"], ["a"], name="r1"), helper.make_node("Neg", ["a"], ["b"], name="r2")]
    with pytest.raises(ValueError, match="cycle"):
        Graph(helper.make_model(helper.make_graph(cyclic, "g", [x], [b])))


def test_graph_from_torch_folds_batchnorm(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    graph = graph_from_torch(model, torch.randn(1, 3, 8, 8), path=tmp_path / "cbr.onnx")
    assert (tmp_path / "cbr.onnx").is_file()
    assert [n.op_type for n in graph.nodes] == ["Conv", "Relu"]
    assert graph.shape(graph.outputs[0]) == (1, 8, 8, 8)
    assert model.training  # export restores the module's mode
