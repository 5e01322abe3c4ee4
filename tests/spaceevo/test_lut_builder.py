"""Block LUT builder: the released LUTs' MFLOPs/Mparams, our rows vs hand formulas, latency sources, the app."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from moonlit.common.config import compose_config
from moonlit.common.export.onnx import export_onnx
from moonlit.spaceevo.block_kd import (
    KDSettings,
    StudentStage,
    SubStage,
    calibrate_bn,
    evaluate_nsr,
    load_student,
    run_block_kd,
    train_student,
)
from moonlit.spaceevo.lut import BlockLUT, LUTSet
from moonlit.spaceevo.lut_builder import (
    ConstantLatency,
    LitePredLatency,
    StageFeatures,
    build_luts,
    latency_source,
    run_lut_builder,
)
from moonlit.spaceevo.ops.dynamic import make_divisible
from moonlit.spaceevo.ops.lsq_plus import set_quant_mode
from moonlit.spaceevo.teacher import build_teacher, calibrate_teacher_bn

SHARED = Path(__file__).resolve().parents[3] / "shared"
RELEASED = SHARED / "data" / "spaceevo" / "block_lut" / "onnxw"
TINY = "onnxw_tiny"
TABLE = {"ResNet": 0.002, "*": 0.004}


@pytest.mark.skipif(not RELEASED.is_dir(), reason="shared/ with the released onnxw LUTs is not beside the clone")
def test_released_lut_mflops_and_mparams_are_reproduced() -> None:
    """Our sub-stages, built from the configs of the reference's LUT rows, have its published MFLOPs / Mparams."""
    from moonlit.common.profiling.flops import count_macs

    for stage in range(1, 7):
        for block in range(6):
            lut = BlockLUT.read(RELEASED / f"stage{stage}_{block}_1.csv")
            student = StudentStage("onnxw", stage, block, 16, 16)
            for row in lut.rows[:2]:
                student.set_active(SubStage(row.input_shape[1], row.blocks))
                report = count_macs(student.get_active_substage(), torch.zeros(row.input_shape))
                assert report.macs / 1e6 == pytest.approx(row.mflops, abs=5.1e-5), (stage, block, row)
                assert report.params / 1e6 == pytest.approx(row.mparams, abs=5.1e-5), (stage, block, row)


