r"""The deep unconstrained features model (DUFM) with ReLU layers and the square loss.

Súkeník, Mondelli & Lampert ("Deep Neural Collapse Is Provably Optimal for the Deep Unconstrained
Features Model", NeurIPS 2023) put $L - 1$ ReLU layers between free features and the classifier:
free features $H_1 \in \mathbb R^{d\times N}$ (column $i$ for sample $i$), weights
$W_1, \dots, W_{L-1} \in \mathbb R^{d\times d}$ and $W_L \in \mathbb R^{K\times d}$, no biases,
one-hot targets $Y \in \mathbb R^{K\times N}$, $\sigma = \mathrm{ReLU}$:

$$\min_{H_1, W_1..W_L}\; \frac1{2N}\big\|W_L\,\sigma(W_{L-1}\cdots\sigma(W_1 H_1)) - Y\big\|_F^2
  + \sum_{l=1}^L \frac{\lambda_{W_l}}2\|W_l\|_F^2 + \frac{\lambda_{H_1}}2\|H_1\|_F^2 .$$

With $n$ samples per class ($N = Kn$) the *deep neural collapse* (DNC) configuration — within-class
variability gone at every layer, the post-ReLU class means an orthogonal frame, $W_L\,h_L = p\,Y$
— has the value (arithmetic–geometric mean inequality over the $L + 1$ balanced terms)

$$\mathcal L_{DNC} = \min_{p\in[0,1]}\; \tfrac12(p-1)^2
  + (L+1)\Big(\prod_{i=0}^{L} c_i\Big)^{\frac1{L+1}} (N p^2)^{\frac1{L+1}},\qquad
  c_0 = \frac{\lambda_{H_1}}2,\quad c_l = \frac{K\lambda_{W_l}}2 .$$

For $K = 2$ (and $d \ge K$) every global optimum is DNC and the optimal value is
$\mathcal L_{DNC}$ (Súkeník et al. 2023). For $K \ge 3$ low-rank solutions can have a
strictly lower value (Súkeník, Lampert & Mondelli, "Neural Collapse versus Low-rank Bias: Is Deep
Neural Collapse Really Optimal?", NeurIPS 2024), so :func:`fit_dufm` reports both numbers.

At every critical point the regularisers are balanced,
$\lambda_{H_1}\|H_1\|_F^2 = \lambda_{W_1}\|W_1\|_F^2 = \dots = \lambda_{W_L}\|W_L\|_F^2$: the ReLU is
positively homogeneous, so scaling $W_{l+1}$ by $a$ and $W_l$ by $1/a$ leaves the fit unchanged and
the derivative in $a$ at $a = 1$ is the difference of two of these terms.

**Solving** (:func:`fit_dufm`). The objective is non-smooth (ReLU kinks) and its minima are
degenerate (flat directions), so the default gradient tolerance is ``1e-6`` rather than the UFM's
``1e-9``; at the tests' example the value then agrees with $\mathcal L_{DNC}$ to better than
$10^{-6}$ relative. Each restart first runs L-BFGS on a smoothed problem (the ReLU replaced by a
sharp softplus, two stages) so that the exact solve does not start next to a kink it would stall
on; the returned point, its value and ``converged`` are those of the exact objective. Minima that
sit on kinks with a non-vanishing one-sided gradient (some low-rank solutions for $K \ge 3$)
cannot meet the gradient criterion and are returned with ``converged=False``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from otcollapse._utils import ArrayLike, check_device, json_safe
from otcollapse.collapse import CollapseProfile, collapse_profile
from otcollapse.measures import Trajectory
from otcollapse.surrogates.core import (
    SolverRecord,
    SolverSolution,
    _check_lambda,
    _class_labels,
    _np,
    _warn_unconverged,
    minimize_lbfgs,
)

__all__ = ["DUFMSolution", "dnc_value", "fit_dufm"]

#: metrics of the per-layer collapse profile (the exact OT metric is left out: it is O(N^3))
_PROFILE_METRICS = (
    "nc1",
    "nc1_tilde",
    "cdnv",
    "nc2_equinorm",
    "nc2_equiangularity",
    "nc2_etf_distance",
    "nc3",
    "nc4_ncc_error",
    "tr_sigma_w",
    "tr_sigma_b",
)


# --------------------------------------------------------------------------- the DNC value
def dnc_value(
    n_classes: int,
    n_per_class: int,
    *,
    n_layers: int,
    lambda_w: float | Sequence[float],
    lambda_h: float,
) -> tuple[float, float]:
    r"""The DUFM's value at deep neural collapse, and the fitted output scale $p$.

    $$\mathcal L_{DNC} = \min_{p\in[0,1]}\; \tfrac12(p-1)^2
      + (L+1)\Big(\prod_{i=0}^{L} c_i\Big)^{\frac1{L+1}} (N p^2)^{\frac1{L+1}},\qquad
      c_0 = \frac{\lambda_{H_1}}2,\ c_l = \frac{K\lambda_{W_l}}2,\ N = Kn .$$

    Derivation: at DNC the network maps every sample of class $k$ to $p\,e_k$; with
    $H_1 = s_0 Y$ (padded) and $W_l = s_l I$ the fit is $\tfrac12(p-1)^2$, $p = \prod_i s_i$, and
    the regularisers are $c_0 N s_0^2 + \sum_l c_l s_l^2$, whose minimum under a fixed product is
    the arithmetic–geometric mean bound above. The one-dimensional problem in $p$ is solved on a
    grid of 20,001 points refined by bounded Brent search; $p = 0$ (the zero solution, value
    ``0.5``) is included.

    Parameters
    ----------
    n_classes, n_per_class : int
        $K \ge 2$ and $n \ge 1$ (balanced classes).
    n_layers : int
        $L \ge 1$, the number of weight matrices.
    lambda_w : float or sequence of L floats
        $\lambda_{W_1}, \dots, \lambda_{W_L}$ (one value for all layers, or one per layer).
    lambda_h : float
        $\lambda_{H_1}$.

    Returns
    -------
    (value, p) : (float, float)

    Examples
    --------
    >>> v, p = dnc_value(2, 5, n_layers=3, lambda_w=1e-3, lambda_h=1e-3)
    >>> round(v, 8)
    0.00597692

    References
    ----------
    Súkeník, Mondelli & Lampert, "Deep Neural Collapse Is Provably Optimal for the Deep
    Unconstrained Features Model", NeurIPS 2023.
    """
    K, n = int(n_classes), int(n_per_class)
    if K < 2 or K != n_classes:
        raise ValueError(f"n_classes must be an integer >= 2; got {n_classes!r}.")
    if n < 1 or n != n_per_class:
        raise ValueError(f"n_per_class must be an integer >= 1; got {n_per_class!r}.")
    L = _check_layers(n_layers)
    lw = _layer_lambdas(lambda_w, L)
    lh = _check_lambda("lambda_h", lambda_h)
    N = K * n
    c = np.array([lh / 2.0] + [K * w / 2.0 for w in lw])
    if np.any(c == 0):
        coef = 0.0
    else:
        coef = (L + 1) * math.exp(float(np.mean(np.log(c))))

    def f(p: Any) -> Any:
        return 0.5 * (p - 1.0) ** 2 + coef * (N * np.asarray(p) ** 2) ** (1.0 / (L + 1))

    grid = np.linspace(0.0, 1.0, 20001)
    i = int(np.argmin(f(grid)))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    res = minimize_scalar(f, bounds=(lo, hi), method="bounded", options={"xatol": 1e-14})
    candidates = [(float(f(0.0)), 0.0), (float(f(1.0)), 1.0), (float(res.fun), float(res.x))]
    value, p = min(candidates)
    return value, p


# --------------------------------------------------------------------------- validation
def _check_layers(n_layers: int) -> int:
    if isinstance(n_layers, bool) or int(n_layers) != n_layers or int(n_layers) < 1:
        raise ValueError(
            f"n_layers must be an integer >= 1 (weight matrices W_1..W_L); got {n_layers!r}."
        )
    return int(n_layers)


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {value!r}.")
    return int(value)


def _layer_lambdas(lambda_w: float | Sequence[float], L: int) -> list[float]:
    if np.ndim(lambda_w) == 0:
        return [_check_lambda("lambda_w", float(lambda_w))] * L
    vals = list(np.asarray(lambda_w, dtype=np.float64).ravel())
    if len(vals) != L:
        raise ValueError(
            f"lambda_w must be one number or one per weight matrix (n_layers = {L}); "
            f"got {len(vals)} values."
        )
    return [_check_lambda(f"lambda_w[{l}]", v) for l, v in enumerate(vals)]


# --------------------------------------------------------------------------- result
@dataclasses.dataclass(frozen=True, eq=False)
class DUFMSolution(SolverSolution):
    r"""A fitted deep unconstrained features model (the best of several restarts).

    Attributes
    ----------
    layers : tuple of ndarray, each shape (N, d)
        The features, one row per sample: $H_1^\top$, then the post-ReLU features
        $\sigma(W_1 H_1)^\top, \dots$ up to the input of $W_L$ ($L$ layers in all).
    weights : tuple of ndarray
        $W_1, \dots, W_L$ in the paper's orientation (output × input): ``(d, d)`` each, the last
        ``(K, d)``.
    output : ndarray, shape (N, K)
        $(W_L h_{L,i})_i$, the network's output (fitted to the one-hot targets).
    labels : ndarray of int, shape (N,)
    objective : float
    terms : dict str -> float
        ``fit`` $\frac1{2N}\|\cdot - Y\|_F^2$, ``reg_h`` $\frac{\lambda_{H_1}}2\|H_1\|_F^2$ and
        ``reg_w`` $\sum_l \frac{\lambda_{W_l}}2\|W_l\|_F^2$; they sum to ``objective``.
    balance : ndarray, shape (L + 1,)
        $\lambda_{H_1}\|H_1\|_F^2, \lambda_{W_1}\|W_1\|_F^2, \dots, \lambda_{W_L}\|W_L\|_F^2$, all
        equal at a critical point.
    dnc_value, dnc_p : float or None
        $\mathcal L_{DNC}$ and its output scale $p$ (:func:`dnc_value`); None when the classes are
        not balanced.
    vs_dnc : str or None
        ``"at"`` ($|\text{objective} - \mathcal L_{DNC}| \le$ ``dnc_rtol`` $\cdot\mathcal L_{DNC}$),
        ``"below"`` (a solution better than DNC, as low-rank solutions can be for $K \ge 3$) or
        ``"above"`` (no restart reached the DNC value); None without ``dnc_value``.
    orthogonality : ndarray, shape (L,)
        Per layer, $\|G/\|G\|_F - I_K/\sqrt K\|_F$ with $G = MM^\top$ the Gram matrix of the
        *uncentred* class means: 0 for an orthogonal frame of equal norms (the DNC geometry of the
        post-ReLU layers; the first entry, $H_1$, has no predicted geometry).
    profile : CollapseProfile
        ``collapse_profile`` of ``trajectory`` (NC1, ÑC1, CDNV, NC2, NC3 with $W_L$, NC4, the
        traces of $\Sigma_W$ and $\Sigma_B$) per layer.
    restart_values : tuple of float
        The objective reached by every restart, in order.
    restart_converged : tuple of bool
    restart_seeds : tuple of int
        The torch seed of every restart's random start.
    best_restart : int
        Index of the returned restart (lowest objective).
    grad_norm, n_iter, converged
        Of the returned restart (from ``record``).
    record : SolverRecord
        Of the returned restart.
    records : tuple of SolverRecord
        Of every restart.
    params : dict
    trajectory : Trajectory
        The ``L`` layers with labels and the classifier ``(W_L, None)``.
    """

    layers: tuple[np.ndarray, ...]
    weights: tuple[np.ndarray, ...]
    output: np.ndarray
    labels: np.ndarray
    terms: dict[str, float]
    balance: np.ndarray
    dnc_value: float | None
    dnc_p: float | None
    vs_dnc: str | None
    orthogonality: np.ndarray
    profile: CollapseProfile
    restart_values: tuple[float, ...]
    restart_converged: tuple[bool, ...]
    restart_seeds: tuple[int, ...]
    best_restart: int
    record: SolverRecord
    records: tuple[SolverRecord, ...]
    params: dict[str, Any]
    trajectory: Trajectory

    _derived = (*SolverSolution._derived, "dnc_gap")
    _unrecorded = ("layers", "weights", "output", "labels", "profile", "trajectory")

    @property
    def H1(self) -> np.ndarray:
        """The free features $H_1$, one row per sample, shape (N, d)."""
        return self.layers[0]

    @property
    def n_layers(self) -> int:
        """``L``, the number of weight matrices."""
        return len(self.weights)

    @property
    def dnc_gap(self) -> float | None:
        """``objective - dnc_value`` (negative: better than deep neural collapse)."""
        return None if self.dnc_value is None else self.objective - self.dnc_value

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary: values, the DNC comparison, restarts, per-layer metrics (``profile``,
        its table); the features and weights are left out."""
        return {**super().to_dict(), "profile": json_safe(self.profile.table())}


