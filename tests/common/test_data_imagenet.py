"""moonlit.common.data.imagenet: folder datasets, the held-out split, transforms and loaders.

Counts come from listing the folders; the eval transform is compared with a torchvision
pipeline written out by hand; sampler shards are checked for disjointness and coverage.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset
from torchvision import transforms as T

from moonlit.common.data.imagenet import (ImageRootError, build_imagenet_datasets, build_loader, build_transform,
                                          check_generated_root, check_image_root, generate_image_root,
                                          holdout_indices, resolve_rank_world, set_epoch)
from moonlit.common.data.loaders import SeededItems, epoch_seed
from moonlit.common.errors import InputError
from moonlit.common.train.seed import get_rng_state, set_rng_state

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _sample_paths(subset) -> list[str]:
    return [subset.dataset.samples[i][0] for i in subset.indices]


def test_datasets_have_the_folder_counts(synthetic_image_root: Path) -> None:
    splits = build_imagenet_datasets(synthetic_image_root, img_size=32)
    classes = sorted(p.name for p in (synthetic_image_root / "train").iterdir())
    assert splits["val"].classes == classes and set(splits) == {"train", "val"}
    for dataset, split in ((splits["train"], "train"), (splits["val"], "val")):
        expected = {i: len(list((synthetic_image_root / split / c).iterdir())) for i, c in enumerate(classes)}
        assert {i: dataset.targets.count(i) for i in range(len(classes))} == expected
    image, label = splits["val"][5]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 5 // 3


def test_holdout_sizes_disjointness_and_determinism(synthetic_image_root: Path) -> None:
    splits = build_imagenet_datasets(synthetic_image_root, img_size=32, holdout_per_class=3, holdout_seed=7)
    again = build_imagenet_datasets(synthetic_image_root, img_size=32, holdout_per_class=3, holdout_seed=7)
    other = build_imagenet_datasets(synthetic_image_root, img_size=32, holdout_per_class=3, holdout_seed=8)
    held, kept = _sample_paths(splits["holdout"]), _sample_paths(splits["train"])
    all_train = sorted(str(p) for p in (synthetic_image_root / "train").rglob("*.jpg"))
    assert len(held) == 4 * 3 and len(kept) == 4 * (8 - 3)
    assert not set(held) & set(kept) and sorted(held + kept) == all_train
    assert sorted(Path(p).parent.name for p in held) == sorted(splits["val"].classes * 3)  # 3 per class
    assert _sample_paths(again["holdout"]) == held
    assert _sample_paths(other["holdout"]) != held


def test_holdout_indices_errors() -> None:
    kept, held = holdout_indices([0, 0, 1, 1, 1], per_class=1, seed=0)
    assert len(held) == 2 and sorted(kept + held) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="class 0 has 2 training images, not more than the 2 to hold out"):
        holdout_indices([0, 0, 1, 1, 1], per_class=2)


def test_eval_transform_matches_hand_built_pipeline(synthetic_image_root: Path) -> None:
    splits = build_imagenet_datasets(synthetic_image_root, img_size=32, holdout_per_class=2)
    path = _sample_paths(splits["holdout"])[0]
    # timm's eval transform: resize the short side to floor(32 / 0.875) = 36, centre-crop 32
    by_hand = T.Compose([T.Resize(36, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32), T.ToTensor(),
                         T.Normalize(MEAN, STD)])
    expected = by_hand(Image.open(path).convert("RGB"))
    first, second = splits["holdout"][0][0], splits["holdout"][0][0]
    assert torch.equal(first, second)
    torch.testing.assert_close(first, expected)


def test_train_augmentation_knobs_pass_through(synthetic_image_root: Path) -> None:
    torch.manual_seed(0)
    augmented = build_imagenet_datasets(synthetic_image_root, img_size=24)
    assert augmented["train"][0][0].shape == (3, 24, 24)
    assert not torch.equal(augmented["train"][0][0], augmented["train"][0][0])  # random crop / flip / jitter
    no_aug = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, color_jitter=0.0)
    plain = build_imagenet_datasets(synthetic_image_root, img_size=24, train_aug=no_aug)
    assert torch.equal(plain["train"][0][0], plain["train"][0][0])
    with pytest.raises(ValueError, match=r"augmentation options \['hflip'\] were given for an evaluation"):
        build_transform(False, 24, hflip=0.0)


def test_folder_errors(tmp_path: Path, synthetic_image_root: Path) -> None:
    with pytest.raises(ImageRootError, match="does not exist"):
        build_imagenet_datasets(tmp_path / "missing")
    root = tmp_path / "root"
    shutil.copytree(synthetic_image_root / "train", root / "train")
    with pytest.raises(FileNotFoundError, match=r"root/val not found"):
        build_imagenet_datasets(root)
    shutil.copytree(synthetic_image_root / "val", root / "val")
    (root / "val" / "99_empty").mkdir()
    with pytest.raises(FileNotFoundError, match="99_empty"):
        build_imagenet_datasets(root)
    (root / "val" / "99_empty").rmdir()
    shutil.rmtree(root / "val" / "00_red_circle")
    with pytest.raises(ValueError, match=r"different classes: only in train \['00_red_circle'\]"):
        build_imagenet_datasets(root)
    with pytest.raises(ValueError, match="not more than the 8 to hold out"):
        build_imagenet_datasets(synthetic_image_root, holdout_per_class=8)


class RandomDraws(Dataset):
    """Item i: i and one draw from each of torch's, python's and numpy's global RNGs (augmentation's sources)."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([index, torch.rand(()).item(), random.random(), np.random.rand()], dtype=torch.float64)


