"""LitePred's OpenVINO platforms ov-fp32 / ov-bf16 / ov-int8: registry, measurement, the INT8 graph they share
with ort-int8, a CPU without BF16, and their kernels checked against OpenVINO's executed graph."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn

from moonlit.common.errors import InputError
from moonlit.common.export.int8 import quantization_summary
from moonlit.common.profiling import openvino as ov_engine
from moonlit.litepred.profile import get_platform, list_platforms
from moonlit.litepred.profile.protocol import Measurement

FAST = {"warmup": 2, "runs": 5, "max_remeasures": 1, "burst": 3, "overhead_runs": 20}
OV_PLATFORMS = ("ov-fp32", "ov-bf16", "ov-int8")


def _conv_bn_relu() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()).eval()
    return model, torch.randn(1, 8, 16, 16)


def test_registry_lists_the_three_platforms() -> None:
    names = list_platforms()
    assert set(OV_PLATFORMS) <= set(names)
    for name in OV_PLATFORMS:
        backend = get_platform(name)
        meta = backend.metadata()
        assert (backend.name, meta["runtime"], meta["precision"], meta["threads"]) == (
            name, "openvino", name.removeprefix("ov-"), 1)
        assert meta["runtime_version"].startswith(__import__("openvino").__version__.split("-")[0])
    assert get_platform("ov-fp32", threads=2).name == "ov-fp32-2t"


@pytest.mark.parametrize("name", OV_PLATFORMS)
def test_each_platform_measures_a_tiny_model(name: str) -> None:
    model, x = _conv_bn_relu()
    measurement = get_platform(name, **FAST).measure(model, x)
    assert isinstance(measurement, Measurement) and measurement.backend == name
    assert measurement.runs == 5 and measurement.raw_median_ms > 0 and measurement.overhead_ms > 0
    assert measurement.median_ms == pytest.approx(max(0.0, measurement.raw_median_ms - measurement.overhead_ms))
    assert measurement.p10_ms <= measurement.median_ms <= measurement.p90_ms
    if name == "ov-int8":
        assert measurement.details["quantized_fraction"] == 1.0


def test_ov_int8_times_the_same_qdq_graph_as_ort_int8(tmp_path: Path) -> None:
    model, x = _conv_bn_relu()
    ov_file, ov_feed = get_platform("ov-int8").export(model, x, tmp_path / "ov")
    ort_file, ort_feed = get_platform("ort-int8").export(model, x, tmp_path / "ort")
    assert hashlib.sha256(ov_file.read_bytes()).hexdigest() == hashlib.sha256(ort_file.read_bytes()).hexdigest()
    assert quantization_summary(ov_file).fraction_quantized("Conv") == 1.0
    assert ov_feed.keys() == ort_feed.keys() and (ov_feed["input"] == ort_feed["input"]).all()
    # the plugin runs that graph's convolution in 8 bits
    layers = ov_engine.executed_layers(ov_engine.openvino_compile(ov_file, precision="int8"))
    assert any(layer.layer_type == "Convolution" and layer.runtime_precision in ("u8", "i8") for layer in layers)


def test_bf16_on_a_cpu_without_bf16_is_one_line_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ov_engine, "supported_precisions", lambda: ["fp32", "int8"])
    with pytest.raises(InputError) as error:
        get_platform("ov-bf16")
    assert "ov-bf16" in str(error.value) and "bf16" in str(error.value) and "\n" not in str(error.value)
    get_platform("ov-fp32")  # the other precisions are unaffected


def test_bad_options_are_input_errors() -> None:
    from moonlit.litepred.profile.openvino import OpenVinoBackend

    with pytest.raises(InputError, match="precision"):
        OpenVinoBackend("ov-fp16", precision="fp16")
    with pytest.raises(InputError, match="calibration_batches"):
        get_platform("ov-int8", calibration_batches=0)
    with pytest.raises(ValueError, match="threads"):
        get_platform("ov-fp32", threads=0)
