r"""McCann's displacement interpolation, and the fit of every layer of a segment to the geodesic
between the segment's ends.

$$\mu_t = \big((1 - t)\,\mathrm{Id} + t\,T\big)_\# \mu_0, \qquad
  t_l = \arg\min_{t \in [0, 1]} W_2(\mu_l, \mu_t), \qquad
  r_l = \frac{W_2(\mu_l, \mu_{t_l})}{W_2(\mu_0, \mu_L)},$$

on the discrete interpolation along the optimal coupling (majorize-minimize) or on the Gaussian
(Bures) geodesic between the ends' Gaussian approximations (grid and bounded Brent).

References
----------
McCann, "A convexity principle for interacting gases", Adv. Math. 128 (1997).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from otcollapse._utils import ArrayLike, to_numpy
from otcollapse._validation import check_real
from otcollapse.geodesic._common import bar, f64, solve
from otcollapse.geodesic.results import McCannFit
from otcollapse.measures import LayerMeasure
from otcollapse.transport import TransportResult, TransportSpec, bures_map, gaussian_w2

__all__ = ["mccann_interpolate"]

#: McCann fit by majorize-minimize: stop when t moves less than this, or after this many solves
_MM_XTOL = 1e-9
_MM_MAX_ITER = 100
#: grid of the Gaussian (Bures) McCann fit before the bounded Brent refinement
_GAUSS_GRID = 21
#: plan entries below this fraction of their row's mass are rounding residue of the solver
_PLAN_RTOL = 1e-12

#: one layer's fit: (t_l, W2^2(mu_l, mu_{t_l}), transport evaluations, converged)
LayerFit = tuple[float, float, int, bool]


def mccann_interpolate(
    x0: ArrayLike,
    x1: ArrayLike,
    t: float,
    *,
    plan: ArrayLike | TransportResult | None = None,
    a: ArrayLike | None = None,
    b: ArrayLike | None = None,
    **options: Any,
) -> LayerMeasure:
    r"""McCann's displacement interpolation between two discrete measures.

    $$\mu_t = \sum_{ij} \pi_{ij}\, \delta_{(1 - t)\,x^0_i + t\,x^1_j}, \qquad t \in [0, 1],$$

    ``pi`` an optimal plan between ``mu_0 = sum_i a_i delta_{x0_i}`` and
    ``mu_1 = sum_j b_j delta_{x1_j}``. Then ``t -> mu_t`` is a constant-speed W2 geodesic:
    ``W2(mu_s, mu_t) = |t - s| W2(mu_0, mu_1)`` (McCann 1997). With uniform masses on equal
    numbers of points the optimal plan is a permutation ``sigma`` and
    ``mu_t = (1/n) sum_i delta_{(1 - t) x0_i + t x1_sigma(i)}``.

    Parameters
    ----------
    x0 : array-like or Tensor, shape (n, d)
    x1 : array-like or Tensor, shape (m, d)
    t : float
        In [0, 1].
    plan : optional
        The coupling to interpolate along: an int array of shape (n,) (``x0_i -> x1[plan[i]]``,
        a permutation), a dense (n, m) plan of non-negative masses summing to one, or a
        :class:`~otcollapse.transport.TransportResult` carrying either. Default: solve for the
        optimal one (``method="assignment"`` for uniform equal sizes, else ``"exact"``).
    a, b : array-like, optional
        Masses of ``x0`` and ``x1`` when the plan is solved here; uniform when omitted.
    **options
        Options of the exact solver when the plan is solved here (checked as
        :func:`~otcollapse.transport.wasserstein` checks them).

    Returns
    -------
    LayerMeasure
        For a permutation: the ``n`` points in the order of ``x0`` (row ``i`` is where
        ``x0_i`` is at time ``t``), uniform weights (``weights=None``). For a general plan: one
        point per positive entry of the plan, with its mass. Points are a tensor when ``x0`` is
        one (on its device), else a float64 NumPy array.

    Examples
    --------
    >>> import numpy as np
    >>> x0 = np.array([[0.0], [1.0]]); x1 = np.array([[3.0], [2.0]])
    >>> mccann_interpolate(x0, x1, 0.5).points   # sorted matching: 0 -> 2, 1 -> 3
    array([[1.],
           [2.]])

    References
    ----------
    McCann, "A convexity principle for interacting gases", Adv. Math. 128 (1997).
    """
    t = check_real(t, "t (the time of the displacement interpolation)", minimum=0.0, maximum=1.0)
    X0, X1 = f64(x0, "x0"), f64(x1, "x1")
    X1 = X1.to(X0.device)
    if X0.ndim != 2 or X1.ndim != 2 or X0.shape[1] != X1.shape[1]:
        raise ValueError(
            f"x0 and x1 must be (n, d) and (m, d) in one space; got {tuple(X0.shape)} and "
            f"{tuple(X1.shape)}."
        )
    n, m = int(X0.shape[0]), int(X1.shape[0])
    P = _coupling_array(x0, x1, plan, a, b, n == m, options)
    masses: np.ndarray | None = None
    if P.ndim == 1:
        idx = torch.as_tensor(_permutation(P, n, m), device=X0.device)
        points = (1 - t) * X0 + t * X1[idx]
    else:
        rows, cols, masses = _plan_entries(P, n, m)
        r_t = torch.as_tensor(rows, device=X0.device)
        c_t = torch.as_tensor(cols, device=X0.device)
        points = (1 - t) * X0[r_t] + t * X1[c_t]
    pts = points if isinstance(x0, torch.Tensor) else points.cpu().numpy()
    return LayerMeasure(pts, masses, None, f"mccann(t={t:g})")


def _coupling_array(
    x0: ArrayLike,
    x1: ArrayLike,
    plan: ArrayLike | TransportResult | None,
    a: ArrayLike | None,
    b: ArrayLike | None,
    square: bool,
    options: dict[str, Any],
) -> np.ndarray:
    """The coupling to interpolate along, as an index array or a dense plan (solved when not
    given: the assignment for uniform masses on equal numbers of points, else the network
    simplex)."""
    if plan is None:
        wa = None if a is None else to_numpy(a, dtype=np.float64, what="a").reshape(-1)
        wb = None if b is None else to_numpy(b, dtype=np.float64, what="b").reshape(-1)
        method = "assignment" if wa is None and wb is None and square else "exact"
        spec = TransportSpec.create(method, **options)
        plan = solve(x0, x1, wa, wb, spec, coupling=True, validate=True)
    if isinstance(plan, TransportResult):
        if plan.assignment is None and plan.plan is None:
            raise ValueError(
                "the TransportResult carries no coupling; solve with method='assignment' or "
                "with return_plan=True."
            )
        plan = plan.assignment if plan.assignment is not None else plan.plan
    return to_numpy(plan, what="plan")


def _permutation(P: np.ndarray, n: int, m: int) -> np.ndarray:
    """An index plan, checked to be a permutation between two clouds of equal size."""
    sigma = P.astype(np.int64)
    if n != m or sigma.shape != (n,) or not np.array_equal(np.sort(sigma), np.arange(n)):
        raise ValueError(
            "an index plan must be a permutation of 0..n-1 between two clouds of equal size "
            f"(n = {n}, m = {m}); pass a dense (n, m) plan otherwise."
        )
    return sigma


def _plan_entries(P: np.ndarray, n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The positive entries ``(rows, cols, masses)`` of a dense plan, checked."""
    P = P.astype(np.float64)
    if P.shape != (n, m):
        raise ValueError(f"the plan has shape {P.shape}; it must be (n, m) = {(n, m)}.")
    if not np.all(np.isfinite(P)) or (P < 0).any() or abs(P.sum() - 1.0) > 1e-6:
        raise ValueError("the plan must hold finite non-negative masses summing to one.")
    rows, cols = np.nonzero(P > 0)
    return rows, cols, P[rows, cols] / P[rows, cols].sum()


