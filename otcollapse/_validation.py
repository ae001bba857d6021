"""Checks of scalar settings at the public boundary: one function per kind, one wording.

Each returns the value converted (``float`` or ``int``) or raises a TypeError (wrong type) or
ValueError (out of range, NaN/inf) that names the parameter, what was given and what is allowed.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

__all__ = ["check_int", "check_real"]


def check_int(
    value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """``value`` as an int, or a TypeError (not an integer) / ValueError (out of range) naming it.

    Python and NumPy integers are accepted; bools, floats (even ``3.0``) and strings are not.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer; got {value!r} ({type(value).__name__}).")
    v = int(value)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {v}.")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}; got {v}.")
    return v


def check_real(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_min: bool = False,
    open_max: bool = False,
) -> float:
    """``value`` as a finite float in the given range, or a TypeError / ValueError naming it.

    Real Python and NumPy numbers are accepted; bools, strings, complex numbers and NaN/inf are
    not. ``open_min`` / ``open_max`` exclude the bounds themselves.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {value!r} ({type(value).__name__}).")
    v = float(value)
    if not np.isfinite(v):
        raise ValueError(f"{name} must be a finite number; got {v}.")
    lo = "" if minimum is None else ("(" if open_min else "[") + f"{minimum:g}"
    hi = "" if maximum is None else f"{maximum:g}" + (")" if open_max else "]")
    bad_lo = minimum is not None and (v <= minimum if open_min else v < minimum)
    bad_hi = maximum is not None and (v >= maximum if open_max else v > maximum)
    if bad_lo or bad_hi:
        if minimum is not None and maximum is not None:
            where = f"lie in {lo}, {hi}"
        elif minimum is not None:
            where = f"be {'>' if open_min else '>='} {minimum:g}"
        else:
            where = f"be {'<' if open_max else '<='} {maximum:g}"
        raise ValueError(f"{name} must {where}; got {v:g}.")
    return v
