"""Checks of scalar settings at the public boundary: one function per kind, one wording.

Each returns the value converted (``float`` or ``int``) or raises a ValueError/TypeError that
names the parameter, what was given and what is allowed.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["check_int", "check_real"]


def check_real(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    strict: bool = True,
    high: float | None = None,
) -> float:
    """``value`` as a finite float, ``> low`` (``>= low`` with ``strict=False``) and ``< high``.

    Strings, booleans and complex numbers are refused with a TypeError, NaN and inf with a
    ValueError, like values out of range.
    """
    if isinstance(value, (bool, str, bytes)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {value!r} ({type(value).__name__}).")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite; got {v}.")
    if low is not None and (v <= low if strict else v < low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low:g}; got {v:g}.")
    if high is not None and v >= high:
        raise ValueError(f"{name} must be < {high:g}; got {v:g}.")
    return v


def check_int(value: Any, name: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    """``value`` as an int in ``[minimum, maximum]`` (a TypeError for non-integers, booleans
    included; a ValueError out of range)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer; got {value!r} ({type(value).__name__}).")
    v = int(value)
    if v < minimum or (maximum is not None and v > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an integer {bound}; got {v}.")
    return v
