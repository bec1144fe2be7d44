"""One short repr for error messages and log records, everywhere in the package."""

from __future__ import annotations

import reprlib

__all__ = ["short_repr"]

_short = reprlib.Repr()
_short.maxlist = _short.maxtuple = _short.maxdict = _short.maxset = 10
_short.maxstring = _short.maxother = 80


def short_repr(value: object) -> str:
    """A repr short enough for an error message or a log record.

    >>> short_repr("x" * 1000)[:12]
    "'xxxxxxxxxxx"
    """
    try:
        return _short.repr(value)
    except ValueError:  # an int too long for repr(), or something holding one
        if isinstance(value, int):
            return f"<int of {value.bit_length()} bits>"
        return f"<a {type(value).__name__}>"
