"""moonlit.top.study: every arm of a ToP study, from pruning runs on disk to tables, plots and timings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from moonlit.common.config import compose_config
from moonlit.common.errors import InputError
from moonlit.common.report import render_section
from moonlit.top import study as study_module
from moonlit.top.constraint import EncoderDims
from moonlit.top.prune import run_prune


def _prune(root: Path, glue: Path, teacher: Path, name: str, *extra: str) -> None:
    run_prune(compose_config("top", "prune", [
        f"paths.output_root={root}", f"output_dir={root / 'prune' / name}", f"teacher_dir={teacher}",
        "data.task=sst2", f"data.data_dir={glue}", "data.max_length=32", "data.batch_size=16",
        "data.selection_fraction=0.2", "pruning.first_prune_layer=1", "pruning.bin_num=4", "prune.epochs=2",
        "prune.sparsity_warmup_epochs=1", "prune.top_k=4", "prune.reg_lr=0.05", "prune.optimizer.lr=1e-4", *extra]))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path, synthetic_glue_root: Path):
    root = tmp_path_factory.mktemp("study")
    _prune(root, synthetic_glue_root, tiny_bert_dir, "t0.4", "pruning.target_sparsity=0.4")
    _prune(root, synthetic_glue_root, tiny_bert_dir, "t0.4-norank", "pruning.target_sparsity=0.4",
           "prune.ranking_alpha=0")
    cfg = compose_config("top", "study", [
        f"paths.output_root={root}", f"teacher_dir={tiny_bert_dir}", f"prune_root={root / 'prune'}",
        f"output_dir={root / 'study'}", "data.task=sst2", f"data.data_dir={synthetic_glue_root}",
        "data.max_length=32", "data.selection_fraction=0.2", "random_seeds=2", "speed.batch_size=8",
        "speed.batches=2", "speed.single_samples=3", "speed.rounds=2", "speed.warmup=0"])
    return study_module.run_study(cfg), root


def test_runs_are_found_and_ordered(study) -> None:
    result, _ = study
    assert [(r["name"], r["ranking"], r["label"]) for r in result["runs"]] == [
        ("t0.4", True, "ToP 0.4"), ("t0.4-norank", False, "ToP w/o ranking 0.4")]
    assert result["runs"][1]["prune"]["ranking_alpha"] == 0


def test_baselines_keep_top_s_counts_and_the_ablation_stands_alone(study) -> None:
    result, _ = study
    for split, table in result["accuracy"].items():
        arms = table["t0.4"]
        assert set(arms) == {"ToP", "static top-k", "random"}
        for arm in ("static top-k", "random"):  # same kept counts, so the same MACs
            assert arms[arm]["mean_kept_tokens_per_layer"] == arms["ToP"]["mean_kept_tokens_per_layer"], split
            assert arms[arm]["measured_mac_sparsity"] == pytest.approx(arms["ToP"]["measured_mac_sparsity"])
        assert len(arms["random"]["metric_per_seed"]) == 2
        assert set(table["t0.4-norank"]) == {"ToP w/o ranking"}
        dense = table["dense teacher"]
        assert dense["measured_mac_sparsity"] == pytest.approx(0.0)
        assert dense["mean_kept_tokens_per_layer"][-1] == pytest.approx(dense["mean_input_length"])


def test_onnx_and_speed_rows(study) -> None:
    result, _ = study
    for split, models in result["onnx"].items():
        assert set(models) == {"dense", "t0.4", "t0.4-norank"}
        for name, row in models.items():
            assert row["fp32"]["agreement_with_torch"] == pytest.approx(1.0), (split, name)
            assert 0.0 <= row["int8"]["metric"] <= 1.0
    for label, batches, size in (("batch", 2, 8), ("single", 3, 1)):
        speed = result["speed"][label]
        assert (speed["batches"], speed["batch_size"]) == (batches, size)
        assert set(speed["speedup"]) == {"t0.4"}  # the ablation is not timed
        assert set(speed["median_ms"]) == {f"{m} {b}" for m in ("dense", "t0.4") for b in ("torch", "ORT", "ORT-INT8")}
        assert speed["mac_reduction_of_timed_batches"]["t0.4"] >= 1.0


def test_outputs_render(study) -> None:
    _, root = study
    out = root / "study"
    for name in ("study.json", "accuracy_vs_macs.png", "kept_tokens.png", "section.json"):
        assert (out / name).is_file(), name
    section = json.loads((out / "section.json").read_text())
    text = render_section(section, out, out)
    assert "static top-k" in text and "ToP w/o ranking 0.4" in text and "ORT-INT8 speedup" in text


def test_batch_macs_charge_every_layer_at_the_batch_s_longest_count() -> None:
    dims = EncoderDims(num_layers=2, hidden_size=8, num_heads=2, head_dim=4, intermediate_size=16)
    kept = torch.tensor([[5.0, 3.0], [4.0, 1.0]])

    def layer(n: int, n_ffn: int) -> int:  # QKV, QK^T, softmax, AV per head; output projection; two FFN linears
        return 2 * (3 * n * 8 * 4 + n * n * 4 + n * n + n * n * 4) + n * 8 * 8 + 2 * n_ffn * 8 * 16

    # Both samples run at (5, 3): layer 0's attention on 5 tokens and its FFN on layer 1's 3; layer 1 on 3 and 3.
    one = layer(5, 3) + layer(3, 3)
    assert study_module.batch_macs(kept, dims) == pytest.approx(2 * one)


def test_discover_runs_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        study_module.discover_runs(tmp_path / "absent")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "results.json").write_text("{}")
    with pytest.raises(InputError, match="no finished pruning run"):
        study_module.discover_runs(tmp_path)


@pytest.mark.parametrize("args, message", [
    (["--tasks", "sst2"], "unknown task 'sst2' (rt, spam)"),
    (["--targets", "0.5 2"], "a target is a MAC sparsity in (0, 1), got '2'"),
    (["--bogus"], "unknown argument '--bogus'"),
])
def test_reproduce_script_rejects_bad_arguments_before_doing_anything(tmp_path: Path, args: list[str],
                                                                      message: str) -> None:
    import subprocess

    script = Path(__file__).resolve().parents[2] / "scripts" / "reproduce_top_real.sh"
    proc = subprocess.run(["bash", str(script), *args, "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    suffix = " (see --help)" if "argument" in message else ""
    assert proc.stderr.strip().splitlines() == [f"reproduce_top_real: {message}{suffix}"]
    assert not (tmp_path / "out").exists()
