"""ElasticViT's sampler ablation (ICCV'23, arXiv 2303.09730, Sec. 3.2–3.3, Tab. 5) on a reduced space and real images.

The paper's claim: drawing each step's subnets by FLOPs level (complexity-aware) and from banks of
well-performing subnets (performance-aware) trains small subnets better than uniform sampling, without
hurting large ones, because consecutive steps' gradients conflict less. This app trains the same
supernet, from the same seed for the same steps, once per sampler (``samplers``; by default (a)
``uniform``, (b) ``complexity_only``, (c) ``adjacent_step``, the paper's), then reports:

1. per FLOPs level, the top-1 of the level's smallest, middle and largest FLOPs-table subnet (inherited
   weights, BN re-estimated on training batches);
2. the gradient conflict of each run (:mod:`moonlit.elasticvit.conflict`: cosine of consecutive steps'
   shared-weight gradients; higher is less conflict);
3. for ``ranking.sampler`` (default (c)): ranking fidelity — Kendall's tau between inherited top-1 and the
   top-1 of the same subnets trained alone from scratch on the same schedule
   (:mod:`moonlit.common.nas.ranking`), over ``ranking.count`` subnets spread over the MACs range.

Writes ``section.json``, ``ablation.md`` and ``ablation.png`` (+ ``ranking.png``) under ``output_dir``.
Each sampler's run keeps its checkpoints and, once scored, its results (``<output_dir>/<sampler>/``), and
each subnet trained alone its checkpoints, so an interrupted ablation resumes where it stopped. ``only=<sampler>``
trains and scores that sampler alone (no report): separate processes can train the samplers side by side,
and a last run without ``only`` finds them done and writes the report
(``scripts/reproduce_elasticvit_fmnist.sh --jobs 2``). A sampler
run interrupted mid-training reports the gradient cosines of the steps after the resume (``steps`` says
how many).

    python -m moonlit.elasticvit.ablation                          # Fashion-MNIST (bash scripts/get_data.sh)
    python -m moonlit.elasticvit.ablation experiment=smoke         # generated images, minutes
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from moonlit.common.config import compose_config, hydra_app, to_container
from moonlit.common.data.imagenet import build_loader
from moonlit.common.data.images import build_image_data
from moonlit.common.errors import InputError
from moonlit.common.nas.ranking import (
    RankedSubnet,
    map_in_processes,
    plot_ranking,
    ranking_fidelity,
    spread_by_complexity,
)
from moonlit.common.report import render_table
from moonlit.common.train.classifier import evaluate_top1, train_classifier
from moonlit.common.train.dist import DistContext
from moonlit.common.train.optim import build_optimizer_from_config
from moonlit.common.train.seed import seed_everything
from moonlit.common.train.supernet import evaluate_recalibrated

from .space import Subnet
from .supernet import ElasticViTSupernet
from .tables import FlopsTables, subnets_to_array, total_macs
from .train import ResizedInput, train

__all__ = ["POSITIONS", "level_subnets", "main", "run", "standalone_top1"]

log = logging.getLogger(__name__)
POSITIONS = ("smallest", "middle", "largest")
KNOWN_SAMPLERS = ("adjacent_step", "complexity_only", "random", "uniform")
RESULT_FILE = "ablation.json"  # a sampler's scores, beside its checkpoints


def level_subnets(tables: FlopsTables) -> dict[float, dict[str, Subnet]]:
    """Per level, the table rows with the smallest, the median and the largest MACs (first of equals)."""
    chosen: dict[float, dict[str, Subnet]] = {}
    for level in tables.levels:
        order = np.argsort(tables.macs[level], kind="stable")
        rows = {"smallest": int(order[0]), "middle": int(order[len(order) // 2]), "largest": int(order[-1])}
        chosen[level] = {position: tables.subnet(level, row) for position, row in rows.items()}
    return chosen


def _static(supernet: ElasticViTSupernet, subnet: Subnet) -> ResizedInput:
    active = supernet.active_subnet
    supernet.set_active(subnet)
    static = ResizedInput(supernet.get_active_subnet(), subnet.resolution)
    supernet.set_active(active)
    return static


def inherited_top1(supernet: ElasticViTSupernet, subnet: Subnet, loaders: dict[str, Any], calib_batches: int,
                   ctx: DistContext, seed: int = 0) -> float:
    """Top-1 % of ``subnet`` with the supernet's weights, BN re-estimated on ``calib_batches`` train batches.

    The global RNG is seeded first: the calibration batches pass through the (random) training transform,
    so the score does not depend on what ran before it.
    """
    static = _static(supernet, subnet).to(ctx.device)
    seed_everything(seed)
    metrics = evaluate_recalibrated(static, loaders["val"], loaders["calib"], calib_batches, ctx.device, ctx)
    return 100.0 * metrics["top1"]


def standalone_top1(subnet: Subnet, train_cfg: DictConfig, loaders: dict[str, Any], out_dir: Path,
                    ctx: DistContext, seed: int) -> float:
    """Top-1 % of ``subnet`` trained alone from scratch: fresh weights (the supernet's initialisation for
    ``seed``, sliced), labels with the supernet run's smoothing, its optimizer, lr and epochs."""
    seed_everything(seed)
    supernet = ElasticViTSupernet(_space(train_cfg), int(train_cfg.supernet.num_classes),
                                  train_cfg.supernet.token_norm, train_cfg.supernet.dropout)
    model = _static(supernet, subnet).to(ctx.device)
    epochs = int(train_cfg.epochs + train_cfg.cooldown_epochs)
    lr = _supernet_lr(train_cfg, ctx)

    def make_optimizer(_: Any) -> torch.optim.Optimizer:
        return build_optimizer_from_config(model, train_cfg.optim, lr)

    run = train_classifier(model, loaders["train"], loaders["val"], ctx=ctx, make_optimizer=make_optimizer,
                           epochs=epochs, checkpoint_dir=out_dir / "checkpoints",
                           label_smoothing=float(train_cfg.step.label_smoothing),
                           warmup_steps=int(train_cfg.warmup_epochs) * len(loaders["train"]),
                           config={"subnet": str(subnet)})
    if run.history:
        return 100.0 * float(run.history[-1]["val/top1"])
    # trained to the end by an earlier invocation: score the weights resume_or_load put back
    return 100.0 * evaluate_top1(model.eval(), loaders["val"], ctx.device, ctx)["top1"]


