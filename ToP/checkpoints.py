"""Released ToP checkpoints, read without running their pickles (ToP, KDD'23, released models).

The reference releases one Hugging Face folder per GLUE task (``senfu/bert-base-uncased-top-pruned-<task>``):
``config.json`` + ``pytorch_model.bin`` (a ``BertForSequenceClassification`` state dict, possibly with
the reference's extra keys such as ``layer_transformation.*``), and ``l0_module.pt``, written by the
reference trainer as ``torch.save(self.l0_module, ...)`` (``trainer/trainer.py``, ``save_model`` and the
best-checkpoint branch of ``evaluate``) and read back by ``run_glue_prune.py`` with a bare
``torch.load`` (``--eval_only``). The module was built with ``.cuda()``, so its storages say ``cuda:0``;
we always map them to the CPU.

Layout of ``l0_module.pt`` we rely on (protocol-2 pickle of an ``nn.Module``: ``NEWOBJ`` of the class,
then ``BUILD`` with its ``__dict__``):

* class ``models.l0_module.L0ModuleForMAC`` (``use_mac_l0``, every released model) or its base
  ``models.l0_module.L0Module``;
* ``_parameters`` (OrderedDict of Parameters): ``token_loga`` [num_locations, bin_num] (init ~10),
  ``pruner_loga`` [num_locations] (init ~-10; its gate is 1 = "this location prunes"), ``lambda_1``,
  ``lambda_2`` (scalars), and other ``*_loga`` when ``pruning_type`` names more types;
* ``z_logas``: dict type -> the same Parameters (``"token"``, ``"pruner"``, ...), our fallback when
  ``_parameters`` lacks them;
* plain attributes: ``bin_num``, ``token_prune_loc`` (layers whose *input* is pruned), ``temperature``
  (beta = 2/3), ``magical_number`` (0.8), ``droprate_init``, ``target_sparsity``, ``start_sparsity``,
  ``lagrangian_warmup``, ``pruning_type`` (e.g. ``"token+pruner"``), ``types``, ``sizes``, ``shapes``,
  ``num_hidden_layers``, ..., and ``config``: the ``transformers`` BertConfig (RobertaConfig) pickled
  the same way (class path + ``__dict__``).

The pickle goes through ``torch.load(weights_only=True)``, with inert stand-ins (:class:`PickledObject`
subclasses that only record their state) registered under exactly the class paths in
:data:`FOREIGN_CLASSES`; no foreign module is imported and no foreign code runs. Any other global
(``posix.system``, ``builtins.eval``, an unknown class) is refused with :class:`CheckpointError` naming
the file and the global.

Gate semantics (reference ``models/modeling_bert.py``, ``get_new_attention_mask_for_inference``): at
location ``i`` (layer ``prune_layers[i]``), a token of rank bin ``b`` is dropped iff the location's
gate is 1 and bin ``b``'s gate is 0. Eval gates come from ``L0Module._deterministic_z``
(:func:`moonlit.top.masks.deterministic_gates`). A module without ``pruner_loga`` has no location
gate; the reference would then crash (``pruner_z[p_count]`` on ``None``), and the only reading in
which its ``token_loga`` means anything is that every location prunes, so we fill the layer gate with
the largest log-alpha training can reach (ln 100, the reference's clamp), whose eval gate is 1.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from moonlit.common.train.checkpoint import CheckpointError
from moonlit.common.train.foreign import check_archive, refused_global

from .masks import LOG_ALPHA_MAX, GateValues, TokenGates, deterministic_gates, keep_ratio
from .model import PruningConfig, ToPModel

__all__ = [
    "FOREIGN_CLASSES",
    "L0_MODULE_FILE",
    "PickledObject",
    "ReleasedToPGates",
    "load_released_checkpoint",
    "load_released_gates",
    "released_keep_schedule",
    "released_masks",
]

L0_MODULE_FILE = "l0_module.pt"


class PickledObject:
    """Inert stand-in for a foreign class: keeps the state its pickle carried, runs none of its code.

    ``state`` is what ``BUILD`` gave (an ``nn.Module`` or config ``__dict__``); ``constructor_args`` is
    what ``NEWOBJ``/``REDUCE`` passed. Attribute names from the file never become attributes here.
    """

    foreign_path: ClassVar[str] = ""
    state: dict[str, Any]
    constructor_args: tuple[Any, ...]

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObject:
        obj = super().__new__(cls)
        obj.state = {}
        obj.constructor_args = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # REDUCE calls cls(*args): __new__ already recorded them

    def __setstate__(self, state: Any) -> None:
        # pickle's BUILD: a dict, or (dict | None, slot dict | None) for classes with __slots__.
        if isinstance(state, tuple) and len(state) == 2:
            for part in state:
                if isinstance(part, Mapping):
                    self.state.update(part)
        elif isinstance(state, Mapping):
            self.state.update(state)
        else:
            self.state["__state__"] = state

    def __repr__(self) -> str:
        return f"<pickled {self.foreign_path} with {len(self.state)} attributes>"


def _stand_in(foreign_path: str, base: type[PickledObject] = PickledObject) -> type[PickledObject]:
    name = "Pickled" + foreign_path.rsplit(".", 1)[1]
    return type(name, (base,), {"foreign_path": foreign_path, "__module__": __name__, "__qualname__": name})


PickledL0Module = _stand_in("models.l0_module.L0Module")
PickledL0ModuleForMAC = _stand_in("models.l0_module.L0ModuleForMAC", PickledL0Module)

# Class path in the pickle -> stand-in. Only these are admitted besides tensors and plain data.
FOREIGN_CLASSES: dict[str, type[PickledObject]] = {
    cls.foreign_path: cls
    for cls in (
        PickledL0Module,
        PickledL0ModuleForMAC,
        _stand_in("transformers.models.bert.configuration_bert.BertConfig"),
        _stand_in("transformers.models.roberta.configuration_roberta.RobertaConfig"),
        _stand_in("transformers.configuration_utils.PretrainedConfig"),
    )
}


@dataclass(eq=False)  # tensor fields: identity, not an ambiguous elementwise ==
class ReleasedToPGates:
    """The gate log-alphas of a released ToP model and what the reference needs to turn them into masks.

    ``token_log_alpha`` [L, bin_num]: one row per pruning location, bin 0 = best-ranked tokens.
    ``layer_log_alpha`` [L]: the location gate (eval gate 1 = the location prunes); from ``pruner_loga``,
    or ln 100 everywhere ("always prune") when ``has_layer_gate`` is False (see the module doc).
    ``prune_layers``: the reference's ``token_prune_loc``, layers whose input is pruned.
    ``lambda_1``/``lambda_2``/``target_sparsity``: None when the file lacks them.
    ``config_attributes``: the pickled transformers config's ``__dict__``; ``raw_attributes``: the
    module's whole pickled ``__dict__`` (tensors included), for inspection.
    """

    token_log_alpha: Tensor
    layer_log_alpha: Tensor
    prune_layers: list[int]
    bin_num: int
    num_hidden_layers: int
    temperature: float
    magical_number: float
    lambda_1: float | None = None
    lambda_2: float | None = None
    target_sparsity: float | None = None
    has_layer_gate: bool = True
    source_class: str = "models.l0_module.L0ModuleForMAC"
    config_attributes: dict[str, Any] = field(default_factory=dict)
    raw_attributes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        locations = len(self.prune_layers)
        if self.token_log_alpha.ndim != 2 or tuple(self.token_log_alpha.shape) != (locations, self.bin_num):
            raise ValueError(
                f"token_log_alpha has shape {tuple(self.token_log_alpha.shape)}; expected "
                f"[len(prune_layers)={locations}, bin_num={self.bin_num}]"
            )
        if tuple(self.layer_log_alpha.shape) != (locations,):
            raise ValueError(f"layer_log_alpha has shape {tuple(self.layer_log_alpha.shape)}; expected [{locations}]")
        if list(self.prune_layers) != sorted(set(self.prune_layers)) or not all(
            1 <= layer < self.num_hidden_layers for layer in self.prune_layers
        ):
            raise ValueError(
                f"prune_layers {self.prune_layers} must be strictly increasing layer indices in "
                f"[1, {self.num_hidden_layers - 1}] (layer 0 never prunes; the encoder has "
                f"{self.num_hidden_layers} layers)"
            )
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


def _load_pickle(path: Path) -> Any:
    """``torch.load`` restricted to tensors, plain data and the stand-ins of :data:`FOREIGN_CLASSES`."""
    if not path.is_file():
        raise FileNotFoundError(
            f"ToP gate file {path} does not exist; a released ToP folder holds config.json, "
            f"pytorch_model.bin and {L0_MODULE_FILE}"
        )
    stand_ins = [(cls, name) for name, cls in FOREIGN_CLASSES.items()]
    check_archive(path)  # a zip bomb is refused from the central directory, before torch reads a member
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        named = refused_global(path, err, set(FOREIGN_CLASSES)) or "an object outside tensors and plain containers"
        raise CheckpointError(
            f"{path} was refused by the restricted unpickler: it needs {named}. Only tensors, plain "
            f"containers and inert stand-ins for {', '.join(FOREIGN_CLASSES)} are admitted"
        ) from err
    except Exception as err:  # a corrupt archive surfaces as RuntimeError, EOFError, OSError, ...
        raise CheckpointError(f"{path} is not a readable torch pickle: {err}") from err


def _find_parameter(state: Mapping[str, Any], name: str, z_type: str | None = None) -> Tensor | None:
    """``_parameters[name]``, else ``z_logas[z_type]``, else a plain tensor attribute ``name``."""
    params = state.get("_parameters")
    if isinstance(params, Mapping) and isinstance(params.get(name), Tensor):
        return params[name]
    z_logas = state.get("z_logas")
    if isinstance(z_logas, Mapping) and isinstance(z_logas.get(z_type), Tensor):
        return z_logas[z_type]
    return state.get(name) if isinstance(state.get(name), Tensor) else None


def _scalar(value: Any) -> float | None:
    if isinstance(value, Tensor) and value.numel() == 1:
        return float(value.item())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _gates_from_state(path: Path, obj: PickledObject) -> ReleasedToPGates:
    state = obj.state
    config = state.get("config")
    config_attributes = dict(config.state) if isinstance(config, PickledObject) else {}
    token = _find_parameter(state, "token_loga", "token")
    if token is None:
        params = state.get("_parameters")
        found = sorted(params) if isinstance(params, Mapping) else []
        raise CheckpointError(
            f"{path} holds no token_loga (looked in _parameters and z_logas['token']; parameters present: "
            f"{found}, pruning_type={state.get('pruning_type')!r}); expected a ToP L0 module whose "
            "pruning_type includes 'token'"
        )
    token = token.detach().to(torch.float32).clone()
    if token.ndim != 2:
        raise CheckpointError(f"{path}: token_loga has shape {tuple(token.shape)}; expected [num_locations, bin_num]")
    num_locations, bins_in_tensor = token.shape
    bin_num = state.get("bin_num", bins_in_tensor)
    if bin_num != bins_in_tensor:
        raise CheckpointError(f"{path}: bin_num={bin_num!r} disagrees with token_loga's shape {tuple(token.shape)}")

    pruner = _find_parameter(state, "pruner_loga", "pruner")
    has_layer_gate = pruner is not None
    if pruner is None:
        layer = torch.full((num_locations,), LOG_ALPHA_MAX)
    else:
        layer = pruner.detach().to(torch.float32).clone().reshape(-1)

    num_hidden_layers = state.get("num_hidden_layers", config_attributes.get("num_hidden_layers"))
    if not isinstance(num_hidden_layers, int):
        raise CheckpointError(
            f"{path}: num_hidden_layers is {num_hidden_layers!r} (module attribute and config); expected an int"
        )
    prune_layers = state.get("token_prune_loc")
    if prune_layers is None:
        # run_glue_prune.py --eval_only: prune_location = the last num_locations layers.
        prune_layers = list(range(num_hidden_layers - num_locations, num_hidden_layers))
    if not isinstance(prune_layers, (list, tuple)) or not all(isinstance(x, int) for x in prune_layers):
        raise CheckpointError(f"{path}: token_prune_loc is {prune_layers!r}; expected a list of layer indices")

    missing = [name for name in ("temperature", "magical_number") if _scalar(state.get(name)) is None]
    if missing:
        raise CheckpointError(f"{path}: attribute(s) {missing} missing or not numbers; the eval masks need them")
    try:
        return ReleasedToPGates(
            token_log_alpha=token,
            layer_log_alpha=layer,
            prune_layers=list(prune_layers),
            bin_num=int(bin_num),
            num_hidden_layers=num_hidden_layers,
            temperature=float(state["temperature"]),
            magical_number=float(state["magical_number"]),
            lambda_1=_scalar(_find_parameter(state, "lambda_1")),
            lambda_2=_scalar(_find_parameter(state, "lambda_2")),
            target_sparsity=_scalar(state.get("target_sparsity")),
            has_layer_gate=has_layer_gate,
            source_class=obj.foreign_path,
            config_attributes=config_attributes,
            raw_attributes=dict(state),
        )
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from err


def load_released_gates(path: str | os.PathLike[str]) -> ReleasedToPGates:
    """Read a reference ``l0_module.pt`` (see the module doc for the layout) onto the CPU."""
    file = Path(path)
    loaded = _load_pickle(file)
    if not isinstance(loaded, PickledL0Module):
        kind = loaded.foreign_path if isinstance(loaded, PickledObject) else type(loaded).__name__
        raise CheckpointError(
            f"{file} holds a {kind}; expected a pickled models.l0_module.L0ModuleForMAC (or L0Module)"
        )
    return _gates_from_state(file, loaded)


def load_released_checkpoint(folder: str | os.PathLike[str]) -> tuple[nn.Module, ReleasedToPGates]:
    """(classifier, gates) of a local released ToP folder; the model is on the CPU, in eval mode.

    The weights load through ``AutoModelForSequenceClassification.from_pretrained`` with
    ``local_files_only=True`` (never a hub download); keys the reference adds are ignored by it.
    """
    from transformers import AutoModelForSequenceClassification

    root = Path(folder)
    if not (root / "config.json").is_file():
        raise FileNotFoundError(f"{root / 'config.json'} does not exist; expected a local Hugging Face model folder")
    gates = load_released_gates(root / L0_MODULE_FILE)
    model = AutoModelForSequenceClassification.from_pretrained(str(root), local_files_only=True)
    layers = model.config.num_hidden_layers
    if layers != gates.num_hidden_layers:
        raise CheckpointError(
            f"{root}: the model has {layers} layers but {L0_MODULE_FILE} was trained for {gates.num_hidden_layers}"
        )
    return model.eval(), gates


def released_masks(gates: ReleasedToPGates) -> GateValues:
    """Eval-time 0/1 gates of the reference: ``bins`` [L, bin_num] and ``layers`` [L] (1 = prunes).

    Per row, round(bin_num - sum P(z > 0)) bins with the smallest sigmoid(log_alpha / beta * 0.8) are
    zeroed (``L0Module._deterministic_z``); the location gate is the same rule on a scalar.
    """
    bins = deterministic_gates(gates.token_log_alpha, gates.temperature, gates.magical_number)
    layers = deterministic_gates(gates.layer_log_alpha, gates.temperature, gates.magical_number, elementwise=True)
    return GateValues(bins=bins, layers=layers)


def released_top_model(folder: str | os.PathLike[str]) -> ToPModel:
    """A released checkpoint as a :class:`ToPModel` with the reference's semantics, ready to evaluate.

    The gates are the released log-alphas under the reference's eval rule (independent bins,
    threshold location gates); pruning follows the reference (CLS only protected, scores averaged
    over all query rows). Its eval-mode gate values equal :func:`released_masks`.
    """
    hf_model, released = load_released_checkpoint(folder)
    if getattr(hf_model.config, "_attn_implementation", "eager") != "eager":
        hf_model.config._attn_implementation = "eager"
    gates = TokenGates(len(released.prune_layers), released.bin_num, temperature=released.temperature,
                       magical_number=released.magical_number, monotone=False, deterministic_rule="threshold")
    with torch.no_grad():
        gates.bin_log_alpha.copy_(released.token_log_alpha)
        gates.layer_log_alpha.copy_(released.layer_log_alpha)
    pruning = PruningConfig.reference_semantics(released.prune_layers, released.bin_num)
    return ToPModel(hf_model, pruning, gates).eval()


def released_keep_schedule(gates: ReleasedToPGates) -> dict[str, Any]:
    """What the released gates do at inference, as JSON-able lists (for reports).

    ``bin_keep`` [L][bin_num] 0/1; ``location_prunes`` [L]; ``keep_ratio`` [L]: fraction of the alive
    tokens each location keeps, 1 - (1 - kept/bin_num) * prunes (the reference's
    ``token_ratio_for_inference``); ``remaining_token_ratio`` [num_hidden_layers]: fraction of the
    tokens entering each layer, the cumulative product of the keep ratios (the reference's
    ``remaining_token_ratio`` of ``calculate_model_size``, not rounded to 2 decimals here).
    """
    masks = released_masks(gates)
    ratios = keep_ratio(GateValues(bins=masks.bins.double(), layers=masks.layers.double()))
    per_layer = [1.0] * gates.num_hidden_layers
    for location, layer in enumerate(gates.prune_layers):
        per_layer[layer] = float(ratios[location])
    remaining = torch.tensor(per_layer, dtype=torch.float64).cumprod(0)
    return {
        "prune_layers": list(gates.prune_layers),
        "bin_num": gates.bin_num,
        "bin_keep": masks.bins.to(torch.int64).tolist(),
        "kept_bins": masks.bins.sum(-1).to(torch.int64).tolist(),
        "location_prunes": [bool(x) for x in masks.layers.tolist()],
        "keep_ratio": [float(x) for x in ratios.tolist()],
        "remaining_token_ratio": remaining.tolist(),
    }

