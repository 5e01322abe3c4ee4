"""A killed and resumed ElasticViT supernet run ends bit for bit where an uninterrupted one ends, EMA included.

``moonlit.elasticvit.train`` (smoke space, EMA on, 1 thread, the default 2 loader workers) runs as
a real subprocess (tests/common/kill_resume_driver.py), is SIGKILLed — inside a checkpoint save
and at random moments (slow tier) — and restarted until it completes.
Every tensor of its last checkpoint (supernet, EMA, optimizer, RNG) must equal the uninterrupted run's.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

WRITES_PER_SAVE = 6  # model, ema, optimizer, rng, state.json, meta.json
REQUIRED = ("model.safetensors", "ema.safetensors", "optimizer.safetensors")


def _args_of(images: Path, tables: Path):
    def args(out: Path) -> list[str]:
        overrides = ["experiment=smoke", f"output_dir={out}", f"paths.output_root={out}", f"tables.path={tables}",
                     "data=imagenet", f"data.root={images}", "trainer.num_workers=2", "ema.enabled=true",
                     "epochs=3", "max_steps_per_epoch=2", "eval.every_epochs=100", "trainer.log_every=1000",
                     "sampling.probability.start=0.6"]
        return ["--entry", "moonlit.elasticvit.train:train", "--app", "elasticvit/train",
                *[arg for override in overrides for arg in ("-o", override)]]
    return args


@pytest.mark.slow  # the default tier kills the common recipe (tests/common); this paper resumes in-process there
def test_killed_inside_a_save_resumes_bit_for_bit(tmp_path: Path, synthetic_image_root: Path, kill_resume) -> None:
    # inside epoch 2's save, after the supernet and EMA files: resumes from epoch 1's checkpoint
    # (the FLOPs tables are built by the first run and read by the others)
    kill_resume.assert_resumes_bit_for_bit(_args_of(synthetic_image_root, tmp_path / "flops_tables.npz"), tmp_path,
                                           [kill_resume.Kill(before_write=WRITES_PER_SAVE + 3)], REQUIRED)


@pytest.mark.slow
def test_killed_at_random_moments_resumes_bit_for_bit(tmp_path: Path, synthetic_image_root: Path,
                                                      kill_resume) -> None:
    rng = random.Random(16)
    kills = [kill_resume.Kill(before_write=rng.randint(1, 3 * WRITES_PER_SAVE)),
             *[kill_resume.Kill(after_s=rng.uniform(3.0, 15.0)) for _ in range(3)]]
    kill_resume.assert_resumes_bit_for_bit(_args_of(synthetic_image_root, tmp_path / "flops_tables.npz"), tmp_path,
                                           kills, REQUIRED)
