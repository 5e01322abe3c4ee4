"""Kernel feature vectors, MACs and parameter counts (LitePred §4.1, the predictors' inputs).

Each kernel type has an ordered list of features. The reference's features come first in the
reference's order — conv: ``HW, CIN, COUT, K, S, MACs/1e6, params/1e6``; fc: ``CIN, COUT, MACs/1e6,
params/1e6``; pool: ``HW, CIN, COUT, K, S``; add and the rest: ``HW, CIN`` — followed by what the
reference lacked: output size, batch, one-hot activations and residual fusion, and the shapes
ViT kernels need (tokens, heads, head dims). For non-square maps ``HW``, ``K`` and ``S`` are
geometric means (sqrt(h·w), …), equal to the reference's values for square ones.

MACs are hand formulas matching :func:`moonlit.common.profiling.flops.count_macs` (which counts
conv/matmul/attention multiply-accumulates only; bias adds, BN, activations and pooling are 0):
conv ``batch·hout·wout·cout·(cin/groups)·kh·kw``; fc ``batch·tokens·cin·cout``; matmul
``batch·m·k·n``; attention ``batch·heads·q·kv·(qk_dim + v_dim)``; SE ``batch·2·c·mid``.
Parameter counts include biases (BN folded into conv gives every conv a bias).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from moonlit.litepred.kernels.detect import ACTIVATIONS, KERNEL_PARAMS, KernelConfig

__all__ = [
    "FEATURE_VERSION", "feature_names", "features", "feature_matrix", "feature_schema",
    "kernel_macs", "kernel_params",
]

FEATURE_VERSION = 1
_ACTS = ACTIVATIONS[1:]  # "none" is the all-zero one-hot
_BINARY_OPS = ("add", "sub", "mul", "div")
_BCASTS = ("channel", "scalar", "other")
ELTWISE_OPS = ("add", "sub", "mul", "div", "pow", "sqrt", "exp", "log", "erf", "tanh", "neg", "abs",
               "reciprocal", "clip", "max", "min", "cast", "where")
LAYOUT_OPS = ("Transpose", "Split", "Slice", "Gather", "Expand", "Pad", "Tile", "DepthToSpace",
              "SpaceToDepth")


def kernel_macs(config: KernelConfig) -> int:
    """Multiply-accumulates of one kernel (0 for kernels without a matmul/conv)."""
    p, kind = config.params, config.type
    if kind in ("conv", "dwconv", "gconv"):
        return p["batch"] * p["hout"] * p["wout"] * p["cout"] * (p["cin"] // p["groups"]) * p["kh"] * p["kw"]
    if kind == "patch_embed":
        return p["batch"] * p["hout"] * p["wout"] * p["cout"] * p["cin"] * p["kh"] * p["kw"]
    if kind == "fc":
        return p["batch"] * p["tokens"] * p["cin"] * p["cout"]
    if kind == "matmul":
        return p["batch"] * p["m"] * p["k"] * p["n"]
    if kind == "attention":
        return p["batch"] * p["heads"] * p["q_tokens"] * p["kv_tokens"] * (p["qk_dim"] + p["v_dim"])
    if kind == "se":
        return p["batch"] * 2 * p["c"] * p["mid"]
    return 0


def kernel_params(config: KernelConfig) -> int:
    """Learned parameters (weights + biases; BN/LayerNorm scale + shift) of one kernel."""
    p, kind = config.params, config.type
    if kind in ("conv", "dwconv", "gconv"):
        return p["cout"] * (p["cin"] // p["groups"]) * p["kh"] * p["kw"] + p["cout"]
    if kind == "patch_embed":
        return p["cout"] * p["cin"] * p["kh"] * p["kw"] + p["cout"]
    if kind == "fc":
        return p["cin"] * p["cout"] + p["cout"]
    if kind == "se":
        return 2 * p["c"] * p["mid"] + p["mid"] + p["c"]
    if kind == "layernorm":
        return 2 * p["dim"]
    if kind == "bn":
        return 2 * p["c"]
    return 0


def _one_hot(value: str, choices: Sequence[str]) -> list[float]:
    return [float(value == choice) for choice in choices]


def _gm(a: int, b: int) -> float:
    return math.sqrt(a * b)


def _numel(text: str) -> float:
    return 1.0 if text == "scalar" else float(np.prod([int(d) for d in text.split("x")]))


def _conv(c: KernelConfig) -> list[float]:
    p = c.params
    return [_gm(p["h"], p["w"]), p["cin"], p["cout"], _gm(p["kh"], p["kw"]), _gm(p["sh"], p["sw"]),
            kernel_macs(c) / 1e6, kernel_params(c) / 1e6, _gm(p["hout"], p["wout"]), p["groups"], p["batch"],
            *_one_hot(p["act"], _ACTS), float(p["residual"] == "pre_act"), float(p["residual"] == "post_act")]


_SPECS: dict[str, tuple[tuple[str, ...], Callable[[KernelConfig], list[float]]]] = {
    "conv": (("hw", "cin", "cout", "k", "s", "macs_m", "params_m", "hw_out", "groups", "batch",
              *(f"act_{a}" for a in _ACTS), "residual_pre", "residual_post"), _conv),
    "patch_embed": (("hw", "cin", "cout", "k", "s", "macs_m", "params_m", "tokens", "batch"),
                    lambda c: [_gm(c["h"], c["w"]), c["cin"], c["cout"], _gm(c["kh"], c["kw"]),
                               _gm(c["kh"], c["kw"]), kernel_macs(c) / 1e6, kernel_params(c) / 1e6,
                               c["hout"] * c["wout"], c["batch"]]),
    "fc": (("cin", "cout", "macs_m", "params_m", "tokens", "batch", *(f"act_{a}" for a in _ACTS)),
           lambda c: [c["cin"], c["cout"], kernel_macs(c) / 1e6, kernel_params(c) / 1e6, c["tokens"],
                      c["batch"], *_one_hot(c["act"], _ACTS)]),
    "matmul": (("m", "k", "n", "batch", "macs_m"),
               lambda c: [c["m"], c["k"], c["n"], c["batch"], kernel_macs(c) / 1e6]),
    "attention": (("q_tokens", "kv_tokens", "heads", "qk_dim", "v_dim", "dim", "batch", "macs_m", "bias"),
                  lambda c: [c["q_tokens"], c["kv_tokens"], c["heads"], c["qk_dim"], c["v_dim"],
                             c["heads"] * c["v_dim"], c["batch"], kernel_macs(c) / 1e6, c["bias"]]),
    "softmax": (("rows", "cols"), lambda c: [c["rows"], c["cols"]]),
    "layernorm": (("rows", "dim"), lambda c: [c["rows"], c["dim"]]),
    "act": (("hw", "cin", "batch", *(f"act_{a}" for a in _ACTS)),
            lambda c: [_gm(c["h"], c["w"]), c["c"], c["batch"], *_one_hot(c["act"], _ACTS)]),
    "add": (("hw", "cin", "batch", *(f"op_{o}" for o in _BINARY_OPS), *(f"bcast_{b}" for b in _BCASTS),
             *(f"act_{a}" for a in _ACTS)),
            lambda c: [_gm(c["h"], c["w"]), c["c"], c["batch"], *_one_hot(c["op"], _BINARY_OPS),
                       *_one_hot(c["bcast"], _BCASTS), *_one_hot(c["act"], _ACTS)]),
    "eltwise": (("hw", "cin", "batch", *(f"op_{o}" for o in ELTWISE_OPS), "op_other"),
                lambda c: [_gm(c["h"], c["w"]), c["c"], c["batch"], *_one_hot(c["op"], ELTWISE_OPS),
                           float(c["op"] not in ELTWISE_OPS)]),
    "bn": (("hw", "cin", "batch"), lambda c: [_gm(c["h"], c["w"]), c["c"], c["batch"]]),
    "pool": (("hw", "cin", "cout", "k", "s", "hw_out", "batch", "mode_max"),
             lambda c: [_gm(c["h"], c["w"]), c["c"], c["c"], _gm(c["kh"], c["kw"]), _gm(c["sh"], c["sw"]),
                        _gm(c["hout"], c["wout"]), c["batch"], float(c["mode"] == "max")]),
    "gap": (("hw", "cin", "batch"), lambda c: [_gm(c["h"], c["w"]), c["c"], c["batch"]]),
    "concat": (("hw", "cout", "batch", "n_inputs", "axis_c"),
               lambda c: [_gm(c["h"], c["w"]), c["c"], c["batch"], len(c["sizes"].split("+")),
                          float(c["axis"] == "c")]),
    "se": (("hw", "cin", "mid", "batch", "macs_m", "params_m", *(f"act_{a}" for a in _ACTS), "gate_hsigmoid"),
           lambda c: [_gm(c["h"], c["w"]), c["c"], c["mid"], c["batch"], kernel_macs(c) / 1e6,
                      kernel_params(c) / 1e6, *_one_hot(c["act"], _ACTS), float(c["gate"] == "hsigmoid")]),
    "layout": (("numel_in", "numel_out", "rank", *(f"op_{o}" for o in LAYOUT_OPS), "op_other"),
               lambda c: [_numel(c["in_shape"]), _numel(c["out_shape"]),
                          0 if c["in_shape"] == "scalar" else len(c["in_shape"].split("x")),
                          *_one_hot(c["op"], LAYOUT_OPS), float(c["op"] not in LAYOUT_OPS)]),
}
_SPECS["dwconv"] = _SPECS["gconv"] = _SPECS["conv"]


def _spec(kernel_type: str) -> tuple[tuple[str, ...], Callable[[KernelConfig], list[float]]]:
    try:
        return _SPECS[kernel_type]
    except KeyError:
        raise ValueError(f"no features for kernel type {kernel_type!r}; known: {sorted(_SPECS)}") from None


def feature_names(kernel_type: str) -> list[str]:
    """Ordered feature names of ``kernel_type``."""
    return list(_spec(kernel_type)[0])


def features(config: KernelConfig) -> np.ndarray:
    """The float64 feature vector of one kernel (order: :func:`feature_names`)."""
    names, compute = _spec(config.type)
    values = np.asarray(compute(config), dtype=np.float64)
    if values.shape != (len(names),):  # guards the hand-kept name lists above
        raise RuntimeError(f"{config.type}: {values.shape[0]} features for {len(names)} names")
    return values


def feature_matrix(configs: Sequence[KernelConfig]) -> np.ndarray:
    """Features of many kernels of one type, shape (n, len(feature_names(type)))."""
    kinds = {config.type for config in configs}
    if len(kinds) > 1:
        raise ValueError(f"feature_matrix needs kernels of one type, got {sorted(kinds)}")
    if not configs:
        return np.zeros((0, 0))
    return np.stack([features(config) for config in configs])


def feature_schema() -> dict[str, Any]:
    """JSON-serialisable description of features and parameters per kernel type, with version."""
    return {
        "version": FEATURE_VERSION,
        "activations": list(ACTIVATIONS),
        "types": {
            kind: {"features": feature_names(kind), "params": list(KERNEL_PARAMS[kind])}
            for kind in sorted(KERNEL_PARAMS)
        },
    }
