"""Entry points report a user's error as one line on stderr and exit 2; bugs keep their traceback.

Real apps run as subprocesses with bad input (a missing data path, a bad encoding, an unknown key,
a missing group option, a missing ONNX file); a throwaway Hydra app bound with ``hydra_app`` checks
the bug path, the debug switches and that Hydra's own ``--help`` / ``--cfg job`` still work.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra.errors import InstantiationException, MissingConfigException
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue

from moonlit.common.errors import InputError, exit_on_user_error, is_user_error, one_line
from moonlit.common.train.checkpoint import CheckpointError


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("MOONLIT_DEBUG", "HYDRA_FULL_ERROR")}
    return subprocess.run([*args, f"paths.output_root={tmp_path / 'out'}"], capture_output=True, text=True,
                          timeout=300, env={**clean, "OMP_NUM_THREADS": "1", **env})


def _module(name: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", name, *overrides]


def _lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# --- the helper itself -------------------------------------------------------------------------------


def test_user_errors_and_bugs_are_told_apart() -> None:
    assert is_user_error(InputError("x")) and is_user_error(CheckpointError("x")) and is_user_error(ValueError())
    assert is_user_error(FileNotFoundError("x")) and is_user_error(IsADirectoryError("x"))
    assert is_user_error(MissingConfigException("x")) and is_user_error(MissingMandatoryValue("x"))
    assert not is_user_error(RuntimeError("x")) and not is_user_error(KeyError("x"))
    assert not is_user_error(TypeError("x")) and not is_user_error(OSError("disk full"))
    assert not is_user_error(ConfigKeyError("code read a key the config lacks"))
    for cause, expected in ((ValueError("lr must be > 0"), True), (RuntimeError("bug"), False)):
        try:
            raise InstantiationException("Error in call to target 'torch.optim.AdamW':\nValueError(...)") from cause
        except InstantiationException as err:
            assert is_user_error(err) is expected
    assert is_user_error(InstantiationException("Error locating target 'nosuch.Class'"))


def test_one_line_folds_hydra_messages() -> None:
    missing = MissingConfigException(
        "In 'prune': Could not find 'model/bogus'\n\nAvailable options in 'model':\n\tbert_base\n\troberta_base\n"
        "Config search path:\n\tprovider=hydra, path=pkg://hydra.conf\n")
    assert one_line(missing) == ("In 'prune': Could not find 'model/bogus' "
                                 "Available options in 'model': bert_base, roberta_base")
    unknown = ConfigKeyError("Key 'foo' is not in struct\n    full_key: foo\n    object_type=dict")
    assert one_line(unknown) == "Key 'foo' is not in struct; full_key: foo"
    assert one_line(FileNotFoundError(2, "No such file or directory", "/x")) == \
        "[Errno 2] No such file or directory: '/x'"
    assert one_line(ValueError("")) == "ValueError"


def test_exit_on_user_error(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOONLIT_DEBUG", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as info, exit_on_user_error("prog"):
        raise InputError("width 50 is not a multiple of 8\n(stage 3)")
    assert info.value.code == 2
    assert capsys.readouterr().err == "prog: error: width 50 is not a multiple of 8 (stage 3)\n"
    with pytest.raises(RuntimeError), exit_on_user_error("prog"):
        raise RuntimeError("a bug")
    for switch in ("MOONLIT_DEBUG", "HYDRA_FULL_ERROR"):
        monkeypatch.setenv(switch, "1")
        with pytest.raises(InputError), exit_on_user_error("prog"):
            raise InputError("shown with its traceback")
        monkeypatch.delenv(switch)
    assert capsys.readouterr().err == ""


# --- real entry points -------------------------------------------------------------------------------

BAD_INPUTS = [
    pytest.param(_module("moonlit.spaceevo.space_search", "lut_dir=/nonexistent/lut"), "/nonexistent/lut",
                 id="missing-data-path"),
    pytest.param(_module("moonlit.spaceevo.space_search", "candidates=[999999_999999]"), "999999",
                 id="bad-encoding"),
    pytest.param(_module("moonlit.elasticvit.search", "constraint.kind=bogus"), "bogus", id="bad-value"),
    pytest.param(_module("moonlit.spaceevo.space_search", "foo=1"), "foo", id="unknown-key"),
    pytest.param(_module("moonlit.spaceevo.space_search", "paths=doesnotexist"), "doesnotexist",
                 id="missing-group-option"),
    pytest.param(_module("moonlit.top.prune", "teacher_dir=/nonexistent/teacher"), "/nonexistent/teacher",
                 id="missing-model-folder"),
    pytest.param(_module("moonlit.spaceevo.space_search", "seed=[1"), "seed=[1", id="unparsable-override"),
]


@pytest.mark.parametrize(("command", "bad"), BAD_INPUTS)
def test_user_error_is_one_line(command: list[str], bad: str, tmp_path: Path) -> None:
    result = _run(command, tmp_path)
    lines = _lines(result.stderr)
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{command[2]}: error: ") and bad in lines[0], lines[0]


def test_litepred_cli_missing_onnx_is_one_line(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "moonlit.litepred", "predict", "platform=debug", "model=/nonexistent/m.onnx",
               f"predictor_dir={tmp_path / 'predictor'}"]
    result = _run(command, tmp_path)
    lines = _lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    # the missing ONNX file, or the missing predictor when that is checked first
    assert lines[0].startswith("moonlit-litepred predict: error: "), lines[0]
    assert "m.onnx" in lines[0] or "predictor" in lines[0]
    unknown = _run([sys.executable, "-m", "moonlit.litepred", "predict", "foo=1"], tmp_path)
    assert unknown.returncode == 2 and len(_lines(unknown.stderr)) == 1 and "foo" in unknown.stderr


@pytest.mark.parametrize("switch", ["MOONLIT_DEBUG", "HYDRA_FULL_ERROR"])
def test_debug_switch_shows_the_traceback(switch: str, tmp_path: Path) -> None:
    for command in (_module("moonlit.spaceevo.space_search", "lut_dir=/nonexistent/lut"),  # raised by the task
                    _module("moonlit.spaceevo.space_search", "foo=1")):  # raised while composing
        result = _run(command, tmp_path, **{switch: "1"})
        assert result.returncode == 1 and "Traceback (most recent call last)" in result.stderr, result.stderr
        assert not any(line.startswith("moonlit.spaceevo.space_search: error:") for line in _lines(result.stderr))


# --- a throwaway app: bugs, debug, Hydra's own flags --------------------------------------------------

APP = textwrap.dedent("""
    import os
    from moonlit.common.config import hydra_app
    from moonlit.common.errors import InputError

    @hydra_app("common", "quickstart")
    def main(cfg):
        behaviour = os.environ["APP_BEHAVIOUR"]
        # the task sees the user's environment, not the switch hydra_app sets around Hydra
        assert os.environ.get("HYDRA_FULL_ERROR", "") == os.environ["EXPECTED_FULL_ERROR"], "env leaked into the task"
        if behaviour == "input":
            raise InputError(f"section {cfg.section!r} is wrong; expected 'right'")
        if behaviour == "bug":
            raise RuntimeError("a bug in the app")
        print("ran", cfg.section)

    if __name__ == "__main__":
        main()
