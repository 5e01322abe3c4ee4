"""Named structural predicates that fusion rules (``rules/*.yaml``) refer to (LitePred §3).

Rules are data; the few questions they ask about a unit's shapes and attributes ("is this Conv
depthwise?", "does this Transpose swap the last two axes?") are answered here, by name. A
predicate takes the :class:`~moonlit.litepred.kernels.matching.GraphView` and a unit and returns a
bool; it never raises for an odd graph (it answers False).

``OTHER_CONDITIONS`` are what a binary op's other operands may be when it joins a chain:
``static`` (weights/constants; also true when there are none), ``static_scalar``,
``activation`` (one run-time tensor), ``activation_same_shape`` (a residual branch),
``anchor_input`` (the tensor the anchor consumed — the SE block's final Mul) or ``any``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from moonlit.litepred.graph.ir import Node
    from moonlit.litepred.kernels.matching import GraphView, Unit

__all__ = ["PREDICATES", "OTHER_CONDITIONS", "other_ok", "reduce_axes", "softmax_axis"]


def _rank(view: GraphView, tensor: str) -> int:
    shape = view.graph.shapes.get(tensor)
    return -1 if shape is None else len(shape)


def _conv(view: GraphView, unit: Unit) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(input shape, weight shape) of a 1-D/2-D Conv with static weights, else None."""
    node = unit.main
    if node.op_type != "Conv" or len(unit.inputs) < 2 or not view.graph.is_static(unit.inputs[1]):
        return None
    x, w = view.graph.shapes.get(unit.inputs[0]), view.graph.shapes.get(unit.inputs[1])
    if x is None or w is None or len(x) not in (3, 4) or len(w) != len(x):
        return None
    return x, w


def _group(unit: Unit) -> int:
    return int(unit.main.attrs.get("group", 1))


def _depthwise(view: GraphView, unit: Unit) -> bool:
    shapes = _conv(view, unit)
    return shapes is not None and _group(unit) > 1 and _group(unit) == shapes[0][1] == shapes[1][0]


def _patchify(view: GraphView, unit: Unit) -> bool:
    shapes = _conv(view, unit)
    if shapes is None or _group(unit) != 1 or len(shapes[0]) != 4:
        return False
    attrs = unit.main.attrs
    kernel = list(attrs.get("kernel_shape", shapes[1][2:]))
    return (
        list(attrs.get("strides", [1, 1])) == kernel
        and min(kernel) >= 2
        and not any(attrs.get("pads", [0])) and attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")
        and all(d == 1 for d in attrs.get("dilations", [1, 1]))
    )


def reduce_axes(view: GraphView, node: Node) -> set[int] | None:
    """Normalised axes of a ReduceMean (attribute before opset 18, input from 18), or None."""
    inputs = node.present_inputs
    rank = _rank(view, inputs[0]) if inputs else -1
    if node.op_type != "ReduceMean" or rank < 0:
        return None
    axes = node.attrs.get("axes")
    if axes is None and len(inputs) > 1:
        value = view.graph.value(inputs[1])
        axes = None if value is None else value.reshape(-1).tolist()
    if axes is None:
        return set(range(rank))  # no axes: reduce over everything
    return {int(a) % rank for a in axes}


def _spatial_reduce(view: GraphView, unit: Unit) -> bool:
    if unit.main.op_type == "GlobalAveragePool":
        return _rank(view, unit.inputs[0]) in (3, 4)
    return _rank(view, unit.inputs[0]) == 4 and reduce_axes(view, unit.main) == {2, 3}


def _token_reduce(view: GraphView, unit: Unit) -> bool:
    return _rank(view, unit.inputs[0]) == 3 and reduce_axes(view, unit.main) == {1}


def softmax_axis(view: GraphView, unit: Unit) -> int:
    rank = _rank(view, unit.inputs[0])
    default = -1 if view.graph.opset >= 13 else 1
    return int(unit.main.attrs.get("axis", default)) % max(rank, 1)


def _swaps_last_two(view: GraphView, unit: Unit) -> bool:
    rank = _rank(view, unit.inputs[0])
    perm = unit.main.attrs.get("perm")
    return unit.main.op_type == "Transpose" and rank >= 2 and list(perm or []) == [
        *range(rank - 2), rank - 1, rank - 2
    ]


def _tokens_transpose(view: GraphView, unit: Unit) -> bool:
    """(B, C, N) → (B, N, C): the flatten-to-tokens step after a patch-embedding conv."""
    return _rank(view, unit.inputs[0]) == 3 and list(unit.main.attrs.get("perm") or []) == [0, 2, 1]


def _two_activations(view: GraphView, unit: Unit) -> bool:
    inputs = [x for x in unit.inputs if x]
    return len(inputs) == 2 and not any(view.graph.is_static(x) for x in inputs)


def _kernel_shape(unit: Unit) -> list[int]:
    return list(unit.main.attrs.get("kernel_shape", []))


PREDICATES: dict[str, Callable[[GraphView, Unit], bool]] = {
    "conv2d": lambda view, unit: _conv(view, unit) is not None,
    "dense": lambda view, unit: _conv(view, unit) is not None and _group(unit) == 1,
    "depthwise": _depthwise,
    "grouped": lambda view, unit: _conv(view, unit) is not None and _group(unit) > 1 and not _depthwise(view, unit),
    "patchify": _patchify,
    "pointwise": lambda view, unit: _conv(view, unit) is not None and all(k == 1 for k in _kernel_shape(unit)),
    "static_weight": lambda view, unit: len(unit.inputs) > 1 and view.graph.is_static(unit.inputs[1])
    and not view.graph.is_static(unit.inputs[0]),
    "two_activations": _two_activations,
    "rank2_input": lambda view, unit: _rank(view, unit.inputs[0]) == 2,
    "swaps_last_two": _swaps_last_two,
    "tokens_transpose": _tokens_transpose,
    "last_axis": lambda view, unit: softmax_axis(view, unit) == _rank(view, unit.inputs[0]) - 1,
    "spatial_reduce": _spatial_reduce,
    "token_reduce": _token_reduce,
    # The op returns its data input unchanged in shape (a Slice that keeps every element is a no-op).
    "keeps_shape": lambda view, unit: bool(unit.inputs) and bool(unit.outputs)
    and view.graph.shapes.get(unit.inputs[0]) is not None
    and view.graph.shapes.get(unit.inputs[0]) == view.graph.shapes.get(unit.outputs[0]),
}


def _numel(view: GraphView, tensor: str) -> int:
    shape = view.graph.shapes.get(tensor)
    return -1 if shape is None else int(np.prod(shape, dtype=np.int64))


OTHER_CONDITIONS = frozenset(
    {"static", "static_scalar", "activation", "activation_same_shape", "anchor_input", "any"}
)


def other_ok(view: GraphView, condition: str, others: Sequence[str], main: str, anchor: Unit) -> bool:
    """Whether the operands ``others`` (besides the chained tensor ``main``) satisfy ``condition``."""
    static = [view.graph.is_static(x) for x in others]
    if condition == "any":
        return True
    if condition == "static":
        return all(static)
    if condition == "static_scalar":
        return bool(others) and all(static) and all(_numel(view, x) == 1 for x in others)
    if len(others) != 1 or static[0]:
        return False
    if condition == "activation":
        return True
    if condition == "activation_same_shape":
        return view.graph.shapes.get(others[0]) == view.graph.shapes.get(main)
    return condition == "anchor_input" and bool(anchor.inputs) and others[0] == anchor.inputs[0]
