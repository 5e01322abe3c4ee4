"""Fusion rules as data: which ONNX nodes form one kernel on a platform (LitePred §3).

A platform's rules live in ``rules/<platform>.yaml``; a file may ``extends:`` another (found
beside it or among the packaged rules) and override it: ``sets`` by key, ``idioms`` and
``rules`` by name, ``disable: [rule names]``, new rules placed with ``insert_before``.
They have three parts, applied in this order by :func:`moonlit.litepred.kernels.matching.partition`:

1. **idioms** — small DAG patterns that are one logical op although the exporter wrote several
   nodes (GELU as Div/Erf/Add/Mul/Mul, swish as x·sigmoid(x), relu6 as Clip(0, 6), decomposed
   LayerNorm). Each match becomes one *unit* whose op is the idiom's ``op`` (``gelu``…); every
   other node is a unit whose op is its ONNX op type. Pattern inputs are ``$var`` (an
   activation; the same name must bind the same tensor), an earlier node id,
   ``{const: x, tol: t}`` or ``{static: true}``; Add/Mul match their inputs in either order.
2. **rules** — in priority order: an *anchor* unit (ops + named predicates from
   :mod:`moonlit.litepred.kernels.predicates`), ``before`` steps walking back from anchor inputs,
   and ``chain`` steps walking forward through single-consumer tensors (``view_ops`` such as
   Reshape are stepped over and absorbed). A step lists ops, ``optional``, ``as`` (a role name
   the parameter extractor reads), ``where`` predicates, ``other`` (what the other operands of a
   binary op must be), ``input`` (the operand position of the chained tensor) and ``excludes``
   (skip the step if one of these roles matched). A rule names the kernel type it yields.
3. ``free_ops`` (views, Shape), units of ``free_when`` (``{op: [...], where: [predicates]}``: a
   no-op Slice) and units with only static inputs cost nothing and are reported as free;
   ``transparent_ops`` (QuantizeLinear/DequantizeLinear in QDQ graphs) are looked
   through and attached to the kernel they feed. Anything left is *unassigned*, with a reason.

Op lists may name ``sets`` as ``$name``; sets are expanded after merging, so a platform file
changes what base rules fuse by overriding a set. A platform without its own file falls back to
``base.yaml``; :attr:`RuleSet.fallback` and :attr:`RuleSet.source` say so.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from moonlit.litepred.kernels.predicates import OTHER_CONDITIONS, PREDICATES

__all__ = [
    "RULES_DIR", "RULES_VERSION", "RuleError", "InputSpec", "IdiomNode", "Idiom", "Step", "Rule", "RuleSet",
    "available_platforms", "load_rules",
]

logger = logging.getLogger(__name__)
RULES_DIR = Path(__file__).resolve().parent / "rules"
RULES_VERSION = 1


class RuleError(ValueError):
    """A rules file is malformed; the message names the file, the rule and the bad entry."""


# ---- compiled rule data --------------------------------------------------------------------
@dataclass(frozen=True)
class InputSpec:
    kind: str  # "var" | "node" | "const" | "static"
    ref: str = ""
    value: float = 0.0
    tol: float = 1e-4


@dataclass(frozen=True)
class IdiomNode:
    id: str
    op: str
    inputs: tuple[InputSpec, ...]
    attrs: Mapping[str, Any]
    extra_inputs: str  # "none" | "static"


@dataclass(frozen=True)
class Idiom:
    name: str
    op: str
    nodes: tuple[IdiomNode, ...]  # the last one produces the idiom's output


@dataclass(frozen=True)
class Step:
    ops: frozenset[str]
    optional: bool = False
    role: str | None = None
    where: tuple[str, ...] = ()
    other: str = "static"
    input: int | None = None
    excludes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    name: str
    kernel: str
    anchor_ops: frozenset[str]
    anchor_where: tuple[str, ...]
    before: Mapping[int, tuple[Step, ...]]
    chain: tuple[Step, ...]


@dataclass(frozen=True)
class RuleSet:
    platform: str
    files: tuple[str, ...]
    fallback: bool
    description: str
    free_ops: frozenset[str]
    view_ops: frozenset[str]
    transparent_ops: frozenset[str]
    idioms: tuple[Idiom, ...]
    rules: tuple[Rule, ...]
    free_when: tuple[tuple[frozenset[str], tuple[str, ...]], ...] = ()  # (ops, predicates) of free units

    @property
    def source(self) -> str:
        chain = " <- ".join(Path(f).name for f in self.files)
        note = f" (no rules file for platform {self.platform!r}; using base)" if self.fallback else ""
        return chain + note


# ---- loading -------------------------------------------------------------------------------
_TOP_KEYS = {"version", "extends", "description", "sets", "free_ops", "free_when", "view_ops",
             "transparent_ops", "idioms", "rules", "disable"}
_RULE_KEYS = {"name", "kernel", "anchor", "before", "chain", "insert_before"}
_STEP_KEYS = {"op", "optional", "as", "where", "other", "input", "excludes"}
_IDIOM_KEYS = {"name", "op", "nodes"}
_IDIOM_NODE_KEYS = {"id", "op", "inputs", "attrs", "extra_inputs"}


def available_platforms() -> list[str]:
    return sorted(path.stem for path in RULES_DIR.glob("*.yaml"))


def _read_raw(path: Path, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    if str(path) in seen:
        raise RuleError(f"{path.name}: 'extends' cycle through {[Path(p).name for p in seen]}")
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle) or {}
    except yaml.YAMLError as error:
        raise RuleError(f"{path.name}: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise RuleError(f"{path.name}: expected a mapping at the top level, got {type(raw).__name__}")
    if raw.get("version", RULES_VERSION) != RULES_VERSION:
        raise RuleError(f"{path.name}: rules version {raw['version']!r}, this code reads version {RULES_VERSION}")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise RuleError(f"{path.name}: unknown top-level keys {sorted(unknown)}; allowed {sorted(_TOP_KEYS)}")
    if "extends" not in raw:
        return {**raw, "files": [str(path)]}
    # A parent is looked up beside the file first, then among the packaged rules.
    candidates = [path.parent / f"{raw['extends']}.yaml", RULES_DIR / f"{raw['extends']}.yaml"]
    parent_path = next((c for c in candidates if c.is_file()), None)
    if parent_path is None:
        raise RuleError(f"{path.name}: extends {raw['extends']!r} but none of {[str(c) for c in candidates]} exists")
    return _merge(_read_raw(parent_path, (*seen, str(path))), raw, path)


def _merge(parent: dict[str, Any], child: dict[str, Any], path: Path) -> dict[str, Any]:
    merged = copy.deepcopy(parent)
    merged["files"] = [*parent["files"], str(path)]
    for key in ("version", "description", "free_ops", "free_when", "view_ops", "transparent_ops"):
        if key in child:
            merged[key] = child[key]
    merged["sets"] = {**parent.get("sets", {}), **(child.get("sets") or {})}
    idioms = list(merged.get("idioms") or [])
    for idiom in child.get("idioms") or []:
        names = [item.get("name") for item in idioms]
        if idiom.get("name") in names:
            idioms[names.index(idiom["name"])] = idiom
        else:
            idioms.append(idiom)
    merged["idioms"] = idioms
    rules = list(merged.get("rules") or [])
    for rule in child.get("rules") or []:
        if not isinstance(rule, dict) or "name" not in rule:
            raise RuleError(f"{path.name}: every rule needs a 'name', got {rule!r}")
        names = [item["name"] for item in rules]
        if rule["name"] in names:
            rules[names.index(rule["name"])] = rule
        elif rule.get("insert_before"):
            if rule["insert_before"] not in names:
                raise RuleError(
                    f"{path.name}: rule {rule['name']!r} insert_before unknown rule {rule['insert_before']!r}"
                )
            rules.insert(names.index(rule["insert_before"]), rule)
        else:
            rules.append(rule)
    for name in child.get("disable") or []:
        names = [item["name"] for item in rules]
        if name not in names:
            raise RuleError(f"{path.name}: cannot disable unknown rule {name!r}; rules are {names}")
        rules.pop(names.index(name))
    merged["rules"] = rules
    return merged


def _expand(ops: Any, sets: Mapping[str, Any], where: str, depth: int = 0) -> list[str]:
    if isinstance(ops, str):
        ops = [ops]
    if not isinstance(ops, list) or depth > 8:
        raise RuleError(f"{where}: expected a list of op names, got {ops!r}")
    result: list[str] = []
    for op in ops:
        if not isinstance(op, str):
            raise RuleError(f"{where}: op names must be strings, got {op!r}")
        if op.startswith("$"):
            if op[1:] not in sets:
                raise RuleError(f"{where}: unknown set {op!r}; sets are {sorted(sets)}")
            result.extend(_expand(sets[op[1:]], sets, where, depth + 1))
        else:
            result.append(op)
    return result


def _compile_step(raw: Any, sets: Mapping[str, Any], where: str, roles: set[str]) -> Step:
    if not isinstance(raw, dict) or "op" not in raw:
        raise RuleError(f"{where}: a step must be a mapping with 'op', got {raw!r}")
    unknown = set(raw) - _STEP_KEYS
    if unknown:
        raise RuleError(f"{where}: unknown step keys {sorted(unknown)}; allowed {sorted(_STEP_KEYS)}")
    predicates = tuple(raw.get("where") or ())
    for name in predicates:
        if name not in PREDICATES:
            raise RuleError(f"{where}: unknown predicate {name!r}; known: {sorted(PREDICATES)}")
    other = raw.get("other", "static")
    if other not in OTHER_CONDITIONS:
        raise RuleError(f"{where}: other={other!r} is not one of {sorted(OTHER_CONDITIONS)}")
    excludes = tuple(raw.get("excludes") or ())
    missing = [role for role in excludes if role not in roles]
    if missing:
        raise RuleError(f"{where}: excludes {missing} which no earlier step defines (roles: {sorted(roles)})")
    role = raw.get("as")
    if role is not None:
        if role in roles or role == "anchor":
            raise RuleError(f"{where}: role {role!r} is defined twice")
        roles.add(role)
    position = raw.get("input")
    if position is not None and (not isinstance(position, int) or position < 0):
        raise RuleError(f"{where}: input must be a non-negative int, got {position!r}")
    return Step(frozenset(_expand(raw["op"], sets, where)), bool(raw.get("optional", False)),
                role, predicates, other, position, excludes)


def _compile_rule(raw: Any, sets: Mapping[str, Any], kernel_types: set[str] | None, file: str) -> Rule:
    name = raw.get("name") if isinstance(raw, dict) else None
    where = f"{file}: rule {name!r}"
    if not isinstance(raw, dict) or not name:
        raise RuleError(f"{file}: every rule must be a mapping with a 'name', got {raw!r}")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise RuleError(f"{where}: unknown keys {sorted(unknown)}; allowed {sorted(_RULE_KEYS)}")
    kernel = raw.get("kernel")
    if not isinstance(kernel, str) or (kernel_types is not None and kernel not in kernel_types):
        raise RuleError(f"{where}: kernel {kernel!r} is not a known kernel type {sorted(kernel_types or [])}")
    anchor = raw.get("anchor")
    if not isinstance(anchor, dict) or "op" not in anchor or set(anchor) - {"op", "where"}:
        raise RuleError(f"{where}: anchor must be a mapping with 'op' and optional 'where', got {anchor!r}")
    anchor_where = tuple(anchor.get("where") or ())
    for predicate in anchor_where:
        if predicate not in PREDICATES:
            raise RuleError(f"{where}: unknown anchor predicate {predicate!r}; known: {sorted(PREDICATES)}")
    roles: set[str] = set()
    before: dict[int, tuple[Step, ...]] = {}
    for index, steps in (raw.get("before") or {}).items():
        if not isinstance(index, int) or index < 0 or not isinstance(steps, list):
            raise RuleError(f"{where}: 'before' maps input indices to step lists, got {index!r}: {steps!r}")
        before[index] = tuple(_compile_step(s, sets, f"{where} before[{index}]", roles) for s in steps)
    chain = tuple(_compile_step(s, sets, f"{where} chain[{i}]", roles) for i, s in enumerate(raw.get("chain") or []))
    return Rule(name, kernel, frozenset(_expand(anchor["op"], sets, where)), anchor_where, before, chain)


def _compile_input(raw: Any, where: str) -> InputSpec:
    if isinstance(raw, str):
        return InputSpec("var", raw[1:]) if raw.startswith("$") else InputSpec("node", raw)
    if isinstance(raw, dict) and "const" in raw and set(raw) <= {"const", "tol"}:
        return InputSpec("const", value=float(raw["const"]), tol=float(raw.get("tol", 1e-4)))
    if raw == {"static": True}:
        return InputSpec("static")
    raise RuleError(f"{where}: an input is '$var', a node id, {{const: x, tol: t}} or {{static: true}}; got {raw!r}")


def _compile_idiom(raw: Any, file: str) -> Idiom:
    name = raw.get("name") if isinstance(raw, dict) else None
    where = f"{file}: idiom {name!r}"
    if not isinstance(raw, dict) or not name or set(raw) - _IDIOM_KEYS or not raw.get("nodes"):
        raise RuleError(f"{where}: needs keys name, op, nodes (allowed {sorted(_IDIOM_KEYS)}), got {raw!r}")
    nodes, ids = [], set()
    for item in raw["nodes"]:
        if not isinstance(item, dict) or set(item) - _IDIOM_NODE_KEYS or "id" not in item or "op" not in item:
            raise RuleError(f"{where}: node {item!r} needs id and op (allowed {sorted(_IDIOM_NODE_KEYS)})")
        inputs = tuple(_compile_input(x, f"{where} node {item['id']!r}") for x in item.get("inputs") or [])
        for spec in inputs:
            if spec.kind == "node" and spec.ref not in ids:
                raise RuleError(f"{where}: node {item['id']!r} uses {spec.ref!r} before it is defined")
        extra = item.get("extra_inputs", "none")
        if extra not in ("none", "static"):
            raise RuleError(f"{where}: extra_inputs must be 'none' or 'static', got {extra!r}")
        ids.add(item["id"])
        nodes.append(IdiomNode(item["id"], item["op"], inputs, dict(item.get("attrs") or {}), extra))
    used = {spec.ref for node in nodes for spec in node.inputs if spec.kind == "node"}
    dangling = [node.id for node in nodes[:-1] if node.id not in used]
    if dangling:
        raise RuleError(f"{where}: nodes {dangling} do not feed the output node {nodes[-1].id!r}")
    if not any(spec.kind == "var" for node in nodes for spec in node.inputs):
        raise RuleError(f"{where}: needs at least one '$var' input (the activation it applies to)")
    return Idiom(name, str(raw.get("op") or name), tuple(nodes))


def load_rules(platform: str = "base", *, path: str | Path | None = None,
               kernel_types: set[str] | None = None) -> RuleSet:
    """Load and validate the rules for ``platform`` (or from an explicit ``path``).

    A platform without ``rules/<platform>.yaml`` gets ``base.yaml`` with ``fallback=True`` and a
    warning. ``kernel_types``, when given, is the set of kernel types a rule may produce.
    Packaged rule files are parsed once per process; an explicit ``path`` is read every time.
    """
    fallback = False
    if path is None:
        path = RULES_DIR / f"{platform}.yaml"
        if not path.is_file():
            logger.warning("no fusion rules for platform %r in %s; falling back to base.yaml", platform, RULES_DIR)
            path, fallback = RULES_DIR / "base.yaml", True
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"rules file not found: {path}")
    types = frozenset(kernel_types) if kernel_types is not None else None
    if path.resolve().parent == RULES_DIR:
        return _load_packaged(platform, path.resolve(), fallback, types)
    return _compile(platform, path, fallback, types)


@functools.lru_cache(maxsize=64)
def _load_packaged(platform: str, path: Path, fallback: bool, kernel_types: frozenset[str] | None) -> RuleSet:
    return _compile(platform, path, fallback, kernel_types)


def _compile_free_when(raw: Any, sets: Mapping[str, Any],
                       file: str) -> tuple[tuple[frozenset[str], tuple[str, ...]], ...]:
    if not isinstance(raw, list):
        raise RuleError(f"{file}: free_when must be a list of {{op: [...], where: [...]}}, got {raw!r}")
    entries = []
    for item in raw:
        if not isinstance(item, dict) or "op" not in item or set(item) - {"op", "where"}:
            raise RuleError(f"{file}: a free_when entry is {{op: [...], where: [...]}}, got {item!r}")
        where = tuple(item.get("where") or ())
        unknown = [name for name in where if name not in PREDICATES]
        if unknown:
            raise RuleError(f"{file}: free_when predicates {unknown} are unknown; known: {sorted(PREDICATES)}")
        entries.append((frozenset(_expand(item["op"], sets, f"{file}: free_when")), where))
    return tuple(entries)


def _compile(platform: str, path: Path, fallback: bool, kernel_types: frozenset[str] | None) -> RuleSet:
    raw = _read_raw(path)
    file = path.name
    sets = raw.get("sets") or {}
    types = set(kernel_types) if kernel_types is not None else None
    return RuleSet(
        platform=platform,
        files=tuple(raw["files"]),
        fallback=fallback,
        description=str(raw.get("description", "")).strip(),
        free_ops=frozenset(_expand(raw.get("free_ops") or [], sets, f"{file}: free_ops")),
        view_ops=frozenset(_expand(raw.get("view_ops") or [], sets, f"{file}: view_ops")),
        transparent_ops=frozenset(_expand(raw.get("transparent_ops") or [], sets, f"{file}: transparent_ops")),
        idioms=tuple(_compile_idiom(item, file) for item in raw.get("idioms") or []),
        rules=tuple(_compile_rule(item, sets, types, file) for item in raw.get("rules") or []),
        free_when=_compile_free_when(raw.get("free_when") or [], sets, file),
    )
