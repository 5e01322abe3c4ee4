"""``moonlit.litepred.report``: the cross-platform table from hand-written build/eval files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from moonlit.common.config import compose_config
from moonlit.common.errors import InputError
from moonlit.litepred.report import run


def _report(root: Path) -> str:
    return run(compose_config("litepred", "report", [f"root={root}"]))


def _write(root: Path, platform: str, within10: float, ceiling: float, earlier: list | None = None) -> None:
    (root / "eval" / platform).mkdir(parents=True)
    (root / "predictors" / platform).mkdir(parents=True)
    results = {"platform": platform,
               "accuracy": {"n": 120, "within_5pct": 0.5, "within_10pct": within10, "mape": 0.07,
                            "ceiling_within_10pct": ceiling, **({"earlier_passes": earlier} if earlier else {})},
               "single_model_seconds": [{"total": 0.020}, {"total": 0.030}, {"total": 0.040}],
               "batch": {"architectures_per_second": 2500.0},
               "by_family": {"timm-mobile": {"n": 23, "within_10pct": within10 - 0.1, "ceiling_within_10pct": ceiling}}}
    (root / "eval" / platform / "results.json").write_text(json.dumps(results))
    build = {"kernels": {"measured": 3000, "already_measured": 1000}, "kernel_profiling_seconds_total": 600.0}
    (root / "predictors" / platform / "build.json").write_text(json.dumps(build))


def test_table_rows_come_from_the_files(tmp_path: Path) -> None:
    _write(tmp_path, "ort-fp32", 0.95, 0.99)
    _write(tmp_path, "ort-int8", 0.90, 0.97,
           earlier=[{"pass": 0, "within_10pct": 0.4}, {"pass": 1, "within_10pct": 0.8}])
    rendered = _report(tmp_path)
    table = (tmp_path / "TABLE.md").read_text()
    # kernels 3000 + 1000, 600 s = 10.0 min, percentages, median single-model time 30 ms
    # earlier sessions: every stored earlier pass, none stored for ort-fp32
    assert "| ort-fp32 | 4000 | 10.0 | 120 | 50.0 | 95.0 | 99.0 | n/a | 7.0 | 30.0 | 2500.0 |" in table
    assert "| ort-int8 | 4000 | 10.0 | 120 | 50.0 | 90.0 | 97.0 | 40.0 / 80.0 | 7.0 | 30.0 | 2500.0 |" in table
    assert "| timm-mobile | 23 | 85.0 (99.0) | 80.0 (97.0) |" in table  # the by-family table, ceiling in brackets
    assert rendered.strip() == table.strip()
    assert "(`bash scripts/reproduce_litepred.sh`)" in table  # the config's command, named in the source lines


def test_nothing_to_render_says_what_to_run(tmp_path: Path) -> None:
    expected = re.escape(f"root={tmp_path}: no eval/<platform>/results.json") + ".* moonlit-litepred build"
    with pytest.raises(InputError, match=expected):
        _report(tmp_path)
    assert not (tmp_path / "TABLE.md").exists()
