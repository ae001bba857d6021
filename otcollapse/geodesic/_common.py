"""Helpers shared by the geodesic modules: the one call to the transport solver, the exact
solver of the couplings, and small conversions and checks.

Every transport value of the package is computed by :func:`solve`, and the exact couplings of
OTS and the McCann fit are chosen and budgeted here (:func:`coupling_spec`,
:func:`check_dense_budget`): the transport plumbing lives in this one module.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from otcollapse import _resampling
from otcollapse._utils import ArrayLike, progress_bar, to_tensor
from otcollapse._validation import check_int, check_real
from otcollapse.measures import Trajectory
from otcollapse.transport import TransportResult, TransportSpec
from otcollapse.transport.spec import METHODS, AutoOptions


# ============================================================================ transport
def solve(
    x: Any,
    y: Any,
    a: np.ndarray | None,
    b: np.ndarray | None,
    spec: TransportSpec,
    *,
    coupling: bool = False,
    validate: bool = False,
) -> TransportResult:
    """``spec.solve(x, y, a, b)``: every solve of the package. The data of a
    :class:`Trajectory` are checked once, when it is built (``validate=False``); raw arrays
    given to a public function are checked here (``validate=True``).

    With ``coupling=True`` the result carries the optimal coupling: the assignment of
    ``method="assignment"``, or the dense plan of ``method="exact"`` (``return_plan=True``).
    """
    if coupling and spec.method == "exact" and not spec.options.return_plan:
        spec = spec.with_options(return_plan=True)
    return spec.solve(x, y, a, b, validate=validate, stacklevel=4)


def coupling_spec(weights: np.ndarray | None, spec: TransportSpec) -> TransportSpec:
    """The exact solver of OTS and the McCann fit, with its options.

    The requested method when it is exact, else the assignment (uniform masses) or the network
    simplex (weighted samples). From ``auto`` it keeps the options that solver takes; the
    options of another method do not apply to it: only the memory budget is passed on.
    """
    if spec.method in ("assignment", "exact"):
        return spec
    fit = "assignment" if weights is None else "exact"
    given = spec.options.given if isinstance(spec.options, AutoOptions) else {}
    names = METHODS[fit].options.names()
    kept = {k: v for k, v in given.items() if k in names}
    return TransportSpec.create(fit, max_dense_bytes=spec.max_dense_bytes, **kept)


def check_dense_budget(n: int, fit: TransportSpec) -> None:
    """Refuse, before any solve, exact couplings of ``n`` samples over the memory budget (the
    dense copies of the solver registry: one memory model)."""
    need = fit.dense_bytes(n, n)
    if need > fit.max_dense_bytes:
        raise ValueError(
            f"geodesic_test needs exact couplings for OTS and the McCann fit, and n = "
            f"{n} needs {need / 2**20:.1f} MiB of dense matrices (over "
            "max_dense_bytes); set max_samples (default 5000) to run on a stratified subsample."
        )


def exact_coupling(
    x: Any,
    y: Any,
    w: np.ndarray | None,
    fit: TransportSpec,
    what: str,
    *,
    validate: bool = False,
) -> TransportResult:
    """An exact solve between two measures of the same samples that returns the coupling."""
    try:
        return solve(x, y, w, w, fit, coupling=True, validate=validate)
    except ValueError as err:
        raise ValueError(
            f"{what} needs the exact coupling (method={fit.method!r}): {err} For large n run the "
            "geodesic test on a stratified subsample (geodesic_test(..., max_samples=5000) or "
            "traj.subsample(n, seed))."
        ) from err


# ============================================================================ resampling
def replicates(n: int, n_boot: int, boot_fraction: float, seed: int) -> tuple[int, list[int]]:
    """The size and the seeds of the subsampling replicates (``0, []`` when ``n_boot == 0``)."""
    if not n_boot:
        return 0, []
    return _resampling.boot_size(n, boot_fraction), _resampling.boot_seeds(seed, n_boot)


# ============================================================================ arrays
def bar(items: Iterable[Any], progress: bool, desc: str) -> Any:
    """``items`` behind a progress bar (shown only when asked for, on a terminal)."""
    return progress_bar(items, progress=progress, desc=desc)


def f64(x: ArrayLike, what: str = "the points") -> torch.Tensor:
    """The points as a float64 tensor on their own device (a memory map is read whole)."""
    return to_tensor(x, dtype=torch.float64, what=what)


def take_rows(x: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of an array, memory map or tensor (a tensor stays on its device)."""
    if isinstance(x, torch.Tensor):
        return x[torch.as_tensor(idx, device=x.device)]
    return np.asarray(x[idx])


def sub_weights(w: np.ndarray | None, idx: np.ndarray) -> np.ndarray | None:
    """The masses of a subset of samples, renormalised (None stays None: uniform)."""
    if w is None:
        return None
    ws = w[idx]
    total = float(ws.sum())
    if total <= 0:
        raise ValueError("the selected samples carry zero total weight.")
    return ws / total


def paired_cost(x: ArrayLike, y: ArrayLike, w: np.ndarray | None) -> float:
    """``sum_i a_i ||y_i - x_i||^2`` in float64 (the coupling of sample i with itself)."""
    xt = f64(x)
    yt = f64(y).to(xt.device)
    sq = ((yt - xt) ** 2).sum(1)
    if w is None:
        return float(sq.mean())
    return float(sq @ torch.as_tensor(w, dtype=torch.float64, device=sq.device))


# ============================================================================ checks
def check_trajectory(traj: Any, who: str) -> None:
    """A Trajectory of at least two layers, or a ValueError that says how to build one."""
    if not isinstance(traj, Trajectory):
        raise ValueError(
            f"{who} needs a Trajectory; got {type(traj).__name__}. Build one with "
            "Trajectory.from_arrays([h_0, h_1, ..., h_L], labels=y)."
        )
    if len(traj) < 2:
        raise ValueError(
            f"{who} needs at least two layers; the trajectory has one ({traj.names[0]!r}). "
            "Give the features at layers 0..L (l = 0 is the input of the residual stack), "
            "e.g. Trajectory.from_arrays([h_0, h_1, ..., h_L])."
        )


def check_boot(n_boot: int, boot_fraction: float, ci_level: float) -> None:
    """The settings of the subsampling intervals."""
    check_int(n_boot, "n_boot", minimum=0)
    check_real(
        boot_fraction,
        "boot_fraction (subsampling without replacement)",
        minimum=0.0,
        maximum=1.0,
        open_min=True,
        open_max=True,
    )
    check_real(ci_level, "ci_level", minimum=0.0, maximum=1.0, open_min=True, open_max=True)
