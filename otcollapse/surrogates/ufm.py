r"""The unconstrained feature model (UFM): one free feature layer and a linear classifier.

UFM (Mixon, Parshall & Pi 2020; normalisation of Zhu et al. 2021): free features
$H \in \mathbb R^{N\times d}$ (row $h_i$ for sample $i$), a linear classifier
$W \in \mathbb R^{K\times d}$ and bias $b \in \mathbb R^K$,

$$\min_{H, W, b}\; \frac1N\sum_{i=1}^N \ell(W h_i + b, y_i)
  + \frac{\lambda_W}2\|W\|_F^2 + \frac{\lambda_b}2\|b\|^2 + \frac{\lambda_H}2\|H\|_F^2 ,$$

$\ell$ the cross-entropy (``loss="ce"``) or the squared error to the one-hot target,
$\ell(z, y) = \tfrac12\|z - e_y\|^2$ (``loss="mse"``). These terms (:func:`_terms`) are the last
layer of every model built on the UFM: the MUFM (:mod:`otcollapse.surrogates.mufm`) adds a transport
regulariser between layers, the perturbation model (:mod:`otcollapse.surrogates.perturbation`) is a
one-step MSE MUFM.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from otcollapse._utils import ArrayLike, check_device
from otcollapse._validation import check_int
from otcollapse.measures import Trajectory
from otcollapse.surrogates.core import (
    SolverRecord,
    SolverSolution,
    _check_choice,
    _check_lambdas,
    _check_solver,
    _class_labels,
    _np,
    minimize_lbfgs,
)

__all__ = ["UFMSolution", "fit_ufm"]

_LOSSES = ("ce", "mse")


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
    """The UFM's terms at the last layer ``HL``: ``loss``, ``reg_w``, ``reg_b``, ``reg_h``."""
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


def _fitted_fields(
    H: np.ndarray,
    layers: list[np.ndarray],
    names: list[str],
    W: torch.Tensor,
    b: torch.Tensor | None,
    labels: np.ndarray,
    terms: dict[str, float],
    record: SolverRecord,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The fields of a fit of the UFM family (``b`` included): the features ``H``, the classifier
    as float64 arrays and the trajectory of ``layers`` with labels, classifier and settings."""
    Wn, bn = _np(W), _np(b)
    traj = Trajectory.from_arrays(
        layers, labels=labels, names=names, classifier=(Wn, bn), metadata=settings
    )
    return {
        "H": H,
        "W": Wn,
        "b": bn,
        "labels": labels,
        "terms": terms,
        "record": record,
        "params": settings,
        "trajectory": traj,
    }


# --------------------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True, eq=False)
class FeatureSolution(SolverSolution):
    r"""The fields every fitted model of the UFM family shares (UFM, MUFM, perturbation model).

    ``objective`` is the sum of ``terms``; ``grad_norm``, ``n_iter``, ``converged`` and
    ``rel_grad_norm`` are read from ``record``. ``to_dict`` records the scalars, the settings, the
    solver record and the classifier; the features and the trajectory are left out.
    """

    H: np.ndarray
    W: np.ndarray
    labels: np.ndarray
    terms: dict[str, float]
    record: SolverRecord
    params: dict[str, Any]
    trajectory: Trajectory

    _unrecorded = ("H", "labels", "trajectory")


@dataclasses.dataclass(frozen=True, eq=False)
class UFMSolution(FeatureSolution):
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
        The objective value at the returned point (the sum of ``terms``).
    terms : dict str -> float
        ``loss`` $\frac1N\sum_i\ell$, ``reg_w``, ``reg_b``, ``reg_h`` (each with its
        $\lambda/2$ factor); they sum to ``objective``.
    grad_norm : float
        $\|\nabla f\|_2$ over all optimised variables at the returned point (from ``record``).
    n_iter : int
        From ``record``.
    converged : bool
        From ``record``.
    record : SolverRecord
        The solver's full record.
    params : dict
        The model and solver settings.
    trajectory : Trajectory
        One layer (``H``) with labels and the classifier ``(W, b)``.
    """

    b: np.ndarray | None


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
    lambda_w, lambda_h, lambda_b = _check_lambdas(
        lambda_w=lambda_w, lambda_h=lambda_h, lambda_b=lambda_b
    )
    _check_choice("loss", loss, _LOSSES)
    labels, K = _class_labels(y)
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
        **kw,
        "bias": bool(bias),
        "seed": int(seed),
        "tol": float(tol),
        "max_iter": int(max_iter),
    }
    Hn = _np(H)
    return UFMSolution(**_fitted_fields(Hn, [Hn], ["H"], W, b, labels, terms, record, settings))
