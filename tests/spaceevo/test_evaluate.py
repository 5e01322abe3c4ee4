"""SEQnet registry, evaluation app and downstream fine-tuning (moonlit.spaceevo.{models,evaluate,downstream_cls})."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from moonlit.common.config import compose_config
from moonlit.common.models import create_model
from moonlit.spaceevo import downstream_cls
from moonlit.spaceevo.evaluate import run
from moonlit.spaceevo.models import (
    load_search_result,
    resolve_model,
    seqnet_names,
)
from moonlit.spaceevo.space import SpaceEncoding, min_subnet

SHARED = Path(__file__).resolve().parents[3] / "shared"
SEARCH_RESULT = SHARED / "data" / "spaceevo" / "search_result.yaml"
pytestmark = pytest.mark.skipif(not SEARCH_RESULT.is_file(), reason="shared data folder not beside the clone")


def test_registry_holds_the_published_models():
    specs = load_search_result(SEARCH_RESULT)
    assert len(specs) == 10
    assert seqnet_names(SEARCH_RESULT, hyperspace="onnxw") == [f"SEQnet@vnni-A{i}" for i in range(5)]
    assert str(specs["SEQnet@vnni-A3"].space) == "onnxw-151122-023231"
    assert str(specs["SEQnet@pixel4-A0"].space) == "mobilew-122222-155400"


@pytest.mark.parametrize("name", ["SEQnet@vnni-A0", "SEQnet@pixel4-A0"])
def test_a0_models_are_their_supernets_minimum(name):
    """The notes: each A0 SEQnet is its supernet's minimum subnet (at 160 px)."""
    spec = resolve_model(name, SEARCH_RESULT)
    assert spec.subnet == min_subnet(spec.space, resolution=160)


def test_resolve_model_by_encoding_and_unknown_name():
    space = SpaceEncoding.decode("onnxw-151122-023231")
    subnet = min_subnet(space, resolution=176)
    spec = resolve_model(f"{space}:{subnet.encode()}")
    assert spec.space == space and spec.subnet == subnet
    with pytest.raises(ValueError, match="unknown model 'SEQnet@vnni-A9'"):
        resolve_model("SEQnet@vnni-A9", SEARCH_RESULT)


def test_create_model_of_a_file_entry_loads_our_checkpoint(tmp_path):
    from moonlit.common.train.checkpoint import save_checkpoint
    from moonlit.spaceevo.supernet import Supernet

    torch.manual_seed(0)
    spec = resolve_model("SEQnet@vnni-A0", SEARCH_RESULT)
    supernet = Supernet(spec.space, num_classes=5, resolutions=[160])
    with torch.no_grad():
        for parameter in supernet.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    save_checkpoint(tmp_path / "ckpt", step=1, model=supernet, extra={"phase": "fp32"})
    model = create_model(spec.model_name, checkpoint=tmp_path / "ckpt", num_classes=5)
    supernet.set_active(spec.subnet)
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(model(x), supernet.eval()(x))


def _compose(tree_config: str, overrides: list[str]):
    return compose_config("spaceevo", tree_config, [f"search_result={SEARCH_RESULT}", *overrides])


def test_evaluate_quantized_smoke_with_onnx(tmp_path):
    cfg = _compose("evaluate", [
        "quant=true", "onnx.enabled=true", "onnx.calibration_batches=1", "data=generated",
        f"data.root={tmp_path / 'images'}",
        "data.generate={num_classes:3,train_per_class:6,val_per_class:6,image_size:48,seed:0}",
        "data.batch_size=9", "data.num_workers=0", "bn_calibration_batches=1", f"output_dir={tmp_path / 'out'}",
    ])
    result = run(cfg)  # the app's run: evaluate
    assert result["torch"]["count"] == result["onnx"]["count"] == 18
    assert result["min_max_initialised_quantizers"] == 100  # 49 convs + 1 linear, two quantizers each
    counts = result["onnx_export"]["ort_op_counts"]
    assert counts["QLinearConv"] == 49 and counts.get("Conv", 0) == 0
    assert result["onnx"]["agreement_with_torch"] >= 0.99
    saved = json.loads((tmp_path / "out" / "evaluate.json").read_text())
    assert saved["subnet"] == resolve_model("SEQnet@vnni-A0", SEARCH_RESULT).subnet.encode()


def test_downstream_fine_tuning_smoke(tmp_path):
    cfg = _compose("downstream_cls", [
        "data=generated", f"data.root={tmp_path / 'images'}",
        "data.generate={num_classes:3,train_per_class:8,val_per_class:4,image_size:48,seed:0}",
        "data.batch_size=8", "data.img_size=64", "epochs=1", "trainer.num_workers=0", "bn_calibration_batches=1",
        "model=SEQnet@vnni-A0", f"output_dir={tmp_path / 'out'}",
    ])
    summary = downstream_cls.run(cfg)
    assert summary["num_classes"] == 3
    assert summary["step"] == 3  # 24 training images, batches of 8
    assert 0.0 <= summary["final"]["top1"] <= 1.0
    assert (tmp_path / "out" / "downstream_cls.json").is_file()
