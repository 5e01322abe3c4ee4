"""Kernel detection engine: applies fusion rules (:mod:`moonlit.litepred.kernels.fusion`) to a graph.

:func:`partition` turns a :class:`~moonlit.litepred.graph.ir.Graph` into units (idiom matches and
single nodes, seen through transparent ops), marks constant-only units free, then tries the
rules in priority order on every unassigned unit in topological order. A structural match is
handed to a caller-supplied ``extract`` function (the kernel-parameter reader), which may reject
it with :class:`NotApplicable`; the next rule then gets its turn. Every node ends up in exactly
one of: a kernel, the free list (with why), or the unassigned list (with why).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moonlit.litepred.graph.ir import Graph, Node
from moonlit.litepred.kernels.fusion import Idiom, InputSpec, Rule, RuleSet, Step
from moonlit.litepred.kernels.predicates import PREDICATES, other_ok

__all__ = ["NotApplicable", "Unit", "GraphView", "Match", "Partition", "build_units", "partition"]

_COMMUTATIVE = frozenset({"Add", "Mul", "Max", "Min", "Sum"})
_FIRST_OPERAND = frozenset({"Sub", "Div", "Pow"})  # a chained tensor must be their input 0


class NotApplicable(Exception):
    """Raised by a kernel extractor to reject a structural match (e.g. a 3-D conv)."""


@dataclass(eq=False)
class Unit:
    """One logical op: a single node or an idiom match. ``inputs`` are resolved through
    transparent ops; for idioms the bound variables come first, then static operands."""

    index: int
    op: str
    nodes: tuple[Node, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    idiom: str | None = None

    @property
    def main(self) -> Node:
        return self.nodes[-1]


class GraphView:
    """A :class:`Graph` seen through transparent ops, with unit-level producers/consumers."""

    def __init__(self, graph: Graph, transparent: frozenset[str] = frozenset(),
                 view_ops: frozenset[str] = frozenset()) -> None:
        self.graph = graph
        self.transparent = transparent
        self.view_ops = view_ops
        self.units: list[Unit] = []
        self.unit_of_output: dict[str, Unit] = {}
        self.unit_consumers: dict[str, list[Unit]] = {}
        self.unit_of_node: dict[str, Unit] = {}
        self.outputs = {self.resolve(name) for name in graph.outputs}

    def resolve(self, tensor: str) -> str:
        node = self.graph.producer(tensor)
        while node is not None and node.op_type in self.transparent and node.present_inputs:
            tensor = node.present_inputs[0]
            node = self.graph.producer(tensor)
        return tensor

    def node_consumers(self, tensor: str) -> list[Node]:
        found: list[Node] = []
        for node in self.graph.consumers(tensor):
            if node.op_type in self.transparent:
                for out in node.outputs:
                    found.extend(self.node_consumers(out))
            else:
                found.append(node)
        return found

    def add_unit(self, op: str, nodes: tuple[Node, ...], inputs: tuple[str, ...], idiom: str | None) -> None:
        unit = Unit(len(self.units), op, nodes, inputs, tuple(o for o in nodes[-1].outputs if o), idiom)
        self.units.append(unit)
        self.unit_of_node.update((node.name, unit) for node in nodes)
        for out in unit.outputs:
            self.unit_of_output[out] = unit
        for name in dict.fromkeys(inputs):
            if name:
                self.unit_consumers.setdefault(name, []).append(unit)

    def producer(self, tensor: str) -> Unit | None:
        return self.unit_of_output.get(tensor)

    def consumers(self, tensor: str) -> list[Unit]:
        """Units reading ``tensor``'s data; Shape-like readers (all outputs static) do not count."""
        return [unit for unit in self.unit_consumers.get(tensor, [])
                if not all(self.graph.is_static(out) for out in unit.outputs)]

    def fanout(self, tensor: str) -> int:
        return len(self.consumers(tensor)) + (tensor in self.outputs)

    def is_static_unit(self, unit: Unit) -> bool:
        return all(self.graph.is_static(name) for name in unit.inputs if name)


