"""``moonlit.litepred.profile.sampler``: the kernel pool, quotas and neighbours of real configurations."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from moonlit.litepred.kernels.detect import KernelConfig
from moonlit.litepred.profile.kernel_builder import build_kernel_module
from moonlit.litepred.profile.sampler import KernelPool, neighbour, sample_configs


def conv(h: int, cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1, act: str = "relu") -> KernelConfig:
    kind = "dwconv" if groups > 1 and groups == cin == cout else "conv"
    p = (k - 1) // 2
    out = (h + 2 * p - (k - 1) - 1) // s + 1
    return KernelConfig(kind, {"batch": 1, "h": h, "w": h, "cin": cin, "cout": cout, "kh": k, "kw": k, "sh": s,
                               "sw": s, "ph": p, "pw": p, "dh": 1, "dw": 1, "groups": groups, "hout": out,
                               "wout": out, "act": act, "residual": "none"})


def gap(c: int, h: int) -> KernelConfig:
    return KernelConfig("gap", {"batch": 1, "c": c, "h": h, "w": h})


def pool_of(entries: dict[KernelConfig, int]) -> KernelPool:
    pool = KernelPool()
    for config, count in entries.items():
        pool.configs[config.key()] = config
        pool.counts.setdefault(config.type, Counter())[config.key()] = count
    return pool


@pytest.fixture
def pool() -> KernelPool:
    entries = {conv(56, 24, 24): 30, conv(28, 40, 80, s=2): 10, conv(14, 96, 96, k=5, groups=96): 20,
               conv(7, 160, 160, k=3, groups=160): 5, gap(576, 7): 3, gap(960, 7): 1}
    for i in range(10):
        entries[conv(14 * (1 + i % 2), 32 + 8 * i, 64 + 8 * i, k=1)] = 1
    return pool_of(entries)


def test_neighbour_recomputes_output_size_and_keeps_depthwise_tied() -> None:
    rng = np.random.default_rng(0)
    seen = {"h": [7, 14, 28, 56], "w": [7, 14, 28, 56], "kh": [3, 5, 7]}
    base = conv(14, 96, 96, k=5, s=2, groups=96)
    found = 0
    for _ in range(200):
        n = neighbour(base, seen, rng)
        if n is None:
            continue
        found += 1
        p = n.params
        assert n.type == "dwconv" and p["cin"] == p["cout"] == p["groups"] and p["cin"] % 8 == 0
        assert 48 <= p["cin"] <= 144  # 96 scaled by [0.5, 1.5]
        # output size by hand: floor((h + 2p - (k - 1) - 1) / s) + 1, "same" padding kept as (k - 1) / 2
        assert p["ph"] == (p["kh"] - 1) // 2
        assert p["hout"] == (p["h"] + 2 * p["ph"] - (p["kh"] - 1) - 1) // 2 + 1
        module, inputs = build_kernel_module(n)  # the builder reproduces it (raises otherwise)
        assert module(*inputs).shape == (1, p["cout"], p["hout"], p["wout"])
    assert found > 150


def test_neighbours_of_layout_kernels_are_not_invented() -> None:
    layout = KernelConfig("layout", {"op": "Transpose", "in_shape": "1x8x4", "out_shape": "1x4x8", "attr": "perm=0,2,1"})
    assert neighbour(layout, {}, np.random.default_rng(0)) is None


def test_quota_respects_minimum_and_frequency(pool: KernelPool) -> None:
    configs = sample_configs(pool, 60, seed=0, min_per_type=8, neighbour_fraction=0.4)
    by_type = Counter(c.type for c in configs)
    assert len({c.key() for c in configs}) == len(configs)  # distinct
    assert all(by_type[t] >= 8 for t in ("conv", "dwconv", "gap"))
    # occurrences: conv 30 + 10 + 10 = 50, dwconv 25, gap 4: conv gets the largest share
    assert by_type["conv"] > by_type["dwconv"] > 0
    assert sum(by_type.values()) == 60
    assert sample_configs(pool, 60, seed=0, min_per_type=8) == configs  # deterministic


def test_real_configs_come_first_by_frequency(pool: KernelPool) -> None:
    configs = sample_configs(pool, 40, seed=3, min_per_type=8, neighbour_fraction=0.5)
    dwconv = [c for c in configs if c.type == "dwconv"]
    real = set(pool.counts["dwconv"])
    assert {c.key() for c in dwconv[:2]} == real  # both real dwconvs are profiled, before any neighbour
    assert all(c.key() not in real for c in dwconv[2:])


def test_pool_save_load_round_trip(pool: KernelPool, tmp_path: Path) -> None:
    loaded = KernelPool.load(pool.save(tmp_path / "pool.json"))
    assert loaded.summary() == pool.summary()
    assert loaded.counts == pool.counts
    with pytest.raises(FileNotFoundError, match="no kernel pool"):
        KernelPool.load(tmp_path / "missing.json")


def test_bad_arguments_are_named(pool: KernelPool) -> None:
    with pytest.raises(ValueError, match="do not occur in the pool"):
        sample_configs(pool, 10, kernel_types=["attention"])
    with pytest.raises(ValueError, match="neighbour_fraction"):
        sample_configs(pool, 10, neighbour_fraction=1.0)


def test_neighbours_stay_near_in_size_and_cost(pool: KernelPool) -> None:
    from moonlit.litepred.predict.features import kernel_macs

    configs = sample_configs(pool, 80, seed=1, min_per_type=8, neighbour_fraction=0.6)
    real_convs = [pool.configs[k] for k in pool.counts["conv"]]
    most = max(kernel_macs(c) for c in real_convs)
    for c in configs:
        if c.type == "conv":
            assert kernel_macs(c) <= 1.5 * most
    rng = np.random.default_rng(0)
    seen = {"h": [7, 14, 28, 56, 112, 224], "w": [7, 14, 28, 56, 112, 224]}
    for _ in range(100):
        n = neighbour(conv(14, 96, 96), seen, rng)
        if n is not None:
            assert 7 <= n["h"] <= 28  # within a factor 2 of 14
