"""Latency-constrained evolutionary search of SEQnet subnets in a trained supernet (SpaceEvo, ICCV'23,
arXiv 2303.08308, Sec. 4 "subnet search"; reference ``search_subnet.py``).

The engine is :class:`moonlit.common.nas.EvolutionSearch` (shared with ElasticViT): a population of
512 random subnets, the top 256 kept, 128 mutations + 128 crossovers per generation, 20
generations; a proposal is kept only when the constraint accepts it, so every evaluated candidate
honours it, and elitism keeps the best fitness from decreasing. This module supplies the SpaceEvo
callbacks, over :class:`~moonlit.spaceevo.space.SubnetEncoding` of one search space:

* mutation — every dimension inside the space's choices (each stage's width window): per stage
  the depth, per block the kernel, width and expand ratio, each with probability ``mutation_prob``
  (0.3), and the resolution with ``resolution_prob`` (0.5), as the reference. A mutated value is
  another choice, drawn uniformly. A deeper stage keeps its blocks and appends uniformly random ones;
  a shallower one drops its last blocks.
* crossover — per stage, the depth of one parent; per block position, kernel, width and expand each
  from either parent (a position only one parent has comes from it); the resolution of one parent.
* fitness — INT8 fake-quant (LSQ+) top-1 on images held out of the training set, after BN
  recalibration (:class:`SupernetFitness`), or ``proxy`` (log10 MACs + log10 params) for tests.
* constraint — LitePred-predicted latency on a local platform (default ``ort-int8``) in
  ``[limit_ms − delta_ms, limit_ms]`` (:class:`~moonlit.spaceevo.latency.SubnetLatency`), or MACs.

Fixed flaws of the reference: resolutions hard-coded to {192, 208, 224} in sampling and mutation
(here the supernet's); a mutation re-draws from all choices, so it may return the same value
(here a mutated value always changes, so ``mutation_prob`` is the change rate); mutation retried
in an unbounded loop (here ``max_attempts``); latency came from nn-Meter files off a Drive (here a
LitePred predictor of this machine); every candidate calibrated BN on differently augmented
batches, one more than asked (here the same training images, evaluation transform, for every
candidate).

``python -m moonlit.spaceevo.subnet_search`` writes under the run directory: ``search_state.json``
(resumable after each generation), ``search.json`` (config, per-generation log, best, front),
``pareto.json`` (fitness vs the constrained quantity over every evaluated subnet), ``search.png``
and ``best_subnets.json`` (the top encodings).
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import Subset

from moonlit.common.config import hydra_app, to_container
from moonlit.common.nas import (
    Constraint,
    EvolutionConfig,
    EvolutionSearch,
    MacsConstraint,
    SearchProblem,
)
from moonlit.common.profiling.flops import count_macs
from moonlit.common.train.bn_recalibration import recalibrate_batch_norm
from moonlit.common.train.evaluate import top1_percent

from .latency import DEFAULT_PLATFORM, check_choices, subnet_parts
from .ops.lsq_plus import ActivationQuantizer, WeightQuantizer, set_quant_mode
from .space import SpaceEncoding, StageOptions, SubnetEncoding, sample_subnet, stage_options
from .supernet import Supernet

__all__ = ["RESOLUTION_MUTATION_PROB", "SubnetComplexity", "SupernetFitness", "build_constraint", "build_data",
           "build_problem", "crossover_subnets", "load_supernet", "mutate_subnet", "run", "run_search", "sample_subnet"]

logger = logging.getLogger(__name__)

RESOLUTION_MUTATION_PROB = 0.5  # the reference's resolution_mutate_prob
Block = tuple[int, int, "float | None"]


def _choose(values: Sequence[Any], rng: np.random.Generator) -> Any:
    return values[int(rng.integers(len(values)))]


def _expands(stage: StageOptions) -> tuple[float | None, ...]:
    return tuple(float(e) for e in stage.expands) if stage.expands else (None,)


def _random_block(stage: StageOptions, rng: np.random.Generator) -> Block:
    return _choose(stage.kernels, rng), _choose(stage.widths, rng), _choose(_expands(stage), rng)


def _from_stages(stages: Sequence[Sequence[Block]], resolution: int) -> SubnetEncoding:
    blocks = [block for stage in stages for block in stage]
    return SubnetEncoding(tuple(len(stage) for stage in stages), tuple(int(b[0]) for b in blocks),
                          tuple(int(b[1]) for b in blocks), tuple(b[2] for b in blocks), int(resolution))


def _maybe(current: Any, choices: Sequence[Any], prob: float, rng: np.random.Generator) -> Any:
    """With probability ``prob`` another of ``choices`` (uniformly), else ``current``."""
    if rng.random() >= prob:
        return current
    others = [c for c in choices if c != current]
    return _choose(others, rng) if others else current


def mutate_subnet(subnet: SubnetEncoding, space: SpaceEncoding, rng: np.random.Generator, mutation_prob: float,
                  resolution_prob: float = RESOLUTION_MUTATION_PROB, resolutions: Sequence[int] | None = None
                  ) -> SubnetEncoding:
    """A mutated copy: each depth, kernel, width and expand with ``mutation_prob``, the resolution with
    ``resolution_prob``."""
    stages = []
    for stage, blocks in zip(stage_options(space), subnet.stages(), strict=True):
        depth = _maybe(len(blocks), stage.depths, mutation_prob, rng)
        mutated = [(_maybe(k, stage.kernels, mutation_prob, rng), _maybe(w, stage.widths, mutation_prob, rng),
                    _maybe(e, _expands(stage), mutation_prob, rng)) for k, w, e in blocks[:depth]]
        stages.append(mutated + [_random_block(stage, rng) for _ in range(depth - len(mutated))])
    resolution = _maybe(subnet.resolution, tuple(resolutions or space.spec.resolutions), resolution_prob, rng)
    return _from_stages(stages, resolution)


def crossover_subnets(first: SubnetEncoding, second: SubnetEncoding, rng: np.random.Generator) -> SubnetEncoding:
    """Per stage one parent's depth; per block position each of kernel, width, expand from either parent."""
    stages = []
    for blocks_a, blocks_b in zip(first.stages(), second.stages(), strict=True):
        depth = _choose((len(blocks_a), len(blocks_b)), rng)
        child = []
        for position in range(depth):
            if position >= len(blocks_a) or position >= len(blocks_b):
                child.append((blocks_a if position < len(blocks_a) else blocks_b)[position])
            else:
                child.append(tuple(_choose(pair, rng) for pair in zip(blocks_a[position], blocks_b[position])))
        stages.append(child)
    return _from_stages(stages, _choose((first.resolution, second.resolution), rng))


