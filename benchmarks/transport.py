"""Transport benchmark: otcollapse's solvers against the plain POT loop, in one run.

    python benchmarks/transport.py            # full table (several minutes on 2 cores)
    python benchmarks/transport.py --quick    # smoke run with small n
    python benchmarks/transport.py --kinds residual,collapsed   # some data kinds only
    python benchmarks/transport.py --kinds unrelated-large       # the streamed auction rows

Writes benchmarks/results/transport.{json,md}. Every case runs in a fresh subprocess so that its
peak resident memory (ru_maxrss) is its own. The POT way is ``ot.dist`` + ``ot.emd2`` with a
large ``numItermax``, its convergence flag checked. The assignment runs twice: its default path
(sparse and certified where it pays, with the rank, scans, flagged fraction and dual violation of
its certificate, and per-stage seconds in the JSON) and forced dense (``candidates="dense"``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


#: collapsed features: classes, their spread, the norm of their centres
COLLAPSED_K, COLLAPSED_SPREAD, COLLAPSED_NORM = 10, 1e-4, 10.0


def data(kind: str, n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    if kind == "collapsed":  # two samples of 10 tight classes (the terminal phase)
        centres = g.normal(size=(COLLAPSED_K, d))
        centres *= COLLAPSED_NORM / np.linalg.norm(centres, axis=1, keepdims=True)
        labels = np.arange(n) % COLLAPSED_K
        x = centres[labels] + COLLAPSED_SPREAD * g.normal(size=(n, d))
        return x, centres[labels] + COLLAPSED_SPREAD * g.normal(size=(n, d))
    x = g.normal(size=(n, d))
    if kind == "residual":  # y = x + 0.3 tanh(x W), W Gaussian / sqrt(d)
        W = g.normal(size=(d, d)) / np.sqrt(d)
        return x, x + 0.3 * np.tanh(x @ W)
    return x, g.normal(size=(n, d))  # unrelated Gaussian clouds


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def repeats(n: int) -> int:
    """Timed runs per case: the best of them is reported (the first run of a fresh process also
    pays page faults for its n x n buffers, which a profile of many steps pays only once)."""
    return 20 if n <= 1000 else 3 if n <= 4000 else 2 if n < 20000 else 1


def case_pot(kind: str, n: int, d: int) -> dict:
    import ot

    x, y = data(kind, n, d)
    a = np.full(n, 1 / n)
    times = []
    for _ in range(repeats(n)):
        t0 = time.perf_counter()
        M = ot.dist(x, y)
        val, log = ot.emd2(a, a, M, numItermax=10**9, log=True)
        times.append(time.perf_counter() - t0)
        del M
    return {
        "value": float(val),
        "seconds": min(times),
        "first_run_seconds": times[0],
        "converged": log["result_code"] == 1,
        "warning": log["warning"],
    }


def case_ours(kind: str, n: int, d: int, method: str, opts: dict) -> dict:
    import warnings

    import torch

    from otcollapse import wasserstein

    warnings.simplefilter("ignore")  # non-convergence is recorded in the table instead
    x, y = data(kind, n, d)
    if opts.pop("float32", False):
        x, y = (torch.as_tensor(v, dtype=torch.float32) for v in (x, y))
    times = []
    for _ in range(1 if method == "sinkhorn" else repeats(n)):
        t0 = time.perf_counter()
        res = wasserstein(x, y, method=method, **opts)
        times.append(time.perf_counter() - t0)
    return {
        "value": res.cost,
        "seconds": min(times),
        "first_run_seconds": times[0],
        "converged": res.converged,
        "method": res.method,
        "quantity": res.quantity,
        "n_iter": res.n_iter,
        "gap": res.gap,
        "eps": res.params.get("eps"),
        "mode": res.params.get("mode"),
        # the assignment's path (sparse certified or dense) and its certificate
        "path": res.params.get("path"),
        "fallback": res.params.get("fallback"),
        "rank": res.params.get("rank"),
        "rounds": res.params.get("rounds"),
        "candidates_per_row": res.params.get("candidates_per_row"),
        "flagged_fraction": res.params.get("flagged_fraction"),
        "dual_violation": res.params.get("dual_violation"),
        "stage_seconds": res.params.get("stage_seconds"),
    }


def case_oracle(kind: str, n: int, d: int) -> dict:
    """The collapsed pair's W2^2 without cancellation: each class centred on its own mean,
    POT's network simplex on its cost divided by the largest, weighted by the class's mass."""
    import ot

    x, y = data(kind, n, d)
    labels = np.arange(n) % COLLAPSED_K
    total = 0.0
    for k in range(COLLAPSED_K):
        i = labels == k
        c = x[i].mean(0)
        M = ot.dist(x[i] - c, y[i] - c)
        w = np.full(int(i.sum()), 1 / i.sum())
        total += i.mean() * M.max() * ot.emd2(w, w, M / M.max(), numItermax=10**9)
    return {"value": float(total)}


def case_sinkhorn_iter(n: int, d: int) -> dict:
    """Seconds per Sinkhorn iteration (one f and one g update) at size n, chunked, float32."""
    import torch

    from otcollapse.transport import PointCloudCost
    from otcollapse.transport.entropic import softmin

    x, y = data("residual", n, d)
    geom = PointCloudCost(
        torch.as_tensor(x, dtype=torch.float32),
        torch.as_tensor(y, dtype=torch.float32),
        max_dense_bytes=0,
    )
    log_w = torch.full((n,), -np.log(n), dtype=torch.float32)
    eps = 1e-3 * geom.mean_cost(log_w.exp(), log_w.exp())
    g = torch.zeros(n, dtype=torch.float32)
    gt = geom.transposed()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        f = softmin(geom, g, log_w, eps)
        g = softmin(gt, f, log_w, eps)
        times.append(time.perf_counter() - t0)
    return {"seconds_per_iteration": float(np.median(times)), "block_rows": geom.block_rows()}


def run_case(spec: dict) -> dict:
    """Run one case in a subprocess; returns its record with its own peak memory."""
    out = subprocess.run(
        [sys.executable, __file__, "--case", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def warm_up() -> None:
    """First calls into torch, BLAS and POT pay one-off set-up costs: pay them before timing."""
    import ot

    from otcollapse import wasserstein

    x, y = data("residual", 64, 8)
    wasserstein(x, y)
    ot.emd2([], [], ot.dist(x, y))


def child(spec: dict) -> None:
    warm_up()
    kind = spec["case"]
    if kind == "pot":
        rec = case_pot(spec["data"], spec["n"], spec["d"])
    elif kind == "oracle":
        rec = case_oracle(spec["data"], spec["n"], spec["d"])
    elif kind == "ours":
        rec = case_ours(
            spec["data"], spec["n"], spec["d"], spec["method"], dict(spec.get("opts", {}))
        )
    else:
        rec = case_sinkhorn_iter(spec["n"], spec["d"])
    rec["peak_mb"] = peak_mb()
    print(json.dumps(rec))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument(
        "--kinds",
        default="residual,unrelated,collapsed,large",
        help="comma-separated data kinds to run (residual, unrelated, collapsed, large, "
        "unrelated-large: the streamed auction at 8,000, 20,000 and 50,000; written to "
        "results/transport_<kinds>.*)",
    )
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        child(json.loads(args.case))
        return
    d = 128
    sizes = [300, 600] if args.quick else [1000, 4000, 8000]
    big, huge, sub = (2000, 3000, 500) if args.quick else (20000, 50000, 4000)
    rows = []

    def show(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    kinds = args.kinds.split(",")
    for kind in ("residual", "unrelated", "collapsed"):
        if kind not in kinds:
            continue
        oracle = None
        for n in sizes if kind != "collapsed" else sizes[1:2]:
            if kind == "collapsed":
                oracle = run_case({"case": "oracle", "data": kind, "n": n, "d": d}).get("value")
            pot = run_case({"case": "pot", "data": kind, "n": n, "d": d})
            show(
                {
                    "data": kind,
                    "n": n,
                    "method": "POT loop (ot.dist + ot.emd2)",
                    **pot,
                    "ratio": 1.0,
                    **_error(pot, oracle),
                }
            )
            methods = [
                ("auto", {}),
                ("assignment", {}),
                ("assignment", {"candidates": "dense"}),
                ("sinkhorn", {"float32": True, "eps_rel": 1e-2, "max_iter": 300}),
            ]
            if n <= 4000:
                methods.insert(2, ("exact", {}))
            for method, opts in methods:
                rec = run_case(
                    {"case": "ours", "data": kind, "n": n, "d": d, "method": method, "opts": opts}
                )
                if "value" in rec and "value" in pot:
                    rec["rel_diff_vs_pot"] = abs(rec["value"] - pot["value"]) / pot["value"]
                    rec["ratio"] = pot["seconds"] / rec["seconds"]
                rec.update(_error(rec, oracle))
                label = method + (" (float32, eps_rel=1e-2)" if opts.get("float32") else "")
                if method == "auto" and "method" in rec:
                    label = f"auto -> {rec['method']}"
                if rec.get("path"):  # which assignment path ran: sparse certified, or dense
                    label += f" ({rec['path']}{', forced' if 'candidates' in opts else ''})"
                show({"data": kind, "n": n, **rec, "method": label})
    if "large" in kinds:
        large_rows(big, huge, sub, d, show)
    if "unrelated-large" in kinds:
        unrelated_large_rows([300, 1000, 2000] if args.quick else [8000, 20000, 50000], d, show)
    default = ap.get_default("kinds").split(",")
    write(rows, args.quick, d, "" if kinds == default else "_" + "_".join(kinds))


def unrelated_large_rows(sizes: list[int], d: int, show) -> None:
    """Unrelated clouds exact beyond the dense budget: the streamed auction. At the first size
    side by side with the POT loop and the dense assignment (identical values, ratio); above,
    where no dense matrix fits in the default budget, absolute time and peak memory."""
    first = sizes[0]
    pot = run_case({"case": "pot", "data": "unrelated", "n": first, "d": d})
    show({"data": "unrelated", "n": first, "method": "POT loop (ot.dist + ot.emd2)", **pot})
    for n in sizes:
        runs = [("auto", {})]
        if n == first:
            runs = [("assignment", {"candidates": "auction"}), ("auto", {})]
        for method, opts in runs:
            rec = run_case(
                {
                    "case": "ours",
                    "data": "unrelated",
                    "n": n,
                    "d": d,
                    "method": method,
                    "opts": opts,
                }
            )
            if n == first and "value" in rec and "value" in pot:
                rec["rel_diff_vs_pot"] = abs(rec["value"] - pot["value"]) / pot["value"]
                rec["ratio"] = pot["seconds"] / rec["seconds"]
            label = f"{method} -> {rec.get('method')} ({rec.get('path')}"
            label += ", forced)" if opts else ")"
            show({"data": "unrelated", "n": n, **rec, "method": label})


def _error(rec: dict, oracle: float | None) -> dict:
    """Relative error against the collapsed pair's oracle (the POT loop's is the cancellation
    of ot.dist's ||x||^2 + ||y||^2 - 2 x.y)."""
    if oracle is None or "value" not in rec:
        return {}
    return {"rel_err_vs_oracle": abs(rec["value"] - oracle) / oracle}


