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
solves the separation problem directly (:func:`solve_ulpm_separation`, in
:mod:`otcollapse.surrogates.ulpm_separation`) through its convex form over the logits
$Z = W H^\top$,

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

from otcollapse._results import Result
from otcollapse._utils import ArrayLike, check_device, json_safe
from otcollapse.measures import Trajectory
from otcollapse.surrogates.core import _class_labels
from otcollapse.surrogates.ulpm_separation import (
    ULPMSeparation,
    _check_dim,
    solve_ulpm_separation,
)

__all__ = ["GDRecord", "ULPMSeparation", "ULPMSolution", "fit_ulpm", "solve_ulpm_separation"]


@dataclasses.dataclass(frozen=True)
class GDRecord(Result):
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


@dataclasses.dataclass(frozen=True, eq=False)
class ULPMSolution(Result):
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

    _unrecorded = (
        "steps", "W_path", "H_path", "loss", "w_sq", "h_sq", "normalized_margin",
        "logit_distance", "labels", "trajectory",
    )  # fmt: skip

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
        """JSON-safe summary: the recorded scalars per step (``steps``, the rows of :meth:`table`),
        the separation result, the gradient-descent record and the settings."""
        return {**super().to_dict(), "steps": self.table()}


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


def _min_margin(Z: torch.Tensor, own: torch.Tensor) -> float:
    r"""$\min_{i, j\ne y_i} Z_{y_i i} - Z_{ji}$."""
    g = (Z * own).sum(dim=0, keepdim=True) - Z
    return float(g.masked_fill(own, math.inf).min())


def _record_steps(n_steps: int, n_records: int) -> set[int]:
    """Step 0 and ``n_records`` log-spaced steps up to ``n_steps`` (fewer when they coincide)."""
    if n_steps == 0:
        return {0}
    grid = np.round(np.geomspace(1, n_steps, n_records)).astype(np.int64)
    return {0, *grid.tolist()}


class _Descent:
    """Gradient descent on the ULPM from a seeded start, recording the normalised iterates."""

    def __init__(
        self, labels: np.ndarray, K: int, d: int, *, init_scale: float, seed: int, z_star: Any,
        device: torch.device,
    ) -> None:  # fmt: skip
        gen = torch.Generator().manual_seed(int(seed))
        f64 = torch.float64
        scale = init_scale / math.sqrt(d)
        self.W = (torch.randn(K, d, generator=gen, dtype=f64) * scale).to(device)
        self.H = (torch.randn(labels.size, d, generator=gen, dtype=f64) * scale).to(device)
        self.own = torch.nn.functional.one_hot(torch.as_tensor(labels, device=device), K).T.bool()
        z = torch.as_tensor(z_star, dtype=f64, device=device)
        self.z_star = z / torch.linalg.norm(z)
        self.rows: list[dict[str, Any]] = []
        self.W_path: list[np.ndarray] = []
        self.H_path: list[np.ndarray] = []

    def record(self, t: int, Z: torch.Tensor) -> None:
        w_sq = float(self.W.pow(2).sum())
        h_sq = float(self.H.pow(2).sum())
        scale = math.sqrt(w_sq + h_sq)
        zn = float(torch.linalg.norm(Z))
        dist = float(torch.linalg.norm(Z / zn - self.z_star)) if zn > 0 else math.nan
        self.rows.append(
            {
                "step": t,
                "loss": float(_ce_sum(Z, self.own)),
                "w_sq": w_sq,
                "h_sq": h_sq,
                "gamma": _min_margin(Z, self.own) / (0.5 * scale**2),
                "dist": dist,
            }
        )
        self.W_path.append((self.W / scale).cpu().numpy())
        self.H_path.append((self.H / scale).cpu().numpy())

    @torch.no_grad()
    def run(self, lr: float, n_steps: int, record_at: set[int]) -> GDRecord:
        """``n_steps`` steps of size ``lr`` (fewer if the iterates become non-finite)."""
        t0 = time.perf_counter()
        finite = True
        message = f"{n_steps} steps run"
        steps_run = 0
        W_prev, H_prev = self.W, self.H
        for t in range(n_steps + 1):
            Z = self.W @ self.H.T
            if not bool(torch.isfinite(Z).all()):
                finite = False
                message = (
                    f"the iterates became non-finite at step {t}; the record describes step "
                    f"{t - 1}. Lower lr."
                )
                steps_run = t - 1
                self.W, self.H = W_prev, H_prev  # report the last finite iterate
                break
            if t in record_at:
                self.record(t, Z)
            if t == n_steps:
                break
            G = _ce_grad(Z, self.own)
            W_prev, H_prev = self.W, self.H
            self.W, self.H = self.W - lr * (G @ self.H), self.H - lr * (G.T @ self.W)
            steps_run = t + 1
        W, H, own = self.W, self.H, self.own
        Z = W @ H.T
        G = _ce_grad(Z, own)
        grad_norm = math.sqrt(float((G @ H).pow(2).sum()) + float((G.T @ W).pow(2).sum()))
        if finite and grad_norm == 0.0 and steps_run > 0:
            message += (
                "; the gradient underflowed to exactly 0 (margins beyond the float64 range of "
                "exp), so the iterates stopped moving: lower lr or init_scale"
            )
        return GDRecord(
            method="gradient-descent",
            lr=float(lr),
            n_steps=steps_run,
            loss=float(_ce_sum(Z, own)),
            grad_norm=grad_norm,
            separated=_min_margin(Z, own) > 0,
            finite=finite,
            seconds=time.perf_counter() - t0,
            message=message,
        )

    def column(self, key: str) -> np.ndarray:
        return np.array([r[key] for r in self.rows])


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
    $\theta_t/\|\theta_t\|$ converges to a KKT point of the minimum-norm separation problem (the
    module docstring), but slowly, at rate $O(1/\log t)$. That problem is also solved directly
    (:func:`solve_ulpm_separation`, nuclear-norm form, with a duality-gap certificate), and the
    recorded ``normalized_margin`` and ``logit_distance`` measure how far the iterates still are
    from its optimum: for balanced classes ($n$ per class, $d \ge K - 1$) neural collapse, of
    value $\sqrt n (K - 1)$ (Ji et al.).

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
    labels, K = _class_labels(y)
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
    dev = torch.device("cpu") if device is None else check_device(device)
    gd = _Descent(labels, K, d, init_scale=init_scale, seed=seed, z_star=sep.Z, device=dev)
    record = gd.run(lr, n_steps, _record_steps(n_steps, int(n_records)))
    steps = gd.column("step").astype(np.int64)
    settings = {
        "model": "ulpm",
        "dim": d,
        "n_classes": K,
        "n_samples": labels.size,
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
    Wp, Hp = np.stack(gd.W_path), np.stack(gd.H_path)
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
        loss=gd.column("loss"),
        w_sq=gd.column("w_sq"),
        h_sq=gd.column("h_sq"),
        normalized_margin=gd.column("gamma"),
        logit_distance=gd.column("dist"),
        separation=sep,
        labels=labels,
        record=record,
        params=settings,
        trajectory=traj,
    )
