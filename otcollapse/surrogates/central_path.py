r"""The central path of the bias-free MSE UFM, in the normalisation of Tirer, Huang & Niles-Weed.

Eliminating the classifier from the perturbation model's loss
(:mod:`otcollapse.surrogates.perturbation`; $K$ classes, $N$ samples, $n = N/K$),
$W^*(H) = Y H^\top (H H^\top + n\lambda_W^{TB} I)^{-1}$, gives the "central path" loss
$\mathcal L(H)$; its scaled gradient flow (the paper's Eq. 4)

$$\frac{dH_t}{dt} = -N\,\nabla\mathcal L(H_t)
  = -W^*(H_t)^\top\big(W^*(H_t) H_t - Y\big) - \lambda_H^{TB} H_t$$

is :func:`central_path_flow` (velocity: :func:`central_path_velocity`). The perturbation model's
minimiser $H_{1/\beta}$ is one implicit (backward) Euler step of it with step $1/\beta$ from $H_0$.
Features are rows here (``H`` of shape ``(N, d)`` is the paper's $H^\top$).

References
----------
Tirer, Huang & Niles-Weed, "Perturbation Analysis of Neural Collapse", ICML 2023, Section 3.
Han, Papyan & Donoho, "Neural Collapse under MSE Loss: Proximity to and Dynamics on the Central
Path", ICLR 2022.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from otcollapse._results import Result
from otcollapse._utils import ArrayLike, check_finite, json_safe, to_numpy
from otcollapse.collapse import class_statistics
from otcollapse.exceptions import ConvergenceWarning
from otcollapse.measures import Trajectory
from otcollapse.surrogates.core import _check_lambda, _class_labels

__all__ = ["CentralPathFlow", "central_path_flow", "central_path_velocity"]


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


# --------------------------------------------------------------------------- the flow
def _traces(H: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    st = class_statistics(H, labels)
    return float(np.sum(st.within_ss)), float(np.sum(st.between_eigvals))


def _w_star(H: np.ndarray, Yr: np.ndarray, n: float, lambda_w: float) -> np.ndarray:
    d = H.shape[1]
    # W*(H) = Y H^T (H H^T + n λ_W I)^{-1} in the paper's column convention
    return np.linalg.solve(H.T @ H + n * lambda_w * np.eye(d), H.T @ Yr).T


def _inputs(
    H: ArrayLike, y: ArrayLike, lambda_w: float, lambda_h: float, what: str
) -> tuple[np.ndarray, np.ndarray, int, float, float]:
    """Features (finite, 2-D), labels, K and the paper's λ_W > 0, λ_H >= 0."""
    A = _check_features(H, what)
    labels, K = _class_labels(y, A.shape[0])
    lw, lh = _check_lambda("lambda_w", lambda_w), _check_lambda("lambda_h", lambda_h)
    if lw <= 0:
        raise ValueError("lambda_w must be > 0 for the central path (W*(H) needs it).")
    return A, labels, K, lw, lh


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
    A, labels, K, lw, lh = _inputs(H, y, lambda_w, lambda_h, "H")
    return _velocity(A, _one_hot(labels, K), A.shape[0] / K, lw, lh)


def _velocity(H: np.ndarray, Yr: np.ndarray, n: float, lw: float, lh: float) -> np.ndarray:
    W = _w_star(H, Yr, n, lw)
    return -(H @ W.T - Yr) @ W - lh * H


@dataclasses.dataclass(frozen=True, eq=False)
class CentralPathFlow(Result):
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
        Their ratio $\widetilde{NC}_1(H_t)$ (derived; ``inf`` where $\operatorname{Tr}\Sigma_B = 0$).
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
    success: bool
    message: str
    n_evals: int
    params: dict[str, Any]
    trajectory: Trajectory

    _derived = ("nc1_tilde",)
    _unrecorded = ("layers", "labels", "trajectory")

    @property
    def nc1_tilde(self) -> np.ndarray:
        r"""$\widetilde{NC}_1(H_t) = \operatorname{Tr}\Sigma_W/\operatorname{Tr}\Sigma_B$ at each time."""
        tw, tb = self.tr_sigma_w, self.tr_sigma_b
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(tb > 0, tw / tb, np.inf)

    @property
    def scaled_tr_sigma_w(self) -> np.ndarray:
        r"""$e^{2\lambda_H t}\operatorname{Tr}\Sigma_W(H_t)$ (non-increasing by Theorem 3.1)."""
        return np.exp(2 * self.params["lambda_h"] * self.times) * self.tr_sigma_w

    @property
    def scaled_tr_sigma_b(self) -> np.ndarray:
        r"""$e^{2\lambda_H t}\operatorname{Tr}\Sigma_B(H_t)$ (increasing by Theorem 3.1)."""
        return np.exp(2 * self.params["lambda_h"] * self.times) * self.tr_sigma_b

    def table(self) -> list[dict[str, Any]]:
        """One JSON-safe row per time: ``time``, ``tr_sigma_w``, ``tr_sigma_b``, ``nc1_tilde``."""
        cols = zip(self.times, self.tr_sigma_w, self.tr_sigma_b, self.nc1_tilde, strict=True)
        keys = ("time", "tr_sigma_w", "tr_sigma_b", "nc1_tilde")
        return [json_safe(dict(zip(keys, row, strict=True))) for row in cols]


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

    A, labels, K, lw, lh = _inputs(H0, y, lambda_w, lambda_h, "H0 (the flow's initial features)")
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
        success=success,
        message=message,
        n_evals=nfev,
        params=params,
        trajectory=traj,
    )
