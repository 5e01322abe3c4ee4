"""SpaceEvo on Fashion-MNIST (ICCV'23, arXiv 2303.08308, Sec. 3.3 and 4): the reduced pipeline with a real teacher.

The quickstart's pipeline (:mod:`moonlit.spaceevo.quickstart`) at larger settings on real images, with the
two checks a user of a one-shot supernet cares about:

1. ``space_search``: the EfficientNet-Lite0 ImageNet teacher (``teacher.pretrained``; its ImageNet BN
   statistics kept unless ``teacher.bn_batches`` > 0) cut at the ``onnxw_tiny`` stages; block KD of every
   (stage, block type) student on Fashion-MNIST train images at the hyperspace's LUT resolutions; LUTs (latency from
   ``latency``: a LitePred predictor, or the quickstart's constant ms-per-MFLOP table); Q-T score + aging
   evolution + re-rank of the spaces;
2. ``supernet``: the top-ranked space's supernet (or ``supernet.space``) trained with the sandwich rule in
   FP32, then LSQ+ QAT, by :func:`moonlit.spaceevo.train_supernet.train_supernet` (``experiment=fmnist``);
3. ``ranking``: ``ranking.count`` subnets spread over the MACs range; each one's top-1 on the test set with
   the FP32-phase supernet weights (BN re-estimated, RNG seeded first) against its top-1 when trained alone
   from scratch on the FP32 phase's schedule (:func:`moonlit.common.train.classifier.train_classifier`);
   Kendall's tau (:mod:`moonlit.common.nas.ranking`). With ``ranking.seeds`` > 1 each subnet is also trained
   alone with the next seeds: the stand-alone score is the mean, and the seeds' agreement with each other
   (their Kendall tau) is reported as the ceiling a supernet's ranking can be held to;
4. ``subnet_search`` and ``deploy`` (:mod:`moonlit.spaceevo.fmnist_deploy`): evolutionary subnet search on the
   QAT supernet (fitness: INT8 fake-quant top-1 on the held-out train images after BN recalibration) under a
   latency band priced by the LUTs' constant table (or MMACs, or LitePred latency), the best subnet exported to
   INT8 QDQ ONNX with its learned LSQ+ grids (:func:`moonlit.spaceevo.deploy.export_lsq_qdq`), and its test
   top-1 as ONNX INT8, fake-quant torch and FP32.

Every stage saves its result as JSON under ``output_dir`` and is skipped when a rerun finds it (supernet
training and each stand-alone subnet also resume from their checkpoints). Writes ``section.json``,
``fmnist.md`` and the PNGs. Every input is checked before anything is written.

    python -m moonlit.spaceevo.fmnist
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from moonlit.common.config import compose_config, hydra_app, to_container
from moonlit.common.data.imagenet import build_loader
from moonlit.common.data.images import check_image_data, image_data_from_config
from moonlit.common.errors import InputError
from moonlit.common.nas.ranking import (
    RankedSubnet,
    map_in_processes,
    plot_ranking,
    ranking_fidelity,
    seed_agreement,
    spread_by_complexity,
)
from moonlit.common.report import write_section
from moonlit.common.train.classifier import evaluate_top1, train_classifier
from moonlit.common.train.dist import DistContext
from moonlit.common.train.optim import build_optimizer_from_config
from moonlit.common.train.seed import seed_everything
from moonlit.common.train.supernet import evaluate_recalibrated

from .fmnist_deploy import CONSTRAINTS, deploy_subnet, search_subnet
from .fmnist_report import build_section, plot_search, render_report
from .lut_builder import image_batches
from .quickstart import search_reduced_space
from .space import (
    SpaceEncoding,
    SubnetEncoding,
    load_hyperspace,
    max_subnet,
    min_subnet,
    sample_subnet,
)
from .subnet_search import SubnetComplexity, load_supernet
from .supernet import Supernet
from .teacher import build_teacher, calibrate_teacher_bn
from .train_supernet import train_supernet

__all__ = ["NUM_CLASSES", "check_config", "main", "ranking_candidates", "run", "supernet_overrides",
           "target_checks"]

log = logging.getLogger(__name__)
NUM_CLASSES = 10
TAU_TARGET = 0.6          # issue targets: Kendall tau of the ranking,
INT8_GAP_TARGET = 0.5     # and INT8 ONNX within this many points of the fake-quant model


# --- checks and pure helpers -----------------------------------------------------------------------

def _positive(cfg: DictConfig, keys: Sequence[str], minimum: int = 1) -> None:
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise InputError(f"{key} = {value!r}; expected an integer >= {minimum}")


def check_config(cfg: DictConfig) -> SpaceEncoding | None:
    """Check every input of :func:`run` without writing anything; returns ``supernet.space`` decoded (or None)."""
    spec = load_hyperspace(str(cfg.hyperspace))
    if cfg.resolution not in spec.lut_resolutions:
        raise InputError(f"resolution = {cfg.resolution!r}; expected one of the LUT resolutions "
                         f"{list(spec.lut_resolutions)} of hyperspace {spec.name}")
    if len(cfg.search.other_latency_ms) != len(spec.lut_resolutions):
        raise InputError(f"search.other_latency_ms = {list(cfg.search.other_latency_ms)}; expected one value per "
                         f"LUT resolution {list(spec.lut_resolutions)} (first_conv + stage0 + head)")
    _positive(cfg, ["kd.fp32_steps", "kd.batch_size", "lut.num_samples", "lut.batch_size", "lut.calib_batches",
                    "lut.eval_batches", "search.budget", "search.rerank_top", "supernet.fp32_epochs",
                    "supernet.qat_epochs", "supernet.batch_size", "ranking.candidates", "ranking.jobs", "ranking.seeds",
                    "subnet_search.population", "subnet_search.batch_size", "deploy.calibration_batches",
                    "data.holdout_per_class"])
    _positive(cfg, ["kd.lsq_steps", "teacher.bn_batches", "ranking.bn_batches", "subnet_search.bn_batches",
                    "supernet.bn_batches"], minimum=0)
    _positive(cfg, ["ranking.count"], minimum=2)
    if cfg.data.val_subset is not None:
        _positive(cfg, ["data.val_subset"])
    if cfg.ranking.candidates < cfg.ranking.count:
        raise InputError(f"ranking.candidates = {cfg.ranking.candidates} < ranking.count = {cfg.ranking.count}; "
                         "expected at least as many candidates as ranked subnets")
    band = list(cfg.subnet_search.band)
    if len(band) != 2 or not 0.0 <= float(band[0]) < float(band[1]) <= 1.0:
        raise InputError(f"subnet_search.band = {band}; expected [low, high] with 0 <= low < high <= 1")
    if cfg.subnet_search.constraint not in CONSTRAINTS:
        raise InputError(f"subnet_search.constraint = {cfg.subnet_search.constraint!r}; expected one of "
                         f"{list(CONSTRAINTS)}")
    if cfg.subnet_search.constraint == "latency" and cfg.latency.source != "constant":
        raise InputError(f"subnet_search.constraint = latency prices subnets with the constant table, but "
                         f"latency.source = {cfg.latency.source!r}; expected subnet_search.constraint=macs with "
                         "search_overrides=[constraint.kind=latency,...] for a LitePred predictor")
    check_image_data(cfg.data, NUM_CLASSES, "the Fashion-MNIST head (10 classes)")
    if cfg.teacher.pretrained and not Path(str(cfg.teacher.pretrained)).is_file():
        raise InputError(f"teacher.pretrained = {cfg.teacher.pretrained} is not a file; expected the "
                         "EfficientNet-Lite0 weights (bash scripts/get_data.sh)")
    if cfg.supernet.space is None:
        return None
    space = SpaceEncoding.decode(str(cfg.supernet.space))
    if space.spec.name != spec.name:
        raise InputError(f"supernet.space = {cfg.supernet.space} is a space of {space.spec.name}; expected one of "
                         f"hyperspace = {spec.name}")
    return space


def supernet_overrides(cfg: DictConfig, space: SpaceEncoding, out_dir: Path) -> list[str]:
    """train_supernet overrides for the supernet stage: the app's data, sizes and schedule over ``experiment``."""
    sc, data = cfg.supernet, cfg.data
    return [f"experiment={sc.experiment}", f"space={space}", f"output_dir={out_dir}", "resume=true",
            f"paths.data_dir={cfg.paths.data_dir}", f"data.root={data.root}", f"data.img_size={cfg.resolution}",
            f"data.normalization={data.normalization}", f"data.train_subset={_null(data.train_subset)}",
            f"data.val_subset={_null(data.val_subset)}", f"data.holdout_per_class={data.holdout_per_class}",
            f"data.seed={cfg.seed}",
            f"data.eval_batch_size={data.eval_batch_size}", f"trainer.num_workers={data.num_workers}",
            f"supernet.num_classes={NUM_CLASSES}", f"supernet.resolutions=[{cfg.resolution}]",
            f"trainer.seed={cfg.seed}", f"optim.lr={sc.lr}", f"fp32.epochs={sc.fp32_epochs}",
            f"fp32.batch_size={sc.batch_size}", f"qat.epochs={sc.qat_epochs}", f"qat.batch_size={sc.batch_size}",
            f"eval.bn_calibration_batches={sc.bn_batches}", *sc.train_overrides]


