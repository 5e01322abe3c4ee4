"""The published SEQnets by name (SpaceEvo, ICCV'23, Table 2 and §5.1), in the model registry.

``create_model("seqnet_vnni_a0")`` (:mod:`moonlit.common.models`; also ``"SEQnet@vnni-A0"``, and
``timm.create_model("seqnet_vnni_a0")``) builds the static subnet. The ten models are data, copied
from the reference's ``search_result.yaml`` into :data:`PUBLISHED_SUPERNETS` (supernet name -> space
encoding, ``spaceevo@vnni`` -> ``onnxw-151122-023231``) and :data:`PUBLISHED_SEQNETS` (SEQnet name ->
[supernet name, subnet encoding]). A file of the same layout can still be read with
``search_result=`` (:func:`load_search_result`).

Each A0 model is its supernet's minimum subnet. Any subnet of any space is
``"seqnet:<space>:<subnet>"`` (``seqnet:onnxw-151122-023231:d1#1#2..._r160``). Weights come from a
supernet checkpoint (the reference's ``checkpoint.pth``/``lsq.pth`` or one of our checkpoint
directories), cut down to the subnet: ``create_model(name, checkpoint=..., num_classes=..., quantized=...)``.

:func:`resolve_model` is the architecture lookup, not a constructor: a name (published, or of a
search-result file) or an encoding -> :class:`SeqnetSpec` (space, subnet, resolution), whose
:attr:`SeqnetSpec.model_name` is what ``create_model`` takes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from pathlib import Path
from typing import Any

import yaml

from moonlit.common.errors import InputError
from moonlit.common.models import register_family, register_model
from moonlit.common.train.checkpoint import load_checkpoint
from moonlit.spaceevo.checkpoints import load_reference_supernet
from moonlit.spaceevo.ops.lsq_plus import set_quant_mode
from moonlit.spaceevo.space import SpaceEncoding, SubnetEncoding
from moonlit.spaceevo.supernet import StaticSubnet, Supernet

__all__ = ["DEFAULT_SEARCH_RESULT", "PUBLISHED_SEQNETS", "PUBLISHED_SUPERNETS", "SeqnetSpec", "load_search_result",
           "registry_name", "resolve_model", "resolve_search_result", "seqnet_names"]

REPO_ROOT = Path(__file__).resolve().parents[1]
# shared/ sits beside the repository clone; relative paths are tried from the cwd, then the repo root.
DEFAULT_SEARCH_RESULT = "../shared/data/spaceevo/search_result.yaml"

# The reference's search_result.yaml (specific_supernet_encoding_dict, specific_subnet_encoding_dict);
# tests/spaceevo/test_models_registry.py checks these against the file.
PUBLISHED_SUPERNETS: dict[str, str] = {
    "spaceevo@pixel4": "mobilew-122222-155400",
    "spaceevo@pixel4-tiny": "mobilew-332160-134200",
    "spaceevo@pixel4-medium": "mobilew-112220-154410",
    "spaceevo@vnni": "onnxw-151122-023231",
    "spaceevo@vnni-large": "onnxw-121122-133333",
}
# name -> (supernet name, subnet encoding): depths, kernels, widths, expand ratios, resolution
PUBLISHED_SEQNETS: dict[str, tuple[str, str]] = {
    "SEQnet@pixel4-A0": ("spaceevo@pixel4", (
        "d1#1#2#2#2#2#2#1_"
        "k3#3#3#3#3#3#3#3#3#3#3#3#3_"
        "w16#16#32#32#64#64#96#96#144#144#192#192#216_"
        "e0#1.0#3.0#3.0#3.0#3.0#3.0#3.0#3.0#3.0#3.0#3.0#3.0_"
        "r160")),
    "SEQnet@pixel4-A1": ("spaceevo@pixel4", (
        "d1#1#2#2#2#2#4#1_"
        "k3#3#3#3#3#3#7#3#3#3#3#3#5#3#3_"
        "w16#16#32#32#64#64#96#96#144#144#224#192#208#192#232_"
        "e0#1.0#3.0#3.0#3.0#3.0#3.0#3.0#3.0#3.0#6.0#6.0#6.0#3.0#3.0_"
        "r208")),
    "SEQnet@pixel4-A2": ("spaceevo@pixel4", (
        "d1#1#2#2#2#3#4#1_"
        "k3#3#3#3#3#3#3#3#5#3#3#7#5#7#5#5_"
        "w16#16#40#32#64#72#96#96#152#160#152#200#224#200#200#248_"
        "e0#1.0#3.0#3.0#3.0#3.0#3.0#6.0#3.0#6.0#3.0#6.0#3.0#3.0#6.0#3.0_"
        "r224")),
    "SEQnet@pixel4-A3": ("spaceevo@pixel4", (
        "d1#1#2#3#3#4#4#1_"
        "k3#3#3#3#3#3#5#7#3#3#3#3#3#5#3#3#3#5#3_"
        "w16#16#32#32#64#72#64#112#96#104#152#144#152#152#200#192#208#192#280_"
        "e0#1.0#8.0#3.0#3.0#6.0#3.0#8.0#3.0#6.0#6.0#6.0#3.0#3.0#6.0#8.0#6.0#6.0#6.0_"
        "r224")),
    "SEQnet@pixel4-A4": ("spaceevo@pixel4", (
        "d1#2#2#3#4#4#5#1_"
        "k3#3#3#3#3#3#3#5#3#5#5#3#3#3#3#5#7#5#3#5#3#3_"
        "w24#16#24#32#32#72#64#64#112#96#104#104#152#144#144#152#224#216#208#224#208#296_"
        "e0#1.0#1.0#6.0#8.0#6.0#3.0#3.0#6.0#6.0#3.0#3.0#8.0#8.0#6.0#3.0#8.0#6.0#6.0#3.0#3.0#6.0_"
        "r224")),
    "SEQnet@vnni-A0": ("spaceevo@vnni", (
        "d1#1#2#2#2#2#2#1_"
        "k3#3#3#3#3#3#3#3#3#3#3#3#3_"
        "w16#16#32#32#64#64#112#112#144#144#240#240#320_"
        "e0#0.5#4.0#4.0#1.0#1.0#4.0#4.0#4.0#4.0#4.0#4.0#4.0_"
        "r160")),
    "SEQnet@vnni-A1": ("spaceevo@vnni", (
        "d1#1#2#2#3#2#3#1_"
        "k3#3#3#3#3#3#3#5#3#3#3#3#3#3#5_"
        "w16#16#32#32#64#80#128#112#112#144#176#304#304#256#368_"
        "e0#0.5#4.0#4.0#2.0#1.0#4.0#6.0#4.0#4.0#4.0#4.0#6.0#4.0#4.0_"
        "r192")),
    "SEQnet@vnni-A2": ("spaceevo@vnni", (
        "d1#1#2#2#4#4#4#1_"
        "k3#3#3#3#3#3#3#3#5#5#3#5#5#3#3#3#3#3#5_"
        "w16#16#32#32#64#64#112#112#112#128#144#144#160#160#288#272#288#256#320_"
        "e0#0.5#4.0#6.0#3.0#2.0#4.0#4.0#6.0#8.0#8.0#4.0#4.0#4.0#4.0#6.0#6.0#4.0#4.0_"
        "r208")),
    "SEQnet@vnni-A3": ("spaceevo@vnni", (
        "d1#1#2#2#3#4#4#1_"
        "k3#3#3#3#3#3#5#5#5#3#3#5#3#3#5#3#3#3_"
        "w16#32#32#48#80#80#144#128#112#144#176#144#144#272#288#272#240#320_"
        "e0#0.5#4.0#8.0#4.0#2.0#6.0#6.0#6.0#6.0#8.0#4.0#4.0#8.0#6.0#4.0#6.0#6.0_"
        "r224")),
    "SEQnet@vnni-A4": ("spaceevo@vnni", (
        "d1#1#3#3#4#5#4#2_"
        "k3#3#3#5#3#3#3#3#5#5#5#5#5#3#3#3#5#3#5#5#3#3#3_"
        "w16#32#32#48#32#64#80#80#128#128#144#128#160#144#144#144#176#256#272#272#272#336#320_"
        "e0#0.5#4.0#8.0#6.0#4.0#2.0#2.0#6.0#8.0#6.0#6.0#8.0#8.0#6.0#4.0#6.0#8.0#8.0#6.0#4.0#8.0#6.0_"
        "r224")),
}


@dataclasses.dataclass(frozen=True)
class SeqnetSpec:
    """One named model: its supernet's space and its subnet."""

    name: str
    space: SpaceEncoding
    subnet: SubnetEncoding
    supernet: str | None = None  # the search result's supernet name, e.g. "spaceevo@vnni"

    @property
    def hyperspace(self) -> str:
        return self.space.hyperspace

    @property
    def model_name(self) -> str:
        """The name ``create_model`` builds this architecture by: the registered name of a published
        SEQnet (``seqnet_vnni_a0``), else ``seqnet:<space>:<subnet>``."""
        if _published().get(self.name) == self:
            return registry_name(self.name)
        return f"seqnet:{self.space.encode()}:{self.subnet.encode()}"


