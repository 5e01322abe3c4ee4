"""INT8/BF16 fidelity app: metrics by hand, the data plumbing, the routes on a tiny CNN, the app on real data."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from timm.layers import Conv2dSame
from torch import nn

from moonlit.common.errors import InputError
from moonlit.common.export.int8 import export_static_int8
from moonlit.common.export.onnx import export_onnx
from moonlit.spaceevo.deploy import export_lsq_qdq
from moonlit.spaceevo.fidelity import (
    EvalSet,
    agreement,
    confident,
    grey_to_model_input,
    lsq_qat,
    mean_kl,
    ort_logits,
    per_layer_error,
    quantize_modules_,
    render_table,
    score_routes,
    static_same_padding_,
    torch_logits,
)
from moonlit.spaceevo.ops.lsq_plus import QuantConv2d, QuantLinear


def test_agreement_and_kl_against_hand_values() -> None:
    reference = np.array([[2.0, 0.0], [0.0, 1.0]])
    logits = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert agreement(reference, logits) == 0.5
    # Row 1: p = softmax(2, 0), q = softmax(1, 0); row 2: p = softmax(0, 1), q = softmax(1, 0).
    p1, q1 = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-1))
    kl1 = p1 * math.log(p1 / q1) + (1 - p1) * math.log((1 - p1) / (1 - q1))
    p2, q2 = 1 / (1 + math.exp(1)), q1
    kl2 = p2 * math.log(p2 / q2) + (1 - p2) * math.log((1 - p2) / (1 - q2))
    assert mean_kl(reference, logits) == pytest.approx((kl1 + kl2) / 2, rel=1e-12)
    assert mean_kl(reference, reference + 5.0) == pytest.approx(0.0, abs=1e-12)  # softmax ignores a shift
    with pytest.raises(InputError, match="expected equal"):
        agreement(reference, logits[:1])


def test_confident_rows_by_hand() -> None:
    # softmax of [log 0.6, log 0.3, log 0.1] is (0.6, 0.3, 0.1): margin 0.3; [0, 0, 0]: margin 0
    reference = np.log(np.array([[0.6, 0.3, 0.1], [1 / 3, 1 / 3, 1 / 3], [0.1, 0.45, 0.45]]))
    assert confident(reference, 0.1).tolist() == [True, False, False]
    assert confident(reference, 0.35).tolist() == [False, False, False]
    assert confident(reference, 0.0).tolist() == [True, True, True]


def test_score_routes_per_group() -> None:
    reference = np.eye(4)
    wrong_last = np.eye(4)[[0, 1, 2, 0]]
    groups = {"photos": np.array([True, True, False, False]), "fmnist": np.array([False, False, True, True]),
              "all": np.ones(4, bool), "none": np.zeros(4, bool)}
    scores = score_routes(reference, {"r": wrong_last}, groups)["r"]
    assert scores["agreement/photos"] == 1.0 and scores["agreement/fmnist"] == 0.5 and scores["agreement/all"] == 0.75
    assert scores["kl/photos"] == 0.0 and scores["kl/fmnist"] > 0 and "agreement/none" not in scores


def test_grey_images_become_normalised_rgb() -> None:
    images = torch.tensor([[[255, 255], [255, 255]], [[0, 0], [0, 0]]], dtype=torch.uint8)
    x = grey_to_model_input(images, 6, mean=(0.5, 0.4, 0.3), std=(0.5, 0.25, 0.1))
    assert x.shape == (2, 3, 6, 6)
    for channel, (mean, std) in enumerate(((0.5, 0.5), (0.4, 0.25), (0.3, 0.1))):
        torch.testing.assert_close(x[0, channel], torch.full((6, 6), (1.0 - mean) / std))
        torch.testing.assert_close(x[1, channel], torch.full((6, 6), -mean / std))


def test_evalset_batches_photos_then_fmnist() -> None:
    photos = torch.randn(3, 3, 4, 4)
    fmnist = torch.randint(0, 256, (4, 4, 4), dtype=torch.uint8)
    evalset = EvalSet(photos, ["a", "b", "c"], fmnist, 4, (0.5,) * 3, (0.5,) * 3)
    expected = torch.cat([photos, grey_to_model_input(fmnist, 4, (0.5,) * 3, (0.5,) * 3)])
    for size in (1, 2, 5, 7):
        torch.testing.assert_close(torch.cat(list(evalset.batches(size))), expected)
    assert [len(b) for b in evalset.batches(2, limit=5)] == [2, 2, 1]
    assert evalset.groups["photos"].tolist() == [True] * 3 + [False] * 4


class TinyNet(nn.Module):
    """Conv2dSame stem (TF "same" padding, as the tf_ EfficientNets), conv-BN-ReLU6, a residual, a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv2dSame(3, 8, 3, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
                                   nn.Conv2d(8, 8, 1))
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.stem(x)))
        x = x + self.block(x)
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def tiny() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = TinyNet()  # (Conv2dSame kept: test_routes fixes its padding on a copy)
    with torch.no_grad():  # non-trivial BN statistics, so folding matters
        for bn in (model.bn, model.block[1]):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    return model.eval(), torch.randn(8, 3, 16, 16), torch.randn(16, 3, 16, 16)


