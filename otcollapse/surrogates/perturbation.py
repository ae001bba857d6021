r"""The perturbation model of Tirer, Huang & Niles-Weed: a one-step, MSE relative of the MUFM.

The model keeps the features near a given matrix $H_0$ (for example a shallower layer's features).
In the paper's own normalisation (parameters written here with a superscript TB; $K$ classes,
$N$ samples, $n = N/K$ per class when balanced),

$$\min_{W, H}\; \frac1{2N}\|W H - Y\|_F^2 + \frac{\lambda_W^{TB}}{2K}\|W\|_F^2
  + \frac{\lambda_H^{TB}}{2N}\|H\|_F^2 + \frac{\beta^{TB}}{2N}\|H - H_0\|_F^2 ,$$

with $H \in \mathbb R^{d\times N}$ one column per sample and $Y$ the one-hot matrix. In this
toolkit features are rows (``H`` of shape ``(N, d)`` is the paper's $H^\top$). The same function,
term by term, is the MUFM of :func:`~otcollapse.surrogates.mufm.fit_mufm` (DESIGN.md's
normalisation) with the MSE loss $\frac1N\sum_i\frac12\|W h_i - e_{y_i}\|^2$, no bias, one
paired transport step ($L = 1$, $X = H_0$) and

$$\lambda_W = \lambda_W^{TB}/K,\qquad \lambda_H = \lambda_H^{TB}/N,\qquad
  \lambda_{OT} = \beta^{TB}/N ,$$

so :func:`fit_perturbed` is that MUFM, solved by the same solver.

Eliminating $W$, $W^*(H) = Y H^\top (H H^\top + n\lambda_W^{TB} I)^{-1}$, gives the "central path"
loss $\mathcal L(H)$; its scaled gradient flow (the paper's Eq. 4)

$$\frac{dH_t}{dt} = -N\,\nabla\mathcal L(H_t)
  = -W^*(H_t)^\top\big(W^*(H_t) H_t - Y\big) - \lambda_H^{TB} H_t$$

is :func:`central_path_flow` (in :mod:`otcollapse.surrogates.central_path`); the minimiser $H_{1/\beta}$ is one implicit (backward) Euler step
of it with step $1/\beta$ from $H_0$. :func:`perturbation_jacobian` is the linearised minimiser
map $\operatorname{vec}(\delta H) \approx F \operatorname{vec}(\delta H_0)$ (the paper's Theorem
4.1, exact Jacobian by implicit differentiation), and :func:`near_collapse_singular_values` the
singular values of its blocks predicted by Theorem 4.2.

References
----------
Tirer, Huang & Niles-Weed, "Perturbation Analysis of Neural Collapse", ICML 2023.
Tirer & Bruna, "Extended Unconstrained Features Model for Exploring Deep Neural Collapse",
ICML 2022 (the bias-free MSE UFM and its orthogonal collapse).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from functools import cached_property
from typing import Any

import numpy as np
import torch

from otcollapse._results import Result
from otcollapse._utils import ArrayLike, rng
from otcollapse.exceptions import ConvergenceWarning
from otcollapse.measures import Trajectory
from otcollapse.surrogates.central_path import (
    CentralPathFlow,
    _check_features,
    _traces,
    central_path_flow,
    central_path_velocity,
)
from otcollapse.surrogates.core import _check_lambda, _class_labels, _warn_unconverged
from otcollapse.surrogates.mufm import MUFMSolution, fit_mufm
from otcollapse.surrogates.ufm import FeatureSolution, _terms

__all__ = [
    "CentralPathFlow",
    "PerturbationJacobian",
    "PerturbedSolution",
    "central_path_flow",
    "central_path_velocity",
    "collapsed_minimizer",
    "fit_perturbed",
    "mufm_parameters",
    "near_collapse_singular_values",
    "perturbation_jacobian",
]

#: largest number of unknowns (N + K) * d for which the Hessian is formed densely
MAX_JACOBIAN_UNKNOWNS = 6000


def mufm_parameters(
    *, beta: float, lambda_w: float, lambda_h: float, n_samples: int, n_classes: int
) -> dict[str, float]:
    r"""The MUFM weights of the perturbation model given in the paper's normalisation.

    $$\lambda_W = \lambda_W^{TB}/K,\qquad \lambda_H = \lambda_H^{TB}/N,\qquad
      \lambda_{OT} = \beta^{TB}/N .$$

    Parameters
    ----------
    beta, lambda_w, lambda_h : float
        $\beta^{TB}, \lambda_W^{TB}, \lambda_H^{TB}$ (all >= 0).
    n_samples, n_classes : int
        $N$ and $K$.

    Returns
    -------
    dict
        ``lambda_ot``, ``lambda_w``, ``lambda_h`` for :func:`~otcollapse.surrogates.fit_mufm`
        (with ``loss="mse"``, ``bias=False``, ``coupling="paired"``, ``n_layers=1``).

    Examples
    --------
    >>> mufm_parameters(beta=10.0, lambda_w=0.5, lambda_h=0.2, n_samples=20, n_classes=4)
    {'lambda_ot': 0.5, 'lambda_w': 0.125, 'lambda_h': 0.01}
    """
    beta = _check_lambda("beta", beta)
    lambda_w = _check_lambda("lambda_w", lambda_w)
    lambda_h = _check_lambda("lambda_h", lambda_h)
    if n_samples < 1 or n_classes < 2:
        raise ValueError(f"need n_samples >= 1 and n_classes >= 2; got {n_samples}, {n_classes}.")
    return {
        "lambda_ot": beta / n_samples,
        "lambda_w": lambda_w / n_classes,
        "lambda_h": lambda_h / n_samples,
    }


# --------------------------------------------------------------------------- the model
@dataclasses.dataclass(frozen=True, eq=False)
class PerturbedSolution(FeatureSolution):
    r"""A fitted perturbation model (Tirer, Huang & Niles-Weed), solved as a one-step MUFM.

    Attributes
    ----------
    H : ndarray, shape (N, d)
        The minimiser's features, one row per sample (the paper's $H^\top$).
    W : ndarray, shape (K, d)
        The classifier.
    H0 : ndarray, shape (N, d)
        The given features $H_0$.
    labels : ndarray of int, shape (N,)
    objective : float
        The objective in the paper's normalisation (equal to the MUFM objective; the sum of
        ``terms``).
    terms : dict str -> float
        ``loss`` $\frac1{2N}\|WH - Y\|^2$, ``reg_w`` $\frac{\lambda_W^{TB}}{2K}\|W\|^2$,
        ``reg_h`` $\frac{\lambda_H^{TB}}{2N}\|H\|^2$, ``proximity``
        $\frac{\beta^{TB}}{2N}\|H - H_0\|^2$; they sum to ``objective``.
    grad_norm, n_iter, converged
        From ``record``.
    record : SolverRecord
    params : dict
        The paper's parameters (``beta``, ``lambda_w``, ``lambda_h``) and, under ``"mufm"``, the
        MUFM weights they map to.
    mufm : MUFMSolution
        The underlying one-step MUFM fit.
    trajectory : Trajectory
        Two layers, $H_0$ and $H$, with labels and the classifier.
    """

    H0: np.ndarray
    mufm: MUFMSolution

    _derived = (*FeatureSolution._derived, "nc1_tilde_h0", "nc1_tilde_h")
    _unrecorded = (*FeatureSolution._unrecorded, "H0", "mufm")

    @property
    def nc1_tilde(self) -> tuple[float, float]:
        r"""$\operatorname{Tr}\Sigma_W/\operatorname{Tr}\Sigma_B$ of $H_0$ and of $H$."""
        return self.nc1_tilde_h0, self.nc1_tilde_h

    @property
    def nc1_tilde_h0(self) -> float:
        r"""$\operatorname{Tr}\Sigma_W/\operatorname{Tr}\Sigma_B$ of $H_0$."""
        return _trace_ratio(self.H0, self.labels)

    @property
    def nc1_tilde_h(self) -> float:
        r"""$\operatorname{Tr}\Sigma_W/\operatorname{Tr}\Sigma_B$ of $H$."""
        return _trace_ratio(self.H, self.labels)


def fit_perturbed(
    H0: ArrayLike,
    y: ArrayLike,
    *,
    beta: float,
    lambda_w: float,
    lambda_h: float,
    seed: int = 0,
    tol: float = 1e-9,
    max_iter: int = 5000,
) -> PerturbedSolution:
    r"""Fit the perturbation model, with the paper's parameters, as a one-step MSE MUFM.

    $$\min_{W, H}\; \frac1{2N}\|W H - Y\|_F^2 + \frac{\lambda_W^{TB}}{2K}\|W\|_F^2
      + \frac{\lambda_H^{TB}}{2N}\|H\|_F^2 + \frac{\beta^{TB}}{2N}\|H - H_0\|_F^2$$

    (Tirer, Huang & Niles-Weed, Eq. 2, with $N = Kn$). This is exactly
    ``fit_mufm(H0, y, n_layers=1, coupling="paired", loss="mse", bias=False,
    lambda_ot=beta/N, lambda_w=lambda_w/K, lambda_h=lambda_h/N)`` (see :func:`mufm_parameters`),
    which is what runs: L-BFGS with a strong-Wolfe line search in float64, $H$ starting at $H_0$
    and $W$ at a seeded random point.

    Properties the tests check: if $H_0$ is a minimiser of the $\beta = 0$ problem (an orthogonal
    collapse, :func:`collapsed_minimizer`) the minimiser is $H_0$ itself (the paper's Corollary
    2.2); the stationarity condition $\beta(H - H_0) = -N\nabla\mathcal L(H)$ makes $H$ one
    implicit Euler step of :func:`central_path_flow` with step $1/\beta$, so
    $\widetilde{NC}_1(H) < \widetilde{NC}_1(H_0)$ for large $\beta$ (Corollary 3.2).

    Parameters
    ----------
    H0 : array-like or Tensor, shape (N, d)
        The given features, one row per sample (the transpose of the paper's $H_0$).
    y : array-like of int, shape (N,)
        Labels ``0..K-1``, every class present.
    beta, lambda_w, lambda_h : float
        $\beta^{TB}$, $\lambda_W^{TB}$, $\lambda_H^{TB}$ in the paper's normalisation (>= 0).
    seed : int
        Seeds the classifier's random start.
    tol, max_iter : float, int
        Passed to the solver; not converging gives ``converged=False`` and a
        ``ConvergenceWarning``.

    Returns
    -------
    PerturbedSolution

    Raises
    ------
    ValueError
        Negative or non-finite parameters, NaN/inf in ``H0``, labels of the wrong length, not
        covering ``0..K-1``, or K < 2.

    Examples
    --------
    >>> import numpy as np
    >>> H0 = np.random.default_rng(0).standard_normal((12, 5))
    >>> sol = fit_perturbed(H0, np.repeat(np.arange(3), 4), beta=10.0, lambda_w=0.1,
    ...                     lambda_h=0.1)
    >>> sol.converged, sol.nc1_tilde[1] < sol.nc1_tilde[0]
    (True, True)

    References
    ----------
    Tirer, Huang & Niles-Weed, "Perturbation Analysis of Neural Collapse", ICML 2023.
    """
    A = _check_features(H0, "H0 (the perturbation model's input features)")
    labels, K = _class_labels(y, A.shape[0])
    N = A.shape[0]
    tb = {
        "beta": _check_lambda("beta", beta),
        "lambda_w": _check_lambda("lambda_w", lambda_w),
        "lambda_h": _check_lambda("lambda_h", lambda_h),
    }
    mapped = mufm_parameters(**tb, n_samples=N, n_classes=K)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # re-issued below, naming this model
        sol = fit_mufm(
            A,
            labels,
            n_layers=1,
            coupling="paired",
            loss="mse",
            bias=False,
            solver="reduced",
            seed=seed,
            tol=tol,
            max_iter=max_iter,
            **mapped,
        )
    if not sol.converged:
        _warn_unconverged(
            "fit_perturbed", f"the solver stopped ({sol.record.message})", sol.record, stacklevel=2
        )
    terms = {
        "loss": sol.terms["loss"],
        "reg_w": sol.terms["reg_w"],
        "reg_h": sol.terms["reg_h"],
        "proximity": sol.terms["transport"],
    }
    params = {
        "model": "perturbation (Tirer, Huang & Niles-Weed)",
        **tb,
        "n_samples": N,
        "n_classes": K,
        "dim": int(A.shape[1]),
        "seed": int(seed),
        "tol": float(tol),
        "max_iter": int(max_iter),
        "mufm": {**mapped, "n_layers": 1, "loss": "mse", "bias": False, "coupling": "paired"},
    }
    traj = Trajectory.from_arrays(
        [A, sol.H], labels=labels, names=["H0", "H"], classifier=(sol.W, None), metadata=params
    )
    return PerturbedSolution(
        H=sol.H,
        W=sol.W,
        H0=A,
        labels=labels,
        terms=terms,
        record=sol.record,
        params=params,
        mufm=sol,
        trajectory=traj,
    )


def collapsed_minimizer(
    y: ArrayLike, *, dim: int, lambda_w: float, lambda_h: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    r"""A minimiser of the bias-free MSE UFM ($\beta = 0$) in the paper's normalisation.

    Tirer & Bruna (2022), Theorem 3.1 (the perturbation paper's Theorem 2.1): with
    $c = \sqrt{\lambda_H^{TB}\lambda_W^{TB}} < 1$ and $d \ge K$, every minimiser is an orthogonal
    collapse

    $$h_{k,i} = \bar h_k,\qquad \bar H^\top\bar H = \rho I_K,\qquad
      \rho = (1 - c)\sqrt{\lambda_W^{TB}/\lambda_H^{TB}},\qquad
      w_k = \sqrt{\lambda_H^{TB}/\lambda_W^{TB}}\;\bar h_k ,$$

    one for each partial orthonormal $R \in \mathbb R^{d\times K}$: $\bar h_k = \sqrt\rho\, r_k$.
    $R$ is drawn from ``seed``.

    Parameters
    ----------
    y : array-like of int, shape (N,)
        Balanced labels ``0..K-1`` (``n = N/K`` each).
    dim : int
        $d \ge K$.
    lambda_w, lambda_h : float
        $\lambda_W^{TB}, \lambda_H^{TB} > 0$ with $\lambda_W^{TB}\lambda_H^{TB} < 1$.
    seed : int

    Returns
    -------
    H : ndarray, shape (N, d)
        Row $i$ is $\bar h_{y_i}$.
    W : ndarray, shape (K, d)

    Raises
    ------
    ValueError
        Unbalanced classes, ``dim < K``, non-positive λ or $\lambda_W\lambda_H \ge 1$ (then the
        minimiser is $W = H = 0$).

    References
    ----------
    Tirer & Bruna, "Extended Unconstrained Features Model for Exploring Deep Neural Collapse",
    ICML 2022.
    """
    labels, K = _class_labels(y)
    counts = np.bincount(labels, minlength=K)
    if np.any(counts != counts[0]):
        raise ValueError(
            f"collapsed_minimizer needs balanced classes (the closed form assumes n per class); "
            f"got class sizes {counts.tolist()}."
        )
    d = int(dim)
    if d < K:
        raise ValueError(f"an orthogonal collapse needs dim >= K = {K}; got dim = {dim}.")
    lw, lh = float(lambda_w), float(lambda_h)
    if not (lw > 0 and lh > 0 and math.isfinite(lw * lh)):
        raise ValueError(f"lambda_w and lambda_h must be > 0; got {lambda_w!r}, {lambda_h!r}.")
    c = math.sqrt(lw * lh)
    if c >= 1:
        raise ValueError(
            f"sqrt(lambda_w * lambda_h) = {c:.4g} >= 1: the minimiser is W = H = 0, not a collapse."
        )
    rho = (1 - c) * math.sqrt(lw / lh)
    q, r = np.linalg.qr(rng(seed).standard_normal((d, K)))
    R = q * np.sign(np.diag(r))  # (d, K), orthonormal columns
    means = math.sqrt(rho) * R.T  # (K, d): row k is h̄_k
    return means[labels].copy(), math.sqrt(lh / lw) * means


def _trace_ratio(H: np.ndarray, labels: np.ndarray) -> float:
    tw, tb = _traces(H, labels)
    return tw / tb if tb > 0 else math.inf


# --------------------------------------------------------------------------- linearisation
def _extreme(key: str, doc: str) -> property:
    """A read-only property: entry ``key`` of the block singular-value extremes."""
    return property(lambda self: self._extremes[key], doc=doc)


@dataclasses.dataclass(frozen=True, eq=False)
class PerturbationJacobian(Result):
    r"""The linearised minimiser map $\operatorname{vec}(\delta H) = F\operatorname{vec}(\delta H_0)$.

    ``vec`` stacks the features sample by sample (the paper's column-stacking of its
    $d\times N$ matrix), so ``F[i*d + a, j*d + b]`` is $\partial h_{i,a}/\partial h_{0,j,b}$.

    Attributes
    ----------
    F : ndarray, shape (N*d, N*d)
    labels : ndarray of int, shape (N,)
    dim : int
    min_hessian_eigenvalue : float
        Smallest eigenvalue of the objective's Hessian in $(H, W)$ at the solution; positive at
        a strict local minimiser (where the implicit function theorem applies).
    params : dict
    intra_sigma_max, intra_sigma_min : float
        Derived: $\max_k \sigma_{\max}(F_{k,k})$ and $\min_k \sigma_{\min}(F_{k,k})$.
    inter_sigma_max, inter_sigma_second : float
        Derived: the largest and the second singular value of the inter-class blocks
        $F_{k,l}$, $k \ne l$ (maximised over the blocks); see :meth:`block_singular_values`.
    """

    F: np.ndarray
    labels: np.ndarray
    dim: int
    min_hessian_eigenvalue: float
    params: dict[str, Any]

    _derived = ("intra_sigma_max", "intra_sigma_min", "inter_sigma_max", "inter_sigma_second")
    _unrecorded = ("F", "labels")

    def block(self, k: int, l: int) -> np.ndarray:
        r"""The block $F_{k,l}$ (shape ``(d n_k, d n_l)``): class $l$'s inputs to class $k$'s
        features, samples in their order within the class."""
        d = self.dim
        rows = (np.flatnonzero(self.labels == k)[:, None] * d + np.arange(d)).reshape(-1)
        cols = (np.flatnonzero(self.labels == l)[:, None] * d + np.arange(d)).reshape(-1)
        if rows.size == 0 or cols.size == 0:
            raise ValueError(f"no samples of class {k if rows.size == 0 else l}.")
        return self.F[np.ix_(rows, cols)]

    def block_singular_values(self) -> dict[str, np.ndarray]:
        r"""Singular values of the blocks: ``intra`` (K, d n) for $F_{k,k}$ and ``inter``
        (K, K, 2), the two largest of each $F_{k,l}$, $k\ne l$ (NaN on the diagonal), all in
        descending order."""
        K = int(self.labels.max()) + 1
        intra = np.stack([np.linalg.svd(self.block(k, k), compute_uv=False) for k in range(K)])
        inter = np.full((K, K, 2), np.nan)
        for k in range(K):
            for l in range(K):
                if k != l:
                    inter[k, l] = np.linalg.svd(self.block(k, l), compute_uv=False)[:2]
        return {"intra": intra, "inter": inter}

    @cached_property
    def _extremes(self) -> dict[str, float]:
        sv = self.block_singular_values()
        off = ~np.isnan(sv["inter"][..., 0])
        return {
            "intra_sigma_max": float(sv["intra"][:, 0].max()),
            "intra_sigma_min": float(sv["intra"][:, -1].min()),
            "inter_sigma_max": float(sv["inter"][..., 0][off].max()),
            "inter_sigma_second": float(sv["inter"][..., 1][off].max()),
        }

    intra_sigma_max = _extreme("intra_sigma_max", r"$\max_k \sigma_{\max}(F_{k,k})$.")
    intra_sigma_min = _extreme("intra_sigma_min", r"$\min_k \sigma_{\min}(F_{k,k})$.")
    inter_sigma_max = _extreme("inter_sigma_max", r"$\max_{k\ne l} \sigma_{\max}(F_{k,l})$.")
    inter_sigma_second = _extreme(
        "inter_sigma_second",
        r"$\max_{k\ne l} \sigma_2(F_{k,l})$ (near collapse the blocks have rank one, Thm 4.2).",
    )


def perturbation_jacobian(solution: PerturbedSolution) -> PerturbationJacobian:
    r"""The Jacobian of the minimiser $H^*(H_0)$ with respect to $H_0$ (the paper's Theorem 4.1).

    Differentiating the stationarity condition $\nabla_{(H,W)} f = 0$, in which $H_0$ enters only
    through $\frac{\beta}{N}(H - H_0)$, gives (implicit function theorem)

    $$F = \frac{\beta}{N}\Big(\nabla^2_{HH} f - \nabla^2_{HW} f\,(\nabla^2_{WW} f)^{-1}
        \nabla^2_{WH} f\Big)^{-1},$$

    exact, with the Hessian of the objective taken by autograd at the fitted point (the same
    objective code as :func:`~otcollapse.surrogates.fit_mufm`). The paper's Eq. 5 is its
    expansion to first order in $1/\beta$; near collapse the blocks' singular values are given by
    Theorem 4.2 (:func:`near_collapse_singular_values`), to $O(\beta^{-2})$.

    Parameters
    ----------
    solution : PerturbedSolution
        A converged fit (a strict local minimiser).

    Returns
    -------
    PerturbationJacobian

    Raises
    ------
    ValueError
        ``beta = 0`` (the minimiser does not depend on $H_0$), a Hessian larger than
        ``MAX_JACOBIAN_UNKNOWNS`` unknowns (subsample the features first), or a Hessian that is
        not positive definite (not a strict local minimiser).

    References
    ----------
    Tirer, Huang & Niles-Weed, "Perturbation Analysis of Neural Collapse", ICML 2023, Thm 4.1.
    """
    if not isinstance(solution, PerturbedSolution):
        raise ValueError("perturbation_jacobian takes a PerturbedSolution from fit_perturbed.")
    p = solution.params
    beta, N, K, d = p["beta"], p["n_samples"], p["n_classes"], p["dim"]
    if beta <= 0:
        raise ValueError("beta = 0: the minimiser does not depend on H0, so F = 0.")
    m = (N + K) * d
    if m > MAX_JACOBIAN_UNKNOWNS:
        raise ValueError(
            f"the Hessian would have {(N + K) * d} unknowns (> {MAX_JACOBIAN_UNKNOWNS}); "
            "fit the model on a subsample of the features."
        )
    if not solution.converged:
        warnings.warn(
            "perturbation_jacobian: the fit did not converge; F is the Jacobian at a point that is "
            "not a minimiser.",
            ConvergenceWarning,
            stacklevel=2,
        )
    mp = p["mufm"]
    X = torch.as_tensor(solution.H0, dtype=torch.float64)
    yt = torch.as_tensor(solution.labels)
    kw = dict(loss="mse", lambda_w=mp["lambda_w"], lambda_h=mp["lambda_h"], lambda_b=0.0)

    def objective(theta: torch.Tensor) -> torch.Tensor:
        H = theta[: N * d].view(N, d)
        W = theta[N * d :].view(K, d)
        t = _terms(H, W, None, yt, **kw)
        return sum(t.values()) + 0.5 * mp["lambda_ot"] * (H - X).pow(2).sum()

    theta = torch.cat(
        [
            torch.as_tensor(solution.H, dtype=torch.float64).reshape(-1),
            torch.as_tensor(solution.W, dtype=torch.float64).reshape(-1),
        ]
    )
    hess = torch.autograd.functional.hessian(objective, theta).numpy()
    hess = 0.5 * (hess + hess.T)
    lam_min = float(np.linalg.eigvalsh(hess)[0])
    if not lam_min > 0:
        raise ValueError(
            f"the Hessian at the solution is not positive definite (smallest eigenvalue "
            f"{lam_min:.3e}): not a strict local minimiser, so the minimiser map is not "
            "differentiable there."
        )
    rhs = np.zeros((m, N * d))
    rhs[: N * d] = (beta / N) * np.eye(N * d)  # dG/dH0 = -(β/N) I on the H rows
    F = np.linalg.solve(hess, rhs)[: N * d]
    params = {k: p[k] for k in ("beta", "lambda_w", "lambda_h", "n_samples", "n_classes", "dim")}
    return PerturbationJacobian(
        F=F, labels=solution.labels, dim=d, min_hessian_eigenvalue=lam_min, params=params
    )


def near_collapse_singular_values(
    *, beta: float, lambda_w: float, lambda_h: float
) -> dict[str, float]:
    r"""Theorem 4.2 of Tirer, Huang & Niles-Weed: the blocks of $F$ near collapse.

    For $H_0$ a collapsed minimiser of the $\beta = 0$ problem, $d > K$,
    $\lambda_H\lambda_W < 1$ and $\beta \gg \max(1, \lambda_H)$, to $O(\beta^{-2})$:

    $$\sigma_{\max}(F_{k,k}) = 1,\qquad
      \sigma_{\min}(F_{k,k}) = 1 - \beta^{-1}\sqrt{\lambda_H/\lambda_W},\qquad
      \sigma_{\max}(F_{k,\tilde k}) = 2\beta^{-1}\lambda_H\big(1 - \sqrt{\lambda_H\lambda_W}\big),$$

    the inter-class blocks $F_{k,\tilde k}$ being of rank one (paper's normalisation).

    Parameters
    ----------
    beta, lambda_w, lambda_h : float
        $\beta^{TB} > 0$, $\lambda_W^{TB} > 0$, $\lambda_H^{TB} \ge 0$.

    Returns
    -------
    dict
        ``intra_sigma_max``, ``intra_sigma_min``, ``inter_sigma_max``.

    Examples
    --------
    >>> sv = near_collapse_singular_values(beta=100, lambda_w=2 ** 0.5, lambda_h=0.5)
    >>> round(sv["intra_sigma_min"], 5), round(sv["inter_sigma_max"], 5)
    (0.99405, 0.00159)
    """
    b, lw, lh = float(beta), float(lambda_w), float(lambda_h)
    if not (b > 0 and lw > 0 and lh >= 0):
        raise ValueError("need beta > 0, lambda_w > 0 and lambda_h >= 0.")
    return {
        "intra_sigma_max": 1.0,
        "intra_sigma_min": 1.0 - math.sqrt(lh / lw) / b,
        "inter_sigma_max": 2.0 * lh * (1.0 - math.sqrt(lh * lw)) / b,
    }
