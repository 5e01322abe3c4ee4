"""SpaceEvo hyperspaces, search-space encodings and subnet encodings (ICCV'23, arXiv 2303.08308, Sec. 3.1).

A *hyperspace* (``mobilew``, ``onnxw``; data in ``spaces/*.yaml``) fixes the macro-architecture: eight
encoded stages (``first_conv``, ``stage0``, ``stage1`` … ``stage6``), each with width, depth and
stride choices. A *search space* picks, for each of stages 1–6, a block type and a width window::

    <hyperspace>-<6 block-type digits>-<6 window digits>        e.g.  onnxw-151122-023231

(the reference's search logs write the same space without prefix as ``151122_013230``).
A *subnet* of a search space is written with one ``#``-separated entry per stage (``d``) or per
block (``k``, ``w``, ``e``)::

    d<8 depths>_k<kernels>_w<widths>_e<expand ratios>_r<resolution>

``e0`` marks a block without expand ratio (first_conv, MobileNetV1Dual); other expands are written
as floats (``4.0``, ``0.5``), as in the reference's ``search_result.yaml``.

Grammars, exactly (ASCII only; no surrounding whitespace; ``decode(encode(x)) == x`` and
``encode(decode(s)) == s`` for every string ``s`` that the canonical rules accept)::

    space      := HYPERSPACE "-" DIGIT{6} "-" DIGIT{6}         canonical
                | DIGIT{6} ("_" | "-") DIGIT{6}                 bare form, only with decode(..., hyperspace=)
    HYPERSPACE := [a-z] [a-z0-9_]*                              the name of a spaces/*.yaml file
    subnet     := "d" INTS "_k" INTS "_w" INTS "_e" EXPANDS "_r" INT
    INTS       := INT ("#" INT)*                                 kernels, widths: sum(depths) entries
    INT        := [1-9] [0-9]{0,4}                               1 .. 99999, no leading zero
    EXPANDS    := EXPAND ("#" EXPAND)*                           sum(depths) entries
    EXPAND     := "0" | [0-9]+ "." [0-9]+                        a positive float in Python's repr (4.0, 0.5)

Every string outside these grammars, or (spaces) naming a choice the hyperspace lacks, raises
:class:`~moonlit.common.errors.InputError` naming the bad part; :func:`check_subnet` then checks a
decoded subnet against a space (one depth per stage, each choice offered).
"""

from __future__ import annotations

import functools
import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import yaml

from moonlit.common.errors import InputError

__all__ = [
    "BlockType", "Hyperspace", "SpaceEncoding", "StageOptions", "StageSpec", "SubnetEncoding",
    "check_subnet", "hyperspace_from_dict", "list_hyperspaces", "load_hyperspace", "max_subnet", "min_subnet",
    "sample_subnet", "stage_options",
]

SEARCHABLE_STAGES = 6  # stages 1–6 carry a block-type and a window digit
MAX_INT = 99_999        # largest depth/kernel/width/resolution an encoding may hold (5 digits)
MAX_ENCODING_CHARS = 100_000  # longer strings are refused before parsing (a mobilew max subnet is ~330 chars)
_SPACE_PATTERN = re.compile(r"(?:(?P<hyperspace>[a-z][a-z0-9_]*)-)?(?P<blocks>[0-9]+)(?P<sep>[-_])(?P<windows>[0-9]+)")
_INT_PATTERN = re.compile(r"[1-9][0-9]{0,4}")
_EXPAND_PATTERN = re.compile(r"[0-9]+\.[0-9]+")


def _clip(text: str, limit: int = 80) -> str:
    """``repr`` of ``text``, shortened so that an error message stays one readable line."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}… ({len(text)} characters)"


def _show(value: Any, limit: int = 80) -> str:
    """``repr`` of any value, shortened like :func:`_clip`."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _check_text(text: object, what: str) -> str:
    if not isinstance(text, str):
        raise InputError(f"{what} must be a string, got {type(text).__name__} {_show((text))}")
    if len(text) > MAX_ENCODING_CHARS:
        raise InputError(f"{what} {_clip(text)} is longer than {MAX_ENCODING_CHARS} characters")
    return text


