"""Property tests of ElasticViT's parsers: subnet encodings and search-space config mappings.

Every example ends in a valid result or an InputError with a one-line message; accepted strings are
checked against a regular expression of the documented grammar and the space's choices, written here.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from moonlit.common.errors import InputError
from moonlit.elasticvit.space import (
    ELASTICVIT_SPACE,
    Subnet,
    decode,
    encode,
    from_reference_arch,
    random_subnet,
    search_space_from_dict,
    to_reference_arch,
)

NASTY = ["\u0663", "\uff12", "\u0966", "\n", "\r", "\t", " ", "\xa0", "_", "0", "9", "r", "s", "c", "t", "d"]
INT = r"[1-9][0-9]{0,4}"
GRAMMAR = re.compile(rf"r({INT})_s({INT})d({INT})k({INT})"
                     + rf"_c({INT})d({INT})e({INT})k({INT})" * 2 + rf"_t({INT})d({INT})m({INT})v({INT})" * 4)


def is_valid(text: str) -> bool:
    """Independent reading: the grammar, every choice in the paper's space, widths never decreasing."""
    match = GRAMMAR.fullmatch(text)
    if match is None:
        return False
    n = [int(g) for g in match.groups()]
    space = ELASTICVIT_SPACE
    if n[0] not in space.resolutions or n[1] not in space.first_conv_widths or n[2] not in space.stem_depths \
            or n[3] not in space.stem_kernels:
        return False
    widths = [n[1]]
    for i, stage in enumerate(space.conv_stages):
        w, d, e, k = n[4 + 4 * i: 8 + 4 * i]
        if w not in stage.widths or d not in stage.depths or e not in space.conv_expands or k not in space.conv_kernels:
            return False
        widths.append(w)
    for i, stage in enumerate(space.transformer_stages):
        w, d, m, v = n[12 + 4 * i: 16 + 4 * i]
        if w not in stage.widths or d not in stage.depths or m not in space.mlp_ratios or v not in space.v_scales:
            return False
        widths.append(w)
    return all(a <= b for a, b in zip(widths, widths[1:]))


def check_error(exc: InputError) -> None:
    message = str(exc)
    assert message and "\n" not in message and len(message) < 1000, message


valid_subnets = st.integers(0, 2 ** 32 - 1).map(lambda seed: random_subnet(random.Random(seed)))


def test_encode_decode_round_trip(fuzz_settings) -> None:
    @fuzz_settings
    @given(valid_subnets)
    def check(subnet: Subnet) -> None:
        text = encode(subnet)
        assert is_valid(text), text
        assert decode(text) == subnet
        assert encode(decode(text)) == text
    check()


def test_decode_of_any_text_is_valid_or_input_error(fuzz_settings, text_mutations) -> None:
    @fuzz_settings
    @given(st.one_of(st.text(), st.text(alphabet="".join(NASTY) + "0123456789_dekmv"),
                     valid_subnets.map(encode).flatmap(lambda text: text_mutations(text, NASTY))))
    def check(text: str) -> None:
        try:
            subnet = decode(text)
        except InputError as exc:
            check_error(exc)
            assert not is_valid(text), text
            return
        assert is_valid(text), text
        assert encode(subnet) == text
    check()


T1 = "r128_s16d1k3_c24d2e3k3_c32d3e3k3_t64d1m2v2_t96d1m2v2_t176d1m3v2_t272d1m4v2"


@pytest.mark.parametrize("text, fragment", [
    (T1.replace("r128", "r\uff11\uff12\uff18"), r"part 'r１２８' \(resolution\) .* does not match r<resolution>"),
    (T1 + "\n", r"part 't272d1m4v2\\n' \(T4\) .* does not match"),
    (" " + T1, r"part ' r128' \(resolution\)"),
    (T1.replace("r128", "r0128"), "resolution '0128' .* has a leading zero"),
    (T1.replace("r128", "r" + "1" * 5000), r"resolution '1111.*\(5000 characters\) .* exceeds 99999"),
    (T1.replace("c24d2", "c24d\u0662"), r"part 'c24d٢e3k3' \(C1\)"),
])
def test_decode_refuses_lookalikes_naming_the_part(text: str, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment):
        decode(text)


# --- search space from a config mapping ------------------------------------------------------------

