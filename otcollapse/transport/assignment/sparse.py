"""Sparse, certified linear assignment for W2 between nearby point clouds.

Between two uniform measures of equal size ``W2^2`` is a linear assignment,

$$W_2^2 = \\min_{\\sigma} \\frac1n \\sum_i c_{i\\sigma(i)}, \\qquad c_{ij} = \\|x_i - y_j\\|^2,$$

whose linear-programming dual is ``max (1/n) sum_i (u_i + v_i)`` subject to
``u_i + v_j <= c_ij`` for all pairs. A permutation ``sigma`` is optimal as soon as potentials
exist with ``u_i + v_{sigma(i)} = c_{i sigma(i)}`` and ``u_i + v_j <= c_ij`` everywhere
(complementary slackness). Between successive residual layers the optimal permutation is at or
near the identity and only a few pairs can ever matter, so the solver works on a sparse set of
candidate pairs and proves, over all ``n^2`` pairs, that nothing outside it could do better:

0. **Centring.** Each cloud is centred on its own mean when the means differ noticeably:
   ``c'_ij = c_ij + alpha_i + beta_j`` changes every permutation's cost by the same amount, so
   the optimum is unchanged, while a common translation no longer spoils the identity's
   potentials (they are converted back to ``c`` at the end).
1. **Candidates.** The identity pairs ``(i, i)`` (plus, on request or when they do not suffice,
   each source's ``k`` nearest targets in a projection), with exact float64 costs.
2. **Sparse optimum.** The candidate graph splits into connected components, each solved
   exactly by scipy's ``linear_sum_assignment`` on its own small matrix (a point alone with its
   own image keeps it).
3. **Potentials.** With the matched cost ``c_{i sigma(i)}`` and
   ``u_i = c_{i sigma(i)} - v_{sigma(i)}``, the constraints on the candidate pairs read
   ``v_j <= v_{sigma(i)} + c_ij - c_{i sigma(i)}``: shortest-path conditions on the residual
   graph with arcs ``sigma(i) -> j``. Its cycles are the alternating cycles of ``sigma``, none
   negative because ``sigma`` is optimal on the candidates, so the distances ``v_j <= 0`` from
   a virtual source joined to every node by a zero arc exist (Bellman–Ford) and satisfy every
   candidate constraint, with equality on the matched pairs. The same on the transposed graph
   gives the other extreme (largest ``u <= 0``); the solver uses their average, feasible and
   tight like both, symmetric in the two clouds, and more central (fewer pairs flagged below).
   From the identity alone it is ``u_i = v_i = c_ii / 2``.
4. **Certificate over all pairs.** For an ``r``-dimensional projection ``P`` with
   ``||P||_2 <= 1`` (top principal directions of the pooled clouds),
   ``||P^T (x_i - y_j)||^2 <= c_ij``: a lower bound from one float32 product of rank ``r + 2``,
   with the potentials folded into its extra columns. Pairs whose bound, less a rigorous
   float32 rounding margin, falls below ``u_i + v_j`` are *flagged* and get their exact cost;
   flagged pairs with ``c_ij < u_i + v_j`` violate the dual constraints and join the candidates,
   and the solve repeats (column generation). When nothing is violated the potentials are
   feasible on all pairs and the sparse optimum is the global one: the duality gap
   ``(1/n) sum_i c_{i sigma(i)} - (1/n) sum_i (u_i + v_i)`` vanishes.

No dense ``n x n`` cost matrix is built: memory is O((n + arcs) d) plus one matrix per
connected component of the candidate graph (a few points each between successive layers; the
whole ``n x n`` only for a shuffled copy, within ``max_dense_bytes``), time one or a few products
of rank ``r + 2`` plus the small solves. The rank is chosen on a sample of pairs from
``ESTIMATE_MIN_N`` on (the cheapest of 16, 32, 64 and ``d`` by the fraction each would flag);
below, the scan starts at 16 and moves up whenever it flags too many pairs. When many pairs get
flagged whatever the rank (unrelated clouds, displacements as large as the spread of the clouds),
the bound cannot pay and :class:`Unprofitable` sends the caller to the dense solver; unrelated
clouds are recognised early, on a sample, by their nearest-neighbour relation (few mutual
nearest neighbours).

References
----------
Crouse, "On implementing 2D rectangular assignment algorithms", IEEE Trans. Aerosp. Electron.
Syst. 52 (2016) (scipy's ``linear_sum_assignment``). Ahuja, Magnanti & Orlin, "Network Flows"
(1993), ch. 5 and 9 (potentials from shortest paths, reduced costs). Peyré & Cuturi,
"Computational Optimal Transport" (2019), sec. 3 (duality, complementary slackness). Halko,
Martinsson & Tropp, "Finding structure with randomness", SIAM Review 53 (2011) (the randomised
range finder).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

from otcollapse.transport.assignment.bound import (
    ProjectedBound,
    nearest,
    pair_costs,
    projection_basis,
    scan,
    scan_dtype,
)
from otcollapse.transport.geometry import PointCloudCost

__all__ = [
    "SparseAssignment",
    "bellman_ford_potentials",
    "solve_sparse_assignment",
]

#: projection ranks tried by ``rank="auto"`` (and the full dimension, which needs no projection)
RANKS = (16, 32, 64)
#: a scan that flags more than this fraction of all pairs is abandoned: the bound cannot pay
MAX_FLAGGED_FRACTION = 0.02
#: per-cloud centring when the squared distance of the means exceeds this fraction of the mean
#: paired cost (the identity's potentials then miss a common translation)
CENTRING_THRESHOLD = 1e-3
#: from this size on, a sample of pairs chooses the rank (below it, the scan is cheap)
ESTIMATE_MIN_N = 3000
#: rows sampled to estimate, before any scan, the fraction of pairs each rank would flag
SAMPLE_ROWS = 32
#: nearest targets per source when the identity pairs do not suffice
KNN_FALLBACK = 8
#: ... tried only when at least this fraction of sampled sources are mutual nearest neighbours
MIN_MUTUAL_FRACTION = 0.75
#: relative cost of one flagged pair (its exact cost, per dimension) against one multiply-add of
#: the scan, and the per-entry cost of the scan beyond its product (masking and reductions)
PAIR_COST_PER_DIM, SCAN_ENTRY_COST = 100.0, 6.0
#: columns sampled for the estimate
SAMPLE_COLS = 2048


class Unprofitable(Exception):
    """The bound flags too many pairs, or the rounds run out: use the dense solver."""


@dataclasses.dataclass(frozen=True)
class SparseAssignment:
    """What :func:`solve_sparse_assignment` found: an optimal permutation and its certificate.

    Attributes
    ----------
    assignment : ndarray of int, shape (n,)
        ``x_i`` goes to ``y[assignment[i]]``.
    pair_cost : ndarray, shape (n,)
        ``c_{i, assignment[i]}`` in float64, from the differences.
    u, v : ndarray, shape (n,)
        Dual potentials of the original costs: ``u_i + v_j <= c_ij + dual_violation`` for every
        pair, with equality on the matched pairs (both to the rounding of float64 sums).
    dual_violation : float
        ``max_ij (u_i + v_j - c_ij)``, over the candidate and flagged pairs (every other pair
        is certified feasible by the bound), at least 0.
    lower : float
        A certified lower bound on ``W2^2``: the dual value less ``dual_violation`` and the
        rounding of the sums.
    tolerance : float
        Violations below it do not trigger another round (rounding of the float64 sums).
    rounds : int
        Certification scans (each a full pass over the pairs).
    arcs : int
        Candidate pairs in the final sparse problem.
    flagged : int
        Pairs flagged by the last scan (excluding the matched ones).
    rank : int
        Dimension of the projection (``d``: no projection, the float32 cost itself).
    k : int
        Nearest neighbours per source in the initial candidates (0: the identity alone).
    margin : float
        The float32 rounding margin of the last scan, in units of the cost.
    seconds : dict
        Time per stage.
    notes : list of str
    """

    assignment: np.ndarray
    pair_cost: np.ndarray
    u: np.ndarray
    v: np.ndarray
    dual_violation: float
    lower: float
    tolerance: float
    rounds: int
    arcs: int
    flagged: int
    rank: int
    k: int
    margin: float
    seconds: dict[str, float]
    notes: list[str]


def _match(n: int, keys: np.ndarray, cost: np.ndarray, max_bytes: int) -> np.ndarray:
    """Optimal permutation on the candidate pairs (``keys = i * n + j``, sorted).

    The candidate graph splits into connected components (every identity pair is a candidate,
    so each holds as many sources as targets); a source alone with its own target keeps it, and
    every other component is solved exactly by scipy's dense ``linear_sum_assignment`` on its
    own small matrix, non-candidate pairs forbidden (``inf``). Between successive layers the
    components are a handful of points each. (scipy's sparse LAPJVsp is not used: its
    augmenting row reduction can bounce between near-tied rows for a time proportional to the
    costs over their differences, forever in practice on float costs with near-ties.) Raises
    :class:`Unprofitable` when a component's matrix would exceed ``max_bytes``.
    """
    rows, cols = np.divmod(keys, n)
    sigma = np.arange(n)
    off = rows != cols
    if not off.any():
        return sigma
    # sources are nodes 0..n-1, targets n..2n-1; the identity pairs tie source i to target i,
    # so every component holds as many of each
    graph = sp.csr_matrix(
        (np.ones(len(keys), dtype=np.int8), (rows, cols + n)), shape=(2 * n, 2 * n)
    )
    _, label = connected_components(graph, directed=False)
    row_label, col_label = label[:n], label[n:]
    comps, sizes = np.unique(row_label, return_counts=True)
    big = comps[sizes > 1]
    if len(big) == 0:
        return sigma
    if int(sizes.max()) ** 2 * 8 > max_bytes:
        raise Unprofitable(
            f"a connected component of {int(sizes.max())} candidate sources is too large to solve"
        )
    arc_label = row_label[rows]
    order = np.argsort(arc_label, kind="stable")
    starts = np.searchsorted(arc_label[order], big)
    stops = np.searchsorted(arc_label[order], big, side="right")
    row_order = np.argsort(row_label, kind="stable")
    col_order = np.argsort(col_label, kind="stable")
    row_starts = np.searchsorted(row_label[row_order], big)
    col_starts = np.searchsorted(col_label[col_order], big)
    for c, lo, hi, r0, c0 in zip(big, starts, stops, row_starts, col_starts, strict=True):
        m = int(sizes[np.searchsorted(comps, c)])
        src = row_order[r0 : r0 + m]  # sorted sources of the component
        dst = col_order[c0 : c0 + m]
        arcs = order[lo:hi]
        sub = np.full((m, m), np.inf)
        sub[np.searchsorted(src, rows[arcs]), np.searchsorted(dst, cols[arcs])] = cost[arcs]
        r, c_ = linear_sum_assignment(sub)
        sigma[src[r]] = dst[c_]
    return sigma


def bellman_ford_potentials(
    n: int,
    keys: np.ndarray,
    cost: np.ndarray,
    sigma: np.ndarray,
    tau: float,
    max_iter: int | None = None,
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Dual potentials of a permutation that is optimal on the candidate pairs.

    $$v_j = \\min\\Big(0, \\min_{\\text{paths}} \\sum (c_{ij} - c_{i\\sigma(i)})\\Big),
      \\qquad u_i = c_{i\\sigma(i)} - v_{\\sigma(i)},$$

    shortest paths from a virtual source (zero arcs to every node) over the arcs
    ``sigma(i) -> j`` of weight ``c_ij - c_{i sigma(i)}``, one per candidate ``(i, j)``. At
    convergence ``v_j <= v_{sigma(i)} + c_ij - c_{i sigma(i)}``, i.e. ``u_i + v_j <= c_ij``,
    with equality on the matched pairs. Label-correcting Bellman–Ford, vectorised: each sweep
    relaxes the arcs out of the nodes whose label dropped by more than ``tau`` (so rounding-level
    negative cycles, if the matching is optimal only to rounding, cannot loop; the constraints
    then hold within ``tau``). Returns ``(u, v, sweeps)``, or None after ``max_iter`` sweeps
    (a genuinely negative cycle: ``sigma`` is not optimal on the candidates).
    """
    rows, cols = np.divmod(keys, n)
    indptr = np.searchsorted(rows, np.arange(n + 1))
    matched = cost[np.searchsorted(keys, np.arange(n) * n + sigma)]
    weight = cost - matched[rows]
    tails = sigma[rows]
    dist = np.zeros(n)
    active = np.arange(n)  # rows i whose tail sigma(i) has a new label
    max_iter = n + 2 if max_iter is None else max_iter
    inverse = np.empty(n, dtype=np.int64)
    inverse[sigma] = np.arange(n)
    sweeps = 0
    while active.size:
        sweeps += 1
        if sweeps > max_iter:
            return None
        starts, counts = indptr[active], indptr[active + 1] - indptr[active]
        total = int(counts.sum())
        if total == 0:
            break
        offsets = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(total)
        cand = dist[tails[offsets]] + weight[offsets]
        heads = cols[offsets]
        better = cand < dist[heads] - tau
        if not better.any():
            break
        heads, cand = heads[better], cand[better]
        np.minimum.at(dist, heads, cand)
        active = inverse[np.unique(heads)]
    v = dist
    u = matched - dist[sigma]
    return u, v, sweeps


