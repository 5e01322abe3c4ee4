"""Released SpaceEvo supernet checkpoints (``checkpoint.pth``, ``lsq.pth``) in our :class:`Supernet` (SpaceEvo §4.1).

The reference's ``train_supernet.py`` saves, with ``torch.save``, a dict::

    {"epoch": int, "args": AttrDict (its config), "state_dict": DDP model state dict,
     "optimizer": SGD state dict, "lr_scheduler": WarmupCosineLR state dict}

``checkpoint.pth`` after the FP32 phase, ``lsq.pth`` after LSQ+ QAT. Its model is
``stages.<name>.blocks.<i>...`` for every macro stage, head included, under DDP's ``module.``
prefix. The key map to ours (:func:`reference_to_ours`)::

    module.                                              -> (dropped)
    stages.first_conv.blocks.0.conv.{conv,norm}.*        -> first_conv.{conv,norm}.*
    stages.final_expand.blocks.0.conv.{conv,norm}.*      -> final_expand.{conv,norm}.*
    stages.feature_mix.blocks.0.conv.{conv,norm}.*       -> feature_mix.{conv,norm}.*
    stages.logits.blocks.0.linear.*                      -> classifier.*
    stages.stage<k>.blocks.<i>.*                         -> unchanged, except
        ...dwconv.dwconv<j>.*  (stacked 3x3 depthwise)   -> ...dwconv.<j>.*
    *.sw / *.sa / *.beta  (LSQ+ QBase parameters)        -> *.weight_quant.scale / *.act_quant.scale / *.act_quant.offset

Our quantizers also hold an ``initialized`` buffer, which the reference kept as a Python flag: it
is set True when the checkpoint carries trained quantizer parameters (``lsq.pth``), so loading
does not re-initialise them, and False otherwise. The file is read through the restricted
unpickler; the reference's ``AttrDict`` config is admitted as a plain ``OrderedDict``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import re
from typing import Any

import torch
from moonlit.common.train.foreign import load_foreign_checkpoint
from moonlit.spaceevo.ops.lsq_plus import REFERENCE_KEY_SUFFIXES, set_quant_mode
from moonlit.spaceevo.supernet import Supernet
from torch import Tensor

__all__ = ["REFERENCE_ARGS_GLOBAL", "ReferenceCheckpoint", "load_reference_supernet", "ours_to_reference",
           "reference_to_ours", "to_reference_state_dict"]

# The class of the reference's saved ``args``: a dict subclass, read back as an OrderedDict.
REFERENCE_ARGS_GLOBAL = "modules.alphanet_training.utils.config.AttrDict"
_HEAD = {"first_conv": ("first_conv", "conv."), "final_expand": ("final_expand", "conv."),
         "feature_mix": ("feature_mix", "conv."), "logits": ("classifier", "linear.")}
_STACKED_REFERENCE = re.compile(r"\.dwconv\.dwconv(\d+)\.")
_STACKED_OURS = re.compile(r"\.dwconv\.(\d+)\.")
_OUR_SUFFIXES = {ours: ref for ref, ours in REFERENCE_KEY_SUFFIXES.items()}


def reference_to_ours(key: str) -> str:
    """Our state-dict key for a key of the reference's supernet state dict."""
    key = key.removeprefix("module.")
    parts = key.split(".")
    if len(parts) < 4 or parts[0] != "stages" or parts[2] != "blocks":
        raise ValueError(f"reference key {key!r} is not 'stages.<stage>.blocks.<i>.<...>'")
    stage, rest = parts[1], ".".join(parts[4:]) if parts[1] in _HEAD else ".".join(parts[2:])
    if stage in _HEAD:
        ours, wrapper = _HEAD[stage]
        if not rest.startswith(wrapper):
            raise ValueError(f"reference key {key!r}: expected '{wrapper}' after the {stage} block")
        key = f"{ours}.{rest.removeprefix(wrapper)}"
    else:
        key = f"stages.{stage}.{rest}"
    key = _STACKED_REFERENCE.sub(r".dwconv.\1.", key)
    head, _, leaf = key.rpartition(".")
    return f"{head}.{REFERENCE_KEY_SUFFIXES[leaf]}" if leaf in REFERENCE_KEY_SUFFIXES else key


