"""Property tests of SpaceEvo's parsers: space and subnet encodings, hyperspace YAML mappings, block LUT files.

Every example ends in a valid result or an InputError with a one-line message. Valid results are
checked against independent readings written here (regular expressions and the ``csv`` module), not
against the parser's own output alone.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from moonlit.common.errors import InputError
from moonlit.spaceevo import space as space_module
from moonlit.spaceevo.lut import BlockLUT, LUTRow, LUTSet
from moonlit.spaceevo.qt_score import QTScorer
from moonlit.spaceevo.space import (
    SpaceEncoding,
    SubnetEncoding,
    hyperspace_from_dict,
    list_hyperspaces,
    load_hyperspace,
    sample_subnet,
)

HYPERSPACES = ("mobilew", "onnxw", "onnxw_tiny")
# Characters that break naive parsers: Unicode digits (Arabic-Indic 3, fullwidth 2, Devanagari 0),
# whitespace, separators of the grammars.
NASTY = ["\u0663", "\uff12", "\u0966", "\n", "\r", "\t", " ", "\xa0", "-", "_", "#", ".", "0", "9", "e", "x"]


def check_error(exc: InputError) -> None:
    message = str(exc)
    assert message and "\n" not in message and len(message) < 1000, message


# --- space encodings -------------------------------------------------------------------------------

SPACE_GRAMMAR = re.compile(r"([a-z][a-z0-9_]*)-([0-9]{6})-([0-9]{6})")


@st.composite
def valid_spaces(draw: st.DrawFn) -> SpaceEncoding:
    spec = load_hyperspace(draw(st.sampled_from(HYPERSPACES)))
    blocks = tuple(draw(st.integers(0, len(spec.block_types) - 1)) for _ in range(6))
    windows = tuple(draw(st.integers(0, n - 1)) for n in spec.num_windows)
    return SpaceEncoding(spec.name, blocks, windows)


def test_space_encode_decode_round_trip(fuzz_settings) -> None:
    @fuzz_settings
    @given(valid_spaces())
    def check(space: SpaceEncoding) -> None:
        text = space.encode()
        assert SPACE_GRAMMAR.fullmatch(text)
        assert text == f"{space.hyperspace}-{''.join(map(str, space.blocks))}-{''.join(map(str, space.windows))}"
        assert SpaceEncoding.decode(text) == space
        assert SpaceEncoding.decode(text).encode() == text
        bare = text.removeprefix(space.hyperspace + "-").replace("-", "_")
        assert SpaceEncoding.decode(bare, hyperspace=space.hyperspace) == space
    check()


def space_is_valid(text: str) -> bool:
    """Independent reading: the grammar, a known hyperspace, and digits inside its choices."""
    match = SPACE_GRAMMAR.fullmatch(text)
    if match is None or match[1] not in list_hyperspaces():
        return False
    data = yaml.safe_load((Path(space_module.__file__).parent / "spaces" / f"{match[1]}.yaml").read_text())
    windows = [len(s["widths"]) - s["window"] + 1 for s in data["stages"][2:]]
    return all(int(b) < len(data["block_types"]) for b in match[2]) and \
        all(int(w) < n for w, n in zip(match[3], windows))


SPACE_SEEDS = ["onnxw-151122-023231", "mobilew-122222-155400", "onnxw-121122-133333", "onnxw_tiny-151122-010101"]


def test_space_decode_of_any_text_is_valid_or_input_error(fuzz_settings, text_mutations) -> None:
    @fuzz_settings
    @given(st.one_of(st.text(), st.text(alphabet="".join(NASTY) + "abnowxy0123456789"),
                     st.sampled_from(SPACE_SEEDS).flatmap(lambda text: text_mutations(text, NASTY))))
    def check(text: str) -> None:
        try:
            space = SpaceEncoding.decode(text)
        except InputError as exc:
            check_error(exc)
            assert not space_is_valid(text), text
            return
        assert space_is_valid(text), text
        assert space.encode() == text
    check()


@pytest.mark.parametrize("text, fragment", [
    ("onnxw-010\u066315-023101", "not a space encoding"),
    ("onnxw-151122-023231\n", "not a space encoding"),
    (" onnxw-151122-023231", "not a space encoding"),
    ("onnxw-151122_023231", "separates its digits with '_'"),
    ("onnxw-" + "1" * 5000 + "-023231", "5000 block digits '1111"),
    ("onnxw-" + "1" * 200_000 + "-023231", "is longer than 100000 characters"),
])
def test_space_decode_refuses_lookalikes(text: str, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment):
        SpaceEncoding.decode(text)


# --- subnet encodings ------------------------------------------------------------------------------

INT = r"[1-9][0-9]{0,4}"
SUBNET_GRAMMAR = re.compile(rf"d({INT}(?:#{INT})*)_k({INT}(?:#{INT})*)_w({INT}(?:#{INT})*)"
                            rf"_e((?:0|[0-9]+\.[0-9]+)(?:#(?:0|[0-9]+\.[0-9]+))*)_r({INT})")


def subnet_is_valid(text: str) -> bool:
    match = SUBNET_GRAMMAR.fullmatch(text)
    if match is None:
        return False
    depths = [int(d) for d in match[1].split("#")]
    expands = match[4].split("#")
    if any(e != "0" and (float(e) <= 0 or repr(float(e)) != e) for e in expands):
        return False
    return len(match[2].split("#")) == len(match[3].split("#")) == len(expands) == sum(depths)


@st.composite
def valid_subnets(draw: st.DrawFn) -> SubnetEncoding:
    space = draw(valid_spaces())
    return sample_subnet(space, np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1))))


def test_subnet_encode_decode_round_trip(fuzz_settings) -> None:
    @fuzz_settings
    @given(valid_subnets())
    def check(subnet: SubnetEncoding) -> None:
        text = subnet.encode()
        assert subnet_is_valid(text), text
        assert SubnetEncoding.decode(text) == subnet
        assert SubnetEncoding.decode(text).encode() == text
    check()


def test_subnet_decode_of_any_text_is_valid_or_input_error(fuzz_settings, text_mutations) -> None:
    @fuzz_settings
    @given(st.one_of(st.text(), st.text(alphabet="".join(NASTY) + "dkwer12345.#_"),
                     valid_subnets().map(SubnetEncoding.encode)
                     .flatmap(lambda text: text_mutations(text, NASTY))))
    def check(text: str) -> None:
        try:
            subnet = SubnetEncoding.decode(text)
        except InputError as exc:
            check_error(exc)
            assert not subnet_is_valid(text), text
            return
        assert subnet_is_valid(text), text
        assert subnet.encode() == text
    check()


@pytest.mark.parametrize("old, new, fragment", [
    ("_r160", "_r" + "2" * 5000, "resolution '22222.*\\(5000 characters\\) of .* exceeds 99999"),
    ("_r160", "_r\uff12\uff12\uff14", "resolution '２２４' .* is not an integer"),
    ("_r160", "_r0160", "leading zero"),
    ("_r160", "_r160\n", "resolution '160\\\\n' .* is not an integer"),
    ("#4.0#4.0#1.0", "#4#4.0#1.0", "entry 2 '4' .* is not an expand ratio"),
    ("e0#", "e0.0#", "entry 0 '0.0' .* is not an expand ratio"),
])
def test_subnet_decode_refuses_lookalikes(old: str, new: str, fragment: str) -> None:
    a0 = ("d1#1#2#2#2#2#2#1_k3#3#3#3#3#3#3#3#3#3#3#3#3_w16#16#32#32#64#64#112#112#144#144#240#240#320"
          "_e0#0.5#4.0#4.0#1.0#1.0#4.0#4.0#4.0#4.0#4.0#4.0#4.0_r160")
    assert SubnetEncoding.decode(a0).encode() == a0
    with pytest.raises(InputError, match=fragment):
        SubnetEncoding.decode(a0.replace(old, new, 1))


# --- hyperspace YAML mappings ----------------------------------------------------------------------

def hyperspace_mapping(name: str) -> dict:
    return yaml.safe_load((Path(space_module.__file__).parent / "spaces" / f"{name}.yaml").read_text())


def mapping_is_valid(d: object) -> bool:
    """Independent statement of the schema in hyperspace_from_dict's docstring."""
    def ints(v: object, increasing: bool = True) -> bool:
        return isinstance(v, list) and bool(v) and all(type(x) is int and 1 <= x <= 99999 for x in v) \
            and (not increasing or all(a < b for a, b in zip(v, v[1:])))

    def block(b: object) -> bool:
        return isinstance(b, dict) and set(b) == {"type", "kernels", "expands", "activation", "se"} \
            and isinstance(b["type"], str) and b["type"] != "" and ints(b["kernels"]) \
            and isinstance(b["expands"], list) \
            and all(type(e) in (int, float) and 0 < e <= 99999 for e in b["expands"]) \
            and isinstance(b["activation"], str) and b["activation"] != "" and type(b["se"]) is bool

    if not isinstance(d, dict) or set(d) != {"name", "resolutions", "lut_resolutions", "stages", "fixed_blocks",
                                             "block_types", "head"}:
        return False
    if not (isinstance(d["name"], str) and d["name"] and ints(d["resolutions"]) and ints(d["lut_resolutions"])
            and set(d["lut_resolutions"]) <= set(d["resolutions"])):
        return False
    names = ["first_conv", "stage0"] + [f"stage{i}" for i in range(1, 7)]
    if not isinstance(d["stages"], list) or len(d["stages"]) != 8:
        return False
    for stage, name in zip(d["stages"], names):
        if not isinstance(stage, dict) or set(stage) != {"name", "widths", "depths", "stride", "window"}:
            return False
        if stage["name"] != name or not ints(stage["widths"]) or not ints(stage["depths"]) \
                or type(stage["stride"]) is not int or stage["stride"] not in (1, 2):
            return False
        window = stage["window"]
        if name in ("first_conv", "stage0"):
            if window is not None:
                return False
        elif type(window) is not int or not 1 <= window <= len(stage["widths"]) \
                or len(stage["widths"]) - window + 1 > 10:
            return False
    fixed, blocks, head = d["fixed_blocks"], d["block_types"], d["head"]
    if not isinstance(fixed, dict) or set(fixed) != {"first_conv", "stage0"} or not all(map(block, fixed.values())):
        return False
    if not isinstance(blocks, list) or not 1 <= len(blocks) <= 10 or not all(map(block, blocks)):
        return False
    return isinstance(head, dict) and set(head) == {"final_expand", "feature_mix", "num_classes", "activation"} \
        and all(type(head[k]) is int and 1 <= head[k] <= 99999
                for k in ("final_expand", "feature_mix", "num_classes")) \
        and isinstance(head["activation"], str) and head["activation"] != ""


