"""The published SEQnets by name (SpaceEvo, ICCV'23, Table 2 and §5.1): ``create_seqnet("SEQnet@vnni-A0")``.

The names, their supernets and subnet encodings are data: the reference's ``search_result.yaml``
(copied into the shared data folder), which maps

* ``specific_supernet_encoding_dict``: supernet name -> space encoding (``spaceevo@vnni`` ->
  ``onnxw-151122-023231``);
* ``specific_subnet_encoding_dict``: SEQnet name -> [supernet name, subnet encoding].

Each A0 model is its supernet's minimum subnet. A model can also be named directly as
``"<space>:<subnet>"`` (``onnxw-151122-023231:d1#1#2..._r160``). :func:`create_seqnet` builds
the supernet, loads a checkpoint (the reference's ``checkpoint.pth``/``lsq.pth`` or one of our
checkpoint directories) and returns the static subnet.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import yaml
from moonlit.common.errors import InputError
from moonlit.common.train.checkpoint import load_checkpoint
from moonlit.spaceevo.checkpoints import load_reference_supernet
from moonlit.spaceevo.ops.lsq_plus import set_quant_mode
from moonlit.spaceevo.space import SpaceEncoding, SubnetEncoding
from moonlit.spaceevo.supernet import StaticSubnet, Supernet

__all__ = ["DEFAULT_SEARCH_RESULT", "SeqnetSpec", "create_seqnet", "load_search_result", "resolve_model",
           "resolve_search_result", "seqnet_names"]

REPO_ROOT = Path(__file__).resolve().parents[1]
# shared/ sits beside the repository clone; relative paths are tried from the cwd, then the repo root.
DEFAULT_SEARCH_RESULT = "../shared/data/spaceevo/search_result.yaml"


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
    supernets, subnets = data[keys[0]], data[keys[1]]
    specs = {}
    for name, entry in subnets.items():
        if not isinstance(entry, list) or len(entry) != 2 or not all(isinstance(e, str) for e in entry):
            raise InputError(f"{path}: entry of {name!r:.80} should be [supernet name, subnet encoding], "
                             f"got {entry!r:.200}")
        supernet, subnet = entry
        if supernet not in supernets:
            raise InputError(f"{path}: {name!r:.80} names supernet {supernet!r:.80}, not one of "
                             f"{sorted(map(str, supernets))}")
        try:
            specs[str(name)] = SeqnetSpec(str(name), SpaceEncoding.decode(supernets[supernet]),
                                          SubnetEncoding.decode(subnet), supernet)
        except InputError as exc:
            raise InputError(f"{path}: entry {name!r:.80}: {exc}") from None
    return specs


def load_search_result(path: str | os.PathLike[str] | None = None) -> dict[str, SeqnetSpec]:
    """Every SEQnet of the search-result file by name (file order)."""
    return dict(_load(resolve_search_result(path)))


def seqnet_names(path: str | os.PathLike[str] | None = None, hyperspace: str | None = None) -> list[str]:
    """The SEQnet names, optionally only those of one hyperspace (``onnxw`` = the @vnni models)."""
    return [name for name, spec in load_search_result(path).items()
            if hyperspace is None or spec.hyperspace == hyperspace]


def resolve_model(model: str, search_result: str | os.PathLike[str] | None = None) -> SeqnetSpec:
    """A SEQnet name, or ``"<space>:<subnet>"`` for any subnet of any space."""
    if ":" in model:
        space, _, subnet = model.partition(":")
        return SeqnetSpec(model, SpaceEncoding.decode(space), SubnetEncoding.decode(subnet))
    specs = load_search_result(search_result)
    if model not in specs:
        raise InputError(f"unknown model '{model}'; expected one of {list(specs)} or '<space>:<subnet encoding>'")
    return specs[model]


def create_seqnet(name: str, checkpoint: str | os.PathLike[str] | None = None, *,
                  search_result: str | os.PathLike[str] | None = None, num_classes: int | None = None,
                  quantized: bool | None = None) -> StaticSubnet:
    """The static subnet ``name`` (see :func:`resolve_model`), random-init unless ``checkpoint`` is given.

    ``checkpoint``: a reference ``.pth`` (``checkpoint.pth`` FP32 / ``lsq.pth`` LSQ+) or a directory
    written by ``moonlit.spaceevo.train_supernet`` (a checkpoint, or a folder of them: the latest).
    ``quantized`` None keeps what the checkpoint holds; True switches LSQ+ to 8 bits, False to FP32.
    """
    spec = resolve_model(name, search_result)
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
