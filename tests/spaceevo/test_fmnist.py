"""SpaceEvo on Fashion-MNIST (moonlit.spaceevo.fmnist): candidates, overrides, targets, bad input, the smoke run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from moonlit.common.config import compose_config
from moonlit.common.errors import InputError
from moonlit.spaceevo.fmnist import check_config, ranking_candidates, run, supernet_overrides, target_checks
from moonlit.spaceevo.fmnist_deploy import ConstantTableLatency
from moonlit.spaceevo.lut_builder import ConstantLatency
from moonlit.spaceevo.space import SpaceEncoding, SubnetEncoding, check_subnet
from moonlit.spaceevo.subnet_search import SubnetComplexity

SPACE = SpaceEncoding.decode("onnxw_tiny-333333-000000")
# spaces/onnxw_tiny.yaml by hand: first_conv and stage0 width 8; window 0 of stages 1-6 starts at their first
# width (8, 16, 24, 32, 48, 64); depth 1 and ResNet's smallest kernel 3 / expand 0.5 everywhere.
MIN_SUBNET = "d1#1#1#1#1#1#1#1_k3#3#3#3#3#3#3#3_w8#8#8#16#24#32#48#64_e0#0.5#0.5#0.5#0.5#0.5#0.5#0.5_r64"


def _cfg(tmp_path: Path, fmnist_root: Path, *overrides: str):
    return compose_config("spaceevo", "fmnist", [f"data.root={fmnist_root}", "teacher.pretrained=null",
                                                  f"output_dir={tmp_path / 'out'}", *overrides])


def test_ranking_candidates_hold_the_extremes_are_distinct_and_seeded() -> None:
    subnets = ranking_candidates(SPACE, 64, 12, seed=3)
    names = [str(s) for s in subnets]
    assert len(names) == 12 == len(set(names))
    assert names[0] == MIN_SUBNET
    # the largest: depth 2 in stages 1-5, the top of each window 0 (8, 16, 32, 40, 56, 72), kernel 7, expand 1.5
    assert names[1].startswith("d1#1#2#2#2#2#2#1_k3#3#7#7") and "_w8#8#8#8#16#16#32#32#40#40#56#56#72_e" in names[1]
    assert all(s.resolution == 64 for s in subnets)
    for subnet in subnets:
        check_subnet(subnet, SPACE)
    assert names == [str(s) for s in ranking_candidates(SPACE, 64, 12, seed=3)]
    assert names[2:] != [str(s) for s in ranking_candidates(SPACE, 64, 12, seed=4)][2:]


def test_constant_table_latency_prices_searchable_blocks_by_their_macs() -> None:
    # min subnet vs the same with stage 3's kernel 3 -> 7: only that ResNet block's MACs change, so the latency
    # changes by table[ResNet] x (whole-subnet MMACs difference, counted independently by SubnetComplexity)
    small = SubnetEncoding.decode(MIN_SUBNET)
    kernels = small.kernels[:4] + (7,) + small.kernels[5:]
    large = SubnetEncoding.decode(MIN_SUBNET.replace("_k3#3#3#3#3#", "_k3#3#3#3#7#"))
    assert large.kernels == kernels
    counter = SubnetComplexity(SPACE, 10, [64])
    macs_gap = (counter(large)[0] - counter(small)[0]) / 1e6
    assert macs_gap > 0
    for per_mflop in (0.0015, 0.003):
        latency = ConstantTableLatency(SPACE, ConstantLatency({"ResNet": per_mflop}), [0.05, 0.1], [64, 96], 10, [64])
        assert latency.latency_ms(large) - latency.latency_ms(small) == pytest.approx(per_mflop * macs_gap)
        assert latency.latency_ms(small) > 0.05  # the other-latency constant at 64 px plus the blocks
    free = ConstantTableLatency(SPACE, ConstantLatency({"ResNet": 0.0}), [0.05, 0.1], [64, 96], 10, [64])
    assert list(free([small, large])) == [0.05, 0.05]


def test_target_checks_against_the_issue_thresholds() -> None:
    def checks(tau: float, int8: float, fake_quant: float) -> tuple[bool, bool]:
        result = target_checks({"fidelity": {"kendall_tau": tau}},
                               {"test_top1": {"int8_onnx": int8, "fake_quant": fake_quant}})
        return result["kendall_tau"]["met"], result["int8_vs_fake_quant_points"]["met"]

    assert checks(0.6, 88.1, 88.5) == (True, True)      # tau at the target; |88.1 - 88.5| = 0.4 <= 0.5
    assert checks(0.59, 87.9, 88.5) == (False, False)   # 0.6 points apart
    assert checks(0.71, 89.0, 88.5) == (True, True)     # INT8 above fake quant by 0.5: the gap is absolute
    assert checks(math.nan, 88.5, 88.5) == (False, True)  # constant scores: tau undefined, not met


def test_supernet_overrides_compose_the_fashion_mnist_experiment(tmp_path: Path, fake_fashion_mnist: Path) -> None:
    cfg = _cfg(tmp_path, fake_fashion_mnist, "supernet.fp32_epochs=3", "supernet.qat_epochs=1", "data.train_subset=4")
    train = compose_config("spaceevo", "train_supernet", supernet_overrides(cfg, SPACE, tmp_path / "sn"))
    assert train.space == str(SPACE) and train.output_dir == str(tmp_path / "sn") and train.resume
    assert train.data._target_.endswith("FashionMNISTData") and train.data.root == str(fake_fashion_mnist)
    assert (train.data.img_size, train.data.train_subset, train.data.holdout_per_class) == (64, 4, 100)
    assert train.data.normalization == "imagenet" and train.data.train_aug.auto_augment is None
    assert list(train.supernet.resolutions) == [64] and train.supernet.num_classes == 10
    assert (train.fp32.epochs, train.qat.epochs, train.fp32.batch_size, train.qat.batch_size) == (3, 1, 64, 64)
    assert train.max_steps_per_epoch is None  # the stand-alone subnets train on full epochs too


@pytest.mark.parametrize("override, names", [
    ("resolution=80", "resolution"),
    ("ranking.count=1", "ranking.count"),
    ("ranking.candidates=4", "ranking.candidates"),
    ("subnet_search.band=[0.6,0.2]", "subnet_search.band"),
    ("subnet_search.constraint=flops", "subnet_search.constraint"),
    ("latency.source=litepred", "latency.source"),
    ("search.other_latency_ms=[0.05]", "search.other_latency_ms"),
    ("supernet.qat_epochs=0", "supernet.qat_epochs"),
    ("data.val_subset=0", "val_subset"),
    ("supernet.space=onnxw-151122-023231", "supernet.space"),
    ("teacher.pretrained=/no/such/lite0.safetensors", "teacher.pretrained"),
    ("hyperspace=nope", "hyperspace"),
    ("supernet.train_overrides=['no_such_key=1']", "supernet.train_overrides"),
])
def test_bad_input_is_one_line_before_anything_is_written(tmp_path: Path, fake_fashion_mnist: Path, override: str,
                                                          names: str) -> None:
    cfg = _cfg(tmp_path, fake_fashion_mnist, override)
    with pytest.raises(InputError) as error:
        run(cfg)
    message = str(error.value)
    assert "\n" not in message and (names in message or names.split(".")[-1] in message)
    assert not (tmp_path / "out").exists()


def test_missing_fashion_mnist_names_get_data(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="get_data.sh"):
        check_config(_cfg(tmp_path, tmp_path / "absent"))
    assert not (tmp_path / "out").exists()


SMOKE = ["data.train_subset=8", "data.holdout_per_class=2", "data.batch_size=8", "data.eval_batch_size=100",
         "data.num_workers=0", "data.val_subset=20", "kd.fp32_steps=2", "kd.lsq_steps=1", "kd.batch_size=8",
         "lut.num_samples=4", "lut.batch_size=8", "lut.calib_batches=1", "lut.eval_batches=1", "search.num_samples=400",
         "search.budget=24", "search.population=8", "search.tournament=4", "search.rerank_top=4",
         "search.rerank_repeats=5", "supernet.fp32_epochs=1", "supernet.qat_epochs=1", "supernet.batch_size=16",
         "supernet.bn_batches=2", "ranking.count=3", "ranking.candidates=20", "ranking.bn_batches=2", "ranking.jobs=1",
         "subnet_search.population=8", "subnet_search.parents=4", "subnet_search.mutations=4",
         "subnet_search.crossovers=4", "subnet_search.iterations=2", "subnet_search.bn_batches=2",
         "subnet_search.batch_size=10", "deploy.calibration_batches=1"]


@pytest.mark.slow
@pytest.mark.real_data
def test_smoke_run_writes_the_report_and_resumes(tmp_path: Path, real_artefact) -> None:
    real_artefact("fashion_mnist")
    real_artefact("efficientnet_lite0")
    cfg = compose_config("spaceevo", "fmnist", [*SMOKE, f"output_dir={tmp_path}"])
    results = run(cfg)
    assert len(results["ranking"]["subnets"]) == 3
    macs = [s["macs"] for s in results["ranking"]["subnets"]]
    assert macs == sorted(macs)  # spread_by_complexity: smallest, middle, largest
    ranking = results["ranking"]
    assert ranking["seeds"] == [0, 1]  # the config's default: two stand-alone seeds, scored by their mean
    for row in ranking["subnets"]:
        assert len(row["standalone_by_seed"]) == 2
        assert row["standalone"] == pytest.approx(sum(row["standalone_by_seed"]) / 2)
    assert -1.0 <= ranking["seed_agreement"]["mean_tau"] <= 1.0 or math.isnan(ranking["seed_agreement"]["mean_tau"])
    assert (tmp_path / "ranking" / "subnet0" / "seed1" / "result.json").is_file()
    assert results["deploy"]["test_images"] == 200
    for key in ("int8_onnx", "fake_quant", "fp32"):
        assert 0.0 <= results["deploy"]["test_top1"][key] <= 100.0
    for name in ("section.json", "fmnist.md", "score_over_search.png", "ranking/ranking.png",
                 "deploy/best_int8.onnx"):
        assert (tmp_path / name).is_file(), name
    report = (tmp_path / "fmnist.md").read_text()
    assert "python -m moonlit.spaceevo.fmnist" in report and "Kendall tau" in report
    stages = [tmp_path / s / "result.json" for s in ("space_search", "supernet", "ranking", "subnet_search", "deploy")]
    written = [p.stat().st_mtime_ns for p in stages]
    again = run(cfg)  # every stage finished: read back, nothing retrained
    assert [p.stat().st_mtime_ns for p in stages] == written
    assert again["deploy"] == json.loads((tmp_path / "deploy" / "result.json").read_text())
