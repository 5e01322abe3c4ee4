"""Pareto front and progress plot of a constrained evolutionary search (SpaceEvo / ElasticViT subnet search).

The front is taken over every evaluated candidate: costs (MACs, predicted latency) minimized,
fitness maximized, so that one search yields the accuracy-vs-cost trade-off, not one subnet.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["pareto_front", "pareto_indices", "plot_search"]


def pareto_indices(costs: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated rows of ``costs`` (every column minimized), in lexicographic order of rows.

    A row is dominated when another is <= in every column and < in one. Sweep in lexicographic
    order: a dominating row always sorts first, so each row is compared with the front so far only.
    """
    costs = np.asarray(costs, dtype=np.float64)
    if costs.ndim != 2:
        raise ValueError(f"costs of shape {costs.shape}; expected (points, objectives)")
    order = np.lexsort(costs.T[::-1])
    front: list[int] = []
    for i in order:
        row = costs[i]
        if front:
            kept = costs[front]
            if np.any(np.all(kept <= row, axis=1) & np.any(kept < row, axis=1)):
                continue
        front.append(int(i))
    return np.asarray(front, dtype=np.int64)


def pareto_front(records: Sequence[Any], objectives: Sequence[str]) -> list[Any]:
    """Records (with ``.fitness`` and ``.objectives``) not dominated in (objectives minimized, fitness maximized)."""
    for name in objectives:
        missing = [r.encoding for r in records if name not in r.objectives]
        if missing:
            raise ValueError(f"objective {name!r} is missing for {len(missing)} candidates, e.g. {missing[0]!r}; "
                             f"known: {sorted(records[0].objectives)}")
    if not records:
        return []
    costs = np.array([[r.objectives[n] for n in objectives] + [-r.fitness] for r in records])
    return [records[i] for i in pareto_indices(costs)]


def plot_search(search: Any, path: str | os.PathLike[str], objective: str | None = None) -> Path:
    """PNG of an :class:`~moonlit.common.nas.evolution.EvolutionSearch`: best and mean fitness per
    generation and, when candidates have objectives, fitness vs ``objective`` with the Pareto front."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = search.objective_names()
    objective = objective or (names[0] if names else None)
    fig = Figure(figsize=(11 if objective else 6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2 if objective else 1, 1)
    generations = [e.generation for e in search.log]
    ax.plot(generations, [e.best for e in search.log], marker="o", ms=3, label="best")
    ax.plot(generations, [e.mean for e in search.log], marker="o", ms=3, label="population mean")
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness")
    ax.legend(loc="lower right")
    if objective:
        ax = fig.add_subplot(1, 2, 2)
        records = list(search.records.values())
        ax.scatter([r.objectives[objective] for r in records], [r.fitness for r in records], s=4, alpha=0.3,
                   label="evaluated")
        front = search.pareto_front([objective])
        ax.plot([r.objectives[objective] for r in front], [r.fitness for r in front], color="C3",
                marker="o", ms=4, drawstyle="steps-post", label="Pareto front")
        ax.set_xlabel(objective)
        ax.set_ylabel("fitness")
        ax.set_title(search.constraint_description, fontsize=9)
        ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
