"""Nested training state (optimizer/scheduler/RNG state dicts) split into JSON and a tensor dict.

``encode_state`` replaces every tensor by ``{"__tensor__": key}`` and collects it under ``key`` (its
dotted path, e.g. ``optimizer.state.0.exp_avg``), so the tensors go to safetensors and the rest to
JSON. Tuples become ``{"__tuple__": [...]}`` and dicts with non-string keys (optimizer state is keyed
by parameter index) ``{"__dict__": [[key, value], ...]}``, so ``decode_state`` gives back objects
equal to the originals, types included.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError

__all__ = ["CheckpointError", "decode_state", "encode_state", "storage_safe"]

_TAG_TENSOR, _TAG_TUPLE, _TAG_DICT = "__tensor__", "__tuple__", "__dict__"


class CheckpointError(InputError):
    """A checkpoint is missing a file, has a corrupt file, or does not fit the objects given."""


def encode_state(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Split ``obj`` into a JSON-able skeleton and ``tensors`` (filled in place), see the module doc."""
    if isinstance(obj, torch.Tensor):
        if path in tensors:
            raise ValueError(f"two tensors map to the key {path!r}; rename one of the state entries")
        tensors[path] = obj.detach()
        return {_TAG_TENSOR: path}
    if isinstance(obj, np.generic):
        obj = obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {_TAG_TUPLE: [encode_state(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_state(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not (k.startswith("__") and k.endswith("__")) for k in obj):
            return {k: encode_state(v, f"{path}.{k}", tensors) for k, v in obj.items()}
        pairs = [[encode_state(k, f"{path}.key{i}", tensors), encode_state(v, f"{path}.{k}", tensors)]
                 for i, (k, v) in enumerate(obj.items())]
        return {_TAG_DICT: pairs}
    raise ValueError(
        f"{path}: a {type(obj).__name__} cannot be stored in a checkpoint; "
        "expected tensors, numbers, strings, None, lists, tuples or dicts"
    )


def decode_state(obj: Any, tensors: dict[str, torch.Tensor], source: Path) -> Any:
    """Inverse of ``encode_state``; ``source`` (the JSON file) is named in errors."""
    if isinstance(obj, list):
        return [decode_state(v, tensors, source) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1 and _TAG_TENSOR in obj:
        key = obj[_TAG_TENSOR]
        if key not in tensors:
            raise CheckpointError(f"{source} refers to tensor {key!r}, which is not in the tensor files")
        return tensors[key]
    if len(obj) == 1 and _TAG_TUPLE in obj:
        return tuple(decode_state(v, tensors, source) for v in obj[_TAG_TUPLE])
    if len(obj) == 1 and _TAG_DICT in obj:
        return {decode_state(k, tensors, source): decode_state(v, tensors, source) for k, v in obj[_TAG_DICT]}
    return {k: decode_state(v, tensors, source) for k, v in obj.items()}


def storage_safe(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy tensors that share storage (tied weights) or view part of one: safetensors refuses them."""

    def storage_ptr(t: torch.Tensor) -> int:
        return t.untyped_storage().data_ptr() if t.numel() else 0

    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"state entry {name!r} is a {type(t).__name__}; safetensors stores tensors only")
    owners = Counter(storage_ptr(t) for t in tensors.values() if t.numel())
    safe = {}
    for name, t in tensors.items():
        whole = t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size()
        if t.numel() and (owners[storage_ptr(t)] > 1 or not whole):
            t = t.contiguous().clone()
        safe[name] = t
    return safe