# --------------------------------------------------------------------------- fitting
def _forward(
    H1: torch.Tensor, Ws: Sequence[torch.Tensor], betas: Sequence[float] | None = None
) -> list[torch.Tensor]:
    """[H_1, σ(W_1 H_1), ..., input of W_L, output] (column convention, d × N).

    With ``betas`` (one per hidden layer) σ is replaced by the smooth
    ``softplus(z, beta) = log(1 + exp(beta z)) / beta``, only ever used by the warm start of
    :func:`_solve`, never for a reported value.
    """
    feats = [H1]
    h = H1
    for l, W in enumerate(Ws):
        h = W @ h
        if l < len(Ws) - 1:
            if betas is None:
                h = torch.relu(h)
            else:
                h = torch.nn.functional.softplus(h, beta=betas[l], threshold=30.0)
        feats.append(h)
    return feats


def _pre_activation_scales(H1: torch.Tensor, Ws: Sequence[torch.Tensor]) -> list[float]:
    """Root-mean-square pre-activation of every hidden layer (``W_l`` applied to its input)."""
    scales = []
    h = H1
    for W in Ws[:-1]:
        z = W @ h
        scales.append(float(z.pow(2).mean().sqrt()))
        h = torch.relu(z)
    return scales


def _terms(
    H1: torch.Tensor,
    Ws: Sequence[torch.Tensor],
    Y: torch.Tensor,
    lw: Sequence[float],
    lh: float,
    betas: Sequence[float] | None = None,
) -> dict[str, torch.Tensor]:
    out = _forward(H1, Ws, betas)[-1]
    N = Y.shape[1]
    return {
        "fit": 0.5 * (out - Y).pow(2).sum() / N,
        "reg_h": 0.5 * lh * H1.pow(2).sum(),
        "reg_w": sum(0.5 * w * W.pow(2).sum() for w, W in zip(lw, Ws, strict=True)),
    }


