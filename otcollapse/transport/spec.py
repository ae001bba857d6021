"""What to solve and how: the solver registry and :class:`TransportSpec`.

Shaped like OTT-JAX's geometry -> problem -> solver -> output: a :class:`TransportSpec` (a
method, its typed options and the memory budget) is checked once, at the public boundary, and
then solves any number of problems (:class:`~otcollapse.transport.geometry.PointCloudCost` and
two weight vectors) without checking the data again. The registry maps each method to its
solver, its options type and the dense (n, m) float64 matrices it holds at its peak, so
``method="auto"``, the analyses and the docs read one memory model.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch

from otcollapse._utils import ArrayLike, check_finite, to_numpy
from otcollapse._validation import check_int, check_weights
from otcollapse.exceptions import ConvergenceWarning, DenseBudgetError
from otcollapse.transport.assignment import ASSIGNMENT_COPIES, solve_assignment
from otcollapse.transport.entropic import solve_sinkhorn
from otcollapse.transport.gaussian import solve_gaussian
from otcollapse.transport.geometry import (
    DEFAULT_MAX_DENSE_BYTES,
    PointCloudCost,
    format_bytes,
    is_uniform,
)
from otcollapse.transport.gromov import solve_gromov
from otcollapse.transport.network_simplex import EXACT_COPIES, solve_exact
from otcollapse.transport.options import (
    AssignmentOptions,
    ExactOptions,
    GaussianOptions,
    GromovOptions,
    SinkhornOptions,
    SlicedOptions,
    SolverOptions,
)
from otcollapse.transport.result import TransportResult
from otcollapse.transport.sliced import solve_sliced

__all__ = ["METHODS", "AutoOptions", "Method", "TransportSpec", "transport_methods"]


class Method(NamedTuple):
    """One entry of the registry."""

    solve: Callable[..., TransportResult]
    options: type[SolverOptions]
    #: dense float64 (n, m) matrices the solver holds at its peak (0: none)
    dense_copies: float


#: method name -> (solver, options type, dense copies); adding a solver is one function, one
#: options type and one line here. Gromov–Wasserstein takes the two clouds, not one geometry.
METHODS: dict[str, Method] = {
    "exact": Method(solve_exact, ExactOptions, EXACT_COPIES),
    "assignment": Method(solve_assignment, AssignmentOptions, ASSIGNMENT_COPIES),
    "sinkhorn": Method(solve_sinkhorn, SinkhornOptions, 0.0),
    "sliced": Method(solve_sliced, SlicedOptions, 0.0),
    "gaussian": Method(solve_gaussian, GaussianOptions, 0.0),
    "gromov": Method(solve_gromov, GromovOptions, 0.0),
}
#: the solvers ``auto`` may route to, in the order it considers them
AUTO_ROUTES = ("assignment", "exact", "sinkhorn")


def transport_methods() -> tuple[str, ...]:
    """The names ``wasserstein(..., method=...)`` accepts."""
    return ("auto", *METHODS)


def _owners() -> dict[str, str]:
    """option name -> the first method that takes it (for the error messages)."""
    out: dict[str, str] = {}
    for name, entry in METHODS.items():
        for opt in entry.options.names():
            out.setdefault(opt, name)
    return out


@dataclasses.dataclass(frozen=True)
class AutoOptions:
    """The options of ``method="auto"``: those of every solver it may route to (assignment,
    network simplex, chunked Sinkhorn). Each solver takes the options it names; the result's
    ``params["auto"]`` says which solver ran, and ``params["unused_options"]`` lists the given
    options it does not take (the same at every size)."""

    given: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    routes: Mapping[str, SolverOptions] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_kwargs(cls, options: Mapping[str, Any]) -> AutoOptions:
        named = {m: set(METHODS[m].options.names()) for m in AUTO_ROUTES}
        unknown = sorted(set(options) - set().union(*named.values()))
        if unknown:
            valid = sorted(set().union(*named.values()))
            raise ValueError(
                f"method='auto' (assignment, exact or chunked Sinkhorn) takes no option(s) "
                f"{unknown}; its options: {valid}."
            )
        routes = {
            m: METHODS[m].options.from_kwargs({k: v for k, v in options.items() if k in named[m]})
            for m in AUTO_ROUTES
        }
        return cls(dict(options), routes)

    def unused_by(self, method: str) -> list[str]:
        """The given options that ``method`` does not take."""
        return sorted(set(self.given) - set(METHODS[method].options.names()))


@dataclasses.dataclass(frozen=True)
class TransportSpec:
    """A transport method, its typed options and the memory budget, checked once.

    Build one with :meth:`TransportSpec.create` (keywords, as :func:`wasserstein` takes them) or
    pass ``transport="auto"`` / a method name to the analyses; they accept a spec as is.

    >>> spec = TransportSpec.create("sinkhorn", eps=0.1)
    >>> spec.options.eps, spec.options.max_iter
    (0.1, 2000)
    """

    method: str = "auto"
    options: SolverOptions | AutoOptions = dataclasses.field(default_factory=AutoOptions)
    max_dense_bytes: int = DEFAULT_MAX_DENSE_BYTES

    def __post_init__(self) -> None:
        if self.method not in transport_methods():
            raise ValueError(
                f"unknown method {self.method!r}; choose one of {list(transport_methods())}."
            )
        want = AutoOptions if self.method == "auto" else METHODS[self.method].options
        if not isinstance(self.options, want):
            raise TypeError(
                f"method={self.method!r} takes {want.__name__}; got "
                f"{type(self.options).__name__} (build specs with TransportSpec.create)."
            )
        budget = check_int(self.max_dense_bytes, "max_dense_bytes", minimum=0)
        object.__setattr__(self, "max_dense_bytes", budget)

    @classmethod
    def create(
        cls,
        method: str = "auto",
        *,
        max_dense_bytes: int = DEFAULT_MAX_DENSE_BYTES,
        **options: Any,
    ) -> TransportSpec:
        """The spec of ``method`` with ``options`` checked: an unknown name, a wrong type, a value
        out of range or an option of another solver is a clear error here."""
        if method not in transport_methods():
            raise ValueError(
                f"unknown method {method!r}; choose one of {list(transport_methods())}."
            )
        opts = (
            AutoOptions.from_kwargs(options)
            if method == "auto"
            else METHODS[method].options.from_kwargs(options, _owners())
        )
        return cls(method, opts, max_dense_bytes)

    @classmethod
    def coerce(cls, transport: str | TransportSpec | None = None, **options: Any) -> TransportSpec:
        """``transport`` as a spec: a method name (with ``options``) or a spec (as is; extra
        ``options`` are then refused: give them to the spec)."""
        if isinstance(transport, TransportSpec):
            if options:
                raise ValueError(
                    f"options {sorted(options)} were given beside a TransportSpec; put them in the "
                    "spec (TransportSpec.create(method, **options))."
                )
            return transport
        if transport is None:
            transport = "auto"
        if not isinstance(transport, str):
            raise TypeError(
                f"transport must be a method name or a TransportSpec; got {type(transport).__name__}."
            )
        return cls.create(transport, **options)

    def with_options(self, **changes: Any) -> TransportSpec:
        """This spec with some options changed (checked like the others)."""
        if isinstance(self.options, AutoOptions):
            return TransportSpec.create(
                "auto", max_dense_bytes=self.max_dense_bytes, **{**self.options.given, **changes}
            )
        opts = self.options.from_kwargs({**self.options.as_kwargs(), **changes}, _owners())
        return TransportSpec(self.method, opts, self.max_dense_bytes)

    def dense_bytes(self, n: int, m: int, method: str | None = None) -> int:
        """Bytes of the dense matrices ``method`` (default this spec's; for ``auto`` the
        network simplex, its largest route) holds for an (n, m) problem."""
        method = method or self.method
        copies = METHODS["exact" if method == "auto" else method].dense_copies
        return int(copies * n * m * 8)

    # ------------------------------------------------------------------ solving
    def solve(
        self,
        x: Any,
        y: Any,
        a: Any = None,
        b: Any = None,
        *,
        validate: bool = False,
        stacklevel: int = 2,
    ) -> TransportResult:
        """Solve one problem. With ``validate=False`` the data must be checked already (finite,
        2-D, weights summing to one): the path of the analyses, which validated their
        :class:`Trajectory` once; ``validate=True`` checks them first (the front door's path).
        Warns (:class:`ConvergenceWarning`) when the result is not converged."""
        if validate:
            x, y, a, b = _check_problem(x, y, a, b, self.method)
        xt, yt = _as_tensor(x), _as_tensor(y)
        yt = yt.to(xt.device)
        dtype = torch.promote_types(xt.dtype, yt.dtype)
        xt, yt = xt.to(dtype), yt.to(dtype)
        at = _masses(a, xt.shape[0], xt.device)
        bt = _masses(b, yt.shape[0], xt.device)
        t0 = time.perf_counter()
        if self.method == "gromov":
            res = solve_gromov(xt, yt, at, bt, self.options, max_dense_bytes=self.max_dense_bytes)
        elif self.method == "auto":
            res = self._solve_auto(
                PointCloudCost(xt, yt, max_dense_bytes=self.max_dense_bytes), at, bt
            )
            res = dataclasses.replace(res, seconds=time.perf_counter() - t0)
        else:
            res = _run(
                self.method, PointCloudCost(xt, yt, self.max_dense_bytes), at, bt, self.options
            )
        if not res.converged:
            _warn(res, stacklevel + 1)
        return res

    def _solve_auto(
        self, geom: PointCloudCost, a: torch.Tensor, b: torch.Tensor
    ) -> TransportResult:
        routes = self.options.routes
        method, reason = _choose(geom, a, b)
        try:
            res = _run(method, geom, a, b, routes[method])
        except DenseBudgetError as err:
            if method != "assignment" or err.fallback is None:
                raise  # (a refusal of an explicit request, e.g. return_plan, stands)
            # the sparse path could not certify without the dense matrix, which does not fit
            method = "sinkhorn"
            reason = (
                f"the assignment's sparse path fell back ({err.fallback}); its dense matrices "
                "exceed max_dense_bytes: chunked Sinkhorn"
            )
            res = _run(method, geom, a, b, routes[method])
        params = {**res.params, "auto": reason}
        unused = self.options.unused_by(method)
        if unused:
            params["unused_options"] = unused
        return dataclasses.replace(res, params=params)


def _run(
    method: str, geom: PointCloudCost, a: torch.Tensor, b: torch.Tensor, opts: SolverOptions
) -> TransportResult:
    if method in ("exact", "assignment") and geom.dtype != torch.float64:
        # exact costs need the points in float64: a float32 shift or GEMM would round away
        # the distances inside a tight cluster (the transport.blocks module)
        geom = PointCloudCost(
            geom.x0.double(), geom.y0.double(), max_dense_bytes=geom.max_dense_bytes
        )
    return METHODS[method].solve(geom, a, b, opts)


def _choose(geom: PointCloudCost, a: torch.Tensor, b: torch.Tensor) -> tuple[str, str]:
    if geom.n == geom.m and is_uniform(a) and is_uniform(b):
        if geom.fits(ASSIGNMENT_COPIES):
            return "assignment", "uniform measures of equal size whose dense cost fits: assignment"
        return "assignment", (
            f"uniform measures of equal size: assignment by its sparse certified path (O(n d) "
            f"memory; its dense fallback, {format_bytes(geom.dense_bytes(ASSIGNMENT_COPIES))}, "
            "exceeds max_dense_bytes, so the streamed auction for unrelated clouds)"
        )
    if geom.fits(EXACT_COPIES):
        return "exact", "dense cost fits: network simplex"
    return "sinkhorn", (
        f"dense matrices ({format_bytes(geom.dense_bytes(EXACT_COPIES))}) exceed max_dense_bytes "
        f"({format_bytes(geom.max_dense_bytes)}): chunked Sinkhorn"
    )


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
        return t if t.is_floating_point() else t.double()
    arr = np.asarray(x)
    return torch.as_tensor(arr if arr.dtype.kind == "f" else arr.astype(np.float64))


def _masses(w: Any, n: int, device: torch.device) -> torch.Tensor:
    if w is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64, device=device)
    t = torch.as_tensor(np.asarray(w, dtype=np.float64).reshape(-1), device=device)
    return t / t.sum()  # exactly (to rounding) one: the solvers compare masses to rounding


def _warn(res: TransportResult, stacklevel: int) -> None:
    advice = (
        "float64 could not resolve the costs that decide it to 1e-9 (see 'Exactness on "
        "collapsed features' in the transport guide)"
        if res.method in ("exact", "assignment")
        else "Raise max_iter or eps (or GeomLoss's scaling), or use an exact method"
    )
    warnings.warn(
        f"{res.method} did not converge ({res.gap_kind or 'check'}: {res.gap}); "
        f"the value {res.cost:.6g} is not certified. {advice}.",
        ConvergenceWarning,
        stacklevel=stacklevel,
    )


def _check_problem(x: Any, y: Any, a: Any, b: Any, method: str) -> tuple[Any, Any, Any, Any]:
    """The two clouds and their masses checked: 2-D, non-empty, finite, real, one space
    (except ``gromov``), weights by the one rule of :func:`otcollapse._validation.check_weights`."""
    xt, yt = _check_cloud(x, "x"), _check_cloud(y, "y")
    if method != "gromov" and xt.shape[1] != yt.shape[1]:
        raise ValueError(
            f"x has dimension {xt.shape[1]} and y {yt.shape[1]}; W2 needs one space. Use "
            "method='gromov' (a different quantity), or map both to one space first "
            "(Trajectory.project, or the block's shortcut image)."
        )
    return xt, yt, check_weights(a, xt.shape[0], "a"), check_weights(b, yt.shape[0], "b")


def _check_cloud(x: ArrayLike, what: str) -> torch.Tensor:
    if (isinstance(x, torch.Tensor) and x.is_complex()) or np.iscomplexobj(x):
        raise ValueError(
            f"{what} is complex; W2 is defined for real points (take .real, or stack the real "
            "and imaginary parts as coordinates)."
        )
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if not t.is_floating_point():
            t = t.double()
    else:
        t = torch.as_tensor(to_numpy(x, dtype=np.float64))
    if t.ndim != 2:
        raise ValueError(f"{what} has shape {tuple(t.shape)}; give a 2-D array (n_points, dim).")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{what} is empty (shape {tuple(t.shape)}); a measure needs points.")
    check_finite(t, what)
    return t
