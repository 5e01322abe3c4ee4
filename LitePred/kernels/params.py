"""Read a detected kernel's parameters from its matched ONNX nodes (LitePred §4.1).

One extractor per kernel type turns a :class:`~moonlit.litepred.kernels.matching.Match` into the
parameter dict of :data:`moonlit.litepred.kernels.detect.KERNEL_PARAMS`. Geometry comes from inferred
shapes and node attributes (output sizes are read, not recomputed). An extractor raises
:class:`~moonlit.litepred.kernels.matching.NotApplicable` for shapes it cannot describe (3-D convs,
batched constant weights…), which sends the unit on to the next rule or to the unassigned list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from moonlit.common.errors import InputError
from moonlit.litepred.kernels.matching import GraphView, Match, NotApplicable
from moonlit.litepred.kernels.predicates import reduce_axes, softmax_axis

__all__ = ["extract_params", "fold_nchw", "shape_str"]

Params = dict[str, int | str]


def _prod(values: Sequence[int]) -> int:
    return int(np.prod(values, dtype=np.int64)) if len(values) else 1


def fold_nchw(shape: Sequence[int], channels_last: bool = True) -> tuple[int, int, int, int]:
    """(batch, c, h, w) of a tensor: rank 4 is NCHW; rank 3 is tokens (B, N, C) → h=N, w=1
    (``channels_last``) or (B, C, L) → h=L, w=1; rank 2 is (B, C); higher ranks fold the middle."""
    shape = [int(d) for d in shape]
    if len(shape) == 4:
        return shape[0], shape[1], shape[2], shape[3]
    if len(shape) == 0:
        return 1, 1, 1, 1
    if len(shape) == 1:
        return 1, shape[0], 1, 1
    if len(shape) == 2:
        return shape[0], shape[1], 1, 1
    if channels_last:
        return shape[0], shape[-1], _prod(shape[1:-1]), 1
    return shape[0], shape[1], _prod(shape[2:]), 1


def shape_str(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape) if len(shape) else "scalar"


def _shape(match: Match, tensor: str) -> tuple[int, ...]:
    return match.view.graph.shape(tensor)


def _nchw(batch: int, c: int, h: int, w: int) -> Params:
    return {"batch": batch, "c": c, "h": h, "w": w}


def _act(match: Match) -> str:
    unit = match.roles.get("act")
    return "none" if unit is None else unit.op


def _check_window(node_name: str, op_type: str, values: dict[str, Sequence[int]]) -> None:
    """Kernel sizes, strides and dilations >= 1, pads >= 0: the schema does not bound them, shape
    inference may pass them, and a kernel's features (square roots, divisions) need them."""
    for name, numbers in values.items():
        least = 0 if name == "pads" else 1
        if any(int(v) < least for v in numbers):
            raise InputError(f"node {node_name!r} ({op_type!r}) has {name} {list(numbers)}; expected ints >= {least}")


def _window(node_attrs: dict, kernel: list[int], in_hw: Sequence[int], out_hw: Sequence[int],
            node_name: str, op_type: str) -> tuple:
    """(strides, begin pads, dilations) of a 2-D Conv/Pool, with auto_pad resolved."""
    strides = list(node_attrs.get("strides", [1] * len(kernel)))
    dilations = list(node_attrs.get("dilations", [1] * len(kernel)))
    _check_window(node_name, op_type, {"kernel_shape": kernel, "strides": strides, "dilations": dilations,
                                       "pads": list(node_attrs.get("pads", []))})
    auto_pad = node_attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, out, k, s, d in zip(in_hw, out_hw, kernel, strides, dilations):
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
    else:
        pads = list(node_attrs.get("pads", [0] * 2 * len(kernel)))[: len(kernel)]
    return strides, pads, dilations


def _as_2d(values: Sequence[int], fill: int) -> list[int]:
    values = list(values)
    return values if len(values) == 2 else [*values, fill]


