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

from otcollapse._utils import json_safe, to_numpy
from otcollapse.collapse import CollapseProfile, collapse_profile, nc1
from otcollapse.exceptions import ConvergenceWarning
from otcollapse.measures import Trajectory
from otcollapse.surrogates.core import _check_choice, _check_lambda
from otcollapse.surrogates.mufm import MUFMSolution, fit_mufm
from otcollapse.transport import wasserstein

__all__ = ["DISCREPANCIES", "MUFMCalibration", "calibrate_mufm", "default_lambda_grid"]

DISCREPANCIES = ("w2", "nc1")
_NC1_FLOOR = 1e-300
# fit_mufm arguments that calibrate_mufm sets itself
_RESERVED = ("X", "y", "n_layers", "lambda_ot", "lambda_w", "lambda_h", "lambda_b", "loss",
             "coupling", "seed", "dim", "embed")  # fmt: skip


def default_lambda_grid() -> np.ndarray:
    """The default grid: ``0`` (the UFM end) and 10 log-spaced values from ``1e-3`` to ``1e2``."""
    return np.concatenate([[0.0], np.logspace(-3.0, 2.0, 10)])


@dataclasses.dataclass(frozen=True, eq=False)
class MUFMCalibration:
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

    def profiles_table(self) -> list[dict[str, Any]]:
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
        """JSON-safe record (non-finite numbers become None; the layers are left out)."""
        return json_safe(
            {
                "lambda_ot": self.lambda_ot,
                "discrepancy": self.discrepancy,
                "value": self.value,
                "grid": list(self.grid),
                "refinement": list(self.refinement),
                "match": self.match,
                "solution": self.solution.to_dict(),
                "network_profile": self.network_profile.to_dict(),
                "mufm_profile": self.mufm_profile.to_dict(),
                "profiles_table": self.profiles_table(),
                "segment": self.segment,
                "layer_range": list(self.layer_range),
                "settings": self.settings,
                "reference": 'Wang, Gai & Zhang, "Progressive Feedforward Collapse of ResNet '
                'Training"',
            }
        )


