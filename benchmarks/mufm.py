"""Benchmark: fitting the MUFM (fit_mufm) to a relative gradient norm of 1e-8.

Data: K = 10 classes, N samples (balanced), d dimensions, X = 2 m_y + N(0, I) with m_k the
vertices of a simplex ETF; the MUFM has L = 8 steps, cross-entropy with a bias, and
λ_W = λ_H = 5e-4, λ_b = 0, λ_OT = 1e-3 (float64, L-BFGS with a strong-Wolfe line search,
tol = 1e-8 on ‖∇f‖ / max(1, ‖∇f(θ_0)‖), max_iter 20000).

Runs:
- paired coupling, N = 10,000, d = 256: solver="reduced" (H_L, W, b) and solver="full"
  (H_1..H_L, W, b), and the largest |objective difference| between them;
- Wasserstein coupling (one optimal assignment per evaluation), N = 2,000, d = 256, reduced.

    python benchmarks/mufm.py            # the full run: see the time estimate in docs/mufm.md
    python benchmarks/mufm.py --quick    # a smoke run: N = 1000 (paired) and 200 (Wasserstein)

Results go to benchmarks/results/mufm.{md,json} (written atomically; --quick writes
mufm_quick.{md,json} so it never overwrites a full run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from otcollapse._utils import atomic_write_text
from otcollapse.constructions import simplex_etf
from otcollapse.surrogates import fit_mufm

MODEL = dict(lambda_ot=1e-3, lambda_w=5e-4, lambda_h=5e-4, lambda_b=0.0, loss="ce", bias=True)


def data(n: int, d: int, K: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    y = np.arange(n) % K
    means = 2.0 * simplex_etf(K, d, seed).T  # (K, d)
    return means[y] + g.standard_normal((n, d)), y


def run(name: str, X: np.ndarray, y: np.ndarray, *, L: int, coupling: str, solver: str,
        tol: float, max_iter: int) -> dict:  # fmt: skip
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sol = fit_mufm(X, y, n_layers=L, coupling=coupling, solver=solver, tol=tol,
                       max_iter=max_iter, **MODEL)  # fmt: skip
    sec = time.perf_counter() - t0
    row = {
        "run": name,
        "N": int(X.shape[0]),
        "d": int(X.shape[1]),
        "K": int(y.max()) + 1,
        "L": L,
        "coupling": coupling,
        "solver": solver,
        "seconds": sec,
        "n_iter": sol.n_iter,
        "objective": sol.objective,
        "converged": sol.converged,
        "rel_grad_norm": sol.rel_grad_norm,
        "grad_norm": sol.grad_norm,
        "stop_reason": sol.record.message,
        "warnings": [str(w.message) for w in caught],
    }
    if sol.mismatch_fraction is not None:
        row["mismatch_fraction"] = sol.mismatch_fraction
    print(
        f"{name:24s} N={row['N']:6d} {sec:9.2f} s  iter={sol.n_iter:6d}  "
        f"obj={sol.objective:.12g}  rel_grad={sol.rel_grad_norm:.2e}  converged={sol.converged}",
        flush=True,
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: N = 1000 and 200")
    ap.add_argument("--n", type=int, default=None, help="N for the paired runs (default 10000)")
    ap.add_argument("--n-w2", type=int, default=None, help="N for the W2 run (default 2000)")
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--K", type=int, default=10)
    ap.add_argument("--L", type=int, default=8)
    ap.add_argument("--tol", type=float, default=1e-8)
    ap.add_argument("--max-iter", type=int, default=20000)
    ap.add_argument("--skip-full", action="store_true", help="leave out solver='full'")
    ap.add_argument("--skip-w2", action="store_true", help="leave out the Wasserstein runs")
    ap.add_argument("--skip-paired", action="store_true", help="leave out the paired runs")
    ap.add_argument("--tag", default="", help="suffix of the result files (mufm_TAG.md)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    n = args.n or (1000 if args.quick else 10_000)
    n_w2 = args.n_w2 or (200 if args.quick else 2000)
    kw = dict(L=args.L, tol=args.tol, max_iter=args.max_iter)

    rows = []
    if not args.skip_paired:
        X, y = data(n, args.d, args.K, args.seed)
        rows.append(run("paired/reduced", X, y, coupling="paired", solver="reduced", **kw))
        if not args.skip_full:
            rows.append(run("paired/full", X, y, coupling="paired", solver="full", **kw))
    if not args.skip_w2:
        Xw, yw = data(n_w2, args.d, args.K, args.seed)
        rows.append(run("wasserstein/reduced", Xw, yw, coupling="wasserstein",
                        solver="reduced", **kw))  # fmt: skip
        if not args.skip_full:
            rows.append(run("wasserstein/full", Xw, yw, coupling="wasserstein",
                            solver="full", **kw))  # fmt: skip
    agree = {}
    for coupling in ("paired", "wasserstein"):
        pair = [r for r in rows if r["coupling"] == coupling]
        if len(pair) == 2:
            agree[coupling] = abs(pair[0]["objective"] - pair[1]["objective"]) / max(
                1.0, abs(pair[0]["objective"])
            )
            print(
                f"{coupling}: reduced vs full relative objective difference {agree[coupling]:.2e}"
            )

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu": platform.processor() or platform.machine(),
        "command": "python " + " ".join(sys.argv),
    }
    record = {"model": MODEL, "settings": vars(args), "rows": rows,
              "reduced_vs_full_rel_objective_diff": agree, "environment": env}  # fmt: skip
    head = "| run | N | d | K | L | seconds | iterations | objective | converged | rel. grad norm |"
    lines = [
        "# MUFM fit benchmark" + (" (quick)" if args.quick else ""),
        "",
        f"Model: {MODEL}; tol = {args.tol} (relative gradient norm), max_iter = {args.max_iter}.",
        f"Command: `{env['command']}` (torch threads: {env['threads']}).",
        "",
        head,
        "|" + "---|" * 10,
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['N']} | {r['d']} | {r['K']} | {r['L']} | {r['seconds']:.2f} | "
            f"{r['n_iter']} | {r['objective']:.12g} | {r['converged']} | "
            f"{r['rel_grad_norm']:.2e} |"
        )
    for coupling, diff in agree.items():
        lines += ["", f"{coupling}: reduced vs full relative objective difference {diff:.2e}."]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = ("mufm_quick" if args.quick else "mufm") + (f"_{args.tag}" if args.tag else "")
    atomic_write_text(out / f"{stem}.json", json.dumps(record, indent=2, default=str) + "\n")
    atomic_write_text(out / f"{stem}.md", "\n".join(lines) + "\n")
    print(f"wrote {out / stem}.{{md,json}}")


if __name__ == "__main__":
    main()