class _Arcs:
    """The candidate pairs as sorted keys ``i * n + j`` with their exact costs."""

    def __init__(self, n: int, keys: np.ndarray, cost: np.ndarray, *, distinct: bool = False):
        """``distinct``: the keys are already sorted and unique (the identity pairs)."""
        if not distinct:
            order = np.argsort(keys, kind="stable")
            keys, cost = keys[order], cost[order]
            first = np.ones(len(keys), dtype=bool)
            first[1:] = keys[1:] != keys[:-1]
            keys, cost = keys[first], cost[first]
        self.n, self.keys, self.cost = n, keys, cost

    def add(self, keys: np.ndarray, cost: np.ndarray) -> None:
        fresh = ~np.isin(keys, self.keys, assume_unique=False)
        merged = _Arcs(
            self.n,
            np.concatenate([self.keys, keys[fresh]]),
            np.concatenate([self.cost, cost[fresh]]),
        )
        self.keys, self.cost = merged.keys, merged.cost


# ============================================================================ driver
class _Sample:
    """A grid of sampled pairs (evenly spaced rows and columns) to estimate, before a scan, the
    fraction of pairs each rank would flag."""

    def __init__(self, x64: torch.Tensor, y64: torch.Tensor, basis: torch.Tensor | None):
        n, m = x64.shape[0], y64.shape[0]
        dev = x64.device
        self.rows = (
            torch.linspace(0, n - 1, min(n, SAMPLE_ROWS), device=dev).round().long().unique()
        )
        self.cols = (
            torch.linspace(0, m - 1, min(m, SAMPLE_COLS), device=dev).round().long().unique()
        )
        self.xs, ys = x64[self.rows], y64[self.cols]
        # GEMM form: an estimate needs no protection from cancellation
        self.xx = (self.xs * self.xs).sum(1)
        self.cost = self.xx[:, None] + (ys * ys).sum(1)[None, :] - 2 * self.xs @ ys.T
        self.px = self.xs @ basis if basis is not None else None
        self.py = ys @ basis if basis is not None else None
        self.d = x64.shape[1]

    def mutual_fraction(self, x64: torch.Tensor, y64: torch.Tensor) -> float:
        """Fraction of the sampled sources that are (up to ties) the nearest source of their own
        nearest target: about 1 when the clouds are a shuffled copy of each other moved a little,
        well below 1 for unrelated clouds, whose nearest-neighbour relation has hubs."""
        full = self.xx[:, None] + (y64 * y64).sum(1)[None, :] - 2 * self.xs @ y64.T
        best, j = full.min(1)
        yj = y64[j]
        back = (x64 * x64).sum(1)[None, :] + (yj * yj).sum(1)[:, None] - 2 * yj @ x64.T
        slack = 1e-12 * float(full.abs().max()) + 1e-300
        return float((best <= back.amin(1) + slack).double().mean())

    def fractions(
        self, ranks: list[int], u_rows: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | None
    ) -> dict[int, float]:
        """Fraction of the sampled pairs with ``lb_ij < u_i + v_j`` per rank (``u_rows``: the
        sampled rows' potentials), the matched pairs ``(i, sigma(i))`` left out."""
        thr = u_rows[:, None] + v[self.cols][None, :]
        keep = torch.ones_like(thr, dtype=torch.bool)
        if sigma is not None:
            keep &= self.cols[None, :] != sigma[self.rows][:, None]
        out = {}
        for r in ranks:
            if r >= self.d:
                lb = self.cost
            else:
                a, b = self.px[:, :r], self.py[:, :r]
                lb = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
            out[r] = float(((lb < thr) & keep).double().mean())
        return out


