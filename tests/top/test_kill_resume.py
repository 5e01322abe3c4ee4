"""A killed and resumed ToP pruning run ends bit for bit where an uninterrupted one ends.

``moonlit.top.prune`` (tiny BERT, synthetic SST-2, 1 thread, the default loader) runs as a real
subprocess (tests/common/kill_resume_driver.py), is SIGKILLed — inside a checkpoint save in the
default tier, also at random moments in the slow tier — and restarted until it completes. Every
tensor of its last checkpoint (student, gates, lambdas, optimizer, RNG) must equal the uninterrupted run's.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest

WRITES_PER_SAVE = 5  # model, optimizer, rng, state.json, meta.json


def _harness():
    path = Path(__file__).resolve().parents[1] / "common" / "kill_resume_driver.py"
    spec = importlib.util.spec_from_file_location("kill_resume_driver", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def _args(out: Path, teacher: Path, glue: Path) -> list[str]:
    overrides = [f"paths.output_root={out}", f"output_dir={out}", f"teacher_dir={teacher}", "data.task=sst2",
                 f"data.data_dir={glue}", "data.max_length=32", "data.batch_size=16", "data.selection_fraction=0.2",
                 "pruning.first_prune_layer=1", "pruning.bin_num=4", "prune.epochs=3",
                 "prune.sparsity_warmup_epochs=1", "prune.top_k=4", "prune.reg_lr=0.05", "prune.optimizer.lr=1e-4",
                 "prune.calibrate=false"]
    return ["--entry", "moonlit.top.prune:run_prune", "--app", "top/prune",
            *[arg for override in overrides for arg in ("-o", override)]]


def _check(tmp_path: Path, teacher: Path, glue: Path, kills: list) -> None:
    harness = _harness()
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    harness.run_until_complete(_args(straight, teacher, glue), tmp_path / "straight.log")
    run = harness.run_until_complete(_args(killed, teacher, glue), tmp_path / "killed.log",
                                     [harness.Kill(**kill) for kill in kills])
    assert run["outcomes"][0] == -9, run
    diffs = harness.checkpoint_differences(straight / "checkpoints", killed / "checkpoints")
    assert {name.split(":")[0] for name in diffs} >= {"model.safetensors", "optimizer.safetensors"}
    assert max(diffs.values()) == 0.0, {k: v for k, v in diffs.items() if v}
    results = [json.loads((run / "results.json").read_text()) for run in (straight, killed)]
    for result in results:
        result.pop("model_dir")  # the only field naming the run folder
    assert results[0] == results[1]


def test_killed_inside_a_save_resumes_bit_for_bit(tmp_path: Path, tiny_bert_dir: Path,
                                                  synthetic_glue_root: Path) -> None:
    # inside epoch 2's save, after the model file: resumes from epoch 1's checkpoint
    _check(tmp_path, tiny_bert_dir, synthetic_glue_root, [{"before_write": WRITES_PER_SAVE + 2}])


@pytest.mark.slow
def test_killed_at_random_moments_resumes_bit_for_bit(tmp_path: Path, tiny_bert_dir: Path,
                                                      synthetic_glue_root: Path) -> None:
    rng = random.Random(16)
    kills = [{"before_write": rng.randint(1, 3 * WRITES_PER_SAVE)},
             *[{"after_s": rng.uniform(3.0, 15.0)} for _ in range(3)]]
    _check(tmp_path, tiny_bert_dir, synthetic_glue_root, kills)
