"""The supervised recipe: resume continues bit-for-bit; under DDP every rank ends with the same model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from moonlit.common.data.imagenet import build_imagenet_datasets, build_loader
from moonlit.common.train import classifier
from moonlit.common.train.classifier import evaluate_top1, train_classifier
from moonlit.common.train.dist import init_distributed, spawn_local
from moonlit.common.train.seed import seed_everything


def _tiny_cnn(num_classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Dropout(0.2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
    )


def _train(root: Path, ckpt: Path, epochs: int, rank: int | None = None, world: int | None = None) -> nn.Module:
    ctx = init_distributed("cpu")
    seed_everything(0)  # timm's crop draws from python's `random`, dropout from torch's RNG
    data = build_imagenet_datasets(root, img_size=24, train_aug={"scale": (0.6, 1.0)})
    model = _tiny_cnn(len(data["val"].classes))
    train_loader = build_loader(data["train"], 4, shuffle=True, seed=1, drop_last=True, rank=rank, world_size=world)
    val_loader = build_loader(data["val"], 4, shuffle=False, rank=rank, world_size=world)
    train_classifier(model, train_loader, val_loader, ctx=ctx, epochs=epochs, checkpoint_dir=ckpt,
                     make_optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2), warmup_steps=2)
    return model


class _Killed(Exception):
    pass


def test_resume_matches_uninterrupted_run(synthetic_image_root: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    straight = _train(synthetic_image_root, tmp_path / "a", epochs=3)

    real_save = classifier.save_checkpoint

    def save_then_die(*args, **kwargs):  # the process dies right after the first epoch's checkpoint
        real_save(*args, **kwargs)
        raise _Killed

    monkeypatch.setattr(classifier, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        _train(synthetic_image_root, tmp_path / "b", epochs=3)
    monkeypatch.setattr(classifier, "save_checkpoint", real_save)
    resumed = _train(synthetic_image_root, tmp_path / "b", epochs=3)  # fresh objects, resumes at epoch 2
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    # 4 classes x 8 images, batch 4: 8 steps per epoch; keep_last=2 keeps the last two epochs
    assert sorted(p.name for p in (tmp_path / "b").glob("step_*")) == ["step_00000016", "step_00000024"]


def test_changed_batch_size_on_resume_is_an_error(synthetic_image_root: Path, tmp_path: Path) -> None:
    _train(synthetic_image_root, tmp_path / "c", epochs=1)
    ctx = init_distributed("cpu")
    data = build_imagenet_datasets(synthetic_image_root, img_size=24)
    loader = build_loader(data["train"], 3, shuffle=True, drop_last=True)  # 10 steps/epoch, ckpt at step 8
    with pytest.raises(ValueError, match="not at an epoch end"):
        train_classifier(_tiny_cnn(4), loader, loader, ctx=ctx, epochs=2, checkpoint_dir=tmp_path / "c",
                         make_optimizer=lambda p: torch.optim.SGD(p, lr=0.1))


def _ddp_worker(root: str, ckpt: str) -> dict:
    model = _train(Path(root), Path(ckpt), epochs=2)
    ctx = init_distributed("cpu")
    data = build_imagenet_datasets(root, img_size=24)
    sharded = evaluate_top1(model, build_loader(data["val"], 4, shuffle=False), ctx.device, ctx)
    return {"state": {k: v.clone() for k, v in model.state_dict().items()}, "sharded_top1": sharded["top1"],
            "sharded_count": sharded["count"]}


def test_ddp_ranks_agree_and_sharded_eval_matches_full_eval(synthetic_image_root: Path, tmp_path: Path) -> None:
    rank0, rank1 = spawn_local(_ddp_worker, 2, args=(str(synthetic_image_root), str(tmp_path / "ddp")))
    for name, tensor in rank0["state"].items():  # parameters via DDP, BN statistics via sync_buffers
        assert torch.equal(tensor, rank1["state"][name]), name
    model = _tiny_cnn(4)
    model.load_state_dict(rank0["state"])
    data = build_imagenet_datasets(synthetic_image_root, img_size=24)
    full = evaluate_top1(model, build_loader(data["val"], 4, shuffle=False, rank=0, world_size=1), torch.device("cpu"))
    # 12 val images split 6 + 6 over two ranks: no padding, so the sharded sums are the full ones
    assert rank0["sharded_count"] == full["count"] == 12
    assert rank0["sharded_top1"] == pytest.approx(full["top1"]) == rank1["sharded_top1"]
