"""Quickstart section "SpaceEvo" end to end at reduced budgets (block KD -> LUTs -> space search -> section)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from moonlit.common.config import compose_config
from moonlit.common.report import build_report
from moonlit.spaceevo.lut import LUTSet
from moonlit.spaceevo.quickstart import run_quickstart
from moonlit.spaceevo.space import SpaceEncoding


@pytest.mark.slow  # ~30 s alone; keeps the default tier of these files under ~90 s
def test_quickstart_section_end_to_end(tmp_path: Path) -> None:
    cfg = compose_config("spaceevo", "quickstart", [
        f"output_dir={tmp_path / 'spaceevo'}", "kd.fp32_steps=2", "kd.lsq_steps=1", "lut.num_samples=4",
        "search.budget=60", "search.population=20", "search.rerank_top=5", "search.rerank_repeats=4"])
    results = run_quickstart(cfg)
    out = tmp_path / "spaceevo"
    luts = LUTSet.read(out / "block_lut", "onnxw_tiny")
    assert luts.missing() == [] and all(len(lut.rows) == 4 for lut in luts)
    assert results["constraints_ms"][0] < results["constraints_ms"][1]
    means = [row["mean"] for row in results["ranked"]]
    assert means == sorted(means, reverse=True) and len(means) == 5
    # the re-ranked spaces are the single-pass top 5 of the search history
    history = sorted(results["history"], key=lambda item: -item[1])[:5]
    assert {row["space"] for row in results["ranked"]} == {space for space, _ in history}
    assert all(SpaceEncoding.decode(row["space"]).hyperspace == "onnxw_tiny" for row in results["ranked"])
    assert len(results["kd"]) == 36 and np.isfinite([row[3] for row in results["kd"]]).all()
    section = json.loads((out / "section.json").read_text())
    assert section["name"] == "spaceevo" and (out / section["figures"][0]["path"]).is_file()
    report = build_report(tmp_path).read_text()
    assert "Ranked search spaces" in report and results["ranked"][0]["space"] in report
