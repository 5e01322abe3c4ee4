"""The transfer experiment: leave-one-platform-out adaptation vs budget (LitePred, NSDI'24, Sec. 7, Table a).

    python -m moonlit.litepred.transfer.experiment 'experiment.targets=[ort-int8]'
    bash scripts/reproduce_litepred_transfer.sh          # builds the pool first, then this, then the table

For each target platform, the knowledge pool is every *other* platform of ``experiment.platforms``
(their predictors from ``moonlit-litepred build``). The probe (``adapt.probe`` real kernels) is
profiled once and ranks the pool; for each budget N in ``experiment.budgets`` and each sampler,
N kernels are sampled and profiled on the target (into the adaptation dataset, apart from the
target's own full-build data), and for N > 0 ``adapt.calibration_models`` whole models are
measured to re-fit the overhead. Every method of ``experiment.methods`` is then fitted on the same
data and scored on the held-out models (measured twice on the target: the ceiling):

* ``fine-tune`` from the most similar platform, ``fine-tune-least`` from the least similar one
  (what the reference's sorting bug did), ``residual``, ``affine``, ``scratch``, ``flops-linear``,
  ``source`` (the most similar platform unchanged).
* The first sampler serves every method; the other samplers are run with ``fine-tune`` only (the
  VAE vs uniform ablation).

Rows are appended to ``results.jsonl`` as they are computed, so a killed run resumes. The table
(``TABLE.md``) and the plot of ±10% accuracy against adaptation cost (``accuracy_vs_cost.png``)
are rendered from that file.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from moonlit.common.config import hydra_app
from moonlit.common.report import render_table
from moonlit.litepred.pipeline import KernelCache
from moonlit.litepred.profile import get_platform
from moonlit.litepred.profile.dataset import ProfileDataset
from moonlit.litepred.transfer.adapt import (
    TargetKernels,
    adapt_once,
    choose_configs,
    evaluate_predictor,
    heldout_truth,
    kernel_pool_for,
    measure_configs,
    measured_calibration,
    similarity_ranking,
)
from moonlit.litepred.transfer.pool import KnowledgePool
from moonlit.litepred.transfer.similarity import probe_configs
from moonlit.litepred.zoo import (
    calibration_architectures,
    heldout_architectures,
    training_architectures,
)

__all__ = ["main", "plot", "render", "run"]

logger = logging.getLogger(__name__)

COMMAND = "bash scripts/reproduce_litepred_transfer.sh"
# The paper's adaptation results (reference README, table a), beside ours: phones there, local runtimes here.
PAPER_ROWS = [("Xiaomi11 CPU ORT", 1400, 0.48, 90.5, 98.9), ("Xiaomi12 CPU TFLite INT8", 3100, 0.05, 95.7, 100.0)]


def _row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["target"], row["sampler"], row["budget"], row["method"], row["seed"])


def _load_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _append(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=str) + "\n")
        f.flush()


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    """Every (target, sampler, budget, method, seed) row; see the module docstring."""
    e, a = cfg.experiment, cfg.adapt
    out = Path(e.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    rows = _load_rows(results_path)
    done = {_row_key(r) for r in rows}
    statistic = str(cfg.statistic)
    pool = KnowledgePool(a.pool_dir)
    for target in map(str, e.targets):
        platforms = [str(p) for p in e.platforms if str(p) != target]
        missing = [p for p in platforms if p not in pool.names()]
        if missing:
            raise FileNotFoundError(f"the pool {a.pool_dir} lacks predictors for {missing}; build them first "
                                    f"(moonlit-litepred build platform=<name>)")
        cfg_t = OmegaConf.merge(cfg, {"platform": target})  # rules, kernel cache and paths follow the target
        backend = get_platform(target, **OmegaConf.to_container(cfg.backend, resolve=True))
        adapt_dataset = ProfileDataset(Path(e.out_dir) / target / "profile.jsonl")
        families = list(cfg.architectures.families) if cfg.architectures.families else None
        train_specs = training_architectures(int(cfg.architectures.train), seed=int(cfg.architectures.seed),
                                             families=families)
        cache = KernelCache(cfg_t.kernel_cache, cfg_t.rules)
        kernel_pool = kernel_pool_for(cache, train_specs)
        h = cfg.heldout
        specs = heldout_architectures(int(h.n), seed=int(h.seed), families=list(h.families) if h.families else None)
        cache.fill(specs, desc="detecting held-out kernels")
        truth, repeat = heldout_truth(specs, backend, ProfileDataset(cfg.dataset), statistic, int(h.repeats),
                                      int(h.first_repeat))
        calibration_specs = calibration_architectures(train_specs, int(a.calibration_models))
        calibration_ms, calibration_s = measured_calibration(calibration_specs, backend, adapt_dataset, statistic)
        for seed in map(int, e.seeds):
            probe = measure_configs(probe_configs(kernel_pool, int(a.probe), seed), backend, adapt_dataset, statistic,
                                    f"probe kernels on {target}")
            ranking, predictors = similarity_ranking(pool, platforms, probe, str(a.similarity), cache,
                                                     calibration_specs, calibration_ms)
            similarity = [r.to_dict() for r in ranking]
            logger.info("%s: pool ranked %s", target, [(r.platform, round(r.kl, 4)) for r in ranking])
            for s_index, sampler in enumerate(map(str, e.samplers)):
                for budget in map(int, e.budgets):
                    methods = list(map(str, e.methods)) if s_index == 0 else ["fine-tune"]
                    todo = [m for m in methods if (target, sampler, budget, m, seed) not in done]
                    if not todo or (budget == 0 and s_index > 0):
                        continue
                    chosen = choose_configs(kernel_pool, budget, sampler, seed, [c.key() for c in probe.configs])
                    extra = measure_configs(chosen, backend, adapt_dataset, statistic,
                                            f"{sampler} N={budget} on {target}")
                    data: TargetKernels = probe + extra
                    # N = 0 adapts nothing, but a source chosen on whole models paid for them
                    paid = calibration_s if a.similarity == "models" else 0.0
                    cal_specs, cal_ms, cal_s = ((calibration_specs, calibration_ms, calibration_s) if budget > 0
                                                else ([], np.zeros(0), paid))
                    for method in todo:
                        source_name = ranking[-1].platform if method == "fine-tune-least" else ranking[0].platform
                        base_method = "fine-tune" if method == "fine-tune-least" else method
                        platform = {"name": f"{target}-adapted", "target": target}
                        predictor, fit_s = adapt_once(target_kernels=data, source=predictors[source_name],
                                                      method=base_method, cache=cache, calibration_specs=cal_specs,
                                                      calibration_ms=cal_ms, platform=platform,
                                                      fine_tune=OmegaConf.to_container(a.fine_tune, resolve=True),
                                                      seed=seed)
                        accuracy = evaluate_predictor(predictor, cache, specs, truth, repeat)
                        row = {"target": target, "pool": platforms, "sampler": sampler, "budget": budget,
                               "method": method, "seed": seed,
                               "source": None if base_method in ("scratch", "flops-linear") else source_name,
                               "target_kernels": len(data.configs), "kernel_seconds": float(data.seconds.sum()),
                               "calibration_models": len(cal_specs), "calibration_seconds": cal_s,
                               "fit_seconds": fit_s, "similarity": similarity,
                               **{k: accuracy[k] for k in ("n", "within_5pct", "within_10pct", "mape", "rmse_ms")},
                               "ceiling_within_10pct": accuracy.get("ceiling_within_10pct")}
                        row["adaptation_seconds"] = row["kernel_seconds"] + cal_s + fit_s
                        _append(results_path, row)
                        rows.append(row)
                        done.add(_row_key(row))
                        logger.info("%s %s N=%d %s: ±10%% %.1f%% (ceiling %s), MAPE %.1f%%", target, sampler, budget,
                                    method, 100 * row["within_10pct"], row["ceiling_within_10pct"], 100 * row["mape"])
    render(rows, out)
    return rows


def render(rows: Sequence[dict[str, Any]], out: Path) -> Path:
    """``TABLE.md``: similarity per target, then accuracy vs budget per method; and the PNG."""
    parts = ["# LitePred transfer: leave-one-platform-out on this machine", "",
             f"Produced by `{COMMAND}` (rows from `results.jsonl`). Platforms here are local CPU runtimes, "
             "not the paper's phones. Adaptation cost = profiling time of the target kernels used (probe + N) "
             "+ the calibration models + fitting.", ""]
    for target in sorted({r["target"] for r in rows}):
        trows = [r for r in rows if r["target"] == target]
        similarity = trows[0]["similarity"]
        parts.append(render_table({
            "caption": f"{target}: similarity of the pool on {similarity[0]['kernels']} probe kernels "
                       "(most similar first)",
            "columns": ["platform", "KL (lower = closer)", "Spearman", "target/source latency",
                        "whole-model LOO error (lower = closer)"],
            "rows": [[s["platform"], s["kl"], s["spearman"], s["median_ratio"], s.get("model_error")]
                     for s in similarity],
            "floatfmt": ".3f"}))
        parts.append("")
        body = []
        for r in sorted(trows, key=lambda r: (r["sampler"] != trows[0]["sampler"], r["budget"], r["method"])):
            body.append([r["method"], r["sampler"], r["source"] or "–", r["budget"], r["target_kernels"],
                         r["calibration_models"], r["adaptation_seconds"] / 60, 100 * r["within_5pct"],
                         100 * r["within_10pct"], 100 * (r["ceiling_within_10pct"] or float("nan")), 100 * r["mape"]])
        parts.append(render_table({
            "caption": f"{target}: held-out model accuracy after adaptation ({trows[0]['n']} models)",
            "columns": ["method", "sampler", "source", "N", "target kernels (probe + N)", "calibration models",
                        "adaptation min", "±5%", "±10%", "ceiling ±10%", "MAPE %"],
            "rows": body, "floatfmt": ".1f",
            "source": f"this repo, measured on this machine: `{COMMAND}`"}))
        parts.append("")
    parts.append(render_table({
        "caption": "Paper (reference README, table a): adaptation on phones",
        "columns": ["platform", "samples", "hours", "±5%", "±10%"], "rows": [list(r) for r in PAPER_ROWS],
        "floatfmt": ".2f", "source": "LitePred paper / reference README"}))
    path = out / "TABLE.md"
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    if rows:
        plot(rows, out / "accuracy_vs_cost.png")
    return path


def plot(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """±10% accuracy vs adaptation minutes, one line per (target, method, sampler), ceiling dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = sorted({r["target"] for r in rows})
    fig, axes = plt.subplots(1, len(targets), figsize=(6.5 * len(targets), 4.5), squeeze=False)
    for ax, target in zip(axes[0], targets):
        trows = [r for r in rows if r["target"] == target]
        for key in sorted({(r["method"], r["sampler"]) for r in trows}):
            line = sorted((r for r in trows if (r["method"], r["sampler"]) == key), key=lambda r: r["budget"])
            ax.plot([r["adaptation_seconds"] / 60 for r in line], [100 * r["within_10pct"] for r in line], "o-",
                    label=f"{key[0]} ({key[1]})", markersize=4)
        ceilings = [r["ceiling_within_10pct"] for r in trows if r["ceiling_within_10pct"] is not None]
        if ceilings:
            ax.axhline(100 * ceilings[0], color="k", linestyle="--", linewidth=1, label="measurement ceiling")
        ax.set(title=f"target {target}", xlabel="adaptation cost (min)", ylabel="held-out models within ±10% (%)",
               ylim=(0, 100))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@hydra_app("litepred", "transfer")
def main(cfg: DictConfig) -> None:
    started = time.perf_counter()
    rows = run(cfg)
    print(f"{len(rows)} rows in {cfg.experiment.out_dir}/results.jsonl; table and plot there "
          f"({(time.perf_counter() - started) / 60:.1f} min)")


if __name__ == "__main__":
    main()