def _orthogonality(x: np.ndarray, labels: np.ndarray, K: int) -> float:
    M = np.stack([x[labels == k].mean(axis=0) for k in range(K)])
    G = M @ M.T
    g = float(np.linalg.norm(G))
    if g == 0.0:
        return math.nan
    return float(np.linalg.norm(G / g - np.eye(K) / math.sqrt(K)))


#: L-BFGS runs from the current point, each with fresh curvature memory, after a stalled line search
_MAX_ROUNDS = 5

#: softplus sharpness of the warm-start stages of ``_solve``, in units of 1 / (RMS pre-activation)
_SMOOTHING_SHARPNESS = (100.0, 1000.0)


def _lbfgs_rounds(
    fun: Any, params: list[torch.Tensor], *, tol: float, budget: int, what: str
) -> tuple[list[SolverRecord], float]:
    """``minimize_lbfgs``, rerun from where it stalled while that still lowers the objective."""
    rounds: list[SolverRecord] = []
    with torch.no_grad():
        value = float(fun())
    used = 0
    while True:
        rec = minimize_lbfgs(
            fun, params, tol=tol, max_iter=budget - used, what=f"fit_dufm {what}", warn=False
        )
        rounds.append(rec)
        used += rec.n_iter
        with torch.no_grad():
            new = float(fun())
        progress = new < value - 1e-15 * max(1.0, abs(value))
        value = new
        if rec.converged or not progress or used >= budget or len(rounds) >= _MAX_ROUNDS:
            break
    return rounds, value


