"""A killed and resumed ToP pruning run ends bit for bit where an uninterrupted one ends.

``moonlit.top.prune`` (tiny BERT, synthetic SST-2, 1 thread, the default loader) runs as a real
subprocess (tests/common/kill_resume_driver.py), is SIGKILLed — inside a checkpoint save and at
random moments (slow tier) — and restarted until it completes. Every tensor of its last checkpoint
(student, gates, lambdas, optimizer, RNG) must equal the uninterrupted run's.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

WRITES_PER_SAVE = 5  # model, optimizer, rng, state.json, meta.json


def _args_of(teacher: Path, glue: Path):
    def args(out: Path) -> list[str]:
        overrides = [f"paths.output_root={out}", f"output_dir={out}", f"teacher_dir={teacher}", "data.task=sst2",
                     f"data.data_dir={glue}", "data.max_length=32", "data.batch_size=16",
                     "data.selection_fraction=0.2", "pruning.first_prune_layer=1", "pruning.bin_num=4",
                     "prune.epochs=3", "prune.sparsity_warmup_epochs=1", "prune.top_k=4", "prune.reg_lr=0.05",
                     "prune.optimizer.lr=1e-4", "prune.calibrate=false"]
        return ["--entry", "moonlit.top.prune:run_prune", "--app", "top/prune",
                *[arg for override in overrides for arg in ("-o", override)]]
    return args


def _check(tmp_path: Path, teacher: Path, glue: Path, kills: list, kill_resume) -> None:
    straight, killed = kill_resume.assert_resumes_bit_for_bit(_args_of(teacher, glue), tmp_path, kills)
    results = [json.loads((run / "results.json").read_text()) for run in (straight, killed)]
    for result in results:
        result.pop("model_dir")  # the only field naming the run folder
    assert results[0] == results[1]


@pytest.mark.slow  # the default tier kills the common recipe (tests/common); this paper resumes in-process there
def test_killed_inside_a_save_resumes_bit_for_bit(tmp_path: Path, tiny_bert_dir: Path, synthetic_glue_root: Path,
                                                  kill_resume) -> None:
    # inside epoch 2's save, after the model file: resumes from epoch 1's checkpoint
    _check(tmp_path, tiny_bert_dir, synthetic_glue_root, [kill_resume.Kill(before_write=WRITES_PER_SAVE + 2)],
           kill_resume)


@pytest.mark.slow
def test_killed_at_random_moments_resumes_bit_for_bit(tmp_path: Path, tiny_bert_dir: Path,
                                                      synthetic_glue_root: Path, kill_resume) -> None:
    rng = random.Random(16)
    kills = [kill_resume.Kill(before_write=rng.randint(1, 3 * WRITES_PER_SAVE)),
             *[kill_resume.Kill(after_s=rng.uniform(3.0, 15.0)) for _ in range(3)]]
    _check(tmp_path, tiny_bert_dir, synthetic_glue_root, kills, kill_resume)
