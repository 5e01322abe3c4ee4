"""Kernel builder: build → export → load_graph → detect_kernels gives back the same config."""

from __future__ import annotations

import itertools

import pytest
import torch

from moonlit.litepred.graph.onnx_import import load_graph
from moonlit.litepred.kernels.detect import (
    ACTIVATIONS,
    KERNEL_TYPES,
    KernelConfig,
    detect_kernels,
)
from moonlit.litepred.profile.kernel_builder import (
    build_kernel_module,
    build_kernel_onnx,
)


def C(kind: str, **params) -> KernelConfig:
    return KernelConfig(kind, params)


def _conv(kind="conv", **overrides) -> KernelConfig:
    params = dict(batch=1, h=12, w=12, cin=8, cout=16, kh=3, kw=3, sh=1, sw=1, ph=1, pw=1, dh=1, dw=1,
                  groups=1, hout=12, wout=12, act="none", residual="none")
    return C(kind, **{**params, **overrides})


ACTS = [a for a in ACTIVATIONS if a != "none"]
ROUND_TRIP = [
    *[_conv(act=act) for act in ACTIVATIONS],
    _conv(cin=16, act="relu", residual="pre_act"), _conv(cin=16, residual="pre_act"),
    _conv(cin=16, act="hswish", residual="post_act"),
    _conv(h=15, w=11, kh=5, kw=3, sh=2, sw=1, ph=2, pw=1, hout=8, wout=11, act="relu6"),
    _conv(kh=1, kw=1, ph=0, pw=0, batch=2, cout=24),
    _conv(dh=2, dw=2, ph=2, pw=2, act="swish"),
    _conv(h=9, w=9, kh=3, kw=3, sh=2, sw=2, ph=0, pw=0, hout=4, wout=4),
    _conv("dwconv", cin=16, groups=16, act="relu"), _conv("dwconv", cin=24, cout=24, groups=24, kh=5, kw=5, ph=2, pw=2,
                                                          sh=2, sw=2, hout=6, wout=6, act="hswish"),
    _conv("dwconv", cin=16, groups=16, residual="pre_act"),
    _conv("gconv", cin=16, cout=32, groups=4, act="relu"), _conv("gconv", cin=8, cout=8, groups=2),
    C("patch_embed", batch=1, h=32, w=32, cin=3, cout=48, kh=8, kw=8, hout=4, wout=4),
    C("patch_embed", batch=1, h=28, w=20, cin=3, cout=16, kh=4, kw=4, hout=7, wout=5),
    C("patch_embed", batch=1, h=16, w=16, cin=32, cout=64, kh=2, kw=2, hout=8, wout=8),
    *[C("fc", batch=1, tokens=tokens, cin=24, cout=40, act=act) for tokens, act in
      [(1, "none"), (1, "relu"), (17, "none"), (17, "gelu"), (49, "hswish"), (5, "swish")]],
    C("fc", batch=2, tokens=1, cin=64, cout=10, act="sigmoid"), C("fc", batch=3, tokens=7, cin=8, cout=8, act="relu6"),
    C("matmul", batch=3, m=17, k=64, n=17), C("matmul", batch=1, m=5, k=7, n=9), C("matmul", batch=8, m=16, k=16, n=32),
    C("attention", batch=1, heads=3, q_tokens=17, kv_tokens=17, qk_dim=32, v_dim=32, bias=0),
    C("attention", batch=1, heads=4, q_tokens=16, kv_tokens=49, qk_dim=16, v_dim=32, bias=1),
    C("attention", batch=2, heads=1, q_tokens=9, kv_tokens=9, qk_dim=8, v_dim=8, bias=0),
    C("softmax", rows=51, cols=17), C("softmax", rows=1, cols=1000),
    C("layernorm", rows=17, dim=64), C("layernorm", rows=196, dim=128),
    *[C("act", batch=1, c=8, h=6, w=5, act=act) for act in ACTS], C("act", batch=2, c=192, h=17, w=1, act="gelu"),
    *[C("add", batch=1, c=8, h=6, w=6, op=op, bcast=bcast, act=act) for op, bcast, act in
      [("add", "none", "none"), ("add", "none", "relu"), ("mul", "channel", "none"), ("sub", "scalar", "none"),
       ("div", "other", "sigmoid"), ("mul", "none", "hswish")]],
    *[C("eltwise", batch=1, c=8, h=6, w=6, op=op) for op in
      ("add", "sub", "mul", "div", "pow", "sqrt", "exp", "log", "erf", "tanh", "neg", "abs", "reciprocal", "clip",
       "max", "min", "cast")],
    C("bn", batch=1, c=8, h=6, w=6), C("bn", batch=4, c=16, h=1, w=1),
    C("pool", batch=1, c=8, h=16, w=16, kh=3, kw=3, sh=2, sw=2, ph=1, pw=1, hout=8, wout=8, mode="max"),
    C("pool", batch=1, c=8, h=15, w=15, kh=2, kw=2, sh=2, sw=2, ph=0, pw=0, hout=8, wout=8, mode="max"),
    C("pool", batch=1, c=8, h=14, w=14, kh=2, kw=2, sh=2, sw=2, ph=0, pw=0, hout=7, wout=7, mode="avg"),
    C("pool", batch=1, c=4, h=9, w=9, kh=3, kw=3, sh=1, sw=1, ph=1, pw=1, hout=9, wout=9, mode="avg"),
    C("gap", batch=1, c=8, h=7, w=7), C("gap", batch=1, c=192, h=17, w=1),
    C("concat", batch=1, c=24, h=5, w=5, axis="c", sizes="8+16"),
    C("concat", batch=1, c=192, h=17, w=1, axis="h", sizes="1+16"),
    C("concat", batch=1, c=12, h=4, w=4, axis="c", sizes="4+4+4"),
    C("se", batch=1, c=16, h=8, w=8, mid=8, act="relu", gate="hsigmoid"),
    C("se", batch=1, c=32, h=4, w=4, mid=8, act="swish", gate="sigmoid"),
    C("se", batch=1, c=24, h=5, w=5, mid=6, act="none", gate="sigmoid"),
    C("layout", op="Transpose", in_shape="1x17x3x3x64", out_shape="3x1x3x17x64", attr="perm=2,0,3,1,4"),
    C("layout", op="Transpose", in_shape="1x128x196", out_shape="1x196x128", attr="perm=0,2,1"),
    C("layout", op="Split", in_shape="1x196x4x64", out_shape="1x196x4x16", attr="axis=3;split=16,16,32"),
    C("layout", op="Slice", in_shape="1x14x14x128", out_shape="1x7x14x128", attr="slices=1:0:14:2"),
    C("layout", op="Slice", in_shape="1x17x192", out_shape="1x16x192", attr="slices=1:1:17:1"),
    C("layout", op="Gather", in_shape="1x17x192", out_shape="1x192", attr="axis=1;indices=0;indices_shape=scalar"),
    C("layout", op="Gather", in_shape="1x17x192", out_shape="1x3x192", attr="axis=1;indices=0,2,5;indices_shape=3"),
    C("layout", op="Expand", in_shape="1x1x192", out_shape="2x5x192", attr=""),
    C("layout", op="Pad", in_shape="1x3x8x8", out_shape="1x3x9x10", attr="mode=constant;pads=0,0,0,1,0,0,1,1"),
    C("layout", op="DepthToSpace", in_shape="1x16x4x4", out_shape="1x4x8x8", attr="blocksize=2;mode=CRD"),
]


