"""Whole-model benchmark arms (onnxruntime and OpenVINO), the best-arm column and the table; no timing asserts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from moonlit.common.errors import InputError
from moonlit.common.export import export_onnx
from moonlit.common.profiling import model_benchmark
from moonlit.common.profiling.model_benchmark import (
    ENGINES,
    BenchModel,
    benchmark_models,
    best_arm,
    default_engines,
    render_table,
)
from moonlit.common.profiling.openvino import supported_precisions


def _row(name: str, fp32_ms: float, int8_ms: float | None, **ov_ms: float) -> dict:
    return {"name": name, "resolution": 224, "macs": 300e6, "params": 5e6, "fp32_ms": fp32_ms, "int8_ms": int8_ms,
            "speedup": None if int8_ms is None else fp32_ms / int8_ms,
            "speedup_ci95": None if int8_ms is None else [1.0, 3.0], "quantized_conv_fraction": 1.0,
            "on_int8_front": False, **{f"{key}_ms": value for key, value in ov_ms.items()}}


def test_best_arm_by_hand() -> None:
    assert best_arm(_row("a", 4.0, 2.0)) == ("ort-int8", 2.0)
    assert best_arm(_row("b", 4.0, 2.0, ov_fp32=3.0, ov_bf16=1.6, ov_int8=1.0)) == ("ov-int8", 4.0)
    assert best_arm(_row("c", 4.0, None, ov_bf16=5.0)) == ("ort-fp32", 1.0)


def test_render_table_has_ov_columns_and_the_best_arm() -> None:
    rows = [_row("a", 4.0, 2.0, ov_fp32=3.0, ov_bf16=1.6), _row("b", 3.0, None, ov_fp32=2.0),
            _row("c", 3.0, None, ov_fp32=2.0)]
    rows[1]["errors"] = {"ov-bf16": "does not run", "ort-int8": "quantizer error"}
    rows[2]["errors"] = {}  # ort-int8 not among the engines asked for
    lines = render_table(rows).splitlines()
    assert lines[0].endswith("| INT8 front | OV FP32 ms | OV BF16 ms | best engine (speed-up vs ORT FP32) |")
    assert lines[1].count("|") == lines[0].count("|")
    assert lines[2] == ("| a | 224 | 300 | 5.00 | 4.00 | 2.00 | 2.00x (1.00-3.00) | 100% |  | 3.00 | 1.60 | "
                        "ov-bf16 2.50x |")  # 4.0 / 1.6
    assert lines[3] == ("| b | 224 | 300 | 5.00 | 3.00 | fails in onnxruntime | – | – |  | 2.00 | fails | "
                        "ov-fp32 1.50x |")  # 3.0 / 2.0
    assert lines[4].startswith("| c | 224 | 300 | 5.00 | 3.00 | not timed | – | – |")
    only_ort = render_table([_row("c", 4.0, 1.0)]).splitlines()
    assert only_ort[0].endswith("| INT8 front | best engine (speed-up vs ORT FP32) |") and only_ort[2].endswith(
        "| ort-int8 4.00x |")


@pytest.mark.parametrize(("engines", "message"), [
    (["ort-fp32", "tvm-int8"], "distinct names from"),
    (["ort-fp32", "ov-fp32", "ov-fp32"], "distinct names from"),
    (["ov-fp32", "ov-int8"], "should include 'ort-fp32'"),
])
def test_engine_selection_errors(engines: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=message):
        benchmark_models([], tmp_path, engines=engines)
    assert not (tmp_path / "onnx").exists()


def test_default_engines_follow_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_engines() == [e for e in ENGINES if e.startswith("ort-") or e[3:] in supported_precisions()]
    import moonlit.common.profiling.openvino as openvino_module

    monkeypatch.setattr(openvino_module, "supported_precisions", lambda: ["fp32", "int8"])
    assert default_engines() == ["ort-fp32", "ort-int8", "ov-fp32", "ov-int8"]


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_benchmark_times_every_arm_interleaved(tmp_path: Path) -> None:
    """All arms of two models in one run; an FP32 file passed as "INT8" runs in onnxruntime but is refused by
    ov-int8 (no QDQ nodes), which is recorded in that row and left out, not fatal."""

    def not_quantized(model: nn.Module, path: Path, calibration: list[torch.Tensor]) -> None:
        export_onnx(model, calibration[0][:1], path)

    torch.manual_seed(0)
    models = [BenchModel("quantized", TinyNet(), 16), BenchModel("float", TinyNet(), 16, int8_export=not_quantized)]
    engines = ["ort-fp32", "ort-int8", "ov-fp32", "ov-int8"]
    result = benchmark_models(models, tmp_path, rounds=2, warmup=1, burst=1, calibration_count=1, calibration_batch=2,
                              engines=engines)
    assert result["timing"]["engines"] == engines
    assert sorted(result["samples_ms"]) == ["float/fp32", "float/int8", "float/ov-fp32", "quantized/fp32",
                                            "quantized/int8", "quantized/ov-fp32", "quantized/ov-int8"]
    assert all(len(samples) == 2 for samples in result["samples_ms"].values())
    quantized, float_row = result["rows"]
    assert set(quantized["speedups"]) == {"ort-int8", "ov-fp32", "ov-int8"} and not quantized["errors"]
    assert quantized["ov_int8_ms"] == pytest.approx(quantized["fp32_ms"] / quantized["speedups"]["ov-int8"]["speedup"],
                                                    rel=0.5)  # a ratio of medians vs the median of ratios
    assert "ov_int8_ms" not in float_row and "export_static_int8" in float_row["errors"]["ov-int8"]
    for row in result["rows"]:
        timings = {engine: row[key] for engine, key in [("ort-fp32", "fp32_ms"), ("ort-int8", "int8_ms"),
                                                         ("ov-fp32", "ov_fp32_ms"), ("ov-int8", "ov_int8_ms")]
                   if row.get(key) is not None}
        fastest = min(timings, key=timings.__getitem__)
        assert row["best_engine"] == fastest
        assert row["best_speedup"] == pytest.approx(row["fp32_ms"] / timings[fastest])
    table = render_table(result["rows"])
    assert table.count("\n") == 4 and "| fails |" in table
    assert model_benchmark.REFERENCE_ENGINE == "ort-fp32"


def test_an_openvino_arm_that_crashes_the_plugin_is_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe child dies on every INT8 file (as the CPU plugin does on some QDQ graphs): the run goes on
    without the ov-int8 arms and says why in each row."""
    import moonlit.common.profiling.openvino as openvino_module

    crash_on_int8 = ("import json, os, signal, sys\n"
                     "for index, (model, precision, threads) in enumerate(json.loads(sys.argv[1])):\n"
                     "    if precision == 'int8':\n"
                     "        os.kill(os.getpid(), signal.SIGSEGV)\n"
                     "    print(json.dumps({'index': index, 'error': None}), flush=True)\n")
    monkeypatch.setattr(openvino_module, "_CHILD", crash_on_int8)
    torch.manual_seed(0)
    result = benchmark_models([BenchModel("m", TinyNet(), 16)], tmp_path, rounds=1, warmup=1, burst=1,
                              calibration_count=1, calibration_batch=2, engines=["ort-fp32", "ov-fp32", "ov-int8"])
    (row,) = result["rows"]
    assert sorted(result["samples_ms"]) == ["m/fp32", "m/ov-fp32"]
    assert row["errors"]["ov-int8"].startswith("OpenVINO crashed the process (signal 11)")
    assert "ov_int8_ms" not in row and row["ov_fp32_ms"] > 0
