r"""The ULPM's minimum-norm separation problem, solved through its nuclear-norm form.

Gradient descent on the unconstrained layer-peeled model (:mod:`otcollapse.surrogates.ulpm`)
converges in direction to a KKT point of

$$\min_{W, H}\; \tfrac12\|W\|_F^2 + \tfrac12\|H\|_F^2
  \quad\text{s.t.}\quad (w_{y_i} - w_j)^\top h_i \ge 1\quad\forall i,\ \forall j \ne y_i ,$$

which has the value of the convex problem over the logits $Z = W H^\top$,

$$\min_{Z\in\mathbb R^{K\times N}} \|Z\|_* \quad\text{s.t.}\quad
  Z_{y_i i} - Z_{j i} \ge 1\quad\forall i,\ \forall j\ne y_i,$$

because $\min_{WH^\top = Z} \tfrac12\|W\|_F^2 + \tfrac12\|H\|_F^2 = \|Z\|_*$ whenever
$d \ge \operatorname{rank} Z$ (the factors $W = U S^{1/2}$, $H = V S^{1/2}$ of the SVD
$Z = U S V^\top$ attain it). :func:`solve_ulpm_separation` solves the latter by ADMM and certifies
the result by a dual point.

References
----------
Ji, Lu, Zhang, Deng & Su, "An Unconstrained Layer-Peeled Perspective on Neural Collapse", ICLR
2022. Boyd et al., "Distributed Optimization and Statistical Learning via the Alternating
Direction Method of Multipliers", 2011.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from otcollapse._results import Result
from otcollapse._utils import ArrayLike
from otcollapse.measures import Trajectory
from otcollapse.surrogates.core import _class_labels

__all__ = ["ULPMSeparation", "solve_ulpm_separation"]

#: singular values below this fraction of the largest one count as zero (rank of Z*)
_RANK_RTOL = 1e-9


# --------------------------------------------------------------------------- result
@dataclasses.dataclass(frozen=True, eq=False)
class ULPMSeparation(Result):
    r"""The solution of the ULPM's minimum-norm separation problem.

    $$\min_{W, H}\; \tfrac12\|W\|_F^2 + \tfrac12\|H\|_F^2 \quad\text{s.t.}\quad
      (w_{y_i} - w_j)^\top h_i \ge 1\ \ \forall i,\ j \ne y_i,$$

    solved as $\min \|Z\|_*$ over the logits $Z = W H^\top$ under the same margin constraints.

    Attributes
    ----------
    W : ndarray, shape (K, d)
        $U S^{1/2}$ from the SVD $Z = U S V^\top$, padded with zero columns to ``d``.
    H : ndarray, shape (N, d)
        $V S^{1/2}$, one row per sample, padded likewise.
    Z : ndarray, shape (K, N)
        The optimal logits $W H^\top$ (centred over classes: $\mathbf 1^\top Z = 0$).
    labels : ndarray of int, shape (N,)
    value : float
        $\|Z\|_* = \tfrac12\|W\|_F^2 + \tfrac12\|H\|_F^2$ at the returned point.
    dual_value : float
        The value of a feasible point of the dual problem
        $\max_{\Lambda\ge 0} \sum_{i,j}\lambda_{ij}$ s.t. $\|\mathcal A^*(\Lambda)\|_{op} \le 1$;
        a lower bound on the optimum.
    duality_gap : float
        ``value - dual_value``: the returned point is optimal to within this much (derived).
    margins : ndarray, shape (N, K - 1)
        $(w_{y_i} - w_j)^\top h_i$ for the classes $j \ne y_i$ in increasing order.
    min_margin : float
        The smallest of ``margins`` (derived).
    multipliers : ndarray, shape (N, K)
        The KKT multipliers $\lambda_{ij} \ge 0$ (zero at $j = y_i$), from the dual point.
    kkt_residual : float
        The largest of $\|W - \mathcal A^*(\Lambda) H\|_F/\|W\|_F$,
        $\|H - \mathcal A^*(\Lambda)^\top W\|_F/\|H\|_F$ and
        $\sum\lambda_{ij}|g_{ij} - 1| / \sum\lambda_{ij}$ ($g$ the margins), where column $i$ of
        $\mathcal A^*(\Lambda) \in \mathbb R^{K\times N}$ is $\sum_{j\ne y_i}\lambda_{ij}(e_{y_i} - e_j)$.
    singular_values : ndarray
        Of $Z$, in decreasing order.
    rank : int
        Singular values above ``1e-9`` times the largest.
    method : str
        ``"admm-nuclear-norm"``.
    n_iter : int
    converged : bool
        ``duality_gap <= tol * max(1, value)``.
    rho, tol : float
        ADMM penalty and the relative duality-gap tolerance.
    seconds : float
    message : str
    trajectory : Trajectory
        One layer, ``H``, with the labels and the classifier ``(W, None)``.
    """

    W: np.ndarray
    H: np.ndarray
    Z: np.ndarray
    labels: np.ndarray
    value: float
    dual_value: float
    margins: np.ndarray
    multipliers: np.ndarray
    kkt_residual: float
    singular_values: np.ndarray
    rank: int
    method: str
    n_iter: int
    converged: bool
    rho: float
    tol: float
    seconds: float
    message: str
    trajectory: Trajectory

    _derived = ("duality_gap", "min_margin")
    _unrecorded = ("H", "Z", "labels", "margins", "multipliers", "trajectory")

    @property
    def duality_gap(self) -> float:
        """``value - dual_value``: the returned point is optimal to within this much."""
        return self.value - self.dual_value

    @property
    def min_margin(self) -> float:
        r"""The smallest margin $(w_{y_i} - w_j)^\top h_i$."""
        return float(self.margins.min())


# --------------------------------------------------------------------------- solver
def _project_margins(V: np.ndarray, y: np.ndarray) -> np.ndarray:
    r"""Euclidean projection of every column $v$ of ``V`` onto $\{z: z_k - z_j \ge 1, j\ne k\}$.

    With $k = y_i$ the projection is $z_k = t$, $z_j = \min(v_j, t - 1)$, where $t$ solves
    $t - v_k = \sum_{j\ne k}\max(0, v_j + 1 - t)$ (an increasing piecewise-linear equation,
    solved exactly by sorting the breakpoints $v_j + 1$).
    """
    K, N = V.shape
    cols = np.arange(N)
    vk = V[y, cols]
    b = V + 1.0
    b[y, cols] = -np.inf
    b = -np.sort(-b, axis=0)  # breakpoints in decreasing order; the own class last (-inf)
    b = b[: K - 1]
    # t_m: the root when the m largest breakpoints are active, m = 0..K-1
    csum = np.vstack([np.zeros((1, N)), np.cumsum(b, axis=0)])
    m = np.arange(K)[:, None]
    t = (vk[None, :] + csum) / (m + 1.0)
    upper = np.vstack([np.full((1, N), np.inf), b])  # t_m <= b[m-1]
    lower = np.vstack([b, np.full((1, N), -np.inf)])  # t_m >= b[m]
    ok = (t >= lower) & (t <= upper)
    first = np.argmax(ok, axis=0)
    tt = t[first, cols]
    Z = np.minimum(V, tt[None, :] - 1.0)
    Z[y, cols] = tt
    return Z


def _svt(V: np.ndarray, tau: float) -> np.ndarray:
    u, s, vt = np.linalg.svd(V, full_matrices=False)
    return (u * np.maximum(s - tau, 0.0)) @ vt


def _adjoint(lam: np.ndarray, y: np.ndarray) -> np.ndarray:
    r"""$\mathcal A^*(\Lambda)$, column $i$: $\sum_{j\ne y_i}\lambda_{ij}(e_{y_i} - e_j)$; ``lam`` is (K, N)."""
    cols = np.arange(lam.shape[1])
    out = -lam
    out[y, cols] = lam.sum(axis=0)
    return out


def _margins(Z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N, K-1): ``Z[y_i, i] - Z[j, i]`` for ``j != y_i`` in increasing ``j``."""
    K, N = Z.shape
    cols = np.arange(N)
    g = Z[y, cols][None, :] - Z
    keep = np.ones((K, N), dtype=bool)
    keep[y, cols] = False
    return g.T[keep.T].reshape(N, K - 1)


