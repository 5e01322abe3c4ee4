"""Top-1 of ElasticViT subnets taken from a supernet, after BN recalibration (ICCV'23, Sec. 4).

``python -m moonlit.elasticvit.evaluate model=<named model or subnet encoding> checkpoint=<dir|null>``
builds the supernet, loads our safetensors checkpoint (:mod:`moonlit.common.train.checkpoint`) when
given, activates the subnet, re-estimates its BN statistics on training batches
(:func:`~moonlit.common.train.bn_recalibration.recalibrate_batch_norm`) and measures top-1 on an
ImageFolder (``data.root``) or, without one, on generated images (a smoke run: a random supernet
scores near chance). :class:`SubnetEvaluator` is the same measurement as a batched fitness for the
evolutionary search (:mod:`moonlit.elasticvit.search`).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from moonlit.common.config import hydra_app, to_container
from moonlit.common.errors import InputError
from moonlit.common.train.bn_recalibration import recalibrate_batch_norm
from moonlit.common.train.evaluate import top1_percent

from .flops import subnet_complexity
from .models import MODEL_NAMES, named_subnet
from .space import Subnet, decode, encode
from .supernet import ElasticViTSupernet

__all__ = ["SubnetEvaluator", "build_data", "checkpoint_path", "evaluate", "load_supernet", "run"]

logger = logging.getLogger(__name__)


def _subnet_of(model: str) -> Subnet:
    """The architecture ``cfg.model`` names: a named model (``S1``, ``elasticvit_l1_5`` …), a subnet
    encoding (``r192_s16d1k3_…``) or the registry's ``elasticvit:<encoding>``. The app evaluates the
    subnet inside its supernet (the search's fitness), so it needs the architecture, not a built model."""
    text = str(model).strip().removeprefix("elasticvit:")
    if text.startswith("r") and "_" in text and text[1:2].isdigit():
        return decode(text)
    try:
        return named_subnet(text)
    except ValueError:
        raise InputError(f"model {model!r} is neither a named model ({', '.join(MODEL_NAMES)}) nor a subnet "
                         "encoding like 'r192_s16d1k3_c24d3e3k3_c40d3e3k3_t64d2m2v2_t96d2m2v2_t192d2m3v2_t272d2m4v2'"
                         ) from None


def checkpoint_path(checkpoint: str | Path | None) -> Path | None:
    """``None`` for no checkpoint (also the strings ``none``/``null``/empty from a command line)."""
    if checkpoint is None or str(checkpoint).strip().lower() in ("", "none", "null"):
        return None
    return Path(checkpoint)


def check_checkpoint(checkpoint: str | Path | None) -> None:
    """Refuse a checkpoint :func:`load_supernet` cannot read, reading only metadata (no tensors)."""
    path = checkpoint_path(checkpoint)
    if path is None:
        return
    if not path.exists():
        raise InputError(f"checkpoint {path} does not exist; expected a checkpoint folder of "
                         "moonlit.elasticvit.train or a reference .pth file")
    from .checkpoints import is_reference_checkpoint

    if path.is_dir():
        from moonlit.common.train.checkpoint import checkpoint_meta

        checkpoint_meta(path)
    elif not is_reference_checkpoint(path):
        raise InputError(f"checkpoint file {path} is neither a reference checkpoint (a .pth, .pt or .pth.tar "
                         "file) nor a directory of our safetensors checkpoints")


def load_supernet(checkpoint: str | Path | None, num_classes: int = 1000, token_norm: str = "groupnorm1",
                  which: str = "ema") -> ElasticViTSupernet:
    """The supernet, with weights from a checkpoint when given.

    A directory is our safetensors format (one ``step_*`` or a run's latest); a ``.pth``/``.pt``/
    ``.pth.tar`` file is a reference checkpoint, read through the key map of
    :func:`~moonlit.elasticvit.checkpoints.load_reference_supernet`. ``which`` = ``"ema"`` takes the
    EMA weights (what both the reference and our training evaluate; a checkpoint trained without EMA
    falls back to its model weights with a warning), ``"model"`` the trained weights.
    """
    supernet = ElasticViTSupernet(num_classes=num_classes, token_norm=token_norm)  # type: ignore[arg-type]
    checkpoint = checkpoint_path(checkpoint)
    if checkpoint is None:
        logger.warning("no supernet checkpoint: random weights (accuracies are chance level; a smoke run)")
        return supernet.eval()
    from .checkpoints import is_reference_checkpoint, load_reference_supernet

    if is_reference_checkpoint(checkpoint):
        load_reference_supernet(checkpoint, supernet, which=which)  # type: ignore[arg-type]
        logger.info("loaded reference supernet weights (%s) from %s", which, checkpoint)
    elif checkpoint.is_file():
        raise ValueError(f"checkpoint file {checkpoint} is neither a reference checkpoint (a .pth, .pt or .pth.tar "
                         "file) nor a directory of our safetensors checkpoints")
    else:
        from moonlit.common.train.checkpoint import checkpoint_meta, load_checkpoint

        _, meta = checkpoint_meta(checkpoint)
        if which == "ema" and "ema" in meta.get("modules", []):
            state = load_checkpoint(checkpoint, modules={"ema": supernet})
            logger.info("loaded the supernet's EMA weights from %s (step %d)", state.path, state.step)
        else:
            if which == "ema":
                logger.warning("%s holds no EMA (trained with ema.enabled=false): using its model weights", checkpoint)
            state = load_checkpoint(checkpoint, supernet)
            logger.info("loaded supernet weights from %s (step %d)", state.path, state.step)
    return supernet.eval()


class SubnetEvaluator:
    """BN-recalibrated top-1 (%) of subnets of one supernet: the search's fitness, batched over candidates.

    ``calibration``/``evaluation`` are re-iterable (lists or DataLoaders with a fixed sampler epoch),
    so every candidate sees the same images; ``calibration_batches`` caps the BN batches (the
    reference's ``bn_cal`` uses 64), ``evaluation_batches`` the scored ones (None: all).
    """

    def __init__(self, supernet: ElasticViTSupernet, calibration: Iterable[Any], evaluation: Iterable[Any],
                 calibration_batches: int = 64, evaluation_batches: int | None = None) -> None:
        self.supernet = supernet
        self.calibration, self.evaluation = calibration, evaluation
        self.calibration_batches, self.evaluation_batches = calibration_batches, evaluation_batches

    def accuracy(self, subnet: Subnet) -> float:
        self.supernet.set_active(subnet)
        recalibrate_batch_norm(self.supernet, self.calibration, self.calibration_batches)
        return top1_percent(self.supernet.eval(), self.evaluation, max_batches=self.evaluation_batches)

    def __call__(self, subnets: Sequence[Subnet]) -> list[float]:
        return [self.accuracy(subnet) for subnet in subnets]


def build_data(data: DictConfig, run_dir: Path, split: str, calibration_batches: int
               ) -> tuple[Iterable[Any], Iterable[Any], int]:
    """(calibration loader, ``split`` loader, number of classes) of the ``data`` group (configs/data/);
    a null ``data.root`` means ``run_dir/generated_images`` (where ``data=generated`` writes by default).

    ``split``: ``"holdout"`` (images held out of train, the search's fitness) or ``"val"``.
    With ``data.cache``, the first ``calibration_batches`` and the whole split are materialized as
    lists once (small data: no decoding per candidate).
    """
    from moonlit.common.data.imagenet import build_loader
    from moonlit.common.data.images import build_image_data

    root = run_dir / "generated_images" if data.root is None else data.root
    datasets = build_image_data(data, root=str(root),
                                holdout_per_class=data.holdout_per_class if split == "holdout" else 0)
    if split not in datasets:
        raise InputError(f"split {split!r} is not available (data.holdout_per_class = {data.holdout_per_class}); "
                         f"expected one of {sorted(datasets)}")
    classes = datasets.num_classes
    # shuffle once with a fixed seed and epoch: every candidate calibrates on the same batches
    calibration = build_loader(datasets["train"], data.batch_size, shuffle=True, num_workers=data.num_workers,
                               seed=data.seed, drop_last=True)
    evaluation = build_loader(datasets[split], data.batch_size, shuffle=False, num_workers=data.num_workers)
    if data.cache:
        return list(itertools.islice(calibration, calibration_batches)), list(evaluation), classes
    return calibration, evaluation, classes


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.model`` from ``cfg.checkpoint``; writes and returns ``metrics.json``."""
    subnet = _subnet_of(cfg.model)
    check_checkpoint(cfg.checkpoint)  # before any data is built or written
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    calibration, evaluation, classes = build_data(cfg.data, run_dir, cfg.data.split, cfg.bn_batches)
    num_classes = cfg.num_classes if cfg.num_classes is not None else classes
    supernet = load_supernet(cfg.checkpoint, num_classes, cfg.token_norm)
    evaluator = SubnetEvaluator(supernet, calibration, evaluation, cfg.bn_batches, cfg.eval_batches)
    top1 = evaluator.accuracy(subnet)
    complexity = subnet_complexity(subnet, num_classes)
    metrics = {"model": str(cfg.model), "subnet": encode(subnet), "top1": top1, "split": cfg.data.split,
               "mmacs": complexity.macs / 1e6, "params_m": complexity.params / 1e6,
               "checkpoint": None if checkpoint_path(cfg.checkpoint) is None else str(cfg.checkpoint),
               "data": {"builder": str(cfg.data._target_).rsplit(".", 1)[-1], "root": str(cfg.data.root)},
               "bn_batches": cfg.bn_batches, "config": to_container(cfg)}
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    logger.info("%s: top-1 %.2f%% (%s split, %.1f MMACs)", metrics["subnet"], top1, cfg.data.split, metrics["mmacs"])
    return metrics


def run(cfg: DictConfig) -> dict[str, Any]:
    """The app's work (what ``main`` runs): :func:`evaluate`."""
    return evaluate(cfg)


@hydra_app("elasticvit", "evaluate")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
