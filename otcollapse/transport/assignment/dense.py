"""The linear assignment: W2 between two uniform measures of equal size, dense or sparse.

The front door of the assignment family: :func:`solve_assignment` chooses the sparse certified
path (:mod:`.sparse`), the split into collapsed clusters (:mod:`otcollapse.transport.blocks`) or
the dense path (scipy on a float64 matrix, warm-started by :mod:`.auction` prices), and certifies
what it returns.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from otcollapse.exceptions import DenseBudgetError
from otcollapse.transport.assignment.auction import auction_prices
from otcollapse.transport.assignment.sparse import (
    SparseAssignment,
    Unprofitable,
    describe,
    solve_sparse_assignment,
)
from otcollapse.transport.assignment.streamed import solve_streamed_assignment
from otcollapse.transport.blocks import find_groups, solve_by_blocks
from otcollapse.transport.geometry import PointCloudCost, format_bytes, is_uniform
from otcollapse.transport.options import AssignmentOptions
from otcollapse.transport.result import RTOL, TransportResult, certified_gap

__all__ = [
    "ASSIGNMENT_COPIES",
    "certify_permutation",
    "permutation_plan",
    "solve_assignment",
    "value_and_gap",
]

#: the assignment holds a float32 cost and scipy's float64 copy
ASSIGNMENT_COPIES = 1.5
#: below this size the dense assignment is as fast as the sparse one (``candidates="auto"``)
SPARSE_MIN_N = 512
#: from this size on the dense assignment starts from auction prices
WARM_START_MIN_N = 512
#: from this size on unrelated clouds go to the streamed auction even when the dense matrix
#: fits: measured on unrelated Gaussian clouds in d = 128 (2 cores), dense 1.29 s vs streamed
#: 1.55 s at n = 6000, but 3.59 s (1.2 GB) vs 2.15 s (0.7 GB) at n = 8000
STREAMED_MIN_N = 8000


def solve_assignment(
    geom: PointCloudCost,
    a: torch.Tensor,
    b: torch.Tensor,
    opts: AssignmentOptions,
) -> TransportResult:
    """W2^2 between two uniform measures of equal size, as a linear assignment.

    For uniform weights ``1/n`` on both sides an optimal plan is a permutation (Birkhoff), so

    $$W_2^2 = \\min_{\\sigma} \\frac1n \\sum_i \\|x_i - y_{\\sigma(i)}\\|^2
      = \\max_{u_i + v_j \\le c_{ij}} \\frac1n \\sum_i (u_i + v_i).$$

    Two paths solve it exactly:

    * **sparse** (``candidates="auto"`` for ``n >= SPARSE_MIN_N``, or an int ``k``): column
      generation on candidate pairs (the identity, plus ``k`` projected nearest neighbours per
      source), exact assignments on the connected components of the candidate graph, dual
      potentials from shortest paths, and a certificate over all ``n^2`` pairs from a
      projected lower bound of the cost (:mod:`otcollapse.transport.assignment.sparse`). Memory
      O(n d) plus one matrix per component (a few points each between successive layers; up to
      ``n x n`` for a shuffled copy, within ``max_dense_bytes``); between
      successive residual layers, where the optimal permutation is at or near the identity, one
      pass of a rank-``r + 2`` float32 product certifies it. The result carries the potentials,
      the duality ``gap`` and ``params["dual_violation"]`` (the largest ``u_i + v_j - c_ij``
      over all pairs): ``W2^2`` lies in ``[(1/n) sum (u_i + v_i) - dual_violation, cost]``.
      When the bound flags too many pairs (unrelated clouds, displacements as large as the
      clouds' spread) or ``max_iter`` scans do not certify, it falls back to the dense path
      and says so in ``params["fallback"]``; ``params`` also gives the rank, the scans
      (``rounds``, also ``n_iter``), the candidates per row, the flagged fraction and the
      seconds per stage.
    * **dense** (``candidates="dense"``, small ``n``, or the fallback): the ``cost_dtype`` cost
      matrix from one GEMM, scipy's ``linear_sum_assignment`` (shortest augmenting paths,
      Crouse 2016); from ``n = WARM_START_MIN_N`` on scipy solves ``c_ij + p_j`` with
      column prices ``p`` from an ε-scaling auction
      (:func:`otcollapse.transport.assignment.auction.auction_prices`), which has the same optimal
      permutations and much shorter augmenting paths (``params["warm_start"]``). The value is
      re-evaluated in float64 from the differences of the original points of the matched
      pairs, so it is the exact cost of a feasible plan and never below W2^2. Certificate: the
      computed matrix errs by at most ``E`` (:meth:`PointCloudCost.gemm_error`) on any
      permutation, so ``cost - W2^2 <= 2 E``; when that is not within ``1e-9 cost`` (or
      potentials are requested) the permutation is certified a posteriori by the sparse path's
      machinery started from it (exact costs, shortest-path potentials, a float64 scan at full
      rank).
    * **streamed auction** (``candidates="auction"``, or ``"auto"`` for unrelated clouds from
      ``n = STREAMED_MIN_N = 8000`` on or whose dense matrices exceed ``max_dense_bytes``): no ``n x n`` matrix; a float32 auction on
      costs recomputed by GEMM in row blocks, candidates from its prices, a float64 auction on
      the candidates down to ``eps <= RTOL W2^2 / 4``, and the full-rank scan over all pairs
      (:mod:`otcollapse.transport.assignment.streamed`).
    * **blocks**: separated clusters of equal size (collapsed features) are split and solved one
      by one in their own frames (:mod:`otcollapse.transport.blocks`), before the dense path.

    Both paths give the same value (to rounding); they may return different optimal
    permutations when several exist (the sparse path keeps the identity among tied optima).

    Options (:class:`~otcollapse.transport.options.AssignmentOptions`)
    ------------------------------------------------------------------
    candidates : {"auto", "dense", "auction"} or int
        ``"auto"``: the sparse path for ``n >= 512`` or when potentials are requested, the dense
        one otherwise. The sparse path starts from the identity pairs, and from the identity
        plus 8 projected nearest neighbours per source when the identity's potentials flag too
        many pairs and the clouds look like a shuffled copy of each other (mutual nearest
        neighbours on a sample); it skips straight to the dense path for unrelated clouds, or
        to the streamed auction from ``n = 8000`` on or when the dense matrices exceed
        ``max_dense_bytes``. An
        int ``k >= 0``: the sparse path from the identity plus ``k`` neighbours, at any ``n``.
        ``"dense"``: the dense path. ``"auction"``: the streamed auction.
    rank : "auto" or int
        Dimension ``r`` of the projection of the bound. ``"auto"``: from ``n = 3000`` on, the
        cheapest of 16, 32, 64 and ``d`` (no projection) by the fraction of pairs each flags on
        a sample; below, 16 first and the next one up whenever a scan flags too many pairs.
    cost_dtype : {"float32", "float64"}, optional
        Dtype of the dense path's matrix; default float64 (float32 costs can rarely be
        certified to 1e-9, and the a posteriori certificate then does the work).
    max_iter : int
        Scans of the sparse path before it falls back to the dense one (default 20).
    return_plan, return_potentials : bool
        The dense plan (the permutation is always in ``assignment``) and ``(u, v)``.

    References
    ----------
    Crouse, IEEE Trans. Aerosp. Electron. Syst. 52 (2016) (scipy's assignment solver);
    Bertsekas, Annals of Operations Research 14 (1988) (the auction's prices); Ahuja,
    Magnanti & Orlin, "Network Flows" (1993) (potentials from shortest paths); Peyré & Cuturi,
    "Computational Optimal Transport" (2019), sec. 3 (duality).

    Examples
    --------
    >>> import numpy as np
    >>> from otcollapse import wasserstein
    >>> g = np.random.default_rng(0)
    >>> x = g.normal(size=(1000, 32))
    >>> res = wasserstein(x, x + 0.3 * np.tanh(x @ g.normal(size=(32, 32)) / 6))
    >>> res.params["path"], res.params["rounds"], res.gap <= 1e-12 * res.cost
    ('sparse', 1, True)
    """
    candidates, rank, max_rounds = opts.candidates, opts.rank, opts.max_iter
    return_plan, return_potentials = opts.return_plan, opts.return_potentials
    if geom.n != geom.m or not (is_uniform(a) and is_uniform(b)):
        raise ValueError(
            "method='assignment' needs two uniform measures of equal size; use method='exact' "
            "for weights or unequal sizes."
        )
    is_int = not isinstance(candidates, str)
    if return_plan and not geom.fits():
        raise DenseBudgetError(
            f"return_plan=True needs the dense {geom.n} x {geom.m} plan "
            f"({format_bytes(geom.dense_bytes())}), over max_dense_bytes; the optimal "
            "permutation is in res.assignment (index form) without it."
        )
    t0 = time.perf_counter()
    n = geom.n
    sparse = is_int or (
        candidates == "auto"
        and (n >= SPARSE_MIN_N or return_potentials or not geom.fits(ASSIGNMENT_COPIES))
    )
    fallback = None
    if sparse:
        try:
            found = solve_sparse_assignment(
                geom, k=int(candidates) if is_int else None, rank=rank, max_rounds=max_rounds
            )
        except Unprofitable as why:
            fallback = f"dense path: {why}"
        else:
            return _sparse_result(found, geom, candidates, return_plan, return_potentials, t0)
    groups = find_groups(geom, a, b)
    if groups is not None:  # collapsed clusters: one cluster at a time, in its own frame
        res = solve_by_blocks(solve_assignment, geom, a, b, groups, opts)
        if fallback is not None:
            res.params["fallback"] = fallback
        return res
    if candidates == "auction" or (
        candidates == "auto" and (n >= STREAMED_MIN_N or not geom.fits(ASSIGNMENT_COPIES))
    ):
        # unrelated clouds, large or beyond the dense budget: the streamed auction, certified
        res = _streamed_result(geom, opts, fallback, t0)
        if res.converged or candidates == "auction" or not geom.fits(ASSIGNMENT_COPIES):
            return res
        fallback = "dense path: the streamed auction did not certify"
    return _solve_dense(geom, a, b, opts, fallback, t0)


def _solve_dense(
    geom: PointCloudCost,
    a: torch.Tensor,
    b: torch.Tensor,
    opts: AssignmentOptions,
    fallback: str | None,
    t0: float,
) -> TransportResult:
    """The dense path: scipy on the float64 (or float32) matrix, warm-started by auction prices,
    certified a priori by the GEMM error bound or else a posteriori by the exact scan."""
    n, candidates, rank, max_rounds = geom.n, opts.candidates, opts.rank, opts.max_iter
    return_plan, return_potentials = opts.return_plan, opts.return_potentials
    is_int = not isinstance(candidates, str)
    # float64 by default: float32 costs can rarely be certified to 1e-9 (gemm_error)
    dtype = (
        torch.float32 if opts.cost_dtype == "float32" and not return_potentials else torch.float64
    )
    try:
        C_t = geom.dense(dtype, copies=ASSIGNMENT_COPIES)
    except DenseBudgetError as err:
        if fallback is None:
            raise
        error = DenseBudgetError(f"the sparse assignment fell back ({fallback}), and {err}")
        error.fallback = fallback
        raise error from err
    # column prices from an auction: the same optimal permutations, much shorter augmenting
    # paths for scipy (otcollapse.transport.assignment.auction). Bids in float32 (half the memory traffic);
    # a float64 cost's float32 copy is the half matrix of ASSIGNMENT_COPIES
    prices, auction_rounds = (
        auction_prices(C_t if C_t.dtype == torch.float32 else C_t.float())
        if n >= WARM_START_MIN_N
        else (None, [])
    )
    # scipy solves in float64 and its own cast of a float32 matrix is slow: torch's is threaded
    C = C_t.to(torch.float64).cpu().numpy()
    del C_t
    if prices is not None:
        prices = prices.cpu().numpy()
        C += prices[None, :]
    rows, cols = linear_sum_assignment(C)
    order = np.empty(n, dtype=np.int64)
    order[rows] = cols
    params: dict[str, Any] = {
        "solver": "scipy.optimize.linear_sum_assignment",
        "path": "dense",
        "candidates": candidates if is_int else str(candidates),
        "cost_dtype": "float64" if dtype == torch.float64 else "float32",
        "fallback": fallback,
        "certificate": (
            "a priori: the permutation is optimal for the computed matrix, whose error on any "
            "permutation is bounded (gemm_error); scipy returns no dual potentials"
        ),
        "warm_start": (
            f"column prices from {sum(auction_rounds)} auction rounds"
            if prices is not None
            else None
        ),
    }
    del C
    cost = float(geom.paired(torch.as_tensor(order, device=geom.device)).mean())
    # optimal for C' = C + error: c(sigma) - W2^2 <= E(sigma) + E(sigma*) <= 2 gemm_error
    gap = min(2 * geom.gemm_error(a, b, dtype), cost)
    converged, potentials = gap <= RTOL * cost, None
    if not converged or return_potentials:
        # certify a posteriori: the permutation's pairs with exact costs, shortest-path
        # potentials, and a float64 scan that computes the near-tight pairs' costs exactly
        found = certify_permutation(geom, order, rank, max(max_rounds, 20), params)
        if found is not None:
            order = found.assignment
            cost, gap, converged = value_and_gap(found)
            potentials = (found.u, found.v) if return_potentials else None
            params["certificate"] = (
                "dual potentials feasible on all pairs (float64 scan at full rank, exact costs "
                "where flagged): W2^2 >= dual - dual_violation"
            )
    return TransportResult(
        cost=cost,
        quantity="W2^2",
        method="assignment",
        params=params,
        converged=bool(converged),
        n_iter=None,
        gap=gap,
        gap_kind="certified gap",
        seconds=time.perf_counter() - t0,
        plan=permutation_plan(order) if return_plan else None,
        assignment=order,
        potentials=potentials,
    )


def _streamed_result(
    geom: PointCloudCost, opts: AssignmentOptions, fallback: str | None, t0: float
) -> TransportResult:
    found = solve_streamed_assignment(geom, max_scans=max(opts.max_iter, 2))
    cost = float(found.pair_cost.mean())
    gap = certified_gap(cost, found.lower) if found.converged else cost
    params: dict[str, Any] = {
        "solver": "streamed auction (float32 GEMM blocks, float64 sparse auction on candidates)",
        "path": "auction",
        "candidates": opts.candidates if isinstance(opts.candidates, int) else str(opts.candidates),
        **found.params,
        "fallback": fallback,
        "certificate": (
            "dual potentials feasible on all pairs (full-rank scan with a rounding margin, exact "
            "costs where flagged): W2^2 >= dual - dual_violation"
        ),
    }
    return TransportResult(
        cost=cost,
        quantity="W2^2",
        method="assignment",
        params=params,
        converged=bool(found.converged and gap <= RTOL * cost),
        n_iter=found.params.get("scans"),
        gap=gap,
        gap_kind="certified gap",
        seconds=time.perf_counter() - t0,
        plan=permutation_plan(found.assignment) if opts.return_plan else None,
        assignment=found.assignment,
        potentials=(found.u, found.v) if opts.return_potentials else None,
    )


def _sparse_result(
    found: SparseAssignment,
    geom: PointCloudCost,
    candidates: str | int,
    return_plan: bool,
    return_potentials: bool,
    t0: float,
) -> TransportResult:
    n = geom.n
    cost, gap, converged = value_and_gap(found)
    params: dict[str, Any] = {
        "solver": "sparse certified assignment (column generation on candidate pairs)",
        "path": "sparse",
        "candidates": candidates,
        **describe(found, n),
        "dual_violation": found.dual_violation,
        "fallback": None,
        "certificate": (
            "dual potentials feasible on all pairs (projected lower bound, exact costs where "
            "flagged): W2^2 >= dual - dual_violation"
        ),
    }
    return TransportResult(
        cost=cost,
        quantity="W2^2",
        method="assignment",
        params=params,
        converged=converged,
        n_iter=found.rounds,
        gap=gap,
        gap_kind="certified gap",
        seconds=time.perf_counter() - t0,
        plan=permutation_plan(found.assignment) if return_plan else None,
        assignment=found.assignment,
        potentials=(found.u, found.v) if return_potentials else None,
    )


def certify_permutation(
    geom: PointCloudCost,
    start: np.ndarray,
    rank: str | int,
    max_rounds: int,
    params: dict[str, Any],
) -> SparseAssignment | None:
    """A permutation found on rounded costs, certified (or improved) a posteriori by the sparse
    path's machinery started from it: its pairs with exact costs, shortest-path potentials and
    a float64 scan at full rank. Records the scan in ``params``; None (and why) if it failed."""
    try:
        found = solve_sparse_assignment(geom, rank=rank, max_rounds=max_rounds, start=start)
    except Unprofitable as why:
        params["certificate"] = f"the exact scan of the permutation failed: {why}"
        return None
    params.update(dual_violation=found.dual_violation, rounds=found.rounds)
    return found


def value_and_gap(found: SparseAssignment) -> tuple[float, float, bool]:
    """The value of a sparse solve, its certified gap, and whether it is within RTOL."""
    cost = float(found.pair_cost.mean())
    gap = certified_gap(cost, found.lower)
    return cost, gap, bool(gap <= RTOL * cost)


def permutation_plan(order: np.ndarray) -> np.ndarray:
    n = len(order)
    plan = np.zeros((n, n))
    plan[np.arange(n), order] = 1.0 / n
    return plan