def solve_sparse_assignment(
    geom: PointCloudCost,
    *,
    k: int | None = None,
    rank: int | str = "auto",
    max_rounds: int = 20,
    max_flagged_fraction: float = MAX_FLAGGED_FRACTION,
    start: np.ndarray | None = None,
) -> SparseAssignment:
    """The optimal assignment with its certificate, by column generation on candidate pairs.

    ``k=None`` starts from the identity pairs, and from the identity plus ``KNN_FALLBACK``
    projected nearest neighbours per source when the identity's potentials flag too many pairs
    (estimated on a sample, or found by the first scan); an int ``k`` starts from the identity
    plus ``k`` neighbours. ``start``, a permutation (the dense path's, optimal for rounded
    costs), is certified or improved instead, by a float64 scan at full rank. Raises
    :class:`Unprofitable` when the bound flags more than
    ``max_flagged_fraction`` of the pairs (estimated or scanned), or ``max_rounds`` scans do
    not certify: the caller then solves densely.
    """
    run = _SparseRun(geom, rank, max_flagged_fraction)
    if start is not None:
        return run.certify(start, max_rounds)
    if k is not None:
        return run.solve(int(k), max_rounds, run.ladder[0])
    r, frac = run.ladder[0], 0.0
    if run.estimate:
        # the identity's potentials on a sample of pairs: which rank, and is it worth a scan
        u, v = run.identity_potentials()
        r, frac = run.choose(u[run.sample.rows], v, run.ident)
        run.lap("estimate")
    if frac <= max_flagged_fraction:
        try:
            return run.solve(0, max_rounds, r)
        except Unprofitable as why:
            run.notes.append(f"identity start: {why}")
            run.reset()
    else:
        run.notes.append(f"identity potentials would flag ~{frac:.1%} of the pairs")
    run.unrelated_check()
    run.notes.append(f"started from {KNN_FALLBACK} projected nearest neighbours")
    return run.solve(KNN_FALLBACK, max_rounds, None if run.estimate else run.ladder[0])