def _solve(
    fun: Any, params: list[torch.Tensor], *, tol: float, max_iter: int, what: str
) -> tuple[SolverRecord, float]:
    """Smoothed warm start, then L-BFGS on the exact objective, rerun where it stalls.

    ``fun(betas)`` is the objective, exact for ``betas=None``. Minima of the DUFM often lie on ReLU
    kinks: some pre-activations are exactly 0 there, and an iterate that reaches such a face from
    the wrong direction stalls *on* it, with pre-activations ~1e-11 and a gradient (taken on the
    inactive side) that points across the kink, where the objective rises, so that no step along
    it descends. Near deep neural collapse the optimal set is flat along first-layer angles and
    contains points whose inactive pre-activations are strictly negative, but the exact objective
    gives no force towards them. So L-BFGS is first run on the smooth problem with
    ``softplus(z, beta) = log(1 + exp(beta z)) / beta`` in place of the ReLU, at sharpness
    ``beta = s / rms(z)`` per layer for each ``s`` of ``_SMOOTHING_SHARPNESS`` (recomputed at
    the start of each stage, at most ``max_iter // 4`` iterations each); its tails push inactive
    pre-activations away from 0. The exact objective is then minimised from that point; where its
    strong-Wolfe search stalls (stale curvature pairs from the other side of a kink), L-BFGS is
    rerun from the stalled point while that lowers the objective, at most ``_MAX_ROUNDS`` runs.
    Convergence is judged on the gradient of the exact objective only. The combined record counts
    every iteration (the smoothed ones included, within ``max_iter``) and evaluation.
    """
    warm: list[SolverRecord] = []
    for sharpness in _SMOOTHING_SHARPNESS:
        with torch.no_grad():
            scales = _pre_activation_scales(params[0], params[1:])
        if not scales or not all(math.isfinite(x) and x > 0 for x in scales) or max_iter < 4:
            break  # no hidden layer (L = 1: already smooth), a dead layer, or no iterations
        betas = [sharpness / x for x in scales]
        warm.append(
            minimize_lbfgs(
                lambda betas=betas: fun(betas),
                params,
                tol=tol,
                max_iter=max_iter // 4,
                what=f"fit_dufm {what} (softplus warm start)",
                warn=False,
            )
        )
    used = sum(r.n_iter for r in warm)
    rounds, value = _lbfgs_rounds(fun, params, tol=tol, budget=max_iter - used, what=what)
    used += sum(r.n_iter for r in rounds)
    last = rounds[-1]
    notes = []
    if warm:
        notes.append(f"{len(warm)} softplus-smoothed warm-start runs")
    if len(rounds) > 1:
        notes.append(f"{len(rounds)} L-BFGS runs from the stalled points")
    if not notes:
        return last, value
    everything = warm + rounds
    combined = dataclasses.replace(
        last,
        n_iter=used,
        n_evals=sum(r.n_evals for r in everything),
        seconds=sum(r.seconds for r in everything),
        max_iter=int(max_iter),
        message=f"{last.message} (after {' and '.join(notes)})",
    )
    return combined, value


