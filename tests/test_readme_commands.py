"""Every command in every README runs: its module exists and its overrides compose; the cheap ones are run.

Commands are taken from ```bash fences (lines that start with ``python -m moonlit.``,
``moonlit-litepred``, ``bash scripts/`` or ``torchrun``), from indented lines and from inline code
spans that start the same way. A ``python -m moonlit.X`` command is matched to its Hydra config
through the ``hydra_app("<tree>", "<config>")`` call in the module's source (``moonlit-litepred <command>``
through the app its dispatcher names, :data:`moonlit.litepred.cli.COMMANDS`); its overrides are composed
with :func:`moonlit.common.config.compose_config` (placeholders such as ``<dir>`` become a string).
``bash scripts/`` commands must name an existing script that ``bash -n`` accepts. The commands in
:data:`CHEAP` (seconds) are run as subprocesses with ``paths.output_root`` in a temporary folder; those
in :data:`SLOW` (a minute or more) run in the ``slow`` tier.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra.errors import HydraException

from moonlit.common.config import compose_config
from moonlit.litepred.cli import ALIASES as LITEPRED_ALIASES
from moonlit.litepred.cli import COMMANDS as LITEPRED_APPS

REPO = Path(__file__).resolve().parents[1]
READMES = [REPO / "README.md", *(REPO / folder / "README.md" for folder in
                                 ("common", "ToP", "SpaceEvo", "ElasticViT", "LitePred"))]
PREFIXES = ("python -m moonlit.", "moonlit-litepred", "bash scripts/", "torchrun ")
SHELL_FENCES = {"bash", "sh", "shell", "console"}
INLINE = re.compile(r"`((?:python -m moonlit\.|moonlit-litepred |bash scripts/|torchrun )[^`]*)`")
HYDRA_APP = re.compile(r"hydra_app\(\s*\"(\w+)\",\s*\"(\w+)\"\s*\)")
# the modules of the moonlit-litepred dispatcher; `<module> <command> overrides...` runs the command's app
LITEPRED_DISPATCHERS = ("moonlit.litepred", "moonlit.litepred.cli")
LITEPRED_COMMANDS = (*LITEPRED_APPS, *LITEPRED_ALIASES)


@dataclass(frozen=True)
class Command:
    readme: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.readme}:{self.line}: {self.text}"


def _strip_comment(text: str) -> str:
    """``cmd  # note`` → ``cmd`` (a ``#`` inside quotes stays)."""
    quote = None
    for i, char in enumerate(text):
        if char in "'\"" and quote in (None, char):
            quote = None if quote else char
        elif char == "#" and quote is None and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip()
    return text.rstrip()


def extract_commands(readme: Path) -> list[Command]:
    """The commands of one README, continuation lines (``\\``) joined, trailing comments dropped."""
    name = readme.relative_to(REPO).as_posix()
    lines = readme.read_text().splitlines()
    found: list[Command] = []
    fence: str | None = None  # the open fence's language ('' for none), None outside fences
    i = 0
    while i < len(lines):
        raw, start = lines[i], i + 1
        stripped = raw.strip()
        if stripped.startswith("```"):
            fence = stripped[3:].strip() if fence is None else None
            i += 1
            continue
        in_shell = fence in SHELL_FENCES
        if (in_shell or (fence is None and raw.startswith("    "))) and stripped.startswith(PREFIXES):
            text = stripped
            while _strip_comment(text).endswith("\\") and i + 1 < len(lines):
                i += 1
                text = _strip_comment(text)[:-1].rstrip() + " " + lines[i].strip()
            found.append(Command(name, start, _strip_comment(text)))
        elif fence is None:
            found.extend(Command(name, start, match.strip()) for match in INLINE.findall(raw))
        i += 1
    return found


ALL_COMMANDS = [command for readme in READMES for command in extract_commands(readme)]


def _placeholder_free(tokens: list[str]) -> list[str]:
    """Overrides as a user types them: ``...``/``…`` dropped, ``<value>`` placeholders made strings."""
    out = []
    for token in tokens:
        if token in ("...", "…") or token.startswith("-"):  # Hydra flags (-m) and elisions
            continue
        out.append(re.sub(r"<[^<>]*>", "placeholder", token))
    return out


def _app_config(module: str) -> tuple[str, str]:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"module {module} does not exist"
    found = HYDRA_APP.search(Path(spec.origin).read_text())
    assert found, f"{module} is not a Hydra app (no hydra_app(...) call in {spec.origin})"
    return found.group(1), found.group(2)


