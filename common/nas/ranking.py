"""Ranking fidelity of a supernet: does inherited-weight accuracy order subnets as training them alone does?

The standard check before trusting a one-shot supernet for search: pick subnets spread over the
complexity range (:func:`spread_by_complexity`), score each with the supernet's weights (BN
re-estimated) and again after training it from scratch on the same schedule, and compare the two
orders by Kendall's tau (:func:`ranking_fidelity`; tau-b, so ties count as neither agreement nor
disagreement). SpaceEvo's and ElasticViT's reduced real-data runs report it; neither paper's code does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RankedSubnet", "RankingFidelity", "kendall_tau", "map_in_processes", "plot_ranking",
           "ranking_fidelity", "seed_agreement", "spread_by_complexity"]


@dataclass(frozen=True)
class RankedSubnet:
    """One subnet's two scores (top-1 %, higher is better)."""

    name: str
    macs: float
    inherited: float
    standalone: float


@dataclass(frozen=True)
class RankingFidelity:
    """Agreement of the inherited and stand-alone orders over ``count`` subnets."""

    count: int
    kendall_tau: float
    p_value: float
    spearman_rho: float
    best_agrees: bool  # the inherited weights' best subnet is also the best trained alone

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def kendall_tau(first: Sequence[float], second: Sequence[float]) -> tuple[float, float]:
    """Kendall's tau-b of two score lists and its two-sided p-value (scipy); NaN when either is constant."""
    from scipy.stats import kendalltau

    if len(first) != len(second):
        raise ValueError(f"score lists differ in length: {len(first)} and {len(second)}")
    if len(first) < 2:
        raise ValueError(f"Kendall's tau needs at least 2 subnets, got {len(first)}")
    result = kendalltau(np.asarray(first, dtype=float), np.asarray(second, dtype=float))
    return float(result.statistic), float(result.pvalue)


def ranking_fidelity(subnets: Sequence[RankedSubnet]) -> RankingFidelity:
    """Kendall's tau, Spearman's rho and best-subnet agreement between inherited and stand-alone scores."""
    from scipy.stats import spearmanr

    inherited = [s.inherited for s in subnets]
    standalone = [s.standalone for s in subnets]
    tau, p_value = kendall_tau(inherited, standalone)
    rho = float(spearmanr(inherited, standalone).statistic)
    best = int(np.argmax(inherited)) == int(np.argmax(standalone))
    return RankingFidelity(len(subnets), tau, p_value, rho, best)


def seed_agreement(scores_by_seed: Sequence[Sequence[float]]) -> dict[str, Any]:
    """How well one stand-alone training run orders the subnets as another seed's run does: the noise ceiling.

    ``scores_by_seed[k][i]`` is subnet ``i``'s top-1 when trained alone with seed ``k``. Returns the Kendall tau
    of every pair of seeds, their mean, and the mean over subnets of the seed-to-seed standard deviation
    (points). A supernet cannot be expected to order subnets better than a second training seed does.
    """
    runs = [np.asarray(scores, dtype=float) for scores in scores_by_seed]
    if len(runs) < 2:
        raise ValueError(f"seed agreement needs at least 2 seeds, got {len(runs)}")
    if len({len(r) for r in runs}) != 1:
        raise ValueError(f"every seed must score the same subnets, got lengths {[len(r) for r in runs]}")
    pairs = [(a, b) for a in range(len(runs)) for b in range(a + 1, len(runs))]
    taus = [kendall_tau(runs[a], runs[b])[0] for a, b in pairs]
    stacked = np.stack(runs)
    return {"seeds": len(runs), "pair_taus": taus, "mean_tau": float(np.mean(taus)),
            "mean_std_points": float(np.mean(stacked.std(axis=0, ddof=1))),
            "range_of_means_points": float(np.ptp(stacked.mean(axis=0)))}


def spread_by_complexity(complexity: Sequence[float], count: int) -> list[int]:
    """Indices of ``count`` distinct items spread evenly over the complexity range (min and max included).

    Item ``k`` is the one whose complexity is nearest to the ``k / (count - 1)`` point between the
    smallest and the largest value, among those not yet chosen.
    """
    values = np.asarray(complexity, dtype=float)
    if count < 2:
        raise ValueError(f"count must be >= 2 (the smallest and the largest), got {count}")
    if len(values) < count:
        raise ValueError(f"{count} subnets asked for, only {len(values)} candidates")
    if not np.all(np.isfinite(values)):
        raise ValueError("complexity values must be finite")
    low, high = float(values.min()), float(values.max())
    chosen: list[int] = []
    for k in range(count):
        target = low + (high - low) * k / (count - 1)
        distance = np.abs(values - target)
        distance[chosen] = math.inf
        chosen.append(int(np.argmin(distance)))
    return chosen


def plot_ranking(subnets: Sequence[RankedSubnet], fidelity: RankingFidelity, path: str | Path,
                 title: str = "Ranking fidelity") -> Path:
    """Scatter of stand-alone vs inherited top-1, coloured by MACs, tau in the title (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 4))
    points = ax.scatter([s.inherited for s in subnets], [s.standalone for s in subnets],
                        c=[s.macs / 1e6 for s in subnets], cmap="viridis")
    fig.colorbar(points, ax=ax, label="MMACs")
    ax.set_xlabel("inherited weights, BN re-estimated: top-1 %")
    ax.set_ylabel("trained alone: top-1 %")
    ax.set_title(f"{title}: Kendall tau {fidelity.kendall_tau:.2f} ({fidelity.count} subnets)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def map_in_processes(fn: Callable[..., Any], argsets: Sequence[tuple[Any, ...]], jobs: int, desc: str) -> list[Any]:
    """``[fn(*args) for args in argsets]`` with a progress bar, ``jobs`` at a time in spawned processes.

    For the stand-alone trainings of a ranking check: each call must seed itself and set its own thread
    count (``torch.set_num_threads(1)`` in ``fn``), so the results equal a serial run's. ``jobs <= 1``
    runs in this process. ``fn`` must be importable (a module-level function) for ``spawn``.
    """
    from tqdm import tqdm

    if jobs <= 1 or len(argsets) <= 1:
        return [fn(*args) for args in tqdm(argsets, desc=desc)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(jobs, len(argsets)), mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(tqdm(pool.map(fn, *zip(*argsets)), total=len(argsets), desc=desc))
