r"""Calibrating the MUFM's transport weight $\lambda_{OT}$ to a trained network.

Given a network trajectory of constant width (a constant-width residual network, or one segment
of equal dimension of a ResNet), :func:`calibrate_mufm` takes the segment's first layer as the MUFM
input $H_0 = X$ and its number of steps as $L$, fits the MUFM (:func:`fit_mufm`) over a grid of
$\lambda_{OT}$ and picks the value whose optimum best matches the network's last layer.

Discrepancies, with $H_L^{net}$ the network's last layer of the segment and $H_L^{M}(\lambda)$ the
MUFM optimum's last layer (both with the network's labels):

- ``"w2"``: $D(\lambda) = W_2\big(\mu_{H_L^{M}(\lambda)}, \mu_{H_L^{net}}\big)$, the 2-Wasserstein
  distance (full squared Euclidean cost, :func:`otcollapse.transport.wasserstein`, ``method="auto"``)
  between the two last-layer measures;
- ``"nc1"``: $D(\lambda) = \big|\log\mathrm{NC1}(H_L^{M}(\lambda)) - \log\mathrm{NC1}(H_L^{net})\big|$,
  NC1 $= \frac1K\operatorname{Tr}(\Sigma_W\Sigma_B^\dagger)$ (:func:`otcollapse.collapse.nc1`); values
  below ``1e-300`` are floored there so that the exactly collapsed UFM end stays finite.

Reference: Wang, Gai & Zhang, "Progressive Feedforward Collapse of ResNet Training" (the MUFM as a
UFM whose layers are joined by an optimal-transport regulariser); the normalisation is that of
:mod:`otcollapse.surrogates.mufm`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from otcollapse._results import Result
from otcollapse._utils import json_safe, to_numpy
from otcollapse.collapse import CollapseProfile, collapse_profile, nc1
from otcollapse.exceptions import ConvergenceWarning
from otcollapse.measures import Trajectory
from otcollapse.surrogates.core import _check_choice, _check_lambda, _check_lambdas
from otcollapse.surrogates.mufm import MUFMSolution, fit_mufm
from otcollapse.transport import wasserstein

__all__ = ["DISCREPANCIES", "MUFMCalibration", "calibrate_mufm", "default_lambda_grid"]

DISCREPANCIES = ("w2", "nc1")
_NC1_FLOOR = 1e-300
_REFERENCE = 'Wang, Gai & Zhang, "Progressive Feedforward Collapse of ResNet Training"'
# fit_mufm arguments that calibrate_mufm sets itself
_RESERVED = ("X", "y", "n_layers", "lambda_ot", "lambda_w", "lambda_h", "lambda_b", "loss",
             "coupling", "seed", "dim", "embed")  # fmt: skip


def default_lambda_grid() -> np.ndarray:
    """The default grid: ``0`` (the UFM end) and 10 log-spaced values from ``1e-3`` to ``1e2``."""
    return np.concatenate([[0.0], np.logspace(-3.0, 2.0, 10)])


@dataclasses.dataclass(frozen=True, eq=False)
class MUFMCalibration(Result):
    r"""The λ_OT whose MUFM optimum best matches a network segment, and how well it matches.

    Attributes
    ----------
    lambda_ot : float
        The fitted transport weight (the refined value when ``refine=True`` improved on the grid).
    discrepancy : str
        ``"w2"`` or ``"nc1"`` (see the module docstring for the formulas).
    value : float
        The discrepancy at ``lambda_ot``.
    grid : tuple of dict
        One row per evaluated grid point, in increasing λ_OT: ``lambda_ot``, ``discrepancy``,
        ``w2`` (W2 between the last layers), ``nc1_mufm``, ``objective``, ``converged``,
        ``n_iter``.
    refinement : tuple of dict
        The rows (same keys) evaluated by the bounded 1-D search in $\log_{10}\lambda_{OT}$, in
        evaluation order; empty when it was not run.
    match : dict str -> float
        Match quality at ``lambda_ot``: ``w2`` $= W_2(\mu_{H_L^M}, \mu_{H_L^{net}})$,
        ``w2_relative`` $= $ ``w2`` $/ W_2(\mu_{H_0^{net}}, \mu_{H_L^{net}})$ (below 1: the MUFM is
        closer to the network's output than the network's input is), ``nc1_network``,
        ``nc1_mufm``, ``log_nc1_gap`` $= |\log\mathrm{NC1}^M - \log\mathrm{NC1}^{net}|$.
    solution : MUFMSolution
        The MUFM fitted at ``lambda_ot``.
    network_profile, mufm_profile : CollapseProfile
        ``collapse_profile`` of the network segment and of ``solution.trajectory`` (same layer
        count, ``L + 1``).
    segment : int
        Index into ``traj.segments`` of the segment used.
    layer_range : tuple (int, int)
        First and last layer index of the segment in the original trajectory.
    settings : dict
        The model settings passed to ``fit_mufm`` and the calibration options.
    """

    lambda_ot: float
    discrepancy: str
    value: float
    grid: tuple[dict[str, Any], ...]
    refinement: tuple[dict[str, Any], ...]
    match: dict[str, float]
    solution: MUFMSolution
    network_profile: CollapseProfile
    mufm_profile: CollapseProfile
    segment: int
    layer_range: tuple[int, int]
    settings: dict[str, Any]

    _derived = ("reference",)

    @property
    def reference(self) -> str:
        """The paper the MUFM formalises."""
        return _REFERENCE

    def table(self) -> list[dict[str, Any]]:
        """Both collapse profiles side by side: one row per layer ``l = 0..L``, with
        ``network_<metric>`` and ``mufm_<metric>`` for every metric computed on both."""
        common = [m for m in self.network_profile.metrics if m in self.mufm_profile.metrics]
        rows = []
        for l, (a, b) in enumerate(
            zip(self.network_profile.table(), self.mufm_profile.table(), strict=True)
        ):
            row: dict[str, Any] = {"layer": l, "network_layer": self.layer_range[0] + l}
            for m in common:
                row[f"network_{m}"] = a[m]
                row[f"mufm_{m}"] = b[m]
            rows.append(row)
        return rows

    def profiles_table(self) -> list[dict[str, Any]]:
        """The rows of :meth:`table`: both collapse profiles side by side, one row per layer."""
        return self.table()

    def format_grid(self, precision: int = 4) -> str:
        """The grid (and refinement) table as aligned text."""
        head = ["lambda_ot", self.discrepancy, "w2", "nc1_mufm", "converged"]
        rows = [*self.grid, *sorted(self.refinement, key=lambda r: r["lambda_ot"])]
        body = [
            [f"{r['lambda_ot']:.{precision}g}", f"{r['discrepancy']:.{precision}g}",
             f"{r['w2']:.{precision}g}", f"{r['nc1_mufm']:.{precision}g}", str(r["converged"])]
            for r in rows
        ]  # fmt: skip
        widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
        return "\n".join(
            "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in [head, *body]
        )

    def __str__(self) -> str:
        return (
            f"MUFM calibration ({self.discrepancy}): lambda_ot = {self.lambda_ot:.6g}, "
            f"discrepancy = {self.value:.4g}, W2 = {self.match['w2']:.4g} "
            f"(relative {self.match['w2_relative']:.4g})\n{self.format_grid()}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record (the layers are left out): the fields, the ``reference`` and
        ``profiles_table``."""
        return {**super().to_dict(), "profiles_table": json_safe(self.table())}


