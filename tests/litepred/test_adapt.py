"""``moonlit-litepred adapt`` end to end on synthetic platforms: pool ``debug``, target ``debug-int8``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moonlit.common.config import compose_config
from moonlit.common.errors import InputError
from moonlit.litepred.apps import adapt as adapt_app
from moonlit.litepred.apps import build
from moonlit.litepred.profile.dataset import ProfileDataset
from moonlit.litepred.transfer.pool import KnowledgePool

SMALL = ["architectures.train=6", "architectures.families=null", "architectures.calibration=6", "budget.kernels=160",
         "budget.min_per_type=10", "heldout.n=6", "heldout.families=[spaceevo-like,elasticvit-like]",
         "regressor=forest"]


@pytest.fixture(scope="module")
def pool_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("adapt")
    build.run(compose_config("litepred", "litepred", ["platform=debug", *SMALL, f"paths.output_root={root}"]))
    return root


def adapt(root: Path, *overrides: str) -> dict:
    adapt_app.run(compose_config("litepred", "litepred", ["platform=debug-int8", *SMALL, f"paths.output_root={root}",
                                                          "adapt.probe=20", "adapt.calibration_models=6", *overrides]))
    return json.loads((root / "litepred" / "adapt" / "debug-int8" / "adapt.json").read_text())


@pytest.mark.slow  # with its pool fixture ~75 s: kept out of the default tier (<= 15 min)
def test_adapt_transfers_from_the_pool_and_beats_scratch(pool_root: Path) -> None:
    fine = adapt(pool_root, "adapt.budget=40", "adapt.method=residual")
    assert fine["source"] == "debug" and fine["similarity"][0]["platform"] == "debug"
    assert fine["cost"]["probe_kernels"] == 20 and fine["cost"]["budget_kernels"] == 40
    assert fine["cost"]["calibration_models"] == 6 and fine["cost"]["total_seconds"] > 0
    # the synthetic target's latency is deterministic: the ceiling is exact
    assert fine["accuracy"]["ceiling_within_10pct"] == 1.0 and fine["accuracy"]["n"] == 6
    # target kernels went to the adaptation dataset, never into the pool's build data
    adapt_data = ProfileDataset(pool_root / "litepred" / "adapt" / "debug-int8" / "profile.jsonl")
    assert len(adapt_data.records(backend="debug-int8", kind="kernel")) == 60
    assert ProfileDataset(pool_root / "litepred" / "profile.jsonl").records(backend="debug-int8", kind="kernel") == []
    # the same 60 target kernels and 6 models, no source: at this budget most types have a handful of rows
    scratch = adapt(pool_root, "adapt.budget=40", "adapt.method=scratch")
    assert scratch["cost"]["kernel_profiling_seconds"] == pytest.approx(fine["cost"]["kernel_profiling_seconds"])
    assert fine["accuracy"]["mape"] < 0.85 * scratch["accuracy"]["mape"], (fine["accuracy"], scratch["accuracy"])
    unadapted = adapt(pool_root, "adapt.budget=0", "adapt.method=source", "adapt.calibration_models=0")
    assert unadapted["cost"]["budget_kernels"] == 0 and unadapted["overhead"]["slope"] == pytest.approx(
        KnowledgePool(pool_root / "litepred" / "predictors").load("debug").overhead.slope)
    saved = KnowledgePool(pool_root / "litepred" / "adapt" / "debug-int8").load("predictor")
    assert saved.platform["transfer"]["method"] == "source"


def test_adapt_refuses_an_empty_pool(tmp_path: Path) -> None:
    (tmp_path / "litepred" / "predictors").mkdir(parents=True)
    cfg = compose_config("litepred", "litepred", ["platform=debug-int8", *SMALL, f"paths.output_root={tmp_path}"])
    with pytest.raises(InputError, match="holds no platform other than the target 'debug-int8'"):
        adapt_app.run(cfg)


@pytest.mark.slow  # with its pool fixture ~75 s: kept out of the default tier (<= 15 min)
def test_transfer_experiment_rows_table_and_plot(pool_root: Path) -> None:
    from moonlit.litepred.transfer import experiment

    overrides = [*SMALL, f"paths.output_root={pool_root}", "experiment.platforms=[debug,debug-int8]",
                 "experiment.targets=[debug-int8]", "experiment.budgets=[0,30]", "adapt.probe=20",
                 "adapt.calibration_models=6", "experiment.methods=[fine-tune,scratch,source]"]
    rows = experiment.run(compose_config("litepred", "transfer", overrides))
    # N=0: the three methods on the probe alone; N=30: three with the VAE, fine-tune with uniform
    assert sorted((r["sampler"], r["budget"], r["method"]) for r in rows) == [
        ("uniform", 30, "fine-tune"), ("vae", 0, "fine-tune"), ("vae", 0, "scratch"), ("vae", 0, "source"),
        ("vae", 30, "fine-tune"), ("vae", 30, "scratch"), ("vae", 30, "source")]
    n30 = [r for r in rows if r["budget"] == 30]
    assert all(r["target_kernels"] == 50 and r["calibration_models"] == 6 for r in n30)
    assert all(r["calibration_models"] == 0 for r in rows if r["budget"] == 0)
    out = pool_root / "litepred" / "transfer"
    table = (out / "TABLE.md").read_text()
    assert "debug-int8: held-out model accuracy after adaptation (6 models)" in table and "Xiaomi11" in table
    assert (out / "accuracy_vs_cost.png").stat().st_size > 5_000
    again = experiment.run(compose_config("litepred", "transfer", overrides))  # resumed: nothing recomputed
    assert len(again) == len(rows)
