"""ElasticViT search space and subnet encoding (ICCV'23, arXiv 2303.09730, Sec. 3 and Table 1).

The space is the reference's ``final_3min_space``: a first 3x3/2 conv, a stem of 1–2
depthwise-separable blocks, two MBConv stages (``C``) and four transformer stages (``T``). Every
layer of a stage shares the stage's choices. A subnet is written as one ``_``-separated part per
piece of the network::

    subnet      := "r" RES "_" stem "_" conv "_" conv "_" trans "_" trans "_" trans "_" trans
    stem        := "s" WIDTH "d" DEPTH "k" KERNEL
    conv        := "c" WIDTH "d" DEPTH "e" EXPAND "k" KERNEL
    trans       := "t" WIDTH "d" DEPTH "m" MLP_RATIO "v" V_SCALE

    RES, WIDTH, ... := [1-9] [0-9]{0,4}     ASCII digits, no leading zero, at most 99999

e.g. ``r128_s16d1k3_c24d2e3k3_c32d3e3k3_t64d1m2v2_t96d1m2v2_t176d1m3v2_t272d1m4v2`` (ElasticViT-T1).
The stem width equals the first conv's width. A transformer stage of depth ``d`` is one MBConv
reduction block (expand 6, 3x3, SE) followed by ``d`` attention+FFN pairs with ``width / 16`` heads.

:func:`decode` accepts nothing else (no whitespace, no other digits) and then checks every choice
against the space; ``encode(decode(s)) == s`` for every string it accepts, and any other string
raises :class:`~moonlit.common.errors.InputError` naming the part.

:func:`from_reference_arch` / :func:`to_reference_arch` convert to and from the reference's
10-list layout ``[res, channels, depths, conv_ratios, kernel_sizes, mlp_ratios, num_heads,
window_sizes, qk_scales, v_scales]`` (per-layer lists), the format of its tables and eval config.
"""

from __future__ import annotations

import math
import numbers
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moonlit.common.errors import InputError

__all__ = [
    "ELASTICVIT_SPACE",
    "ConvStage",
    "ConvStageSpace",
    "SearchSpace",
    "Subnet",
    "TransformerStage",
    "TransformerStageSpace",
    "check_subnet",
    "decode",
    "encode",
    "from_reference_arch",
    "max_subnet",
    "min_subnet",
    "random_subnet",
    "sample_subnet",
    "search_space_from_dict",
    "stage_sides",
    "to_reference_arch",
]


@dataclass(frozen=True)
class ConvStageSpace:
    """Choices of one MBConv stage; the first block has stride 2 when ``downsample``."""

    name: str
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    downsample: bool
    se: bool
    kind: str = field(default="C", init=False)


@dataclass(frozen=True)
class TransformerStageSpace:
    """Choices of one transformer stage; its reduction block has stride 2 when ``downsample``."""

    name: str
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    downsample: bool
    kind: str = field(default="T", init=False)


StageSpace = ConvStageSpace | TransformerStageSpace


@dataclass(frozen=True)
class SearchSpace:
    resolutions: tuple[int, ...]
    first_conv_widths: tuple[int, ...]
    stem_depths: tuple[int, ...]
    stem_kernels: tuple[int, ...]
    conv_stages: tuple[ConvStageSpace, ...]
    transformer_stages: tuple[TransformerStageSpace, ...]
    conv_expands: tuple[int, ...]
    conv_kernels: tuple[int, ...]
    mlp_ratios: tuple[int, ...]
    v_scales: tuple[int, ...]
    head_dim: int                 # Q/K dims per head; heads = width / head_dim
    reduction_expand: int         # expand ratio of a transformer stage's MBConv reduction block
    reduction_kernel: int
    head_width_multiplier: int    # per-token head Linear C -> multiplier * C
    head_hidden: int              # the Linear after pooling (1984, MobileNetV3-style)

    @property
    def stages(self) -> tuple[StageSpace, ...]:
        return (*self.conv_stages, *self.transformer_stages)


def _steps(low: int, high: int, step: int) -> tuple[int, ...]:
    return tuple(range(low, high + 1, step))


