"""Ranking fidelity (moonlit.common.nas.ranking) against brute-force pair counting and hand-picked spreads."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from moonlit.common.nas.ranking import (
    RankedSubnet,
    kendall_tau,
    map_in_processes,
    plot_ranking,
    ranking_fidelity,
    seed_agreement,
    spread_by_complexity,
)


def brute_force_tau_b(x: list[float], y: list[float]) -> float:
    """tau-b = (C - D) / sqrt((n0 - n1)(n0 - n2)) by counting every pair."""
    concordant = discordant = ties_x = ties_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0:
            ties_x += 1
        if dy == 0:
            ties_y += 1
        if dx * dy > 0:
            concordant += 1
        elif dx * dy < 0:
            discordant += 1
    pairs = len(x) * (len(x) - 1) // 2
    return (concordant - discordant) / math.sqrt((pairs - ties_x) * (pairs - ties_y))


@pytest.mark.parametrize("seed", range(5))
def test_tau_matches_pair_counting_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 5, size=9).astype(float).tolist()  # ties on purpose
    y = rng.integers(0, 5, size=9).astype(float).tolist()
    assert kendall_tau(x, y)[0] == pytest.approx(brute_force_tau_b(x, y))


def test_tau_extremes_and_bad_input() -> None:
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40])[0] == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1])[0] == pytest.approx(-1.0)
    # one swapped neighbour pair of 4: (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4])[0] == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="differ in length"):
        kendall_tau([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="at least 2"):
        kendall_tau([1], [1])


def test_fidelity_summary() -> None:
    subnets = [RankedSubnet(f"s{i}", macs=i * 1e6, inherited=a, standalone=b)
               for i, (a, b) in enumerate([(50, 60), (55, 58), (60, 70), (70, 75)])]
    fidelity = ranking_fidelity(subnets)
    assert fidelity.count == 4
    assert fidelity.kendall_tau == pytest.approx(4 / 6)
    # rank differences (1, 1, 0, 0): rho = 1 - 6 sum d^2 / (n (n^2 - 1))
    assert fidelity.spearman_rho == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert fidelity.best_agrees


def test_spread_picks_ends_and_nearest_points() -> None:
    macs = [5.0, 1.0, 9.0, 3.0, 7.1, 2.0, 6.0]
    chosen = spread_by_complexity(macs, 3)  # targets 1, 5, 9
    assert [macs[i] for i in chosen] == [1.0, 5.0, 9.0]
    chosen = spread_by_complexity(macs, 5)  # targets 1, 3, 5, 7, 9
    assert [macs[i] for i in chosen] == [1.0, 3.0, 5.0, 7.1, 9.0]
    same = spread_by_complexity([2.0, 2.0, 2.0], 3)
    assert sorted(same) == [0, 1, 2]  # distinct items even when the values tie
    with pytest.raises(ValueError, match="only 2 candidates"):
        spread_by_complexity([1.0, 2.0], 3)
    with pytest.raises(ValueError, match=">= 2"):
        spread_by_complexity([1.0, 2.0], 1)


def test_plot_is_written(tmp_path: Path) -> None:
    subnets = [RankedSubnet(f"s{i}", i * 1e6, 50 + i, 55 + i) for i in range(3)]
    path = plot_ranking(subnets, ranking_fidelity(subnets), tmp_path / "r.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_map_in_processes_keeps_the_order_and_equals_the_serial_map() -> None:
    import operator

    argsets = [(2, 3), (4, 5), (6, 7), (8, 9)]
    expected = [6, 20, 42, 72]  # by hand
    assert map_in_processes(operator.mul, argsets, 1, "serial") == expected
    assert map_in_processes(operator.mul, argsets, 2, "two processes") == expected
    assert map_in_processes(operator.mul, [], 2, "nothing") == []


def test_seed_agreement_against_hand_counts() -> None:
    # seed 0 and 1 disagree on one of the three pairs (C=2, D=1: tau 1/3); seed 2 equals seed 0 (tau 1)
    first, second, third = [80.0, 82.0, 84.0], [80.5, 83.5, 83.0], [80.0, 82.0, 84.0]
    two = seed_agreement([first, second])
    assert two["seeds"] == 2 and two["pair_taus"] == pytest.approx([1 / 3])
    # per-subnet std with ddof=1 of two values is |a - b| / sqrt(2)
    assert two["mean_std_points"] == pytest.approx(np.mean([0.5, 1.5, 1.0]) / math.sqrt(2))
    assert two["range_of_means_points"] == pytest.approx(83.5 - 80.25)
    three = seed_agreement([first, second, third])
    assert three["pair_taus"] == pytest.approx([1 / 3, 1.0, 1 / 3])  # pairs (0,1), (0,2), (1,2)
    assert three["mean_tau"] == pytest.approx(5 / 9)


def test_seed_agreement_rejects_one_seed_and_ragged_runs() -> None:
    with pytest.raises(ValueError, match="at least 2 seeds"):
        seed_agreement([[1.0, 2.0]])
    with pytest.raises(ValueError, match="same subnets"):
        seed_agreement([[1.0, 2.0], [1.0, 2.0, 3.0]])