def _value_close(graph: Graph, tensor: str, spec: InputSpec) -> bool:
    if not graph.is_static(tensor):
        return False
    value = graph.value(tensor)
    if value is None or value.size == 0:
        return False
    return bool(np.allclose(value.astype(np.float64), spec.value, rtol=0.0, atol=spec.tol * max(1.0, abs(spec.value))))


def _attrs_match(node: Node, wanted: Mapping[str, Any]) -> bool:
    for key, value in wanted.items():
        got = node.attrs.get(key)
        if isinstance(value, str) or isinstance(got, str):
            if got != value:
                return False
        elif got is None or np.shape(got) != np.shape(value) or not np.allclose(got, value):
            return False
    return True


def _match_idiom(view: GraphView, idiom: Idiom, out: Node, claimed: set[str]):
    """Match ``idiom`` with its output node at ``out``; return (node by id, var bindings) or None."""
    pattern = {node.id: node for node in idiom.nodes}
    graph = view.graph

    def match_node(pid: str, node: Node | None, state: tuple[dict, dict]) -> Iterator[tuple[dict, dict]]:
        spec = pattern[pid]
        nodes, bound = state
        if node is None or node.op_type != spec.op or node.name in claimed:
            return
        if pid in nodes:
            if nodes[pid] is node:
                yield state
            return
        if any(other is node for other in nodes.values()) or not _attrs_match(node, spec.attrs):
            return
        inputs = [view.resolve(name) if name else "" for name in node.inputs]
        while inputs and not inputs[-1]:
            inputs.pop()
        count = len(spec.inputs)
        extra = inputs[count:]
        if len(inputs) < count or (extra and (spec.extra_inputs != "static"
                                              or not all(graph.is_static(x) for x in extra if x))):
            return
        orders = [(0, 1), (1, 0)] if spec.op in _COMMUTATIVE and count == 2 else [tuple(range(count))]
        for order in orders:
            yield from match_inputs(list(spec.inputs), [inputs[i] for i in order], ({**nodes, pid: node}, bound))

    def match_inputs(specs: list[InputSpec], tensors: list[str], state) -> Iterator[tuple[dict, dict]]:
        if not specs:
            yield state
            return
        spec, tensor = specs[0], tensors[0]
        nodes, bound = state
        if spec.kind == "var":
            if spec.ref in bound:
                candidates = [state] if bound[spec.ref] == tensor else []
            else:
                candidates = [] if graph.is_static(tensor) else [(nodes, {**bound, spec.ref: tensor})]
        elif spec.kind == "const":
            candidates = [state] if _value_close(graph, tensor, spec) else []
        elif spec.kind == "static":
            candidates = [state] if graph.is_static(tensor) else []
        else:
            candidates = list(match_node(spec.ref, graph.producer(tensor), state))
        for candidate in candidates:
            yield from match_inputs(specs[1:], tensors[1:], candidate)

    for nodes, bound in match_node(idiom.nodes[-1].id, out, ({}, {})):
        members = {node.name for node in nodes.values()}
        interior_ok = all(
            consumer.name in members
            for pid, node in nodes.items() if pid != idiom.nodes[-1].id
            for output in node.outputs if output
            for consumer in view.node_consumers(output)
        ) and not any(o in view.outputs for pid, n in nodes.items() if pid != idiom.nodes[-1].id for o in n.outputs)
        if interior_ok:
            return nodes, bound
    return None


