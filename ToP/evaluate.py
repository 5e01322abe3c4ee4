"""Honest accounting of a token-pruned model (ToP §5): metric, measured and expected sparsity.

Every evaluation reports the task metric; the MAC sparsity *measured* from the tokens each sample
really kept (the reference only reports the gate-based expectation); the expected sparsity from
the gate probabilities; the FLOPs reduction against unpadded dense input and against dense input
padded to the task's fixed length (the baseline of the paper's FLOPs column); and the mean number
of tokens entering each layer.

    python -m moonlit.top.evaluate model_dir=outputs/top/prune/sst2/model experiment=sst2
    python -m moonlit.top.evaluate model_format=released model_dir=/models/bert-base-uncased-top-pruned-sst2 \
        tokenizer=bert-base-uncased experiment=sst2 data.data_dir=/data/glue
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from moonlit.common.config import hydra_app
from moonlit.common.data.glue import GlueTask
from moonlit.common.data.glue_metrics import compute_glue_metrics
from moonlit.common.errors import InputError

from .constraint import encoder_macs, expected_lengths
from .data import model_inputs
from .model import ToPModel

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_top(model: ToPModel, loader: Any, task: GlueTask, *, padded_length: int | None = None,
                 prune: bool = True, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Metric and accounting of ``model`` over ``loader`` (deterministic gates, eval mode)."""
    was_training = model.training
    model.eval()
    logits, labels, kept, lengths, protected = [], [], [], [], []
    for batch in loader:
        out = model(**model_inputs(batch, torch.device(device)), prune=prune)
        logits.append(out.logits.float().cpu())
        labels.append(batch["labels"].cpu())
        kept.append(out.kept_counts.cpu())
        lengths.append(out.input_lengths.cpu())
        protected.append(out.protected_counts.cpu())
    model.train(was_training)
    if not logits:
        raise ValueError("evaluate_top got an empty loader")
    logits_all, labels_all = torch.cat(logits), torch.cat(labels)
    predictions = logits_all.squeeze(-1) if task.is_regression else logits_all
    result: dict[str, Any] = {"metrics": compute_glue_metrics(task, predictions.numpy(), labels_all.numpy())}
    result["metric"] = result["metrics"][task.main_metric]
    result.update(accounting(model, torch.cat(kept), torch.cat(lengths), torch.cat(protected), padded_length,
                             prune=prune))
    result["samples"] = int(labels_all.numel())
    return result


def accounting(model: ToPModel, kept: torch.Tensor, lengths: torch.Tensor, protected: torch.Tensor,
               padded_length: int | None, *, prune: bool = True) -> dict[str, Any]:
    """Measured/expected MAC sparsity and FLOPs reductions from per-sample, per-layer kept counts."""
    dims = model.dims
    kept64 = kept.to(torch.float64)
    dense = lengths.to(torch.float64).unsqueeze(1).expand_as(kept64)
    pruned_macs = float(encoder_macs(kept64, dims).sum())
    dense_macs = float(encoder_macs(dense, dims).sum())
    out: dict[str, Any] = {
        "measured_mac_sparsity": 1.0 - pruned_macs / dense_macs,
        "flops_reduction": dense_macs / pruned_macs,
        "mean_kept_tokens_per_layer": [float(v) for v in kept64.mean(0)],
        "mean_input_length": float(lengths.float().mean()),
    }
    if padded_length is not None:
        padded = torch.full_like(kept64, float(padded_length))
        out["padded_length"] = padded_length
        out["flops_reduction_vs_padded"] = float(encoder_macs(padded, dims).sum()) / pruned_macs
    if prune and model.gates is not None and model.pruning is not None:
        with torch.no_grad():
            ratio = model.gates.expected_keep_ratio().double()
            expected = expected_lengths(lengths, protected, ratio, model.pruning.prune_layers, dims.num_layers)
        out["expected_mac_sparsity"] = 1.0 - float(encoder_macs(expected, dims).sum()) / dense_macs
    return out


def format_result(result: dict[str, Any]) -> str:
    parts = [f"metric {result['metric']:.4f}", f"measured sparsity {result['measured_mac_sparsity']:.3f}"]
    if "expected_mac_sparsity" in result:
        parts.append(f"expected {result['expected_mac_sparsity']:.3f}")
    parts.append(f"FLOPs ÷{result['flops_reduction']:.2f}")
    if "flops_reduction_vs_padded" in result:
        parts.append(f"vs padded ÷{result['flops_reduction_vs_padded']:.2f}")
    return ", ".join(parts)


def run_evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate a saved pruned model (``model_dir``) on the task's eval splits."""
    from transformers import AutoTokenizer

    from .artifacts import from_pretrained, load_pruned
    from .checkpoints import released_top_model
    from .data import glue_loader, splits_from_config

    if cfg.model_format == "moonlit":
        model, tokenizer = load_pruned(cfg.model_dir)
    elif cfg.model_format == "released":  # senfu/bert-base-uncased-top-pruned-<task>, reference semantics
        model, tokenizer = released_top_model(cfg.model_dir), None
    else:
        raise InputError(f"model_format must be 'moonlit' or 'released', got {cfg.model_format!r}")
    if cfg.tokenizer is not None or tokenizer is None:
        tokenizer = from_pretrained(AutoTokenizer, cfg.tokenizer or cfg.model_dir)
    splits = splits_from_config(cfg.data, tokenizer)
    results = {}
    for name, dataset in splits.eval_splits.items():
        loader = glue_loader(dataset, tokenizer, cfg.data.eval_batch_size, shuffle=False)
        results[name] = evaluate_top(model, loader, splits.task, padded_length=splits.padded_length)
        log.info("%s %s: %s", splits.task.name, name, format_result(results[name]))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_results.json").write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    return results


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def run(cfg: DictConfig) -> dict[str, Any]:
    """The work behind ``python -m moonlit.top.evaluate``: :func:`run_evaluate`'s result."""
    return run_evaluate(cfg)


@hydra_app("top", "evaluate")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
