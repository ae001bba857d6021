"""Exact earth-mover solvers: POT's network simplex, and the linear assignment for equal sizes."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ot
import torch
from scipy.optimize import linear_sum_assignment

from otcollapse.transport.geometry import PointCloudCost
from otcollapse.transport.result import TransportResult

__all__ = ["is_uniform", "solve_assignment", "solve_exact"]

#: dense float64 (n, m) matrices the network simplex peaks at (measured: about 5 at n = m = 3000,
#: the cost, POT's plan and POT's internal copies)
EXACT_COPIES = 5.0
#: the assignment holds a float32 cost and scipy's float64 copy
ASSIGNMENT_COPIES = 1.5
#: POT's network simplex accepts pivots within this absolute tolerance on reduced costs
#: (EPSILON = 2.2e-15 in its C++ code), with a margin for accumulation
POT_PIVOT_TOL = 64 * 2.2204460492503131e-15
#: network-simplex iteration cap: POT's default (1e5) stops early, non-optimally, from n ~ 2000
EMD_MAX_ITER = 2_000_000_000


def solve_exact(
    geom: PointCloudCost,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    num_iter_max: int = EMD_MAX_ITER,
    return_plan: bool = False,
    return_potentials: bool = False,
    **unused: Any,
) -> TransportResult:
    """W2^2 by POT's network simplex (``ot.emd``) on the dense float64 cost.

    The certificate is the duality gap ``|<pi, C> - (<a, u> + <b, v>)|`` of the returned dual
    potentials; their largest violation of ``u_i + v_j <= C_ij`` is ``params["dual_violation"]``.
    ``converged`` is POT's own flag (optimal solution found) and a dual violation within
    ``1e-9 max C``, plus the rounding of the GEMM-form costs (``64 eps (max||x||^2 + max||y||^2)``)
    and POT's absolute pivot tolerance (``64 * 2.2e-15``). A violation ``delta`` of the duals
    bounds the error of the value: ``W2^2`` lies in ``[<a, u> + <b, v> - delta, cost]``.
    """
    _no_options(unused, "exact")
    t0 = time.perf_counter()
    C = geom.dense(torch.float64, copies=EXACT_COPIES).cpu().numpy()
    a_np, b_np = a.double().cpu().numpy(), b.double().cpu().numpy()
    plan, log = ot.emd(a_np, b_np, C, numItermax=num_iter_max, log=True)
    u, v = log["u"], log["v"]
    # the value from the differences on the plan's support: the GEMM form of C loses the
    # small costs to cancellation (W2(x, x) would come out ~1e-8 instead of 0)
    # entries below 1e-12 of their row's mass are the simplex's rounding residue (~1e-17), not
    # transport: counted, they turn a zero W2 into ~1e-8
    rows, cols = np.nonzero(plan > 1e-12 * a_np[:, None])
    diff = geom.x.double()[rows] - geom.y.double()[cols]
    cost = float(plan[rows, cols] @ (diff * diff).sum(1).cpu().numpy())
    gap = abs(float(plan[rows, cols] @ C[rows, cols]) - float(a_np @ u + b_np @ v))
    step = max(1, (64 * 1024**2) // (8 * max(1, geom.m)))  # row blocks: no n x m temporary
    violation = max(
        float(np.max(u[i : i + step, None] + v[None, :] - C[i : i + step]))
        for i in range(0, geom.n, step)
    )
    # allowed violation: relative 1e-9, the rounding of the GEMM-form costs (a few ulps of
    # ||x||^2 + ||y||^2), and POT's absolute pivot tolerance (2.2e-15 on reduced costs), without
    # which tiny costs (collapsed features) could never be certified
    rounding = 64 * np.finfo(np.float64).eps * float(geom.xx.max() + geom.yy.max())
    tolerance = 1e-9 * float(C.max()) + rounding + POT_PIVOT_TOL
    converged = int(log.get("result_code", 0)) == 1 and violation <= tolerance
    seconds = time.perf_counter() - t0
    return TransportResult(
        cost=cost,
        quantity="W2^2",
        method="exact",
        params={
            "solver": "POT network simplex (ot.emd)",
            "num_iter_max": num_iter_max,
            "dual_violation": violation,
            "pot_warning": log.get("warning"),
        },
        converged=converged,
        n_iter=None,
        gap=gap,
        gap_kind="duality gap",
        seconds=seconds,
        plan=plan if return_plan else None,
        potentials=(u, v) if return_potentials else None,
    )


def solve_assignment(
    geom: PointCloudCost,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    cost_dtype: str = "float32",
    return_plan: bool = False,
    return_potentials: bool = False,
    **unused: Any,
) -> TransportResult:
    """W2^2 between two uniform measures of equal size, as a linear assignment.

    For uniform weights ``1/n`` on both sides an optimal plan is a permutation (Birkhoff), so
    ``W2^2 = min_sigma (1/n) sum_i ||x_i - y_sigma(i)||^2``, solved exactly by scipy's
    ``linear_sum_assignment`` (shortest augmenting paths, Crouse 2016) — far faster than the
    network simplex when the optimal coupling is close to the identity, as between successive
    residual blocks. The matrix is built in ``cost_dtype`` by one GEMM; the value is re-evaluated
    in float64 from the differences of the matched pairs, so it is the exact cost of a feasible
    plan and never below W2^2. With ``cost_dtype="float32"`` the permutation is optimal for the
    rounded costs: the value exceeds W2^2 only when two assignments differ in total cost by less
    than the float32 rounding of the matrix; pass ``cost_dtype="float64"`` to rule that out.
    scipy returns no dual potentials, so there is no duality certificate (``gap`` is None).
    """
    _no_options(unused, "assignment")
    if return_potentials:
        raise ValueError("method='assignment' gives no dual potentials; use method='exact'.")
    if geom.n != geom.m or not (is_uniform(a) and is_uniform(b)):
        raise ValueError(
            "method='assignment' needs two uniform measures of equal size; use method='exact' "
            "for weights or unequal sizes."
        )
    if cost_dtype not in ("float32", "float64"):
        raise ValueError(f"cost_dtype must be 'float32' or 'float64'; got {cost_dtype!r}.")
    t0 = time.perf_counter()
    dtype = torch.float32 if cost_dtype == "float32" else torch.float64
    # scipy solves in float64 and its own cast of a float32 matrix is slow: torch's is threaded
    C = geom.dense(dtype, copies=ASSIGNMENT_COPIES).to(torch.float64).cpu().numpy()
    rows, cols = linear_sum_assignment(C)
    del C
    order = np.empty(geom.n, dtype=np.int64)
    order[rows] = cols
    pair_cost = geom.paired(torch.as_tensor(order, device=geom.device)).cpu().numpy()
    cost = float(pair_cost.mean())
    params: dict[str, Any] = {
        "solver": "scipy.optimize.linear_sum_assignment",
        "cost_dtype": cost_dtype,
        "certificate": "none: scipy's assignment solver returns no dual potentials",
    }
    plan = None
    if return_plan:
        plan = np.zeros((geom.n, geom.n))
        plan[np.arange(geom.n), order] = 1.0 / geom.n
    return TransportResult(
        cost=cost,
        quantity="W2^2",
        method="assignment",
        params=params,
        converged=True,
        n_iter=None,
        gap=None,
        gap_kind=None,
        seconds=time.perf_counter() - t0,
        plan=plan,
        assignment=order,
    )


def is_uniform(w: torch.Tensor) -> bool:
    """Whether the masses are all ``1/len(w)`` (to 1e-12 relative)."""
    return bool(
        torch.allclose(w.double(), torch.full_like(w.double(), 1.0 / len(w)), rtol=1e-12, atol=0)
    )


def _no_options(unused: dict[str, Any], method: str) -> None:
    if unused:
        raise ValueError(f"method={method!r} takes no option(s) {sorted(unused)}.")