def _epoch_draws(loader, epoch: int) -> torch.Tensor:
    set_epoch(loader, epoch)
    return torch.cat(list(loader))


@pytest.mark.parametrize("num_workers", [2, 0])
def test_augmentation_rng_depends_on_seed_rank_and_epoch_only(num_workers: int) -> None:
    def loader(rank: int = 0):
        return build_loader(RandomDraws(), batch_size=4, shuffle=True, seed=5, num_workers=num_workers,
                            rank=rank, world_size=2)

    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    straight = loader()
    epochs = [_epoch_draws(straight, epoch) for epoch in range(2)]
    saved = get_rng_state()  # what a checkpoint at the end of epoch 1 holds
    epochs.append(_epoch_draws(straight, 2))
    after = [torch.rand(()), random.random(), np.random.rand()]
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    resumed = loader()  # a run resumed at epoch 2: a fresh loader, the global RNGs restored (workers=0 needs them)
    if num_workers == 0:
        set_rng_state(saved)
    assert torch.equal(_epoch_draws(resumed, 2), epochs[2])
    assert not torch.equal(epochs[1][:, 1:], epochs[0][:, 1:]) and not torch.equal(epochs[2][:, 1:], epochs[0][:, 1:])
    assert not torch.equal(_epoch_draws(loader(rank=1), 2)[:, 1:], epochs[2][:, 1:])  # ranks draw differently
    if num_workers:  # the workers' draws left the main process's RNGs alone
        set_rng_state(saved)
        assert after == [torch.rand(()), random.random(), np.random.rand()]
        # each worker seeds torch from base_seed + worker id, base_seed the first draw of the epoch's generator
        base_seed = torch.empty((), dtype=torch.int64).random_(
            generator=torch.Generator().manual_seed(epoch_seed(5, 0, 2))).item()
        first = epochs[2][0]  # batch 0 comes from worker 0
        torch.manual_seed(base_seed)
        assert first[1].item() == torch.rand(()).item()


def test_seeded_items_depend_on_their_key_only() -> None:
    items = SeededItems(RandomDraws())
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    caller = get_rng_state()
    first = items[(2, 41)]
    after = get_rng_state()
    assert torch.equal(after["torch_cpu"], caller["torch_cpu"]) and after["python"] == caller["python"]
    torch.manual_seed(4)  # another caller state: the same key draws the same values
    assert torch.equal(items[(2, 41)], first) and not torch.equal(items[(2, 42)], first)
    torch.manual_seed(41), random.seed(41), np.random.seed(41)  # by hand: the three RNGs seeded with the key
    assert first.tolist() == [2.0, torch.rand(()).item(), random.random(), np.random.rand()]


