"""ElasticViT search space: encoding grammar, constraints, reference-format conversion."""

from __future__ import annotations

import random

import numpy as np
import pytest

from moonlit.elasticvit.models import MODEL_NAMES, named_subnet
from moonlit.elasticvit.space import (
    ELASTICVIT_SPACE,
    ConvStage,
    Subnet,
    TransformerStage,
    check_subnet,
    decode,
    encode,
    from_reference_arch,
    max_subnet,
    min_subnet,
    random_subnet,
    sample_subnet,
    stage_sides,
    to_reference_arch,
)

# The reference's configs/final_3min_space_eval.yaml, verbatim (elastic_T1 ... elastic_L3).
REFERENCE_EVAL_ARCHS = {
    "T1": [128, [16, 24, 32, 64, 96, 176, 272], [1, 2, 3, 1, 1, 1, 1], [1, 3, 3, 3, 3, 3], [3, 3, 3, 3, 3, 3], [2, 2, 3, 4], [4, 6, 11, 17], [1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 2, 2]],
    "T2": [160, [16, 24, 40, 48, 96, 176, 256], [1, 2, 3, 1, 1, 2, 2], [1, 3, 3, 3, 3, 3], [3, 3, 3, 3, 3, 3], [3, 4, 3, 3, 2, 2], [3, 6, 11, 11, 16, 16], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [2, 2, 2, 2, 2, 2]],
    "S1": [192, [16, 24, 40, 64, 96, 192, 272], [1, 3, 3, 2, 2, 2, 2], [1, 3, 3, 3, 3, 3, 3], [3, 3, 3, 3, 3, 3, 3], [2, 2, 2, 2, 3, 3, 4, 4], [4, 4, 6, 6, 12, 12, 17, 17], [1] * 8, [1] * 8, [2] * 8],
    "S2": [224, [16, 24, 48, 64, 96, 192, 256], [1, 3, 3, 2, 2, 2, 2], [1, 3, 3, 3, 3, 3, 3], [3, 3, 3, 3, 3, 3, 3], [2, 2, 2, 2, 2, 2, 4, 4], [4, 4, 6, 6, 12, 12, 16, 16], [1] * 8, [1] * 8, [2] * 8],
    "M": [224, [16, 32, 48, 64, 96, 192, 288], [1, 3, 5, 2, 2, 2, 2], [1, 3, 3, 3, 3, 3, 3, 3, 3], [5, 3, 3, 3, 3, 3, 3, 3, 3], [2, 2, 4, 4, 4, 4, 5, 5], [4, 4, 6, 6, 12, 12, 18, 18], [1] * 8, [1] * 8, [2] * 8],
    "L1": [256, [16, 24, 40, 64, 96, 192, 320], [1, 3, 3, 2, 2, 2, 2], [1, 3, 3, 3, 6, 6, 6], [5, 5, 5, 5, 5, 5, 5], [4, 4, 3, 3, 4, 4, 4, 4], [4, 4, 6, 6, 12, 12, 20, 20], [1] * 8, [1] * 8, [2] * 8],
    "L1.5": [256, [16, 24, 48, 64, 96, 256, 320], [2, 4, 4, 2, 2, 2, 2], [1, 1, 3, 3, 3, 3, 4, 4, 4, 4], [3, 3, 3, 3, 3, 3, 5, 5, 5, 5], [4, 4, 5, 5, 3, 3, 5, 5], [4, 4, 6, 6, 16, 16, 20, 20], [1] * 8, [1] * 8, [2] * 8],
    "L2": [256, [16, 24, 40, 80, 128, 256, 304], [1, 3, 4, 2, 2, 2, 2], [1, 6, 6, 6, 6, 6, 6, 6], [3, 3, 3, 3, 3, 3, 3, 3], [3, 3, 2, 2, 3, 3, 5, 5], [5, 5, 8, 8, 16, 16, 19, 19], [1] * 8, [1] * 8, [2, 2, 2, 2, 2, 2, 3, 3]],
    "L3": [256, [16, 32, 48, 80, 128, 256, 320], [1, 3, 4, 2, 2, 2, 2], [1, 5, 5, 5, 5, 5, 5, 5], [5, 3, 3, 3, 5, 5, 5, 5], [4, 4, 4, 4, 3, 3, 5, 5], [5, 5, 8, 8, 16, 16, 20, 20], [1] * 8, [1] * 8, [2] * 8],
}

T1 = "r128_s16d1k3_c24d2e3k3_c32d3e3k3_t64d1m2v2_t96d1m2v2_t176d1m3v2_t272d1m4v2"


def _as_lists(arch):
    return [list(item) if isinstance(item, tuple) else item for item in arch]


@pytest.mark.parametrize("short_name", list(REFERENCE_EVAL_ARCHS))
def test_reference_eval_archs_convert_both_ways(short_name: str) -> None:
    reference = REFERENCE_EVAL_ARCHS[short_name]
    subnet = from_reference_arch(reference)
    assert subnet == named_subnet(short_name)
    assert _as_lists(to_reference_arch(subnet)) == reference


def test_t1_decodes_to_the_hand_read_architecture() -> None:
    subnet = decode(T1)
    assert subnet == Subnet(128, 16, 1, 3, (ConvStage(24, 2, 3, 3), ConvStage(32, 3, 3, 3)),
                            (TransformerStage(64, 1, 2, 2), TransformerStage(96, 1, 2, 2),
                             TransformerStage(176, 1, 3, 2), TransformerStage(272, 1, 4, 2)))
    assert encode(subnet) == T1 and str(subnet) == T1


