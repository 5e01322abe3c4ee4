"""Released ElasticViT supernet checkpoints in our :class:`ElasticViTSupernet` (ICCV'23, Sec. 4: the
supernet trained once, its subnets deployed without retraining).

The reference's ``util/checkpoint.py`` saves, with ``torch.save``, ``<name>_checkpoint.pth.tar``::

    {"epoch": int, "state_dict": supernet state dict, "optimizer": AdamW state dict,
     "bank": memory banks (lists of [arch, score]), "arch": "supernet", "extras": {"top1", "top5"},
     "model_ema": EMA supernet state dict}

``state_dict`` may carry DDP's ``module.`` prefix (depending on the timm version that unwrapped
it); the reference's own loader uses ``model_ema`` whenever it is present. Its ``FusedSuperNet``
keys map onto ours (``s`` stage, ``i`` layer; :func:`reference_to_ours`)::

    module.                                           -> (dropped)
    first_conv.weight / first_conv_bn.*               -> first_conv.weight / first_bn.*
    conv_stem.layers.{i}.0.*                          -> stem.blocks.{i}.*
    feature_exactor.{s}.layers.{i}.0.*       (C)      -> stages.{s}.blocks.{i}.*
    feature_exactor.{s}.layers.0.reduction.* (T)      -> stages.{s}.reduction.*
    feature_exactor.{s}.layers.{2i}.*        (T)      -> stages.{s}.blocks.{i}.attn.*
    feature_exactor.{s}.layers.{2i+1}.*      (T)      -> stages.{s}.blocks.{i}.ffn.*
    pre_head_0 / pre_head_norm_0 / pre_head_1 / classifer
                                                      -> head.token_proj / token_norm / hidden_proj / classifier
    ...relative_position_index  (persistent buffer)   -> (dropped: we recompute it; checked equal on load)

Leaf names and every tensor layout are shared, so no tensor is reshaped: ``qkv.weight`` is one
``(2 C_max + v_max C_max, C_max)`` matrix with Q rows from 0, K rows from ``C_max`` and V rows from
``2 C_max`` in both; ``attention_bias`` is ``((2 R - 1)², C_max / 16)`` indexed by
``(dy + R - 1)(2 R - 1) + (dx + R - 1)`` for the stage's largest grid side ``R`` in both.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

import torch
from moonlit.common.train.foreign import load_foreign_checkpoint
from torch import Tensor

from .ops.attention import relative_position_index
from .ops.stages import ElasticViTStage
from .supernet import ElasticViTSupernet

__all__ = ["REFERENCE_FILE_SUFFIXES", "is_reference_checkpoint", "load_reference_supernet", "ours_to_reference",
           "reference_to_ours", "to_reference_state_dict"]

logger = logging.getLogger(__name__)

# torch.save files: the reference writes ``<name>_checkpoint.pth.tar`` / ``<name>_best.pth.tar``.
REFERENCE_FILE_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".pth.tar")
_DDP_PREFIX = "module."
_POSITION_INDEX = "relative_position_index"
_HEAD = {"pre_head_0": "head.token_proj", "pre_head_norm_0": "head.token_norm",
         "pre_head_1": "head.hidden_proj", "classifer": "head.classifier"}
_HEAD_OURS = {ours: ref for ref, ours in _HEAD.items()}

# Leaf vocabulary of the reference's modules (MobileBlock, SuperAttention, SuperFFN, BNSuper*, LNSuper).
_BN = r"(?:weight|bias|running_mean|running_var|num_batches_tracked)"
_MBCONV = (rf"(?:(?:pw_bn|dw_bn|pwl_bn)\.{_BN}|(?:pw_conv|dw_conv|pwl_conv|shortcut_conv)\.weight"
           r"|(?:se_conv1|se_conv2)\.(?:weight|bias))")
_ATTN = r"(?:attention_bias|norm1\.(?:weight|bias)|qkv\.weight|dw_v_conv\.weight|proj\.(?:weight|bias))"
_FFN = r"(?:norm1\.(?:weight|bias)|fc[12]\.(?:weight|bias))"
_LINEAR = r"(?:weight|bias)"

_REF_FIRST = re.compile(rf"first_conv\.weight|first_conv_bn\.(?P<leaf>{_BN})")
_REF_STEM = re.compile(rf"conv_stem\.layers\.(?P<layer>\d+)\.0\.(?P<leaf>{_MBCONV})")
_REF_CONV = re.compile(rf"feature_exactor\.(?P<stage>\d+)\.layers\.(?P<layer>\d+)\.0\.(?P<leaf>{_MBCONV})")
_REF_REDUCTION = re.compile(rf"feature_exactor\.(?P<stage>\d+)\.layers\.0\.reduction\.(?P<leaf>{_MBCONV})")
_REF_TRANSFORMER = re.compile(
    rf"feature_exactor\.(?P<stage>\d+)\.layers\.(?P<layer>\d+)\.(?P<leaf>{_ATTN}|{_FFN}|{_POSITION_INDEX})")
_REF_HEAD = re.compile(rf"(?P<module>pre_head_0|pre_head_1|classifer)\.(?P<leaf>{_LINEAR})"
                       rf"|(?P<norm>pre_head_norm_0)\.(?P<norm_leaf>{_BN})")

_OURS_FIRST = re.compile(rf"first_conv\.weight|first_bn\.(?P<leaf>{_BN})")
_OURS_STEM = re.compile(rf"stem\.blocks\.(?P<layer>\d+)\.(?P<leaf>{_MBCONV})")
_OURS_CONV = re.compile(rf"stages\.(?P<stage>\d+)\.blocks\.(?P<layer>\d+)\.(?P<leaf>{_MBCONV})")
_OURS_REDUCTION = re.compile(rf"stages\.(?P<stage>\d+)\.reduction\.(?P<leaf>{_MBCONV})")
_OURS_ATTN = re.compile(rf"stages\.(?P<stage>\d+)\.blocks\.(?P<layer>\d+)\.attn\.(?P<leaf>{_ATTN})")
_OURS_FFN = re.compile(rf"stages\.(?P<stage>\d+)\.blocks\.(?P<layer>\d+)\.ffn\.(?P<leaf>{_FFN})")
_OURS_HEAD = re.compile(rf"(?P<module>head\.(?:token_proj|hidden_proj|classifier))\.(?P<leaf>{_LINEAR})"
                        rf"|(?P<norm>head\.token_norm)\.(?P<norm_leaf>{_BN})")


def reference_to_ours(key: str) -> str | None:
    """Our key for a reference ``FusedSuperNet`` key; None for the recomputed ``relative_position_index``.

    Raises ValueError naming ``key`` when it is none of the reference's supernet keys.
    """
    name = key.removeprefix(_DDP_PREFIX)
    if match := _REF_FIRST.fullmatch(name):
        return f"first_bn.{match['leaf']}" if match["leaf"] else name
    if match := _REF_STEM.fullmatch(name):
        return f"stem.blocks.{match['layer']}.{match['leaf']}"
    if match := _REF_CONV.fullmatch(name):
        return f"stages.{match['stage']}.blocks.{match['layer']}.{match['leaf']}"
    if match := _REF_REDUCTION.fullmatch(name):
        return f"stages.{match['stage']}.reduction.{match['leaf']}"
    if match := _REF_TRANSFORMER.fullmatch(name):
        layer, leaf = int(match["layer"]), match["leaf"]
        is_attention = layer % 2 == 0
        if leaf == _POSITION_INDEX and is_attention:
            return None
        # Attention and FFN both own a norm1; the other leaves tell which layer parity they need.
        wants_attention = None if leaf.startswith("norm1.") else bool(re.fullmatch(_ATTN, leaf))
        if wants_attention is not None and wants_attention != is_attention:
            raise ValueError(f"reference key {key!r}: {leaf!r} belongs to an "
                             f"{'attention' if wants_attention else 'FFN'} layer, but layer {layer} of a "
                             "transformer stage is " + ("an attention (even)" if is_attention else "an FFN (odd)"))
        return f"stages.{match['stage']}.blocks.{layer // 2}.{'attn' if is_attention else 'ffn'}.{leaf}"
    if match := _REF_HEAD.fullmatch(name):
        if match["module"]:
            return f"{_HEAD[match['module']]}.{match['leaf']}"
        return f"{_HEAD[match['norm']]}.{match['norm_leaf']}"
    raise ValueError(f"reference key {key!r} is not a key of the reference's FusedSuperNet (expected first_conv*, "
                     "conv_stem.layers.<i>.0.*, feature_exactor.<s>.layers.<i>[.0].*, pre_head_*, classifer.*)")


def ours_to_reference(key: str) -> str:
    """The reference's key (without ``module.``) for one of our supernet's keys (ValueError if unknown)."""
    if match := _OURS_FIRST.fullmatch(key):
        return f"first_conv_bn.{match['leaf']}" if match["leaf"] else key
    if match := _OURS_STEM.fullmatch(key):
        return f"conv_stem.layers.{match['layer']}.0.{match['leaf']}"
    if match := _OURS_CONV.fullmatch(key):
        return f"feature_exactor.{match['stage']}.layers.{match['layer']}.0.{match['leaf']}"
    if match := _OURS_REDUCTION.fullmatch(key):
        return f"feature_exactor.{match['stage']}.layers.0.reduction.{match['leaf']}"
    if match := _OURS_ATTN.fullmatch(key):
        return f"feature_exactor.{match['stage']}.layers.{2 * int(match['layer'])}.{match['leaf']}"
    if match := _OURS_FFN.fullmatch(key):
        return f"feature_exactor.{match['stage']}.layers.{2 * int(match['layer']) + 1}.{match['leaf']}"
    if match := _OURS_HEAD.fullmatch(key):
        if match["module"]:
            return f"{_HEAD_OURS[match['module']]}.{match['leaf']}"
        return f"{_HEAD_OURS[match['norm']]}.{match['norm_leaf']}"
    raise ValueError(f"our key {key!r} is not a key of ElasticViTSupernet; it has no place in the reference layout")


def _reference_position_indices(supernet: ElasticViTSupernet) -> dict[str, Tensor]:
    """The reference's persistent ``relative_position_index`` buffer of every attention layer (no prefix)."""
    indices = {}
    for stage_index, stage in enumerate(supernet.stages):
        if isinstance(stage, ElasticViTStage):
            for layer, block in enumerate(stage.blocks):
                side = block.attn.max_side
                indices[f"feature_exactor.{stage_index}.layers.{2 * layer}.{_POSITION_INDEX}"] = \
                    relative_position_index(side, side).clone()
    return indices


