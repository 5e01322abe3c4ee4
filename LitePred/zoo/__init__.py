"""Stage 0 of LitePred's pipeline, the model zoo: named, reproducible architectures to train and evaluate on.

LitePred (NSDI'24, §4.3 and §6) profiles kernel configurations "that occur in real search spaces"
and evaluates whole-model latency on "a held-out set of architectures sampled from the search
spaces and timm mobile models". This module is the registry those sets are drawn from:

- :class:`ArchSpec` names one architecture: a family, a description string that fully
  determines it (a timm model name, an arch string of the family's grammar), an input size.
  ``build()`` returns the model with deterministic random weights (seeded from the name).
- Families are registered by name (:func:`register_family`); LitePred's own live one per
  module: :mod:`~moonlit.litepred.zoo.timm_mobile` (``timm-mobile``),
  :mod:`~moonlit.litepred.zoo.spaceevo_like` (``spaceevo-like``),
  :mod:`~moonlit.litepred.zoo.elasticvit_like` (``elasticvit-like``) and
  :mod:`~moonlit.litepred.zoo.resnet_like` (``resnet-like``). Other packages plug in their search
  spaces as families: each module named by an entry point of the group :data:`PLUGIN_GROUP`
  registers its families when imported. Both kinds are loaded on the first lookup
  (:func:`get_family`, :func:`list_families`), so importing the zoo imports no plug-in. The
  stand-in families document their description grammar on their arch class;
  ``decode(encode(a)) == a`` and bad strings raise ``ValueError`` naming the bad token.
- Train/held-out disjointness is structural, not a matter of seeds: :func:`is_heldout` puts every
  spec of a held-out-only family (the named timm models) and a fixed hash-defined quarter of every
  sampled family into the held-out partition, so no seed or size can put a spec in both sets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from moonlit.common.errors import InputError

__all__ = [
    "DEFAULT_FAMILY_WEIGHTS",
    "HELDOUT_SEED",
    "PLUGIN_GROUP",
    "TRAINING_SEED",
    "ArchFamily",
    "ArchSpec",
    "calibration_architectures",
    "get_family",
    "heldout_architectures",
    "is_heldout",
    "list_families",
    "load_specs",
    "plugins",
    "register_family",
    "sample",
    "sample_architectures",
    "save_specs",
    "training_architectures",
]

# A spec of a sampled family is held out iff a hash of its name is 0 modulo this (a quarter of
# every space); 4 keeps the held-out pool large enough for n=120 without much rejection.
HELDOUT_MODULUS = 4
HELDOUT_SEED = 1_000_003
TRAINING_SEED = 0
# How sampled models split across the sampled families when no weights are given. The two NAS
# spaces dominate (they are what LitePred predicts for); resnet-like covers the conv-heavy end.
DEFAULT_FAMILY_WEIGHTS: dict[str, float] = {
    "spaceevo-like": 0.45,
    "elasticvit-like": 0.40,
    "resnet-like": 0.15,
}


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """One architecture of the zoo: ``family`` + ``description`` determine the model exactly.

    ``input_size`` is (channels, height, width). ``name`` is unique and stable: families derive it
    from the content (``<family>/<label>@<resolution>``), so equal specs have equal names.
    """

    name: str
    family: str
    description: str
    input_size: tuple[int, int, int]
    num_classes: int = 1000

    def __post_init__(self) -> None:
        for field in ("name", "family", "description"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value:
                raise ValueError(f"ArchSpec.{field} must be a non-empty string, got {value!r}")
        size = tuple(self.input_size)
        if len(size) != 3 or not all(isinstance(v, int) and v > 0 for v in size):
            raise ValueError(
                f"input_size of {self.name!r} must be 3 positive ints (C, H, W), got {self.input_size!r}"
            )
        object.__setattr__(self, "input_size", size)
        if not isinstance(self.num_classes, int) or self.num_classes <= 0:
            raise ValueError(f"num_classes of {self.name!r} must be a positive int, got {self.num_classes!r}")

    @property
    def resolution(self) -> int:
        """Input height (all built-in families use square inputs)."""
        return self.input_size[1]

    def build(self) -> nn.Module:
        """The model in eval mode, random weights seeded from ``name`` (same name → same weights)."""
        family = get_family(self.family)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_digest(self.name) % 2**63)
            model = family.build(self.description, self.num_classes)
        return model.eval()

    def example_input(self, batch_size: int = 1, seed: int = 0) -> torch.Tensor:
        """A deterministic normal input of shape (batch_size, *input_size)."""
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(batch_size, *self.input_size, generator=generator)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "description": self.description,
            "input_size": list(self.input_size),
            "num_classes": self.num_classes,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArchSpec:
        expected = {field.name for field in dataclasses.fields(cls)}
        required = expected - {"num_classes"}
        unknown, missing = set(data) - expected, required - set(data)
        if unknown or missing:
            raise ValueError(
                f"ArchSpec dict has unknown keys {sorted(unknown)} / misses keys {sorted(missing)}; "
                f"expected {sorted(expected)}"
            )
        values = dict(data)
        values["input_size"] = tuple(values["input_size"])
        return cls(**values)


class ArchFamily(ABC):
    """A family of architectures: builds a model from a description and draws specs.

    A *sampled* family implements :meth:`sample_one` (an unbounded space); a *fixed* family
    overrides :meth:`fixed_specs` (a finite list). ``heldout_only`` families never give training
    specs.
    """

    name: ClassVar[str] = ""
    heldout_only: ClassVar[bool] = False

    @abstractmethod
    def build(self, description: str, num_classes: int) -> nn.Module:
        """The model ``description`` denotes (weights from the current torch RNG)."""

    def validate(self, description: str) -> None:
        """Raise ``ValueError`` naming the bad part if ``description`` is not in the grammar."""

    def label(self, description: str) -> str:
        """Short, filename-safe part of the spec name; a content hash unless overridden."""
        return hashlib.sha256(description.encode("utf-8")).hexdigest()[:12]

    def make_spec(self, description: str, resolution: int, num_classes: int = 1000) -> ArchSpec:
        """The spec for ``description`` at a square ``resolution``, named from its content."""
        self.validate(description)
        return ArchSpec(
            name=f"{self.name}/{self.label(description)}@{resolution}",
            family=self.name,
            description=description,
            input_size=(3, resolution, resolution),
            num_classes=num_classes,
        )

    def fixed_specs(self) -> list[ArchSpec] | None:
        """All specs of a finite family; ``None`` for sampled families."""
        return None

    def sample_one(self, rng: random.Random) -> ArchSpec:
        """One random spec of a sampled family."""
        raise NotImplementedError(f"family {self.name!r} is fixed; it has no sample_one")

    def capacity(self, accept: Callable[[ArchSpec], bool], exclude: frozenset[str]) -> int | None:
        """How many distinct acceptable specs exist (``None``: unbounded)."""
        fixed = self.fixed_specs()
        if fixed is None:
            return None
        return sum(1 for spec in fixed if accept(spec) and spec.name not in exclude)

    def sample(
        self,
        n: int,
        rng: random.Random,
        accept: Callable[[ArchSpec], bool] = lambda spec: True,
        exclude: Iterable[str] = (),
    ) -> list[ArchSpec]:
        """``n`` distinct acceptable specs whose names are not in ``exclude``."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        excluded = frozenset(exclude)
        fixed = self.fixed_specs()
        if fixed is not None:
            pool = [spec for spec in fixed if accept(spec) and spec.name not in excluded]
            if n > len(pool):
                raise ValueError(f"family {self.name!r} has {len(pool)} eligible specs, {n} were asked")
            chosen = sorted(rng.sample(range(len(pool)), n))
            return [pool[index] for index in chosen]
        specs: dict[str, ArchSpec] = {}
        max_draws = 200 * n + 1000
        for _ in range(max_draws):
            if len(specs) == n:
                break
            spec = self.sample_one(rng)
            if spec.name not in specs and spec.name not in excluded and accept(spec):
                specs[spec.name] = spec
        if len(specs) < n:
            raise ValueError(
                f"family {self.name!r} gave only {len(specs)} distinct eligible specs in {max_draws} draws, "
                f"{n} were asked"
            )
        return list(specs.values())


