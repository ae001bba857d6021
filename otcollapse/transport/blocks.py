"""Exact transport between clustered clouds, one cluster at a time.

Collapsed features are tight clusters far from the origin: within a cluster the distances are
many orders of magnitude below the norms, and any cost formed in one frame for all points (the
GEMM form ``||x||^2 + ||y||^2 - 2 <x, y>``, or a network simplex whose potentials span the
clusters) rounds them away. When the clusters are *separated* and carry the same mass in both
measures, the problem splits exactly into one problem per cluster, each solved in its own frame
(shifted to the cluster), where the costs are accurate to their own size.

**Why the split is exact.** Let group ``g`` hold the points of both clouds nearest to anchor
``c_g``, within radii ``R^x_g`` and ``R^y_g``, and carry the same mass ``A_g`` in ``a`` and ``b``.
Solve every group alone; an optimal dual of group ``g`` can be normalised to ``max_j v_j = 0``,
and then ``0 <= u_i <= max_{j in g} c_ij <= (R^x_g + R^y_g)^2``. For ``i`` in ``g`` and ``j`` in
another group ``h``, ``c_ij >= (||c_g - c_h|| - R^x_g - R^y_h)^2``. So whenever

$$\\|c_g - c_h\\| - R^x_g - R^y_h \\ge R^x_g + R^y_g \\quad \\text{for all } g \\ne h,$$

the groups' potentials together satisfy ``u_i + v_j <= c_ij`` for every pair: the
block-diagonal plan is optimal, ``W2^2 = sum_g A_g W2^2(mu_g, nu_g)``, and each group's own
certificate (its lower bound) certifies the whole. The condition is checked with the exact
(float64, by differences) radii and anchor distances; when it fails, when the masses differ by
more than the rounding of their sums, or when some point has no mass, the problem is solved
whole.

Groups are found by farthest-point sampling on a sample of the pooled points, stopping at the
first anchor count ``k`` whose covering radius drops by ``GAP_RATIO`` from ``k - 1`` anchors (the
clusters are then covered one anchor each); every point then joins its nearest anchor. It runs
only when the one-frame cost cannot be trusted (:func:`needs_frames`): for ordinary clouds the
whole problem is solved in one frame, as before.

References
----------
Gonzalez, "Clustering to minimize the maximum intercluster distance", Theor. Comput. Sci. 38
(1985) (farthest-point sampling); Peyré & Cuturi, "Computational Optimal Transport" (2019),
sec. 3 (duality).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from otcollapse.exceptions import DenseBudgetError
from otcollapse.transport.geometry import PointCloudCost, format_bytes
from otcollapse.transport.result import RTOL, TransportResult

__all__ = ["Groups", "find_groups", "needs_frames", "solve_by_blocks"]

#: covering radius drop that marks the clusters as found (the split needs separations of a few
#: radii, so a smaller drop could not pass the separation test anyway)
GAP_RATIO = 4.0
#: anchors tried at most (CIFAR-100 has 100 classes)
MAX_GROUPS = 256
#: pooled points sampled for the farthest-point sampling
SAMPLE_POINTS = 2048
#: dimensions of the random projection the farthest-point search runs in
FPS_DIM = 16
#: sources sampled to estimate the scale of the costs before a solve
SCALE_ROWS = 16


@dataclasses.dataclass(frozen=True)
class Groups:
    """Separated, mass-balanced groups: ``x_group[i]`` and ``y_group[j]`` in ``0..count-1``."""

    x_group: torch.Tensor
    y_group: torch.Tensor
    count: int
    separation: float  # min over g != h of (||c_g - c_h|| - R^x_g - R^y_h) / (R^x_g + R^y_g)


def needs_frames(
    geom: PointCloudCost, a: torch.Tensor, b: torch.Tensor, resolution: float = 0.0
) -> bool:
    """Whether the one-frame problem could miss :data:`RTOL`.

    The cost scale is estimated by the squared distance of a few sampled sources to their
    nearest target; the one-frame error is :meth:`PointCloudCost.gemm_error`
    plus ``resolution`` times the largest cost (the solver's own: the network simplex resolves
    reduced costs to about 1e-13 of the largest). Only a choice of path depends on this
    estimate: the certificate of the result does not.
    """
    step = max(1, geom.n // SCALE_ROWS)
    rows = geom.x[::step][:SCALE_ROWS]
    # one small GEMM in the shared frame: where it cancels (collapsed clusters) the estimate
    # drops to the rounding level, which asks for frames, as it should
    sq = (rows * rows).sum(1)[:, None] + geom.yy[None, :] - 2 * rows @ geom.y.T
    nearest = sq.amin(1).clamp(min=0)
    estimate = float(nearest.mean())
    error = geom.gemm_error(a, b, torch.float64)
    if resolution:
        error += resolution * geom.diameter_sq_bound()
    return error > 0.1 * RTOL * estimate


def _farthest_points(p: np.ndarray) -> np.ndarray | None:
    """Anchors (rows of ``p``) at the first radius drop of :data:`GAP_RATIO`, or None."""
    start = int(np.argmax(((p - p.mean(0)) ** 2).sum(1)))
    anchors = [start]
    dist = ((p - p[start]) ** 2).sum(1)
    radius = float(dist.max())
    for _ in range(min(MAX_GROUPS, len(p)) - 1):
        nxt = int(np.argmax(dist))
        anchors.append(nxt)
        np.minimum(dist, ((p - p[nxt]) ** 2).sum(1), out=dist)
        new = float(dist.max())
        if new * GAP_RATIO**2 <= radius:
            return np.asarray(anchors)
        radius = new
    return None


def find_groups(
    geom: PointCloudCost, a: torch.Tensor, b: torch.Tensor, resolution: float = 0.0
) -> Groups | None:
    """Separated groups with equal masses in ``a`` and ``b`` (see the module), or None when
    the problem needs no frames (:func:`needs_frames`) or has no such groups."""
    if min(geom.n, geom.m) < 2 or not needs_frames(geom, a, b, resolution):
        return None
    if bool((a <= 0).any()) or bool((b <= 0).any()):
        return None  # points without mass belong to no group's mass balance: solve whole
    x, y = geom.x64, geom.y64
    pooled = torch.cat([x, y])
    # a seeded random sample (an evenly strided one aliases with periodic class orders)
    gen = torch.Generator().manual_seed(0)
    sample = pooled
    if len(pooled) > SAMPLE_POINTS:
        sample = pooled[torch.randperm(len(pooled), generator=gen)[:SAMPLE_POINTS].to(x.device)]
    # distances for the search in a random projection to at most FPS_DIM dimensions (the
    # anchors only seed the groups: radii and separations below are exact)
    d = sample.shape[1]
    if d > FPS_DIM:
        proj = torch.randn((d, FPS_DIM), generator=gen, dtype=torch.float64).to(x.device)
        found = _farthest_points(((sample - sample.mean(0)) @ proj).cpu().numpy())
    else:
        found = _farthest_points(sample.cpu().numpy())
    if found is None:
        return None
    anchors = sample[torch.as_tensor(found, device=pooled.device)]
    # nearest anchor in the shifted frame (any assignment is valid: the radii below are exact)
    centre = anchors.mean(0)
    ac = anchors - centre
    acn = (ac * ac).sum(1)

    def nearest(z: torch.Tensor) -> torch.Tensor:
        zc = z - centre
        return (acn[None, :] - 2 * zc @ ac.T).argmin(1)

    gx, gy = nearest(x), nearest(y)
    count = len(anchors)
    mass_a = torch.zeros(count, dtype=torch.float64, device=x.device).index_add_(0, gx, a.double())
    mass_b = torch.zeros(count, dtype=torch.float64, device=x.device).index_add_(0, gy, b.double())
    # equal masses, to the rounding of their sums and no more: any larger difference must
    # cross between groups and the split would be wrong
    size = torch.bincount(gx, minlength=count) + torch.bincount(gy, minlength=count)
    eps = float(torch.finfo(torch.float64).eps)
    rounding = 4 * eps * size.double() * torch.maximum(mass_a, mass_b)
    if bool(((mass_a - mass_b).abs() > rounding).any()):
        return None
    keep = (mass_a > 0) & (mass_b > 0)  # the others hold no points at all
    if int(keep.sum()) < 2:
        return None
    rx = _radii(x, anchors, gx, count)
    ry = _radii(y, anchors, gy, count)
    # by differences (cdist's matrix-product mode would cancel for anchors far from the origin)
    dist = torch.cdist(anchors, anchors, compute_mode="donot_use_mm_for_euclid_dist")
    d = x.shape[1]
    dist = dist * (1 - 1e-12 - 4 * d * eps)
    need = (rx + ry)[:, None]
    room = dist - rx[:, None] - ry[None, :]
    off = keep[:, None] & keep[None, :] & ~torch.eye(count, dtype=torch.bool, device=x.device)
    ratio = (room / need.clamp(min=torch.finfo(torch.float64).tiny))[off]
    separation = float(ratio.min())
    if not separation >= 1.0:
        return None
    # drop empty groups and number the rest 0..G-1
    index = torch.cumsum(keep.long(), 0) - 1
    return Groups(index[gx], index[gy], int(keep.sum()), separation)


def _radii(z: torch.Tensor, anchors: torch.Tensor, g: torch.Tensor, count: int) -> torch.Tensor:
    """``max_{i in group} ||z_i - c_g||`` by differences, with a margin for its rounding."""
    r = torch.linalg.vector_norm(z - anchors[g], dim=1)
    out = torch.zeros(count, dtype=torch.float64, device=z.device)
    out.scatter_reduce_(0, g, r, reduce="amax")
    return out * (1 + 1e-12 + 4 * z.shape[1] * float(torch.finfo(torch.float64).eps))


def solve_by_blocks(
    solver: Callable[..., TransportResult],
    geom: PointCloudCost,
    a: torch.Tensor,
    b: torch.Tensor,
    groups: Groups,
    opts: Any,
) -> TransportResult:
    """``W2^2 = sum_g A_g W2^2(mu_g, nu_g)``, each group solved by ``solver`` in its own frame.

    The result's ``gap`` is ``sum_g A_g gap_g`` (each group's certified gap), ``converged`` that
    every group converged and the total gap is within :data:`RTOL` of the cost; potentials are
    normalised per group (``max v = 0``) so that together they are feasible on every pair.
    ``opts`` are the solver's options (:mod:`otcollapse.transport.options`), passed to each group.
    """
    return_plan, return_potentials = opts.return_plan, opts.return_potentials
    if return_plan and not geom.fits():
        raise DenseBudgetError(
            f"return_plan=True needs the dense {geom.n} x {geom.m} plan "
            f"({format_bytes(geom.dense_bytes())}), over max_dense_bytes."
        )
    t0 = time.perf_counter()
    n, m = geom.n, geom.m
    cost = gap = violation = 0.0
    potentials_complete = return_potentials
    first: TransportResult | None = None
    converged = True
    u_all, v_all = np.zeros(n), np.zeros(m)
    order = np.empty(n, dtype=np.int64) if n == m else None
    plan = np.zeros((n, m)) if return_plan else None
    parts = []
    for g in range(groups.count):
        ix = (groups.x_group == g).nonzero()[:, 0]
        iy = (groups.y_group == g).nonzero()[:, 0]
        mass = float(a[ix].double().sum())
        sub = PointCloudCost(geom.x0[ix], geom.y0[iy], geom.max_dense_bytes)
        res = solver(sub, a[ix] / a[ix].sum(), b[iy] / b[iy].sum(), opts)
        cost += mass * res.cost
        gap += mass * (res.gap if res.gap is not None else np.inf)
        converged &= res.converged
        ixn, iyn = ix.cpu().numpy(), iy.cpu().numpy()
        if order is not None:
            if res.assignment is None or len(ixn) != len(iyn):
                order = None
            else:
                order[ixn] = iyn[res.assignment]
        if plan is not None:
            plan[np.ix_(ixn, iyn)] = mass * np.asarray(res.plan)
        if res.potentials is not None:
            u, v = (np.asarray(p, dtype=np.float64) for p in res.potentials)
            top = float(v.max())
            u_all[ixn], v_all[iyn] = u + top, v - top
        else:
            potentials_complete = False
        violation = max(violation, float(res.params.get("dual_violation") or 0.0))
        first = res if first is None else first
        parts.append(
            {"size": (len(ixn), len(iyn)), "method": res.method, "path": res.params.get("path")}
        )
    gap = min(gap, cost)
    params = {
        **{k: v for k, v in first.params.items() if k in ("solver", "max_iter", "cost_dtype")},
        "path": "blocks",
        "blocks": groups.count,
        "block_separation": groups.separation,
        "block_parts": parts,
        "dual_violation": violation,
        "certificate": (
            f"{groups.count} separated groups of equal mass solved one by one in their own "
            "frames (block-diagonal plan optimal by the separation test); gap = sum of the "
            "groups' certified gaps"
        ),
    }
    return TransportResult(
        cost=cost,
        quantity="W2^2",
        method=first.method,
        params=params,
        converged=bool(converged and gap <= RTOL * cost),
        n_iter=None,
        gap=gap,
        gap_kind="certified gap",
        seconds=time.perf_counter() - t0,
        plan=plan,
        assignment=order,
        potentials=(u_all, v_all) if potentials_complete else None,
    )
