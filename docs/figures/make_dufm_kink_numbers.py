"""Make docs/figures/dufm_kink_numbers.txt: the numbers of docs/dufm.md's *Solving* and
*Convergence is not guaranteed* paragraphs.

    python docs/figures/make_dufm_kink_numbers.py

Everything is computed with the toolkit itself, in float64 on one torch thread, from fixed seeds:

* the *Solving* example (K = 2, n = 5, L = 3, d = 4, every λ = 1e-3, ``restarts=5, seed=0``):
  the value against L_DNC, and NC3 at the exact DNC point against 2 - √2;
* K = 3, n = 2, L = 3, d = 4 with the λ of tests/test_dufm.py (λ_W = 1e-3, 2e-3, 0.5e-3,
  λ_H = 3e-3), seeds 0-11, one restart each: ``fit_dufm``, and the same solve *without* the
  softplus warm start, i.e. only the exact-objective phase of ``fit_dufm``'s solver (the internal
  ``_lbfgs_rounds``: L-BFGS, rerun from a stalled point at most 5 times) from the restart's own
  start (``fit_dufm(..., max_iter=0)`` returns it). For seed 9, where the solve without the warm
  start stalls just above L_DNC: its value, relative gradient, the pre-activations near 0, and a
  probe along the negative gradient;
* the unconverged solutions below L_DNC: K = 3, n = 2, L = 4, d = 4, tests' λ, seed 7, one
  restart; K = 4, n = 3, L = 4, d = 6, every λ = 1e-3, ``restarts=6, seed=0`` (as
  ``test_low_rank_solution_beats_dnc_for_four_classes``): value, relative gradient and probe.

Each number is written as docs/dufm.md prints it. About a minute on one CPU core.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from otcollapse import fit_dufm
from otcollapse.collapse import nc3
from otcollapse.exceptions import ConvergenceWarning
from otcollapse.surrogates.dufm import _lbfgs_rounds, _terms

HERE = Path(__file__).parent
OUT = HERE / "dufm_kink_numbers.txt"
LAM = 1e-3
TEST_LW = [LAM, 2 * LAM, 0.5 * LAM, 4 * LAM]  # tests/test_dufm.py: lambda_w[:L], lambda_h = 3 LAM
TEST_LH = 3 * LAM
NEAR_ZERO = 1e-8  # a pre-activation this close to 0 sits on a ReLU kink (the next is printed)
STEPS = 10.0 ** np.arange(-14, 0)  # probe steps along the negative gradient


def sci(x: float, digits: int = 2) -> str:
    """``5.6×10^-6``: the page's $5.6\\times10^{-6}$."""
    exponent = math.floor(math.log10(abs(x)))
    mantissa = x / 10.0**exponent
    if round(mantissa, digits - 1) >= 10:
        mantissa, exponent = mantissa / 10, exponent + 1
    return f"{mantissa:.{digits - 1}f}×10^{exponent}"


def decade(x: float) -> str:
    return f"10^{round(math.log10(x))}"


def objective(params: list[torch.Tensor], Y: torch.Tensor, lw: list[float], lh: float):
    """The exact DUFM objective at ``params`` = [H_1, W_1, ..., W_L] (fit_dufm's own terms)."""
    return lambda: sum(_terms(params[0], params[1:], Y, lw, lh).values())


def point(sol) -> list[torch.Tensor]:
    """[H_1, W_1, ..., W_L] of a fit, as float64 leaf tensors (column convention)."""
    return [torch.tensor(m.copy()).requires_grad_() for m in (sol.H1.T, *sol.weights)]


def one_hot(y: np.ndarray) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(y), int(y.max()) + 1).T.to(torch.float64)


def pre_activations(params: list[torch.Tensor]) -> np.ndarray:
    """|W_l h_l| of every hidden layer, flattened."""
    with torch.no_grad():
        h, out = params[0], []
        for W in params[1:-1]:
            z = W @ h
            out.append(z.abs().flatten())
            h = torch.relu(z)
    return torch.cat(out).numpy()


def probe(
    fun: Callable[[], torch.Tensor], params: list[torch.Tensor]
) -> tuple[float, float, float]:
    """Steps t along the unit negative gradient: (largest decrease of the objective and its step,
    smallest step from which every larger step of ``STEPS`` raises the objective)."""
    with torch.enable_grad():
        f0 = fun()
        grads = torch.autograd.grad(f0, params)
    gn = math.sqrt(sum(float((g * g).sum()) for g in grads))
    base = [p.detach().clone() for p in params]
    changes = []
    with torch.no_grad():
        for t in STEPS:
            for p, b, g in zip(params, base, grads, strict=True):
                p.copy_(b - t * g / gn)
            changes.append(float(fun()) - float(f0))
        for p, b in zip(params, base, strict=True):
            p.copy_(b)
    changes = np.array(changes)
    i = int(np.argmin(changes))
    falling = np.flatnonzero(changes <= 0)
    if falling.size and falling[-1] == STEPS.size - 1:
        raise RuntimeError("the objective still falls at the largest probe step: not a kink")
    first_rise = STEPS[falling[-1] + 1] if falling.size else STEPS[0]
    return -changes[i], STEPS[i], first_rise


