"""Stage 1 of ToP: fine-tune the dense teacher on a GLUE task.

The teacher is the starting point of the student and the source of both distillation signals.
Checkpoint selection uses the held-out part of train (``selection``), not the reported dev split.

    python -m moonlit.top.finetune experiment=sst2 model.name_or_path=bert-base-uncased data.data_dir=/data/glue
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from moonlit.common.config import hydra_app, to_container
from moonlit.common.data.glue import GlueTask, get_glue_task
from moonlit.common.data.loaders import set_epoch
from moonlit.common.train.dist import resolve_device
from moonlit.common.train.seed import seed_everything

from .artifacts import from_pretrained
from .data import glue_loader, model_inputs, splits_from_config
from .evaluate import evaluate_top, format_result
from .model import ToPModel

log = logging.getLogger(__name__)


def task_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    if regression:
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
    return F.cross_entropy(logits, labels)


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                    constant_groups: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then linear decay for the first param groups; the last ``constant_groups`` keep their lr."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    def constant(step: int) -> float:
        return 1.0

    decayed = len(optimizer.param_groups) - constant_groups
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor] * decayed + [constant] * constant_groups)


def load_classifier(name_or_path: str, num_labels: int) -> tuple[torch.nn.Module, Any]:
    """HF model (eager attention: ToP reads attention probabilities) and tokenizer, hub name or folder;
    a missing folder, or one without ``config.json``, raises :class:`~moonlit.common.errors.InputError`."""
    model = from_pretrained(AutoModelForSequenceClassification, name_or_path, num_labels=num_labels,
                            attn_implementation="eager", ignore_mismatched_sizes=True)
    return model, from_pretrained(AutoTokenizer, name_or_path)


def setup_run(cfg: DictConfig) -> tuple[torch.device, Path, GlueTask]:
    """What both ToP stages do first: refuse multi-process runs, seed, resolve the device, make the output folder."""
    if cfg.trainer.distributed:
        raise ValueError("ToP training runs in one process (trainer=cpu, or trainer.device=cuda); "
                         "multi-process training (trainer=ddp) is not implemented for it yet")
    seed_everything(cfg.trainer.seed)
    device = resolve_device(cfg.trainer.device)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return device, out_dir, get_glue_task(cfg.data.task)


def run_finetune(cfg: DictConfig) -> dict[str, Any]:
    """Fine-tune ``cfg.model.name_or_path`` on ``cfg.data.task``; saves the best (by selection) to
    ``output_dir/model``."""
    device, out_dir, task = setup_run(cfg)
    model, tokenizer = load_classifier(cfg.model.name_or_path, task.num_labels)
    model.to(device)
    splits = splits_from_config(cfg.data, tokenizer)
    train_loader = glue_loader(splits.train, tokenizer, cfg.data.batch_size, shuffle=True, seed=cfg.trainer.seed)
    selection_loader = glue_loader(splits.selection, tokenizer, cfg.data.eval_batch_size, shuffle=False)
    optimizer = instantiate(cfg.finetune.optimizer)(model.parameters())
    total_steps = cfg.finetune.epochs * len(train_loader)
    scheduler = linear_schedule(optimizer, int(math.ceil(cfg.finetune.warmup_ratio * total_steps)), total_steps)
    dense = ToPModel(model)
    best: dict[str, Any] | None = None
    history = []
    with instantiate(cfg.logger)(out_dir, run_name=f"top-finetune-{task.name}", config=to_container(cfg)) as logger:
        step = 0
        for epoch in range(cfg.finetune.epochs):
            set_epoch(train_loader, epoch)
            model.train()
            for batch in tqdm(train_loader, desc=f"teacher epoch {epoch + 1}/{cfg.finetune.epochs}", leave=False):
                logits = model(**model_inputs(batch, device)).logits
                loss = task_loss(logits, batch["labels"].to(device), task.is_regression)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.finetune.max_grad_norm)
                optimizer.step()
                scheduler.step()
                step += 1
                if step % cfg.trainer.log_every == 0:
                    logger.log({"train/loss": loss.item(), "train/lr": scheduler.get_last_lr()[0]}, step=step)
            selection = evaluate_top(dense, selection_loader, task, prune=False, device=device)
            history.append({"epoch": epoch + 1, "selection_metric": selection["metric"]})
            logger.log({"selection/metric": selection["metric"]}, step=step)
            log.info("teacher epoch %d: selection %s = %.4f", epoch + 1, task.main_metric, selection["metric"])
            if best is None or selection["metric"] > best["selection_metric"]:
                best = {"epoch": epoch + 1, "selection_metric": selection["metric"]}
                model.save_pretrained(out_dir / "model")
                tokenizer.save_pretrained(out_dir / "model")
        best_model, _ = load_classifier(str(out_dir / "model"), task.num_labels)
        reported = {}
        for name, dataset in splits.eval_splits.items():
            loader = glue_loader(dataset, tokenizer, cfg.data.eval_batch_size, shuffle=False)
            reported[name] = evaluate_top(ToPModel(best_model.to(device)), loader, task, prune=False,
                                          padded_length=splits.padded_length, device=device)
            log.info("teacher %s: %s", name, format_result(reported[name]))
        summary = {"task": task.name, "best": best, "history": history, "eval": reported,
                   "model_dir": str(out_dir / "model")}
        logger.log_summary({f"{name}/{task.main_metric}": r["metric"] for name, r in reported.items()})
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run(cfg: DictConfig) -> dict[str, Any]:
    """The work behind ``python -m moonlit.top.finetune``: :func:`run_finetune`'s result."""
    return run_finetune(cfg)


@hydra_app("top", "finetune")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
