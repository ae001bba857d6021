"""The exact earth-mover solver for general weights: POT's network simplex, certified."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ot
import torch

from otcollapse.transport.assignment.dense import (
    certify_permutation,
    permutation_plan,
    value_and_gap,
)
from otcollapse.transport.blocks import find_groups, solve_by_blocks
from otcollapse.transport.geometry import PointCloudCost, is_uniform, rows_per_block
from otcollapse.transport.options import ExactOptions
from otcollapse.transport.result import RTOL, TransportResult, certified_gap

__all__ = ["EXACT_COPIES", "solve_exact"]

#: dense float64 (n, m) matrices the network simplex peaks at (measured: about 5 at n = m = 3000,
#: the cost, POT's plan and POT's internal copies)
EXACT_COPIES = 5.0
#: reduced costs the network simplex resolves, relative to the largest cost (POT's pivot
#: tolerance, 2.2e-15, and its accumulated potentials: violations of 6e-14 measured at n = 1000)
SIMPLEX_RESOLUTION = 1e-13


def solve_exact(
    geom: PointCloudCost,
    a: torch.Tensor,
    b: torch.Tensor,
    opts: ExactOptions,
) -> TransportResult:
    """W2^2 by POT's network simplex (``ot.emd``) on the dense float64 cost.

    Separated clusters of equal mass in both measures (collapsed features) are solved one
    cluster at a time in their own frames (:mod:`otcollapse.transport.blocks`); otherwise the
    whole problem in one frame. The cost matrix is divided by its largest entry before POT
    sees it (POT's pivots use an absolute tolerance of about 2e-15, larger than the costs of
    clouds at a scale below 1e-7) and the potentials are scaled back.

    The value is ``sum pi_ij c_ij`` with ``c_ij`` from the differences of the original points:
    the exact cost of a feasible plan, never below W2^2. The certificate is a lower bound from
    POT's dual potentials ``u``, ``v`` on the computed matrix ``C'``:

    $$W_2^2 \\ge \\langle a, u\\rangle + \\langle b, v\\rangle - \\delta - E, \\qquad
      \\delta = \\max_{ij} (u_i + v_j - C'_{ij})^+,$$

    with ``E`` the bound of :meth:`PointCloudCost.gemm_error` on ``|<pi, C'> - <pi, C>|`` and
    the rounding of the sums. ``gap`` is the value less that bound (``gap_kind="certified
    gap"``); ``params["dual_violation"]`` is ``delta``. ``converged`` is POT's own flag
    (optimal solution found) and ``gap <= 1e-9 cost``: it fails, and says so, when float64
    cannot resolve the costs that decide the answer.
    """
    num_iter_max, return_plan = opts.max_iter, opts.return_plan
    groups = find_groups(geom, a, b, SIMPLEX_RESOLUTION)
    if groups is not None:
        return solve_by_blocks(solve_exact, geom, a, b, groups, opts)
    t0 = time.perf_counter()
    C = geom.dense(torch.float64, copies=EXACT_COPIES).cpu().numpy()
    a_np, b_np = a.double().cpu().numpy(), b.double().cpu().numpy()
    scale = float(C.max())
    scale = scale if scale > 0 else 1.0
    C /= scale  # in place: one n x m matrix, the violation below is read in these units
    plan, log = ot.emd(a_np, b_np, C, numItermax=num_iter_max, log=True)
    u, v = log["u"] * scale, log["v"] * scale
    # the value from the differences of the original points on the plan's whole support (its
    # smallest entries too: 1e-14 of mass across a gap of 1e6 costs 1e-2)
    rows, cols = np.nonzero(plan > 0)
    diff = geom.x64[rows] - geom.y64[cols]
    cost = float(plan[rows, cols] @ (diff * diff).sum(1).cpu().numpy())
    step = rows_per_block(geom.m, 8)  # row blocks: no n x m temporary
    violation = scale * max(
        float(np.max(log["u"][i : i + step, None] + log["v"][None, :] - C[i : i + step]))
        for i in range(0, geom.n, step)
    )
    eps = float(np.finfo(np.float64).eps)
    # rounding of u_i + v_j - C_ij and of the dual sums
    rounding = eps * (3 * float(np.abs(u).max() + np.abs(v).max() + scale))
    rounding += 4 * eps * float(a_np @ np.abs(u) + b_np @ np.abs(v))
    lower = float(a_np @ u + b_np @ v) - max(violation, 0.0) - rounding
    lower -= geom.gemm_error(a, b, torch.float64)
    # the plan meets the marginals only to POT's tolerance: moving its L1 error of mass costs at
    # most that much times the largest cost (zero for an exact plan, e.g. the identity)
    marginal = float(np.abs(plan.sum(1) - a_np).sum() + np.abs(plan.sum(0) - b_np).sum())
    # W2^2 lies in [lower, cost]; a lower bound above the value means a broken bracket
    gap = certified_gap(cost, lower) + marginal * geom.diameter_sq_bound()
    converged = bool(int(log.get("result_code", 0)) == 1 and gap <= RTOL * cost)
    params: dict[str, Any] = {
        "solver": "POT network simplex (ot.emd)",
        "max_iter": num_iter_max,
        "dual_violation": max(violation, 0.0),
        "cost_scale": scale,
        "pot_warning": log.get("warning"),
    }
    if not converged and geom.n == geom.m and is_uniform(a) and is_uniform(b):
        # uniform and of equal size: the plan is a permutation, which the assignment's exact
        # scan can certify (or improve) with costs accurate to their own size
        found = certify_permutation(geom, plan.argmax(1), "auto", 20, params)
        if found is not None:
            cost, gap, converged = value_and_gap(found)
            plan = permutation_plan(found.assignment) if return_plan else None
            u, v = found.u, found.v
            params["certificate"] = "the simplex's permutation certified by the exact scan"
    seconds = time.perf_counter() - t0
    return TransportResult(
        cost=cost,
        quantity="W2^2",
        method="exact",
        params=params,
        converged=converged,
        n_iter=None,
        gap=gap,
        gap_kind="certified gap",
        seconds=seconds,
        plan=plan if return_plan else None,
        potentials=(u, v) if opts.return_potentials else None,
    )
