"""Values of ``configs/litepred/settings/default.yaml`` that several subcommands read, checked once.

The training architectures and how many of them are measured whole, the profiling backend, the
overhead's weight rates, and a model named on the command line (``model=``, ``heldout.models``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from moonlit.common.errors import InputError
from moonlit.litepred.profile import get_platform
from moonlit.litepred.zoo import ArchSpec, training_architectures

__all__ = ["DEFAULT_CALIBRATION_MODELS", "backend", "calibration_count", "resolve_spec", "training_specs",
           "weight_rates", "kernel_offsets"]

# Whole models measured to fit the overhead term when ``architectures.calibration`` is null: enough
# for the per-type factors' leave-one-out choice, and never more than the training architectures.
DEFAULT_CALIBRATION_MODELS = 60


def backend(cfg: DictConfig) -> Any:
    """The profiling backend ``platform`` with the options of ``backend``."""
    return get_platform(cfg.platform, **OmegaConf.to_container(cfg.backend, resolve=True))


def calibration_count(cfg: DictConfig) -> int:
    """``architectures.calibration``, or ``min(DEFAULT_CALIBRATION_MODELS, architectures.train)`` when null."""
    a = cfg.architectures
    train = a.train
    if isinstance(train, bool) or not isinstance(train, int) or train < 1:
        raise InputError(f"architectures.train = {train!r}; expected an int >= 1")
    if a.calibration is None:
        return min(DEFAULT_CALIBRATION_MODELS, train)
    if isinstance(a.calibration, bool) or not isinstance(a.calibration, int) or a.calibration < 0:
        raise InputError(f"architectures.calibration = {a.calibration!r}; expected null or an int >= 0")
    if a.calibration > train:
        raise InputError(f"architectures.calibration ({a.calibration}) must not exceed architectures.train ({train}); "
                         "leave it null for min(60, train)")
    return int(a.calibration)


def training_specs(cfg: DictConfig) -> list[ArchSpec]:
    """The training architectures of ``architectures`` (counts checked first)."""
    a = cfg.architectures
    calibration_count(cfg)
    families = list(a.families) if a.families else None
    return training_architectures(int(a.train), seed=int(a.seed), families=families)


def in_context_records(cfg: DictConfig, backend_name: str) -> list[Any]:
    """The kernels timed inside training models that ``in_context.path`` names (``moonlit-litepred attribute
    attribute.in_context=true`` writes them), for ``build`` to train on beside the isolated kernels; [] when the
    path is null. Checked whole before anything runs: every record is an in-model sample of ``backend_name``
    from one of this build's training architectures (a held-out model's kernels must never train a predictor)."""
    from moonlit.litepred.profile.dataset import ProfileDataset

    path = cfg.get("in_context", {}).get("path")
    if path is None:
        return []
    if not Path(str(path)).is_file():
        raise InputError(f"in_context.path = {path}: no such file; expected the JSONL that `moonlit-litepred attribute "
                         f"platform={cfg.platform} attribute.in_context=true` writes")
    records = ProfileDataset(str(path)).records(kind="kernel")
    if not records:
        raise InputError(f"in_context.path = {path} holds no kernel records; expected in-model kernel samples")
    other = sorted({r.backend for r in records} - {backend_name})
    if other:
        raise InputError(f"in_context.path = {path} holds kernels of {other}; expected only {backend_name}'s")
    training = {spec.name for spec in training_specs(cfg)}
    for record in records:
        if record.metadata.get("context") != "in-model":
            raise InputError(f"in_context.path = {path}: record {record.key} is not an in-model sample "
                             "(metadata.context != 'in-model')")
        if record.metadata.get("model") not in training:
            raise InputError(f"in_context.path = {path}: record {record.key} comes from model "
                             f"{record.metadata.get('model')!r}, not one of this build's training architectures")
    return records


def _grid(value: Any, key: str, default: tuple[float, ...]) -> tuple[float, ...]:
    """A calibration grid from the config: null = ``default``, a list, or one number (fixed); values >= 0."""
    if value is None:
        return default
    values = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else list(value)
    if not values or any(not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 for v in values):
        raise InputError(f"{key} = {value!r}; expected null, a number >= 0 or a list of them")
    return tuple(float(v) for v in values)


def weight_rates(value: Any) -> tuple[float, ...]:
    """``overhead.weight_rates``: null = the default grid, a list, or one number (fixed)."""
    from moonlit.litepred.predict.calibration import WEIGHT_RATE_GRID

    return _grid(value, "overhead.weight_rates", WEIGHT_RATE_GRID)


def kernel_offsets(value: Any) -> tuple[float, ...]:
    """``overhead.kernel_offsets``: null = the default grid, a list, or one number (fixed; 0 = off)."""
    from moonlit.litepred.predict.calibration import KERNEL_OFFSET_GRID

    return _grid(value, "overhead.kernel_offsets", KERNEL_OFFSET_GRID)

def resolve_spec(text: str) -> ArchSpec:
    """A zoo architecture from ``family/description@res`` (e.g. ``timm-mobile/efficientnet_b0@224``),
    ``family:description@res`` (any grammar string), or the name of a default held-out/training spec."""
    from moonlit.litepred.zoo import get_family, heldout_architectures, list_families

    head, _, resolution = text.rpartition("@")
    for separator in (":", "/"):
        family, found, description = head.partition(separator)
        if found and family in list_families() and resolution.isdigit():
            try:
                return get_family(family).make_spec(description, int(resolution))
            except ValueError:
                if separator == ":":
                    raise
    for spec in [*heldout_architectures(), *training_architectures(150, seed=1)]:
        if spec.name == text:
            return spec
    raise InputError(f"model {text!r} is neither an .onnx file nor a zoo architecture; use "
                     f"'<family>/<description>@<resolution>' or '<family>:<description>@<resolution>' with a family "
                     f"of {list_families()}")