# The reference's configs/final_3min_space.yaml (C widths step 8, T widths step 16 = head_dim).
ELASTICVIT_SPACE = SearchSpace(
    resolutions=(128, 160, 176, 192, 224, 256),
    first_conv_widths=(16, 24),
    stem_depths=(1, 2),
    stem_kernels=(3, 5),
    conv_stages=(
        ConvStageSpace("C1", _steps(16, 32, 8), _steps(2, 5, 1), downsample=True, se=False),
        ConvStageSpace("C2", _steps(16, 48, 8), _steps(2, 6, 1), downsample=True, se=True),
    ),
    transformer_stages=(
        TransformerStageSpace("T1", _steps(48, 96, 16), _steps(1, 5, 1), downsample=True),
        TransformerStageSpace("T2", _steps(80, 160, 16), _steps(1, 6, 1), downsample=False),
        TransformerStageSpace("T3", _steps(144, 288, 16), _steps(1, 6, 1), downsample=True),
        TransformerStageSpace("T4", _steps(160, 320, 16), _steps(1, 6, 1), downsample=True),
    ),
    conv_expands=(3, 4, 5, 6),
    conv_kernels=(3, 5),
    mlp_ratios=(2, 3, 4, 5),
    v_scales=(2, 3, 4),
    head_dim=16,
    reduction_expand=6,
    reduction_kernel=3,
    head_width_multiplier=6,
    head_hidden=1984,
)


@dataclass(frozen=True)
class ConvStage:
    width: int
    depth: int
    expand: int
    kernel: int

    def encode(self) -> str:
        return f"c{self.width}d{self.depth}e{self.expand}k{self.kernel}"


@dataclass(frozen=True)
class TransformerStage:
    width: int
    depth: int
    mlp_ratio: int
    v_scale: int

    def encode(self) -> str:
        return f"t{self.width}d{self.depth}m{self.mlp_ratio}v{self.v_scale}"


@dataclass(frozen=True)
class Subnet:
    """One architecture of the space; ``stem_width`` is also the first conv's width."""

    resolution: int
    stem_width: int
    stem_depth: int
    stem_kernel: int
    conv_stages: tuple[ConvStage, ...]
    transformer_stages: tuple[TransformerStage, ...]

    @property
    def stages(self) -> tuple[ConvStage | TransformerStage, ...]:
        return (*self.conv_stages, *self.transformer_stages)

    @property
    def widths(self) -> tuple[int, ...]:
        """Stem width followed by every stage's width (the reference's ``channels`` list)."""
        return (self.stem_width, *(stage.width for stage in self.stages))

    def encode(self) -> str:
        return encode(self)

    def __str__(self) -> str:
        return encode(self)


def encode(subnet: Subnet) -> str:
    """The subnet's string (grammar in the module docstring); :func:`decode` inverts it."""
    parts = [f"r{subnet.resolution}", f"s{subnet.stem_width}d{subnet.stem_depth}k{subnet.stem_kernel}"]
    parts += [stage.encode() for stage in subnet.stages]
    return "_".join(parts)


MAX_NUMBER = 99_999          # largest number an encoding may hold (5 digits)
MAX_ENCODING_CHARS = 100_000  # longer strings are refused before parsing
_NUMBER = r"([0-9]+)"
_PART_PATTERNS = {
    "resolution": (re.compile(rf"r{_NUMBER}"), "r<resolution>", ("resolution",)),
    "stem": (re.compile(rf"s{_NUMBER}d{_NUMBER}k{_NUMBER}"), "s<width>d<depth>k<kernel>", ("width", "depth", "kernel")),
    "conv": (re.compile(rf"c{_NUMBER}d{_NUMBER}e{_NUMBER}k{_NUMBER}"), "c<width>d<depth>e<expand>k<kernel>",
             ("width", "depth", "expand", "kernel")),
    "trans": (re.compile(rf"t{_NUMBER}d{_NUMBER}m{_NUMBER}v{_NUMBER}"), "t<width>d<depth>m<mlp_ratio>v<v_scale>",
              ("width", "depth", "mlp_ratio", "v_scale")),
}


def _clip(text: str, limit: int = 80) -> str:
    """``repr`` of ``text``, shortened so that an error message stays one readable line."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}… ({len(text)} characters)"


def _show(value: Any, limit: int = 80) -> str:
    """``repr`` of any value, shortened like :func:`_clip`."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _parse_part(text: str, kind: str, where: str, encoding: str) -> tuple[int, ...]:
    pattern, form, names = _PART_PATTERNS[kind]
    match = pattern.fullmatch(text)
    if match is None:
        raise InputError(f"part {_clip(text)} ({where}) of subnet {_clip(encoding)} does not match {form} "
                         "(ASCII digits)")
    values = []
    for name, digits in zip(names, match.groups()):
        if digits.startswith("0") or len(digits) > len(str(MAX_NUMBER)):
            problem = "has a leading zero" if digits.startswith("0") else f"exceeds {MAX_NUMBER}"
            raise InputError(f"{name} {_clip(digits)} in part {_clip(text)} ({where}) of subnet {_clip(encoding)} "
                             f"{problem}; expected an integer 1-{MAX_NUMBER} without leading zeros")
        values.append(int(digits))
    return tuple(values)


