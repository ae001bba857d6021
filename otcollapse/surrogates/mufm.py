r"""The unconstrained feature model (UFM) and its multilayer, transport-regularised form (MUFM).

UFM (Mixon, Parshall & Pi 2020; normalisation of Zhu et al. 2021): free features
$H \in \mathbb R^{N\times d}$ (row $h_i$ for sample $i$), a linear classifier
$W \in \mathbb R^{K\times d}$ and bias $b \in \mathbb R^K$,

$$\min_{H, W, b}\; \frac1N\sum_{i=1}^N \ell(W h_i + b, y_i)
  + \frac{\lambda_W}2\|W\|_F^2 + \frac{\lambda_b}2\|b\|^2 + \frac{\lambda_H}2\|H\|_F^2 .$$

MUFM (this toolkit's formalisation of Wang, Gai & Zhang, "Progressive Feedforward Collapse of
ResNet Training"): layers $H_0 = X, H_1, \dots, H_L$ joined by a transport regulariser,

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
$\ell(z, y) = \tfrac12\|z - e_y\|^2$ (``loss="mse"``).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from otcollapse._utils import (
    ArrayLike,
    check_device,
    check_finite,
    check_not_complex,
    is_tensor,
    json_safe,
    to_numpy,
)
from otcollapse._validation import check_int
from otcollapse.exceptions import ConvergenceWarning
from otcollapse.measures import Trajectory
from otcollapse.surrogates.core import (
    SolverRecord,
    _check_choice,
    _check_labels,
    _check_lambda,
    _check_solver,
    minimize_lbfgs,
)
from otcollapse.transport import wasserstein

__all__ = ["MUFMSolution", "UFMSolution", "fit_mufm", "fit_ufm"]

_LOSSES = ("ce", "mse")
_SOLVERS = ("reduced", "full")
_COUPLINGS = ("paired", "wasserstein")
_EMBEDS = ("pad", "random", "pca")


# --------------------------------------------------------------------------- objective
def _data_loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "ce":
        return torch.nn.functional.cross_entropy(logits, y, reduction="mean")
    target = torch.nn.functional.one_hot(y, logits.shape[1]).to(logits.dtype)
    return 0.5 * (logits - target).pow(2).sum() / logits.shape[0]


def _terms(
    HL: torch.Tensor,
    W: torch.Tensor,
    b: torch.Tensor | None,
    y: torch.Tensor,
    *,
    loss: str,
    lambda_w: float,
    lambda_h: float,
    lambda_b: float,
) -> dict[str, torch.Tensor]:
    logits = HL @ W.T
    if b is not None:
        logits = logits + b
    zero = HL.new_zeros(())
    return {
        "loss": _data_loss(logits, y, loss),
        "reg_w": 0.5 * lambda_w * W.pow(2).sum(),
        "reg_b": zero if b is None else 0.5 * lambda_b * b.pow(2).sum(),
        "reg_h": 0.5 * lambda_h * HL.pow(2).sum(),
    }


def _floats(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in terms.items()}


# --------------------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True, eq=False)
class UFMSolution:
    r"""A fitted single-layer unconstrained feature model.

    Attributes
    ----------
    H : ndarray, shape (N, d)
        Features, one row per sample.
    W : ndarray, shape (K, d)
        Classifier; row ``k`` belongs to class ``k``.
    b : ndarray, shape (K,), or None
        Bias (None when ``bias=False``).
    labels : ndarray of int, shape (N,)
    objective : float
        The objective value at the returned point.
    terms : dict str -> float
        ``loss`` $\frac1N\sum_i\ell$, ``reg_w``, ``reg_b``, ``reg_h`` (each with its
        $\lambda/2$ factor); they sum to ``objective``.
    grad_norm : float
        $\|\nabla f\|_2$ over all optimised variables at the returned point.
    n_iter : int
    converged : bool
    record : SolverRecord
        The solver's full record.
    params : dict
        The model and solver settings.
    trajectory : Trajectory
        One layer (``H``) with labels and the classifier ``(W, b)``.
    """

    H: np.ndarray
    W: np.ndarray
    b: np.ndarray | None
    labels: np.ndarray
    objective: float
    terms: dict[str, float]
    grad_norm: float
    n_iter: int
    converged: bool
    record: SolverRecord
    params: dict[str, Any]
    trajectory: Trajectory

    @property
    def rel_grad_norm(self) -> float:
        """Gradient norm relative to ``max(1, initial gradient norm)``, compared with ``tol``."""
        return self.record.rel_grad_norm

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary: scalars, settings, ``W`` and ``b``; the features are left out."""
        return json_safe(_fit_summary(self))