def space_mapping() -> dict:
    data = dataclasses.asdict(ELASTICVIT_SPACE)
    for key in ("conv_stages", "transformer_stages"):
        data[key] = [{k: list(v) if isinstance(v, tuple) else v for k, v in stage.items() if k != "kind"}
                     for stage in data[key]]
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def mapping_is_valid(d: object) -> bool:
    """Independent statement of search_space_from_dict's documented schema."""
    def ints(v: object) -> bool:
        return isinstance(v, list) and bool(v) and all(type(x) is int and 1 <= x <= 99999 for x in v) \
            and all(a < b for a, b in zip(v, v[1:]))

    base = space_mapping()
    if not isinstance(d, dict) or set(d) != set(base):
        return False
    for key, value in d.items():
        if key in ("conv_stages", "transformer_stages"):
            keys = {"name", "widths", "depths", "downsample"} | ({"se"} if key == "conv_stages" else set())
            if not isinstance(value, list) or not value:
                return False
            for stage in value:
                if not isinstance(stage, dict) or set(stage) != keys or not isinstance(stage["name"], str) \
                        or not stage["name"] or not ints(stage["widths"]) or not ints(stage["depths"]) \
                        or any(type(stage[f]) is not bool for f in keys - {"name", "widths", "depths"}):
                    return False
        elif isinstance(base[key], list):
            if not ints(value):
                return False
        elif type(value) is not int or not 1 <= value <= 99999:
            return False
    names = [s["name"] for s in d["conv_stages"] + d["transformer_stages"]]
    return len(set(names)) == len(names) and all(
        w % d["head_dim"] == 0 for s in d["transformer_stages"] for w in s["widths"])


MAPPING_REPLACEMENTS = [None, "x", "", -1, 0, 3.5, [], {}, True, "12", 10 ** 30, [1, "a"], [2, 1], 17, 32, "C1",
                        [16]]


def test_paper_space_round_trips_through_a_mapping() -> None:
    assert mapping_is_valid(space_mapping())
    assert search_space_from_dict(space_mapping()) == ELASTICVIT_SPACE


def test_space_mapping_mutations_are_valid_or_input_error(fuzz_settings, mapping_mutations) -> None:
    @fuzz_settings
    @given(mapping_mutations(space_mapping(), MAPPING_REPLACEMENTS))
    def check(data: dict) -> None:
        try:
            space = search_space_from_dict(data, "train.yaml space")
        except InputError as exc:
            check_error(exc)
            assert "train.yaml space" in str(exc)
            assert not mapping_is_valid(data), data
            return
        assert mapping_is_valid(data), data
        assert space.resolutions == tuple(data["resolutions"]) and space.head_dim == data["head_dim"]
        assert [s.widths for s in space.transformer_stages] == [tuple(s["widths"]) for s in data["transformer_stages"]]
    check()


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: d.pop("head_dim"), r"lacks key\(s\) \['head_dim'\]"),
    (lambda d: d.update(heads=4), r"unknown key\(s\) \['heads'\]"),
    (lambda d: d["conv_stages"][1].update(se="no"), r"conv_stages\[1\]\.se is 'no'; expected true or false"),
    (lambda d: d.update(resolutions=[224, 128]), r"resolutions \[224, 128\] is not strictly increasing"),
    (lambda d: d["transformer_stages"][0].update(widths=[48, 56]), r"widths \[56\] are not multiples of head_dim"),
    (lambda d: d.update(head_hidden=True), "head_hidden is True; expected an integer"),
])
def test_space_mapping_errors_name_the_key(edit, fragment: str) -> None:
    data = space_mapping()
    edit(data)
    with pytest.raises(InputError, match=fragment):
        search_space_from_dict(data)


# --- the reference's 10-list arch ------------------------------------------------------------------

@st.composite
def mutated_reference_arch(draw: st.DrawFn) -> list:
    arch = [copy.deepcopy(list(v)) if isinstance(v, tuple) else v
            for v in to_reference_arch(draw(valid_subnets))]
    for _ in range(draw(st.integers(1, 2))):
        index = draw(st.integers(0, len(arch) - 1))
        op = draw(st.sampled_from(["replace_entry", "replace_item", "drop_item", "drop_entry"]))
        bad = st.sampled_from([None, "x", -1, 0, 3.5, True, [], 10 ** 30, 2, 7])
        if op == "replace_entry":
            arch[index] = draw(bad)
        elif op == "replace_item" and isinstance(arch[index], list) and arch[index]:
            arch[index][draw(st.integers(0, len(arch[index]) - 1))] = draw(bad)
        elif op == "drop_item" and isinstance(arch[index], list) and arch[index]:
            arch[index].pop()
        elif op == "drop_entry":
            arch.pop(index)
    return arch


def test_reference_arch_mutations_are_a_subnet_of_the_space_or_input_error(fuzz_settings) -> None:
    @fuzz_settings
    @given(mutated_reference_arch())
    def check(arch: list) -> None:
        try:
            subnet = from_reference_arch(arch)
        except InputError as exc:
            check_error(exc)
            return
        # accepted: a subnet of the space whose own reference form is the input (layer-wise lists agree)
        assert is_valid(encode(subnet))
        assert [list(v) if isinstance(v, tuple) else v for v in to_reference_arch(subnet)] == \
            [list(v) if isinstance(v, tuple) else v for v in arch]
    check()