def _standalone_job(subnet: Subnet, train_cfg: DictConfig, out_dir: Path, seed: int) -> float:
    """:func:`standalone_top1` in a worker process of its own, on one thread."""
    torch.set_num_threads(1)
    ctx = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend=None,
                      is_distributed=False)
    return standalone_top1(subnet, train_cfg, _loaders(train_cfg), out_dir, ctx, seed)


def _space(train_cfg: DictConfig) -> Any:
    from .train_step import space_from_config

    return space_from_config(None if train_cfg.space is None else OmegaConf.to_container(train_cfg.space, resolve=True))


def _supernet_lr(train_cfg: DictConfig, ctx: DistContext) -> float:
    from .train import REFERENCE_BATCH

    return float(train_cfg.optim.lr) * ctx.world_size * int(train_cfg.data.batch_size) / REFERENCE_BATCH


def _loaders(train_cfg: DictConfig) -> dict[str, Any]:
    """Train (shuffled, seeded), BN-calibration and val loaders of the run's ``data`` config."""
    data = build_image_data(train_cfg.data)
    batch, eval_batch = int(train_cfg.data.batch_size), int(train_cfg.data.eval_batch_size)
    seed = int(train_cfg.trainer.seed)
    return {"train": build_loader(data["train"], batch, shuffle=True, seed=seed, drop_last=True),
            "calib": build_loader(data["train"], batch, shuffle=True, seed=seed + 1),
            "val": build_loader(data["val"], eval_batch, shuffle=False)}


def _check(cfg: DictConfig) -> list[str]:
    samplers = [str(s) for s in cfg.samplers]
    unknown = sorted(set(samplers) - set(KNOWN_SAMPLERS))
    if unknown or not samplers or len(set(samplers)) != len(samplers):
        raise InputError(f"samplers = {samplers}; expected distinct names from {list(KNOWN_SAMPLERS)}")
    if cfg.ranking.enabled and str(cfg.ranking.sampler) not in samplers:
        raise InputError(f"ranking.sampler = {cfg.ranking.sampler!r} is not among samplers {samplers}")
    if cfg.ranking.enabled and int(cfg.ranking.count) < 2:
        raise InputError(f"ranking.count = {cfg.ranking.count}; expected >= 2 subnets")
    if cfg.only is not None:
        if str(cfg.only) not in samplers:
            raise InputError(f"only = {cfg.only!r}; expected one of samplers {samplers}")
        return [str(cfg.only)]
    return samplers


