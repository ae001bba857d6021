"""Exactness on collapsed features: every exact method against an oracle that does not cancel.

    python benchmarks/collapsed.py

Two independent samples of K = 5 classes in d = 8, each class a Gaussian of std ``spread``
around a centre of norm ``norm`` (the terminal phase of training). The oracle solves each class
alone on its own centred costs (POT's network simplex on the cost divided by its largest entry).
Prints, for every case and method, the relative error and whether the result says converged.
"""

from __future__ import annotations

import warnings

import numpy as np
import ot

from otcollapse import wasserstein


def data(K: int, n: int, d: int, spread: float, norm: float, seed: int):
    g = np.random.default_rng(seed)
    centres = g.standard_normal((K, d))
    centres *= norm / np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.arange(n) % K
    x = centres[labels] + spread * g.standard_normal((n, d))
    y = centres[labels] + spread * g.standard_normal((n, d))
    return x, y, labels


def oracle(x: np.ndarray, y: np.ndarray, labels: np.ndarray) -> float:
    total = 0.0
    for k in np.unique(labels):
        i = labels == k
        c = x[i].mean(0)
        M = (((x[i] - c)[:, None, :] - (y[i] - c)[None, :, :]) ** 2).sum(-1)
        w = np.full(int(i.sum()), 1 / i.sum())
        total += i.mean() * M.max() * ot.emd2(w, w, M / M.max(), numItermax=10**9)
    return float(total)


def main() -> None:
    warnings.simplefilter("ignore")  # non-convergence is a column of the table
    print("| n | spread | norm | method | rel. error | converged |")
    print("|---|---|---|---|---|---|")
    worst, certified, total = 0.0, 0, 0
    for n in (100, 600, 2000):
        for spread in (1e-2, 1e-4, 1e-6, 1e-8):
            for norm in (1.0, 1e3):
                x, y, labels = data(5, n, 8, spread, norm, seed=0)
                ref = oracle(x, y, labels)
                for method in ("auto", "exact", "assignment"):
                    res = wasserstein(x, y, method=method)
                    err = (res.cost - ref) / ref
                    worst = max(worst, abs(err))
                    certified += res.converged
                    total += 1
                    print(
                        f"| {n} | {spread:g} | {norm:g} | {method} | {err:+.1e} | {res.converged} |"
                    )
    print(f"\nlargest |relative error| {worst:.1e}; converged {certified} of {total}")


if __name__ == "__main__":
    main()
