"""ToP on one task, every arm side by side: the dense teacher, ToP at each MAC target, ToP without
ranking distillation, and the untrained baselines at ToP's own kept-token counts (ToP §5.2, §5.4).

It reads what the two stages wrote — the teacher (``teacher_dir``) and one folder per pruning run
under ``prune_root`` (each with ``results.json`` and ``model/``) — and reports, per eval split:

- the task metric of every arm; static top-k (the teacher's attention ranking, no training) and
  random dropping (mean ± std over seeds) keep exactly ToP's tokens per sample and layer
  (:mod:`moonlit.top.baselines`), so their MACs equal ToP's;
- measured MAC sparsity, the FLOPs reduction against unpadded input and against input padded to
  the task's length, and the mean tokens entering each layer;
- the metric of the exported ONNX models, FP32 and dynamic INT8, and their agreement with torch;

and, on real dev batches (1 thread, arms interleaved, medians), the latency of dense vs physical
token dropping in torch, ONNX Runtime and ORT dynamic INT8, at batch ``speed.batch_size`` and at
batch 1. The speedup is set beside the MAC reduction of exactly the batches that were timed
(each layer runs on its batch's longest kept count, so that is what the hardware computes).

Writes ``study.json``, ``section.json`` (tables; ``python -m moonlit.common.report`` renders it),
``accuracy_vs_macs.png`` and ``kept_tokens.png`` into ``output_dir``.

    python -m moonlit.top.study experiment=rt_minilm paths.output_root=outputs/top_real
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from moonlit.common.config import hydra_app
from moonlit.common.data.glue import GlueTask, get_glue_task
from moonlit.common.data.glue_metrics import compute_glue_metrics
from moonlit.common.errors import InputError
from moonlit.common.profiling.compare import Arm, median_ms, time_arms
from moonlit.common.report import write_section

from .artifacts import load_pruned
from .baselines import compare_baselines
from .constraint import encoder_macs
from .data import glue_loader, splits_from_config
from .evaluate import evaluate_top
from .inference import TokenDroppingModel
from .model import ToPModel

log = logging.getLogger(__name__)

ONNX_INPUTS = ("input_ids", "attention_mask")


def discover_runs(prune_root: str | Path) -> list[dict[str, Any]]:
    """Every finished pruning run below ``prune_root`` (a folder with ``results.json`` and ``model/``),
    ordered by target, ranking-distilled runs first; each as ``{"name", "dir", "results", "ranking"}``."""
    root = Path(prune_root)
    if not root.is_dir():
        raise InputError(f"prune_root {root} does not exist; run moonlit.top.prune with output_dir=<prune_root>/<name>")
    runs = []
    for results_path in sorted(root.glob("*/results.json")):
        folder = results_path.parent
        if not (folder / "model").is_dir():
            log.warning("skipping %s: it has results.json but no model/ folder", folder)
            continue
        results = json.loads(results_path.read_text())
        alpha = results.get("prune", {}).get("ranking_alpha")
        runs.append({"name": folder.name, "dir": folder, "results": results,
                     "ranking": alpha is None or float(alpha) > 0.0})
    if not runs:
        raise InputError(f"no finished pruning run under {root} (expected <name>/results.json and <name>/model/)")
    return sorted(runs, key=lambda run: (not run["ranking"], run["results"]["target_sparsity"], run["name"]))


def run_label(run: Mapping[str, Any]) -> str:
    target = run["results"]["target_sparsity"]
    return f"ToP {target:g}" if run["ranking"] else f"ToP w/o ranking {target:g}"


# ---------------------------------------------------------------------------------------------
# ONNX export and ONNX metrics

class _Logits(torch.nn.Module):
    """An HF classifier as ``(input_ids, attention_mask) -> logits`` (the dense ONNX graph)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_dense_and_pruned(teacher: torch.nn.Module, pruned: Mapping[str, ToPModel],
                            example: Mapping[str, torch.Tensor], out_dir: Path) -> dict[str, dict[str, Path]]:
    """``{arm: {"fp32": path, "int8": path}}`` for the dense teacher and each pruned model."""
    from moonlit.common.export.int8 import quantize_dynamic_int8
    from moonlit.common.export.onnx import export_onnx

    from .export import export_pruned_onnx, quantize_pruned_dynamic

    inputs = {name: example[name] for name in ONNX_INPUTS}
    out_dir.mkdir(parents=True, exist_ok=True)
    dense = export_onnx(_Logits(teacher.eval()), inputs, out_dir / "dense.onnx", output_names=["logits"],
                        dynamic_axes={name: {0: "batch", 1: "sequence"} for name in inputs})
    paths = {"dense": {"fp32": dense, "int8": quantize_dynamic_int8(dense, out_dir / "dense_int8.onnx",
                                                                   op_types=("MatMul",))}}
    for name, model in pruned.items():
        fp32 = export_pruned_onnx(model, out_dir / f"{name}.onnx", example_batch=inputs)
        paths[name] = {"fp32": fp32, "int8": quantize_pruned_dynamic(fp32, out_dir / f"{name}_int8.onnx")}
    return paths


