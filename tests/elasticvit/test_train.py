"""ElasticViT supernet training (moonlit.elasticvit.train / train_step / teachers): step, schedule, smoke, resume, DDP."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.scheduler import CosineLRScheduler

from moonlit.common.config import compose_config
from moonlit.common.train.dist import spawn_local
from moonlit.common.train.losses import adaptive_alpha_divergence
from moonlit.common.train.optim import build_optimizer, one_dim_or_in
from moonlit.common.train.schedules import warmup_cosine
from moonlit.elasticvit.sampling import ComplexityAwareSampler, StepSample
from moonlit.elasticvit.space import (
    ConvStageSpace,
    SearchSpace,
    TransformerStageSpace,
    max_subnet,
    min_subnet,
    random_subnet,
)
from moonlit.elasticvit.supernet import ElasticViTSupernet
from moonlit.elasticvit.tables import FlopsTables, build_tables
from moonlit.elasticvit.teachers import TeacherEnsemble, build_teacher, build_teachers
from moonlit.elasticvit.train import representative_subnets, sampler_statistics, train
from moonlit.elasticvit.train_step import (
    StepSettings,
    conv_block_parameters,
    make_scorer,
    space_from_config,
    train_step,
)

SMOKE_SPACE = SearchSpace(
    resolutions=(32, 40, 48), first_conv_widths=(8,), stem_depths=(1,), stem_kernels=(3,),
    conv_stages=(ConvStageSpace("C1", (8, 16), (1, 2), True, False), ConvStageSpace("C2", (16, 24), (1, 2), True, True)),
    transformer_stages=(TransformerStageSpace("T1", (16, 32), (1, 2), True),
                        TransformerStageSpace("T2", (32, 48), (1, 2), False),
                        TransformerStageSpace("T3", (48, 64), (1, 2), True),
                        TransformerStageSpace("T4", (64, 80), (1, 2), True)),
    conv_expands=(2, 3), conv_kernels=(3, 5), mlp_ratios=(2, 3), v_scales=(2,), head_dim=16, reduction_expand=3,
    reduction_kernel=3, head_width_multiplier=2, head_hidden=128)


@pytest.fixture(scope="module")
def smoke_tables(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tables") / "flops_tables.npz"
    build_tables((0.6, 1.0, 1.4, 1.8), 200, band=0.2, num_classes=4, space=SMOKE_SPACE).save(path)
    return path


def _overrides(output_root: Path, tables: Path, *extra: str, train_per_class: int = 4) -> list[str]:
    return ["experiment=smoke", f"paths.output_root={output_root}", f"tables.path={tables}",
            f"data.generate.train_per_class={train_per_class}", "data.generate.val_per_class=2",
            "eval.every_epochs=100", "trainer.log_every=1000", *extra]


def _without_generate(overrides: list[str]) -> list[str]:
    """With another data option chosen, the generated-images settings are not keys of the data node."""
    other = any(o.startswith("data=") for o in overrides)
    return [o for o in overrides if not o.startswith("data.generate")] if other else overrides


def _state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_smoke_config_space_is_the_reduced_space() -> None:
    cfg = compose_config("elasticvit", "train", ["experiment=smoke"])
    from omegaconf import OmegaConf

    assert space_from_config(OmegaConf.to_container(cfg.space)) == SMOKE_SPACE
    assert space_from_config(None).resolutions == (128, 160, 176, 192, 224, 256)
    with pytest.raises(ValueError, match="head_hidden"):
        space_from_config({k: v for k, v in OmegaConf.to_container(cfg.space).items() if k != "head_hidden"})


def test_paper_config_is_the_reference_recipe() -> None:
    cfg = compose_config("elasticvit", "train", [])
    assert (cfg.data.batch_size, cfg.epochs, cfg.cooldown_epochs, cfg.warmup_epochs) == (96, 600, 10, 5)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.ema.decay, cfg.teachers.temperature) == (5e-4, 0.05, 0.99985, 0.2)
    assert [m.name.split(".")[0] for m in cfg.teachers.models] == ["resnext101_32x4d", "resnext101_32x8d"]
    assert cfg.data.train_aug.auto_augment == "rand-n1-m1-mstd0.5-inc1" and cfg.mixup.mixup_alpha == 0.01


def test_schedule_equals_timm_cosine_scheduler() -> None:
    # timm's CosineLRScheduler as the reference configures it, stepped per update: a second implementation
    lr, min_lr, warmup_lr, warmup, cosine, total = 0.5, 0.005, 0.001, 7, 40, 46
    # the schedule train builds
    factor = warmup_cosine(warmup, cosine, style="timm", warmup_start=warmup_lr / lr, min_ratio=min_lr / lr)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    timm_scheduler = CosineLRScheduler(optimizer, t_initial=cosine, lr_min=min_lr, warmup_t=warmup,
                                       warmup_lr_init=warmup_lr, t_in_epochs=False)
    for step in range(total):
        timm_scheduler.step_update(step)
        assert lr * factor(step) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-9, abs=1e-12), step
    assert factor(0) == pytest.approx(warmup_lr / lr)
    assert factor(20) == pytest.approx(min_lr / lr + (1 - min_lr / lr) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factor(45) == pytest.approx(min_lr / lr)  # cool-down


def test_weight_decay_skips_conv_blocks_norms_and_biases() -> None:
    net = ElasticViTSupernet(SMOKE_SPACE, num_classes=4)
    # the optimizer train builds
    decayed, plain = build_optimizer(net, "adamw", 1e-3, 0.05, no_decay=one_dim_or_in(conv_block_parameters(net)),
                                     betas=(0.9, 0.999), eps=1e-8).param_groups
    assert (decayed["weight_decay"], plain["weight_decay"]) == (0.05, 0.0)
    decayed_ids = {id(p) for p in decayed["params"]}
    for name, param in net.named_parameters():
        transformer_or_head = ".attn." in name or ".ffn." in name or name.startswith("head.")
        assert (id(param) in decayed_ids) == (transformer_or_head and param.dim() > 1), name
    assert len(decayed["params"]) + len(plain["params"]) == len(list(net.parameters()))


def _sample(seed: int) -> StepSample:
    import random

    rng = random.Random(seed)
    uniform = tuple(random_subnet(rng, SMOKE_SPACE) for _ in range(3))
    return StepSample(0, uniform, (None,) * 3, (False,) * 3, min_subnet(SMOKE_SPACE))


def test_step_gradients_equal_one_summed_loss() -> None:
    torch.manual_seed(0)
    net = ElasticViTSupernet(SMOKE_SPACE, num_classes=4, dropout=0.0).train()
    teacher_nets = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 48 * 48, 4)) for _ in range(2)]
    teachers = TeacherEnsemble(teacher_nets, temperature=0.5)
    images, labels = torch.randn(6, 3, 48, 48), torch.tensor([0, 1, 2, 3, 0, 1])
    sample = _sample(3)
    start = _state(net)
    result = train_step(net, sample, images, labels, torch.optim.SGD(net.parameters(), lr=0.0), teachers,
                        settings=StepSettings(agc_clip_factor=None))
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    # second implementation: explicit teacher average, one summed loss, one backward
    net.load_state_dict(start)
    net.zero_grad()
    with torch.no_grad():
        target = sum((t(images) / 0.5).softmax(-1) for t in teacher_nets) / 2
    total, probs, expected_losses = 0.0, [], []
    for subnet in sample.uniform:
        net.set_active(subnet)
        logits = net(images)
        loss = -(target * logits.log_softmax(-1)).sum(1).mean()
        total, probs = total + loss, probs + [logits.detach().softmax(-1)]
        expected_losses.append(loss.item())
    net.set_active(sample.min)
    loss = adaptive_alpha_divergence(net(images), (sum(probs) / 3).log(), -1.0, 1.0, 5.0)
    expected_losses.append(loss.item())
    (total + loss).backward()
    assert list(result["losses"].values()) == pytest.approx(expected_losses, rel=1e-5, abs=1e-6)  # float32 sums
    expected = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    assert expected.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6)


def test_scorer_is_minus_ce_with_batch_statistics_and_leaves_no_trace() -> None:
    torch.manual_seed(1)
    net = ElasticViTSupernet(SMOKE_SPACE, num_classes=4, dropout=0.5).train()
    net(torch.randn(4, 3, 48, 48))  # non-trivial running statistics
    net.set_active(max_subnet(SMOKE_SPACE))
    images, labels = torch.randn(8, 3, 48, 48), torch.tensor([0, 1, 2, 3] * 2)
    before = _state(net)
    subnet = _sample(5).uniform[0]
    score = make_scorer(net, images, labels)(subnet)
    after = _state(net)
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)
    assert net.training and net.active_subnet == max_subnet(SMOKE_SPACE)
    # reference value: a copy whose BN layers use batch statistics (running stats discarded), no dropout
    reference = copy.deepcopy(net)
    reference.set_active(subnet)
    reference.eval()
    for module in reference.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.train()
    with torch.no_grad():
        expected = -F.cross_entropy(reference(images), labels).item()
    assert score == pytest.approx(expected, rel=1e-6)


def test_teacher_ensemble_and_local_weights(tmp_path: Path) -> None:
    torch.manual_seed(2)
    source = build_teacher("resnet10t", num_classes=3)
    path = tmp_path / "t1.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = build_teacher("resnet10t", str(path), num_classes=3)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    with pytest.raises(ValueError, match="do not fit"):
        build_teacher("resnet10t", str(path), num_classes=5)
    ensemble = build_teachers([{"name": "resnet10t", "pretrained": str(path)}, {"name": "resnet10t"}], 0.2, 3)
    images = torch.randn(2, 3, 32, 32)
    ensemble.train()
    assert not ensemble.training and not any(p.requires_grad for p in ensemble.parameters())
    with torch.no_grad():
        expected = sum((t.eval()(images) / 0.2).softmax(-1) for t in ensemble.teachers) / 2
    torch.testing.assert_close(ensemble(images), expected)
    assert build_teachers([], 0.2) is None


def test_representatives_and_sampler_statistics(smoke_tables: Path) -> None:
    tables = FlopsTables.load(smoke_tables, SMOKE_SPACE)
    for level, subnet in representative_subnets(tables).items():
        macs = np.sort(tables.macs[level])
        index = tables.subnets(level).index(subnet)
        assert tables.macs[level][index] == macs[len(macs) // 2]
    sampler = ComplexityAwareSampler(tables, seed=0)
    history = [{"level": 1.0, "mean_mmacs": 1.1, "from_bank": [False, True, False]},
               {"level": 1.4, "mean_mmacs": 1.5, "from_bank": [False] * 3},
               {"level": 1.0, "mean_mmacs": 1.2, "from_bank": [True] * 3}]
    stats = sampler_statistics(history, sampler)
    assert stats["walk"] == [1.0, 1.4, 1.0] and stats["max_level_change"] == 1
    assert stats["mean_mmacs_gap"] == pytest.approx((0.4 + 0.3) / 2)
    assert stats["bank_draw_fraction"] == pytest.approx(4 / 9)


def test_smoke_run_on_fashion_mnist(tmp_path: Path, fake_fashion_mnist: Path) -> None:
    """data=fashion_mnist (the fixture's IDX files: 10 classes, 5 train and 2 test images each) trains and scores."""
    cfg = compose_config("elasticvit", "train", _without_generate(_overrides(
        tmp_path, tmp_path / "tables10.npz", "data=fashion_mnist", f"data.root={fake_fashion_mnist}",
        "supernet.num_classes=10", "data.train_subset=4", "epochs=1", "max_steps_per_epoch=1", "eval.every_epochs=1",
        "eval.bn_calibration_batches=1", "teachers.models=[]", "mixup.enabled=false")))
    summary = train(cfg)
    assert summary["steps"] == 1 and summary["complete"]
    assert summary["supernet"].head.classifier.weight.shape[0] == 10
    for level, top1 in summary["eval"].items():  # the 20 test images: top-1 is a multiple of 1/20
        assert round(top1 * 20, 6) == round(top1 * 20) and 0.0 <= top1 <= 1.0, level


def test_smoke_run_decreases_the_loss(tmp_path: Path, smoke_tables: Path) -> None:
    # one batch of 8 images per epoch, label targets, no augmentation: every subnet fits it
    cfg = compose_config("elasticvit", "train", _overrides(
        tmp_path, smoke_tables, "epochs=16", "max_steps_per_epoch=null", "teachers.models=[]", "mixup.enabled=false",
        "optim.lr=0.3", "step.label_smoothing=0.0", "data.train_aug.scale=[1.0,1.0]", "data.train_aug.hflip=0.0",
        train_per_class=2))
    summary = train(cfg)
    losses = [np.mean([v for k, v in step["losses"].items() if k != "min"]) for step in summary["history"]]
    assert summary["complete"] and len(losses) == 16
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:2])
    assert set(summary["eval"]) == {"top1/0.6", "top1/1", "top1/1.4", "top1/1.8"}
    stats = summary["sampler_statistics"]
    assert stats["max_level_change"] <= 1 and 0 < stats["bank_fill"]["0.6"] + stats["bank_fill"]["1"] + \
        stats["bank_fill"]["1.4"] + stats["bank_fill"]["1.8"]
    out = Path(cfg.output_dir)
    latest = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    assert (latest / "model.safetensors").is_file() and (latest / "ema.safetensors").is_file()
    assert not (out / "checkpoints_ema").exists()
    assert (out / "train.json").is_file() and (out / "metrics.json").is_file()


