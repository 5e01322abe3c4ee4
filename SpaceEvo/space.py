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
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import yaml

__all__ = [
    "BlockType", "Hyperspace", "SpaceEncoding", "StageOptions", "StageSpec", "SubnetEncoding",
    "check_subnet", "list_hyperspaces", "load_hyperspace", "max_subnet", "min_subnet", "sample_subnet",
    "stage_options",
]

SEARCHABLE_STAGES = 6  # stages 1–6 carry a block-type and a window digit
_SPACE_PATTERN = re.compile(r"^(?:(?P<hyperspace>[a-z][a-z0-9_]*)-)?(?P<blocks>\d+)[-_](?P<windows>\d+)$")


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
            raise ValueError(f"window {index} of {self.name} is out of range: it has {self.num_windows} windows")
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
        raise ValueError(f"no stage '{stage_name}' in hyperspace '{self.name}'; stages: {names}")


def list_hyperspaces() -> list[str]:
    folder = resources.files("moonlit.spaceevo") / "spaces"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


@functools.cache
def load_hyperspace(name: str) -> Hyperspace:
    """The hyperspace defined in ``spaces/<name>.yaml``."""
    if name not in list_hyperspaces():
        raise ValueError(f"unknown hyperspace '{name}'; expected one of {list_hyperspaces()}")
    data = yaml.safe_load((resources.files("moonlit.spaceevo") / "spaces" / f"{name}.yaml").read_text())

    def block(entry: dict[str, Any]) -> BlockType:
        return BlockType(entry["type"], tuple(entry["kernels"]), tuple(entry["expands"]), entry["activation"],
                         bool(entry["se"]))

    stages = tuple(StageSpec(s["name"], tuple(s["widths"]), tuple(s["depths"]), int(s["stride"]), s["window"])
                   for s in data["stages"])
    expected = ["first_conv", "stage0"] + [f"stage{i}" for i in range(1, SEARCHABLE_STAGES + 1)]
    if [s.name for s in stages] != expected:
        raise ValueError(f"hyperspace '{name}' has stages {[s.name for s in stages]}, expected {expected}")
    return Hyperspace(name=data["name"], resolutions=tuple(data["resolutions"]),
                      lut_resolutions=tuple(data["lut_resolutions"]), stages=stages,
                      fixed_blocks={k: block(v) for k, v in data["fixed_blocks"].items()},
                      block_types=tuple(block(b) for b in data["block_types"]), head=dict(data["head"]))


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
        """Parse ``onnxw-151122-023231``; the bare form ``151122_023231`` needs ``hyperspace``."""
        match = _SPACE_PATTERN.match(text.strip())
        if match is None:
            raise ValueError(f"'{text}' is not a space encoding; expected '<hyperspace>-<6 block digits>-"
                             f"<6 window digits>', e.g. 'onnxw-151122-023231'")
        name = match["hyperspace"] or hyperspace
        if name is None:
            raise ValueError(f"'{text}' names no hyperspace; pass hyperspace= or write e.g. 'onnxw-{text}'")
        if hyperspace is not None and name != hyperspace:
            raise ValueError(f"'{text}' is a '{name}' space, expected a '{hyperspace}' space")
        return cls(name, tuple(int(c) for c in match["blocks"]), tuple(int(c) for c in match["windows"]))

    def check(self) -> None:
        """Raise ValueError naming the bad digit unless every choice exists in the hyperspace."""
        spec = load_hyperspace(self.hyperspace)
        for part, values in (("block", self.blocks), ("window", self.windows)):
            if len(values) != SEARCHABLE_STAGES:
                raise ValueError(f"{len(values)} {part} digits {values} in a '{self.hyperspace}' space, "
                                 f"expected {SEARCHABLE_STAGES} (stages 1-{SEARCHABLE_STAGES})")
        for i, (block, window, stage) in enumerate(zip(self.blocks, self.windows, spec.searchable_stages), 1):
            if not 0 <= block < len(spec.block_types):
                raise ValueError(f"block digit {block} of stage{i} in '{self._text()}' is not a block type of "
                                 f"'{self.hyperspace}' (expected 0-{len(spec.block_types) - 1})")
            if not 0 <= window < stage.num_windows:
                raise ValueError(f"window digit {window} of stage{i} in '{self._text()}' is out of range: "
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
        num_blocks = sum(self.depths)
        for field, values in (("kernels", self.kernels), ("widths", self.widths), ("expands", self.expands)):
            if len(values) != num_blocks:
                raise ValueError(f"{len(values)} {field} for {num_blocks} blocks (depths {list(self.depths)} "
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
        fields = text.strip().split("_")
        if len(fields) != 5:
            raise ValueError(f"'{text}' has {len(fields)} '_'-separated fields, expected 5: d…_k…_w…_e…_r…")
        parsed: list[list[float]] = []
        for field, prefix in zip(fields[:4], "dkwe"):
            if not field.startswith(prefix):
                raise ValueError(f"field '{field}' of '{text}' should start with '{prefix}' (order d, k, w, e, r)")
            values = []
            for position, item in enumerate(field[1:].split("#")):
                try:
                    values.append(float(item) if prefix == "e" else int(item))
                except ValueError:
                    raise ValueError(f"entry {position} '{item}' of field '{field}' in '{text}' is not "
                                     f"{'a number' if prefix == 'e' else 'an integer'}") from None
            parsed.append(values)
        resolution_field = fields[4]
        if not re.fullmatch(r"r\d+", resolution_field):
            raise ValueError(f"resolution field '{resolution_field}' of '{text}' should be r<int>, e.g. r224")
        depths, kernels, widths, expands = parsed
        return cls(tuple(depths), tuple(kernels), tuple(widths), tuple(None if e == 0 else e for e in expands),
                   int(resolution_field[1:]))


def check_subnet(subnet: SubnetEncoding, space: SpaceEncoding) -> None:
    """Raise ValueError naming the first choice of ``subnet`` that ``space`` does not offer."""
    options = stage_options(space)
    if len(subnet.depths) != len(options):
        raise ValueError(f"subnet has {len(subnet.depths)} depths, '{space}' has {len(options)} stages "
                         f"({[o.name for o in options]})")
    resolutions = space.spec.resolutions
    if subnet.resolution not in resolutions:
        raise ValueError(f"resolution {subnet.resolution} is not one of {list(resolutions)} of '{space}'")
    for stage, blocks in zip(options, subnet.stages()):
        if len(blocks) not in stage.depths:
            raise ValueError(f"depth {len(blocks)} of {stage.name} is not in {list(stage.depths)} of '{space}'")
        for j, (kernel, width, expand) in enumerate(blocks):
            where = f"block {j} of {stage.name} of '{space}'"
            if kernel not in stage.kernels:
                raise ValueError(f"kernel {kernel} of {where} is not in {list(stage.kernels)}")
            if width not in stage.widths:
                raise ValueError(f"width {width} of {where} is not in its window {list(stage.widths)}")
            if not stage.expands and expand is not None:
                raise ValueError(f"expand {expand} of {where}: this block has no expand ratio (expected e0)")
            if stage.expands and (expand is None or float(expand) not in [float(e) for e in stage.expands]):
                raise ValueError(f"expand {expand} of {where} is not in {list(stage.expands)}")


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


def sample_subnet(space: SpaceEncoding, rng: np.random.Generator) -> SubnetEncoding:
    """Uniform depth per stage, then uniform kernel, width and expand per block, uniform resolution."""
    depths, kernels, widths, expands = [], [], [], []

    def choose(values: tuple) -> Any:
        return values[int(rng.integers(len(values)))]

    for stage in stage_options(space):
        depth = choose(stage.depths)
        depths.append(depth)
        for _ in range(depth):
            kernels.append(choose(stage.kernels))
            widths.append(choose(stage.widths))
            expands.append(float(choose(stage.expands)) if stage.expands else None)
    return SubnetEncoding(tuple(depths), tuple(kernels), tuple(widths), tuple(expands),
                          choose(space.spec.resolutions))