def _parse_int(item: str, what: str, where: str = "") -> int:
    """An INT of the grammar: ASCII digits, no leading zero, 1..MAX_INT (``what item where`` names it in errors)."""
    if _INT_PATTERN.fullmatch(item):
        return int(item)
    if item.isascii() and item.isdigit():
        problem = "is 0" if item == "0" else "has a leading zero" if item.startswith("0") else f"exceeds {MAX_INT}"
    else:
        problem = "is not an integer"
    raise InputError(f"{what} {_clip(item)}{where} {problem}; expected ASCII digits 1-{MAX_INT} without leading zeros")


def _parse_expand(item: str, what: str, where: str = "") -> float | None:
    """An EXPAND of the grammar: ``0`` (no expand ratio) or a positive float written as Python's repr."""
    if item == "0":
        return None
    if _EXPAND_PATTERN.fullmatch(item) and len(item) <= 12:
        value = float(item)
        if value > 0 and repr(value) == item:
            return value
    raise InputError(f"{what} {_clip(item)}{where} is not an expand ratio; expected 0 (none) or a positive float "
                     f"as Python writes it, e.g. 4.0 or 0.5")


@dataclass(frozen=True)
class StageSpec:
    """One stage of a hyperspace; ``window`` None means the whole width list (fixed stages)."""

    name: str
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    stride: int
    window: int | None

    @property
    def num_windows(self) -> int:
        return 1 if self.window is None else len(self.widths) - self.window + 1

    def window_widths(self, index: int) -> tuple[int, ...]:
        if not 0 <= index < self.num_windows:
            raise InputError(f"window {index} of {self.name} is out of range: it has {self.num_windows} windows")
        return self.widths if self.window is None else self.widths[index: index + self.window]


@dataclass(frozen=True)
class BlockType:
    """A block family with its kernel and expand-ratio choices (``expands`` empty: no expand ratio)."""

    type: str
    kernels: tuple[int, ...]
    expands: tuple[int | float, ...]
    activation: str
    se: bool


@dataclass(frozen=True)
class Hyperspace:
    name: str
    resolutions: tuple[int, ...]
    lut_resolutions: tuple[int, ...]
    stages: tuple[StageSpec, ...]          # first_conv, stage0, stage1..stage6
    fixed_blocks: dict[str, BlockType]     # the blocks of first_conv and stage0
    block_types: tuple[BlockType, ...]     # index = block digit of a space encoding
    head: dict[str, Any]

    @property
    def searchable_stages(self) -> tuple[StageSpec, ...]:
        return self.stages[2:]

    @property
    def num_windows(self) -> tuple[int, ...]:
        return tuple(stage.num_windows for stage in self.searchable_stages)

    def input_downsample(self, stage_name: str) -> int:
        """Resolution / input height of a stage: the product of the strides of the stages before it."""
        factor = 1
        for stage in self.stages:
            if stage.name == stage_name:
                return factor
            factor *= stage.stride
        names = [s.name for s in self.stages]
        raise InputError(f"no stage '{stage_name}' in hyperspace '{self.name}'; stages: {names}")


def list_hyperspaces() -> list[str]:
    folder = resources.files("moonlit.spaceevo") / "spaces"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


@functools.cache
def load_hyperspace(name: str) -> Hyperspace:
    """The hyperspace defined in ``spaces/<name>.yaml`` (schema: :func:`hyperspace_from_dict`)."""
    if name not in list_hyperspaces():
        raise InputError(f"unknown hyperspace {_clip(str(name))}; expected one of {list_hyperspaces()}")
    path = resources.files("moonlit.spaceevo") / "spaces" / f"{name}.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: not a readable YAML file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    spec = hyperspace_from_dict(data, str(path))
    if spec.name != name:
        raise InputError(f"{path}: name {spec.name!r} differs from the file name; expected name: {name}")
    return spec


_HYPERSPACE_KEYS = ("name", "resolutions", "lut_resolutions", "stages", "fixed_blocks", "block_types", "head")
_STAGE_KEYS = ("name", "widths", "depths", "stride", "window")
_BLOCK_KEYS = ("type", "kernels", "expands", "activation", "se")
_HEAD_KEYS = ("final_expand", "feature_mix", "num_classes", "activation")
_STAGE_NAMES = ("first_conv", "stage0", *(f"stage{i}" for i in range(1, SEARCHABLE_STAGES + 1)))


