"""GPU benchmark: otcollapse's Sinkhorn and assignment beside GeomLoss and POT, on one device.

    python benchmarks/gpu.py                     # n in 10k, 20k, 50k; d in 128, 512
    python benchmarks/gpu.py --quick             # n = 10,000, d = 128 only
    python benchmarks/gpu.py --sizes 20000 --dims 512 --kinds residual
    python benchmarks/gpu.py --device cpu --sizes 2000 --dims 32    # dry run: prints, writes nothing

Point clouds: float32, ``x`` standard normal in R^d; ``y = x + 0.3 tanh(x W)`` (``W`` Gaussian
/ sqrt(d): a smooth displacement, like a residual block's step; kind ``residual``) or an
independent standard normal cloud (kind ``unrelated``). Every case runs on ``--device``, timed
between ``torch.cuda.synchronize()`` calls after a warm-up, one run each; the peak GPU memory
(``torch.cuda.max_memory_allocated``, reset before each case) includes the inputs.

1. Entropic, ``eps = --eps-rel * mean cost`` in the units of the full squared cost:
   ``wasserstein(x, y, method="sinkhorn", eps=eps)`` (chunked log-domain Sinkhorn, never an
   n x n matrix); GeomLoss ``SamplesLoss("sinkhorn", p=2, blur=sqrt(eps / 2), debias=False,
   backend="tensorized")`` at its default ``scaling=0.5`` and at 0.9 (its cost is
   ``||x - y||^2 / 2``, so its ``eps = blur^2`` is ``eps / 2`` in our units, the relation of
   ``otcollapse.transport.entropic._geomloss``; its value is doubled back); POT
   ``ot.dist`` + ``ot.sinkhorn2(method="sinkhorn_log", reg=eps)`` on the same device (POT's
   ``empirical_sinkhorn2`` builds the same dense matrix unless ``isLazy``, a Python loop over
   blocks, not run here). GeomLoss's value is ``OT_eps`` and is compared with our
   ``params["ot_eps"]``; POT's is ``<pi_eps, C>``, compared with our ``cost``. Throughput is
   ``n^2 d / seconds``. GeomLoss and POT hold dense n x n float32 matrices (about 3 and 6
   copies at their peak): a case whose estimate exceeds 85% of the free device memory is
   skipped with that reason, and an out-of-memory error is recorded, not raised.
2. Exact assignment: ``wasserstein(x, y, method="assignment")`` with its default options (the
   sparse certified path for the residual pair; for unrelated clouds the dense path within the
   default 2 GiB ``max_dense_bytes`` and the streamed auction beyond; the path that ran is in
   the solver's label) beside POT ``ot.dist`` + ``ot.emd2`` on the host in float64 for
   ``n <= 10,000`` (skipped above with the reason).

Time: estimated (not measured) at 5-8 minutes for the default run on an H200 and under 2
minutes with ``--quick``; POT's emd2 on the unrelated pair at n = 10,000 (one C call on one
core, about a minute) dominates the quick run. Every other case is stopped after
``--case-limit`` seconds (default 120) and recorded as stopped, so no case can hold the run.

Writes ``benchmarks/results/gpu.{json,md}`` (``gpu_quick.*`` with ``--quick``) only when run on
a CUDA device; on ``--device cpu`` it prints the table and writes nothing unless ``--results
DIR`` is given (then ``DIR/gpu_cpu_dryrun.{json,md}``): CPU numbers are not GPU numbers. pykeops
is never imported (it is blocked before GeomLoss and POT are imported; both fall back to torch).
Needs otcollapse, POT and GeomLoss; a missing POT or GeomLoss is recorded as a skipped case.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import math
import platform
import signal
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

# never import pykeops: with this entry `import pykeops` raises ImportError, so GeomLoss (which
# POT's `import ot` imports) falls back to torch. Set before either is imported.
sys.modules["pykeops"] = None  # type: ignore[assignment]

HERE = Path(__file__).resolve().parent
SIZES, DIMS, KINDS = (10_000, 20_000, 50_000), (128, 512), ("residual", "unrelated")
#: eps as a fraction of the mean cost (as in benchmarks/transport.py)
EPS_REL = 1e-2
#: marginal tolerance of the float32 solves: our L1 row-marginal error; POT's criterion is the
#: L2 norm of its column-marginal error, so it gets TOL / sqrt(n) (which implies L1 <= TOL)
TOL = 1e-3
POT_SINKHORN_MAX_ITER = 1000
GEOMLOSS_SCALINGS = (0.5, 0.9)
#: dense n x n float32 copies at the peak of GeomLoss's tensorized solver and of POT's
#: ot.dist + sinkhorn_log (cost, -cost/reg, the shifted block and logsumexp's temporary, the plan)
GEOMLOSS_COPIES, POT_COPIES = 3, 6
EMD_MAX_N = 10_000
#: seconds a case may run (--case-limit); POT's emd2, one C call, is not interrupted
CASE_LIMIT = 120.0
MEMORY_FRACTION = 0.85
GiB = 2.0**30


# ---------------------------------------------------------------------------- data and timing
def make_pair(kind: str, n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 pair on the CPU, from a seeded torch generator (same numbers on any device)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    if kind == "residual":
        W = torch.randn(d, d, generator=g) / math.sqrt(d)
        return x, x + 0.3 * torch.tanh(x @ W)
    return x, torch.randn(n, d, generator=g)


def mean_cost(x: torch.Tensor, y: torch.Tensor) -> float:
    """``mean_ij ||x_i - y_j||^2 = mean ||x||^2 + mean ||y||^2 - 2 xbar . ybar`` (float64)."""
    x, y = x.double(), y.double()
    return float(x.square().sum(1).mean() + y.square().sum(1).mean() - 2 * x.mean(0) @ y.mean(0))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def memory_budget(device: torch.device) -> float:
    """Bytes a case may plan to hold: a fraction of the free device memory (2 GiB on a CPU)."""
    if device.type == "cuda":
        free_memory(device)
        return MEMORY_FRACTION * torch.cuda.mem_get_info(device)[0]
    return 2 * GiB


class CaseTimeout(BaseException):
    """Raised by the alarm in a case over its time limit (a BaseException, so that no library's
    ``except Exception`` swallows it)."""


def _alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout


def timed(fn: Callable[[], dict], device: torch.device, limit: float | None = -1.0) -> dict:
    """Run ``fn`` once between synchronisations; its record plus seconds and peak memory.

    An out-of-memory error, a refusal, an error or running past ``limit`` seconds (SIGALRM, so
    only a Python-level loop is interrupted: a single long C call finishes first) becomes a
    record with the reason instead. ``limit`` defaults to ``CASE_LIMIT``; None: no limit.
    """
    from otcollapse.exceptions import DenseBudgetError

    limit = CASE_LIMIT if limit == -1.0 else limit
    free_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    use_alarm = limit is not None and hasattr(signal, "setitimer")
    if use_alarm:
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, float(limit))
    t0 = time.perf_counter()
    try:
        rec = fn()
        sync(device)
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0.0)
    except CaseTimeout:
        rec = {"skipped": f"stopped at the limit of {limit:g} s per case (--case-limit)"}
    except torch.cuda.OutOfMemoryError as err:
        rec = {"skipped": f"out of memory: {first_line(err)}"}
    except DenseBudgetError as err:  # our exact solvers refuse a dense matrix over budget
        rec = {"skipped": f"refused: {first_line(err)}"}
    except Exception as err:  # a library's error: recorded, the run goes on
        rec = {"error": f"{type(err).__name__}: {first_line(err)}"}
    else:
        rec["seconds"] = time.perf_counter() - t0
        if device.type == "cuda":
            rec["peak_gib"] = torch.cuda.max_memory_allocated(device) / GiB
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0.0)
            signal.signal(signal.SIGALRM, previous)
    if "seconds" not in rec:
        free_memory(device)
    return rec


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def over_budget(copies: float, n: int, budget: float) -> str | None:
    need = copies * n * n * 4
    if need <= budget:
        return None
    return (
        f"would hold about {need / GiB:.1f} GiB of dense {n} x {n} float32 matrices "
        f"({copies:g} copies), over {budget / GiB:.1f} GiB ({MEMORY_FRACTION:.0%} of free memory)"
    )


def missing(module: str) -> str | None:
    try:
        __import__(module)
    except ImportError as err:
        return f"{module} is not installed ({err})"
    return None


# ---------------------------------------------------------------------------- the solvers
def ours_sinkhorn(x: torch.Tensor, y: torch.Tensor, eps: float) -> dict:
    from otcollapse import wasserstein

    res = wasserstein(x, y, method="sinkhorn", eps=eps, tol=TOL)
    return {
        "value": res.cost,
        "quantity": res.quantity,
        "ot_eps": res.params["ot_eps"],
        "converged": res.converged,
        "n_iter": res.n_iter,
        "marginal_error": res.gap,
        "mode": res.params.get("mode"),
    }


def geomloss_sinkhorn(x: torch.Tensor, y: torch.Tensor, eps: float, scaling: float) -> dict:
    from geomloss import SamplesLoss

    loss = SamplesLoss(
        "sinkhorn",
        p=2,
        blur=math.sqrt(eps / 2),
        scaling=scaling,
        debias=False,
        backend="tensorized",
    )
    return {"ot_eps": 2.0 * float(loss(x, y)), "quantity": "OT_eps", "scaling": scaling}


def pot_sinkhorn(x: torch.Tensor, y: torch.Tensor, eps: float) -> dict:
    import ot

    n = x.shape[0]
    w = torch.full((n,), 1.0 / n, dtype=x.dtype, device=x.device)
    M = ot.dist(x, y)  # full squared Euclidean cost, our units
    stop = TOL / math.sqrt(n)
    val, log = ot.sinkhorn2(
        w,
        w,
        M,
        eps,
        method="sinkhorn_log",
        numItermax=POT_SINKHORN_MAX_ITER,
        stopThr=stop,
        log=True,
    )
    err = float(log["err"][-1]) if log.get("err") else None
    return {
        "value": float(val),
        "quantity": "<pi, C>",
        "n_iter": int(log.get("niter", -1)) + 1,
        "marginal_error_l2": err,
        "converged": err is not None and err < stop,
    }


def ours_assignment(x: torch.Tensor, y: torch.Tensor) -> dict:
    from otcollapse import wasserstein

    res = wasserstein(x, y, method="assignment")
    return {
        "value": res.cost,
        "quantity": res.quantity,
        "converged": res.converged,
        "path": res.params.get("path"),
        "fallback": res.params.get("fallback"),
        "dual_violation": res.params.get("dual_violation"),
    }


def pot_emd(x: torch.Tensor, y: torch.Tensor) -> dict:
    import ot

    xn, yn = x.double().cpu().numpy(), y.double().cpu().numpy()
    w = np.full(len(xn), 1.0 / len(xn))
    val, log = ot.emd2(w, w, ot.dist(xn, yn), numItermax=10**9, log=True)
    return {"value": float(val), "quantity": "W2^2", "converged": log["result_code"] == 1}


# ---------------------------------------------------------------------------- the cases
def entropic_rows(kind: str, n: int, d: int, device: torch.device) -> list[dict]:
    xc, yc = make_pair(kind, n, d)
    eps = EPS_REL * mean_cost(xc, yc)
    x, y = xc.to(device), yc.to(device)
    del xc, yc
    head = {"case": "entropic", "kind": kind, "n": n, "d": d, "eps": eps}
    ours = timed(lambda: ours_sinkhorn(x, y, eps), device)
    rows = [{**head, "solver": "otcollapse sinkhorn (chunked)", **ours}]
    for s in GEOMLOSS_SCALINGS:
        why = missing("geomloss") or over_budget(GEOMLOSS_COPIES, n, memory_budget(device))
        rec = reference(why, lambda s=s: geomloss_sinkhorn(x, y, eps, s), ours, "ot_eps", device)
        rows.append({**head, "solver": f"GeomLoss tensorized, scaling={s}", **rec})
    why = missing("ot") or over_budget(POT_COPIES, n, memory_budget(device))
    rec = reference(why, lambda: pot_sinkhorn(x, y, eps), ours, "value", device)
    rows.append({**head, "solver": "POT ot.dist + sinkhorn2 (sinkhorn_log)", **rec})
    for r in rows:
        if "seconds" in r:
            r["throughput"] = n * n * d / r["seconds"]
    return rows


def assignment_rows(kind: str, n: int, d: int, device: torch.device) -> list[dict]:
    xc, yc = make_pair(kind, n, d)
    x, y = xc.to(device), yc.to(device)
    head = {"case": "assignment", "kind": kind, "n": n, "d": d}
    ours = timed(lambda: ours_assignment(x, y), device)
    label = "otcollapse assignment" + (f" ({ours['path']})" if ours.get("path") else "")
    rows = [{**head, "solver": label, **ours}]
    if n > EMD_MAX_N:
        why = f"n > {EMD_MAX_N}: POT's network simplex holds dense {n} x {n} float64 matrices"
    else:
        why = missing("ot")
    rec = reference(why, lambda: pot_emd(xc, yc), ours, "value", device, limit=None)
    rows.append({**head, "solver": "POT ot.dist + emd2 (host, float64)", **rec})
    return rows


def reference(
    why: str | None,
    fn: Callable[[], dict],
    ours: dict,
    key: str,
    device: torch.device,
    limit: float | None = -1.0,
) -> dict:
    """A reference solver's record (or why it was skipped), compared with ours."""
    return compare({"skipped": why} if why else timed(fn, device, limit), ours, key)


