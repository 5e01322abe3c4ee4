"""ImageNet-style folders for SpaceEvo and ElasticViT: datasets, held-out search split, loaders.

``root/train/<class>/*`` and ``root/val/<class>/*`` are read with torchvision's ``ImageFolder``
and transformed with timm's ``create_transform``. SpaceEvo and ElasticViT score candidate
architectures (and calibrate INT8 / batch-norm statistics) on images held out of the training
set, keeping the validation set for the final numbers; ``holdout_per_class`` moves N images per
class out of train into such a ``holdout`` split, which uses the evaluation transform. Loaders
shard with ``DistributedSampler`` across ranks.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision.datasets import ImageFolder

from moonlit.common.errors import InputError

from .loaders import EpochLoader, resolve_rank_world, set_epoch  # noqa: F401  (set_epoch re-exported)


def build_transform(
    is_training: bool,
    img_size: int = 224,
    interpolation: str = "bicubic",
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
    crop_pct: float | None = None,
    **train_aug: Any,
) -> Callable:
    """timm's transform: random-resized-crop augmentation for training, resize + centre crop otherwise.

    ``train_aug`` goes to ``timm.data.create_transform`` unchanged (``scale``, ``hflip``,
    ``color_jitter``, ``auto_augment``, ``re_prob``, ...); it is an error for an eval transform.
    ``crop_pct`` (eval only) defaults to timm's 0.875.
    """
    if not is_training and train_aug:
        raise ValueError(f"augmentation options {sorted(train_aug)} were given for an evaluation transform")
    if is_training and crop_pct is not None:
        raise ValueError(f"crop_pct={crop_pct} applies to evaluation transforms only")
    return create_transform(img_size, is_training=is_training, interpolation=interpolation, mean=tuple(mean),
                            std=tuple(std), crop_pct=crop_pct, **train_aug)


class ImageRootError(InputError, FileNotFoundError):
    """An image root that is missing or lacks the ``{train,val}/<class>/<image>`` layout."""


def check_image_root(root: str | Path) -> Path:
    """``root`` if it holds ``train/`` and ``val/`` folders, else :class:`ImageRootError` (writes nothing)."""
    root = Path(root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise ImageRootError(f"image root {root}: {root / split} is not a directory; expected an ImageNet-style "
                                 f"folder {root}/{{train,val}}/<class>/<image>")
    return root


def _image_folder(split_dir: Path) -> ImageFolder:
    if not split_dir.is_dir():
        raise ImageRootError(f"{split_dir} not found; expected an ImageNet-style folder "
                             f"{split_dir.parent}/{{train,val}}/<class>/<image>")
    try:
        return ImageFolder(str(split_dir))
    except FileNotFoundError as exc:  # no class folders, or a class folder without images
        raise ImageRootError(f"{split_dir}: {exc}") from exc


def check_generated_root(root: str | Path) -> Path:
    """``root`` is absent, empty, or a complete generated folder (``train/`` and ``val/``); writes nothing."""
    root = Path(root)
    if not root.exists():
        return root
    if not root.is_dir():
        raise ImageRootError(f"image root {root} is a file; expected a folder to generate images into")
    splits = [(root / split).is_dir() for split in ("train", "val")]
    if splits == [False, False] and any(root.iterdir()):
        raise ImageRootError(f"image root {root} is not empty but has no train/ and val/ folders; images are "
                             "generated only into a missing or empty folder: remove it or point data.root elsewhere")
    if splits in ([True, False], [False, True]):
        raise ImageRootError(f"image root {root} holds only one of train/ and val/; expected both: remove it "
                             "or point data.root elsewhere")
    return root


def generate_image_root(root: str | Path, generate: Mapping[str, Any]) -> Path:
    """Write ``moonlit.common.data.synthetic`` images to ``root`` unless it already holds them.

    ``generate`` holds ``num_classes``, ``train_per_class``, ``val_per_class``, ``image_size``,
    ``seed``. The images are written into a temporary folder beside ``root`` and renamed into
    place, so an interrupted run leaves no half-written data set behind.
    """
    from .synthetic import write_image_folder

    root = check_generated_root(root)
    if (root / "train").is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        write_image_folder(tmp, num_classes=generate["num_classes"], image_size=generate["image_size"],
                           seed=generate["seed"], images_per_class={"train": generate["train_per_class"],
                                                                    "val": generate["val_per_class"]})
        os.replace(tmp, root)  # also replaces an empty root
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def holdout_indices(targets: list[int] | np.ndarray, per_class: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split sample indices into (kept, held out) with ``per_class`` random indices of each class held out.

    The choice depends only on ``targets`` and ``seed``; both lists are sorted.
    """
    targets = np.asarray(targets)
    if per_class < 0:
        raise InputError(f"data.holdout_per_class = {per_class}; expected >= 0 images per class")
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        if len(members) <= per_class:
            raise InputError(f"class {label} has {len(members)} training images, not more than the "
                             f"{per_class} to hold out (data.holdout_per_class); at least one must stay in train")
        held.extend(rng.choice(members, size=per_class, replace=False).tolist())
    held_set = set(held)
    return [i for i in range(len(targets)) if i not in held_set], sorted(held)


