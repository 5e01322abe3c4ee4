"""Block-wise KD: NSR vs a hand formula, teacher stage bookkeeping, training, resume, 2-process gloo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from moonlit.common.config import compose_config
from moonlit.common.train.dist import init_distributed, spawn_local
from moonlit.spaceevo.block_kd import (
    KDSettings,
    StepBatchSampler,
    StudentStage,
    SubStage,
    calibrate_bn,
    evaluate_nsr,
    hyperspace_block_spec,
    load_student,
    nsr_loss,
    run,
    train_student,
)
from moonlit.spaceevo.ops.stages import block_spec
from moonlit.spaceevo.space import load_hyperspace
from moonlit.spaceevo.teacher import (
    Teacher,
    build_teacher,
    calibrate_teacher_bn,
    quantize_teacher,
)

TINY = "onnxw_tiny"


def _teacher(seed: int = 0) -> Teacher:
    torch.manual_seed(seed)
    teacher = build_teacher("efficientnet_b0", TINY)
    images = torch.randn(16, 3, 96, 96, generator=torch.Generator().manual_seed(seed))
    calibrate_teacher_bn(teacher, [images[:8], images[8:]])
    return teacher


@pytest.fixture(scope="module")
def teacher() -> Teacher:
    return _teacher()


def _dataset(n: int = 24, seed: int = 1) -> TensorDataset:
    images = torch.randn(n, 3, 96, 96, generator=torch.Generator().manual_seed(seed))
    return TensorDataset(images, torch.zeros(n, dtype=torch.long))


def _student(teacher: Teacher, stage: int = 1, block: int = 3, seed: int = 0) -> StudentStage:
    torch.manual_seed(seed)
    boundary = teacher.boundary(f"stage{stage}")
    return StudentStage(TINY, stage, block, boundary.in_channels, boundary.out_channels)


# --- NSR ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variance_of", ["teacher", "student"])
def test_nsr_matches_a_hand_formula(variance_of: str) -> None:
    rng = np.random.default_rng(0)
    student = rng.normal(size=(2, 3, 4, 5))
    teacher = rng.normal(size=(2, 3, 4, 5)) * 2 + 1
    reference = teacher if variance_of == "teacher" else student
    terms = []
    for n in range(2):
        for c in range(3):
            values = reference[n, c].ravel()
            variance = sum((v - values.mean()) ** 2 for v in values) / (values.size - 1)  # unbiased
            terms.append(((student[n, c] - teacher[n, c]) ** 2).mean() / variance)
    expected = sum(terms) / len(terms)
    got = nsr_loss(torch.tensor(student), torch.tensor(teacher), variance_of)
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_nsr_forms_differ_and_bad_input_is_named() -> None:
    student, teacher = torch.randn(1, 2, 3, 3) * 3, torch.randn(1, 2, 3, 3)
    assert float(nsr_loss(student, teacher, "teacher")) != pytest.approx(float(nsr_loss(student, teacher, "student")))
    with pytest.raises(ValueError, match="variance_of='both'"):
        nsr_loss(student, teacher, "both")
    with pytest.raises(ValueError, match=r"\(1, 2, 3, 3\) and \(1, 2, 2, 2\)"):
        nsr_loss(student, teacher[..., :2, :2])


# --- teacher -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_name", ["efficientnet_b0", "mobilenetv3_large_100"])
def test_teacher_stage_shapes_follow_the_hyperspace_strides(model_name: str) -> None:
    spec = load_hyperspace("onnxw")
    teacher = build_teacher(model_name, "onnxw")
    io = teacher.stage_io(torch.randn(1, 3, 160, 160), [s.name for s in spec.stages])
    downsample = 1
    for stage in spec.stages:  # strides 2 | 1, 2, 2, 2, 1, 2, 1 by hand from the yaml
        x_in, x_out = io[stage.name]
        assert x_in.shape[-1] == 160 // downsample
        downsample *= stage.stride
        assert x_out.shape[-1] == 160 // downsample
        assert x_out.shape[1] == teacher.boundary(stage.name).out_channels
    # stage i's input is stage i-1's output, so the segments chain without gaps
    for previous, stage in zip(spec.stages, spec.stages[1:]):
        assert torch.equal(io[previous.name][1], io[stage.name][0])


def test_teacher_rejects_stage_ends_with_the_wrong_stride() -> None:
    import timm

    model = timm.create_model("efficientnet_b0")
    segments = ["conv_stem", "bn1"] + [f"blocks.{i}" for i in range(7)]
    repeated = {"first_conv": "bn1", **{f"stage{i}": f"blocks.{i}" for i in range(7)}, "stage6": "blocks.5"}
    with pytest.raises(ValueError, match="not strictly increasing"):
        Teacher(model, "onnxw", segments, repeated)
    # one segment early everywhere: stage1 = blocks.0 (stride 1) where the hyperspace has stride 2
    early = {"first_conv": "conv_stem", "stage0": "bn1", **{f"stage{i}": f"blocks.{i - 1}" for i in range(1, 7)}}
    with pytest.raises(ValueError, match=r"teacher stage stage1 .* maps 80px to 80px .* expects 80px -> 40px"):
        Teacher(model, "onnxw", segments, early, probe_resolution=160)
    with pytest.raises(ValueError, match="not an EfficientNet-style timm model"):
        Teacher(timm.create_model("resnet18"), "onnxw")


def test_teacher_stays_in_eval_mode_and_quantizes(teacher: Teacher) -> None:
    teacher.train()
    assert not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    import timm

    model = timm.create_model("efficientnet_b0")
    convs = sum(type(m) is torch.nn.Conv2d for m in model.modules())
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    assert quantize_teacher(model) == convs + linears


def test_teacher_weights_load_from_a_local_file_and_a_wrong_head_is_one_clear_error(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    from moonlit.common.errors import InputError

    torch.manual_seed(3)
    source = timm.create_model("efficientnet_b0", num_classes=10)
    path = tmp_path / "teacher.pth"
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    teacher = build_teacher("efficientnet_b0", TINY, pretrained=path, num_classes=10)
    for key, value in source.state_dict().items():
        assert torch.equal(teacher.model.state_dict()[key], value), key
    wrong = tmp_path / "teacher_1000.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("efficientnet_b0").state_dict().items()}, str(wrong))
    with pytest.raises(InputError, match=r"classifier.weight \(1000, 1280\) in the file vs \(10, 1280\) in the model") \
            as info:
        build_teacher("efficientnet_b0", TINY, pretrained=wrong, num_classes=10)
    assert "\n" not in str(info.value)


# --- students ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("hyperspace", ["onnxw", "mobilew"])
def test_block_specs_from_yaml_equal_the_block_registry(hyperspace: str) -> None:
    spec = load_hyperspace(hyperspace)
    for digit in range(len(spec.block_types)):
        ours, registry = hyperspace_block_spec(spec, digit), block_spec(hyperspace, digit)
        assert (ours.name, ours.kernel_list, ours.activation) == (registry.name, registry.kernel_list,
                                                                   registry.activation)
        assert [float(e) for e in ours.expand_list or ()] == [float(e) for e in registry.expand_list or ()]


def test_student_projections_and_sampling_respect_the_window(teacher: Teacher) -> None:
    student = _student(teacher, stage=3, block=1)
    spec = load_hyperspace(TINY)
    x = teacher.stage_io(torch.randn(2, 3, 64, 64), ["stage3"])["stage3"][0]
    import random

    rng = random.Random(0)
    for _ in range(20):
        sub = student.sample(rng, spec.stages[4].window_widths(1))
        assert sub.in_channels in spec.stages[3].widths
        assert {w for _, w, _ in sub.blocks} <= {32, 40} and len(sub.blocks) in (1, 2)
        assert student(x).shape == (2, teacher.boundary("stage3").out_channels, 4, 4)
        substage = student.get_active_substage()
        assert substage(torch.randn(1, sub.in_channels, 8, 8)).shape == (1, sub.blocks[-1][1], 4, 4)
    with pytest.raises(ValueError, match="widths \\[48\\] are not in the stage's width list"):
        student.sample(rng, (48,))
    with pytest.raises(ValueError, match="input width 12 is not one of"):
        student.set_active(SubStage(12, ((3, 24, 4),)))


def test_step_batch_sampler_partitions_each_epoch_across_ranks() -> None:
    ranks = [list(StepBatchSampler(12, 3, seed=0, start=0, stop=4, rank=r, world_size=2)) for r in range(2)]
    epoch0 = sorted(i for rank in ranks for batch in rank[:2] for i in batch)
    assert epoch0 == list(range(12))
    resumed = list(StepBatchSampler(12, 3, seed=0, start=3, stop=4, rank=1, world_size=2))
    assert resumed == [ranks[1][3]]


def test_a_few_kd_steps_reduce_the_held_out_loss(teacher: Teacher, tmp_path: Path) -> None:
    student = _student(teacher, stage=2, block=5)
    held_out = torch.randn(8, 3, 96, 96, generator=torch.Generator().manual_seed(5))
    pairs = [teacher.stage_io(held_out, ["stage2"])["stage2"]]

    def held_out_nsr() -> float:
        student.set_max()
        calibrate_bn(student, [pairs[0][0]])
        return evaluate_nsr(student, pairs)

    before = held_out_nsr()
    settings = KDSettings(fp32_steps=12, lsq_steps=0, fp32_lr=0.01, batch_size=8, resolutions=(96,),
                          checkpoint_every=100)
    run = train_student(student, teacher, _dataset(), settings, tmp_path / "kd")
    after = held_out_nsr()
    assert after < 0.85 * before, (before, after)
    first, last = run["losses"][0][0], run["losses"][-1][0]
    assert last < first


def test_resume_equals_an_uninterrupted_run(teacher: Teacher, tmp_path: Path) -> None:
    settings = KDSettings(fp32_steps=2, lsq_steps=2, batch_size=4, resolutions=(64, 96), checkpoint_every=100)
    dataset = _dataset(16)
    whole = _student(teacher, block=2)
    train_student(whole, teacher, dataset, settings, tmp_path / "whole")
    for kill_at in (1, 3):  # inside the FP32 phase, and inside the LSQ+ phase
        train_student(_student(teacher, block=2), teacher, dataset, settings, tmp_path / f"killed{kill_at}",
                      stop_after=kill_at)
        resumed = _student(teacher, block=2, seed=123)  # different init: everything must come from the checkpoint
        run = train_student(resumed, teacher, dataset, settings, tmp_path / f"killed{kill_at}")
        assert run["resumed_from"] == kill_at and len(run["losses"]) == 4 - kill_at
        expected, got = whole.state_dict(), resumed.state_dict()
        assert expected.keys() == got.keys()
        for key in expected:
            assert torch.equal(expected[key], got[key]), (kill_at, key)
    loaded = load_student(tmp_path / "whole")
    assert all(torch.equal(v, whole.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert all(q.bits == 8 for q in loaded.modules() if hasattr(q, "initialized"))


def _ddp_worker(images: torch.Tensor, out_dir: str) -> dict:
    ctx = init_distributed("cpu")
    teacher = _teacher()
    student = _student(teacher, stage=1, block=3, seed=ctx.rank)  # DDP broadcasts rank 0's weights
    settings = KDSettings(fp32_steps=2, lsq_steps=1, batch_size=4, resolutions=(64, 96), checkpoint_every=100)
    dataset = TensorDataset(images, torch.zeros(len(images), dtype=torch.long))
    train_student(student, teacher, dataset, settings, out_dir, ctx)
    return {k: v.clone() for k, v in student.state_dict().items()}


def test_two_process_gloo_run_keeps_identical_weights(tmp_path: Path) -> None:
    images = torch.randn(16, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    rank0, rank1 = spawn_local(_ddp_worker, 2, args=(images, str(tmp_path / "ddp")))
    initial = _student(_teacher(), stage=1, block=3, seed=0).state_dict()
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert not torch.equal(rank0["in_proj.weight"], initial["in_proj.weight"])
    assert bool(rank0["stage.blocks.0.conv1.conv.act_quant.initialized"])  # reached the LSQ+ phase


def test_block_kd_app_on_generated_images(synthetic_image_root: Path, tmp_path: Path) -> None:
    cfg = compose_config("spaceevo", "block_kd", [
        f"hyperspace={TINY}", f"data.root={synthetic_image_root}", "data.holdout_per_class=2", "data.num_workers=0",
        "teacher.model=efficientnet_b0", "teacher.num_classes=4", "teacher.calibrate_bn_batches=1",
        "teacher.lsq_finetune.steps=1", "resolutions=[64]", "batch_size=4", "fp32.steps=2", "lsq.steps=1",
        "stages=[2]", "blocks=[0,4]", "eval_batches=1", "device=cpu", f"output_dir={tmp_path}"])
    summary = run(cfg)  # the app's work: run_block_kd between logging setup and process-group cleanup
    assert sorted(summary["students"]) == ["stage2_0", "stage2_4"]
    assert summary["teacher"]["lsq"] and Path(summary["teacher"]["weights"]).is_file()
    saved = json.loads((tmp_path / "block_kd.json").read_text())
    assert saved["students"]["stage2_4"]["steps"] == 3 and saved["students"]["stage2_4"]["nsr_max"] > 0
    again = run(cfg)  # a rerun resumes: nothing left to train
    assert again["students"]["stage2_0"]["resumed_from"] == 3
