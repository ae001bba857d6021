r"""Two trajectories over the same samples compared layer by layer (a network and its fitted MUFM,
a ResNet and its plain twin, two checkpoints).

$$W_2(\mu^a_l, \mu^b_l) \;\le\; \Big(\sum_i a_i \|h^a_l(x_i) - h^b_l(x_i)\|^2\Big)^{1/2} .$$
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from otcollapse import _resampling
from otcollapse.geodesic._common import bar, f64, solve
from otcollapse.geodesic.gauge import align_trajectory, check_gauge
from otcollapse.geodesic.profile import floor_value, transport_profile
from otcollapse.geodesic.results import (
    GeodesicReport,
    LayerComparison,
    TrajectoryComparison,
    TransportProfile,
)
from otcollapse.geodesic.straightness import geodesic_test
from otcollapse.measures import Trajectory
from otcollapse.transport import TransportSpec

__all__ = ["compare_trajectories"]


def compare_trajectories(
    a: Trajectory,
    b: Trajectory,
    *,
    transport: str | TransportSpec = "auto",
    noise_floor: bool = True,
    geodesic: bool = False,
    seed: int = 0,
    gauge: str = "none",
    progress: bool = False,
    **options: Any,
) -> TrajectoryComparison:
    r"""Compare two trajectories over the same samples, layer by corresponding layer.

    For every layer index ``l`` present in both with equal dimensions:

    $$W_2(\mu^a_l, \mu^b_l) \;\le\; \Big(\sum_i a_i \|h^a_l(x_i) - h^b_l(x_i)\|^2\Big)^{1/2},$$

    the distance between the two measures and the root-mean-square paired distance (plus the
    mean paired distance and both split-half noise floors). Layers whose dimensions differ, and
    layers present in one trajectory only, are listed, not compared. The successive-step
    profiles of both are computed and their differences (b - a) reported per step; with
    ``geodesic=True`` also both geodesic reports and their differences per segment.

    Parameters
    ----------
    a, b : Trajectory
        The same samples in the same order (equal ``n``, labels and weights).
    transport : str or TransportSpec
        The transport method (see :func:`~otcollapse.transport.wasserstein`) or a
        :class:`~otcollapse.transport.TransportSpec`, checked once.
    noise_floor : bool
    geodesic : bool
        Also run :func:`geodesic_test` on both (``seed`` and ``transport`` passed on).
    seed : int
    gauge : {"none", "orthogonal", "affine"}
        Align first (:mod:`otcollapse.geodesic.gauge`): each trajectory's successive layers
        (for its profile and geodesic report), and each layer of ``b`` onto the same layer of
        ``a`` (for the layer-by-layer rows), so that a change of basis between the two
        networks' features does not count as a difference.
    progress : bool
    **options
        The options of the method named by ``transport`` (checked once).

    Returns
    -------
    TrajectoryComparison
    """
    spec = TransportSpec.coerce(transport, **options)
    _check_same_samples(a, b)
    b_rows = b
    if check_gauge(gauge) != "none":
        a, b = align_trajectory(a, gauge)[0], align_trajectory(b, gauge)[0]
        b_rows = b.replace(layers=tuple(_onto(a, b, l, gauge) for l in range(len(b))), shortcuts={})
    halves = (
        _resampling.split_halves((a if a.labels is not None else b).labels, a.n_samples, seed)
        if noise_floor
        else None
    )
    rows, not_compared = _layer_comparisons(a, b_rows, halves, spec, progress)
    prof_a = transport_profile(a, transport=spec, cross="skip", noise_floor=False, seed=seed)
    prof_b = transport_profile(b, transport=spec, cross="skip", noise_floor=False, seed=seed)
    geo_a = geo_b = None
    if geodesic:
        geo_a = geodesic_test(a, transport=spec, seed=seed)
        geo_b = geodesic_test(b, transport=spec, seed=seed)
    return TrajectoryComparison(
        layers=tuple(rows),
        not_compared=tuple(not_compared),
        profile_a=prof_a,
        profile_b=prof_b,
        step_differences=_step_differences(prof_a, prof_b),
        geodesic_a=geo_a,
        geodesic_b=geo_b,
        geodesic_differences=_geodesic_differences(geo_a, geo_b),
    )


def _onto(a: Trajectory, b: Trajectory, l: int, gauge: str) -> Any:
    """Layer ``l`` of ``b`` rotated onto layer ``l`` of ``a`` (when ``a`` has it, in one
    dimension); else as it is."""
    if l >= len(a) or a.dims[l] != b.dims[l]:
        return b.layers[l]
    pair = Trajectory.from_arrays([a.layers[l], b.layers[l]], weights=a.weights)
    return align_trajectory(pair, "orthogonal" if gauge == "affine" else gauge)[0].layers[1]


def _check_same_samples(a: Any, b: Any) -> None:
    """Two trajectories of the same samples in the same order (counts, labels, weights)."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, Trajectory):
            raise ValueError(
                f"compare_trajectories needs two Trajectory objects; {name} is {type(t).__name__}."
            )
    if a.n_samples != b.n_samples:
        raise ValueError(
            f"the trajectories have {a.n_samples} and {b.n_samples} samples; they must hold the "
            "features of the same samples in the same order (subsample both with the same indices)."
        )
    if a.labels is not None and b.labels is not None and not np.array_equal(a.labels, b.labels):
        raise ValueError(
            "the trajectories' labels differ: they are not the same samples in the same order."
        )
    if (a.weights is None) != (b.weights is None) or (
        a.weights is not None and not np.allclose(a.weights, b.weights, rtol=1e-12, atol=0)
    ):
        raise ValueError("the trajectories' sample weights differ; give both the same weights.")