def test_resumed_run_equals_the_uninterrupted_run(tmp_path: Path, smoke_tables: Path) -> None:
    # bank draws happen within these steps; the conflict monitor's previous gradient is resumed too
    common = ("epochs=3", "sampling.probability.start=0.6", "monitor.gradient_conflict=true")
    straight = train(compose_config("elasticvit", "train", _overrides(tmp_path / "a", smoke_tables, *common)))
    first = train(compose_config("elasticvit", "train",
                                 _overrides(tmp_path / "b", smoke_tables, *common, "stop_after_epochs=1")))
    assert first["steps"] == 2 and not first["complete"]
    resumed = train(compose_config("elasticvit", "train", _overrides(tmp_path / "b", smoke_tables, *common)))
    assert resumed["steps"] == 6 and len(resumed["history"]) == 4
    assert resumed["history"] == straight["history"][2:]
    cosines = [step["grad_cos"] for step in straight["history"]]
    assert cosines[0] is None and all(-1 <= c <= 1 for c in cosines[1:])
    assert resumed["history"][0]["grad_cos"] is not None  # compared with the step before the interruption
    assert resumed["gradient_conflict"] == straight["gradient_conflict"]  # the series is carried in the checkpoint
    again = train(compose_config("elasticvit", "train", _overrides(tmp_path / "b", smoke_tables, *common)))
    assert again["steps"] == 6 and not again["history"]  # complete: nothing trained
    assert again["gradient_conflict"] == straight["gradient_conflict"]
    assert again["train_seconds"] == resumed["train_seconds"] > 0
    assert any(flag for step in straight["history"] for flag in step["from_bank"])
    assert resumed["sampler"].state_dict() == straight["sampler"].state_dict()
    for model in ("supernet", "ema"):
        expected = _state(straight[model].module if model == "ema" else straight[model])
        actual = _state(resumed[model].module if model == "ema" else resumed[model])
        assert expected.keys() == actual.keys()
        for key, value in expected.items():
            torch.testing.assert_close(actual[key], value, rtol=0, atol=0, msg=f"{model}: {key}")


