"""Quickstart section "SpaceEvo": block KD -> LUTs -> space search, then supernet -> subnet search -> INT8 deployment.

The second half (:mod:`moonlit.spaceevo.quickstart_deploy`) is checked on its own on a fixed space with
all six block types; its numbers are re-derived here from the files it wrote (the QAT checkpoint,
the ONNX models, the latency samples) and from whole-model MAC counts, not read back from its summary.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from omegaconf import OmegaConf

from moonlit.common.config import compose_config
from moonlit.common.data.synthetic import write_image_folder
from moonlit.common.export.onnx import export_onnx
from moonlit.common.profiling.flops import count_macs
from moonlit.common.report import build_report
from moonlit.spaceevo.deploy import snap_offsets_to_grid_
from moonlit.spaceevo.lut import LUTSet
from moonlit.spaceevo.ops.lsq_plus import QuantConv2d, QuantLinear
from moonlit.spaceevo.quickstart import run_quickstart
from moonlit.spaceevo.quickstart_deploy import (
    generated_images,
    macs_band,
    onnx_logits,
    run_deploy_steps,
)
from moonlit.spaceevo.space import SpaceEncoding, SubnetEncoding, max_subnet, min_subnet
from moonlit.spaceevo.subnet_search import SupernetFitness, build_data, load_supernet
from moonlit.spaceevo.supernet import Supernet

# block digits 2 5 0 1 3 4: MobileNetV3Res, FusedMBConvRes, MobileNetV1Dual, MobileNetV2Res, ResNet, ResNetSE
ALL_BLOCK_TYPES_SPACE = "onnxw_tiny-250134-010101"
SMALL_DEPLOY_OVERRIDES = [
    "subnet_search.population=4",
    "subnet_search.parents=2", "subnet_search.mutations=2", "subnet_search.crossovers=2",
    "subnet_search.iterations=1", "deploy.rounds=30", "deploy.warmup=5"]


def _static_mmacs(space: SpaceEncoding, subnet: SubnetEncoding, num_classes: int) -> float:
    """MACs of the whole static subnet (one count_macs pass; the search counts block by block)."""
    supernet = Supernet(space, num_classes=num_classes)
    supernet.set_active(subnet)
    model = supernet.get_active_subnet().eval()
    return count_macs(model, torch.zeros(1, 3, subnet.resolution, subnet.resolution)).macs / 1e6


def _check_deploy_steps(results: dict, out: Path, images_root: Path, space: SpaceEncoding, cfg) -> None:
    """The supernet trained both phases, the best subnet honours the band, the INT8 model is the fake-quant one."""
    phases = results["supernet"]["phases"]
    assert list(phases) == ["fp32", "qat"]
    assert phases["fp32"]["steps"] == cfg.supernet.fp32_epochs * cfg.supernet.steps_per_epoch
    assert phases["qat"]["steps"] == cfg.supernet.qat_epochs * cfg.supernet.steps_per_epoch
    checkpoint = Path(results["supernet"]["checkpoint"])
    assert checkpoint == out / "supernet" / "checkpoints" / "qat" and checkpoint.is_dir()

    # the band, from whole-model counts of the space's smallest and largest subnets
    classes = cfg.data.num_classes
    resolutions = space.spec.resolutions
    smallest = _static_mmacs(space, min_subnet(space, resolution=min(resolutions)), classes)
    largest = _static_mmacs(space, max_subnet(space, resolution=max(resolutions)), classes)
    low_fraction, high_fraction = cfg.subnet_search.macs_band
    low, high = results["subnet_search"]["constraint_mmacs"]
    assert low == pytest.approx(smallest + low_fraction * (largest - smallest), rel=1e-9)
    assert high == pytest.approx(smallest + high_fraction * (largest - smallest), rel=1e-9)
    best = SubnetEncoding.decode(results["subnet_search"]["best"]["encoding"])
    best_mmacs = _static_mmacs(space, best, classes)
    assert low <= best_mmacs <= high
    assert results["subnet_search"]["best"]["objectives"]["mmacs"] == pytest.approx(best_mmacs, rel=1e-9)
    assert 0.0 <= results["subnet_search"]["best"]["fitness"] <= 100.0
    search_log = json.loads((out / "subnet_search" / "search.json").read_text())
    assert search_log  # the subnet_search app wrote its log

    deploy = results["deploy"]
    assert deploy["subnet"] == best.encode()
    # rebuild the fake-quant model the way the search scored it (QAT weights, quantizers, BN), offsets snapped
    data = OmegaConf.create({"_target_": "moonlit.common.data.images.ImageFolderData", "root": str(images_root),
                             "img_size": max(resolutions),
                             "holdout_per_class": cfg.data.holdout_per_class,
                             "batch_size": cfg.subnet_search.batch_size, "num_workers": 0, "seed": cfg.seed,
                             "cache": True})
    calibration, holdout, _ = build_data(data, cfg.subnet_search.bn_batches)
    supernet = load_supernet(space, checkpoint, classes, list(resolutions), quantized=True)
    fitness = SupernetFitness(supernet, calibration, holdout, cfg.subnet_search.bn_batches)
    # the deployed subnet is the one the search scored: re-scoring it gives the search's fitness
    assert fitness.accuracy(best) == pytest.approx(results["subnet_search"]["best"]["fitness"])
    assert deploy["search_fitness_rescored"] == pytest.approx(results["subnet_search"]["best"]["fitness"])
    fake_quant = supernet.get_active_subnet().eval()
    snap_offsets_to_grid_(fake_quant)
    images, _ = generated_images(images_root, max(resolutions))
    assert len(images) == classes * (cfg.data.train_per_class + cfg.data.val_per_class)
    int8 = ort.InferenceSession(deploy["int8_onnx"], providers=["CPUExecutionProvider"])
    with torch.no_grad():
        reference = fake_quant(images).numpy()
    deployed = onnx_logits(int8, images)
    agrees = deployed.argmax(1) == reference.argmax(1)
    agreement = float(agrees.mean())
    # The INT8 graph computes the fake-quant model with integer kernels that round intermediate results
    # differently from the float emulation: the logits differ by a few percent of their spread, and a
    # prediction may flip only on a near-tie, where the fake-quant model's top-2 margin is within that
    # difference. A barely trained toy supernet has a few such ties (1-3 of 56 images here).
    top2 = np.sort(reference, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    logit_error = np.abs(deployed - reference).max(axis=1)
    assert np.median(logit_error) <= 0.15 * reference.std()
    assert (margin[~agrees] <= 2 * logit_error[~agrees]).all(), (margin[~agrees], logit_error[~agrees])
    assert agreement >= 0.9
    assert deploy["agreement"]["agreement"] == pytest.approx(agreement)
    assert deploy["agreement"]["images"] == len(images)

    # every conv and the classifier run on learned grids: the first conv's input grid is its LSQ+ scale
    graph = onnx.load(deploy["int8_onnx"]).graph
    quant_ops = [m for m in fake_quant.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    assert deploy["export"]["quantized_ops"] == len(quant_ops)
    initializers = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in graph.initializer}
    first_grid = fake_quant.first_conv.conv.act_quant.export_params()
    assert float(initializers["lsq0_input_scale"]) == pytest.approx(first_grid.scale, rel=1e-6)
    assert int(initializers["lsq0_input_zero_point"]) == first_grid.zero_point
    assert sum(name.endswith("_weight_int8") for name in initializers) == len(quant_ops)

    # the speed-up is the ratio of the medians of the interleaved samples
    samples = deploy["samples_ms"]
    assert len(samples["fp32"]) == len(samples["int8"]) == cfg.deploy.rounds * (cfg.deploy.burst - 1)
    assert deploy["fp32_ms"] == pytest.approx(float(np.median(samples["fp32"])))
    assert deploy["int8_ms"] == pytest.approx(float(np.median(samples["int8"])))
    assert math.isfinite(deploy["speedup"]) and deploy["speedup"] > 0
    assert deploy["speedup"] == pytest.approx(deploy["fp32_ms"] / deploy["int8_ms"])
    assert deploy["mmacs"] == pytest.approx(best_mmacs, rel=1e-9)
    assert json.loads((out / "deploy" / "deploy.json").read_text())["subnet"] == best.encode()


@pytest.fixture
def one_torch_thread():
    """Trained weights (and so the rounding flips agreement allows for) must not depend on the core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_torch_thread")
