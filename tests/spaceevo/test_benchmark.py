"""SEQnet vs baseline FP32/INT8 benchmark (moonlit.spaceevo.benchmark): smoke run and table logic, no timing asserts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

from moonlit.common.config import compose_config
from moonlit.spaceevo.benchmark import _models, int8_front, render_table, run
from moonlit.spaceevo.models import PUBLISHED_SEQNETS, PUBLISHED_SUPERNETS
from moonlit.spaceevo.space import SpaceEncoding, SubnetEncoding
from moonlit.spaceevo.supernet import Supernet

SEARCH_RESULT = Path(__file__).resolve().parents[3] / "shared" / "data" / "spaceevo" / "search_result.yaml"


def _row(name: str, macs: float, int8_ms: float) -> dict:
    return {"name": name, "resolution": 224, "macs": macs, "params": 1e6, "fp32_ms": 2 * int8_ms,
            "int8_ms": int8_ms, "speedup": 2.0, "speedup_ci95": [1.9, 2.1], "quantized_conv_fraction": 1.0}


def test_int8_front_by_hand():
    rows = [_row("a", 100e6, 1.0), _row("b", 200e6, 1.5), _row("c", 150e6, 2.0), _row("d", 200e6, 1.5),
            _row("e", 50e6, 1.0)]
    # c: b has more MACs and is faster; e: a has more MACs at equal latency; b and d tie (neither dominates)
    assert int8_front(rows) == {"a", "b", "d"}


def test_render_table_has_one_line_per_model():
    rows = [{**_row("SEQnet@vnni-A0", 163e6, 1.5), "on_int8_front": True}]
    table = render_table(rows).splitlines()
    assert len(table) == 3
    assert table[2].startswith("| SEQnet@vnni-A0 | 224 | 163 | 1.00 | 3.00 | 1.50 | 2.00x (1.90-2.10) | 100% | yes |")


@pytest.mark.skipif(not SEARCH_RESULT.is_file(), reason="shared data folder not beside the clone")
@pytest.mark.parametrize("route", ["static", "lsq"])
def test_benchmark_smoke_writes_outputs(tmp_path, route):
    cfg = compose_config("spaceevo", "benchmark", [
        f"search_result={SEARCH_RESULT}", "seqnets=[SEQnet@vnni-A0]", "baselines=[resnet18]", f"seqnet_int8={route}",
        "calibration.batches=1", "calibration.batch_size=2", "timing.rounds=2", "timing.warmup=1", "timing.burst=1",
        "baseline_resolution=64", f"output_dir={tmp_path}",
    ])
    result = run(cfg)  # the app's run: run_benchmark
    names = [row["name"] for row in result["rows"]]
    assert names == ["SEQnet@vnni-A0", "resnet18"]
    for name in ("benchmark.json", "benchmark.md", "latency_vs_macs.png", "section.json"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "benchmark.json").read_text())
    seqnet = saved["rows"][0]
    assert seqnet["macs"] == pytest.approx(163.479488e6, rel=1e-6)  # count_macs of the subnet at 160 px
    assert seqnet["quantized_conv_fraction"] == 1.0
    assert len(saved["samples_ms"]["resnet18/int8"]) == 2
    assert (tmp_path / "benchmark.md").read_text().count("\n") == 4


def test_benchmarked_models_are_the_seeded_models_of_the_papers_construction_and_timm():
    """The app builds through create_model; under one seed it gets the weights of the supernet cut (the
    paper's construction) followed by ``timm.create_model`` of the baseline."""
    cfg = compose_config("spaceevo", "benchmark", ["seqnets=[SEQnet@vnni-A0]", "baselines=[resnet18]"])
    torch.manual_seed(11)
    built = [entry.model.state_dict() for entry in _models(cfg)]
    torch.manual_seed(11)
    supernet_name, subnet_text = PUBLISHED_SEQNETS["SEQnet@vnni-A0"]
    subnet = SubnetEncoding.decode(subnet_text)
    supernet = Supernet(SpaceEncoding.decode(PUBLISHED_SUPERNETS[supernet_name]), resolutions=[subnet.resolution])
    supernet.set_active(subnet)
    expected = [supernet.get_active_subnet().state_dict(), timm.create_model("resnet18", pretrained=False).state_dict()]
    for ours, theirs in zip(built, expected, strict=True):
        assert list(ours) == list(theirs)
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs)


def test_predictions_beside_measurements(tmp_path):
    import torch
    from torch import nn

    from moonlit.common.export.onnx import export_onnx
    from moonlit.common.profiling.model_benchmark import BenchModel
    from moonlit.litepred.testing import debug_latency_ms, stand_in_predictor
    from moonlit.spaceevo.benchmark import predict_rows

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    path = export_onnx(model, (torch.randn(1, 3, 16, 16),), tmp_path / "m.onnx", check=False)
    # 0.1 ms per kernel; under ort-int8 the model is four kernels:
    # Conv+Relu, the depthwise Conv, GlobalAveragePool, Gemm
    stand_in = stand_in_predictor(kernel_ms=0.1, ms_per_unit=0.0, platform={"name": "ort-int8"})
    stand_in.save(tmp_path / "int8")
    expected = 4 * 0.1
    measured = [{"name": "m", "fp32_onnx": str(path), "fp32_ms": 1.0, "int8_ms": 0.5}]
    table = predict_rows(measured, {"int8": str(tmp_path / "int8"), "fp32": None})
    assert measured[0]["predicted_int8_ms"] == pytest.approx(expected)
    assert measured[0]["int8_prediction_error"] == pytest.approx(expected / 0.5 - 1)
    assert "predicted_fp32_ms" not in measured[0] and table.count("| m |") == 1
    assert predict_rows(measured, {"int8": None}) == ""
    # measured through the predictor's own backend (here the deterministic debug one), twice
    stand_in.platform = {"name": "debug", "backend": "debug", "rules": "ort-int8"}
    stand_in.save(tmp_path / "dbg")
    again = [{"name": "m", "fp32_onnx": str(path), "fp32_ms": 1.0, "int8_ms": 0.5}]
    table = predict_rows(again, {"int8": str(tmp_path / "dbg")}, [BenchModel("m", model, 16)])
    truth = debug_latency_ms(model, (torch.randn(1, 3, 16, 16),))
    assert again[0]["int8_litepred_ms"] == pytest.approx([truth, truth])
    assert again[0]["int8_prediction_error"] == pytest.approx(expected / truth - 1)
    assert "+0.0%" in table
    with pytest.raises(ValueError, match="fp32 and int8"):
        predict_rows(measured, {"fp16": str(tmp_path / "int8")})
