"""Typed options of the transport solvers: one frozen dataclass per method, checked on creation.

A solver reads its options from one of these objects, never from loose keywords, so an unknown
name, a wrong type or an option of another solver is refused once, at the public boundary
(:class:`otcollapse.transport.TransportSpec`), with a message naming the valid ones. Every
iterative solver calls its iteration cap ``max_iter``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from otcollapse._validation import check_int, check_real

__all__ = [
    "AssignmentOptions",
    "ExactOptions",
    "GaussianOptions",
    "GromovOptions",
    "SinkhornOptions",
    "SlicedOptions",
    "SolverOptions",
]

#: network-simplex iteration cap: POT's default (1e5) stops early, non-optimally, from n ~ 2000
EMD_MAX_ITER = 2_000_000_000
#: names of earlier versions, refused with the new name
RENAMED = {"num_iter_max": "max_iter", "max_rounds": "max_iter", "geomloss_backend": "backend"}


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r} ({type(value).__name__}).")
    return bool(value)


def _check_choice(value: Any, name: str, choices: tuple[Any, ...]) -> Any:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}; got {value!r}.")
    return value


@dataclasses.dataclass(frozen=True)
class SolverOptions:
    """Base of the options types; ``method`` names the solver they belong to."""

    method: ClassVar[str] = ""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names this solver takes."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_kwargs(
        cls, options: Mapping[str, Any], owners: Mapping[str, str] | None = None
    ) -> Any:
        """The options object from keywords; an unknown name is refused with the valid ones
        (and, when ``owners`` maps it to another solver, that solver's name)."""
        unknown = sorted(set(options) - set(cls.names()))
        if unknown:
            hints = []
            for k in unknown:
                if k in RENAMED:
                    hints.append(f"{k!r} is now {RENAMED[k]!r}")
                elif owners and k in owners:
                    hints.append(f"{k!r} is an option of method={owners[k]!r}")
            hint = f" ({'; '.join(hints)})" if hints else ""
            valid = list(cls.names()) or "none"
            raise ValueError(
                f"method={cls.method!r} takes no option(s) {unknown}{hint}; its options: {valid}."
            )
        return cls(**options)

    def as_kwargs(self) -> dict[str, Any]:
        """The options as a dict (for records and for solvers that pass them on)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class ExactOptions(SolverOptions):
    """POT's network simplex (``method="exact"``).

    max_iter : network-simplex pivots before it stops (POT's ``numItermax``).
    return_plan, return_potentials : the dense plan and the dual potentials ``(u, v)``.
    """

    method: ClassVar[str] = "exact"
    max_iter: int = EMD_MAX_ITER
    return_plan: bool = False
    return_potentials: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_iter", check_int(self.max_iter, "max_iter", minimum=1))
        _check_flags(self)


@dataclasses.dataclass(frozen=True)
class AssignmentOptions(SolverOptions):
    """The linear assignment (``method="assignment"``); see
    :func:`otcollapse.transport.assignment.solve_assignment` for their meaning.

    candidates : ``"auto"``, ``"dense"``, ``"auction"`` or an int ``k >= 0`` (neighbours per
        source).
    rank : ``"auto"`` or an int ``>= 1`` (dimension of the projected bound).
    cost_dtype : ``None`` (float64), ``"float32"`` or ``"float64"`` (the dense path's matrix).
    max_iter : scans of the sparse path before it falls back to the dense one.
    """

    method: ClassVar[str] = "assignment"
    candidates: str | int = "auto"
    rank: str | int = "auto"
    cost_dtype: str | None = None
    max_iter: int = 20
    return_plan: bool = False
    return_potentials: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.candidates, str):
            object.__setattr__(
                self, "candidates", check_int(self.candidates, "candidates (an int k)", minimum=0)
            )
        else:
            _check_choice(self.candidates, "candidates", ("auto", "dense", "auction"))
        if not isinstance(self.rank, str):
            object.__setattr__(self, "rank", check_int(self.rank, "rank", minimum=1))
        else:
            _check_choice(self.rank, "rank", ("auto",))
        _check_choice(self.cost_dtype, "cost_dtype", (None, "float32", "float64"))
        object.__setattr__(self, "max_iter", check_int(self.max_iter, "max_iter", minimum=1))
        _check_flags(self)


@dataclasses.dataclass(frozen=True)
class SinkhornOptions(SolverOptions):
    """Log-domain Sinkhorn (``method="sinkhorn"``); see
    :func:`otcollapse.transport.entropic.solve_sinkhorn` for their meaning.

    backend : the implementation that runs: ``"torch"`` (ours), ``"geomloss"`` (GeomLoss's
    tensorized solver), ``"geomloss-online"`` / ``"geomloss-multiscale"`` (GeomLoss on pykeops).
    """

    method: ClassVar[str] = "sinkhorn"
    eps: float | None = None
    eps_rel: float = 1e-2
    debias: bool = False
    tol: float | None = None
    max_iter: int = 2000
    scaling: float | None = None
    dtype: str | None = None
    backend: str = "torch"
    return_plan: bool = False
    return_potentials: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        if self.eps is not None:
            object.__setattr__(self, "eps", check_real(self.eps, "eps", minimum=0.0, open_min=True))
        object.__setattr__(
            self, "eps_rel", check_real(self.eps_rel, "eps_rel", minimum=0.0, open_min=True)
        )
        if self.tol is not None:
            object.__setattr__(self, "tol", check_real(self.tol, "tol", minimum=0.0, open_min=True))
        object.__setattr__(self, "max_iter", check_int(self.max_iter, "max_iter", minimum=1))
        if self.scaling is not None:
            scaling = check_real(
                self.scaling, "scaling", minimum=0.0, maximum=1.0, open_min=True, open_max=True
            )
            object.__setattr__(self, "scaling", scaling)
        _check_choice(self.dtype, "dtype", (None, "float32", "float64"))
        _check_choice(
            self.backend,
            "backend",
            ("torch", "geomloss", "geomloss-online", "geomloss-multiscale"),
        )
        for flag in ("debias", "progress"):
            _check_bool(getattr(self, flag), flag)
        _check_flags(self)


@dataclasses.dataclass(frozen=True)
class SlicedOptions(SolverOptions):
    """Sliced W2 (``method="sliced"``): ``n_projections`` directions (rounded up to whole
    orthonormal blocks of ``d``; default at least 128) drawn from ``seed``."""

    method: ClassVar[str] = "sliced"
    n_projections: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_projections is not None:
            n = check_int(self.n_projections, "n_projections", minimum=1)
            object.__setattr__(self, "n_projections", n)
        object.__setattr__(self, "seed", check_int(self.seed, "seed", minimum=0))


@dataclasses.dataclass(frozen=True)
class GaussianOptions(SolverOptions):
    """The Bures–Wasserstein distance of the moment-matched Gaussians (``method="gaussian"``):
    no options."""

    method: ClassVar[str] = "gaussian"


@dataclasses.dataclass(frozen=True)
class GromovOptions(SolverOptions):
    """Gromov–Wasserstein by POT's conditional gradient (``method="gromov"``)."""

    method: ClassVar[str] = "gromov"
    max_iter: int = 10_000
    tol: float = 1e-9
    return_plan: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_iter", check_int(self.max_iter, "max_iter", minimum=1))
        object.__setattr__(self, "tol", check_real(self.tol, "tol", minimum=0.0, open_min=True))
        _check_bool(self.return_plan, "return_plan")


def _check_flags(opts: SolverOptions) -> None:
    for flag in ("return_plan", "return_potentials"):
        _check_bool(getattr(opts, flag), flag)