def resolve_search_result(path: str | os.PathLike[str] | None = None) -> Path:
    """The search-result file: absolute as given; relative from the cwd, else from the repository root."""
    candidate = Path(DEFAULT_SEARCH_RESULT if path is None else path).expanduser()
    if candidate.is_absolute() or candidate.is_file():
        if not candidate.is_file():
            raise FileNotFoundError(f"search result file {candidate} not found")
        return candidate
    from_root = REPO_ROOT / candidate
    if from_root.is_file():
        return from_root
    raise FileNotFoundError(f"search result file '{candidate}' found neither in {Path.cwd()} nor in {REPO_ROOT}; "
                            "pass an absolute search_result=... (the reference's search_result.yaml)")


@functools.lru_cache(maxsize=8)
def _load(path: Path) -> dict[str, SeqnetSpec]:
    """Read a search-result file: a mapping with two mappings, ``specific_supernet_encoding_dict``
    (name -> space encoding string) and ``specific_subnet_encoding_dict`` (name -> [supernet name,
    subnet encoding string]); other keys are ignored. Errors are InputErrors naming the file and entry."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{path} is not a readable YAML file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    keys = ("specific_supernet_encoding_dict", "specific_subnet_encoding_dict")
    if not isinstance(data, dict) or not all(isinstance(data.get(key), dict) for key in keys):
        raise InputError(f"{path} lacks the mappings 'specific_supernet_encoding_dict' / "
                         "'specific_subnet_encoding_dict'")
    return _specs(str(path), data[keys[0]], data[keys[1]])


def _specs(source: str, supernets: dict[Any, Any], subnets: dict[Any, Any]) -> dict[str, SeqnetSpec]:
    """SEQnet specs from the two mappings of a search result; errors name ``source`` and the entry."""
    specs = {}
    for name, entry in subnets.items():
        if not isinstance(entry, (list, tuple)) or len(entry) != 2 or not all(isinstance(e, str) for e in entry):
            raise InputError(f"{source}: entry of {name!r:.80} should be [supernet name, subnet encoding], "
                             f"got {entry!r:.200}")
        supernet, subnet = entry
        if supernet not in supernets:
            raise InputError(f"{source}: {name!r:.80} names supernet {supernet!r:.80}, not one of "
                             f"{sorted(map(str, supernets))}")
        try:
            specs[str(name)] = SeqnetSpec(str(name), SpaceEncoding.decode(supernets[supernet]),
                                          SubnetEncoding.decode(subnet), supernet)
        except InputError as exc:
            raise InputError(f"{source}: entry {name!r:.80}: {exc}") from None
    return specs


@functools.lru_cache(maxsize=1)
def _published() -> dict[str, SeqnetSpec]:
    return _specs("PUBLISHED_SEQNETS", PUBLISHED_SUPERNETS, PUBLISHED_SEQNETS)


def load_search_result(path: str | os.PathLike[str] | None = None) -> dict[str, SeqnetSpec]:
    """Every SEQnet by name (file order): of the file ``path``, or the published ones when None."""
    return dict(_published() if path is None else _load(resolve_search_result(path)))


def seqnet_names(path: str | os.PathLike[str] | None = None, hyperspace: str | None = None) -> list[str]:
    """The SEQnet names, optionally only those of one hyperspace (``onnxw`` = the @vnni models)."""
    return [name for name, spec in load_search_result(path).items()
            if hyperspace is None or spec.hyperspace == hyperspace]


def registry_name(name: str) -> str:
    """The registry (timm-style) name of a SEQnet: ``"SEQnet@vnni-A0"`` -> ``"seqnet_vnni_a0"``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _encoded_spec(model: str) -> SeqnetSpec:
    space, colon, subnet = model.partition(":")
    if not colon:
        raise InputError(f"SEQnet encoding {model!r:.200} should be '<space encoding>:<subnet encoding>'")
    return SeqnetSpec(model, SpaceEncoding.decode(space), SubnetEncoding.decode(subnet))


