"""The validators of numeric options, one rule for the whole package.

An option of the wrong type (a str, a bool where a number goes) raises
``TypeError``; a number out of range raises ``ValueError``.  The message
names the option, says what it takes and shows what it got.

>>> count("maxsize", 0)
Traceback (most recent call last):
  ...
ValueError: maxsize must be an int of at least 1, but got 0.
"""

from __future__ import annotations

import math
from typing import Optional

__all__ = ["count", "fraction", "seconds"]


def count(
    name: str, value: object, *, least: int = 1, none: bool = False
) -> Optional[int]:
    """*value* as an int of at least *least* (or None, if *none*)."""
    if value is None and none:
        return None
    message = f"{name} must be an int of at least {least}"
    message += " or None" if none else ""
    message += f", but got {value!r}."
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(message)
    if value < least:
        raise ValueError(message)
    return value


def seconds(
    name: str, value: object, *, none: bool = False, zero: bool = False
) -> Optional[float]:
    """*value* as seconds: a finite positive number (or zero, if *zero*; or
    None, if *none*, which is how an option says "never")."""
    if value is None and none:
        return None
    expected = "a finite non-negative number" if zero else "a finite positive number"
    message = f"{name} must be {expected} of seconds"
    message += " or None" if none else ""
    message += f", but got {value!r}."
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(message)
    if not 0 <= value < math.inf or (value == 0 and not zero):
        raise ValueError(message)
    return float(value)


def fraction(name: str, value: object) -> float:
    """*value* as a fraction from 0 to less than 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, but got {value!r}.")
    if not 0 <= value < 1:
        raise ValueError(
            f"{name} must be a fraction from 0 to less than 1, but got {value!r}."
        )
    return float(value)