def to_reference_state_dict(supernet: ElasticViTSupernet, ddp_prefix: bool = True) -> dict[str, Tensor]:
    """``supernet``'s weights under the reference's key names, with its position-index buffers.

    ``ddp_prefix`` prepends ``module.``, as a DDP-wrapped model's state dict has it.
    """
    prefix = _DDP_PREFIX if ddp_prefix else ""
    state = {prefix + ours_to_reference(key): value.detach().clone() for key, value in supernet.state_dict().items()}
    state.update({prefix + key: value for key, value in _reference_position_indices(supernet).items()})
    return state


def is_reference_checkpoint(path: str | os.PathLike[str]) -> bool:
    """True for a path named like a torch.save file (:data:`REFERENCE_FILE_SUFFIXES`) that is not a directory."""
    file = Path(path)
    return file.name.endswith(REFERENCE_FILE_SUFFIXES) and not file.is_dir()


def _select_state(loaded: dict[str, Any], which: str, path: Path) -> dict[str, Tensor]:
    if which == "ema":
        state = loaded.get("model_ema")
        where = "'model_ema'"
    elif which == "model":
        state = loaded.get("state_dict", loaded.get("model"))
        where = "'state_dict' or 'model'"
        if state is None and loaded and all(isinstance(v, Tensor) for v in loaded.values()):
            state, where = loaded, "the top level"
    else:
        raise ValueError(f"which={which!r} is not 'model' or 'ema'")
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: no state dict of tensors under {where} (top-level keys: {sorted(loaded)[:8]}); "
                         "which='ema' reads 'model_ema', which='model' reads 'state_dict'")
    return state