class SubnetComplexity:
    """Exact MACs and parameters of subnets (``count_macs`` of each distinct block, cached by its part key)."""

    # A part key names the block's architecture and input shape, which fix its counts: shared by all instances.
    _parts: ClassVar[dict[str, tuple[int, int]]] = {}

    def __init__(self, space: SpaceEncoding, num_classes: int | None = None, resolutions: Sequence[int] | None = None
                 ) -> None:
        self.space, self.num_classes, self.resolutions = space, num_classes, resolutions

    def __call__(self, subnet: SubnetEncoding) -> tuple[int, int]:
        """(MACs, parameters) of ``subnet`` at its resolution."""
        macs = params = 0
        for part in subnet_parts(self.space, subnet, self.num_classes, self.resolutions):
            if part.key not in self._parts:
                with torch.device("meta"):  # shapes only: skip the weight initialization (most of the build time)
                    module = part.build()
                report = count_macs(module.to_empty(device="cpu"), torch.zeros(part.input_shape))
                self._parts[part.key] = (int(report.macs), int(report.params))
            macs, params = macs + self._parts[part.key][0], params + self._parts[part.key][1]
        return macs, params

    def proxy_fitness(self, subnets: Sequence[SubnetEncoding]) -> list[float]:
        """A stand-in for accuracy in tests and smoke runs (bigger scores higher): log10 MACs + log10 params."""
        return [math.log10(macs) + math.log10(params) for macs, params in map(self, subnets)]