def _mapping(value: Any, keys: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"{where} is {type(value).__name__} {_show((value))}; expected a mapping with keys "
                         f"{list(keys)}")
    missing, unknown = [k for k in keys if k not in value], [k for k in value if k not in keys]
    if missing or unknown:
        raise InputError(f"{where} " + (f"lacks key(s) {missing}" if missing else f"has unknown key(s) {unknown}")
                         + f"; expected exactly {list(keys)}")
    return value


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INT:
        raise InputError(f"{where} is {_show((value))}; expected an integer 1-{MAX_INT}")
    return value


def _int_list(value: Any, where: str, unique: bool = True) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise InputError(f"{where} is {_show((value))}; expected a non-empty list of integers 1-{MAX_INT}")
    values = tuple(_positive_int(v, f"{where}[{i}]") for i, v in enumerate(value))
    if unique and list(values) != sorted(set(values)):
        raise InputError(f"{where} {list(values)} is not strictly increasing")
    return values


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise InputError(f"{where} is {_show((value))}; expected a non-empty string")
    return value


def _block(value: Any, where: str) -> BlockType:
    entry = _mapping(value, _BLOCK_KEYS, where)
    expands = entry["expands"]
    if not isinstance(expands, list) or any(isinstance(e, bool) or not isinstance(e, (int, float))
                                            or not math.isfinite(e) or not 0 < e <= MAX_INT for e in expands):
        raise InputError(f"{where}.expands is {_show((expands))}; expected a list (possibly empty) of positive "
                         "numbers")
    if not isinstance(entry["se"], bool):
        raise InputError(f"{where}.se is {_show((entry['se']))}; expected true or false")
    return BlockType(_name(entry["type"], f"{where}.type"), _int_list(entry["kernels"], f"{where}.kernels"),
                     tuple(expands), _name(entry["activation"], f"{where}.activation"), entry["se"])


def hyperspace_from_dict(data: Any, source: str = "hyperspace") -> Hyperspace:
    """A :class:`Hyperspace` from the mapping of a ``spaces/*.yaml`` file; ``source`` names it in errors.

    Schema (every key required, no others): ``name`` (str); ``resolutions``, ``lut_resolutions``
    (increasing integers, the latter a subset of the former); ``stages``: the eight stages
    first_conv, stage0, stage1..stage6, each ``{name, widths, depths, stride (1|2), window (null for
    first_conv/stage0, else 1..len(widths))}``; ``fixed_blocks``: ``{first_conv, stage0}`` blocks;
    ``block_types``: 1-10 blocks (a space digit indexes them), each ``{type, kernels, expands,
    activation, se}``; ``head``: ``{final_expand, feature_mix, num_classes, activation}``.
    """
    data = _mapping(data, _HYPERSPACE_KEYS, source)
    resolutions = _int_list(data["resolutions"], f"{source}: resolutions")
    lut_resolutions = _int_list(data["lut_resolutions"], f"{source}: lut_resolutions")
    if not set(lut_resolutions) <= set(resolutions):
        raise InputError(f"{source}: lut_resolutions {list(lut_resolutions)} are not all among the resolutions "
                         f"{list(resolutions)}")
    entries = data["stages"]
    if not isinstance(entries, list) or len(entries) != len(_STAGE_NAMES):
        raise InputError(f"{source}: stages is {_show((entries))}; expected a list of {len(_STAGE_NAMES)} "
                         f"stages {list(_STAGE_NAMES)}")
    stages = []
    for index, (entry, expected) in enumerate(zip(entries, _STAGE_NAMES)):
        where = f"{source}: stages[{index}]"
        entry = _mapping(entry, _STAGE_KEYS, where)
        if entry["name"] != expected:
            raise InputError(f"{where}.name is {_show((entry['name']))}; expected {expected!r}")
        widths = _int_list(entry["widths"], f"{where}.widths")
        if entry["stride"] not in (1, 2) or isinstance(entry["stride"], bool):
            raise InputError(f"{where}.stride is {_show((entry['stride']))}; expected 1 or 2")
        window = entry["window"]
        fixed = expected in ("first_conv", "stage0")
        if fixed and window is not None:
            raise InputError(f"{where}.window is {window!r}; expected null (a fixed stage uses all its widths)")
        if not fixed and (isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= len(widths)):
            raise InputError(f"{where}.window is {_show((window))}; expected an integer 1-{len(widths)}")
        if not fixed and len(widths) - window + 1 > 10:
            raise InputError(f"{where}: {len(widths) - window + 1} width windows; a space digit allows at most 10")
        stages.append(StageSpec(expected, widths, _int_list(entry["depths"], f"{where}.depths"), int(entry["stride"]),
                                window))
    fixed_blocks = _mapping(data["fixed_blocks"], ("first_conv", "stage0"), f"{source}: fixed_blocks")
    block_types = data["block_types"]
    if not isinstance(block_types, list) or not 1 <= len(block_types) <= 10:
        raise InputError(f"{source}: block_types is {_show((block_types))}; expected a list of 1-10 blocks "
                         "(a space digit indexes it)")
    head = _mapping(data["head"], _HEAD_KEYS, f"{source}: head")
    for key in ("final_expand", "feature_mix", "num_classes"):
        _positive_int(head[key], f"{source}: head.{key}")
    _name(head["activation"], f"{source}: head.activation")
    return Hyperspace(name=_name(data["name"], f"{source}: name"), resolutions=resolutions,
                      lut_resolutions=lut_resolutions, stages=tuple(stages),
                      fixed_blocks={k: _block(v, f"{source}: fixed_blocks.{k}") for k, v in fixed_blocks.items()},
                      block_types=tuple(_block(b, f"{source}: block_types[{i}]") for i, b in enumerate(block_types)),
                      head=dict(head))


