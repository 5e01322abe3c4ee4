"""A token-pruned model on disk: an HF model folder plus the gates and the pruning settings.

``<dir>/`` holds what ``save_pretrained`` writes (model and tokenizer), ``token_gates.safetensors``
(the gates' log-alphas) and ``token_pruning.json`` (``PruningConfig``, gate settings, the training
summary). ``load_pruned(dir)`` rebuilds the :class:`~moonlit.top.model.ToPModel` from them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from .masks import TokenGates
from .model import PruningConfig, ToPModel

GATES_FILE = "token_gates.safetensors"
SETTINGS_FILE = "token_pruning.json"


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
    hf_model = AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="eager")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError):
        tokenizer = None
    return ToPModel(hf_model, pruning, gates).eval(), tokenizer