def build_imagenet_datasets(
    root: str | Path,
    img_size: int = 224,
    interpolation: str = "bicubic",
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
    crop_pct: float | None = None,
    holdout_per_class: int = 0,
    holdout_seed: int = 0,
    train_aug: Mapping[str, Any] | None = None,
) -> dict[str, Dataset]:
    """``{"train": ..., "val": ...}`` datasets of ``root``, plus ``"holdout"`` when N > 0 are held out.

    Train uses the augmenting transform, val and holdout the evaluation one. With
    ``holdout_per_class`` = N > 0, N images per class (chosen by ``holdout_seed``) leave train for
    holdout, and train becomes a ``Subset``; val stays an ``ImageFolder`` (``.classes``,
    ``.class_to_idx``). Train and val must have the same classes.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageRootError(f"image root {root} does not exist; expected {root}/train and {root}/val")
    train_folder, val_folder = _image_folder(root / "train"), _image_folder(root / "val")
    if train_folder.classes != val_folder.classes:
        only_train = sorted(set(train_folder.classes) - set(val_folder.classes))
        only_val = sorted(set(val_folder.classes) - set(train_folder.classes))
        raise ValueError(f"{root}/train and {root}/val have different classes: only in train {only_train[:5]}, "
                         f"only in val {only_val[:5]}")
    eval_transform = build_transform(False, img_size, interpolation, mean, std, crop_pct)
    train_folder.transform = build_transform(True, img_size, interpolation, mean, std, **dict(train_aug or {}))
    val_folder.transform = eval_transform
    if holdout_per_class == 0:
        return {"train": train_folder, "val": val_folder}
    kept, held = holdout_indices(train_folder.targets, holdout_per_class, holdout_seed)
    holdout_folder = copy.copy(train_folder)  # shares the scanned sample list; only the transform differs
    holdout_folder.transform = eval_transform
    return {"train": Subset(train_folder, kept), "val": val_folder, "holdout": Subset(holdout_folder, held)}


def build_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over this rank's shard; call ``set_epoch(loader, epoch)`` before each epoch.

    Shuffling (and any sharding over world size > 1) goes through ``DistributedSampler``, whose
    order is a function of (seed, epoch) alone, so every rank agrees and a resumed run replays
    the same order. The workers' augmentation RNGs are seeded from (seed, rank, epoch) by
    ``set_epoch`` (workers restart each epoch); with ``num_workers=0`` augmentation draws from the
    global RNGs, which checkpoints save and restore. Unshuffled single-process loading is
    sequential. Like any DistributedSampler, an unshuffled sharded evaluation pads the last shard
    with repeated samples unless drop_last.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rank, world_size = resolve_rank_world(rank, world_size)
    sampler = None
    if shuffle or world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                     drop_last=drop_last)
    return EpochLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                       pin_memory=pin_memory, drop_last=drop_last, seed=seed, rank=rank)