def compare(rec: dict, ours: dict, key: str) -> dict:
    """``rec`` with its time ratio to ours (its seconds / ours: > 1 means ours is faster) and the
    relative difference of the compared quantity ``key``."""
    out = dict(rec)
    if "seconds" in rec and "seconds" in ours:
        out["time_ratio_vs_ours"] = rec["seconds"] / ours["seconds"]
    if key in rec and key in ours and ours[key]:
        out["compared"] = key
        out["rel_diff_vs_ours"] = abs(rec[key] - ours[key]) / abs(ours[key])
    return out


def warm_up(device: torch.device) -> None:
    """CUDA context, cuBLAS handles and first kernels of every solver, before any timing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kind in KINDS:  # the sparse assignment path, then the dense one
            xc, yc = make_pair(kind, 512, 16, seed=1)
            x, y = xc.to(device), yc.to(device)
            eps = EPS_REL * mean_cost(xc, yc)
            ours_sinkhorn(x, y, eps)
            ours_assignment(x, y)
            if not missing("geomloss"):
                geomloss_sinkhorn(x, y, eps, 0.5)
            if not missing("ot"):
                pot_sinkhorn(x, y, eps)
                pot_emd(xc, yc)
    sync(device)


# ---------------------------------------------------------------------------- records
def versions() -> dict:
    out = {}
    for dist in ("otcollapse", "torch", "pot", "geomloss", "numpy", "scipy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def meta(device: torch.device, args: argparse.Namespace) -> dict:
    rec = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cuda": torch.version.cuda,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "versions": versions(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "sizes": args.sizes,
        "dims": args.dims,
        "kinds": args.kinds,
        "eps_rel": EPS_REL,
        "tol": TOL,
        "quick": args.quick,
        "case_limit_s": CASE_LIMIT,
    }
    if device.type == "cuda":
        rec["gpu_memory_gib"] = torch.cuda.get_device_properties(device).total_memory / GiB
    return rec


COLUMNS = (
    "case", "kind", "n", "d", "solver", "seconds", "throughput", "time_ratio_vs_ours", "value",
    "ot_eps", "rel_diff_vs_ours", "compared", "converged", "n_iter", "peak_gib", "path",
    "skipped", "error",
)  # fmt: skip


def markdown(rows: list[dict], info: dict) -> str:
    lines = [
        f"# GPU benchmark ({info['gpu'] or info['device']})",
        "",
        f"torch {info['versions']['torch']} (CUDA {info['cuda']}, TF32 matmul "
        f"{info['tf32_matmul']}), POT {info['versions']['pot']}, GeomLoss "
        f"{info['versions']['geomloss']}; float32 points; eps = {info['eps_rel']:g} x mean cost; "
        f"tol {info['tol']:g}. throughput = n^2 d / seconds; time_ratio_vs_ours = seconds / "
        "our seconds (> 1: ours is faster); rel_diff_vs_ours compares OT_eps with GeomLoss and "
        "<pi, C> with POT's Sinkhorn, W2^2 with POT's emd2.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        cells = []
        for c in COLUMNS:
            v = r.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(rows: list[dict], info: dict, out_dir: Path, name: str) -> None:
    from otcollapse._utils import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / f"{name}.json", json.dumps({"meta": info, "rows": rows}, indent=2))
    atomic_write_text(out_dir / f"{name}.md", markdown(rows, info))
    print(f"wrote {out_dir / name}.json and .md", flush=True)


# ---------------------------------------------------------------------------- main
def pick_device(requested: str | None) -> torch.device:
    if requested is None:
        requested = "cuda"
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "benchmarks/gpu.py: no CUDA device here. It measures GPU solves; for a dry run of "
            "the script on the CPU use: python benchmarks/gpu.py --device cpu --sizes 2000 --dims 32"
        )
    if device.type not in ("cuda", "cpu"):
        raise SystemExit(f"benchmarks/gpu.py: --device must be cuda[:i] or cpu; got {requested!r}.")
    return device


def main() -> None:
    global CASE_LIMIT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", help="cuda (default, when available), cuda:1, or cpu (dry run)")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma-separated n")
    ap.add_argument("--dims", default=",".join(map(str, DIMS)), help="comma-separated d")
    ap.add_argument("--kinds", default=",".join(KINDS), help="residual, unrelated")
    ap.add_argument("--quick", action="store_true", help="n = 10,000 and d = 128 only")
    ap.add_argument("--results", help="output folder (default benchmarks/results on a GPU)")
    ap.add_argument(
        "--case-limit",
        type=float,
        default=CASE_LIMIT,
        help="seconds a case may run before it is stopped and recorded (default %(default)s)",
    )
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.dims = "10000", "128"
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.dims = [int(s) for s in args.dims.split(",") if s.strip()]
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    bad = sorted(set(args.kinds) - set(KINDS))
    if bad:
        raise SystemExit(f"benchmarks/gpu.py: unknown kinds {bad}; use {list(KINDS)}.")
    device = pick_device(args.device)
    CASE_LIMIT = args.case_limit
    warnings.simplefilter("ignore")  # non-convergence is recorded in the table instead
    t_start = time.perf_counter()
    warm_up(device)
    rows: list[dict] = []

    def show(new: list[dict]) -> None:
        for r in new:
            rows.append(r)
            print(json.dumps(r), flush=True)

    for n in args.sizes:
        for d in args.dims:
            for kind in args.kinds:
                show(entropic_rows(kind, n, d, device))
                show(assignment_rows(kind, n, d, device))
    info = meta(device, args)
    info["total_seconds"] = time.perf_counter() - t_start
    print(markdown(rows, info), flush=True)
    name = "gpu_quick" if args.quick else "gpu"
    if device.type == "cuda":
        write(rows, info, Path(args.results) if args.results else HERE / "results", name)
    elif args.results:
        write(rows, info, Path(args.results), "gpu_cpu_dryrun")
    print(f"total {info['total_seconds']:.1f} s", flush=True)


if __name__ == "__main__":
    main()
