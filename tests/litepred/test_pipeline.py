"""The LitePred pipeline end to end on the deterministic ``debug`` backend (apps: build, profile, predict, evaluate)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from moonlit.common.config import compose_config
from moonlit.litepred.apps import build, calibrate, evaluate, predict, profile
from moonlit.litepred.apps.settings import resolve_spec
from moonlit.litepred.kernels.detect import detect_kernels
from moonlit.litepred.pipeline import (
    KernelCache,
    export_spec,
    predict_architectures,
    profile_kernels,
)
from moonlit.litepred.predict.evaluate import earlier_pass_agreement
from moonlit.litepred.predict.features import feature_names, features
from moonlit.litepred.predict.predictor import PlatformPredictor
from moonlit.litepred.profile import get_platform
from moonlit.litepred.profile.dataset import ProfileDataset
from moonlit.litepred.profile.debug import DebugBackend, DebugCostModel
from moonlit.litepred.zoo import heldout_architectures

SMALL = ["platform=debug", "architectures.train=6", "architectures.families=null", "architectures.calibration=6",
         "budget.kernels=160", "budget.min_per_type=10", "heldout.n=4",
         "heldout.families=[spaceevo-like,elasticvit-like]", "heldout.speed_models=1", "heldout.batch_architectures=50",
         "heldout.kernel_remeasure=20", "regressor=forest"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("litepred")
    build.run(compose_config("litepred", "litepred", [*SMALL, f"paths.output_root={root}"]))
    return root / "litepred"


def test_build_writes_a_loadable_predictor(built: Path) -> None:
    predictor = PlatformPredictor.load(built / "predictors" / "debug")
    summary = json.loads((built / "predictors" / "debug" / "build.json").read_text())
    assert summary["kernels"]["measured"] + len(summary["kernels"]["failed"]) == summary["sampled"]
    assert summary["kernels"]["failed"] == []
    assert set(predictor.kernel_types) == set(summary["kernel_types"])
    assert summary["overhead"]["models"] == 6 and summary["overhead"]["fitted"]
    records = ProfileDataset(built / "profile.jsonl").records(backend="debug", kind="kernel")
    assert len(records) == summary["sampled"]
    assert summary["kernel_profiling_seconds_total"] == pytest.approx(sum(r.metadata["seconds"] for r in records))


def test_profile_again_measures_nothing_new(built: Path) -> None:
    cfg = compose_config("litepred", "litepred", [*SMALL, f"paths.output_root={built.parent}"])
    again = profile.run(cfg)
    assert again["kernels"]["measured"] == 0
    assert again["kernels"]["already_measured"] == again["sampled"]
    assert again["calibration_models"]["measured"] == 0


def test_calibrate_follows_a_uniformly_slower_machine(built: Path, tmp_path: Path) -> None:
    # another session's machine: the same synthetic platform with every cost 1.25x
    base = DebugCostModel()
    slower = dataclasses.replace(base, compute_fixed_ms=1.25 * base.compute_fixed_ms,
                                 other_fixed_ms=1.25 * base.other_fixed_ms, macs_per_ms=base.macs_per_ms / 1.25,
                                 vector_ops_per_ms=base.vector_ops_per_ms / 1.25,
                                 bytes_per_ms=base.bytes_per_ms / 1.25, call_overhead_ms=1.25 * base.call_overhead_ms)
    line = [*SMALL, f"paths.output_root={built.parent}", "overhead.per_type=false", "overhead.weight_rates=0"]
    # the build's own pass (0) and a pass on the slower machine (1), each fitted with one line
    same = calibrate.run(compose_config("litepred", "litepred", [*line, "calibrate.repeat=0",
                                                                  f"calibrate.out_dir={tmp_path / 'pass0'}"]))
    slow = calibrate.run(compose_config("litepred", "litepred", [*line, "calibrate.repeat=1",
                                                                  f"calibrate.out_dir={tmp_path / 'pass1'}"]),
                         backend=DebugBackend("debug", cost_model=slower))
    assert same["now_vs_pass0"] is None and slow["now_vs_pass0"] == pytest.approx(1.25, rel=0.01)
    assert slow["profiling"]["measured"] == 6 and same["profiling"]["measured"] == 0  # pass 0 was stored
    # a least-squares line through measurements 1.25x as long is the same line 1.25x as steep and high
    assert slow["overhead"]["slope"] == pytest.approx(1.25 * same["overhead"]["slope"], rel=0.01)
    assert slow["overhead"]["intercept"] == pytest.approx(1.25 * same["overhead"]["intercept"], rel=0.05, abs=1e-3)
    specs = heldout_architectures(4, families=["spaceevo-like", "elasticvit-like"])
    cache = KernelCache(built / "kernels-debug.jsonl", "debug")
    before, _ = predict_architectures(PlatformPredictor.load(tmp_path / "pass0"), cache, specs)
    after, _ = predict_architectures(PlatformPredictor.load(tmp_path / "pass1"), cache, specs)
    np.testing.assert_allclose(after / before, 1.25, rtol=0.02)
    # the kernel regressors are kept, the original predictor is untouched
    kept = PlatformPredictor.load(built / "predictors" / "debug").kernel_types
    assert PlatformPredictor.load(tmp_path / "pass1").kernel_types == kept
    assert json.loads((tmp_path / "pass1" / "calibrate.json").read_text())["repeat"] == 1
    with pytest.raises(ValueError, match="calibrate.repeat must be >= 0"):
        calibrate.run(compose_config("litepred", "litepred", [*line, "calibrate.repeat=-1"]))


def test_predict_equals_the_sum_of_kernel_predictions(built: Path, tmp_path: Path) -> None:
    spec = heldout_architectures(4, families=["spaceevo-like", "elasticvit-like"])[-1]
    path = export_spec(spec, tmp_path / "model.onnx")
    cfg = compose_config("litepred", "litepred", [*SMALL, f"paths.output_root={built.parent}", f"model={path}"])
    result = predict.run(cfg)
    predictor = PlatformPredictor.load(built / "predictors" / "debug")
    total = 0.0
    overhead = predictor.overhead
    for kernel in detect_kernels(path, "debug").kernels:  # one kernel at a time, no batching
        kind = kernel.config.type
        if kind in predictor.kernel_types:
            alone = float(predictor.predict_kernels(kind, features(kernel.config)[None])[0])
            if "params_m" in feature_names(kind):  # the weight-read floor, by hand
                params_m = features(kernel.config)[feature_names(kind).index("params_m")]
                alone = max(alone, overhead.weight_ms_per_mparam * params_m)
            total += overhead.scale(kind) * alone
    expected = overhead.slope * total + overhead.intercept
    assert result["latency_ms"] == pytest.approx(expected, rel=1e-9)
    assert result["seconds"]["total"] > 0


def test_evaluate_reports_accuracy_with_the_ceiling(built: Path) -> None:
    evaluate.run(compose_config("litepred", "litepred", [*SMALL, f"paths.output_root={built.parent}"]))
    out = built / "eval" / "debug"
    results = json.loads((out / "results.json").read_text())
    accuracy = results["accuracy"]
    assert accuracy["n"] == 4
    assert accuracy["ceiling_within_10pct"] == 1.0  # debug latency is deterministic: both passes agree exactly
    measured = np.array([m["measured_ms"][0] for m in results["models"]])
    predicted = np.array([m["predicted_ms"] for m in results["models"]])
    within = np.mean(np.abs(predicted - measured) / measured <= 0.10)  # the ±10% definition, by hand
    assert accuracy["within_10pct"] == pytest.approx(within)
    assert (out / "scatter.png").stat().st_size > 5_000
    assert json.loads((out / "section.json").read_text())["name"] == "litepred_debug"
    assert results["batch"]["architectures"] == 50
    kernels = results["kernels"]
    assert kernels["ceiling"]["n"] == 20 and kernels["ceiling"]["within_10pct"] == 1.0  # deterministic backend
    # a new measurement campaign: passes 2 and 3 are measured afresh, the stored passes 0 and 1 stay
    dataset = ProfileDataset(built / "profile.jsonl")
    before = len(dataset.records(backend="debug", kind="model"))
    evaluate.run(compose_config("litepred", "litepred", [*SMALL, f"paths.output_root={built.parent}",
                                                         "heldout.first_repeat=2"]))
    records = ProfileDataset(built / "profile.jsonl").records(backend="debug", kind="model")
    repeats = [r.config["repeat"] for r in records]
    assert len(repeats) == before + 8 and repeats.count(2) == 4 and repeats.count(3) == 4
    # passes 0 and 1 are an earlier session: scored as predictions of pass 2 (deterministic backend: exact)
    second = json.loads((out / "results.json").read_text())
    earlier = second["accuracy"]["earlier_passes"]
    assert [e["pass"] for e in earlier] == [0, 1]
    assert all(e["within_10pct"] == 1.0 and e["median_ratio"] == 1.0 and e["hours_before"] >= 0 for e in earlier)
    assert "earlier_passes" in results["accuracy"] and results["accuracy"]["earlier_passes"] == []
    notes = json.loads((out / "section.json").read_text())["notes"]
    assert sum("(pass 0)" in n or "(pass 1)" in n for n in notes) == 2


def test_earlier_pass_agreement_by_hand() -> None:
    earlier = [1.0, 1.0, 1.0, 1.0]
    now = [1.05, 1.2, 0.95, 1.0]
    # |1 - now| / now: 0.048, 0.167, 0.053, 0 -> three of four within 10%, two within 5%
    agreement = earlier_pass_agreement(earlier, now)
    assert agreement["within_10pct"] == 0.75 and agreement["within_5pct"] == 0.5
    assert agreement["median_ratio"] == pytest.approx(1.025)
    assert agreement["mape"] == pytest.approx((0.05 / 1.05 + 0.2 / 1.2 + 0.05 / 0.95) / 4)


class _Killed(Exception):
    pass


def test_a_killed_profiling_run_resumes_without_repeats(tmp_path: Path) -> None:
    spec = heldout_architectures(4, families=["spaceevo-like"])[0]
    configs = list(dict.fromkeys(k.config for k in detect_kernels(export_spec(spec, tmp_path / "m.onnx"),
                                                                   "debug").kernels))[:12]
    assert len(configs) == 12
    backend = get_platform("debug")
    dataset = ProfileDataset(tmp_path / "profile.jsonl")
    calls = {"n": 0}
    measure_many = backend.measure_many

    def dies_in_the_second_group(items, **options):  # noqa: ANN001, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] > 1:
            raise _Killed("killed")
        return measure_many(items, **options)

    backend.measure_many = dies_in_the_second_group
    with pytest.raises(_Killed):
        profile_kernels(configs, backend, dataset, group_size=5)
    backend.measure_many = measure_many
    resumed = profile_kernels(configs, backend, ProfileDataset(tmp_path / "profile.jsonl"), group_size=5)
    assert resumed["already_measured"] == 5 and resumed["measured"] == len(configs) - 5
    keys = Counter(r.key for r in ProfileDataset(tmp_path / "profile.jsonl").records())
    assert len(keys) == len(configs) and set(keys.values()) == {1}


def test_resolve_spec_and_bad_model_names() -> None:
    spec = resolve_spec("timm-mobile/mobilenetv3_small_100@160")
    assert spec.input_size == (3, 160, 160) and spec.description == "mobilenetv3_small_100"
    with pytest.raises(ValueError, match="neither an .onnx file nor a zoo architecture"):
        resolve_spec("no-such-model")
    with pytest.raises(ValueError, match="predict needs model="):
        predict.run(compose_config("litepred", "litepred", ["platform=debug"]))


def _in_context_file(built: Path, path: Path, model: str, count: int = 12, scale: float = 2.0) -> list:
    """``count`` of the build's kernel records re-labelled as timed inside ``model`` (latency x ``scale``)."""
    from moonlit.litepred.profile.dataset import ProfileRecord

    source = ProfileDataset(built / "profile.jsonl").records(backend="debug", kind="kernel")[:count]
    out = ProfileDataset(str(path))
    records = []
    for r in source:
        measurement = {**r.measurement, **{k: scale * r.measurement[k] for k in ("p10_ms", "median_ms")}}
        record = ProfileRecord.create("debug", "kernel", r.name, dict(r.config), measurement,
                                      {"context": "in-model", "model": model})
        out.append(record)
        records.append(record)
    return records