def large_rows(big: int, huge: int, sub: int, d: int, show) -> None:
    """Sizes where no dense matrix is built: chunked Sinkhorn and auto's sparse assignment."""
    rec = run_case(
        {
            "case": "ours",
            "data": "residual",
            "n": big,
            "d": d,
            "method": "sinkhorn",
            "opts": {"float32": True, "max_dense_bytes": 0},
        }
    )
    show({"data": "residual", "n": big, **rec, "method": "sinkhorn chunked (float32), whole solve"})
    # the same pair, exact: auto keeps the sparse certified assignment (O(n d) memory) although
    # the dense matrices exceed the default budget
    rec = run_case({"case": "ours", "data": "residual", "n": big, "d": d, "method": "auto"})
    show({"data": "residual", "n": big, **rec, "method": f"auto -> {rec.get('method')} (exact)"})
    rec = run_case({"case": "iter", "n": huge, "d": d})
    show(
        {
            "data": "residual",
            "n": huge,
            "method": "sinkhorn chunked (float32), per iteration",
            **rec,
        }
    )
    ex = run_case({"case": "ours", "data": "residual", "n": sub, "d": d, "method": "exact"})
    show({"data": "residual", "n": sub, **ex, "method": "exact (subsample check)"})
    sk = run_case(
        {
            "case": "ours",
            "data": "residual",
            "n": sub,
            "d": d,
            "method": "sinkhorn",
            "opts": {"float32": True, "max_dense_bytes": 0},
        }
    )
    if "value" in sk and "value" in ex:
        sk["rel_diff_vs_exact"] = (sk["value"] - ex["value"]) / ex["value"]
    show({"data": "residual", "n": sub, **sk, "method": "sinkhorn chunked (subsample check)"})


def write(rows: list[dict], quick: bool, d: int, suffix: str = "") -> None:
    import torch

    meta = {
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "quick": quick,
        "d": d,
    }
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    name = ("transport_quick" if quick else "transport") + suffix
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    cols = [
        "data",
        "n",
        "method",
        "seconds",
        "first_run_seconds",
        "ratio",
        "value",
        "rel_diff_vs_pot",
        "rel_err_vs_oracle",
        "converged",
        "peak_mb",
        "seconds_per_iteration",
        "rel_diff_vs_exact",
        "n_iter",
        "rank",
        "rounds",
        "flagged_fraction",
        "dual_violation",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
