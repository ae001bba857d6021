r"""The float64 solver core shared by the unconstrained-feature surrogate models.

Every surrogate model (UFM, MUFM, ...) is a smooth objective $f(\theta)$ of a few tensors; it is
minimised here by L-BFGS with a strong-Wolfe line search (``torch.optim.LBFGS`` with
``line_search_fn="strong_wolfe"``) in float64, and the run is summarised by a
:class:`SolverRecord`. Convergence is tested on the Euclidean norm of the full gradient,

$$\|\nabla f(\theta_t)\|_2 \le \mathrm{tol}\cdot\max\big(1, \|\nabla f(\theta_0)\|_2\big),$$

and ``rel_grad_norm`` $= \|\nabla f(\theta_t)\|_2 / \max(1, \|\nabla f(\theta_0)\|_2)$ is the
quantity compared with ``tol``. A run that stops for any other reason (``max_iter`` reached, or the
line search no longer moving the iterate) returns ``converged=False`` and issues a
:class:`~otcollapse.exceptions.ConvergenceWarning`; it is never silent.

:class:`SolverSolution` is the base of the solutions the solver produces: their iterations,
convergence and gradient norm are read from their ``record``, never stored twice. The input checks
every surrogate model shares (weights, solver settings, labels, options) are here too.

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
from typing import ClassVar

import numpy as np
import torch

from otcollapse._results import Result
from otcollapse._utils import ArrayLike, to_numpy
from otcollapse._validation import check_int, check_labels, check_real
from otcollapse.exceptions import ConvergenceWarning

__all__ = ["SolverRecord", "SolverSolution", "minimize_lbfgs"]

#: consecutive iterations without any change of the iterate before the run is called stalled
_STALL_ITERATIONS = 3
_STALLED = "the line search stopped moving the iterate (precision floor)"


@dataclasses.dataclass(frozen=True)
class SolverRecord(Result):
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


class SolverSolution(Result):
    """Base of the solutions fitted by :func:`minimize_lbfgs`: values derived, never stored twice.

    ``objective`` is the sum of ``terms``; ``n_iter``, ``converged``, ``grad_norm`` and
    ``rel_grad_norm`` are the returned run's (its :class:`SolverRecord` ``record``). ``to_dict``
    records the first four beside the fields.
    """

    terms: dict[str, float]
    record: SolverRecord
    _derived: ClassVar[tuple[str, ...]] = ("objective", "grad_norm", "n_iter", "converged")

    @property
    def objective(self) -> float:
        """The objective value at the returned point, the sum of ``terms``."""
        return float(sum(self.terms.values()))

    @property
    def n_iter(self) -> int:
        """Iterations of the solver run."""
        return self.record.n_iter

    @property
    def converged(self) -> bool:
        """Whether the solver met its gradient tolerance."""
        return self.record.converged

    @property
    def grad_norm(self) -> float:
        r"""$\|\nabla f\|_2$ over all optimised variables at the returned point."""
        return self.record.grad_norm

    @property
    def rel_grad_norm(self) -> float:
        """Gradient norm relative to ``max(1, initial gradient norm)``, compared with ``tol``."""
        return self.record.rel_grad_norm


def _warn_unconverged(
    what: str, how: str, record: SolverRecord, advice: str = "", stacklevel: int = 1
) -> None:
    """The one :class:`ConvergenceWarning` of the surrogate models: who stopped, how, how far off,
    and what to do (``advice``). ``stacklevel`` counts from the caller, as in ``warnings.warn``."""
    warnings.warn(
        f"{what}: {how} with relative gradient norm {record.rel_grad_norm:.3e} > tol = "
        f"{record.tol:.1e}; the result says converged=False." + (f" {advice}" if advice else ""),
        ConvergenceWarning,
        stacklevel=stacklevel + 1,
    )


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


class _Objective:
    """``fun`` and its gradient, cached at the last point evaluated.

    torch's LBFGS re-evaluates the current point at the start of every ``step()``; that call is
    served from the cache instead of recomputing the objective. Calling the instance is the
    closure ``LBFGS.step`` needs (it leaves the gradient in ``p.grad``).
    """

    def __init__(self, fun: Callable[[], torch.Tensor], params: list[torch.Tensor]) -> None:
        self.fun, self.params = fun, params
        self.x: torch.Tensor | None = None
        self.loss: torch.Tensor | None = None
        self.grads: list[torch.Tensor] = []
        self.evals = 0

    def __call__(self) -> torch.Tensor:
        with torch.no_grad():
            x = _flat([p.detach() for p in self.params])
        if self.x is not None and torch.equal(x, self.x):
            for p, g in zip(self.params, self.grads, strict=True):
                p.grad = g.clone()
            return self.loss.clone()
        for p in self.params:
            p.grad = None
        with torch.enable_grad():
            loss = self.fun()
            loss.backward()
        self.grads = [
            torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in self.params
        ]
        for p, g in zip(self.params, self.grads, strict=True):
            p.grad = g.clone()
        self.x, self.loss = x, loss.detach().clone()
        self.evals += 1
        return loss.detach()

    def grad_norm(self) -> float:
        return float(torch.linalg.vector_norm(_flat(self.grads)))


def _iterate(
    opt: torch.optim.LBFGS, obj: _Objective, *, target: float, max_iter: int
) -> tuple[int, float, bool, str]:
    """L-BFGS steps until the gradient norm is at most ``target``: (iterations, gradient norm,
    converged, why it stopped)."""
    gn = obj.grad_norm()
    if gn <= target:
        return 0, gn, True, "gradient tolerance met at the starting point"
    stalled = 0
    for n_iter in range(1, max_iter + 1):
        x_before = obj.x
        opt.step(obj)
        obj()  # make the cache describe the current iterate
        gn = obj.grad_norm()
        if not math.isfinite(float(obj.loss)) or not math.isfinite(gn):
            return n_iter, gn, False, "the objective or its gradient became non-finite"
        if gn <= target:
            return n_iter, gn, True, "gradient tolerance met"
        stalled = stalled + 1 if torch.equal(obj.x, x_before) else 0
        if stalled >= _STALL_ITERATIONS:
            return n_iter, gn, False, _STALLED
    return max_iter, gn, False, "max_iter reached"


def _check_params(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    params = list(params)
    for i, p in enumerate(params):
        if p.dtype != torch.float64 or not p.requires_grad or not p.is_leaf:
            raise ValueError(
                f"parameter {i} must be a float64 leaf tensor with requires_grad=True; "
                f"got dtype {p.dtype}, requires_grad={p.requires_grad}, leaf={p.is_leaf}."
            )
    return params


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
    ``max_iter`` iterations, or when the line search stops moving the iterate (then a few
    Newton-CG steps, accepted while they shrink the gradient, may still meet the tolerance).

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
        Issue a :class:`~otcollapse.exceptions.ConvergenceWarning` when not converged (default).

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
    params = _check_params(params)
    t0 = time.perf_counter()
    obj = _Objective(fun, params)
    n_params = sum(int(p.numel()) for p in params)
    history_size = int(max(3, min(history_size, HISTORY_BYTES // max(1, 16 * n_params))))
    if not math.isfinite(float(obj())):
        raise ValueError(f"{what}: the objective is not finite at the starting point.")
    scale = max(1.0, obj.grad_norm())
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
    n_iter, gn, converged, message = _iterate(opt, obj, target=tol * scale, max_iter=max_iter)
    if message == _STALLED:
        gn, converged, polished = _newton_polish(fun, params, tol * scale, gn)
        if converged:
            message = f"gradient tolerance met after {polished} Newton-CG polishing steps"
        obj.evals += 2 * polished
    for p in params:
        p.grad = None
    record = SolverRecord(
        method="lbfgs-strong-wolfe",
        n_iter=n_iter,
        n_evals=obj.evals,
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
        _warn_unconverged(
            what,
            f"L-BFGS stopped after {n_iter} iterations ({message})",
            record,
            "Raise max_iter, loosen tol, or rescale the problem.",
            stacklevel=3,
        )
    return record


# ----------------------------------------------- validation shared by the surrogate models
def _check_lambda(name: str, value: float) -> float:
    return check_real(value, name, minimum=0.0)


def _check_lambdas(**values: float) -> list[float]:
    """Each weight (>= 0, finite), in the order given, checked by its keyword's name."""
    return [_check_lambda(name, v) for name, v in values.items()]


def _check_solver(tol: float, max_iter: int) -> tuple[float, int]:
    """The solver's tolerance (finite, > 0) and iteration cap (an int >= 0)."""
    tol = check_real(tol, "tol (the relative gradient-norm tolerance)", minimum=0.0, open_min=True)
    return tol, check_int(max_iter, "max_iter", minimum=0)


def _class_labels(y: ArrayLike, n: int | None = None) -> tuple[np.ndarray, int]:
    """Labels ``0..K-1`` with every class present and K >= 2 (:func:`check_labels`), and K.

    ``n`` is the number of samples the labels must match (default: as many as given).
    """
    if n is None:
        shape = to_numpy(y, what="labels").shape
        if not shape:
            raise ValueError("labels must be an array of class indices, shape (n,); got a scalar.")
        n = shape[0]
    labels = check_labels(y, n, min_classes=2)
    if labels.size == 0:
        raise ValueError(
            "labels are empty; an unconstrained feature model needs samples of K >= 2 classes."
        )
    return labels, int(labels.max()) + 1


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}.")
    return value


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    """A float64 NumPy copy of a tensor (None stays None)."""
    return None if t is None else t.detach().cpu().numpy().astype(np.float64, copy=True)