def test_in_context_kernels_join_the_training_rows(built: Path, tmp_path: Path) -> None:
    from moonlit.litepred.apps.settings import training_specs
    from moonlit.litepred.pipeline import kernel_training_data

    cfg = compose_config("litepred", "litepred", [*SMALL, f"paths.output_root={built.parent}"])
    model = training_specs(cfg)[0].name
    extra = _in_context_file(built, tmp_path / "in_context.jsonl", model)
    dataset = ProfileDataset(built / "profile.jsonl")
    plain = kernel_training_data(dataset, "debug", min_rows=1)
    joined = kernel_training_data(dataset, "debug", min_rows=1, extra=extra)
    for kernel_type, (_, y, _) in joined.items():
        mine = [r.measurement["p10_ms"] for r in extra if r.name == kernel_type]
        assert len(y) == len(plain[kernel_type][1]) + len(mine)
        np.testing.assert_allclose(y[len(y) - len(mine):], np.maximum(mine, 1e-4))  # appended after, in file order
    summary = build.run(compose_config("litepred", "litepred", [
        *SMALL, f"paths.output_root={built.parent}", f"in_context.path={tmp_path / 'in_context.jsonl'}",
        f"predictor_dir={tmp_path / 'with_context'}"]))
    assert summary["in_context"] == {"path": str(tmp_path / "in_context.jsonl"), "records": 12, "models": 1}
    rows = PlatformPredictor.load(tmp_path / "with_context").platform["kernel_rows"]
    assert sum(rows.values()) == sum(len(y) for _, y, _ in plain.values() if len(y) >= 10) + sum(
        1 for r in extra if len(plain[r.name][1]) >= 10)


