"""The LitePred quickstart section as users run it, on the synthetic ``debug`` platform (slow tier)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_quickstart_on_debug_writes_the_section(tmp_path: Path) -> None:
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "moonlit.litepred.quickstart", "platform=debug", f"paths.output_root={tmp_path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "quickstart" / "litepred"
    section = json.loads((out / "section.json").read_text())
    assert section["name"] == "litepred" and section["command"] == "python -m moonlit.litepred.quickstart"
    results = json.loads((out / "results.json").read_text())
    names = [m["name"] for m in results["models"]]
    assert len(names) == 12 and len(set(names)) == 12  # 8 sampled held-out + 4 named timm models
    assert results["accuracy"]["ceiling_within_10pct"] == 1.0  # debug is deterministic
    assert (out / "scatter.png").stat().st_size > 5_000