def test_encode_decode_round_trip_on_random_subnets() -> None:
    rng = random.Random(0)
    for _ in range(300):
        subnet = random_subnet(rng)
        check_subnet(subnet)
        assert decode(encode(subnet)) == subnet
        assert from_reference_arch(to_reference_arch(subnet)) == subnet


def test_sample_subnet_seeds_the_engine_with_one_draw_of_the_generator() -> None:
    rng = np.random.default_rng(3)
    drawn = [sample_subnet(ELASTICVIT_SPACE, rng) for _ in range(200)]
    # the documented derivation, replayed by hand: one 63-bit integer per subnet seeds random.Random
    replay = np.random.default_rng(3)
    assert drawn == [random_subnet(random.Random(int(replay.integers(2 ** 63)))) for _ in range(200)]
    assert rng.integers(2 ** 32) == replay.integers(2 ** 32)  # nothing else was drawn
    for subnet in drawn:
        check_subnet(subnet)
    assert len(set(drawn)) == len(drawn)
    assert {s.resolution for s in drawn} == set(ELASTICVIT_SPACE.resolutions)


def test_random_subnets_reach_every_choice() -> None:
    rng = random.Random(1)
    subnets = [random_subnet(rng) for _ in range(2000)]
    assert {s.resolution for s in subnets} == set(ELASTICVIT_SPACE.resolutions)
    for index, stage_space in enumerate(ELASTICVIT_SPACE.stages):
        assert {s.stages[index].width for s in subnets} == set(stage_space.widths)
        assert {s.stages[index].depth for s in subnets} == set(stage_space.depths)
    assert {s.transformer_stages[0].v_scale for s in subnets} == {2, 3, 4}
    assert {s.conv_stages[1].expand for s in subnets} == {3, 4, 5, 6}


def test_min_and_max_subnets() -> None:
    assert encode(min_subnet()) == "r128_s16d1k3_c16d2e3k3_c16d2e3k3_t48d1m2v2_t80d1m2v2_t144d1m2v2_t160d1m2v2"
    assert encode(max_subnet()) == "r256_s24d2k5_c32d5e6k5_c48d6e6k5_t96d5m5v4_t160d6m5v4_t288d6m5v4_t320d6m5v4"


@pytest.mark.parametrize("encoding, fragment", [
    ("r128_s16d1k3_c24d2e7k3_c32d3e3k3_t64d1m2v2_t96d1m2v2_t176d1m3v2_t272d1m4v2", "expand of C1"),
    ("r128_s16d1k3_c24d2e3k3_c32d3e3k3_t64d1m2v2_t96d1m2v2_t176d1m3v2_t270d1m4v2", "width of T4"),
    ("r100_s16d1k3_c24d2e3k3_c32d3e3k3_t64d1m2v2_t96d1m2v2_t176d1m3v2_t272d1m4v2", "resolution 100"),
    ("r128_s16d1k3_c24d2e3k3_c32d3e3k3_t64d1m2v2_t96d1m2v2_t176d7m3v2_t272d1m4v2", "depth of T3"),
    ("r128_s16d1k3_c24d2e3k3_x32d3e3k3_t64d1m2v2_t96d1m2v2_t176d1m3v2_t272d1m4v2", "'x32d3e3k3' (C2)"),
    ("r128_s16d1k3_c24d2e3k3_c32d3e3k3_t64d1m2v2_t96d1m2v2_t176d1m3v2", "7 '_'-separated parts"),
    ("r128_s24d1k3_c16d2e3k3_c32d3e3k3_t64d1m2v2_t96d1m2v2_t176d1m3v2_t272d1m4v2", "width 16 of C1 is below"),
    ("r128_s16d1k3_c24d2e3k3_c32d3e3k3_t96d1m2v2_t80d1m2v2_t176d1m3v2_t272d1m4v2", "width 80 of T2 is below"),
])
def test_decode_errors_name_the_bad_part(encoding: str, fragment: str) -> None:
    with pytest.raises(ValueError) as error:
        decode(encoding)
    assert fragment in str(error.value)


def test_reference_arch_with_layerwise_choices_is_rejected() -> None:
    arch = [list(item) if isinstance(item, list) else item for item in REFERENCE_EVAL_ARCHS["T2"]]
    arch[5] = [3, 4, 3, 2, 2, 2]  # T3's two layers disagree on the MLP ratio
    with pytest.raises(ValueError, match="mlp_ratios of T3"):
        from_reference_arch(arch)


def test_stage_sides_by_hand() -> None:
    # stem /2, C1 /2, C2 /2, T1 /2, T2 keeps, T3 /2, T4 /2; stride-2 convs give ceil(h / 2).
    assert stage_sides(224) == (112, 56, 28, 14, 14, 7, 4)
    assert stage_sides(176) == (88, 44, 22, 11, 11, 6, 3)
    assert stage_sides(128) == (64, 32, 16, 8, 8, 4, 2)


def test_named_model_aliases() -> None:
    assert len(MODEL_NAMES) == 9
    assert named_subnet("elasticvit_l1_5") == named_subnet("L1.5") == named_subnet("elastic_L1.5")
    with pytest.raises(ValueError, match="unknown ElasticViT model 'L4'"):
        named_subnet("L4")
