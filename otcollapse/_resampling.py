"""The resampling room: the one stratified sampler, split halves, subsampling replicates and
percentile intervals. Every random choice takes an explicit ``seed``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from otcollapse._utils import rng
from otcollapse._validation import check_int

__all__ = ["boot_seeds", "boot_size", "percentile_interval", "split_halves", "stratified_indices"]


def stratified_indices(
    labels: np.ndarray | None, n: int, seed: int, N: int | None = None
) -> np.ndarray:
    """Sorted indices of a seeded, class-stratified sample of ``n`` of the ``N`` samples, without
    replacement.

    Class k gets ``n * N_k / N`` samples rounded by largest remainder, and at least one sample
    while ``n`` allows it; without labels (``labels=None``, then ``N`` is required) the sample is
    uniform.
    """
    N = len(labels) if labels is not None else check_int(N, "N", minimum=1)
    n = check_int(n, "the subsample size n")
    if not 1 <= n <= N:
        raise ValueError(f"the subsample size n must be in 1..{N}; got {n}.")
    g = rng(seed)
    if labels is None or n == N:
        return np.sort(g.choice(N, size=n, replace=False))
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = counts * (n / N)
    take = np.floor(quota).astype(np.int64)
    if n >= len(classes):
        take = np.maximum(take, 1)
    take = np.minimum(take, counts)
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    i = 0
    while take.sum() < n:
        k = order[i % len(order)]
        if take[k] < counts[k]:
            take[k] += 1
        i += 1
    while take.sum() > n:
        take[int(np.argmax(take))] -= 1
    chosen = [
        g.choice(np.flatnonzero(inverse == k), size=int(take[k]), replace=False)
        for k in range(len(classes))
    ]
    return np.sort(np.concatenate(chosen))


def split_halves(
    labels: np.ndarray | None, N: int, seed: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Two disjoint halves of ``N // 2`` samples each, stratified and seeded (None if N < 4)."""
    if N < 4:
        return None
    h = N // 2
    first = stratified_indices(labels, h, seed, N)
    rest = np.setdiff1d(np.arange(N), first)
    if rest.size > h:  # odd N: drop one seeded sample so the halves have equal sizes
        rest = np.delete(rest, int(rng(seed).integers(rest.size)))
    return first, rest


def boot_seeds(seed: int, n_boot: int) -> list[int]:
    """The seeds of ``n_boot`` replicates, drawn from ``seed``."""
    return [int(s) for s in rng(seed).integers(0, 2**31 - 1, size=n_boot)]


def boot_size(n: int, boot_fraction: float) -> int:
    """The size of a subsampling replicate, ``round(boot_fraction * n)`` in 2..n-1."""
    m = round(boot_fraction * n)
    if m < 2 or m >= n:
        raise ValueError(
            f"subsampling intervals need 2 <= boot_fraction * n < n; got n = {n}, "
            f"boot_fraction = {boot_fraction}. Use more samples or another boot_fraction."
        )
    return m


def percentile_interval(values: Sequence[float | None], level: float) -> tuple[float, float] | None:
    """Percentile interval of the finite replicate values (None when there are none)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return None
    lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)
