"""Exact assignment between unrelated clouds beyond the dense budget, without an n x n matrix.

Between two unrelated uniform clouds (the steps of a plain network, split-half noise floors,
McCann fits) the optimal permutation is far from the identity, the projected bound of
:mod:`.sparse` cannot pay, and the dense path needs the ``n x n`` matrix (20 GB in float64 at
``n = 50,000``). This path keeps the memory at O(n d + block) and stays exact:

1. **Streamed auction (float32).** The Jacobi auction of :mod:`.auction` (all unassigned rows
   bid at once, ε-scaling), but each round recomputes the bidding rows' reduced costs
   ``||y_j||^2 - 2 <x_i, y_j> + p_j`` (``||x_i||^2`` is the same for every column of a row, so
   it is left out) block by block with one GEMM, on the clouds each centred on its own mean.
   It gives column prices ``p`` close to the optimal duals; a row's optimal partner is then
   among its cheapest columns under ``c_ij + p_j``.
2. **Candidates.** One more streamed pass keeps each row's ``k`` cheapest columns under
   ``c_ij + p_j`` (and the auction's own pair), with their exact float64 costs (differences of
   the original points: no cancellation).
3. **Sparse auction (float64).** The auction again on the candidate pairs alone, from the
   float32 prices, ε-scaled down to ``ε <= RTOL W2^2 / 4``, until every row is assigned. With
   ``v_j = -p_j`` and ``u_i = min_{j in cand(i)} (c_ij + p_j)`` the potentials are feasible on
   the candidates and ε-complementary: ``c_{i sigma(i)} <= u_i + v_{sigma(i)} + eps``.
4. **Certificate over all pairs.** The float32 scan of :mod:`.bound` at full rank, with a
   rigorous rounding margin (float64 where float32 flags too many pairs), finds every pair
   that might violate ``u_i + v_j <= c_ij``; violated pairs join the candidates, the rows they
   break bid again, and the scan repeats. When nothing is violated,

   $$\\frac1n \\sum_i c_{i\\sigma(i)} - W_2^2 \\le \\frac1n \\sum_i c_{i\\sigma(i)}
     - \\frac1n \\sum_i (u_i + v_i) \\le \\varepsilon,$$

   a certified gap below ``RTOL`` times the value; otherwise the result says it is not
   converged.

Memory: the clouds, the candidates (``n k`` pairs), one block of rows (``BLOCK_BYTES``). Time: a
few dozen streamed passes of the ``n^2 d`` GEMM (the float32 phases, bounded by
``PHASE_PASSES`` each), one for the candidates, one or two for the certificate.

References
----------
Bertsekas, "The auction algorithm: a distributed relaxation method for the assignment problem",
Annals of Operations Research 14 (1988); Bertsekas & Eckstein, Mathematical Programming 42 (1988)
(ε-scaling, ε-complementary slackness and the ``n ε`` bound); Bertsekas & Castañon, Parallel
Computing 17 (1991) (Jacobi bidding); Peyré & Cuturi, "Computational Optimal Transport" (2019),
sec. 3 (duality).
"""

from __future__ import annotations

import collections
import math
import time
from typing import Any

import numpy as np
import torch

from otcollapse.transport.assignment.auction import award
from otcollapse.transport.assignment.bound import ProjectedBound, pair_costs, scan, scan_dtype
from otcollapse.transport.geometry import PointCloudCost, rows_per_block
from otcollapse.transport.result import RTOL

__all__ = ["StreamedAssignment", "solve_streamed_assignment"]

