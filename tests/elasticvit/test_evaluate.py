"""ElasticViT evaluation: BN-recalibrated top-1 of a supernet subnet on generated images; checkpoints; fitness."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from moonlit.common.config import compose_config
from moonlit.common.errors import InputError
from moonlit.common.train.checkpoint import save_checkpoint
from moonlit.elasticvit.evaluate import (
    SubnetEvaluator,
    _subnet_of,
    evaluate,
    load_supernet,
    run,
)
from moonlit.elasticvit.flops import subnet_complexity
from moonlit.elasticvit.models import named_subnet
from moonlit.elasticvit.search import run_search
from moonlit.elasticvit.space import decode, encode

SMALL_DATA = ["data=generated", "data.batch_size=4", "data.num_workers=0", "data.generate.train_per_class=6",
              "data.generate.val_per_class=6", "data.generate.image_size=32", "data.img_size=64", "data.cache=true",
              "bn_batches=2"]


def test_model_may_be_a_name_an_encoding_or_the_registry_form() -> None:
    assert _subnet_of("S1") == _subnet_of("elastic_S1") == named_subnet("elasticvit_s1")
    text = encode(named_subnet("T2"))
    assert _subnet_of(text) == _subnet_of(f"elasticvit:{text}") == decode(text)


def test_unknown_model_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    cfg = compose_config("elasticvit", "evaluate", ["model=S9", "checkpoint=none", *SMALL_DATA,
                                                    f"output_dir={tmp_path / 'out'}"])
    with pytest.raises(InputError, match="'S9' is neither a named model"):
        run(cfg)
    assert not (tmp_path / "out").exists()


def test_evaluate_generated_images_recalibrates_bn(tmp_path: Path) -> None:
    cfg = compose_config("elasticvit", "evaluate", ["model=T1", "checkpoint=none", *SMALL_DATA,
                                                    f"output_dir={tmp_path}"])
    metrics = run(cfg)
    assert metrics == json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["subnet"] == encode(named_subnet("T1")) and metrics["checkpoint"] is None
    assert 0.0 <= metrics["top1"] <= 100.0 and metrics["data"]["builder"] == "GeneratedData"
    assert metrics["mmacs"] == pytest.approx(subnet_complexity(named_subnet("T1"), 4).macs / 1e6)
    # 4 classes x 6 generated val images, in batches of 4: accuracy is a multiple of 100 / 24
    assert (metrics["top1"] * 24 / 100) == pytest.approx(round(metrics["top1"] * 24 / 100))


def test_recalibration_replaces_supernet_statistics_and_matches_the_static_subnet() -> None:
    torch.manual_seed(0)
    supernet = load_supernet(None, num_classes=4)
    generator = torch.Generator().manual_seed(1)
    calibration = [(torch.randn(4, 3, 64, 64, generator=generator) * 2 + 0.5, torch.zeros(4, dtype=torch.long))
                   for _ in range(2)]
    evaluation = [(torch.randn(4, 3, 64, 64, generator=generator), torch.arange(4))]
    subnet = named_subnet("T1")
    before = supernet.first_bn.running_mean.clone()
    evaluator = SubnetEvaluator(supernet, calibration, evaluation, calibration_batches=2)
    top1 = evaluator.accuracy(subnet)
    width = subnet.stem_width
    after = supernet.first_bn.running_mean
    assert not torch.allclose(after[:width], before[:width]) and int(supernet.first_bn.num_batches_tracked) == 2
    # first BN's statistics by hand: mean over the two batches of the batch means of first_conv(resized x)
    with torch.no_grad():
        means = [torch.nn.functional.conv2d(
            torch.nn.functional.interpolate(x, size=(128, 128), mode="bicubic", align_corners=False),
            supernet.first_conv.weight[:width], None, 2, 1).mean(dim=(0, 2, 3)) for x, _ in calibration]
    torch.testing.assert_close(after[:width], torch.stack(means).mean(0), rtol=1e-4, atol=1e-5)
    # the extracted static subnet carries the recalibrated statistics: same logits, same top-1
    static = supernet.get_active_subnet().eval()
    x = torch.nn.functional.interpolate(evaluation[0][0], size=(128, 128), mode="bicubic", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(static(x), supernet(evaluation[0][0]), rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        right = int((static(x).argmax(dim=1) == evaluation[0][1]).sum())
    assert top1 == 100.0 * right / 4  # percent, as the search's fitness and metrics.json
    assert not supernet.training  # the fitness leaves the supernet in eval mode
    assert evaluator([subnet, subnet]) == [top1, top1]  # recalibrated from scratch each time: deterministic


def test_evaluate_loads_our_supernet_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(2)
    trained = load_supernet(None, num_classes=4)
    with torch.no_grad():
        trained.head.classifier.bias.add_(3.0)  # something a fresh supernet does not have
    save_checkpoint(tmp_path / "checkpoints", step=7, model=trained)
    loaded = load_supernet(tmp_path / "checkpoints", num_classes=4)
    torch.testing.assert_close(loaded.head.classifier.bias, trained.head.classifier.bias)
    cfg = compose_config("elasticvit", "evaluate", ["model=T1", f"checkpoint={tmp_path / 'checkpoints'}",
                                                    "num_classes=4", *SMALL_DATA, f"output_dir={tmp_path / 'eval'}"])
    assert evaluate(cfg)["checkpoint"] == str(tmp_path / "checkpoints")


def test_evaluate_takes_the_ema_of_a_checkpoint_that_has_one(tmp_path: Path) -> None:
    import copy

    torch.manual_seed(3)
    trained = load_supernet(None, num_classes=4)
    ema = copy.deepcopy(trained)
    with torch.no_grad():
        trained.head.classifier.bias.fill_(1.0)
        ema.head.classifier.bias.fill_(-2.0)  # the EMA differs from the trained weights
    save_checkpoint(tmp_path / "checkpoints", step=3, model=trained, modules={"ema": ema})
    by_default = load_supernet(tmp_path / "checkpoints", num_classes=4)
    assert torch.all(by_default.head.classifier.bias == -2.0)
    model_weights = load_supernet(tmp_path / "checkpoints", num_classes=4, which="model")
    assert torch.all(model_weights.head.classifier.bias == 1.0)


def test_search_with_supernet_fitness_on_generated_data(tmp_path: Path) -> None:
    overrides = ["fitness=supernet", "checkpoint=null", *SMALL_DATA, "data.holdout_per_class=2", "eval_batches=2",
                 "evolution.population=4", "evolution.parents=2", "evolution.mutations=2", "evolution.crossovers=1",
                 "evolution.iterations=1", "constraint.min_mmacs=40", "constraint.max_mmacs=200",
                 f"seeds.encodings=[{encode(named_subnet('T1'))}]",
                 f"output_dir={tmp_path}"]
    result = run_search(compose_config("elasticvit", "search", overrides))
    records = json.loads((tmp_path / "search_state.json").read_text())["records"]
    assert result["evaluated"] == len(records) >= 5
    for record in records:
        assert 0.0 <= record["fitness"] <= 100.0 and 40 <= record["objectives"]["mmacs"] <= 200
        # 4 classes x 2 held-out images, 2 batches of 4: top-1 is a multiple of 12.5
        assert record["fitness"] / 12.5 == pytest.approx(round(record["fitness"] / 12.5))