def _conv_geometry(match: Match) -> Params:
    anchor = match.anchor
    x, weight, y = (_shape(match, t) for t in (anchor.inputs[0], anchor.inputs[1], anchor.outputs[0]))
    if len(x) not in (3, 4):
        raise NotApplicable(f"{len(x) - 2}-D convolution (input shape {list(x)})")
    kernel = list(anchor.main.attrs.get("kernel_shape", weight[2:]))
    strides, pads, dilations = _window(anchor.main.attrs, kernel, x[2:], y[2:], anchor.main.name,
                                       anchor.main.op_type)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (_as_2d(v, f) for v, f in
                                              ((kernel, 1), (strides, 1), (pads, 0), (dilations, 1)))
    hw, out_hw = _as_2d(x[2:], 1), _as_2d(y[2:], 1)
    groups = int(anchor.main.attrs.get("group", 1))
    if groups < 1 or x[1] % groups or weight[0] % groups:
        raise InputError(f"node {anchor.main.name!r} (Conv) has group={groups} for {x[1]} input and {weight[0]} "
                         "output channels; expected a positive divisor of both")
    return {"batch": x[0], "h": hw[0], "w": hw[1], "cin": x[1], "cout": weight[0], "kh": kh, "kw": kw,
            "sh": sh, "sw": sw, "ph": ph, "pw": pw, "dh": dh, "dw": dw,
            "groups": groups, "hout": out_hw[0], "wout": out_hw[1]}


def _conv(match: Match) -> Params:
    residual = "pre_act" if "residual_pre" in match.roles else (
        "post_act" if "residual_post" in match.roles else "none")
    return {**_conv_geometry(match), "act": _act(match), "residual": residual}


def _patch_embed(match: Match) -> Params:
    geometry = _conv_geometry(match)
    return {k: geometry[k] for k in ("batch", "h", "w", "cin", "cout", "kh", "kw", "hout", "wout")}


def _fc(match: Match) -> Params:
    anchor = match.anchor
    a, b = _shape(match, anchor.inputs[0]), _shape(match, anchor.inputs[1])
    if len(b) != 2 or len(a) < 1:
        raise NotApplicable(f"weight of shape {list(b)} is not a matrix")
    if anchor.main.op_type == "Gemm":
        a = a[::-1] if anchor.main.attrs.get("transA", 0) else a
        b = b[::-1] if anchor.main.attrs.get("transB", 0) else b
    if a[-1] != b[0]:
        raise NotApplicable(f"inner dims differ: input {list(a)}, weight {list(b)}")
    batch = a[0] if len(a) >= 2 else 1
    return {"batch": batch, "tokens": _prod(a[1:-1]), "cin": b[0], "cout": b[1], "act": _act(match)}


def _matmul(match: Match) -> Params:
    a, b = (_shape(match, t) for t in match.anchor.inputs[:2])
    out = _shape(match, match.anchor.outputs[0])
    if len(a) < 2 or len(b) < 2:
        raise NotApplicable(f"matmul of vectors {list(a)} @ {list(b)}")
    return {"batch": _prod(out[:-2]), "m": a[-2], "k": a[-1], "n": b[-1]}


def _attention(match: Match) -> Params:
    a, b = (_shape(match, t) for t in match.anchor.inputs[:2])
    av = match.roles["av"]
    v, out = _shape(match, av.inputs[1]), _shape(match, av.outputs[0])
    if len(a) < 2 or a[-1] != b[-2] or b[-1] != v[-2]:
        raise NotApplicable(f"inconsistent attention shapes q {list(a)}, k^T {list(b)}, v {list(v)}")
    return {"batch": _prod(out[:-3]), "heads": out[-3] if len(out) >= 3 else 1, "q_tokens": a[-2],
            "kv_tokens": b[-1], "qk_dim": a[-1], "v_dim": v[-1], "bias": int("bias" in match.roles)}


