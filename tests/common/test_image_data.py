"""The image-data group (configs/data/): each option builds, Fashion-MNIST as RGB from IDX files, seeded holdout
and train subset, and one-line errors for bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from moonlit.common.config import config_root
from moonlit.common.data.imagenet import build_imagenet_datasets
from moonlit.common.data.images import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    FashionMNISTData,
    GeneratedData,
    ImageFolderData,
    build_image_data,
    check_image_data,
    image_data_from_config,
)
from moonlit.common.errors import InputError

NO_AUG = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "hflip": 0.0, "color_jitter": None}


def pixel_value(label: int, index: int) -> int:
    """The grey level of the ``index``-th image of class ``label`` in the ``fake_fashion_mnist`` fixture."""
    return 20 * label + 3 * index + 10


@pytest.fixture
def fake_fmnist(fake_fashion_mnist: Path) -> Path:
    return fake_fashion_mnist


def _indices(subset) -> list[int]:
    return list(subset.indices)


def test_fashion_mnist_is_rgb_at_img_size_with_its_own_normalisation(fake_fmnist: Path) -> None:
    data = FashionMNISTData(root=str(fake_fmnist), img_size=32).datasets()
    assert data.num_classes == 10 and (len(data["train"]), len(data["val"])) == (50, 20)
    assert "holdout" not in data
    for i in (0, 7, 19):
        image, label = data["val"][i]
        assert image.shape == (3, 32, 32) and label == i % 10
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])  # grey replicated
        # a constant 28 px image resized stays constant: (v / 255 - mean) / std, to one grey level
        expected = (pixel_value(label, i // 10) / 255 - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0]
        assert image.mean().item() == pytest.approx(expected, abs=1 / 255 / FASHION_MNIST_STD[0])


def test_fashion_mnist_imagenet_normalisation_per_channel(fake_fmnist: Path) -> None:
    image, label = FashionMNISTData(root=str(fake_fmnist), img_size=24, normalization="imagenet").datasets()["val"][3]
    value = pixel_value(label, 0) / 255
    for channel, (mean, std) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), strict=True)):
        assert image[channel].mean().item() == pytest.approx((value - mean) / std, abs=1 / 255 / std)


def test_fashion_mnist_holdout_is_disjoint_seeded_and_uses_the_eval_transform(fake_fmnist: Path) -> None:
    def split(seed: int):
        return FashionMNISTData(root=str(fake_fmnist), img_size=16, holdout_per_class=2, seed=seed,
                                train_aug=NO_AUG).datasets()

    data = split(3)
    train, held = _indices(data["train"]), _indices(data["holdout"])
    assert not set(train) & set(held) and sorted(train + held) == list(range(50))
    labels = [i % 10 for i in held]  # the fake set interleaves classes
    assert sorted(labels) == sorted(list(range(10)) * 2)
    assert _indices(split(3)["holdout"]) == held and _indices(split(4)["holdout"]) != held
    assert data["holdout"].dataset.transform is data["val"].transform


def test_train_subset_keeps_n_per_class_of_the_non_held_out_images(fake_fmnist: Path) -> None:
    data = FashionMNISTData(root=str(fake_fmnist), img_size=16, holdout_per_class=1, train_subset=3, seed=1).datasets()
    train = _indices(data["train"])
    assert len(train) == 30 and np.bincount([i % 10 for i in train]).tolist() == [3] * 10
    assert not set(train) & set(_indices(data["holdout"]))
    again = FashionMNISTData(root=str(fake_fmnist), img_size=16, holdout_per_class=1, train_subset=3, seed=1)
    assert _indices(again.datasets()["train"]) == train
    val = FashionMNISTData(root=str(fake_fmnist), img_size=16, val_subset=1).datasets()["val"]
    assert len(val) == 10 and sorted(i % 10 for i in val.indices) == list(range(10))
    with pytest.raises(InputError, match="train_subset = 5 .*only 4"):
        FashionMNISTData(root=str(fake_fmnist), holdout_per_class=1, train_subset=5).datasets()


def test_image_folder_matches_build_imagenet_datasets(synthetic_image_root: Path) -> None:
    data = ImageFolderData(root=str(synthetic_image_root), img_size=32, holdout_per_class=2, seed=5).datasets()
    reference = build_imagenet_datasets(synthetic_image_root, img_size=32, holdout_per_class=2, holdout_seed=5)
    assert data.num_classes == 4 and set(data) == {"train", "val", "holdout"}
    assert _indices(data["holdout"]) == _indices(reference["holdout"])
    assert _indices(data["train"]) == _indices(reference["train"])
    subset = ImageFolderData(root=str(synthetic_image_root), img_size=32, train_subset=2).datasets()["train"]
    assert np.bincount([subset.dataset.targets[i] for i in subset.indices]).tolist() == [2, 2, 2, 2]


def test_generated_writes_a_missing_root_then_reads_it(tmp_path: Path) -> None:
    generate = {"num_classes": 3, "train_per_class": 4, "val_per_class": 2, "image_size": 16, "seed": 0}
    data = GeneratedData(root=str(tmp_path / "images"), img_size=16, generate=generate).datasets()
    assert data.num_classes == 3 and (len(data["train"]), len(data["val"])) == (12, 6)
    assert len(list((tmp_path / "images").rglob("*.jpg"))) == 18
    assert data["val"][0][0].shape == (3, 16, 16)
    with pytest.raises(InputError, match="generate lacks"):
        GeneratedData(root=str(tmp_path / "other"), generate={"num_classes": 3}).check()


@pytest.mark.parametrize("option,cls", [("imagenet", ImageFolderData), ("generated", GeneratedData),
                                        ("fashion_mnist", FashionMNISTData)])
def test_each_group_option_names_its_builder(option: str, cls: type, tmp_path: Path) -> None:
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path)}, "output_dir": str(tmp_path / "run"),
                            "data": OmegaConf.load(config_root() / "data" / f"{option}.yaml")})
    builder = image_data_from_config(cfg.data, img_size=40)
    assert type(builder) is cls and builder.img_size == 40
    assert builder.root.startswith(str(tmp_path))


def test_fashion_mnist_option_builds_from_config(fake_fmnist: Path) -> None:
    node = OmegaConf.load(config_root() / "data" / "fashion_mnist.yaml")
    node.root, node.holdout_per_class = str(fake_fmnist), 1
    data = build_image_data(node)
    assert data.num_classes == 10 and data["train"][0][0].shape == (3, 64, 64) and len(data["holdout"]) == 10


def test_bad_input_is_one_line_input_error(tmp_path: Path, fake_fmnist: Path) -> None:
    target = "moonlit.common.data.images."
    with pytest.raises(InputError, match=f"{tmp_path / 'missing'}.*train.* is not a directory"):
        image_data_from_config({"_target_": target + "ImageFolderData", "root": str(tmp_path / "missing")}).check()
    with pytest.raises(InputError, match=r"FashionMNIST/raw/train-images-idx3-ubyte not found.*bash scripts/get_data"):
        build_image_data({"_target_": target + "FashionMNISTData", "root": str(tmp_path / "nothing")})
    with pytest.raises(InputError, match="_target_ = 'moonlit.common.data.images.CifarData'.*data=fashion_mnist"):
        image_data_from_config({"_target_": target + "CifarData", "root": "x"})
    with pytest.raises(InputError, match="data.img_sise is not a setting of"):
        image_data_from_config({"_target_": target + "ImageFolderData", "root": "x", "img_sise": 3})
    with pytest.raises(InputError, match="data.img_size = '64'; expected an integer"):
        image_data_from_config({"_target_": target + "ImageFolderData", "root": "x", "img_size": "64"})
    with pytest.raises(InputError, match="data.train_subset = 'all'; expected an integer or null"):
        image_data_from_config({"_target_": target + "FashionMNISTData", "root": "x", "train_subset": "all"})
    with pytest.raises(InputError, match="data.holdout_per_class = -1; expected >= 0"):
        FashionMNISTData(root=str(fake_fmnist), holdout_per_class=-1).datasets()
    with pytest.raises(InputError, match="not more than the 5 to hold out"):
        FashionMNISTData(root=str(fake_fmnist), holdout_per_class=5).datasets()
    with pytest.raises(InputError, match="normalization = 'cifar'"):
        FashionMNISTData(root=str(fake_fmnist), normalization="cifar").check()
    broken = tmp_path / "broken"
    shutil.copytree(fake_fmnist, broken)
    (broken / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x07garbage")
    with pytest.raises(InputError, match="cannot be read.*bash scripts/get_data.sh") as info:
        build_image_data({"_target_": target + "FashionMNISTData", "root": str(broken)})
    assert "\n" not in str(info.value)


def test_check_image_data_compares_the_class_count_with_the_classifier(synthetic_image_root: Path,
                                                                       fake_fmnist: Path, tmp_path: Path) -> None:
    target = "moonlit.common.data.images."
    folder = {"_target_": target + "ImageFolderData", "root": str(synthetic_image_root)}
    assert check_image_data(folder, 4, "supernet.num_classes").class_count() == 4  # the fixture's 4 class folders
    fmnist = {"_target_": target + "FashionMNISTData", "root": str(fake_fmnist)}
    with pytest.raises(InputError, match="10 classes but supernet.num_classes = 4; expected supernet.num_classes=10"):
        check_image_data(fmnist, 4, "supernet.num_classes")
    generated = {"_target_": target + "GeneratedData", "root": str(tmp_path / "new"),
                 "generate": {"num_classes": 6, "train_per_class": 1, "val_per_class": 1, "image_size": 8, "seed": 0}}
    with pytest.raises(InputError, match="has 6 classes"):
        check_image_data(generated, 5, "supernet.num_classes")
    assert not (tmp_path / "new").exists()  # checked, nothing written


@pytest.mark.real_data
def test_real_fashion_mnist_counts_balance_and_statistics(real_artefact) -> None:
    root = real_artefact("fashion_mnist")
    data = FashionMNISTData(root=str(root), img_size=28, holdout_per_class=100).datasets()
    assert (len(data["train"]), len(data["holdout"]), len(data["val"])) == (59_000, 1_000, 10_000)
    train_targets = data["train"].dataset.targets.numpy()
    assert np.bincount(train_targets).tolist() == [6000] * 10
    assert np.bincount(data["val"].targets.numpy()).tolist() == [1000] * 10
    pixels = data["train"].dataset.data.numpy() / 255.0  # the raw uint8 images, not through the transform
    assert pixels.mean() == pytest.approx(FASHION_MNIST_MEAN[0], abs=5e-4)
    assert pixels.std() == pytest.approx(FASHION_MNIST_STD[0], abs=5e-4)
