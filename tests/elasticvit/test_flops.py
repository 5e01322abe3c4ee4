"""Analytic ElasticViT MACs/params against torch's FLOP counter and the reference's published counts."""

from __future__ import annotations

import random

import pytest
import torch
from moonlit.common.profiling.flops import count_macs
from moonlit.elasticvit.flops import reference_mmacs, subnet_complexity
from moonlit.elasticvit.models import MODEL_NAMES, build_model, named_subnet
from moonlit.elasticvit.space import (
    decode,
    max_subnet,
    min_subnet,
    random_subnet,
    stage_sides,
)

# The notes' "MMACs (reference counter)" column (the reference's compute_flops, one decimal).
NOTES_REFERENCE_MMACS = dict(zip(MODEL_NAMES, [62.9, 120.0, 217.6, 318.5, 415.6, 517.1, 618.8, 704.1, 815.4]))


def _torch_count(subnet):
    model = build_model(subnet)
    return count_macs(model, torch.zeros(1, 3, subnet.resolution, subnet.resolution))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_named_models_match_torch_counter_exactly(name: str) -> None:
    subnet = named_subnet(name)
    analytic, report = subnet_complexity(subnet), _torch_count(subnet)
    assert analytic.macs == report.macs
    assert analytic.params == report.params
    assert sum(analytic.macs_by_part.values()) == analytic.macs


def _check_random(count: int, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(count):
        subnet = random_subnet(rng)
        analytic, report = subnet_complexity(subnet), _torch_count(subnet)
        assert (analytic.macs, analytic.params) == (report.macs, report.params), subnet.encode()


def test_random_subnets_match_torch_counter() -> None:
    _check_random(60, seed=0)


@pytest.mark.slow
def test_random_subnets_match_torch_counter_long_sweep() -> None:
    _check_random(400, seed=1)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_reference_counter_reproduces_the_published_mmacs(name: str) -> None:
    assert round(reference_mmacs(named_subnet(name)), 1) == NOTES_REFERENCE_MMACS[name]


def test_reference_counter_extremes_match_the_notes() -> None:
    assert round(reference_mmacs(min_subnet()), 1) == 37.4
    assert round(reference_mmacs(max_subnet()), 1) == 3191.5


def test_t1_macs_by_hand() -> None:
    subnet = decode("r128_s16d1k3_c24d2e3k3_c32d3e3k3_t64d1m2v2_t96d1m2v2_t176d1m3v2_t272d1m4v2")
    parts = subnet_complexity(subnet).macs_by_part
    assert parts["first_conv"] == 64 * 64 * 16 * 27
    assert parts["stem"] == 64 * 64 * 16 * 9 + 64 * 64 * 16 * 16
    # C1 layer 0 (16 -> 24, expand 3, stride 2, 64 -> 32) + layer 1 (24 -> 24, expand 3).
    layer0 = 16 * 48 * 64 ** 2 + 48 * 9 * 32 ** 2 + 48 * 24 * 32 ** 2 + 16 * 24 * 32 ** 2
    layer1 = 24 * 72 * 32 ** 2 + 72 * 9 * 32 ** 2 + 72 * 24 * 32 ** 2
    assert parts["C1"] == layer0 + layer1
    # T4: reduction 176 -> 272 (expand 6, SE, 4x4 -> 2x2), one layer on 4 tokens, 17 heads, V 32/head.
    inner = 176 * 6
    reduction = 176 * inner * 16 + inner * 9 * 4 + 2 * inner * (inner // 4) + inner * 272 * 4 + 176 * 272 * 4
    attention = 4 * 272 * (2 * 272 + 544) + 544 * 9 * 4 + 17 * 16 * (16 + 32) + 4 * 544 * 272
    ffn = 2 * 4 * 272 * 272 * 4
    assert parts["T4"] == reduction + attention + ffn
    assert parts["head"] == 4 * 272 * 1632 + 1632 * 1984 + 1984 * 1000


@pytest.mark.parametrize("encoding", [
    named_subnet("S2").encode(),  # 224: T4's reduction sees a 7x7 input (odd side)
    "r176_s16d2k5_c16d2e4k5_c16d3e6k3_t48d2m3v3_t80d1m2v4_t144d2m5v2_t160d1m4v3",  # pool-only C shortcuts
])
def test_reference_counter_differences_are_the_documented_ones(encoding: str) -> None:
    """Rebuild the reference count from ours by applying the five documented differences."""
    subnet = decode(encoding)
    ours = subnet_complexity(subnet).macs
    sides = stage_sides(subnet.resolution)
    widths = subnet.widths
    adjust = 0
    for index, stage in enumerate(subnet.transformer_stages):
        in_width, side, in_side = widths[3 + index - 1], sides[3 + index], sides[3 + index - 1]
        inner = in_width * 6
        adjust -= 2 * inner * (inner // 4)                               # (1) SE of the reduction
        if in_width != stage.width:
            adjust -= in_width * stage.width * side ** 2                 # (1) its shortcut conv
        stride = 1 if index == 1 else 2
        adjust += in_width * inner * ((side * stride) ** 2 - in_side ** 2)  # (5) expand conv at 2x side
        tokens, heads, values = side ** 2, stage.width // 16, stage.width * stage.v_scale
        adjust -= stage.depth * 8 * values * tokens                      # (3) V conv: 1 MAC, not 9
        adjust += stage.depth * heads * tokens ** 2                      # (4) softmax
    for index, stage in enumerate(subnet.conv_stages):
        if widths[index] == stage.width:
            adjust += widths[index] * stage.width * sides[index + 1] ** 2  # (2) pool-only shortcut counted
    assert (ours + adjust) / 1e6 == pytest.approx(reference_mmacs(subnet), abs=1e-9)


def test_named_models_table_rows() -> None:
    from moonlit.elasticvit.models import named_models_table

    table = named_models_table()
    assert table.count("\n") == 11  # header, rule, nine models
    assert "| elasticvit_t1 | `r128_s16d1k3_c24d2e3k3_c32d3e3k3_t64d1m2v2_t96d1m2v2_t176d1m3v2_t272d1m4v2` | 128 | 64.9 | 62.9 |" in table