class _Run(NamedTuple):
    """One restart: its seed, the objective it reached, its record and its point."""

    seed: int
    value: float
    record: SolverRecord
    params: list[torch.Tensor]


def _restart(Y: torch.Tensor, settings: dict[str, Any], r: int) -> _Run:
    """Restart ``r``: a seeded random start (see ``fit_dufm``), solved by :func:`_solve`."""
    K, N = Y.shape
    d, L, scale = settings["width"], settings["n_layers"], settings["init_scale"]
    lw, lh = settings["lambda_w"], settings["lambda_h"]
    seed = int(np.random.SeedSequence([settings["seed"], r]).generate_state(1)[0])
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    dims = [d] * L + [K]  # output dimension of W_1..W_L is dims[1..L]
    H1 = torch.randn(d, N, generator=gen, dtype=f64) * (scale / math.sqrt(d))
    Ws = [
        torch.randn(dims[l + 1], d, generator=gen, dtype=f64) * (scale * math.sqrt(2 / d))
        for l in range(L)
    ]
    params = [p.to(Y.device).requires_grad_() for p in [H1, *Ws]]

    def fun(betas: Sequence[float] | None = None) -> torch.Tensor:
        return sum(_terms(params[0], params[1:], Y, lw, lh, betas).values())

    tol, max_iter = settings["tol"], settings["max_iter"]
    record, value = _solve(fun, params, tol=tol, max_iter=max_iter, what=f"restart {r}")
    return _Run(seed, value, record, [p.detach() for p in params])


def _vs_dnc(
    objective: float, labels: np.ndarray, settings: dict[str, Any]
) -> tuple[float | None, float | None, str | None]:
    """The DNC value and scale for balanced classes, and where ``objective`` lies against it."""
    counts = np.bincount(labels, minlength=settings["n_classes"])
    if not np.all(counts == counts[0]):
        return None, None, None
    dv, dp = dnc_value(
        settings["n_classes"],
        int(counts[0]),
        n_layers=settings["n_layers"],
        lambda_w=settings["lambda_w"],
        lambda_h=settings["lambda_h"],
    )
    if abs(objective - dv) <= settings["dnc_rtol"] * abs(dv):
        return dv, dp, "at"
    return dv, dp, "below" if objective < dv else "above"