def _train_config(cfg: DictConfig, sampler: str, out_dir: Path) -> DictConfig:
    overrides = [*cfg.train_overrides, f"sampling={sampler}", f"output_dir={out_dir / sampler}",
                 "monitor.gradient_conflict=true", f"trainer.seed={int(cfg.seed)}", "resume=true"]
    return compose_config("elasticvit", "train", overrides)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train one supernet per sampler, score levels, conflict and ranking fidelity; write the report."""
    samplers = _check(cfg)
    out_dir = Path(cfg.output_dir)
    configs = {s: _train_config(cfg, s, out_dir) for s in samplers}  # every override checked before training
    ctx = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend=None,
                      is_distributed=False)  # one process: the runs are small and the ranking loop is serial
    calib_batches, seed = int(cfg.eval.bn_calibration_batches), int(cfg.seed)
    results: dict[str, Any] = {}
    started = time.perf_counter()
    supernets: dict[str, ElasticViTSupernet] = {}
    tables: FlopsTables | None = None
    for sampler in samplers:
        summary = train(configs[sampler])
        supernet = summary["supernet"]
        if cfg.eval.use_ema and summary["ema"] is not None:
            supernet = summary["ema"].module
        supernets[sampler], tables = supernet, summary["tables"]
        saved = out_dir / sampler / RESULT_FILE
        if not summary["history"] and saved.is_file():  # trained and scored by an earlier invocation
            results[sampler] = json.loads(saved.read_text())
            continue
        loaders = _loaders(configs[sampler])
        levels = level_subnets(tables)
        top1 = {f"{level:g}": {pos: inherited_top1(supernet, subnet, loaders, calib_batches, ctx, seed)
                               for pos, subnet in subnets.items()}
                for level, subnets in tqdm(levels.items(), desc=f"{sampler}: levels", leave=False)}
        results[sampler] = {"top1": top1, "gradient_conflict": summary.get("gradient_conflict"),
                            "steps": summary["steps"], "train_seconds": summary["train_seconds"],
                            "sampler_statistics": {k: v for k, v in summary["sampler_statistics"].items()
                                                   if k != "walk"}}
        saved.write_text(json.dumps(results[sampler], indent=1) + "\n")
    assert tables is not None
    if cfg.only is not None:  # one sampler trained and scored (saved beside its checkpoints); no report yet
        return {"samplers": samplers, "results": results, "seconds": round(time.perf_counter() - started, 1)}
    level_macs = {f"{level:g}": {pos: float(total_macs(subnets_to_array([s]), tables.counter,
                                                         int(configs[samplers[0]].supernet.num_classes),
                                                         _space(configs[samplers[0]]))[0] / 1e6)
                                 for pos, s in subnets.items()}
                  for level, subnets in level_subnets(tables).items()}
    section: dict[str, Any] = {"samplers": samplers, "seed": int(cfg.seed), "results": results,
                               "level_mmacs": level_macs, "config": to_container(cfg)}
    if cfg.ranking.enabled:
        section["ranking"] = _ranking(cfg, configs[str(cfg.ranking.sampler)], supernets[str(cfg.ranking.sampler)],
                                      tables, out_dir, ctx)
    section["claims"] = paper_claims(results, samplers)
    section["seconds"] = round(time.perf_counter() - started, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "section.json").write_text(json.dumps(section, indent=1) + "\n")
    (out_dir / "ablation.md").write_text(render_report(section) + "\n")
    plot_ablation(section, out_dir / "ablation.png")
    return section


def _ranking(cfg: DictConfig, train_cfg: DictConfig, supernet: ElasticViTSupernet, tables: FlopsTables,
             out_dir: Path, ctx: DistContext) -> dict[str, Any]:
    num_classes, space = int(train_cfg.supernet.num_classes), _space(train_cfg)
    candidates = [tables.subnet(level, row) for level in tables.levels for row in range(tables.size(level))]
    macs = total_macs(subnets_to_array(candidates), tables.counter, num_classes, space)
    picked = [candidates[i] for i in spread_by_complexity(macs.tolist(), int(cfg.ranking.count))]
    loaders = _loaders(train_cfg)
    seed, jobs = int(cfg.seed), int(cfg.ranking.jobs)
    dirs = [out_dir / "standalone" / f"subnet{index}" for index in range(len(picked))]
    if jobs > 1:  # the stand-alone trainings side by side, one thread each (each seeds itself: same results)
        argsets = [(subnet, train_cfg, path, seed) for subnet, path in zip(picked, dirs)]
        alone = map_in_processes(_standalone_job, argsets, jobs, "ranking: subnets trained alone")
    else:
        alone = [standalone_top1(subnet, train_cfg, loaders, path, ctx, seed)
                 for subnet, path in zip(tqdm(picked, desc="ranking: subnets trained alone"), dirs)]
    rows = []
    for subnet, top1 in zip(picked, alone):
        inherited = inherited_top1(supernet, subnet, loaders, int(cfg.eval.bn_calibration_batches), ctx, seed)
        subnet_macs = float(total_macs(subnets_to_array([subnet]), tables.counter, num_classes, space)[0])
        rows.append(RankedSubnet(str(subnet), subnet_macs, inherited, top1))
    fidelity = ranking_fidelity(rows)
    plot_ranking(rows, fidelity, out_dir / "ranking.png", title=f"ElasticViT ({cfg.ranking.sampler})")
    return {"sampler": str(cfg.ranking.sampler), "fidelity": fidelity.to_dict(),
            "subnets": [vars(row) for row in rows]}


def paper_claims(results: dict[str, Any], samplers: Sequence[str], baseline: str = "uniform") -> dict[str, Any]:
    """The paper's claim per sampler against ``baseline``: smallest level's smallest subnet gains >= 1 point
    while the largest level's largest subnet loses <= 0.5 point."""
    if baseline not in results:
        return {}
    claims = {}
    for sampler in samplers:
        if sampler == baseline:
            continue
        levels = list(results[sampler]["top1"])
        first, last = levels[0], levels[-1]
        small_gain = results[sampler]["top1"][first]["smallest"] - results[baseline]["top1"][first]["smallest"]
        large_change = results[sampler]["top1"][last]["largest"] - results[baseline]["top1"][last]["largest"]
        claims[sampler] = {"smallest_gain_points": round(small_gain, 2),
                           "largest_change_points": round(large_change, 2),
                           "met": bool(small_gain >= 1.0 and large_change >= -0.5)}
    return claims


