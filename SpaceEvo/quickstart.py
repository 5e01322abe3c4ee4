"""Quickstart section "SpaceEvo": block KD -> block LUTs -> space search -> supernet -> subnet search -> INT8.

The SpaceEvo pipeline (ICCV'23, arXiv 2303.08308, Sec. 3.3) at toy scale on 2 CPU cores:

1. generated ImageFolder images (:func:`moonlit.common.data.synthetic.write_image_folder`);
2. the teacher: timm ``efficientnet_b0`` with *random* weights whose BatchNorm statistics are
   re-estimated on the generated images (a trained teacher would take longer than the whole section;
   the pipeline does not care what the teacher knows, only that its stages are well scaled);
3. block KD of every (stage, block type) student of the reduced hyperspace ``onnxw_tiny`` (same
   stages, strides and block types as ``onnxw``, small widths, resolutions 64/96) for a few FP32 and
   LSQ+ steps (:func:`moonlit.spaceevo.block_kd.train_student`);
4. a small LUT per (stage, block, window) (:func:`moonlit.spaceevo.lut_builder.build_luts`), latency from
   a constant ms-per-MFLOP table (or a LitePred predictor with ``latency.source=litepred``);
5. the Q-T score of :mod:`moonlit.spaceevo.qt_score` + aging evolution + common-random-numbers re-rank of
   :mod:`moonlit.spaceevo.space_search`, with constraints at quantiles of the latency of random spaces;
   the ranked table and the score plot;
6. on the top-ranked space (or ``supernet.space``): a few sandwich + LSQ+ QAT steps of its supernet, an
   evolutionary subnet search with INT8 fake-quant fitness under an MMACs band, and the best subnet
   exported to INT8 ONNX with its learned LSQ+ grids and to FP32 ONNX, with the INT8-vs-fake-quant top-1
   agreement and the measured FP32 vs INT8 latency (:mod:`moonlit.spaceevo.quickstart_deploy`).

    python -m moonlit.spaceevo.quickstart
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from moonlit.common.config import hydra_app, to_container
from moonlit.common.data.imagenet import build_imagenet_datasets
from moonlit.common.data.synthetic import write_image_folder
from moonlit.common.report import write_section
from moonlit.common.train.dist import init_distributed
from moonlit.common.train.seed import seed_everything

from .block_kd import KDSettings, StudentStage, train_student
from .lut import LUTSet
from .lut_builder import build_luts, image_batches, latency_source
from .qt_score import QTScorer
from .quickstart_deploy import run_deploy_steps
from .space import Hyperspace, SpaceEncoding, load_hyperspace
from .space_search import aging_evolution, evaluate_spaces
from .teacher import Teacher, build_teacher, calibrate_teacher_bn

__all__ = ["SECTION", "build_section", "latency_constraints", "main", "run", "run_quickstart",
           "search_reduced_space"]

logger = logging.getLogger("moonlit.spaceevo.quickstart")
PAPER_SCALE_NOTE = ("Paper-scale commands: python -m moonlit.spaceevo.block_kd, "
                    "python -m moonlit.spaceevo.lut_builder, "
                    "python -m moonlit.spaceevo.space_search, python -m moonlit.spaceevo.train_supernet, "
                    "python -m moonlit.spaceevo.subnet_search, python -m moonlit.spaceevo.benchmark "
                    "(headers of configs/spaceevo/*.yaml).")
SECTION = {"name": "spaceevo", "order": 40, "command": "python -m moonlit.spaceevo.quickstart"}


def latency_constraints(scorer: QTScorer, quantiles: list[float], rng: np.random.Generator,
                        spaces: int = 50) -> list[float]:
    """Constraints at ``quantiles`` of the sampled latency of ``spaces`` random spaces (one shared draw)."""
    spec = scorer.spec
    draw, latencies = scorer.draw(rng), []
    for _ in range(spaces):
        space = SpaceEncoding(spec.name, tuple(int(b) for b in rng.integers(len(spec.block_types), size=6)),
                              tuple(int(rng.integers(n)) for n in spec.num_windows))
        latencies.append(scorer.sample_space(space, draw, {})[1])
    return [float(np.quantile(np.concatenate(latencies), q)) for q in quantiles]


def search_reduced_space(cfg: DictConfig, spec: Hyperspace, teacher: Teacher, datasets: Mapping[str, Any], out: Path,
                         progress: bool = True) -> dict[str, Any]:
    """Steps 3-5 on a reduced hyperspace: block KD of every (stage, block type) student from ``teacher`` on
    ``datasets["train"]``, a LUT per (stage, block, window) with NSR on ``datasets["holdout"]``, and the
    Q-T-score aging evolution + common-random-numbers re-rank, with constraints at quantiles of random
    spaces' latency. ``cfg`` holds ``kd``, ``lut``, ``latency``, ``search``, ``variance_of`` and ``seed``;
    students and LUTs go under ``out``. Returns the ranked spaces, the search history, the KD rows, the
    constraints, the latency source and the per-step seconds (``timing``)."""
    resolutions = [int(r) for r in spec.lut_resolutions]
    ctx = init_distributed("cpu")
    timings: dict[str, float] = {}
    kd_rows = []
    t0 = time.perf_counter()
    students = [(stage, block) for stage in range(1, len(spec.searchable_stages) + 1)
                for block in range(len(spec.block_types))]
    for stage, block in tqdm(students, desc="block KD students", disable=not progress):
        boundary = teacher.boundary(f"stage{stage}")
        student = StudentStage(spec, stage, block, boundary.in_channels, boundary.out_channels)
        settings = KDSettings(fp32_steps=cfg.kd.fp32_steps, lsq_steps=cfg.kd.lsq_steps, fp32_lr=cfg.kd.fp32_lr,
                              lsq_lr=cfg.kd.lsq_lr, batch_size=cfg.kd.batch_size, resolutions=tuple(resolutions),
                              variance_of=cfg.variance_of, distill_from_teacher=cfg.kd.distill_from_teacher,
                              seed=cfg.seed, checkpoint_every=10**9)
        run = train_student(student, teacher, datasets["train"], settings, out / "students" / student.name, ctx)
        if run["losses"]:
            kd_rows.append([student.name, spec.block_types[block].type, run["losses"][0][0], run["losses"][-1][0]])
    timings["block_kd_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    calib = image_batches(datasets["train"], cfg.lut.batch_size, cfg.lut.calib_batches, cfg.seed)
    held_out = image_batches(datasets["holdout"], cfg.lut.batch_size, cfg.lut.eval_batches, cfg.seed)
    latency = latency_source(OmegaConf.to_container(cfg.latency, resolve=True))
    lut_dir = out / "block_lut"
    build_luts(out / "students", teacher, spec.name, lut_dir, calib, held_out, latency, cfg.lut.num_samples,
               resolutions=resolutions, seed=cfg.seed, variance_of=cfg.variance_of, progress=progress)
    timings["lut_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    luts = LUTSet.read(lut_dir, spec.name)
    rng = np.random.default_rng(cfg.seed)
    probe = QTScorer(luts, list(cfg.search.other_latency_ms), [1.0], num_samples=cfg.search.num_samples,
                     batch_size=cfg.search.batch_size)
    constraints = latency_constraints(probe, list(cfg.search.constraint_quantiles), rng)
    scorer = QTScorer(luts, list(cfg.search.other_latency_ms), constraints, t=cfg.search.t, a=cfg.search.a,
                      top=cfg.search.top_losses, num_samples=cfg.search.num_samples, batch_size=cfg.search.batch_size)
    history = aging_evolution(scorer, rng, population_size=cfg.search.population, tournament_size=cfg.search.tournament,
                              budget=cfg.search.budget, progress=progress)
    top = [e.space for e in sorted(history, key=lambda e: -e.result.score)[: cfg.search.rerank_top]]
    ranked = evaluate_spaces(scorer, top, cfg.search.rerank_repeats, rng)
    timings["search_s"] = time.perf_counter() - t0
    return {"hyperspace": spec.name, "constraints_ms": constraints, "kd": kd_rows, "ranked": ranked,
            "history": [[e.space.encode(), e.result.score] for e in history], "timing": timings,
            "latency": latency.describe() if hasattr(latency, "describe") else repr(latency), "luts": len(luts)}


def run_quickstart(cfg: DictConfig) -> dict[str, Any]:
    start = time.perf_counter()
    seed_everything(cfg.seed)
    out = Path(cfg.output_dir)
    spec = load_hyperspace(cfg.hyperspace)
    resolutions = list(spec.lut_resolutions)
    root = write_image_folder(out / "images", cfg.data.num_classes, {"train": cfg.data.train_per_class,
                              "val": cfg.data.val_per_class}, image_size=max(resolutions), seed=cfg.seed)
    datasets = build_imagenet_datasets(root, img_size=max(resolutions), holdout_per_class=cfg.data.holdout_per_class,
                                       holdout_seed=cfg.seed)
    teacher = build_teacher(cfg.teacher.model, spec, num_classes=cfg.data.num_classes)
    calibrate_teacher_bn(teacher, image_batches(datasets["train"], cfg.kd.batch_size, cfg.teacher.bn_batches,
                                                 cfg.seed))
    searched = search_reduced_space(cfg, spec, teacher, datasets, out, progress=False)
    timings, ranked = searched.pop("timing"), searched["ranked"]

    space = SpaceEncoding.decode(cfg.supernet.space or ranked[0]["space"])
    deployment = run_deploy_steps(cfg, space, root, out)
    timings.update(deployment.pop("timing"))
    timings["total_s"] = time.perf_counter() - start
    results = {**searched, "timing": timings, **deployment, "config": to_container(cfg)}
    _plot(results, out / "score_over_search.png")
    write_section(out, build_section(results, cfg))
    return results


def _plot(results: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scores = np.array([score for _, score in results["history"]])
    fig = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(np.arange(scores.size), scores, s=6, alpha=0.5, label="evaluated space")
    ax.plot(np.maximum.accumulate(scores), color="C1", label="best so far")
    ax.set_xlabel("evaluation")
    ax.set_ylabel("Q-T score")
    ax.set_title(f"space search on {results['hyperspace']} block LUTs")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def build_section(results: dict[str, Any], cfg: DictConfig) -> dict[str, Any]:
    timing = results["timing"]
    constraints = ", ".join(f"{c:.3f}" for c in results["constraints_ms"])
    kd = results["kd"]
    improved = sum(last < first for _, _, first, last in kd)
    summary = (f"Reduced hyperspace `{results['hyperspace']}` on generated images: block KD of {len(kd)} "
               f"(stage, block type) students ({cfg.kd.fp32_steps} FP32 + {cfg.kd.lsq_steps} LSQ+ steps each, "
               f"{timing['block_kd_s']:.0f} s; the max sub-stage's NSR fell in {improved} of {len(kd)}), "
               f"{results['luts']} LUTs of {cfg.lut.num_samples} sub-stages ({timing['lut_s']:.0f} s, latency: "
               f"{results['latency']['source'] if isinstance(results['latency'], dict) else results['latency']}), "
               f"then {len(results['history'])} spaces evaluated by aging evolution and the top "
               f"{cfg.search.rerank_top} re-ranked on {cfg.search.rerank_repeats} shared draws "
               f"({timing['search_s']:.1f} s; constraints {constraints} ms = quantiles "
               f"{list(cfg.search.constraint_quantiles)} of random spaces' latency). Teacher: random-weight "
               f"{cfg.teacher.model} with BN statistics from the images, so the scores rank how well each block type "
               f"imitates *this* teacher, not ImageNet accuracy. {_deploy_summary(results, cfg)} "
               f"Total {timing['total_s']:.0f} s.")
    ranked_table = {
        "caption": "Ranked search spaces (Q-T score, mean over shared draws)",
        "columns": ["rank", "space", "mean score", "std", "gap to best", "min ms", "max ms"],
        "rows": [[r["rank"], r["space"], r["mean"], r["std"], r["gap_to_best"], r["min_ms"], r["max_ms"]]
                 for r in results["ranked"]],
        "floatfmt": ".4f", "source": "moonlit.spaceevo.space_search on the LUTs this run built"}
    per_block: dict[str, list[float]] = {}
    for _, block_type, _, last in kd:
        per_block.setdefault(block_type, []).append(last)
    kd_table = {
        "caption": "Block KD: last training NSR of the max sub-stage, mean over stages 1-6",
        "columns": ["block type", "students", "mean NSR"],
        "rows": [[name, len(values), float(np.mean(values))] for name, values in sorted(per_block.items())],
        "floatfmt": ".3f", "source": "moonlit.spaceevo.block_kd.train_student"}
    return {**SECTION, "title": "SpaceEvo: block KD, block LUTs, space search, supernet, subnet search and INT8 "
                                 "deployment (toy scale)",
            "summary": summary, "tables": [ranked_table, kd_table, *_deploy_tables(results)],
            "figures": [{"path": "score_over_search.png", "caption": "Q-T score of each evaluated space"}],
            "notes": [PAPER_SCALE_NOTE]}


def _deploy_summary(results: dict[str, Any], cfg: DictConfig) -> str:
    """The sentences on supernet training, subnet search and INT8 deployment, from the run's numbers."""
    timing, search, deploy = results["timing"], results["subnet_search"], results["deploy"]
    phases = results["supernet"]["phases"]
    steps = " + ".join(f"{phases[p]['steps']} {'sandwich' if p == 'fp32' else 'LSQ+ QAT'}" for p in phases)
    low, high = search["constraint_mmacs"]
    agreement = deploy["agreement"]
    speedup, (ci_low, ci_high) = deploy["speedup"], deploy["speedup_ci95"]
    return (f"The supernet of `{results['space']}` then trained {steps} steps ({timing['supernet_s']:.0f} s); "
            f"the subnet search evaluated {search['evaluated']} subnets in {search['generations']} generations "
            f"(fitness: INT8 fake-quant top-1 on the {cfg.data.holdout_per_class * cfg.data.num_classes} held-out "
            f"images after BN recalibration; constraint {low:.1f}-{high:.1f} MMACs, a latency stand-in at "
            f"{list(cfg.subnet_search.macs_band)} of the way from the smallest to the largest subnet; "
            f"{timing['subnet_search_s']:.0f} s). The best subnet ({deploy['mmacs']:.1f} MMACs at "
            f"{deploy['subnet'].rsplit('_r', 1)[-1]} px), exported to INT8 ONNX with its learned LSQ+ grids "
            f"({timing['deploy_s']:.0f} s with the checks and timing), picks "
            f"the fake-quant model's class on {100 * agreement['agreement']:.1f}% of the {agreement['images']} "
            f"generated images; onnxruntime ({deploy['threads']} thread, {deploy['rounds']} interleaved rounds, "
            f"medians) runs it in {deploy['int8_ms']:.3f} ms INT8 vs {deploy['fp32_ms']:.3f} ms FP32, a speed-up of "
            f"{speedup:.2f}x (95% CI {ci_low:.2f}-{ci_high:.2f}; a model this small is dominated by per-op overhead, "
            f"see `python -m moonlit.spaceevo.benchmark` for SEQnets at 224 px).")