def onnx_logits(path: Path, loader: Any, threads: int = 1) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(["logits"], {k: batch[k].numpy() for k in ONNX_INPUTS})[0] for batch in loader])


def torch_logits(model: Callable[..., Any], loader: Any) -> np.ndarray:
    parts = []
    with torch.inference_mode():
        for batch in loader:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            parts.append(getattr(out, "logits", out).float().numpy())
    return np.concatenate(parts)


def onnx_metrics(paths: Mapping[str, Path], loader: Any, task: GlueTask,
                 torch_predictions: np.ndarray) -> dict[str, Any]:
    """Task metric of each ONNX model over ``loader`` and how often its prediction equals torch's."""
    labels = np.concatenate([batch["labels"].numpy() for batch in loader])
    rows = {}
    for precision, path in paths.items():
        logits = onnx_logits(path, loader)
        metrics = compute_glue_metrics(task, logits.squeeze(-1) if task.is_regression else logits, labels)
        rows[precision] = {"metric": metrics[task.main_metric],
                           "agreement_with_torch": float((logits.argmax(-1) == torch_predictions).mean())}
    return rows


# ---------------------------------------------------------------------------------------------
# Latency on real batches

def batch_macs(kept_counts: torch.Tensor, dims: Any) -> float:
    """MACs one batch really computes: every layer runs on the batch's longest kept count.

    ``kept_counts`` [B, L]: tokens each sample feeds each layer (a dense batch: its padded length).
    """
    widest = kept_counts.to(torch.float64).max(dim=0).values
    return float(encoder_macs(widest.expand_as(kept_counts.to(torch.float64)), dims).sum())