def render_report(section: dict[str, Any]) -> str:
    """Markdown tables: top-1 per level and position per sampler; conflict; claims; ranking fidelity."""
    samplers = section["samplers"]
    levels = list(section["level_mmacs"])
    rows = []
    for level in levels:
        for pos in POSITIONS:
            rows.append([level, pos, f"{section['level_mmacs'][level][pos]:.2f}",
                         *[f"{section['results'][s]['top1'][level][pos]:.2f}" for s in samplers]])
    parts = [render_table({"caption": "Top-1 % per FLOPs level (inherited weights, BN re-estimated)",
                           "columns": ["level MMACs", "subnet", "MMACs", *samplers], "rows": rows})]
    conflict_rows = []
    for s in samplers:
        g = section["results"][s]["gradient_conflict"] or {}
        conflict_rows.append([s, g.get("steps", 0), _fmt(g.get("mean")), _fmt(g.get("median")),
                              _fmt(g.get("negative_fraction")), f"{section['results'][s]['train_seconds']:.0f}"])
    parts.append(render_table({"caption": "Gradient cosine of consecutive steps (shared weights; higher: less "
                                          "conflict)",
                               "columns": ["sampler", "steps", "mean", "median", "fraction < 0", "train s"],
                               "rows": conflict_rows}))
    if section["claims"]:
        parts.append(render_table({
            "caption": "Paper's claim against uniform: smallest level's smallest subnet +1 point or more, largest "
                       "level's largest subnet within -0.5 point",
            "columns": ["sampler", "smallest gain", "largest change", "met"],
            "rows": [[s, c["smallest_gain_points"], c["largest_change_points"], c["met"]]
                     for s, c in section["claims"].items()]}))
    if "ranking" in section:
        f = section["ranking"]["fidelity"]
        parts.append(f"Ranking fidelity ({section['ranking']['sampler']}, {f['count']} subnets): Kendall tau "
                     f"{f['kendall_tau']:.3f} (p {f['p_value']:.3f}), Spearman rho {f['spearman_rho']:.3f}, "
                     f"best subnet agrees: {f['best_agrees']}")
    return "\n\n".join(parts)


def _fmt(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def plot_ablation(section: dict[str, Any], path: Path) -> Path:
    """Top-1 of each level's smallest / largest subnet per sampler, and the gradient cosines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    levels = list(section["level_mmacs"])
    for index, sampler in enumerate(section["samplers"]):  # one colour per sampler
        top1 = section["results"][sampler]["top1"]
        for pos, style in (("smallest", "o--"), ("largest", "s-")):
            ax.plot([section["level_mmacs"][lv][pos] for lv in levels], [top1[lv][pos] for lv in levels], style,
                    color=f"C{index}", label=f"{sampler} ({pos})")
    ax.set_xlabel("MMACs")
    ax.set_ylabel("top-1 %")
    ax.set_title("Subnets per FLOPs level")
    ax.legend(fontsize=7)
    names = section["samplers"]
    means = [(section["results"][s]["gradient_conflict"] or {}).get("mean", float("nan")) for s in names]
    bx.bar(names, means, color=[f"C{index}" for index in range(len(names))])
    bx.set_ylabel("mean cosine of consecutive steps' gradients")
    bx.set_title("Gradient conflict (higher = less)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@hydra_app("elasticvit", "ablation")
def main(cfg: DictConfig) -> None:
    section = run(cfg)
    if cfg.only is not None:
        result = section["results"][str(cfg.only)]
        print(f"{cfg.only}: trained and scored ({result['steps']} steps, {result['train_seconds']:.0f} s of training); "
              f"a run without only= writes the report")
        return
    print(render_report(section))
    print(f"wrote {Path(cfg.output_dir) / 'section.json'} ({section['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
