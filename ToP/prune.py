"""Stage 2 of ToP: constraint-aware, ranking-distilled token pruning of a fine-tuned model (ToP §4).

The student starts from the fine-tuned teacher and learns, per pruning location, hard-concrete
gates over rank bins plus a gate that switches the location on. The loss is

    prediction distillation (KL at T=2; MSE on labels for STS-B)
    + λ1 (ŝ - t) + λ2 (ŝ - t)²                      (ŝ: expected MAC sparsity, t ramped to the target)
    + α·max(0.01, 1 - warm-up progress) · ARP-2 ranking distillation
      (early student layers' token scores vs the teacher's last-layer ranking on its top-K tokens)

with the λs trained by gradient ascent. Every epoch the model is evaluated with its deterministic
gates on the held-out selection split; the kept checkpoint is the best one that meets the
constraint (measured sparsity ≥ target − tolerance) once the target has been reached.

    python -m moonlit.top.prune experiment=sst2 teacher_dir=outputs/top/finetune/sst2/model
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from moonlit.common.config import hydra_app, to_container
from moonlit.common.data.loaders import set_epoch
from moonlit.common.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    move_aside,
    save_checkpoint,
)

from .artifacts import load_pruned, save_pruned
from .constraint import (
    LagrangianConstraint,
    deployed_lengths,
    encoder_macs,
    expected_lengths,
)
from .data import glue_loader, model_inputs, splits_from_config
from .evaluate import evaluate_top, format_result
from .finetune import linear_schedule, load_classifier, setup_run
from .losses import (
    prediction_distillation_loss,
    ranking_distillation_loss,
    ranking_loss_weight,
    regression_loss,
)
from .masks import TokenGates
from .model import PruningConfig, ToPModel

log = logging.getLogger(__name__)


def default_ranking_layers(num_layers: int) -> list[int]:
    """Student layers whose scores learn the teacher's ranking: 1..3 for 12 layers (reference), ≥ 1 layer."""
    return list(range(1, max(2, num_layers // 3)))


def build_pruning(cfg: DictConfig, tokenizer: Any, num_layers: int) -> PruningConfig:
    p = cfg.pruning
    layers = tuple(p.prune_layers) if p.prune_layers is not None else tuple(range(p.first_prune_layer, num_layers))
    if p.reference_semantics:
        return PruningConfig.reference_semantics(layers, p.bin_num)
    return PruningConfig(layers, p.bin_num, special_token_ids=tuple(tokenizer.all_special_ids),
                         protect_special=p.protect_special, score_rows=p.score_rows,
                         soft_attention_mask=p.soft_attention_mask, scale_hidden=p.scale_hidden)


def expected_sparsity(model: ToPModel, lengths: torch.Tensor, protected: torch.Tensor) -> torch.Tensor:
    """Differentiable expected MAC sparsity of a batch under the gates' keep probabilities.

    Summed MACs over summed dense MACs, or (``pruning.batch_sparsity="mean_of_ratios"``, the
    reference) the mean of the samples' own sparsities, which weighs a short sentence as much as a long one.
    """
    ratio = model.gates.expected_keep_ratio()
    expected = expected_lengths(lengths, protected, ratio, model.pruning.prune_layers, model.dims.num_layers)
    dense = lengths.to(expected.dtype).unsqueeze(1).expand_as(expected)
    pruned_macs, dense_macs = encoder_macs(expected, model.dims), encoder_macs(dense, model.dims)
    if model.pruning.batch_sparsity == "mean_of_ratios":
        return 1.0 - (pruned_macs / dense_macs).mean()
    return 1.0 - pruned_macs.sum() / dense_macs.sum()


@torch.no_grad()
def calibrate_sparsity(model: ToPModel, loader: Any, task: Any, target: float, *, padded_length: int | None = None,
                       device: torch.device | str = "cpu", max_evaluations: int = 2000) -> dict[str, Any]:
    """Choose the deployed kept-bin count per location so the *measured* sparsity meets ``target``.

    Training constrains the expected sparsity; deployment rounds it to whole bins per location and
    rank bins round it again per sentence, which moves the measured value by a few points on
    short inputs. Starting from the gates' own counts, this greedily moves one bin at one location
    at a time (the move that lands closest to the target) until no move helps, and stores the
    counts in ``gates.deployed_kept_bins``. Run it on the selection split, never the reported one.

    A candidate's measured sparsity follows from the sentence lengths alone
    (:func:`~moonlit.top.constraint.deployed_lengths`), so the search runs no model; one model
    evaluation at the end confirms the chosen counts give exactly the sparsity the search saw.
    """
    gates, dims = model.gates, model.dims
    lengths, protected = [], []
    for batch in loader:
        valid = batch["attention_mask"].bool()
        lengths.append(valid.sum(dim=1))
        protected.append(model._protected(batch["input_ids"], valid).sum(dim=1))
    lengths_all, protected_all = torch.cat(lengths), torch.cat(protected)
    dense_macs = float(encoder_macs(lengths_all.double().unsqueeze(1).expand(-1, dims.num_layers), dims).sum())
    counts = gates.deployed_bins().clone()
    evaluations = 0

    def measured(candidate: torch.Tensor) -> float:
        nonlocal evaluations
        evaluations += 1
        gates.deployed_kept_bins.copy_(candidate)
        values = gates.deterministic()
        kept = deployed_lengths(lengths_all, protected_all, values.bins, values.layers, model.pruning.prune_layers,
                                dims.num_layers)
        return 1.0 - float(encoder_macs(kept.double(), dims).sum()) / dense_macs

    start = best = measured(counts)
    while evaluations < max_evaluations:
        moves = []
        for location in range(len(counts)):
            for step in (-1, 1):
                candidate = counts.clone()
                candidate[location] += step
                if 0 <= candidate[location] <= gates.bin_num:
                    moves.append(candidate)
        scored = [(abs(measured(c) - target), c) for c in moves[: max(0, max_evaluations - evaluations)]]
        if not scored:
            break
        gap, candidate = min(scored, key=lambda item: item[0])
        if gap >= abs(best - target):
            break
        counts = candidate
        best = measured(counts)
    gates.deployed_kept_bins.copy_(counts)
    check = evaluate_top(model, loader, task, padded_length=padded_length, device=device)["measured_mac_sparsity"]
    if abs(check - best) > 1e-9:
        raise RuntimeError(f"calibration predicted measured sparsity {best:.12f} from the lengths, but the model "
                           f"measures {check:.12f}: the count model and the model disagree")
    return {"before": start, "measured_mac_sparsity": best, "kept_bins": counts.tolist(), "evaluations": evaluations}


def run_prune(cfg: DictConfig) -> dict[str, Any]:
    """Prune ``cfg.teacher_dir`` on ``cfg.data.task`` to ``cfg.pruning.target_sparsity``; returns the results."""
    device, out_dir, task = setup_run(cfg)
    teacher, tokenizer = load_classifier(cfg.teacher_dir, task.num_labels)
    student, _ = load_classifier(cfg.teacher_dir, task.num_labels)
    teacher.to(device).eval().requires_grad_(False)
    student.to(device)
    p = cfg.pruning
    pruning = build_pruning(cfg, tokenizer, student.config.num_hidden_layers)
    reference = p.reference_semantics
    gates = TokenGates(len(pruning.prune_layers), pruning.bin_num, monotone=p.monotone_bins and not reference,
                       bin_init=p.bin_init, layer_init=p.layer_init,
                       deterministic_rule="threshold" if reference else p.deterministic_rule).to(device)
    model = ToPModel(student, pruning, gates)
    teacher_model = ToPModel(teacher)

    splits = splits_from_config(cfg.data, tokenizer)
    train_loader = glue_loader(splits.train, tokenizer, cfg.data.batch_size, shuffle=True, seed=cfg.trainer.seed)
    selection_loader = glue_loader(splits.selection, tokenizer, cfg.data.eval_batch_size, shuffle=False)
    eval_loaders = {name: glue_loader(ds, tokenizer, cfg.data.eval_batch_size, shuffle=False)
                    for name, ds in splits.eval_splits.items()}

    steps_per_epoch = len(train_loader)
    total_steps = cfg.prune.epochs * steps_per_epoch
    warmup_steps = max(1, int(round(cfg.prune.sparsity_warmup_epochs * steps_per_epoch)))
    constraint = LagrangianConstraint(p.target_sparsity, warmup_steps).to(device)
    # One optimizer, three groups: the student (scheduled), the gates, and the λs, which ascend
    # (maximize=True; the reference uses a negative learning rate for the same update).
    optimizer = instantiate(cfg.prune.optimizer)([
        {"params": list(student.parameters())},
        {"params": list(gates.parameters()), "lr": cfg.prune.reg_lr, "weight_decay": 0.0},
        {"params": constraint.lambda_parameters(), "lr": cfg.prune.reg_lr, "weight_decay": 0.0, "maximize": True},
    ])
    scheduler = linear_schedule(optimizer, int(math.ceil(cfg.prune.warmup_ratio * total_steps)), total_steps,
                                constant_groups=2)
    ranking_layers = list(cfg.prune.ranking_layers or default_ranking_layers(student.config.num_hidden_layers))

    # Everything a resumed run needs, checkpointed atomically at each epoch end (the loaders draw
    # nothing from the global RNGs, which the checkpoint restores). The inputs (teacher, data) were
    # all read above: only now is an earlier run's checkpoint folder moved aside for a fresh start.
    state = torch.nn.ModuleDict({"student": student, "gates": gates, "constraint": constraint})
    checkpoint_dir = out_dir / "checkpoints"
    step, best, history = 0, None, []
    if not cfg.resume:
        move_aside(checkpoint_dir)
    if cfg.resume and latest_checkpoint(checkpoint_dir) is not None:
        resumed = load_checkpoint(checkpoint_dir, state, optimizer, scheduler, restore_rng=True)
        step, best, history = resumed.step, resumed.extra.get("best"), resumed.extra.get("history", [])
        log.info("resumed from %s (step %d, epoch %d)", resumed.path, step, step // steps_per_epoch)
    run_name = f"top-prune-{task.name}"
    with instantiate(cfg.logger)(out_dir, run_name=run_name, config=to_container(cfg)) as logger:
        for epoch in range(step // steps_per_epoch, cfg.prune.epochs):
            set_epoch(train_loader, epoch)
            model.train()
            progress = tqdm(train_loader, desc=f"prune epoch {epoch + 1}/{cfg.prune.epochs}", leave=False)
            for batch in progress:
                inputs = model_inputs(batch, device)
                labels = batch["labels"].to(device)
                with torch.no_grad():
                    teacher_out = teacher_model(**inputs)
                out = model(**inputs)
                if task.is_regression:
                    task_term = regression_loss(out.logits.squeeze(-1), labels)
                else:
                    task_term = prediction_distillation_loss(out.logits, teacher_out.logits, cfg.prune.temperature)
                sparsity = expected_sparsity(model, out.input_lengths, out.protected_counts)
                constraint_term = constraint(sparsity, step)
                candidates = inputs["attention_mask"].bool() & ~out.protected
                rank_term = ranking_distillation_loss([out.scores[i] for i in ranking_layers], teacher_out.scores[-1],
                                                      candidates, cfg.prune.top_k)
                rank_weight = ranking_loss_weight(cfg.prune.ranking_alpha, min(1.0, step / warmup_steps))
                loss = task_term + constraint_term + rank_weight * rank_term
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.prune.max_grad_norm)
                optimizer.step()
                scheduler.step()
                gates.clamp_()
                step += 1
                progress.set_postfix(sparsity=f"{sparsity.item():.3f}", target=f"{constraint.target(step):.3f}")
                if step % cfg.trainer.log_every == 0:
                    logger.log({"train/loss": loss.item(), "train/task": task_term.item(),
                                "train/constraint": constraint_term.item(), "train/ranking": rank_term.item(),
                                "train/expected_sparsity": sparsity.item(), "train/target": constraint.target(step),
                                "train/lambda_1": constraint.lambda_1.item(),
                                "train/lambda_2": constraint.lambda_2.item()}, step=step)
            selection = evaluate_top(model, selection_loader, task, padded_length=splits.padded_length, device=device)
            dev = {name: evaluate_top(model, loader, task, padded_length=splits.padded_length, device=device)
                   for name, loader in eval_loaders.items()}
            record = {"epoch": epoch + 1, "step": step, "target": constraint.target(step),
                      "selection": _brief(selection), "eval": {name: _brief(r) for name, r in dev.items()}}
            history.append(record)
            logger.log({"selection/metric": selection["metric"],
                        "selection/measured_sparsity": selection["measured_mac_sparsity"]}, step=step)
            log.info("epoch %d (target %.3f): selection %s", epoch + 1, constraint.target(step),
                     format_result(selection))
            ramped = step >= warmup_steps
            meets = selection["measured_mac_sparsity"] >= p.target_sparsity - cfg.prune.sparsity_tolerance
            if ramped and meets and (best is None or selection["metric"] > best["selection_metric"]):
                best = {"epoch": epoch + 1, "selection_metric": selection["metric"],
                        "selection_measured_sparsity": selection["measured_mac_sparsity"]}
                save_pruned(out_dir / "model", model, tokenizer, summary=best)
            save_checkpoint(checkpoint_dir, step=step, model=state, optimizer=optimizer, scheduler=scheduler,
                            config=to_container(cfg), extra={"best": best, "history": history},
                            keep_last=cfg.prune.keep_checkpoints)
        if best is None:  # never met the constraint: keep the last model, and say so
            log.warning("no epoch met the sparsity constraint on the selection split; keeping the last epoch")
            best = {"epoch": cfg.prune.epochs, "selection_metric": history[-1]["selection"]["metric"],
                    "constraint_met": False}
            save_pruned(out_dir / "model", model, tokenizer, summary=best)
        final, _ = load_pruned(out_dir / "model")
        final.to(device)
        if cfg.prune.calibrate:
            calibration = calibrate_sparsity(final, selection_loader, task, p.target_sparsity,
                                             padded_length=splits.padded_length, device=device)
            best["calibration"] = calibration
            log.info("calibrated the deployed gates on the selection split: measured sparsity %.4f -> %.4f "
                     "(kept bins per location %s)", calibration["before"], calibration["measured_mac_sparsity"],
                     calibration["kept_bins"])
            save_pruned(out_dir / "model", final, tokenizer, summary=best)
        reported = {name: evaluate_top(final, loader, task, padded_length=splits.padded_length, device=device)
                    for name, loader in eval_loaders.items()}
        for name, result in reported.items():
            log.info("pruned %s (selected epoch %d): %s", name, best["epoch"], format_result(result))
        first_eval = next(iter(eval_loaders))
        dev_selected = max(history, key=lambda r: r["eval"][first_eval]["metric"])
        summary = {"task": task.name, "target_sparsity": p.target_sparsity, "selected": best, "eval": reported,
                   "dev_selected": {"epoch": dev_selected["epoch"], **dev_selected["eval"][first_eval]},
                   "history": history, "model_dir": str(out_dir / "model"),
                   "pruning": {"prune_layers": list(pruning.prune_layers), "bin_num": pruning.bin_num},
                   "prune": {"epochs": cfg.prune.epochs, "ranking_alpha": cfg.prune.ranking_alpha,
                             "top_k": cfg.prune.top_k, "sparsity_warmup_epochs": cfg.prune.sparsity_warmup_epochs}}
        logger.log_summary({f"{name}/{task.main_metric}": r["metric"] for name, r in reported.items()}
                           | {f"{name}/measured_mac_sparsity": r["measured_mac_sparsity"]
                              for name, r in reported.items()})
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _brief(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("metric", "measured_mac_sparsity", "expected_mac_sparsity", "flops_reduction", "flops_reduction_vs_padded")
    return {key: result[key] for key in keys if key in result}


def run(cfg: DictConfig) -> dict[str, Any]:
    """The work behind ``python -m moonlit.top.prune``: :func:`run_prune`'s result."""
    return run_prune(cfg)


@hydra_app("top", "prune")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