def test_static_padding_and_quantized_modules_keep_the_fp32_function(tiny) -> None:
    model, images, _ = tiny
    student = copy.deepcopy(model)
    with pytest.raises(InputError, match="Conv2dSame"):
        quantize_modules_(copy.deepcopy(model))
    assert static_same_padding_(student, 16) == 1
    assert student.stem[0].padding == (0, 1, 0, 1)  # 16 px, 3x3, stride 2: 1 pixel in all, on the far side
    with torch.no_grad():
        torch.testing.assert_close(student(images), model(images))  # Conv2dSame pads in forward: same sums
    assert quantize_modules_(student) == 4
    kinds = [type(m).__name__ for m in student.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    assert kinds == ["QuantConv2d", "QuantConv2d", "QuantConv2d", "QuantLinear"]
    with torch.no_grad():
        torch.testing.assert_close(student(images), model(images))  # FP32 mode: same function


def test_routes_on_a_tiny_cnn(tiny, tmp_path: Path) -> None:
    model, images, calibration = tiny
    model = copy.deepcopy(model)
    static_same_padding_(model, 16)
    reference = torch_logits(model, iter([images]))
    fp32 = export_onnx(model, images[:1], tmp_path / "fp32.onnx", output_names=["output"],
                       dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    assert agreement(reference, ort_logits(fp32, iter([images]), 1)) == 1.0
    int8 = export_static_int8(model, tmp_path / "int8.onnx", [calibration], check=False)
    assert mean_kl(reference, ort_logits(int8, iter([images]), 1)) < 0.05
    layers = per_layer_error(fp32, int8, iter([images[:4], images[4:]]), 1)
    assert len(layers) == 3  # stem, depthwise, pointwise (the linear is a Gemm)
    assert all(0.0 < row["relative_l2"] < 0.2 for row in layers)

    student = copy.deepcopy(model)
    quantize_modules_(student)
    qat = {"steps": 2, "batch_size": 4, "lr": 1e-5, "seed": 0}
    losses = lsq_qat(student, model, calibration, torch.randint(0, 256, (8, 16, 16), dtype=torch.uint8),
                     OmegaConf.create(qat),
                     lambda grey: grey.float().div(255).unsqueeze(1).expand(-1, 3, -1, -1))
    assert len(losses) == 2 and all(loss >= 0 for loss in losses)
    fake_quant = torch_logits(student, iter([images]))
    export = export_lsq_qdq(student, tmp_path / "lsq.onnx", [calibration])
    assert export.quantized_ops == 4
    lsq = ort_logits(export.path, iter([images]), 1)
    assert agreement(fake_quant, lsq) >= 7 / 8
    assert mean_kl(fake_quant, lsq) < 0.05


def test_render_table_lists_the_ten_worst_layers() -> None:
    section = {
        "routes": {"torch FP32": {f"{m}/{g}": v for m, v in (("agreement", 1.0), ("kl", 0.0))
                                  for g in ("photos", "fmnist", "all")}},
        "latency_ms": {"torch FP32": 12.345},
        "per_layer": [{"index": i, "tensor": f"conv{i}", "relative_l2": i / 100} for i in range(12)],
    }
    table = render_table(section)
    assert "| torch FP32 | 100.00% | 100.00% | 100.00% | 0.0000 | 0.0000 | 0.0000 | 12.35 |" in table
    rows = [line for line in table.splitlines() if line.startswith("| `conv")]
    assert [row.split("`")[1] for row in rows] == [f"conv{i}" for i in range(11, 1, -1)]


@pytest.mark.slow  # about a minute on 2 cores: beyond the default tier's budget for this module
@pytest.mark.real_data
def test_fidelity_smoke_on_real_data(real_artefact, tmp_path: Path) -> None:
    import json

    from moonlit.common.config import compose_config
    from moonlit.spaceevo.fidelity import run

    for name in ("efficientnet_lite0", "photos", "fashion_mnist"):
        real_artefact(name)
    cfg = compose_config("spaceevo", "fidelity", ["fidelity_scale=smoke", f"output_dir={tmp_path}"])
    section = run(cfg)
    assert len(section["images"]["photos"]) == 10 and section["images"]["fmnist_test"] == 16
    routes = section["routes"]
    assert routes["ORT FP32"]["agreement/all"] == 1.0 and routes["ORT FP32"]["kl/all"] < 1e-4
    assert {"ORT static INT8 (minmax)", "ORT dynamic INT8", "torch BF16 autocast", "LSQ+ INT8 (ORT)",
            "LSQ+ INT8 (ORT, float outputs)"} <= set(routes)
    assert 0.0 <= section["lsq_export_vs_fake_quant"]["agreement/all"] <= 1.0
    assert len(section["per_layer"]) > 30  # Lite0's convs
    assert json.loads((tmp_path / "section.json").read_text())["model"] == "tf_efficientnet_lite0"
    assert (tmp_path / "fidelity.png").stat().st_size > 0 and "| ORT FP32 |" in (tmp_path / "fidelity.md").read_text()
