"""ToP end to end on the generated signal-token task (the quickstart's ToP section, shortened schedule).

Teacher, pruning to 0.5 MAC sparsity, and random pruning at the same per-layer token counts; the
issue's bar: teacher >= 95 % accuracy, measured sparsity within 0.01 of the target, at most 2
points lost, random pruning clearly worse.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moonlit.top.artifacts import load_pruned


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("top-quickstart")
    # One thread: with two or more OpenMP threads, a second busy process on a 2-core machine makes
    # the threads spin-wait and the run 10x slower; one thread is barely slower on a quiet machine.
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    # Half the quickstart's teacher epochs and 8 of its 10 pruning epochs keep the default tier short;
    # measured with these: teacher 0.995, ToP 0.993 at sparsity 0.499, random pruning 0.746 (3 min, 1 thread).
    cmd = [sys.executable, "-m", "moonlit.top.quickstart", f"paths.output_root={root}", "finetune.epochs=10",
           "prune.epochs=8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root / "quickstart" / "top"


def test_teacher_prune_and_random_baseline(quickstart: Path) -> None:
    results = json.loads((quickstart / "results.json").read_text())
    rows = results["comparison"]["rows"]
    teacher, top, random = rows["dense teacher"], rows["ToP"], rows["random pruning"]
    assert teacher["metric"] >= 0.95
    assert top["measured_mac_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert top["metric"] >= teacher["metric"] - 0.02
    assert random["measured_mac_sparsity"] == pytest.approx(top["measured_mac_sparsity"])
    assert random["metric"] <= top["metric"] - 0.02
    # the selection split, on which the deployed gates were calibrated, meets the target too
    calibration = results["prune"]["selected"]["calibration"]
    assert calibration["measured_mac_sparsity"] == pytest.approx(0.5, abs=0.01)


def test_saved_model_reloads_with_the_same_schedule(quickstart: Path) -> None:
    model, tokenizer = load_pruned(quickstart / "prune" / "model")
    results = json.loads((quickstart / "results.json").read_text())
    assert model.gates.deployed_bins().tolist() == results["prune"]["selected"]["calibration"]["kept_bins"]
    assert tokenizer is not None


def test_section_and_plot(quickstart: Path) -> None:
    section = json.loads((quickstart / "section.json").read_text())
    assert [row[0] for row in section["tables"][0]["rows"]] == ["dense teacher", "ToP", "random pruning"]
    assert (quickstart / "kept_tokens.png").stat().st_size > 10_000
    speed_table = section["tables"][1]
    assert [row[0] for row in speed_table["rows"]] == ["torch", "ORT", "ORT-INT8"]
    for _, dense_ms, top_ms, speedup, _ in speed_table["rows"]:
        assert dense_ms > 0 and top_ms > 0 and speedup == pytest.approx(dense_ms / top_ms)


def test_onnx_models_keep_the_accuracy(quickstart: Path) -> None:
    results = json.loads((quickstart / "results.json").read_text())
    rows = results["comparison"]["rows"]
    onnx = results["speed"]["onnx_accuracy"]
    assert set(onnx) == {"dense ORT", "ToP ORT", "dense ORT-INT8", "ToP ORT-INT8"}
    # FP32 ONNX computes the same model as torch: same metric, same predictions
    assert onnx["ToP ORT"]["metric"] == pytest.approx(rows["ToP"]["metric"], abs=1e-9)
    assert onnx["dense ORT"]["metric"] == pytest.approx(rows["dense teacher"]["metric"], abs=1e-9)
    assert onnx["ToP ORT"]["agreement_with_torch"] == 1.0
    # dynamic INT8 of the linears changes little on this task
    assert onnx["ToP ORT-INT8"]["metric"] >= rows["ToP"]["metric"] - 0.03
    assert onnx["ToP ORT-INT8"]["agreement_with_torch"] >= 0.95