def _solution(
    labels: np.ndarray, Y: torch.Tensor, runs: list[_Run], best: int, settings: dict[str, Any]
) -> DUFMSolution:
    """The result at the best restart: its layers, the DNC comparison and the profile."""
    H1, Ws = runs[best].params[0], runs[best].params[1:]
    lw, lh, K = settings["lambda_w"], settings["lambda_h"], settings["n_classes"]
    with torch.no_grad():
        terms = {k: float(v) for k, v in _terms(H1, Ws, Y, lw, lh).items()}
        feats = _forward(H1, Ws)
    layers = tuple(_np(f.T) for f in feats[:-1])
    weights = tuple(_np(W) for W in Ws)
    balance = np.array(
        [lh * float(H1.pow(2).sum())]
        + [w * float(W.pow(2).sum()) for w, W in zip(lw, Ws, strict=True)]
    )
    dv, dp, vs = _vs_dnc(float(sum(terms.values())), labels, settings)
    names = ["H1"] + [f"relu{l}" for l in range(2, settings["n_layers"] + 1)]
    traj = Trajectory.from_arrays(
        list(layers), labels=labels, names=names, classifier=(weights[-1], None), metadata=settings
    )
    metrics = _PROFILE_METRICS
    if np.bincount(labels).min() < 2:  # within-class scatter needs two samples per class
        metrics = tuple(m for m in metrics if m not in ("nc1", "nc1_tilde", "cdnv", "tr_sigma_w"))
    return DUFMSolution(
        layers=layers,
        weights=weights,
        output=_np(feats[-1].T),
        labels=labels,
        terms=terms,
        balance=balance,
        dnc_value=dv,
        dnc_p=dp,
        vs_dnc=vs,
        orthogonality=np.array([_orthogonality(x, labels, K) for x in layers]),
        profile=collapse_profile(traj, metrics=metrics),
        restart_values=tuple(run.value for run in runs),
        restart_converged=tuple(bool(run.record.converged) for run in runs),
        restart_seeds=tuple(run.seed for run in runs),
        best_restart=int(best),
        record=runs[best].record,
        records=tuple(run.record for run in runs),
        params=settings,
        trajectory=traj,
    )


