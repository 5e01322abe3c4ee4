"""ToP's models in the model registry (:mod:`moonlit.common.models`): ``create_model("top_pruned", checkpoint=...)``.

* ``top_pruned``: a ToP-pruned classifier, the folder ``moonlit.top.prune`` writes (an HF model +
  ``token_gates.safetensors`` + ``token_pruning.json``) -> :class:`~moonlit.top.model.ToPModel`;
* ``top_released``: a released reference checkpoint folder (``config.json``, ``pytorch_model.bin``,
  ``l0_module.pt``, read without running its pickles) -> :class:`ToPModel` with the reference's semantics;
* ``top_dense``: the dense classifier of a local Hugging Face folder (``from_pretrained``, eager attention);
* ``top_bert_random``: a randomly initialised BERT classifier (the benchmark's model; BERT-base by default).

These are text models, so they are not registered with timm. Nothing is downloaded: the folders are local.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from moonlit.common.errors import InputError
from moonlit.common.models import register_model

if TYPE_CHECKING:
    from .model import ToPModel

__all__ = ["top_bert_random", "top_dense", "top_pruned", "top_released"]


def _folder(name: str, checkpoint: Path | None, expected: str) -> Path:
    if checkpoint is None:
        raise InputError(f"{name} has no built-in weights (nothing is downloaded): pass checkpoint=<{expected}>")
    return checkpoint


@register_model("top_pruned", family="top", paper="top", loads_weights=True, timm=False,
                description="a ToP-pruned classifier folder written by moonlit.top.prune")
def top_pruned(pretrained: bool = False, checkpoint: Path | None = None) -> ToPModel:
    """The :class:`ToPModel` (eval mode) of a folder written by ``moonlit.top.prune``."""
    from .artifacts import load_pruned

    folder = _folder("top_pruned", checkpoint, "a folder written by moonlit.top.prune (an HF model with "
                     "token_gates.safetensors and token_pruning.json)")
    return load_pruned(folder)[0]


@register_model("top_released", family="top", paper="top", loads_weights=True, timm=False,
                description="a released reference ToP checkpoint folder, with the reference's semantics")
def top_released(pretrained: bool = False, checkpoint: Path | None = None) -> ToPModel:
    """A released ToP folder as a :class:`ToPModel` (:func:`moonlit.top.checkpoints.released_top_model`)."""
    from .checkpoints import released_top_model

    folder = _folder("top_released", checkpoint, "a released ToP folder: config.json, pytorch_model.bin, "
                     "l0_module.pt")
    return released_top_model(folder)


@register_model("top_dense", family="top", paper="top", loads_weights=True, timm=False,
                description="the dense classifier of a local Hugging Face model folder")
def top_dense(pretrained: bool = False, checkpoint: Path | None = None, *, num_labels: int | None = None) -> nn.Module:
    """The HF sequence classifier of a local folder (eager attention: ToP reads attention probabilities);
    ``num_labels`` replaces the folder's classifier head with a fresh one of that size."""
    from transformers import AutoModelForSequenceClassification

    from .artifacts import from_pretrained

    folder = _folder("top_dense", checkpoint, "a local Hugging Face model folder (config.json + weights)")
    head = {} if num_labels is None else {"num_labels": num_labels, "ignore_mismatched_sizes": True}
    model: nn.Module = from_pretrained(AutoModelForSequenceClassification, folder, attn_implementation="eager",
                                       local_files_only=True, **head)
    return model.eval()


@register_model("top_bert_random", family="top", paper="top", timm=False,
                description="a randomly initialised BERT classifier (BERT-base sizes by default)")
def top_bert_random(*, vocab_size: int = 30522, hidden_size: int = 768, num_layers: int = 12, num_heads: int = 12,
                    intermediate_size: int = 3072, max_position_embeddings: int = 512, num_labels: int = 2,
                    seed: int = 0) -> nn.Module:
    """``BertForSequenceClassification`` with random weights from ``seed`` (eager attention, eval mode)."""
    from .benchmark import build_model

    return build_model({"vocab_size": vocab_size, "hidden_size": hidden_size, "num_layers": num_layers,
                        "num_heads": num_heads, "intermediate_size": intermediate_size,
                        "max_position_embeddings": max_position_embeddings, "num_labels": num_labels}, seed)
