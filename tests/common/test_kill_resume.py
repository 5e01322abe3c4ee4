"""A killed and resumed classifier run (moonlit.common.train.classifier) ends bit for bit where an uninterrupted one ends.

The recipe runs as a real subprocess (tests/common/kill_resume_driver.py) with 1 thread and the
default loader (2 workers, random augmentation), is SIGKILLed — inside a checkpoint save in the
default tier, also at random moments in the slow tier — and restarted until it completes. Every
tensor of its last checkpoint (model, optimizer, scheduler, RNG) must equal the uninterrupted run's.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

WRITES_PER_SAVE = 5  # model, optimizer, rng, state.json, meta.json


def _args_of(images: Path):
    return lambda out: ["--entry", "classifier", "--out", str(out), "--data", str(images), "--epochs", "3",
                        "--num-workers", "2"]


def test_killed_inside_a_save_resumes_bit_for_bit(tmp_path: Path, synthetic_image_root: Path, kill_resume) -> None:
    # inside the second epoch's save (after its model file): resumes from epoch 1's checkpoint
    kill_resume.assert_resumes_bit_for_bit(_args_of(synthetic_image_root), tmp_path,
                                           [kill_resume.Kill(before_write=WRITES_PER_SAVE + 2)])


@pytest.mark.slow
def test_killed_at_random_moments_resumes_bit_for_bit(tmp_path: Path, synthetic_image_root: Path,
                                                      kill_resume) -> None:
    rng = random.Random(16)
    kills = [kill_resume.Kill(before_write=rng.randint(1, 3 * WRITES_PER_SAVE)),
             *[kill_resume.Kill(after_s=rng.uniform(2.0, 12.0)) for _ in range(3)]]
    kill_resume.assert_resumes_bit_for_bit(_args_of(synthetic_image_root), tmp_path, kills)
