"""Quickstart section "SpaceEvo": block-wise KD -> block LUTs -> search-space search on generated images.

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
5. the Q-T score + aging evolution + common-random-numbers re-rank of :mod:`moonlit.spaceevo.space_search`,
   with constraints at quantiles of the latency of random spaces; the ranked table and the score plot.

    python -m moonlit.spaceevo.quickstart
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from moonlit.common.config import hydra_app, to_container
from moonlit.common.data.imagenet import build_imagenet_datasets
from moonlit.common.data.synthetic import write_image_folder
from moonlit.common.report import write_section
from moonlit.common.train.dist import init_distributed
from moonlit.common.train.seed import seed_everything
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from .block_kd import KDSettings, StudentStage, train_student
from .lut import LUTSet
from .lut_builder import build_luts, latency_source
from .space import SpaceEncoding, load_hyperspace
from .space_search import QTScorer, aging_evolution, evaluate_spaces
from .teacher import build_teacher, calibrate_teacher_bn

__all__ = ["SECTION", "build_section", "main", "run_quickstart"]

logger = logging.getLogger("moonlit.spaceevo.quickstart")
PAPER_SCALE_NOTE = ("Paper-scale commands: python -m moonlit.spaceevo.block_kd, python -m moonlit.spaceevo.lut_builder, "
                    "python -m moonlit.spaceevo.space_search (headers of configs/spaceevo/*.yaml).")
SECTION = {"name": "spaceevo", "order": 40, "command": "python -m moonlit.spaceevo.quickstart"}


def _image_batches(dataset: Any, batch_size: int, count: int, seed: int) -> list[torch.Tensor]:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    return [images for _, (images, _) in zip(range(count), loader)]


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
    calibrate_teacher_bn(teacher, _image_batches(datasets["train"], cfg.kd.batch_size, cfg.teacher.bn_batches, cfg.seed))
    ctx = init_distributed("cpu")

    timings: dict[str, float] = {}
    kd_rows = []
    t0 = time.perf_counter()
    for stage in range(1, len(spec.searchable_stages) + 1):
        boundary = teacher.boundary(f"stage{stage}")
        for block in range(len(spec.block_types)):
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
    calib = _image_batches(datasets["train"], cfg.lut.batch_size, cfg.lut.calib_batches, cfg.seed)
    held_out = _image_batches(datasets["holdout"], cfg.lut.batch_size, cfg.lut.eval_batches, cfg.seed)
    latency = latency_source(OmegaConf.to_container(cfg.latency, resolve=True))
    lut_dir = out / "block_lut"
    build_luts(out / "students", teacher, spec.name, lut_dir, calib, held_out, latency, cfg.lut.num_samples,
               resolutions=resolutions, seed=cfg.seed, variance_of=cfg.variance_of, progress=False)
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
                              budget=cfg.search.budget, progress=False)
    top = [e.space for e in sorted(history, key=lambda e: -e.result.score)[: cfg.search.rerank_top]]
    ranked = evaluate_spaces(scorer, top, cfg.search.rerank_repeats, rng)
    timings["search_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start
    results = {"hyperspace": spec.name, "constraints_ms": constraints, "kd": kd_rows, "ranked": ranked,
               "history": [[e.space.encode(), e.result.score] for e in history], "timing": timings,
               "latency": latency.describe() if hasattr(latency, "describe") else repr(latency),
               "luts": len(luts), "config": to_container(cfg)}
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
               f"imitates *this* teacher, not ImageNet accuracy. Total {timing['total_s']:.0f} s.")
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
    return {**SECTION, "title": "SpaceEvo: block KD, block LUTs and the search-space search (toy scale)",
            "summary": summary, "tables": [ranked_table, kd_table],
            "figures": [{"path": "score_over_search.png", "caption": "Q-T score of each evaluated space"}],
            "notes": [PAPER_SCALE_NOTE]}


@hydra_app("spaceevo", "quickstart")
def main(cfg: DictConfig) -> None:
    results = run_quickstart(cfg)
    best = results["ranked"][0]
    print(f"best space {best['space']} (Q-T {best['mean']:.4f}); section written to {cfg.output_dir}")


if __name__ == "__main__":
    main()
