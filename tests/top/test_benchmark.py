"""``moonlit.top.benchmark`` on tiny dims: every arm timed, schedules hit their MAC targets, outputs written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from moonlit.common.config import compose_config
from moonlit.top.artifacts import save_pruned
from moonlit.top.benchmark import build_model, make_inputs, run_benchmark
from moonlit.top.constraint import EncoderDims, encoder_macs
from moonlit.top.inference import TokenDroppingModel
from moonlit.top.keep_schedules import KeepSchedule, integer_kept_lengths, resample_schedule, uniform_schedule
from moonlit.top.masks import TokenGates
from moonlit.top.model import PruningConfig, ToPModel

TINY = ["model.vocab_size=200", "model.hidden_size=32", "model.num_layers=3", "model.num_heads=4",
        "model.intermediate_size=64", "model.max_position_embeddings=64", "bin_num=50"]


def _learned_model_dir(tmp_path: Path) -> Path:
    cfg = compose_config("top", "benchmark", TINY)
    gates = TokenGates(2, 4)
    gates.deployed_kept_bins.copy_(torch.tensor([2, 4]))  # location 1 keeps half, location 2 everything
    top = ToPModel(build_model(cfg.model), PruningConfig((1, 2), 4, special_token_ids=(101, 102)), gates)
    return save_pruned(tmp_path / "learned", top)


def test_run_benchmark_tiny(tmp_path: Path) -> None:
    learned = _learned_model_dir(tmp_path)
    cfg = compose_config("top", "benchmark", [
        *TINY, f"paths.output_root={tmp_path}", "targets=[1.5,2.0]", "batch_sizes=[1,2]", "rounds_per_batch=[2,2]",
        "warmup=1", "seq_lengths=[32]", "padded_inputs=[[20,40]]", "int8=true", f"+schedules_from.learned={learned}",
        "~schedules_from.quickstart",
        "profile_batch_sizes=[]", "profile_rounds=[]",
    ])
    run_benchmark(cfg)
    out = tmp_path / "top" / "benchmark"
    results = json.loads((out / "results.json").read_text())
    dims = EncoderDims(**results["dims"])
    assert {(c["batch_size"], c["real_length"], c["padded_length"]) for c in results["cases"]} == {
        (1, 32, 32), (2, 32, 32), (1, 20, 40), (2, 20, 40)}
    for case in results["cases"]:
        names = [s["name"] for s in case["schedules"]]
        assert names == ["1.5x", "2x", "learned:learned"]  # named by its key
        expected_arms = {f"{n}/{b}" for n in ["dense", *names] for b in ("torch", "ort_fp32", "ort_int8")}
        assert set(case["median_ms"]) == expected_arms
        assert all(ms > 0 for ms in case["median_ms"].values())
        real, padded = case["real_length"], case["padded_length"]
        dense = encoder_macs([real] * dims.num_layers, dims)
        for schedule in case["schedules"]:
            kept = torch.tensor(schedule["kept_counts"])
            assert kept.shape == (case["batch_size"], dims.num_layers)
            assert (kept[:, 0] == real).all()  # layer 0 sees every real token, never the padding
            measured = dense / float(encoder_macs(kept[0].tolist(), dims))
            if schedule["target_reduction"] is not None:
                assert measured == pytest.approx(schedule["target_reduction"], rel=0.05)
            assert schedule["mac_reduction"] == pytest.approx(measured)
            if padded > real:  # against the padded dense model; layer 0 of the pruned model still runs padded
                physical = [padded, *kept[0, 1:].tolist()]
                assert schedule["mac_reduction_vs_padded"] == pytest.approx(
                    encoder_macs([padded] * dims.num_layers, dims) / encoder_macs(physical, dims))
        learned_counts = case["schedules"][2]["kept_counts"][0]
        # CLS + SEP protected; location 1 keeps 2 of 4 bins = ceil(half) of the others; location 2 keeps all
        half = 2 + -(-(real - 2) // 2)
        assert learned_counts == [real, half, half]
    assert (out / "speedup.png").stat().st_size > 0
    table = (out / "table.md").read_text()
    assert table.count("\n| fixed | 1 |") + table.count("\n| fixed | 2 |") == 12  # 4 cases x 3 schedules


def test_pruned_torch_matches_masked_top() -> None:
    cfg = compose_config("top", "benchmark", TINY)
    model = build_model(cfg.model)
    dims = EncoderDims.from_config(model.config)
    schedule = uniform_schedule(2.0, 24, 2, dims, (1, 2), 50)
    top = ToPModel(model, schedule.pruning((101, 102))).eval()
    inputs = make_inputs(3, 24, 30, vocab_size=200, cls_id=101, sep_id=102, seed=3)
    gates = schedule.gate_values()
    with torch.inference_mode():
        dropped = TokenDroppingModel(top).eval()(**inputs, gate_values=gates)
        masked = top(**inputs, gate_values=gates)
    torch.testing.assert_close(dropped.logits, masked.logits, atol=1e-5, rtol=1e-4)
    assert dropped.kept_counts.tolist() == masked.kept_counts.tolist()
    assert dropped.kept_counts[0].tolist() == integer_kept_lengths(24, 2, schedule, dims.num_layers)
    reduction = encoder_macs([24] * 3, dims) / encoder_macs(dropped.kept_counts[0].tolist(), dims)
    assert reduction == pytest.approx(2.0, rel=0.05)


def test_unreachable_target_names_the_limit() -> None:
    dims = EncoderDims(num_layers=2, hidden_size=32, num_heads=4, head_dim=8, intermediate_size=64)
    with pytest.raises(ValueError, match="out of reach"):
        uniform_schedule(50.0, 16, 2, dims, (1,), 10)


def test_unreachable_target_is_skipped_and_recorded(tmp_path: Path) -> None:
    cfg = compose_config("top", "benchmark", [
        *TINY, f"paths.output_root={tmp_path}", "targets=[1.5,50.0]", "batch_sizes=[1]", "rounds_per_batch=[1]",
        "warmup=0", "seq_lengths=[16]", "padded_inputs=[]", "onnxruntime=false", "profile_batch_sizes=[]",
        "profile_rounds=[]",
    ])
    results = run_benchmark(cfg)
    assert [s["name"] for s in results["cases"][0]["schedules"]] == ["1.5x"]
    assert set(results["cases"][0]["median_ms"]) == {"dense/torch", "1.5x/torch"}
    reasons = {s.get("target_reduction"): s for s in results["skipped"]}
    assert reasons[50.0]["real_length"] == 16
    # The default learned schedule (the quickstart's saved model) does not exist under tmp_path: skipped, said so.
    assert reasons[None]["schedules_from"] == str(tmp_path / "quickstart" / "top" / "prune" / "model")


def test_missing_schedule_folder_is_an_error_when_required(tmp_path: Path) -> None:
    cfg = compose_config("top", "benchmark", [*TINY, f"paths.output_root={tmp_path}", "require_schedules=true"])
    with pytest.raises(FileNotFoundError, match="not a saved pruned model"):
        run_benchmark(cfg)


def test_resample_schedule_keeps_the_profile_by_relative_depth() -> None:
    # 3 layers: layer 1 keeps 1/2, layer 2 keeps 1/2 again -> shares F = 1, 1/2, 1/4 at depths 0, 1/2, 1.
    source = KeepSchedule("learned:x", (1, 2), 4, (2, 2))
    resampled = resample_schedule(source, 3, 5)  # target depths 0, 1/4, 1/2, 3/4, 1
    # F at the target layers (hand): 1, 3/4, 1/2, 3/8, 1/4. Each location keeps F(j) / (share really kept so far),
    # snapped to bins of 4: 3/4 -> 3 (kept .75); .5/.75 -> 2.67 -> 3 (.5625); .375/.5625 -> 2.67 -> 3 (.4219);
    # .25/.4219 -> 2.37 -> 2.
    assert resampled.prune_layers == (1, 2, 3, 4)
    assert resampled.kept_bins == (3, 3, 3, 2)
    assert resampled.name == "learned:x (3->5 layers)"
    with pytest.raises(ValueError, match="at least 2 layers"):
        resample_schedule(source, 1, 5)


def test_resample_schedule_same_depth_is_identity_on_shares() -> None:
    source = KeepSchedule("s", (1, 2, 3), 10, (5, 10, 4))
    resampled = resample_schedule(source, 4, 4)
    assert resampled.kept_bins == (5, 10, 4)


def test_task_profiles_are_timed_at_the_profile_batch_sizes(tmp_path: Path) -> None:
    cfg = compose_config("top", "benchmark", [
        *TINY, f"paths.output_root={tmp_path}", "targets=[3.0]", "profile_targets=[1.5]", "batch_sizes=[]",
        "rounds_per_batch=[]",
        "seq_lengths=[]", "padded_inputs=[]", "onnxruntime=false", "warmup=0",
        "profile_batch_sizes=[2]", "profile_rounds=[1]", "~task_profiles", "+task_profiles={a: [10, 16], b: [12, 24]}",
    ])
    results = run_benchmark(cfg)
    assert [(c["profile"], c["batch_size"], c["real_length"], c["padded_length"]) for c in results["cases"]] == [
        ("a", 2, 10, 16), ("b", 2, 12, 24)]
    assert all([s["name"] for s in c["schedules"]] == ["1.5x"] for c in results["cases"])  # profile_targets only
    with pytest.raises(ValueError, match="one entry per profile batch size"):
        run_benchmark(compose_config("top", "benchmark", [*TINY, "profile_rounds=[1,2]"]))


def test_openvino_arms_and_the_best_pruned_arm(tmp_path: Path) -> None:
    cfg = compose_config("top", "benchmark", [
        *TINY, f"paths.output_root={tmp_path}", "targets=[2.0]", "batch_sizes=[2]", "rounds_per_batch=[2]",
        "warmup=1", "seq_lengths=[32]", "padded_inputs=[]", "openvino=[fp32,bf16,int8]", "~schedules_from.quickstart",
        "profile_batch_sizes=[]", "profile_rounds=[]",
    ])
    results = run_benchmark(cfg)
    precisions = results["openvino_precisions"]
    assert "fp32" in precisions and "int8" in precisions  # every x86 CPU OpenVINO runs has both
    (case,) = results["cases"]
    arms = {f"{n}/{b}" for n in ("dense", "2x") for b in ("torch", "ort_fp32", *(f"ov_{p}" for p in precisions))}
    assert set(case["median_ms"]) == arms
    (entry,) = case["schedules"]
    pruned = {b: case["median_ms"][f"2x/{b}"] for b in ("torch", "ort_fp32", *(f"ov_{p}" for p in precisions))}
    fastest = min(pruned, key=pruned.get)
    assert entry["best_pruned"]["backend"] == fastest
    assert entry["best_pruned"]["speedup_vs_dense_ort_fp32"] == pytest.approx(
        case["median_ms"]["dense/ort_fp32"] / pruned[fastest])
    out = tmp_path / "top" / "benchmark"
    assert (out / "onnx" / "dense_qdq.onnx").is_file() and (out / "onnx" / "pruned_0_qdq.onnx").is_file()
    assert "best pruned arm" in (out / "table.md").read_text()
    from moonlit.common.profiling.openvino import executed_layers, openvino_compile

    for name in ("dense_qdq.onnx", "pruned_0_qdq.onnx"):  # the INT8 arms really run integer matmuls
        layers = executed_layers(openvino_compile(out / "onnx" / name, precision="int8"))
        integer = [layer for layer in layers if layer.layer_type in ("FullyConnected", "MatMul")
                   and layer.runtime_precision in ("u8", "i8")]
        assert len(integer) >= 3 * 4, (name, [(x.layer_type, x.runtime_precision) for x in layers])  # Q, K, V, O...


def test_openvino_runs_the_pruned_onnx_as_onnxruntime_does(tmp_path: Path) -> None:
    import onnxruntime as ort

    from moonlit.common.profiling.openvino import openvino_compile
    from moonlit.top.export import export_pruned_onnx

    cfg = compose_config("top", "benchmark", TINY)
    schedule = uniform_schedule(2.0, 30, 2, EncoderDims.from_config(build_model(cfg.model).config), (1, 2), 50)
    top = ToPModel(build_model(cfg.model), schedule.pruning((101, 102))).eval()
    example = make_inputs(2, 30, 40, vocab_size=200, cls_id=101, sep_id=102, seed=1)
    path = export_pruned_onnx(top, tmp_path / "pruned.onnx", example_batch=example, gate_values=schedule.gate_values())
    inputs = {k: v.numpy() for k, v in make_inputs(3, 24, 32, vocab_size=200, cls_id=101, sep_id=102, seed=2).items()}
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], inputs)[0]
    compiled = openvino_compile(path, precision="fp32")
    logits = compiled.create_infer_request().infer(inputs)[compiled.output("logits")]
    assert logits.shape == reference.shape == (3, 2)  # another batch and length than the export's
    assert abs(logits - reference).max() <= 1e-4 * max(1.0, float(abs(reference).max()))


def test_unknown_openvino_precision_is_one_line() -> None:
    from moonlit.common.errors import InputError

    with pytest.raises(InputError, match=r"openvino holds \['fp16'\]") as caught:
        run_benchmark(compose_config("top", "benchmark", [*TINY, "openvino=[fp16]"]))
    assert "\n" not in str(caught.value)
