"""The ToP tables, paper vs this repo, rendered from the runs' ``results.json`` files.

    python -m moonlit.top.report root=outputs/top/reproduce            # after scripts/reproduce_top_glue.sh
    python -m moonlit.top.report root=outputs/top/smoke 'source="this repo on generated data"'
    python -m moonlit.top.report benchmark=outputs/top/benchmark       # after python -m moonlit.top.benchmark

Config: ``configs/top/report.yaml`` (``root`` or ``benchmark``, one of the two).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from moonlit.common.config import hydra_app
from moonlit.common.errors import InputError
from moonlit.common.report import render_table

# ToP's released results (reference README, BERT-base): metric score and FLOPs reduction, the
# latter measured against inputs padded to the task's fixed length (see the notes).
PAPER = {
    "cola": ("Matthews", 60.3, 10.39, 0.43),
    "rte": ("accuracy", 68.3, 7.71, 0.59),
    "qqp": ("accuracy", 90.9, 12.41, 0.65),
    "mrpc": ("F1", 89.1, 7.71, 0.67),
    "sst2": ("accuracy", 93.4, 4.66, 0.40),
    "mnli": ("accuracy (m)", 83.4, 6.68, 0.50),
    "qnli": ("accuracy", 89.0, 6.16, 0.58),
    "stsb": ("Pearson", 86.6, 7.20, 0.70),
}


def collect(root: Path) -> dict[str, dict[str, Any]]:
    """``{task: {"teacher": ..., "prune": ...}}`` from ``root/top/{finetune,prune}/<task>/results.json``."""
    runs: dict[str, dict[str, Any]] = {}
    for task in PAPER:
        entry = {}
        for stage in ("finetune", "prune"):
            path = root / "top" / stage / task / "results.json"
            if path.is_file():
                entry[stage] = json.loads(path.read_text())
        if "prune" in entry:
            runs[task] = entry
    return runs


def table(runs: dict[str, dict[str, Any]], source: str, command: str) -> dict[str, Any]:
    rows = []
    for task, (metric, paper_score, paper_reduction, target) in PAPER.items():
        run = runs.get(task)
        if run is None:
            rows.append([task, metric, paper_score, paper_reduction, None, None, None, None, None, None])
            continue
        reported = next(iter(run["prune"]["eval"].values()))
        teacher = next(iter(run["finetune"]["eval"].values()))["metric"] * 100 if "finetune" in run else None
        rows.append([task, metric, paper_score, paper_reduction, teacher, reported["metric"] * 100,
                     run["prune"]["dev_selected"]["metric"] * 100, reported.get("flops_reduction_vs_padded"),
                     reported["flops_reduction"], reported["measured_mac_sparsity"]])
    return {
        "caption": "ToP on GLUE: paper vs this repo (dev split; ours selected on a held-out part of train)",
        "columns": ["task", "metric", "paper score", "paper FLOPs ÷ (padded)", "our teacher", "our ToP",
                    "our ToP (dev-selected)", "our FLOPs ÷ (padded)", "our FLOPs ÷ (unpadded)",
                    "our measured MAC sparsity"],
        "rows": rows,
        "floatfmt": ".2f",
        "source": f"paper: ToP README (BERT-base); ours: {source}, `{command}`",
    }


# The paper's latency claim (abstract): "a real latency speedup of up to 7.4x on an Intel CPU".
PAPER_MAX_CPU_SPEEDUP = 7.4


def speed_table(results: dict[str, Any], command: str = "python -m moonlit.top.benchmark") -> dict[str, Any]:
    """Headline speedups of a benchmark run: each case's rows, with the baseline each speedup is against."""
    backends = [b for b in ("torch", "ort_fp32", "ort_int8") if any(
        b in entry["speedup"] for case in results["cases"] for entry in case["schedules"])]
    rows = []
    for case in results["cases"]:
        padded = case["padded_length"] > case["real_length"]
        for entry in case["schedules"]:
            reduction = entry["mac_reduction_vs_padded"] if padded else entry["mac_reduction"]
            rows.append([case.get("profile") or ("padded" if padded else "fixed length"), case["batch_size"],
                         f"{case['real_length']}" + (f" → {case['padded_length']}" if padded else ""),
                         "padded dense" if padded else "dense, same input", entry["name"], reduction,
                         *(entry["speedup"].get(b) for b in backends)])
    best = max((row for row in rows if row[3] == "padded dense"), key=lambda row: max(v or 0 for v in row[6:]),
               default=None)
    caption = "ToP token dropping: measured CPU speedup (1 thread, medians of interleaved rounds)"
    if best is not None:
        caption += (f"; paper: up to {PAPER_MAX_CPU_SPEEDUP}x on an Intel CPU, ours up to "
                    f"{max(v or 0 for v in best[6:]):.1f}x against the padded dense model ({best[0]}, batch {best[1]})")
    return {"caption": caption,
            "columns": ["input", "batch", "tokens", "baseline", "schedule", "MAC reduction",
                        *(f"{b} speedup" for b in backends)],
            "rows": rows, "floatfmt": ".2f",
            "source": f"this repo, BERT-base dimensions with random weights, on this machine (`{command}`)"}


def run(cfg: DictConfig) -> dict[str, Any]:
    """The work behind ``python -m moonlit.top.report``: render the speedup table of ``cfg.benchmark`` into
    ``SPEEDUP.md`` beside its ``results.json``, or the GLUE table of the runs under ``cfg.root`` into
    ``<root>/top/TABLE.md``; returns ``{"path", "markdown"}``."""
    if (cfg.root is None) == (cfg.benchmark is None):
        raise InputError(f"give one of root=<output root of a reproduce run> or benchmark=<benchmark output folder>, "
                         f"got root={cfg.root} benchmark={cfg.benchmark}")
    if cfg.benchmark is not None:
        folder = Path(str(cfg.benchmark))
        path = folder / "results.json"
        if not path.is_file():
            raise InputError(f"no benchmark results at {path}: run python -m moonlit.top.benchmark first")
        try:
            results = json.loads(path.read_text())
            rendered = render_table(speed_table(results))
        except (ValueError, KeyError, TypeError, AttributeError) as err:  # JSONDecodeError is a ValueError
            raise InputError(f"{path} is not a moonlit.top.benchmark results.json ({type(err).__name__}: {err}); "
                             "expected {'cases': [{'schedules': [...], ...}]}") from err
        out = folder / "SPEEDUP.md"
    else:
        root = Path(str(cfg.root))
        try:
            runs = collect(root)
            rendered = render_table(table(runs, str(cfg.source), str(cfg.command))) if runs else ""
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise InputError(f"a results.json under {root}/top is not a moonlit.top finetune/prune result "
                             f"({type(err).__name__}: {err})") from err
        if not runs:
            raise InputError(f"no ToP runs under {root}/top/prune/<task>/results.json; expected the "
                             "paths.output_root of scripts/reproduce_top_glue.sh")
        out = root / "top" / "TABLE.md"
    out.write_text(rendered + "\n")
    return {"path": str(out), "markdown": rendered}


@hydra_app("top", "report")
def main(cfg: DictConfig) -> None:
    result = run(cfg)
    print(result["markdown"])
    print(f"\nwritten to {result['path']}")


if __name__ == "__main__":
    main()
