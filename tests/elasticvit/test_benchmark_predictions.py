"""ElasticViT benchmark predictions through the LitePred API: the block-wise prediction equals predicting the
whole static model, kernels are detected under the predictor's rules (not its name), and the predictor's
own protocol is the debug backend's deterministic measurement."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from moonlit.common.profiling.model_benchmark import BenchModel
from moonlit.elasticvit.benchmark import _predictions
from moonlit.elasticvit.models import build_model
from moonlit.elasticvit.space import decode
from moonlit.litepred.api import predict_module
from moonlit.litepred.testing import debug_latency_ms, stand_in_predictor

SUBNET = decode("r128_s16d1k3_c24d2e3k3_c32d3e3k3_t64d1m2v2_t96d1m2v2_t176d1m3v2_t272d1m4v2")  # ElasticViT-T1


def test_predictions_use_the_rules_and_the_predictors_protocol(tmp_path: Path) -> None:
    # the name is the debug backend; the rules are ort-int8's, which fuse differently from the name's base rules
    predictor = stand_in_predictor(seed=2, platform={"name": "debug", "backend": "debug", "rules": "ort-int8"})
    predictor.save(tmp_path / "predictor")
    model = build_model(SUBNET).eval()
    cfg = OmegaConf.create({"predictor_dir": str(tmp_path / "predictor"), "kernel_cache": str(tmp_path / "parts.jsonl"),
                            "predictor_protocol": True})
    predicted, own = _predictions(cfg, {"small": SUBNET}, [BenchModel("small", model, 128)])
    inputs = (torch.zeros(1, 3, 128, 128),)
    whole = predict_module(predictor, model, inputs, rules="ort-int8").latency_ms
    assert predicted["small"] == pytest.approx(whole, rel=1e-12)
    assert own["small"] == pytest.approx([debug_latency_ms(model, inputs)] * 2)
    assert '"platform": "ort-int8"' in (tmp_path / "parts.jsonl").read_text().splitlines()[0]
    no_predictor = OmegaConf.create({"predictor_dir": None, "kernel_cache": None, "predictor_protocol": True})
    assert _predictions(no_predictor, {"small": SUBNET}, []) == ({}, {})
