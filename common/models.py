"""One model registry for every paper: ``create_model(name, ...)``, also registered with timm.

Papers register thin builder functions under lowercase timm-style names (``seqnet_vnni_a0``,
``elasticvit_s1``) with :func:`register_model`, and string encodings under a family prefix
(``"elasticvit:r128_s16..."``) with :func:`register_family`. This module imports no paper: the
papers are plug-ins of the entry-point group ``moonlit.models`` (declared in ``pyproject.toml``),
imported once, when this module is first imported and again (a no-op) on each lookup.

Lookup order of :func:`create_model`: a registered name, then a registered alias (the papers'
display names such as ``"SEQnet@vnni-A0"`` or ``"S1"``), then ``<family>:<encoding>``, then timm's
own names (the baselines). Every registered name is also a timm model, so after
``import moonlit.common.models`` ``timm.create_model("seqnet_vnni_a0")`` builds the same network.

Weights never come from a hub download. ``checkpoint=`` loads through the project's loaders: a
moonlit checkpoint directory (:mod:`moonlit.common.train.checkpoint`), a ``.safetensors`` file, or a
foreign ``.pth`` through the restricted unpickler (:mod:`moonlit.common.train.foreign`); builders
registered with ``loads_weights=True`` (supernet-cut models, ToP folders) read their own checkpoints.
``pretrained=True`` without ``checkpoint=`` looks for a ``scripts/get_data.sh`` artefact whose
``config.json`` names the model as its ``architecture`` (``data/efficientnet_lite0`` for
``tf_efficientnet_lite0``).

``python -m moonlit.common.models`` (configs/common/models.yaml) lists the registered models with
family, paper, MMACs and parameters; ``pattern=``/``paper=`` filter, ``complexity=false`` skips
building the models.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib
import inspect
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

import torch
from omegaconf import DictConfig
from torch import nn

from .config import hydra_app
from .errors import InputError

__all__ = [
    "ENTRY_POINT_GROUP",
    "ModelEntry",
    "create_model",
    "describe_models",
    "list_families",
    "list_models",
    "load_plugins",
    "load_weights",
    "local_weights",
    "model_entry",
    "register_family",
    "register_model",
    "run",
]

ENTRY_POINT_GROUP = "moonlit.models"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # timm's names: lowercase, digits, underscores
_WEIGHTS_FILE = "model.safetensors"
_CONFIG_FILE = "config.json"

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])
_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One registered model (or family of encodings)."""

    name: str
    builder: Callable[..., nn.Module]
    family: str
    paper: str
    description: str = ""
    aliases: tuple[str, ...] = ()
    # True: the builder takes ``pretrained``/``checkpoint`` and reads its own weights; False: the registry
    # loads ``checkpoint`` (or local pretrained weights) into what the builder returns.
    loads_weights: bool = False


_MODELS: dict[str, ModelEntry] = {}
_ALIASES: dict[str, str] = {}
_FAMILIES: dict[str, ModelEntry] = {}
_PLUGINS_LOADED: set[str] = set()
_PLUGIN_ERRORS: dict[str, str] = {}


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    """True for a re-registration of the same function: a module imported twice, e.g. by ``importlib.reload``,
    or run as ``python -m`` (``__main__``) while the plug-ins import it under its own name."""

    def origin(fn: Callable[..., Any]) -> tuple[str, str]:
        code = getattr(fn, "__code__", None)
        return (code.co_filename if code is not None else fn.__module__, fn.__qualname__)

    return origin(a) == origin(b)


