"""Tests for moonlit.common.train.loggers.RunLogger: jsonl records, summary, ranks, wandb offline."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from moonlit.common.train.loggers import RunLogger


@pytest.fixture(autouse=True)
def _rank_zero(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("RANK", raising=False)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_records_and_summary(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with RunLogger(tmp_path, run_name="unit", config={"lr": 0.1, "model": {"depth": 2}}) as run:
        run.log({"loss": 2.5, "acc": 0.25}, step=1)
        run.log({"loss": torch.tensor(1.5), "acc": np.float32(0.5), "tokens": np.int64(640)}, step=2)
        run.log({"lr": 1e-4}, step=3)
        run.log_summary({"best_acc": 0.5, "loss": 1.0})

    records = _records(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(isinstance(r["time"], float) for r in records)
    assert records[0] == {"step": 1, "time": records[0]["time"], "loss": 2.5, "acc": 0.25}
    assert records[1]["loss"] == 1.5 and records[1]["acc"] == 0.5 and records[1]["tokens"] == 640
    assert isinstance(records[1]["tokens"], int)
    # summary: last value per metric, explicit log_summary wins
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary == {"loss": 1.0, "acc": 0.5, "tokens": 640, "lr": 1e-4, "best_acc": 0.5}
    assert json.loads((tmp_path / "config.json").read_text()) == {"lr": 0.1, "model": {"depth": 2}}
    lines = [r.getMessage() for r in caplog.records if r.name == "moonlit.run.unit"]
    assert len(lines) == 3 and lines[0].startswith("step 1 |") and "loss=2.5000" in lines[0]


def test_reopening_appends(tmp_path: Path) -> None:
    with RunLogger(tmp_path, run_name="a") as run:
        run.log({"loss": 1.0}, step=0)
    with RunLogger(tmp_path, run_name="a") as run:
        run.log({"loss": float("nan")}, step=1)
    records = _records(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1] and math.isnan(records[1]["loss"])


def test_bad_input_is_rejected(tmp_path: Path) -> None:
    run = RunLogger(tmp_path, run_name="bad")
    with pytest.raises(ValueError, match="reserved"):
        run.log({"step": 1.0}, step=1)
    with pytest.raises(ValueError, match="'name' has value 'x'"):
        run.log({"name": "x"}, step=1)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        run.log({"vec": torch.ones(2)}, step=1)
    with pytest.raises(ValueError, match="step must be"):
        run.log({"loss": 1.0}, step=-1)
    run.close()
    run.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        run.log({"loss": 1.0}, step=2)
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    with pytest.raises(ValueError, match="mode 'cloud'"):
        RunLogger(tmp_path, run_name="w", wandb={"project": "p", "mode": "cloud"})
    with pytest.raises(ValueError, match="project"):
        RunLogger(tmp_path, run_name="w", wandb={"mode": "offline"})


def test_other_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    with RunLogger(tmp_path / "quiet", run_name="r") as run:
        run.log({"loss": 1.0}, step=0)
    assert not (tmp_path / "quiet").exists()
    with RunLogger(tmp_path / "own", run_name="r", rank_zero_only=False) as run:
        run.log({"loss": 1.0}, step=0)
    assert sorted(p.name for p in (tmp_path / "own").iterdir()) == ["metrics_rank1.jsonl"]
    assert _records(tmp_path / "own" / "metrics_rank1.jsonl")[0]["loss"] == 1.0


def test_wandb_offline_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with RunLogger(tmp_path, run_name="offline", config={"lr": 0.1},
                   wandb={"project": "moonlit-test", "mode": "offline"}) as run:
        run.log({"loss": 0.5}, step=1)
        run.log({"loss": 0.25}, step=2)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert _records(tmp_path / "metrics.jsonl")[-1]["loss"] == 0.25
