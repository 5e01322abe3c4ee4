"""``moonlit.top.evaluate`` on a released (reference-format) checkpoint folder and on generated GLUE TSVs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from moonlit.common.config import compose_config
from moonlit.top.evaluate import run_evaluate
from moonlit.top.reference_writer import write_reference_style_checkpoint


def test_evaluate_released_checkpoint(tmp_path: Path, tiny_bert_dir: Path, synthetic_glue_root: Path) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    released = tmp_path / "released"
    # two layers: one pruning location (layer 1); keep 2 of 4 bins, location on
    write_reference_style_checkpoint(released, model, torch.tensor([[10.0, 10.0, -10.0, -10.0]]),
                                     torch.tensor([10.0]), prune_layers=[1], bin_num=4)
    cfg = compose_config("top", "evaluate", [
        f"paths.output_root={tmp_path}", "model_format=released", f"model_dir={released}",
        f"tokenizer={tiny_bert_dir}", "data.task=sst2", f"data.data_dir={synthetic_glue_root}", "data.max_length=64",
    ])
    results = run_evaluate(cfg)
    validation = results["validation"]
    assert validation["samples"] == 40
    kept = validation["mean_kept_tokens_per_layer"]
    # layer 1 keeps CLS plus the top half of the other tokens of each sentence (bins 0-1 of 4)
    assert kept[1] == pytest.approx(1 + (kept[0] - 1) / 2, abs=0.5)
    assert 0.0 < validation["measured_mac_sparsity"] < 0.5
    saved = json.loads((tmp_path / "top" / "evaluate" / "sst2" / "eval_results.json").read_text())
    assert saved["validation"]["metric"] == pytest.approx(validation["metric"])


def test_unknown_model_format(tmp_path: Path) -> None:
    cfg = compose_config("top", "evaluate", [f"paths.output_root={tmp_path}", "model_format=onnx"])
    with pytest.raises(ValueError, match="model_format"):
        run_evaluate(cfg)


def test_ddp_is_refused_clearly(tmp_path: Path) -> None:
    from moonlit.top.prune import run_prune

    cfg = compose_config("top", "prune", [f"paths.output_root={tmp_path}", "trainer=ddp"])
    with pytest.raises(ValueError, match="one process"):
        run_prune(cfg)
