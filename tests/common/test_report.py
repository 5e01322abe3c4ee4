from __future__ import annotations

import json
from pathlib import Path

import pytest

from moonlit.common.config import compose_config
from moonlit.common.report import build_report, render_table, run, write_section


def test_render_table_matches_hand_written_markdown() -> None:
    table = {
        "caption": "Latency",
        "columns": ["model", "ms", "ok"],
        "rows": [["a|b", 1.23456, True], ["c", None, False]],
        "floatfmt": ".2f",
        "source": "unit test",
    }
    expected = (
        "**Latency**\n\n"
        "| model | ms | ok |\n"
        "|---|---|---|\n"
        "| a\\|b | 1.23 | yes |\n"
        "| c | – | no |\n\n"
        "*Source: unit test*"
    )
    assert render_table(table) == expected


def test_row_length_mismatch_names_the_row(tmp_path: Path) -> None:
    bad = {"name": "x", "title": "X", "tables": [{"caption": "T", "columns": ["a", "b"], "rows": [[1, 2], [3]]}]}
    with pytest.raises(ValueError, match="row 1 of table 'T'.*1 cells, expected 2"):
        write_section(tmp_path / "x", bad)


def test_missing_required_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing 'title'"):
        write_section(tmp_path / "x", {"name": "x"})


def test_report_orders_sections_and_links_figures(tmp_path: Path) -> None:
    write_section(tmp_path / "zeta", {"name": "zeta", "title": "Zeta first", "order": 0,
                                      "figures": [{"path": "plot.png", "caption": "a plot"}]})
    write_section(tmp_path / "alpha", {"name": "alpha", "title": "Alpha second", "order": 5,
                                       "tables": [{"columns": ["k"], "rows": [[7]]}]})
    report = build_report(tmp_path).read_text()
    assert report.index("## Zeta first") < report.index("## Alpha second")
    assert "](zeta/plot.png)" in report
    assert "| 7 |" in report
    assert json.loads((tmp_path / "zeta" / "section.json").read_text())["order"] == 0


def test_empty_report_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="section.json"):
        build_report(tmp_path)


def test_invalid_section_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "section.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken/section.json"):
        build_report(tmp_path)


def test_report_app_renders_the_configured_folder_and_title(tmp_path: Path) -> None:
    write_section(tmp_path / "only", {"name": "only", "title": "Only section"})
    cfg = compose_config("common", "report", [f"root={tmp_path}", 'title="A (custom) title"'])
    assert run(cfg) == {"report": tmp_path / "REPORT.md"}
    assert (tmp_path / "REPORT.md").read_text().startswith("# A (custom) title\n")
    assert compose_config("common", "report").root == "outputs/quickstart"  # the quickstart's folder by default
