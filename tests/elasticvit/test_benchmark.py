"""ElasticViT benchmark (moonlit.elasticvit.benchmark): a smoke run writes its files; no timing asserts."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from moonlit.common.config import compose_config
from moonlit.common.errors import InputError
from moonlit.elasticvit.benchmark import _models, run
from moonlit.elasticvit.flops import subnet_complexity
from moonlit.elasticvit.models import build_model, named_subnet
from moonlit.elasticvit.space import decode

SEARCHED = "r128_s16d1k3_c16d2e3k3_c16d2e3k3_t48d1m2v2_t80d1m2v2_t144d1m2v2_t160d1m2v2"


def test_benchmarked_models_are_the_seeded_models_of_the_constructor_and_timm() -> None:
    """The app builds through create_model; under one seed it gets the weights of ``build_model(subnet)``
    for the named and the searched model, then of ``timm.create_model`` for the baseline."""
    cfg = compose_config("elasticvit", "benchmark", ["models=[T1]", f"extra_subnets=[{SEARCHED}]",
                                                     "baselines=[mobilenetv3_large_100]"])
    torch.manual_seed(5)
    models, subnets = _models(cfg)
    torch.manual_seed(5)
    expected = [build_model(named_subnet("T1")), build_model(decode(SEARCHED)),
                timm.create_model("mobilenetv3_large_100", pretrained=False)]
    assert [m.name for m in models] == ["T1", "searched-0", "mobilenetv3_large_100"]
    assert subnets == {"T1": named_subnet("T1"), "searched-0": decode(SEARCHED)}
    for entry, reference in zip(models, expected, strict=True):
        ours, theirs = entry.model.state_dict(), reference.state_dict()
        assert list(ours) == list(theirs)
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs), entry.name


def test_benchmark_refuses_a_model_that_is_not_elasticvit() -> None:
    cfg = compose_config("elasticvit", "benchmark", ["models=[resnet18]"])
    with pytest.raises(InputError, match="'resnet18' is not an ElasticViT model"):
        _models(cfg)


def test_benchmark_smoke_writes_outputs(tmp_path) -> None:
    cfg = compose_config("elasticvit", "benchmark", [
        f"output_dir={tmp_path}", "models=[elasticvit_t1]", "baselines=[mobilenetv3_large_100]",
        "reference_baseline=mobilenetv3_large_100", f"extra_subnets=[{SEARCHED}]",
        "timing.rounds=3", "timing.warmup=1", "calibration.batches=1", "calibration.batch_size=1"])
    result = run(cfg)  # the app's run: run_benchmark
    names = [row["name"] for row in result["rows"]]
    assert names == ["elasticvit_t1", "searched-0", "mobilenetv3_large_100"]
    t1 = result["rows"][0]
    # count_macs on the exported model agrees with the analytic counter (both count conv/linear/matmul MACs)
    assert t1["macs"] == subnet_complexity(named_subnet("elasticvit_t1")).macs
    assert t1["fp32_ms"] > 0 and result["rows"][2]["fp32_speedup_vs_reference"] == 1.0
    baseline = result["rows"][2]
    assert baseline["int8_ms"] > 0 and baseline["speedup"] > 0
    # the token norm exports with a 1-D affine, so ORT quantizes and runs every ElasticViT graph
    assert t1["int8_ms"] > 0 and "int8_error" not in t1 and t1["quantized_conv_fraction"] == 1.0
    for name in ("benchmark.json", "benchmark.md", "latency_vs_macs.png", "section.json"):
        assert (tmp_path / name).is_file()
    assert json.loads((tmp_path / "benchmark.json").read_text())["reference_baseline"] == "mobilenetv3_large_100"
