"""A folder shaped like a released ToP checkpoint, written without the reference code (ToP, KDD'23, released models).

Test and example support for :mod:`.checkpoints`: :func:`write_reference_style_checkpoint` writes
``config.json``, ``pytorch_model.bin`` and ``l0_module.pt`` as the reference trainer does, the L0 module
pickled under the class path of a fake ``models.l0_module`` that exists only while saving.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoints import L0_MODULE_FILE
from .masks import MAGICAL_NUMBER, TEMPERATURE

__all__ = ["write_reference_style_checkpoint"]


@contextmanager
def _fake_reference_module() -> Iterator[types.ModuleType]:
    """``models.l0_module`` with empty ``L0Module(nn.Module)``/``L0ModuleForMAC`` classes, only inside the block.

    Not thread-safe: it swaps ``sys.modules`` entries for the duration (restoring any it shadowed).
    """
    package, module = types.ModuleType("models"), types.ModuleType("models.l0_module")
    base = type("L0Module", (nn.Module,), {"__module__": module.__name__})
    module.L0Module = base
    module.L0ModuleForMAC = type("L0ModuleForMAC", (base,), {"__module__": module.__name__})
    package.l0_module = module
    shadowed = {name: sys.modules.get(name) for name in ("models", "models.l0_module")}
    sys.modules.update({"models": package, "models.l0_module": module})
    try:
        yield module
    finally:
        for name, previous in shadowed.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def write_reference_style_checkpoint(
    folder: str | os.PathLike[str],
    hf_model: nn.Module,
    token_log_alpha: Tensor | None,
    layer_log_alpha: Tensor | None,
    prune_layers: Sequence[int],
    bin_num: int,
    *,
    temperature: float = TEMPERATURE,
    magical_number: float = MAGICAL_NUMBER,
    target_sparsity: float = 0.5,
    lambda_1: float = 0.0,
    lambda_2: float = 0.0,
    class_name: str = "L0ModuleForMAC",
    extra_attributes: Mapping[str, Any] | None = None,
) -> Path:
    """For tests: write a folder shaped like a released ToP checkpoint, without the reference code.

    ``config.json`` + ``pytorch_model.bin`` (the model's state dict plus the reference's
    ``layer_transformation.*`` keys) and ``l0_module.pt``: ``torch.save`` of an ``nn.Module`` whose
    class path is ``models.l0_module.<class_name>``, holding ``token_loga``/``pruner_loga`` (omitted
    when None), ``lambda_1``/``lambda_2`` and the reference's plain attributes, with ``config`` =
    ``hf_model.config``. ``extra_attributes`` are set last (to add or override any attribute).
    The fake ``models.l0_module`` exists in ``sys.modules`` only while saving.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    config = hf_model.config
    config.save_pretrained(str(root))
    weights = {name: tensor.detach().clone() for name, tensor in hf_model.state_dict().items()}
    hidden = config.hidden_size
    weights["layer_transformation.weight"] = torch.zeros(hidden, hidden)
    weights["layer_transformation.bias"] = torch.zeros(hidden)
    torch.save(weights, root / "pytorch_model.bin")

    locations = len(prune_layers)
    logas: dict[str, Tensor] = {}
    if token_log_alpha is not None:
        logas["token"] = token_log_alpha
    if layer_log_alpha is not None:
        logas["pruner"] = layer_log_alpha
    with _fake_reference_module() as fake:
        cls = getattr(fake, class_name)
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        z_logas = {}
        for z_type, loga in logas.items():
            parameter = nn.Parameter(loga.detach().clone().to(torch.float32))
            setattr(module, f"{z_type}_loga", parameter)
            z_logas[z_type] = parameter
        sizes = {"token": bin_num, "pruner": 1}
        shapes = {"token": [locations, bin_num], "pruner": [locations]}
        attributes: dict[str, Any] = {
            "bin_num": bin_num,
            "all_types": [f"{t}_z" for t in logas],
            "pruning_type": "+".join(logas),
            "hidden_size": hidden,
            "intermediate_size": config.intermediate_size,
            "num_attention_heads": config.num_attention_heads,
            "mlp_num_per_layer": 1,
            "dim_per_head": hidden // config.num_attention_heads,
            "num_hidden_layers": config.num_hidden_layers,
            "vocab_size": config.vocab_size,
            "token_prune_loc": list(prune_layers),
            "num_labels": config.num_labels,
            "prunable_model_size": 0,
            "temperature": temperature,
            "droprate_init": 0.5,
            "types": list(logas),
            "z_logas": z_logas,
            "parameters_per_dim": {t: None for t in logas},
            "sizes": {t: sizes[t] for t in logas},
            "shapes": {t: shapes[t] for t in logas},
            "hidden_loga": None,
            "hidden_type": None,
            "magical_number": magical_number,
            "lambda_1": nn.Parameter(torch.tensor(float(lambda_1))),
            "lambda_2": nn.Parameter(torch.tensor(float(lambda_2))),
            "lambda_3": torch.tensor(0.0),
            "lagrangian_warmup": 100,
            "start_sparsity": 0.0,
            "target_sparsity": target_sparsity,
            "config": config,
        }
        attributes.update(extra_attributes or {})
        for name, value in attributes.items():
            setattr(module, name, value)
        torch.save(module, root / L0_MODULE_FILE)
    return root