def _dual_point(U: np.ndarray, y: np.ndarray, rho: float) -> tuple[np.ndarray, float]:
    """A feasible dual point from ADMM's scaled multiplier: (Λ as (K, N), its dual value)."""
    lam = np.maximum(rho * U, 0.0)
    lam[y, np.arange(U.shape[1])] = 0.0
    op = float(np.linalg.norm(_adjoint(lam, y), 2))
    lam = lam / max(1.0, op)
    return lam, float(lam.sum())


def _admm(
    labels: np.ndarray, K: int, rho: float, tol: float, max_iter: int
) -> tuple[np.ndarray, np.ndarray, int, bool, float]:
    """ADMM on the splitting $Z = X$: (the feasible $X$ centred over the classes, the scaled
    multiplier $U$, iterations, converged, the last duality gap checked)."""
    N = labels.size
    X = np.zeros((K, N))
    U = np.zeros((K, N))
    converged = False
    n_iter = 0
    gap = math.inf
    for n_iter in range(1, max_iter + 1):
        Zs = _svt(X - U, 1.0 / rho)
        X = _project_margins(Zs + U, labels)
        U = U + Zs - X
        if n_iter % 10 == 0 or n_iter == max_iter:
            Xc = X - X.mean(axis=0, keepdims=True)
            value = float(np.linalg.norm(Xc, "nuc"))
            _, dual = _dual_point(U, labels, rho)
            gap = value - dual
            if gap <= tol * max(1.0, value):
                converged = True
                break
    return X - X.mean(axis=0, keepdims=True), U, n_iter, converged, gap