def _resnet_macs_params(in_channels: int, height: int, blocks: tuple, stride: int) -> tuple[int, int]:
    """ResNet bottlenecks by hand: 1x1 -> k x k (strided) -> 1x1, + 1x1 strided downsample when shapes change.

    Parameters: conv weights, BN weight+bias, and 3 LSQ+ scalars per conv (act scale/offset, weight scale).
    """
    macs = params = 0
    for kernel, width, expand in blocks:
        hidden = make_divisible(expand * width)
        out = height // stride
        convs = [(in_channels * hidden, height), (hidden * hidden * kernel * kernel, out), (hidden * width, out)]
        norms = [hidden, hidden, width]
        if stride != 1 or in_channels != width:
            convs.append((in_channels * width, out))
            norms.append(width)
        macs += sum(weights * size * size for weights, size in convs)
        params += sum(weights for weights, _ in convs) + 2 * sum(norms) + 3 * len(convs)
        in_channels, height, stride = width, out, 1
    return macs, params


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("lut")
    torch.manual_seed(0)
    teacher = build_teacher("efficientnet_b0", TINY)
    images = torch.randn(24, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    calibrate_teacher_bn(teacher, [images[:12], images[12:]])
    dataset = TensorDataset(images, torch.zeros(24, dtype=torch.long))
    boundary = teacher.boundary("stage2")
    for block in (1, 3):
        student = StudentStage(TINY, 2, block, boundary.in_channels, boundary.out_channels)
        train_student(student, teacher, dataset, KDSettings(fp32_steps=2, lsq_steps=1, batch_size=6,
                                                            resolutions=(64, 96)), root / "students" / student.name)
    calib, held_out = [images[:6]], [images[6:12]]
    paths = build_luts(root / "students", teacher, TINY, root / "luts", calib, held_out, ConstantLatency(TABLE), 6,
                       stages=[2], blocks=[1, 3], seed=0, progress=False)
    return {"root": root, "teacher": teacher, "paths": paths, "calib": calib, "held_out": held_out}


def test_builder_writes_every_window_in_the_reference_format(trained: dict) -> None:
    assert sorted(p.name for p in trained["paths"]) == ["stage2_1_0.csv", "stage2_1_1.csv", "stage2_3_0.csv",
                                                        "stage2_3_1.csv"]
    for path in trained["paths"]:
        lut = BlockLUT.read(path)
        assert len(lut.rows) == 6
        assert path.read_text() == "".join(row.to_line() for row in lut.rows)  # 4-decimal reference lines
        width = (16, 24)[lut.window]  # stage2 of onnxw_tiny: widths [16, 24], windows of one
        assert all(w == width for row in lut.rows for _, w, _ in row.blocks)
        heights = sorted({row.input_shape[2] for row in lut.rows})
        assert heights == [16, 24]  # resolutions 64 and 96 after a stride-4 stem + stage0 + stage1
        assert all(row.input_shape[1] in (8, 16) for row in lut.rows)  # stage1's widths feed stage2


def test_resnet_rows_agree_with_hand_formulas(trained: dict) -> None:
    for window in (0, 1):
        for row in BlockLUT.read(trained["root"] / "luts" / f"stage2_3_{window}.csv").rows:
            macs, params = _resnet_macs_params(row.input_shape[1], row.input_shape[2], row.blocks, stride=2)
            assert row.mflops == pytest.approx(macs / 1e6, abs=5.1e-5)
            assert row.mparams == pytest.approx(params / 1e6, abs=5.1e-5)
            assert row.latency_ms == pytest.approx(TABLE["ResNet"] * macs / 1e6, abs=5.1e-5)


def test_rows_params_and_nsr_by_a_second_route(trained: dict) -> None:
    student = load_student(trained["root"] / "students" / "stage2_1")
    features = StageFeatures(trained["teacher"], "stage2", trained["calib"], trained["held_out"])
    for row in BlockLUT.read(trained["root"] / "luts" / "stage2_1_1.csv").rows:
        student.set_active(SubStage(row.input_shape[1], row.blocks))
        substage = student.get_active_substage()
        assert row.mparams == pytest.approx(sum(p.numel() for p in substage.parameters()) / 1e6, abs=5.1e-5)
        assert row.latency_ms == pytest.approx(TABLE["*"] * row.mflops, abs=1.1e-4)
        calib_inputs, pairs = features.at(row.input_shape[2] * 4)
        calibrate_bn(student, calib_inputs)
        assert row.nsr == pytest.approx(evaluate_nsr(student, pairs), abs=5.1e-5)


def test_latency_source_config_and_errors() -> None:
    assert isinstance(latency_source({"source": "constant", "table": {"*": 1.0}}), ConstantLatency)
    with pytest.raises(ValueError, match="latency.source='nnmeter'"):
        latency_source({"source": "nnmeter"})
    with pytest.raises(ValueError, match="needs latency.predictor_dir"):
        latency_source({"source": "litepred", "predictor_dir": None})
    with pytest.raises(ValueError, match="no latency constant for block type 'ResNetSE'"):
        ConstantLatency({"ResNet": 1.0})(torch.nn.Identity(), (1, 8, 4, 4), "ResNetSE", 1.0)


@pytest.fixture(scope="module")
def debug_predictor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from moonlit.litepred.testing import debug_predictor_dir

    return debug_predictor_dir(tmp_path_factory.mktemp("litepred"))


def test_litepred_latency_equals_predicting_the_exported_onnx(debug_predictor: Path, tmp_path: Path) -> None:
    from moonlit.litepred.api import predict_onnx

    with_overhead = LitePredLatency(debug_predictor, apply_overhead=True)
    kernels_only = LitePredLatency(debug_predictor)
    for block in (0, 3, 5):
        student = StudentStage(TINY, 3, block, 40, 80)
        sub = student.sample(random.Random(block))
        substage = student.get_active_substage().eval()
        shape = (1, sub.in_channels, 8, 8)
        fp32 = student.get_active_substage().eval()
        set_quant_mode(fp32, None)
        path = export_onnx(fp32, (torch.zeros(shape),), tmp_path / f"block{block}.onnx", check=False)
        expected = predict_onnx(with_overhead.predictor, path, rules=with_overhead.rules).latency_ms
        assert with_overhead(substage, shape, student.block_spec.name, 0.0) == pytest.approx(expected, rel=1e-9)
        assert kernels_only(substage, shape, student.block_spec.name, 0.0) > 0


def test_lut_builder_app_after_the_block_kd_app(synthetic_image_root: Path, tmp_path: Path) -> None:
    kd_dir = tmp_path / "kd"
    run_block_kd(compose_config("spaceevo", "block_kd", [
        f"hyperspace={TINY}", f"data.root={synthetic_image_root}", "data.holdout_per_class=2", "data.num_workers=0",
        "teacher.model=efficientnet_b0", "teacher.num_classes=4", "teacher.calibrate_bn_batches=1", "resolutions=[64]",
        "batch_size=4", "fp32.steps=1", "lsq.steps=1", "stages=[6]", "blocks=[4]", "eval_batches=0", "device=cpu",
        f"output_dir={kd_dir}"]))
    result = run_lut_builder(compose_config("spaceevo", "lut_builder", [
        f"hyperspace={TINY}", f"block_kd_dir={kd_dir}", "stages=[6]", "blocks=[4]", "num_samples=2", "batch_size=4",
        "calib_batches=1", "eval_batches=1", "progress=false", f"output_dir={tmp_path / 'luts'}"]))
    assert result["files"] == ["stage6_4_0.csv", "stage6_4_1.csv"]
    luts = LUTSet.read(tmp_path / "luts", TINY)
    assert len(luts) == 2 and len(luts.missing()) == 6 * 6 * 2 - 2
    assert all(row.nsr > 0 and row.latency_ms > 0 for lut in luts for row in lut.rows)
    assert json.loads((tmp_path / "luts" / "lut_builder.json").read_text())["latency"]["source"] == "constant"