def decode(encoding: str, space: SearchSpace = ELASTICVIT_SPACE) -> Subnet:
    """Parse a subnet string and check it against ``space`` (InputError naming the bad part).

    The grammar is in the module docstring; ``encode(decode(s)) == s`` for every accepted ``s``.
    """
    if not isinstance(encoding, str):
        raise InputError(f"a subnet encoding must be a string, got {type(encoding).__name__} "
                         f"{_show((encoding))}")
    if len(encoding) > MAX_ENCODING_CHARS:
        raise InputError(f"subnet {_clip(encoding)} is longer than {MAX_ENCODING_CHARS} characters")
    parts = encoding.split("_")
    num_conv, num_trans = len(space.conv_stages), len(space.transformer_stages)
    expected_parts = 2 + num_conv + num_trans
    if len(parts) != expected_parts:
        raise InputError(
            f"subnet {_clip(encoding)} has {len(parts)} '_'-separated parts, expected {expected_parts}: "
            f"r<res>, stem, {num_conv} conv stages, {num_trans} transformer stages")
    (resolution,) = _parse_part(parts[0], "resolution", "resolution", encoding)
    stem_width, stem_depth, stem_kernel = _parse_part(parts[1], "stem", "stem", encoding)
    conv_stages = tuple(
        ConvStage(*_parse_part(part, "conv", stage.name, encoding))
        for part, stage in zip(parts[2:2 + num_conv], space.conv_stages))
    transformer_stages = tuple(
        TransformerStage(*_parse_part(part, "trans", stage.name, encoding))
        for part, stage in zip(parts[2 + num_conv:], space.transformer_stages))
    subnet = Subnet(resolution, stem_width, stem_depth, stem_kernel, conv_stages, transformer_stages)
    check_subnet(subnet, space)
    return subnet


def _check_choice(value: int, choices: Sequence[int], what: str, subnet: Subnet) -> None:
    if value not in choices:
        raise InputError(f"{what} {value} is not one of {tuple(choices)} in subnet {encode(subnet)!r}")


def check_subnet(subnet: Subnet, space: SearchSpace = ELASTICVIT_SPACE) -> None:
    """Raise InputError naming the first choice outside ``space`` or a width that decreases."""
    if len(subnet.conv_stages) != len(space.conv_stages) or len(subnet.transformer_stages) != len(
            space.transformer_stages):
        raise InputError(
            f"subnet has {len(subnet.conv_stages)} conv and {len(subnet.transformer_stages)} transformer "
            f"stages, expected {len(space.conv_stages)} and {len(space.transformer_stages)}")
    _check_choice(subnet.resolution, space.resolutions, "resolution", subnet)
    _check_choice(subnet.stem_width, space.first_conv_widths, "stem width", subnet)
    _check_choice(subnet.stem_depth, space.stem_depths, "stem depth", subnet)
    _check_choice(subnet.stem_kernel, space.stem_kernels, "stem kernel", subnet)
    for stage, stage_space in zip(subnet.conv_stages, space.conv_stages):
        if not isinstance(stage, ConvStage):
            raise TypeError(f"stage {stage_space.name} must be a ConvStage, got {type(stage).__name__}")
        _check_choice(stage.width, stage_space.widths, f"width of {stage_space.name}", subnet)
        _check_choice(stage.depth, stage_space.depths, f"depth of {stage_space.name}", subnet)
        _check_choice(stage.expand, space.conv_expands, f"expand of {stage_space.name}", subnet)
        _check_choice(stage.kernel, space.conv_kernels, f"kernel of {stage_space.name}", subnet)
    for stage, stage_space in zip(subnet.transformer_stages, space.transformer_stages):
        if not isinstance(stage, TransformerStage):
            raise TypeError(f"stage {stage_space.name} must be a TransformerStage, got {type(stage).__name__}")
        _check_choice(stage.width, stage_space.widths, f"width of {stage_space.name}", subnet)
        _check_choice(stage.depth, stage_space.depths, f"depth of {stage_space.name}", subnet)
        _check_choice(stage.mlp_ratio, space.mlp_ratios, f"MLP ratio of {stage_space.name}", subnet)
        _check_choice(stage.v_scale, space.v_scales, f"V scale of {stage_space.name}", subnet)
    names = ("stem", *(stage.name for stage in space.stages))
    for index in range(1, len(subnet.widths)):
        if subnet.widths[index] < subnet.widths[index - 1]:
            raise InputError(
                f"width {subnet.widths[index]} of {names[index]} is below width {subnet.widths[index - 1]} of "
                f"{names[index - 1]} in subnet {encode(subnet)!r}: widths never decrease across stages")


