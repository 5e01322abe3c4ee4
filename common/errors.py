"""The one exception type for a user's bad input, shared by every package.

A file, field or value a user gave that is wrong raises :class:`InputError` (a ``ValueError``), with a
message that names the file/field/value and says what was expected. Entry points print such errors
as one line and exit non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """A user's input is wrong; the message names what was wrong and what was expected."""
