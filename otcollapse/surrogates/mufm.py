r"""The multilayer, transport-regularised unconstrained feature model (MUFM).

MUFM (this toolkit's formalisation of Wang, Gai & Zhang, "Progressive Feedforward Collapse of
ResNet Training"): layers $H_0 = X, H_1, \dots, H_L$ joined by a transport regulariser, with the
UFM's terms (:mod:`otcollapse.surrogates.ufm`) at the last layer,

$$\min_{H_1..H_L, W, b}\; \frac1N\sum_i \ell(W h_{L,i} + b, y_i)
  + \frac{\lambda_W}2\|W\|_F^2 + \frac{\lambda_b}2\|b\|^2 + \frac{\lambda_H}2\|H_L\|_F^2
  + \frac{\lambda_{OT}}2\, L \sum_{l=1}^L c(H_{l-1}, H_l),$$

with the paired (kinetic) cost $c(A, B) = \|B - A\|_F^2$ or $c(A, B) = N\,W_2^2(\mu_A, \mu_B)$
(``coupling="wasserstein"``), summed over samples like the other terms.
The paper describes the MUFM in words, as a UFM whose layers are connected by an optimal-transport
regulariser with an optimum "inconsistent with NC but more concentrated relative to the input
data"; the normalisation above and the two couplings are this toolkit's formalisation of that
description, not a formula copied from the paper.

$\ell$ is the cross-entropy (``loss="ce"``) or the squared error to the one-hot target,
$\ell(z, y) = \tfrac12\|z - e_y\|^2$ (``loss="mse"``). $\lambda_{OT} = 0$ is the UFM
(:func:`~otcollapse.surrogates.ufm.fit_ufm` fits it without the input layer).

**The Wasserstein coupling is a nonconvex, partly combinatorial problem.** Its objective is
$f(\theta) = \min_\sigma f_\sigma(\theta)$, the minimum over assignments of smooth objectives,
nonsmooth where the optimal assignment changes; minimising it over $H_L$ amounts to choosing
which points of $X$ carry which label. Both solvers run L-BFGS on $f$ with envelope gradients
(the optimal assignments re-solved at every evaluation), then alternate: the smooth problem
with the assignments held fixed, the assignments re-solved, until they stop changing.
``converged=True`` certifies a *local* minimiser (assignments optimal and stable, gradient
below ``tol``), not the global one: for large $\lambda_{OT}$ every rearrangement of $X$ is a
local minimiser, and a cold start stays at the given labelling (warm-start a sequence of
increasing $\lambda_{OT}$ with ``init`` to follow the rearranged branch). The full problem has
more local minimisers than the reduced one: with many small steps a consecutive assignment
rarely changes, and the full solver can stop at a path the reduced solver leaves
(``path_excess`` and a comparison with ``solver="reduced"`` show it).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from otcollapse._utils import ArrayLike, check_finite, check_not_complex, is_tensor, to_numpy
from otcollapse._validation import check_int
from otcollapse.surrogates.core import (
    SolverRecord,
    _check_choice,
    _check_lambdas,
    _check_solver,
    _class_labels,
    _np,
    _warn_unconverged,
    minimize_lbfgs,
)
from otcollapse.surrogates.ufm import _LOSSES, FeatureSolution, _fitted_fields, _floats, _terms
from otcollapse.transport import wasserstein

__all__ = ["MUFMSolution", "fit_mufm"]

_SOLVERS = ("reduced", "full")
_COUPLINGS = ("paired", "wasserstein")
_EMBEDS = ("pad", "random", "pca")


# --------------------------------------------------------------------------- result
@dataclasses.dataclass(frozen=True, eq=False)
class MUFMSolution(FeatureSolution):
    r"""A fitted multilayer unconstrained feature model.

    Attributes
    ----------
    layers : tuple of ndarray, each shape (N, d)
        $H_0 = X$ (embedded), $H_1, \dots, H_L$, row $i$ following input sample $i$. For the
        Wasserstein coupling the last layer is ``H[assignment]``; with ``solver="reduced"``
        $h_{l,i} = (1 - \frac lL) x_i + \frac lL h_{L,\sigma(i)}$, with ``solver="full"`` row
        $i$ of layer $l$ is $h_{l,\tau_l(i)}$, $\tau_l = \sigma_l\circ\dots\circ\sigma_1$ the
        composed step assignments.
    H : ndarray, shape (N, d)
        The fitted last layer $H_L$, row $j$ the feature of sample $j$ (label ``labels[j]``).
    W : ndarray, shape (K, d)
    b : ndarray, shape (K,), or None
    labels : ndarray of int, shape (N,)
    objective : float
        The sum of ``terms``.
    terms : dict str -> float
        ``loss``, ``reg_w``, ``reg_b``, ``reg_h`` (on $H_L$) and ``transport``
        $\frac{\lambda_{OT}}2 L\sum_l c(H_{l-1}, H_l)$; they sum to ``objective``.
    grad_norm : float
        $\|\nabla f\|_2$ over the optimised variables ($H_L, W, b$ for ``solver="reduced"``,
        $H_1..H_L, W, b$ for ``solver="full"``); from ``record``.
    n_iter : int
        From ``record``.
    converged : bool
        From ``record``.
    record : SolverRecord
    params : dict
    embedding : ndarray, shape (d_X, d), or None
        The linear map applied to the data, $H_0 = X E$; None when ``X`` was used as given.
    assignment : ndarray of int, shape (N,), or None
        Wasserstein coupling only: the permutation $\sigma$ with $x_i \mapsto h_{L,\sigma(i)}$
        (reduced: the optimal assignment from $X$ to $H_L$; full: the composed step assignments
        $\tau_L$, the same permutation when the fitted path is a geodesic).
    mismatch_fraction : float or None
        Wasserstein coupling only: the fraction of samples $i$ with $y_{\sigma(i)} \ne y_i$.
    trajectory : Trajectory
        The ``L + 1`` layers with labels and the classifier, ready for ``transport_profile``,
        ``geodesic_test`` and ``collapse_profile``.
    path_excess : float or None
        ``solver="full"`` only: the transport term minus its value on the geodesic between the
        endpoints, $\frac{\lambda_{OT}}2\big(L\sum_l c(H_{l-1}, H_l) - c(X, H_L)\big) \ge 0$
        (triangle inequality and Cauchy-Schwarz); it is 0 exactly when the fitted intermediate
        layers are the equally spaced (McCann) interpolation, as the reduction lemma says a
        global minimiser's are. A clearly positive value flags a local minimiser of the full
        problem (see ``fit_mufm``). None for ``solver="reduced"``, which builds that
        interpolation.
    assignment_rounds : int or None
        ``coupling="wasserstein", solver="full"`` only: the number of alternations between the
        optimal assignments and the smooth solve (see ``fit_mufm``).
    """

    b: np.ndarray | None
    layers: tuple[np.ndarray, ...]
    embedding: np.ndarray | None
    assignment: np.ndarray | None
    mismatch_fraction: float | None
    path_excess: float | None = None
    assignment_rounds: int | None = None

    _unrecorded = (*FeatureSolution._unrecorded, "layers", "embedding", "assignment")

    @property
    def X(self) -> np.ndarray:
        """The (embedded) input $H_0$, shape (N, d)."""
        return self.layers[0]

    @property
    def n_layers(self) -> int:
        """``L``, the number of transport steps."""
        return len(self.layers) - 1


def _embed(
    X: torch.Tensor, dim: int | None, embed: str, seed: int
) -> tuple[torch.Tensor, np.ndarray | None]:
    dx = X.shape[1]
    if dim is None or int(dim) == dx:
        return X, None
    d = int(dim)
    if d < 1:
        raise ValueError(f"dim must be >= 1; got {dim}.")
    if embed == "pad":
        if d < dx:
            raise ValueError(
                f"embed='pad' needs dim >= the data dimension {dx}; got dim = {d}. "
                "Use embed='pca' to reduce the dimension."
            )
        E = np.eye(dx, d)
    elif embed == "random":
        if d < dx:
            raise ValueError(
                f"embed='random' is an isometric embedding and needs dim >= {dx}; got dim = {d}. "
                "Use embed='pca' to reduce the dimension."
            )
        g = np.random.default_rng(seed).standard_normal((d, dx))
        q, r = np.linalg.qr(g)
        E = (q * np.sign(np.diag(r))).T  # (dx, d), orthonormal rows
    else:  # pca
        if d > dx:
            raise ValueError(
                f"embed='pca' reduces the dimension and needs dim <= {dx}; got dim = {d}. "
                "Use embed='pad' or 'random' to raise it."
            )
        Xn = X.detach().cpu().numpy()
        _, _, vt = np.linalg.svd(Xn - Xn.mean(axis=0), full_matrices=False)
        E = vt[:d].T  # (dx, d), top principal directions
    return X @ torch.as_tensor(E, dtype=X.dtype, device=X.device), E


#: cap on the alternations between assignments and smooth solves (Wasserstein coupling)
MAX_ASSIGNMENT_ROUNDS = 200


def _minimize_w2(
    prob: _Problem,
    *,
    tol: float,
    max_iter: int,
    nonsmooth_first: bool = True,
) -> tuple[SolverRecord, list[torch.Tensor], int]:
    r"""Minimise $f(\theta) = \min_{\sigma_1..\sigma_L} f_\sigma(\theta)$ by alternation.

    $f_\sigma$ (``prob.terms_at``) is the MUFM objective with the step assignments $\sigma_l$ held
    fixed (smooth); $f$ is the Wasserstein-coupled objective, nonsmooth where an optimal
    assignment changes.
    First (``nonsmooth_first``) L-BFGS runs on $f$ itself, the assignments re-solved at every
    evaluation and their gradient taken by the envelope theorem; this crosses kinks, where the
    alternation below stops at the first assignment that is locally optimal. Then each
    round (1) solves the smooth problem $\min_\theta f_\sigma(\theta)$ by L-BFGS from the current
    point, then (2) replaces each $\sigma_l$ by an optimal assignment of the new layers when that
    lowers the step's cost. Both moves never raise $f$, and there are finitely many assignments, so
    the rounds stop. The run has converged when a round leaves every assignment optimal (no
    strictly cheaper one, to a relative 1e-12) and its smooth solve met the gradient tolerance:
    then $\nabla f_\sigma$ is the gradient of $f$ wherever the optimal assignments are unique
    (envelope theorem), and the point is a local minimiser of $f$ wherever they are unique and
    the smooth solve found a local minimiser of $f_\sigma$.

    The tolerance is on the gradient norm relative to ``max(1, initial gradient norm)`` of the
    first round, the same target in every round; ``max_iter`` caps the L-BFGS iterations of all
    rounds together.
    """
    t0 = time.perf_counter()
    terms_at, step_costs, assignments, params = (
        prob.terms_at,
        prob.step_costs,
        prob.assignments,
        prob.params,
    )

    def gnorm(sig: list[torch.Tensor]) -> float:
        with torch.enable_grad():
            g = torch.autograd.grad(sum(terms_at(sig).values()), params)
        return float(torch.linalg.vector_norm(torch.cat([x.reshape(-1) for x in g])))

    scale = max(1.0, gnorm(assignments()))
    n_iter = n_evals = rounds = 0
    if nonsmooth_first:
        rec = minimize_lbfgs(
            lambda: sum(terms_at(assignments()).values()),
            params,
            tol=tol,
            max_iter=max_iter,
            what="fit_mufm",
            warn=False,
        )
        n_iter, n_evals = rec.n_iter, rec.n_evals
    sigmas = assignments()
    converged = False
    while True:
        rounds += 1
        start = max(1.0, gnorm(sigmas))
        rec = minimize_lbfgs(
            lambda sig=sigmas: sum(terms_at(sig).values()),
            params,
            tol=tol * scale / start,
            max_iter=max(0, max_iter - n_iter),
            what="fit_mufm",
            warn=False,
        )
        n_iter += rec.n_iter
        n_evals += rec.n_evals + 1
        new = assignments()
        with torch.no_grad():
            old_cost, new_cost = step_costs(sigmas), step_costs(new)
        better = new_cost < old_cost - 1e-12 * torch.clamp(old_cost, min=1.0)
        if not bool(better.any()):
            converged = rec.converged
            message = f"assignments stable after {rounds} rounds; last smooth solve: {rec.message}"
            break
        sigmas = [n if bool(c) else o for o, n, c in zip(sigmas, new, better, strict=True)]
        if n_iter >= max_iter or rounds >= MAX_ASSIGNMENT_ROUNDS:
            message = (
                f"assignments still changing after {rounds} rounds and {n_iter} L-BFGS iterations"
            )
            break
    grad_norm = rec.grad_norm if converged else gnorm(sigmas)
    record = SolverRecord(
        method="alternating-assignment/lbfgs-strong-wolfe",
        n_iter=n_iter,
        n_evals=n_evals,
        grad_norm=grad_norm,
        rel_grad_norm=grad_norm / scale,
        converged=bool(converged),
        tol=float(tol),
        max_iter=int(max_iter),
        history_size=rec.history_size,
        seconds=time.perf_counter() - t0,
        message=message,
    )
    if not converged:
        _warn_unconverged(
            "fit_mufm (coupling='wasserstein')",
            f"stopped after {rounds} assignment rounds ({message})",
            record,
            "Raise max_iter or loosen tol.",
            stacklevel=3,
        )
    return record, sigmas, rounds


def _warm_start(init: MUFMSolution, *, m: int, L: int, N: int, d: int, K: int) -> torch.Tensor:
    """The free layers of a warm start from a previous solution (last layer in the labels' order)."""
    if not isinstance(init, MUFMSolution):
        raise ValueError(f"init must be an MUFMSolution from fit_mufm; got {type(init).__name__}.")
    if init.H.shape != (N, d) or init.W.shape != (K, d):
        raise ValueError(
            f"init has features of shape {init.H.shape} and a classifier of shape "
            f"{init.W.shape}; this problem needs ({N}, {d}) and ({K}, {d}). Warm-start from a "
            "solution of the same data, classes and dim."
        )
    if m == 1:
        return torch.as_tensor(init.H, dtype=torch.float64).unsqueeze(0).clone()
    if init.n_layers != L:
        raise ValueError(
            f"solver='full' warm-starts every layer and needs init with n_layers = {L}; got "
            f"{init.n_layers}. Use solver='reduced' or refit init with n_layers={L}."
        )
    # intermediate layers as stored (row i follows input sample i); the last one in label order
    layers = [*init.layers[1:L], init.H]
    return torch.as_tensor(np.stack(layers), dtype=torch.float64).clone()


# --------------------------------------------------------------------------- the problem
def _input(X: ArrayLike) -> torch.Tensor:
    """``X`` as a float64 tensor on its device: 2-D, non-empty, real and finite."""
    what = "X (the MUFM input H_0)"
    check_not_complex(X, what)
    if is_tensor(X):
        Xt = X.detach().to(torch.float64)
    else:
        Xt = torch.as_tensor(to_numpy(X, dtype=np.float64, what=what))
    if Xt.ndim != 2 or Xt.shape[0] == 0 or Xt.shape[1] == 0:
        raise ValueError(f"X must be a non-empty 2-D array (N, d); got shape {tuple(Xt.shape)}.")
    check_finite(Xt, what)
    return Xt


def _optimal_assignment(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """sigma with a_i matched to b_sigma(i), optimal for N W2^2(mu_A, mu_B); float64 costs, so the
    permutation is exactly optimal (not only for float32-rounded costs)."""
    res = wasserstein(A.detach(), B.detach(), method="assignment", cost_dtype="float64")
    return torch.as_tensor(np.asarray(res.assignment), dtype=torch.long, device=A.device)


class _Problem:
    """The MUFM's free variables and terms.

    The free layers ``Hs`` are $H_L$ alone (``m = 1``, the reduced solver; the interpolation is
    filled in afterwards) or $H_1..H_L$ (``m = L``); every one starts at $X$ (or at ``init``), the
    classifier at a seeded random point.
    """

    def __init__(
        self, X0: torch.Tensor, labels: np.ndarray, settings: dict[str, Any], init: Any
    ) -> None:
        N, d = X0.shape
        K, L = settings["n_classes"], settings["n_layers"]
        self.labels, self.settings = labels, settings
        self.lambda_ot = settings["lambda_ot"]
        self.kw = {k: settings[k] for k in ("loss", "lambda_w", "lambda_h", "lambda_b")}
        dev = X0.device
        self.X0, self.L = X0, L
        self.reduced = settings["solver"] == "reduced"
        self.m = m = 1 if self.reduced else L
        gen = torch.Generator().manual_seed(settings["seed"])
        self.W = (torch.randn(K, d, generator=gen, dtype=torch.float64) / np.sqrt(d)).to(dev)
        self.W.requires_grad_()
        self.b = (
            torch.zeros(K, dtype=torch.float64, device=dev).requires_grad_()
            if settings["bias"]
            else None
        )
        self.y = torch.as_tensor(labels, device=dev)
        if init is None:
            start = X0.expand(m, N, d).clone()
        else:
            start = _warm_start(init, m=m, L=L, N=N, d=d, K=K).to(dev)
            with torch.no_grad():
                self.W.copy_(torch.as_tensor(init.W, dtype=torch.float64, device=dev))
                if self.b is not None and init.b is not None:
                    self.b.copy_(torch.as_tensor(init.b, dtype=torch.float64, device=dev))
        self.Hs = start.requires_grad_()
        self.params = [self.Hs, self.W] + ([self.b] if self.b is not None else [])

    def path(self) -> torch.Tensor:
        return torch.cat([self.X0.unsqueeze(0), self.Hs], dim=0)

    def _head(self) -> dict[str, torch.Tensor]:
        return _terms(self.Hs[-1], self.W, self.b, self.y, **self.kw)

    def paired_terms(self) -> dict[str, torch.Tensor]:
        """The terms with the paired cost (row i to row i)."""
        t = self._head()
        p = self.path()
        t["transport"] = 0.5 * self.lambda_ot * self.m * (p[1:] - p[:-1]).pow(2).sum()
        return t

    def paired_objective(self) -> torch.Tensor:
        return sum(self.paired_terms().values())

    def assignments(self) -> list[torch.Tensor]:
        """The optimal assignment of every step of the current path."""
        with torch.no_grad():
            p = self.path()
            return [_optimal_assignment(p[l], p[l + 1]) for l in range(self.m)]

    def step_costs(self, sig: list[torch.Tensor]) -> torch.Tensor:
        """c(H_{l-1}, H_l) under the assignments sigma_l: h_{l-1,i} <-> h_{l,sigma_l(i)}."""
        p = self.path()
        return torch.stack([(p[l + 1][s] - p[l]).pow(2).sum() for l, s in enumerate(sig)])

    def terms_at(self, sig: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The terms with the Wasserstein cost under fixed step assignments ``sig``."""
        t = self._head()
        t["transport"] = 0.5 * self.lambda_ot * self.m * self.step_costs(sig).sum()
        return t

    def _fitted(
        self, sigmas: list[torch.Tensor]
    ) -> tuple[dict[str, float], tuple[np.ndarray, ...], np.ndarray, dict[str, Any]]:
        """At the solution: the terms, the ``L + 1`` layers (row i following input sample i),
        $H_L$, and the fields the coupling adds (``assignment``, ``mismatch_fraction``,
        ``path_excess``). ``sigmas`` are the step assignments (empty: the paired coupling)."""
        X0, labels, paired = self.X0, self.labels, not sigmas
        extra: dict[str, Any] = {"assignment": None, "mismatch_fraction": None}
        with torch.no_grad():
            terms = _floats(self.paired_terms() if paired else self.terms_at(sigmas))
            free = self.Hs.detach()
            last = free[-1]
            if paired:
                end, inner = last, free
            else:
                # follow each input sample along the chain of assignments, tau_l = sigma_l o .. o
                # sigma_1, so that row i of every layer is sample i's feature
                tau = torch.arange(X0.shape[0], device=X0.device)
                rows = []
                for l, s in enumerate(sigmas):
                    tau = s[tau]
                    rows.append(free[l][tau])
                inner, end = torch.stack(rows), last[tau]
                sigma = tau.cpu().numpy()
                extra.update(
                    assignment=sigma, mismatch_fraction=float(np.mean(labels[sigma] != labels))
                )
            if self.reduced:  # the equally spaced (McCann) interpolation
                steps = torch.arange(1, self.L + 1, dtype=torch.float64, device=X0.device) / self.L
                inner = X0 + steps.view(self.L, 1, 1) * (end - X0)
                extra["path_excess"] = None
            else:
                direct = (last - X0) if paired else last[_optimal_assignment(X0, last)] - X0
                geodesic = 0.5 * self.lambda_ot * float(direct.pow(2).sum())
                extra["path_excess"] = terms["transport"] - geodesic
        return terms, (_np(X0), *(_np(h) for h in inner)), _np(last), extra

    def solution(
        self,
        record: SolverRecord,
        sigmas: list[torch.Tensor],
        rounds: int | None,
        *,
        embedding: np.ndarray | None,
    ) -> MUFMSolution:
        """The fitted model at the current point (the settings gain the coupling's extras)."""
        terms, layers, H, extra = self._fitted(sigmas)
        labels, settings = self.labels, self.settings
        if extra["assignment"] is not None:
            settings["mismatch_fraction"] = extra["mismatch_fraction"]
            settings["matched_labels"] = labels[extra["assignment"]].tolist()
        names = [f"H{l}" for l in range(self.L + 1)]
        fields = _fitted_fields(
            H, list(layers), names, self.W, self.b, labels, terms, record, settings
        )
        return MUFMSolution(
            **fields, layers=layers, embedding=embedding, assignment_rounds=rounds, **extra
        )


def fit_mufm(
    X: ArrayLike,
    y: ArrayLike,
    *,
    n_layers: int,
    lambda_ot: float,
    lambda_w: float,
    lambda_h: float,
    lambda_b: float = 0.0,
    loss: str = "ce",
    coupling: str = "paired",
    bias: bool = True,
    dim: int | None = None,
    embed: str = "pad",
    solver: str = "reduced",
    seed: int = 0,
    tol: float = 1e-9,
    max_iter: int = 5000,
    init: MUFMSolution | None = None,
) -> MUFMSolution:
    r"""Fit the multilayer unconstrained feature model with a transport regulariser.

    $$\min_{H_1..H_L, W, b}\; \frac1N\sum_{i=1}^N \ell(W h_{L,i} + b, y_i)
      + \frac{\lambda_W}2\|W\|_F^2 + \frac{\lambda_b}2\|b\|^2 + \frac{\lambda_H}2\|H_L\|_F^2
      + \frac{\lambda_{OT}}2\, L\sum_{l=1}^L c(H_{l-1}, H_l),\qquad H_0 = X,$$

    with $c$ the paired cost $\|H_l - H_{l-1}\|_F^2$ or $N\,W_2^2$ (``coupling``).

    For fixed endpoints the intermediate layers minimising the transport term are the equally
    spaced interpolation $H_l = X + \frac lL (H_L - X)$ (paired; McCann for $W_2$), and the
    term then equals $\frac{\lambda_{OT}}2 c(X, H_L)$ whatever $L$ is. ``solver="reduced"`` optimises
    $H_L, W, b$ only and fills in that interpolation; ``solver="full"`` optimises
    $H_1, \dots, H_L, W, b$ together (each solver checks the other). $\lambda_{OT} = 0$ is the
    UFM; $\lambda_{OT}\to\infty$ pins $H_L$ to $X$ (paired) or $\mu_{H_L}$ to $\mu_X$ ($W_2$,
    which is blind to how the points of $X$ are rearranged). With $\lambda_{OT} = 0$ the full
    solver's intermediate layers do not enter the objective and stay at their starting point.

    The Wasserstein coupling is a nonconvex, partly combinatorial problem: ``converged=True``
    certifies a *local* minimiser (see the module docstring); warm-start a sequence of increasing
    $\lambda_{OT}$ with ``init`` to follow a branch. The normalisation and the couplings are this
    toolkit's formalisation of the MUFM of Wang, Gai & Zhang (see ``docs/mufm.md``).

    Parameters
    ----------
    X : array-like or Tensor, shape (N, d_X)
        The input of the residual stack, $H_0$. Computation runs in float64 on its device.
    y : array-like of int, shape (N,)
        Labels ``0..K-1``, every class present.
    n_layers : int
        ``L >= 1``, the number of transport steps (the trajectory has ``L + 1`` layers).
    lambda_ot, lambda_w, lambda_h, lambda_b : float
        Transport weight and weight decays (all >= 0).
    loss : {"ce", "mse"}
    coupling : {"paired", "wasserstein"}
        ``"paired"``: $c(A, B) = \|B - A\|_F^2$ (row $i$ to row $i$). ``"wasserstein"``:
        $c(A, B) = N\,W_2^2(\mu_A, \mu_B) = \min_\sigma \sum_i \|a_i - b_{\sigma(i)}\|^2$ (an
        optimal assignment; never above the paired cost), differentiated at the optimal
        permutation held fixed (envelope theorem). Row $i$ of every returned layer follows input
        sample $i$ (see :class:`MUFMSolution`: ``layers``, ``assignment``, ``mismatch_fraction``;
        the trajectory's ``metadata["matched_labels"]`` holds $y_{\sigma(i)}$).
    bias : bool
    dim : int, optional
        Feature dimension ``d``; defaults to ``d_X``. When it differs, ``X`` is embedded as
        $X E$: ``embed="pad"`` appends zero coordinates ($E = [I\ 0]$, ``d > d_X``),
        ``"random"`` a seeded random isometry (``d > d_X``), ``"pca"`` the coordinates on the
        top ``d`` principal axes of the centred data (``d < d_X``). ``E`` is returned as
        ``embedding``.
    embed : {"pad", "random", "pca"}
    solver : {"reduced", "full"}
    seed : int
        Seeds the classifier's random start (and ``embed="random"``); every free layer starts at
        $X$.
    tol, max_iter : float, int
        Relative gradient-norm tolerance and iteration cap (for the Wasserstein coupling, over
        all alternations together); not converging gives ``converged=False`` and a
        ``ConvergenceWarning``.
    init : MUFMSolution, optional
        Warm start: the free layers, ``W`` and ``b`` start at a previous solution of the same
        data shape and classes (``solver="full"``: the same ``n_layers``), e.g. the fit at a
        smaller $\lambda_{OT}$. With the Wasserstein coupling this selects the branch of local
        minimisers that the sequence of fits follows.

    Returns
    -------
    MUFMSolution

    Raises
    ------
    ValueError
        Negative λ, K < 2, ``n_layers < 1``, NaN/inf or complex values in ``X``, labels of the
        wrong length or not covering ``0..K-1``, an embedding that cannot produce ``dim``,
        unknown options, ``tol <= 0``, ``max_iter < 0``, an ``init`` of other shapes.
    TypeError
        Non-numeric λ or ``tol``; non-integer ``dim``, ``seed`` or ``max_iter``.

    References
    ----------
    Wang, Gai & Zhang, "Progressive Feedforward Collapse of ResNet Training".
    Zhu et al., "A Geometric Analysis of Neural Collapse with Unconstrained Features", NeurIPS 2021.
    Mixon, Parshall & Pi, "Neural collapse with unconstrained features", 2020.
    """
    lambda_ot, lambda_w, lambda_h, lambda_b = _check_lambdas(
        lambda_ot=lambda_ot, lambda_w=lambda_w, lambda_h=lambda_h, lambda_b=lambda_b
    )
    for name, value, choices in (
        ("loss", loss, _LOSSES),
        ("coupling", coupling, _COUPLINGS),
        ("solver", solver, _SOLVERS),
        ("embed", embed, _EMBEDS),
    ):
        _check_choice(name, value, choices)
    L = int(n_layers)
    if L < 1 or L != n_layers:
        raise ValueError(f"n_layers must be an integer >= 1 (transport steps); got {n_layers!r}.")
    seed = check_int(seed, "seed")
    tol, max_iter = _check_solver(tol, max_iter)
    if dim is not None:
        check_int(dim, "dim (the feature dimension)", minimum=1)
    Xt = _input(X)
    labels, K = _class_labels(y, Xt.shape[0])
    X0, E = _embed(Xt, dim, embed, seed)
    settings = {
        "model": "mufm",
        "n_layers": L,
        "dim": int(X0.shape[1]),
        "data_dim": int(Xt.shape[1]),
        "embed": None if E is None else embed,
        "n_classes": K,
        "n_samples": int(X0.shape[0]),
        "lambda_ot": lambda_ot,
        "lambda_w": lambda_w,
        "lambda_h": lambda_h,
        "lambda_b": lambda_b,
        "loss": loss,
        "coupling": coupling,
        "bias": bool(bias),
        "solver": solver,
        "seed": int(seed),
        "tol": float(tol),
        "max_iter": int(max_iter),
        "warm_start": init is not None,
    }
    prob = _Problem(X0, labels, settings, init)
    if coupling == "paired":
        record = minimize_lbfgs(
            prob.paired_objective, prob.params, tol=tol, max_iter=max_iter, what="fit_mufm"
        )
        sigmas, rounds = [], None
    else:
        record, sigmas, rounds = _minimize_w2(prob, tol=tol, max_iter=max_iter)
    return prob.solution(record, sigmas, rounds, embedding=E)
