"""The "common" quickstart section, run as users run it (a Hydra app in a subprocess), tiny settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from moonlit.common.report import build_report

# ResNet-18 has 20 convolutions (stem, 16 in the basic blocks, 3 downsample 1x1) and one FC layer;
# after BN folding each is one Conv / Gemm node, and static INT8 should quantize all of them.
RESNET18_CONVS = 20


@pytest.fixture(scope="module")
def quickstart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("qs")
    cmd = [
        sys.executable, "-m", "moonlit.common.quickstart", f"paths.output_root={root}",
        "data.num_classes=3", "data.train_per_class=12", "data.val_per_class=4", "data.holdout_per_class=2",
        "data.image_size=40", "classifier.img_size=32", "classifier.epochs=2", "classifier.batch_size=8",
        "trainer.num_workers=0", "deploy.models=[resnet18]", "deploy.img_size=64",
        "export.calibration_batches=4", "latency.rounds=3", "latency.warmup=1",
    ]
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root / "quickstart" / "common"


def test_trains_resumes_and_checks_int8_accuracy(quickstart_dir: Path) -> None:
    results = json.loads((quickstart_dir / "results.json").read_text())
    training = results["training"]
    # 3 classes x (12 - 2 held out) = 30 training images, batch 8 with drop_last: 3 steps per epoch.
    assert training["steps"] == 2 * 3
    assert [h["epoch"] for h in training["history"]] == [1, 2]
    checkpoints = sorted(p.name for p in (quickstart_dir / "checkpoints").glob("step_*"))
    assert checkpoints == ["step_00000003", "step_00000006"]
    accuracy = results["trained"]["accuracy"]
    assert accuracy["val_images"] == 3 * 4
    assert accuracy["torch FP32"] == pytest.approx(accuracy["ORT FP32"])  # same model, same images
    summary = json.loads((quickstart_dir / "metrics.json").read_text())
    assert summary["val/top1"] == pytest.approx(accuracy["torch FP32"])


def test_writes_latency_quantization_and_plot(quickstart_dir: Path) -> None:
    results = json.loads((quickstart_dir / "results.json").read_text())
    (deployed,) = results["deployed"]
    assert deployed["model"] == "resnet18"
    # torchvision's published ResNet-18 figure is 1.814 GMACs at 224 px; MACs scale with pixels.
    assert deployed["macs"] == pytest.approx(1.814e9 * (64 / 224) ** 2, rel=0.01)
    latency = deployed["latency"]
    assert all(v > 0 for v in latency["median_ms"].values())
    assert deployed["quantization"]["quantized"]["Conv"] == RESNET18_CONVS
    assert deployed["quantization"]["unquantized"]["Conv"] == 0
    fp32, int8 = (quickstart_dir / deployed["onnx"][k] for k in ("fp32", "int8"))
    assert int8.stat().st_size < fp32.stat().st_size / 2  # int8 weights: about a quarter of the bytes
    with Image.open(quickstart_dir / "latency.png") as img:
        assert img.size[0] > 200 and img.size[1] > 200


def test_second_run_resumes_instead_of_retraining(quickstart_dir: Path) -> None:
    root = quickstart_dir.parent.parent
    cmd = [sys.executable, "-c",
           "from moonlit.common.config import compose_config\n"
           "from moonlit.common.quickstart import prepare_data, train\n"
           "from moonlit.common.train.dist import init_distributed\n"
           "from pathlib import Path\n"
           f"cfg = compose_config('common', 'quickstart', ['paths.output_root={root}', 'data.num_classes=3',"
           " 'data.train_per_class=12', 'data.val_per_class=4', 'data.holdout_per_class=2', 'data.image_size=40',"
           " 'classifier.img_size=32', 'classifier.epochs=2', 'classifier.batch_size=8', 'trainer.num_workers=0'])\n"
           "ctx = init_distributed('cpu')\n"
           "_, info = train(cfg, ctx, prepare_data(cfg, ctx), Path(cfg.output_dir))\n"
           "print('RESUMED', info['resumed_from_step'], len(info['history']))\n"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "RESUMED 6 0" in proc.stdout


def test_report_renders_the_section(quickstart_dir: Path) -> None:
    report = build_report(quickstart_dir.parent).read_text()
    section = json.loads((quickstart_dir / "section.json").read_text())
    latency_table = section["tables"][1]
    assert [row[0] for row in latency_table["rows"]] == ["resnet18-trained", "resnet18"]
    assert f"{latency_table['rows'][1][6]:.2f}" in report  # ORT INT8 median, as rendered
    assert "](common/latency.png)" in report
