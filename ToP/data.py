"""GLUE batches for ToP: tokenized splits, a held-out selection split, dynamic padding.

Checkpoint selection must not look at the split that is reported (flaw 7 of the reference, which
picks the best dev-set checkpoint and reports that dev score). ``build_glue_splits`` moves a
seeded fraction of train into a ``selection`` split that the trainers select on; the validation
split(s) stay for reporting, and the dev-selected number can still be computed for comparison.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import datasets
import torch
from torch.utils.data import DataLoader, DistributedSampler
from transformers import DataCollatorWithPadding

from moonlit.common.data.glue import GlueTask, get_glue_task, load_glue, tokenize_glue
from moonlit.common.data.loaders import EpochLoader, resolve_rank_world

# The padded lengths the paper's FLOPs-reduction column is measured against (ToP notes).
PADDED_LENGTH = {"cola": 64, "sst2": 64, "stsb": 64, "qqp": 128, "mrpc": 128, "mnli": 128, "qnli": 128, "rte": 256}


@dataclasses.dataclass
class GlueSplits:
    task: GlueTask
    train: datasets.Dataset
    selection: datasets.Dataset
    eval_splits: dict[str, datasets.Dataset]
    padded_length: int


def build_glue_splits(task: str, tokenizer: Any, *, data_dir: str | Path | None = None, max_length: int = 128,
                      selection_fraction: float = 0.1, selection_max: int = 2000, seed: int = 0,
                      max_train: int | None = None, max_eval: int | None = None) -> GlueSplits:
    """Tokenized train / selection / eval splits of a GLUE task (from the Hub name or a TSV folder)."""
    spec = get_glue_task(task)
    raw = load_glue(spec, data_dir)
    if not 0.0 < selection_fraction < 1.0:
        raise ValueError(f"selection_fraction must be in (0, 1), got {selection_fraction}")
    train = raw["train"].shuffle(seed=seed)
    held = min(selection_max, max(1, int(round(len(train) * selection_fraction))))
    if held >= len(train):
        raise ValueError(f"{spec.name} has {len(train)} training rows: too few to hold out {held} for selection")
    selection, train = train.select(range(held)), train.select(range(held, len(train)))
    if max_train is not None:
        train = train.select(range(min(max_train, len(train))))
    eval_splits = {name: raw[name] for name in spec.eval_splits}
    if max_eval is not None:
        eval_splits = {name: ds.select(range(min(max_eval, len(ds)))) for name, ds in eval_splits.items()}

    def encode(ds: datasets.Dataset) -> datasets.Dataset:
        return tokenize_glue(ds, tokenizer, spec, max_length=max_length, padding=False)

    return GlueSplits(task=spec, train=encode(train), selection=encode(selection),
                      eval_splits={name: encode(ds) for name, ds in eval_splits.items()},
                      padded_length=PADDED_LENGTH.get(spec.name, max_length))


def splits_from_config(data: Any, tokenizer: Any) -> GlueSplits:
    """:func:`build_glue_splits` from the ``data`` config group (``configs/top/data/glue.yaml``)."""
    return build_glue_splits(data.task, tokenizer, data_dir=data.data_dir, max_length=data.max_length,
                             selection_fraction=data.selection_fraction,
                             selection_max=data.selection_max, seed=data.seed,
                             max_train=data.max_train, max_eval=data.max_eval)


def glue_loader(dataset: datasets.Dataset, tokenizer: Any, batch_size: int, *, shuffle: bool,
                seed: int = 0, rank: int | None = None, world_size: int | None = None) -> DataLoader:
    """Batches padded to their longest sample (the reference trims padding the same way).

    Shuffled order comes from a ``DistributedSampler`` (also with one process): it depends on
    (seed, epoch) only, so call ``set_epoch(loader, epoch)`` each epoch and a resumed run replays
    the order of the epoch it resumes at. The loader draws nothing from the global RNGs.
    """
    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids", "label") if c in dataset.column_names]
    collator = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    formatted = dataset.with_format(columns=columns)
    rank, world_size = resolve_rank_world(rank, world_size)
    sampler = None
    if shuffle or world_size > 1:
        sampler = DistributedSampler(formatted, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
    return EpochLoader(formatted, batch_size=batch_size, sampler=sampler, collate_fn=collator, seed=seed, rank=rank)


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    keys = ("input_ids", "attention_mask", "token_type_ids")
    return {key: batch[key].to(device) for key in keys if key in batch}