def _check_network(traj: Trajectory, segment: int | None) -> tuple[int, range]:
    """The index and the layers of the segment to calibrate on (a labelled run of equal
    dimension, at least two layers)."""
    if not isinstance(traj, Trajectory):
        raise ValueError(f"calibrate_mufm needs a Trajectory; got {type(traj).__name__}.")
    if traj.labels is None:
        raise ValueError("calibrate_mufm needs class labels; pass labels= to the Trajectory.")
    segs = traj.segments
    if segment is None:
        if len(segs) != 1:
            raise ValueError(
                f"the trajectory's layers differ in dimension (dims {list(traj.dims)}, segments "
                f"{[(s.start, s.stop - 1) for s in segs]}); the MUFM needs one constant width. "
                "Pass segment=<index into traj.segments>."
            )
        s = 0
    else:
        s = int(segment)
        if s != segment or not -len(segs) <= s < len(segs):
            raise ValueError(
                f"segment must be an integer index into traj.segments (0..{len(segs) - 1}); "
                f"got {segment!r}."
            )
        s %= len(segs)
    if len(segs[s]) < 2:
        raise ValueError(
            f"segment {s} (layer {segs[s].start}) has a single layer; the MUFM needs at least "
            "one step (two layers of equal dimension)."
        )
    return s, segs[s]


