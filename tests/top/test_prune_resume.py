"""An interrupted ``moonlit.top.prune`` run resumes from its last epoch and ends where an uninterrupted run ends."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from moonlit.common.config import compose_config
from moonlit.top import prune as prune_module


def _cfg(root: Path, glue: Path, teacher: Path, output: str):
    return compose_config("top", "prune", [
        f"paths.output_root={root}", f"output_dir={root / output}", f"teacher_dir={teacher}", "data.task=sst2",
        f"data.data_dir={glue}", "data.max_length=32", "data.batch_size=16", "data.selection_fraction=0.2",
        "pruning.first_prune_layer=1", "pruning.bin_num=4", "prune.epochs=3", "prune.sparsity_warmup_epochs=1",
        "prune.top_k=4", "prune.reg_lr=0.05", "prune.optimizer.lr=1e-4", "prune.calibrate=false",
    ])


class _Killed(Exception):
    pass


def test_resumed_run_equals_uninterrupted(tmp_path: Path, tiny_bert_dir: Path, synthetic_glue_root: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    straight = prune_module.run_prune(_cfg(tmp_path, synthetic_glue_root, tiny_bert_dir, "a"))

    real_save = prune_module.save_checkpoint
    calls = {"n": 0}

    def save_then_die(*args, **kwargs):  # the process dies right after the first epoch's checkpoint
        real_save(*args, **kwargs)
        calls["n"] += 1
        raise _Killed

    monkeypatch.setattr(prune_module, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        prune_module.run_prune(_cfg(tmp_path, synthetic_glue_root, tiny_bert_dir, "b"))
    monkeypatch.setattr(prune_module, "save_checkpoint", real_save)
    resumed = prune_module.run_prune(_cfg(tmp_path, synthetic_glue_root, tiny_bert_dir, "b"))

    assert calls["n"] == 1
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert resumed["history"] == straight["history"]
    a = load_file(str(tmp_path / "a" / "model" / "token_gates.safetensors"))
    b = load_file(str(tmp_path / "b" / "model" / "token_gates.safetensors"))
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_roberta_prunes_end_to_end(tmp_path: Path, tiny_roberta_dir: Path, synthetic_glue_root: Path) -> None:
    """The reference had no RoBERTa; here the same pipeline runs on it (no token_type_ids, <s>/</s> protected)."""
    cfg = compose_config("top", "prune", [
        f"paths.output_root={tmp_path}", f"output_dir={tmp_path / 'roberta'}", f"teacher_dir={tiny_roberta_dir}",
        "data.task=rte", f"data.data_dir={synthetic_glue_root}", "data.max_length=64", "data.batch_size=16",
        "data.selection_fraction=0.2", "pruning.first_prune_layer=1", "pruning.bin_num=4", "prune.epochs=2",
        "prune.sparsity_warmup_epochs=1", "prune.top_k=4", "prune.reg_lr=0.1",
    ])
    results = prune_module.run_prune(cfg)
    reported = results["eval"]["validation"]
    assert reported["samples"] == 40
    assert 0.0 <= reported["measured_mac_sparsity"] < 1.0
    assert reported["mean_kept_tokens_per_layer"][0] == pytest.approx(reported["mean_input_length"])


def _files(root: Path) -> list[tuple[str, int]]:
    return sorted((p.relative_to(root).as_posix(), p.stat().st_size) for p in root.rglob("*") if p.is_file())


def test_bad_inputs_leave_a_finished_run_untouched(tmp_path: Path, tiny_bert_dir: Path,
                                                   synthetic_glue_root: Path) -> None:
    from moonlit.common.train.checkpoint import save_checkpoint

    out = tmp_path / "run"
    for step in (5, 10):  # a finished run's checkpoints and results
        save_checkpoint(out / "checkpoints", step=step, model=torch.nn.Linear(2, 2), keep_last=None)
    (out / "results.json").write_text("{}\n")
    before = _files(tmp_path)
    for name, overrides in {"data path": [f"data.data_dir={tmp_path / 'missing'}"],
                            "teacher": [f"teacher_dir={tmp_path / 'no_teacher'}"]}.items():
        cfg = _cfg(tmp_path, synthetic_glue_root, tiny_bert_dir, "run")
        cfg.merge_with_dotlist(["resume=false", *overrides])
        with pytest.raises((ValueError, OSError)):
            prune_module.run_prune(cfg)
        assert _files(tmp_path) == before, name  # nothing deleted, written or moved
