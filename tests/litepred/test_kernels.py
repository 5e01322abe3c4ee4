"""Kernel detection on hand-built graphs with known answers, timm models, platforms and rule files."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest
import timm
import torch
from onnx import TensorProto, helper
from torch import nn

from moonlit.common.export.onnx import export_onnx, lower_ir_version
from moonlit.common.profiling.flops import count_macs
from moonlit.litepred.graph.ir import Graph
from moonlit.litepred.graph.onnx_import import graph_from_torch, load_graph
from moonlit.litepred.kernels.detect import (
    KernelConfig,
    detect_kernels,
    load_platform_rules,
)
from moonlit.litepred.kernels.fusion import RuleError, available_platforms

PLATFORMS = ("base", "ort-fp32", "ort-fp32-noopt", "ort-int8", "torch-fp32")


def conv(**overrides) -> KernelConfig:
    params = dict(batch=1, h=8, w=8, cin=16, cout=16, kh=3, kw=3, sh=1, sw=1, ph=1, pw=1, dh=1, dw=1,
                  groups=1, hout=8, wout=8, act="none", residual="none")
    return KernelConfig("conv", {**params, **overrides})


def nchw(kind: str, **params) -> KernelConfig:
    return KernelConfig(kind, params)


def assert_complete(graph: Graph, detection) -> None:
    names = [n for k in detection.kernels for n in k.nodes] + [n for n, _ in detection.free] + \
            [u.node for u in detection.unassigned]
    assert sorted(names) == sorted(node.name for node in graph.nodes)


# ---- hand-built torch nets -----------------------------------------------------------------
def test_conv_bn_relu():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
    graph = graph_from_torch(model, torch.randn(1, 3, 32, 32))
    expected = conv(h=32, w=32, cin=3, sh=2, sw=2, hout=16, wout=16, act="relu")
    assert detect_kernels(graph, "base").configs() == [expected]
    assert detect_kernels(graph, "ort-fp32").configs() == [expected]
    assert detect_kernels(graph, "ort-fp32-noopt").configs() == [
        expected.replace(act="none"), nchw("act", batch=1, c=16, h=16, w=16, act="relu")]


class BasicBlock(nn.Module):
    def __init__(self, post_act: bool = False) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.post_act = post_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y) + x if self.post_act else torch.relu(y + x)


def test_residual_block_per_platform():
    graph = graph_from_torch(BasicBlock(), torch.randn(1, 16, 8, 8))
    fused = [conv(act="relu"), conv(act="relu", residual="pre_act")]
    assert detect_kernels(graph, "base").configs() == fused
    assert detect_kernels(graph, "ort-fp32").configs() == fused
    relu = nchw("act", batch=1, c=16, h=8, w=8, act="relu")
    add = nchw("add", batch=1, c=16, h=8, w=8, op="add", bcast="none", act="none")
    assert detect_kernels(graph, "ort-fp32-noopt").configs() == [conv(), relu, conv(), add, relu]
    # The shortcut added after the activation: base fuses it, onnxruntime does not.
    graph = graph_from_torch(BasicBlock(post_act=True), torch.randn(1, 16, 8, 8))
    assert detect_kernels(graph, "base").configs() == [conv(act="relu"), conv(act="relu", residual="post_act")]
    assert detect_kernels(graph, "ort-fp32").configs() == [conv(act="relu"), conv(act="relu"), add]


class SEConvBlock(nn.Module):
    """conv+hswish → timm-style SE (mean, 1x1 conv, relu, 1x1 conv, hardsigmoid, mul) → conv."""

    def __init__(self, fc_se: bool = False) -> None:
        super().__init__()
        self.conv_in, self.conv_out = nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 8, 1)
        self.fc_se = fc_se
        if fc_se:
            self.reduce, self.expand = nn.Linear(16, 4), nn.Linear(4, 16)
        else:
            self.reduce, self.expand = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.hardswish(self.conv_in(x))
        if self.fc_se:
            s = x.mean((2, 3))
            s = torch.sigmoid(self.expand(torch.relu(self.reduce(s)))).view(-1, 16, 1, 1)
        else:
            s = nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
        return self.conv_out(x * s)


@pytest.mark.parametrize("fc_se", [False, True])
def test_se_block(fc_se):
    graph = graph_from_torch(SEConvBlock(fc_se), torch.randn(1, 8, 12, 12))
    gate = "sigmoid" if fc_se else "hsigmoid"
    expected = [conv(h=12, w=12, cin=8, hout=12, wout=12, act="hswish"),
                nchw("se", batch=1, c=16, h=12, w=12, mid=4, act="relu", gate=gate),
                conv(h=12, w=12, cout=8, kh=1, kw=1, ph=0, pw=0, hout=12, wout=12)]
    detection = detect_kernels(graph, "base")
    assert detection.configs() == expected and not detection.unassigned
    assert_complete(graph, detection)


def test_se_block_split_without_fusion():
    graph = graph_from_torch(SEConvBlock(), torch.randn(1, 8, 12, 12))
    types = [k.config.type for k in detect_kernels(graph, "ort-fp32-noopt").kernels]
    assert types == ["conv", "act", "gap", "conv", "act", "conv", "act", "add", "conv"]
    gate_mul = detect_kernels(graph, "ort-fp32-noopt").configs("add")[0]
    assert gate_mul.params["op"] == "mul" and gate_mul.params["bcast"] == "channel"


class TinyViT(nn.Module):
    """Patch embedding + one pre-norm transformer block (explicit attention, GELU MLP)."""

    def __init__(self, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


def test_tiny_vit_block():
    graph = graph_from_torch(TinyViT(), torch.randn(1, 3, 16, 16))
    detection = detect_kernels(graph, "base")
    assert not detection.unassigned
    assert_complete(graph, detection)
    main = [k.config for k in detection.kernels if k.config.type != "layout"]
    fc = lambda cin, cout, act="none": nchw("fc", batch=1, tokens=16, cin=cin, cout=cout, act=act)
    residual = nchw("add", batch=1, c=32, h=16, w=1, op="add", bcast="none", act="none")
    layernorm = nchw("layernorm", rows=16, dim=32)
    assert main == [
        nchw("patch_embed", batch=1, h=16, w=16, cin=3, cout=32, kh=4, kw=4, hout=4, wout=4),
        layernorm, fc(32, 96),
        nchw("attention", batch=1, heads=2, q_tokens=16, kv_tokens=16, qk_dim=16, v_dim=16, bias=0),
        fc(32, 32), residual, layernorm, fc(32, 64, "gelu"), fc(64, 32), residual,
    ]
    attention = detection.kernels[[k.config.type for k in detection.kernels].index("attention")]
    assert sorted(graph.node(n).op_type for n in attention.nodes) == ["MatMul", "MatMul", "Mul", "Softmax", "Transpose"]
    layouts = [k.config for k in detection.kernels if k.config.type == "layout"]
    assert layouts[0].params["attr"] == "perm=2,0,3,1,4" and layouts[-1].params["attr"] == "perm=0,2,1,3"
    # onnxruntime: FusedMatMul absorbs the scale, softmax and GELU stay separate.
    ort_types = [k.config.type for k in detect_kernels(graph, "ort-fp32").kernels if k.config.type != "layout"]
    assert ort_types == ["patch_embed", "layernorm", "fc", "matmul", "softmax", "matmul", "fc", "add",
                         "layernorm", "fc", "act", "fc", "add"]


# ---- graphs built with onnx.helper ---------------------------------------------------------
def _const(name: str, value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"const_{name}",
                            value=helper.make_tensor(name, TensorProto.FLOAT, [], [float(value)]))


def _model(nodes, x_shape, inits=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
                              initializer=list(inits))
    return lower_ir_version(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def _decomposed_layernorm_gelu(opset: int) -> onnx.ModelProto:
    axes = dict(axes=[-1]) if opset < 18 else {}
    axes_input = [] if opset < 18 else ["axes"]
    inits = [helper.make_tensor("gamma", TensorProto.FLOAT, [16], np.ones(16)),
             helper.make_tensor("beta", TensorProto.FLOAT, [16], np.zeros(16))]
    if opset >= 18:
        inits.append(helper.make_tensor("axes", TensorProto.INT64, [1], [-1]))
    nodes = [
        _const("two", 2.0), _const("eps", 1e-5), _const("sqrt2", 1.4142135), _const("one", 1.0), _const("half", 0.5),
        helper.make_node("ReduceMean", ["x", *axes_input], ["mean"], name="mean", **axes),
        helper.make_node("Sub", ["x", "mean"], ["centered"], name="sub"),
        helper.make_node("Pow", ["centered", "two"], ["sq"], name="pow"),
        helper.make_node("ReduceMean", ["sq", *axes_input], ["var"], name="var", **axes),
        helper.make_node("Add", ["var", "eps"], ["var_eps"], name="add_eps"),
        helper.make_node("Sqrt", ["var_eps"], ["std"], name="sqrt"),
        helper.make_node("Div", ["centered", "std"], ["normed"], name="div"),
        helper.make_node("Mul", ["normed", "gamma"], ["scaled"], name="gamma_mul"),
        helper.make_node("Add", ["beta", "scaled"], ["ln"], name="beta_add"),  # operands swapped on purpose
        helper.make_node("Div", ["ln", "sqrt2"], ["g_div"], name="g_div"),
        helper.make_node("Erf", ["g_div"], ["g_erf"], name="g_erf"),
        helper.make_node("Add", ["one", "g_erf"], ["g_add"], name="g_add"),
        helper.make_node("Mul", ["ln", "g_add"], ["g_mul"], name="g_mul"),
        helper.make_node("Mul", ["g_mul", "half"], ["y"], name="g_half"),
    ]
    return _model(nodes, [1, 8, 16], inits, opset)


@pytest.mark.parametrize("opset", [17, 18])
def test_decomposed_layernorm_and_erf_gelu(opset):
    graph = load_graph(_decomposed_layernorm_gelu(opset))
    detection = detect_kernels(graph, "base")
    assert detection.configs() == [nchw("layernorm", rows=8, dim=16), nchw("act", batch=1, c=16, h=8, w=1, act="gelu")]
    assert [len(k.nodes) for k in detection.kernels] == [9, 5]
    assert sorted(n for n, _ in detection.free) == sorted(f"const_{c}" for c in ("two", "eps", "sqrt2", "one", "half"))
    assert not detection.unassigned


def test_gelu_with_wrong_constant_is_not_gelu():
    model = _decomposed_layernorm_gelu(17)
    for node in model.graph.node:
        if node.name == "const_half":
            node.attribute[0].t.CopyFrom(helper.make_tensor("half", TensorProto.FLOAT, [], [0.6]))
    types = [(k.config.type, k.config.params.get("op")) for k in detect_kernels(load_graph(model), "base").kernels]
    assert ("act", None) not in types and ("eltwise", "erf") in types


def _conv_bn_clip(clip_max: float) -> onnx.ModelProto:
    c = 4
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [c, 3, 3, 3], np.zeros(c * 27))] + [
        helper.make_tensor(name, TensorProto.FLOAT, [c], np.full(c, value))
        for name, value in (("scale", 1.0), ("bias", 0.0), ("mean", 0.0), ("var", 1.0))]
    nodes = [
        _const("lo", 0.0), _const("hi", clip_max),
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["y", "scale", "bias", "mean", "var"], ["z"], name="bn"),
        helper.make_node("Clip", ["z", "lo", "hi"], ["out"], name="clip"),
    ]
    return _model(nodes, [1, 3, 10, 10], inits)


def test_unfolded_batchnorm_and_clip_relu6():
    graph = load_graph(_conv_bn_clip(6.0))
    expected = conv(h=10, w=10, cin=3, cout=4, hout=10, wout=10, act="relu6")
    detection = detect_kernels(graph, "base")
    assert detection.configs() == [expected] and detection.kernels[0].nodes == ("conv", "bn", "clip")
    noopt = detect_kernels(graph, "ort-fp32-noopt")
    assert noopt.configs() == [expected.replace(act="none"), nchw("act", batch=1, c=4, h=10, w=10, act="relu6")]
    # Clip(0, 10) is no relu6: it stays an elementwise kernel.
    assert detect_kernels(load_graph(_conv_bn_clip(10.0)), "base").configs()[1] == \
        nchw("eltwise", batch=1, c=4, h=10, w=10, op="clip")


def test_unmatched_ops_are_reported_with_reasons():
    inits = [helper.make_tensor("wb", TensorProto.FLOAT, [2, 16, 4], np.zeros(128))]
    nodes = [helper.make_node("Hardmax", ["x"], ["h"], name="hardmax"),
             helper.make_node("MatMul", ["h", "wb"], ["y"], name="batched_const_matmul")]
    detection = detect_kernels(load_graph(_model(nodes, [2, 3, 16], inits)), "base")
    reasons = {u.node: u.reason for u in detection.unassigned}
    assert reasons["hardmax"] == "no rule of platform 'base' matches op 'Hardmax'"
    assert "rule 'fc' rejected it: weight of shape [2, 16, 4] is not a matrix" in reasons["batched_const_matmul"]
    assert detection.summary()["unassigned_ops"] == {"Hardmax": 1, "MatMul": 1}


def test_layout_slice_is_canonical():
    inits = [helper.make_tensor(name, TensorProto.INT64, [2], values) for name, values in
             (("starts", [0, -100]), ("ends", [2**63 - 1, 7]), ("axes", [2, 1]), ("steps", [2, 2]))]
    nodes = [helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"], name="slice")]
    detection = detect_kernels(load_graph(_model(nodes, [1, 7, 7, 8], inits)), "base")
    # Sorted by axis and clamped like Python's slice.indices: axis 1 [-100:7:2], axis 2 [0:max:2].
    assert detection.configs() == [nchw("layout", op="Slice", in_shape="1x7x7x8", out_shape="1x4x4x8",
                                        attr="slices=1:0:7:2|2:0:7:2")]


# ---- real models ---------------------------------------------------------------------------
def _timm_graph_and_macs(name: str, size: int, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    x = torch.randn(1, 3, size, size)
    return graph_from_torch(model, x), count_macs(model, x).macs


def test_mobilenetv3_small():
    graph, macs = _timm_graph_and_macs("mobilenetv3_small_100", 224)
    for platform in PLATFORMS:
        detection = detect_kernels(graph, platform)
        assert detection.unassigned == [], platform
        assert_complete(graph, detection)
        # Kernel MACs are exactly torch's count: both count only conv/matmul multiply-adds.
        assert detection.summary()["macs"] == macs == 56_510_400
    counts = detect_kernels(graph, "base").summary()["by_type"]
    # timm's arch_def: depthwise convs in 1+2+3+2+3 blocks, SE in 1+3+2+3 of them.
    assert counts["dwconv"] == 11 and counts["se"] == 9 and counts["fc"] == 1 and counts["gap"] == 1


@pytest.mark.parametrize("name,size,attention,kwargs", [
    ("levit_128s", 224, 11, {}),  # depth (2, 3, 4) blocks + 2 attention-downsample stages
    ("vit_tiny_patch16_224", 64, 12, {"img_size": 64}),
])
def test_vit_like_models(name, size, attention, kwargs):
    graph, macs = _timm_graph_and_macs(name, size, **kwargs)
    for platform in PLATFORMS:
        detection = detect_kernels(graph, platform)
        assert detection.unassigned == [], platform
        assert detection.summary()["macs"] == macs
    counts = detect_kernels(graph, "base").summary()["by_type"]
    assert counts["attention"] == attention
    assert counts.get("softmax", 0) == 0
    assert detect_kernels(graph, "ort-fp32").summary()["by_type"]["softmax"] == attention


# ---- QDQ graphs, platforms, rules ----------------------------------------------------------
def test_qdq_graph_ort_int8(tmp_path):
    from moonlit.common.export.int8 import quantize_static_int8

    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                          nn.Hardswish(), nn.Conv2d(16, 8, 1)).eval()
    fp32 = export_onnx(model, torch.randn(1, 8, 16, 16), tmp_path / "fp32.onnx")
    qdq = quantize_static_int8(fp32, tmp_path / "int8.onnx", [torch.randn(1, 8, 16, 16) for _ in range(2)])
    graph = load_graph(qdq)
    detection = detect_kernels(graph, "ort-int8")
    assert detection.unassigned == []
    assert_complete(graph, detection)
    assert [k.config.type for k in detection.kernels] == ["conv", "dwconv", "act", "conv"]
    assert detection.configs("act")[0].params["act"] == "hswish"
    attached = [n for k in detection.kernels for n in k.nodes if graph.node(n).op_type == "QuantizeLinear"]
    assert len(attached) == sum(n.op_type == "QuantizeLinear" for n in graph.nodes)
    # Without transparent Q/DQ (ort-fp32 rules) they are reported, not dropped.
    assert {u.op_type for u in detect_kernels(graph, "ort-fp32").unassigned} == {"QuantizeLinear", "DequantizeLinear"}


def test_unknown_platform_falls_back_to_base(caplog):
    graph = graph_from_torch(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.randn(1, 3, 8, 8))
    with caplog.at_level(logging.WARNING):
        detection = detect_kernels(graph, "pixel4-tflite")
    assert detection.fallback and "no rules file for platform 'pixel4-tflite'" in detection.rules_source
    assert "falling back to base.yaml" in caplog.text
    assert detection.configs() == detect_kernels(graph, "base").configs()
    assert not detect_kernels(graph, "ort-fp32").fallback
    assert set(PLATFORMS) <= set(available_platforms())
    json.dumps(detection.to_dict())


def _write(tmp_path, name: str, text: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


GOOD_RULE = "rules:\n  - {name: act, kernel: act, anchor: {op: [Relu]}}\n"


@pytest.mark.parametrize("text,message", [
    ("rulez: []\n", r"unknown top-level keys \['rulez'\]"),
    ("version: 2\n", r"custom.yaml: rules version 2, this code reads version 1"),
    ("rules: [\n", r"custom.yaml: not valid YAML"),
    ("rules:\n  - {name: c, kernel: conv, anchor: {op: [Conv], where: [depthwize]}}\n",
     r"rule 'c': unknown anchor predicate 'depthwize'"),
    ("rules:\n  - {name: c, kernel: convolution, anchor: {op: [Conv]}}\n",
     r"rule 'c': kernel 'convolution' is not a known"),
    ("rules:\n  - {name: c, kernel: conv, anchor: {op: [Conv]}, chain: [{op: [Relu], as: a, excludes: [b]}]}\n",
     r"rule 'c' chain\[0\]: excludes \['b'\] which no earlier step defines"),
    ("rules:\n  - {name: c, kernel: conv, anchor: {op: [Conv]}, chain: [{op: [Relu], other: weird}]}\n",
     r"rule 'c' chain\[0\]: other='weird'"),
    ("rules:\n  - {name: c, kernel: conv, anchor: {op: [$nope]}}\n", r"unknown set '\$nope'"),
    ("idioms:\n  - {name: i, op: relu, nodes: [{id: out, op: Mul, inputs: [$x, ghost]}]}\n",
     r"idiom 'i': node 'out' uses 'ghost' before it is defined"),
    ("extends: base\ndisable: [nonexistent]\n", r"cannot disable unknown rule 'nonexistent'"),
])
def test_rule_files_are_validated(tmp_path, text, message):
    with pytest.raises(RuleError, match=message):
        load_platform_rules("custom", path=_write(tmp_path, "custom", text))


def test_rule_files_extend_and_override(tmp_path):
    child = _write(tmp_path, "child", "extends: base\nsets: {conv_acts: []}\ndisable: [se]\n")
    rules = load_platform_rules("child", path=child)
    assert [f.rsplit("/", 1)[-1] for f in rules.files] == ["base.yaml", "child.yaml"]
    assert "se" not in [r.name for r in rules.rules]
    conv_rule = next(r for r in rules.rules if r.name == "conv")
    act_step = next(s for s in conv_rule.chain if s.role == "act")
    assert act_step.ops == frozenset()  # the overridden set reached the inherited rule
    _write(tmp_path, "a", "extends: b\n" + GOOD_RULE)
    _write(tmp_path, "b", "extends: a\n")
    with pytest.raises(RuleError, match="cycle"):
        load_platform_rules("a", path=tmp_path / "a.yaml")


def test_kernel_config_contract():
    config = conv(act="hswish")
    assert KernelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert hash(KernelConfig.from_dict(config.to_dict())) == hash(config)
    assert config.key().startswith("conv:batch=1,h=8,w=8,cin=16,") and config.key().endswith("act=hswish,residual=none")
    assert config.replace(h=16) != config and config["act"] == "hswish"
    with pytest.raises(ValueError, match=r"missing \['wout'\], unexpected \['out'\]"):
        KernelConfig("conv", {**{k: v for k, v in config.params.items() if k != "wout"}, "out": 1})
    with pytest.raises(ValueError, match="unknown kernel type 'conv3d'"):
        KernelConfig("conv3d", {})
    with pytest.raises(ValueError, match="act='mish'"):
        config.replace(act="mish")
    with pytest.raises(ValueError, match="param h='8' must be a number"):
        config.replace(h="8")
    with pytest.raises(ValueError, match="exactly the keys"):
        KernelConfig.from_dict({"type": "conv"})
