"""Kernels of a model: configurations and detection from an ONNX graph (LitePred §3, §4.1).

A *kernel* is the unit LitePred predicts latency for (model latency = sum of kernel latencies):
one or more ONNX ops that a platform runs as one (e.g. conv+bn+relu). :func:`detect_kernels`
partitions a :class:`~moonlit.litepred.graph.ir.Graph` with the platform's fusion rules
(:mod:`moonlit.litepred.kernels.fusion`, ``rules/*.yaml``) and reads each kernel's
:class:`KernelConfig` (its type and the parameters that determine its cost, see
:data:`KERNEL_PARAMS`) with the extractors in :mod:`moonlit.litepred.kernels.params`. Every
node ends up in a kernel, in the free list (constants, views, Shape…) or in the unassigned list
with a reason — never silently dropped (the reference's TFLite parser dropped unknown ops).

Shapes in parameters follow two conventions, chosen so the kernel builder can reproduce them:
conv-like kernels keep NCHW geometry (``h, w`` input, ``hout, wout`` output — stored, not
recomputed, so padding conventions cannot disagree); elementwise kernels fold a tensor to
``batch, c, h, w`` (rank 4: NCHW; rank 3: tokens ``(B, N, C)`` → ``h=N, w=1``; rank 2 → ``h=w=1``).
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from moonlit.litepred.graph.ir import Graph
from moonlit.litepred.graph.onnx_import import load_graph
from moonlit.litepred.kernels.fusion import RuleSet, load_rules
from moonlit.litepred.kernels.matching import Match, partition

__all__ = [
    "ACTIVATIONS", "KERNEL_PARAMS", "KERNEL_TYPES", "KernelConfig", "Kernel", "Unassigned",
    "Detection", "detect_kernels", "load_platform_rules",
]

ACTIVATIONS = ("none", "relu", "relu6", "hswish", "hsigmoid", "sigmoid", "swish", "gelu")
RESIDUALS = ("none", "pre_act", "post_act")

_CONV = ("batch", "h", "w", "cin", "cout", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw",
         "groups", "hout", "wout", "act", "residual")
_NCHW = ("batch", "c", "h", "w")

# The configuration space: parameter names of each kernel type (strings: act, op, mode, …).
KERNEL_PARAMS: dict[str, tuple[str, ...]] = {
    "conv": _CONV,
    "dwconv": _CONV,
    "gconv": _CONV,
    "patch_embed": ("batch", "h", "w", "cin", "cout", "kh", "kw", "hout", "wout"),
    "fc": ("batch", "tokens", "cin", "cout", "act"),
    "matmul": ("batch", "m", "k", "n"),
    "attention": ("batch", "heads", "q_tokens", "kv_tokens", "qk_dim", "v_dim", "bias"),
    "softmax": ("rows", "cols"),
    "layernorm": ("rows", "dim"),
    "act": (*_NCHW, "act"),
    "add": (*_NCHW, "op", "bcast", "act"),
    "eltwise": (*_NCHW, "op"),
    "bn": _NCHW,
    "pool": (*_NCHW, "kh", "kw", "sh", "sw", "ph", "pw", "hout", "wout", "mode"),
    "gap": _NCHW,
    "concat": (*_NCHW, "axis", "sizes"),
    "se": (*_NCHW, "mid", "act", "gate"),
    "layout": ("op", "in_shape", "out_shape", "attr"),
}
KERNEL_TYPES = frozenset(KERNEL_PARAMS)
_STRING_PARAMS = frozenset({"act", "residual", "op", "bcast", "mode", "axis", "sizes", "gate",
                            "in_shape", "out_shape", "attr"})


@dataclass(frozen=True)
class KernelConfig:
    """A kernel type and its parameters (ints, or strings for categorical ones).

    Equal configs have equal :meth:`key` strings; ``to_dict``/``from_dict`` round-trip through
    JSON. The parameter names must be exactly :data:`KERNEL_PARAMS` ``[type]``.
    """

    type: str
    params: Mapping[str, int | float | str]

    def __post_init__(self) -> None:
        if self.type not in KERNEL_PARAMS:
            raise ValueError(f"unknown kernel type {self.type!r}; known: {sorted(KERNEL_PARAMS)}")
        expected = set(KERNEL_PARAMS[self.type])
        missing, extra = expected - set(self.params), set(self.params) - expected
        if missing or extra:
            raise ValueError(
                f"{self.type} kernel params: missing {sorted(missing)}, unexpected {sorted(extra)}; "
                f"expected {list(KERNEL_PARAMS[self.type])}"
            )
        clean: dict[str, int | float | str] = {}
        for name in KERNEL_PARAMS[self.type]:
            value = self.params[name]
            if name in _STRING_PARAMS:
                if not isinstance(value, str):
                    raise ValueError(f"{self.type} param {name}={value!r} must be a string")
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{self.type} param {name}={value!r} must be a number")
            elif isinstance(value, float) and value.is_integer():
                value = int(value)
            clean[name] = value
        if clean.get("act", "none") not in ACTIVATIONS:
            raise ValueError(f"{self.type} act={clean['act']!r} is not one of {ACTIVATIONS}")
        if clean.get("residual", "none") not in RESIDUALS:
            raise ValueError(f"{self.type} residual={clean['residual']!r} is not one of {RESIDUALS}")
        object.__setattr__(self, "params", clean)

    def __hash__(self) -> int:
        return hash(self.key())

    def __getitem__(self, name: str) -> int | float | str:
        return self.params[name]

    def key(self) -> str:
        """Stable string identity, e.g. ``conv:batch=1,h=56,...`` (params in schema order)."""
        return self.type + ":" + ",".join(f"{k}={v}" for k, v in self.params.items())

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KernelConfig:
        if not isinstance(data, Mapping) or set(data) != {"type", "params"}:
            raise ValueError(f"a kernel config dict has exactly the keys 'type' and 'params', got {data!r}")
        return cls(str(data["type"]), dict(data["params"]))

    def replace(self, **params: int | float | str) -> KernelConfig:
        return KernelConfig(self.type, {**self.params, **params})


@dataclass(frozen=True)
class Kernel:
    """A detected kernel: its config, the ONNX nodes it covers and its anchor node's name."""

    config: KernelConfig
    nodes: tuple[str, ...]
    anchor: str
    rule: str

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "nodes": list(self.nodes), "anchor": self.anchor,
                "rule": self.rule}


