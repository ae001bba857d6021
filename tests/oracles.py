"""Closed-form answers, written independently of the code under test."""

from __future__ import annotations

import numpy as np
import scipy.linalg


def w2sq_1d_uniform(x: np.ndarray, y: np.ndarray) -> float:
    """W2^2 between two uniform 1-D measures of equal size: match the sorted samples."""
    return float(np.mean((np.sort(x) - np.sort(y)) ** 2))


def gaussian_w2sq(m0, S0, m1, S1) -> float:
    """Bures–Wasserstein formula, with scipy's general matrix square root."""
    r1 = scipy.linalg.sqrtm(S1)
    cross = scipy.linalg.sqrtm(r1 @ S0 @ r1)
    return float(np.sum((m0 - m1) ** 2) + np.trace(S0 + S1 - 2 * np.real(cross)))


def weighted_moments(x: np.ndarray, w: np.ndarray | None = None):
    w = np.full(len(x), 1 / len(x)) if w is None else w
    m = w @ x
    S = ((x - m) * w[:, None]).T @ (x - m)
    return m, S


def brute_force_w2sq(x: np.ndarray, y: np.ndarray) -> float:
    """W2^2 between uniform measures of equal (tiny) size by enumerating all permutations."""
    import itertools

    n = len(x)
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return min(C[np.arange(n), list(p)].mean() for p in itertools.permutations(range(n)))


def collapsed_w2sq(x, y, labels, a=None, b=None) -> float:
    """W2^2 between clouds of separated clusters of equal mass on both sides, class by class.

    Each class is centred on its own mean before the costs are formed (so they do not cancel
    however far the class is from the origin), solved by POT's network simplex on its cost
    divided by the largest (POT's pivot tolerance is absolute), and weighted by its mass."""
    import ot

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    a = np.full(len(x), 1 / len(x)) if a is None else np.asarray(a, dtype=np.float64)
    b = np.full(len(y), 1 / len(y)) if b is None else np.asarray(b, dtype=np.float64)
    total = 0.0
    for k in np.unique(labels):
        i = labels == k
        c = x[i].mean(0)
        xc, yc = x[i] - c, y[i] - c
        M = ((xc[:, None, :] - yc[None, :, :]) ** 2).sum(-1)
        scale = M.max() if M.max() > 0 else 1.0
        mass = a[i].sum()
        total += mass * scale * ot.emd2(a[i] / mass, b[i] / b[i].sum(), M / scale, numItermax=10**9)
    return float(total)


def assignment_w2sq(x, y) -> tuple[float, np.ndarray]:
    """W2^2 between uniform measures of equal size: scipy's assignment on the costs formed
    from the differences (no cancellation), and the optimal permutation."""
    from scipy.optimize import linear_sum_assignment

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(C)
    return float(C[rows, cols].mean()), cols