def resolve_model(model: str, search_result: str | os.PathLike[str] | None = None) -> SeqnetSpec:
    """The architecture of a SEQnet name (published, or of the file ``search_result``) or of an encoding
    ``"[seqnet:]<space>:<subnet>"``; build it with ``create_model(spec.model_name, ...)``."""
    if ":" in model:
        return _encoded_spec(model.removeprefix("seqnet:"))
    specs = load_search_result(search_result)
    if model not in specs:
        raise InputError(f"unknown model '{model}'; expected one of {list(specs)} or '<space>:<subnet encoding>'")
    return specs[model]


def _build_seqnet(spec: SeqnetSpec, checkpoint: str | os.PathLike[str] | None, *, num_classes: int | None = None,
                  quantized: bool | None = None) -> StaticSubnet:
    """The static subnet of ``spec``, cut from its supernet (random-init, or loaded from ``checkpoint``)."""
    supernet = Supernet(spec.space, num_classes=num_classes, resolutions=[spec.subnet.resolution])
    if checkpoint is not None:
        path = Path(checkpoint)
        if path.is_dir():
            state = load_checkpoint(path, supernet)
            if state.extra and state.extra.get("phase") == "qat":
                set_quant_mode(supernet, 8)
        else:
            load_reference_supernet(path, supernet)
    if quantized is not None:
        set_quant_mode(supernet, 8 if quantized else None)
    supernet.set_active(spec.subnet)
    return supernet.get_active_subnet().eval()