@dataclass(frozen=True)
class Unassigned:
    node: str
    op_type: str
    reason: str


@dataclass
class Detection:
    """Result of :func:`detect_kernels`: kernels in graph order, free nodes, unassigned nodes."""

    platform: str
    rules_source: str
    fallback: bool
    kernels: list[Kernel]
    free: list[tuple[str, str]] = field(default_factory=list)
    unassigned: list[Unassigned] = field(default_factory=list)

    def configs(self, kernel_type: str | None = None) -> list[KernelConfig]:
        return [k.config for k in self.kernels if kernel_type is None or k.config.type == kernel_type]

    def summary(self) -> dict[str, Any]:
        from moonlit.litepred.predict.features import (
            kernel_macs,  # features imports this module
        )

        return {
            "platform": self.platform,
            "rules": self.rules_source,
            "fallback_to_base": self.fallback,
            "kernels": len(self.kernels),
            "by_type": dict(sorted(Counter(k.config.type for k in self.kernels).items())),
            "macs": sum(kernel_macs(k.config) for k in self.kernels),
            "nodes_in_kernels": sum(len(k.nodes) for k in self.kernels),
            "free_nodes": len(self.free),
            "unassigned_nodes": len(self.unassigned),
            "unassigned_ops": dict(sorted(Counter(u.op_type for u in self.unassigned).items())),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "kernels": [k.to_dict() for k in self.kernels],
            "free": [{"node": n, "reason": r} for n, r in self.free],
            "unassigned": [vars(u) for u in self.unassigned],
        }

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path


def load_platform_rules(platform: str, path: str | Path | None = None) -> RuleSet:
    """The validated fusion rules of ``platform`` (``rules/<platform>.yaml`` or base); an explicit ``path`` is
    read every time, packaged rules once per process (so a fallback warning is logged once)."""
    if path is not None:
        return load_rules(platform, path=path, kernel_types=set(KERNEL_TYPES))
    return _packaged_rules(platform)


@functools.lru_cache(maxsize=32)
def _packaged_rules(platform: str) -> RuleSet:
    return load_rules(platform, kernel_types=set(KERNEL_TYPES))


def detect_kernels(
    graph: Graph | str | Path | onnx.ModelProto,
    platform: str = "ort-fp32",
    rules: RuleSet | None = None,
) -> Detection:
    """Partition ``graph`` into kernels with ``platform``'s fusion rules (or explicit ``rules``)."""
    from moonlit.litepred.kernels.params import extract_params

    if not isinstance(graph, Graph):
        graph = load_graph(graph)
    rules = rules if rules is not None else load_platform_rules(platform)

    def extract(match: Match) -> KernelConfig:
        return KernelConfig(match.rule.kernel, extract_params(match))

    result = partition(graph, rules, extract)
    order = {node.name: i for i, node in enumerate(graph.nodes)}
    kernel_nodes: list[list[str]] = [
        [node.name for unit in match.units for node in unit.nodes] for match, _ in result.kernels
    ]
    for node_name, index in result.attached.items():
        kernel_nodes[index].append(node_name)
    kernels = [
        Kernel(config, tuple(sorted(names, key=order.__getitem__)), match.anchor.main.name, match.rule.name)
        for (match, config), names in zip(result.kernels, kernel_nodes)
    ]
    detection = Detection(
        platform=platform,
        rules_source=rules.source,
        fallback=rules.fallback,
        kernels=kernels,
        free=[(node.name, reason) for node, reason in result.free],
        unassigned=[Unassigned(node.name, node.op_type, reason) for node, reason in result.unassigned],
    )
    _check_complete(graph, detection)
    return detection


def _check_complete(graph: Graph, detection: Detection) -> None:
    """Every node in exactly one place — a violated invariant is a bug in the engine."""
    seen = Counter(
        [n for k in detection.kernels for n in k.nodes]
        + [n for n, _ in detection.free]
        + [u.node for u in detection.unassigned]
    )
    names = [node.name for node in graph.nodes]
    missing = [n for n in names if n not in seen]
    twice = [n for n, count in seen.items() if count > 1]
    if missing or twice or len(seen) != len(names):
        raise RuntimeError(f"kernel detection lost nodes {missing[:5]} or assigned twice {twice[:5]}")
