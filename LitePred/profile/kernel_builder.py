"""Build a minimal torch module (and its ONNX file) that computes exactly one kernel (LitePred §4).

Profiling a kernel config on a platform needs a runnable model of just that kernel.
:func:`build_kernel_module` returns ``(module, example_inputs)`` for any detectable kernel type;
:func:`build_kernel_onnx` exports it with :func:`moonlit.common.export.onnx.export_onnx`.
The modules are written so that their ONNX export, run through
:func:`~moonlit.litepred.kernels.detect.detect_kernels` with the base rules, gives back one kernel with
the same config (tested for every type). Activations and residual/bias operands that the kernel
fuses are graph inputs or constants of the module, never other kernels.

Not reproducible (``ValueError``): conv/pool geometry whose stored output size no symmetric
padding gives; a Slice over several axes (torch exports one Slice per axis); Gather with
multi-dimensional indices; Tile (torch's ``repeat`` exports an extra Expand); ``eltwise`` ops
without a torch counterpart here (e.g. ``where``).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from moonlit.litepred.kernels.detect import KernelConfig

__all__ = ["build_kernel_module", "build_kernel_onnx", "activation_module"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "none": nn.Identity, "relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish,
    "hsigmoid": nn.Hardsigmoid, "sigmoid": nn.Sigmoid, "swish": nn.SiLU, "gelu": nn.GELU,
}


def activation_module(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(_ACTIVATIONS)}") from None


def _out_size(size: int, kernel: int, stride: int, pad: int, dilation: int = 1, ceil: bool = False) -> int:
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    return (math.ceil(span / stride) if ceil else span // stride) + 1


def _dims(text: str) -> list[int]:
    return [] if text == "scalar" else [int(d) for d in text.split("x")]


def _attrs(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(";") if item)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


class _Conv(nn.Module):
    def __init__(self, p: dict, kind: str) -> None:
        super().__init__()
        groups, cin, cout = p["groups"], p["cin"], p["cout"]
        valid = {"conv": groups == 1, "dwconv": groups == cin == cout and groups > 1,
                 "gconv": 1 < groups and cin % groups == 0 and cout % groups == 0 and not groups == cin == cout}
        if not valid[kind]:
            raise ValueError(f"{kind} config with groups={groups}, cin={cin}, cout={cout} is inconsistent")
        expected = (_out_size(p["h"], p["kh"], p["sh"], p["ph"], p["dh"]),
                    _out_size(p["w"], p["kw"], p["sw"], p["pw"], p["dw"]))
        if expected != (p["hout"], p["wout"]):
            raise ValueError(f"{kind}: symmetric padding ({p['ph']}, {p['pw']}) gives output {expected}, "
                             f"config says ({p['hout']}, {p['wout']}) (asymmetric padding is not reproducible)")
        if p["residual"] == "post_act" and p["act"] == "none":
            raise ValueError(f"{kind}: residual='post_act' needs an activation (without one it is 'pre_act')")
        self.conv = nn.Conv2d(cin, cout, (p["kh"], p["kw"]), (p["sh"], p["sw"]), (p["ph"], p["pw"]),
                              (p["dh"], p["dw"]), groups)
        self.act = activation_module(p["act"])
        self.residual = p["residual"]

    def forward(self, x: torch.Tensor, *shortcut: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.residual == "pre_act":
            y = y + shortcut[0]
        y = self.act(y)
        return y + shortcut[0] if self.residual == "post_act" else y


class _PatchEmbed(nn.Module):
    def __init__(self, p: dict) -> None:
        super().__init__()
        if (p["h"] // p["kh"], p["w"] // p["kw"]) != (p["hout"], p["wout"]):
            raise ValueError(f"patch_embed: {p['h']}x{p['w']} / {p['kh']}x{p['kw']} patches != {p['hout']}x{p['wout']}")
        self.proj = nn.Conv2d(p["cin"], p["cout"], (p["kh"], p["kw"]), (p["kh"], p["kw"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class _Sequential(nn.Module):
    """``act(layer(x))`` — fc, bn, standalone activation."""

    def __init__(self, layer: nn.Module, act: str = "none") -> None:
        super().__init__()
        self.layer, self.act = layer, activation_module(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.layer(x))


class _Lambda(nn.Module):
    def __init__(self, function: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.function = function

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.function(*inputs)


class _Attention(nn.Module):
    def __init__(self, p: dict) -> None:
        super().__init__()
        self.scale = p["qk_dim"] ** -0.5
        self.bias = nn.Parameter(0.1 * torch.randn(p["heads"], p["q_tokens"], p["kv_tokens"])) if p["bias"] else None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        attn = (q @ k.transpose(-2, -1)) * self.scale
        if self.bias is not None:
            attn = attn + self.bias
        return attn.softmax(dim=-1) @ v


class _Add(nn.Module):
    def __init__(self, p: dict) -> None:
        super().__init__()
        ops = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}
        if p["op"] not in ops:
            raise ValueError(f"add kernel op {p['op']!r} is not one of {sorted(ops)}")
        self.op, self.act = ops[p["op"]], activation_module(p["act"])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.act(self.op(x, y))


class _SqueezeExcite(nn.Module):
    def __init__(self, p: dict) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(p["c"], p["mid"], 1), nn.Conv2d(p["mid"], p["c"], 1)
        self.act, self.gate = activation_module(p["act"]), activation_module(p["gate"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.gate(self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True)))))
        return x * scale


_QUARTER = torch.tensor(0.25)  # made once: torch.tensor() while tracing warns
_ELTWISE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "add": lambda x: x + 0.5, "sub": lambda x: x - 0.5, "mul": lambda x: x * 0.75, "div": lambda x: x / 3.0,
    "pow": lambda x: x ** 2, "sqrt": torch.sqrt, "exp": torch.exp, "log": torch.log, "erf": torch.erf,
    "tanh": torch.tanh, "neg": torch.neg, "abs": torch.abs, "reciprocal": torch.reciprocal,
    "clip": lambda x: torch.clamp(x, -1.0, 1.0), "max": lambda x: torch.maximum(x, _QUARTER),
    "min": lambda x: torch.minimum(x, _QUARTER), "cast": lambda x: x.to(torch.float64),
}
_POSITIVE_INPUT = {"sqrt", "log", "reciprocal", "div"}


def _pool(p: dict) -> nn.Module:
    for ceil in (False, True):
        out = (_out_size(p["h"], p["kh"], p["sh"], p["ph"], ceil=ceil),
               _out_size(p["w"], p["kw"], p["sw"], p["pw"], ceil=ceil))
        if out == (p["hout"], p["wout"]):
            args = ((p["kh"], p["kw"]), (p["sh"], p["sw"]), (p["ph"], p["pw"]))
            return nn.MaxPool2d(*args, ceil_mode=ceil) if p["mode"] == "max" else nn.AvgPool2d(*args, ceil_mode=ceil)
    raise ValueError(f"pool: no symmetric padding/ceil mode gives output ({p['hout']}, {p['wout']}) for {p}")


def _layout(p: dict) -> tuple[nn.Module, tuple[int, ...]]:
    op, shape, attrs = p["op"], _dims(p["in_shape"]), _attrs(p["attr"])
    out = _dims(p["out_shape"])
    if op == "Transpose":
        perm = _ints(attrs["perm"])
        return _Lambda(lambda x: x.permute(*perm)), shape
    if op == "Split":
        axis, sizes = int(attrs["axis"]), _ints(attrs["split"])
        return _Lambda(lambda x: torch.split(x, sizes, dim=axis)), shape
    if op == "Slice":
        slices = attrs["slices"].split("|") if "slices" in attrs else []
        if len(slices) != 1:
            raise ValueError(f"layout Slice over {len(slices)} axes is not reproducible (torch exports one per axis)")
        axis, start, stop, step = _ints(slices[0].replace(":", ","))
        index = (slice(None),) * axis + (slice(start, stop, step),)
        return _Lambda(lambda x: x[index]), shape
    if op == "Gather":
        axis = int(attrs["axis"])
        if attrs.get("indices_shape") == "scalar":
            position = _ints(attrs["indices"])[0]
            return _Lambda(lambda x: x.select(axis, position)), shape
        if "indices" in attrs and len(_dims(attrs["indices_shape"])) == 1:
            indices = torch.tensor(_ints(attrs["indices"]))
            return _Lambda(lambda x: torch.index_select(x, axis, indices)), shape
        raise ValueError(f"layout Gather with indices {attrs} is not reproducible (scalar or short 1-D only)")
    if op == "Expand":
        return _Lambda(lambda x: x.expand(*out)), shape
    if op == "Reshape":
        return _Lambda(lambda x: x.reshape(*out)), shape
    if op == "Pad":
        pads, rank = _ints(attrs["pads"]), len(shape)
        torch_pads = [v for axis in reversed(range(rank)) for v in (pads[axis], pads[axis + rank])]
        mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[attrs["mode"]]
        return _Lambda(lambda x: F.pad(x, torch_pads, mode=mode)), shape
    if op == "DepthToSpace" and attrs.get("mode") == "CRD":
        return nn.PixelShuffle(int(attrs["blocksize"])), shape
    raise ValueError(f"layout op {op} with attributes {attrs} has no torch builder")


def _module_and_shapes(config: KernelConfig) -> tuple[nn.Module, list[tuple[int, ...]]]:
    p, kind = dict(config.params), config.type
    nchw = (p.get("batch"), p.get("c"), p.get("h"), p.get("w"))
    # w = 1 with h > 1 is a rank-3 tensor, in these models tokens (B, N, C) (kernel_params): elementwise
    # kernels are built on that layout. As (B, C, N, 1), onnxruntime's INT8 QLinearMul/QLinearAdd
    # take a per-element broadcast path: 3.6 ms for a GELU on 196 x 384 against 0.09 ms as (B, N, C).
    tokens = p.get("w") == 1 and (p.get("h") or 1) > 1
    if tokens and kind in ("act", "add", "eltwise"):
        nchw = (p["batch"], p["h"], p["c"])
    if kind in ("conv", "dwconv", "gconv"):
        shapes = [(p["batch"], p["cin"], p["h"], p["w"])]
        if p["residual"] != "none":
            shapes.append((p["batch"], p["cout"], p["hout"], p["wout"]))
        return _Conv(p, kind), shapes
    if kind == "patch_embed":
        return _PatchEmbed(p), [(p["batch"], p["cin"], p["h"], p["w"])]
    if kind == "fc":
        shape = (p["batch"], p["cin"]) if p["tokens"] == 1 else (p["batch"], p["tokens"], p["cin"])
        return _Sequential(nn.Linear(p["cin"], p["cout"]), p["act"]), [shape]
    if kind == "matmul":
        return _Lambda(torch.matmul), [(p["batch"], p["m"], p["k"]), (p["batch"], p["k"], p["n"])]
    if kind == "attention":
        lead = (p["batch"], p["heads"])
        return _Attention(p), [(*lead, p["q_tokens"], p["qk_dim"]), (*lead, p["kv_tokens"], p["qk_dim"]),
                               (*lead, p["kv_tokens"], p["v_dim"])]
    if kind == "softmax":
        return _Lambda(lambda x: x.softmax(dim=-1)), [(1, p["rows"], p["cols"])]
    if kind == "layernorm":
        return nn.LayerNorm(p["dim"]), [(1, p["rows"], p["dim"])]
    if kind == "act":
        if p["act"] == "none":
            raise ValueError("an act kernel needs an activation, got act='none'")
        return activation_module(p["act"]), [nchw]
    if kind == "add":
        if tokens:
            other = {"none": nchw, "channel": (1, 1, p["c"]), "scalar": (1, 1, 1), "other": (1, p["h"], 1)}[p["bcast"]]
        else:
            other = {"none": nchw, "channel": (p["batch"], p["c"], 1, 1), "scalar": (1, 1, 1, 1),
                     "other": (1, 1, p["h"], p["w"])}[p["bcast"]]
        return _Add(p), [nchw, other]
    if kind == "eltwise":
        if p["op"] not in _ELTWISE:
            raise ValueError(f"eltwise op {p['op']!r} has no torch builder; supported: {sorted(_ELTWISE)}")
        return _Lambda(_ELTWISE[p["op"]]), [nchw]
    if kind == "bn":
        bn = nn.BatchNorm2d(p["c"])
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 1.5)
        return bn, [nchw]
    if kind == "pool":
        return _pool(p), [nchw]
    if kind == "gap":
        return _Lambda(lambda x: x.mean((2, 3), keepdim=True)), [nchw]
    if kind == "concat":
        axis = "bchw".index(p["axis"])
        sizes = [int(s) for s in p["sizes"].split("+")]
        shapes = [tuple(size if i == axis else d for i, d in enumerate(nchw)) for size in sizes]
        return _Lambda(lambda *xs: torch.cat(xs, dim=axis)), shapes
    if kind == "se":
        return _SqueezeExcite(p), [nchw]
    if kind == "layout":
        module, shape = _layout(p)
        return module, [tuple(shape)]
    raise ValueError(f"no builder for kernel type {kind!r}")


def build_kernel_module(config: KernelConfig, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A module in eval mode computing exactly ``config``, and example inputs (deterministic in
    ``seed`` and the config)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(config.key().encode()))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        module, shapes = _module_and_shapes(config)
    positive = config.type == "eltwise" and config["op"] in _POSITIVE_INPUT or (
        config.type == "add" and config["op"] == "div")
    inputs = []
    for shape in shapes:
        value = torch.randn(shape, generator=generator)
        inputs.append(value.abs() + 0.5 if positive else value)
    return module.eval(), tuple(inputs)


def build_kernel_onnx(config: KernelConfig, path: str | Path, *, seed: int = 0, opset: int = 17,
                      check: bool = True) -> Path:
    """Export :func:`build_kernel_module` of ``config`` to ``path`` (checked against torch)."""
    from moonlit.common.export.onnx import export_onnx

    module, inputs = build_kernel_module(config, seed)
    return export_onnx(module, inputs, path, opset=opset, check=check)