def without_warm_start(y: np.ndarray, L: int, seed: int):
    """The restart's start, solved by the exact-objective phase of fit_dufm alone."""
    lw, lh = TEST_LW[:L], TEST_LH
    start = fit_dufm(
        y, n_layers=L, width=4, lambda_w=lw, lambda_h=lh, restarts=1, seed=seed, max_iter=0
    )
    params = point(start)
    fun = objective(params, one_hot(y), lw, lh)
    rounds, value = _lbfgs_rounds(fun, params, tol=1e-6, budget=2000, what="no warm start")
    return value, rounds[-1], params, fun, start.dnc_value


def solving_example(lines: list[str]) -> None:
    y = np.repeat(np.arange(2), 5)
    sol = fit_dufm(y, n_layers=3, width=4, lambda_w=LAM, lambda_h=LAM, restarts=5, seed=0)
    gap = (sol.objective - sol.dnc_value) / sol.dnc_value
    lines.append(f"K=2 n=5 L=3 d=4 lambda=1e-3 restarts=5 seed=0: objective {sol.objective:.8f}")
    lines.append(f"  L_DNC {sol.dnc_value:.8f}, relative gap {sci(gap)}, converged {sol.converged}")
    # NC3 at the exact DNC point: orthogonal-frame class means a e_k, W_L rows along e_k
    X = np.repeat(np.eye(2), 5, axis=0)
    lines.append(f"  nc3 at the DNC point (K=2): {nc3(X, y, np.eye(2)):.3f}")
    lines.append(f"  2 - sqrt(2) = {2 - math.sqrt(2):.3f}")


def kink_above_the_optimum(lines: list[str]) -> None:
    K, n, L = 3, 2, 3
    y = np.repeat(np.arange(K), n)
    kw = dict(n_layers=L, width=4, lambda_w=TEST_LW[:L], lambda_h=TEST_LH, restarts=1)
    plain, warm = [], []
    for seed in range(12):
        value, rec, params, fun, dnc = without_warm_start(y, L, seed)
        plain.append(rec.converged)
        sol = fit_dufm(y, **kw, seed=seed)
        warm.append(sol.converged)
        if seed == 9:
            kept = (value, rec, pre_activations(params), probe(fun, params), dnc, sol)
    lines.append(f"K=3 n=2 L=3 d=4 tests' lambdas, seeds 0 to {len(plain) - 1}, one restart each:")
    lines.append(f"  unconverged without the warm start: {len(plain) - sum(plain)} of {len(plain)}")
    lines.append(
        f"  unconverged with the warm start (fit_dufm): {len(warm) - sum(warm)} of {len(warm)}"
    )
    value, rec, z, (drop, at, rise), dnc, sol = kept
    small = np.sort(z[z < NEAR_ZERO])
    lines.append("K=3 n=2 L=3 d=4 tests' lambdas, seed 9, without the warm start:")
    lines.append(f"  stopped at {value:.10f} against L_DNC {dnc:.10f}")
    lines.append(f"  converged {rec.converged}, relative gradient {sci(rec.rel_grad_norm)}")
    lines.append(
        f"  pre-activations within {NEAR_ZERO:.0e} of 0: {small.size}, from {sci(small[0])} "
        f"to {sci(small[-1])} (the next {sci(float(np.sort(z[z >= NEAR_ZERO])[0]))})"
    )
    lines.append(
        f"  along the negative gradient: largest decrease {sci(drop)} (step {decade(at)}); "
        f"the objective rises for every step from {decade(rise)} to {decade(STEPS[-1])}"
    )
    lines.append(
        f"  fit_dufm (with the warm start), same seed: {sol.objective:.10f}, "
        f"converged {sol.converged}, relative gradient {sci(sol.record.rel_grad_norm)}"
    )
    lines.append(
        f"  its smallest pre-activation is {sci(float(pre_activations(point(sol)).min()))} from 0"
    )


def below_dnc(lines: list[str], label: str, y: np.ndarray, lw, lh, digits: int, **kw) -> None:
    sol = fit_dufm(y, lambda_w=lw, lambda_h=lh, **kw)
    params = point(sol)
    drop, at, rise = probe(objective(params, one_hot(y), list(sol.params["lambda_w"]), lh), params)
    lines.append(f"{label}:")
    lines.append(
        f"  objective {sol.objective:.{digits}f} against L_DNC {sol.dnc_value:.{digits}f} "
        f"({sol.vs_dnc})"
    )
    lines.append(
        f"  converged {sol.converged}, relative gradient {sci(sol.record.rel_grad_norm)} "
        f"({sol.record.message})"
    )
    lines.append(
        f"  along the negative gradient: largest decrease {sci(drop)} (step {decade(at)}); "
        f"the objective rises for every step from {decade(rise)} to {decade(STEPS[-1])}"
    )


def main() -> None:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    lines: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # unconverged fits are the subject
        solving_example(lines)
        kink_above_the_optimum(lines)
        y3 = np.repeat(np.arange(3), 2)
        below_dnc(
            lines,
            "K=3 n=2 L=4 d=4 tests' lambdas, restarts=1, seed=7",
            y3,
            TEST_LW,
            TEST_LH,
            7,
            n_layers=4,
            width=4,
            restarts=1,
            seed=7,
        )
        y4 = np.repeat(np.arange(4), 3)
        below_dnc(
            lines,
            "K=4 n=3 L=4 d=6 lambda=1e-3, restarts=6, seed=0",
            y4,
            LAM,
            LAM,
            8,
            n_layers=4,
            width=6,
            restarts=6,
            seed=0,
        )
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    print(f"wrote {OUT} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
