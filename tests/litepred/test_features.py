"""Kernel features, MACs and parameter counts against hand-computed values and torch's counters."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from moonlit.common.profiling.flops import count_macs
from moonlit.litepred.kernels.detect import KERNEL_PARAMS, KernelConfig
from moonlit.litepred.predict.features import (
    feature_matrix,
    feature_names,
    feature_schema,
    features,
    kernel_macs,
    kernel_params,
)
from moonlit.litepred.profile.kernel_builder import build_kernel_module

CONV = dict(batch=1, h=56, w=56, cin=64, cout=128, kh=3, kw=3, sh=2, sw=2, ph=1, pw=1, dh=1, dw=1,
            groups=1, hout=28, wout=28, act="relu", residual="none")

EXAMPLES = {
    "conv": KernelConfig("conv", CONV),
    "dwconv": KernelConfig("dwconv", {**CONV, "cout": 64, "groups": 64, "kh": 5, "kw": 5, "ph": 2, "pw": 2}),
    "gconv": KernelConfig("gconv", {**CONV, "groups": 4}),
    "patch_embed": KernelConfig("patch_embed", dict(batch=1, h=224, w=224, cin=3, cout=192, kh=16, kw=16,
                                                    hout=14, wout=14)),
    "fc": KernelConfig("fc", dict(batch=1, tokens=197, cin=192, cout=768, act="gelu")),
    "matmul": KernelConfig("matmul", dict(batch=3, m=197, k=64, n=197)),
    "attention": KernelConfig("attention", dict(batch=1, heads=4, q_tokens=49, kv_tokens=196, qk_dim=16, v_dim=64,
                                                bias=1)),
    "softmax": KernelConfig("softmax", dict(rows=591, cols=197)),
    "layernorm": KernelConfig("layernorm", dict(rows=197, dim=192)),
    "act": KernelConfig("act", dict(batch=1, c=32, h=14, w=14, act="hswish")),
    "add": KernelConfig("add", dict(batch=1, c=32, h=14, w=14, op="mul", bcast="channel", act="none")),
    "eltwise": KernelConfig("eltwise", dict(batch=1, c=32, h=14, w=14, op="sqrt")),
    "bn": KernelConfig("bn", dict(batch=1, c=32, h=14, w=14)),
    "pool": KernelConfig("pool", dict(batch=1, c=64, h=112, w=112, kh=3, kw=3, sh=2, sw=2, ph=1, pw=1,
                                      hout=56, wout=56, mode="max")),
    "gap": KernelConfig("gap", dict(batch=1, c=576, h=7, w=7)),
    "concat": KernelConfig("concat", dict(batch=1, c=96, h=14, w=14, axis="c", sizes="32+64")),
    "se": KernelConfig("se", dict(batch=1, c=96, h=14, w=14, mid=24, act="relu", gate="hsigmoid")),
    "layout": KernelConfig("layout", dict(op="Transpose", in_shape="1x197x3x3x64", out_shape="3x1x3x197x64",
                                          attr="perm=2,0,3,1,4")),
}


def test_every_type_has_an_example():
    assert set(EXAMPLES) == set(KERNEL_PARAMS)


def test_macs_and_params_by_hand():
    assert kernel_macs(EXAMPLES["conv"]) == 28 * 28 * 128 * 64 * 9 == 57_802_752
    assert kernel_params(EXAMPLES["conv"]) == 128 * 64 * 9 + 128
    assert kernel_macs(EXAMPLES["dwconv"]) == 28 * 28 * 64 * 25
    assert kernel_params(EXAMPLES["dwconv"]) == 64 * 25 + 64
    assert kernel_macs(EXAMPLES["gconv"]) == 28 * 28 * 128 * 16 * 9
    assert kernel_macs(EXAMPLES["patch_embed"]) == 196 * 192 * 3 * 256
    assert kernel_macs(EXAMPLES["fc"]) == 197 * 192 * 768 and kernel_params(EXAMPLES["fc"]) == 192 * 768 + 768
    assert kernel_macs(EXAMPLES["matmul"]) == 3 * 197 * 64 * 197
    assert kernel_macs(EXAMPLES["attention"]) == 4 * 49 * 196 * (16 + 64)
    assert kernel_macs(EXAMPLES["se"]) == 2 * 96 * 24 and kernel_params(EXAMPLES["se"]) == 2 * 96 * 24 + 24 + 96
    assert kernel_params(EXAMPLES["layernorm"]) == 384 and kernel_params(EXAMPLES["bn"]) == 64
    for kind in ("softmax", "act", "add", "eltwise", "pool", "gap", "concat", "layout"):
        assert kernel_macs(EXAMPLES[kind]) == 0


@pytest.mark.parametrize("kind", ["conv", "dwconv", "gconv", "patch_embed", "fc", "matmul", "attention", "se"])
def test_macs_equal_torch_flop_counter_on_the_built_kernel(kind):
    config = EXAMPLES[kind]
    if kind in ("conv", "dwconv", "gconv"):  # smaller maps keep the test fast; same formula
        config = config.replace(h=16, w=16, hout=8, wout=8)
    if kind == "patch_embed":
        config = config.replace(h=64, w=64, hout=4, wout=4)
    module, inputs = build_kernel_module(config)
    report = count_macs(module, *inputs)
    assert kernel_macs(config) == report.macs
    if kind not in ("matmul", "attention"):
        assert kernel_params(config) == report.params


def test_conv_features_by_hand():
    vector = features(EXAMPLES["conv"])
    names = feature_names("conv")
    assert names[:7] == ["hw", "cin", "cout", "k", "s", "macs_m", "params_m"]  # the reference's order
    row = dict(zip(names, vector))
    assert row["hw"] == 56 and row["cin"] == 64 and row["cout"] == 128 and row["k"] == 3 and row["s"] == 2
    assert row["macs_m"] == pytest.approx(57.802752) and row["params_m"] == pytest.approx(0.073856)
    assert row["hw_out"] == 28 and row["groups"] == 1 and row["batch"] == 1
    assert [n for n in names if n.startswith("act_") and row[n] == 1.0] == ["act_relu"]
    assert sum(row[n] for n in names if n.startswith("act_")) == 1.0
    assert row["residual_pre"] == row["residual_post"] == 0.0
    # Non-square maps and kernels: geometric means.
    odd = features(EXAMPLES["conv"].replace(h=32, w=8, kh=1, kw=9, sh=1, sw=4, ph=0, pw=4, hout=32, wout=2))
    odd_row = dict(zip(names, odd))
    assert odd_row["hw"] == 16 and odd_row["k"] == 3 and odd_row["s"] == 2 and odd_row["hw_out"] == 8
    no_act = dict(zip(names, features(EXAMPLES["conv"].replace(act="none", residual="pre_act"))))
    assert sum(no_act[n] for n in names if n.startswith("act_")) == 0 and no_act["residual_pre"] == 1


def test_reference_feature_prefixes():
    assert feature_names("fc")[:4] == ["cin", "cout", "macs_m", "params_m"]
    assert feature_names("pool")[:5] == ["hw", "cin", "cout", "k", "s"]
    assert feature_names("add")[:2] == feature_names("act")[:2] == ["hw", "cin"]
    pool = dict(zip(feature_names("pool"), features(EXAMPLES["pool"])))
    assert (pool["hw"], pool["cin"], pool["cout"], pool["k"], pool["s"], pool["mode_max"]) == (112, 64, 64, 3, 2, 1)
    attention = dict(zip(feature_names("attention"), features(EXAMPLES["attention"])))
    assert attention["dim"] == 256 and attention["kv_tokens"] == 196 and attention["macs_m"] == pytest.approx(3.07328)
    layout = dict(zip(feature_names("layout"), features(EXAMPLES["layout"])))
    assert layout["numel_in"] == layout["numel_out"] == 197 * 9 * 64 and layout["rank"] == 5
    assert layout["op_Transpose"] == 1 and layout["op_other"] == 0
    concat = dict(zip(feature_names("concat"), features(EXAMPLES["concat"])))
    assert concat["n_inputs"] == 2 and concat["axis_c"] == 1 and concat["hw"] == 14


@pytest.mark.parametrize("kind", sorted(KERNEL_PARAMS))
def test_vectors_are_finite_and_named(kind):
    vector = features(EXAMPLES[kind])
    assert vector.dtype == np.float64 and vector.shape == (len(feature_names(kind)),)
    assert np.isfinite(vector).all() and len(set(feature_names(kind))) == len(feature_names(kind))


def test_feature_matrix_and_schema():
    configs = [EXAMPLES["fc"], EXAMPLES["fc"].replace(tokens=1, act="none")]
    matrix = feature_matrix(configs)
    assert matrix.shape == (2, len(feature_names("fc")))
    np.testing.assert_array_equal(matrix[1], features(configs[1]))
    with pytest.raises(ValueError, match=r"one type, got \['conv', 'fc'\]"):
        feature_matrix([EXAMPLES["fc"], EXAMPLES["conv"]])
    schema = json.loads(json.dumps(feature_schema()))
    assert schema["version"] == 1 and set(schema["types"]) == set(KERNEL_PARAMS)
    assert schema["types"]["conv"]["features"] == feature_names("conv")
    assert schema["types"]["se"]["params"] == list(KERNEL_PARAMS["se"])
    with pytest.raises(ValueError, match="no features for kernel type 'nope'"):
        feature_names("nope")


def test_hw_is_the_side_length_for_square_maps():
    for kind in ("act", "bn", "gap", "eltwise"):
        row = dict(zip(feature_names(kind), features(EXAMPLES[kind])))
        assert row["hw"] == math.sqrt(EXAMPLES[kind]["h"] * EXAMPLES[kind]["w"])
