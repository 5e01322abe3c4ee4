"""Block-wise KD resumed mid-epoch with random augmentation and 2 loader workers equals the uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import torch
from moonlit.spaceevo.block_kd import KDSettings, StudentStage, train_student
from moonlit.spaceevo.teacher import build_teacher, calibrate_teacher_bn
from torch.utils.data import Dataset

TINY = "onnxw_tiny"


class NoisyImages(Dataset):
    """Fixed images plus fresh noise from torch's global RNG at every load: augmentation's randomness."""

    def __init__(self, n: int = 16) -> None:
        self.images = torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index] + 0.5 * torch.randn(3, 64, 64), 0


def _student(teacher, seed: int) -> StudentStage:
    torch.manual_seed(seed)
    boundary = teacher.boundary("stage1")
    return StudentStage(TINY, 1, 2, boundary.in_channels, boundary.out_channels)


def test_resume_with_workers_and_augmentation_is_bit_for_bit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = build_teacher("efficientnet_b0", TINY)
    calibrate_teacher_bn(teacher, [torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))])
    settings = KDSettings(fp32_steps=5, lsq_steps=0, batch_size=4, resolutions=(64,), checkpoint_every=100,
                          num_workers=2)  # 4 steps per epoch: the kill lands mid-epoch
    dataset = NoisyImages()
    whole = _student(teacher, 0)
    straight = train_student(whole, teacher, dataset, settings, tmp_path / "whole")
    train_student(_student(teacher, 0), teacher, dataset, settings, tmp_path / "killed", stop_after=3)
    torch.manual_seed(99)  # the resumed process's RNGs are not the killed one's
    resumed = _student(teacher, 7)
    run = train_student(resumed, teacher, dataset, settings, tmp_path / "killed")
    assert run["resumed_from"] == 3 and run["losses"] == straight["losses"][3:]
    for key, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