def _layer_comparisons(
    a: Trajectory,
    b: Trajectory,
    halves: tuple[np.ndarray, np.ndarray] | None,
    spec: TransportSpec,
    progress: bool,
) -> tuple[list[LayerComparison], list[dict[str, Any]]]:
    """The layers of equal index and dimension compared; the others listed with the reason."""
    rows, not_compared = [], []
    common = min(len(a), len(b))
    for l in bar(range(common), progress, "layers"):
        if a.dims[l] != b.dims[l]:
            not_compared.append(
                {
                    "layer": l,
                    "name_a": a.names[l],
                    "name_b": b.names[l],
                    "dim_a": a.dims[l],
                    "dim_b": b.dims[l],
                    "reason": "dimensions differ",
                }
            )
            continue
        rows.append(_compare_layer(a, b, l, halves, spec))
    for t, tag in ((a, "a"), (b, "b")):
        for l in range(common, len(t)):
            not_compared.append(
                {"layer": l, f"name_{tag}": t.names[l], "reason": f"only in trajectory {tag}"}
            )
    return rows, not_compared


def _compare_layer(
    a: Trajectory,
    b: Trajectory,
    l: int,
    halves: tuple[np.ndarray, np.ndarray] | None,
    spec: TransportSpec,
) -> LayerComparison:
    """Layer ``l`` of both: W2 between the measures, paired distances and noise floors."""
    w = a.weights
    xa, xb = a.layers[l], b.layers[l]
    res = solve(xa, xb, w, w, spec)
    ta = f64(xa)
    tb = f64(xb).to(ta.device)
    dist = (ta - tb).norm(dim=1)
    aw = (
        torch.full_like(dist, 1.0 / dist.shape[0])
        if w is None
        else torch.as_tensor(w, dtype=torch.float64, device=dist.device)
    )
    fa = fb = None
    if halves is not None:
        fa = floor_value(xa, halves, w, spec)
        fb = floor_value(xb, halves, w, spec)
    return LayerComparison(
        layer=l,
        name_a=a.names[l],
        name_b=b.names[l],
        cost=float(res.cost),
        distance=float(res.distance),
        quantity=res.quantity,
        method=res.method,
        converged=bool(res.converged),
        paired_mean=float(aw @ dist),
        paired_rms=math.sqrt(float(aw @ dist**2)),
        noise_floor_a=fa,
        noise_floor_b=fb,
    )


def _step_differences(
    prof_a: TransportProfile, prof_b: TransportProfile
) -> tuple[dict[str, Any], ...]:
    """Per successive step present in both profiles: distances, efficiencies, differences b - a."""
    steps_b = {(r.source, r.target): r for r in prof_b.rows}
    diffs = []
    for ra in prof_a.rows:
        rb = steps_b.get((ra.source, ra.target))
        if rb is None:
            continue
        ea, eb = ra.efficiency, rb.efficiency
        diffs.append(
            {
                "source": ra.source,
                "target": ra.target,
                "distance_a": ra.distance,
                "distance_b": rb.distance,
                "distance_diff": rb.distance - ra.distance,
                "efficiency_a": ea,
                "efficiency_b": eb,
                "efficiency_diff": None if ea is None or eb is None else eb - ea,
            }
        )
    return tuple(diffs)


def _geodesic_differences(
    geo_a: GeodesicReport | None, geo_b: GeodesicReport | None
) -> tuple[dict[str, Any], ...]:
    """Per segment with the same layers in both reports: the differences b - a."""
    if geo_a is None or geo_b is None:
        return ()
    segs_b = {s.layers: s for s in geo_b.segments}
    diffs = []
    for sa in geo_a.segments:
        sb = segs_b.get(sa.layers)
        if sb is None:
            continue
        diffs.append(
            {
                "layers": list(sa.layers),
                "path_ratio_diff": sb.path_ratio - sa.path_ratio,
                "speed_cv_diff": sb.speed_cv - sa.speed_cv,
                "ots_diff": sb.ots - sa.ots,
                "lss_mean_diff": None
                if sa.lss.mean is None or sb.lss.mean is None
                else sb.lss.mean - sa.lss.mean,
                "max_mccann_residual_diff": sb.mccann.max_residual - sa.mccann.max_residual,
            }
        )
    return tuple(diffs)
