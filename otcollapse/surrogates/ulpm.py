r"""The unconstrained layer-peeled model (ULPM): unregularised cross-entropy on free features.

Ji, Lu, Zhang, Deng & Su ("An Unconstrained Layer-Peeled Perspective on Neural Collapse", ICLR
2022) peel off the last layer and drop every regulariser: free features
$H \in \mathbb R^{N\times d}$ (row $h_i$ for sample $i$, label $y_i$) and a classifier
$W \in \mathbb R^{K\times d}$ (row $w_k$) minimise the summed cross-entropy

$$\mathcal L(W, H) = \sum_{i=1}^N \ell_{CE}(W h_i, y_i)
  = \sum_{i=1}^N \log\Big(1 + \sum_{j\ne y_i} e^{-(w_{y_i} - w_j)^\top h_i}\Big).$$

The infimum 0 is not attained: on separable data gradient descent drives the norms to infinity,
and it converges *in direction* to a KKT point of the minimum-norm separation problem

$$\min_{W, H}\; \tfrac12\|W\|_F^2 + \tfrac12\|H\|_F^2
  \quad\text{s.t.}\quad (w_{y_i} - w_j)^\top h_i \ge 1\quad\forall i,\ \forall j \ne y_i$$

(Lyu & Li 2020 for homogeneous models; applied to the ULPM by Ji et al.). Every global solution
of this problem is neural collapse (Ji et al.): with $n$ samples per class and $d \ge K - 1$,
$h_i = \bar h_{y_i}$, the class means form a simplex ETF, $w_k = \sqrt n\,\bar h_k$, every margin
equals 1, and

$$\|\bar h_k\|^2 = \frac{K-1}{K\sqrt n},\qquad \|w_k\|^2 = \frac{\sqrt n\,(K-1)}K,\qquad
  \text{value} = \sqrt n\,(K-1).$$

:func:`fit_ulpm` does both: it runs gradient descent and records the normalised iterates, and it
solves the separation problem directly through its convex form over the logits $Z = W H^\top$,

$$\min_{Z\in\mathbb R^{K\times N}} \|Z\|_* \quad\text{s.t.}\quad
  Z_{y_i i} - Z_{j i} \ge 1\quad\forall i,\ \forall j\ne y_i,$$

which has the same value because
$\min_{WH^\top = Z} \tfrac12\|W\|_F^2 + \tfrac12\|H\|_F^2 = \|Z\|_*$ whenever
$d \ge \operatorname{rank} Z$ (the factors $W = U S^{1/2}$, $H = V S^{1/2}$ of the SVD
$Z = U S V^\top$ attain it).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np
import torch

from otcollapse._utils import ArrayLike, check_device, json_safe
from otcollapse.measures import Trajectory
from otcollapse.surrogates.core import _check_labels

__all__ = ["GDRecord", "ULPMSeparation", "ULPMSolution", "fit_ulpm", "solve_ulpm_separation"]

#: singular values below this fraction of the largest one count as zero (rank of Z*)
_RANK_RTOL = 1e-9


# --------------------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True, eq=False)
class ULPMSeparation:
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
        ``value - dual_value``: the returned point is optimal to within this much.
    margins : ndarray, shape (N, K - 1)
        $(w_{y_i} - w_j)^\top h_i$ for the classes $j \ne y_i$ in increasing order.
    min_margin : float
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
    duality_gap: float
    margins: np.ndarray
    min_margin: float
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary: value, certificate, margins and the solver's state; no features."""
        return json_safe(
            {
                "value": self.value,
                "dual_value": self.dual_value,
                "duality_gap": self.duality_gap,
                "min_margin": self.min_margin,
                "kkt_residual": self.kkt_residual,
                "singular_values": self.singular_values,
                "rank": self.rank,
                "method": self.method,
                "n_iter": self.n_iter,
                "converged": self.converged,
                "rho": self.rho,
                "tol": self.tol,
                "seconds": self.seconds,
                "message": self.message,
                "W": self.W,
            }
        )


