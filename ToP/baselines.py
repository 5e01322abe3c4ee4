"""Untrained token-dropping baselines at a ToP model's kept-token counts (ToP, KDD'23, §5.2 baselines).

A pruned ToP model's deployed gates fix how many tokens each location keeps for a sentence of a
given length (whole rank bins; the count depends only on how many candidates there are). Putting
the *same* gates on the dense teacher gives two baselines that keep exactly as many tokens per
sample and layer, so their MACs equal ToP's and only the choice of tokens and the training differ:

- ``static top-k``: the teacher keeps the tokens its own attention ranks highest (ToP's score:
  mean attention received), with no training at all;
- ``random``: the teacher keeps random tokens (seeded; the mean and spread over seeds are reported).

ToP's ablation without ranking distillation is a training run (``prune.ranking_alpha=0``), not a
model made here.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from moonlit.common.data.glue import GlueTask

from .evaluate import evaluate_top
from .model import ToPModel

__all__ = ["compare_baselines", "gated_teacher"]


def gated_teacher(pruned: ToPModel, teacher: nn.Module) -> ToPModel:
    """The dense ``teacher`` (an HF classifier) with ``pruned``'s pruning settings and deployed gates."""
    if pruned.pruning is None or pruned.gates is None:
        raise ValueError("gated_teacher needs a pruned ToPModel (pruning settings and gates)")
    model = ToPModel(teacher, pruned.pruning, copy.deepcopy(pruned.gates)).eval()
    if model.dims != pruned.dims:
        raise ValueError(f"the teacher's dimensions {model.dims} differ from the pruned model's {pruned.dims}")
    return model


def compare_baselines(pruned: ToPModel, teacher: nn.Module, loader: Any, task: GlueTask, *,
                      padded_length: int | None = None, random_seeds: int = 3,
                      include_dense: bool = True) -> dict[str, dict[str, Any]]:
    """Dense teacher, ToP, static top-k and random dropping evaluated on ``loader`` (same kept counts).

    Every row is :func:`moonlit.top.evaluate.evaluate_top`'s result; the random row's ``metric`` is
    the mean over ``random_seeds`` seeds, with ``metric_std`` and the per-seed values beside it.
    ``include_dense=False`` leaves the dense row out (when it is evaluated once for many models).
    """
    if random_seeds < 1:
        raise ValueError(f"random_seeds must be >= 1, got {random_seeds}")
    gated = gated_teacher(pruned, teacher)
    rows = {}
    if include_dense:
        rows["dense teacher"] = evaluate_top(ToPModel(teacher).eval(), loader, task, padded_length=padded_length,
                                             prune=False)
    rows["ToP"] = evaluate_top(pruned, loader, task, padded_length=padded_length)
    rows["static top-k"] = evaluate_top(gated, loader, task, padded_length=padded_length)
    gated.rank_source = "random"
    randoms = []
    for seed in range(random_seeds):
        gated.random_generator = torch.Generator().manual_seed(seed)
        randoms.append(evaluate_top(gated, loader, task, padded_length=padded_length))
    random_row = dict(randoms[0])
    values = [r["metric"] for r in randoms]
    random_row.update(metric=float(np.mean(values)), metric_std=float(np.std(values)), metric_per_seed=values,
                      seeds=random_seeds)
    rows["random"] = random_row
    return rows