# Entry-point group of family plug-ins: each names a module that calls register_family when imported.
PLUGIN_GROUP = "moonlit.litepred.families"

_FAMILIES: dict[str, ArchFamily] = {}
_PLUGINS: dict[str, str] = {}
_BUILTINS_LOADED = False
FamilyType = TypeVar("FamilyType", bound=type[ArchFamily])
logger = logging.getLogger(__name__)


def register_family(name: str) -> Callable[[FamilyType], FamilyType]:
    """Class decorator: register an :class:`ArchFamily` subclass (instantiated without args) as ``name``."""
    if not isinstance(name, str) or not name or "/" in name or "@" in name:
        raise ValueError(f"family name must be a non-empty string without '/' or '@', got {name!r}")

    def decorator(cls: FamilyType) -> FamilyType:
        if not (isinstance(cls, type) and issubclass(cls, ArchFamily)):
            raise TypeError(f"register_family({name!r}) expects an ArchFamily subclass, got {cls!r}")
        if name in _FAMILIES:
            raise ValueError(f"family {name!r} is already registered (by {type(_FAMILIES[name]).__name__})")
        cls.name = name
        _FAMILIES[name] = cls()
        return cls

    return decorator


def _load_builtins() -> None:
    """Import LitePred's own family modules, then every plug-in module (once per process)."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    from moonlit.litepred.zoo import (  # noqa: F401  (register LitePred's own families)
        elasticvit_like,
        resnet_like,
        spaceevo_like,
        timm_mobile,
    )

    for entry_point in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        try:
            importlib.import_module(entry_point.value)
        except Exception as error:  # a broken plug-in must not hide the other families
            _PLUGINS[entry_point.name] = f"{entry_point.value} (failed: {type(error).__name__}: {error})"
            logger.warning("LitePred family plug-in %r (%s) failed to import: %s: %s", entry_point.name,
                           entry_point.value, type(error).__name__, str(error).splitlines()[0] if str(error) else "")
        else:
            _PLUGINS[entry_point.name] = entry_point.value


def plugins() -> dict[str, str]:
    """``{entry point name: module}`` of the family plug-ins (a failed import says so after the module)."""
    _load_builtins()
    return dict(_PLUGINS)


def get_family(name: str) -> ArchFamily:
    _load_builtins()
    if name not in _FAMILIES:
        raise InputError(f"unknown architecture family {name!r}; registered: {sorted(_FAMILIES)}; "
                         f"plug-ins ({PLUGIN_GROUP}): "
                         f"{', '.join(f'{k}={v}' for k, v in sorted(_PLUGINS.items())) or 'none'}")
    return _FAMILIES[name]


def list_families() -> list[str]:
    _load_builtins()
    return sorted(_FAMILIES)


def _family_rng(seed: int, family: str) -> random.Random:
    # One stream per (seed, family): adding a family never changes another family's draws.
    # String seeds are hashed with SHA-512 by `random`, so this is stable across processes.
    return random.Random(f"{seed}/{family}")


def sample(family: str, n: int, seed: int) -> list[ArchSpec]:
    """``n`` distinct specs of one family, deterministic in ``seed``."""
    return get_family(family).sample(n, _family_rng(seed, family))


def _allocate(n: int, weights: dict[str, float], capacities: dict[str, int | None]) -> dict[str, int]:
    """Split ``n`` by ``weights`` (largest remainder), capping bounded families and re-spreading."""
    quota = {name: 0 for name in weights}
    open_names = [name for name, weight in weights.items() if weight > 0]
    remaining = n
    while remaining > 0 and open_names:
        total = sum(weights[name] for name in open_names)
        shares = {name: remaining * weights[name] / total for name in open_names}
        whole = {name: int(share) for name, share in shares.items()}
        leftover = remaining - sum(whole.values())
        by_remainder = sorted(open_names, key=lambda name: (whole[name] - shares[name], open_names.index(name)))
        for name in by_remainder[:leftover]:
            whole[name] += 1
        remaining = 0
        for name in list(open_names):
            cap = capacities[name]
            room = None if cap is None else cap - quota[name]
            take = whole[name] if room is None else min(whole[name], room)
            quota[name] += take
            remaining += whole[name] - take
            if room is not None and quota[name] >= cap:
                open_names.remove(name)
    if remaining > 0:
        raise ValueError(f"the families {sorted(weights)} hold {n - remaining} eligible specs, {n} were asked")
    return quota


def sample_architectures(
    n: int,
    seed: int,
    families: Sequence[str] | None = None,
    weights: Sequence[float] | Mapping[str, float] | None = None,
    *,
    accept: Callable[[ArchSpec], bool] = lambda spec: True,
    exclude: Iterable[str] = (),
) -> list[ArchSpec]:
    """``n`` distinct specs drawn across ``families`` in proportion to ``weights``.

    ``families`` defaults to the keys of :data:`DEFAULT_FAMILY_WEIGHTS` (with those weights);
    given families without weights share equally. Deterministic in ``seed``; specs come grouped
    by family in the order of ``families``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if families is None:
        families = list(DEFAULT_FAMILY_WEIGHTS)
        if weights is None:
            weights = DEFAULT_FAMILY_WEIGHTS
    families = list(families)
    if len(set(families)) != len(families):
        raise ValueError(f"families must be distinct, got {families}")
    if weights is None:
        weight_of = {name: 1.0 for name in families}
    elif isinstance(weights, Mapping):
        missing = [name for name in families if name not in weights]
        if missing:
            raise ValueError(f"weights {dict(weights)} miss families {missing}")
        weight_of = {name: float(weights[name]) for name in families}
    else:
        if len(weights) != len(families):
            raise ValueError(f"{len(weights)} weights {list(weights)} for {len(families)} families {families}")
        weight_of = {name: float(weight) for name, weight in zip(families, weights)}
    if any(weight < 0 for weight in weight_of.values()) or not any(weight_of.values()):
        raise ValueError(f"weights must be >= 0 with a positive sum, got {weight_of}")
    excluded = frozenset(exclude)
    capacities = {name: get_family(name).capacity(accept, excluded) for name in families}
    quota = _allocate(n, weight_of, capacities)
    specs: list[ArchSpec] = []
    for name in families:
        specs += get_family(name).sample(quota[name], _family_rng(seed, name), accept, excluded)
    return specs