#: ε of the float32 phases, in units of the standard deviation of the costs (the last one is
#: floored at the float32 resolution of the costs)
EPS32_FACTORS = (0.05, 0.01)
#: a float32 phase ends once this fraction of the rows is assigned: the last few rows would take
#: as many rounds as all the others (bidding wars of one or two rows), the sparse phases settle
#: them in microseconds a round
STOP_FRACTION = 0.99
#: a float32 phase may read all pairs this many times (rows bid per round, summed), no more;
#: rows still unassigned then are placed arbitrarily and settled by the sparse phases
PHASE_PASSES = 6
#: cheapest columns per row kept as candidates
CANDIDATES = 16
#: ε shrinks by this factor from one sparse phase to the next
EPS_STEP = 8.0
#: the final ε, relative to the value (the certified gap is at most ε)
EPS_TARGET = RTOL / 4
#: bids of one sparse phase at most, per row
SPARSE_BIDS_PER_ROW = 200
#: certificate scans (each a streamed pass) at most
MAX_SCANS = 8
#: target size of one block of streamed costs
BLOCK_BYTES = 64 * 1024**2
#: sampled rows and columns for the spread of the costs
SAMPLE = 512


class StreamedAssignment:
    """What :func:`solve_streamed_assignment` found: the permutation and its certificate.

    Attributes
    ----------
    assignment : ndarray of int, shape (n,)
    pair_cost : ndarray, shape (n,)
        ``c_{i, assignment[i]}`` in float64 from the differences of the original points.
    u, v : ndarray, shape (n,)
        Potentials of the original costs, feasible on every pair within ``dual_violation``.
    lower : float
        Certified lower bound on ``W2^2``.
    converged : bool
        Whether the certificate closed (no violated pair left).
    params : dict
        Phases, rounds, passes, candidates, scans, seconds per stage.
    """

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


def solve_streamed_assignment(
    geom: PointCloudCost, *, k: int = CANDIDATES, max_scans: int = MAX_SCANS
) -> StreamedAssignment:
    """The optimal assignment of two uniform clouds of equal size, certified, in O(n d) memory.

    See the module docstring for the four stages. ``k``: candidate columns per row.
    """
    if geom.n == 1:  # one pair: its cost is the value, u = c, v = 0 the certificate
        c = float(((geom.x64 - geom.y64) ** 2).sum())
        return StreamedAssignment(
            assignment=np.zeros(1, dtype=np.int64),
            pair_cost=np.array([c]),
            u=np.array([c]),
            v=np.zeros(1),
            lower=c,
            converged=True,
            params={"k": 0, "note": "one point"},
        )
    return _Streamed(geom, k).run(max_scans)


