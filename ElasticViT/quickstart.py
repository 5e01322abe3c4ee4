"""Quickstart section "ElasticViT": conflict-aware supernet training per sampler policy (ICCV'23, Sec. 3.2–3.3, Tab. 5).

The reduced space of ``experiment=smoke`` (32–48 px, widths 8–80, depths 1–2; 0.4–3.1 MMACs for
4 FLOPs levels 0.6/1.0/1.4/1.8 MMACs, band 0.2) is trained on generated images once per sampler
policy in ``samplers`` — ``adjacent_step`` (the paper's level walk + performance-aware banks) and
``uniform`` (no levels: the sandwich rule) by default, to stay within the section's 3 minutes;
``complexity_only`` (walk, no banks) and ``random`` (a level per slot, banks) on request —
for the same number of steps from the same initialisation and data order. The section reports
each level's median-MACs subnet's top-1 (BN re-estimated), the level walk, the mean MMACs change
between consecutive steps, bank draws and bank fill, with a plot.

Then (``search.enabled``) a latency-constrained search over the full space finds a subnet that should
run ``search.speedup`` times faster than EfficientNet-B0 here, and measures it
(:mod:`moonlit.elasticvit.quickstart_search`).

    python -m moonlit.elasticvit.quickstart
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from moonlit.common.config import compose_config, hydra_app
from moonlit.common.report import write_section

from .quickstart_search import run_search_step, search_table
from .train import train

SECTION = {"name": "elasticvit", "order": 25, "command": "python -m moonlit.elasticvit.quickstart",
           "title": "ElasticViT: conflict-aware supernet training with each sampler (reduced space, generated images)"}


def _train_config(overrides: list[str]) -> DictConfig:
    """``configs/elasticvit/train.yaml`` with ``overrides`` (inside the running quickstart app too)."""
    return compose_config("elasticvit", "train", overrides)


def _train_overrides(cfg: DictConfig, sampler: str, out: Path, steps_per_epoch: int) -> list[str]:
    epochs = math.ceil(cfg.steps / steps_per_epoch)
    return ["experiment=smoke", f"sampling={sampler}", f"paths.output_root={out}",
            f"output_dir={out / 'runs' / sampler}",
            f"tables.path={out / 'flops_tables.npz'}", f"data.root={out / 'images'}",
            f"data.generate.num_classes={cfg.data.num_classes}", f"supernet.num_classes={cfg.data.num_classes}",
            f"data.generate.train_per_class={cfg.data.train_per_class}",
            f"data.generate.val_per_class={cfg.data.val_per_class}", f"trainer.seed={cfg.seed}", "resume=false",
            f"epochs={epochs}", "cooldown_epochs=0", f"eval.every_epochs={epochs}", *cfg.train_overrides]


def run_quickstart(cfg: DictConfig) -> dict[str, Any]:
    """Train once per sampler, write ``results.json``, the plot and the report section; returns the results."""
    out = Path(cfg.output_dir)
    batch = _train_config(["experiment=smoke", *cfg.train_overrides]).data.batch_size
    steps_per_epoch = cfg.data.num_classes * cfg.data.train_per_class // batch
    results = {}
    for sampler in cfg.samplers:
        summary = train(_train_config(_train_overrides(cfg, sampler, out, steps_per_epoch)))
        results[sampler] = {"eval": summary["eval"], "statistics": summary["sampler_statistics"],
                            "steps": summary["steps"], "representatives": summary["representatives"],
                            "mmacs": [step["mean_mmacs"] for step in summary["history"]]}
    search = run_search_step(cfg, out) if cfg.search.enabled else None
    everything = {**results, **({"search": search} if search else {})}
    (out / "results.json").write_text(json.dumps(everything, indent=1) + "\n")
    figure = _plot(results, out / "elasticvit_samplers.png")
    section = _section(cfg, results, figure.name)
    if search is not None:
        section["tables"].append(search_table(search, cfg.output_dir))
        section["summary"] += (
            f" Search: of the top {len(search['candidates'])} subnets by fitness under the predicted-latency limit, "
            f"timed beside {search['baseline']}, "
            + (f"#{search['rank_of_result'] + 1} is the first to meet the {search['target_speedup']:g}x target"
               if search["met_target"]
               else f"none meets the {search['target_speedup']:g}x target; the fastest is shown")
            + f": {search['measured_ms']:.2f} ms measured vs {search['predicted_ms']:.2f} ms predicted "
            f"({100 * search['prediction_error']:+.1f}%), {search['speedup']:.2f}x faster than {search['baseline']}.")
    write_section(out, section)
    return everything


def _section(cfg: DictConfig, results: dict[str, Any], figure: str) -> dict[str, Any]:
    levels = list(next(iter(results.values()))["representatives"])
    rows, bank_rows = [], []
    for sampler, result in results.items():
        stats, top1 = result["statistics"], [100 * result["eval"][f"top1/{level}"] for level in levels]
        rows.append([sampler, *top1, float(np.mean(top1)), stats.get("max_level_change"), stats["mean_mmacs_gap"],
                     stats["bank_draw_fraction"]])
        if "bank_fill" in stats:
            bank_rows.append([sampler, *(stats["bank_fill"][level] for level in levels)])
    steps = next(iter(results.values()))["steps"]
    tables = [{"caption": f"Top-1 (%) of each level's median-MACs subnet after {steps} steps, and sampler statistics",
               "source": f"{cfg.output_dir}/results.json",
               "columns": ["sampler", *(f"top-1 @ {level} MMACs" for level in levels), "mean top-1",
                           "max level change", "mean MMACs gap", "bank draws"],
               "rows": rows, "floatfmt": ".3g"}]
    if bank_rows:
        tables.append({"caption": "Bank fill (entries / capacity) at the end",
                       "source": f"{cfg.output_dir}/results.json",
                       "columns": ["sampler", *(f"{level} MMACs" for level in levels)], "rows": bank_rows,
                       "floatfmt": ".2f"})
    summary = (f"The reduced ElasticViT space (experiment=smoke: {len(levels)} FLOPs levels of 0.2 MMACs from "
               f"{levels[0]} to {levels[-1]} MMACs) trained for {steps} steps per sampler on {cfg.data.num_classes} "
               f"classes of generated images ({cfg.data.train_per_class} per class), same seed and data order; "
               "3 uniform subnets + the level's min subnet per step, label targets (no trained teacher here). "
               "The level walk changes level by at most one per step, so consecutive steps train subnets of similar "
               "size (a small MMACs gap), where the random-level and uniform samplers jump; a toy run this short "
               "shows the mechanics, not the paper's accuracy ranking.")
    return {**SECTION, "summary": summary, "tables": tables,
            "figures": [{"path": figure, "caption": "Left: mean MMACs of each step's uniform subnets (first 60 steps). "
                                                     "Right: top-1 per FLOPs level."}]}


def _plot(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (walk_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for sampler, result in results.items():
        walk_ax.plot(result["mmacs"][:60], marker=".", linewidth=1, label=sampler)
        levels = list(result["representatives"])
        acc_ax.plot([float(level) for level in levels], [100 * result["eval"][f"top1/{level}"] for level in levels],
                    marker="o", label=sampler)
    walk_ax.set(xlabel="step", ylabel="mean MMACs of the uniform subnets", title="level walk")
    acc_ax.set(xlabel="FLOPs level (MMACs)", ylabel="top-1 (%)", title="per-level accuracy")
    acc_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(cfg: DictConfig) -> dict[str, Any]:
    """The work behind ``python -m moonlit.elasticvit.quickstart``: :func:`run_quickstart`'s result."""
    return run_quickstart(cfg)


@hydra_app("elasticvit", "quickstart")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
