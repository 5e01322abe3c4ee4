"""Evolutionary search of ElasticViT subnets under a FLOPs or a predicted-latency limit (ICCV'23, Sec. 3.4).

The engine is :class:`moonlit.common.nas.EvolutionSearch` (shared with SpaceEvo's subnet search):
a population of 512 (seed subnets from banks/tables, topped up with random ones), the top 256 kept,
128 mutations + 128 crossovers per generation, 40 generations. This module supplies the
ElasticViT callbacks:

* mutation — every dimension, each with probability ``mutation_prob`` (0.2): resolution, stem
  width/kernel, and per stage width, expand/kernel (C) or MLP ratio/V scale (T); depths (stem and
  stages) with their own probability ``depth_prob`` (0.4), as the reference. A mutated value is a
  different choice, drawn uniformly. Widths never decrease across stages: a new width is drawn among
  those >= the previous stage's, and later stages narrower than it are raised to the smallest
  allowed width.
* crossover — per stage: the resolution and each of the seven width-bearing parts (stem, C1, C2,
  T1–T4, with all their choices) come from one parent or the other, uniformly among the
  assignments whose widths do not decrease.
* fitness — top-1 on held-out training images after BN recalibration, with the supernet
  (:class:`~moonlit.elasticvit.evaluate.SubnetEvaluator`), or ``proxy`` (below) for tests and smoke runs.
* constraint — MACs (exact counter, :func:`~moonlit.elasticvit.flops.subnet_complexity`) in
  ``[min_mmacs, max_mmacs]``, or LitePred-predicted latency on a local platform in
  ``[limit_ms − delta_ms, limit_ms]`` (:class:`~moonlit.elasticvit.latency.SubnetLatency`).

Fixed flaws of the reference script (notes, flaw 1): it imports a missing function and reads
config keys that do not exist; its resolution mutation is never applied (here resolution mutates
like every dimension); its channel step is inverted (16 for C1, C2 and T1, 8 for T2–T4,
where the space steps by 8 in conv and 16 in transformer stages; here each stage's own choices
from the space are used).

``python -m moonlit.elasticvit.search`` writes, under the run directory: ``search_state.json``
(resumable after each generation), ``search.json`` (config, per-generation log, best, front),
``pareto.json`` (the accuracy-vs-cost front over every evaluated subnet), ``search.png`` and
``best_subnets.json`` (the top encodings).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from moonlit.common.config import hydra_app, to_container
from moonlit.common.nas import (
    AllConstraints,
    Constraint,
    EvolutionConfig,
    EvolutionSearch,
    MacsConstraint,
    SearchProblem,
)

from .flops import subnet_complexity
from .space import (
    ELASTICVIT_SPACE,
    ConvStage,
    SearchSpace,
    Subnet,
    TransformerStage,
    decode,
    encode,
    sample_subnet,
)

__all__ = ["build_constraint", "build_problem", "crossover_subnets", "load_seeds", "mutate_subnet",
           "proxy_fitness", "run", "run_search"]

logger = logging.getLogger(__name__)

DEPTH_MUTATION_PROB = 0.4  # the reference's s_prob


def _other_choice(current: int, choices: Sequence[int], rng: np.random.Generator) -> int:
    others = [c for c in choices if c != current]
    return others[int(rng.integers(len(others)))] if others else current


def _maybe(current: int, choices: Sequence[int], prob: float, rng: np.random.Generator) -> int:
    return _other_choice(current, choices, rng) if rng.random() < prob else current


def _raise_widths(widths: list[int], choices: Sequence[Sequence[int]]) -> list[int]:
    """Lift every width below its predecessor to the smallest allowed width that is not."""
    for index in range(1, len(widths)):
        if widths[index] < widths[index - 1]:
            allowed = [w for w in choices[index] if w >= widths[index - 1]]
            if not allowed:
                raise ValueError(f"no width of stage {index} in {tuple(choices[index])} is >= {widths[index - 1]}")
            widths[index] = min(allowed)
    return widths


def _width_choices(space: SearchSpace) -> list[tuple[int, ...]]:
    return [space.first_conv_widths, *(stage.widths for stage in space.stages)]


def _with_widths(subnet: Subnet, widths: Sequence[int]) -> Subnet:
    conv = len(subnet.conv_stages)
    return dataclasses.replace(
        subnet, stem_width=widths[0],
        conv_stages=tuple(dataclasses.replace(s, width=w) for s, w in zip(subnet.conv_stages, widths[1:1 + conv])),
        transformer_stages=tuple(dataclasses.replace(s, width=w)
                                 for s, w in zip(subnet.transformer_stages, widths[1 + conv:])))


def mutate_subnet(subnet: Subnet, rng: np.random.Generator, mutation_prob: float,
                  depth_prob: float = DEPTH_MUTATION_PROB, space: SearchSpace = ELASTICVIT_SPACE) -> Subnet:
    """A mutated copy: each dimension changes with ``mutation_prob``, each depth with ``depth_prob``."""
    p = mutation_prob
    conv_stages = [ConvStage(s.width, _maybe(s.depth, ss.depths, depth_prob, rng), _maybe(s.expand, space.conv_expands,
                                                                                            p, rng),
                             _maybe(s.kernel, space.conv_kernels, p, rng))
                   for s, ss in zip(subnet.conv_stages, space.conv_stages)]
    transformer_stages = [TransformerStage(s.width, _maybe(s.depth, ss.depths, depth_prob, rng),
                                           _maybe(s.mlp_ratio, space.mlp_ratios, p, rng),
                                           _maybe(s.v_scale, space.v_scales, p, rng))
                          for s, ss in zip(subnet.transformer_stages, space.transformer_stages)]
    mutated = Subnet(_maybe(subnet.resolution, space.resolutions, p, rng), subnet.stem_width,
                     _maybe(subnet.stem_depth, space.stem_depths, depth_prob, rng),
                     _maybe(subnet.stem_kernel, space.stem_kernels, p, rng), tuple(conv_stages),
                     tuple(transformer_stages))
    choices = _width_choices(space)
    widths = list(subnet.widths)
    for index in range(len(widths)):
        if rng.random() < p:
            floor = widths[index - 1] if index else 0
            widths[index] = _other_choice(widths[index], [w for w in choices[index] if w >= floor], rng)
            _raise_widths(widths, choices)
    return _with_widths(mutated, widths)


def crossover_subnets(first: Subnet, second: Subnet, rng: np.random.Generator) -> Subnet:
    """A child taking the resolution and each of stem, C1…T4 whole from one parent (widths non-decreasing)."""
    parents = (first, second)
    widths = (first.widths, second.widths)
    masks = [mask for mask in itertools.product((0, 1), repeat=len(first.widths))
             if all(widths[mask[i]][i] <= widths[mask[i + 1]][i + 1] for i in range(len(mask) - 1))]
    mixed = [mask for mask in masks if 0 < sum(mask) < len(mask)]  # both parents contribute when possible
    pool = mixed or masks
    mask = pool[int(rng.integers(len(pool)))]
    stem = parents[mask[0]]
    stages = [parents[m].stages[i] for i, m in enumerate(mask[1:])]
    conv = len(first.conv_stages)
    return Subnet(parents[int(rng.integers(2))].resolution, stem.stem_width, stem.stem_depth, stem.stem_kernel,
                  tuple(stages[:conv]), tuple(stages[conv:]))


def proxy_fitness(subnets: Sequence[Subnet], num_classes: int = 1000, space: SearchSpace = ELASTICVIT_SPACE
                  ) -> list[float]:
    """A cheap stand-in for accuracy in tests and smoke runs: log10 MACs + log10 params.

    Bigger subnets score higher (the direction accuracy goes), so under a limit the search climbs
    towards it; this is no accuracy predictor.
    """
    scores = []
    for subnet in subnets:
        complexity = subnet_complexity(subnet, num_classes, space)
        scores.append(math.log10(complexity.macs) + math.log10(complexity.params))
    return scores


def build_constraint(cfg: DictConfig, num_classes: int = 1000, space: SearchSpace = ELASTICVIT_SPACE
                     ) -> Constraint[Subnet]:
    """``cfg.kind``: ``macs`` (``max_mmacs``, ``min_mmacs``) or ``latency`` (``predictor_dir``,
    ``platform``, ``limit_ms``, ``delta_ms``, ``kernel_cache``, and optionally ``macs_budget``: a MMACs
    upper bound checked first, e.g. EfficientNet-B0's 385 to search "at its MAC budget")."""

    def macs(upper: float, lower: float = 0.0) -> MacsConstraint[Subnet]:
        return MacsConstraint(lambda s: subnet_complexity(s, num_classes, space).macs / 1e6, upper, lower,
                              metric="mmacs")

    if cfg.kind == "macs":
        return macs(cfg.max_mmacs, cfg.min_mmacs or 0.0)
    if cfg.kind == "latency":
        from moonlit.litepred.api import PartCache, load_predictor

        from .latency import SubnetLatency

        if cfg.predictor_dir is None:
            raise ValueError("constraint.kind = latency needs constraint.predictor_dir (a LitePred predictor "
                             "directory, e.g. outputs/litepred/predictors/ort-fp32)")
        predictor = load_predictor(cfg.predictor_dir)
        cache = PartCache(cfg.platform or predictor.rules, cfg.kernel_cache)
        latency = SubnetLatency(predictor, cache, num_classes, space=space).constraint(cfg.limit_ms, cfg.delta_ms)
        budget = cfg.get("macs_budget")
        return latency if budget is None else AllConstraints(macs(float(budget)), latency)
    raise ValueError(f"constraint.kind = {cfg.kind!r}; expected 'macs' or 'latency'")


def build_problem(fitness: Callable[[Sequence[Subnet]], Sequence[float]], constraint: Constraint[Subnet] | None,
                  depth_prob: float = DEPTH_MUTATION_PROB, num_classes: int = 1000,
                  space: SearchSpace = ELASTICVIT_SPACE) -> SearchProblem[Subnet]:
    """The ElasticViT :class:`SearchProblem`; every candidate also reports its MMACs and params as objectives."""

    def objectives(batch: Sequence[Subnet]) -> list[dict[str, float]]:
        out = []
        for subnet in batch:
            complexity = subnet_complexity(subnet, num_classes, space)
            out.append({"mmacs": complexity.macs / 1e6, "params_m": complexity.params / 1e6})
        return out

    return SearchProblem(
        sample=lambda rng: sample_subnet(space, rng),
        mutate=lambda subnet, rng, prob: mutate_subnet(subnet, rng, prob, depth_prob, space),
        crossover=crossover_subnets,
        encode=encode,
        decode=lambda text: decode(text, space),
        fitness=fitness,
        constraint=constraint,
        objectives=objectives,
    )


def load_seeds(encodings: Iterable[str] = (), files: Iterable[str | Path] = (),
               source: Callable[[], Iterable[Subnet | str]] | None = None,
               space: SearchSpace = ELASTICVIT_SPACE) -> list[Subnet]:
    """Initial subnets (banks, tables, earlier searches): encodings, files and a pluggable ``source``.

    A file holds one encoding per line, or JSON: a list of encodings or of ``{"encoding": ...}``
    records (``best_subnets.json`` of an earlier search). ``source()`` returns subnets or encodings
    (e.g. the subnets of a FLOPs-table level). Duplicates are dropped, order kept.
    """
    texts: list[str | Subnet] = list(encodings)
    for file in files:
        content = Path(file).read_text()
        if content.lstrip().startswith("["):
            texts += [item["encoding"] if isinstance(item, dict) else item for item in json.loads(content)]
        else:
            texts += [line.strip() for line in content.splitlines() if line.strip() and not line.startswith("#")]
    if source is not None:
        texts += list(source())
    seeds: dict[str, Subnet] = {}
    for item in texts:
        subnet = item if isinstance(item, Subnet) else decode(str(item), space)
        seeds.setdefault(encode(subnet), subnet)
    return list(seeds.values())


def _fitness(cfg: DictConfig, run_dir: Path) -> Callable[[Sequence[Subnet]], Sequence[float]]:
    if cfg.fitness == "proxy":
        return lambda batch: proxy_fitness(batch, cfg.num_classes or 1000)
    if cfg.fitness == "supernet":
        from .evaluate import SubnetEvaluator, build_data, load_supernet

        calibration, holdout, classes = build_data(cfg.data, run_dir, "holdout", cfg.bn_batches)
        supernet = load_supernet(cfg.checkpoint, cfg.num_classes or classes, cfg.token_norm)
        return SubnetEvaluator(supernet, calibration, holdout, cfg.bn_batches, cfg.eval_batches)
    raise ValueError(f"fitness = {cfg.fitness!r}; expected 'supernet' (BN-recalibrated top-1) or 'proxy'")


def run_search(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) the search described by ``cfg``; writes the files listed in the module docstring."""
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    num_classes = cfg.num_classes or 1000
    constraint = build_constraint(cfg.constraint, num_classes)
    problem = build_problem(_fitness(cfg, run_dir), constraint, cfg.evolution.depth_prob, num_classes)
    evolution = EvolutionConfig(**{k: v for k, v in to_container(cfg.evolution).items() if k != "depth_prob"})
    state_path = run_dir / "search_state.json"
    if cfg.resume and state_path.is_file():
        search = EvolutionSearch.resume(problem, state_path, evolution)
        logger.info("resumed the search at generation %d from %s", search.generation, state_path)
    else:
        search = EvolutionSearch(problem, evolution)
    seeds = load_seeds(cfg.seeds.encodings, cfg.seeds.files, _seed_source(cfg.seeds.source))
    best = search.run(seeds, state_path)
    metric = constraint.metric if hasattr(constraint, "metric") else "mmacs"
    search.save_log(run_dir / "search.json")
    search.plot(run_dir / "search.png", metric)
    front = search.pareto_front([metric])
    (run_dir / "pareto.json").write_text(json.dumps(
        {"constraint": search.constraint_description, "objective": metric,
         "front": [r.to_json() for r in front]}, indent=1) + "\n")
    top = [r.to_json() for r in search.ranked()[:cfg.top_k]]
    (run_dir / "best_subnets.json").write_text(json.dumps(top, indent=1) + "\n")
    logger.info("best %s: fitness %.4g, %s", best.encoding, best.fitness, best.objectives)
    return {"best": best.to_json(), "pareto": [r.to_json() for r in front], "generations": search.generation,
            "evaluated": len(search.records), "run_dir": str(run_dir)}


def _seed_source(source: Any) -> Callable[[], Iterable[Subnet | str]] | None:
    """``seeds.source``: null, or a ``_target_`` config instantiated to a callable returning subnets/encodings."""
    if source is None:
        return None
    from hydra.utils import instantiate

    built = instantiate(source)
    return built if callable(built) else (lambda: built)


def run(cfg: DictConfig) -> dict[str, Any]:
    """The work behind ``python -m moonlit.elasticvit.search``: :func:`run_search`'s result."""
    return run_search(cfg)


@hydra_app("elasticvit", "search")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
