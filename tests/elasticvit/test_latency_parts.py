"""ElasticViT subnet latency from LitePred block parts: block-wise kernels equal whole-model detection,
predictions equal the whole model's, unknown kernel types left out and counted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moonlit.elasticvit.latency import SubnetLatency, predict_latency, subnet_parts
from moonlit.elasticvit.models import build_model, named_subnet
from moonlit.elasticvit.space import Subnet, decode, encode
from moonlit.litepred.api import ModelPart, PartCache, Predictor, predict_module
from moonlit.litepred.testing import stand_in_predictor

# T1, and a subnet with a 2-block 5x5 stem, odd feature-map sides (176 -> 88, 44, 22, 11, 11, 6, 3) and v_scale 4
SUBNETS = [named_subnet("T1"), decode("r176_s24d2k5_c24d2e4k5_c32d2e6k3_t48d2m5v4_t80d1m2v3_t160d1m3v2_t160d2m2v4")]


def whole_part(subnet: Subnet) -> ModelPart:
    """The static model as one part: exported and detected in one piece, no cuts."""
    return ModelPart(f"whole:{encode(subnet)}", lambda: build_model(subnet),
                     (1, 3, subnet.resolution, subnet.resolution))


@pytest.fixture(scope="module")
def whole() -> PartCache:
    cache = PartCache("ort-fp32")
    for subnet in SUBNETS:
        cache.configs(whole_part(subnet))
    return cache


@pytest.fixture(scope="module")
def cache() -> PartCache:
    return PartCache("ort-fp32")


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return stand_in_predictor(seed=5, platform={"name": "ort-fp32"})


def test_blockwise_kernels_equal_whole_model_detection(cache: PartCache, whole: PartCache) -> None:
    for subnet in SUBNETS:
        blocks = cache.model_configs(subnet_parts(subnet))
        # the cuts fall where no fusion rule spans them: same kernels, in the same order
        assert [c.key() for c in blocks] == [c.key() for c in whole.configs(whole_part(subnet))]
        rows_blocks = cache.rows(subnet_parts(subnet))
        rows_whole = whole.rows([whole_part(subnet)])
        assert sorted(rows_blocks) == sorted(rows_whole)
        for kernel_type, matrix in rows_whole.items():
            np.testing.assert_array_equal(rows_blocks[kernel_type], matrix)
    # T1's 3 stem/conv blocks of one shape and its layers repeat: fewer exports than parts
    parts = subnet_parts(SUBNETS[0])
    assert len({p.key for p in parts}) < len(parts)


def test_block_prediction_equals_the_whole_model_prediction(cache: PartCache, predictor: Predictor) -> None:
    # the second route: the whole static model exported as one module and predicted
    expected = np.array([predict_module(predictor, build_model(s).eval(),
                                        (torch.zeros(1, 3, s.resolution, s.resolution),)).latency_ms for s in SUBNETS])
    got = predict_latency(SUBNETS, predictor, cache)
    np.testing.assert_allclose(got, expected, rtol=1e-12)  # identical rows: identical predictions
    constraint = SubnetLatency(predictor, cache).constraint(limit_ms=float(expected.max()), delta_ms=None)
    check = constraint.check(SUBNETS)
    assert check.feasible.all()
    np.testing.assert_allclose(check.values["latency_ms"], expected, rtol=1e-12)


def test_unknown_kernel_types_are_left_out_and_counted(cache: PartCache, whole: PartCache) -> None:
    parts = subnet_parts(SUBNETS[0])
    before = cache.unpredicted["softmax"]
    rows = cache.rows(parts, known_types=["conv", "dwconv"])
    assert sorted(rows) == ["conv", "dwconv"]
    softmax = sum(1 for c in whole.configs(whole_part(SUBNETS[0])) if c.type == "softmax")
    assert softmax == sum(stage.depth for stage in SUBNETS[0].transformer_stages)  # one per attention layer
    assert cache.unpredicted["softmax"] - before == softmax