def build_units(view: GraphView, idioms: tuple[Idiom, ...]) -> None:
    graph, claimed = view.graph, set()
    order = {node.name: i for i, node in enumerate(graph.nodes)}
    found: list[tuple[int, str, tuple[Node, ...], tuple[str, ...], str | None]] = []
    for idiom in idioms:
        for node in graph.nodes:
            if node.op_type != idiom.nodes[-1].op or node.name in claimed or node.op_type in view.transparent:
                continue
            result = _match_idiom(view, idiom, node, claimed)
            if result is None:
                continue
            nodes, bound = result
            members = tuple(sorted(nodes.values(), key=lambda n: order[n.name]))  # output node last
            produced = {o for n in members for o in n.outputs}
            variables = [bound[spec.ref] for n in idiom.nodes for spec in n.inputs if spec.kind == "var"]
            statics = [view.resolve(x) for n in members for x in n.present_inputs if view.resolve(x) not in produced]
            inputs = tuple(dict.fromkeys([*variables, *statics]))
            claimed.update(n.name for n in members)
            found.append((order[node.name], idiom.op, members, inputs, idiom.name))
    for node in graph.nodes:
        if node.name not in claimed and node.op_type not in view.transparent:
            inputs = [view.resolve(x) if x else "" for x in node.inputs]
            while inputs and not inputs[-1]:
                inputs.pop()
            found.append((order[node.name], node.op_type, (node,), tuple(inputs), None))
    for _, op, members, inputs, idiom_name in sorted(found, key=lambda item: item[0]):
        view.add_unit(op, members, inputs, idiom_name)


# ---- rules ---------------------------------------------------------------------------------
@dataclass
class Match:
    """A structural match of ``rule``: the anchor, the units of each named role, all units."""

    view: GraphView
    rule: Rule
    anchor: Unit
    roles: dict[str, Unit] = field(default_factory=dict)
    units: list[Unit] = field(default_factory=list)


def _accepts(view: GraphView, step: Step, unit: Unit, through: str, anchor: Unit, forward: bool) -> str | None:
    """If ``unit`` satisfies ``step`` when reached through tensor ``through``, return the tensor
    the walk continues from (forward: its output; backward: its main input), else None."""
    if unit.op not in step.ops or not all(PREDICATES[p](view, unit) for p in step.where):
        return None
    if forward:
        if through not in unit.inputs:
            return None
        position = step.input if step.input is not None else (0 if unit.op in _FIRST_OPERAND else None)
        if position is not None and (position >= len(unit.inputs) or unit.inputs[position] != through):
            return None
        main = through
    else:
        if through not in unit.outputs:
            return None
        activations = [x for x in unit.inputs if x and not view.graph.is_static(x)]
        if not activations:
            return None
        main = activations[0]
    others = [x for x in unit.inputs if x and x != main]
    if not other_ok(view, step.other, others, main, anchor):
        return None
    return unit.outputs[0] if forward else main


def _match_rule(view: GraphView, rule: Rule, anchor: Unit, taken: set[int]) -> Match | None:
    if not all(PREDICATES[p](view, anchor) for p in rule.anchor_where):
        return None
    match = Match(view, rule, anchor, {"anchor": anchor}, [anchor])
    used = {anchor.index}
    for index, steps in rule.before.items():
        tensor = anchor.inputs[index] if index < len(anchor.inputs) else ""
        for step in steps:
            unit = view.producer(tensor) if tensor else None
            nxt = None
            if unit is not None and unit.index not in taken | used and view.fanout(tensor) == 1:
                nxt = _accepts(view, step, unit, tensor, anchor, forward=False)
            if nxt is not None:
                match.units.append(unit)
                used.add(unit.index)
                if step.role:
                    match.roles[step.role] = unit
                tensor = nxt
            elif not step.optional:
                return None
    tensor = anchor.outputs[0] if anchor.outputs else ""
    for step in rule.chain:
        if any(role in match.roles for role in step.excludes):
            continue
        current, views, found = tensor, [], None
        while current and view.fanout(current) == 1 and view.consumers(current):
            unit = view.consumers(current)[0]
            if unit.index in taken | used:
                break
            nxt = _accepts(view, step, unit, current, anchor, forward=True)
            if nxt is not None:
                found = (unit, nxt)
                break
            if unit.op in view.view_ops and len(unit.outputs) == 1 and unit.inputs[:1] == (current,):
                views.append(unit)
                current = unit.outputs[0]
                continue
            break
        if found is not None:
            unit, tensor = found
            match.units.extend([*views, unit])
            used.update(u.index for u in (*views, unit))
            if step.role:
                match.roles[step.role] = unit
        elif not step.optional:
            return None
    return match


