"""Offline FLOPs tables: vectorized counters vs the scalar ones, band membership, distinctness,
distribution equal to blind rejection, compact storage."""

from __future__ import annotations

import random
import zipfile

import numpy as np
import pytest
from moonlit.common.config import compose_config
from moonlit.elasticvit.flops import reference_mmacs, subnet_complexity
from moonlit.elasticvit.models import NAMED_SUBNETS
from moonlit.elasticvit.space import check_subnet, decode, random_subnet
from moonlit.elasticvit.tables import (
    DEFAULT_LEVELS,
    FlopsTables,
    array_to_subnets,
    build_level,
    build_tables,
    propose,
    run,
    subnets_to_array,
    table_columns,
    total_macs,
)
from scipy.stats import chi2_contingency

PER_LEVEL = 200


@pytest.fixture(scope="module")
def small_tables() -> FlopsTables:
    return build_tables(DEFAULT_LEVELS, PER_LEVEL, seed=3)


def _subnets() -> list:
    rng = random.Random(11)
    return [random_subnet(rng) for _ in range(300)] + [decode(e) for e in NAMED_SUBNETS.values()]


def test_vectorized_exact_counter_equals_subnet_complexity() -> None:
    subnets = _subnets()
    macs = total_macs(subnets_to_array(subnets), "exact")
    assert macs.tolist() == [subnet_complexity(s).macs for s in subnets]


def test_vectorized_reference_counter_equals_reference_mmacs() -> None:
    subnets = _subnets()
    mmacs = total_macs(subnets_to_array(subnets), "reference") / 1e6
    np.testing.assert_allclose(mmacs, [reference_mmacs(s) for s in subnets], rtol=0, atol=1e-9)


def test_array_round_trip_and_columns() -> None:
    subnets = _subnets()[:20]
    array = subnets_to_array(subnets)
    assert array.shape == (20, len(table_columns())) == (20, 28)
    assert array_to_subnets(array) == subnets


def test_proposals_are_valid_subnets_with_uniform_resolution() -> None:
    rows = propose(np.random.default_rng(0), 6000)
    for subnet in array_to_subnets(rows[:500]):  # check_subnet inside: widths never decrease, choices in space
        check_subnet(subnet)
    _, counts = np.unique(rows[:, 0], return_counts=True)
    assert len(counts) == 6 and counts.min() > 900 and counts.max() < 1100  # 1000 expected each


def test_every_level_is_distinct_and_inside_its_band(small_tables: FlopsTables) -> None:
    assert small_tables.levels == tuple(float(b) for b in DEFAULT_LEVELS)
    for level in small_tables.levels:
        subnets = small_tables.subnets(level)
        assert len(subnets) == PER_LEVEL
        assert len({s.encode() for s in subnets}) == PER_LEVEL
        mmacs = [subnet_complexity(s).macs / 1e6 for s in subnets]  # the scalar counter, independently
        assert level <= min(mmacs) and max(mmacs) <= level + 20
        assert small_tables.macs[level].tolist() == [subnet_complexity(s).macs for s in subnets]


def test_min_subnet_is_the_fewest_macs_row(small_tables: FlopsTables) -> None:
    for level in small_tables.levels:
        smallest = min(small_tables.subnets(level), key=lambda s: subnet_complexity(s).macs)
        assert subnet_complexity(small_tables.min_subnet(level)).macs == subnet_complexity(smallest).macs


def test_reference_counter_levels_use_reference_mmacs() -> None:
    arch, macs, _ = build_level(300, 100, counter="reference", seed=1)
    mmacs = [reference_mmacs(s) for s in array_to_subnets(arch)]
    assert 300 <= min(mmacs) and max(mmacs) <= 320
    np.testing.assert_allclose(macs / 1e6, mmacs, atol=1e-9)


def test_completion_has_the_distribution_of_blind_rejection() -> None:
    """Same level, two samplers: the completed columns (T4) and the resolution match in distribution."""
    arch, _, stats = build_level(400, 3000, seed=5)
    blind = propose(np.random.default_rng(99), 150_000)
    mmacs = total_macs(blind) / 1e6
    blind = blind[(mmacs >= 400) & (mmacs <= 420)]
    assert len(blind) > 3000
    for column in (0, 24, 25, 26, 27):  # resolution, T4 width / depth / MLP ratio / V scale
        values = sorted(set(arch[:, column]) | set(blind[:, column]))
        table = np.array([[np.sum(arch[:, column] == v) + 1 for v in values],
                          [np.sum(blind[:, column] == v) + 1 for v in values]])
        assert chi2_contingency(table)[1] > 1e-3, table_columns()[column]
    # the guidance pays: more in-band subnets per proposal than blind rejection's ~3 %
    assert stats["yield"] > len(blind) / 150_000


def test_save_load_round_trip_without_pickle(small_tables: FlopsTables, tmp_path) -> None:
    path = small_tables.save(tmp_path / "tables.npz")
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist())[:2] == ["arch_100.npy", "arch_1200.npy"]
    loaded = FlopsTables.load(path)  # np.load(allow_pickle=False) inside
    assert loaded.levels == small_tables.levels and loaded.counter == "exact" and loaded.band == 20
    for level in loaded.levels:
        assert loaded.arrays[level].dtype == np.int16
        np.testing.assert_array_equal(loaded.arrays[level], small_tables.arrays[level])
        assert loaded.min_subnet(level) == small_tables.min_subnet(level)
    stats = loaded.stats()
    assert stats["levels"]["300"]["distinct"] == PER_LEVEL and stats["seed"] == 3


def test_bad_requests_name_the_problem(small_tables: FlopsTables) -> None:
    with pytest.raises(ValueError, match="counter 'torch'"):
        total_macs(subnets_to_array(_subnets()[:2]), "torch")
    with pytest.raises(KeyError, match="level 150"):
        small_tables.subnets(150.0)
    with pytest.raises(RuntimeError, match="level 10 MMACs"):  # below the smallest subnet (38 MMACs)
        build_level(10, 5, max_proposals=400_000)


def test_hydra_app_writes_the_tables(tmp_path) -> None:
    out = tmp_path / "t.npz"
    cfg = compose_config("elasticvit", "tables", ["per_level=20", "levels=[200,700]", "progress=false",
                                                  f"output={out}"])
    result = run(cfg)
    assert FlopsTables.load(out).levels == (200.0, 700.0)
    assert result["levels"]["700"]["size"] == 20
