"""Quickstart section "ToP": token pruning end to end in a few minutes on a CPU.

With the real data (``bash scripts/get_data.sh``): MiniLM-L6 fine-tuned on a slice of the Rotten
Tomatoes sentences (task ``rt``). Without it, or with ``data_source=generated``: a tiny random
4-layer BERT on the generated signal-tokens task (``signal_task``, its own WordPiece tokenizer).

1. Fine-tune the teacher (``finetune``), then prune it to 0.5 MAC sparsity (``prune``).
2. Evaluate on the dev split: the dense teacher, the ToP model, and static top-k and random
   dropping that keep exactly as many tokens per sample and layer; report the metric, measured
   and expected sparsity, FLOPs reduction against unpadded and padded (64) input, and kept tokens
   per layer (plot).
3. Time dense vs token dropping on one dev batch (torch, ORT, ORT dynamic INT8) and report the
   ONNX models' dev metric.

    python -m moonlit.top.quickstart
    python -m moonlit.top.quickstart data_source=generated
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from moonlit.common.config import hydra_app
from moonlit.common.data.synthetic import write_tiny_bert
from moonlit.common.errors import InputError
from moonlit.common.report import write_section

from .artifacts import load_pruned
from .baselines import compare_baselines
from .data import glue_loader, splits_from_config
from .finetune import run_finetune
from .prune import run_prune
from .signal_task import write_signal_task, write_signal_tokenizer
from .study import (
    export_dense_and_pruned,
    measure_latency,
    onnx_metrics,
    real_batches,
    torch_logits,
)

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


REAL_FILES = ("rt/train.tsv", "rt/dev.tsv", "minilm-l6-h384/config.json", "minilm-l6-h384/model.safetensors")


def resolve_data_source(cfg: DictConfig) -> tuple[DictConfig, str]:
    """(config, "real" | "generated"): ``data_source=auto`` uses the real data when it is all there."""
    choice = cfg.data_source
    if choice not in ("auto", "real", "generated"):
        raise InputError(f"data_source must be auto, real or generated, got {choice!r}")
    if choice == "generated":
        return cfg, "generated"
    root = Path(cfg.paths.data_dir)
    missing = [name for name in REAL_FILES if not (root / name).is_file()]
    if missing:
        why = f"{', '.join(str(root / name) for name in missing)} missing"
        if choice == "real":
            raise InputError(f"data_source=real but {why}; run bash scripts/get_data.sh (MOONLIT_DATA sets the folder)")
        log.warning("real data not found (%s): the ToP section runs on the generated task; "
                    "bash scripts/get_data.sh fetches MiniLM-L6 and Rotten Tomatoes", why)
        return cfg, "generated"
    merged = copy.deepcopy(cfg)
    with open_dict(merged):
        for group, values in cfg.real.items():
            merged[group] = OmegaConf.merge(merged[group], values)
    return merged, "real"


def compare(cfg: DictConfig, model_dir: Path) -> dict[str, Any]:
    """Dense teacher, ToP, static top-k and random dropping (ToP's kept counts) on the dev split."""
    from .finetune import load_classifier

    model, tokenizer = load_pruned(model_dir)
    splits = splits_from_config(cfg.data, tokenizer)
    name, dataset = next(iter(splits.eval_splits.items()))
    loader = glue_loader(dataset, tokenizer, cfg.data.eval_batch_size, shuffle=False)
    teacher, _ = load_classifier(cfg.teacher_dir, splits.task.num_labels)
    rows = compare_baselines(model, teacher.eval(), loader, splits.task, padded_length=splits.padded_length,
                             random_seeds=cfg.random_baseline_seeds)
    return {"split": name, "rows": rows, "padded_length": splits.padded_length}


def measure_speedup(cfg: DictConfig, model_dir: Path, out: Path) -> dict[str, Any]:
    """Dense teacher vs token-dropping ToP model: latency on one dev batch (torch, ORT FP32, ORT dynamic INT8;
    1 thread, interleaved) and the dev metric of the ONNX models, FP32 and INT8."""
    from .finetune import load_classifier
    from .inference import TokenDroppingModel

    model, tokenizer = load_pruned(model_dir)
    splits = splits_from_config(cfg.data, tokenizer)
    dataset = next(iter(splits.eval_splits.values()))
    batches = real_batches(dataset, tokenizer, cfg.speed.batch_size, 1)
    teacher, _ = load_classifier(cfg.teacher_dir, splits.task.num_labels)
    teacher.eval()
    onnx = export_dense_and_pruned(teacher, {"ToP": model}, batches[0], out / "onnx")
    speed = measure_latency(teacher, {"ToP": model}, onnx, batches, threads=cfg.speed.threads,
                            rounds=cfg.speed.rounds, warmup=cfg.speed.warmup, int8=True)
    loader = glue_loader(dataset, tokenizer, cfg.data.eval_batch_size, shuffle=False)
    speed["onnx_accuracy"] = {
        "dense": onnx_metrics(onnx["dense"], loader, splits.task, torch_logits(teacher, loader).argmax(-1)),
        "ToP": onnx_metrics(onnx["ToP"], loader, splits.task,
                            torch_logits(TokenDroppingModel(model).eval(), loader).argmax(-1))}
    speed["padded_length"] = int(batches[0]["input_ids"].shape[1])
    speed["metric_name"] = splits.task.main_metric
    return speed


def plot_kept_tokens(rows: dict[str, dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    styles = {"dense teacher": ("o", "-", 6), "ToP": ("s", "-", 9), "static top-k": ("v", ":", 7),
              "random": ("^", "--", 5)}
    for label, row in rows.items():
        kept = row["mean_kept_tokens_per_layer"]
        marker, line, size = styles.get(label, ("o", "-", 6))
        ax.plot(range(len(kept)), kept, marker=marker, linestyle=line, markersize=size, label=label)
    ax.set_xlabel("encoder layer")
    ax.set_ylabel("mean tokens entering the layer")
    ax.set_xticks(range(len(next(iter(rows.values()))["mean_kept_tokens_per_layer"])))
    ax.set_ylim(bottom=0)
    ax.set_title("Tokens kept per layer (dev split; the baselines keep ToP's counts by design)", fontsize=10)
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def build_section(cfg: DictConfig, comparison: dict[str, Any], pruned: dict[str, Any],
                  speed: dict[str, Any], data_source: str) -> dict[str, Any]:
    if data_source == "real":
        source = (f"this repo on real data (MiniLM-L6, Rotten Tomatoes; {cfg.data.max_train} training sentences, "
                  f"{cfg.finetune.epochs} + {cfg.prune.epochs} epochs; `python -m moonlit.top.quickstart`)")
        title = "ToP: token pruning of MiniLM-L6 on Rotten Tomatoes sentences"
        task_text = (f"MiniLM-L6 (6 layers, 384 wide) is fine-tuned as the teacher on {cfg.data.max_train} Rotten "
                     "Tomatoes review sentences (task `rt`: fresh vs rotten, split by movie); the full study is "
                     "`bash scripts/reproduce_top_real.sh`.")
    else:
        source = "this repo on generated data (`python -m moonlit.top.quickstart`)"
        title = "ToP: token pruning on a generated signal-token task"
        task_text = (f"Sentences of {cfg.signal_task.min_words}–{cfg.signal_task.max_words} distractor words with 1–3 "
                     f"planted signal words; a share ({cfg.signal_task.negation_rate}) is negated by the word before "
                     f"it ('not', 'never'), and the label is the resulting polarity. A tiny random "
                     f"{cfg.tiny_model.num_layers}-layer BERT is fine-tuned as the teacher.")
    table_rows = []
    for label, row in comparison["rows"].items():
        metric = f"{row['metric']:.3f}" + (f" ± {row['metric_std']:.3f}" if "metric_std" in row else "")
        table_rows.append([label, metric, row["measured_mac_sparsity"], row.get("expected_mac_sparsity"),
                           row["flops_reduction"], row["flops_reduction_vs_padded"],
                           " / ".join(f"{v:.1f}" for v in row["mean_kept_tokens_per_layer"])])
    selected = pruned["selected"]
    backends = ("torch", "ORT", "ORT-INT8")
    return {
        "name": "top",
        "title": title,
        "order": 10,
        "command": "python -m moonlit.top.quickstart",
        "summary": (
            f"{task_text} It is then pruned to {cfg.pruning.target_sparsity} MAC sparsity (pruning the inputs of "
            f"layers {list(pruned['pruning']['prune_layers'])}, {cfg.pruning.bin_num} rank bins); the checkpoint was "
            f"selected on a held-out part of train (epoch {selected['epoch']}). Static top-k (the teacher's own "
            f"attention ranking, no training) and random dropping keep exactly as many tokens per sample and layer "
            f"as ToP (random: mean ± std over {cfg.random_baseline_seeds} seeds)."
        ),
        "tables": [{
            "caption": f"Dev split ({comparison['rows']['ToP']['samples']} sentences)",
            "columns": ["model", comparison_metric(cfg), "measured MAC sparsity", "expected MAC sparsity",
                        "FLOPs reduction (unpadded)", f"FLOPs reduction (padded to {comparison['padded_length']})",
                        "mean tokens per layer"],
            "rows": table_rows,
            "floatfmt": ".3f",
            "source": source,
        }, {
            "caption": (f"Latency of one dev batch ({speed['batch_size']} sentences padded to "
                        f"{speed['padded_length']} tokens), {cfg.speed.threads} thread, interleaved rounds "
                        "(ms, median)"),
            "columns": ["backend", "dense teacher", "ToP (tokens dropped)", "speedup", "MAC ÷ of the batch"],
            "rows": [[backend, speed["median_ms"][f"dense {backend}"], speed["median_ms"][f"ToP {backend}"],
                      speed["speedup"]["ToP"][backend], speed["mac_reduction_of_timed_batches"]["ToP"]]
                     for backend in backends],
            "floatfmt": ".2f",
            "source": source,
        }, {
            "caption": (f"Dev {speed['metric_name']} of the exported ONNX models (whole dev split; INT8 = dynamic "
                        "quantization of the linears), and how often each agrees with its torch model's prediction"),
            "columns": ["model", "precision", speed["metric_name"], "agreement with torch"],
            "rows": [[name, precision, row["metric"], row["agreement_with_torch"]]
                     for name, rows in speed["onnx_accuracy"].items() for precision, row in rows.items()],
            "floatfmt": ".3f",
            "source": source,
        }],
        "figures": [{"path": "kept_tokens.png", "caption": "mean tokens entering each layer"}],
        "notes": [
            "Measured sparsity counts the tokens each sample really kept (the MAC model of the paper, this "
            "model's dimensions); expected sparsity is the gate-probability estimate the constraint trains on.",
            "FLOPs reduction against padded input uses the task's fixed length, as the paper's FLOPs column does.",
            "MAC ÷ of the batch: what the batched computation does (every layer runs on the batch's longest kept "
            "count, dense on the batch's longest sentence), the ceiling of the speedup.",
        ],
    }


def comparison_metric(cfg: DictConfig) -> str:
    from moonlit.common.data.glue import get_glue_task

    return get_glue_task(cfg.data.task).main_metric


def run_quickstart(cfg: DictConfig) -> dict[str, Any]:
    cfg, data_source = resolve_data_source(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if data_source == "generated":
        prepare(cfg)
    log.info("ToP quickstart on %s data (task %s, model %s)", data_source, cfg.data.task, cfg.model.name_or_path)
    teacher = run_finetune(_stage_config(cfg, output_dir=str(out / "teacher")))
    pruned = run_prune(_stage_config(cfg, output_dir=str(out / "prune"), teacher_dir=str(out / "teacher" / "model")))
    comparison = compare(cfg, out / "prune" / "model")
    speed = measure_speedup(cfg, out / "prune" / "model", out)
    results = {"data_source": data_source, "teacher": teacher, "prune": pruned, "comparison": comparison,
               "speed": speed}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    plot_kept_tokens(comparison["rows"], out / "kept_tokens.png")
    write_section(out, build_section(cfg, comparison, pruned, speed, data_source))
    for label, row in comparison["rows"].items():
        log.info("%s: %s %.3f, measured sparsity %.3f", label, comparison_metric(cfg), row["metric"],
                 row["measured_mac_sparsity"])
    return results


def run(cfg: DictConfig) -> dict[str, Any]:
    """The work behind ``python -m moonlit.top.quickstart``: :func:`run_quickstart`'s result."""
    return run_quickstart(cfg)


@hydra_app("top", "quickstart")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