def _checked_build(spec: SeqnetSpec, pretrained: bool, checkpoint: Path | None, **kwargs: Any) -> StaticSubnet:
    if pretrained and checkpoint is None:
        supernet = f"supernet {spec.supernet} ({spec.space})" if spec.supernet else f"a supernet of space {spec.space}"
        raise InputError(f"no local weights for SEQnet {spec.name!r}: pretrained=True needs checkpoint=<{supernet} "
                         "checkpoint: the reference's checkpoint.pth (FP32) or lsq.pth (LSQ+), or a "
                         "moonlit.spaceevo.train_supernet checkpoint directory>")
    if checkpoint is not None and not checkpoint.exists():
        raise InputError(f"checkpoint {checkpoint} of SEQnet {spec.name!r:.120} does not exist; expected a supernet "
                         "checkpoint: the reference's checkpoint.pth / lsq.pth or a moonlit.spaceevo.train_supernet "
                         "checkpoint directory")
    return _build_seqnet(spec, checkpoint, **kwargs)


def _register_published(name: str) -> None:
    spec = _published()[name]

    @register_model(registry_name(name), family="seqnet", paper="spaceevo", aliases=(name,), loads_weights=True,
                    description=f"{name}: subnet {spec.subnet.resolution} px of supernet {spec.supernet}")
    def build(pretrained: bool = False, checkpoint: Path | None = None, *, num_classes: int | None = None,
              quantized: bool | None = None) -> StaticSubnet:
        return _checked_build(spec, pretrained, checkpoint, num_classes=num_classes, quantized=quantized)


for _seqnet in PUBLISHED_SEQNETS:
    _register_published(_seqnet)
del _seqnet


@register_family("seqnet", paper="spaceevo", description="'seqnet:<space encoding>:<subnet encoding>'")
def seqnet_from_encoding(encoding: str, pretrained: bool = False, checkpoint: Path | None = None, *,
                         num_classes: int | None = None, quantized: bool | None = None) -> StaticSubnet:
    """Any subnet of any space: ``encoding`` is ``"<space encoding>:<subnet encoding>"``."""
    return _checked_build(_encoded_spec(encoding), pretrained, checkpoint, num_classes=num_classes,
                          quantized=quantized)