# --- search spaces ---------------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class SpaceEncoding:
    """A search space: one block type and one width window for each of stages 1–6."""

    hyperspace: str
    blocks: tuple[int, ...]
    windows: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        object.__setattr__(self, "windows", tuple(int(w) for w in self.windows))
        self.check()

    @property
    def spec(self) -> Hyperspace:
        return load_hyperspace(self.hyperspace)

    def encode(self) -> str:
        return f"{self.hyperspace}-{''.join(map(str, self.blocks))}-{''.join(map(str, self.windows))}"

    def __str__(self) -> str:
        return self.encode()

    @classmethod
    def decode(cls, text: str, hyperspace: str | None = None) -> SpaceEncoding:
        """Parse ``onnxw-151122-023231``; the bare forms ``151122_023231`` / ``151122-023231`` need ``hyperspace``.

        Grammar in the module docstring; anything else raises InputError naming the bad part.
        """
        text = _check_text(text, "space encoding")
        match = _SPACE_PATTERN.fullmatch(text)
        if match is None:
            raise InputError(f"{_clip(text)} is not a space encoding; expected '<hyperspace>-<6 block digits>-"
                             f"<6 window digits>' in ASCII, e.g. 'onnxw-151122-023231'")
        name = match["hyperspace"]
        if name is not None and match["sep"] != "-":
            raise InputError(f"{_clip(text)} separates its digits with '_'; expected '-' after a hyperspace name, "
                             f"e.g. 'onnxw-151122-023231'")
        if name is None:
            if hyperspace is None:
                raise InputError(f"{_clip(text)} names no hyperspace; pass hyperspace= or write e.g. 'onnxw-{text}'")
            name = hyperspace
        if hyperspace is not None and name != hyperspace:
            raise InputError(f"{_clip(text)} is a '{name}' space, expected a '{hyperspace}' space")
        for part in ("blocks", "windows"):
            if len(match[part]) != SEARCHABLE_STAGES:
                raise InputError(f"{len(match[part])} {part[:-1]} digits {_clip(match[part])} in {_clip(text)}, "
                                 f"expected {SEARCHABLE_STAGES} (stages 1-{SEARCHABLE_STAGES})")
        return cls(name, tuple(int(c) for c in match["blocks"]), tuple(int(c) for c in match["windows"]))

    def check(self) -> None:
        """Raise InputError naming the bad digit unless every choice exists in the hyperspace."""
        spec = load_hyperspace(self.hyperspace)
        for part, values in (("block", self.blocks), ("window", self.windows)):
            if len(values) != SEARCHABLE_STAGES:
                raise InputError(f"{len(values)} {part} digits {values} in a '{self.hyperspace}' space, "
                                 f"expected {SEARCHABLE_STAGES} (stages 1-{SEARCHABLE_STAGES})")
        for i, (block, window, stage) in enumerate(zip(self.blocks, self.windows, spec.searchable_stages), 1):
            if not 0 <= block < len(spec.block_types):
                raise InputError(f"block digit {block} of stage{i} in '{self._text()}' is not a block type of "
                                 f"'{self.hyperspace}' (expected 0-{len(spec.block_types) - 1})")
            if not 0 <= window < stage.num_windows:
                raise InputError(f"window digit {window} of stage{i} in '{self._text()}' is out of range: "
                                 f"{stage.name} of '{self.hyperspace}' has windows 0-{stage.num_windows - 1}")

    def _text(self) -> str:
        return f"{self.hyperspace}-{''.join(map(str, self.blocks))}-{''.join(map(str, self.windows))}"


