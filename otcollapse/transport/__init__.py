"""Transport between two empirical measures: one front door, a registry of solvers behind it.

>>> import numpy as np
>>> from otcollapse.transport import wasserstein
>>> x = np.random.default_rng(0).normal(size=(100, 3))
>>> res = wasserstein(x, x + [1.0, 2.0, 2.0])     # method="auto" -> "assignment"
>>> round(res.cost, 10), res.method
(9.0, 'assignment')
"""

from __future__ import annotations

import dataclasses
import inspect
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from otcollapse._utils import ArrayLike, check_finite, to_numpy
from otcollapse._validation import check_int
from otcollapse.exceptions import ConvergenceWarning, DenseBudgetError
from otcollapse.transport.entropic import solve_sinkhorn
from otcollapse.transport.exact import (
    ASSIGNMENT_COPIES,
    EXACT_COPIES,
    is_uniform,
    solve_assignment,
    solve_exact,
)
from otcollapse.transport.gaussian import bures_map, gaussian_w2, solve_gaussian
from otcollapse.transport.geometry import (
    DEFAULT_MAX_DENSE_BYTES,
    PointCloudCost,
    format_bytes,
)
from otcollapse.transport.gromov import solve_gromov
from otcollapse.transport.result import TransportResult
from otcollapse.transport.sliced import solve_sliced

__all__ = [
    "PointCloudCost",
    "TransportResult",
    "bures_map",
    "gaussian_w2",
    "transport_methods",
    "wasserstein",
]

Solver = Callable[..., TransportResult]


#: method name -> solver(geom, a, b, **options); adding a solver is one function and one line here
_SOLVERS: dict[str, Solver] = {
    "exact": solve_exact,
    "assignment": solve_assignment,
    "sinkhorn": solve_sinkhorn,
    "sliced": solve_sliced,
    "gaussian": solve_gaussian,
}
# Gromov–Wasserstein compares intra-space distances, so it takes the clouds, not one geometry


def transport_methods() -> tuple[str, ...]:
    """The names ``wasserstein(..., method=...)`` accepts."""
    return ("auto", *_SOLVERS, "gromov")


def _check_cloud(x: ArrayLike, what: str) -> torch.Tensor:
    if (isinstance(x, torch.Tensor) and x.is_complex()) or np.iscomplexobj(x):
        raise ValueError(
            f"{what} is complex; W2 is defined for real points (take .real, or stack the real "
            "and imaginary parts as coordinates)."
        )
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if not t.is_floating_point():
            t = t.double()
    else:
        t = torch.as_tensor(to_numpy(x, dtype=np.float64))
    if t.ndim != 2:
        raise ValueError(f"{what} has shape {tuple(t.shape)}; give a 2-D array (n_points, dim).")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{what} is empty (shape {tuple(t.shape)}); a measure needs points.")
    check_finite(t, what)
    return t


def _check_weights(w: ArrayLike | None, n: int, what: str, device: torch.device) -> torch.Tensor:
    if w is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64, device=device)
    t = torch.as_tensor(to_numpy(w, dtype=np.float64).reshape(-1), device=device)
    if t.shape[0] != n:
        raise ValueError(f"{what} has length {t.shape[0]} but its measure has {n} points.")
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} contains NaN or inf.")
    if (t < 0).any():
        raise ValueError(f"{what} must be non-negative; {int((t < 0).sum())} entries are negative.")
    total = float(t.sum())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(
            f"{what} sums to {total:.8g}, not 1; normalise it ({what} / {what}.sum())."
        )
    return t / t.sum()  # exactly (to rounding) one: the solvers compare masses to rounding


