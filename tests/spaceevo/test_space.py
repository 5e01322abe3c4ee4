"""SpaceEvo hyperspaces and encodings, checked against the published spaces/SEQnets and the paper notes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from moonlit.spaceevo.space import (
    SpaceEncoding,
    SubnetEncoding,
    check_subnet,
    list_hyperspaces,
    load_hyperspace,
    max_subnet,
    min_subnet,
    sample_subnet,
    stage_options,
)

SEARCH_RESULT = Path(__file__).resolve().parents[3] / "shared" / "data" / "spaceevo" / "search_result.yaml"  # shared/ beside the clone
# Copied from the reference's data/search_result.yaml so the grammar is tested without the data folder.
VNNI_SPACE = "onnxw-151122-023231"
VNNI_A0 = ("d1#1#2#2#2#2#2#1_k3#3#3#3#3#3#3#3#3#3#3#3#3_w16#16#32#32#64#64#112#112#144#144#240#240#320"
           "_e0#0.5#4.0#4.0#1.0#1.0#4.0#4.0#4.0#4.0#4.0#4.0#4.0_r160")


@pytest.fixture(scope="module")
def published() -> dict:
    if not SEARCH_RESULT.exists():
        pytest.skip(f"{SEARCH_RESULT} not available")
    return yaml.safe_load(SEARCH_RESULT.read_text())


def test_hyperspaces_match_the_paper_notes_table() -> None:
    assert {"mobilew", "onnxw"} <= set(list_hyperspaces())
    onnxw, mobilew = load_hyperspace("onnxw"), load_hyperspace("mobilew")
    # widths "start-stop step 16" and #windows as written in the notes' hyperspace table
    assert onnxw.stages[2].widths == tuple(range(32, 65, 16))
    assert onnxw.stages[5].widths == tuple(range(112, 193, 16))
    assert onnxw.stages[7].widths == tuple(range(304, 449, 16))
    assert onnxw.num_windows == (2, 4, 4, 4, 4, 4)
    assert mobilew.num_windows == (2, 6, 6, 7, 5, 4)
    assert mobilew.stages[6].widths == (192, 200, 208, 216, 224, 240, 256, 272, 288)
    assert mobilew.stages[5].depths == tuple(range(2, 9)) and onnxw.stages[5].depths == tuple(range(2, 7))
    assert [b.type for b in onnxw.block_types] == ["MobileNetV1Dual", "MobileNetV2Res", "MobileNetV3Res", "ResNet",
                                                   "ResNetSE", "FusedMBConvRes"]
    assert len(mobilew.block_types) == 7 and mobilew.block_types[3].kernels == (3, 5)
    assert onnxw.block_types[5].expands == (1, 2, 3, 4) and onnxw.block_types[0].expands == ()
    assert onnxw.fixed_blocks["stage0"].expands == (0.5,) and mobilew.fixed_blocks["stage0"].expands == (1,)
    assert onnxw.head == {"final_expand": 1280, "feature_mix": 1920, "num_classes": 1000, "activation": "hswish"}


def test_window_and_downsample_arithmetic() -> None:
    onnxw = load_hyperspace("onnxw")
    stage6 = onnxw.stages[7]
    assert stage6.window_widths(1) == (320, 336, 352, 368, 384, 400, 416)
    with pytest.raises(ValueError, match="window 4 of stage6 .* 4 windows"):
        stage6.window_widths(4)
    # strides 2 (first_conv), 1, 2, 2, 2, 1, 2 before stages 1..6
    assert [onnxw.input_downsample(f"stage{i}") for i in range(1, 7)] == [2, 4, 8, 16, 16, 32]


def test_published_spaces_and_seqnets_parse_are_legal_and_a0_is_minimum(published: dict) -> None:
    spaces = {}
    for name, text in published["specific_supernet_encoding_dict"].items():
        space = SpaceEncoding.decode(text)
        assert space.encode() == text
        spaces[name] = space
    assert len(spaces) == 5
    subnets = published["specific_subnet_encoding_dict"]
    assert len(subnets) == 10
    for name, (space_name, text) in subnets.items():
        subnet = SubnetEncoding.decode(text)
        assert subnet.encode() == text, name
        check_subnet(subnet, spaces[space_name])
        if name.endswith("-A0"):
            assert min_subnet(spaces[space_name]) == subnet, name
        else:
            assert min_subnet(spaces[space_name]) != subnet, name


def test_vnni_a0_by_hand() -> None:
    space = SpaceEncoding.decode(VNNI_SPACE)
    assert (space.blocks, space.windows) == ((1, 5, 1, 1, 2, 2), (0, 2, 3, 2, 3, 1))
    # hand-derived: stage2 = FusedMBConv (min expand 1) in window 2 of 32..96 -> 64; stage6 window 1 -> 320
    assert min_subnet(space).encode() == VNNI_A0
    big = max_subnet(space)
    assert big.depths == (1, 2, 4, 4, 6, 6, 6, 2) and big.resolution == 224
    assert big.widths[-1] == 416 and big.kernels[-1] == 5 and big.expands[-1] == 8.0
    assert SpaceEncoding.decode("151122_023231", hyperspace="onnxw") == space


@pytest.mark.parametrize("text, message", [
    ("onnxw-161122-023231", "block digit 6 of stage2 .*expected 0-5"),
    ("onnxw-151122-043231", "window digit 4 of stage2 .* windows 0-3"),
    ("onnxw-2-04", "1 block digits"),
    ("onnxw-15112-023231", "5 block digits"),
    ("tflite-151122-023231", "unknown hyperspace 'tflite'"),
    ("151122_023231", "names no hyperspace"),
    ("onnxw-15a122-023231", "not a space encoding"),
])
def test_bad_space_encodings_name_the_bad_part(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SpaceEncoding.decode(text)


@pytest.mark.parametrize("text, message", [
    ("d1#1_k3#3_w16#16_e0#0.5", "4 '_'-separated fields"),
    ("k1#1_d3#3_w16#16_e0#0.5_r160", "should start with 'd'"),
    ("d1#1_k3#x_w16#16_e0#0.5_r160", "entry 1 'x' of field 'k3#x'"),
    ("d1#2_k3#3_w16#16_e0#0.5_r160", "2 kernels for 3 blocks"),
    ("d1#1_k3#3_w16#16_e0#0.5_160", "resolution field '160'"),
])
def test_bad_subnet_encodings_name_the_bad_part(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SubnetEncoding.decode(text)


@pytest.mark.parametrize("old, new, message", [
    ("w16#16#32#32#64", "w16#16#64#32#64", "width 64 of block 0 of stage1 .* window \\[32, 48\\]"),
    ("_k3#3#3", "_k3#3#7", "kernel 7 of block 0 of stage1 .* \\[3, 5\\]"),
    ("e0#0.5#4.0", "e0#0.5#0", "expand None of block 0 of stage1 .* \\[4, 6, 8\\]"),
    ("e0#0.5", "e4.0#0.5", "expand 4.0 of block 0 of first_conv .*: this block has no expand ratio"),
    ("_r160", "_r128", "resolution 128 is not one of"),
])
def test_illegal_subnets_name_the_bad_choice(old: str, new: str, message: str) -> None:
    space = SpaceEncoding.decode(VNNI_SPACE)
    check_subnet(SubnetEncoding.decode(VNNI_A0), space)
    bad = SubnetEncoding.decode(VNNI_A0.replace(old, new, 1))
    with pytest.raises(ValueError, match=message):
        check_subnet(bad, space)


def test_depth_outside_the_stage_choices_is_illegal() -> None:
    space = SpaceEncoding.decode(VNNI_SPACE)
    a0 = SubnetEncoding.decode(VNNI_A0)
    # stage6 with depth 3 (choices 1, 2): add two blocks to the last stage
    bad = SubnetEncoding(a0.depths[:-1] + (3,), a0.kernels + (3, 3), a0.widths + (320, 320),
                         a0.expands + (4.0, 4.0), 160)
    with pytest.raises(ValueError, match="depth 3 of stage6 is not in \\[1, 2\\]"):
        check_subnet(bad, space)


@pytest.mark.parametrize("text", ["onnxw-050403-123123", "mobilew-654321-155432"])
def test_random_subnets_are_legal_round_trip_and_cover_the_choices(text: str) -> None:
    space = SpaceEncoding.decode(text)
    rng = np.random.default_rng(0)
    low, high = min_subnet(space), max_subnet(space)
    check_subnet(low, space), check_subnet(high, space)
    seen_kernels: set[tuple[str, int]] = set()
    for _ in range(300):
        subnet = sample_subnet(space, rng)
        check_subnet(subnet, space)
        assert SubnetEncoding.decode(subnet.encode()) == subnet
        assert low.resolution <= subnet.resolution <= high.resolution
        for options, blocks, low_d, high_d in zip(stage_options(space), subnet.stages(), low.depths, high.depths):
            assert low_d <= len(blocks) <= high_d
            seen_kernels.update((options.name, k) for k, _, _ in blocks)
    wanted = {(o.name, k) for o in stage_options(space) for k in o.kernels}
    assert seen_kernels == wanted


@pytest.mark.parametrize("text", ["onnxw-151122-023231", "mobilew-654321-155432"])
def test_sample_subnet_draws_the_resolution_once_from_the_given_list(text: str) -> None:
    space = SpaceEncoding.decode(text)
    resolutions = (32, 48, 64)
    seen = set()
    for seed in range(60):
        subnet = sample_subnet(space, np.random.default_rng(seed), resolutions)
        default = sample_subnet(space, np.random.default_rng(seed))
        # the blocks are drawn before the resolution, so they do not depend on the resolution list
        assert subnet.stages() == default.stages()
        assert default.resolution in space.spec.resolutions
        # a one-element list is drawn without touching the generator's state (Generator.integers(1)), so
        # the resolution is the very next draw after the blocks: one draw, from our list
        replay = np.random.default_rng(seed)
        assert sample_subnet(space, replay, (7,)).resolution == 7
        assert subnet.resolution == resolutions[int(replay.integers(len(resolutions)))]
        seen.add(subnet.resolution)
    assert seen == set(resolutions)
    with pytest.raises(ValueError, match="no resolutions to sample"):
        sample_subnet(space, np.random.default_rng(0), ())
