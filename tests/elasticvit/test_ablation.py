"""ElasticViT's sampler ablation (moonlit.elasticvit.ablation): level picks, the paper's claim, report, runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from moonlit.common.config import compose_config
from moonlit.common.errors import InputError
from moonlit.elasticvit.ablation import level_subnets, paper_claims, plot_ablation, render_report, run
from moonlit.elasticvit.tables import build_tables, subnets_to_array, total_macs
from moonlit.elasticvit.train_step import space_from_config

# the reduced space of the smoke experiment (the ablation's scale=smoke trains it)
SPACE = space_from_config(OmegaConf.to_container(compose_config("elasticvit", "train", ["experiment=smoke"]).space))


def test_level_subnets_are_the_smallest_median_and_largest_rows() -> None:
    tables = build_tables((0.6, 1.4), 15, band=0.2, num_classes=4, space=SPACE)
    picked = level_subnets(tables)
    for level, subnets in picked.items():
        macs = sorted(tables.macs[level].tolist())
        got = {pos: float(total_macs(subnets_to_array([s]), tables.counter, 4, SPACE)[0]) for pos, s in subnets.items()}
        assert got["smallest"] == pytest.approx(macs[0])
        assert got["largest"] == pytest.approx(macs[-1])
        assert got["middle"] == pytest.approx(macs[len(macs) // 2])


def _section() -> dict:
    top1 = {
        "uniform": {"0.6": {"smallest": 50.0, "middle": 55.0, "largest": 57.0},
                    "1.8": {"smallest": 70.0, "middle": 71.0, "largest": 72.0}},
        "adjacent_step": {"0.6": {"smallest": 51.5, "middle": 56.0, "largest": 57.0},
                          "1.8": {"smallest": 70.0, "middle": 71.5, "largest": 71.6}},
        "complexity_only": {"0.6": {"smallest": 50.5, "middle": 55.0, "largest": 57.0},
                            "1.8": {"smallest": 70.0, "middle": 71.0, "largest": 72.0}},
    }
    conflict = {"steps": 9, "mean": 0.4, "median": 0.41, "negative_fraction": 0.1}
    samplers = ["uniform", "complexity_only", "adjacent_step"]
    results = {s: {"top1": top1[s], "gradient_conflict": conflict, "steps": 10, "train_seconds": 1.0}
               for s in samplers}
    return {"samplers": samplers, "results": results,
            "level_mmacs": {lv: {"smallest": 0.6, "middle": 0.7, "largest": 0.8} for lv in ("0.6", "1.8")},
            "claims": paper_claims(results, samplers)}


def test_paper_claim_against_hand_values() -> None:
    claims = _section()["claims"]
    # adjacent_step: smallest 51.5 - 50.0 = +1.5 (>= 1), largest 71.6 - 72.0 = -0.4 (>= -0.5): met
    assert claims["adjacent_step"] == {"smallest_gain_points": 1.5, "largest_change_points": -0.4, "met": True}
    # complexity_only: +0.5 on the smallest is under 1 point: not met
    assert claims["complexity_only"]["met"] is False
    assert "uniform" not in claims
    assert paper_claims({"adjacent_step": {}}, ["adjacent_step"]) == {}  # no baseline, no claim


def test_report_and_plot(tmp_path: Path) -> None:
    section = _section()
    text = render_report(section)
    assert "| 0.6 | smallest | 0.60 | 50.00 | 50.50 | 51.50 |" in text
    assert "| adjacent_step | 1.5 | -0.4 | yes |" in text or "| adjacent_step | 1.5 | -0.4 | True |" in text
    path = plot_ablation(section, tmp_path / "a.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_bad_sampler_list_writes_nothing(tmp_path: Path) -> None:
    for overrides, message in ((["samplers=[uniform,nonsense]"], "samplers"),
                               (["samplers=[uniform]", "ranking.sampler=adjacent_step"], "ranking.sampler"),
                               (["ranking.count=1"], "ranking.count")):
        cfg = compose_config("elasticvit", "ablation", ["scale=smoke", f"paths.output_root={tmp_path}", *overrides])
        with pytest.raises(InputError, match=message):
            run(cfg)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_smoke_ablation_runs_and_a_rerun_resumes(tmp_path: Path) -> None:
    overrides = ["scale=smoke", f"paths.output_root={tmp_path}", "samplers=[uniform,adjacent_step]", "ranking.count=3"]
    first = run(compose_config("elasticvit", "ablation", overrides))
    out = Path(first["config"]["output_dir"])
    for name in ("section.json", "ablation.md", "ablation.png", "ranking.png"):
        assert (out / name).is_file(), name
    for sampler in ("uniform", "adjacent_step"):
        conflict = first["results"][sampler]["gradient_conflict"]
        assert conflict["steps"] == first["results"][sampler]["steps"] - 1
        assert -1 <= conflict["mean"] <= 1
    assert len(first["ranking"]["subnets"]) == 3
    macs = [s["macs"] for s in first["ranking"]["subnets"]]
    assert macs == sorted(macs)  # spread from the smallest to the largest
    # a second invocation finds every run complete: the same results, nothing retrained
    second = run(compose_config("elasticvit", "ablation", overrides))
    assert second["results"] == first["results"]
    assert second["ranking"]["subnets"] == first["ranking"]["subnets"]
    assert json.loads((out / "section.json").read_text())["samplers"] == ["uniform", "adjacent_step"]


def test_reproduce_script_help_and_bad_input(tmp_path: Path) -> None:
    import os
    import subprocess

    script = Path(__file__).resolve().parents[2] / "scripts" / "reproduce_elasticvit_fmnist.sh"
    shown = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True)
    assert shown.returncode == 0 and "--smoke" in shown.stdout
    refused = subprocess.run(["bash", str(script), "--nope"], capture_output=True, text=True)
    assert refused.returncode == 2 and "'--nope'" in refused.stderr
    missing = subprocess.run(["bash", str(script), "--smoke"], capture_output=True, text=True,
                             env={**os.environ, "MOONLIT_DATA": str(tmp_path)})
    assert missing.returncode == 2 and "bash scripts/get_data.sh" in missing.stderr
    assert not any(tmp_path.iterdir())  # nothing written before the check