def wasserstein(
    x: ArrayLike,
    y: ArrayLike,
    *,
    a: ArrayLike | None = None,
    b: ArrayLike | None = None,
    method: str = "auto",
    max_dense_bytes: int = DEFAULT_MAX_DENSE_BYTES,
    **options: Any,
) -> TransportResult:
    """Optimal-transport cost between two empirical measures ``sum_i a_i delta_{x_i}`` and
    ``sum_j b_j delta_{y_j}``.

    $$W_2^2(\\mu, \\nu) = \\min_{\\pi \\in \\Pi(a, b)} \\sum_{ij} \\pi_{ij}\\, \\|x_i - y_j\\|^2,$$

    the *full* squared Euclidean cost (POT's convention; GeomLoss's ``p=2`` cost is half of it).

    Parameters
    ----------
    x : array-like or Tensor, shape (n, d)
    y : array-like or Tensor, shape (m, d) — or (m, d') for ``method="gromov"``
    a, b : array-like, shape (n,) and (m,), optional
        Masses, non-negative, summing to one; uniform when omitted.
    method : str
        ``"auto"`` (default): ``"assignment"`` for uniform measures of equal size (at any
        size: its sparse certified path needs O(n d) memory; chunked ``"sinkhorn"`` only when
        that path falls back to a dense matrix over ``max_dense_bytes``), else ``"exact"`` while
        the dense cost fits in ``max_dense_bytes`` and chunked ``"sinkhorn"`` beyond. The
        result's ``params["auto"]`` says what was chosen and why. Beyond the budget ``auto``
        accepts the options of both the assignment and Sinkhorn, and the solver that runs takes
        its own.
        ``"exact"`` (POT network simplex), ``"assignment"``, ``"sinkhorn"`` (entropic, see
        :func:`otcollapse.transport.entropic.solve_sinkhorn`), ``"sliced"``, ``"gaussian"``
        (Bures), ``"gromov"`` (Gromov–Wasserstein, for different dimensions).
    max_dense_bytes : int
        Memory budget for the dense (n, m) float64 matrices a solver holds at its peak (default
        2 GiB; the network simplex about five, the assignment one and a half); exact methods
        refuse larger problems with a message naming ``sinkhorn`` and ``sliced``.
    **options
        Passed to the solver (e.g. ``eps``, ``debias``, ``tol`` for Sinkhorn; ``n_projections``,
        ``seed`` for sliced; ``return_plan``, ``return_potentials``).

    Returns
    -------
    TransportResult
        ``cost``, ``distance``, ``quantity`` (what ``cost`` is), ``method``, ``params``,
        ``converged``, ``n_iter``, ``gap``, ``seconds`` and, on request, plan and potentials.

    Raises
    ------
    ValueError
        Empty or non-2-D input, NaN/inf, different dimensions (except ``gromov``), bad weights,
        an unknown method (the message lists the valid ones), a dense problem over budget.

    Examples
    --------
    >>> x = np.zeros((3, 2)); y = np.ones((3, 2))
    >>> wasserstein(x, y, method="exact").cost
    2.0

    References
    ----------
    Peyré & Cuturi, "Computational Optimal Transport", Found. Trends ML 2019.
    """
    if method not in transport_methods():
        raise ValueError(f"unknown method {method!r}; choose one of {list(transport_methods())}.")
    max_dense_bytes = check_int(max_dense_bytes, "max_dense_bytes", minimum=0)
    xt = _check_cloud(x, "x")
    yt = _check_cloud(y, "y")
    device = xt.device
    yt = yt.to(device)
    dtype = torch.promote_types(xt.dtype, yt.dtype)
    xt, yt = xt.to(dtype), yt.to(dtype)
    at = _check_weights(a, xt.shape[0], "a", device)
    bt = _check_weights(b, yt.shape[0], "b", device)
    if method != "gromov" and xt.shape[1] != yt.shape[1]:
        raise ValueError(
            f"x has dimension {xt.shape[1]} and y {yt.shape[1]}; W2 needs one space. Use "
            "method='gromov' (a different quantity), or map both to one space first "
            "(Trajectory.project, or the block's shortcut image)."
        )
    t0 = time.perf_counter()
    auto_reason = None
    if method == "gromov":
        res = solve_gromov(xt, yt, at, bt, max_dense_bytes=max_dense_bytes, **options)
    else:
        geom = PointCloudCost(xt, yt, max_dense_bytes=max_dense_bytes)
        first_options = fallback_options = options
        if method == "auto":
            method, auto_reason = _choose(geom, at, bt)
            if method == "assignment" and not geom.fits(ASSIGNMENT_COPIES):
                # chunked Sinkhorn may follow: each solver takes the options it names
                first_options, fallback_options = _split_options(options)
        exact_geom = geom
        if method in ("exact", "assignment") and dtype != torch.float64:
            # exact costs need the points in float64: a float32 shift or GEMM would round away
            # the distances inside a tight cluster (the transport.blocks module)
            exact_geom = PointCloudCost(xt.double(), yt.double(), max_dense_bytes=max_dense_bytes)
        try:
            res = _SOLVERS[method](exact_geom, at, bt, **first_options)
        except DenseBudgetError as err:
            if auto_reason is None or method != "assignment" or err.fallback is None:
                raise  # (a refusal of an explicit request, e.g. return_plan, stands)
            # the sparse path could not certify without the dense matrix, which does not fit
            method = "sinkhorn"
            auto_reason = (
                f"the assignment's sparse path fell back ({err.fallback}); its dense matrices "
                "exceed max_dense_bytes: chunked Sinkhorn"
            )
            res = _SOLVERS[method](geom, at, bt, **fallback_options)
    if auto_reason is not None:
        params = {**res.params, "auto": auto_reason}
        res = dataclasses.replace(res, params=params, seconds=time.perf_counter() - t0)
    if not res.converged:
        advice = (
            "float64 could not resolve the costs that decide it to 1e-9 (see 'Exactness on "
            "collapsed features' in docs/transport.md)"
            if res.method in ("exact", "assignment")
            else "Raise max_iter or eps (or GeomLoss's scaling), or use an exact method"
        )
        warnings.warn(
            f"{res.method} did not converge ({res.gap_kind or 'check'}: {res.gap}); "
            f"the value {res.cost:.6g} is not certified. {advice}.",
            ConvergenceWarning,
            stacklevel=2,
        )
    return res


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The options of ``auto``'s assignment and of the chunked Sinkhorn that may follow it: those
    each names; an option neither names is refused now."""
    named = {
        solver: {
            p.name
            for p in inspect.signature(_SOLVERS[solver]).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }
        for solver in ("assignment", "sinkhorn")
    }
    unknown = sorted(set(options) - named["assignment"] - named["sinkhorn"])
    if unknown:
        raise ValueError(
            f"method='auto' (assignment, or chunked Sinkhorn beyond the dense budget) takes no "
            f"option(s) {unknown}."
        )
    assignment, sinkhorn = (
        {k: v for k, v in options.items() if k in named[solver]}
        for solver in ("assignment", "sinkhorn")
    )
    return assignment, sinkhorn


def _choose(geom: PointCloudCost, a: torch.Tensor, b: torch.Tensor) -> tuple[str, str]:
    if geom.n == geom.m and is_uniform(a) and is_uniform(b):
        if geom.fits(ASSIGNMENT_COPIES):
            return "assignment", "uniform measures of equal size whose dense cost fits: assignment"
        return "assignment", (
            f"uniform measures of equal size: assignment by its sparse certified path (O(n d) "
            f"memory; its dense fallback, {format_bytes(geom.dense_bytes(ASSIGNMENT_COPIES))}, "
            "exceeds max_dense_bytes, so chunked Sinkhorn if it is needed)"
        )
    if geom.fits(EXACT_COPIES):
        return "exact", "dense cost fits: network simplex"
    return "sinkhorn", (
        f"dense matrices ({format_bytes(geom.dense_bytes(EXACT_COPIES))}) exceed max_dense_bytes "
        f"({format_bytes(geom.max_dense_bytes)}): chunked Sinkhorn"
    )