class _SparseRun:
    """State of one sparse solve: the clouds, the projections, the sample, the candidates."""

    def __init__(self, geom: PointCloudCost, rank: int | str, max_flagged_fraction: float):
        self.t0 = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.notes: list[str] = []
        self.n, self.d = geom.n, geom.x.shape[1]
        self.dev = geom.device
        # exact costs from the original points (differences rounded relative to themselves);
        # the shifted copies only feed the projections and bounds, whose margins cover them
        self.cost_x, self.cost_y = geom.x64, geom.y64
        x64, y64 = geom.x.double(), geom.y.double()
        self.ident = torch.arange(self.n, device=self.dev)
        diff = self.cost_x - self.cost_y
        # each cloud centred on its own mean: every permutation's cost drops by the same
        # n |m_x - m_y|^2, so the optimal one is unchanged, but the costs become
        # c'_ij = c_ij + alpha_i + beta_j and a common translation no longer hides the identity's
        # potentials (converted back at the end). Skipped when the means nearly agree.
        # (no n x d temporaries beyond diff: fresh megabytes cost page faults at small n)
        delta = diff.mean(0)  # m_x - m_y
        shift = float(delta @ delta)
        flat = diff.view(-1)
        centre = shift > CENTRING_THRESHOLD * float(flat @ flat) / self.n
        # a bound on the norms of the clouds (centred or not); the 1.01 covers its rounding
        self.radius = 1.01 * max(
            float(torch.linalg.vector_norm(c, dim=1).max()) for c in (x64, y64)
        )
        self.alpha = self.beta = self.delta = None
        self.shift_sq = 0.0  # mean c' = mean c - |delta|^2 on any permutation
        self.x64, self.y64 = x64, y64
        if centre:
            mx, my = x64.mean(0), y64.mean(0)
            self.radius += math.sqrt(max(float(mx @ mx), float(my @ my)))
            self.alpha = -2 * (x64 @ delta) + shift
            self.beta = 2 * (y64 @ delta)
            self.x64, self.y64 = x64 - mx, y64 - my
            self.delta, self.shift_sq = delta, shift
            self.diag = (diff - delta).square_().sum(1)
        self.paired = diff.square_().sum(1)  # c_ii, the value when the identity is optimal
        if not centre:
            self.diag = self.paired
        self.max_flagged_fraction = max_flagged_fraction
        # flagged pairs cost ~48 bytes each (indices, exact and reduced costs): within the budget
        flagged_cap = min(int(max_flagged_fraction * self.n * self.n), geom.max_dense_bytes // 48)
        self.budget = max(16 * self.n, flagged_cap)
        # the ranks, cheapest first: projections below d, then d itself (the float32 cost, no
        # projection). From ESTIMATE_MIN_N on a sample of pairs picks one; below, the scan
        # starts at the smallest and moves up the ladder when it flags too many pairs
        if rank == "auto":
            self.ladder = [r for r in RANKS if r < self.d / 1.5] + [self.d]
        else:
            self.ladder = [min(int(rank), self.d)]
        self.estimate = rank == "auto" and self.n >= ESTIMATE_MIN_N and len(self.ladder) > 1
        self.basis: torch.Tensor | None = None
        if self.estimate:  # the sample weighs every rank: the largest projection up front
            self._basis_for(max((r for r in self.ladder if r < self.d), default=0))
        self._sample: _Sample | None = None
        self.mutual: float | None = None  # the unrelated-clouds test, once run
        self.scan_dtype = scan_dtype(self.dev)
        self.bounds: dict[int, ProjectedBound] = {}
        self.tau = 1e-13 * float(self.diag.max()) + 1e-300
        self.max_bytes = geom.max_dense_bytes
        self.lap("projection")
        self.reset()

    def _basis_for(self, r: int) -> None:
        if r and r < self.d and (self.basis is None or self.basis.shape[1] < r):
            # the sample weighs several ranks on prefixes of one ordered basis; otherwise one
            # rank at a time needs no ordering
            self.basis = projection_basis(self.x64, self.y64, r, ordered=self.estimate)

    @property
    def sample(self) -> _Sample:
        if self._sample is None:
            self._sample = _Sample(self.x64, self.y64, self.basis if self.estimate else None)
        return self._sample

    def reset(self) -> None:
        """Back to the identity pairs alone."""
        keys = np.arange(self.n, dtype=np.int64) * (self.n + 1)  # i * n + i
        self.arcs = _Arcs(self.n, keys, self.diag.cpu().numpy(), distinct=True)

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self.t0
        self.t0 = now

    def choose(
        self, u_rows: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | None
    ) -> tuple[int, float]:
        """The rank of least estimated cost (product, per-entry work, flagged pairs' exact
        costs) and its estimated flagged fraction."""
        fr = self.sample.fractions(self.ladder, u_rows, v, sigma)
        cost = {
            r: r + 2 + SCAN_ENTRY_COST + fr[r] * PAIR_COST_PER_DIM * self.d for r in self.ladder
        }
        best = min(cost, key=cost.__getitem__)
        return best, fr[best]

    def bound(self, r: int) -> ProjectedBound:
        if r not in self.bounds:
            self._basis_for(r)
            basis = self.basis[:, :r] if r < self.d else None
            self.bounds[r] = ProjectedBound(
                self.x64, self.y64, basis, self.scan_dtype, radius=self.radius
            )
        return self.bounds[r]

    def resolve(self) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """Optimal permutation on the candidates and central potentials: the average of the
        two extreme shortest-path solutions (largest ``v <= 0``, and largest ``u <= 0`` from the
        transposed graph), feasible and tight on the matched pairs like both, and symmetric in
        the two clouds."""
        n = self.n
        keys, cost = self.arcs.keys, self.arcs.cost
        sigma = _match(n, keys, cost, self.max_bytes)
        self.lap("matching")
        self.tau = 1e-13 * float(cost.max()) + 1e-300
        pot = self._potentials(cost, sigma, self.tau)
        self.lap("potentials")
        if pot is None:
            raise Unprofitable("the potentials' shortest paths did not converge")
        u, v = pot
        return sigma, torch.as_tensor(u, device=self.dev), torch.as_tensor(v, device=self.dev)

    def _potentials(
        self, cost: np.ndarray, sigma: np.ndarray, tau: float
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The average of the forward and the transposed Bellman–Ford potentials."""
        n, keys = self.n, self.arcs.keys
        fwd = bellman_ford_potentials(n, keys, cost, sigma, tau)
        if fwd is None:
            return None
        rows, cols = np.divmod(keys, n)
        order = np.argsort(cols * n + rows)
        inverse = np.empty(n, dtype=np.int64)
        inverse[sigma] = np.arange(n)
        bwd = bellman_ford_potentials(n, (cols * n + rows)[order], cost[order], inverse, tau)
        if bwd is None:
            return None
        return 0.5 * (fwd[0] + bwd[1]), 0.5 * (fwd[1] + bwd[0])

    def unrelated_check(self) -> float:
        """Raise :class:`Unprofitable` when too few sampled sources are mutual nearest
        neighbours of their nearest target: the clouds are then not a slightly moved copy of
        each other (in order or shuffled), and no candidates will certify cheaply."""
        if self.mutual is None:
            self.mutual = self.sample.mutual_fraction(self.x64, self.y64)
            self.lap("estimate")
        mutual = self.mutual
        if mutual < MIN_MUTUAL_FRACTION:
            raise Unprofitable(
                f"only {mutual:.0%} of sampled sources are their nearest target's nearest "
                "source: the clouds are not a slightly moved copy of each other"
            )
        return mutual

    def identity_potentials(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Central potentials of the identity on the identity pairs: ``u_i = v_i = c_ii / 2``."""
        half = 0.5 * self.diag
        return half, half

    def solve(self, k: int, max_rounds: int, r: int | None = None) -> SparseAssignment:
        n, dev = self.n, self.dev
        sigma = np.arange(n)
        u, v = self.identity_potentials()
        if k > 0:
            r_knn = r or self.ladder[min(1, len(self.ladder) - 1)]
            nbr = nearest(self.bound(r_knn), k)
            ii = self.ident.repeat_interleave(nbr.shape[1])
            jj = nbr.reshape(-1)
            self.arcs.add(
                (ii * n + jj).cpu().numpy(),
                pair_costs(self.cost_x, self.cost_y, ii, jj, self.delta).cpu().numpy(),
            )
            self.lap("neighbours")
            sigma, u, v = self.resolve()
            r = None if self.estimate else r_knn
        if r is None:
            sig_t = torch.as_tensor(sigma, device=dev)
            r, frac = self.choose(u[self.sample.rows], v, sig_t)
            self.lap("estimate")
            if frac > self.max_flagged_fraction:
                raise Unprofitable(
                    f"the potentials from {k} nearest neighbours would flag ~{frac:.1%} of "
                    "the pairs"
                )
        return self._certify(sigma, u, v, r, k, max_rounds)

    def certify(self, start: np.ndarray, max_rounds: int) -> SparseAssignment:
        """Certify (or improve) a permutation found on rounded costs: its pairs join the
        candidates with exact costs, and the scan runs at full rank in float64, whose margin
        is the rounding of a float64 cost, so only truly near-tight pairs are flagged."""
        n = self.n
        rows = torch.arange(n, device=self.dev)
        cols = torch.as_tensor(start, device=self.dev)
        cost = pair_costs(self.cost_x, self.cost_y, rows, cols, self.delta)
        self.arcs.add((rows * n + cols).cpu().numpy(), cost.cpu().numpy())
        sigma, u, v = self.resolve()
        self.scan_dtype = torch.float64
        return self._certify(sigma, u, v, self.d, 0, max_rounds)

    def _certify(
        self,
        sigma: np.ndarray,
        u: torch.Tensor,
        v: torch.Tensor,
        r: int,
        k: int,
        max_rounds: int,
    ) -> SparseAssignment:
        """Column generation from ``sigma``: scan, add the violated pairs, re-solve."""
        n, dev = self.n, self.dev
        bound = self.bound(r)
        self.lap("projection")
        rounds = 0
        while True:
            rounds += 1
            # violations below it are rounding, not missing arcs
            tol_add = 1e-12 * float(self.arcs.cost.max()) + 4 * self.tau
            sig_t = torch.as_tensor(sigma, device=dev)
            hit = scan(bound, u, v, sig_t, self.budget)
            self.lap("scan")
            if hit is None:
                higher = [q for q in self.ladder if q > r]
                if higher and self.mutual is None and not self.estimate:
                    self.unrelated_check()  # unrelated clouds: no rank will do, stop here
                if not higher:
                    raise Unprofitable(f"scan {rounds} flagged more than {self.budget} pairs")
                # a tighter bound (a larger rank) flags fewer pairs: the same round again
                self.notes.append(f"rank {r} flagged more than {self.budget} pairs")
                r = higher[0]
                bound = self.bound(r)
                self.lap("projection")
                rounds -= 1
                continue
            fi, fj, margin = hit
            cf = pair_costs(self.cost_x, self.cost_y, fi, fj, self.delta)
            reduced = cf - u[fi] - v[fj]
            # the violation over the candidates (within tau by construction) and the flagged
            rows, cols = np.divmod(self.arcs.keys, n)
            arc_red = self.arcs.cost - u.cpu().numpy()[rows] - v.cpu().numpy()[cols]
            violation = max(0.0, float(-arc_red.min()), float(-reduced.min()) if len(cf) else 0.0)
            bad = reduced < -tol_add
            self.lap("flagged costs")
            if not bool(bad.any()):
                break
            if rounds >= max_rounds:
                raise Unprofitable(f"{rounds} scans did not certify the candidates")
            bi, bj = fi[bad], fj[bad]
            self.arcs.add((bi * n + bj).cpu().numpy(), cf[bad].cpu().numpy())
            sigma, u, v = self.resolve()
        # the value and the potentials of the original costs c = c' - alpha_i - beta_j
        if np.array_equal(sigma, np.arange(n)):
            pair = self.paired.cpu().numpy()
        else:
            moved = self.cost_y[torch.as_tensor(sigma, device=dev)]
            pair = ((self.cost_x - moved) ** 2).sum(1).cpu().numpy()
        # the dual bound in the centred frame (small numbers, no cancellation), moved back by
        # the constant |delta|^2; rounding of the two float64 means on top
        dual = float(u.mean() + v.mean())
        rounding = 4 * float(np.finfo(np.float64).eps) * float(u.abs().mean() + v.abs().mean())
        lower = dual + self.shift_sq - violation - rounding
        if self.alpha is not None:
            u, v = u - self.alpha, v - self.beta
        self.lap("value")
        return SparseAssignment(
            assignment=np.asarray(sigma, dtype=np.int64),
            pair_cost=pair,
            u=u.cpu().numpy(),
            v=v.cpu().numpy(),
            dual_violation=violation,
            lower=lower,
            tolerance=tol_add,
            rounds=rounds,
            arcs=len(self.arcs.keys),
            flagged=len(fi),
            rank=r,
            k=k,
            margin=margin,
            seconds=self.seconds,
            notes=self.notes,
        )


def describe(res: SparseAssignment, n: int) -> dict[str, Any]:
    """The solver's parameters for :attr:`TransportResult.params`."""
    return {
        "rank": res.rank,
        "k": res.k,
        "rounds": res.rounds,
        "candidates_per_row": res.arcs / n,
        "flagged_fraction": res.flagged / (n * n),
        "scan_margin": res.margin,
        "stage_seconds": res.seconds,
        "notes": res.notes,
    }