@dataclasses.dataclass(frozen=True, eq=False)
class MUFMSolution:
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
    terms : dict str -> float
        ``loss``, ``reg_w``, ``reg_b``, ``reg_h`` (on $H_L$) and ``transport``
        $\frac{\lambda_{OT}}2 L\sum_l c(H_{l-1}, H_l)$; they sum to ``objective``.
    grad_norm : float
        $\|\nabla f\|_2$ over the optimised variables ($H_L, W, b$ for ``solver="reduced"``,
        $H_1..H_L, W, b$ for ``solver="full"``).
    n_iter : int
    converged : bool
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

    layers: tuple[np.ndarray, ...]
    H: np.ndarray
    W: np.ndarray
    b: np.ndarray | None
    labels: np.ndarray
    objective: float
    terms: dict[str, float]
    grad_norm: float
    n_iter: int
    converged: bool
    record: SolverRecord
    params: dict[str, Any]
    embedding: np.ndarray | None
    assignment: np.ndarray | None
    mismatch_fraction: float | None
    trajectory: Trajectory
    path_excess: float | None = None
    assignment_rounds: int | None = None

    @property
    def X(self) -> np.ndarray:
        """The (embedded) input $H_0$, shape (N, d)."""
        return self.layers[0]

    @property
    def n_layers(self) -> int:
        """``L``, the number of transport steps."""
        return len(self.layers) - 1

    @property
    def rel_grad_norm(self) -> float:
        """Gradient norm relative to ``max(1, initial gradient norm)``, compared with ``tol``."""
        return self.record.rel_grad_norm

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary: scalars, settings, ``W`` and ``b``; the layers are left out."""
        return json_safe(
            {
                **_fit_summary(self),
                "mismatch_fraction": self.mismatch_fraction,
                "path_excess": self.path_excess,
                "assignment_rounds": self.assignment_rounds,
            }
        )


def _fit_summary(sol: Any) -> dict[str, Any]:
    """The record both fitted models share: objective, its terms, solver state, ``W`` and ``b``."""
    return {
        "objective": sol.objective,
        "terms": sol.terms,
        "grad_norm": sol.grad_norm,
        "n_iter": sol.n_iter,
        "converged": sol.converged,
        "record": sol.record.to_dict(),
        "params": sol.params,
        "W": sol.W,
        "b": sol.b,
    }


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().numpy().astype(np.float64, copy=True)


# --------------------------------------------------------------------------- UFM
def fit_ufm(
    y: ArrayLike,
    *,
    dim: int,
    lambda_w: float,
    lambda_h: float,
    lambda_b: float = 0.0,
    loss: str = "ce",
    bias: bool = True,
    seed: int = 0,
    tol: float = 1e-9,
    max_iter: int = 5000,
    device: Any = None,
) -> UFMSolution:
    r"""Fit the unconstrained feature model (one free feature layer, no input).

    $$\min_{H, W, b}\; \frac1N\sum_{i=1}^N \ell(W h_i + b, y_i)
      + \frac{\lambda_W}2\|W\|_F^2 + \frac{\lambda_b}2\|b\|^2 + \frac{\lambda_H}2\|H\|_F^2,$$

    with $\ell$ the cross-entropy or $\tfrac12\|z - e_y\|^2$, solved in float64 by L-BFGS with a
    strong-Wolfe line search from a seeded random start.

    Known optima (balanced classes, $n$ per class, $d \ge K$), used as the solver's tests:
    cross-entropy with bias (Zhu et al. 2021) and MSE with an unregularised bias give class means
    on a simplex ETF, zero within-class variability and $W$ aligned with the class means; MSE
    without bias gives an orthogonal frame. With $q = \sqrt{n\lambda_W\lambda_H}$ the cross-entropy
    optimum ($\lambda_b > 0$, so $b^* = 0$) has margin $x = \ln\frac{1-(K-1)q}{q}$ and
    $\|h_k\|^2 = \frac{K-1}K x\sqrt{\lambda_W/(n\lambda_H)}$ when $q < 1/K$ (else $H = 0$); the
    bias-free MSE optimum has $W h_i = (1 - Kq)\, e_{y_i}$.

    Parameters
    ----------
    y : array-like of int, shape (N,)
        Labels ``0..K-1``, every class present.
    dim : int
        Feature dimension ``d``.
    lambda_w, lambda_h, lambda_b : float
        Weight decays of ``W``, ``H`` and ``b`` (all >= 0).
    loss : {"ce", "mse"}
    bias : bool
        Fit a bias ``b`` (default True).
    seed : int
        Seeds the random start.
    tol : float
        Relative gradient-norm tolerance (see :func:`~otcollapse.surrogates.core.minimize_lbfgs`).
    max_iter : int
        L-BFGS iteration cap; reaching it gives ``converged=False`` and a ``ConvergenceWarning``.
    device : str or torch device, optional
        Where to run (default CPU); one that does not exist here (``"gpu"``, ``"cuda"`` without
        a CUDA GPU, a GPU index beyond the count) is a ValueError listing the available ones.

    Returns
    -------
    UFMSolution

    Raises
    ------
    ValueError
        Negative or non-finite λ, K < 2, labels not covering ``0..K-1``, ``dim < 1``, unknown
        ``loss``, ``tol <= 0``, ``max_iter < 0``, a device that does not exist here.
    TypeError
        Non-numeric λ or ``tol``; non-integer ``dim``, ``seed`` or ``max_iter``.

    References
    ----------
    Mixon, Parshall & Pi, "Neural collapse with unconstrained features", 2020.
    Zhu et al., "A Geometric Analysis of Neural Collapse with Unconstrained Features", NeurIPS 2021.
    Zhou et al., "On the Optimization Landscape of Neural Collapse under MSE Loss", ICML 2022.
    Tirer & Bruna, "Extended Unconstrained Features Model for Exploring Deep Neural Collapse",
    ICML 2022.
    """
    lambda_w = _check_lambda("lambda_w", lambda_w)
    lambda_h = _check_lambda("lambda_h", lambda_h)
    lambda_b = _check_lambda("lambda_b", lambda_b)
    _check_choice("loss", loss, _LOSSES)
    labels, K = _check_labels(y)
    d = check_int(dim, "dim (the feature dimension)", minimum=1)
    seed = check_int(seed, "seed")
    tol, max_iter = _check_solver(tol, max_iter)
    N = labels.size
    dev = torch.device("cpu") if device is None else check_device(device)
    gen = torch.Generator().manual_seed(int(seed))
    opts = dict(dtype=torch.float64)
    H = (torch.randn(N, d, generator=gen, **opts) / np.sqrt(d)).to(dev).requires_grad_()
    W = (torch.randn(K, d, generator=gen, **opts) / np.sqrt(d)).to(dev).requires_grad_()
    b = torch.zeros(K, device=dev, **opts).requires_grad_() if bias else None
    yt = torch.as_tensor(labels, device=dev)
    kw = dict(loss=loss, lambda_w=lambda_w, lambda_h=lambda_h, lambda_b=lambda_b)

    def fun() -> torch.Tensor:
        return sum(_terms(H, W, b, yt, **kw).values())

    params = [H, W] + ([b] if b is not None else [])
    record = minimize_lbfgs(fun, params, tol=tol, max_iter=max_iter, what="fit_ufm")
    with torch.no_grad():
        terms = _floats(_terms(H, W, b, yt, **kw))
    settings = {
        "model": "ufm",
        "dim": d,
        "n_classes": K,
        "n_samples": N,
        "lambda_w": lambda_w,
        "lambda_h": lambda_h,
        "lambda_b": lambda_b,
        "loss": loss,
        "bias": bool(bias),
        "seed": int(seed),
        "tol": float(tol),
        "max_iter": int(max_iter),
    }
    Hn, Wn, bn = _np(H), _np(W), _np(b)
    traj = Trajectory.from_arrays(
        [Hn], labels=labels, names=["H"], classifier=(Wn, bn), metadata=settings
    )
    return UFMSolution(
        H=Hn,
        W=Wn,
        b=bn,
        labels=labels,
        objective=float(sum(terms.values())),
        terms=terms,
        grad_norm=record.grad_norm,
        n_iter=record.n_iter,
        converged=record.converged,
        record=record,
        params=settings,
        trajectory=traj,
    )


# --------------------------------------------------------------------------- MUFM
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


#: cap on the alternations between assignments and smooth solves (full Wasserstein solver)
MAX_ASSIGNMENT_ROUNDS = 200


def _minimize_w2(
    terms_at: Callable[[list[torch.Tensor]], dict[str, torch.Tensor]],
    step_costs: Callable[[list[torch.Tensor]], torch.Tensor],
    assignments: Callable[[], list[torch.Tensor]],
    params: list[torch.Tensor],
    *,
    tol: float,
    max_iter: int,
    nonsmooth_first: bool = True,
) -> tuple[SolverRecord, list[torch.Tensor], int]:
    r"""Minimise $f(\theta) = \min_{\sigma_1..\sigma_L} f_\sigma(\theta)$ by alternation.

    $f_\sigma$ is the MUFM objective with the step assignments $\sigma_l$ held fixed (smooth);
    $f$ is the Wasserstein-coupled objective, nonsmooth where an optimal assignment changes.
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
        warnings.warn(
            f"fit_mufm (coupling='wasserstein', solver='full'): stopped after {rounds} assignment "
            f"rounds ({message}) with relative gradient norm {record.rel_grad_norm:.3e} "
            f"(tol = {tol:.1e}); the result says converged=False. Raise max_iter or loosen tol.",
            ConvergenceWarning,
            stacklevel=3,
        )
    return record, sigmas, rounds