def stage_sides(resolution: int, space: SearchSpace = ELASTICVIT_SPACE) -> tuple[int, ...]:
    """Feature-map side after the stem and after each stage (stride-2 3x3/5x5 convs give ceil(h/2))."""
    side = math.ceil(resolution / 2)
    sides = [side]
    for stage in space.stages:
        if stage.downsample:
            side = math.ceil(side / 2)
        sides.append(side)
    return tuple(sides)


def _extreme_subnet(space: SearchSpace, pick: Any) -> Subnet:
    return Subnet(
        resolution=pick(space.resolutions),
        stem_width=pick(space.first_conv_widths),
        stem_depth=pick(space.stem_depths),
        stem_kernel=pick(space.stem_kernels),
        conv_stages=tuple(
            ConvStage(pick(s.widths), pick(s.depths), pick(space.conv_expands), pick(space.conv_kernels))
            for s in space.conv_stages),
        transformer_stages=tuple(
            TransformerStage(pick(s.widths), pick(s.depths), pick(space.mlp_ratios), pick(space.v_scales))
            for s in space.transformer_stages),
    )


def min_subnet(space: SearchSpace = ELASTICVIT_SPACE) -> Subnet:
    return _extreme_subnet(space, min)


def max_subnet(space: SearchSpace = ELASTICVIT_SPACE) -> Subnet:
    return _extreme_subnet(space, max)


def random_subnet(rng: random.Random, space: SearchSpace = ELASTICVIT_SPACE) -> Subnet:
    """Uniform over every choice, widths drawn stage by stage among those >= the previous width.

    The engine behind :func:`sample_subnet`; code that holds a ``numpy`` generator calls that.
    """
    stem_width = rng.choice(space.first_conv_widths)
    previous_width = stem_width
    conv_stages = []
    for stage in space.conv_stages:
        width = rng.choice([w for w in stage.widths if w >= previous_width])
        conv_stages.append(ConvStage(width, rng.choice(stage.depths), rng.choice(space.conv_expands),
                                     rng.choice(space.conv_kernels)))
        previous_width = width
    transformer_stages = []
    for stage in space.transformer_stages:
        width = rng.choice([w for w in stage.widths if w >= previous_width])
        transformer_stages.append(TransformerStage(width, rng.choice(stage.depths), rng.choice(space.mlp_ratios),
                                                   rng.choice(space.v_scales)))
        previous_width = width
    return Subnet(rng.choice(space.resolutions), stem_width, rng.choice(space.stem_depths),
                  rng.choice(space.stem_kernels), tuple(conv_stages), tuple(transformer_stages))


def sample_subnet(space: SearchSpace, rng: np.random.Generator) -> Subnet:
    """A uniformly random subnet of ``space`` drawn from ``rng``: the one sampler of ElasticViT.

    One 63-bit draw from ``rng`` seeds :func:`random_subnet`, the engine that draws the choices.
    """
    return random_subnet(random.Random(int(rng.integers(2 ** 63))), space)


def _shared(values: Sequence[int], what: str) -> int:
    if len(values) == 0 or any(value != values[0] for value in values):
        raise InputError(f"{what} {list(values)} must hold one value repeated per layer (stage-wise choices)")
    return values[0]


