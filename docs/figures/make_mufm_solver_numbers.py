"""Write docs/figures/mufm_solver_numbers.txt, the solver numbers of docs/mufm.md (W2 coupling).

    python docs/figures/make_mufm_solver_numbers.py

The measured list under "What that means in practice" in docs/mufm.md, made with ``fit_mufm``
(``coupling="wasserstein"``; λ_W = λ_H = λ_b = 5e-3, the other arguments at their defaults):

* the test problem of tests/test_mufm.py (``default_rng(0).standard_normal((12, 4))``, K = 3
  classes of 4, λ_OT = 0.03): reduced against full solver for L = 2, 3 (objective, layers as
  measures, ``path_excess``) and L = 6 (the full solver stops at the paired-coupling optimum);
* four random problems of that size, ``default_rng(seed).standard_normal((12, 4))`` for seeds
  0-3 (seed 0 is the test problem), same labels: how often the full solver reaches the reduced
  solver's objective for λ_OT = 0.03 and L = 2, 3, 6, for L = 1, and for λ_OT = 0.3 and
  L = 2, 3, 6;
* brute force: N = 6 points ``default_rng(seed).standard_normal((6, 3))``, seeds 0-5, labels
  ``[0, 0, 0, 1, 1, 1]`` (unrelated to the data), λ_OT = 0.03 and 0.1, L = 2. The global optimum
  of the W2 problem is the best paired fit over all 20 balanced labellings of the points; it is
  compared with the reduced solver's (local) optimum;
* the 1-D example of the page: a cold start at λ_OT = 1e4 and the paired coupling against the
  warm-started branch (λ_OT = 1e-2, 1e2, 1e4).

Two objectives "match" when they differ by at most 1e-8 relative. Every fit must report
``converged=True``. About 2.5 minutes on one CPU core.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import torch

from otcollapse import wasserstein
from otcollapse.surrogates import fit_mufm

OUT = Path(__file__).with_name("mufm_solver_numbers.txt")
KW = dict(lambda_w=5e-3, lambda_h=5e-3, lambda_b=5e-3)
W2 = dict(coupling="wasserstein", **KW)
RTOL = 1e-8  # two objectives match when they differ by at most RTOL relative


def fit(X, y, **kw):
    sol = fit_mufm(X, y, **kw)
    assert sol.converged, kw
    return sol


def same(a: float, b: float) -> bool:
    return abs(a - b) <= RTOL * abs(b)


def problem12(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """12 Gaussian points in R^4, K = 3 classes of 4 (seed 0: the test problem)."""
    return np.random.default_rng(seed).standard_normal((12, 4)), np.repeat(np.arange(3), 4)


def test_problem() -> list[str]:
    X, y = problem12(0)
    lo = 0.03
    red = fit(X, y, n_layers=2, lambda_ot=lo, **W2)  # the reduced objective does not depend on L
    rel, w2, excess = 0.0, 0.0, 0.0
    for L in (2, 3):
        r = fit(X, y, n_layers=L, lambda_ot=lo, **W2)
        f = fit(X, y, n_layers=L, lambda_ot=lo, solver="full", **W2)
        rel = max(rel, abs(f.objective - r.objective) / r.objective)
        w2 = max(w2, max(wasserstein(a, b).cost for a, b in zip(f.layers, r.layers, strict=True)))
        excess = max(excess, abs(f.path_excess))
    full6 = fit(X, y, n_layers=6, lambda_ot=lo, solver="full", **W2)
    paired = fit(X, y, n_layers=6, lambda_ot=lo, **KW)
    assert rel < 1e-8 and w2 < 1e-10 and excess < 1e-9
    return [
        "test problem of tests/test_mufm.py (12 x 4, K = 3, lambda_OT = 0.03)",
        f"  L = 2, 3: largest relative objective difference full/reduced {rel:.1e} (< 1e-8)",
        f"  L = 2, 3: largest W2^2 between full and reduced layers {w2:.1e} (< 1e-10)",
        f"  L = 2, 3: largest |path_excess| of the full solver {excess:.1e}",
        f"  L = 6: full objective {full6.objective:.4f}, reduced objective {red.objective:.4f}",
        f"  L = 6: paired-coupling objective {paired.objective:.4f}, "
        f"full stops there: {same(full6.objective, paired.objective)}",
        "",
    ]


def random_problems() -> list[str]:
    seeds = range(4)
    lines = ["four random problems: default_rng(seed).standard_normal((12, 4)), seeds 0 to 3"]
    paired = {s: fit(*problem12(s), n_layers=2, lambda_ot=0.03, **KW).objective for s in seeds}
    for lo, layers in ((0.03, (2, 3, 6)), (0.03, (1,)), (0.3, (2, 3, 6))):
        matched = higher = lower = at_paired = identity = 0
        for s in seeds:
            X, y = problem12(s)
            red = fit(X, y, n_layers=layers[0], lambda_ot=lo, **W2)
            identity += int(np.array_equal(red.assignment, np.arange(len(y))))
            for L in layers:
                full = fit(X, y, n_layers=L, lambda_ot=lo, solver="full", **W2)
                if same(full.objective, red.objective):
                    matched += 1
                elif full.objective > red.objective:
                    higher += 1
                    at_paired += int(lo == 0.03 and same(full.objective, paired[s]))
                else:
                    lower += 1
        n = len(seeds) * len(layers)
        Ls = ", ".join(map(str, layers))
        lines.append(
            f"  lambda_OT = {lo}, L = {Ls}: full matched reduced in {matched} of {n} fits, "
            f"higher in {higher} ({at_paired} of them at the paired-coupling optimum), "
            f"lower in {lower}; reduced plan is the identity in {identity} of {len(seeds)} problems"
        )
    return [*lines, ""]


def brute_force() -> list[str]:
    y = np.array([0, 0, 0, 1, 1, 1])
    labellings = [
        np.isin(np.arange(6), c, invert=True).astype(int)
        for c in itertools.combinations(range(6), 3)
    ]
    assert len(labellings) == 20
    lines = ["brute force: default_rng(seed).standard_normal((6, 3)), seeds 0 to 5, K = 2, L = 2"]
    gaps, rels, hits = [], [], 0
    for lo in (0.03, 0.1):
        for seed in range(6):
            X = np.random.default_rng(seed).standard_normal((6, 3))
            best = min(fit(X, lab, n_layers=2, lambda_ot=lo, **KW).objective for lab in labellings)
            red = fit(X, y, n_layers=2, lambda_ot=lo, **W2).objective
            assert red >= best * (1 - RTOL)
            gap = red - best
            lines.append(
                f"  lambda_OT = {lo}, seed {seed}: global optimum {best:.4f}, "
                f"reduced solver {red:.4f}, gap {gap:.3f} ({100 * gap / best:.0f} %)"
            )
            if same(red, best):
                hits += 1
            else:
                gaps.append(gap)
                rels.append(100 * gap / best)
    lines += [
        f"  reduced solver at the global optimum in {hits} of 12 problems",
        f"  gap in the others: {min(gaps):.3f} to {max(gaps):.3f} "
        f"({min(rels):.0f} % to {max(rels):.0f} %)",
        "",
    ]
    return lines


def large_lambda() -> list[str]:
    X = np.array([2.0, 2.3, 1.8, 2.6, -2.1, -1.7, -2.4, -2.0])[:, None]
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    warm = None
    for lo in (1e-2, 1e2, 1e4):
        warm = fit(X, y, n_layers=2, lambda_ot=lo, init=warm, **W2)
    cold = fit(X, y, n_layers=2, lambda_ot=1e4, **W2)
    paired = fit(X, y, n_layers=2, lambda_ot=1e4, **KW)
    dist = max(np.linalg.norm(s.H - X) for s in (cold, paired))
    return [
        "1-D example of docs/mufm.md, lambda_OT = 1e4",
        f"  warm-started branch: objective {warm.objective:.3f}",
        f"  cold start: objective {cold.objective:.3f}",
        f"  paired coupling: objective {paired.objective:.3f}",
        f"  largest ||H_L - X|| of cold start and paired: {dist:.0e}",
    ]


def main() -> None:
    torch.set_num_threads(1)
    start = time.perf_counter()
    lines = [*test_problem(), *random_problems(), *brute_force(), *large_lambda()]
    print(f"run time {time.perf_counter() - start:.0f} s")
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text(), end="")


if __name__ == "__main__":
    main()
