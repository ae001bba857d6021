r"""The scores on their own: the optimal transport score (OTS) between the inputs and outputs of
the same samples, and the line-shape score (LSS) of every sample's track (Gai & Zhang).

References
----------
Gai & Zhang, "Deep Residual Networks Learn the Geodesic Curve in the Wasserstein Space".
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from otcollapse._utils import ArrayLike, to_numpy
from otcollapse._validation import check_real
from otcollapse.geodesic._common import coupling_spec, exact_coupling, f64
from otcollapse.geodesic.gauge import align_trajectory, check_gauge
from otcollapse.geodesic.results import LSSResult
from otcollapse.measures import Trajectory
from otcollapse.transport import TransportResult, TransportSpec

__all__ = ["lss", "ots"]

#: odd multipliers of the row hash that detects duplicated points (golden-ratio sequence)
_HASH_STEP = np.uint64(0x9E3779B97F4A7C15)


def _atom_ids(x: Any, what: str) -> tuple[np.ndarray, int]:
    """Index of every row's distinct point (identical rows share one), and the number of them.

    A first pass hashes the rows' bits with wrapping integer arithmetic (exact and
    order-free, so identical rows hash alike): all hashes distinct means no duplicates, and
    only otherwise are the rows compared whole.
    """
    xn = np.ascontiguousarray(to_numpy(x, dtype=np.float64, what=what)) + 0.0  # -0.0 == 0.0
    n, d = xn.shape
    mult = (np.arange(1, d + 1, dtype=np.uint64) * _HASH_STEP) | np.uint64(1)
    h = (xn.view(np.uint64) * mult).sum(axis=1, dtype=np.uint64)
    if np.unique(h).size == n:
        return np.arange(n), n
    _, inv = np.unique(xn, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    return inv, int(inv.max()) + 1


def _ots_from_coupling(res: TransportResult, x_in: Any, x_out: Any, w: np.ndarray | None) -> float:
    r"""OTS of an optimal coupling, independent of how it breaks ties between identical points.

    Without duplicated points: the mass the coupling keeps on the identity pairs (the fraction
    of fixed points of an assignment). With duplicates: merge identical points into atoms
    ``u_p`` (inputs) and ``v_q`` (outputs); with ``Pi`` the coupling's plan between the atoms and
    ``s_pq`` the mass of the samples whose input is ``u_p`` and output ``v_q``,
    ``OTS = sum_pq min(Pi_pq, s_pq)`` (see :func:`ots`).
    """
    p, n_p = _atom_ids(x_in, "x_in")
    q, n_q = _atom_ids(x_out, "x_out")
    n = p.size
    if res.assignment is not None:
        sigma = np.asarray(res.assignment)
        if n_p == n and n_q == n:
            return float(np.mean(sigma == np.arange(n)))
        # uniform masses 1/n: count samples, so that the value is an exact fraction
        plan_keys = p * n_q + q[sigma]
        plan_mass = np.ones(n)
        a = np.ones(n)
        total = float(n)
    else:
        plan = np.asarray(res.plan, dtype=np.float64)
        if n_p == n and n_q == n:
            return float(np.trace(plan) / plan.sum())
        rows, cols = np.nonzero(plan > 0)
        plan_keys = p[rows] * n_q + q[cols]
        plan_mass = plan[rows, cols] / plan.sum()
        a = np.full(n, 1.0 / n) if w is None else np.asarray(w, dtype=np.float64) / np.sum(w)
        total = 1.0
    own_keys, own_inv = np.unique(p * n_q + q, return_inverse=True)
    own_mass = np.bincount(own_inv.reshape(-1), weights=a, minlength=own_keys.size)
    keys, inv = np.unique(plan_keys, return_inverse=True)
    mass = np.bincount(inv.reshape(-1), weights=plan_mass, minlength=keys.size)
    pos = np.minimum(np.searchsorted(keys, own_keys), keys.size - 1)
    on_own = np.where(keys[pos] == own_keys, mass[pos], 0.0)
    return float(np.minimum(on_own, own_mass).sum() / total)


def ots(
    x_in: ArrayLike,
    x_out: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    transport: str | TransportSpec = "auto",
    gauge: str = "none",
    **options: Any,
) -> float:
    r"""Optimal transport score: the fraction of samples sent to their own output.

    $$\sigma^\star = \arg\min_{\sigma} \sum_i
      \|x^{\mathrm{in}}_i - x^{\mathrm{out}}_{\sigma(i)}\|^2,
      \qquad \mathrm{OTS} = \frac{1}{n}\,\#\{i : \sigma^\star(i) = i\} \in [0, 1].$$

    With sample masses ``a_i`` the optimal plan ``pi`` of the exact solver replaces the
    assignment and ``OTS = sum_i pi_ii``, the mass kept on its own output. OTS = 1 when the map
    ``x_in_i -> x_out_i`` is itself optimal (a translation, a symmetric positive definite linear
    map, the gradient of any strictly convex function); about ``1/n`` when the outputs are a
    random permutation of the inputs.

    Duplicated points. When samples share an input point (or an output point), the optimal
    coupling of the samples is not unique: exchanging two identical inputs changes which sample
    "is sent to its own output" but not the transport. OTS does not depend on that choice: it is
    the largest mass that an optimal coupling keeps on the identity pairs ``(i, i)``. Merge
    identical points into atoms, inputs ``u_p`` and outputs ``v_q``, let ``Pi`` be the optimal
    plan between the atoms and ``s_pq`` the mass of the samples with input ``u_p`` and output
    ``v_q``; then

    $$\mathrm{OTS} = \max_{\pi \to \Pi} \sum_i \pi_{ii}
      = \sum_{p,q} \min\big(\Pi_{pq},\, s_{pq}\big),
      \qquad s_{pq} = \sum_{i:\, x^{\mathrm{in}}_i = u_p,\ x^{\mathrm{out}}_i = v_q} a_i,$$

    the maximum over the optimal sample couplings ``pi`` that induce ``Pi`` (each block
    ``(p, q)`` can keep ``min(Pi_pq, s_pq)`` on its own samples' pairs, and no more). Without
    duplicates this is the definition above. A translation of duplicated samples has OTS = 1,
    with or without weights. Ties between different optimal plans ``Pi`` of *distinct* points
    (a degenerate configuration, e.g. the corners of a square) are left to the solver.
    Points are identical when all their coordinates are equal.

    Parameters
    ----------
    x_in, x_out : array-like or Tensor, shape (n, d)
        Inputs and outputs of the same samples, in the same order.
    weights : array-like, shape (n,), optional
        Sample masses (summing to one); uniform when omitted.
    transport : str or TransportSpec
        The exact solver of the coupling: ``"auto"`` (the assignment for uniform masses, the
        network simplex for weights), ``"assignment"``, ``"exact"``, or a
        :class:`~otcollapse.transport.TransportSpec` of one of them (another method's spec
        passes on only its memory budget).
    gauge : {"none", "orthogonal", "affine"}
        Rotate ``x_out`` onto ``x_in`` first (orthogonal Procrustes; ``"affine"``: whiten both,
        then rotate): OTS of the map up to the change of basis the next layer can absorb
        (:mod:`otcollapse.geodesic.gauge`).
    **options
        The options of that solver (e.g. ``cost_dtype="float64"`` for the assignment,
        ``max_dense_bytes``), checked once.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(50, 3))
    >>> ots(x, x + 1.0)
    1.0

    References
    ----------
    Gai & Zhang, "Deep Residual Networks Learn the Geodesic Curve in the Wasserstein Space".
    """
    xi, xo = to_numpy(x_in, what="x_in").shape, to_numpy(x_out, what="x_out").shape
    if len(xi) != 2 or xi != xo:
        raise ValueError(
            f"ots needs inputs and outputs of the same samples in one space, two (n, d) arrays of "
            f"equal shape; got {xi} and {xo}. Map them to one space first (the block's shortcut "
            "image, or Trajectory.project)."
        )
    w = None if weights is None else to_numpy(weights, dtype=np.float64, what="weights").reshape(-1)
    fit = coupling_spec(w, TransportSpec.coerce(transport, **options))
    if check_gauge(gauge) != "none":
        pair = Trajectory.from_arrays([x_in, x_out], weights=w)
        x_in, x_out = align_trajectory(pair, gauge)[0].layers
    res = exact_coupling(x_in, x_out, w, fit, "ots", validate=True)
    return _ots_from_coupling(res, x_in, x_out, w)


def _track_layers(tracks: Any) -> list[torch.Tensor]:
    if isinstance(tracks, Trajectory):
        if len(set(tracks.dims)) != 1:
            raise ValueError(
                f"lss needs tracks in one space; the trajectory's dimensions are {tracks.dims}. "
                "Score each segment on its own: lss(traj.take_layers(list(segment))) for segment "
                "in traj.segments."
            )
        return [f64(x) for x in tracks.layers]
    if isinstance(tracks, (np.ndarray, torch.Tensor)) and tracks.ndim == 3:
        return [f64(tracks[i], "the tracks") for i in range(tracks.shape[0])]
    if isinstance(tracks, (list, tuple)):
        layers = [f64(x, f"layer {i} of the tracks") for i, x in enumerate(tracks)]
    else:
        raise ValueError(
            "lss takes a Trajectory, a sequence of (n, d) arrays (layers 0..L) or an array of "
            f"shape (L + 1, n, d); got {type(tracks).__name__}."
        )
    for i, x in enumerate(layers):
        if x.ndim != 2 or tuple(x.shape) != tuple(layers[0].shape):
            raise ValueError(
                f"layer {i} of the tracks has shape {tuple(x.shape)}; every layer must be "
                f"(n, d) = {tuple(layers[0].shape)} (the same samples in one space)."
            )
    return layers


def lss(
    tracks: Trajectory | Sequence[ArrayLike] | ArrayLike,
    *,
    weights: ArrayLike | None = None,
    rtol: float = 1e-12,
    gauge: str = "none",
) -> LSSResult:
    r"""Line-shape score of every sample's track through the layers (Gai & Zhang).

    $$\tilde x_0 = h_0(x), \qquad
      \tilde x_l = \tilde x_{l-1} + \frac{h_l(x) - h_{l-1}(x)}{\|h_l(x) - h_{l-1}(x)\|}, \qquad
      \mathrm{LSS}(x) = \frac{L'}{\|\tilde x_L - \tilde x_0\|} \;\ge\; 1.$$

    Every step is replaced by its unit vector, so LSS measures the shape of the track, not its
    speed: 1 for a straight track however unevenly spaced, larger for detours. A zero step has
    no direction: it is skipped and ``L'`` counts the non-zero steps. A step is zero when its
    length is at most ``rtol`` times the largest norm along the track. A track with no non-zero
    step has no LSS (NaN in :attr:`LSSResult.values`, counted in ``n_undefined``, left out of
    the summaries); a track whose unit steps cancel exactly has LSS ``inf``.

    Parameters
    ----------
    tracks : Trajectory, sequence of array-like of shape (n, d), or array of shape (L + 1, n, d)
        The layers ``h_0..h_L`` of the same samples in one space.
    weights : array-like, shape (n,), optional
        Sample masses for the summaries (a Trajectory's own weights by default).
    rtol : float
        Relative threshold of a zero step.
    gauge : {"none", "orthogonal", "affine"}
        Align successive layers first (:func:`~otcollapse.geodesic.gauge.align_trajectory`).

    Returns
    -------
    LSSResult

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((1, 2))
    >>> lss([x, x + [1, 1], x + [2, 0]]).values   # a right-angle zig-zag: sqrt(2)
    array([1.41421356])

    References
    ----------
    Gai & Zhang, "Deep Residual Networks Learn the Geodesic Curve in the Wasserstein Space".
    """
    rtol = check_real(rtol, "rtol (the relative threshold of a zero step)", minimum=0.0)
    if check_gauge(gauge) != "none":
        if not isinstance(tracks, Trajectory):
            w0 = None if weights is None else to_numpy(weights, np.float64, what="weights")
            tracks = Trajectory.from_arrays(list(_track_layers(tracks)), weights=w0)
        tracks = align_trajectory(tracks, gauge)[0]
    layers = _track_layers(tracks)
    if len(layers) < 2:
        raise ValueError(
            f"lss needs at least two layers (one step); got {len(layers)}. Give h_0..h_L."
        )
    if weights is None and isinstance(tracks, Trajectory):
        weights = tracks.weights
    n = int(layers[0].shape[0])
    w = None if weights is None else to_numpy(weights, dtype=np.float64, what="weights").reshape(-1)
    if w is not None and w.shape[0] != n:
        raise ValueError(f"weights have length {w.shape[0]} but the tracks have {n} samples.")
    values, zero_steps = _track_scores(layers, rtol)
    defined = ~np.isnan(values)
    mean, median, q25, q75 = _summaries(values[defined], None if w is None else w[defined])
    nd = int(defined.sum())
    return LSSResult(
        values=values,
        mean=mean,
        median=median,
        q25=q25,
        q75=q75,
        n_defined=nd,
        n_undefined=n - nd,
        n_zero_steps=zero_steps,
        n_steps=len(layers) - 1,
        weighted=w is not None,
    )


def _track_scores(layers: list[torch.Tensor], rtol: float) -> tuple[np.ndarray, int]:
    """Per-track LSS (NaN: no non-zero step, inf: the unit steps cancel) and the zero steps
    skipped, over all tracks."""
    n = int(layers[0].shape[0])
    dev = layers[0].device
    scale = torch.stack([x.norm(dim=1) for x in layers]).amax(0)
    pos = torch.zeros_like(layers[0])
    count = torch.zeros(n, dtype=torch.int64, device=dev)
    for prev, cur in itertools.pairwise(layers):
        step = cur.to(dev) - prev.to(dev)
        norm = step.norm(dim=1)
        moving = norm > rtol * scale
        safe = torch.where(moving, norm, torch.ones_like(norm))
        pos += torch.where(moving[:, None], step / safe[:, None], torch.zeros_like(step))
        count += moving.to(torch.int64)
    end = pos.norm(dim=1)
    cnt = count.to(torch.float64)
    values_t = torch.where(
        count == 0,
        torch.full_like(end, float("nan")),
        torch.where(
            end > 0,
            cnt / torch.where(end > 0, end, torch.ones_like(end)),
            torch.full_like(end, float("inf")),
        ),
    )
    return values_t.cpu().numpy(), int((len(layers) - 1) * n - int(count.sum()))


def _summaries(
    v: np.ndarray, w: np.ndarray | None
) -> tuple[float | None, float | None, float | None, float | None]:
    """Mean, median and quartiles of the defined scores ``v`` (weighted by their masses ``w``
    unless they carry none); all None when there are no scores."""
    if v.size == 0:
        return None, None, None, None
    if w is not None and w.sum() <= 0:
        w = None
    if w is None:
        mean = float(np.mean(v))
    else:
        pos = w > 0
        mean = float(np.inf) if np.isinf(v[pos]).any() else float(v[pos] @ w[pos] / w.sum())
    q25, median, q75 = _quantiles(v, w, (0.25, 0.5, 0.75))
    return mean, median, q25, q75


def _quantiles(values: np.ndarray, weights: np.ndarray | None, qs: Sequence[float]) -> list[float]:
    """Quantiles of ``values`` (numpy's linear rule; inverted CDF of the masses when weighted)."""
    if weights is None:
        with np.errstate(invalid="ignore"):
            out = np.percentile(values, [100 * q for q in qs])
        # inf - inf in the interpolation gives NaN: the quantile is then inf
        return [float(np.inf) if np.isnan(o) else float(o) for o in out]
    order = np.argsort(values, kind="stable")
    v = values[order]
    c = np.cumsum(weights[order])
    c = c / c[-1]
    return [float(v[min(int(np.searchsorted(c, q, side="left")), len(v) - 1)]) for q in qs]
