"""Block LUT reader/writer: byte-identical on the reference's released onnxw LUTs, rows legal for the hyperspace."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from moonlit.spaceevo.lut import BlockLUT, LUTRow, LUTSet, lut_file_name, parse_lut_file_name
from moonlit.spaceevo.space import load_hyperspace

RELEASED = Path(__file__).resolve().parents[3] / "shared" / "data" / "spaceevo" / "block_lut" / "onnxw"  # shared/ beside the clone


@pytest.fixture(scope="module")
def released() -> LUTSet:
    if not RELEASED.is_dir():
        pytest.skip(f"{RELEASED} not available")
    return LUTSet.read(RELEASED, "onnxw")


def test_released_luts_round_trip_byte_identical(released: LUTSet, tmp_path: Path) -> None:
    assert len(released) == 132 and released.missing() == []  # 6 blocks x (2 + 4*5) windows
    released.write(tmp_path)
    for source in sorted(RELEASED.glob("*.csv")):
        assert (tmp_path / source.name).read_bytes() == source.read_bytes(), source.name


def test_released_rows_are_legal_substages_of_their_stage_block_and_window(released: LUTSet) -> None:
    spec = load_hyperspace("onnxw")
    for lut in released:
        stage = spec.stages[lut.stage + 1]
        previous = spec.stages[lut.stage]
        block = spec.block_types[lut.block]
        window = stage.widths[lut.window: lut.window + stage.window]
        expands = set(block.expands) if block.expands else {None}
        assert len(lut.rows) == 1000
        for row in lut.rows:
            assert len(row.blocks) in stage.depths, (lut.file_name, row)
            assert {k for k, _, _ in row.blocks} <= set(block.kernels), (lut.file_name, row)
            assert {w for _, w, _ in row.blocks} <= set(window), (lut.file_name, row)
            assert {e for _, _, e in row.blocks} <= expands, (lut.file_name, row)
            assert row.input_shape[1] in previous.widths, (lut.file_name, row)  # input = previous stage's output
        # every row maps to one of the three LUT resolutions (raises otherwise), all three present
        assert set(lut.resolutions(spec).tolist()) == {160, 192, 224}


def test_row_format_by_hand(tmp_path: Path) -> None:
    row = LUTRow(((5, 32, 4), (3, 48, 1.0), (7, 64, None)), (1, 32, 80, 80), 0.26071, 86.70409, 0.0267, 2.43265)
    assert row.to_line() == "5#32#4_3#48#1.0_7#64#None,1x32x80x80,0.2607,86.7041,0.0267,2.4327\n"
    parsed = LUTRow.from_line(row.to_line())
    assert parsed.blocks == row.blocks and isinstance(parsed.blocks[0][2], int) and parsed.blocks[2][2] is None
    lut = BlockLUT(1, 1, 0, [row, row])
    path = lut.write(tmp_path)
    assert path.name == "stage1_1_0.csv" and path.read_text().count("\n") == 2
    assert BlockLUT.read(path).rows[1].to_line() == row.to_line()


@pytest.mark.parametrize("line, message", [
    ("3#32#4,1x32x80x80,0.1,0.2,0.3", "5 comma-separated cells, expected 6"),
    ("3#32,1x32x80x80,0.1,0.2,0.3,0.4", "block '3#32' is not k#w#e"),
    ("3#32#four,1x32x80x80,0.1,0.2,0.3,0.4", "expand 'four'"),
    ("3#32#4,1x32x80,0.1,0.2,0.3,0.4", "input shape '1x32x80' is not 1xCxHxW"),
    ("3#32#4,1x32x80x80,0.1,fast,0.3,0.4", "MFLOPs 'fast' is not a finite decimal number"),
])
def test_malformed_lines_name_the_bad_cell(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LUTRow.from_line(line)


def test_file_names_and_missing_tables(tmp_path: Path) -> None:
    assert parse_lut_file_name(lut_file_name(3, 5, 2)) == (3, 5, 2)
    with pytest.raises(ValueError, match="'stage3_5.csv' does not match"):
        parse_lut_file_name("stage3_5.csv")
    row = LUTRow(((3, 32, 4),), (1, 16, 80, 80), 0.5, 1.0, 0.1, 1.0)
    BlockLUT(1, 1, 0, [row]).write(tmp_path)
    partial = LUTSet.read(tmp_path, "onnxw")
    missing = partial.missing()
    assert len(missing) == 131 and "stage1_1_0.csv" not in missing and "stage6_5_3.csv" in missing
    BlockLUT(2, 1, 4, [row]).write(tmp_path)  # stage2 of onnxw has windows 0-3
    with pytest.raises(ValueError, match="stage2_1_4.csv is not a"):
        LUTSet.read(tmp_path, "onnxw")


def test_rows_at_an_unknown_resolution_are_rejected(tmp_path: Path) -> None:
    spec = load_hyperspace("onnxw")
    lut = BlockLUT(2, 0, 0, [LUTRow(((3, 32, None),), (1, 32, 50, 50), 0.5, 1.0, 0.1, 1.0)])
    with pytest.raises(ValueError, match="resolutions \\[200\\], expected only \\[160, 192, 224\\]"):
        lut.resolutions(spec)  # stage2 input is 1/4 of the resolution: 50 -> 200


def test_copied_release_reads_from_any_folder(released: LUTSet, tmp_path: Path) -> None:
    shutil.copy(RELEASED / "stage4_3_1.csv", tmp_path)
    one = LUTSet.read(tmp_path, "onnxw")
    assert [r.to_line() for r in one[(4, 3, 1)].rows] == [r.to_line() for r in released[(4, 3, 1)].rows]
    with pytest.raises(KeyError, match="stage4_3_2.csv"):
        one[(4, 3, 2)]