def _ddp_worker(output_root: str, tables: str) -> dict:
    cfg = compose_config("elasticvit", "train", _overrides(
        Path(output_root), Path(tables), "epochs=1", "max_steps_per_epoch=null", "data.batch_size=4",
        "trainer.backend=gloo", "sampling.probability.start=0.6"))
    summary = train(cfg)
    state = summary["supernet"].state_dict()
    return {"subnets": [[*step["uniform"], step["min"]] for step in summary["history"]],
            "sampler": summary["sampler"].state_dict(), "names": sorted(state),
            "weights": torch.cat([state[k].float().reshape(-1) for k in sorted(state)])}


def test_two_process_ddp_ranks_agree(tmp_path: Path, smoke_tables: Path) -> None:
    rank0, rank1 = spawn_local(_ddp_worker, 2, args=(str(tmp_path), str(smoke_tables)))
    # 16 images over 2 ranks, 4 per batch: 2 steps of 4 subnets, drawn identically on both ranks
    assert len(rank0["subnets"]) == 2 and rank0["subnets"] == rank1["subnets"]
    assert rank0["sampler"] == rank1["sampler"]  # banks scored with all-reduced losses
    assert rank0["names"] == rank1["names"]
    torch.testing.assert_close(rank0["weights"], rank1["weights"], rtol=0, atol=0)