def load_reference_supernet(path: str | os.PathLike[str], supernet: ElasticViTSupernet | None = None, *,
                            which: Literal["model", "ema"] = "model") -> ElasticViTSupernet:
    """Load a reference checkpoint file into ``supernet`` (a new one sized by the file when None).

    ``which`` picks the trained weights (``state_dict``) or their EMA (``model_ema``, what the
    reference evaluates). Strict: unknown keys, missing keys and shape mismatches are each a
    ValueError listing them; the file's position-index buffers must equal ours. The pickle is read
    by the restricted unpickler (:func:`load_foreign_checkpoint`), which refuses any code global.
    """
    file = Path(path)
    state = _select_state(load_foreign_checkpoint(file), which, file)
    mapped: dict[str, Tensor] = {}
    unknown: list[str] = []
    position_indices: dict[str, Tensor] = {}
    for key, value in state.items():
        try:
            ours = reference_to_ours(key)
        except ValueError:
            unknown.append(key)
            continue
        if ours is None:
            position_indices[key.removeprefix(_DDP_PREFIX)] = value
        else:
            mapped[ours] = value
    if unknown:
        raise ValueError(f"{file}: {len(unknown)} keys are not keys of the reference's supernet: {unknown[:10]}")
    if supernet is None:
        if "head.classifier.weight" not in mapped:
            raise ValueError(f"{file} lacks 'classifer.weight'; cannot size the classifier of a new supernet")
        supernet = ElasticViTSupernet(num_classes=mapped["head.classifier.weight"].shape[0])
    expected = supernet.state_dict()
    missing = sorted(set(expected) - set(mapped))
    if missing:
        raise ValueError(f"{file} lacks {len(missing)} weights of the supernet, e.g. "
                         f"{[ours_to_reference(k) for k in missing[:10]]} (ours: {missing[:10]})")
    unexpected = sorted(set(mapped) - set(expected))
    if unexpected:
        raise ValueError(f"{file} holds {len(unexpected)} weights our supernet lacks (another search space?): "
                         f"{[ours_to_reference(k) for k in unexpected[:10]]}")
    mismatched = [f"{ours_to_reference(k)}: {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
                  for k, v in mapped.items() if v.shape != expected[k].shape]
    if mismatched:
        raise ValueError(f"{file}: {len(mismatched)} tensors have the wrong shape for this supernet: {mismatched[:10]}")
    for key, ours in _reference_position_indices(supernet).items():
        if key in position_indices and not torch.equal(position_indices[key].long(), ours):
            raise ValueError(f"{file}: {key} differs from the index we compute for a {ours.shape[0]}-token grid: "
                             "the bias table layout is not the reference's")
    supernet.load_state_dict(mapped, strict=True)
    logger.info("loaded %d reference tensors (%s) from %s", len(mapped), which, file)
    return supernet
