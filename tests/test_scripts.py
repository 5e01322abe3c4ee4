"""The reproduce scripts and quickstart.sh parse, list their stages, and reject bad input before doing anything.

Seconds: only ``bash -n``, ``--help`` and argument checks run (they exit before setup.sh or any stage).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = {
    "reproduce_spaceevo.sh": ["block_kd", "lut", "space_search", "supernet", "subnet_search", "evaluate", "benchmark"],
    "reproduce_elasticvit.sh": ["tables", "train", "search", "evaluate", "benchmark"],
}


def _run(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=env)


@pytest.mark.parametrize("script", [*STAGES, "quickstart.sh"])
def test_scripts_parse(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", STAGES)
def test_help_lists_every_stage_and_the_options(script: str) -> None:
    result = _run(script, "--help")
    assert result.returncode == 0, result.stderr
    listed = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("#   ") and
              len(line.split()) > 2 and not line.split()[1].startswith(("bash", "NPROC"))]
    assert listed == STAGES[script]
    for option in ("--smoke", "--stages", "--out", "--imagenet"):
        assert option in result.stdout


@pytest.mark.parametrize("script", STAGES)
@pytest.mark.parametrize("args, message", [
    (["--stages", "benchmark nope"], "unknown stage 'nope'"),
    (["--frobnicate"], "unknown argument '--frobnicate'"),
])
def test_bad_arguments_stop_with_one_line(script: str, args: list[str], message: str, tmp_path: Path) -> None:
    result = _run(script, *args, "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script, stages", [("reproduce_spaceevo.sh", "supernet"),
                                            ("reproduce_elasticvit.sh", "search")])
def test_missing_imagenet_names_the_folder_and_the_fix(script: str, stages: str, tmp_path: Path) -> None:
    missing = tmp_path / "no-imagenet"
    result = _run(script, "--stages", stages, "--imagenet", str(missing), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"ImageNet not found at {missing}" in lines[0] and "--imagenet DIR" in lines[0]
    assert not (tmp_path / "out").exists()


def test_elasticvit_train_needs_the_teachers(tmp_path: Path) -> None:
    imagenet = tmp_path / "imagenet"
    for split in ("train", "val"):
        (imagenet / split).mkdir(parents=True)
    result = _run("reproduce_elasticvit.sh", "--stages", "train", "--imagenet", str(imagenet),
                  "--teachers", str(tmp_path / "teachers"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert f"{tmp_path / 'teachers'}/t1.safetensors" in result.stderr and "--teachers DIR" in result.stderr


def test_elasticvit_rejects_an_unknown_sampler(tmp_path: Path) -> None:
    result = _run("reproduce_elasticvit.sh", "--sampling", "nope", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "unknown sampler 'nope'" in result.stderr and "uniform" in result.stderr


def test_spaceevo_rejects_an_unknown_target(tmp_path: Path) -> None:
    result = _run("reproduce_spaceevo.sh", "--target", "tpu", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "unknown target 'tpu' (vnni, pixel4)" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["nope"], "unknown section 'nope'; sections are: common top litepred spaceevo elasticvit"),
    (["--budget", "3m"], "--budget needs a whole number of seconds, got '3m'"),
    (["--fast"], "unknown option '--fast'"),
])
def test_quickstart_rejects_bad_arguments_before_running_anything(args: list[str], message: str) -> None:
    result = _run("quickstart.sh", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert "setup:" not in result.stdout


def test_quickstart_help_names_the_budget_options() -> None:
    result = _run("quickstart.sh", "--help")
    assert result.returncode == 0
    assert "--strict-budget" in result.stdout and "--budget" in result.stdout and "180 s" in result.stdout


@pytest.mark.parametrize("script, mention", [("reproduce_litepred.sh", "--smoke"),
                                             ("reproduce_litepred_transfer.sh", "--smoke"),
                                             ("reproduce_top_glue.sh", "--glue-dir"),
                                             ("reproduce_top_real.sh", "--smoke"),
                                             ("reproduce_spaceevo_fmnist.sh", "--smoke")])
def test_every_reproduce_script_has_help_and_refuses_unknown_options(script: str, mention: str) -> None:
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)]).returncode == 0
    shown = _run(script, "--help")
    assert shown.returncode == 0 and mention in shown.stdout and "setup:" not in shown.stdout
    refused = _run(script, "--no-such-option")
    assert refused.returncode == 2 and "--no-such-option" in refused.stderr and "setup:" not in refused.stdout


def test_spaceevo_fmnist_without_the_data_says_get_data(tmp_path: Path) -> None:
    result = _run("reproduce_spaceevo_fmnist.sh", "--smoke", env={**os.environ, "MOONLIT_DATA": str(tmp_path)})
    assert result.returncode == 2 and "bash scripts/get_data.sh" in result.stderr and "setup:" not in result.stdout
