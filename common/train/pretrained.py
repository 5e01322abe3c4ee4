"""Local pretrained weights for third-party models (timm teachers), never a hub download.

Released weights come as ``.safetensors`` or as pickled ``.pth``/``.pt``/``.bin`` state dicts, the
latter read through :func:`moonlit.common.train.foreign.load_foreign_checkpoint` (restricted
unpickler). Checkpoints that nest the state dict under ``model``/``state_dict``/``model_state_dict``
and DDP's ``module.`` prefix are accepted. Used by the teachers of SpaceEvo (block KD) and
ElasticViT (supernet KD).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor, nn

from moonlit.common.errors import InputError

from .foreign import load_foreign_checkpoint

__all__ = ["load_local_weights"]

logger = logging.getLogger(__name__)

# Keys under which training scripts nest their state dict ({'model': ...} in timm and the references).
STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict")


def load_local_weights(model: nn.Module, path: str | os.PathLike[str], strict: bool = True) -> None:
    """Load the state dict in ``path`` into ``model``.

    A tensor whose shape differs from the model's is an :class:`InputError` naming the first keys and
    both shapes (one line); with ``strict``, so are missing or unexpected keys. Nothing is loaded
    unless the shapes fit.
    """
    state = load_foreign_checkpoint(Path(path))
    for key in STATE_DICT_KEYS:
        if key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    tensors = {str(k).removeprefix("module."): v for k, v in state.items() if isinstance(v, Tensor)}
    expected = model.state_dict()
    mismatched = [f"{k} {tuple(v.shape)} in the file vs {tuple(expected[k].shape)} in the model"
                  for k, v in tensors.items() if k in expected and v.shape != expected[k].shape]
    if mismatched:
        raise InputError(f"weights {path} do not fit {type(model).__name__}: shape mismatch at "
                         f"{'; '.join(mismatched[:3])} ({len(mismatched)} in all)")
    result = model.load_state_dict(tensors, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        raise InputError(f"weights {path} do not fit {type(model).__name__}: missing {list(result.missing_keys)[:5]}, "
                         f"unexpected {list(result.unexpected_keys)[:5]} "
                         f"({len(result.missing_keys)} / {len(result.unexpected_keys)} in all)")
    logger.info("loaded %d tensors from %s into %s", len(tensors), path, type(model).__name__)
