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

is :func:`central_path_flow`; the minimiser $H_{1/\beta}$ is one implicit (backward) Euler step
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
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from otcollapse._utils import ArrayLike, check_finite, json_safe, rng, to_numpy
from otcollapse.collapse import class_statistics
from otcollapse.exceptions import ConvergenceWarning
from otcollapse.measures import Trajectory
from otcollapse.surrogates.core import SolverRecord
from otcollapse.surrogates.mufm import (
    MUFMSolution,
    _check_labels,
    _check_lambda,
    _terms,
    fit_mufm,
)

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


# --------------------------------------------------------------------------- validation
def _check_features(H: ArrayLike, what: str) -> np.ndarray:
    A = to_numpy(H).astype(np.float64)
    if A.ndim != 2 or A.shape[0] == 0 or A.shape[1] == 0:
        raise ValueError(
            f"{what} must be a non-empty 2-D array (N samples, d features); got shape {A.shape}."
        )
    check_finite(A, what)
    return A


def _one_hot(labels: np.ndarray, K: int) -> np.ndarray:
    return np.eye(K)[labels]


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
class PerturbedSolution:
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
        The objective in the paper's normalisation (equal to the MUFM objective).
    terms : dict str -> float
        ``loss`` $\frac1{2N}\|WH - Y\|^2$, ``reg_w`` $\frac{\lambda_W^{TB}}{2K}\|W\|^2$,
        ``reg_h`` $\frac{\lambda_H^{TB}}{2N}\|H\|^2$, ``proximity``
        $\frac{\beta^{TB}}{2N}\|H - H_0\|^2$; they sum to ``objective``.
    grad_norm : float
    n_iter : int
    converged : bool
    record : SolverRecord
    params : dict
        The paper's parameters (``beta``, ``lambda_w``, ``lambda_h``) and, under ``"mufm"``, the
        MUFM weights they map to.
    mufm : MUFMSolution
        The underlying one-step MUFM fit.
    trajectory : Trajectory
        Two layers, $H_0$ and $H$, with labels and the classifier.
    """

    H: np.ndarray
    W: np.ndarray
    H0: np.ndarray
    labels: np.ndarray
    objective: float
    terms: dict[str, float]
    grad_norm: float
    n_iter: int
    converged: bool
    record: SolverRecord
    params: dict[str, Any]
    mufm: MUFMSolution
    trajectory: Trajectory

    @property
    def nc1_tilde(self) -> tuple[float, float]:
        r"""$\operatorname{Tr}\Sigma_W/\operatorname{Tr}\Sigma_B$ of $H_0$ and of $H$."""
        return _trace_ratio(self.H0, self.labels), _trace_ratio(self.H, self.labels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary: scalars, settings, the solver record and ``W``; no features."""
        h0, h = self.nc1_tilde
        return json_safe(
            {
                "objective": self.objective,
                "terms": self.terms,
                "grad_norm": self.grad_norm,
                "n_iter": self.n_iter,
                "converged": self.converged,
                "record": self.record.to_dict(),
                "params": self.params,
                "nc1_tilde_h0": h0,
                "nc1_tilde_h": h,
                "W": self.W,
            }
        )


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
    labels, K = _check_labels(y, A.shape[0])
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
        warnings.warn(
            f"fit_perturbed: the solver stopped ({sol.record.message}) with relative gradient "
            f"norm {sol.rel_grad_norm:.3e} > tol = {tol:.1e}; the result says converged=False.",
            ConvergenceWarning,
            stacklevel=2,
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
        objective=float(sum(terms.values())),
        terms=terms,
        grad_norm=sol.grad_norm,
        n_iter=sol.n_iter,
        converged=sol.converged,
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
    labels, K = _check_labels(y)
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


# --------------------------------------------------------------------------- central path
def _trace_ratio(H: np.ndarray, labels: np.ndarray) -> float:
    tw, tb = _traces(H, labels)
    return tw / tb if tb > 0 else math.inf


def _traces(H: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    st = class_statistics(H, labels)
    return float(np.sum(st.within_ss)), float(np.sum(st.between_eigvals))


def _w_star(H: np.ndarray, Yr: np.ndarray, n: float, lambda_w: float) -> np.ndarray:
    d = H.shape[1]
    # W*(H) = Y H^T (H H^T + n λ_W I)^{-1} in the paper's column convention
    return np.linalg.solve(H.T @ H + n * lambda_w * np.eye(d), H.T @ Yr).T


def central_path_velocity(
    H: ArrayLike, y: ArrayLike, *, lambda_w: float, lambda_h: float
) -> np.ndarray:
    r"""The velocity of the central-path flow, $-N\nabla\mathcal L(H)$.

    $$\frac{dH}{dt} = -W^*(H)^\top\big(W^*(H) H - Y\big) - \lambda_H^{TB} H,\qquad
      W^*(H) = Y H^\top (H H^\top + n\lambda_W^{TB} I)^{-1},$$

    in the paper's column convention ($n = N/K$); returned with one row per sample.

    Parameters
    ----------
    H : array-like, shape (N, d)
    y : array-like of int, shape (N,)
    lambda_w, lambda_h : float
        $\lambda_W^{TB} > 0$, $\lambda_H^{TB} \ge 0$.

    Returns
    -------
    ndarray, shape (N, d)

    References
    ----------
    Tirer, Huang & Niles-Weed, "Perturbation Analysis of Neural Collapse", ICML 2023, Eq. 4.
    """
    A = _check_features(H, "H")
    labels, K = _check_labels(y, A.shape[0])
    lw, lh = _check_lambda("lambda_w", lambda_w), _check_lambda("lambda_h", lambda_h)
    if lw <= 0:
        raise ValueError("lambda_w must be > 0 for the central path (W*(H) needs it).")
    return _velocity(A, _one_hot(labels, K), A.shape[0] / K, lw, lh)


def _velocity(H: np.ndarray, Yr: np.ndarray, n: float, lw: float, lh: float) -> np.ndarray:
    W = _w_star(H, Yr, n, lw)
    return -(H @ W.T - Yr) @ W - lh * H


@dataclasses.dataclass(frozen=True, eq=False)
class CentralPathFlow:
    r"""The central-path gradient flow, sampled at given times.

    Attributes
    ----------
    times : ndarray, shape (T,)
    layers : tuple of ndarray, each shape (N, d)
        $H_t$ at each time (rows are samples).
    labels : ndarray of int, shape (N,)
    tr_sigma_w, tr_sigma_b : ndarray, shape (T,)
        $\operatorname{Tr}\Sigma_W(H_t)$ and $\operatorname{Tr}\Sigma_B(H_t)$ (DESIGN.md's
        definitions, the paper's for balanced classes).
    nc1_tilde : ndarray, shape (T,)
        Their ratio $\widetilde{NC}_1(H_t)$.
    success : bool
        Whether the integrator reached the last time.
    message : str
    n_evals : int
        Velocity evaluations.
    params : dict
    trajectory : Trajectory
        One layer per time, named ``t=...``, with labels.
    """

    times: np.ndarray
    layers: tuple[np.ndarray, ...]
    labels: np.ndarray
    tr_sigma_w: np.ndarray
    tr_sigma_b: np.ndarray
    nc1_tilde: np.ndarray
    success: bool
    message: str
    n_evals: int
    params: dict[str, Any]
    trajectory: Trajectory

    @property
    def scaled_tr_sigma_w(self) -> np.ndarray:
        r"""$e^{2\lambda_H t}\operatorname{Tr}\Sigma_W(H_t)$ (non-increasing by Theorem 3.1)."""
        return np.exp(2 * self.params["lambda_h"] * self.times) * self.tr_sigma_w

    @property
    def scaled_tr_sigma_b(self) -> np.ndarray:
        r"""$e^{2\lambda_H t}\operatorname{Tr}\Sigma_B(H_t)$ (increasing by Theorem 3.1)."""
        return np.exp(2 * self.params["lambda_h"] * self.times) * self.tr_sigma_b

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record: times, traces, ratio, integrator state; no features."""
        return json_safe(
            {
                "times": self.times,
                "tr_sigma_w": self.tr_sigma_w,
                "tr_sigma_b": self.tr_sigma_b,
                "nc1_tilde": self.nc1_tilde,
                "success": self.success,
                "message": self.message,
                "n_evals": self.n_evals,
                "params": self.params,
            }
        )


def central_path_flow(
    H0: ArrayLike,
    y: ArrayLike,
    *,
    lambda_w: float,
    lambda_h: float,
    times: Sequence[float] | np.ndarray,
    rtol: float = 1e-10,
    atol: float = 1e-12,
) -> CentralPathFlow:
    r"""Integrate the central-path gradient flow from $H_0$ (the paper's Eq. 4).

    $$\frac{dH_t}{dt} = -W^*(H_t)^\top\big(W^*(H_t) H_t - Y\big) - \lambda_H^{TB} H_t,\qquad
      W^*(H) = Y H^\top (H H^\top + n\lambda_W^{TB} I)^{-1},$$

    the flow $-N\nabla\mathcal L$ of the UFM loss with the classifier eliminated
    ($N = Kn$). Theorem 3.1 of the paper: for $\lambda_W > 0$, $\lambda_H \ge 0$ and $H_0$ not
    collapsed, $\widetilde{NC}_1(H_t) = \operatorname{Tr}\Sigma_W/\operatorname{Tr}\Sigma_B$
    strictly decreases until it reaches zero, $e^{2\lambda_H t}\operatorname{Tr}\Sigma_W(H_t)$
    decreases and $e^{2\lambda_H t}\operatorname{Tr}\Sigma_B(H_t)$ strictly increases.
    Integrated by scipy's ``solve_ivp`` (DOP853, an explicit Runge-Kutta method of order 8) in
    float64.

    Parameters
    ----------
    H0 : array-like, shape (N, d)
        Initial features, one row per sample.
    y : array-like of int, shape (N,)
    lambda_w, lambda_h : float
        $\lambda_W^{TB} > 0$ and $\lambda_H^{TB} \ge 0$ (the paper's normalisation).
    times : sequence of float
        Non-decreasing times $\ge 0$ at which $H_t$ is returned (include 0 to get $H_0$).
    rtol, atol : float
        Integrator tolerances.

    Returns
    -------
    CentralPathFlow

    Raises
    ------
    ValueError
        ``lambda_w <= 0``, negative ``lambda_h``, times negative or decreasing, NaN/inf in
        ``H0``, bad labels.

    References
    ----------
    Tirer, Huang & Niles-Weed, "Perturbation Analysis of Neural Collapse", ICML 2023, Section 3.
    Han, Papyan & Donoho, "Neural Collapse under MSE Loss: Proximity to and Dynamics on the
    Central Path", ICLR 2022.
    """
    from scipy.integrate import solve_ivp

    A = _check_features(H0, "H0 (the flow's initial features)")
    labels, K = _check_labels(y, A.shape[0])
    lw, lh = _check_lambda("lambda_w", lambda_w), _check_lambda("lambda_h", lambda_h)
    if lw <= 0:
        raise ValueError("lambda_w must be > 0 for the central path (W*(H) needs it).")
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    if t.size == 0 or not np.all(np.isfinite(t)) or t[0] < 0 or np.any(np.diff(t) < 0):
        raise ValueError("times must be a non-empty, non-decreasing sequence of numbers >= 0.")
    N, d = A.shape
    Yr = _one_hot(labels, K)
    n = N / K

    def rhs(_t: float, z: np.ndarray) -> np.ndarray:
        return _velocity(z.reshape(N, d), Yr, n, lw, lh).reshape(-1)

    if t[-1] > 0:
        sol = solve_ivp(
            rhs, (0.0, t[-1]), A.reshape(-1), method="DOP853", t_eval=t, rtol=rtol, atol=atol
        )
        success, message, nfev = bool(sol.success), str(sol.message), int(sol.nfev)
        states = [sol.y[:, j].reshape(N, d).copy() for j in range(sol.y.shape[1])]
    else:
        success, message, nfev = True, "all times are 0", 0
        states = [A.copy() for _ in t]
    if not success or len(states) != t.size:
        warnings.warn(
            f"central_path_flow: the integrator stopped early ({message}); the result says "
            "success=False and holds the times reached.",
            ConvergenceWarning,
            stacklevel=2,
        )
        t = t[: len(states)]
    traces = np.array([_traces(S, labels) for S in states]).reshape(-1, 2)
    tw, tb = traces[:, 0], traces[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(tb > 0, tw / tb, np.inf)
    params = {
        "model": "central-path flow (Tirer, Huang & Niles-Weed, Eq. 4)",
        "lambda_w": lw,
        "lambda_h": lh,
        "n_samples": N,
        "n_classes": K,
        "dim": d,
        "rtol": float(rtol),
        "atol": float(atol),
        "integrator": "scipy.integrate.solve_ivp(method='DOP853')",
    }
    traj = Trajectory.from_arrays(
        states, labels=labels, names=[f"t={v:.6g}" for v in t], metadata=params
    )
    return CentralPathFlow(
        times=t,
        layers=tuple(states),
        labels=labels,
        tr_sigma_w=tw,
        tr_sigma_b=tb,
        nc1_tilde=ratio,
        success=success,
        message=message,
        n_evals=nfev,
        params=params,
        trajectory=traj,
    )


# --------------------------------------------------------------------------- linearisation
@dataclasses.dataclass(frozen=True, eq=False)
class PerturbationJacobian:
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
    """

    F: np.ndarray
    labels: np.ndarray
    dim: int
    min_hessian_eigenvalue: float
    params: dict[str, Any]

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

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary: extreme block singular values and settings; ``F`` is left out."""
        sv = self.block_singular_values()
        off = ~np.isnan(sv["inter"][..., 0])
        return json_safe(
            {
                "intra_sigma_max": float(sv["intra"][:, 0].max()),
                "intra_sigma_min": float(sv["intra"][:, -1].min()),
                "inter_sigma_max": float(sv["inter"][..., 0][off].max()),
                "inter_sigma_second": float(sv["inter"][..., 1][off].max()),
                "min_hessian_eigenvalue": self.min_hessian_eigenvalue,
                "params": self.params,
            }
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