REPLACEMENTS = [None, "x", "", -1, 0, 3.5, float("nan"), [], {}, True, "12", 10 ** 30, [1, "a"],
                [2, 1], 2, 11, [3]]


def test_hyperspace_files_satisfy_the_schema() -> None:
    for name in list_hyperspaces():
        data = hyperspace_mapping(name)
        assert mapping_is_valid(data), name
        spec = hyperspace_from_dict(data, f"{name}.yaml")
        assert spec == load_hyperspace(name)
        assert [s.widths for s in spec.stages] == [tuple(s["widths"]) for s in data["stages"]]


def test_hyperspace_mapping_mutations_are_valid_or_input_error(fuzz_settings, mapping_mutations) -> None:
    @fuzz_settings
    @given(st.sampled_from(HYPERSPACES).map(hyperspace_mapping)
           .flatmap(lambda base: mapping_mutations(base, REPLACEMENTS)))
    def check(data: dict) -> None:
        try:
            spec = hyperspace_from_dict(data, "fuzz.yaml")
        except InputError as exc:
            check_error(exc)
            assert "fuzz.yaml" in str(exc)
            assert not mapping_is_valid(data)
            return
        assert mapping_is_valid(data), data
        assert spec.resolutions == tuple(data["resolutions"])
        assert [b.kernels for b in spec.block_types] == [tuple(b["kernels"]) for b in data["block_types"]]
    check()


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: d.pop("head"), r"lacks key\(s\) \['head'\]"),
    (lambda d: d.update(extra=1), r"unknown key\(s\) \['extra'\]"),
    (lambda d: d["stages"][3].update(widths="32, 48"), r"stages\[3\]\.widths is '32, 48'; expected a non-empty list"),
    (lambda d: d["block_types"][1].update(se="yes"), r"block_types\[1\]\.se is 'yes'; expected true or false"),
    (lambda d: d["stages"][2].update(window=9), r"stages\[2\]\.window is 9; expected an integer 1-3"),
])
def test_hyperspace_mapping_errors_name_the_key(edit, fragment: str) -> None:
    data = hyperspace_mapping("onnxw")
    edit(data)
    with pytest.raises(InputError, match=fragment):
        hyperspace_from_dict(data, "onnxw.yaml")


