"""SpaceEvo subnet latency from LitePred block parts: equal to whole-model detection, shapes, predictions, cache."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from moonlit.litepred.api import ModelPart, PartCache, Predictor, predict_module
from moonlit.litepred.testing import stand_in_predictor
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


def whole_part(space: SpaceEncoding, subnet: SubnetEncoding) -> ModelPart:
    """The static subnet as one part: exported and detected in one piece, no cuts."""
    return ModelPart(f"whole:{space.encode()}:{subnet.encode()}", lambda: static_model(space, subnet),
                     (1, 3, subnet.resolution, subnet.resolution))


@pytest.fixture(scope="module")
def whole() -> PartCache:
    """Kernels of each static subnet, exported and detected in one piece under the ort-int8 rules."""
    cache = PartCache("ort-int8")
    for space, subnet in SUBNETS:
        cache.configs(whole_part(space, subnet))
    return cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> PartCache:
    return PartCache("ort-int8", tmp_path_factory.mktemp("parts") / "parts.jsonl")


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """Linear per-kernel latencies of every kernel type (moonlit.litepred.testing)."""
    return stand_in_predictor(seed=1, platform={"name": "ort-int8", "rules": "ort-int8"})


def test_blockwise_kernels_equal_whole_model_detection(cache: PartCache, whole: PartCache) -> None:
    for space, subnet in SUBNETS:
        parts = subnet_parts(space, subnet)
        one_piece = whole_part(space, subnet)
        assert [c.key() for c in cache.model_configs(parts)] == [c.key() for c in whole.configs(one_piece)]
        rows_whole = whole.rows([one_piece])
        rows_blocks = cache.rows(parts)
        assert sorted(rows_blocks) == sorted(rows_whole)
        for kernel_type, matrix in rows_whole.items():
            np.testing.assert_array_equal(rows_blocks[kernel_type], matrix)
        # first conv + one part per block + head; repeated blocks of one shape share a key
        assert len(parts) == sum(subnet.depths) + 1
        assert len({p.key for p in parts}) <= len(parts)
    assert not whole.unpredicted and not cache.unpredicted


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


def test_prediction_equals_whole_model_prediction(cache, predictor) -> None:
    # the second route: the whole static subnet exported as one module and predicted
    expected = [predict_module(predictor, static_model(space, subnet),
                               (torch.zeros(1, 3, subnet.resolution, subnet.resolution),)).latency_ms
                for space, subnet in SUBNETS]
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
    reloaded = PartCache("ort-int8", cache.path)
    second = SubnetLatency(predictor, VNNI, reloaded).predict([subnet])
    assert reloaded.stats["detected"] == 0
    assert reloaded.stats["loaded"] >= len({p.key for p in subnet_parts(VNNI, subnet)})
    np.testing.assert_array_equal(first, second)


def test_choices_are_checked(tmp_path: Path) -> None:
    subnet = min_subnet(VNNI, 160)
    with pytest.raises(ValueError, match="resolution 40 is not one of"):
        subnet_parts(VNNI, SubnetEncoding(subnet.depths, subnet.kernels, subnet.widths, subnet.expands, 40))
    small = SubnetEncoding(subnet.depths, subnet.kernels, subnet.widths, subnet.expands, 40)
    check_choices(VNNI, small, resolutions=[32, 40])  # a supernet with its own resolutions
    # stage6 window 1: 320 channels; side 40 -> 20, 10, 5, 3, 2
    assert subnet_parts(VNNI, small, num_classes=4, resolutions=[32, 40])[-1].input_shape == (1, 320, 2, 2)
    wide = SubnetEncoding(subnet.depths, subnet.kernels, (64,) + subnet.widths[1:], subnet.expands, 160)
    with pytest.raises(ValueError, match="width 64 of block 0 of first_conv"):
        subnet_parts(VNNI, wide)