def test_round_trip_covers_every_kernel_type():
    assert {config.type for config in ROUND_TRIP} == set(KERNEL_TYPES)


@pytest.mark.parametrize("config", ROUND_TRIP, ids=lambda c: c.key()[:90])
def test_round_trip_base(config, tmp_path):
    path = build_kernel_onnx(config, tmp_path / "kernel.onnx")  # also checks ORT output == torch output
    graph = load_graph(path)
    detection = detect_kernels(graph, "base")
    assert [k.config for k in detection.kernels] == [config]
    assert detection.unassigned == []
    assert all(reason.startswith(("static", "free op")) for _, reason in detection.free)


ORT_FP32 = [
    *[_conv(act=act) for act in ("none", "relu", "relu6", "hswish", "hsigmoid", "sigmoid")],
    _conv(cin=16, act="relu", residual="pre_act"),
    _conv("dwconv", cin=16, groups=16, act="hswish"),
    C("fc", batch=1, tokens=1, cin=24, cout=40, act="relu"), C("fc", batch=1, tokens=17, cin=24, cout=40, act="none"),
    C("matmul", batch=3, m=17, k=64, n=17), C("se", batch=1, c=16, h=8, w=8, mid=8, act="relu", gate="hsigmoid"),
    C("act", batch=1, c=8, h=6, w=6, act="gelu"), C("softmax", rows=51, cols=17),
]


@pytest.mark.parametrize("config", ORT_FP32, ids=lambda c: c.key()[:90])
def test_round_trip_ort_fp32(config, tmp_path):
    detection = detect_kernels(load_graph(build_kernel_onnx(config, tmp_path / "k.onnx")), "ort-fp32")
    assert [k.config for k in detection.kernels] == [config] and detection.unassigned == []