def _factor(X: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    r"""$W = U S^{1/2}$, $H = V S^{1/2}$ from the SVD $X = U S V^\top$, padded with zero columns to
    ``d``; with the singular values and the rank."""
    K, N = X.shape
    u, s, vt = np.linalg.svd(X, full_matrices=False)
    rank = int(np.sum(s > _RANK_RTOL * s[0])) if s.size and s[0] > 0 else 0
    if rank > d:
        raise ValueError(
            f"the optimal logits have rank {rank} > dim = {d}; the nuclear-norm form is exact "
            f"only for dim >= rank. Pass dim >= {rank}."
        )
    root = np.sqrt(s[:rank])
    W = np.zeros((K, d))
    H = np.zeros((N, d))
    W[:, :rank] = u[:, :rank] * root
    H[:, :rank] = vt[:rank].T * root
    return W, H, s, rank


def _kkt_residual(W: np.ndarray, H: np.ndarray, lam: np.ndarray, labels: np.ndarray) -> float:
    """The largest relative violation of the KKT conditions (see :class:`ULPMSeparation`)."""
    Z = W @ H.T
    A = _adjoint(lam, labels)
    g = Z[labels, np.arange(labels.size)][None, :] - Z  # (K, N); own-class row 0, multiplier 0
    return max(
        float(np.linalg.norm(W - A @ H) / max(np.linalg.norm(W), 1e-300)),
        float(np.linalg.norm(H - A.T @ W) / max(np.linalg.norm(H), 1e-300)),
        float((lam * np.abs(g - 1.0)).sum() / max(float(lam.sum()), 1e-300)),
    )


def solve_ulpm_separation(
    y: ArrayLike,
    *,
    dim: int | None = None,
    rho: float = 1.0,
    tol: float = 1e-10,
    max_iter: int = 20000,
) -> ULPMSeparation:
    r"""Solve the ULPM's minimum-norm separation problem through its nuclear-norm form.

    $$\min_{W, H}\; \tfrac12\|W\|_F^2 + \tfrac12\|H\|_F^2 \ \text{s.t.}\ (w_{y_i} - w_j)^\top h_i
      \ge 1 \quad=\quad \min_Z \|Z\|_* \ \text{s.t.}\ Z_{y_i i} - Z_{ji} \ge 1,$$

    solved by ADMM on the splitting $Z = X$ ($Z$-step: singular-value soft-thresholding at
    $1/\rho$; $X$-step: the exact projection onto the margin polyhedron, column by column), and
    certified by a dual point: from ADMM's multiplier $\Lambda\ge0$, scaled so that
    $\|\mathcal A^*(\Lambda)\|_{op}\le 1$, weak duality gives $\sum\lambda_{ij} \le$ optimum
    $\le \|X\|_*$. It stops when the gap is below ``tol * max(1, value)``. The feasible $X$ is
    centred over the classes (which keeps it feasible and does not raise $\|X\|_*$), so its rank
    is at most $K - 1$, and factored as $W = U S^{1/2}$, $H = V S^{1/2}$.

    Parameters
    ----------
    y : array-like of int, shape (N,)
        Labels ``0..K-1``, every class present (classes may be unbalanced).
    dim : int, optional
        Feature dimension ``d >= K - 1`` of the returned factors (default ``K``).
    rho : float
        ADMM penalty (> 0).
    tol : float
        Relative duality-gap tolerance (> 0).
    max_iter : int
        ADMM iteration cap; reaching it gives ``converged=False`` (the gap says how far off).

    Returns
    -------
    ULPMSeparation

    Raises
    ------
    ValueError
        Bad labels, ``dim < K - 1``, ``rho`` or ``tol`` not positive, ``max_iter < 1``.

    Examples
    --------
    >>> import numpy as np
    >>> sep = solve_ulpm_separation(np.repeat(np.arange(3), 2))
    >>> round(sep.value, 7), round(sep.min_margin, 9)      # sqrt(2) * (3 - 1)
    (2.8284271, 1.0)

    References
    ----------
    Ji, Lu, Zhang, Deng & Su, "An Unconstrained Layer-Peeled Perspective on Neural Collapse",
    ICLR 2022. Boyd et al., "Distributed Optimization and Statistical Learning via the
    Alternating Direction Method of Multipliers", 2011. Recht, Fazel & Parrilo, "Guaranteed
    Minimum-Rank Solutions of Linear Matrix Equations via Nuclear Norm Minimization", 2010.
    """
    labels, K = _class_labels(y)
    d = _check_dim(dim, K)
    if not (rho > 0) or not math.isfinite(rho):
        raise ValueError(f"rho must be a positive finite number; got {rho!r}.")
    if not (tol > 0):
        raise ValueError(f"tol must be positive; got {tol!r}.")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1; got {max_iter!r}.")
    t0 = time.perf_counter()
    X, U, n_iter, converged, gap = _admm(labels, K, rho, tol, int(max_iter))
    lam, dual = _dual_point(U, labels, rho)
    W, H, s, rank = _factor(X, d)
    value = 0.5 * float((W**2).sum() + (H**2).sum())
    message = (
        "duality-gap tolerance met"
        if converged
        else f"max_iter reached with relative duality gap {gap / max(1.0, value):.2e}"
    )
    settings = {"model": "ulpm-separation", "dim": d, "n_classes": K, "n_samples": labels.size}
    traj = Trajectory.from_arrays(
        [H], labels=labels, names=["H*"], classifier=(W, None), metadata=settings
    )
    Z = W @ H.T
    return ULPMSeparation(
        W=W,
        H=H,
        Z=Z,
        labels=labels,
        value=value,
        dual_value=dual,
        margins=_margins(Z, labels),
        multipliers=lam.T.copy(),
        kkt_residual=_kkt_residual(W, H, lam, labels),
        singular_values=s,
        rank=rank,
        method="admm-nuclear-norm",
        n_iter=n_iter,
        converged=converged,
        rho=float(rho),
        tol=float(tol),
        seconds=time.perf_counter() - t0,
        message=message,
        trajectory=traj,
    )


def _check_dim(dim: int | None, K: int) -> int:
    d = K if dim is None else int(dim)
    if dim is not None and d != dim:
        raise ValueError(f"dim must be an integer; got {dim!r}.")
    if d < max(1, K - 1):
        raise ValueError(
            f"dim must be >= K - 1 = {K - 1} (the separation optimum has rank K - 1); got {dim}."
        )
    return d