# --- block LUT files -------------------------------------------------------------------------------

VALID_LUT = (b"3#96#0.5_5#80#0.5_5#112#1.0_5#96#1.5_5#112#1.5,1x48x24x24,0.4991,251.7888,1.7723,3.3435\n"
             b"5#80#1.0_5#112#0.5,1x32x28x28,0.4260,137.4143,0.7177,2.7622\n"
             b"7#112#None_7#96#4,1x96x20x20,0.4394,194.6808,1.9667,3.1773\n")


def reference_lut(data: bytes) -> list[tuple] | None:
    """A second reader of the LUT grammar (module docstring of moonlit.spaceevo.lut), built on ``csv``."""
    if any(b < 0x20 and b not in (0x0A, 0x0D) or b > 0x7E for b in data):
        return None
    text = data.decode("ascii")
    if not text.endswith("\n") or '"' in text or re.search(r"\r(?!\n)", text):
        return None

    def integer(cell: str) -> int | None:
        ok = cell.isdigit() and 1 <= len(cell) <= 5 and cell[0] != "0"
        return int(cell) if ok else None

    def number(cell: str) -> float | None:
        whole, _, fraction = cell.partition(".")
        ok = whole.isdigit() and (fraction.isdigit() or "." not in cell) and len(cell) <= 20
        return float(cell) if ok else None

    rows = []
    for line_cells in csv.reader(io.StringIO(text, newline="")):
        if not line_cells:
            continue
        if len(line_cells) != 6 or len(",".join(line_cells)) > 65536:
            return None
        blocks = []
        for block in line_cells[0].split("_"):
            parts = block.split("#")
            if len(parts) != 3 or integer(parts[0]) is None or integer(parts[1]) is None:
                return None
            expand: int | float | None
            if parts[2] == "None":
                expand = None
            elif integer(parts[2]) is not None:
                expand = int(parts[2])
            elif "." in parts[2] and number(parts[2]) and str(float(parts[2])) == parts[2]:
                expand = float(parts[2])
            else:
                return None
            blocks.append((int(parts[0]), int(parts[1]), expand))
        dims = line_cells[1].split("x")
        if len(dims) != 4 or dims[0] != "1" or any(integer(d) is None for d in dims[1:]):
            return None
        numbers = [number(c) for c in line_cells[2:]]
        if None in numbers:
            return None
        rows.append((tuple(blocks), tuple(int(d) for d in dims), *numbers))
    return rows or None