def _deploy_tables(results: dict[str, Any]) -> list[dict[str, Any]]:
    phases = results["supernet"]["phases"]
    training_table = {
        "caption": f"Supernet of `{results['space']}`: sandwich (FP32) then LSQ+ QAT steps on the generated images",
        "columns": ["phase", "steps", "first max-subnet loss", "last max-subnet loss", "max subnet top-1",
                    "min subnet top-1"],
        "rows": [[phase, r["steps"], r["first_losses"]["max"], r["last_losses"]["max"],
                  r["eval"].get(f"{phase}/max_top1"), r["eval"].get(f"{phase}/min_top1")]
                 for phase, r in phases.items()],
        "floatfmt": ".3f", "source": "moonlit.spaceevo.train_supernet.train_supernet (experiment=smoke + overrides)"}
    deploy, search = results["deploy"], results["subnet_search"]
    low, high = search["constraint_mmacs"]
    deploy_table = {
        "caption": "Best subnet of the subnet search, deployed: INT8 ONNX with learned LSQ+ grids vs FP32 ONNX",
        "columns": ["subnet", "MMACs", "constraint MMACs", "search fitness (fake-quant top-1 %)",
                    "held-out top-1 fake-quant / INT8 / FP32", "INT8 vs fake-quant agreement", "FP32 ms", "INT8 ms",
                    "INT8 speed-up (95% CI)"],
        "rows": [[deploy["subnet"], deploy["mmacs"], f"{low:.2f}-{high:.2f}", search["best"]["fitness"],
                  " / ".join(f"{deploy['holdout_top1'][k]:.3f}" for k in ("fake_quant", "int8_onnx", "fp32_onnx")),
                  f"{deploy['agreement']['agreement']:.3f} ({deploy['agreement']['images']} images)",
                  deploy["fp32_ms"], deploy["int8_ms"],
                  f"{deploy['speedup']:.2f}x ({deploy['speedup_ci95'][0]:.2f}-{deploy['speedup_ci95'][1]:.2f})"]],
        "floatfmt": ".3f",
        "source": "moonlit.spaceevo.subnet_search.run_search, moonlit.spaceevo.deploy.export_lsq_qdq, "
                  "moonlit.common.profiling.model_benchmark.benchmark_models (deploy/deploy.json)"}
    return [training_table, deploy_table]


def run(cfg: DictConfig) -> dict[str, Any]:
    """The work behind ``python -m moonlit.spaceevo.quickstart``: :func:`run_quickstart`'s result."""
    return run_quickstart(cfg)


@hydra_app("spaceevo", "quickstart")
def main(cfg: DictConfig) -> None:
    results = run(cfg)
    best = results["ranked"][0]
    deploy = results["deploy"]
    print(f"best space {best['space']} (Q-T {best['mean']:.4f}); best subnet {deploy['subnet']}: INT8 agreement "
          f"{deploy['agreement']['agreement']:.3f}, speed-up {deploy['speedup']:.2f}x; "
          f"section written to {cfg.output_dir}")


if __name__ == "__main__":
    main()
