"""The result object every transport solver returns."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from otcollapse._utils import json_safe

__all__ = ["TransportResult"]


#: the relative accuracy an exact solver certifies: ``converged`` means ``gap <= RTOL * cost``
RTOL = 1e-9


def certified_gap(cost: float, lower: float) -> float:
    """``cost - lower`` for ``W2^2`` in ``[lower, cost]`` (``lower`` floored at 0); a lower bound
    above the value is a broken bracket, and its excess counts as gap too."""
    return abs(cost - max(lower, 0.0))


@dataclasses.dataclass(frozen=True, eq=False)
class TransportResult:
    """What a transport solver computed, how, and how far to trust it.

    Attributes
    ----------
    cost : float
        The value; :attr:`quantity` says what it is. ``"W2^2"``: the squared 2-Wasserstein
        distance with the full squared Euclidean cost ``min_pi sum pi_ij ||x_i - y_j||^2``.
    quantity : str
        ``"W2^2"`` (exact, assignment), ``"W2^2 (Bures)"`` (gaussian), ``"SW2^2"`` (sliced),
        ``"GW"`` (gromov), ``"<plan, C>"`` (Sinkhorn: the transport cost of the entropic plan) or
        ``"S_eps"`` (the debiased Sinkhorn divergence).
    method : str
        The solver that actually ran (``auto`` resolves to one of them).
    params : dict
        Its parameters (for Sinkhorn ``eps`` in units of the full squared cost, the schedule,
        the backend, the dtype; for ``auto`` the reason of the choice).
    converged : bool
        False when the solver hit its iteration limit or its optimality check failed.
    n_iter : int or None
    gap : float or None
        Optimality measure: the duality gap for ``exact``, the L1 marginal error of the plan for
        Sinkhorn; None where the solver gives no certificate (see ``params["certificate"]``).
    gap_kind : str or None
    seconds : float
        Wall-clock time of the solve.
    plan : ndarray, shape (n, m), or None
        Dense plan, on request and for small problems.
    assignment : ndarray of int, shape (n,), or None
        Index form of a permutation plan: ``x_i`` is sent to ``y[assignment[i]]``.
    potentials : tuple of ndarray or None
        Dual potentials ``(f, g)`` on request, in units of the full squared cost.
    """

    cost: float
    quantity: str
    method: str
    params: dict[str, Any]
    converged: bool
    n_iter: int | None
    gap: float | None
    gap_kind: str | None
    seconds: float
    plan: np.ndarray | None = None
    assignment: np.ndarray | None = None
    potentials: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def distance(self) -> float:
        """``sqrt(cost)``: W2 for the W2 methods (a slightly negative S_eps gives 0)."""
        return math.sqrt(max(self.cost, 0.0))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe record (without the plan and potentials)."""
        return json_safe(
            {
                "cost": self.cost,
                "distance": self.distance,
                "quantity": self.quantity,
                "method": self.method,
                "params": self.params,
                "converged": self.converged,
                "n_iter": self.n_iter,
                "gap": self.gap,
                "gap_kind": self.gap_kind,
                "seconds": self.seconds,
            }
        )

    def __repr__(self) -> str:
        flag = "" if self.converged else ", NOT CONVERGED"
        return (
            f"TransportResult({self.quantity}={self.cost:.6g}, method={self.method!r}, "
            f"{self.seconds:.3g}s{flag})"
        )
