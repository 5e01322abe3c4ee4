"""``moonlit-litepred <command> [overrides]`` (also ``python -m moonlit.litepred``): the LitePred subcommands.

Each subcommand is the Hydra app :data:`COMMANDS` names (``moonlit.litepred.apps.<command>``); the
overrides after the command go to it as they would to ``python -m moonlit.litepred.apps.<command>``::

    moonlit-litepred platforms
    moonlit-litepred profile  platform=ort-fp32 budget.kernels=6000
    moonlit-litepred build    platform=ort-fp32
    moonlit-litepred calibrate platform=ort-fp32 calibrate.repeat=1   # re-fit the overhead on models measured now
    moonlit-litepred predict  platform=ort-fp32 model=path/to/model.onnx
    moonlit-litepred evaluate platform=ort-fp32
    moonlit-litepred adapt    platform=ort-int8 adapt.budget=300   # transfer from the knowledge pool
    moonlit-litepred attribute platform=ort-fp32 model=path/to/model.onnx   # predicted vs in-model time per kernel

All but ``platforms`` read ``configs/litepred/litepred.yaml``. Profiling appends each measurement
to ``dataset`` as it is taken, so a killed ``profile`` or ``build`` re-run with the same overrides
continues where it stopped.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from moonlit.common.config import program_name

__all__ = ["ALIASES", "COMMANDS", "PROG", "main", "usage"]

PROG = "moonlit-litepred"

# command -> the app module that runs it (each has run(cfg) and a @hydra_app main; tests/test_app_shape.py
# checks every one of them)
COMMANDS: dict[str, str] = {
    "platforms": "moonlit.litepred.apps.platforms",
    "profile": "moonlit.litepred.apps.profile",
    "build": "moonlit.litepred.apps.build",
    "calibrate": "moonlit.litepred.apps.calibrate",
    "predict": "moonlit.litepred.apps.predict",
    "evaluate": "moonlit.litepred.apps.evaluate",
    "adapt": "moonlit.litepred.apps.adapt",
    "attribute": "moonlit.litepred.apps.attribute",
}
# other names a command is accepted under (not listed by --help)
ALIASES: dict[str, str] = {"backends": "platforms"}


def usage() -> str:
    """What ``moonlit-litepred --help`` prints: the commands, each with the app module that runs it."""
    lines = [f"usage: {PROG} <command> [overrides ...]", "", "commands:"]
    for command, module in COMMANDS.items():
        lines.append(f"  {command:<10} python -m {module}")
    lines += ["", f"overrides are Hydra's (key=value); `{PROG} <command> --help` shows the command's config"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the subcommand ``argv[0]`` (default: ``sys.argv[1:]``) with the overrides after it.

    An unknown or missing command is one line on stderr naming the commands, and exit status 2.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(usage())
        return
    if not args or ALIASES.get(args[0], args[0]) not in COMMANDS:
        given = f"unknown command {args[0]!r}" if args else "no command given"
        sys.stderr.write(f"{PROG}: error: {given}; expected one of: {', '.join(COMMANDS)}\n")
        raise SystemExit(2)
    command = ALIASES.get(args[0], args[0])
    app = importlib.import_module(COMMANDS[command])
    saved = sys.argv
    sys.argv = [f"{PROG} {command}", *args[1:]]  # Hydra reads the overrides from sys.argv
    try:
        with program_name(f"{PROG} {command}"):  # one-line errors start "moonlit-litepred <command>: error:"
            app.main()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