def ours_to_reference(key: str) -> str | None:
    """The reference's key (without ``module.``) for one of ours; None for keys it has no counterpart of."""
    if key.endswith(".initialized"):
        return None
    for ours, ref in _OUR_SUFFIXES.items():
        if key.endswith("." + ours):
            key = f"{key[: -len(ours)]}{ref}"
            break
    key = _STACKED_OURS.sub(r".dwconv.dwconv\1.", key)
    top, _, rest = key.partition(".")
    for stage, (ours_name, wrapper) in _HEAD.items():
        if top == ours_name:
            return f"stages.{stage}.blocks.0.{wrapper}{rest}"
    if top != "stages":
        raise ValueError(f"our key {key!r} has no place in the reference layout")
    return key


def to_reference_state_dict(supernet: Supernet, ddp_prefix: bool = True) -> dict[str, Tensor]:
    """``supernet``'s weights under the reference's key names (as its DDP training saved them)."""
    prefix = "module." if ddp_prefix else ""
    state = {}
    for key, value in supernet.state_dict().items():
        ref = ours_to_reference(key)
        if ref is not None:
            state[prefix + ref] = value.detach().clone()
    return state


@dataclasses.dataclass(frozen=True)
class ReferenceCheckpoint:
    """What :func:`load_reference_supernet` read besides the weights."""

    path: str
    epoch: int | None
    quantized: bool
    args: dict[str, Any]
    loaded_keys: int


def _has_trained_quantizers(state: dict[str, Tensor]) -> bool:
    """True when some LSQ+ parameter left its initial value (scale 1, offset 0)."""
    for key, value in state.items():
        leaf = key.rpartition(".")[2]
        if leaf in ("sw", "sa") and not torch.all(value == 1):
            return True
        if leaf == "beta" and not torch.all(value == 0):
            return True
    return False


def load_reference_supernet(path: str | os.PathLike[str], supernet: Supernet,
                            quantized: bool | None = None) -> ReferenceCheckpoint:
    """Load a reference ``checkpoint.pth`` / ``lsq.pth`` (or a bare state dict) into ``supernet``.

    ``quantized`` None infers it from the quantizer parameters; when quantized, every quantizer
    is marked initialized and the supernet is switched to 8-bit LSQ+ mode. Every key of ours except
    the ``initialized`` buffers must be present with its shape; unknown keys are an error.
    """
    loaded = load_foreign_checkpoint(path, allowed_globals=[(collections.OrderedDict, REFERENCE_ARGS_GLOBAL),
                                                            argparse.Namespace])
    reference_state = loaded.get("state_dict", loaded.get("model", loaded))
    if not isinstance(reference_state, dict) or not all(isinstance(v, Tensor) for v in reference_state.values()):
        raise ValueError(f"{path}: no state dict of tensors under 'state_dict', 'model' or at the top level "
                         f"(top-level keys: {sorted(loaded)[:8]})")
    ours = supernet.state_dict()
    mapped: dict[str, Tensor] = {}
    for key, value in reference_state.items():
        our_key = reference_to_ours(key)
        if our_key not in ours:
            raise ValueError(f"{path}: reference key {key!r} (ours: {our_key!r}) is not in the supernet of "
                             f"'{supernet.space}': is the checkpoint of another space?")
        if ours[our_key].shape != value.shape:
            raise ValueError(f"{path}: {key!r} has shape {tuple(value.shape)}, the supernet of '{supernet.space}' "
                             f"expects {tuple(ours[our_key].shape)} for {our_key!r}")
        mapped[our_key] = value
    is_quantized = _has_trained_quantizers(reference_state) if quantized is None else quantized
    for key in ours:
        if key.endswith(".initialized"):
            mapped[key] = torch.tensor(is_quantized)
    missing = sorted(set(ours) - set(mapped))
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} weights of the supernet of '{supernet.space}', e.g. "
                         f"{missing[:3]} (reference names: {[ours_to_reference(k) for k in missing[:3]]})")
    supernet.load_state_dict(mapped)
    if is_quantized:
        set_quant_mode(supernet, 8)
    args = loaded.get("args")
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    epoch = loaded.get("epoch")
    return ReferenceCheckpoint(str(path), int(epoch) if isinstance(epoch, int) else None, is_quantized,
                               dict(args) if isinstance(args, dict) else {}, len(reference_state))
