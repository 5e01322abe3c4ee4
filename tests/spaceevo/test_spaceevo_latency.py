"""SpaceEvo subnet latency from LitePred block parts: equal to whole-model detection, shapes, predictions, cache."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from moonlit.litepred.graph import graph_from_torch
from moonlit.litepred.kernels import detect_kernels
from moonlit.litepred.nas import PartKernelCache
from moonlit.litepred.pipeline import model_rows
from moonlit.litepred.predictor import PlatformPredictor
from moonlit.litepred.regressors import ForestRegressor
from moonlit.spaceevo.latency import (
    SubnetLatency,
    check_choices,
    output_side,
    predict_latency,
    subnet_parts,
)
from moonlit.spaceevo.space import (
    SpaceEncoding,
    SubnetEncoding,
    min_subnet,
    sample_subnet,
)
from moonlit.spaceevo.supernet import Supernet

VNNI = SpaceEncoding.decode("onnxw-151122-023231")  # spaceevo@vnni
MOBILE = SpaceEncoding.decode("mobilew-456123-011111")  # FusedMBConvSE, stacked-3x3 K3 blocks, MobileNetV2 stage0
# SEQnet@vnni-A0 (the space's minimum subnet at 160) and a random mobilew subnet at an odd side (176 -> 88 ... 11, 6)
SUBNETS = [(VNNI, min_subnet(VNNI, 160)),
           (MOBILE, dataclasses.replace(sample_subnet(MOBILE, np.random.default_rng(7)), resolution=176))]


def static_model(space: SpaceEncoding, subnet: SubnetEncoding) -> torch.nn.Module:
    supernet = Supernet(space, resolutions=[subnet.resolution])
    supernet.set_active(subnet)
    return supernet.get_active_subnet().eval()


@pytest.fixture(scope="module")
def whole_kernels() -> list[list]:
    """Kernels of each static subnet, exported and detected in one piece under the ort-int8 rules."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for space, subnet in SUBNETS:
            graph = graph_from_torch(static_model(space, subnet), (torch.zeros(1, 3, subnet.resolution, subnet.resolution),))
            out.append([kernel.config for kernel in detect_kernels(graph, "ort-int8").kernels])
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> PartKernelCache:
    return PartKernelCache("ort-int8", tmp_path_factory.mktemp("parts") / "parts.jsonl")


@pytest.fixture(scope="module")
def predictor(cache: PartKernelCache) -> PlatformPredictor:
    """A small forest per kernel type on the subnets' own kernels (target: a smooth function of the features)."""
    pooled: dict[str, list[np.ndarray]] = {}
    for space, subnet in SUBNETS:
        for kernel_type, rows in cache.rows(subnet_parts(space, subnet)).items():
            pooled.setdefault(kernel_type, []).append(rows)
    regressors = {}
    for kernel_type, arrays in pooled.items():
        features = np.concatenate(arrays)
        target = 0.01 + 1e-7 * np.abs(features).sum(axis=1)
        regressors[kernel_type] = ForestRegressor(n_estimators=8).fit(
            features, target, [f"f{i}" for i in range(features.shape[1])])
    return PlatformPredictor(regressors, {"name": "ort-int8", "rules": "ort-int8"})


def test_blockwise_kernels_equal_whole_model_detection(cache: PartKernelCache, whole_kernels: list[list]) -> None:
    for (space, subnet), whole in zip(SUBNETS, whole_kernels):
        parts = subnet_parts(space, subnet)
        assert [c.key() for c in cache.model_configs(parts)] == [c.key() for c in whole]  # same kernels, same order
        rows_whole, unknown = model_rows(whole)
        rows_blocks = cache.rows(parts)
        assert unknown == [] and sorted(rows_blocks) == sorted(rows_whole)
        for kernel_type, matrix in rows_whole.items():
            np.testing.assert_array_equal(rows_blocks[kernel_type], matrix)
        # first conv + one part per block + head; repeated blocks of one shape share a key
        assert len(parts) == sum(subnet.depths) + 1
        assert len({p.key for p in parts}) <= len(parts)


def test_part_input_shapes_follow_the_static_model() -> None:
    for space, subnet in SUBNETS:
        model = static_model(space, subnet)
        seen: list[tuple[int, ...]] = []
        blocks = [block for stage in model.stages for block in stage]
        hooks = [m.register_forward_pre_hook(lambda _m, args, seen=seen: seen.append(tuple(args[0].shape)))
                 for m in [model.first_conv, *blocks, model.final_expand]]
        with torch.no_grad():
            model(torch.zeros(1, 3, subnet.resolution, subnet.resolution))
        for hook in hooks:
            hook.remove()
        assert [p.input_shape for p in subnet_parts(space, subnet)] == seen
    assert [output_side(176, 2), output_side(11, 2), output_side(11, 1)] == [88, 6, 11]


def test_prediction_equals_whole_model_prediction(cache, predictor, whole_kernels) -> None:
    expected = predictor.predict_models([model_rows(k, predictor.kernel_types)[0] for k in whole_kernels])
    for (space, subnet), want in zip(SUBNETS, expected):
        got = predict_latency(space, [subnet], predictor, cache)
        np.testing.assert_allclose(got, [want], rtol=1e-12)
    latency = SubnetLatency(predictor, VNNI, cache)
    value = float(expected[0])
    check = latency.constraint(limit_ms=value * 1.1, delta_ms=value * 0.2).check([SUBNETS[0][1]])
    assert check.feasible.tolist() == [True] and check.values["latency_ms"][0] == pytest.approx(value, rel=1e-12)
    assert latency.constraint(limit_ms=value * 0.99, delta_ms=1.0).check([SUBNETS[0][1]]).feasible.tolist() == [False]
    assert latency.constraint(limit_ms=value * 1.5, delta_ms=value * 0.4).check([SUBNETS[0][1]]).feasible.tolist() == [
        False]  # below the band


def test_cache_file_is_reused_without_exports(cache, predictor) -> None:
    assert cache.path is not None
    subnet = SUBNETS[0][1]
    first = SubnetLatency(predictor, VNNI, cache).predict([subnet])
    reloaded = PartKernelCache("ort-int8", cache.path)
    second = SubnetLatency(predictor, VNNI, reloaded).predict([subnet])
    assert reloaded.stats["detected"] == 0 and reloaded.stats["loaded"] >= len({p.key for p in subnet_parts(VNNI, subnet)})
    np.testing.assert_array_equal(first, second)


def test_choices_are_checked(tmp_path: Path) -> None:
    subnet = min_subnet(VNNI, 160)
    with pytest.raises(ValueError, match="resolution 40 is not one of"):
        subnet_parts(VNNI, SubnetEncoding(subnet.depths, subnet.kernels, subnet.widths, subnet.expands, 40))
    small = SubnetEncoding(subnet.depths, subnet.kernels, subnet.widths, subnet.expands, 40)
    check_choices(VNNI, small, resolutions=[32, 40])  # a supernet with its own resolutions
    assert subnet_parts(VNNI, small, num_classes=4, resolutions=[32, 40])[-1].input_shape == (1, 320, 2, 2)  # stage6 window 1: 320; 40 -> 20, 10, 5, 3, 2
    wide = SubnetEncoding(subnet.depths, subnet.kernels, (64,) + subnet.widths[1:], subnet.expands, 160)
    with pytest.raises(ValueError, match="width 64 of block 0 of first_conv"):
        subnet_parts(VNNI, wide)