""")


def _app(tmp_path: Path, behaviour: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    script = tmp_path / "throwaway_app.py"
    script.write_text(APP)
    return _run([sys.executable, str(script), *args], tmp_path, APP_BEHAVIOUR=behaviour,
                EXPECTED_FULL_ERROR=env.get("HYDRA_FULL_ERROR", ""), **env)


def test_app_user_error_bug_and_debug(tmp_path: Path) -> None:
    ok = _app(tmp_path, "none", "section=fine")
    assert ok.returncode == 0 and "ran fine" in ok.stdout, ok.stderr
    user = _app(tmp_path, "input", "section=wrong")
    assert user.returncode == 2, user.stderr
    assert _lines(user.stderr) == ["throwaway_app.py: error: section 'wrong' is wrong; expected 'right'"]
    bug = _app(tmp_path, "bug")
    assert bug.returncode == 1 and "Traceback (most recent call last)" in bug.stderr
    assert "RuntimeError: a bug in the app" in bug.stderr
    debug = _app(tmp_path, "input", "section=wrong", MOONLIT_DEBUG="1")
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "InputError: section 'wrong' is wrong" in debug.stderr
    full = _app(tmp_path, "input", "section=wrong", HYDRA_FULL_ERROR="1")
    assert full.returncode == 1 and "Traceback (most recent call last)" in full.stderr


def test_app_keeps_hydras_own_flags(tmp_path: Path) -> None:
    job = _app(tmp_path, "bug", "--cfg", "job", "section=shown")
    assert job.returncode == 0 and "section: shown" in job.stdout, job.stderr
    helped = _app(tmp_path, "bug", "--help")
    assert helped.returncode == 0 and "Powered by Hydra" in helped.stdout, helped.stderr
