"""The one exception type for a user's bad input, shared by every package, and how entry points report it.

A file, field or value a user gave that is wrong raises :class:`InputError` (a ``ValueError``), with a
message that names the file/field/value and says what was expected. Entry points print such errors
as one line (``<program>: error: <message>``) on stderr and exit with status 2; anything else is a
bug and keeps its traceback. ``MOONLIT_DEBUG=1`` (or Hydra's own ``HYDRA_FULL_ERROR=1``) shows the
full traceback for user errors too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["DEBUG_ENV", "USER_ERROR_EXIT_CODE", "InputError", "debug_enabled", "exit_on_user_error",
           "is_user_error", "one_line"]

DEBUG_ENV = "MOONLIT_DEBUG"
USER_ERROR_EXIT_CODE = 2  # argparse's status for a usage error


class InputError(ValueError):
    """A user's input is wrong; the message names what was wrong and what was expected."""


def debug_enabled() -> bool:
    """Whether tracebacks are wanted for user errors: ``MOONLIT_DEBUG`` or ``HYDRA_FULL_ERROR`` set to ``1``."""
    return os.environ.get(DEBUG_ENV, "") == "1" or os.environ.get("HYDRA_FULL_ERROR", "") == "1"


# Paths a user named that are missing or of the wrong kind; other OSErrors (disk full, ...) are not theirs.
_USER_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def is_user_error(err: BaseException) -> bool:
    """``ValueError`` (``InputError``, ``CheckpointError``), a missing/wrong path, or a Hydra/OmegaConf config
    error (bad override, unknown key, missing group option, missing mandatory value)."""
    from hydra.errors import HydraException, InstantiationException
    from omegaconf.errors import GrammarParseError, MissingMandatoryValue

    if isinstance(err, InstantiationException) and str(err).startswith("Error in call to target"):
        # the target itself raised: the user's fault only if what it raised is
        return err.__cause__ is not None and is_user_error(err.__cause__)
    return isinstance(err, (ValueError, *_USER_OS_ERRORS, HydraException, MissingMandatoryValue, GrammarParseError))


def one_line(err: BaseException) -> str:
    """The message of ``err`` folded into one line.

    Hydra's and OmegaConf's messages span lines: an ``Available options in 'model':`` line followed by
    tab-indented options becomes ``Available options in 'model': a, b``; the config search path and
    the ``object_type=`` details are dropped; a chained OmegaConf cause is appended in parentheses; an
    override that cannot be parsed is named.
    """
    text = str(err) or type(err).__name__
    override = getattr(err, "override", None)  # hydra.errors.OverrideParseException: the text that failed
    if isinstance(override, str) and override not in text:
        text = f"cannot parse override {override!r}: {text}"
    cause = err.__cause__
    if cause is not None and type(cause).__module__.startswith("omegaconf") and str(cause) not in text:
        text += f"\n({_fold(str(cause))})"
    return _fold(text)


def _fold(text: str) -> str:
    parts: list[str] = []
    listing = False  # the previous part ended with ':' and collects indented items
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Config search path:"):
            break
        if not line or line.startswith(("object_type=", "reference_type=", "Set the environment variable")):
            continue
        if raw.startswith(("\t", "  ")) and parts:
            # an indented line details the one above: an option of a listing, or OmegaConf's full_key
            parts[-1] += (" " if parts[-1].endswith(":") else ", " if listing else "; ") + line
            continue
        listing = line.endswith(":")
        parts.append(line)
    return " ".join(parts) or " ".join(text.split())


@contextmanager
def exit_on_user_error(program: str) -> Iterator[None]:
    """Run an entry point's body: a user error becomes ``<program>: error: <message>`` on stderr and
    ``SystemExit(2)``; bugs, and everything under :func:`debug_enabled`, propagate unchanged."""
    try:
        yield
    except Exception as err:
        if debug_enabled() or not is_user_error(err):
            raise
        sys.stderr.flush()
        sys.stderr.write(f"{program}: error: {one_line(err)}\n")
        sys.stderr.flush()
        raise SystemExit(USER_ERROR_EXIT_CODE) from None