def from_reference_arch(arch: Sequence[Any], space: SearchSpace = ELASTICVIT_SPACE) -> Subnet:
    """Read the reference's 10-list arch (its eval config, tables and memory banks)."""
    if isinstance(arch, (str, bytes)) or not isinstance(arch, Sequence) or len(arch) != 10:
        raise InputError(f"reference arch must be a list of 10 entries [res, channels, depths, conv_ratios, "
                         f"kernel_sizes, mlp_ratios, num_heads, window_sizes, qk_scales, v_scales], got {_show(arch)}")
    names = ("res", "channels", "depths", "conv_ratios", "kernel_sizes", "mlp_ratios", "num_heads", "window_sizes",
             "qk_scales", "v_scales")
    for index, (name, value) in enumerate(zip(names, arch)):
        values = [value] if index == 0 else value
        if index and (isinstance(value, (str, bytes)) or not isinstance(value, Sequence)) or any(
                isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 1 <= v <= MAX_NUMBER for v in values):
            raise InputError(f"reference arch entry {name} is {_show(value)}; expected "
                             f"{'an integer' if index == 0 else 'a list of integers'} 1-{MAX_NUMBER}")
    resolution, channels, depths, conv_ratios, kernels, mlp_ratios, num_heads, windows, qk_scales, v_scales = arch
    num_conv, num_trans = len(space.conv_stages), len(space.transformer_stages)
    if len(channels) != 1 + num_conv + num_trans or len(depths) != 1 + num_conv + num_trans:
        raise InputError(f"reference arch needs {1 + num_conv + num_trans} channels and depths, "
                         f"got {list(channels)} and {list(depths)}")
    conv_layers = sum(depths[:1 + num_conv])
    trans_layers = sum(depths[1 + num_conv:])
    for name, values, expected in (("conv_ratios", conv_ratios, conv_layers), ("kernel_sizes", kernels, conv_layers),
                                   ("mlp_ratios", mlp_ratios, trans_layers), ("qk_scales", qk_scales, trans_layers),
                                   ("v_scales", v_scales, trans_layers)):
        if len(values) != expected:
            raise InputError(f"reference arch {name} has {len(values)} entries, expected one per layer ({expected})")
    if any(scale != 1 for scale in qk_scales):
        raise InputError(f"qk_scales {list(qk_scales)} must all be 1 (Q/K have head_dim dims per head)")
    stem_depth = depths[0]
    if _shared(conv_ratios[:stem_depth], "stem conv_ratios") != 1:
        raise InputError(f"stem conv_ratios {list(conv_ratios[:stem_depth])} must be 1 (depthwise-separable)")
    conv_stages, offset = [], stem_depth
    for index in range(num_conv):
        depth = depths[1 + index]
        layers = slice(offset, offset + depth)
        conv_stages.append(ConvStage(channels[1 + index], depth,
                                     _shared(conv_ratios[layers], f"conv_ratios of {space.conv_stages[index].name}"),
                                     _shared(kernels[layers], f"kernel_sizes of {space.conv_stages[index].name}")))
        offset += depth
    transformer_stages, offset = [], 0
    for index in range(num_trans):
        depth = depths[1 + num_conv + index]
        layers = slice(offset, offset + depth)
        name = space.transformer_stages[index].name
        transformer_stages.append(TransformerStage(channels[1 + num_conv + index], depth,
                                                   _shared(mlp_ratios[layers], f"mlp_ratios of {name}"),
                                                   _shared(v_scales[layers], f"v_scales of {name}")))
        offset += depth
    subnet = Subnet(int(resolution), channels[0], stem_depth, _shared(kernels[:stem_depth], "stem kernel_sizes"),
                    tuple(conv_stages), tuple(transformer_stages))
    check_subnet(subnet, space)
    expected = to_reference_arch(subnet, space)
    for name, given, wanted, rule in (("num_heads", num_heads, expected[6], "width / head_dim per layer"),
                                      ("window_sizes", windows, expected[7], "1 per layer")):
        if [int(v) for v in given] != list(wanted):
            raise InputError(f"reference arch {name} {_show(list(given))} should be {rule}: {list(wanted)}")
    return subnet