def _check_grid(grid: Sequence[float] | None) -> np.ndarray:
    """The λ_OT values to fit, sorted and without repeats (each finite and >= 0)."""
    lams = default_lambda_grid() if grid is None else np.asarray(grid, dtype=np.float64).ravel()
    if lams.size == 0:
        raise ValueError("grid must hold at least one lambda_ot value.")
    for v in lams:
        _check_lambda("grid value", v)
    return np.unique(lams)


def _log_nc1_gap(a: float, b: float) -> float:
    r"""$|\log a - \log b|$ with both NC1 values floored at ``_NC1_FLOOR``."""
    return abs(math.log(max(a, _NC1_FLOOR)) - math.log(max(b, _NC1_FLOOR)))


class _Fits:
    """The MUFM fits of one calibration, each compared with the network's last layer.

    Keeps only the best fit so far (each holds ``L + 1`` layers) and the λ_OT of the fits that did
    not converge.
    """

    def __init__(
        self, net: Trajectory, labels: Any, weights: Any, model: dict[str, Any], discrepancy: str
    ) -> None:
        self.X = to_numpy(net.layers[0]).astype(np.float64)
        self.HL_net = to_numpy(net.layers[-1]).astype(np.float64)
        self.labels = np.asarray(labels)
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.model, self.discrepancy = model, discrepancy
        self.nc1_net = float(nc1(self.HL_net, self.labels, weights=self.weights))
        self.w2_io = float(
            wasserstein(self.X, self.HL_net, a=self.weights, b=self.weights).distance
        )
        self.kept: dict[float, MUFMSolution] = {}
        self.best = math.inf
        self.not_converged: list[float] = []

    def fit(self, lam: float) -> MUFMSolution:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return fit_mufm(self.X, self.labels, lambda_ot=lam, **self.model)

    def evaluate(self, lam: float) -> dict[str, Any]:
        """Fit at ``lam``; the row of the grid table."""
        sol = self.fit(lam)
        if not sol.converged:
            self.not_converged.append(lam)
        HL = sol.layers[-1]  # row i follows network sample i (paired) / input i (wasserstein)
        w2 = float(wasserstein(HL, self.HL_net, b=self.weights).distance)
        c = float(nc1(sol.H, self.labels))
        disc = w2 if self.discrepancy == "w2" else _log_nc1_gap(c, self.nc1_net)
        if disc < self.best or not self.kept:
            self.kept = {lam: sol}
            self.best = disc
        return {
            "lambda_ot": lam,
            "discrepancy": disc,
            "w2": w2,
            "nc1_mufm": c,
            "objective": sol.objective,
            "converged": sol.converged,
            "n_iter": sol.n_iter,
        }

    def solution(self, lam: float) -> MUFMSolution:
        """The fit at ``lam``: the one kept, or a refit (deterministic for a given seed) when a
        tie kept another."""
        return self.kept[lam] if lam in self.kept else self.fit(lam)

    def match(self, best: dict[str, Any]) -> dict[str, float]:
        return {
            "w2": best["w2"],
            "w2_relative": best["w2"] / self.w2_io if self.w2_io > 0 else float("nan"),
            "w2_network_input_output": self.w2_io,
            "nc1_network": self.nc1_net,
            "nc1_mufm": best["nc1_mufm"],
            "log_nc1_gap": _log_nc1_gap(best["nc1_mufm"], self.nc1_net),
        }