# ============================================================================ fits of a segment
def _fit_layers(
    layers: list[torch.Tensor],
    seg: Sequence[int],
    endpoint_cost: float,
    fit_layer: Callable[[torch.Tensor], LayerFit],
    method: str,
    progress: bool,
) -> McCannFit:
    """Every layer's fit on one geodesic: ``t = 0, 1`` exactly at the ends (``mu_0`` and
    ``mu_1`` are the ends themselves), NaN when the ends coincide (no geodesic to fit)."""
    L = len(seg) - 1
    D = math.sqrt(max(endpoint_cost, 0.0))
    ts, res_, evals, conv = [], [], [], []
    desc = "McCann fit (Gaussian)" if method == "gaussian" else "McCann fit"
    for pos, h in bar(list(enumerate(layers)), progress, desc):
        if pos in (0, L):
            t, r, n_ev, ok = float(pos / L), 0.0, 0, True
        elif endpoint_cost <= 0:
            t, r, n_ev, ok = math.nan, math.nan, 0, False
        else:
            t, cost, n_ev, ok = fit_layer(h)
            r = math.sqrt(max(cost, 0.0)) / D
        ts.append(t)
        res_.append(r)
        evals.append(n_ev)
        conv.append(ok)
    return McCannFit(
        layers=tuple(seg),
        t=tuple(ts),
        nominal=tuple(i / L for i in range(L + 1)),
        residual=tuple(res_),
        n_evals=tuple(evals),
        converged=tuple(conv),
        method=method,
        endpoint_cost=endpoint_cost,
    )