# --- fitness: INT8 top-1 after BN recalibration -----------------------------------------------------

def load_supernet(space: SpaceEncoding | str, checkpoint: str | Path | None, num_classes: int | None = None,
                  resolutions: Sequence[int] | None = None, quantized: bool = True) -> Supernet:
    """The supernet of ``space`` with weights from a train_supernet checkpoint directory or a reference ``.pth``.

    ``quantized``: LSQ+ 8-bit mode (the INT8 fake-quant accuracy the search ranks by) or FP32.
    """
    supernet = Supernet(space, num_classes=num_classes, resolutions=resolutions)
    if checkpoint is None or str(checkpoint).strip().lower() in ("", "none", "null"):
        logger.warning("no supernet checkpoint: random weights (accuracies near chance; a smoke run)")
    elif Path(checkpoint).is_dir():
        from moonlit.common.train.checkpoint import load_checkpoint

        state = load_checkpoint(checkpoint, supernet)
        logger.info("loaded supernet weights from %s (step %d)", state.path, state.step)
    else:
        from .checkpoints import load_reference_supernet

        load_reference_supernet(checkpoint, supernet)
    set_quant_mode(supernet, 8 if quantized else None)
    return supernet.eval()


class SupernetFitness:
    """Top-1 (%) of subnets of ``supernet`` on held-out images after BN recalibration, batched over candidates.

    ``calibration``/``holdout`` must be re-iterable in a fixed order (lists, or loaders with a fixed
    sampler) so every candidate sees the same images. LSQ+ quantizers that were never initialized
    (no QAT checkpoint) are initialized up front on a fixed set of subnets, so that fitness does
    not depend on which candidate happens to run first.
    """

    def __init__(self, supernet: Supernet, calibration: Iterable[Any], holdout: Iterable[Any],
                 calibration_batches: int = 20, holdout_batches: int | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.supernet, self.device = supernet.to(device), torch.device(device)
        self.calibration, self.holdout = calibration, holdout
        self.calibration_batches, self.holdout_batches = calibration_batches, holdout_batches
        self._initialize_quantizers()

    def _uninitialized_quantizers(self) -> list[torch.nn.Module]:
        return [m for m in self.supernet.modules()
                if isinstance(m, (ActivationQuantizer, WeightQuantizer)) and m.enabled and not bool(m.initialized)]

    @torch.no_grad()
    def _initialize_quantizers(self, max_subnets: int = 64) -> None:
        """Min-max initialize quantizers that never ran: largest, smallest, then seeded random subnets.

        Blocks' shortcut convs run only when a subnet changes width inside a stage, so random
        subnets follow until every quantizer has run (or ``max_subnets`` were tried).
        """
        pending = len(self._uninitialized_quantizers())
        if not pending:
            return
        active = self.supernet.active_encoding()
        images = next(iter(self.calibration))[0].to(self.device)
        rng = np.random.default_rng(0)
        for index in range(max_subnets):
            if index == 0:
                self.supernet.set_max()
            elif index == 1:
                self.supernet.set_min()
            else:
                self.supernet.sample_active(rng)
            self.supernet(images)
            if not self._uninitialized_quantizers():
                break
        left = len(self._uninitialized_quantizers())
        logger.warning("%d LSQ+ quantizers had never run (no QAT checkpoint): min-max initialized on %d subnets%s",
                       pending, index + 1, f"; {left} never ran" if left else "")
        self.supernet.set_active(active)

    @torch.no_grad()
    def accuracy(self, subnet: SubnetEncoding) -> float:
        self.supernet.set_active(subnet)
        recalibrate_batch_norm(self.supernet, self.calibration, self.calibration_batches, device=self.device)
        return top1_percent(self.supernet.eval(), self.holdout, device=self.device, max_batches=self.holdout_batches)

    def __call__(self, subnets: Sequence[SubnetEncoding]) -> list[float]:
        return [self.accuracy(subnet) for subnet in subnets]


def build_data(data: DictConfig, calibration_batches: int) -> tuple[Iterable[Any], Iterable[Any], int]:
    """(calibration batches, held-out batches, number of classes) of the ``data`` group (configs/data/).

    Both use the evaluation transform; calibration draws from the training images left after the
    hold-out, in one fixed shuffled order. With ``data.cache`` both are materialized as lists once.
    """
    from moonlit.common.data.imagenet import build_loader
    from moonlit.common.data.images import build_image_data

    if data.holdout_per_class < 1:
        raise ValueError(f"data.holdout_per_class = {data.holdout_per_class}; expected >= 1 images per class held "
                         "out of train (the reference's 10k on ImageNet: 10)")
    datasets = build_image_data(data)
    train = datasets["train"]
    assert isinstance(train, Subset)
    folder = copy.copy(train.dataset)  # shares the sample list; only the transform differs
    folder.transform = datasets["val"].transform
    calibration = build_loader(Subset(folder, train.indices), data.batch_size, shuffle=True, seed=data.seed,
                               drop_last=True, num_workers=data.num_workers)
    holdout = build_loader(datasets["holdout"], data.batch_size, shuffle=False, num_workers=data.num_workers)
    classes = datasets.num_classes
    if data.cache:
        return list(itertools.islice(calibration, calibration_batches)), list(holdout), classes
    return calibration, holdout, classes


# --- problem, constraint, app -------------------------------------------------------------------------

def build_constraint(cfg: DictConfig, space: SpaceEncoding, complexity: SubnetComplexity,
                     num_classes: int | None = None, resolutions: Sequence[int] | None = None
                     ) -> Constraint[SubnetEncoding]:
    """``cfg.kind``: ``latency`` (``predictor_dir``, ``platform``, ``limit_ms``, ``delta_ms``, ``kernel_cache``)
    or ``macs`` (``max_mmacs``, ``min_mmacs``)."""
    if cfg.kind == "macs":
        return MacsConstraint(lambda s: complexity(s)[0] / 1e6, cfg.max_mmacs, cfg.min_mmacs or 0.0, metric="mmacs")
    if cfg.kind == "latency":
        from moonlit.litepred.api import PartCache, load_predictor

        from .latency import SubnetLatency

        predictor_dir = Path(cfg.predictor_dir) if cfg.predictor_dir else None
        if predictor_dir is None or not (predictor_dir / "platform.json").is_file():
            raise ValueError(f"constraint.predictor_dir = {cfg.predictor_dir!r} holds no LitePred predictor; "
                             "expected a directory built by "
                             f"'moonlit-litepred build platform={cfg.platform or DEFAULT_PLATFORM}'")
        predictor = load_predictor(predictor_dir)
        platform = cfg.platform or predictor.rules
        built_for = predictor.platform.get("name")
        if built_for and built_for != platform:
            logger.warning("predictor %s was built for %r, searching for %r", predictor_dir, built_for, platform)
        latency = SubnetLatency(predictor, space, PartCache(platform, cfg.kernel_cache), num_classes, resolutions)
        return latency.constraint(cfg.limit_ms, cfg.delta_ms)
    raise ValueError(f"constraint.kind = {cfg.kind!r}; expected 'latency' or 'macs'")


def build_problem(space: SpaceEncoding, fitness: Callable[[Sequence[SubnetEncoding]], Sequence[float]],
                  constraint: Constraint[SubnetEncoding] | None, complexity: SubnetComplexity,
                  resolution_prob: float = RESOLUTION_MUTATION_PROB, resolutions: Sequence[int] | None = None
                  ) -> SearchProblem[SubnetEncoding]:
    """The SpaceEvo :class:`SearchProblem`; every candidate also reports its MMACs and params as objectives."""

    def decode(text: str) -> SubnetEncoding:
        subnet = SubnetEncoding.decode(text)
        check_choices(space, subnet, resolutions)
        return subnet

    def objectives(batch: Sequence[SubnetEncoding]) -> list[dict[str, float]]:
        return [{"mmacs": macs / 1e6, "params_m": params / 1e6} for macs, params in map(complexity, batch)]

    return SearchProblem(
        sample=lambda rng: sample_subnet(space, rng, resolutions),
        mutate=lambda subnet, rng, prob: mutate_subnet(subnet, space, rng, prob, resolution_prob, resolutions),
        crossover=crossover_subnets, encode=SubnetEncoding.encode, decode=decode, fitness=fitness,
        constraint=constraint, objectives=objectives)


def _fitness(cfg: DictConfig, space: SpaceEncoding, resolutions: Sequence[int] | None
             ) -> tuple[Callable[[Sequence[SubnetEncoding]], Sequence[float]], SubnetComplexity]:
    """The fitness callable, and a complexity counter with the head it implies (the data's class count)."""
    if cfg.fitness == "proxy":
        complexity = SubnetComplexity(space, cfg.num_classes, resolutions)
        return complexity.proxy_fitness, complexity
    if cfg.fitness == "supernet":
        calibration, holdout, classes = build_data(cfg.data, cfg.bn_batches)
        num_classes = cfg.num_classes or classes
        supernet = load_supernet(space, cfg.checkpoint, num_classes, resolutions, cfg.quantized)
        fitness = SupernetFitness(supernet, calibration, holdout, cfg.bn_batches, cfg.eval_batches, cfg.device)
        return fitness, SubnetComplexity(space, num_classes, resolutions)
    raise ValueError(f"fitness = {cfg.fitness!r}; expected 'supernet' (INT8 top-1 after BN recalibration) or 'proxy'")


def run_search(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) the search described by ``cfg``; writes the files listed in the module docstring."""
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    space = SpaceEncoding.decode(cfg.space)
    resolutions = None if cfg.resolutions is None else [int(r) for r in cfg.resolutions]
    fitness, complexity = _fitness(cfg, space, resolutions)
    constraint = build_constraint(cfg.constraint, space, complexity, complexity.num_classes, resolutions)
    evolution_cfg = to_container(cfg.evolution)
    resolution_prob = evolution_cfg.pop("resolution_prob")
    problem = build_problem(space, fitness, constraint, complexity, resolution_prob, resolutions)
    evolution = EvolutionConfig(**evolution_cfg)
    state_path = run_dir / "search_state.json"
    if cfg.resume and state_path.is_file():
        search = EvolutionSearch.resume(problem, state_path, evolution)
        logger.info("resumed the search at generation %d from %s", search.generation, state_path)
    else:
        search = EvolutionSearch(problem, evolution)
    seeds = [problem.decode(text) for text in cfg.seeds]
    best = search.run(seeds, state_path)
    metric = getattr(constraint, "metric", "mmacs")
    search.save_log(run_dir / "search.json")
    search.plot(run_dir / "search.png", metric)
    front = search.pareto_front([metric])
    (run_dir / "pareto.json").write_text(json.dumps(
        {"space": str(space), "constraint": search.constraint_description, "objective": metric,
         "front": [r.to_json() for r in front]}, indent=1) + "\n")
    top = [r.to_json() for r in search.ranked()[:cfg.top_k]]
    (run_dir / "best_subnets.json").write_text(json.dumps(top, indent=1) + "\n")
    logger.info("best %s: fitness %.4g, %s", best.encoding, best.fitness, best.objectives)
    return {"space": str(space), "best": best.to_json(), "pareto": [r.to_json() for r in front],
            "generations": search.generation, "evaluated": len(search.records), "run_dir": str(run_dir)}


def run(cfg: DictConfig) -> dict[str, Any]:
    """The work behind ``python -m moonlit.spaceevo.subnet_search``: :func:`run_search`'s result."""
    return run_search(cfg)


@hydra_app("spaceevo", "subnet_search")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