def _timm_entrypoint(entry: ModelEntry) -> Callable[..., nn.Module]:
    """The function timm calls: it passes ``pretrained`` and its cfg keywords, which moonlit models ignore."""

    def entrypoint(pretrained: bool = False, pretrained_cfg: Any = None, pretrained_cfg_overlay: Any = None,
                   cache_dir: Any = None, **kwargs: Any) -> nn.Module:
        checkpoint = kwargs.pop("checkpoint", None)
        return _build(entry, pretrained, checkpoint, kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = entry.name
    entrypoint.__module__ = entry.builder.__module__
    entrypoint.__doc__ = entry.description or entry.builder.__doc__
    return entrypoint


def _register_with_timm(entry: ModelEntry, replacing: bool) -> None:
    import timm.models

    entrypoint = _timm_entrypoint(entry)
    module = sys.modules[entrypoint.__module__]
    # timm lists its entry points in the module's __all__ (as timm's own model files do): the module must hold them.
    if not hasattr(module, entry.name):
        setattr(module, entry.name, entrypoint)
    with warnings.catch_warnings():
        if replacing:  # the same builder again (see _same_function): timm's "Overwriting" warning says nothing new
            warnings.filterwarnings("ignore", message=f"Overwriting {entry.name} in registry")
        timm.models.register_model(entrypoint)


def register_model(name: str, *, family: str, paper: str, description: str = "", aliases: tuple[str, ...] = (),
                   loads_weights: bool = False, timm: bool = True) -> Callable[[Builder], Builder]:
    """Register a builder under ``name`` (lowercase timm-style) and ``aliases`` (display names).

    The builder takes the model's keyword arguments (``num_classes=``, ...) and, with
    ``loads_weights=True``, also ``pretrained: bool`` and ``checkpoint: Path | None``.
    ``timm=True`` also registers it with timm (image models; ToP's text models pass False).
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"model name {name!r} is not timm-style; expected lowercase letters, digits and '_'")

    def decorate(builder: Builder) -> Builder:
        entry = ModelEntry(name, builder, family, paper, description or (builder.__doc__ or "").strip().split("\n")[0],
                           tuple(aliases), loads_weights)
        previous = _MODELS.get(name)
        if previous is not None and not _same_function(previous.builder, builder):
            raise ValueError(f"model name {name!r} is registered twice: {previous.builder.__module__}."
                             f"{previous.builder.__qualname__} and {builder.__module__}.{builder.__qualname__}")
        for alias in entry.aliases:
            owner = _ALIASES.get(alias, name)
            if owner != name or (alias in _MODELS and alias != name):
                raise ValueError(f"alias {alias!r} of {name!r} already names {owner!r}")
        _MODELS[name] = entry
        _ALIASES.update({alias: name for alias in entry.aliases})
        if timm:
            _register_with_timm(entry, replacing=previous is not None)
        return builder

    return decorate


def register_family(prefix: str, *, paper: str, description: str = "") -> Callable[[Builder], Builder]:
    """Register a builder of string encodings: ``create_model("<prefix>:<encoding>", ...)`` calls
    ``builder(encoding, pretrained=..., checkpoint=..., **kwargs)``; it validates the encoding."""
    if not isinstance(prefix, str) or not _NAME.match(prefix):
        raise ValueError(f"family prefix {prefix!r} should be lowercase letters, digits and '_'")

    def decorate(builder: Builder) -> Builder:
        previous = _FAMILIES.get(prefix)
        if previous is not None and not _same_function(previous.builder, builder):
            raise ValueError(f"model family {prefix!r} is registered twice")
        _FAMILIES[prefix] = ModelEntry(prefix, builder, prefix, paper, description, (), True)
        return builder

    return decorate


def load_plugins() -> None:
    """Import every module of the entry-point group ``moonlit.models`` once (each registers its models).

    A plug-in that fails to import is logged and named in later lookup errors; the others still load.
    """
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.value in _PLUGINS_LOADED:
            continue
        _PLUGINS_LOADED.add(point.value)
        try:
            importlib.import_module(point.value)
        except Exception as err:  # a broken plug-in must not hide the others' models
            _PLUGIN_ERRORS[point.name] = f"{point.value}: {type(err).__name__}: {err}"
            _log.warning("model plug-in %s (%s) failed to load: %s", point.name, point.value, err)


def _known_names() -> list[str]:
    return sorted(_MODELS) + sorted(_ALIASES)


def _unknown(name: str) -> InputError:
    import timm

    candidates = list(dict.fromkeys(_known_names() + [f"{prefix}:" for prefix in _FAMILIES] + timm.list_models()))
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    broken = f"; plug-ins that failed to load: {'; '.join(_PLUGIN_ERRORS.values())}" if _PLUGIN_ERRORS else ""
    return InputError(f"unknown model {name!r:.120}: expected a name of list_models() (or a timm model), or "
                      f"'<family>:<encoding>' with a family of {sorted(_FAMILIES)}{hint}{broken}")


def model_entry(name: str) -> ModelEntry:
    """The registered entry of a name or alias (family encodings and timm names have none)."""
    load_plugins()
    if not isinstance(name, str):
        raise InputError(f"a model name must be a string, got {type(name).__name__} {name!r:.80}")
    key = _ALIASES.get(name, name)
    if key not in _MODELS:
        raise _unknown(name)
    return _MODELS[key]


def list_models(pattern: str | None = None, *, paper: str | None = None, family: str | None = None) -> list[str]:
    """Registered names (sorted), filtered by a shell-style ``pattern`` and by ``paper``/``family``."""
    load_plugins()
    return [name for name, entry in sorted(_MODELS.items())
            if (pattern is None or fnmatch.fnmatchcase(name, pattern))
            and (paper is None or entry.paper == paper) and (family is None or entry.family == family)]


def list_families() -> list[str]:
    """The registered encoding prefixes (``create_model("<prefix>:<encoding>")``)."""
    load_plugins()
    return sorted(_FAMILIES)


def _state_dict_of(loaded: dict[str, Any], source: Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint: the dict itself, or its ``state_dict``/``model`` entry."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise InputError(f"{source} holds no state dict (a mapping of names to tensors, or one under "
                         "'state_dict'/'model')")
    return loaded


def load_weights(model: nn.Module, checkpoint: str | os.PathLike[str]) -> nn.Module:
    """Load ``checkpoint`` strictly into ``model``: a moonlit checkpoint directory, a ``.safetensors`` file,
    or a torch file read by the restricted unpickler (tensors and plain data only)."""
    from .train.checkpoint import CheckpointError, load_checkpoint
    from .train.foreign import load_foreign_checkpoint

    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise InputError(f"checkpoint {path} does not exist; expected a moonlit checkpoint directory, "
                         "a .safetensors file or a .pth/.pt state dict")
    if path.is_dir():
        try:
            load_checkpoint(path, model)
        except CheckpointError as err:  # load_state_dict's report spans lines
            raise CheckpointError(" ".join(str(err).split())[:600]) from None
        return model
    state = _state_dict_of(load_foreign_checkpoint(path), path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: "
                              f"{' '.join(line.strip() for line in first)[:400]}") from None
    return model


def local_weights(name: str, root: str | os.PathLike[str] | None = None) -> Path | None:
    """``model.safetensors`` of the fetched data artefact whose ``config.json`` has ``architecture == name``."""
    from .data.real import data_root, read_manifest

    base = data_root(root)
    for entry in read_manifest(root).values():
        folder = base / str(entry.get("folder", "")) if isinstance(entry, dict) else None
        if folder is None or not (folder / _CONFIG_FILE).is_file() or not (folder / _WEIGHTS_FILE).is_file():
            continue
        try:
            config = json.loads((folder / _CONFIG_FILE).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(config, dict) and config.get("architecture") == name:
            return folder / _WEIGHTS_FILE
    return None


def _pretrained_weights(name: str) -> Path:
    found = local_weights(name)
    if found is None:
        from .data.real import data_root

        raise InputError(f"no local pretrained weights for {name!r} (nothing is downloaded here): expected a folder "
                         f"under {data_root().resolve()} with {_CONFIG_FILE} naming architecture {name!r} and "
                         f"{_WEIGHTS_FILE} (bash scripts/get_data.sh), or pass checkpoint=<weights file or "
                         "checkpoint directory>")
    return found


def _check_arguments(label: str, entry: ModelEntry, kwargs: dict[str, Any], *leading: Any) -> None:
    """Refuse keyword arguments the builder does not take, naming the ones it does (instead of a TypeError)."""
    signature = inspect.signature(entry.builder)
    try:
        signature.bind(*leading, **kwargs)
    except TypeError:
        accepted = [name for name, parameter in signature.parameters.items()
                    if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
                    and name not in ("encoding", "pretrained", "checkpoint")]
        unknown = sorted(set(kwargs) - set(accepted))
        raise InputError(f"{label} takes no argument(s) {unknown}; expected keyword arguments among {accepted}"
                         ) from None


def _build(entry: ModelEntry, pretrained: bool, checkpoint: str | os.PathLike[str] | None,
           kwargs: dict[str, Any]) -> nn.Module:
    path = None if checkpoint is None else Path(checkpoint).expanduser()
    _check_arguments(f"model {entry.name!r}", entry, kwargs, *((pretrained, path) if entry.loads_weights else ()))
    if entry.loads_weights:
        return entry.builder(pretrained=pretrained, checkpoint=path, **kwargs)
    if path is None and pretrained:
        path = _pretrained_weights(entry.name)
    model = entry.builder(**kwargs)
    return model if path is None else load_weights(model, path)


def _create_timm(name: str, pretrained: bool, checkpoint: str | os.PathLike[str] | None,
                 kwargs: dict[str, Any]) -> nn.Module:
    import timm

    path = None if checkpoint is None else Path(checkpoint).expanduser()
    if path is None and pretrained:
        path = _pretrained_weights(name)
    model = timm.create_model(name, pretrained=False, **kwargs)
    return model if path is None else load_weights(model, path)


def create_model(name: str, pretrained: bool = False, checkpoint: str | os.PathLike[str] | None = None,
                 **kwargs: Any) -> nn.Module:
    """The model ``name`` (a registered name or alias, ``<family>:<encoding>``, or a timm name).

    Random weights by default. ``checkpoint`` loads weights (see the module docstring); ``pretrained=True``
    without ``checkpoint`` needs local weights and says which file is missing otherwise.
    """
    load_plugins()
    if not isinstance(name, str):
        raise InputError(f"a model name must be a string, got {type(name).__name__} {name!r:.80}")
    key = _ALIASES.get(name, name)
    if key in _MODELS:
        return _build(_MODELS[key], pretrained, checkpoint, kwargs)
    prefix, colon, encoding = name.partition(":")
    if colon:
        if prefix not in _FAMILIES:
            raise _unknown(name)
        path = None if checkpoint is None else Path(checkpoint).expanduser()
        _check_arguments(f"model family {prefix!r}", _FAMILIES[prefix], kwargs, encoding, pretrained, path)
        return _FAMILIES[prefix].builder(encoding, pretrained=pretrained, checkpoint=path, **kwargs)
    import timm

    if timm.is_model(name):
        return _create_timm(name, pretrained, checkpoint, kwargs)
    raise _unknown(name)


def _input_resolution(model: nn.Module) -> int | None:
    """The square image side a model is built for: its ``resolution`` (SEQnets), its ``subnet.resolution``
    (ElasticViT) or timm's ``pretrained_cfg["input_size"]``; None for a model of no image size (text)."""
    for owner in (model, getattr(model, "subnet", None)):
        side = getattr(owner, "resolution", None)
        if isinstance(side, int):
            return side
    config = getattr(model, "pretrained_cfg", None)
    size = config.get("input_size") if isinstance(config, dict) else None
    return int(size[-1]) if isinstance(size, (tuple, list)) and len(size) == 3 else None


def describe_models(pattern: str | None = None, *, paper: str | None = None,
                    complexity: bool = True) -> list[dict[str, Any]]:
    """One row per registered model (:func:`list_models` order and filters): name, family, paper, aliases,
    description and, with ``complexity``, MMACs of one image at the model's resolution and parameters (M),
    counted on a random-init build by :func:`moonlit.common.profiling.flops.count_macs`. A model that
    cannot be built without weights (``checkpoint=``) or has no image input gets None and a note."""
    rows = []
    for name in list_models(pattern, paper=paper):
        entry = _MODELS[name]
        row: dict[str, Any] = {"name": name, "family": entry.family, "paper": entry.paper,
                               "aliases": list(entry.aliases), "description": entry.description,
                               "resolution": None, "mmacs": None, "params_m": None, "note": ""}
        if complexity:
            _add_complexity(row)
        rows.append(row)
    return rows


def _add_complexity(row: dict[str, Any]) -> None:
    from .profiling.flops import count_macs

    try:
        model = create_model(row["name"])
    except InputError as err:  # e.g. a ToP folder model: no weights, no model
        row["note"] = "needs checkpoint= (no built-in weights)" if "checkpoint=" in str(err) else f"{err}"[:100]
        return
    row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    side = _input_resolution(model)
    if side is None:
        row["note"] = "no image input: MACs not counted"
        return
    row["resolution"] = side
    row["mmacs"] = count_macs(model, torch.zeros(1, 3, side, side)).macs / 1e6


def _cell(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def models_table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of :func:`describe_models` rows."""
    lines = ["| model | family | paper | aliases | res | MMACs | params (M) | note |",
             "|---|---|---|---|---:|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row['name']} | {row['family']} | {row['paper']} | {', '.join(row['aliases'])} | "
                     f"{row['resolution'] or '—'} | {_cell(row['mmacs'], 1)} | {_cell(row['params_m'], 2)} | "
                     f"{row['note'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    """The work behind ``python -m moonlit.common.models``: print the table of the matching models, return
    its rows. An unknown ``paper`` or a pattern matching nothing is an InputError naming what exists."""
    papers = sorted({_MODELS[name].paper for name in list_models()})
    if cfg.paper is not None and cfg.paper not in papers:
        raise InputError(f"paper={cfg.paper!r} has no registered models; expected one of {papers}")
    rows = describe_models(cfg.pattern, paper=cfg.paper, complexity=bool(cfg.complexity))
    if not rows:
        raise InputError(f"pattern={cfg.pattern!r} (paper={cfg.paper!r}) matches no registered model; "
                         f"expected a shell-style pattern such as 'seqnet_*' over {len(list_models())} names")
    print(models_table(rows), end="")
    return rows


@hydra_app("common", "models")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    # Run as a script this file is a second copy of the module; the plug-ins register with the real one.
    from moonlit.common import models as _registry

    _registry.main()
else:
    # Registering the plug-ins at import lets ``timm.create_model`` find their names (timm has no plug-in
    # discovery). A plug-in importing this module first sees it complete up to here, so the cycle is harmless.
    load_plugins()