class _Interpolation:
    """The discrete displacement interpolation ``z_j(t) = base_j + t disp_j`` with masses ``g_j``.

    Built from the optimal coupling of a segment's first and last layers: support point ``j``
    is a pair ``(owner_j, partner_j)`` of the coupling (a permutation: ``owner_j = j``).
    """

    def __init__(self, x0: torch.Tensor, x1: torch.Tensor, res: TransportResult):
        if res.assignment is not None:
            sigma = torch.as_tensor(np.asarray(res.assignment), device=x0.device)
            self.base = x0
            self.disp = x1[sigma] - x0
            self.mass: np.ndarray | None = None
            self.owner = torch.arange(x0.shape[0], device=x0.device)
            self.g = torch.full(
                (x0.shape[0],), 1.0 / x0.shape[0], dtype=torch.float64, device=x0.device
            )
        else:
            plan = np.asarray(res.plan, dtype=np.float64)
            # the network simplex leaves rounding residue (~1e-17) on degenerate basic entries:
            # drop entries below 1e-12 of their row's mass, then renormalise
            row_mass = plan.sum(1, keepdims=True)
            rows, cols = np.nonzero(plan > _PLAN_RTOL * row_mass)
            mass = plan[rows, cols] / plan[rows, cols].sum()
            r_t = torch.as_tensor(rows, device=x0.device)
            self.base = x0[r_t]
            self.disp = x1[torch.as_tensor(cols, device=x0.device)] - x0[r_t]
            self.mass = mass
            self.owner = r_t
            self.g = torch.as_tensor(mass, dtype=torch.float64, device=x0.device)
        #: W2^2 of the ends along this coupling (the endpoint cost, from the differences)
        self.w2sq = float(self.g @ (self.disp * self.disp).sum(1))
        self._base_disp = float(self.g @ (self.base * self.disp).sum(1))

    def at(self, t: float) -> torch.Tensor:
        return self.base + t * self.disp

    def paired_start(self, h: torch.Tensor) -> float:
        """``argmin_t`` of the cost of the coupling sample i <-> its own support points."""
        num = float(self.g @ ((h[self.owner] - self.base) * self.disp).sum(1))
        return min(1.0, max(0.0, num / self.w2sq))

    def update(self, h: torch.Tensor, res: TransportResult) -> float:
        """Minimiser over [0, 1] of the quadratic majorant given by the coupling ``res``."""
        if res.assignment is not None:
            j = torch.as_tensor(np.asarray(res.assignment), device=h.device)
            num = float(((h - self.base[j]) * self.disp[j]).sum(1).mean())
        else:
            P = torch.as_tensor(np.asarray(res.plan, dtype=np.float64), device=h.device)
            num = float(((P @ self.disp) * h).sum()) - self._base_disp
        return min(1.0, max(0.0, num / self.w2sq))


def _descend(
    interp: _Interpolation,
    h: torch.Tensor,
    t: float,
    done: dict[float, float],
    solve_at: Callable[[float], TransportResult],
) -> bool:
    """Majorize-minimize from ``t``, recording ``W2^2(mu_l, mu_t)`` of every solve in ``done``;
    True at a fixed point, False at the iteration cap."""
    for _ in range(_MM_MAX_ITER):
        if t in done:  # a point already solved: its descent is known
            return True
        r = solve_at(t)
        done[t] = r.cost
        t_new = interp.update(h, r)
        if abs(t_new - t) <= _MM_XTOL:
            return True
        t = t_new
    return False