def test_kernels_onnxruntime_does_not_fuse_split(tmp_path):
    """Configs fused by base but not by ort-fp32 come back as several kernels there."""
    config = _conv(act="swish")
    detection = detect_kernels(load_graph(build_kernel_onnx(config, tmp_path / "k.onnx")), "ort-fp32")
    assert [k.config for k in detection.kernels] == [config.replace(act="none"),
                                                       C("act", batch=1, c=16, h=12, w=12, act="swish")]
    attention = C("attention", batch=1, heads=2, q_tokens=5, kv_tokens=5, qk_dim=4, v_dim=4, bias=0)
    detection = detect_kernels(load_graph(build_kernel_onnx(attention, tmp_path / "a.onnx")), "ort-fp32")
    assert [k.config.type for k in detection.kernels] == ["layout", "matmul", "softmax", "matmul"]


def test_module_outputs_and_determinism():
    config = _conv(cin=16, act="relu", residual="pre_act", sh=2, sw=2, hout=6, wout=6)
    with pytest.raises(ValueError, match=r"output \(6, 6\), config says \(12, 12\)"):
        build_kernel_module(config.replace(hout=12, wout=12))
    module, inputs = build_kernel_module(config)
    assert [tuple(x.shape) for x in inputs] == [(1, 16, 12, 12), (1, 16, 6, 6)]
    with torch.no_grad():
        out = module(*inputs)
        again_module, again_inputs = build_kernel_module(config)
        assert torch.equal(out, again_module(*again_inputs))
        other_module, other_inputs = build_kernel_module(config, seed=1)
        assert not torch.equal(out, other_module(*other_inputs))
    assert out.shape == (1, 16, 6, 6) and (out >= 0).all()
    attention = C("attention", batch=2, heads=3, q_tokens=4, kv_tokens=6, qk_dim=8, v_dim=5, bias=1)
    module, inputs = build_kernel_module(attention)
    with torch.no_grad():
        q, k, v = inputs
        expected = torch.softmax(q @ k.transpose(-2, -1) / 8 ** 0.5 + module.bias, dim=-1) @ v
        torch.testing.assert_close(module(*inputs), expected)


@pytest.mark.parametrize("config,message", [
    (_conv(groups=2), "conv config with groups=2"),
    (_conv("dwconv", groups=8, cin=8, cout=16), "dwconv config with groups=8, cin=8, cout=16"),
    (_conv(act="none", residual="post_act", cin=16), "post_act' needs an activation"),
    (C("act", batch=1, c=4, h=2, w=2, act="none"), "needs an activation"),
    (C("eltwise", batch=1, c=4, h=2, w=2, op="where"), "eltwise op 'where' has no torch builder"),
    (C("layout", op="Slice", in_shape="1x7x7x8", out_shape="1x4x4x8", attr="slices=1:0:7:2|2:0:7:2"),
     "Slice over 2 axes is not reproducible"),
    (C("pool", batch=1, c=4, h=8, w=8, kh=2, kw=2, sh=2, sw=2, ph=0, pw=0, hout=5, wout=5, mode="max"),
     r"no symmetric padding/ceil mode gives output \(5, 5\)"),
])
def test_unbuildable_configs_raise(config, message):
    with pytest.raises(ValueError, match=message):
        build_kernel_module(config)


def test_activation_round_trip_is_exhaustive():
    acts = {c.params["act"] for c in ROUND_TRIP if c.type == "act"}
    conv_acts = {c.params["act"] for c in ROUND_TRIP if c.type == "conv"}
    assert acts == set(ACTS) and conv_acts == set(ACTIVATIONS)
    assert len(list(itertools.chain(ROUND_TRIP, ORT_FP32))) >= 100


def test_elementwise_kernels_on_tokens_are_built_as_tokens() -> None:
    """w = 1, h > 1 is a (B, N, C) tensor: elementwise kernels keep that layout (INT8 ORT is 40x slower on (B, C, N, 1))."""
    from moonlit.litepred.kernels.detect import KernelConfig
    from moonlit.litepred.profile.kernel_builder import build_kernel_module

    _, (x,) = build_kernel_module(KernelConfig("act", {"act": "gelu", "batch": 1, "c": 384, "h": 196, "w": 1}))
    assert tuple(x.shape) == (1, 196, 384)
    module, (x, y) = build_kernel_module(KernelConfig("add", {"op": "add", "act": "none", "bcast": "channel",
                                                               "batch": 1, "c": 64, "h": 49, "w": 1}))
    assert tuple(x.shape) == (1, 49, 64) and tuple(y.shape) == (1, 1, 64) and module(x, y).shape == x.shape
    _, (x,) = build_kernel_module(KernelConfig("act", {"act": "relu", "batch": 1, "c": 8, "h": 5, "w": 5}))
    assert tuple(x.shape) == (1, 8, 5, 5)  # feature maps stay NCHW