def _null(value: Any) -> str:
    return "null" if value is None else str(value)


def ranking_candidates(space: SpaceEncoding, resolution: int, count: int, seed: int) -> list[SubnetEncoding]:
    """The smallest, the largest and seeded random subnets of ``space`` at ``resolution``: ``count`` distinct ones
    (fewer when the space has fewer)."""
    subnets = {str(s): s for s in (min_subnet(space, resolution), max_subnet(space, resolution))}
    rng = np.random.default_rng(seed)
    for _ in range(20 * count):
        if len(subnets) >= count:
            break
        subnet = sample_subnet(space, rng, [resolution])
        subnets.setdefault(str(subnet), subnet)
    return list(subnets.values())


def target_checks(ranking: dict[str, Any], deploy: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets: tau >= 0.6; INT8 ONNX test top-1 within 0.5 point of the fake-quant model's."""
    tau = float(ranking["fidelity"]["kendall_tau"])
    gap = abs(deploy["test_top1"]["int8_onnx"] - deploy["test_top1"]["fake_quant"])
    return {"kendall_tau": {"value": tau, "target": f">= {TAU_TARGET}", "met": bool(tau >= TAU_TARGET)},
            "int8_vs_fake_quant_points": {"value": gap, "target": f"<= {INT8_GAP_TARGET}",
                                          "met": bool(gap <= INT8_GAP_TARGET)}}


def _stage(path: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The saved result at ``path`` (a finished stage), else ``compute()`` saved there atomically."""
    if path.is_file():
        log.info("stage done earlier: %s", path)
        return json.loads(path.read_text())
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    os.replace(tmp, path)
    return result


def _cpu() -> DistContext:
    return DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend=None,
                       is_distributed=False)


# --- stage 1: block KD -> LUTs -> space search ------------------------------------------------------

def search_spaces(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Block KD of every student from the ImageNet teacher, the LUTs and the space search; the ranked spaces."""
    seed_everything(cfg.seed)
    spec = load_hyperspace(cfg.hyperspace)
    resolutions = [int(r) for r in spec.lut_resolutions]  # the Q-T score needs a LUT at each
    datasets = image_data_from_config(cfg.data, img_size=max(resolutions)).datasets()
    teacher = build_teacher(cfg.teacher.model, spec, pretrained=cfg.teacher.pretrained)
    if cfg.teacher.bn_batches:
        calibrate_teacher_bn(teacher, image_batches(datasets["train"], cfg.kd.batch_size, cfg.teacher.bn_batches,
                                                     cfg.seed))
    searched = search_reduced_space(cfg, spec, teacher, datasets, out)
    return {**searched, "teacher": {"model": cfg.teacher.model, "pretrained": str(cfg.teacher.pretrained),
                                    "bn": "re-estimated" if cfg.teacher.bn_batches else "ImageNet"}}


# --- stage 2: supernet ------------------------------------------------------------------------------

def train_space_supernet(train_cfg: DictConfig) -> dict[str, Any]:
    """Sandwich FP32 then LSQ+ QAT (resuming from the checkpoints); per phase steps and max/min subnet top-1."""
    t0 = time.perf_counter()
    summary = train_supernet(train_cfg)
    phases = {}
    for phase, result in summary["phases"].items():
        losses = [step["losses"] for step in result["history"]]
        phases[phase] = {"steps": result["steps"], "steps_per_epoch": result["steps_per_epoch"],
                         "eval": result["eval"], "first_losses": losses[0] if losses else None,
                         "last_losses": losses[-1] if losses else None}
    out = Path(train_cfg.output_dir)
    return {"space": str(train_cfg.space), "phases": phases, "seconds": time.perf_counter() - t0,
            "checkpoints": {phase: str(out / "checkpoints" / phase) for phase in ("fp32", "qat")}}


# --- stage 3: ranking fidelity ----------------------------------------------------------------------

def _loaders(train_cfg: DictConfig) -> dict[str, Any]:
    """Train (shuffled, seeded), BN-calibration and test loaders of the supernet's data."""
    datasets = image_data_from_config(train_cfg.data).datasets()
    batch, seed = int(train_cfg.fp32.batch_size), int(train_cfg.trainer.seed)
    workers = int(train_cfg.trainer.num_workers)
    return {"train": build_loader(datasets["train"], batch, shuffle=True, seed=seed, drop_last=True,
                                  num_workers=workers),
            "calib": build_loader(datasets["train"], batch, shuffle=True, seed=seed + 1, num_workers=workers),
            "val": build_loader(datasets["val"], int(train_cfg.data.eval_batch_size), shuffle=False,
                                num_workers=workers)}


def inherited_top1(supernet: Supernet, subnet: SubnetEncoding, loaders: dict[str, Any], calib_batches: int,
                   seed: int) -> float:
    """Test top-1 % of ``subnet`` with the supernet's weights, BN re-estimated on ``calib_batches`` train batches
    (the global RNG seeded first: the batches pass through the random training transform)."""
    supernet.set_active(subnet)
    static = supernet.get_active_subnet()
    seed_everything(seed)
    return 100.0 * evaluate_recalibrated(static, loaders["val"], loaders["calib"], calib_batches,
                                         torch.device("cpu"), _cpu())["top1"]


def standalone_top1(subnet: SubnetEncoding, train_cfg: DictConfig, loaders: dict[str, Any], out_dir: Path,
                    seed: int) -> float:
    """Test top-1 % of ``subnet`` trained alone from scratch (the supernet's initialisation for ``seed``,
    sliced) with the FP32 phase's optimizer, lr, warm-up, epochs, batch and label smoothing."""
    seed_everything(seed)
    supernet = Supernet(train_cfg.space, num_classes=NUM_CLASSES, dropout=float(train_cfg.sandwich.dropout),
                        resolutions=list(train_cfg.supernet.resolutions))
    supernet.set_active(subnet)
    model = supernet.get_active_subnet()
    phase = train_cfg.fp32
    lr = float(train_cfg.optim.lr) * max(1, int(phase.batch_size) // 256) * float(phase.lr_scale)

    def make_optimizer(_: Any) -> torch.optim.Optimizer:
        return build_optimizer_from_config(model, train_cfg.optim, lr)

    run = train_classifier(model, loaders["train"], loaders["val"], ctx=_cpu(), make_optimizer=make_optimizer,
                           epochs=int(phase.epochs), checkpoint_dir=out_dir / "checkpoints",
                           label_smoothing=float(train_cfg.sandwich.label_smoothing),
                           warmup_steps=int(phase.warmup_epochs) * len(loaders["train"]),
                           config={"subnet": str(subnet)}, log_every=10**9)
    if run.history:
        return 100.0 * float(run.history[-1]["val/top1"])
    return 100.0 * evaluate_top1(model.eval(), loaders["val"], torch.device("cpu"), _cpu())["top1"]


def _standalone_job(subnet: SubnetEncoding, train_cfg: DictConfig, out_dir: Path, seed: int) -> float:
    """:func:`standalone_top1` in a worker process of its own, on one thread (its own loaders)."""
    torch.set_num_threads(1)
    return standalone_top1(subnet, train_cfg, _loaders(train_cfg), out_dir, seed)


def _reseeded(train_cfg: DictConfig, seed: int) -> DictConfig:
    """``train_cfg`` with ``trainer.seed`` = ``seed``: another stand-alone replicate (initialisation, batch order,
    augmentation and dropout all drawn anew)."""
    cfg = train_cfg.copy()
    cfg.trainer.seed = seed
    return cfg


def _replicate_job(subnet: SubnetEncoding, train_cfg: DictConfig, out_dir: Path, seed: int) -> float:
    """One extra-seed stand-alone training (saved as ``out_dir/result.json``, skipped when found) on one thread
    (the caller's thread count is restored: with ``ranking.jobs=1`` it runs in the app's own process): its top-1 %."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def train() -> dict[str, Any]:
        cfg = _reseeded(train_cfg, seed)
        return {"name": str(subnet), "seed": seed, "standalone": standalone_top1(subnet, cfg, _loaders(cfg),
                                                                                 out_dir, seed)}

    try:
        return float(_stage(out_dir / "result.json", train)["standalone"])
    finally:
        torch.set_num_threads(threads)


def rank_subnets(cfg: DictConfig, train_cfg: DictConfig, fp32_checkpoint: str, out: Path) -> dict[str, Any]:
    """Inherited vs stand-alone top-1 of ``ranking.count`` subnets spread over the MACs range; tau and the plot.

    With ``ranking.jobs`` > 1 the stand-alone trainings not finished earlier run that many at a time in
    spawned processes, one thread each; each seeds itself, so the rows equal a serial run's.
    """
    space = SpaceEncoding.decode(str(train_cfg.space))
    complexity = SubnetComplexity(space, NUM_CLASSES, [cfg.resolution])
    candidates = ranking_candidates(space, int(cfg.resolution), int(cfg.ranking.candidates), int(cfg.seed))
    macs = [complexity(s)[0] for s in candidates]
    picked = spread_by_complexity(macs, int(cfg.ranking.count))
    seed = int(cfg.seed)
    pending = [index for index in range(len(picked)) if not (out / f"subnet{index}" / "result.json").is_file()]
    alone: dict[int, float] = {}
    if int(cfg.ranking.jobs) > 1 and len(pending) > 1:
        scores = map_in_processes(_standalone_job, [(candidates[picked[i]], train_cfg, out / f"subnet{i}", seed)
                                                    for i in pending],
                                  int(cfg.ranking.jobs), "ranking: subnets trained alone")
        alone = dict(zip(pending, scores))
    supernet = load_supernet(space, fp32_checkpoint, NUM_CLASSES, [cfg.resolution], quantized=False)
    loaders = _loaders(train_cfg)
    rows = []
    for index, candidate in enumerate(tqdm(picked, desc="ranking: inherited weights")):
        subnet = candidates[candidate]

        def score(subnet: SubnetEncoding = subnet, index: int = index) -> dict[str, Any]:
            inherited = inherited_top1(supernet, subnet, loaders, int(cfg.ranking.bn_batches), seed)
            trained = alone[index] if index in alone else standalone_top1(subnet, train_cfg, loaders,
                                                                          out / f"subnet{index}", seed)
            return {"name": str(subnet), "macs": float(macs[candidate]), "inherited": inherited, "standalone": trained}

        rows.append(RankedSubnet(**_stage(out / f"subnet{index}" / "result.json", score)))
    extra_seeds = [seed + k for k in range(1, int(cfg.ranking.seeds))]
    jobs = [(candidates[picked[i]], train_cfg, out / f"subnet{i}" / f"seed{s}", s)
            for s in extra_seeds for i in range(len(picked))]
    replicates = map_in_processes(_replicate_job, jobs, int(cfg.ranking.jobs), "ranking: extra seeds") if jobs else []
    by_seed = [[row.standalone for row in rows]] + [replicates[k * len(rows):(k + 1) * len(rows)]
                                                     for k in range(len(extra_seeds))]
    result: dict[str, Any] = {"candidates": len(candidates), "weights": "FP32-phase supernet",
                              "epochs": int(train_cfg.fp32.epochs), "test_images": len(loaders["val"].dataset),
                              "seeds": [seed, *extra_seeds]}
    if extra_seeds:
        # the stand-alone score becomes the mean over seeds; the first seed's tau is kept beside it
        result["first_seed_fidelity"] = ranking_fidelity(rows).to_dict()
        result["seed_agreement"] = seed_agreement(by_seed)
        rows = [RankedSubnet(row.name, row.macs, row.inherited, float(np.mean([run[i] for run in by_seed])))
                for i, row in enumerate(rows)]
    fidelity = ranking_fidelity(rows)
    plot_ranking(rows, fidelity, out / "ranking.png", title="SpaceEvo on Fashion-MNIST")
    subnets = [{**vars(row), "standalone_by_seed": [run[i] for run in by_seed]} for i, row in enumerate(rows)]
    return {"fidelity": fidelity.to_dict(), "subnets": subnets, **result}


# --- the app ----------------------------------------------------------------------------------------

def run(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) the four stages; write section.json, fmnist.md and the PNGs under ``output_dir``."""
    fixed_space = check_config(cfg)
    out = Path(cfg.output_dir)
    _supernet_config(cfg, fixed_space or SpaceEncoding.decode(f"{cfg.hyperspace}-000000-000000"), out)  # checked now
    started = time.perf_counter()
    searched = _stage(out / "space_search" / "result.json", lambda: search_spaces(cfg, out / "space_search"))
    space = fixed_space or SpaceEncoding.decode(searched["ranked"][0]["space"])
    train_cfg = _supernet_config(cfg, space, out)
    supernet = _stage(out / "supernet" / "result.json", lambda: train_space_supernet(train_cfg))
    ranking = _stage(out / "ranking" / "result.json",
                     lambda: rank_subnets(cfg, train_cfg, supernet["checkpoints"]["fp32"], out / "ranking"))
    search = _stage(out / "subnet_search" / "result.json",
                    lambda: search_subnet(cfg, space, supernet["checkpoints"]["qat"], out / "subnet_search"))
    deployment = _stage(out / "deploy" / "result.json",
                        lambda: deploy_subnet(cfg, space, supernet["checkpoints"]["qat"], search,
                                              _loaders(train_cfg)["val"], out / "deploy"))
    results = {"space": str(space), "space_from": "supernet.space" if fixed_space else "space search",
               "space_search": searched, "supernet": supernet, "ranking": ranking, "subnet_search": search,
               "deploy": deployment, "targets": target_checks(ranking, deployment),
               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "seconds_this_invocation": round(time.perf_counter() - started, 1),
               "train_images": _train_images(train_cfg), "config": to_container(cfg)}
    plot_search(searched, out / "score_over_search.png")
    section = build_section(results)
    write_section(out, section)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "fmnist.md").write_text(render_report(section, results) + "\n")
    return results


def _supernet_config(cfg: DictConfig, space: SpaceEncoding, out: Path) -> DictConfig:
    """train_supernet's config for the supernet stage; an override it rejects is an InputError."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return compose_config("spaceevo", "train_supernet", supernet_overrides(cfg, space, out / "supernet"))
    except (HydraException, OmegaConfBaseException) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"supernet.train_overrides = {list(cfg.supernet.train_overrides)}: train_supernet's config "
                         f"rejects them ({first}); expected overrides of configs/spaceevo/train_supernet.yaml") from exc


def _train_images(train_cfg: DictConfig) -> int:
    return len(image_data_from_config(train_cfg.data).datasets()["train"])


@hydra_app("spaceevo", "fmnist")
def main(cfg: DictConfig) -> None:
    results = run(cfg)
    targets = results["targets"]
    print(f"space {results['space']}: Kendall tau {targets['kendall_tau']['value']:.3f}, INT8 vs fake-quant "
          f"{targets['int8_vs_fake_quant_points']['value']:.2f} points; report {Path(cfg.output_dir) / 'fmnist.md'}")


if __name__ == "__main__":
    main()