def to_reference_arch(subnet: Subnet, space: SearchSpace = ELASTICVIT_SPACE) -> tuple[Any, ...]:
    """The reference's 10-tuple of tuples (window size 1 and qk scale 1 everywhere, as its space)."""
    conv_ratios = [1] * subnet.stem_depth
    kernels = [subnet.stem_kernel] * subnet.stem_depth
    for stage in subnet.conv_stages:
        conv_ratios += [stage.expand] * stage.depth
        kernels += [stage.kernel] * stage.depth
    mlp_ratios, num_heads, v_scales = [], [], []
    for stage in subnet.transformer_stages:
        mlp_ratios += [stage.mlp_ratio] * stage.depth
        num_heads += [stage.width // space.head_dim] * stage.depth
        v_scales += [stage.v_scale] * stage.depth
    trans_layers = len(mlp_ratios)
    depths = (subnet.stem_depth, *(stage.depth for stage in subnet.stages))
    return (subnet.resolution, subnet.widths, depths, tuple(conv_ratios), tuple(kernels), tuple(mlp_ratios),
            tuple(num_heads), (1,) * trans_layers, (1,) * trans_layers, tuple(v_scales))


# --- a search space from a config node -------------------------------------------------------------

_CONV_STAGE_KEYS = ("name", "widths", "depths", "downsample", "se")
_TRANSFORMER_STAGE_KEYS = ("name", "widths", "depths", "downsample")
_SCALAR_FIELDS = ("head_dim", "reduction_expand", "reduction_kernel", "head_width_multiplier", "head_hidden")


def _config_ints(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value or any(
            isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_NUMBER for v in value):
        raise InputError(f"{where} is {_show((value))}; expected a non-empty list of integers 1-{MAX_NUMBER}")
    if list(value) != sorted(set(value)):
        raise InputError(f"{where} {list(value)} is not strictly increasing")
    return tuple(value)


def _config_stage(entry: Any, keys: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise InputError(f"{where} is {_show((entry))}; expected a mapping with keys {list(keys)}")
    missing, unknown = [k for k in keys if k not in entry], [k for k in entry if k not in keys]
    if missing or unknown:
        raise InputError(f"{where} " + (f"lacks key(s) {missing}" if missing else f"has unknown key(s) {unknown}")
                         + f"; expected exactly {list(keys)}")
    if not isinstance(entry["name"], str) or not entry["name"]:
        raise InputError(f"{where}.name is {_show((entry['name']))}; expected a non-empty string")
    for flag in keys[3:]:
        if not isinstance(entry[flag], bool):
            raise InputError(f"{where}.{flag} is {_show((entry[flag]))}; expected true or false")
    fields = dict(entry)
    fields["widths"] = _config_ints(entry["widths"], f"{where}.widths")
    fields["depths"] = _config_ints(entry["depths"], f"{where}.depths")
    return fields


def search_space_from_dict(node: Any, source: str = "space config") -> SearchSpace:
    """The :class:`SearchSpace` a config mapping describes; ``source`` names it in errors.

    Every field of :class:`SearchSpace` is required and no other key is allowed. List fields are
    strictly increasing integers 1-99999; ``conv_stages`` / ``transformer_stages`` are non-empty lists
    of ``{name, widths, depths, downsample, se}`` / ``{name, widths, depths, downsample}`` with unique
    names; transformer widths are multiples of ``head_dim``. Anything else raises InputError naming the key.
    """
    if not isinstance(node, dict):
        raise InputError(f"{source} is {_show((node))}; expected a mapping of the SearchSpace fields")
    expected = list(SearchSpace.__dataclass_fields__)
    missing, unknown = [k for k in expected if k not in node], [k for k in node if k not in expected]
    if missing or unknown:
        raise InputError(f"{source} " + (f"lacks key(s) {missing}" if missing else f"has unknown key(s) {unknown}")
                         + f"; expected exactly {expected}")
    fields: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("conv_stages", "transformer_stages"):
            keys = _CONV_STAGE_KEYS if key == "conv_stages" else _TRANSFORMER_STAGE_KEYS
            if not isinstance(value, (list, tuple)) or not value:
                raise InputError(f"{source}: {key} is {_show((value))}; expected a non-empty list of stages")
            stages = [_config_stage(entry, keys, f"{source}: {key}[{i}]") for i, entry in enumerate(value)]
            make = ConvStageSpace if key == "conv_stages" else TransformerStageSpace
            fields[key] = tuple(make(**stage) for stage in stages)
        elif key in _SCALAR_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_NUMBER:
                raise InputError(f"{source}: {key} is {_show((value))}; expected an integer 1-{MAX_NUMBER}")
            fields[key] = value
        else:
            fields[key] = _config_ints(value, f"{source}: {key}")
    names = [stage.name for stage in (*fields["conv_stages"], *fields["transformer_stages"])]
    if len(set(names)) != len(names):
        raise InputError(f"{source}: stage names {names} are not unique")
    for index, stage in enumerate(fields["transformer_stages"]):
        bad = [w for w in stage.widths if w % fields["head_dim"]]
        if bad:
            raise InputError(f"{source}: transformer_stages[{index}].widths {bad} are not multiples of head_dim "
                             f"{fields['head_dim']} (heads = width / head_dim)")
    return SearchSpace(**fields)
