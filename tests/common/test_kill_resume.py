"""A killed and resumed classifier run (moonlit.common.train.classifier) ends bit for bit where an uninterrupted one ends.

The recipe runs as a real subprocess (tests/common/kill_resume_driver.py) with 1 thread and the
default loader (2 workers, random augmentation), is SIGKILLed — inside a checkpoint save in the
default tier, also at random moments in the slow tier — and restarted until it completes. Every
tensor of its last checkpoint (model, optimizer, scheduler, RNG) must equal the uninterrupted run's.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

WRITES_PER_SAVE = 5  # model, optimizer, rng, state.json, meta.json


def _harness():
    path = Path(__file__).resolve().parent / "kill_resume_driver.py"
    spec = importlib.util.spec_from_file_location("kill_resume_driver", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def _args(out: Path, images: Path) -> list[str]:
    return ["--entry", "classifier", "--out", str(out), "--data", str(images), "--epochs", "3", "--num-workers", "2"]


def _check(harness, tmp_path: Path, images: Path, kills: list) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    harness.run_until_complete(_args(straight, images), tmp_path / "straight.log")
    run = harness.run_until_complete(_args(killed, images), tmp_path / "killed.log", kills)
    assert run["outcomes"][0] == -9, run  # the first start was killed
    diffs = harness.checkpoint_differences(straight / "checkpoints", killed / "checkpoints")
    assert {name.split(":")[0] for name in diffs} >= {"model.safetensors", "optimizer.safetensors"}
    assert max(diffs.values()) == 0.0, {k: v for k, v in diffs.items() if v}


def test_killed_inside_a_save_resumes_bit_for_bit(tmp_path: Path, synthetic_image_root: Path) -> None:
    harness = _harness()
    # inside the second epoch's save (after its model file): resumes from epoch 1's checkpoint
    _check(harness, tmp_path, synthetic_image_root, [harness.Kill(before_write=WRITES_PER_SAVE + 2)])


@pytest.mark.slow
def test_killed_at_random_moments_resumes_bit_for_bit(tmp_path: Path, synthetic_image_root: Path) -> None:
    harness = _harness()
    rng = random.Random(16)
    kills = [harness.Kill(before_write=rng.randint(1, 3 * WRITES_PER_SAVE)),
             *[harness.Kill(after_s=rng.uniform(2.0, 12.0)) for _ in range(3)]]
    _check(harness, tmp_path, synthetic_image_root, kills)