def is_heldout(spec: ArchSpec) -> bool:
    """Whether ``spec`` belongs to the held-out partition (fixed by family and name, never by seed)."""
    if get_family(spec.family).heldout_only:
        return True
    return _digest("heldout/" + spec.name) % HELDOUT_MODULUS == 0


def heldout_architectures(
    n: int = 120,
    seed: int = HELDOUT_SEED,
    families: Sequence[str] | None = None,
    weights: Sequence[float] | Mapping[str, float] | None = None,
) -> list[ArchSpec]:
    """The evaluation set: the held-out-only specs (the timm mobile models) first, then specs of
    the sampled families from the held-out partition up to ``n``. ``families=None`` means every
    family; otherwise only the named ones (a held-out-only family among them is included whole).
    With ``n`` below the number of held-out-only specs, a seeded subset of those."""
    names = list_families() if families is None else list(families)
    fixed_names = [name for name in names if get_family(name).heldout_only]
    sampled = [name for name in names if not get_family(name).heldout_only]
    fixed = [spec for name in fixed_names for spec in get_family(name).fixed_specs() or []]
    if n <= len(fixed):
        rng = random.Random(f"{seed}/heldout-fixed")
        return [fixed[index] for index in sorted(rng.sample(range(len(fixed)), n))]
    if families is None:
        return fixed + sample_architectures(n - len(fixed), seed, None, weights, accept=is_heldout)
    if not sampled:
        raise ValueError(f"families {names} hold only {len(fixed)} held-out specs; asked for {n}")
    return fixed + sample_architectures(n - len(fixed), seed, sampled, weights, accept=is_heldout)