def check_command(command: Command) -> str:
    """Check one command without running it; returns what was checked."""
    tokens = shlex.split(re.sub(r"<[^<>]*>", "placeholder", command.text))
    if tokens[0] == "bash":
        script = REPO / tokens[1]
        assert script.is_file(), f"{command}: {tokens[1]} does not exist"
        subprocess.run(["bash", "-n", str(script)], check=True)
        return f"script {tokens[1]}"
    if tokens[0] == "torchrun":
        tokens = ["python", *tokens[tokens.index("-m"):]]
    if tokens[0] == "moonlit-litepred":
        tokens = ["python", "-m", "moonlit.litepred", *tokens[1:]]
    assert tokens[:2] == ["python", "-m"], f"{command}: expected python -m <module>"
    module, args = tokens[2], tokens[3:]
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"{command}: module {module} does not exist"
    if module in LITEPRED_DISPATCHERS:
        if args in (["..."], ["…"], ["--help"]):  # prose: "python -m moonlit.litepred … is the same CLI"; its help
            return "the moonlit-litepred CLI"
        assert args and args[0] in LITEPRED_COMMANDS, f"{command}: unknown subcommand; expected {LITEPRED_COMMANDS}"
        module, args = LITEPRED_APPS[LITEPRED_ALIASES.get(args[0], args[0])], args[1:]
    elif not HYDRA_APP.search(source := Path(spec.origin).read_text()):
        # a plain tool (argparse, or a printed table): it must be runnable as a module
        assert 'if __name__ == "__main__":' in source, f"{command}: {module} has no __main__ block"
        return f"tool {module}"
    tree, config = _app_config(module)
    compose_config(tree, config, _placeholder_free(args))
    return f"{tree}/{config}"


def test_readmes_hold_commands() -> None:
    per_readme = {readme.relative_to(REPO).as_posix(): 0 for readme in READMES}
    for command in ALL_COMMANDS:
        per_readme[command.readme] += 1
    assert all(count > 0 for count in per_readme.values()), per_readme
    # the extractor sees fenced, continued and inline commands
    texts = [c.text for c in ALL_COMMANDS]
    assert "bash scripts/quickstart.sh" in texts and "moonlit-litepred platforms" in texts


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=str)
def test_readme_command_composes(command: Command) -> None:
    check_command(command)


# --- commands that are run ---------------------------------------------------------------------------

# (README command, why it is cheap); each must appear verbatim in a README
CHEAP = [
    ("moonlit-litepred platforms", "lists the registered profiling platforms"),
    ("python -m moonlit.common.models 'pattern=seqnet_vnni_*' complexity=false", "lists registered names, builds none"),
]
# run in order in one output folder (the prediction uses the predictor the build wrote)
SLOW = [
    ("python -m moonlit.elasticvit.tables", "8 levels x 10,000 subnets, about 15 s on one core"),
    ("moonlit-litepred build platform=debug budget.kernels=300 architectures.train=12",
     "synthetic platform, about a minute"),
    ("moonlit-litepred predict platform=debug model=timm-mobile/efficientnet_b0@224", "uses the debug predictor"),
]


def _writes_outputs(module: str) -> bool:
    """Whether the app's config has the shared ``paths`` group (a listing or report tool may not)."""
    tree, config = _app_config(module)
    return "paths" in compose_config(tree, config)


def _run(text: str, output_root: Path) -> subprocess.CompletedProcess:
    tokens = shlex.split(text)
    if tokens[0] == "moonlit-litepred":
        tokens = [sys.executable, "-m", "moonlit.litepred", *tokens[1:]]
    elif tokens[:2] == ["python", "-m"]:
        tokens = [sys.executable, *tokens[1:]]
    app = tokens[2] if tokens[1:2] == ["-m"] else None
    if app in LITEPRED_DISPATCHERS:
        app = LITEPRED_APPS[LITEPRED_ALIASES.get(tokens[3], tokens[3])]
    if app is None or _writes_outputs(app):
        tokens.append(f"paths.output_root={output_root}")
    return subprocess.run(tokens, capture_output=True, text=True, timeout=1800, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_run_lists_are_readme_commands() -> None:
    texts = {c.text for c in ALL_COMMANDS}
    missing = [text for text, _ in CHEAP + SLOW if text not in texts]
    assert not missing, f"no longer in any README: {missing}"


@pytest.mark.parametrize(("text", "why"), CHEAP, ids=[text for text, _ in CHEAP])
def test_cheap_readme_command_runs(text: str, why: str, tmp_path: Path) -> None:
    result = _run(text, tmp_path)
    assert result.returncode == 0, f"{text} ({why}) failed:\n{result.stderr[-3000:]}"


@pytest.mark.slow
def test_slow_readme_commands_run(tmp_path: Path) -> None:
    for text, why in SLOW:
        result = _run(text, tmp_path)
        assert result.returncode == 0, f"{text} ({why}) failed:\n{result.stderr[-3000:]}"


@pytest.mark.parametrize("text", [
    "python -m moonlit.top.prune foo=1",                       # unknown key
    "python -m moonlit.top.prune model=doesnotexist",          # missing group option
    "python -m moonlit.top.nosuchmodule",                      # missing module
    "moonlit-litepred nosuch platform=debug",                  # unknown subcommand
    "moonlit-litepred build platform=debug budget.nosuch=1",   # unknown key of the CLI's config
    "bash scripts/nosuch.sh",                                  # missing script
    "torchrun --standalone --nproc_per_node=2 -m moonlit.common.quickstart trainer=nosuch",
])
def test_check_command_catches_broken_commands(text: str) -> None:
    with pytest.raises((AssertionError, HydraException)):
        check_command(Command("README.md", 1, text))
