"""The ToP tables, paper vs this repo, rendered from the runs' ``results.json`` files.

    python -m moonlit.top.report outputs/top/reproduce            # after scripts/reproduce_top_glue.sh
    python -m moonlit.top.report outputs/top/smoke --source "this repo on generated data"
    python -m moonlit.top.report --benchmark outputs/top/benchmark # after python -m moonlit.top.benchmark
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Render the ToP GLUE table from a reproduce run, or the "
                                                 "speedup table from a benchmark run.")
    parser.add_argument("root", type=Path, nargs="?", help="the paths.output_root the runs used")
    parser.add_argument("--benchmark", type=Path, help="a benchmark output folder (with results.json)")
    parser.add_argument("--source", default="this repo at paper scale")
    parser.add_argument("--command", default="bash scripts/reproduce_top_glue.sh")
    args = parser.parse_args(argv)
    if args.benchmark is not None:
        path = args.benchmark / "results.json"
        if not path.is_file():
            raise SystemExit(f"no benchmark results at {path}: run python -m moonlit.top.benchmark first")
        rendered = render_table(speed_table(json.loads(path.read_text())))
        (args.benchmark / "SPEEDUP.md").write_text(rendered + "\n")
        print(rendered)
        return
    if args.root is None:
        parser.error("give the output root of a reproduce run, or --benchmark DIR")
    runs = collect(args.root)
    if not runs:
        raise SystemExit(f"no ToP runs under {args.root}/top/prune/<task>/results.json")
    rendered = render_table(table(runs, args.source, args.command))
    out = args.root / "top" / "TABLE.md"
    out.write_text(rendered + "\n")
    print(rendered)
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