def _refine(
    fits: _Fits, lams: np.ndarray, best: dict[str, Any], xatol: float
) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """Bounded Brent search in log10(λ_OT) between the neighbours of the best positive grid point:
    the best row (the refined one if not worse), the rows evaluated, and a note."""
    from scipy.optimize import minimize_scalar

    pos = np.log10(lams[lams > 0])
    k = int(np.searchsorted(pos, math.log10(best["lambda_ot"])))
    step = float(np.median(np.diff(pos))) if pos.size > 1 else 1.0
    lo = pos[k - 1] if k > 0 else pos[k] - step
    hi = pos[k + 1] if k + 1 < pos.size else pos[k] + step
    cache: dict[float, dict[str, Any]] = {}
    refined: list[dict[str, Any]] = []

    def objective(t: float) -> float:
        lam = float(10.0**t)
        if lam not in cache:
            cache[lam] = fits.evaluate(lam)
            refined.append(cache[lam])
        return cache[lam]["discrepancy"]

    res = minimize_scalar(objective, bounds=(lo, hi), method="bounded", options={"xatol": xatol})
    cand = min(refined, key=lambda r: r["discrepancy"])
    if cand["discrepancy"] <= best["discrepancy"]:
        best = cand
    note = (
        f"bounded Brent in log10(lambda_ot) over [{lo:.4g}, {hi:.4g}], "
        f"{len(refined)} fits, success={bool(res.success)}"
    )
    return best, refined, note


