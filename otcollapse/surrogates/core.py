r"""The float64 solver core shared by the unconstrained-feature surrogate models.

Every surrogate model (UFM, MUFM, ...) is a smooth objective $f(\theta)$ of a few tensors; it is
minimised here by L-BFGS with a strong-Wolfe line search (``torch.optim.LBFGS`` with
``line_search_fn="strong_wolfe"``) in float64, and the run is summarised by a
:class:`SolverRecord`. Convergence is tested on the Euclidean norm of the full gradient,

$$\|\nabla f(\theta_t)\|_2 \le \mathrm{tol}\cdot\max\big(1, \|\nabla f(\theta_0)\|_2\big),$$

and ``rel_grad_norm`` $= \|\nabla f(\theta_t)\|_2 / \max(1, \|\nabla f(\theta_0)\|_2)$ is the
quantity compared with ``tol``. A run that stops for any other reason (``max_iter`` reached, or the
line search no longer moving the iterate) returns ``converged=False`` and issues a
:class:`~otcollapse.transport.ConvergenceWarning`; it is never silent.

References
----------
Nocedal & Wright, *Numerical Optimization*, 2nd ed., Springer 2006 (L-BFGS, Algorithm 7.4; the
strong Wolfe conditions, Section 3.1).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from otcollapse._utils import ArrayLike, to_numpy
from otcollapse._validation import check_int, check_real
from otcollapse.exceptions import ConvergenceWarning

__all__ = ["SolverRecord", "minimize_lbfgs"]

#: consecutive iterations without any change of the iterate before the run is called stalled
_STALL_ITERATIONS = 3


@dataclasses.dataclass(frozen=True)
class SolverRecord:
    """What the solver did: iterations, gradient norms, convergence.

    Attributes
    ----------
    method : str
        ``"lbfgs-strong-wolfe"``.
    n_iter : int
        L-BFGS iterations run.
    n_evals : int
        Objective-and-gradient evaluations (line-search trials included).
    grad_norm : float
        $\\|\\nabla f\\|_2$ at the returned point.
    rel_grad_norm : float
        ``grad_norm / max(1, initial gradient norm)``, the quantity compared with ``tol``.
    converged : bool
        ``rel_grad_norm <= tol``.
    tol, max_iter, history_size : float, int, int
        The solver's settings.
    seconds : float
        Wall-clock time of the run.
    message : str
        Why the run stopped.
    """

    method: str
    n_iter: int
    n_evals: int
    grad_norm: float
    rel_grad_norm: float
    converged: bool
    tol: float
    max_iter: int
    history_size: int
    seconds: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary of the record."""
        return dataclasses.asdict(self)


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _gradient(fun: Callable[[], torch.Tensor], params: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.enable_grad():
        return list(torch.autograd.grad(fun(), params, create_graph=True, allow_unused=False))


def _newton_polish(
    fun: Callable[[], torch.Tensor],
    params: list[torch.Tensor],
    target: float,
    gn: float,
    max_steps: int = 20,
    cg_iter: int = 500,
) -> tuple[float, bool, int]:
    """Newton-CG steps (Hessian-vector products by autograd) accepted while they shrink the gradient.

    Used once the line search stalls at the rounding floor of the function values: the gradient
    is still accurate there, and Newton steps need no function-value comparison.
    """
    steps = 0
    for _ in range(max_steps):
        grads = _gradient(fun, params)
        g = _flat(grads)
        gnorm = float(torch.linalg.vector_norm(g.detach()))
        if gnorm <= target:
            return gnorm, True, steps

        def hvp(v: torch.Tensor, g: torch.Tensor = g) -> torch.Tensor:
            # the graph of `grads` is reused for every product within one Newton step
            return _flat(torch.autograd.grad(g, params, grad_outputs=v, retain_graph=True))

        # conjugate gradients on H p = -g, stopped at negative curvature
        p = torch.zeros_like(g)
        r = -g.detach()
        dvec = r.clone()
        rr = float((r @ r).detach())
        for _ in range(cg_iter):
            hd = hvp(dvec).detach()
            curv = float(dvec @ hd)
            if curv <= 0:
                break
            alpha = rr / curv
            p = p + alpha * dvec
            r = r - alpha * hd.detach()
            rr_new = float(r @ r)
            if rr_new**0.5 <= 1e-3 * min(1.0, gnorm) * gnorm:
                break
            dvec = r + (rr_new / rr) * dvec
            rr = rr_new
        if not bool(torch.any(p != 0)):
            break
        old = [q.detach().clone() for q in params]
        with torch.no_grad():
            offset = 0
            for q in params:
                q.add_(p[offset : offset + q.numel()].view_as(q))
                offset += q.numel()
        new = float(torch.linalg.vector_norm(_flat(_gradient(fun, params)).detach()))
        if not new < gnorm:
            with torch.no_grad():
                for q, o in zip(params, old, strict=True):
                    q.copy_(o)
            break
        steps += 1
        gn = new
    return gn, gn <= target, steps


#: memory for L-BFGS's curvature pairs (two float64 copies of the parameters per pair)
HISTORY_BYTES = 1024**3


def minimize_lbfgs(
    fun: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    *,
    tol: float = 1e-9,
    max_iter: int = 5000,
    history_size: int = 50,
    what: str = "solver",
    warn: bool = True,
) -> SolverRecord:
    r"""Minimise a scalar objective of leaf tensors in place by L-BFGS with strong-Wolfe search.

    Stops when $\|\nabla f\|_2 \le \mathrm{tol}\cdot\max(1, \|\nabla f(\theta_0)\|_2)$, after
    ``max_iter`` iterations, or when the line search stops moving the iterate.

    Parameters
    ----------
    fun : callable
        ``fun()`` returns the objective (a 0-d float64 tensor) computed from ``params``; it must be
        differentiable by autograd.
    params : sequence of Tensor
        Leaf float64 tensors with ``requires_grad=True``; they are updated in place and hold the
        returned point.
    tol : float
        Relative gradient-norm tolerance (default 1e-9; far below it the strong-Wolfe
        test on function values hits the float64 rounding floor).
    max_iter : int
        Maximum number of L-BFGS iterations.
    history_size : int
        Number of curvature pairs kept, at most: each pair holds two copies of the parameters,
        so the history is capped to ``HISTORY_BYTES`` (1 GiB) and never below 3 pairs (50 pairs
        of an N = 10,000, d = 256, L = 8 full MUFM would need 16 GB).
    what : str
        Names the problem in the warning.
    warn : bool
        Issue a :class:`~otcollapse.transport.ConvergenceWarning` when not converged (default).

    Returns
    -------
    SolverRecord

    Raises
    ------
    ValueError
        ``tol`` not a finite number > 0, ``max_iter < 0``, ``history_size < 1``, a parameter not a
        float64 leaf requiring grad, or a non-finite objective at the starting point.
    TypeError
        A non-numeric ``tol`` or a non-integer ``max_iter`` / ``history_size``.
    """
    tol, max_iter = _check_solver(tol, max_iter)
    history_size = check_int(history_size, "history_size", minimum=1)
    params = list(params)
    for i, p in enumerate(params):
        if p.dtype != torch.float64 or not p.requires_grad or not p.is_leaf:
            raise ValueError(
                f"parameter {i} must be a float64 leaf tensor with requires_grad=True; "
                f"got dtype {p.dtype}, requires_grad={p.requires_grad}, leaf={p.is_leaf}."
            )
    t0 = time.perf_counter()
    cache: dict[str, Any] = {"x": None, "loss": None, "grads": None, "evals": 0}

    def closure() -> torch.Tensor:
        # torch's LBFGS re-evaluates the current point at the start of every step(); serve that
        # call from the cache instead of recomputing the objective.
        with torch.no_grad():
            x = _flat([p.detach() for p in params])
        if cache["x"] is not None and torch.equal(x, cache["x"]):
            for p, g in zip(params, cache["grads"], strict=True):
                p.grad = g.clone()
            return cache["loss"].clone()
        for p in params:
            p.grad = None
        with torch.enable_grad():
            loss = fun()
            loss.backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        cache.update(x=x, loss=loss.detach().clone(), grads=grads)
        cache["evals"] += 1
        return loss.detach()

    def grad_norm() -> float:
        return float(torch.linalg.vector_norm(_flat(cache["grads"])))

    n_params = sum(int(p.numel()) for p in params)
    history_size = int(max(3, min(history_size, HISTORY_BYTES // max(1, 16 * n_params))))
    loss0 = closure()
    if not math.isfinite(float(loss0)):
        raise ValueError(f"{what}: the objective is not finite at the starting point.")
    g0 = grad_norm()
    scale = max(1.0, g0)
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=1,
        max_eval=50,
        tolerance_grad=0.0,
        tolerance_change=0.0,
        history_size=history_size,
        line_search_fn="strong_wolfe",
    )
    n_iter = 0
    stalled = 0
    gn = g0
    message = "max_iter reached"
    converged = gn <= tol * scale
    if converged:
        message = "gradient tolerance met at the starting point"
    while not converged and n_iter < max_iter:
        x_before = cache["x"]
        opt.step(closure)
        n_iter += 1
        closure()  # make the cache describe the current iterate
        gn = grad_norm()
        if not math.isfinite(float(cache["loss"])) or not math.isfinite(gn):
            message = "the objective or its gradient became non-finite"
            break
        if gn <= tol * scale:
            converged = True
            message = "gradient tolerance met"
            break
        stalled = stalled + 1 if torch.equal(cache["x"], x_before) else 0
        if stalled >= _STALL_ITERATIONS:
            message = "the line search stopped moving the iterate (precision floor)"
            break
    if not converged and message.startswith("the line search"):
        gn, converged, polished = _newton_polish(fun, params, tol * scale, gn)
        if converged:
            message = f"gradient tolerance met after {polished} Newton-CG polishing steps"
        cache["evals"] += 2 * polished
    for p in params:
        p.grad = None
    record = SolverRecord(
        method="lbfgs-strong-wolfe",
        n_iter=n_iter,
        n_evals=int(cache["evals"]),
        grad_norm=gn,
        rel_grad_norm=gn / scale,
        converged=bool(converged),
        tol=float(tol),
        max_iter=int(max_iter),
        history_size=int(history_size),
        seconds=time.perf_counter() - t0,
        message=message,
    )
    if not converged and warn:
        warnings.warn(
            f"{what}: L-BFGS stopped after {n_iter} iterations ({message}) with relative "
            f"gradient norm {record.rel_grad_norm:.3e} > tol = {tol:.1e}; the result says "
            "converged=False. Raise max_iter, loosen tol, or rescale the problem.",
            ConvergenceWarning,
            stacklevel=3,
        )
    return record


# ----------------------------------------------- validation shared by the surrogate models
def _check_lambda(name: str, value: float) -> float:
    return check_real(value, name, minimum=0.0)


def _check_solver(tol: float, max_iter: int) -> tuple[float, int]:
    """The solver's tolerance (finite, > 0) and iteration cap (an int >= 0)."""
    tol = check_real(tol, "tol (the relative gradient-norm tolerance)", minimum=0.0, open_min=True)
    return tol, check_int(max_iter, "max_iter", minimum=0)


def _check_labels(y: ArrayLike, n: int | None = None) -> tuple[np.ndarray, int]:
    labels = to_numpy(y)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array; got shape {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise ValueError("labels must be integers 0..K-1.")
    labels = labels.astype(np.int64)
    if n is not None and labels.size != n:
        raise ValueError(
            f"labels have length {labels.size} but X has {n} samples; pass one label per row of X."
        )
    if labels.min() < 0:
        raise ValueError(f"labels must be integers 0..K-1; got a label {labels.min()}.")
    K = int(labels.max()) + 1
    if K < 2:
        raise ValueError(f"an unconstrained feature model needs K >= 2 classes; got K = {K}.")
    missing = np.setdiff1d(np.arange(K), labels)
    if missing.size:
        raise ValueError(
            f"labels must cover 0..K-1 = 0..{K - 1}; classes {missing.tolist()} have no sample. "
            "Relabel the classes consecutively."
        )
    return labels, K


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}.")
    return value