class _Streamed:
    def __init__(self, geom: PointCloudCost, k: int):
        self.t0 = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.n, self.d = geom.n, geom.x.shape[1]
        self.dev = geom.device
        self.k = min(max(2, k), self.n)
        # exact costs from the original points; the centred copies feed the GEMMs
        self.cost_x, self.cost_y = geom.x64, geom.y64
        mx, my = self.cost_x.mean(0), self.cost_y.mean(0)
        # each cloud centred on its own mean: c'_ij = c_ij - 2<x_i - y_j, delta> + ... differs
        # from c_ij by alpha_i + beta_j, which shifts every permutation's cost by the same sum
        self.delta = mx - my
        self.shift_sq = float(self.delta @ self.delta)
        self.alpha = -2 * (self.cost_x @ self.delta) + self.shift_sq
        self.beta = 2 * (self.cost_y @ self.delta)
        self.x64, self.y64 = self.cost_x - mx, self.cost_y - my
        self.a = self.x64.float()
        self.b_neg2t = (-2 * self.y64).float().T.contiguous()
        self.bb = self.y64.square().sum(1).float()
        self.radius = 1.01 * max(
            float(torch.linalg.vector_norm(c, dim=1).max()) for c in (self.x64, self.y64)
        )
        self.block_rows = min(self.n, rows_per_block(self.n, 4, BLOCK_BYTES, minimum=16))
        self.buffer = torch.empty((self.block_rows, self.n), dtype=torch.float32, device=self.dev)
        self.params: dict[str, Any] = {"k": self.k}
        self.eps_factors, self.stop_fraction = EPS32_FACTORS, STOP_FRACTION

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self.t0
        self.t0 = now

    # ------------------------------------------------------------------ stage 1
    def _rows(self, idx: torch.Tensor, price: torch.Tensor):
        """Blocks of the rows ``idx`` of ``c'_ij - ||x_i||^2 + p_j`` in float32."""
        base = self.bb + price
        for s in range(0, idx.numel(), self.block_rows):
            part = idx[s : s + self.block_rows]
            out = self.buffer[: part.numel()]
            yield part, torch.addmm(base, self.a[part], self.b_neg2t, out=out)

    def _spread(self) -> tuple[float, float]:
        """The standard deviation and the largest magnitude of the costs, on a sample."""
        g = torch.Generator(device="cpu").manual_seed(0)
        rows = torch.randperm(self.n, generator=g)[:SAMPLE].to(self.dev)
        cols = torch.randperm(self.n, generator=g)[:SAMPLE].to(self.dev)
        xs, ys = self.x64[rows], self.y64[cols]
        c = (xs * xs).sum(1)[:, None] + (ys * ys).sum(1)[None, :] - 2 * xs @ ys.T
        # population std (one point gives 0, not NaN); a floor keeps every ε above zero
        tiny = float(np.finfo(np.float64).tiny)
        return float(c.std(correction=0)), max(float(c.abs().max()), tiny)

    def streamed_auction(self, scale: float, magnitude: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 prices and a permutation from the streamed Jacobi auction."""
        n, dev = self.n, self.dev
        price = torch.zeros(n, dtype=torch.float32, device=dev)
        # column reduction: every column starts with a zero-cost row
        low = torch.full((n,), math.inf, dtype=torch.float32, device=dev)
        xx = self.a.square().sum(1)
        for part, blk in self._rows(torch.arange(n, device=dev), price):
            low = torch.minimum(low, (blk + xx[part, None]).amin(0))
        price = -low
        # bids below a few ulps of the costs would not move the prices
        resolution = 8 * float(torch.finfo(torch.float32).eps) * magnitude
        phases: list[dict[str, Any]] = []
        limit = int((1.0 - self.stop_fraction) * n)
        held = torch.full((n,), -1, dtype=torch.long, device=dev)
        for factor in self.eps_factors:
            eps = max(factor * scale, resolution)
            owner = torch.full((n,), -1, dtype=torch.long, device=dev)
            held = torch.full((n,), -1, dtype=torch.long, device=dev)
            free = torch.arange(n, device=dev)
            rounds = work = 0
            while free.numel() > limit and work < PHASE_PASSES * n:
                rounds += 1
                work += free.numel()
                best, gain = [], []
                for _, blk in self._rows(free, price):
                    w1, j = blk.min(1)
                    blk.scatter_(1, j[:, None], math.inf)
                    best.append(j)
                    gain.append(blk.amin(1) - w1)
                j = torch.cat(best)
                free = award(free, j, price[j] + torch.cat(gain) + eps, owner, held, price)
            phases.append({"eps": eps, "rounds": rounds, "unassigned": int(free.numel())})
            if eps <= resolution:
                break
        if free.numel():  # out of work: the rest placed arbitrarily, settled by stage 3
            held[free] = (owner < 0).nonzero()[:, 0]
        self.params["float32_phases"] = phases
        self.params["float32_passes"] = sum(p["rounds"] for p in phases)  # upper bound
        return price, held

    # ------------------------------------------------------------------ stage 2
    def candidates(self, price: torch.Tensor, sigma: torch.Tensor) -> None:
        """Each row's ``k`` cheapest columns under ``c_ij + p_j``, and its auction partner."""
        cols = []
        for _, blk in self._rows(torch.arange(self.n, device=self.dev), price):
            cols.append(torch.topk(blk, self.k, dim=1, largest=False, sorted=False).indices)
        cols = torch.cat([torch.cat(cols), sigma[:, None]], dim=1)
        rows = torch.arange(self.n, device=self.dev).repeat_interleave(cols.shape[1])
        self.keys = torch.zeros(0, dtype=torch.long, device=self.dev)
        self._add_arcs(rows, cols.reshape(-1))

    def _add_arcs(self, rows: torch.Tensor, cols: torch.Tensor) -> None:
        """Pairs join the candidates, kept as sorted unique keys ``i * n + j`` (a ragged row
        list: a row that gains many columns costs only its own), with exact costs in the
        centred frame."""
        self.keys = torch.unique(torch.cat([self.keys, rows * self.n + cols]))
        self.rows, self.cols = self.keys // self.n, self.keys % self.n
        self.cost = pair_costs(self.cost_x, self.cost_y, self.rows, self.cols, self.delta)
        self.indptr = torch.searchsorted(self.rows, torch.arange(self.n + 1, device=self.dev)).cpu()

    # ------------------------------------------------------------------ stage 3
    def sparse_auction(self, price: np.ndarray, eps_list: list[float]) -> tuple[np.ndarray, list]:
        """Gauss–Seidel auction on the candidates, ε-scaled through ``eps_list`` from the prices
        ``price`` (updated in place); returns the permutation (``-1`` for rows left unassigned
        when the bids ran out) and the bids of each phase.

        One row bids at a time (a Python loop over lists: each bid reads the row's ``K``
        candidates, microseconds), so a bidding war of two rows costs two bids, not two rounds
        over all rows."""
        n = self.n
        cuts = self.indptr[1:-1].numpy()
        cost = [c.tolist() for c in np.split(self.cost.cpu().numpy(), cuts)]
        cols = [c.tolist() for c in np.split(self.cols.cpu().numpy(), cuts)]
        span = float(self.cost.max() - self.cost.min()) + 1.0
        p = price.tolist()
        bids_per_phase = []
        held = [-1] * n
        for eps in eps_list:
            owner = [-1] * n
            held = [-1] * n
            queue = collections.deque(range(n))
            bids = 0
            while queue and bids < SPARSE_BIDS_PER_ROW * n:
                i = queue.popleft()
                best = second = math.inf
                bj = -1
                for c, j in zip(cost[i], cols[i], strict=True):
                    val = c + p[j]
                    if val < best:
                        best, second, bj = val, best, j
                    elif val < second:
                        second = val
                # a row with one candidate outbids by the whole cost range, not by infinity
                p[bj] += (second - best if second < math.inf else span) + eps
                prev = owner[bj]
                owner[bj] = i
                held[i] = bj
                if prev >= 0:
                    held[prev] = -1
                    queue.append(prev)
                bids += 1
            bids_per_phase.append(bids)
            if queue:
                break
        price[:] = p
        return np.asarray(held, dtype=np.int64), bids_per_phase

    def potentials(self, price: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``u_i = min_{j in cand(i)} (c_ij + p_j)`` and ``v = -p``: feasible on the candidates."""
        u = torch.full((self.n,), math.inf, dtype=torch.float64, device=self.dev)
        u.scatter_reduce_(0, self.rows, self.cost + price[self.cols], "amin")
        return u, -price

    # ------------------------------------------------------------------ driver
    def run(self, max_scans: int) -> StreamedAssignment:
        n, dev = self.n, self.dev
        scale, magnitude = self._spread()
        self.lap("estimate")
        price32, sigma = self.streamed_auction(scale, magnitude)
        self.lap("float32 auction")
        self.candidates(price32, sigma)
        self.lap("candidates")
        price = price32.double().cpu().numpy()
        # the float32 phase's last ε, then down by EPS_STEP to the target (relative to the value
        # of the float32 permutation, an upper bound of W2^2 in the centred frame)
        eps = float(self.params["float32_phases"][-1]["eps"])
        rows = torch.arange(n, device=dev)
        value = float(pair_costs(self.cost_x, self.cost_y, rows, sigma, self.delta).mean())
        target = EPS_TARGET * max(value, 0.0)
        floor64 = 8 * float(np.finfo(np.float64).eps) * magnitude
        eps_list = []
        while True:
            eps_list.append(max(eps, target, floor64))
            if eps <= max(target, floor64):
                break
            eps /= EPS_STEP
        self.params.update(eps=eps_list[-1], eps_target=target, sparse_bids=[])
        scans, flagged, margin, violation = 0, 0, 0.0, 0.0
        bound = ProjectedBound(self.x64, self.y64, None, scan_dtype(dev), radius=self.radius)
        budget = max(16 * n, 1)
        auction = True
        while True:
            if auction:
                held, bids = self.sparse_auction(price, eps_list)
                self.params["sparse_bids"].append(bids)
                self.lap("sparse auction")
            auction = True
            converged = bool((held >= 0).all())
            if not converged:
                self.params["note"] = "the sparse auction ran out of bids"
                break
            scans += 1
            u, v = self.potentials(torch.as_tensor(price, device=dev))
            # blocks of BLOCK_BYTES: at large n a cache-sized block is a few rows, too thin
            # for an efficient GEMM
            hit = scan(bound, u, v, torch.as_tensor(held, device=dev), budget, BLOCK_BYTES)
            if hit is None:
                if bound.dtype == torch.float64:
                    converged = False
                    self.params["note"] = f"the float64 scan flagged more than {budget} pairs"
                    break
                # a float32 margin too coarse for these costs: the same scan in float64
                bound = ProjectedBound(self.x64, self.y64, None, torch.float64, radius=self.radius)
                scans -= 1
                auction = False  # the same potentials, scanned again
                continue
            fi, fj, margin = hit
            flagged = int(fi.numel())
            cf = pair_costs(self.cost_x, self.cost_y, fi, fj, self.delta)
            reduced = cf - u[fi] - v[fj]
            violation = max(0.0, -float(reduced.min())) if flagged else 0.0
            bad = reduced < -1e-13 * magnitude
            self.lap("certificate")
            if not bool(bad.any()):
                break
            if scans >= max_scans:
                converged = False
                self.params["note"] = f"{scans} scans left violated pairs"
                break
            # the violating pairs join the candidates, and the sparse auction runs again from
            # the current prices (new arcs can move prices by more than the last ε)
            self._add_arcs(fi[bad], fj[bad])
        if (held < 0).any():  # out of bids: a permutation all the same (its cost is an upper bound)
            owned = np.zeros(n, dtype=bool)
            owned[held[held >= 0]] = True
            held[held < 0] = np.flatnonzero(~owned)
        held = torch.as_tensor(held, device=dev)
        u, v = self.potentials(torch.as_tensor(price, device=dev))
        sigma = held
        pair = ((self.cost_x - self.cost_y[sigma.clamp(min=0)]) ** 2).sum(1)
        dual = float(u.mean() + v.mean())
        rounding = 4 * float(np.finfo(np.float64).eps) * float(u.abs().mean() + v.abs().mean())
        lower = dual + self.shift_sq - violation - rounding
        value = float(pair.mean())
        # certified to RTOL, or not at all (prices cannot resolve costs below their own
        # rounding: far-off tight clusters need their own frames, transport.blocks)
        converged = converged and value - max(lower, 0.0) <= RTOL * value
        if not converged:
            lower = 0.0
        self.lap("value")
        self.params.update(
            scans=scans,
            flagged=flagged,
            scan_margin=margin,
            scan_dtype=str(bound.dtype).replace("torch.", ""),
            candidates_per_row=self.keys.numel() / n,
            dual_violation=violation,
            stage_seconds=self.seconds,
        )
        return StreamedAssignment(
            assignment=sigma.cpu().numpy(),
            pair_cost=pair.cpu().numpy(),
            u=(u - self.alpha).cpu().numpy(),
            v=(v - self.beta).cpu().numpy(),
            lower=lower,
            converged=bool(converged),
            params=self.params,
        )