def fit_discrete(
    layers: list[torch.Tensor],
    seg: Sequence[int],
    end: TransportResult,
    w: np.ndarray | None,
    fit: TransportSpec,
    grid: int,
    progress: bool,
) -> McCannFit:
    r"""Majorize-minimize fit of ``t_l`` on the discrete displacement interpolation.

    For any coupling ``pi`` of ``mu_l`` with ``mu_t`` the cost
    ``q_pi(t) = sum pi_ij ||h_i - z_j(t)||^2`` is a quadratic in ``t`` with leading coefficient
    ``W2^2(mu_0, mu_L)`` whatever ``pi`` is, and ``W2^2(mu_l, mu_t) = min_pi q_pi(t)``
    (a convex quadratic plus a concave piecewise-linear function). Minimising ``q_pi`` for the
    optimal ``pi`` at ``t_k`` gives ``t_{k+1}`` with ``W2^2(mu_l, mu_{t_{k+1}}) <= q(t_{k+1})
    <= W2^2(mu_l, mu_{t_k})``: a monotone descent that stops at a fixed point (a local minimum)
    after finitely many solves. The descent starts from the network's own coupling, plus
    ``grid`` equally spaced starts; the best point solved is the fit.
    """
    interp = _Interpolation(layers[0], layers[-1], end)

    def fit_layer(h: torch.Tensor) -> LayerFit:
        def solve_at(t: float) -> TransportResult:
            return solve(h, interp.at(t), w, interp.mass, fit, coupling=True)

        starts = [interp.paired_start(h)]
        if grid >= 1:
            starts += [float(v) for v in np.linspace(0.0, 1.0, grid)]
        done: dict[float, float] = {}
        ok = [_descend(interp, h, t, done, solve_at) for t in starts]
        best_t, best_cost = math.nan, math.inf
        for t, cost in done.items():  # in solve order: the first of equal values wins
            if cost < best_cost:
                best_t, best_cost = t, cost
        return float(best_t), best_cost, len(done), all(ok)

    return _fit_layers(layers, seg, interp.w2sq, fit_layer, fit.method, progress)


def _moments(x: torch.Tensor, w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and (population) covariance, as the ``gaussian`` method computes them."""
    xn = x.cpu().numpy()
    a = np.full(xn.shape[0], 1.0 / xn.shape[0]) if w is None else w
    m = a @ xn
    xc = xn - m
    return m, (xc * a[:, None]).T @ xc


def fit_gaussian(
    layers: list[torch.Tensor],
    seg: Sequence[int],
    w: np.ndarray | None,
    names: Sequence[str],
    grid: int,
    progress: bool,
) -> McCannFit:
    r"""McCann fit on the Gaussian (Bures) geodesic between the ends' Gaussian approximations.

    ``mu_t = N((1 - t) m_0 + t m_1, M_t S_0 M_t)``, ``M_t = (1 - t) I + t A``, ``A`` the Bures
    map; ``t_l`` minimises the Bures distance to layer ``l``'s Gaussian on a grid, refined by
    bounded Brent in the best grid cell.
    """
    m0, S0 = _moments(layers[0], w)
    m1, S1 = _moments(layers[-1], w)
    try:
        A = bures_map(S0, S1)
    except ValueError as err:
        raise ValueError(
            f"the Gaussian McCann fit needs a positive-definite covariance at layer {names[0]!r} "
            f"({err}); project to fewer dimensions than samples (traj.project(dim, "
            "method='pca')) or use method='auto' for the exact discrete fit."
        ) from err
    eye = np.eye(S0.shape[0])
    grid_t = np.linspace(0.0, 1.0, max(grid, _GAUSS_GRID))

    def fit_layer(h: torch.Tensor) -> LayerFit:
        ml, Sl = _moments(h, w)

        def f(t: float) -> float:
            M = (1 - t) * eye + t * A
            return gaussian_w2(ml, Sl, (1 - t) * m0 + t * m1, M @ S0 @ M)

        vals = [f(float(v)) for v in grid_t]
        k = int(np.argmin(vals))
        lo, hi = grid_t[max(k - 1, 0)], grid_t[min(k + 1, grid_t.size - 1)]
        opt = minimize_scalar(f, bounds=(lo, hi), method="bounded", options={"xatol": 1e-12})
        n_ev = grid_t.size + int(opt.nfev)
        if opt.fun <= vals[k]:
            return float(opt.x), float(opt.fun), n_ev, bool(opt.success)
        return float(grid_t[k]), float(vals[k]), n_ev, bool(opt.success)

    return _fit_layers(layers, seg, gaussian_w2(m0, S0, m1, S1), fit_layer, "gaussian", progress)
