"""The checks every settings object uses: a ValueError that names the field, what was expected
and what was given (nothing of the package imported)."""

from __future__ import annotations

import dataclasses
from typing import Any


def check_int(obj: Any, name: str, *, low: int, optional: bool = False, expected: str | None = None) -> None:
    """``obj.<name>`` an int (not a bool) of at least ``low`` (or None when ``optional``)."""
    value = getattr(obj, name)
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        if expected is None:
            expected = "a positive integer" if low == 1 else f"an integer >= {low}"
            expected += " or null" if optional else ""
        raise ValueError(f"{name}: expected {expected}, got {value!r}")


def check_number(obj: Any, name: str, *, low: float, high: float = float("inf"), low_open: bool = False,
                 high_open: bool = False, optional: bool = False) -> None:
    """``obj.<name>`` a number (not a bool) in the interval ``low..high`` (open ends as asked)."""
    value = getattr(obj, name)
    if optional and value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{name}: expected a number{' or null' if optional else ''}, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        if high == float("inf") and low == 0:
            expected = "a positive number" if low_open else "a non-negative number"
        elif high == float("inf"):
            expected = f"a number {'>' if low_open else '>='} {low}"
        else:
            lo, hi = "(" if low_open else "[", ")" if high_open else "]"
            expected = f"a number in {lo}{low}, {high}{hi}"
        raise ValueError(f"{name}: expected {expected}{' or null' if optional else ''}, got {value!r}")


def check_choice(obj: Any, name: str, allowed: tuple) -> None:
    value = getattr(obj, name)
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")


def check_bool(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected true or false, got {value!r}")


def reject_unknown_fields(cls, data: dict, what: str) -> None:
    """A ValueError naming every key of ``data`` that is not a field of dataclass ``cls``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} key(s): {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
