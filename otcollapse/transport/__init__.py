"""Transport between two empirical measures: one front door, a registry of solvers behind it.

>>> import numpy as np
>>> from otcollapse.transport import wasserstein
>>> x = np.random.default_rng(0).normal(size=(100, 3))
>>> res = wasserstein(x, x + [1.0, 2.0, 2.0])     # method="auto" -> "assignment"
>>> round(res.cost, 10), res.method
(9.0, 'assignment')
"""

from __future__ import annotations

from typing import Any

from otcollapse._utils import ArrayLike
from otcollapse.transport.gaussian import bures_map, gaussian_w2
from otcollapse.transport.geometry import DEFAULT_MAX_DENSE_BYTES, PointCloudCost
from otcollapse.transport.options import (
    AssignmentOptions,
    ExactOptions,
    GaussianOptions,
    GromovOptions,
    SinkhornOptions,
    SlicedOptions,
)
from otcollapse.transport.result import TransportResult
from otcollapse.transport.spec import TransportSpec, transport_methods

__all__ = [
    "AssignmentOptions",
    "ExactOptions",
    "GaussianOptions",
    "GromovOptions",
    "PointCloudCost",
    "SinkhornOptions",
    "SlicedOptions",
    "TransportResult",
    "TransportSpec",
    "bures_map",
    "gaussian_w2",
    "transport_methods",
    "wasserstein",
]


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
        result's ``params["auto"]`` says what was chosen and why. ``auto`` accepts the options
        of every solver it may route to (assignment, exact, sinkhorn) at every size; the solver
        that runs takes its own, and ``params["unused_options"]`` lists the others.
        ``"exact"`` (POT network simplex), ``"assignment"``, ``"sinkhorn"`` (entropic, see
        :func:`otcollapse.transport.entropic.solve_sinkhorn`), ``"sliced"``, ``"gaussian"``
        (Bures), ``"gromov"`` (Gromov–Wasserstein, for different dimensions).
    max_dense_bytes : int
        Memory budget for the dense (n, m) float64 matrices a solver holds at its peak (default
        2 GiB; the network simplex about five, the assignment one and a half); exact methods
        refuse larger problems with a message naming ``sinkhorn`` and ``sliced``.
    **options
        The solver's options, checked by its typed options class
        (:mod:`otcollapse.transport.options`: e.g. ``eps``, ``debias``, ``tol``, ``max_iter`` for
        Sinkhorn; ``n_projections``, ``seed`` for sliced; ``return_plan``,
        ``return_potentials``). An unknown name, a wrong type or an option of another solver is
        a ValueError/TypeError naming the valid ones. Analyses take the same as
        ``transport=TransportSpec.create(method, **options)``.

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
    spec = TransportSpec.create(method, max_dense_bytes=max_dense_bytes, **options)
    return spec.solve(x, y, a, b, validate=True, stacklevel=3)
