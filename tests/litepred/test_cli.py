"""``moonlit-litepred <command> overrides...``: the dispatcher hands the overrides to the command's Hydra app."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from moonlit.common.config import compose_config
from moonlit.litepred import cli
from moonlit.litepred.apps import platforms


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str]]]:
    """Every app's ``main`` replaced by a recorder of (module, sys.argv at the call): no Hydra run."""
    seen: list[tuple[str, list[str]]] = []
    for module in set(cli.COMMANDS.values()):
        monkeypatch.setattr(importlib.import_module(module), "main",
                            lambda module=module: seen.append((module, list(sys.argv))))
    return seen


def test_a_command_gets_its_overrides_as_argv(calls: list, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["moonlit-litepred", "ignored"])
    cli.main(["build", "platform=debug", "budget.kernels=300"])
    assert calls == [("moonlit.litepred.apps.build",
                      ["moonlit-litepred build", "platform=debug", "budget.kernels=300"])]
    assert sys.argv == ["moonlit-litepred", "ignored"]  # restored after the app
    monkeypatch.setattr(sys, "argv", ["moonlit-litepred", "evaluate", "heldout.n=3"])
    cli.main()  # default: the process's own arguments
    assert calls[-1] == ("moonlit.litepred.apps.evaluate", ["moonlit-litepred evaluate", "heldout.n=3"])


def test_backends_is_an_alias_of_platforms(calls: list) -> None:
    cli.main(["backends"])
    assert calls == [("moonlit.litepred.apps.platforms", ["moonlit-litepred platforms"])]


@pytest.mark.parametrize("argv, given", [(["nosuch", "platform=debug"], "unknown command 'nosuch'"),
                                         ([], "no command given")])
def test_unknown_command_is_one_line_and_status_2(argv: list[str], given: str, calls: list,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2 and calls == []
    assert capsys.readouterr().err == (f"moonlit-litepred: error: {given}; expected one of: platforms, profile, "
                                       "build, calibrate, predict, evaluate, adapt, attribute\n")


def test_help_lists_the_commands_not_the_alias(capsys: pytest.CaptureFixture[str], calls: list) -> None:
    cli.main(["--help"])
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert listed == ["platforms", "profile", "build", "calibrate", "predict", "evaluate", "adapt", "attribute"]
    assert "backends" not in out and calls == []


def test_platforms_app_lists_the_registered_platforms() -> None:
    names = platforms.run(compose_config("litepred", "platforms"))
    assert {"debug", "debug-int8", "ort-fp32", "ort-fp32-noopt", "ort-int8", "torch-fp32"} <= set(names)


def test_a_user_error_in_a_command_is_one_line_and_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # the real dispatcher and Hydra app (Hydra's logging left alone): adapt refuses an empty pool before measuring
    (tmp_path / "litepred" / "predictors").mkdir(parents=True)
    monkeypatch.delenv("MOONLIT_DEBUG", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        cli.main(["adapt", "platform=debug-int8", f"paths.output_root={tmp_path}", "hydra/job_logging=none",
                  "hydra/hydra_logging=none"])
    assert exited.value.code == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 1 and errors[0].startswith("moonlit-litepred adapt: error: the knowledge pool"), errors
    assert "holds no platform other than the target 'debug-int8'" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["litepred"]  # nothing beside the output root