def fit_dufm(
    y: ArrayLike,
    *,
    n_layers: int,
    width: int,
    lambda_w: float | Sequence[float],
    lambda_h: float,
    restarts: int = 5,
    seed: int = 0,
    init_scale: float = 1.0,
    tol: float = 1e-6,
    max_iter: int = 2000,
    dnc_rtol: float = 1e-5,
    device: Any = None,
) -> DUFMSolution:
    r"""Fit the deep unconstrained features model with ReLU layers (best of several restarts).

    $$\min_{H_1, W_1..W_L}\; \frac1{2N}\big\|W_L\,\sigma(W_{L-1}\cdots\sigma(W_1 H_1)) - Y\big\|_F^2
      + \sum_{l=1}^L \frac{\lambda_{W_l}}2\|W_l\|_F^2 + \frac{\lambda_{H_1}}2\|H_1\|_F^2,$$

    $\sigma = \mathrm{ReLU}$, no biases, $Y$ one-hot, solved in float64 by L-BFGS with a
    strong-Wolfe line search (:func:`~otcollapse.surrogates.core.minimize_lbfgs`) from
    ``restarts`` seeded random starts; the lowest objective is returned and every restart's value
    is reported (some starts stall in worse local minima or at dead ReLUs). The result compares
    the value with the deep-neural-collapse value $\mathcal L_{DNC}$ (:func:`dnc_value`): for $K = 2$ the optimum *is* DNC (Súkeník et al. 2023); for
    $K \ge 3$ low-rank solutions can be better (Súkeník et al. 2024) and ``vs_dnc`` says which
    won. DNC: within-class variability vanishes at every layer, and the post-ReLU class means of
    layers $2..L$ form an orthogonal frame; $H_1$'s class means have no fixed geometry (the
    objective is flat along a family of first-layer angles).

    The non-smooth objective is solved as the module docstring says (a softplus-smoothed warm
    start, then the exact objective); ``converged`` is the exact objective's.

    Parameters
    ----------
    y : array-like of int, shape (N,)
        Labels ``0..K-1``, every class present.
    n_layers : int
        $L \ge 1$, the number of weight matrices $W_1..W_L$ ($L = 1$ is the bias-free MSE UFM).
    width : int
        Feature dimension $d$ of $H_1$ and of every hidden layer (the theorem needs $d \ge K$).
    lambda_w : float or sequence of L floats
        $\lambda_{W_l}$ (>= 0), one for all layers or one per layer.
    lambda_h : float
        $\lambda_{H_1}$ (>= 0).
    restarts : int
        Number of random starts (>= 1).
    seed : int
        Seeds the starts: restart ``r`` uses torch seed
        ``np.random.SeedSequence([seed, r]).generate_state(1)[0]`` (in ``restart_seeds``).
    init_scale : float
        $H_1$ starts with i.i.d. $N(0, \text{init\_scale}^2/d)$ entries (columns of norm about
        ``init_scale``) and every $W_l$ with $N(0, 2\,\text{init\_scale}^2/d)$ entries (He scaling).
    tol, max_iter : float, int
        Relative gradient-norm tolerance and iteration cap of each restart (near degenerate minima
        L-BFGS converges slowly; the cap bounds the time a bad start can take; it includes the
        smoothed warm-start stages, at most ``max_iter // 4`` iterations each; when a strong-Wolfe
        search stalls at a ReLU kink, L-BFGS is rerun from that point, at most 5 times, within
        the same cap). If the returned restart did not converge a ``ConvergenceWarning`` is
        issued; unconverged other restarts are only reported.
    dnc_rtol : float
        Relative tolerance of the ``vs_dnc`` comparison.
    device : torch device, optional
        Where to run (default CPU).

    Returns
    -------
    DUFMSolution

    Raises
    ------
    ValueError
        Bad labels, ``n_layers < 1``, ``width < 1``, negative or non-finite λ, a ``lambda_w``
        sequence of the wrong length, ``restarts < 1``, ``init_scale`` or ``tol`` not positive.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.repeat(np.arange(2), 5)
    >>> sol = fit_dufm(y, n_layers=3, width=4, lambda_w=1e-3, lambda_h=1e-3, restarts=3)
    >>> sol.vs_dnc, round(sol.dnc_value, 8)
    ('at', 0.00597692)

    References
    ----------
    Súkeník, Mondelli & Lampert, "Deep Neural Collapse Is Provably Optimal for the Deep
    Unconstrained Features Model", NeurIPS 2023. Súkeník, Lampert & Mondelli, "Neural Collapse
    versus Low-rank Bias: Is Deep Neural Collapse Really Optimal?", NeurIPS 2024.
    """
    labels, K = _class_labels(y)
    L = _check_layers(n_layers)
    d = _positive_int(width, "width")
    lw = _layer_lambdas(lambda_w, L)
    lh = _check_lambda("lambda_h", lambda_h)
    restarts = _positive_int(restarts, "restarts")
    if not (init_scale > 0) or not math.isfinite(init_scale):
        raise ValueError(f"init_scale must be a positive finite number; got {init_scale!r}.")
    if not (tol > 0):
        raise ValueError(f"tol must be positive; got {tol!r}.")
    if not (dnc_rtol >= 0):
        raise ValueError(f"dnc_rtol must be >= 0; got {dnc_rtol!r}.")
    settings = {
        "model": "dufm",
        "n_layers": L,
        "width": d,
        "n_classes": K,
        "n_samples": int(labels.size),
        "lambda_w": lw,
        "lambda_h": lh,
        "restarts": restarts,
        "seed": int(seed),
        "init_scale": float(init_scale),
        "tol": float(tol),
        "max_iter": int(max_iter),
        "dnc_rtol": float(dnc_rtol),
    }
    dev = torch.device("cpu") if device is None else check_device(device)
    Y = torch.nn.functional.one_hot(torch.as_tensor(labels, device=dev), K).T.to(torch.float64)
    runs = [_restart(Y, settings, r) for r in range(restarts)]
    values = [run.value for run in runs]
    finite = [i for i, v in enumerate(values) if math.isfinite(v)]
    if not finite:
        raise ValueError("fit_dufm: every restart ended at a non-finite objective; lower λ.")
    best = min(finite, key=lambda i: values[i])
    if not runs[best].record.converged:
        _warn_unconverged(
            "fit_dufm",
            f"the best restart ({best}) stopped unconverged ({runs[best].record.message})",
            runs[best].record,
            "Raise max_iter or restarts, or loosen tol.",
            stacklevel=2,
        )
    return _solution(labels, Y, runs, best, settings)
