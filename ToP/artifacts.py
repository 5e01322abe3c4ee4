"""A token-pruned model on disk: an HF model folder plus the gates and the pruning settings.

``<dir>/`` holds what ``save_pretrained`` writes (model and tokenizer), ``token_gates.safetensors``
(the gates' log-alphas) and ``token_pruning.json`` (``PruningConfig``, gate settings, the training
summary). ``load_pruned(dir)`` rebuilds the :class:`~moonlit.top.model.ToPModel` from them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from moonlit.common.errors import InputError

from .masks import TokenGates
from .model import PruningConfig, ToPModel

GATES_FILE = "token_gates.safetensors"
SETTINGS_FILE = "token_pruning.json"
HF_CONFIG_FILE = "config.json"
# A hub id as Hugging Face spells it: ``name`` or ``namespace/name``; anything else is meant as a path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def model_source(name_or_path: str | os.PathLike[str]) -> str:
    """``name_or_path`` checked before ``from_pretrained``: an existing folder must hold ``config.json``;
    a path that does not exist raises :class:`InputError` naming it (instead of transformers'
    "Repo id must be in the form ..."); a hub name (``bert-base-uncased``) is passed on as it is."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    expected = f"expected a Hugging Face model folder ({HF_CONFIG_FILE} + weights, as save_pretrained writes it)"
    if path.is_dir():
        if not (path / HF_CONFIG_FILE).is_file():
            raise InputError(f"model folder {path} has no {HF_CONFIG_FILE}; {expected}")
        return str(path)
    if path.exists():
        raise InputError(f"model {path} is a file; {expected}")
    if path.is_absolute() or text.startswith((".", "~")) or not _HUB_ID.fullmatch(text) or "--" in text:
        raise InputError(f"model folder {text} does not exist; {expected}")
    return text


def from_pretrained(loader: Any, name_or_path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """``loader.from_pretrained`` (a model or tokenizer class) on :func:`model_source`; a hub name that is
    neither a folder nor in the local Hugging Face cache raises :class:`InputError`."""
    source = model_source(name_or_path)
    try:
        return loader.from_pretrained(source, **kwargs)
    except OSError as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"cannot load model {source!r}: {reason}; expected a local Hugging Face model folder "
                         f"({HF_CONFIG_FILE} + weights) or a hub name in the local cache") from err


def save_pruned(folder: str | os.PathLike[str], model: ToPModel, tokenizer: Any = None,
                summary: dict[str, Any] | None = None) -> Path:
    """Write the pruned model to ``folder`` (files written to temporary names, then renamed)."""
    if model.pruning is None or model.gates is None:
        raise ValueError("save_pruned needs a ToPModel with pruning settings and gates")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.hf_model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    gates = model.gates
    tmp = folder / (GATES_FILE + ".tmp")
    save_file({name: value.detach().contiguous().cpu() for name, value in gates.state_dict().items()}, str(tmp))
    os.replace(tmp, folder / GATES_FILE)
    settings = {
        "pruning": dataclasses.asdict(model.pruning),
        "gates": {"temperature": gates.temperature, "magical_number": gates.magical_number,
                  "monotone": gates.monotone, "deterministic_rule": gates.deterministic_rule},
        "summary": summary or {},
    }
    tmp = folder / (SETTINGS_FILE + ".tmp")
    tmp.write_text(json.dumps(settings, indent=2, default=float) + "\n")
    os.replace(tmp, folder / SETTINGS_FILE)
    return folder


def load_pruned(folder: str | os.PathLike[str]) -> tuple[ToPModel, Any]:
    """(ToPModel in eval mode, tokenizer or None) from a folder written by :func:`save_pruned`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"model folder {folder} does not exist; expected a moonlit ToP model folder "
                         f"(an HF model with {GATES_FILE} and {SETTINGS_FILE}, as moonlit.top.prune writes it)")
    for name in (SETTINGS_FILE, GATES_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} not found: {folder} is not a moonlit ToP model folder "
                                    f"(expected an HF model with {GATES_FILE} and {SETTINGS_FILE})")
    settings = json.loads((folder / SETTINGS_FILE).read_text())
    pruning_fields = dict(settings["pruning"])
    for key in ("prune_layers", "special_token_ids"):
        pruning_fields[key] = tuple(pruning_fields[key])
    pruning = PruningConfig(**pruning_fields)
    tensors = load_file(str(folder / GATES_FILE))
    gates = TokenGates(len(pruning.prune_layers), pruning.bin_num, **settings["gates"])
    gates.load_state_dict(tensors)
    hf_model = from_pretrained(AutoModelForSequenceClassification, folder, attn_implementation="eager")
    try:
        tokenizer = from_pretrained(AutoTokenizer, folder)
    except (OSError, ValueError):
        tokenizer = None
    return ToPModel(hf_model, pruning, gates).eval(), tokenizer
