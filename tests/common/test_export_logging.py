"""Per-file export lines are DEBUG: a LitePred build exports thousands of kernels, one INFO line each would flood."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from moonlit.common.export.int8 import quantize_dynamic_int8, quantize_static_int8
from moonlit.common.export.onnx import export_onnx

EXPORT_LOGGERS = ("moonlit.common.export.onnx", "moonlit.common.export.int8")


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name in EXPORT_LOGGERS]


def _export_and_quantize(tmp_path: Path) -> Path:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()
    fp32 = export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "fp32.onnx")
    quantize_static_int8(fp32, tmp_path / "static.onnx", [torch.randn(1, 3, 8, 8) for _ in range(2)])
    quantize_dynamic_int8(fp32, tmp_path / "dynamic.onnx", op_types=("MatMul", "Gemm"))
    return fp32


def test_no_info_line_per_exported_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        _export_and_quantize(tmp_path)
    assert [record.getMessage() for record in _records(caplog) if record.levelno >= logging.INFO] == []


def test_a_caller_at_debug_gets_one_line_per_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="moonlit.common.export"):
        fp32 = _export_and_quantize(tmp_path)
    lines = [record.getMessage() for record in _records(caplog) if record.levelno == logging.DEBUG]
    for expected in (f"to {fp32} ", f"static INT8 {fp32} -> {tmp_path / 'static.onnx'}",
                     f"dynamic INT8 {fp32} -> {tmp_path / 'dynamic.onnx'}"):
        assert sum(expected in line for line in lines) == 1, (expected, lines)
