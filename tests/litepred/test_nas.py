"""Block-cached kernel rows for NAS: equal to whole-model detection, predictions within 2%, JSONL cache."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from moonlit.elasticvit.latency import SubnetLatency, predict_latency, subnet_parts
from moonlit.elasticvit.models import build_model, named_subnet
from moonlit.elasticvit.space import decode
from moonlit.litepred.graph import graph_from_torch
from moonlit.litepred.kernels import detect_kernels
from moonlit.litepred.nas import ModelPart, PartKernelCache
from moonlit.litepred.pipeline import model_rows
from moonlit.litepred.predictor import PlatformPredictor
from moonlit.litepred.regressors import ForestRegressor
from torch import nn

# T1, and a subnet with a 2-block 5x5 stem, odd feature-map sides (176 -> 88, 44, 22, 11, 11, 6, 3) and v_scale 4
SUBNETS = [named_subnet("T1"), decode("r176_s24d2k5_c24d2e4k5_c32d2e6k3_t48d2m5v4_t80d1m2v3_t160d1m3v2_t160d2m2v4")]


@pytest.fixture(scope="module")
def whole_kernels() -> list[list]:
    """Kernels of each whole static model, exported and detected in one piece."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for subnet in SUBNETS:
            model = build_model(subnet).eval()
            graph = graph_from_torch(model, (torch.zeros(1, 3, subnet.resolution, subnet.resolution),))
            out.append([kernel.config for kernel in detect_kernels(graph, "ort-fp32").kernels])
    return out


@pytest.fixture(scope="module")
def cache() -> PartKernelCache:
    return PartKernelCache("ort-fp32")


@pytest.fixture(scope="module")
def predictor(cache: PartKernelCache) -> PlatformPredictor:
    """A small per-type forest fitted on the subnets' own kernels (target: a smooth function of the features)."""
    pooled: dict[str, list[np.ndarray]] = {}
    for subnet in SUBNETS:
        for kernel_type, rows in cache.rows(subnet_parts(subnet)).items():
            pooled.setdefault(kernel_type, []).append(rows)
    regressors = {}
    for kernel_type, arrays in pooled.items():
        X = np.concatenate(arrays)
        y = 0.01 + 1e-7 * np.abs(X).sum(axis=1)
        regressors[kernel_type] = ForestRegressor(n_estimators=8).fit(X, y, [f"f{i}" for i in range(X.shape[1])])
    return PlatformPredictor(regressors, {"name": "ort-fp32"})


def test_blockwise_kernels_equal_whole_model_detection(cache: PartKernelCache, whole_kernels: list[list]) -> None:
    for subnet, whole in zip(SUBNETS, whole_kernels):
        blocks = cache.model_configs(subnet_parts(subnet))
        # the cuts fall where no fusion rule spans them: same kernels, in the same order
        assert [c.key() for c in blocks] == [c.key() for c in whole]
        rows_blocks = cache.rows(subnet_parts(subnet))
        rows_whole, unknown = model_rows(whole)
        assert unknown == [] and sorted(rows_blocks) == sorted(rows_whole)
        for kernel_type, matrix in rows_whole.items():
            np.testing.assert_array_equal(rows_blocks[kernel_type], matrix)
    # T1's 3 stem/conv blocks of one shape and its layers repeat: fewer exports than parts
    parts = subnet_parts(SUBNETS[0])
    assert len({p.key for p in parts}) < len(parts)


def test_block_prediction_within_two_percent_of_whole_model(cache, predictor, whole_kernels) -> None:
    whole = [model_rows(kernels, predictor.kernel_types)[0] for kernels in whole_kernels]
    expected = predictor.predict_models(whole)
    got = predict_latency(SUBNETS, predictor, cache)
    assert np.all(np.abs(got / expected - 1) <= 0.02)
    np.testing.assert_allclose(got, expected, rtol=1e-12)  # identical rows: identical predictions
    constraint = SubnetLatency(predictor, cache).constraint(limit_ms=float(expected.max()), delta_ms=None)
    check = constraint.check(SUBNETS)
    assert check.feasible.all()
    np.testing.assert_allclose(check.values["latency_ms"], expected, rtol=1e-12)


def test_unknown_kernel_types_are_left_out_and_counted(cache: PartKernelCache, whole_kernels: list[list]) -> None:
    parts = subnet_parts(SUBNETS[0])
    before = cache.unpredicted["softmax"]
    rows = cache.rows(parts, known_types=["conv", "dwconv"])
    assert sorted(rows) == ["conv", "dwconv"]
    softmax = sum(1 for c in whole_kernels[0] if c.type == "softmax")
    assert softmax > 0 and cache.unpredicted["softmax"] - before == softmax


def test_jsonl_cache_round_trip_skips_exports(tmp_path) -> None:
    path = tmp_path / "parts.jsonl"
    built: list[str] = []

    def part(channels: int, side: int) -> ModelPart:
        def build() -> nn.Module:
            built.append(f"{channels}x{side}")
            return nn.Sequential(nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.BatchNorm2d(2 * channels), nn.ReLU())
        return ModelPart(f"toy-conv:c{channels}h{side}", build, (1, channels, side, side))

    model = [part(4, 8), part(4, 8), part(8, 8)]
    first = PartKernelCache("ort-fp32", path)
    rows = first.rows(model)
    assert built == ["4x8", "8x8"] and first.stats["detected"] == 2
    # a conv+bn+relu per part, as the hand count says: 3 conv rows with cin 4, 4, 8
    assert rows["conv"].shape[0] == 3
    assert [c["cin"] for c in first.model_configs(model)] == [4, 4, 8]
    with path.open("a") as handle:
        handle.write(json.dumps({"format": "moonlit-litepred-part-kernels", "platform": "ort-int8",
                                 "rules": "x", "key": "toy-conv:c4h8", "kernels": []}) + "\n")
        handle.write('{"format": "moonlit-litepred-part-kern')  # an interrupted write
    second = PartKernelCache("ort-fp32", path)
    assert second.stats["loaded"] == 2 and len(second) == 2 and "toy-conv:c8h8" in second
    again = second.rows(model)
    assert built == ["4x8", "8x8"] and second.stats["detected"] == 0
    for kernel_type, matrix in rows.items():
        np.testing.assert_array_equal(again[kernel_type], matrix)
    assert len(PartKernelCache("ort-int8", path)) == 0  # other rules: nothing reused
    path.write_text('{"format": "something-else"}\n')
    with pytest.raises(ValueError, match="expected 'moonlit-litepred-part-kernels'"):
        PartKernelCache("ort-fp32", path)
