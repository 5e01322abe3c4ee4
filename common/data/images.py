"""Image data chosen by config: the ``data`` group (``configs/data/``) of SpaceEvo and ElasticViT.

Each option of the group names a builder class with ``_target_``:

* :class:`ImageFolderData` (``data=imagenet``): an ImageNet-style folder ``root/{train,val}/<class>/*``;
* :class:`GeneratedData` (``data=generated``): the same, written first by ``moonlit.common.data.synthetic``
  (learnable coloured shapes, for smoke runs);
* :class:`FashionMNISTData` (``data=fashion_mnist``): torchvision's Fashion-MNIST (``bash scripts/get_data.sh``
  fetches it), grey replicated to RGB at ``img_size``; val is its 10,000-image test set.

A builder's :meth:`~ImageFolderData.datasets` returns :class:`ImageDatasets` (``train``, ``val`` and, with
``holdout_per_class`` = N > 0, ``holdout``: N train images per class moved out of train, chosen by ``seed``,
seen with the evaluation transform) plus the class count. For quick runs ``train_subset`` = M keeps M
seeded-random images per class of what is left in train, ``val_subset`` = K keeps K per class of val.
:func:`image_data_from_config` instantiates the builder of a ``data`` config node
(``hydra.utils.instantiate``); :func:`build_image_data` also builds.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset, Subset

from moonlit.common.errors import InputError

from .imagenet import (
    ImageRootError,
    build_imagenet_datasets,
    build_transform,
    check_generated_root,
    check_image_root,
    generate_image_root,
    holdout_indices,
)

__all__ = ["FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "LoaderSettings", "FashionMNISTData", "GeneratedData",
           "ImageDatasets", "ImageFolderData", "build_image_data", "check_image_data", "image_data_from_config"]

# Per-channel statistics of the 60,000 Fashion-MNIST training images (pixel / 255), the same for R, G, B.
FASHION_MNIST_MEAN = (0.2860,) * 3
FASHION_MNIST_STD = (0.3530,) * 3

GET_DATA_HINT = "fetch it with: bash scripts/get_data.sh"


@dataclass(frozen=True)
class ImageDatasets(Mapping[str, Dataset]):
    """The splits of one image data set (``"train"``, ``"val"``, optionally ``"holdout"``) and its class count."""

    splits: Mapping[str, Dataset]
    num_classes: int

    def __getitem__(self, split: str) -> Dataset:
        return self.splits[split]

    def __iter__(self) -> Iterator[str]:
        return iter(self.splits)

    def __len__(self) -> int:
        return len(self.splits)


def subset_per_class(targets: Any, indices: list[int], per_class: int, seed: int, split: str = "train") -> list[int]:
    """``per_class`` of ``indices`` of each class (their labels in ``targets``), seeded-random; sorted."""
    labels = np.asarray(targets)[indices]
    # streams apart from the holdout's: a subset does not move the holdout
    rng = np.random.default_rng([seed, 1 if split == "train" else 2])
    chosen: list[int] = []
    for label in np.unique(labels):
        members = np.asarray(indices)[labels == label]
        if len(members) < per_class:
            raise InputError(f"data.{split}_subset = {per_class} images per class, but class {label} has only "
                             f"{len(members)} {split} images; expected at most {len(members)}")
        chosen.extend(rng.permutation(members)[:per_class].tolist())
    return sorted(chosen)


def _subsets(datasets: dict[str, Dataset], train_targets: Any, val_targets: Any, train_per_class: int | None,
             val_per_class: int | None, seed: int) -> dict[str, Dataset]:
    """``datasets`` with train and val cut to ``train_subset`` / ``val_subset`` images per class (null: all)."""
    datasets = dict(datasets)
    for split, targets, per_class in (("train", train_targets, train_per_class), ("val", val_targets, val_per_class)):
        if per_class is None:
            continue
        if per_class < 1:
            raise InputError(f"data.{split}_subset = {per_class}; expected null or images per class >= 1")
        dataset = datasets[split]
        if isinstance(dataset, Subset):
            base, indices = dataset.dataset, list(dataset.indices)
        else:
            base, indices = dataset, list(range(len(dataset)))
        datasets[split] = Subset(base, subset_per_class(targets, indices, per_class, seed, split))
    return datasets


@dataclass(frozen=True, kw_only=True)
class LoaderSettings:
    """The loader keys every ``data`` option carries; the apps read them when they load and score
    (each app's config says which it uses), the builders do not."""

    batch_size: int | None = None
    eval_batch_size: int | None = None
    num_workers: int = 0
    cache: bool = False     # keep calibration / scored batches in memory (small data)
    split: str = "val"      # the split an evaluation scores: val | holdout


@dataclass(frozen=True, kw_only=True)
class ImageFolderData(LoaderSettings):
    """An ImageNet-style folder ``root/{train,val}/<class>/<image>`` read with torchvision's ``ImageFolder``.

    ``img_size``, ``interpolation``, ``crop_pct`` (evaluation, null: timm's 0.875) and ``train_aug``
    (``timm.data.create_transform`` options) shape the timm transforms.
    """

    root: str
    img_size: int = 224
    interpolation: str = "bicubic"
    crop_pct: float | None = None
    holdout_per_class: int = 0
    seed: int = 0
    train_subset: int | None = None
    val_subset: int | None = None
    train_aug: Mapping[str, Any] | None = None

    def check(self) -> None:
        """Raise :class:`ImageRootError` unless the data can be read; writes nothing."""
        check_image_root(self.root)

    def prepare(self) -> None:
        """Write what :meth:`datasets` needs (nothing for a folder); DDP apps call it on rank 0 only."""

    def class_count(self) -> int:
        """The number of classes, without reading images (the class folders of ``root/train``)."""
        return sum(1 for entry in (Path(self.root) / "train").iterdir() if entry.is_dir())

    def datasets(self) -> ImageDatasets:
        """The train / val (/ holdout) splits with their transforms."""
        self.prepare()
        splits = build_imagenet_datasets(self.root, img_size=self.img_size, interpolation=self.interpolation,
                                         crop_pct=self.crop_pct, holdout_per_class=self.holdout_per_class,
                                         holdout_seed=self.seed, train_aug=dict(self.train_aug or {}))
        splits = _subsets(splits, _folder_targets(splits["train"]), splits["val"].targets, self.train_subset,
                          self.val_subset, self.seed)
        return ImageDatasets(splits, len(splits["val"].classes))


def _folder_targets(train: Dataset) -> list[int]:
    return (train.dataset if isinstance(train, Subset) else train).targets


@dataclass(frozen=True, kw_only=True)
class GeneratedData(ImageFolderData):
    """:class:`ImageFolderData` over generated images, written to ``root`` first unless it holds them.

    ``generate``: ``num_classes``, ``train_per_class``, ``val_per_class``, ``image_size``, ``seed``
    (``moonlit.common.data.synthetic.write_image_folder``). A present ``root`` is used as it is.
    """

    generate: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def check(self) -> None:
        missing = sorted({"num_classes", "train_per_class", "val_per_class", "image_size", "seed"} - set(self.generate))
        if missing:
            raise InputError(f"data.generate lacks {missing}; expected num_classes, train_per_class, "
                             "val_per_class, image_size and seed")
        check_generated_root(self.root)

    def prepare(self) -> None:
        self.check()
        generate_image_root(self.root, self.generate)

    def class_count(self) -> int:
        return super().class_count() if (Path(self.root) / "train").is_dir() else int(self.generate["num_classes"])


@dataclass(frozen=True, kw_only=True)
class FashionMNISTData(LoaderSettings):
    """Fashion-MNIST (torchvision's ``FashionMNIST`` under ``root/FashionMNIST/raw``) as RGB images.

    Train is its 60,000-image training set, val its 10,000-image test set. The 28 px grey images are
    replicated to three channels and resized to ``img_size`` by the timm transforms (``crop_pct`` 1.0:
    no border is cropped). ``normalization``: ``fashion_mnist`` (its own mean / std) or ``imagenet``
    (timm's ImageNet mean / std, for teachers pretrained on ImageNet).
    """

    root: str
    img_size: int = 64
    interpolation: str = "bicubic"
    crop_pct: float | None = 1.0
    holdout_per_class: int = 0
    seed: int = 0
    train_subset: int | None = None
    val_subset: int | None = None
    train_aug: Mapping[str, Any] | None = None
    normalization: str = "fashion_mnist"

    def _raw_files(self) -> list[Path]:
        from torchvision.datasets import FashionMNIST

        raw = Path(self.root) / "FashionMNIST" / "raw"
        return [raw / Path(url).stem for url, _ in FashionMNIST.resources]  # the names without .gz

    def check(self) -> None:
        if self.normalization not in ("fashion_mnist", "imagenet"):
            raise InputError(f"data.normalization = {self.normalization!r}; expected 'fashion_mnist' or 'imagenet'")
        missing = [path for path in self._raw_files() if not path.is_file()]
        if missing:
            raise ImageRootError(f"Fashion-MNIST file {missing[0]} not found (data.root = {self.root}); "
                                 f"{GET_DATA_HINT}")

    def prepare(self) -> None:
        """Nothing to write: the files come from ``scripts/get_data.sh``."""

    def class_count(self) -> int:
        return 10

    def datasets(self) -> ImageDatasets:
        from torchvision.datasets import FashionMNIST
        from torchvision.transforms import Compose

        self.check()
        try:
            train = FashionMNIST(str(self.root), train=True, download=False)
            val = FashionMNIST(str(self.root), train=False, download=False)
        except (AssertionError, RuntimeError, ValueError) as exc:  # torchvision asserts on a malformed IDX header
            raise ImageRootError(f"Fashion-MNIST files under {Path(self.root) / 'FashionMNIST' / 'raw'} cannot be "
                                 f"read ({type(exc).__name__}: {exc}); {GET_DATA_HINT}") from exc
        mean, std = ((FASHION_MNIST_MEAN, FASHION_MNIST_STD) if self.normalization == "fashion_mnist"
                     else (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD))
        eval_transform = Compose([to_rgb, build_transform(False, self.img_size, self.interpolation, mean, std,
                                                          self.crop_pct)])
        train.transform = Compose([to_rgb, build_transform(True, self.img_size, self.interpolation, mean, std,
                                                           **dict(self.train_aug or {}))])
        val.transform = eval_transform
        targets = train.targets.tolist()
        splits: dict[str, Dataset] = {"train": train, "val": val}
        if self.holdout_per_class != 0:  # holdout_indices refuses a negative count
            kept, held = holdout_indices(targets, self.holdout_per_class, self.seed)
            holdout = copy.copy(train)  # shares the image tensor; only the transform differs
            holdout.transform = eval_transform
            splits = {"train": Subset(train, kept), "val": val, "holdout": Subset(holdout, held)}
        splits = _subsets(splits, targets, val.targets.tolist(), self.train_subset, self.val_subset, self.seed)
        return ImageDatasets(splits, len(FashionMNIST.classes))


def to_rgb(image: Any) -> Any:
    """A PIL image in RGB mode (grey replicated to three channels); a module function, so workers can pickle it."""
    return image.convert("RGB")


BUILDERS = (ImageFolderData, GeneratedData, FashionMNISTData)


def image_data_from_config(node: Mapping[str, Any], **overrides: Any) -> ImageFolderData | FashionMNISTData:
    """The builder a ``data`` config node names with ``_target_`` (``configs/data/``), with ``overrides``
    (e.g. an ``img_size`` the app derives) applied over the node.

    A key the builder does not take, a missing or unknown ``_target_``, or a non-integer size or seed
    is an :class:`InputError`.
    """
    from omegaconf import DictConfig, OmegaConf

    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    values.update(overrides)
    target = values.pop("_target_", None)
    by_name = {f"{cls.__module__}.{cls.__qualname__}": cls for cls in BUILDERS}
    if target not in by_name:
        raise InputError(f"data._target_ = {target!r}; expected one of {sorted(by_name)} "
                         "(choose data=imagenet, data=generated or data=fashion_mnist; configs/data/)")
    fields = {f.name for f in dataclasses.fields(by_name[target])}
    if values.get("root") is None:
        raise InputError(f"data.root is missing for {target}; expected the data folder")
    unknown = sorted(set(values) - fields)
    if unknown:
        raise InputError(f"data.{unknown[0]} is not a setting of {target}; expected one of {sorted(fields)}")
    for key, nullable in (("img_size", False), ("holdout_per_class", False), ("seed", False), ("train_subset", True),
                          ("val_subset", True)):
        if key not in values or (nullable and values[key] is None):
            continue
        if isinstance(values[key], bool) or not isinstance(values[key], int):
            raise InputError(f"data.{key} = {values[key]!r}; expected an integer" + (" or null" if nullable else ""))
    import hydra.utils

    return hydra.utils.instantiate({"_target_": target, "_convert_": "all", **values})


def check_image_data(node: Mapping[str, Any], num_classes: int, field: str) -> ImageFolderData | FashionMNISTData:
    """The node's builder after checking, without writing anything, that the data can be read and that
    its classes fit a classifier of ``num_classes`` outputs (the config ``field`` that sets it)."""
    data = image_data_from_config(node)
    data.check()
    if data.class_count() > num_classes:
        raise InputError(f"the data (data.root = {data.root}) has {data.class_count()} classes but {field} = "
                         f"{num_classes}; expected {field}={data.class_count()}")
    return data


def build_image_data(node: Mapping[str, Any], *, is_main: bool = True, **overrides: Any) -> ImageDatasets:
    """The data sets of a ``data`` config node: :func:`image_data_from_config` then its ``datasets()``.

    In a run of several processes, pass ``is_main`` (rank 0 or not): the main process prepares the data
    (``data=generated`` writes its images) while the others wait at a barrier, then every process reads it.
    """
    from moonlit.common.train.dist import barrier

    data = image_data_from_config(node, **overrides)
    if is_main:
        data.prepare()
    barrier()  # a no-op without a process group
    return data.datasets()
