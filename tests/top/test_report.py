"""``moonlit.top.report``: the GLUE table and the benchmark speedup table, from hand-written results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moonlit.common.config import compose_config
from moonlit.common.errors import InputError
from moonlit.top.report import PAPER, run, speed_table, table


def _report(*overrides: str) -> dict:
    return run(compose_config("top", "report", list(overrides)))


def _case(profile, batch, real, padded, speedups):  # noqa: ANN001, ANN202
    return {"profile": profile, "batch_size": batch, "real_length": real, "padded_length": padded,
            "schedules": [{"name": name, "mac_reduction": 4.0, "mac_reduction_vs_padded": 13.0,
                           "speedup": speedup} for name, speedup in speedups.items()]}


def test_speed_table_rows_baselines_and_headline(tmp_path: Path) -> None:
    results = {"cases": [
        _case(None, 32, 128, 128, {"4x": {"torch": 4.2, "ort_fp32": 4.5}}),
        _case(None, 32, 11, 64, {"4x": {"torch": 11.0, "ort_fp32": 11.9}}),
        _case("rte", 8, 71, 256, {"4x": {"torch": 9.0, "ort_fp32": 9.5}}),
    ]}
    rendered = speed_table(results)
    assert rendered["columns"][-2:] == ["torch speedup", "ort_fp32 speedup"]
    first, padded, rte = rendered["rows"]
    assert first[:6] == ["fixed length", 32, "128", "dense, same input", "4x", 4.0]  # unpadded: its own reduction
    assert padded[:6] == ["padded", 32, "11 → 64", "padded dense", "4x", 13.0]  # padded: vs the padded model
    assert rte[0] == "rte" and rte[2] == "71 → 256"
    assert "paper: up to 7.4x" in rendered["caption"] and "ours up to 11.9x" in rendered["caption"]

    (tmp_path / "results.json").write_text(json.dumps(results))
    written = _report(f"benchmark={tmp_path}")
    assert written["path"] == str(tmp_path / "SPEEDUP.md")
    assert "| rte | 8 | 71 → 256 |" in (tmp_path / "SPEEDUP.md").read_text()


def test_missing_benchmark_results_say_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="run python -m moonlit.top.benchmark"):
        _report(f"benchmark={tmp_path}")
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(InputError, match="results.json is not a moonlit.top.benchmark results.json"):
        _report(f"benchmark={tmp_path}")
    assert not (tmp_path / "SPEEDUP.md").exists()


@pytest.mark.parametrize("overrides", [[], ["root=a", "benchmark=b"]], ids=["neither", "both"])
def test_report_needs_exactly_one_of_root_and_benchmark(overrides: list[str]) -> None:
    with pytest.raises(InputError, match="give one of root=.* or benchmark="):
        _report(*overrides)


def test_glue_report_writes_table_md_with_its_source(tmp_path: Path) -> None:
    prune = {"eval": {"dev": {"metric": 0.61, "flops_reduction_vs_padded": 9.5, "flops_reduction": 3.0,
                              "measured_mac_sparsity": 0.44}}, "dev_selected": {"metric": 0.6}}
    (tmp_path / "top" / "prune" / "cola").mkdir(parents=True)
    (tmp_path / "top" / "prune" / "cola" / "results.json").write_text(json.dumps(prune))
    written = _report(f"root={tmp_path}", 'source="generated data (tiny BERT)"', "command=my-cmd")
    markdown = (tmp_path / "top" / "TABLE.md").read_text()
    assert written["path"] == str(tmp_path / "top" / "TABLE.md") and markdown == written["markdown"] + "\n"
    assert "| cola | Matthews | 60.30 | 10.39 | – | 61.00 | 60.00 | 9.50 | 3.00 | 0.44 |" in markdown
    assert "ours: generated data (tiny BERT), `my-cmd`" in markdown


def test_glue_report_without_runs_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=f"no ToP runs under {tmp_path}"):
        _report(f"root={tmp_path}")
    assert not (tmp_path / "top").exists()


def test_glue_table_marks_missing_tasks() -> None:
    run = {"prune": {"eval": {"dev": {"metric": 0.5, "flops_reduction_vs_padded": 9.0, "flops_reduction": 2.5,
                                      "measured_mac_sparsity": 0.43}},
                     "dev_selected": {"metric": 0.52}}}
    rendered = table({"cola": run}, "src", "cmd")
    rows = {row[0]: row for row in rendered["rows"]}
    assert rows["cola"][2:4] == [PAPER["cola"][1], PAPER["cola"][2]]
    assert rows["cola"][5] == pytest.approx(50.0) and rows["cola"][6] == pytest.approx(52.0)
    assert rows["rte"][4:] == [None] * 6