@pytest.mark.parametrize("problem", ["heldout", "missing", "isolated"])
def test_in_context_file_is_checked_before_anything_is_written(built: Path, tmp_path: Path, problem: str) -> None:
    from moonlit.common.errors import InputError

    path = tmp_path / "in_context.jsonl"
    heldout = heldout_architectures(4, families=["spaceevo-like"])[0].name
    if problem == "heldout":
        _in_context_file(built, path, heldout, count=3)
    elif problem == "isolated":
        source = ProfileDataset(built / "profile.jsonl").records(backend="debug", kind="kernel")[:2]
        ProfileDataset(str(path)).append(source[0])  # an isolated kernel, no in-model context
    out = tmp_path / "out"
    cfg = compose_config("litepred", "litepred", [*SMALL, f"paths.output_root={out}", f"in_context.path={path}"])
    match = {"heldout": "not one of this build's training architectures", "missing": "no such file",
             "isolated": "not an in-model sample"}[problem]
    with pytest.raises(InputError, match=match):
        build.run(cfg)
    assert not out.exists()


def test_evaluate_scores_the_models_that_run_and_names_the_others(built: Path, tmp_path: Path, monkeypatch) -> None:
    """A model the engine cannot run (OpenVINO's plugin crashing on a QDQ graph) is left out and named."""
    from moonlit.litepred.predict import evaluate as evaluate_module

    real = evaluate_module.get_platform

    def failing_first(name, **options):  # noqa: ANN001, ANN003, ANN202
        backend = real(name, **options)
        measure_many = backend.measure_many

        def first_item_fails(items, **kw):  # noqa: ANN001, ANN003, ANN202
            out = measure_many(items, **kw)
            return [RuntimeError("plugin crashed\nsecond line"), *out[1:]]

        backend.measure_many = first_item_fails
        return backend

    monkeypatch.setattr(evaluate_module, "get_platform", failing_first)
    root = tmp_path / "fresh"
    cfg = compose_config("litepred", "litepred", [*SMALL, f"paths.output_root={root}",
                                                  f"predictor_dir={built / 'predictors' / 'debug'}"])
    evaluate.run(cfg)
    results = json.loads((root / "litepred" / "eval" / "debug" / "results.json").read_text())
    failed = {f["model"] for f in results["profiling"]["failed"]}
    assert failed and set(results["unmeasured_models"]) == failed  # each pass's first model failed
    assert all(f["error"] == "plugin crashed" for f in results["profiling"]["failed"])
    assert results["accuracy"]["n"] == 4 - len(failed) == len(results["models"])
    assert not failed & {m["name"] for m in results["models"]}
    notes = json.loads((root / "litepred" / "eval" / "debug" / "section.json").read_text())["notes"]
    assert any(n.startswith(f"Not scored: {len(failed)} held-out model") for n in notes)
