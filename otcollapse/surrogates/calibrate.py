r"""Calibrating the MUFM's transport weight $\lambda_{OT}$ (and feature decay $\lambda_H$) to a
trained network.

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

One number at the last layer does not fix the MUFM's scale: NC1 is scale-free, so a fit can match
it with features in a small ball while the network's spread wide. :func:`calibrate_mufm_profile`
fits $\lambda_{OT}$ and the feature decay $\lambda_H$ together ($\lambda_W$ fixed, it is not
identifiable) to the segment's per-layer profile: NC1 at every layer and every step's transport
cost over the last layer's second moment, by the sum of squared log-ratios model/network.

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
from otcollapse._validation import check_int, check_real
from otcollapse.collapse import CollapseProfile, collapse_profile, nc1
from otcollapse.exceptions import ConvergenceWarning
from otcollapse.measures import Trajectory
from otcollapse.surrogates.core import _check_choice, _check_lambda, _check_lambdas
from otcollapse.surrogates.mufm import MUFMSolution, fit_mufm
from otcollapse.transport import wasserstein

__all__ = [
    "DISCREPANCIES",
    "MUFMCalibration",
    "MUFMProfileCalibration",
    "calibrate_mufm",
    "calibrate_mufm_profile",
    "default_lambda_grid",
    "profile_spread",
]

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
        # the discrepancy's column says it is one (D_nc1 = |log NC1 gap|, D_w2 = W2): a column
        # headed "nc1" beside nc1_mufm read as an NC1 value
        head = ["lambda_ot", f"D_{self.discrepancy}", "w2", "nc1_mufm", "converged"]
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


def _check_network(
    traj: Trajectory, segment: int | None, what: str = "calibrate_mufm"
) -> tuple[int, range]:
    """The index and the layers of the segment to calibrate on (a labelled run of equal
    dimension, at least two layers); ``what`` names the caller in the messages."""
    if not isinstance(traj, Trajectory):
        raise ValueError(f"{what} needs a Trajectory; got {type(traj).__name__}.")
    if traj.labels is None:
        raise ValueError(f"{what} needs class labels; pass labels= to the Trajectory.")
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


# --------------------------------------------------------------------------- shape and scale
#: default grids of the joint calibration (log-spaced, one decade apart)
DEFAULT_LAMBDA_OT_GRID = tuple(np.logspace(-3.0, 2.0, 6).tolist())
DEFAULT_LAMBDA_H_GRID = tuple(np.logspace(-4.0, 1.0, 6).tolist())
#: floor of the profile values before their logarithm (exact zeros stay finite)
PROFILE_FLOOR = 1e-12
#: an optimum within this fraction of a grid step of the grid's end is "at the edge"
_EDGE_FRACTION = 0.1
_AXES = ("lambda_ot", "lambda_h")
#: the keys of MUFMProfileCalibration.match
_MATCH_KEYS = ("w2", "w2_relative", "network_spread", "mufm_spread", "criterion_nc1",
               "criterion_cost", "rms_log_ratio")  # fmt: skip


@dataclasses.dataclass(frozen=True, eq=False)
class MUFMProfileCalibration(Result):
    r"""The $(\lambda_{OT}, \lambda_H)$ whose MUFM optimum best matches a network segment's
    per-layer profile (see :func:`calibrate_mufm_profile` for the criterion).

    Attributes
    ----------
    lambda_ot, lambda_h : float
        The fitted transport weight and last-layer feature decay.
    lambda_w : float
        The classifier's weight decay, held fixed (it is not identifiable from the profile; see
        :func:`calibrate_mufm_profile`).
    value : float
        The criterion $J(\lambda_{OT}, \lambda_H)$ at the fitted point.
    residuals : tuple of dict
        One row per step $l = 1..L$ of the segment: ``layer`` ($l$), ``network_layer`` (its index
        in the original trajectory), ``nc1_network``, ``nc1_mufm``, ``log_ratio_nc1``
        $= \log\mathrm{NC1}^M_l - \log\mathrm{NC1}^N_l$, ``cost_network``, ``cost_mufm`` (the
        normalised costs $\tilde c_l = W_2^2(\mu_{l-1}, \mu_l) / M_L$), ``log_ratio_cost``
        $= \log\tilde c^M_l - \log\tilde c^N_l$, and the raw ``w2sq_network``, ``w2sq_mufm``
        (values clipped to $[f, 1/f]$, $f =$ ``settings["floor"]``, before the logarithm).
        ``table()`` returns them.
    match : dict str -> float
        At the fitted point: ``w2`` $= W_2(\mu_{H_L^M}, \mu_{H_L^N})$ between the two last layers;
        ``network_spread`` $= \sqrt{M_L^N}$ and ``mufm_spread`` $= \sqrt{M_L^M}$, with
        $M_L = \sum_i a_i\|h_{L,i} - \bar h_L\|^2$ the second moment of the centred last layer;
        ``w2_relative`` $=$ ``w2`` $/$ ``network_spread`` (0: the same last-layer measure; about
        1 or more: the MUFM's last layer is as far from the network's as the network's points
        are from their mean); ``criterion_nc1`` and ``criterion_cost``, the two sums of $J$;
        ``rms_log_ratio`` $= \sqrt{J / (2L)}$ (its exponential is the typical factor between a
        model value and the network's).
    grid_edge : tuple of str
        ``"lambda_ot low"``, ``"lambda_ot high"``, ``"lambda_h low"``, ``"lambda_h high"`` for
        every searched axis whose fitted value lies within a tenth of a grid step of the grid's
        end (the true optimum may lie beyond it: widen the grid); empty when interior.
    lambda_ot_grid, lambda_h_grid : tuple of float
        The grid searched (sorted, positive).
    grid : tuple of dict
        One row per grid point (λ_OT outer, λ_H inner): ``lambda_ot``, ``lambda_h``,
        ``criterion``, ``criterion_nc1``, ``criterion_cost``, ``w2_relative``, ``converged``,
        ``n_iter``.
    refinement : tuple of dict
        The rows (same keys) of the least-squares refinement (its Jacobian's fits included), in
        evaluation order; empty when it was not run.
    solution : MUFMSolution
        The MUFM fitted at the fitted point.
    segment : int
        Index into ``traj.segments`` of the segment used.
    layer_range : tuple (int, int)
        First and last layer index of the segment in the original trajectory.
    settings : dict
        The ``fit_mufm`` settings, the calibration options, the refinement's note and the grid
        points whose fits did not converge (``not_converged``, a list of ``[lambda_ot,
        lambda_h]``).
    """

    lambda_ot: float
    lambda_h: float
    lambda_w: float
    value: float
    residuals: tuple[dict[str, Any], ...]
    match: dict[str, float]
    grid_edge: tuple[str, ...]
    lambda_ot_grid: tuple[float, ...]
    lambda_h_grid: tuple[float, ...]
    grid: tuple[dict[str, Any], ...]
    refinement: tuple[dict[str, Any], ...]
    solution: MUFMSolution
    segment: int
    layer_range: tuple[int, int]
    settings: dict[str, Any]

    _derived = ("reference", "at_grid_edge", "converged")

    @property
    def reference(self) -> str:
        """The paper the MUFM formalises."""
        return _REFERENCE

    @property
    def at_grid_edge(self) -> bool:
        """Whether the fitted point lies at the edge of the searched grid (see ``grid_edge``)."""
        return bool(self.grid_edge)

    @property
    def converged(self) -> bool:
        """Whether every MUFM fit converged and the refinement met its tolerance."""
        return not self.settings["not_converged"] and bool(self.settings["refine_converged"])

    def table(self) -> list[dict[str, Any]]:
        """The per-layer residuals, one row per step ``l = 1..L``."""
        return json_safe([dict(r) for r in self.residuals])

    def format_grid(self, precision: int = 4) -> str:
        """The criterion over the grid as aligned text (rows λ_OT, columns λ_H)."""
        crit = {(r["lambda_ot"], r["lambda_h"]): r["criterion"] for r in self.grid}
        head = ["lambda_ot \\ lambda_h", *(f"{v:.{precision}g}" for v in self.lambda_h_grid)]
        body = [
            [f"{a:.{precision}g}", *(f"{crit[(a, h)]:.{precision}g}" for h in self.lambda_h_grid)]
            for a in self.lambda_ot_grid
        ]
        widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
        return "\n".join(
            "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in [head, *body]
        )

    def __str__(self) -> str:
        edge = f"; at the grid edge: {', '.join(self.grid_edge)}" if self.grid_edge else ""
        return (
            f"MUFM profile calibration: lambda_ot = {self.lambda_ot:.6g}, lambda_h = "
            f"{self.lambda_h:.6g} (lambda_w = {self.lambda_w:.6g} fixed), J = {self.value:.4g}, "
            f"W2 relative = {self.match['w2_relative']:.4g}{edge}\n"
            f"{self.format_table()}\ncriterion over the grid:\n{self.format_grid()}"
        )


def _check_positive_grid(name: str, grid: Sequence[float] | None, default: tuple) -> np.ndarray:
    """The values of one axis of the joint grid, sorted and without repeats (each finite, > 0)."""
    vals = np.asarray(default if grid is None else grid, dtype=np.float64).ravel()
    if vals.size == 0:
        raise ValueError(f"{name} must hold at least one value.")
    for v in vals:
        if not (np.isfinite(v) and v > 0):
            raise ValueError(
                f"{name} values must be finite and > 0 (the grid is searched in log space); got "
                f"{v!r}. For lambda_ot = 0 (the UFM end) use calibrate_mufm."
            )
    return np.unique(vals)


@dataclasses.dataclass(frozen=True)
class _Side:
    """One side's profile: NC1 and W2² of every step l = 1..L and the last layer's second
    moment M_L."""

    nc1: np.ndarray
    w2sq: np.ndarray
    moment: float

    @property
    def cost(self) -> np.ndarray:
        r"""$\tilde c_l = W_2^2(\mu_{l-1}, \mu_l) / M_L$ (inf when $M_L = 0$; clipped later)."""
        return self.w2sq / self.moment if self.moment > 0 else np.full_like(self.w2sq, np.inf)


def _moment(HL: np.ndarray, weights: np.ndarray | None) -> float:
    r"""$M_L = \sum_i a_i \|h_{L,i} - \bar h_L\|^2$, $\bar h_L = \sum_i a_i h_{L,i}$."""
    a = np.full(len(HL), 1.0 / len(HL)) if weights is None else weights
    centred = HL - a @ HL
    return float(a @ np.einsum("ij,ij->i", centred, centred))


def _side(layers: Sequence[Any], labels: np.ndarray, weights: np.ndarray | None) -> _Side:
    """The profile of one trajectory (``weights``: the sample masses, None for uniform)."""
    H = [to_numpy(h).astype(np.float64) for h in layers]
    return _Side(
        nc1=np.array([nc1(h, labels, weights=weights) for h in H[1:]]),
        w2sq=np.array(
            [wasserstein(H[l - 1], H[l], a=weights, b=weights).cost for l in range(1, len(H))]
        ),
        moment=_moment(H[-1], weights),
    )


def profile_spread(
    traj: Trajectory, layers: Sequence[int] | None, seed: int
) -> dict[str, list[float]]:
    r"""How much a network's per-layer profile moves between the two disjoint stratified halves
    of its samples (:func:`otcollapse._resampling.split_halves`): per step $l = 1..L$ of
    ``layers`` (all layers when None), $|\log v_l(A) - \log v_l(B)|$ for $v$ = NC1 and for the
    normalised cost $\tilde c_l = W_2^2(\mu_{l-1}, \mu_l) / M_L$, the profile
    :func:`calibrate_mufm_profile` matches (values clipped to ``[PROFILE_FLOOR, 1/PROFILE_FLOOR]``
    as there). A fit residual no larger is within what sampling alone moves the network's own
    curve by. Empty lists without labels or with fewer than 4 samples."""
    from otcollapse._resampling import split_halves

    halves = split_halves(traj.labels, traj.n_samples, seed)
    if halves is None or traj.labels is None:
        return {"nc1": [], "cost": []}
    idx = list(range(len(traj.layers))) if layers is None else list(layers)
    labels = np.asarray(traj.labels)
    a, b = (
        _side([to_numpy(traj.layers[i])[h].astype(np.float64) for i in idx], labels[h], None)
        for h in halves
    )
    return {
        "nc1": np.abs(_log_ratios(a.nc1, b.nc1, PROFILE_FLOOR)).tolist(),
        "cost": np.abs(_log_ratios(a.cost, b.cost, PROFILE_FLOOR)).tolist(),
    }


def _log_ratios(model: np.ndarray, network: np.ndarray, floor: float) -> np.ndarray:
    r"""$\log m - \log n$, elementwise, both clipped to $[f, 1/f]$ first (always finite)."""
    cap = 1.0 / floor
    return np.log(np.clip(model, floor, cap)) - np.log(np.clip(network, floor, cap))


class _ProfileFits:
    """The MUFM fits of one joint calibration, each compared with the network's profile.

    Keeps the evaluated rows by (λ_OT, λ_H), the best fit so far (each holds ``L + 1`` layers)
    and the points whose fits did not converge.
    """

    def __init__(
        self, net: Trajectory, labels: Any, weights: Any, model: dict[str, Any], floor: float
    ) -> None:
        self.X = to_numpy(net.layers[0]).astype(np.float64)
        self.HL_net = to_numpy(net.layers[-1]).astype(np.float64)
        self.labels = np.asarray(labels)
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.model, self.floor = model, floor
        # no spread, up to rounding: M_L at or below (1e-12 max |h|)^2
        if not _moment(self.HL_net, self.weights) > (1e-12 * np.abs(self.HL_net).max()) ** 2:
            raise ValueError(
                "the network's last layer of the segment has no spread (every sample on one "
                "point, M_L = 0); the normalised transport costs are undefined there. Calibrate "
                "on a segment whose last layer varies."
            )
        self.net = _side(net.layers, self.labels, self.weights)
        self.rows: dict[tuple[float, float], dict[str, Any]] = {}
        self.vectors: dict[tuple[float, float], np.ndarray] = {}  # the residuals of J, per fit
        self.best_key: tuple[float, float] | None = None
        self.best_solution: MUFMSolution | None = None
        self.not_converged: list[tuple[float, float]] = []

    def fit(self, lam_ot: float, lam_h: float) -> MUFMSolution:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return fit_mufm(self.X, self.labels, lambda_ot=lam_ot, lambda_h=lam_h, **self.model)

    def compare(self, sol: MUFMSolution) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The criterion's parts and the match at ``sol``, and its per-layer residuals."""
        traj = sol.trajectory
        mod = _side(traj.layers, np.asarray(traj.labels), self.weights)
        r_nc1 = _log_ratios(mod.nc1, self.net.nc1, self.floor)
        r_cost = _log_ratios(mod.cost, self.net.cost, self.floor)
        j_nc1, j_cost = float(np.sum(r_nc1**2)), float(np.sum(r_cost**2))
        w2 = float(
            wasserstein(sol.layers[-1], self.HL_net, a=self.weights, b=self.weights).distance
        )
        spread = math.sqrt(self.net.moment)
        parts = {
            "criterion": j_nc1 + j_cost,
            "criterion_nc1": j_nc1,
            "criterion_cost": j_cost,
            "w2": w2,
            "w2_relative": w2 / spread,
            "network_spread": spread,
            "mufm_spread": math.sqrt(mod.moment),
            "rms_log_ratio": math.sqrt((j_nc1 + j_cost) / (2 * r_nc1.size)),
        }
        residuals = [
            {
                "layer": l + 1,
                "nc1_network": float(self.net.nc1[l]),
                "nc1_mufm": float(mod.nc1[l]),
                "log_ratio_nc1": float(r_nc1[l]),
                "cost_network": float(self.net.cost[l]),
                "cost_mufm": float(mod.cost[l]),
                "log_ratio_cost": float(r_cost[l]),
                "w2sq_network": float(self.net.w2sq[l]),
                "w2sq_mufm": float(mod.w2sq[l]),
            }
            for l in range(r_nc1.size)
        ]
        return parts, residuals

    def evaluate(self, lam_ot: float, lam_h: float) -> dict[str, Any]:
        """Fit at (``lam_ot``, ``lam_h``) (once per point); the row of the grid table."""
        key = (float(lam_ot), float(lam_h))
        if key in self.rows:
            return self.rows[key]
        sol = self.fit(*key)
        if not sol.converged:
            self.not_converged.append(key)
        parts, residuals = self.compare(sol)
        self.vectors[key] = np.array(
            [r[k] for k in ("log_ratio_nc1", "log_ratio_cost") for r in residuals]
        )
        row = {
            "lambda_ot": key[0],
            "lambda_h": key[1],
            **{k: parts[k] for k in ("criterion", "criterion_nc1", "criterion_cost")},
            "w2_relative": parts["w2_relative"],
            "converged": sol.converged,
            "n_iter": sol.n_iter,
        }
        self.rows[key] = row
        if self.best_key is None or row["criterion"] < self.rows[self.best_key]["criterion"]:
            self.best_key, self.best_solution = key, sol
        return row


class _FitBudget(Exception):
    """Raised inside the refinement when its cap on fits is reached."""


def _refine_2d(
    fits: _ProfileFits,
    axes: tuple[np.ndarray, np.ndarray],
    start: tuple[float, float],
    tol: float,
    max_fits: int,
) -> tuple[list[dict[str, Any]], str, bool]:
    r"""Bounded trust-region least squares (scipy ``least_squares``, ``method="trf"``) on the
    residual vector of $J$ in $(\log_{10}\lambda_{OT}, \log_{10}\lambda_H)$ over the grid's
    box, from the best grid point (axes with one value stay fixed): the rows evaluated, a note,
    and whether it met its tolerance within ``max_fits`` fits."""
    from scipy.optimize import least_squares

    logs = [np.log10(a) for a in axes]
    free = [i for i, g in enumerate(logs) if g.size > 1]
    if not free:
        return [], "skipped: both grids hold a single value", True
    x_start = np.log10(np.asarray(start, dtype=np.float64))
    order: list[tuple[float, float]] = []

    def where(x: np.ndarray) -> tuple[float, float]:
        # points closer than 1e-9 decades share one fit (the grid's own points included)
        return (round(float(x[0]), 9), round(float(x[1]), 9))

    known = {where(np.log10(key)): key for key in fits.rows}

    def residuals(t: np.ndarray) -> np.ndarray:
        x = x_start.copy()
        x[free] = t
        key = known.get(where(x))
        if key is None:
            if len(order) >= max_fits:
                raise _FitBudget
            key = (float(10.0 ** where(x)[0]), float(10.0 ** where(x)[1]))
            known[where(x)] = key
            order.append(key)
            fits.evaluate(*key)
        return fits.vectors[key]

    names = ", ".join(f"log10 {_AXES[i]}" for i in free)
    try:
        res = least_squares(
            residuals,
            x_start[free],
            bounds=([logs[i][0] for i in free], [logs[i][-1] for i in free]),
            method="trf",
            diff_step=1e-3,
            ftol=tol,
            xtol=tol,
            gtol=tol,
        )
        ok, why = bool(res.success), f"status {res.status}: {res.message}"
    except _FitBudget:
        ok, why = False, f"stopped at refine_max_fits = {max_fits} fits"
    rows = [fits.rows[k] for k in order]
    note = (
        f"bounded least squares (trust-region reflective) in ({names}) over the grid's box, "
        f"tol = {tol:g}, {len(rows)} fits, converged={ok} ({why})"
    )
    return rows, note, ok


def _grid_edge(axes: tuple[np.ndarray, np.ndarray], point: tuple[float, float]) -> tuple[str, ...]:
    """The axes (of more than one value) on which ``point`` lies within ``_EDGE_FRACTION`` of a
    grid step of the grid's end, in log10."""
    out = []
    for name, grid, v in zip(_AXES, axes, point, strict=True):
        if grid.size < 2:
            continue
        logs = np.log10(grid)
        tol = _EDGE_FRACTION * float(np.median(np.diff(logs)))
        t = math.log10(v)
        if t <= logs[0] + tol:
            out.append(f"{name} low")
        if t >= logs[-1] - tol:
            out.append(f"{name} high")
    return tuple(out)


def calibrate_mufm_profile(
    traj: Trajectory,
    *,
    lambda_w: float,
    lambda_ot_grid: Sequence[float] | None = None,
    lambda_h_grid: Sequence[float] | None = None,
    lambda_b: float = 0.0,
    loss: str = "ce",
    coupling: str = "paired",
    segment: int | None = None,
    refine: bool = True,
    refine_tol: float = 1e-6,
    refine_max_fits: int = 60,
    floor: float = PROFILE_FLOOR,
    seed: int = 0,
    **fit_options: Any,
) -> MUFMProfileCalibration:
    r"""Fit the MUFM's $\lambda_{OT}$ and $\lambda_H$ together to a network segment's per-layer
    profile: its shape (NC1 layer by layer) and its scale (the transport cost of every step).

    The segment's first layer is the MUFM input $X = H_0$ and its number of steps is $L$. For
    each $(\lambda_{OT}, \lambda_H)$ the MUFM (:func:`fit_mufm`, $\lambda_W$ fixed) is fitted and
    its trajectory $H_0^M = X, H_1^M, \dots, H_L^M$ is compared with the network's
    $H_0^N = X, H_1^N, \dots, H_L^N$ by

    $$J(\lambda_{OT}, \lambda_H)
      = \sum_{l=1}^L \Big[\log\mathrm{NC1}^M_l - \log\mathrm{NC1}^N_l\Big]^2
      + \sum_{l=1}^L \Big[\log\tilde c^M_l - \log\tilde c^N_l\Big]^2,
      \qquad \tilde c_l = \frac{W_2^2(\mu_{l-1}, \mu_l)}{M_L},\quad
      M_L = \sum_i a_i \big\|h_{L,i} - \textstyle\sum_j a_j h_{L,j}\big\|^2,$$

    with NC1 $= \frac1K\operatorname{Tr}(\Sigma_W\Sigma_B^\dagger)$ (Papyan's,
    :func:`otcollapse.collapse.nc1`), $W_2^2$ the full squared Euclidean cost
    (:func:`otcollapse.transport.wasserstein`, ``method="auto"``) and every value clipped to
    $[f, 1/f]$, $f =$ ``floor``, before its logarithm. Each side uses its own layers:
    $\tilde c^N$ the network's steps over the second moment $M_L^N$ of its own centred last
    layer, $\tilde c^M$ the MUFM trajectory's steps over $M_L^M$. The masses $a_i$ are the
    network's sample weights ($1/N$ without) on both sides, since row $i$ of every MUFM layer
    follows sample $i$ (the MUFM's objective itself averages over samples uniformly).
    $\tilde c$ is dimensionless and unchanged when a whole trajectory is scaled, but the layer
    $X$ the two share fixes the scale: a model whose last layer sits in a small ball while the
    network's spreads has steps far longer than its own spread and a large $\log\tilde c$
    residual, and its intermediate NC1 values, those of a path between $X$ and $H_L$, differ
    too. $J = 0$ exactly when both profiles agree at every layer.

    The search: every point of the grid ``lambda_ot_grid`` × ``lambda_h_grid`` is fitted; the
    smallest $J$ wins (ties: the smaller $\lambda_{OT}$, then the smaller $\lambda_H$). With
    ``refine=True`` the best grid point is refined by bounded nonlinear least squares on the
    residual vector of $J$ (its $2L$ log-ratios) in $(\log_{10}\lambda_{OT}, \log_{10}\lambda_H)$:
    scipy's ``least_squares`` (trust-region reflective, forward-difference Jacobian, one fit per
    evaluation), bounded to the grid's box, until the relative change of $J$, of the step or the
    scaled gradient falls below ``refine_tol`` (or ``refine_max_fits`` fits); the best point
    evaluated is returned. Least squares rather than Nelder–Mead because $J$ has a long, narrow
    valley (below): on MUFM-generated data Nelder–Mead (``xatol`` 0.02 in log10) from the best
    grid point stopped with both weights a factor 16 too small, where Gauss–Newton steps, which
    see the valley's curvature, reach the truth (``docs/figures/make_mufm_calibration_numbers.py``).
    The
    result is reported at the grid's edge (``grid_edge``) when it lies within a tenth of a grid
    step of an end of a searched axis: the minimiser may then lie outside the grid.

    Why $\lambda_W$ is held fixed. For the MUFM's last layer the terms in $H_L$ are
    $\frac{\lambda_H}2\|H_L\|^2 + \frac{\lambda_{OT}}2\|H_L - X\|^2
    = \frac{\lambda_H + \lambda_{OT}}2\|H_L - \tau X\|^2 + \text{const}$,
    $\tau = \lambda_{OT}/(\lambda_H + \lambda_{OT})$; with the classifier's balance between
    $\lambda_W$ and the features' pull (in the UFM the optimum's geometry depends on
    $\lambda_W\lambda_H$ alone and the features' scale on $\lambda_W/\lambda_H$), a change of
    $\lambda_W$ is absorbed by $(\lambda_{OT}, \lambda_H)$ almost exactly. Measured on a
    trajectory generated by the MUFM ($N = 60$, $K = 3$, $d = 6$, $L = 3$, truth
    $\lambda_{OT} = 0.05$, $\lambda_H = 0.01$, $\lambda_W = 10^{-3}$): refitting with
    $\lambda_W$ 4× and 30× larger and 4× smaller, the best $(\lambda_{OT}, \lambda_H)$ were
    $(0.088, 0.018)$, $(0.12, 0.025)$ and $(0.023, 0.0046)$, each with $J \le 10^{-7}$ and
    the last layers within 0.8 % of the network's spread. $\lambda_W$ is not identifiable from the
    profile, so it is fixed and $\lambda_H$ fitted, the usual choice for the UFM; the fitted
    $(\lambda_{OT}, \lambda_H)$ are meaningful relative to the $\lambda_W$ given. Along the
    valley $\lambda_H/\lambda_{OT} \approx$ const the criterion is shallower than across it (see
    ``docs/mufm.md``), so the ratio is pinned more tightly than the common scale.

    Parameters
    ----------
    traj : Trajectory
        With labels. Its layers must have one dimension, or ``segment`` picks a run of equal
        dimension (``traj.segments[segment]``) with at least two layers.
    lambda_w : float
        The classifier's weight decay (fixed).
    lambda_ot_grid, lambda_h_grid : sequence of float, optional
        The values searched (each finite and > 0; searched in log space). Defaults: ``1e-3 ..
        1e2`` and ``1e-4 .. 1e1``, six values a decade apart each (36 fits). A grid of one value
        holds that parameter fixed.
    lambda_b : float
        The bias decay (fixed).
    loss : {"ce", "mse"}
    coupling : {"paired", "wasserstein"}
        For ``"wasserstein"`` the MUFM trajectory's rows follow the input samples and carry
        their labels (see :class:`MUFMSolution`); the NC1 profile uses those labels.
    segment : int, optional
        Index into ``traj.segments``.
    refine : bool
        Run the least-squares refinement from the best grid point.
    refine_tol : float
        ``ftol``, ``xtol`` and ``gtol`` of ``scipy.optimize.least_squares``.
    refine_max_fits : int
        Cap on the refinement's fits (Jacobian evaluations included).
    floor : float
        NC1 and $\tilde c$ are clipped to $[f, 1/f]$ before the logarithm ($0 < f < 1$), so
        exact zeros (a collapsed layer, a step that does not move) and a model last layer without
        spread give a large but finite residual.
    seed : int
        Passed to ``fit_mufm`` (the classifier's random start); every fit starts cold.
    **fit_options
        Further ``fit_mufm`` options (``bias``, ``solver``, ``tol``, ``max_iter``).

    Returns
    -------
    MUFMProfileCalibration
        The fitted $\lambda_{OT}$, $\lambda_H$ (and the $\lambda_W$ used), $J$, the per-layer
        residuals, the fitted solution, ``match["w2_relative"]``
        $= W_2(\mu_{H_L^M}, \mu_{H_L^N}) / \sqrt{M_L^N}$, the edge flag and the grid.

    Raises
    ------
    ValueError
        Layers of several dimensions without ``segment``; a bad segment index or a segment of one
        layer; a trajectory without labels; a grid value that is not finite and > 0, or an empty
        grid; a network last layer without spread; a bad ``floor``, ``refine_tol`` or
        ``refine_max_fits``; ``fit_options`` that the calibration sets itself.

    Warns
    -----
    ConvergenceWarning
        Once, when some fits did not converge (the ``converged`` column of ``grid`` and
        ``refinement``) or the refinement stopped before its tolerance.

    Examples
    --------
    See ``docs/mufm.md``, "Calibrating shape and scale".

    References
    ----------
    Wang, Gai & Zhang, "Progressive Feedforward Collapse of ResNet Training" (the MUFM).
    Papyan, Han & Donoho, "Prevalence of neural collapse during the terminal phase of deep
    learning training", PNAS 2020 (NC1). Zhu et al., "A Geometric Analysis of Neural Collapse
    with Unconstrained Features", NeurIPS 2021 (the UFM's normalisation).
    """
    seg_index, seg = _check_network(traj, segment, "calibrate_mufm_profile")
    (lambda_w, lambda_b) = _check_lambdas(lambda_w=lambda_w, lambda_b=lambda_b)
    _check_choice("loss", loss, ("ce", "mse"))
    _check_choice("coupling", coupling, ("paired", "wasserstein"))
    bad = sorted(set(fit_options) & set(_RESERVED))
    if bad:
        raise ValueError(
            f"calibrate_mufm_profile sets {bad} itself; do not pass them in fit_options."
        )
    axes = (
        _check_positive_grid("lambda_ot_grid", lambda_ot_grid, DEFAULT_LAMBDA_OT_GRID),
        _check_positive_grid("lambda_h_grid", lambda_h_grid, DEFAULT_LAMBDA_H_GRID),
    )
    floor = check_real(floor, "floor", minimum=0.0, maximum=1.0, open_min=True, open_max=True)
    rtol = check_real(refine_tol, "refine_tol", minimum=0.0, open_min=True)
    max_fits = check_int(refine_max_fits, "refine_max_fits", minimum=1)
    net = traj.take_layers(list(seg))
    model = dict(
        n_layers=len(seg) - 1,
        lambda_w=lambda_w,
        lambda_b=lambda_b,
        loss=loss,
        coupling=coupling,
        seed=check_int(seed, "seed"),
        **fit_options,
    )
    fits = _ProfileFits(net, traj.labels, traj.weights, model, floor)
    rows = [fits.evaluate(float(a), float(h)) for a in axes[0] for h in axes[1]]
    best = rows[int(np.argmin([r["criterion"] for r in rows]))]
    refined: list[dict[str, Any]] = []
    note, refine_ok = "not requested", True
    if refine:
        refined, note, refine_ok = _refine_2d(
            fits, axes, (best["lambda_ot"], best["lambda_h"]), rtol, max_fits
        )
    assert fits.best_key is not None and fits.best_solution is not None
    best = fits.rows[fits.best_key]
    sol = fits.best_solution
    problems = []
    if fits.not_converged:
        problems.append(
            f"{len(fits.not_converged)} MUFM fit(s) did not converge (lambda_ot, lambda_h = "
            f"{sorted(set(fits.not_converged))}); see the 'converged' column of the grid and "
            "refinement. Raise max_iter, loosen tol, or leave out extreme lambdas"
        )
    if not refine_ok:
        problems.append(f"the refinement stopped before its tolerance ({note})")
    if problems:
        warnings.warn(
            "calibrate_mufm_profile: " + "; ".join(problems) + ".",
            ConvergenceWarning,
            stacklevel=2,
        )
    parts, rows_l = fits.compare(sol)
    residuals = [
        {"layer": r["layer"], "network_layer": seg.start + r["layer"], **r} for r in rows_l
    ]
    settings = {
        **model,
        "lambda_ot_grid": axes[0].tolist(),
        "lambda_h_grid": axes[1].tolist(),
        "criterion": "sum_l [log NC1^M_l - log NC1^N_l]^2 + sum_l [log c^M_l - log c^N_l]^2",
        "cost_normalisation": "W2^2(mu_{l-1}, mu_l) / M_L, M_L = mean squared norm of the "
        "centred last layer, each side its own",
        "floor": floor,
        "refine": bool(refine),
        "refine_tol": rtol,
        "refine_max_fits": max_fits,
        "refinement": note,
        "refine_converged": refine_ok,
        "not_converged": [list(k) for k in sorted(set(fits.not_converged))],
    }
    return MUFMProfileCalibration(
        lambda_ot=best["lambda_ot"],
        lambda_h=best["lambda_h"],
        lambda_w=lambda_w,
        value=best["criterion"],
        residuals=tuple(residuals),
        match={k: parts[k] for k in _MATCH_KEYS},
        grid_edge=_grid_edge(axes, (best["lambda_ot"], best["lambda_h"])),
        lambda_ot_grid=tuple(axes[0].tolist()),
        lambda_h_grid=tuple(axes[1].tolist()),
        grid=tuple(rows),
        refinement=tuple(refined),
        solution=sol,
        segment=seg_index,
        layer_range=(seg.start, seg.stop - 1),
        settings=settings,
    )
