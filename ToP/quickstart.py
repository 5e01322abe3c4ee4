"""Quickstart section "ToP": token pruning end to end on a generated task, in a few minutes on a CPU.

1. Write the signal-tokens task (``signal_task``), train a WordPiece tokenizer on it and save a
   tiny random 4-layer BERT.
2. Fine-tune it as the teacher (``finetune``), then prune it to 0.5 MAC sparsity (``prune``).
3. Evaluate on the dev split: the dense teacher, the ToP model, and random pruning that keeps
   exactly as many tokens per sample and layer; report accuracy, measured and expected sparsity,
   FLOPs reduction against unpadded and padded (64) input, and kept tokens per layer (plot).

    python -m moonlit.top.quickstart
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from moonlit.common.config import hydra_app
from moonlit.common.data.synthetic import write_tiny_bert
from moonlit.common.report import write_section

from .artifacts import load_pruned
from .data import glue_loader, splits_from_config
from .evaluate import evaluate_top
from .finetune import run_finetune
from .model import ToPModel
from .prune import run_prune
from .signal_task import write_signal_task, write_signal_tokenizer

log = logging.getLogger(__name__)


def _stage_config(cfg: DictConfig, **changes: Any) -> DictConfig:
    stage = copy.deepcopy(cfg)
    OmegaConf.resolve(stage)
    with open_dict(stage):
        for key, value in changes.items():
            stage[key] = value
    return stage


def prepare(cfg: DictConfig) -> None:
    """Generated data, tokenizer and the tiny random BERT the teacher starts from."""
    write_signal_task(cfg.data.data_dir, **cfg.signal_task)
    tiny = cfg.tiny_model
    tokenizer_dir = write_signal_tokenizer(Path(cfg.output_dir) / "tokenizer")
    write_tiny_bert(cfg.model.name_or_path, num_labels=2, hidden_size=tiny.hidden_size, num_layers=tiny.num_layers,
                    num_heads=tiny.num_heads, intermediate_size=tiny.intermediate_size,
                    tokenizer_dir=tokenizer_dir, seed=cfg.trainer.seed)


def compare(cfg: DictConfig, model_dir: Path) -> dict[str, Any]:
    """Dense teacher vs ToP vs random pruning (same kept counts) on the dev split."""
    model, tokenizer = load_pruned(model_dir)
    splits = splits_from_config(cfg.data, tokenizer)
    name, dataset = next(iter(splits.eval_splits.items()))
    loader = glue_loader(dataset, tokenizer, cfg.data.eval_batch_size, shuffle=False)
    from .finetune import load_classifier

    teacher, _ = load_classifier(cfg.teacher_dir, splits.task.num_labels)
    rows = {"dense teacher": evaluate_top(ToPModel(teacher), loader, splits.task, padded_length=splits.padded_length,
                                          prune=False),
            "ToP": evaluate_top(model, loader, splits.task, padded_length=splits.padded_length)}
    model.rank_source = "random"
    randoms = []
    for seed in range(cfg.random_baseline_seeds):
        model.random_generator = torch.Generator().manual_seed(seed)
        randoms.append(evaluate_top(model, loader, splits.task, padded_length=splits.padded_length))
    model.rank_source, model.random_generator = "attention", None
    random_row = dict(randoms[0])
    random_row["metric"] = float(np.mean([r["metric"] for r in randoms]))
    random_row["metric_std"] = float(np.std([r["metric"] for r in randoms]))
    random_row["seeds"] = len(randoms)
    rows["random pruning"] = random_row
    return {"split": name, "rows": rows, "padded_length": splits.padded_length}


def _onnx_accuracy(paths: dict[str, Path], loader: Any, task: Any, reference: dict[str, np.ndarray]) -> dict[str, Any]:
    """Task metric of each ONNX model over the whole loader, and its prediction agreement with torch."""
    import onnxruntime as ort

    from moonlit.common.data.glue_metrics import compute_glue_metrics

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for name, path in paths.items()}
    logits: dict[str, list[np.ndarray]] = {name: [] for name in sessions}
    labels = []
    for batch in loader:
        feed = {key: batch[key].numpy() for key in ("input_ids", "attention_mask")}
        for name, session in sessions.items():
            logits[name].append(session.run(None, feed)[0])
        labels.append(batch["labels"].numpy())
    labels_all = np.concatenate(labels)
    rows = {}
    for name, parts in logits.items():
        predictions = np.concatenate(parts)
        metrics = compute_glue_metrics(task, predictions, labels_all)
        torch_predictions = reference[name.split(" ")[0]]
        rows[name] = {"metric": metrics[task.main_metric],
                      "agreement_with_torch": float((predictions.argmax(-1) == torch_predictions).mean())}
    return rows


def _torch_predictions(model: torch.nn.Module, loader: Any) -> np.ndarray:
    predictions = []
    with torch.inference_mode():
        for batch in loader:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            predictions.append(getattr(logits, "logits", logits).argmax(-1).numpy())
    return np.concatenate(predictions)


def measure_speedup(cfg: DictConfig, model_dir: Path, out: Path) -> dict[str, Any]:
    """Dense teacher vs token-dropping ToP model: latency on one dev batch (torch, ORT FP32, ORT dynamic INT8;
    1 thread, interleaved) and the dev metric of the ONNX models, FP32 and INT8."""
    from moonlit.common.export.int8 import quantize_dynamic_int8
    from moonlit.common.export.onnx import export_onnx
    from moonlit.common.profiling.backends import make_runner
    from moonlit.common.profiling.latency import compare_many

    from .export import LogitsOnly
    from .export import export_pruned_onnx, quantize_pruned_dynamic
    from .finetune import load_classifier
    from .inference import TokenDroppingModel

    model, tokenizer = load_pruned(model_dir)
    splits = splits_from_config(cfg.data, tokenizer)
    dataset = next(iter(splits.eval_splits.values()))
    batch = next(iter(glue_loader(dataset, tokenizer, cfg.speed.batch_size, shuffle=False)))
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask")}
    teacher, _ = load_classifier(cfg.teacher_dir, splits.task.num_labels)
    teacher.eval()
    dropping = TokenDroppingModel(model).eval()
    onnx_dir = out / "onnx"
    paths = {"dense": export_onnx(LogitsOnly(teacher), inputs, onnx_dir / "teacher.onnx", output_names=["logits"],
                                  dynamic_axes={name: {0: "batch", 1: "sequence"} for name in inputs}),
             "ToP": export_pruned_onnx(model, onnx_dir / "top.onnx", example_batch=inputs)}
    int8 = {"dense": quantize_dynamic_int8(paths["dense"], onnx_dir / "teacher_int8.onnx"),
            "ToP": quantize_pruned_dynamic(paths["ToP"], onnx_dir / "top_int8.onnx")}
    threads = cfg.speed.threads
    arms = {"dense torch": make_runner("torch", teacher, inputs, threads=threads),
            "ToP torch": make_runner("torch", dropping, inputs, threads=threads)}
    for name in ("dense", "ToP"):
        arms[f"{name} ORT"] = make_runner("onnxruntime", paths[name], inputs, threads=threads)
        arms[f"{name} ORT-INT8"] = make_runner("onnxruntime", int8[name], inputs, threads=threads)
    comparison = compare_many(arms, rounds=cfg.speed.rounds, warmup=cfg.speed.warmup, baseline="dense torch")
    medians = {name: result.median_ms for name, result in comparison.results.items()}

    loader = glue_loader(dataset, tokenizer, cfg.data.eval_batch_size, shuffle=False)
    reference = {"dense": _torch_predictions(teacher, loader), "ToP": _torch_predictions(dropping, loader)}
    onnx_models = {f"{name} ORT": paths[name] for name in paths} | {f"{name} ORT-INT8": int8[name] for name in int8}
    accuracy = _onnx_accuracy(onnx_models, loader, splits.task, reference)
    backends = ("torch", "ORT", "ORT-INT8")
    return {"batch_size": int(inputs["input_ids"].shape[0]), "padded_length": int(inputs["input_ids"].shape[1]),
            "median_ms": medians,
            "speedup": {backend: medians[f"dense {backend}"] / medians[f"ToP {backend}"] for backend in backends},
            "speedup_vs_dense_torch": {name: medians["dense torch"] / ms for name, ms in medians.items()},
            "onnx_accuracy": accuracy, "metric_name": splits.task.main_metric,
            "environment": comparison.environment}


def plot_kept_tokens(rows: dict[str, dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    styles = {"dense teacher": ("o", "-", 6), "ToP": ("s", "-", 9), "random pruning": ("^", "--", 5)}
    for label, row in rows.items():
        kept = row["mean_kept_tokens_per_layer"]
        marker, line, size = styles.get(label, ("o", "-", 6))
        ax.plot(range(len(kept)), kept, marker=marker, linestyle=line, markersize=size, label=label)
    ax.set_xlabel("encoder layer")
    ax.set_ylabel("mean tokens entering the layer")
    ax.set_xticks(range(len(next(iter(rows.values()))["mean_kept_tokens_per_layer"])))
    ax.set_ylim(bottom=0)
    ax.set_title("Tokens kept per layer (dev split; random keeps ToP's counts by design)", fontsize=10)
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def build_section(cfg: DictConfig, comparison: dict[str, Any], pruned: dict[str, Any],
                  speed: dict[str, Any]) -> dict[str, Any]:
    source = "this repo on generated data (`python -m moonlit.top.quickstart`)"
    table_rows = []
    for label, row in comparison["rows"].items():
        metric = f"{row['metric']:.3f}" + (f" ± {row['metric_std']:.3f}" if "metric_std" in row else "")
        table_rows.append([label, metric, row["measured_mac_sparsity"], row.get("expected_mac_sparsity"),
                           row["flops_reduction"], row["flops_reduction_vs_padded"],
                           " / ".join(f"{v:.1f}" for v in row["mean_kept_tokens_per_layer"])])
    selected = pruned["selected"]
    return {
        "name": "top",
        "title": "ToP: token pruning on a generated signal-token task",
        "order": 10,
        "command": "python -m moonlit.top.quickstart",
        "summary": (
            f"Sentences of {cfg.signal_task.min_words}–{cfg.signal_task.max_words} distractor words with 1–3 planted "
            f"signal words; a share ({cfg.signal_task.negation_rate}) is negated by the word before it ('not', "
            f"'never'), and the label is the resulting polarity. A tiny random {cfg.tiny_model.num_layers}-layer BERT is "
            f"fine-tuned as the teacher, then pruned to {cfg.pruning.target_sparsity} MAC sparsity (pruning the "
            f"inputs of layers {list(pruned['pruning']['prune_layers'])}, {cfg.pruning.bin_num} rank bins); the "
            f"checkpoint was selected on a held-out part of train (epoch {selected['epoch']}). Random pruning "
            f"keeps exactly as many tokens per sample and layer as ToP, chosen at random "
            f"(mean ± std over {cfg.random_baseline_seeds} seeds)."
        ),
        "tables": [{
            "caption": f"Dev split ({comparison['rows']['ToP']['samples']} sentences)",
            "columns": ["model", "accuracy", "measured MAC sparsity", "expected MAC sparsity",
                        "FLOPs reduction (unpadded)", f"FLOPs reduction (padded to {comparison['padded_length']})",
                        "mean tokens per layer"],
            "rows": table_rows,
            "floatfmt": ".3f",
            "source": source,
        }, {
            "caption": (f"Latency of one dev batch ({speed['batch_size']} sentences padded to "
                        f"{speed['padded_length']} tokens), {cfg.speed.threads} thread, interleaved rounds (ms, median)"),
            "columns": ["backend", "dense teacher", "ToP (tokens dropped)", "speedup", "ToP vs dense torch"],
            "rows": [[backend, speed["median_ms"][f"dense {backend}"], speed["median_ms"][f"ToP {backend}"],
                      speed["speedup"][backend], speed["speedup_vs_dense_torch"][f"ToP {backend}"]]
                     for backend in ("torch", "ORT", "ORT-INT8")],
            "floatfmt": ".2f",
            "source": source + "; a 64-wide model is small, so fixed per-op costs cap the speedup",
        }, {
            "caption": (f"Dev {speed['metric_name']} of the exported ONNX models (whole dev split; INT8 = dynamic "
                        "quantization of the linears), and how often each agrees with its torch model's prediction"),
            "columns": ["model", speed["metric_name"], "agreement with torch"],
            "rows": [[name, row["metric"], row["agreement_with_torch"]] for name, row in speed["onnx_accuracy"].items()],
            "floatfmt": ".3f",
            "source": source,
        }],
        "figures": [{"path": "kept_tokens.png", "caption": "mean tokens entering each layer"}],
        "notes": [
            "Measured sparsity counts the tokens each sample really kept (the MAC model of the paper, this "
            "model's dimensions); expected sparsity is the gate-probability estimate the constraint trains on.",
            "FLOPs reduction against padded input uses the task's fixed length, as the paper's FLOPs column does.",
        ],
    }


def run_quickstart(cfg: DictConfig) -> dict[str, Any]:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    prepare(cfg)
    teacher = run_finetune(_stage_config(cfg, output_dir=str(out / "teacher")))
    pruned = run_prune(_stage_config(cfg, output_dir=str(out / "prune"), teacher_dir=str(out / "teacher" / "model")))
    comparison = compare(cfg, out / "prune" / "model")
    speed = measure_speedup(cfg, out / "prune" / "model", out)
    results = {"teacher": teacher, "prune": pruned, "comparison": comparison, "speed": speed}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    plot_kept_tokens(comparison["rows"], out / "kept_tokens.png")
    write_section(out, build_section(cfg, comparison, pruned, speed))
    for label, row in comparison["rows"].items():
        log.info("%s: accuracy %.3f, measured sparsity %.3f", label, row["metric"], row["measured_mac_sparsity"])
    return results


@hydra_app("top", "quickstart")
def main(cfg: DictConfig) -> None:
    run_quickstart(cfg)


if __name__ == "__main__":
    main()