def test_image_root_checks_write_nothing(tmp_path: Path, synthetic_image_root: Path) -> None:
    assert check_image_root(synthetic_image_root) == synthetic_image_root
    with pytest.raises(ImageRootError, match="missing/train is not a directory") as caught:
        check_image_root(tmp_path / "missing")
    assert isinstance(caught.value, InputError) and isinstance(caught.value, FileNotFoundError)
    assert check_generated_root(tmp_path / "absent") == tmp_path / "absent"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty but has no train/ and val/"):
        check_generated_root(tmp_path / "other")
    (tmp_path / "half" / "train").mkdir(parents=True)
    with pytest.raises(InputError, match="only one of train/ and val/"):
        check_generated_root(tmp_path / "half")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half", "other"]


def test_generated_root_is_written_once_and_whole(tmp_path: Path) -> None:
    generate = {"num_classes": 2, "train_per_class": 3, "val_per_class": 1, "image_size": 16, "seed": 0}
    root = generate_image_root(tmp_path / "images", generate)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    assert len(files) == 2 * 3 + 2 * 1 and sorted(p.name for p in tmp_path.iterdir()) == ["images"]
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*.jpg")}
    generate_image_root(root, {**generate, "train_per_class": 5})  # present: left as it is
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.jpg")} == stamps


def _order(loader) -> list[int]:
    return [int(i) for (batch,) in loader for i in batch]


def test_distributed_shards_are_disjoint_and_reshuffle_per_epoch() -> None:
    dataset = TensorDataset(torch.arange(21))
    loaders = [build_loader(dataset, batch_size=4, shuffle=True, seed=3, rank=r, world_size=2) for r in (0, 1)]
    epoch0 = [_order(loader) for loader in loaders]
    assert len(epoch0[0]) == len(epoch0[1]) == 11  # 21 padded to 22
    assert set(epoch0[0]) | set(epoch0[1]) == set(range(21))
    assert len(set(epoch0[0]) & set(epoch0[1])) == 1  # only the one padding repeat
    assert _order(loaders[0]) == epoch0[0]  # same epoch, same order
    for loader in loaders:
        set_epoch(loader, 1)
    epoch1 = [_order(loader) for loader in loaders]
    assert epoch1[0] != epoch0[0] and set(epoch1[0]) | set(epoch1[1]) == set(range(21))
    set_epoch(loaders[0], 0)
    assert _order(loaders[0]) == epoch0[0]  # a resumed run replays the order


def test_single_process_loaders() -> None:
    dataset = TensorDataset(torch.arange(10))
    assert _order(build_loader(dataset, batch_size=3, shuffle=False)) == list(range(10))
    shuffled = build_loader(dataset, batch_size=3, shuffle=True, seed=1)
    order = _order(shuffled)
    assert sorted(order) == list(range(10)) and order != list(range(10))
    assert len(list(build_loader(dataset, batch_size=3, shuffle=False, drop_last=True))) == 3


def test_loader_over_image_dataset(synthetic_image_root: Path) -> None:
    splits = build_imagenet_datasets(synthetic_image_root, img_size=32)
    images, labels = next(iter(build_loader(splits["val"], batch_size=5, shuffle=False)))
    assert images.shape == (5, 3, 32, 32) and labels.tolist() == [0, 0, 0, 1, 1]


def test_rank_world_resolution(tmp_path: Path) -> None:
    assert resolve_rank_world() == (0, 1)
    assert resolve_rank_world(1, 4) == (1, 4)
    with pytest.raises(ValueError, match="rank 4 is outside 0..3"):
        resolve_rank_world(4, 4)
    with pytest.raises(ValueError, match="both rank and world_size"):
        resolve_rank_world(rank=0)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert resolve_rank_world() == (0, 1)
        loader = build_loader(TensorDataset(torch.arange(6)), batch_size=2, shuffle=True)
        assert sorted(_order(loader)) == list(range(6))
    finally:
        torch.distributed.destroy_process_group()
