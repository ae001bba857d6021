"""The validation room: one check per kind of input, one wording, used at every public boundary.

Scalars (``check_int``, ``check_real``), weights (``check_weights``: one rule everywhere) and
labels (``check_labels``). Each returns the value converted or raises a TypeError (wrong type) or
ValueError (out of range, NaN/inf, wrong length) that names the input, what was given and the fix.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from otcollapse._utils import ArrayLike, to_numpy

__all__ = ["WEIGHT_TOL", "check_int", "check_labels", "check_real", "check_weights"]

#: how far from one a sum of weights may be (float32 masses summed in float64 land well inside)
WEIGHT_TOL = 1e-6


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


def check_weights(weights: ArrayLike | None, n: int, what: str = "weights") -> np.ndarray:
    """Masses of ``n`` samples as float64 summing to one (uniform when ``None``).

    One rule for every function that takes weights: length ``n``, finite, non-negative, summing
    to one within ``WEIGHT_TOL`` (then renormalised, so solvers compare masses to rounding).
    """
    if weights is None:
        return np.full(n, 1.0 / n)
    w = to_numpy(weights, dtype=np.float64, what=what).reshape(-1)
    if w.shape[0] != n:
        raise ValueError(f"{what} have length {w.shape[0]} but there are {n} samples.")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{what} contain {int((~np.isfinite(w)).sum())} NaN/inf values.")
    if np.any(w < 0):
        raise ValueError(
            f"{what} must be non-negative; {int((w < 0).sum())} are negative (min {w.min():.3g})."
        )
    total = float(w.sum())
    if abs(total - 1.0) > WEIGHT_TOL:
        raise ValueError(f"{what} sum to {total:.8g}, not 1; normalise them ({what} / sum).")
    return w / total


def check_labels(labels: ArrayLike, n: int, *, min_classes: int = 0) -> np.ndarray:
    """``labels`` as int64 of shape (n,), or a ValueError saying what is wrong.

    With ``min_classes`` > 0 the labels must also be the consecutive classes ``0..K-1`` (every
    class with a sample) with ``K >= min_classes`` (the form a model with one row per class needs).
    """
    lab = to_numpy(labels, what="labels")
    if lab.ndim == 2 and lab.shape[1] == 1:  # a column vector
        lab = lab[:, 0]
    if lab.ndim != 1 or lab.shape[0] != n:
        got = lab.shape[0] if lab.ndim == 1 else lab.shape
        raise ValueError(
            f"labels have length {got} but there are {n} samples; "
            "give one integer label per sample, shape (n,)."
        )
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)) or not np.all(lab == np.round(lab)):
            raise ValueError("labels must be integers (class indices); got non-integer values.")
    elif lab.dtype.kind not in "iub":
        raise ValueError(f"labels must be integers (class indices); got dtype {lab.dtype}.")
    lab = lab.astype(np.int64)
    if min_classes > 0 and lab.size:
        if lab.min() < 0:
            raise ValueError(f"labels must be integers 0..K-1; got a label {lab.min()}.")
        K = int(lab.max()) + 1
        if K < min_classes:
            raise ValueError(f"this model needs K >= {min_classes} classes; got K = {K}.")
        missing = np.setdiff1d(np.arange(K), lab)
        if missing.size:
            raise ValueError(
                f"labels must cover 0..K-1 = 0..{K - 1}; classes {missing.tolist()} have no "
                "sample. Relabel the classes consecutively."
            )
    return lab
