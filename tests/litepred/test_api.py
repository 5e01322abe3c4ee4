"""LitePred's public API (moonlit.litepred.api) and the stand-in predictors of moonlit.litepred.testing,
checked against values derived by hand or by a second route."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from moonlit.common.errors import InputError
from moonlit.common.export.onnx import export_onnx
from moonlit.litepred import api
from moonlit.litepred.testing import STAND_IN_KERNEL_TYPES, stand_in_predictor


def small_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4)).eval()


def test_rules_are_the_recorded_rules_else_the_name() -> None:
    assert stand_in_predictor(["conv"], platform={"name": "debug", "rules": "ort-int8"}).rules == "ort-int8"
    assert stand_in_predictor(["conv"], platform={"name": "ort-int8"}).rules == "ort-int8"
    assert stand_in_predictor(["conv"], platform={"name": "ort-int8", "rules": None}).rules == "ort-int8"
    with pytest.raises(InputError, match="neither 'rules' nor 'name'"):
        _ = stand_in_predictor(["conv"], platform={"backend": "debug"}).rules


def test_stand_in_predicts_its_documented_formula_and_survives_save(tmp_path: Path) -> None:
    predictor = stand_in_predictor(["conv", "fc"], seed=4, kernel_ms=0.02, ms_per_unit=1e-3)
    rng = np.random.default_rng(0)
    conv = rng.uniform(0, 50, (3, len(predictor.regressors["conv"].feature_names)))
    fc = rng.uniform(0, 50, (2, len(predictor.regressors["fc"].feature_names)))
    coef_conv, coef_fc = predictor.regressors["conv"].coef, predictor.regressors["fc"].coef
    assert np.all((coef_conv >= 0.5e-3) & (coef_conv < 1.5e-3))
    by_hand = sum(0.02 + float(row @ coef_conv) for row in conv) + sum(0.02 + float(row @ coef_fc) for row in fc)
    assert predictor.predict_model({"conv": conv, "fc": fc}) == pytest.approx(by_hand, rel=1e-12)
    reloaded = api.load_predictor(predictor.save(tmp_path / "p"))
    assert reloaded.predict_model({"conv": conv, "fc": fc}) == pytest.approx(by_hand, rel=1e-12)
    assert reloaded.kernel_types == ["conv", "fc"] and reloaded.rules == "ort-fp32"
    assert set(stand_in_predictor().kernel_types) == set(STAND_IN_KERNEL_TYPES) >= {"conv", "fc", "attention"}
    with pytest.raises(InputError, match="no features"):
        stand_in_predictor(["conv", "warp"])


def test_predict_module_counts_the_kernels_by_hand() -> None:
    # under ort-fp32 the model is three kernels: Conv+Relu (fused), GlobalAveragePool, Gemm
    predictor = stand_in_predictor(["conv", "gap", "fc"], kernel_ms=0.1, ms_per_unit=0.0)
    prediction = api.predict_module(predictor, small_model(), (torch.zeros(1, 3, 8, 8),))
    assert prediction.kernels == 3 and prediction.unpredicted_kernels == [] and prediction.unassigned_nodes == []
    assert prediction.latency_ms == pytest.approx(0.3)
    without_fc = stand_in_predictor(["conv", "gap"], kernel_ms=0.1, ms_per_unit=0.0)
    partial = api.predict_module(without_fc, small_model(), (torch.zeros(1, 3, 8, 8),))
    assert partial.predicted_kernels == 2 and len(partial.unpredicted_kernels) == 1
    assert partial.latency_ms == pytest.approx(0.2)


def test_predict_module_equals_predicting_the_exported_onnx(tmp_path: Path) -> None:
    predictor = stand_in_predictor(seed=2, platform={"name": "debug", "rules": "ort-int8"})
    model, inputs = small_model(), (torch.zeros(1, 3, 12, 12),)
    path = export_onnx(model, inputs, tmp_path / "m.onnx", check=False)
    from_file = api.predict_onnx(predictor, path)
    from_module = api.predict_module(predictor, model, inputs)
    assert from_module.latency_ms == pytest.approx(from_file.latency_ms, rel=1e-12)
    assert from_module.kernels == from_file.kernels == 3
    # other rules, given explicitly, reach both routes the same way
    assert api.predict_module(predictor, model, inputs, rules="ort-fp32").latency_ms == pytest.approx(
        api.predict_onnx(predictor, path, rules="ort-fp32").latency_ms, rel=1e-12)
    (tmp_path / "broken.onnx").write_bytes(b"not a graph")
    with pytest.raises(InputError, match="broken.onnx"):
        api.predict_onnx(predictor, tmp_path / "broken.onnx")


class MacsPredictor:
    """A hand-written predictor: a model's latency is the sum of its conv kernels' macs_m column, in ms."""

    kernel_types = ["conv"]
    platform = {"name": "ort-fp32"}
    rules = "ort-fp32"

    def predict_models(self, models, apply_overhead: bool = True) -> np.ndarray:
        from moonlit.litepred.predict.features import feature_names

        column = feature_names("conv").index("macs_m")
        return np.array([float(model["conv"][:, column].sum()) if "conv" in model else 0.0 for model in models])


def conv_part(cin: int, cout: int, side: int) -> api.ModelPart:
    return api.ModelPart(f"conv:{cin}-{cout}h{side}", lambda: nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1),
                                                                           nn.ReLU()), (1, cin, side, side))


def test_parts_latency_is_the_sum_over_the_parts_by_hand(tmp_path: Path) -> None:
    parts = {"a": conv_part(3, 8, 8), "b": conv_part(8, 16, 8)}
    # a 3x3 same-padding conv at 8x8: 64 · cout · cin · 9 MACs
    macs_m = {"a": 64 * 8 * 3 * 9 / 1e6, "b": 64 * 16 * 8 * 9 / 1e6}
    latency = api.PartsLatency(MacsPredictor(), lambda keys: [parts[k] for k in keys],
                               api.PartCache("ort-fp32", tmp_path / "parts.jsonl"))
    candidates = ["a", "ab", "abb", "bbba"]
    expected = [sum(macs_m[k] for k in c) for c in candidates]
    np.testing.assert_allclose(latency.predict(candidates), expected, rtol=1e-12)
    assert latency.cache.stats["detected"] == 2  # each distinct part exported once
    constraint = latency.constraint(limit_ms=expected[2], delta_ms=expected[2] - expected[1])
    assert constraint.check(candidates).feasible.tolist() == [False, True, True, False]
    with pytest.raises(InputError, match="differ from the cache"):
        api.PartsLatency(MacsPredictor(), list, api.PartCache("ort-fp32"), rules="ort-int8")


def test_part_cache_file_round_trip_skips_exports(tmp_path: Path) -> None:
    path = tmp_path / "parts.jsonl"
    first = api.PartCache("ort-fp32", path)
    toy = [conv_part(3, 4, 6), conv_part(4, 4, 6)]
    rows = first.rows(toy)
    assert first.stats["detected"] == 2 and len(path.read_text().splitlines()) == 2
    again = api.PartCache("ort-fp32", path)
    assert again.stats["loaded"] == 2 and all(part.key in again for part in toy)
    reloaded = again.rows(toy)
    assert again.stats["detected"] == 0
    assert rows.keys() == reloaded.keys() == {"conv"}
    np.testing.assert_array_equal(rows["conv"], reloaded["conv"])
    other_rules = api.PartCache("ort-int8", path)  # entries of other rules are kept apart
    assert len(other_rules) == 0


def test_part_cache_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "parts.jsonl"
    path.write_text('{"format": "moonlit-litepred-part-kernels", "platform": "ort-fp32"}\n')
    with pytest.raises(InputError, match=r"parts.jsonl:1 is not a part-kernels entry"):
        api.PartCache("ort-fp32", path)
    path.write_text('[1, 2]\n')
    with pytest.raises(InputError, match=r"parts.jsonl:1 has format 'list'"):
        api.PartCache("ort-fp32", path)
    path.write_bytes(b"\xff\xfe{}\n")
    with pytest.raises(InputError, match="not UTF-8"):
        api.PartCache("ort-fp32", path)


def test_part_cache_reads_any_file_or_says_why_not(tmp_path: Path, fuzz_settings) -> None:
    path = tmp_path / "parts.jsonl"
    entry = st.fixed_dictionaries({"format": st.sampled_from(["moonlit-litepred-part-kernels", "x"])}, optional={
        "platform": st.sampled_from(["ort-fp32", "ort-int8", 3]), "rules": st.text(max_size=4),
        "key": st.text(max_size=4), "kernels": st.lists(st.dictionaries(st.sampled_from(["type", "params"]),
                                                                        st.text(max_size=3)), max_size=2)})
    line = st.one_of(st.text(max_size=30), entry.map(lambda e: __import__("json").dumps(e)))

    @fuzz_settings
    @given(st.lists(line, max_size=4))
    def check(lines: list[str]) -> None:
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        try:
            cache = api.PartCache("ort-fp32", path)
        except InputError as error:
            assert "parts.jsonl" in str(error) and "\n" not in str(error)
        else:
            assert len(cache) <= len(lines)

    check()


def test_protocol_summary_by_hand() -> None:
    assert api.protocol_summary([1.0, 1.1], 9.0) == (pytest.approx(1.05), "+10.0%")
    assert api.protocol_summary([2.0], 9.0) == (2.0, "–")
    assert api.protocol_summary([], 9.0) == (9.0, "–")


def test_measure_like_predictor_takes_a_predictor_or_its_metadata() -> None:
    from moonlit.litepred.testing import debug_latency_ms

    model, inputs = small_model(), (torch.zeros(1, 3, 8, 8),)
    predictor = stand_in_predictor(["conv"], platform={"name": "debug", "backend": "debug"})
    truth = debug_latency_ms(model, inputs)
    assert api.measure_like_predictor(predictor, [(model, inputs)]) == [[pytest.approx(truth)] * 2]
    assert api.measure_like_predictor(predictor.platform, [(model, inputs)], repeats=1) == [[pytest.approx(truth)]]


def test_import_moonlit_litepred_stays_light() -> None:
    code = ("import sys, moonlit.litepred as l; assert 'torch' not in sys.modules, 'torch'; "
            "assert l.Predictor.__name__ == 'PlatformPredictor'; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = __import__("moonlit.litepred").litepred.nothing


def test_the_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).resolve().parents[2] / "LitePred" / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Using LitePred from another package", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)  # no built predictor here: the stand-in
    namespace: dict = {}
    exec(compile(code, "LitePred/README.md", "exec"), namespace)
    latency = namespace["latency"]
    three, first, two = latency.predict([(16, 16, 16), (16,), (16, 16)])
    # a candidate is the sum of its parts: 3-16 + 2 x 16-16, with one 16-16 worth two - first
    assert three == pytest.approx(first + 2 * (two - first), rel=1e-12)
    assert two > first > 0
    assert latency.cache.stats["detected"] == 3  # conv:3-16, conv:16-32, conv:16-16