def _softmax(match: Match) -> Params:
    x = _shape(match, match.anchor.inputs[0])
    cols = x[softmax_axis(match.view, match.anchor)] if x else 1
    return {"rows": _prod(x) // max(cols, 1), "cols": cols}


def _layernorm(match: Match) -> Params:
    anchor = match.anchor
    x = _shape(match, anchor.inputs[0])
    if anchor.main.op_type == "LayerNormalization":
        axes = range(int(anchor.main.attrs.get("axis", -1)) % len(x), len(x))
    else:  # decomposed: the first ReduceMean's axes
        axes = reduce_axes(match.view, next(n for n in anchor.nodes if n.op_type == "ReduceMean"))
        if not axes:
            raise NotApplicable("decomposed layernorm with unknown reduction axes")
    dim = _prod([x[a] for a in axes])
    return {"rows": _prod(x) // dim, "dim": dim}


def _elementwise(match: Match) -> Params:
    return _nchw(*fold_nchw(_shape(match, match.anchor.outputs[0])))


def _add(match: Match) -> Params:
    out = _shape(match, match.anchor.outputs[0])
    batch, c, h, w = fold_nchw(out)
    sizes = sorted(match.view.graph.numel(t) for t in match.anchor.inputs[:2])
    total = _prod(out)
    if sizes[0] == total:
        bcast = "none"
    elif sizes[1] != total:
        bcast = "other"
    elif sizes[0] == 1:
        bcast = "scalar"
    elif sizes[0] == batch * c:
        bcast = "channel"
    else:
        bcast = "other"
    return {**_nchw(batch, c, h, w), "op": match.anchor.op.lower(), "bcast": bcast, "act": _act(match)}


def _act_kernel(match: Match) -> Params:
    return {**_elementwise(match), "act": match.anchor.op}


def _eltwise(match: Match) -> Params:
    return {**_elementwise(match), "op": match.anchor.op.lower()}


def _bn(match: Match) -> Params:
    return _nchw(*fold_nchw(_shape(match, match.anchor.inputs[0]), channels_last=False))


def _pool(match: Match) -> Params:
    anchor = match.anchor
    x, y = _shape(match, anchor.inputs[0]), _shape(match, anchor.outputs[0])
    if len(x) not in (3, 4):
        raise NotApplicable(f"{len(x) - 2}-D pooling (input shape {list(x)})")
    kernel = list(anchor.main.attrs["kernel_shape"])
    strides, pads, _ = _window(anchor.main.attrs, kernel, x[2:], y[2:], anchor.main.name, anchor.main.op_type)
    (kh, kw), (sh, sw), (ph, pw) = (_as_2d(v, f) for v, f in ((kernel, 1), (strides, 1), (pads, 0)))
    hw, out_hw = _as_2d(x[2:], 1), _as_2d(y[2:], 1)
    return {**_nchw(x[0], x[1], hw[0], hw[1]), "kh": kh, "kw": kw, "sh": sh, "sw": sw, "ph": ph, "pw": pw,
            "hout": out_hw[0], "wout": out_hw[1], "mode": "max" if anchor.op == "MaxPool" else "avg"}


def _gap(match: Match) -> Params:
    x = _shape(match, match.anchor.inputs[0])
    tokens = match.anchor.op == "ReduceMean" and len(x) == 3
    return _nchw(*fold_nchw(x, channels_last=tokens))


_AXIS_NAMES = {4: "bchw", 3: "bhc", 2: "bc", 1: "c"}


def _concat(match: Match) -> Params:
    anchor = match.anchor
    out = _shape(match, anchor.outputs[0])
    if len(out) not in _AXIS_NAMES:
        raise NotApplicable(f"concat of rank-{len(out)} tensors")
    axis = int(anchor.main.attrs["axis"]) % len(out)
    sizes = [_shape(match, t)[axis] for t in anchor.inputs if t]
    return {**_nchw(*fold_nchw(out)), "axis": _AXIS_NAMES[len(out)][axis], "sizes": "+".join(map(str, sizes))}


def _se(match: Match) -> Params:
    x = _shape(match, match.anchor.inputs[0])
    if len(x) != 4:
        raise NotApplicable(f"SE block on a rank-{len(x)} tensor")
    mid = match.view.graph.numel(match.roles["reduce"].outputs[0]) // x[0]
    return {**_nchw(*x), "mid": mid, "act": _act(match), "gate": match.roles["gate"].op}


def _static_ints(view: GraphView, tensor: str, what: str) -> list[int]:
    value = view.graph.value(tensor) if tensor else None
    if value is None:
        raise NotApplicable(f"{what} is not a foldable constant")
    return [int(v) for v in value.reshape(-1)]


def _layout_attr(match: Match) -> str:
    unit, view = match.anchor, match.view
    node, x = unit.main, _shape(match, unit.inputs[0])
    rank = len(x)
    if node.op_type == "Transpose":
        return "perm=" + ",".join(map(str, node.attrs.get("perm", range(rank - 1, -1, -1))))
    if node.op_type == "Split":
        axis = int(node.attrs.get("axis", 0)) % rank
        sizes = [_shape(match, out)[axis] for out in unit.outputs]
        return f"axis={axis};split=" + ",".join(map(str, sizes))
    if node.op_type == "Slice":  # canonical "axis:start:stop:step|…", clamped like Python slices
        starts, ends = (_static_ints(view, unit.inputs[i], f"Slice input {i}") for i in (1, 2))
        axes = _static_ints(view, unit.inputs[3], "Slice axes") if len(unit.inputs) > 3 and unit.inputs[3] \
            else list(range(len(starts)))
        steps = _static_ints(view, unit.inputs[4], "Slice steps") if len(unit.inputs) > 4 and unit.inputs[4] \
            else [1] * len(starts)
        parts = []
        for start, end, axis, step in sorted(zip(starts, ends, axes, steps), key=lambda item: item[2] % rank):
            begin, stop, stride = slice(start, end, step).indices(x[axis % rank])
            parts.append(f"{axis % rank}:{begin}:{stop}:{stride}")
        return "slices=" + "|".join(parts)
    if node.op_type == "Gather":
        axis = int(node.attrs.get("axis", 0)) % rank
        indices = view.graph.value(unit.inputs[1])
        if indices is not None and indices.size <= 16:
            text = ",".join(str(int(i) % x[axis]) for i in indices.reshape(-1))
            return f"axis={axis};indices={text};indices_shape={shape_str(indices.shape)}"
        return f"axis={axis};indices_shape={shape_str(_shape(match, unit.inputs[1]))}"
    if node.op_type == "Pad":
        pads = node.attrs.get("pads") or _static_ints(view, unit.inputs[1], "Pad pads")
        return f"mode={node.attrs.get('mode', 'constant')};pads=" + ",".join(map(str, pads))
    if node.op_type in ("DepthToSpace", "SpaceToDepth"):
        return f"blocksize={node.attrs['blocksize']};mode={node.attrs.get('mode', 'DCR')}"
    return ""  # Expand, Tile: the output shape says it all


def _layout(match: Match) -> Params:
    unit = match.anchor
    return {"op": unit.op, "in_shape": shape_str(_shape(match, unit.inputs[0])),
            "out_shape": shape_str(_shape(match, unit.outputs[0])), "attr": _layout_attr(match)}


_EXTRACTORS: dict[str, Callable[[Match], Params]] = {
    "conv": _conv, "dwconv": _conv, "gconv": _conv, "patch_embed": _patch_embed, "fc": _fc,
    "matmul": _matmul, "attention": _attention, "softmax": _softmax, "layernorm": _layernorm,
    "act": _act_kernel, "add": _add, "eltwise": _eltwise, "bn": _bn, "pool": _pool, "gap": _gap,
    "concat": _concat, "se": _se, "layout": _layout,
}


def extract_params(match: Match) -> Params:
    """Parameters of the kernel ``match.rule.kernel`` for a structural match."""
    try:
        extractor = _EXTRACTORS[match.rule.kernel]
    except KeyError:
        raise NotApplicable(f"no parameter extractor for kernel type {match.rule.kernel!r}") from None
    return extractor(match)