def calibrate_mufm(
    traj: Trajectory,
    *,
    lambda_w: float,
    lambda_h: float,
    lambda_b: float = 0.0,
    loss: str = "ce",
    coupling: str = "paired",
    grid: Sequence[float] | None = None,
    discrepancy: str = "w2",
    segment: int | None = None,
    refine: bool = True,
    seed: int = 0,
    profile_metrics: Sequence[str] | None = None,
    refine_xatol: float = 1e-3,
    **fit_options: Any,
) -> MUFMCalibration:
    r"""Find the $\lambda_{OT}$ whose MUFM optimum best matches a network of constant width.

    The segment's first layer is the MUFM input $X = H_0$ and its number of steps is $L$; for
    every $\lambda$ in ``grid`` the MUFM (:func:`fit_mufm`, with the given weight decays, loss
    and coupling) is fitted and compared with the network's last layer $H_L^{net}$ by the
    discrepancy $D(\lambda)$ of the module docstring: ``"w2"``,
    $W_2(\mu_{H_L^M(\lambda)}, \mu_{H_L^{net}})$ (the network's sample weights as masses when it
    has them), or ``"nc1"``, $|\log\mathrm{NC1}(H_L^M(\lambda)) - \log\mathrm{NC1}(H_L^{net})|$.

    The grid point with the smallest $D$ wins (ties: the smaller $\lambda$). With ``refine=True``
    and a best point $\lambda_j > 0$, a bounded Brent search in $\log_{10}\lambda$ over
    $[\log_{10}\lambda_{j-1}, \log_{10}\lambda_{j+1}]$ (the neighbouring positive grid points; one
    grid step beyond the end points) refines it to ``refine_xatol`` in $\log_{10}\lambda$; the
    refined value is kept only if its $D$ is not larger. The NC1 of the MUFM optimum moves
    monotonically from 0 ($\lambda = 0$, the UFM) to NC1(X) ($\lambda\to\infty$) for the paired
    coupling, so ``"nc1"`` identifies $\lambda$ when the network's NC1 lies in that range; ``"w2"``
    also compares where the points are, not only how concentrated the classes are.

    Parameters
    ----------
    traj : Trajectory
        With labels. Its layers must have one dimension, or ``segment`` picks a run of equal
        dimension (``traj.segments[segment]``) with at least two layers.
    lambda_w, lambda_h, lambda_b : float
        The MUFM's weight decays (fixed; only $\lambda_{OT}$ is fitted).
    loss : {"ce", "mse"}
    coupling : {"paired", "wasserstein"}
    grid : sequence of float, optional
        $\lambda_{OT}$ values (>= 0); default :func:`default_lambda_grid` (0 and 10 log-spaced
        values from 1e-3 to 1e2). Large $\lambda_{OT}$ are ill-conditioned and slow to fit.
    discrepancy : {"w2", "nc1"}
    segment : int, optional
        Index into ``traj.segments``.
    refine : bool
        Run the bounded 1-D refinement around the best grid point.
    seed : int
        Passed to ``fit_mufm`` (the classifier's random start).
    profile_metrics : sequence of str, optional
        Metrics for both collapse profiles (default: all that apply).
    refine_xatol : float
        Absolute tolerance of the refinement in $\log_{10}\lambda_{OT}$.
    **fit_options
        Further ``fit_mufm`` options (``bias``, ``solver``, ``tol``, ``max_iter``).

    Returns
    -------
    MUFMCalibration

    Raises
    ------
    ValueError
        Layers of several dimensions without ``segment``; a bad segment index or a segment of one
        layer; a trajectory without labels; a negative, non-finite or empty grid; an unknown
        discrepancy; ``fit_options`` that ``calibrate_mufm`` sets itself.

    Warns
    -----
    ConvergenceWarning
        Once, when some fits did not converge (see the ``converged`` column of the grid).

    References
    ----------
    Wang, Gai & Zhang, "Progressive Feedforward Collapse of ResNet Training".
    """
    seg_index, seg = _check_network(traj, segment)
    _check_choice("discrepancy", discrepancy, DISCREPANCIES)
    lambda_w, lambda_h, lambda_b = _check_lambdas(
        lambda_w=lambda_w, lambda_h=lambda_h, lambda_b=lambda_b
    )
    bad = sorted(set(fit_options) & set(_RESERVED))
    if bad:
        raise ValueError(f"calibrate_mufm sets {bad} itself; do not pass them in fit_options.")
    lams = _check_grid(grid)
    xatol = float(refine_xatol)
    if not xatol > 0:
        raise ValueError(f"refine_xatol must be > 0; got {refine_xatol!r}.")
    net = traj.take_layers(list(seg))
    model = dict(
        n_layers=len(seg) - 1,
        lambda_w=lambda_w,
        lambda_h=lambda_h,
        lambda_b=lambda_b,
        loss=loss,
        coupling=coupling,
        seed=int(seed),
        **fit_options,
    )
    fits = _Fits(net, traj.labels, traj.weights, model, discrepancy)
    rows = [fits.evaluate(float(v)) for v in lams]
    best = rows[int(np.argmin([r["discrepancy"] for r in rows]))]  # ties: the smaller lambda
    refined: list[dict[str, Any]] = []
    refine_note = "not requested"
    if refine and best["lambda_ot"] > 0:
        best, refined, refine_note = _refine(fits, lams, best, xatol)
    elif refine:
        refine_note = "skipped: the best grid point is lambda_ot = 0 (the UFM end)"
    if fits.not_converged:
        warnings.warn(
            f"calibrate_mufm: {len(fits.not_converged)} MUFM fit(s) did not converge (lambda_ot = "
            f"{sorted(set(fits.not_converged))}); see the 'converged' column of the grid. Raise "
            "max_iter, loosen tol, or leave out very large lambda_ot.",
            ConvergenceWarning,
            stacklevel=2,
        )
    sol = fits.solution(best["lambda_ot"])
    metrics = None if profile_metrics is None else list(profile_metrics)
    settings = {
        **model,
        "discrepancy": discrepancy,
        "grid": lams.tolist(),
        "refine": bool(refine),
        "refine_xatol": xatol,
        "refinement": refine_note,
        "not_converged": sorted(set(fits.not_converged)),
    }
    return MUFMCalibration(
        lambda_ot=float(best["lambda_ot"]),
        discrepancy=discrepancy,
        value=float(best["discrepancy"]),
        grid=tuple(rows),
        refinement=tuple(refined),
        match=fits.match(best),
        solution=sol,
        network_profile=collapse_profile(net, metrics=metrics),
        mufm_profile=collapse_profile(sol.trajectory, metrics=metrics),
        segment=seg_index,
        layer_range=(seg.start, seg.stop - 1),
        settings=settings,
    )
