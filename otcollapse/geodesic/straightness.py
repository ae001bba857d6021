r"""The geodesic test: per segment of equal dimension, how straight the path of the layer measures
is (path ratio, speed), how close each layer lies to the geodesic between the ends (McCann fit),
and the scores OTS and LSS, with subsampling intervals (references in :func:`geodesic_test`).

$$R = \frac{\sum_{l} W_2(\mu_l, \mu_{l+1})}{W_2(\mu_0, \mu_L)} \ge 1 .$$
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from otcollapse import _resampling
from otcollapse._validation import check_int
from otcollapse.geodesic._common import (
    bar,
    check_boot,
    check_dense_budget,
    check_trajectory,
    coupling_spec,
    exact_coupling,
    f64,
    paired_cost,
    replicates,
    solve,
)
from otcollapse.geodesic.gauge import align_trajectory
from otcollapse.geodesic.mccann import fit_discrete, fit_gaussian
from otcollapse.geodesic.profile import transport_profile
from otcollapse.geodesic.results import (
    GeodesicReport,
    LSSResult,
    SegmentReport,
    TransportPair,
    TransportProfile,
)
from otcollapse.geodesic.scores import _ots_from_coupling, lss
from otcollapse.measures import Trajectory
from otcollapse.transport import TransportResult, TransportSpec

__all__ = ["geodesic_test"]


class _Solvers(NamedTuple):
    """The requested transport (step lengths, R) and the exact one of OTS and the McCann fit."""

    spec: TransportSpec
    fit: TransportSpec


def geodesic_test(
    traj: Trajectory,
    *,
    transport: str | TransportSpec = "auto",
    n_boot: int = 0,
    seed: int = 0,
    max_samples: int | None = 5000,
    boot_fraction: float = 0.5,
    ci_level: float = 0.95,
    mccann_grid: int = 0,
    profile: TransportProfile | None = None,
    gauge: str = "none",
    progress: bool = False,
    **options: Any,
) -> GeodesicReport:
    r"""Test whether the layers of each segment lie in order on one Wasserstein geodesic.

    Per segment of equal dimension, layers ``0..L`` of the segment (Gai & Zhang):

    - path ratio $$R = \frac{\sum_{l} W_2(\mu_l, \mu_{l+1})}{W_2(\mu_0, \mu_L)} \ge 1,$$
      1 when the layers lie in order on one geodesic;
    - speed: the coefficient of variation of the step lengths ``W2(mu_l, mu_{l+1})`` (0 for
      constant speed);
    - McCann fit: with ``T`` the optimal map (plan) from ``mu_0`` to ``mu_L`` and
      ``mu_t = ((1 - t) Id + t T)_# mu_0``, $$t_l = \arg\min_{t\in[0,1]} W_2(\mu_l, \mu_t),
      \qquad r_l = W_2(\mu_l, \mu_{t_l}) / W_2(\mu_0, \mu_L),$$ reported beside ``l / L``;
    - OTS between the first and last layers (:func:`ots`) and LSS of every track (:func:`lss`).

    The McCann fit uses that ``t -> W2^2(mu_l, mu_t)`` is ``W2^2(mu_0, mu_L) t^2`` plus a
    concave piecewise-linear function: each solve gives a quadratic majorant whose minimiser
    lowers the value (majorize-minimize), started from the network's own coupling, so a layer
    takes one to three solves; ``mccann_grid = k`` adds ``k`` equally spaced starts against
    local minima. With ``transport="gaussian"`` every value is the Bures (Gaussian) one and the fit
    runs on the Gaussian geodesic (grid, then bounded Brent).

    OTS and the McCann fit need the exact coupling (assignment for uniform masses, network
    simplex for weighted samples); with ``transport`` ``"sinkhorn"`` or ``"sliced"`` the step
    lengths and ``R`` use that method and the fit and OTS the exact one (``methods`` says which).
    For ``n > max_samples`` everything runs on a seeded, class-stratified subsample, and the
    report says so.

    Parameters
    ----------
    traj : Trajectory
        At least two layers. Steps across a change of dimension do not enter any segment's
        statistics; they are in :attr:`GeodesicReport.profile` when measurable.
    transport : str or TransportSpec
        Transport for the step lengths and ``R``: a method name, ``"auto"`` (exact while it
        fits), ``"assignment"``, ``"exact"``, ``"gaussian"``, ``"sinkhorn"``, ``"sliced"``, or
        a :class:`~otcollapse.transport.TransportSpec`, checked once.
    n_boot : int
        Subsampling replicates (without replacement: duplicated samples would break the
        identity of input and output that OTS counts) for intervals of ``R``, speed CV, OTS and
        LSS; 0 for none.
    seed : int
        Seed of the subsample, the split halves and the replicates.
    max_samples : int or None
        Analyse at most this many samples (stratified subsample); None for all.
    boot_fraction : float
        Replicate size as a fraction of the analysed samples.
    ci_level : float
        Coverage of the percentile intervals.
    mccann_grid : int
        Extra equally spaced starts ``0, 1/(k-1), ..., 1`` of the McCann fit (``k >= 0``; 0: start
        from the network's coupling only, 1: also from ``t = 0``).
    profile : TransportProfile, optional
        A successive-step profile of the same analysed samples and method (e.g. from
        :func:`transport_profile`) whose step values are reused instead of recomputed (computed
        with the same ``gauge``).
    gauge : {"none", "orthogonal", "affine"}
        Align successive layers of the analysed samples first
        (:func:`~otcollapse.geodesic.gauge.align_trajectory`): every statistic is then that of
        the aligned trajectory, and :attr:`GeodesicReport.gauge` records the alignment.
        ``"none"``: the raw layers (Gai & Zhang's convention).
    progress : bool
        Progress bars (tqdm) on a terminal.
    **options
        The options of the method named by ``transport`` (checked once): the step solves take
        them, and the exact fit those that apply to it (the memory budget always).

    Returns
    -------
    GeodesicReport

    Raises
    ------
    ValueError
        Fewer than two layers; no two consecutive layers of equal dimension;
        ``transport="gromov"``; a profile that does not match; an exact coupling too large for
        memory (use ``max_samples``); ``mccann_grid < 0``, ``max_samples < 2``,
        ``max_dense_bytes < 0``, or ``n_boot``, ``boot_fraction``, ``ci_level`` out of range.
    TypeError
        A non-integer ``mccann_grid``, ``max_samples``, ``n_boot`` or ``max_dense_bytes``, or a
        non-numeric ``boot_fraction`` / ``ci_level``.

    Examples
    --------
    >>> import numpy as np
    >>> from otcollapse.constructions import discrete_geodesic
    >>> g = np.random.default_rng(0)
    >>> x0, x1 = g.normal(size=(30, 2)), g.normal(size=(30, 2)) + 3
    >>> from scipy.optimize import linear_sum_assignment
    >>> _, sigma = linear_sum_assignment(((x0[:, None] - x1[None]) ** 2).sum(-1))
    >>> rep = geodesic_test(discrete_geodesic(x0, x1, sigma, n_layers=4))
    >>> seg = rep.segments[0]
    >>> round(seg.path_ratio, 9), seg.ots, round(seg.lss.mean, 9)
    (1.0, 1.0, 1.0)

    References
    ----------
    Gai & Zhang, "Deep Residual Networks Learn the Geodesic Curve in the Wasserstein Space".
    Wang, Gai & Zhang, "Progressive Feedforward Collapse of ResNet Training".
    McCann, "A convexity principle for interacting gases", Adv. Math. 128 (1997).
    """
    spec = TransportSpec.coerce(transport, **options)
    check_trajectory(traj, "geodesic_test")
    if spec.method == "gromov":
        raise ValueError(
            "geodesic_test needs a W2-type method: Gromov–Wasserstein compares each space's "
            "inner distances, not positions, so it has no geodesic path. Use transport='auto' "
            "within segments (and traj.project(dim) to analyse across a change of dimension)."
        )
    check_boot(n_boot, boot_fraction, ci_level)
    if max_samples is not None:
        check_int(max_samples, "max_samples (or None for all samples)", minimum=2)
    mccann_grid = check_int(mccann_grid, "mccann_grid (extra starts of the McCann fit)", minimum=0)
    work, subsample, notes = _analysed_samples(traj, max_samples, seed)
    work, alignment = align_trajectory(work, gauge)
    if profile is not None and profile.metadata.get("gauge", {}).get("gauge", "none") != gauge:
        raise ValueError(
            f"the profile given was computed with another gauge than gauge={gauge!r}; pass "
            "transport_profile(..., gauge=gauge) of the same samples, or no profile."
        )
    segments = _segments(work, notes)
    solvers = _Solvers(spec, coupling_spec(work.weights, spec))
    check_dense_budget(work.n_samples, solvers.fit)
    profile = _step_profile(work, profile, spec, seed, progress)
    reports = [
        _segment_report(work, seg, profile, solvers, mccann_grid, progress)
        for seg in bar(segments, progress, "segments")
    ]
    boot_size, seeds = replicates(work.n_samples, n_boot, boot_fraction, seed)
    if seeds:
        reps = _replicates(work, segments, solvers, boot_size, seeds, progress)
        reports = [
            dataclasses.replace(
                r,
                ci={
                    k: c
                    for k, v in rep.items()
                    if (c := _resampling.percentile_interval(v, ci_level)) is not None
                },
                replicates={k: tuple(v) for k, v in rep.items()},
            )
            for r, rep in zip(reports, reps, strict=True)
        ]
        notes.append(
            f"intervals: {n_boot} subsamples of {boot_size} without replacement (seed {seed}), "
            f"{ci_level:.0%} percentile; statistics of size-{boot_size} samples (W2, OTS and "
            "R are biased by the sample size)"
        )
    return GeodesicReport(
        segments=tuple(reports),
        profile=profile,
        method=spec.method,
        n_samples=work.n_samples,
        n_total=traj.n_samples,
        subsample=subsample,
        n_boot=int(n_boot),
        boot_size=boot_size,
        ci_level=float(ci_level),
        seed=int(seed),
        notes=tuple(notes),
        gauge=None if alignment.gauge == "none" else alignment,
    )


def _analysed_samples(
    traj: Trajectory, max_samples: int | None, seed: int
) -> tuple[Trajectory, dict[str, Any] | None, list[str]]:
    """The trajectory analysed (a stratified subsample beyond ``max_samples``), the subsample's
    record and the report's first notes."""
    if max_samples is None or traj.n_samples <= max_samples:
        return traj, None, []
    work = traj.subsample(max_samples, seed)
    note = (
        f"analysed a class-stratified subsample of {max_samples} of {traj.n_samples} samples "
        f"(seed {seed}); pass max_samples=None for all of them"
    )
    return work, dict(work.metadata["subsample"]), [note]


def _segments(work: Trajectory, notes: list[str]) -> list[range]:
    """The segments of at least two layers (the others noted in ``notes``)."""
    segments = [seg for seg in work.segments if len(seg) >= 2]
    if not segments:
        raise ValueError(
            f"no two consecutive layers share a dimension (dimensions {work.dims}); the geodesic "
            "statistics are per segment of equal dimension. Bring the layers to one dimension "
            "with traj.project(dim)."
        )
    for seg in work.segments:
        if len(seg) < 2:
            notes.append(f"segment of one layer ({work.names[seg[0]]!r}) has no path: skipped")
    return segments


def _step_profile(
    work: Trajectory,
    profile: TransportProfile | None,
    spec: TransportSpec,
    seed: int,
    progress: bool,
) -> TransportProfile:
    """The successive-step profile of the analysed samples: the one given, checked, or a new one
    (pairs across a change of dimension skipped)."""
    if profile is None:
        return transport_profile(
            work,
            transport=spec,
            pairs="successive",
            cross="skip",
            seed=seed,
            progress=progress,
        )
    if profile.n_samples != work.n_samples or profile.method != spec.method:
        raise ValueError(
            f"the profile given was computed on {profile.n_samples} samples with method "
            f"{profile.method!r}; this test analyses {work.n_samples} with {spec.method!r}. Pass "
            "a profile of the same samples and method, or none."
        )
    return profile


# ============================================================================ one segment
class _SegmentStats(NamedTuple):
    """The statistics of one segment that need no McCann fit: those the intervals cover."""

    layers: list[torch.Tensor]
    end: TransportResult  # the exact coupling of the segment's first and last layers
    endpoint_distance: float
    path_ratio: float
    speed_cv: float
    ots: float
    efficiency: float
    lss: LSSResult
    notes: list[str]

    def summary(self) -> dict[str, float]:
        """The values the subsampling intervals are computed from."""
        return {
            "path_ratio": self.path_ratio,
            "speed_cv": self.speed_cv,
            "ots": self.ots,
            "efficiency": self.efficiency,
            "lss_mean": math.nan if self.lss.mean is None else self.lss.mean,
            "lss_median": math.nan if self.lss.median is None else self.lss.median,
        }


def _segment_stats(
    work: Trajectory, seg: range, steps: Sequence[float], solvers: _Solvers
) -> _SegmentStats:
    """Path ratio, speed CV, OTS and LSS of one segment, from its step lengths: the one code
    path of the full analysis and of every subsampling replicate."""
    w = work.weights
    first, last = work.layers[seg[0]], work.layers[seg[-1]]
    end = exact_coupling(first, last, w, solvers.fit, "geodesic_test")
    if solvers.spec.method in ("auto", solvers.fit.method):
        D = end.distance
    else:  # R compares the steps with the endpoint distance of the same method
        D = solve(first, last, w, w, solvers.spec).distance
    R, cv, notes = _path_stats(steps, D)
    layers = [f64(work.layers[l]) for l in seg]
    paired = paired_cost(first, last, w)
    return _SegmentStats(
        layers=layers,
        end=end,
        endpoint_distance=float(D),
        path_ratio=R,
        speed_cv=cv,
        ots=_ots_from_coupling(end, first, last, w),
        efficiency=end.cost / paired if paired > 0 else math.nan,
        lss=lss(layers, weights=w),
        notes=notes,
    )


def _path_stats(steps: Sequence[float], D: float) -> tuple[float, float, list[str]]:
    """Path ratio and speed CV of a segment, with notes for the degenerate cases."""
    notes = []
    total = float(np.sum(steps))
    if D > 0:
        R = total / D
    else:
        R = math.nan
        notes.append("the segment's first and last measures coincide: the path ratio is undefined")
    mean = float(np.mean(steps))
    cv = float(np.std(steps) / mean) if mean > 0 else 0.0
    return R, cv, notes


def _step_lengths(
    work: Trajectory, seg: range, solvers: _Solvers, profile: TransportProfile | None = None
) -> tuple[list[float], list[str]]:
    """``W2(mu_l, mu_{l+1})`` along the segment: the profile's values when one is given, else
    solved; with notes on the steps solved again inside the segment's space."""
    w = work.weights
    steps, notes = [], []
    for l in seg[:-1]:
        row = None if profile is None else _profile_step(profile, work, l)
        if row is not None and not row.shortcut:
            steps.append(row.distance)
            continue
        if row is not None:  # an equal-dimension step with a stored shortcut: use mu_l itself
            notes.append(
                f"step {row.source_name} -> {row.target_name} measured without "
                "its stored shortcut image, inside the segment's space"
            )
        x, y = work.layers[l], work.layers[l + 1]
        steps.append(solve(x, y, w, w, solvers.spec).distance)
    return steps, notes


def _profile_step(profile: TransportProfile, work: Trajectory, l: int) -> TransportPair:
    try:
        return profile.row(l, l + 1)
    except KeyError as err:
        raise ValueError(
            f"the profile given has no step {work.names[l]!r} -> {work.names[l + 1]!r}; "
            "compute it with pairs='successive'."
        ) from err


def _segment_report(
    work: Trajectory,
    seg: range,
    profile: TransportProfile,
    solvers: _Solvers,
    mccann_grid: int,
    progress: bool,
) -> SegmentReport:
    """The full statistics of one segment: those of :func:`_segment_stats` and the McCann fit."""
    w = work.weights
    steps, notes = _step_lengths(work, seg, solvers, profile)
    st = _segment_stats(work, seg, steps, solvers)
    notes += st.notes
    if solvers.spec.method == "gaussian":
        names = [work.names[i] for i in seg]
        mc = fit_gaussian(st.layers, seg, w, names, mccann_grid, progress)
    else:
        mc = fit_discrete(st.layers, seg, st.end, w, solvers.fit, mccann_grid, progress)
    if not all(mc.converged) and st.end.cost > 0:
        notes.append("McCann fit stopped at its iteration cap for some layer")
    if st.lss.n_undefined:
        notes.append(f"{st.lss.n_undefined} track(s) never move: no LSS, counted not averaged")
    first_step = profile.row(seg[0], seg[0] + 1)
    return SegmentReport(
        layers=tuple(seg),
        names=tuple(work.names[i] for i in seg),
        dim=work.dims[seg[0]],
        step_lengths=tuple(float(s) for s in steps),
        endpoint_distance=st.endpoint_distance,
        path_ratio=st.path_ratio,
        speed_cv=st.speed_cv,
        mccann=mc,
        ots=st.ots,
        lss=st.lss,
        ci={},
        efficiency=st.efficiency,
        methods={
            "steps": first_step.method,
            "steps_quantity": first_step.quantity,
            "mccann": mc.method,
            "ots": st.end.method,
        },
        notes=tuple(notes),
    )


def _replicates(
    work: Trajectory,
    segments: list[range],
    solvers: _Solvers,
    boot_size: int,
    seeds: list[int],
    progress: bool,
) -> list[dict[str, list[float]]]:
    """Per segment, the values of R, speed CV, OTS and LSS on each seeded subsample of
    ``boot_size`` without replacement (duplicated samples would break the identity of input and
    output that OTS counts), in the order of ``seeds`` (NaN where undefined): replicate ``i`` of
    two trajectories of the same samples is the same subsample, so their differences pair."""
    reps: list[dict[str, list[float]]] = [{} for _ in segments]
    for bs in bar(seeds, progress, "subsampling intervals"):
        sub = work.take(work.subsample_indices(boot_size, bs))
        for vals, seg in zip(reps, segments, strict=True):
            steps, _ = _step_lengths(sub, seg, solvers)
            for key, val in _segment_stats(sub, seg, steps, solvers).summary().items():
                vals.setdefault(key, []).append(math.nan if val is None else float(val))
    return reps