def _warm_start(
    init: MUFMSolution, *, m: int, L: int, N: int, d: int, K: int, solver: str
) -> torch.Tensor:
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

    This normalisation and the paired coupling are this toolkit's formalisation of the MUFM that
    Wang, Gai & Zhang describe in words (a UFM whose layers are joined by an optimal-transport
    regulariser); see ``docs/mufm.md``. The module docstring gives the normalisation.

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
        ``"paired"``: the kinetic cost $c(A, B) = \|B - A\|_F^2$ (row $i$ to row $i$).
        ``"wasserstein"``: $c(A, B) = N\,W_2^2(\mu_A, \mu_B)
        = \min_\sigma \sum_i \|a_i - b_{\sigma(i)}\|^2$ (uniform measures, an optimal
        assignment), never above the paired cost; its gradient is taken at the optimal
        permutation held fixed (envelope theorem). ``solver="reduced"`` fills in the McCann
        interpolation $h_{l,i} = (1 - \frac lL) x_i + \frac lL h_{L,\sigma(i)}$;
        ``solver="full"`` optimises every layer as a free point cloud, with one optimal
        assignment $\sigma_l$ per step $H_{l-1} \to H_l$, and returns layer $l$ reordered
        along $\tau_l = \sigma_l \circ \dots \circ \sigma_1$. Either way row $i$ of every layer
        follows input sample $i$ and ``assignment`` is $\sigma$ (reduced) or $\tau_L$ (full).
        The result reports the fraction of samples matched to another class; the trajectory's
        labels are the inputs' and ``metadata["matched_labels"]`` holds $y_{\sigma(i)}$.
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
    lambda_ot = _check_lambda("lambda_ot", lambda_ot)
    lambda_w = _check_lambda("lambda_w", lambda_w)
    lambda_h = _check_lambda("lambda_h", lambda_h)
    lambda_b = _check_lambda("lambda_b", lambda_b)
    _check_choice("loss", loss, _LOSSES)
    _check_choice("coupling", coupling, _COUPLINGS)
    _check_choice("solver", solver, _SOLVERS)
    _check_choice("embed", embed, _EMBEDS)
    L = int(n_layers)
    if L < 1 or L != n_layers:
        raise ValueError(f"n_layers must be an integer >= 1 (transport steps); got {n_layers!r}.")
    seed = check_int(seed, "seed")
    tol, max_iter = _check_solver(tol, max_iter)
    if dim is not None:
        check_int(dim, "dim (the feature dimension)", minimum=1)
    check_not_complex(X, "X (the MUFM input H_0)")
    if is_tensor(X):
        Xt = X.detach().to(torch.float64)
    else:
        Xt = torch.as_tensor(to_numpy(X, dtype=np.float64, what="X (the MUFM input H_0)"))
    if Xt.ndim != 2 or Xt.shape[0] == 0 or Xt.shape[1] == 0:
        raise ValueError(f"X must be a non-empty 2-D array (N, d); got shape {tuple(Xt.shape)}.")
    check_finite(Xt, "X (the MUFM input H_0)")
    labels, K = _check_labels(y, Xt.shape[0])
    X0, E = _embed(Xt, dim, embed, seed)
    N, d = X0.shape
    dev = X0.device
    gen = torch.Generator().manual_seed(int(seed))
    W = (torch.randn(K, d, generator=gen, dtype=torch.float64) / np.sqrt(d)).to(dev)
    W.requires_grad_()
    b = torch.zeros(K, dtype=torch.float64, device=dev).requires_grad_() if bias else None
    yt = torch.as_tensor(labels, device=dev)
    kw = dict(loss=loss, lambda_w=lambda_w, lambda_h=lambda_h, lambda_b=lambda_b)
    steps = torch.arange(1, L + 1, dtype=torch.float64, device=dev).view(L, 1, 1) / L

    def optimal_assignment(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        # sigma with a_i matched to b_sigma(i), optimal for N W2^2(mu_A, mu_B); float64 costs, so
        # the permutation is exactly optimal (not only for float32-rounded costs)
        res = wasserstein(A.detach(), B.detach(), method="assignment", cost_dtype="float64")
        return torch.as_tensor(np.asarray(res.assignment), dtype=torch.long, device=dev)

    # the free layers: H_L alone (reduced; the interpolation is filled in afterwards) or H_1..H_L
    m = 1 if solver == "reduced" else L
    if init is None:
        start = X0.expand(m, N, d).clone()
    else:
        start = _warm_start(init, m=m, L=L, N=N, d=d, K=K, solver=solver).to(dev)
        with torch.no_grad():
            W.copy_(torch.as_tensor(init.W, dtype=torch.float64, device=dev))
            if b is not None and init.b is not None:
                b.copy_(torch.as_tensor(init.b, dtype=torch.float64, device=dev))
    Hs = start.requires_grad_()
    params = [Hs, W] + ([b] if b is not None else [])

    def path() -> torch.Tensor:
        return torch.cat([X0.unsqueeze(0), Hs], dim=0)

    rounds: int | None = None
    sigmas: list[torch.Tensor] = []
    if coupling == "paired":

        def all_terms() -> dict[str, torch.Tensor]:
            t = _terms(Hs[-1], W, b, yt, **kw)
            p = path()
            t["transport"] = 0.5 * lambda_ot * m * (p[1:] - p[:-1]).pow(2).sum()
            return t

        record = minimize_lbfgs(
            lambda: sum(all_terms().values()), params, tol=tol, max_iter=max_iter, what="fit_mufm"
        )
    else:

        def assignments() -> list[torch.Tensor]:
            with torch.no_grad():
                p = path()
                return [optimal_assignment(p[l], p[l + 1]) for l in range(m)]

        def step_costs(sig: list[torch.Tensor]) -> torch.Tensor:
            # c(H_{l-1}, H_l) under the assignments sigma_l: h_{l-1,i} <-> h_{l,sigma_l(i)}
            p = path()
            return torch.stack([(p[l + 1][s] - p[l]).pow(2).sum() for l, s in enumerate(sig)])

        def terms_at(sig: list[torch.Tensor]) -> dict[str, torch.Tensor]:
            t = _terms(Hs[-1], W, b, yt, **kw)
            t["transport"] = 0.5 * lambda_ot * m * step_costs(sig).sum()
            return t

        record, sigmas, rounds = _minimize_w2(
            terms_at, step_costs, assignments, params, tol=tol, max_iter=max_iter
        )

        def all_terms() -> dict[str, torch.Tensor]:
            return terms_at(sigmas)

    with torch.no_grad():
        terms = _floats(all_terms())
        sigma_np: np.ndarray | None = None
        mismatch: float | None = None
        path_excess: float | None = None
        last = Hs.detach()[-1]
        if coupling == "paired":
            end = last
            inner = Hs.detach()
        else:
            # follow each input sample along the chain of assignments, tau_l = sigma_l o .. o
            # sigma_1, so that row i of every layer is sample i's feature
            tau = torch.arange(N, device=dev)
            rows = []
            for l, s in enumerate(sigmas):
                tau = s[tau]
                rows.append(Hs.detach()[l][tau])
            inner = torch.stack(rows)
            end = last[tau]
            sigma_np = tau.cpu().numpy()
            mismatch = float(np.mean(labels[sigma_np] != labels))
        if solver == "reduced":
            inner = X0 + steps * (end - X0)
        else:
            direct = (
                (last - X0) if coupling == "paired" else last[optimal_assignment(X0, last)] - X0
            )
            path_excess = terms["transport"] - 0.5 * lambda_ot * float(direct.pow(2).sum())
    layers = (_np(X0), *(_np(h) for h in inner))
    settings = {
        "model": "mufm",
        "n_layers": L,
        "dim": d,
        "data_dim": int(Xt.shape[1]),
        "embed": None if E is None else embed,
        "n_classes": K,
        "n_samples": N,
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
    if sigma_np is not None:
        settings["mismatch_fraction"] = mismatch
        settings["matched_labels"] = labels[sigma_np].tolist()
    Wn, bn = _np(W), _np(b)
    traj = Trajectory.from_arrays(
        list(layers),
        labels=labels,
        names=[f"H{l}" for l in range(L + 1)],
        classifier=(Wn, bn),
        metadata=settings,
    )
    return MUFMSolution(
        layers=layers,
        H=_np(last),
        W=Wn,
        b=bn,
        labels=labels,
        objective=float(sum(terms.values())),
        terms=terms,
        grad_norm=record.grad_norm,
        n_iter=record.n_iter,
        converged=record.converged,
        record=record,
        params=settings,
        embedding=E,
        assignment=sigma_np,
        mismatch_fraction=mismatch,
        trajectory=traj,
        path_excess=path_excess,
        assignment_rounds=rounds,
    )
