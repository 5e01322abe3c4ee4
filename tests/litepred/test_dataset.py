"""LitePred profiling dataset: JSON Lines append, fsync, resume, truncated-line recovery."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from moonlit.litepred.profile import DebugCostModel, Measurement, get_platform
from moonlit.litepred.profile.dataset import ProfileDataset, ProfileRecord, record_key

CONFIGS = [{"hw": hw, "cin": cin, "cout": 2 * cin, "k": 3, "s": 1} for hw in (8, 16) for cin in (4, 8, 12)]


def _record(config: dict, backend: str = "ort-fp32", kind: str = "kernel", name: str = "conv-bn-relu",
            median: float | None = None) -> ProfileRecord:
    median = float(config["hw"] * config["cin"]) / 100 if median is None else median
    return ProfileRecord.create(backend, kind, name, config, {"median_ms": median, "runs": 50}, {"threads": 1})


def test_record_key_is_readable_and_order_independent() -> None:
    assert record_key("conv", {"k": 3, "cin": 16, "act": "relu"}) == 'conv|act="relu"|cin=16|k=3'
    assert record_key("conv", {"cin": 16, "k": 3}) == record_key("conv", {"k": 3, "cin": 16})
    with pytest.raises(ValueError, match="without '\\|'"):
        record_key("a|b", {})
    with pytest.raises(ValueError, match="config key 'a=b'"):
        record_key("conv", {"a=b": 1})


def test_append_writes_one_fsynced_json_line_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "sub" / "profile.jsonl"
    dataset = ProfileDataset(path)
    assert len(dataset) == 0
    for config in CONFIGS[:3]:
        dataset.append(_record(config))
    dataset.append(_record({"name": "resnet-tiny"}, kind="model", name="resnet-tiny", median=3.0))
    assert len(synced) == 4
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and path.read_text().endswith("\n")
    first = json.loads(lines[0])
    assert first["kernel_type"] == "conv-bn-relu" and "model" not in first
    assert first["key"] == record_key("conv-bn-relu", CONFIGS[0]) and first["measurement"]["median_ms"] == 0.32
    assert json.loads(lines[3])["model"] == "resnet-tiny" and "kernel_type" not in json.loads(lines[3])
    reloaded = ProfileDataset(path)
    assert [r.to_dict() for r in reloaded] == [r.to_dict() for r in dataset]


def test_filters_and_measured_keys(tmp_path: Path) -> None:
    dataset = ProfileDataset(tmp_path / "p.jsonl")
    for config in CONFIGS[:2]:
        dataset.append(_record(config))
    dataset.append(_record(CONFIGS[2], backend="ort-int8"))
    dataset.append(_record({"hw": 8, "cin": 4}, name="dwconv-bn-relu"))
    dataset.append(_record({"hw": 8, "cin": 4}, kind="model", name="tiny"))
    assert dataset.measured_keys("ort-fp32") == {record_key("conv-bn-relu", c) for c in CONFIGS[:2]} | {
        record_key("dwconv-bn-relu", {"hw": 8, "cin": 4})}
    assert dataset.measured_keys("ort-fp32", "model") == {record_key("tiny", {"hw": 8, "cin": 4})}
    assert len(dataset.records(kernel_type="conv-bn-relu")) == 3
    assert len(dataset.records(backend="ort-fp32", kernel_type="conv-bn-relu")) == 2
    assert [r.model for r in dataset.records(kind="model")] == ["tiny"]
    assert dataset.backends() == ["ort-fp32", "ort-int8"]
    with pytest.raises(ValueError, match="kind must be one of"):
        dataset.records(kind="layer")


def test_resume_after_a_kill_measures_every_config_once(tmp_path: Path) -> None:
    path = tmp_path / "resume.jsonl"
    measured: list[str] = []

    def run(kill_after: int | None) -> None:
        dataset = ProfileDataset(path)
        done = dataset.measured_keys("debug")
        for config in CONFIGS:
            if record_key("conv-bn-relu", config) in done:
                continue
            if kill_after is not None and len(measured) == kill_after:
                raise KeyboardInterrupt  # the run is killed between two measurements
            measured.append(record_key("conv-bn-relu", config))
            dataset.append(_record(config, backend="debug"))

    with pytest.raises(KeyboardInterrupt):
        run(kill_after=4)
    run(kill_after=None)
    keys = [r.key for r in ProfileDataset(path)]
    assert len(measured) == len(CONFIGS) and sorted(keys) == sorted(set(keys)) == sorted(measured)


def test_truncated_last_line_is_skipped_then_cut(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "p.jsonl"
    dataset = ProfileDataset(path)
    for config in CONFIGS[:2]:
        dataset.append(_record(config))
    whole = json.dumps(_record(CONFIGS[2]).to_dict()) + "\n"
    with open(path, "a") as file:
        file.write(whole[: len(whole) // 2])  # killed in the middle of a write
    with caplog.at_level(logging.WARNING, logger="moonlit.litepred.profile.dataset"):
        recovered = ProfileDataset(path)
    assert len(recovered) == 2 and "line 3" in caplog.text
    recovered.append(_record(CONFIGS[3]))
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="moonlit.litepred.profile.dataset"):
        assert [r.config for r in ProfileDataset(path)] == [CONFIGS[0], CONFIGS[1], CONFIGS[3]]
    assert caplog.text == ""


def test_complete_last_line_without_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(_record(CONFIGS[0]).to_dict()))  # no trailing newline
    dataset = ProfileDataset(path)
    assert len(dataset) == 1
    dataset.append(_record(CONFIGS[1]))
    assert [r.config for r in ProfileDataset(path)] == CONFIGS[:2]


def test_corrupt_inner_line_is_an_error_with_its_number(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    good = json.dumps(_record(CONFIGS[0]).to_dict())
    path.write_text(good + "\n{not json\n" + good + "\n")
    with pytest.raises(ValueError, match="line 2 is not a valid profile record"):
        ProfileDataset(path)
    bad_median = _record(CONFIGS[0]).to_dict() | {"measurement": {"median_ms": -1.0}}
    path.write_text(good + "\n" + json.dumps(bad_median) + "\n")
    with pytest.raises(ValueError, match="line 2.*median_ms >= 0, got -1.0"):
        ProfileDataset(path)
    missing = {k: v for k, v in _record(CONFIGS[0]).to_dict().items() if k != "config"}
    path.write_text(json.dumps(missing) + "\n" + good + "\n")
    with pytest.raises(ValueError, match="line 1.*missing \\['config'\\]"):
        ProfileDataset(path)


def test_append_dict_and_invalid_record(tmp_path: Path) -> None:
    dataset = ProfileDataset(tmp_path / "p.jsonl")
    stored = dataset.append({"backend": "debug", "kind": "model", "key": "m", "model": "m", "config": {},
                             "measurement": {"median_ms": 1.0}})
    assert stored.model == "m" and stored.time and stored.metadata == {}
    with pytest.raises(ValueError, match="kind must be one of"):
        dataset.append({"backend": "debug", "kind": "layer", "key": "m", "model": "m", "config": {},
                        "measurement": {"median_ms": 1.0}})
    assert len(ProfileDataset(tmp_path / "p.jsonl")) == 1


def test_to_arrays_matches_the_records(tmp_path: Path) -> None:
    dataset = ProfileDataset(tmp_path / "p.jsonl")
    for config in CONFIGS:
        dataset.append(_record(config))
    dataset.append(_record(CONFIGS[0], backend="ort-int8"))
    x, y = dataset.to_arrays("ort-fp32", "conv-bn-relu", ["hw", "cin", "cout"])
    expected_x = np.array([[c["hw"], c["cin"], c["cout"]] for c in CONFIGS], dtype=np.float64)
    np.testing.assert_array_equal(x, expected_x)
    np.testing.assert_allclose(y, expected_x[:, 0] * expected_x[:, 1] / 100)
    empty_x, empty_y = dataset.to_arrays("ort-fp32", "fc", ["cin"])
    assert empty_x.shape == (0, 1) and empty_y.shape == (0,)
    with pytest.raises(ValueError, match="lacks features \\['groups'\\]"):
        dataset.to_arrays("ort-fp32", "conv-bn-relu", ["groups"])


def test_a_real_debug_measurement_round_trips(tmp_path: Path) -> None:
    backend = get_platform("debug", cost_model=DebugCostModel())
    config = {"hw": 8, "cin": 4, "cout": 8, "k": 3, "s": 1}
    module = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU())
    measurement = backend.measure(module, torch.randn(1, 4, 8, 8))
    dataset = ProfileDataset(tmp_path / "p.jsonl")
    dataset.append(ProfileRecord.create(backend.name, "kernel", "conv-relu", config, measurement, backend.metadata()))
    (record,) = ProfileDataset(tmp_path / "p.jsonl").records(backend="debug")
    assert Measurement.from_dict(record.measurement) == measurement
    assert record.median_ms == measurement.median_ms and record.metadata == json.loads(json.dumps(backend.metadata()))
