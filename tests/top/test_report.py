"""``moonlit.top.report``: the GLUE table and the benchmark speedup table, from hand-written results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moonlit.top.report import PAPER, main, speed_table, table


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
    main(["--benchmark", str(tmp_path)])
    assert "| rte | 8 | 71 → 256 |" in (tmp_path / "SPEEDUP.md").read_text()


def test_missing_benchmark_results_say_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="run python -m moonlit.top.benchmark"):
        main(["--benchmark", str(tmp_path)])


def test_glue_table_marks_missing_tasks() -> None:
    run = {"prune": {"eval": {"dev": {"metric": 0.5, "flops_reduction_vs_padded": 9.0, "flops_reduction": 2.5,
                                      "measured_mac_sparsity": 0.43}},
                     "dev_selected": {"metric": 0.52}}}
    rendered = table({"cola": run}, "src", "cmd")
    rows = {row[0]: row for row in rendered["rows"]}
    assert rows["cola"][2:4] == [PAPER["cola"][1], PAPER["cola"][2]]
    assert rows["cola"][5] == pytest.approx(50.0) and rows["cola"][6] == pytest.approx(52.0)
    assert rows["rte"][4:] == [None] * 6
