"""The kernel configuration space and its sampler (LitePred §4.2: profile what real models use).

A predictor is only as good as the kernel configurations it was trained on. LitePred profiles
configurations that occur in real search spaces; we collect them from the model zoo
(:mod:`moonlit.litepred.zoo`: SpaceEvo-like, ElasticViT-like, ResNet-like training architectures):
every architecture is exported, its kernels detected with the platform's fusion rules, and each
distinct :class:`~moonlit.litepred.kernels.detect.KernelConfig` counted (:class:`KernelPool`).

:func:`sample_configs` then spends a budget of profiling runs:

* per kernel type a quota proportional to how often the type occurs, but at least
  ``min_per_type`` (every type needs enough rows to fit a regressor) and at most what it can use;
* within a type, real configurations drawn without replacement with probability proportional to
  their count (the most common are profiled first), then *neighbours*: a real configuration with
  its channel counts scaled by a factor in [0.5, 1.5] (rounded to multiples of 8, as NAS spaces
  use) and, at random, its spatial size (within a factor 2) and kernel size replaced by values
  seen for that type, never costing more than ``max_macs_factor`` times the type's largest real
  kernel — the "random configurations around them" that make the predictor robust between real points.

Output sizes of convolutions and pools are recomputed after a change (symmetric padding); a
neighbour the kernel builder cannot reproduce is discarded and another drawn.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moonlit.litepred.kernels.detect import Detection, KernelConfig
from moonlit.litepred.predict.features import kernel_macs

__all__ = ["KernelPool", "neighbour", "sample_configs"]

logger = logging.getLogger(__name__)

POOL_FORMAT = "moonlit-litepred-kernel-pool"
POOL_VERSION = 1
# Types whose parameters are strings describing shapes (layout) or lists (concat): profiled as seen.
_REAL_ONLY = frozenset({"layout", "concat"})
_CONV_LIKE = frozenset({"conv", "dwconv", "gconv"})
# Parameters scaled as channel counts, per type; tuples inside are tied (must stay equal).
_CHANNELS: dict[str, tuple[tuple[str, ...], ...]] = {
    "conv": (("cin",), ("cout",)),
    "gconv": (("cin",), ("cout",)),
    "dwconv": (("cin", "cout", "groups"),),
    "patch_embed": (("cin",), ("cout",)),
    "fc": (("cin",), ("cout",)),
    "matmul": (("k",), ("n",)),
    "attention": (("qk_dim",), ("v_dim",)),
    "layernorm": (("dim",),),
    "act": (("c",),), "add": (("c",),), "eltwise": (("c",),), "bn": (("c",),), "gap": (("c",),),
    "pool": (("c",),),
    "se": (("c",), ("mid",)),
}
# Parameters replaced by a value seen for the type (spatial sizes, token counts).
_SPATIAL: dict[str, tuple[tuple[str, ...], ...]] = {
    "conv": (("h", "w"),), "dwconv": (("h", "w"),), "gconv": (("h", "w"),), "pool": (("h", "w"),),
    "act": (("h", "w"),), "add": (("h", "w"),), "eltwise": (("h", "w"),), "bn": (("h", "w"),),
    "gap": (("h", "w"),), "se": (("h", "w"),),
    "fc": (("tokens",),), "matmul": (("m",),), "attention": (("q_tokens", "kv_tokens"),),
    "softmax": (("rows",), ("cols",)), "layernorm": (("rows",),),
}


@dataclass
class KernelPool:
    """Distinct kernel configurations seen in a set of architectures, with how often each occurs."""

    counts: dict[str, Counter] = field(default_factory=dict)  # kernel type -> Counter(config key)
    configs: dict[str, KernelConfig] = field(default_factory=dict)  # config key -> config
    sources: list[str] = field(default_factory=list)  # architecture names
    platform: str = ""

    def add(self, detection: Detection, source: str) -> None:
        self.add_configs((kernel.config for kernel in detection.kernels), source)

    def add_configs(self, configs: Iterable[KernelConfig], source: str) -> None:
        """Count the kernel ``configs`` of one architecture named ``source``."""
        for config in configs:
            key = config.key()
            self.configs.setdefault(key, config)
            self.counts.setdefault(config.type, Counter())[key] += 1
        self.sources.append(source)

    @property
    def kernel_types(self) -> list[str]:
        return sorted(self.counts)

    def occurrences(self, kernel_type: str) -> int:
        return sum(self.counts.get(kernel_type, Counter()).values())

    def distinct(self, kernel_type: str) -> list[KernelConfig]:
        return [self.configs[key] for key in self.counts.get(kernel_type, Counter())]

    def summary(self) -> dict[str, dict[str, int]]:
        return {t: {"distinct": len(c), "occurrences": sum(c.values())} for t, c in sorted(self.counts.items())}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": POOL_FORMAT, "version": POOL_VERSION, "platform": self.platform, "sources": self.sources,
                "kernels": [{**self.configs[key].to_dict(), "count": count}
                            for counter in self.counts.values() for key, count in counter.items()]}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> KernelPool:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no kernel pool at {path}")
        data = json.loads(path.read_text())
        if data.get("format") != POOL_FORMAT or data.get("version") != POOL_VERSION:
            raise ValueError(f"{path} is not a kernel pool of version {POOL_VERSION} "
                             f"(format {data.get('format')!r}, version {data.get('version')!r})")
        pool = cls(platform=data.get("platform", ""), sources=list(data.get("sources", [])))
        for entry in data["kernels"]:
            config = KernelConfig.from_dict({"type": entry["type"], "params": entry["params"]})
            pool.configs[config.key()] = config
            pool.counts.setdefault(config.type, Counter())[config.key()] += int(entry["count"])
        return pool


def _out_size(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def _round_channels(value: float, original: int) -> int:
    multiple = 8 if original % 8 == 0 else (4 if original % 4 == 0 else 1)
    return max(multiple, int(round(value / multiple)) * multiple)


def neighbour(config: KernelConfig, seen: Mapping[str, Sequence[int]], rng: np.random.Generator,
              scale: tuple[float, float] = (0.5, 1.5)) -> KernelConfig | None:
    """A configuration near ``config``: channels scaled, spatial/kernel sizes re-drawn from ``seen``.

    ``seen[param]`` lists values that param takes in real configs of this type. Returns None when
    the type is profiled as seen only, or the result is not a valid, reproducible kernel.
    """
    kind = config.type
    if kind in _REAL_ONLY:
        return None
    params: dict[str, Any] = dict(config.params)
    for group in _CHANNELS.get(kind, ()):
        value = _round_channels(params[group[0]] * rng.uniform(*scale), int(params[group[0]]))
        for name in group:
            params[name] = value
    for group in _SPATIAL.get(kind, ()):
        # Only sizes seen for this type within a factor 2 of the original: a deep stage's channels at
        # the stem's resolution would be a configuration no model has (and a very slow one to profile).
        current = int(params[group[0]])
        values = [v for v in seen.get(group[0], ()) if current / 2 <= v <= current * 2]
        if len(values) and rng.random() < 0.5:
            value = int(rng.choice(values))
            for name in group:
                params[name] = value
    if kind in _CONV_LIKE | {"pool"}:
        if kind in _CONV_LIKE and params["kh"] == params["kw"] and len(seen.get("kh", ())) and rng.random() < 0.3:
            same = params["ph"] == (params["kh"] - 1) // 2 * params["dh"]
            k = int(rng.choice(seen["kh"]))
            params["kh"] = params["kw"] = k
            if same:
                params["ph"] = params["pw"] = (k - 1) // 2 * params["dh"]
    return realize(config, params)


def realize(config: KernelConfig, params: Mapping[str, Any]) -> KernelConfig | None:
    """``config``'s type with ``params`` changed: output sizes recomputed, checked; None if invalid or unchanged.

    Callers change channel, spatial and kernel-size parameters; this keeps the rest consistent
    (convolution/pool output sizes with the same padding, grouped-conv divisibility, patch-embedding
    tiling, SE bottleneck below its width).
    """
    kind = config.type
    params = dict(params)
    if kind in _CONV_LIKE | {"pool"}:
        dh, dw = (params["dh"], params["dw"]) if kind != "pool" else (1, 1)
        params["hout"] = _out_size(params["h"], params["kh"], params["sh"], params["ph"], dh)
        params["wout"] = _out_size(params["w"], params["kw"], params["sw"], params["pw"], dw)
        if params["hout"] < 1 or params["wout"] < 1:
            return None
        if kind == "gconv" and (params["cin"] % params["groups"] or params["cout"] % params["groups"]):
            return None
    if kind == "patch_embed":
        stride_h, stride_w = params["kh"], params["kw"]
        if params["h"] % stride_h or params["w"] % stride_w:
            return None
        params["hout"], params["wout"] = params["h"] // stride_h, params["w"] // stride_w
    if kind == "se" and params["mid"] >= params["c"]:
        params["mid"] = max(8, _round_channels(params["c"] / 4, params["c"]))
    try:
        candidate = KernelConfig(kind, params)
    except ValueError:
        return None
    return candidate if candidate != config else None


def _seen_values(configs: Iterable[KernelConfig]) -> dict[str, list[int]]:
    seen: dict[str, set[int]] = {}
    for config in configs:
        for name, value in config.params.items():
            if isinstance(value, int):
                seen.setdefault(name, set()).add(value)
    return {name: sorted(values) for name, values in seen.items()}


def _quotas(pool: KernelPool, total: int, min_per_type: int, neighbour_fraction: float) -> dict[str, int]:
    """Budget per type: proportional to occurrences, at least ``min_per_type``, at most what the type can use."""
    types = [t for t in pool.kernel_types if pool.occurrences(t)]
    capacity = {t: len(pool.counts[t]) if t in _REAL_ONLY else
                int(math.ceil(len(pool.counts[t]) / max(1e-9, 1 - neighbour_fraction))) + 4 * min_per_type
                for t in types}
    quotas = {t: min(capacity[t], min_per_type) for t in types}
    remaining = total - sum(quotas.values())
    while remaining > 0:
        open_types = [t for t in types if quotas[t] < capacity[t]]
        if not open_types:
            break
        weights = np.array([pool.occurrences(t) for t in open_types], dtype=np.float64)
        shares = np.floor(remaining * weights / weights.sum()).astype(int)
        if shares.sum() == 0:
            shares[int(np.argmax(weights))] = remaining
        for t, share in zip(open_types, shares):
            extra = min(int(share), capacity[t] - quotas[t])
            quotas[t] += extra
            remaining -= extra
    return quotas


def sample_configs(pool: KernelPool, total: int, *, seed: int = 0, min_per_type: int = 40,
                   neighbour_fraction: float = 0.4, kernel_types: Sequence[str] | None = None,
                   max_attempts: int = 50, max_macs_factor: float = 1.5) -> list[KernelConfig]:
    """``total`` distinct configurations to profile: real ones by frequency, then neighbours (see module doc)."""
    if total < 1:
        raise ValueError(f"total must be >= 1, got {total}")
    if not 0 <= neighbour_fraction < 1:
        raise ValueError(f"neighbour_fraction must lie in [0, 1), got {neighbour_fraction}")
    if kernel_types is not None:
        unknown = sorted(set(kernel_types) - set(pool.kernel_types))
        if unknown:
            raise ValueError(f"kernel types {unknown} do not occur in the pool; it has {pool.kernel_types}")
        pool = KernelPool({t: pool.counts[t] for t in kernel_types}, pool.configs, pool.sources, pool.platform)
    rng = np.random.default_rng(seed)
    chosen: list[KernelConfig] = []
    for kind, quota in _quotas(pool, total, min_per_type, neighbour_fraction).items():
        counter = pool.counts[kind]
        keys = list(counter)
        weights = np.array([counter[k] for k in keys], dtype=np.float64)
        real_budget = quota if kind in _REAL_ONLY else min(len(keys), max(1, int(round(quota * (1 - neighbour_fraction)))))
        real_budget = min(real_budget, len(keys))
        order = rng.choice(len(keys), size=real_budget, replace=False, p=weights / weights.sum())
        picked = [pool.configs[keys[i]] for i in order]
        taken = {c.key() for c in picked}
        seen = _seen_values(pool.configs[k] for k in keys)
        # Neighbours stay within the cost range real kernels of the type span.
        most_macs = max(kernel_macs(pool.configs[k]) for k in keys) * max_macs_factor
        attempts = 0
        while len(picked) < quota and attempts < max_attempts * quota:
            attempts += 1
            base = pool.configs[keys[int(rng.choice(len(keys), p=weights / weights.sum()))]]
            candidate = neighbour(base, seen, rng)
            if candidate is not None and candidate.key() not in taken and (
                    most_macs == 0 or kernel_macs(candidate) <= most_macs):
                taken.add(candidate.key())
                picked.append(candidate)
        if len(picked) < quota:
            logger.info("%s: %d of %d configurations (no more distinct neighbours found)", kind, len(picked), quota)
        chosen += picked
    return chosen
