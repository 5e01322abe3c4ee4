"""A killed and resumed SpaceEvo supernet run ends bit for bit where an uninterrupted one ends, EMA included.

``moonlit.spaceevo.train_supernet`` (a small space, EMA on, 1 thread, the default 2 loader workers)
runs as a real subprocess (tests/common/kill_resume_driver.py), is SIGKILLed — inside a checkpoint
save in the default tier; at random moments, and through the QAT phase, in the slow tier — and
restarted until it completes. Every tensor of its last checkpoint (supernet, EMA, optimizer, RNG)
must equal the uninterrupted run's.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

WRITES_PER_SAVE = 6  # model, ema, optimizer, rng, state.json, meta.json


def _harness():
    path = Path(__file__).resolve().parents[1] / "common" / "kill_resume_driver.py"
    spec = importlib.util.spec_from_file_location("kill_resume_driver", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def _args(out: Path, images: Path, qat_epochs: int) -> list[str]:
    overrides = ["experiment=smoke", f"output_dir={out}", f"paths.output_root={out}", "space=onnxw-000000-000000",
                 "supernet.resolutions=[32]", "data.img_size=32", "data.generate=null", f"data.root={images}",
                 "trainer.num_workers=2", "ema.enabled=true", "ema.decay=0.5", "fp32.epochs=3",
                 f"qat.epochs={qat_epochs}", "max_steps_per_epoch=2", "eval.every_epochs=100",
                 "eval.bn_calibration_batches=1", "trainer.log_every=1000"]
    return ["--entry", "moonlit.spaceevo.train_supernet:train_supernet", "--app", "spaceevo/train_supernet",
            *[arg for override in overrides for arg in ("-o", override)]]


def _check(tmp_path: Path, images: Path, kills: list, qat_epochs: int) -> None:
    harness = _harness()
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    harness.run_until_complete(_args(straight, images, qat_epochs), tmp_path / "straight.log")
    run = harness.run_until_complete(_args(killed, images, qat_epochs), tmp_path / "killed.log",
                                     [harness.Kill(**kill) for kill in kills])
    assert run["outcomes"][0] == -9, run
    for phase in ("fp32", "qat")[: 1 + bool(qat_epochs)]:
        diffs = harness.checkpoint_differences(straight / "checkpoints" / phase, killed / "checkpoints" / phase)
        assert {name.split(":")[0] for name in diffs} >= {"model.safetensors", "ema.safetensors"}
        assert max(diffs.values()) == 0.0, (phase, {k: v for k, v in diffs.items() if v})


def test_killed_inside_a_save_resumes_bit_for_bit(tmp_path: Path, synthetic_image_root: Path) -> None:
    # inside epoch 2's save, after the supernet and EMA files: resumes from epoch 1's checkpoint
    _check(tmp_path, synthetic_image_root, [{"before_write": WRITES_PER_SAVE + 3}], qat_epochs=0)


@pytest.mark.slow
def test_killed_at_random_moments_resumes_bit_for_bit(tmp_path: Path, synthetic_image_root: Path) -> None:
    rng = random.Random(16)
    kills = [{"before_write": rng.randint(1, 4 * WRITES_PER_SAVE)},
             *[{"after_s": rng.uniform(3.0, 20.0)} for _ in range(3)]]
    _check(tmp_path, synthetic_image_root, kills, qat_epochs=1)
