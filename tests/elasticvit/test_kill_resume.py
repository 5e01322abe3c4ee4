"""A killed and resumed ElasticViT supernet run ends bit for bit where an uninterrupted one ends, EMA included.

``moonlit.elasticvit.train`` (smoke space, EMA on, 1 thread, the default 2 loader workers) runs as
a real subprocess (tests/common/kill_resume_driver.py), is SIGKILLed — inside a checkpoint save
in the default tier, also at random moments in the slow tier — and restarted until it completes.
Every tensor of its last checkpoint (supernet, EMA, optimizer, RNG) must equal the uninterrupted run's.
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


def _args(out: Path, images: Path, tables: Path) -> list[str]:
    overrides = ["experiment=smoke", f"output_dir={out}", f"paths.output_root={out}", f"tables.path={tables}",
                 "data.generate=null", f"data.root={images}", "trainer.num_workers=2", "ema.enabled=true",
                 "epochs=3", "max_steps_per_epoch=2", "eval.every_epochs=100", "trainer.log_every=1000",
                 "sampling.probability.start=0.6"]
    return ["--entry", "moonlit.elasticvit.train:train", "--app", "elasticvit/train",
            *[arg for override in overrides for arg in ("-o", override)]]


def _check(tmp_path: Path, images: Path, kills_of) -> None:
    harness = _harness()
    tables = tmp_path / "flops_tables.npz"  # built by the first run, read by the others
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    harness.run_until_complete(_args(straight, images, tables), tmp_path / "straight.log")
    run = harness.run_until_complete(_args(killed, images, tables), tmp_path / "killed.log", kills_of(harness))
    assert run["outcomes"][0] == -9, run
    diffs = harness.checkpoint_differences(straight / "checkpoints", killed / "checkpoints")
    assert {name.split(":")[0] for name in diffs} >= {"model.safetensors", "ema.safetensors", "optimizer.safetensors"}
    assert max(diffs.values()) == 0.0, {k: v for k, v in diffs.items() if v}


def test_killed_inside_a_save_resumes_bit_for_bit(tmp_path: Path, synthetic_image_root: Path) -> None:
    # inside epoch 2's save, after the supernet and EMA files: resumes from epoch 1's checkpoint
    _check(tmp_path, synthetic_image_root, lambda h: [h.Kill(before_write=WRITES_PER_SAVE + 3)])


@pytest.mark.slow
def test_killed_at_random_moments_resumes_bit_for_bit(tmp_path: Path, synthetic_image_root: Path) -> None:
    rng = random.Random(16)
    _check(tmp_path, synthetic_image_root, lambda h: [
        h.Kill(before_write=rng.randint(1, 3 * WRITES_PER_SAVE)), *[h.Kill(after_s=rng.uniform(3.0, 15.0))
                                                                   for _ in range(3)]])