def test_supernet_search_and_int8_deployment_of_a_fixed_space(tmp_path: Path) -> None:
    cfg = compose_config("spaceevo", "quickstart", [f"output_dir={tmp_path}", *SMALL_DEPLOY_OVERRIDES])
    root = write_image_folder(tmp_path / "images", cfg.data.num_classes, {"train": cfg.data.train_per_class,
                              "val": cfg.data.val_per_class}, image_size=96, seed=cfg.seed)
    space = SpaceEncoding.decode(ALL_BLOCK_TYPES_SPACE)
    out = tmp_path / "deploy_steps"
    results = run_deploy_steps(cfg, space, root, out)
    assert set(results["timing"]) == {"supernet_s", "subnet_search_s", "deploy_s"}
    _check_deploy_steps(results, out, root, space, cfg)


def test_macs_band_rejects_fractions_out_of_order() -> None:
    space = SpaceEncoding.decode(ALL_BLOCK_TYPES_SPACE)
    with pytest.raises(ValueError, match=r"\[0.6, 0.2\]"):
        macs_band(space, 4, [0.6, 0.2])


def test_onnx_logits_runs_a_fixed_batch_model_image_by_image(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    path = export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "fixed.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == 1
    images = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        np.testing.assert_allclose(onnx_logits(session, images), model(images).numpy(), atol=1e-5)


@pytest.mark.slow  # ~25 s alone (more under load); keeps the default tier of these files under ~90 s
@pytest.mark.usefixtures("one_torch_thread")
def test_quickstart_section_end_to_end(tmp_path: Path) -> None:
    cfg = compose_config("spaceevo", "quickstart", [
        f"output_dir={tmp_path / 'spaceevo'}", "kd.fp32_steps=2", "kd.lsq_steps=1", "lut.num_samples=4",
        "search.budget=60", "search.population=20", "search.rerank_top=5", "search.rerank_repeats=4",
        *SMALL_DEPLOY_OVERRIDES])
    results = run_quickstart(cfg)
    out = tmp_path / "spaceevo"
    luts = LUTSet.read(out / "block_lut", "onnxw_tiny")
    assert luts.missing() == [] and all(len(lut.rows) == 4 for lut in luts)
    assert results["constraints_ms"][0] < results["constraints_ms"][1]
    means = [row["mean"] for row in results["ranked"]]
    assert means == sorted(means, reverse=True) and len(means) == 5
    # the re-ranked spaces are the single-pass top 5 of the search history
    history = sorted(results["history"], key=lambda item: -item[1])[:5]
    assert {row["space"] for row in results["ranked"]} == {space for space, _ in history}
    assert all(SpaceEncoding.decode(row["space"]).hyperspace == "onnxw_tiny" for row in results["ranked"])
    assert len(results["kd"]) == 36 and np.isfinite([row[3] for row in results["kd"]]).all()
    # steps 6-8 ran on the top-ranked space
    assert results["space"] == results["ranked"][0]["space"]
    _check_deploy_steps(results, out, out / "images", SpaceEncoding.decode(results["space"]), cfg)
    section = json.loads((out / "section.json").read_text())
    assert section["name"] == "spaceevo" and (out / section["figures"][0]["path"]).is_file()
    deploy_row = section["tables"][-1]["rows"][0]
    assert deploy_row[0] == results["deploy"]["subnet"]
    assert f"{results['deploy']['speedup']:.2f}x" in section["summary"]
    report = build_report(tmp_path).read_text()
    assert "Ranked search spaces" in report and results["ranked"][0]["space"] in report
    assert "learned LSQ+ grids" in report and results["deploy"]["subnet"] in report