@st.composite
def mutated_lut(draw: st.DrawFn) -> bytes:
    data = VALID_LUT
    for _ in range(draw(st.integers(1, 2))):
        op = draw(st.sampled_from(["truncate", "byte", "insert", "delete", "cell", "append"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "truncate":
            data = data[:i]
        elif op == "byte" and data:
            data = data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1:]
        elif op == "insert":
            data = data[:i] + draw(st.sampled_from([b",", b"_", b"#", b"x", b"\n", b"\r\n", b"\r", b"1", b".",
                                                    b"\xff", b"\xd9\xa3", b'"'])) + data[i:]
        elif op == "delete":
            data = data[:i] + data[i + 1:]
        elif op == "cell":
            cells = [m.end() for m in re.finditer(rb",", data)]
            if cells:
                start = draw(st.sampled_from(cells))
                end = min(x for x in (data.find(b",", start), data.find(b"\n", start), len(data)) if x >= 0)
                bad = draw(st.sampled_from([b"nan", b"inf", b"-inf", b"-5", b"-0.1", b"1e400", b"1e3", b"0",
                                            b"\xd9\xa3.5", b"1_0", b" 1.0", b"9" * 5000, b"", b"+1"]))
                data = data[:start] + bad + data[end:]
        elif op == "append":
            data += draw(st.sampled_from([b"\n", b"3#32#4,1x32x80x80,0.1,0.2,0.3", b"\r\n"]))
    return data


def lut_rows(lut: BlockLUT) -> list[tuple]:
    return [(r.blocks, r.input_shape, r.nsr, r.mflops, r.mparams, r.latency_ms) for r in lut.rows]


def test_lut_file_mutations_are_read_as_the_reference_reads_them_or_refused(fuzz_settings, tmp_path: Path) -> None:
    path = tmp_path / "stage3_4_1.csv"

    @fuzz_settings
    @given(st.one_of(mutated_lut(), st.binary(max_size=200)))
    def check(data: bytes) -> None:
        path.write_bytes(data)
        expected = reference_lut(data)
        try:
            lut = BlockLUT.read(path)
        except InputError as exc:
            check_error(exc)
            assert str(path) in str(exc)
            assert expected is None, data
            return
        assert expected is not None, data
        assert lut_rows(lut) == expected
        assert all(isinstance(e, type(x[2])) for row, ref in zip(lut.rows, expected)
                   for e, x in zip([b[2] for b in row.blocks], ref[0]))
    check()


finite = st.floats(0, 1e6, allow_nan=False)


@st.composite
def lut_rows_strategy(draw: st.DrawFn) -> LUTRow:
    blocks = draw(st.lists(st.tuples(st.integers(1, 99999), st.integers(1, 99999),
                                     st.one_of(st.none(), st.integers(1, 99999),
                                               st.sampled_from([0.5, 1.0, 1.5, 0.25, 6.0]))), min_size=1, max_size=8))
    shape = (1, *draw(st.tuples(st.integers(1, 99999), st.integers(1, 99999), st.integers(1, 99999))))
    return LUTRow(tuple(blocks), shape, draw(finite), draw(finite), draw(finite), draw(finite))


def test_lut_write_read_round_trip(fuzz_settings, tmp_path: Path) -> None:
    @fuzz_settings
    @given(st.lists(lut_rows_strategy(), min_size=1, max_size=5))
    def check(rows: list[LUTRow]) -> None:
        path = BlockLUT(2, 1, 0, rows).write(tmp_path)
        read = BlockLUT.read(path)
        assert [r.to_line() for r in read.rows] == [r.to_line() for r in rows]
        # the numbers come back as printed with 4 decimals
        assert [r.nsr for r in read.rows] == [float(f"{r.nsr:.4f}") for r in rows]
        assert [r.blocks for r in read.rows] == [r.blocks for r in rows]
    check()


@pytest.mark.parametrize("cell, fragment", [
    ("-5", "NSR '-5' is negative"), ("nan", "NSR 'nan' is not a finite"), ("inf", "NSR 'inf' is not a finite"),
    ("9" * 5000, "NSR '99999.*is longer than 20 characters"), ("1e3", "NSR '1e3' is not a finite"),
])
def test_lut_with_a_bad_nsr_is_refused_naming_file_line_and_cell(tmp_path: Path, cell: str, fragment: str) -> None:
    lines = VALID_LUT.decode().splitlines(keepends=True)
    cells = lines[1].split(",")
    cells[2] = cell
    lines[1] = ",".join(cells)
    path = tmp_path / "stage3_4_1.csv"
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(InputError, match=f"stage3_4_1.csv, line 2: {fragment}"):
        BlockLUT.read(path)


def test_lut_cut_mid_row_or_with_bad_bytes_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "stage3_4_1.csv"
    path.write_bytes(VALID_LUT[:-3])  # "3.17" of the last row: numerically fine, but cut
    with pytest.raises(InputError, match="line 3: the last line .* does not end with a newline"):
        BlockLUT.read(path)
    path.write_bytes(VALID_LUT[:100] + "\u0663".encode() + VALID_LUT[100:])
    with pytest.raises(InputError, match=r"line 2, column \d+: byte b'\\xd9' is not printable ASCII"):
        BlockLUT.read(path)


def test_lut_set_with_one_negative_nsr_is_refused_before_scoring(tmp_path: Path) -> None:
    """A complete onnxw_tiny LUT set scores; with one NSR of 0 the scorer refuses it, with one of -5 the reader."""
    spec = load_hyperspace("onnxw_tiny")
    rng = np.random.default_rng(0)
    luts = []
    for stage, windows in enumerate(spec.num_windows, 1):
        height = {64: 64 // spec.input_downsample(f"stage{stage}"), 96: 96 // spec.input_downsample(f"stage{stage}")}
        for block in range(len(spec.block_types)):
            for window in range(windows):
                rows = [LUTRow(((3, 8, None),), (1, 8, height[r], height[r]), float(rng.uniform(0.1, 1)), 1.0, 0.1,
                               float(rng.uniform(0.1, 1))) for r in (64, 96) for _ in range(3)]
                luts.append(BlockLUT(stage, block, window, rows))
    LUTSet("onnxw_tiny", luts).write(tmp_path)
    scorer = QTScorer(LUTSet.read(tmp_path, "onnxw_tiny"), [0.05, 0.1], [3.0], num_samples=1000, batch_size=500)
    assert scorer.score(SpaceEncoding.decode("onnxw_tiny-151122-010101"), np.random.default_rng(0)).score > 0
    target = tmp_path / "stage2_1_0.csv"
    original = target.read_text()
    target.write_text(original.replace(original.split(",")[2], "0.0000", 1))
    with pytest.raises(InputError, match=r"stage2_1_0.csv: NSR 0 in row\(s\) \[1\]; the Q-T score needs NSRs > 0"):
        QTScorer(LUTSet.read(tmp_path, "onnxw_tiny"), [0.05, 0.1], [3.0], num_samples=1000, batch_size=500)
    lines = original.splitlines(keepends=True)
    cells = lines[0].split(",")
    cells[2] = "-5.0000"
    lines[0] = ",".join(cells)
    target.write_text("".join(lines))
    with pytest.raises(InputError, match=r"stage2_1_0.csv, line 1: NSR '-5.0000' is negative"):
        LUTSet.read(tmp_path, "onnxw_tiny")


# --- the search-result file of named SEQnets -------------------------------------------------------

A0 = ("d1#1#2#2#2#2#2#1_k3#3#3#3#3#3#3#3#3#3#3#3#3_w16#16#32#32#64#64#112#112#144#144#240#240#320"
      "_e0#0.5#4.0#4.0#1.0#1.0#4.0#4.0#4.0#4.0#4.0#4.0#4.0_r160")


@pytest.mark.parametrize("text, fragment", [
    ("a: [1, 2", "is not a readable YAML file"),
    ("- 1\n- 2\n", "lacks the mappings"),
    ("specific_supernet_encoding_dict: {s: onnxw-151122-023231}\nspecific_subnet_encoding_dict: {m: s}\n",
     r"entry of 'm' should be \[supernet name, subnet encoding\]"),
    ("specific_supernet_encoding_dict: {s: onnxw-151122-023231}\nspecific_subnet_encoding_dict: {m: [t, x]}\n",
     "'m' names supernet 't', not one of"),
    ("specific_supernet_encoding_dict: {s: onnxw-151122-023231}\n"
     f"specific_subnet_encoding_dict: {{m: [s, '{A0.replace('r160', 'r１６０')}']}}\n",
     r"entry 'm': resolution '１６０' .* is not an integer"),
])
def test_search_result_file_errors_name_file_and_entry(tmp_path: Path, text: str, fragment: str) -> None:
    from moonlit.spaceevo.models import load_search_result

    path = tmp_path / "search_result.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=fragment) as caught:
        load_search_result(path)
    assert str(path) in str(caught.value)


def test_search_result_file_by_hand(tmp_path: Path) -> None:
    from moonlit.spaceevo.models import load_search_result

    path = tmp_path / "search_result.yaml"
    path.write_text(f"specific_supernet_encoding_dict: {{s: onnxw-151122-023231}}\n"
                    f"specific_subnet_encoding_dict: {{m: [s, '{A0}']}}\n", encoding="utf-8")
    spec = load_search_result(path)["m"]
    assert spec.space.blocks == (1, 5, 1, 1, 2, 2) and spec.subnet.resolution == 160 and spec.supernet == "s"