def _pick_segment(traj: Trajectory, segment: int | None) -> tuple[int, range]:
    segs = traj.segments
    if segment is None:
        if len(segs) != 1:
            raise ValueError(
                f"the trajectory's layers differ in dimension (dims {list(traj.dims)}, segments "
                f"{[(s.start, s.stop - 1) for s in segs]}); the MUFM needs one constant width. "
                "Pass segment=<index into traj.segments>."
            )
        return 0, segs[0]
    s = int(segment)
    if s != segment or not -len(segs) <= s < len(segs):
        raise ValueError(
            f"segment must be an integer index into traj.segments (0..{len(segs) - 1}); "
            f"got {segment!r}."
        )
    s %= len(segs)
    return s, segs[s]


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
    and coupling) is fitted and compared with the network's last layer $H_L^{net}$ by

    - ``discrepancy="w2"``: $D(\lambda) = W_2(\mu_{H_L^M(\lambda)}, \mu_{H_L^{net}})$ (full squared
      Euclidean cost, ``wasserstein(..., method="auto")``, the network's sample weights as masses
      when it has them);
    - ``discrepancy="nc1"``: $D(\lambda) = |\log\mathrm{NC1}(H_L^M(\lambda))
      - \log\mathrm{NC1}(H_L^{net})|$, NC1 $= \frac1K\operatorname{Tr}(\Sigma_W\Sigma_B^\dagger)$
      (floored at ``1e-300`` before the log).

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
    if not isinstance(traj, Trajectory):
        raise ValueError(f"calibrate_mufm needs a Trajectory; got {type(traj).__name__}.")
    if traj.labels is None:
        raise ValueError("calibrate_mufm needs class labels; pass labels= to the Trajectory.")
    _check_choice("discrepancy", discrepancy, DISCREPANCIES)
    lambda_w = _check_lambda("lambda_w", lambda_w)
    lambda_h = _check_lambda("lambda_h", lambda_h)
    lambda_b = _check_lambda("lambda_b", lambda_b)
    bad = sorted(set(fit_options) & set(_RESERVED))
    if bad:
        raise ValueError(f"calibrate_mufm sets {bad} itself; do not pass them in fit_options.")
    seg_index, seg = _pick_segment(traj, segment)
    if len(seg) < 2:
        raise ValueError(
            f"segment {seg_index} (layer {seg.start}) has a single layer; the MUFM needs at least "
            "one step (two layers of equal dimension)."
        )
    lams = default_lambda_grid() if grid is None else np.asarray(grid, dtype=np.float64).ravel()
    if lams.size == 0:
        raise ValueError("grid must hold at least one lambda_ot value.")
    for v in lams:
        _check_lambda("grid value", v)
    lams = np.unique(lams)
    xatol = float(refine_xatol)
    if not xatol > 0:
        raise ValueError(f"refine_xatol must be > 0; got {refine_xatol!r}.")

    net = traj.take_layers(list(seg))
    X = to_numpy(net.layers[0]).astype(np.float64)
    HL_net = to_numpy(net.layers[-1]).astype(np.float64)
    labels = np.asarray(traj.labels)
    weights = None if traj.weights is None else np.asarray(traj.weights, dtype=np.float64)
    L = len(seg) - 1
    nc1_net = float(nc1(HL_net, labels, weights=weights))
    w2_io = float(wasserstein(X, HL_net, a=weights, b=weights).distance)

    model = dict(
        n_layers=L,
        lambda_w=lambda_w,
        lambda_h=lambda_h,
        lambda_b=lambda_b,
        loss=loss,
        coupling=coupling,
        seed=int(seed),
        **fit_options,
    )
    kept: dict[float, MUFMSolution] = {}  # only the best fit so far (memory: L + 1 layers each)
    not_converged: list[float] = []
    seen: list[dict[str, Any]] = []

    def evaluate(lam: float) -> dict[str, Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            sol = fit_mufm(X, labels, lambda_ot=lam, **model)
        if not sol.converged:
            not_converged.append(lam)
        HL = sol.layers[-1]  # row i follows network sample i (paired) / input i (wasserstein)
        w2 = float(wasserstein(HL, HL_net, b=weights).distance)
        c = float(nc1(sol.H, labels))
        gap = abs(math.log(max(c, _NC1_FLOOR)) - math.log(max(nc1_net, _NC1_FLOOR)))
        disc = w2 if discrepancy == "w2" else gap
        if not kept or disc < min(r["discrepancy"] for r in seen):
            kept.clear()
            kept[lam] = sol
        row = {
            "lambda_ot": lam,
            "discrepancy": disc,
            "w2": w2,
            "nc1_mufm": c,
            "objective": sol.objective,
            "converged": sol.converged,
            "n_iter": sol.n_iter,
        }
        seen.append(row)
        return row

    rows = [evaluate(float(v)) for v in lams]
    vals = np.array([r["discrepancy"] for r in rows])
    j = int(np.argmin(vals))  # first minimum: the smaller lambda on ties
    best = rows[j]
    refined: list[dict[str, Any]] = []
    refine_note = "not requested"
    if refine and best["lambda_ot"] > 0:
        from scipy.optimize import minimize_scalar

        pos = np.log10(lams[lams > 0])
        k = int(np.searchsorted(pos, math.log10(best["lambda_ot"])))
        step = float(np.median(np.diff(pos))) if pos.size > 1 else 1.0
        lo = pos[k - 1] if k > 0 else pos[k] - step
        hi = pos[k + 1] if k + 1 < pos.size else pos[k] + step
        cache: dict[float, dict[str, Any]] = {}

        def objective(t: float) -> float:
            lam = float(10.0**t)
            if lam not in cache:
                cache[lam] = evaluate(lam)
                refined.append(cache[lam])
            return cache[lam]["discrepancy"]

        res = minimize_scalar(objective, bounds=(lo, hi), method="bounded",
                              options={"xatol": xatol})  # fmt: skip
        cand = min(refined, key=lambda r: r["discrepancy"])
        if cand["discrepancy"] <= best["discrepancy"]:
            best = cand
        refine_note = (
            f"bounded Brent in log10(lambda_ot) over [{lo:.4g}, {hi:.4g}], "
            f"{len(refined)} fits, success={bool(res.success)}"
        )
    elif refine:
        refine_note = "skipped: the best grid point is lambda_ot = 0 (the UFM end)"

    if not_converged:
        warnings.warn(
            f"calibrate_mufm: {len(not_converged)} MUFM fit(s) did not converge (lambda_ot = "
            f"{sorted(set(not_converged))}); see the 'converged' column of the grid. Raise "
            "max_iter, loosen tol, or leave out very large lambda_ot.",
            ConvergenceWarning,
            stacklevel=2,
        )

    lam_best = best["lambda_ot"]
    if lam_best in kept:
        sol = kept[lam_best]
    else:  # a tie kept another fit: refit (deterministic for a given seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            sol = fit_mufm(X, labels, lambda_ot=lam_best, **model)
    match = {
        "w2": best["w2"],
        "w2_relative": best["w2"] / w2_io if w2_io > 0 else float("nan"),
        "w2_network_input_output": w2_io,
        "nc1_network": nc1_net,
        "nc1_mufm": best["nc1_mufm"],
        "log_nc1_gap": abs(
            math.log(max(best["nc1_mufm"], _NC1_FLOOR)) - math.log(max(nc1_net, _NC1_FLOOR))
        ),
    }
    metrics = None if profile_metrics is None else list(profile_metrics)
    net_prof = collapse_profile(net, metrics=metrics)
    mufm_prof = collapse_profile(sol.trajectory, metrics=metrics)
    settings = {
        **{k: v for k, v in model.items()},
        "discrepancy": discrepancy,
        "grid": lams.tolist(),
        "refine": bool(refine),
        "refine_xatol": xatol,
        "refinement": refine_note,
        "not_converged": sorted(set(not_converged)),
    }
    return MUFMCalibration(
        lambda_ot=float(lam_best),
        discrepancy=discrepancy,
        value=float(best["discrepancy"]),
        grid=tuple(rows),
        refinement=tuple(refined),
        match=match,
        solution=sol,
        network_profile=net_prof,
        mufm_profile=mufm_prof,
        segment=seg_index,
        layer_range=(seg.start, seg.stop - 1),
        settings=settings,
    )