@dataclass(frozen=True)
class StageOptions:
    """What a subnet may choose in one stage of a search space."""

    name: str
    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    widths: tuple[int, ...]
    expands: tuple[int | float, ...]   # empty: the block has no expand ratio (e0)


def stage_options(space: SpaceEncoding) -> list[StageOptions]:
    """Per encoded stage (first_conv, stage0, stage1..6): the depth/kernel/width/expand choices."""
    spec = space.spec
    options = []
    for stage in spec.stages:
        if stage.name in spec.fixed_blocks:
            block, widths = spec.fixed_blocks[stage.name], stage.widths
        else:
            i = int(stage.name.removeprefix("stage")) - 1
            block, widths = spec.block_types[space.blocks[i]], stage.window_widths(space.windows[i])
        options.append(StageOptions(stage.name, stage.depths, block.kernels, widths, block.expands))
    return options


# --- subnets ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SubnetEncoding:
    """A static subnet: depth per stage; kernel, width, expand (None: no expand) per block; resolution."""

    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    widths: tuple[int, ...]
    expands: tuple[float | None, ...]
    resolution: int

    def __post_init__(self) -> None:
        for field in ("depths", "kernels", "widths"):
            object.__setattr__(self, field, tuple(_checked_int(v, f"{field[:-1]} {i}")
                                                  for i, v in enumerate(getattr(self, field))))
        object.__setattr__(self, "resolution", _checked_int(self.resolution, "resolution"))
        object.__setattr__(self, "expands", tuple(_checked_expand(e, i) for i, e in enumerate(self.expands)))
        num_blocks = sum(self.depths)
        for field, values in (("kernels", self.kernels), ("widths", self.widths), ("expands", self.expands)):
            if len(values) != num_blocks:
                raise InputError(f"{len(values)} {field} for {num_blocks} blocks (depths {list(self.depths)} "
                                 f"sum to {num_blocks})")

    def stages(self) -> list[list[tuple[int, int, float | None]]]:
        """Blocks grouped by stage, each as ``(kernel, width, expand)``."""
        grouped, start = [], 0
        for depth in self.depths:
            grouped.append(list(zip(self.kernels[start: start + depth], self.widths[start: start + depth],
                                    self.expands[start: start + depth])))
            start += depth
        return grouped

    def encode(self) -> str:
        expands = ["0" if e is None else str(float(e)) for e in self.expands]
        return "_".join([
            "d" + "#".join(map(str, self.depths)), "k" + "#".join(map(str, self.kernels)),
            "w" + "#".join(map(str, self.widths)), "e" + "#".join(expands), f"r{self.resolution}",
        ])

    def __str__(self) -> str:
        return self.encode()

    @classmethod
    def decode(cls, text: str) -> SubnetEncoding:
        """Parse ``d…_k…_w…_e…_r…`` (grammar in the module docstring); InputError names the bad part."""
        text = _check_text(text, "subnet encoding")
        fields = text.split("_")
        if len(fields) != 5:
            raise InputError(f"{_clip(text)} has {len(fields)} '_'-separated fields, expected 5: "
                             "d…_k…_w…_e…_r…")
        parsed: list[list[Any]] = []
        for field, prefix in zip(fields[:4], "dkwe"):
            if not field.startswith(prefix):
                raise InputError(f"field {_clip(field)} of {_clip(text)} should start with '{prefix}' "
                                 f"(order d, k, w, e, r)")
            values = []
            for position, item in enumerate(field[1:].split("#")):
                where = f" of field {_clip(field)} in {_clip(text)}"
                parse = _parse_expand if prefix == "e" else _parse_int
                values.append(parse(item, f"entry {position}", where))
            parsed.append(values)
        resolution_field = fields[4]
        if not resolution_field.startswith("r"):
            raise InputError(f"resolution field {_clip(resolution_field)} of {_clip(text)} should be r<int>, "
                             f"e.g. r224")
        resolution = _parse_int(resolution_field[1:], "resolution", f" of {_clip(text)}")
        depths, kernels, widths, expands = parsed
        return cls(tuple(depths), tuple(kernels), tuple(widths), tuple(expands), resolution)


