"""Sandwich supernet training (moonlit.spaceevo.train_supernet): step, schedule, smoke run, resume, 2-process DDP."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from moonlit.common.config import compose_config, config_dir
from moonlit.common.train.dist import spawn_local
from moonlit.common.train.losses import adaptive_alpha_divergence
from moonlit.common.train.optim import build_optimizer
from moonlit.common.train.schedules import warmup_cosine
from moonlit.spaceevo.space import SubnetEncoding
from moonlit.spaceevo.supernet import Supernet
from moonlit.spaceevo.train_supernet import (
    SandwichSettings,
    sandwich_step,
    train_supernet,
)

SEARCH_RESULT = Path(__file__).resolve().parents[3] / "shared" / "data" / "spaceevo" / "search_result.yaml"
SMALL_SPACE = "onnxw-000000-000000"  # MobileNetV1Dual everywhere: 5.8M parameters, fast on one core


def _overrides(output_root: Path, *extra: str) -> list[str]:
    return [
        "experiment=smoke", f"paths.output_root={output_root}", f"space={SMALL_SPACE}",
        "supernet.resolutions=[32]", "data.img_size=32", "data.generate.image_size=32",
        "data.generate.train_per_class=2", "data.generate.val_per_class=2", "data.train_aug.scale=[1.0,1.0]",
        "fp32.batch_size=8", "qat.batch_size=8", "fp32.warmup_epochs=0", "optim.lr=0.005", "sandwich.dropout=0.0",
        "eval.bn_calibration_batches=1", "eval.every_epochs=100", "trainer.log_every=1000",
        "max_steps_per_epoch=null", *extra,
    ]


def _state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_warmup_cosine_matches_the_formula() -> None:
    # the schedule train_supernet builds: the reference's WarmupCosineLR (warm-up and cosine multiply)
    factor = warmup_cosine(10, 100, style="multiply", warmup_start=0.001)
    assert factor(0) == pytest.approx(0.001)
    # step 5: halfway through the linear warm-up, times the cosine at 5 / 100
    assert factor(5) == pytest.approx((0.001 * 0.5 + 0.5) * 0.5 * (1 + math.cos(math.pi * 0.05)))
    assert factor(10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    assert factor(50) == pytest.approx(0.5)
    assert factor(100) == pytest.approx(0.0)
    assert warmup_cosine(0, 4, style="multiply", warmup_start=0.001)(0) == 1.0


def test_weight_decay_only_on_conv_and_linear_weights() -> None:
    net = Supernet.from_encoding(SMALL_SPACE, num_classes=4, resolutions=[32])
    # the optimizer train_supernet builds (configs/spaceevo/train_supernet.yaml's optim values)
    decayed, plain = build_optimizer(net, "sgd", 0.1, 1e-5, momentum=0.9, nesterov=True).param_groups
    assert decayed["weight_decay"] == 1e-5 and plain["weight_decay"] == 0.0
    assert decayed["nesterov"] and decayed["momentum"] == 0.9
    decayed_ids = {id(p) for p in decayed["params"]}
    for name, param in net.named_parameters():
        expected = name.endswith("weight") and param.dim() > 1  # not BN gammas, biases, LSQ+ scales/offsets
        assert (id(param) in decayed_ids) == expected, name
    assert len(decayed["params"]) + len(plain["params"]) == len(list(net.parameters()))


def test_sandwich_step_sums_the_four_subnet_gradients() -> None:
    torch.manual_seed(0)
    net = Supernet.from_encoding(SMALL_SPACE, num_classes=4, resolutions=[32, 40])
    images, labels = torch.randn(6, 3, 40, 40), torch.tensor([0, 1, 2, 3, 0, 1])
    settings = SandwichSettings(dropout=0.0, grad_clip_value=None)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    result = sandwich_step(net.train(), images, labels, optimizer, np.random.default_rng(11), settings)
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    subnets = {k: SubnetEncoding.decode(v) for k, v in result["subnets"].items()}
    assert list(subnets) == ["max", "random0", "random1", "min"]
    assert subnets["max"] == net.set_max() and subnets["min"] == net.set_min()
    rng = np.random.default_rng(11)
    assert [subnets["random0"], subnets["random1"]] == [net.sample_active(rng), net.sample_active(rng)]

    # a second implementation: one loss, summed over the subnets, one backward
    net.zero_grad()
    net.set_active(subnets["max"])
    teacher = net(images)
    total = F.cross_entropy(teacher, labels, label_smoothing=0.1)
    expected_losses = [total.item()]
    for name in ("random0", "random1", "min"):
        net.set_active(subnets[name])
        loss = adaptive_alpha_divergence(net(images), teacher.detach(), -1.0, 1.0, 5.0)
        expected_losses.append(loss.item())
        total = total + loss
    total.backward()
    assert list(result["losses"].values()) == pytest.approx(expected_losses, rel=1e-5)
    expected = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    assert expected.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6)


def test_smoke_run_decreases_the_loss_and_runs_qat(tmp_path: Path) -> None:
    # One batch of 8 images per epoch without augmentation: the largest subnet fits it.
    # 20 steps: over 10 the loss of four sandwich subnets sharing weights is too noisy to compare
    # (the 1-thread and 2-thread runs, which differ only in float rounding, ended at 0.75x and 0.59x).
    cfg = compose_config("spaceevo", "train_supernet", _overrides(tmp_path, "fp32.epochs=20", "qat.epochs=2"))
    summary = train_supernet(cfg)
    fp32, qat = summary["phases"]["fp32"], summary["phases"]["qat"]
    max_losses = [step["losses"]["max"] for step in fp32["history"]]
    assert len(max_losses) == 20 and fp32["complete"] and qat["complete"] and qat["steps"] == 2
    assert np.mean(max_losses[-5:]) < 0.6 * np.mean(max_losses[:2])
    assert qat["lr"] == pytest.approx(fp32["lr"] / 10)
    assert set(qat["eval"]) == {"qat/max_top1", "qat/min_top1"}
    quantizers = [m for n, m in summary["supernet"].named_modules() if n.endswith("_quant")]
    assert all(q.bits == 8 for q in quantizers) and any(bool(q.initialized) for q in quantizers)
    out = Path(cfg.output_dir)
    assert (out / "checkpoints" / "fp32" / "latest").is_file() and (out / "checkpoints" / "qat" / "latest").is_file()
    assert (out / "metrics.json").is_file() and (out / "train_supernet.json").is_file()


def test_resumed_run_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    common = ("fp32.epochs=2", "qat.epochs=1", "ema.enabled=true", "ema.decay=0.5")
    straight = train_supernet(compose_config("spaceevo", "train_supernet", _overrides(tmp_path / "a", *common)))
    first = train_supernet(compose_config("spaceevo", "train_supernet",
                                          _overrides(tmp_path / "b", *common, "stop_after_epochs=1")))
    assert first["phases"]["fp32"]["steps"] == 1 and "qat" not in first["phases"]
    resumed = train_supernet(compose_config("spaceevo", "train_supernet", _overrides(tmp_path / "b", *common)))
    assert resumed["phases"]["fp32"]["steps"] == 2 and len(resumed["phases"]["fp32"]["history"]) == 1
    assert resumed["phases"]["fp32"]["history"][0] == straight["phases"]["fp32"]["history"][1]
    expected, actual = _state(straight["supernet"]), _state(resumed["supernet"])
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=0, atol=0, msg=key)
    emas = []
    for run in ("a", "b"):  # the EMA is saved inside each qat checkpoint
        qat = tmp_path / run / "spaceevo" / "supernet" / "smoke" / "checkpoints" / "qat"
        emas.append(load_file(str(qat / (qat / "latest").read_text().strip() / "ema.safetensors")))
    assert emas[0].keys() == emas[1].keys()
    for key, value in emas[0].items():
        torch.testing.assert_close(emas[1][key], value, rtol=0, atol=0, msg=f"ema: {key}")


def _ddp_worker(output_root: str) -> dict:
    cfg = compose_config("spaceevo", "train_supernet", _overrides(
        Path(output_root), "fp32.epochs=1", "qat.epochs=1", "fp32.batch_size=4", "qat.batch_size=4",
        "data.generate.train_per_class=4", "trainer.backend=gloo"))
    summary = train_supernet(cfg)
    subnets = [step["subnets"] for phase in ("fp32", "qat") for step in summary["phases"][phase]["history"]]
    state = summary["supernet"].state_dict()
    return {"subnets": subnets, "names": sorted(state), "weights": torch.cat([state[k].float().reshape(-1)
                                                                            for k in sorted(state)])}


def test_two_process_ddp_ranks_agree(tmp_path: Path) -> None:
    rank0, rank1 = spawn_local(_ddp_worker, 2, args=(str(tmp_path),))
    # 16 images over 2 ranks, 4 per batch: 2 steps per phase, 4 subnets each
    assert len(rank0["subnets"]) == 4 and rank0["subnets"] == rank1["subnets"]
    assert len({s["random0"] for s in rank0["subnets"]}) > 1  # sampled per step
    assert rank0["names"] == rank1["names"]
    torch.testing.assert_close(rank0["weights"], rank1["weights"], rtol=0, atol=0)


def test_experiments_are_the_published_supernets() -> None:
    # every experiment but the reduced runs (smoke: generated images; fmnist: the space search picks the space)
    experiments = {path.stem: yaml.safe_load(path.read_text())["space"]
                   for path in (config_dir("spaceevo") / "experiment").glob("*.yaml")
                   if path.stem not in ("smoke", "fmnist")}
    expected = {"vnni": "onnxw-151122-023231", "vnni_large": "onnxw-121122-133333", "pixel4": "mobilew-122222-155400",
                "pixel4_tiny": "mobilew-332160-134200", "pixel4_medium": "mobilew-112220-154410"}
    assert experiments == expected
    if SEARCH_RESULT.is_file():
        published = yaml.safe_load(SEARCH_RESULT.read_text())["specific_supernet_encoding_dict"]
        assert sorted(published.values()) == sorted(expected.values())
    cfg = compose_config("spaceevo", "train_supernet", ["experiment=vnni"])
    assert (cfg.fp32.epochs, cfg.qat.epochs, cfg.qat.lr_scale, cfg.optim.lr) == (360, 50, 0.1, 0.1)


def _without_generate(overrides: list[str]) -> list[str]:
    """With data=imagenet chosen, the generated-images settings are not keys of the data node."""
    return [o for o in overrides if not o.startswith("data.generate")] if "data=imagenet" in overrides else overrides


def _files(root: Path) -> list[tuple[str, int]]:
    return sorted((p.relative_to(root).as_posix(), p.stat().st_size) for p in root.rglob("*") if p.is_file())


def test_bad_inputs_leave_a_finished_run_untouched(tmp_path: Path) -> None:
    from moonlit.common.errors import InputError
    from moonlit.common.train.checkpoint import CheckpointError, save_checkpoint

    out = tmp_path / "spaceevo" / "supernet" / "smoke"
    for phase in ("fp32", "qat"):  # a finished run's checkpoints (without EMA weights) and summary
        for step in (1, 2):
            save_checkpoint(out / "checkpoints" / phase, step=step, model=torch.nn.Linear(2, 2), keep_last=None)
    (out / "train_supernet.json").write_text("{}\n")
    before = _files(tmp_path)
    bad_inputs = {
        "data path": ((InputError, FileNotFoundError), "missing/train is not a directory",
                      ["resume=false", "data=imagenet", f"data.root={tmp_path / 'missing'}"]),
        "space name": (InputError, "'onnxw-99x' is not a space encoding", ["resume=false", "space=onnxw-99x"]),
        "checkpoint without EMA": (CheckpointError, "no EMA weights but ema.enabled=true",
                                   ["resume=true", "ema.enabled=true"]),
    }
    for name, (error, message, overrides) in bad_inputs.items():
        with pytest.raises(error, match=message):
            overrides = _without_generate(_overrides(tmp_path, *overrides))
            train_supernet(compose_config("spaceevo", "train_supernet", overrides))
        assert _files(tmp_path) == before, name  # nothing deleted, written, moved or generated

    summary = train_supernet(compose_config("spaceevo", "train_supernet", _overrides(
        tmp_path, "resume=false", "fp32.epochs=1", "qat.epochs=0")))
    assert summary["phases"]["fp32"]["complete"]
    (aside,) = out.glob("checkpoints.replaced-*")  # the earlier run's checkpoints, moved whole
    prefix = "spaceevo/supernet/smoke/checkpoints/"
    assert _files(aside) == [(p[len(prefix):], size) for p, size in before if p.startswith(prefix)]