@dataclass
class Partition:
    """Result of :func:`partition`: kernels (match, payload), free and unassigned units."""

    view: GraphView
    kernels: list[tuple[Match, Any]]
    free: list[tuple[Node, str]]
    unassigned: list[tuple[Node, str]]
    attached: dict[str, int]  # transparent node name → index into kernels


def partition(graph: Graph, rules: RuleSet, extract: Callable[[Match], Any]) -> Partition:
    """Split ``graph`` into kernels (``extract(match)`` gives each one's payload or raises
    :class:`NotApplicable`), free units and unassigned units, following ``rules``."""
    view = GraphView(graph, rules.transparent_ops, rules.view_ops)
    build_units(view, rules.idioms)
    taken: set[int] = set()
    free: list[tuple[Node, str]] = []
    for unit in view.units:
        if view.is_static_unit(unit):
            taken.add(unit.index)
            free.extend((node, "static (constant-folded)") for node in unit.nodes)
            continue
        for ops, where in rules.free_when:  # before the rules: a no-op Slice is no layout kernel
            if unit.op in ops and all(PREDICATES[p](view, unit) for p in where):
                taken.add(unit.index)
                free.extend((node, f"free op {unit.op} ({', '.join(where)})") for node in unit.nodes)
                break
    kernels: list[tuple[Match, Any]] = []
    rejected: dict[int, str] = {}
    for rule in rules.rules:
        for unit in view.units:
            if unit.index in taken or unit.op not in rule.anchor_ops:
                continue
            match = _match_rule(view, rule, unit, taken)
            if match is None:
                continue
            try:
                payload = extract(match)
            except NotApplicable as reason:
                rejected[unit.index] = f"rule {rule.name!r} rejected it: {reason}"
                continue
            kernels.append((match, payload))
            taken.update(u.index for u in match.units)
    unassigned: list[tuple[Node, str]] = []
    for unit in view.units:
        if unit.index in taken:
            continue
        if unit.op in rules.free_ops:
            free.extend((node, f"free op {unit.op}") for node in unit.nodes)
        else:
            reason = rejected.get(unit.index, f"no rule of platform {rules.platform!r} matches op {unit.op!r}")
            unassigned.extend((node, reason) for node in unit.nodes)
    kernels.sort(key=lambda item: min(u.index for u in item[0].units))
    attached = _attach_transparent(view, kernels, free)
    return Partition(view, kernels, free, unassigned, attached)


def _attach_transparent(view: GraphView, kernels: list[tuple[Match, Any]], free: list) -> dict[str, int]:
    """Give each transparent node (Q/DQ) to the kernel it feeds, else the one that feeds it."""
    owner = {u.index: k for k, (match, _) in enumerate(kernels) for u in match.units}
    attached: dict[str, int] = {}
    for node in view.graph.nodes:
        if node.op_type not in view.transparent:
            continue
        if all(view.graph.is_static(x) for x in node.present_inputs):
            free.append((node, "static (constant-folded)"))
            continue
        candidates = [view.unit_of_node[n.name].index for out in node.outputs for n in view.node_consumers(out)]
        source = view.producer(view.resolve(node.present_inputs[0])) if node.present_inputs else None
        candidates += [source.index] if source is not None else []
        kernel = next((owner[i] for i in candidates if i in owner), None)
        if kernel is None:
            free.append((node, f"transparent op {node.op_type} next to no kernel"))
        else:
            attached[node.name] = kernel
    return attached