def training_architectures(
    n: int,
    seed: int = TRAINING_SEED,
    families: Sequence[str] | None = None,
    weights: Sequence[float] | Mapping[str, float] | None = None,
) -> list[ArchSpec]:
    """``n`` specs for training data, all outside the held-out partition of :func:`is_heldout`."""
    if families is not None:
        heldout_only = [name for name in families if get_family(name).heldout_only]
        if heldout_only:
            raise ValueError(f"families {heldout_only} are held-out only and cannot give training specs")
    return sample_architectures(n, seed, families, weights, accept=lambda spec: not is_heldout(spec))


def calibration_architectures(specs: Sequence[ArchSpec], n: int) -> list[ArchSpec]:
    """``n`` of ``specs`` taken round-robin over their families (in order within each family).

    :func:`training_architectures` lists specs family by family, so its first ``n`` would all be
    of one family: an overhead term fitted on them never sees the others (the first 60 of the
    default 150 are all SpaceEvo-like, no ViT among them).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    by_family: dict[str, list[ArchSpec]] = {}
    for spec in specs:
        by_family.setdefault(spec.family, []).append(spec)
    queues = [list(members) for members in by_family.values()]
    chosen: list[ArchSpec] = []
    while len(chosen) < min(n, len(specs)):
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop(0))
    return chosen


def save_specs(specs: Sequence[ArchSpec], path: str | Path) -> Path:
    """Write specs as a JSON list (one ``to_dict`` per spec)."""
    path = Path(path)
    path.write_text(json.dumps([spec.to_dict() for spec in specs], indent=1) + "\n")
    return path


def load_specs(path: str | Path) -> list[ArchSpec]:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, list):
        raise TypeError(f"{path} should hold a JSON list of ArchSpec dicts, got {type(data).__name__}")
    return [ArchSpec.from_dict(item) for item in data]
