"""Kernels timed without the boundary ops a whole model pays once (moonlit.litepred.profile.kernel_io)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from moonlit.common.export.int8 import quantize_static_int8
from moonlit.common.export.onnx import export_onnx
from moonlit.litepred.profile import get_platform
from moonlit.litepred.profile.kernel_io import strip_boundaries
from moonlit.litepred.profile.ort import random_calibration, resolve_onnx_inputs


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)) + x


def _session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _files(tmp_path: Path, module: nn.Module, x: torch.Tensor, int8: bool) -> tuple[Path, dict[str, np.ndarray]]:
    path = export_onnx(module.eval(), (x,), tmp_path / "kernel.onnx", check=False)
    feed = resolve_onnx_inputs(path, (x,))
    if int8:
        path = quantize_static_int8(path, tmp_path / "kernel.int8.onnx", random_calibration(feed))
    return path, feed


def _interior(optimized: Path, names: dict[str, int], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The values of ``names`` (name → element type) inside the optimized graph run on the float ``feed``."""
    model = onnx.load(str(optimized))
    present = {v.name for v in model.graph.output} | set(feed)
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, t, None) for n, t in names.items() if n not in present)
    session = _session(model)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
@pytest.mark.parametrize("case", ["conv", "residual", "linear"])
def test_the_stripped_graph_computes_the_kernels_interior(tmp_path: Path, case: str, int8: bool) -> None:
    torch.manual_seed(0)
    module, x = {
        "conv": (nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()), torch.randn(1, 16, 20, 20)),
        "residual": (_Residual(), torch.randn(1, 16, 12, 12)),
        "linear": (nn.Linear(24, 48), torch.randn(1, 10, 24)),
    }[case]
    path, feed = _files(tmp_path, module, x, int8)
    kernel = strip_boundaries(path, feed, tmp_path / "stripped.onnx")
    stripped = onnx.load(str(kernel.path))
    assert not {n.op_type for n in stripped.graph.node} & {"ReorderInput", "ReorderOutput", "QuantizeLinear"} or case == "residual"
    # Feed the stripped graph the interior tensor the full graph makes from the float input: it
    # must reproduce the full graph's interior output exactly (same kernels, same order).
    inputs = [v.name for v in stripped.graph.input]
    outputs = [v.name for v in stripped.graph.output]
    types = {v.name: v.type.tensor_type.elem_type for v in [*stripped.graph.input, *stripped.graph.output]}
    interior = {**feed, **_interior(tmp_path / "stripped.optimized.onnx", types, feed)}
    got = _session(kernel.path).run(None, {name: interior[name] for name in inputs})
    for name, value in zip(outputs, got):
        np.testing.assert_array_equal(value, interior[name])
    for name in inputs:  # the random feed has the interior's shape and type
        assert kernel.feed[name].shape == interior[name].shape and kernel.feed[name].dtype == interior[name].dtype


def test_int8_conv_kernel_is_one_integer_conv_on_8_bit_nhwc(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path, feed = _files(tmp_path, nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU()), torch.randn(1, 16, 20, 20),
                        int8=True)
    kernel = strip_boundaries(path, feed, tmp_path / "stripped.onnx")
    model = onnx.load(str(kernel.path))
    assert [n.op_type for n in model.graph.node] == ["QLinearConv"]
    assert kernel.stripped_inputs == ["QuantizeLinear", "Transpose"]
    assert sorted(kernel.stripped_outputs) == ["DequantizeLinear", "Transpose"]
    (array,) = kernel.feed.values()
    assert array.dtype == np.uint8 and array.shape == (1, 20, 20, 16)  # NHWC, as QLinearConv reads it here


def test_backends_time_kernels_stripped_and_models_whole(tmp_path: Path) -> None:
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()).eval()
    x = torch.randn(1, 8, 16, 16)
    backend = get_platform("ort-int8", runs=10, warmup=1, burst=3, overhead_ms=0.0)
    assert backend.metadata()["kernel_boundaries"] == "strip"
    kernel_graph = tmp_path / "k"
    whole_graph = tmp_path / "w"
    kernel_graph.mkdir(), whole_graph.mkdir()
    backend.prepare_runner(conv, (x,), kernel_graph, kernel=True)()
    backend.prepare_runner(conv, (x,), whole_graph)()
    assert (kernel_graph / "kernel.stripped.onnx").is_file()
    assert not (whole_graph / "kernel.stripped.onnx").exists()
    results = backend.measure_many([(conv, (x,))], kernels=True)
    assert results[0].median_ms >= 0
    assert get_platform("ort-fp32-noopt").metadata()["kernel_boundaries"] == "none"
    assert get_platform("ort-fp32", kernel_boundaries="keep").metadata()["kernel_boundaries"] == "keep"
    with pytest.raises(ValueError, match="kernel_boundaries"):
        get_platform("ort-fp32", kernel_boundaries="drop")