def timed_mac_reduction(model: ToPModel, batches: Sequence[Mapping[str, torch.Tensor]]) -> float:
    """Dense over pruned MACs of ``batches`` as computed (batch-padded), for one pruned model."""
    dropping = TokenDroppingModel(model).eval()
    dense = pruned = 0.0
    with torch.inference_mode():
        for batch in batches:
            out = dropping(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            size, length = batch["input_ids"].shape
            dense += batch_macs(torch.full((size, model.dims.num_layers), float(length)), model.dims)
            pruned += batch_macs(out.kept_counts, model.dims)
    return dense / pruned


def measure_latency(teacher: torch.nn.Module, pruned: Mapping[str, ToPModel], onnx: Mapping[str, Mapping[str, Path]],
                    batches: Sequence[Mapping[str, torch.Tensor]], *, threads: int, rounds: int, warmup: int,
                    int8: bool) -> dict[str, Any]:
    """Median latency (ms per pass over ``batches``) of every arm, interleaved, and each model's speedup."""
    modules = {"dense": teacher.eval()} | {name: TokenDroppingModel(model).eval() for name, model in pruned.items()}
    backends = {"torch": None, "ORT": "fp32"} | ({"ORT-INT8": "int8"} if int8 else {})
    inputs = [{key: batch[key] for key in ONNX_INPUTS} for batch in batches]  # one timed call runs them all
    arms = {}
    for name, module in modules.items():
        for backend, precision in backends.items():
            arms[f"{name} {backend}"] = (Arm("torch", module, inputs) if precision is None
                                         else Arm("onnxruntime", onnx[name][precision], inputs))
    comparison = time_arms(arms, threads=threads, rounds=rounds, warmup=warmup, baseline="dense torch")
    medians = median_ms(comparison)
    speedup = {name: {backend: medians[f"dense {backend}"] / medians[f"{name} {backend}"] for backend in backends}
               for name in pruned}
    return {"median_ms": medians, "speedup": speedup, "batches": len(batches),
            "batch_size": int(batches[0]["input_ids"].shape[0]),
            "mac_reduction_of_timed_batches": {name: timed_mac_reduction(model, batches)
                                               for name, model in pruned.items()},
            "environment": comparison.environment}


# ---------------------------------------------------------------------------------------------
# The study

def real_batches(dataset: Any, tokenizer: Any, batch_size: int, count: int) -> list[dict[str, torch.Tensor]]:
    """The first ``count`` batches of ``dataset`` in order (dynamic padding), model inputs only."""
    loader = glue_loader(dataset, tokenizer, batch_size, shuffle=False)
    batches = []
    for batch in loader:
        if len(batches) == count:
            break
        batches.append({key: batch[key] for key in ONNX_INPUTS})
    return batches


def run_study(cfg: DictConfig) -> dict[str, Any]:
    from .finetune import load_classifier

    runs = discover_runs(cfg.prune_root)  # inputs checked before anything is written
    out = Path(cfg.output_dir)
    teacher, tokenizer = load_classifier(cfg.teacher_dir, get_glue_task(cfg.data.task).num_labels)
    splits = splits_from_config(cfg.data, tokenizer)
    teacher.eval()
    task = splits.task
    pruned = {}
    for run in runs:
        model, _ = load_pruned(run["dir"] / "model")
        pruned[run["name"]] = model.eval()
    loaders = {name: glue_loader(ds, tokenizer, cfg.data.eval_batch_size, shuffle=False)
               for name, ds in splits.eval_splits.items()}
    padded = splits.padded_length

    accuracy: dict[str, dict[str, Any]] = {}
    for split, loader in loaders.items():
        rows: dict[str, Any] = {"dense teacher": evaluate_top(ToPModel(teacher).eval(), loader, task,
                                                              padded_length=padded, prune=False)}
        for run in tqdm(runs, desc=f"{split}: arms", leave=False):
            model = pruned[run["name"]]
            if run["ranking"]:
                arms = compare_baselines(model, teacher, loader, task, padded_length=padded,
                                         random_seeds=cfg.random_seeds, include_dense=False)
                rows[run["name"]] = arms
            else:
                rows[run["name"]] = {"ToP w/o ranking": evaluate_top(model, loader, task, padded_length=padded)}
        accuracy[split] = rows
        log.info("%s: dense %.4f; %s", split, rows["dense teacher"]["metric"],
                 "; ".join(f"{run_label(run)} {next(iter(rows[run['name']].values()))['metric']:.4f}" for run in runs))

    # ONNX FP32 / dynamic INT8 of the dense teacher and every pruned model
    first_split = next(iter(splits.eval_splits))
    example = real_batches(splits.eval_splits[first_split], tokenizer, cfg.speed.batch_size, 1)[0]
    onnx = export_dense_and_pruned(teacher, pruned, example, out / "onnx")
    onnx_rows: dict[str, dict[str, Any]] = {}
    for split, loader in loaders.items():
        dense_predictions = torch_logits(teacher, loader).argmax(-1)
        onnx_rows[split] = {"dense": onnx_metrics(onnx["dense"], loader, task, dense_predictions)}
        for name, model in pruned.items():
            reference = torch_logits(TokenDroppingModel(model).eval(), loader).argmax(-1)
            onnx_rows[split][name] = onnx_metrics(onnx[name], loader, task, reference)

    speed_models = {run["name"]: pruned[run["name"]] for run in runs if run["ranking"]}
    speed = {}
    s = cfg.speed
    eval_set = splits.eval_splits[first_split]
    for label, size, count in (("batch", s.batch_size, s.batches), ("single", 1, s.single_samples)):
        batches = real_batches(eval_set, tokenizer, size, count)
        log.info("timing %d real %s batches of %d (%d rounds, %d thread(s))", len(batches), first_split, size,
                 s.rounds, s.threads)
        speed[label] = measure_latency(teacher, speed_models, onnx, batches, threads=s.threads, rounds=s.rounds,
                                       warmup=s.warmup, int8=s.int8)

    study = {"task": task.name, "metric_name": task.main_metric, "padded_length": padded,
             "runs": [{"name": run["name"], "label": run_label(run), "ranking": run["ranking"],
                       "target_sparsity": run["results"]["target_sparsity"], "selected": run["results"]["selected"],
                       "prune": run["results"].get("prune", {})} for run in runs],
             "accuracy": accuracy, "onnx": onnx_rows, "speed": speed,
             "teacher_dir": str(cfg.teacher_dir), "prune_root": str(cfg.prune_root)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(study, indent=2, default=_json_default) + "\n")
    plot_accuracy_vs_macs(study, out / "accuracy_vs_macs.png")
    plot_kept_tokens(study, out / "kept_tokens.png")
    write_section(out, build_section(study, cfg.source, cfg.command))
    return study


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


# ---------------------------------------------------------------------------------------------
# Tables and plots

ARM_ORDER = ("ToP", "ToP w/o ranking", "static top-k", "random")
SPLIT_NAMES = {"validation": "dev"}


def accuracy_rows(study: Mapping[str, Any], split: str) -> list[dict[str, Any]]:
    """Flat rows ``{"arm", "target", **evaluate_top result}`` of one split: dense first, then by target."""
    table = study["accuracy"][split]
    rows = [{"arm": "dense teacher", "target": 0.0, **table["dense teacher"]}]
    for run in study["runs"]:
        for arm in ARM_ORDER:
            if arm in table[run["name"]]:
                rows.append({"arm": arm, "target": run["target_sparsity"], "run": run["name"],
                             **table[run["name"]][arm]})
    return rows


def build_section(study: Mapping[str, Any], source: str, command: str) -> dict[str, Any]:
    metric = study["metric_name"]
    padded = study["padded_length"]
    tables = []
    for split in study["accuracy"]:
        rows = []
        dense = study["accuracy"][split]["dense teacher"]["metric"]
        for row in accuracy_rows(study, split):
            value = f"{100 * row['metric']:.2f}" + (f" ± {100 * row['metric_std']:.2f}" if "metric_std" in row else "")
            rows.append([row["arm"], row["target"] if row["arm"] != "dense teacher" else None, value,
                         100 * (row["metric"] - dense), row["measured_mac_sparsity"], row["flops_reduction"],
                         row.get("flops_reduction_vs_padded"),
                         " / ".join(f"{v:.1f}" for v in row["mean_kept_tokens_per_layer"])])
        samples = study["accuracy"][split]["dense teacher"]["samples"]
        tables.append({
            "caption": (f"{study['task']} {SPLIT_NAMES.get(split, split)} ({samples} samples): {metric} (%) and "
                        "MACs of every arm"),
            "columns": ["arm", "MAC-sparsity target", f"{metric} (%)", "Δ vs dense (points)", "measured MAC sparsity",
                        "MAC ÷ (unpadded)", f"MAC ÷ (padded to {padded})", "mean tokens entering each layer"],
            "rows": rows, "floatfmt": ".2f", "source": source})
    for label, speed in study["speed"].items():
        backends = [b for b in ("torch", "ORT", "ORT-INT8") if f"dense {b}" in speed["median_ms"]]
        rows = []
        for run in study["runs"]:
            if run["name"] not in speed["speedup"]:
                continue
            reduction = speed["mac_reduction_of_timed_batches"][run["name"]]
            rows.append([run["label"], reduction]
                        + [speed["median_ms"][f"{run['name']} {b}"] for b in backends]
                        + [speed["speedup"][run["name"]][b] for b in backends]
                        + [speed["speedup"][run["name"]][b] / reduction for b in ("torch", "ORT")])
        rows.insert(0, ["dense teacher", 1.0] + [speed["median_ms"][f"dense {b}"] for b in backends]
                    + [1.0] * len(backends) + [None, None])
        tables.append({
            "caption": (f"Latency over {speed['batches']} real dev batch(es) of {speed['batch_size']}, "
                        f"{speed['environment'].get('threads') or 1} thread, arms interleaved (ms per pass, median); "
                        "physical token dropping vs dense"),
            "columns": ["model", "MAC ÷ of the timed batches (as computed)"] + [f"{b} ms" for b in backends]
                       + [f"{b} speedup" for b in backends] + ["torch speedup ÷ MAC ÷", "ORT speedup ÷ MAC ÷"],
            "rows": rows, "floatfmt": ".2f", "source": source})
    onnx_rows = []
    for split, models in study["onnx"].items():
        for name, row in models.items():
            label = "dense teacher" if name == "dense" else next(r["label"] for r in study["runs"] if r["name"] == name)
            onnx_rows.append([label, SPLIT_NAMES.get(split, split), 100 * row["fp32"]["metric"],
                              100 * row["int8"]["metric"],
                              row["fp32"]["agreement_with_torch"], row["int8"]["agreement_with_torch"]])
    tables.append({
        "caption": f"Exported ONNX models: {metric} (%) in FP32 and dynamic INT8 (linears), and agreement with torch",
        "columns": ["model", "split", f"FP32 {metric}", f"INT8 {metric}", "FP32 agreement", "INT8 agreement"],
        "rows": onnx_rows, "floatfmt": ".3f", "source": source})
    return {
        "name": f"top_{study['task']}", "title": f"ToP on {study['task']}: every arm side by side", "order": 10,
        "command": command,
        "summary": ("Static top-k and random keep exactly ToP's tokens per sample and layer (so the same MACs); "
                    "ToP w/o ranking is a pruning run with ranking distillation off (prune.ranking_alpha=0), "
                    "calibrated to the same target. Random: mean ± std over seeds."),
        "tables": tables,
        "figures": [{"path": "accuracy_vs_macs.png", "caption": f"{metric} vs MAC reduction"},
                    {"path": "kept_tokens.png", "caption": "mean tokens entering each layer"}],
        "notes": ["MAC ÷ (unpadded): dense MACs of each sentence at its own length over the MACs of the tokens it "
                  "kept; MAC ÷ (padded): the dense side padded to the task length, as the paper's FLOPs column.",
                  "MAC ÷ of the timed batches: what the batched computation really does (every layer runs on the "
                  "batch's longest kept count, dense on the batch's longest sentence)."],
    }


def plot_accuracy_vs_macs(study: Mapping[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(study["accuracy"])
    fig, axes = plt.subplots(1, len(splits), figsize=(5.2 * len(splits), 4.0), squeeze=False)
    styles = {"ToP": ("s", "-", "C0"), "ToP w/o ranking": ("D", "none", "C3"), "static top-k": ("^", "--", "C1"),
              "random": ("v", ":", "C2")}
    for ax, split in zip(axes[0], splits):
        rows = accuracy_rows(study, split)
        dense = rows[0]
        ax.axhline(100 * dense["metric"], color="0.4", linewidth=1, label="dense teacher")
        for arm, (marker, line, color) in styles.items():
            points = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["flops_reduction"])
            if not points:
                continue
            x = [r["flops_reduction"] for r in points]
            y = [100 * r["metric"] for r in points]
            err = [100 * r.get("metric_std", 0.0) for r in points]
            ax.errorbar(x, y, yerr=err if any(err) else None, marker=marker, linestyle=line, color=color, label=arm,
                        capsize=3)
        ax.set_xlabel("MAC reduction (×, unpadded input)")
        ax.set_ylabel(f"{study['metric_name']} (%)")
        ax.set_title(f"{study['task']} {SPLIT_NAMES.get(split, split)}", fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0][0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_kept_tokens(study: Mapping[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = next(iter(study["accuracy"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for row in accuracy_rows(study, split):
        if row["arm"] not in ("dense teacher", "ToP", "ToP w/o ranking"):
            continue
        label = row["arm"] if row["arm"] == "dense teacher" else f"{row['arm']} {row['target']:g}"
        kept = row["mean_kept_tokens_per_layer"]
        ax.plot(range(len(kept)), kept, marker="o", linestyle="--" if "w/o" in row["arm"] else "-", label=label)
    ax.set_xlabel("encoder layer")
    ax.set_ylabel("mean tokens entering the layer")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{study['task']} {SPLIT_NAMES.get(split, split)}: tokens kept per layer", fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(cfg: DictConfig) -> dict[str, Any]:
    """The work behind ``python -m moonlit.top.study``: :func:`run_study`'s result."""
    return run_study(cfg)


@hydra_app("top", "study")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