def _files(root: Path) -> list[tuple[str, int]]:
    return sorted((p.relative_to(root).as_posix(), p.stat().st_size) for p in root.rglob("*") if p.is_file())


def test_bad_inputs_leave_a_finished_run_untouched(tmp_path: Path, smoke_tables: Path) -> None:
    from moonlit.common.errors import InputError
    from moonlit.common.train.checkpoint import CheckpointError, save_checkpoint

    out = tmp_path / "elasticvit" / "train" / "smoke" / "adjacent_step"
    for step in (2, 4):  # a finished run's checkpoints (without EMA weights) and outputs
        save_checkpoint(out / "checkpoints", step=step, model=torch.nn.Linear(2, 2), keep_last=None)
    (out / "train.json").write_text("{}\n")
    before = _files(tmp_path)
    bad_inputs = {
        "data path": ((InputError, FileNotFoundError), "missing/train is not a directory",
                      ["resume=false", "data=imagenet", f"data.root={tmp_path / 'missing'}"]),
        "teacher name": (InputError, r"teachers.models\[0\].name: 'resnet_nonexistent' is not a timm model",
                         ["resume=false", "teachers.models=[{name: resnet_nonexistent}]"]),
        "teacher weights": (InputError, r"teachers.models\[0\].pretrained: .*absent.safetensors is not a file",
                            ["resume=false", f"teachers.models=[{{name: resnet10t, pretrained: {tmp_path}/absent.safetensors}}]"]),
        "space": (ValueError, r"space config lacks key\(s\) \[.head_hidden.\]", ["resume=false", "~space.head_hidden"]),
        "tables": (InputError, "no FLOPs tables", ["resume=false", f"tables.path={tmp_path / 'none.npz'}",
                                                   "tables.build_if_missing=false"]),
        "checkpoint without EMA": (CheckpointError, "no EMA weights but ema.enabled=true", ["resume=true"]),
    }
    for name, (error, message, overrides) in bad_inputs.items():
        with pytest.raises(error, match=message):
            overrides = _without_generate(_overrides(tmp_path, smoke_tables, *overrides))
            train(compose_config("elasticvit", "train", overrides))
        assert _files(tmp_path) == before, name  # nothing deleted, written, moved or generated

    summary = train(compose_config("elasticvit", "train", _overrides(tmp_path, smoke_tables, "resume=false", "epochs=1")))
    assert summary["complete"] and summary["steps"] == 2
    (aside,) = out.glob("checkpoints.replaced-*")  # the earlier run's checkpoints, moved whole
    assert _files(aside) == [(p[len("elasticvit/train/smoke/adjacent_step/checkpoints/"):], size) for p, size in before
                             if p.startswith("elasticvit/train/smoke/adjacent_step/checkpoints/")]