@dataclasses.dataclass(frozen=True)
class GDRecord:
    """What gradient descent did.

    Attributes
    ----------
    method : str
        ``"gradient-descent"`` (constant step, full batch, simultaneous updates of ``W`` and ``H``).
    lr : float
    n_steps : int
        Steps run.
    loss : float
        $\\mathcal L$ at the last iterate.
    grad_norm : float
        $\\|\\nabla\\mathcal L\\|_2$ at the last iterate (it tends to 0 like the loss; there is no
        finite minimiser, so there is no convergence test).
    separated : bool
        Every margin $(w_{y_i} - w_j)^\\top h_i$ of the last iterate is positive.
    finite : bool
        The iterates stayed finite.
    seconds : float
    message : str
    """

    method: str
    lr: float
    n_steps: int
    loss: float
    grad_norm: float
    separated: bool
    finite: bool
    seconds: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary of the record."""
        return json_safe(dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True, eq=False)
class ULPMSolution:
    r"""Gradient descent on the ULPM and the separation problem it converges to in direction.

    The iterates $\theta_t = (W_t, H_t)$ are recorded at ``steps`` and normalised by
    $\|\theta_t\| = (\|W_t\|_F^2 + \|H_t\|_F^2)^{1/2}$; that norm grows only logarithmically in
    $t$, so the direction moves toward the separation optimum slowly (at rate
    $O(1/\log t)$).

    Attributes
    ----------
    steps : ndarray of int, shape (T,)
        The recorded step numbers (``0`` and log-spaced steps up to ``n_steps``).
    W_path : ndarray, shape (T, K, d)
        $W_t / \|\theta_t\|$.
    H_path : ndarray, shape (T, N, d)
        $H_t / \|\theta_t\|$ (also the layers of ``trajectory``).
    loss : ndarray, shape (T,)
        $\mathcal L(\theta_t)$.
    w_sq, h_sq : ndarray, shape (T,)
        $\|W_t\|_F^2$ and $\|H_t\|_F^2$ (unnormalised); their difference is conserved by the
        gradient flow and changes by $O(\text{lr}^2)$ per step under gradient descent.
    normalized_margin : ndarray, shape (T,)
        $\gamma_t = \min_{i, j\ne y_i} (w_{y_i} - w_j)^\top h_i \,/\, (\tfrac12\|\theta_t\|^2)$.
        Scale-invariant, never above ``1 / separation.value``, and equal to it exactly at the
        direction of a global separation optimum.
    logit_distance : ndarray, shape (T,)
        $\|Z_t/\|Z_t\|_F - Z^*/\|Z^*\|_F\|_F$ with $Z_t = W_t H_t^\top$ and $Z^*$ the optimal
        logits: a distance to the separation optimum that ignores the rotation
        $(W, H) \mapsto (WQ, HQ)$.
    separation : ULPMSeparation
    labels : ndarray of int, shape (N,)
    record : GDRecord
    params : dict
    trajectory : Trajectory
        One "layer" per recorded step: the normalised features $H_t/\|\theta_t\|$ over training
        time (not depth), with the last iterate's normalised classifier. ``collapse_profile``
        then reports the collapse metrics over time; its PFC statistics read as monotonicity in
        $t$.
    """

    steps: np.ndarray
    W_path: np.ndarray
    H_path: np.ndarray
    loss: np.ndarray
    w_sq: np.ndarray
    h_sq: np.ndarray
    normalized_margin: np.ndarray
    logit_distance: np.ndarray
    separation: ULPMSeparation
    labels: np.ndarray
    record: GDRecord
    params: dict[str, Any]
    trajectory: Trajectory

    @property
    def norm_gap(self) -> np.ndarray:
        """$\\|W_t\\|_F^2 - \\|H_t\\|_F^2$ at the recorded steps."""
        return self.w_sq - self.h_sq

    @property
    def value(self) -> float:
        """The separation problem's optimal value."""
        return self.separation.value

    @property
    def margins(self) -> np.ndarray:
        """The separation optimum's margins, shape (N, K - 1) (see :class:`ULPMSeparation`)."""
        return self.separation.margins

    def table(self) -> list[dict[str, Any]]:
        """One JSON-safe row per recorded step."""
        return [
            json_safe(
                {
                    "step": int(t),
                    "loss": self.loss[i],
                    "w_sq": self.w_sq[i],
                    "h_sq": self.h_sq[i],
                    "normalized_margin": self.normalized_margin[i],
                    "logit_distance": self.logit_distance[i],
                }
            )
            for i, t in enumerate(self.steps)
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary: the recorded scalars per step, the separation result, the records."""
        return json_safe(
            {
                "steps": self.table(),
                "separation": self.separation.to_dict(),
                "record": self.record.to_dict(),
                "params": self.params,
            }
        )


# --------------------------------------------------------------------------- separation problem
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
    labels, K = _check_labels(y)
    d = _check_dim(dim, K)
    if not (rho > 0) or not math.isfinite(rho):
        raise ValueError(f"rho must be a positive finite number; got {rho!r}.")
    if not (tol > 0):
        raise ValueError(f"tol must be positive; got {tol!r}.")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1; got {max_iter!r}.")
    t0 = time.perf_counter()
    N = labels.size
    X = np.zeros((K, N))
    U = np.zeros((K, N))
    converged = False
    n_iter = 0
    value = dual = gap = math.inf
    for n_iter in range(1, int(max_iter) + 1):
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
    X = X - X.mean(axis=0, keepdims=True)
    lam, dual = _dual_point(U, labels, rho)
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
    Z = W @ H.T
    value = 0.5 * float((W**2).sum() + (H**2).sum())
    margins = _margins(Z, labels)
    A = _adjoint(lam, labels)
    cols = np.arange(N)
    g = Z[labels, cols][None, :] - Z  # (K, N); the own-class row is 0 and its multiplier 0
    lam_sum = float(lam.sum())
    kkt = max(
        float(np.linalg.norm(W - A @ H) / max(np.linalg.norm(W), 1e-300)),
        float(np.linalg.norm(H - A.T @ W) / max(np.linalg.norm(H), 1e-300)),
        float((lam * np.abs(g - 1.0)).sum() / max(lam_sum, 1e-300)),
    )
    multipliers = lam.T.copy()
    message = (
        "duality-gap tolerance met"
        if converged
        else f"max_iter reached with relative duality gap {gap / max(1.0, value):.2e}"
    )
    settings = {"model": "ulpm-separation", "dim": d, "n_classes": K, "n_samples": N}
    traj = Trajectory.from_arrays(
        [H], labels=labels, names=["H*"], classifier=(W, None), metadata=settings
    )
    return ULPMSeparation(
        W=W,
        H=H,
        Z=Z,
        labels=labels,
        value=value,
        dual_value=dual,
        duality_gap=value - dual,
        margins=margins,
        min_margin=float(margins.min()),
        multipliers=multipliers,
        kkt_residual=kkt,
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


# --------------------------------------------------------------------------- gradient descent
def _ce_sum(Z: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    r"""$\sum_i \log(1 + \sum_{j\ne y_i} e^{-(Z_{y_i i} - Z_{ji})})$, accurate for tiny losses."""
    zy = (Z * own).sum(dim=0, keepdim=True)
    neg = (Z - zy).masked_fill(own, -math.inf)
    return torch.nn.functional.softplus(torch.logsumexp(neg, dim=0)).sum()


def _ce_grad(Z: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    r"""$\partial\mathcal L/\partial Z = \operatorname{softmax}(Z) - Y$, the own-class entry written
    as $-\sum_{j\ne y_i} p_{ji}$ so that tiny probabilities are not lost against 1."""
    P = torch.softmax(Z, dim=0).masked_fill(own, 0.0)
    return P - own * P.sum(dim=0, keepdim=True)


def fit_ulpm(
    y: ArrayLike,
    *,
    dim: int | None = None,
    lr: float = 0.5,
    n_steps: int = 10000,
    n_records: int = 25,
    init_scale: float = 0.1,
    seed: int = 0,
    rho: float = 1.0,
    tol: float = 1e-10,
    max_iter: int = 20000,
    device: Any = None,
) -> ULPMSolution:
    r"""Fit the unconstrained layer-peeled model: gradient descent and the separation problem.

    Gradient descent with a constant step on the unregularised cross-entropy

    $$\mathcal L(W, H) = \sum_{i=1}^N \log\Big(1 + \sum_{j\ne y_i}
      e^{-(w_{y_i} - w_j)^\top h_i}\Big),\qquad
      W \leftarrow W - \eta\, G H,\quad H \leftarrow H - \eta\, G^\top W,$$

    with $G = \operatorname{softmax}(WH^\top) - Y \in \mathbb R^{K\times N}$, run from a seeded
    random start; the iterates are recorded at ``0`` and at log-spaced steps, normalised by
    $\|\theta_t\| = (\|W_t\|_F^2 + \|H_t\|_F^2)^{1/2}$. The gradient flow conserves
    $\|W\|_F^2 - \|H\|_F^2$ (gradient descent changes it by
    $\eta^2(\|GH\|_F^2 - \|G^\top W\|_F^2)$ per step), and once the data are separated the loss
    decays like $1/t$ while $\|\theta_t\|^2$ grows only like $\log t$: the direction
    $\theta_t/\|\theta_t\|$ converges to a KKT point of the separation problem

    $$\min\ \tfrac12\|W\|_F^2 + \tfrac12\|H\|_F^2\quad\text{s.t.}\quad
      (w_{y_i} - w_j)^\top h_i \ge 1,$$

    but slowly, at rate $O(1/\log t)$. That problem is also solved directly
    (:func:`solve_ulpm_separation`, nuclear-norm form, with a duality-gap certificate), and the
    recorded ``normalized_margin`` and ``logit_distance`` measure how far the iterates still are
    from its optimum. For balanced classes ($n$ per class, $d \ge K - 1$) the optimum is neural
    collapse: value $\sqrt n (K - 1)$, simplex-ETF class means with
    $\|h_i\|^2 = \frac{K-1}{K\sqrt n}$, $w_k = \sqrt n\,\bar h_k$, every margin 1 (Ji et al.).

    Parameters
    ----------
    y : array-like of int, shape (N,)
        Labels ``0..K-1``, every class present.
    dim : int, optional
        Feature dimension ``d >= K - 1`` (default ``K``).
    lr : float
        Constant step size $\eta > 0$ (the loss is a sum over samples, not a mean).
    n_steps : int
        Gradient-descent steps (``>= 0``; 0 records the starting point only).
    n_records : int
        Log-spaced steps to record besides step 0 (fewer when ``n_steps`` is small).
    init_scale : float
        Entries of $W$ and $H$ start i.i.d. $N(0, \text{init\_scale}^2/d)$.
    seed : int
        Seeds the start.
    rho, tol, max_iter : float, float, int
        Settings of the separation solver (:func:`solve_ulpm_separation`).
    device : torch device, optional
        Where gradient descent runs (default CPU); it runs in float64.

    Returns
    -------
    ULPMSolution
        ``trajectory`` holds the normalised features over training time, ready for
        ``collapse_profile``; ``separation`` the directly solved optimum.

    Raises
    ------
    ValueError
        Bad labels, ``dim < K - 1``, ``lr`` or ``init_scale`` not positive, negative ``n_steps``,
        ``n_records < 1``, bad separation-solver settings.

    Examples
    --------
    >>> import numpy as np
    >>> sol = fit_ulpm(np.repeat(np.arange(3), 2), n_steps=2000)
    >>> round(sol.value, 7)
    2.8284271
    >>> bool(sol.normalized_margin[-1] <= 1 / sol.value)
    True

    References
    ----------
    Ji, Lu, Zhang, Deng & Su, "An Unconstrained Layer-Peeled Perspective on Neural Collapse",
    ICLR 2022. Lyu & Li, "Gradient Descent Maximizes the Margin of Homogeneous Neural Networks",
    ICLR 2020. Soudry et al., "The Implicit Bias of Gradient Descent on Separable Data", JMLR 2018.
    """
    labels, K = _check_labels(y)
    d = _check_dim(dim, K)
    if not (lr > 0) or not math.isfinite(lr):
        raise ValueError(f"lr must be a positive finite number; got {lr!r}.")
    if not (init_scale > 0) or not math.isfinite(init_scale):
        raise ValueError(f"init_scale must be a positive finite number; got {init_scale!r}.")
    if int(n_steps) != n_steps or n_steps < 0:
        raise ValueError(f"n_steps must be an integer >= 0; got {n_steps!r}.")
    if int(n_records) != n_records or n_records < 1:
        raise ValueError(f"n_records must be an integer >= 1; got {n_records!r}.")
    n_steps = int(n_steps)
    sep = solve_ulpm_separation(labels, dim=d, rho=rho, tol=tol, max_iter=max_iter)

    N = labels.size
    dev = torch.device("cpu") if device is None else check_device(device)
    gen = torch.Generator().manual_seed(int(seed))
    f64 = torch.float64
    W = (torch.randn(K, d, generator=gen, dtype=f64) * (init_scale / math.sqrt(d))).to(dev)
    H = (torch.randn(N, d, generator=gen, dtype=f64) * (init_scale / math.sqrt(d))).to(dev)
    yt = torch.as_tensor(labels, device=dev)
    own = torch.nn.functional.one_hot(yt, K).T.bool()  # (K, N)
    z_star = torch.as_tensor(sep.Z, dtype=f64, device=dev)
    z_star = z_star / torch.linalg.norm(z_star)
    if n_steps > 0:
        grid = np.geomspace(1, n_steps, int(n_records))
        record_at = np.unique(np.concatenate([[0], np.round(grid).astype(np.int64)]))
    else:
        record_at = np.array([0], dtype=np.int64)
    rec_set = set(record_at.tolist())

    rows: list[dict[str, Any]] = []
    W_path, H_path = [], []

    def record(t: int, Z: torch.Tensor) -> None:
        w_sq = float(W.pow(2).sum())
        h_sq = float(H.pow(2).sum())
        scale = math.sqrt(w_sq + h_sq)
        g = (Z * own).sum(dim=0, keepdim=True) - Z
        min_margin = float(g.masked_fill(own, math.inf).min())
        zn = float(torch.linalg.norm(Z))
        dist = float(torch.linalg.norm(Z / zn - z_star)) if zn > 0 else math.nan
        rows.append(
            {
                "step": t,
                "loss": float(_ce_sum(Z, own)),
                "w_sq": w_sq,
                "h_sq": h_sq,
                "gamma": min_margin / (0.5 * scale**2),
                "dist": dist,
            }
        )
        W_path.append((W / scale).cpu().numpy())
        H_path.append((H / scale).cpu().numpy())

    t0 = time.perf_counter()
    finite = True
    message = f"{n_steps} steps run"
    steps_run = 0
    W_prev, H_prev = W, H
    with torch.no_grad():
        for t in range(n_steps + 1):
            Z = W @ H.T
            if not bool(torch.isfinite(Z).all()):
                finite = False
                message = (
                    f"the iterates became non-finite at step {t}; the record describes step "
                    f"{t - 1}. Lower lr."
                )
                steps_run = t - 1
                break
            if t in rec_set:
                record(t, Z)
            if t == n_steps:
                break
            G = _ce_grad(Z, own)
            W_prev, H_prev = W, H
            W, H = W - lr * (G @ H), H - lr * (G.T @ W)
            steps_run = t + 1
        if not finite:  # report the last finite iterate
            W, H = W_prev, H_prev
        Z = W @ H.T
        G = _ce_grad(Z, own)
        grad_norm = math.sqrt(float((G @ H).pow(2).sum()) + float((G.T @ W).pow(2).sum()))
        final_loss = float(_ce_sum(Z, own))
        g = (Z * own).sum(dim=0, keepdim=True) - Z
        separated = bool(g.masked_fill(own, math.inf).min() > 0)
    if finite and grad_norm == 0.0 and steps_run > 0:
        message += (
            "; the gradient underflowed to exactly 0 (margins beyond the float64 range of "
            "exp), so the iterates stopped moving: lower lr or init_scale"
        )
    gd = GDRecord(
        method="gradient-descent",
        lr=float(lr),
        n_steps=steps_run,
        loss=final_loss,
        grad_norm=grad_norm,
        separated=separated,
        finite=finite,
        seconds=time.perf_counter() - t0,
        message=message,
    )
    steps = np.array([r["step"] for r in rows], dtype=np.int64)
    settings = {
        "model": "ulpm",
        "dim": d,
        "n_classes": K,
        "n_samples": N,
        "lr": float(lr),
        "n_steps": n_steps,
        "n_records": int(n_records),
        "init_scale": float(init_scale),
        "seed": int(seed),
        "rho": float(rho),
        "tol": float(tol),
        "max_iter": int(max_iter),
        "axis": "training time: layer t is the normalised feature iterate H_t / ||theta_t||",
        "steps": steps.tolist(),
    }
    Wp = np.stack(W_path)
    Hp = np.stack(H_path)
    traj = Trajectory.from_arrays(
        list(Hp),
        labels=labels,
        names=[f"t={t}" for t in steps],
        classifier=(Wp[-1], None),
        metadata=settings,
    )
    return ULPMSolution(
        steps=steps,
        W_path=Wp,
        H_path=Hp,
        loss=np.array([r["loss"] for r in rows]),
        w_sq=np.array([r["w_sq"] for r in rows]),
        h_sq=np.array([r["h_sq"] for r in rows]),
        normalized_margin=np.array([r["gamma"] for r in rows]),
        logit_distance=np.array([r["dist"] for r in rows]),
        separation=sep,
        labels=labels,
        record=gd,
        params=settings,
        trajectory=traj,
    )