def _checked_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= MAX_INT:
        raise InputError(f"{what} of a subnet is {value!r}; expected an integer 1-{MAX_INT}")
    return int(value)


def _checked_expand(value: Any, index: int) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= MAX_INT \
            or _EXPAND_PATTERN.fullmatch(repr(float(value))) is None:
        raise InputError(f"expand {index} of a subnet is {value!r}; expected None or a positive number "
                         f"(at most {MAX_INT})")
    return float(value)


def check_subnet(subnet: SubnetEncoding, space: SpaceEncoding) -> None:
    """Raise InputError naming the first choice of ``subnet`` that ``space`` does not offer."""
    options = stage_options(space)
    if len(subnet.depths) != len(options):
        raise InputError(f"subnet has {len(subnet.depths)} depths, '{space}' has {len(options)} stages "
                         f"({[o.name for o in options]})")
    resolutions = space.spec.resolutions
    if subnet.resolution not in resolutions:
        raise InputError(f"resolution {subnet.resolution} is not one of {list(resolutions)} of '{space}'")
    for stage, blocks in zip(options, subnet.stages()):
        if len(blocks) not in stage.depths:
            raise InputError(f"depth {len(blocks)} of {stage.name} is not in {list(stage.depths)} of '{space}'")
        for j, (kernel, width, expand) in enumerate(blocks):
            where = f"block {j} of {stage.name} of '{space}'"
            if kernel not in stage.kernels:
                raise InputError(f"kernel {kernel} of {where} is not in {list(stage.kernels)}")
            if width not in stage.widths:
                raise InputError(f"width {width} of {where} is not in its window {list(stage.widths)}")
            if not stage.expands and expand is not None:
                raise InputError(f"expand {expand} of {where}: this block has no expand ratio (expected e0)")
            if stage.expands and (expand is None or float(expand) not in [float(e) for e in stage.expands]):
                raise InputError(f"expand {expand} of {where} is not in {list(stage.expands)}")


def _extreme_subnet(space: SpaceEncoding, pick: Any, resolution: int | None) -> SubnetEncoding:
    depths, kernels, widths, expands = [], [], [], []
    for stage in stage_options(space):
        depth = pick(stage.depths)
        depths.append(depth)
        kernels += [pick(stage.kernels)] * depth
        widths += [pick(stage.widths)] * depth
        expands += [float(pick(stage.expands)) if stage.expands else None] * depth
    return SubnetEncoding(tuple(depths), tuple(kernels), tuple(widths), tuple(expands),
                          pick(space.spec.resolutions) if resolution is None else resolution)


def min_subnet(space: SpaceEncoding, resolution: int | None = None) -> SubnetEncoding:
    """Smallest choice everywhere (the A0 SEQnets are their spaces' minimum subnets)."""
    return _extreme_subnet(space, min, resolution)


def max_subnet(space: SpaceEncoding, resolution: int | None = None) -> SubnetEncoding:
    return _extreme_subnet(space, max, resolution)


def sample_subnet(space: SpaceEncoding, rng: np.random.Generator,
                  resolutions: Sequence[int] | None = None) -> SubnetEncoding:
    """A uniformly random subnet of ``space``: the one sampler of SpaceEvo's training and search.

    Draw order (part of the contract: a seed gives one subnet everywhere): per stage a uniform depth,
    then per block a uniform kernel, width and expand ratio (a stage without expand ratios draws
    none), then one uniform resolution from ``resolutions`` (default: the hyperspace's).
    """
    choices = tuple(space.spec.resolutions if resolutions is None else resolutions)
    if not choices:
        raise InputError(f"no resolutions to sample for '{space}'; expected a non-empty list")
    depths, kernels, widths, expands = [], [], [], []

    def choose(values: Sequence[Any]) -> Any:
        return values[int(rng.integers(len(values)))]

    for stage in stage_options(space):
        depth = choose(stage.depths)
        depths.append(depth)
        for _ in range(depth):
            kernels.append(choose(stage.kernels))
            widths.append(choose(stage.widths))
            expands.append(float(choose(stage.expands)) if stage.expands else None)
    return SubnetEncoding(tuple(depths), tuple(kernels), tuple(widths), tuple(expands), int(choose(choices)))
