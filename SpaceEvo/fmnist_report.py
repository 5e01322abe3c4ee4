"""The report of :mod:`moonlit.spaceevo.fmnist`: section tables, ``fmnist.md`` and the space-search plot.

Everything here renders numbers the run saved (its stage results), never numbers typed by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from moonlit.common.report import render_table

__all__ = ["SECTION", "build_section", "plot_search", "render_report"]

SECTION = {"name": "spaceevo_fmnist", "order": 41, "command": "python -m moonlit.spaceevo.fmnist"}


def plot_search(searched: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = np.array([score for _, score in searched["history"]])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter(np.arange(scores.size), scores, s=6, alpha=0.5, label="evaluated space")
    ax.plot(np.maximum.accumulate(scores), color="C1", label="best so far")
    ax.set_xlabel("evaluation")
    ax.set_ylabel("Q-T score")
    ax.set_title(f"space search on {searched['hyperspace']} LUTs (Lite0 teacher, Fashion-MNIST)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_section(results: dict[str, Any]) -> dict[str, Any]:
    """The report section: tables of the ranked spaces, supernet, ranking fidelity, deployment and targets."""
    searched, supernet, ranking, deploy = (results[k] for k in ("space_search", "supernet", "ranking", "deploy"))
    latency = searched["latency"]
    ranked_table = {
        "caption": "Ranked search spaces (Q-T score from the Lite0-teacher LUTs, mean over shared draws)",
        "columns": ["rank", "space", "mean score", "std", "min ms", "max ms"],
        "rows": [[r["rank"], r["space"], r["mean"], r["std"], r["min_ms"], r["max_ms"]]
                 for r in searched["ranked"][:5]],
        "floatfmt": ".4f", "source": "moonlit.spaceevo.space_search on this run's LUTs"}
    training_table = {
        "caption": f"Supernet of `{results['space']}` ({results['space_from']}) on {results['train_images']} "
                   f"Fashion-MNIST training images; top-1 % on {ranking.get('test_images', '?')} test images, "
                   "BN re-estimated",
        "columns": ["phase", "steps", "last max-subnet loss", "max subnet top-1", "min subnet top-1"],
        "rows": [[phase, r["steps"], (r["last_losses"] or {}).get("max"),
                  _percent(r["eval"].get(f"{phase}/max_top1")), _percent(r["eval"].get(f"{phase}/min_top1"))]
                 for phase, r in supernet["phases"].items()],
        "floatfmt": ".3f", "source": "moonlit.spaceevo.train_supernet (experiment=fmnist + the app's overrides)"}
    fidelity = ranking["fidelity"]
    seeds = ranking.get("seeds", [None])
    epochs = f"{ranking['epochs']} epoch{'' if ranking['epochs'] == 1 else 's'}"
    caption = (f"Ranking fidelity on {ranking.get('test_images', '?')} test images: {fidelity['count']} subnets spread "
               f"over the MACs range, Kendall tau {fidelity['kendall_tau']:.3f} (p {fidelity['p_value']:.3f}), "
               f"Spearman rho {fidelity['spearman_rho']:.3f}, best subnet agrees: {fidelity['best_agrees']}")
    columns = ["subnet", "MMACs", "inherited top-1 % (BN re-estimated)", f"trained alone top-1 % ({epochs})"]
    rows = [[s["name"], s["macs"] / 1e6, s["inherited"], s["standalone"]] for s in ranking["subnets"]]
    agreement = ranking.get("seed_agreement")
    if agreement:
        caption += (f". Trained alone: mean of {len(seeds)} seeds {seeds}; the seeds order the subnets with Kendall "
                    f"tau {agreement['mean_tau']:.3f} between each other (the noise ceiling), seed-to-seed std "
                    f"{agreement['mean_std_points']:.2f} points per subnet; the first seed alone gives tau "
                    f"{ranking['first_seed_fidelity']['kendall_tau']:.3f}")
        columns = [*columns[:3], f"trained alone top-1 % (mean, {epochs})", "per seed"]
        rows = [[*row, " / ".join(f"{v:.2f}" for v in s["standalone_by_seed"])]
                for row, s in zip(rows, ranking["subnets"])]
    ranking_table = {"caption": caption, "columns": columns, "rows": rows, "floatfmt": ".2f",
                     "source": "moonlit.common.nas.ranking over the FP32-phase supernet"}
    top1 = deploy["test_top1"]
    deploy_table = {
        "caption": "Best subnet of the subnet search (INT8 fake-quant fitness on held-out train images), exported to "
                   f"INT8 ONNX with its learned LSQ+ grids: top-1 % on {deploy['test_images']} test images",
        "columns": ["subnet", "MMACs", "constraint", "ONNX INT8", "fake-quant torch", "FP32 torch",
                    "INT8 vs fake-quant agreement"],
        "rows": [[deploy["subnet"], deploy["mmacs"],
                  results["subnet_search"]["constraint"], top1["int8_onnx"],
                  top1["fake_quant"], top1["fp32"], deploy["int8_vs_fake_quant_agreement"]]],
        "floatfmt": ".3f",
        "source": "moonlit.spaceevo.subnet_search.run_search, moonlit.spaceevo.deploy.export_lsq_qdq"}
    targets_table = {
        "caption": "Targets", "columns": ["check", "value", "target", "met"],
        "rows": [[name, t["value"], t["target"], t["met"]] for name, t in results["targets"].items()],
        "floatfmt": ".3f"}
    summary = (f"Teacher: {searched['teacher']['model']} with its ImageNet weights ({searched['teacher']['bn']} BN "
               f"statistics); block KD of {len(searched['kd'])} students, {searched['luts']} LUTs (latency: "
               f"{latency.get('source') if isinstance(latency, dict) else latency}), "
               f"{len(searched['history'])} spaces evaluated by aging evolution.")
    return {**SECTION, "command": results["config"]["command"],
            "title": "SpaceEvo on Fashion-MNIST: Lite0 teacher, ranking fidelity, INT8 deployment",
            "summary": summary, "tables": [ranked_table, training_table, ranking_table, deploy_table, targets_table],
            "figures": [{"path": "score_over_search.png", "caption": "Q-T score of each evaluated space"},
                        {"path": "ranking/ranking.png", "caption": "inherited vs trained-alone top-1"}]}


def _percent(value: Any) -> Any:
    return None if value is None else 100.0 * float(value)


def render_report(section: dict[str, Any], results: dict[str, Any]) -> str:
    """``fmnist.md``: the title, date and command, the summary, every table and the figures."""
    parts = [f"## {section['title']}", f"{results['date']}; `{results['config']['command']}` (output_dir "
             f"`{results['config']['output_dir']}`).", section["summary"]]
    parts += [render_table(table) for table in section["tables"]]
    parts += [f"![{figure['caption']}]({figure['path']})" for figure in section["figures"]]
    return "\n\n".join(parts)
