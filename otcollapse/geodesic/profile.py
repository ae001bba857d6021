r"""W2 between the layers of a trajectory, beside the network's own (paired) transport cost, with
split-half noise floors and subsampling intervals.

$$W_2^2(\mu_s, \mu_t) \;\le\; P_{s,t} = \sum_i a_i \,\|h_t(x_i) - h_s(x_i)\|^2 .$$

References
----------
Gai & Zhang, "Deep Residual Networks Learn the Geodesic Curve in the Wasserstein Space".
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from otcollapse import _resampling
from otcollapse._utils import ArrayLike
from otcollapse.geodesic._common import (
    bar,
    check_boot,
    check_trajectory,
    paired_cost,
    replicates,
    solve,
    sub_weights,
    take_rows,
)
from otcollapse.geodesic.gauge import align_trajectory
from otcollapse.geodesic.results import TransportPair, TransportProfile
from otcollapse.measures import Trajectory
from otcollapse.transport import TransportSpec

__all__ = ["PAIR_KINDS", "split_half_floor", "transport_profile"]

#: the ``pairs=`` keywords of :func:`transport_profile`
PAIR_KINDS = ("successive", "all", "endpoints")
#: quantities that lower-bound the paired cost, so that ``cost / paired`` lies in [0, 1]
_EFFICIENCY_QUANTITIES = ("W2^2", "W2^2 (Bures)")


# ============================================================================ noise floors
def floor_value(
    x: Any,
    halves: tuple[np.ndarray, np.ndarray],
    w: np.ndarray | None,
    spec: TransportSpec,
) -> float | None:
    """The distance between the two halves of ``x`` (None when a half carries no mass)."""
    a_idx, b_idx = halves
    try:
        wa, wb = sub_weights(w, a_idx), sub_weights(w, b_idx)
    except ValueError:
        return None
    return solve(take_rows(x, a_idx), take_rows(x, b_idx), wa, wb, spec).distance


def split_half_floor(
    x: ArrayLike,
    *,
    labels: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    transport: str | TransportSpec = "auto",
    seed: int = 0,
    **options: Any,
) -> float:
    r"""Split-half noise floor: the distance between two disjoint random halves of one measure.

    $$\hat\varepsilon = W_2\big(\hat\mu^{A}, \hat\mu^{B}\big), \qquad A \cap B = \emptyset,\;
      |A| = |B| = \lfloor n/2 \rfloor,$$

    the halves class-stratified when labels are given and seeded. Both halves are samples of the
    same law: this is the distance that sampling alone produces between two independent samples
    of half the size (the empirical-measure error, shrinking roughly like ``n^(-1/d)``). Two
    measures of *different* samples closer than this are indistinguishable from noise. Layers
    of the *same* samples are coupled by the network, and their W2 is usually far less noisy
    (a translation's is exact at any ``n``): there the floor is a conservative reference
    scale, and subsampling intervals (``n_boot``) give the uncertainty.

    Parameters
    ----------
    x : array-like or Tensor, shape (n, d), n >= 4
    labels : array-like of int, shape (n,), optional
    weights : array-like, shape (n,), optional
        Sample masses; each half's are renormalised.
    transport : str or TransportSpec
        The transport method (see :func:`~otcollapse.transport.wasserstein`), or a
        :class:`~otcollapse.transport.TransportSpec`.
    seed : int
    **options
        The options of the method named by ``transport`` (checked once).

    Returns
    -------
    float
        The distance (W2 for the W2 methods).
    """
    spec = TransportSpec.coerce(transport, **options)
    traj = Trajectory.from_arrays([x], labels=labels, weights=weights)
    halves = _resampling.split_halves(traj.labels, traj.n_samples, seed)
    if halves is None:
        raise ValueError(f"a split-half floor needs at least 4 samples; got {traj.n_samples}.")
    val = floor_value(traj.layers[0], halves, traj.weights, spec)
    if val is None:
        raise ValueError("one of the halves carries zero total weight; use another seed.")
    return val


# ============================================================================ transport profile
class _Floors:
    """The split-half floors of the compared measures, each computed once, by measure name."""

    def __init__(
        self,
        halves: tuple[np.ndarray, np.ndarray] | None,
        w: np.ndarray | None,
        spec: TransportSpec,
    ):
        self.halves, self.w, self.spec = halves, w, spec
        self.values: dict[str, float] = {}

    def of(self, name: str, x: Any) -> float | None:
        if self.halves is None:
            return None
        if name not in self.values:
            val = floor_value(x, self.halves, self.w, self.spec)
            if val is None:
                return None
            self.values[name] = val
        return self.values[name]

    def larger(self, *measures: tuple[str, Any]) -> float | None:
        """The larger floor of the named measures (None without floors)."""
        if self.halves is None:
            return None
        vals = [v for name, x in measures if (v := self.of(name, x)) is not None]
        return max(vals) if vals else None


# ============================================================================ pairs
class _Pair(NamedTuple):
    """A pair to compute: layer indices and the two point sets compared."""

    s: int
    t: int
    src: Any
    tgt: Any
    shortcut: bool


def _resolve_pairs(traj: Trajectory, pairs: Any) -> tuple[str, list[tuple[int, int]]]:
    """The ``pairs=`` argument as its kind and the list of ``(source, target)``, source first."""
    L = traj.n_steps
    if isinstance(pairs, str):
        if pairs == "successive":
            return pairs, [(l, l + 1) for l in range(L)]
        if pairs == "all":
            return pairs, [(s, t) for s in range(L + 1) for t in range(s + 1, L + 1)]
        if pairs == "endpoints":
            return pairs, [(0, L)]
        raise ValueError(
            f"unknown pairs {pairs!r}; use one of {list(PAIR_KINDS)} or a list of (source, target)."
        )
    form = (
        f"pairs must be one of {list(PAIR_KINDS)} or a list of (source, target) pairs of layer "
        f"indices in 0..{L}"
    )
    if not isinstance(pairs, Iterable):
        raise TypeError(f"{form}; got {pairs!r}.")
    out = [_layer_pair(traj, p, form) for p in pairs]
    if not out:
        raise ValueError(f"pairs is empty; {form}.")
    return "custom", out


def _layer_pair(traj: Trajectory, p: Any, form: str) -> tuple[int, int]:
    """One entry of an explicit list of pairs, checked (negative indices count from the end)."""
    L = traj.n_steps
    if isinstance(p, (str, bytes)) or not isinstance(p, Iterable):
        raise TypeError(f"{form}; got the entry {p!r} (e.g. pairs=[(0, {L})]).")
    p = tuple(p)
    if len(p) != 2:
        raise ValueError(f"{form}; the entry {p!r} has {len(p)} elements, not 2.")
    for v in p:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{form}; the pair {p!r} holds {v!r}, not an integer.")
        if not -(L + 1) <= int(v) <= L:
            raise ValueError(
                f"pairs: the pair {p!r} names layer {int(v)}, but the trajectory has "
                f"{L + 1} layers, 0..{L} ({', '.join(traj.names)})."
            )
    s, t = range(L + 1)[int(p[0])], range(L + 1)[int(p[1])]
    if s == t:
        raise ValueError(f"pairs: pair ({s}, {t}) compares a layer with itself.")
    return min(s, t), max(s, t)


def _pair_arrays(traj: Trajectory, s: int, t: int, method: str) -> tuple[Any, Any, bool]:
    """The two point sets compared for ``s -> t``: in one space, or raw for Gromov–Wasserstein."""
    if method == "gromov":
        return traj.layers[s], traj.layers[t], False
    if t == s + 1:
        src, tgt = traj.step_measures(s)  # shortcut image when stored; ValueError otherwise
        return src.points, tgt.points, s in traj.shortcuts
    if traj.dims[s] != traj.dims[t]:
        raise ValueError(
            f"the pair {traj.names[s]!r} (layer {s}, d={traj.dims[s]}) -> {traj.names[t]!r} "
            f"(layer {t}, d={traj.dims[t]}) crosses a change of dimension; W2 needs one space. "
            "Pass method='gromov' (Gromov–Wasserstein, a different quantity), bring the layers "
            "to one dimension first with traj.project(dim), or compare successive layers only "
            "(a stored shortcut image P h_l measures a stage transition in the output space)."
        )
    return traj.layers[s], traj.layers[t], False


def transport_profile(
    traj: Trajectory,
    *,
    transport: str | TransportSpec = "auto",
    pairs: str | Sequence[tuple[int, int]] = "successive",
    by_class: bool = False,
    noise_floor: bool = True,
    cross: str = "error",
    n_boot: int = 0,
    boot_fraction: float = 0.5,
    ci_level: float = 0.95,
    seed: int = 0,
    gauge: str = "none",
    progress: bool = False,
    **options: Any,
) -> TransportProfile:
    r"""W2 between the layer measures of a trajectory, beside the network's own transport cost.

    For each requested pair ``s -> t``:

    $$W_2^2(\mu_s, \mu_t) = \min_{\pi \in \Pi(a, a)} \sum_{ij} \pi_{ij} \|h_s(x_i) - h_t(x_j)\|^2
      \;\le\; P_{s,t} = \sum_i a_i\, \|h_t(x_i) - h_s(x_i)\|^2,$$

    the paired (kinetic) cost of the network's coupling (sample ``i`` to sample ``i``;
    ``a_i = 1/n`` unless the trajectory has weights), and the efficiency ``W2^2 / P`` in
    ``[0, 1]`` (1: the block moves mass optimally). Beside every value: the solver record
    (method, ε, convergence) and the split-half noise floor of the two measures.

    Dimension changes. A step ``l -> l+1`` whose block changes the dimension
    (``h_{l+1} = P h_l + f(h_l)``) is measured in the output space, between ``P_# mu_l`` and
    ``mu_{l+1}``, from the shortcut image stored in the trajectory (the row says
    ``shortcut=True``); that is what lets step lengths and paired costs chain across stages.
    Any other pair across a change of dimension needs ``transport="gromov"`` (every pair is then
    Gromov–Wasserstein between the raw layers, a different quantity) or a trajectory brought to
    one dimension by ``traj.project(dim)``; otherwise a ValueError says so (``cross="skip"``
    leaves such pairs out and lists them in ``skipped``).

    Parameters
    ----------
    traj : Trajectory
        At least two layers.
    transport : str or TransportSpec
        The transport method of :func:`~otcollapse.transport.wasserstein` (``"auto"``: the
        exact assignment / network simplex while the dense cost fits, chunked Sinkhorn beyond),
        or a :class:`~otcollapse.transport.TransportSpec` (method, typed options, memory budget)
        checked once and used for every pair.
    pairs : {"successive", "all", "endpoints"} or sequence of (source, target)
        Successive layers ``(l, l+1)``; every pair ``s < t``; ``(0, L)``; or an explicit list.
    by_class : bool
        Also the transport between the class parts ``mu_s^k`` and ``mu_t^k`` (labels needed).
    noise_floor : bool
        Compute the split-half floor of every compared measure (one half-size solve each).
    cross : {"error", "skip"}
        What to do with a pair across a change of dimension that cannot be measured.
    n_boot : int
        Subsampling replicates for an interval of every distance (0: none).
    boot_fraction : float
        Subsample size as a fraction of ``n`` (without replacement, class-stratified).
    ci_level : float
        Coverage of the percentile intervals.
    seed : int
        Seed of the split halves and of the subsamples.
    gauge : {"none", "orthogonal", "affine"}
        Align successive layers first (:func:`~otcollapse.geodesic.gauge.align_trajectory`:
        orthogonal Procrustes, or whitening then Procrustes), removing the change of basis a
        block's output can undergo without changing the network; the alignment is recorded in
        ``metadata["gauge"]``. ``"none"``: the raw layers.
    progress : bool
        A progress bar (tqdm) on a terminal.
    **options
        The options of the method named by ``transport`` (e.g. ``eps`` for Sinkhorn,
        ``cost_dtype`` for the assignment, ``max_dense_bytes``), checked once, as
        ``TransportSpec.create(transport, **options)``.

    Returns
    -------
    TransportProfile

    Raises
    ------
    ValueError
        Fewer than two layers; a pair across a change of dimension without a shortcut image,
        ``method="gromov"`` or a projection; ``by_class`` without labels; unknown ``pairs``, a
        pair naming a layer the trajectory does not have, or an empty list of pairs; ``n_boot``,
        ``boot_fraction`` or ``ci_level`` out of range.
    TypeError
        ``pairs`` entries that are not pairs of integers; non-numeric ``n_boot``,
        ``boot_fraction`` or ``ci_level``.

    Examples
    --------
    >>> import numpy as np
    >>> from otcollapse import Trajectory
    >>> x = np.random.default_rng(0).normal(size=(40, 3))
    >>> prof = transport_profile(Trajectory.from_arrays([x, x + 1.0, x + 2.0]))
    >>> [round(r.cost, 12) for r in prof.rows], [round(r.efficiency, 12) for r in prof.rows]
    ([3.0, 3.0], [1.0, 1.0])

    References
    ----------
    Gai & Zhang, "Deep Residual Networks Learn the Geodesic Curve in the Wasserstein Space".
    """
    spec = TransportSpec.coerce(transport, **options)
    check_trajectory(traj, "transport_profile")
    traj, alignment = align_trajectory(traj, gauge)
    kind, pair_list = _resolve_pairs(traj, pairs)
    if cross not in ("error", "skip"):
        raise ValueError(f"cross must be 'error' or 'skip'; got {cross!r}.")
    if by_class and traj.labels is None:
        raise ValueError("by_class=True needs labels; pass labels= to Trajectory.from_arrays.")
    check_boot(n_boot, boot_fraction, ci_level)
    planned, skipped = _plan_pairs(traj, pair_list, spec.method, cross)
    halves = _resampling.split_halves(traj.labels, traj.n_samples, seed) if noise_floor else None
    floors = _Floors(halves, traj.weights, spec)
    rows = [
        _pair_row(traj, p, floors, by_class, spec)
        for p in bar(planned, progress, "transport_profile")
    ]
    boot_size, seeds = replicates(traj.n_samples, n_boot, boot_fraction, seed)
    if seeds:
        reps = _replicate_distances(traj, planned, boot_size, seeds, spec, progress)
        rows = [
            dataclasses.replace(r, ci=_resampling.percentile_interval(v, ci_level))
            for r, v in zip(rows, reps, strict=True)
        ]
    _warn_unconverged(rows)
    meta = {k: traj.metadata[k] for k in ("subsample", "projection") if k in traj.metadata}
    if alignment.gauge != "none":
        meta["gauge"] = alignment.to_dict()
    return TransportProfile(
        rows=tuple(rows),
        pairs=kind,
        method=spec.method,
        n_samples=traj.n_samples,
        by_class=bool(by_class),
        floors=floors.values,
        skipped=tuple(skipped),
        seed=int(seed),
        n_boot=int(n_boot),
        boot_size=boot_size,
        ci_level=float(ci_level),
        metadata=meta,
    )


def _plan_pairs(
    traj: Trajectory, pair_list: list[tuple[int, int]], method: str, cross: str
) -> tuple[list[_Pair], list[tuple[int, int, str]]]:
    """Every pair's two point sets, resolved before any solve so that a bad pair fails first;
    with ``cross="skip"`` the pairs that cannot be measured are listed instead."""
    planned: list[_Pair] = []
    skipped: list[tuple[int, int, str]] = []
    for s, t in pair_list:
        try:
            src, tgt, sc = _pair_arrays(traj, s, t, method)
        except ValueError as err:
            if cross == "error":
                raise
            skipped.append((s, t, str(err)))
            continue
        planned.append(_Pair(s, t, src, tgt, sc))
    return planned, skipped


def _pair_row(
    traj: Trajectory,
    p: _Pair,
    floors: _Floors,
    by_class: bool,
    spec: TransportSpec,
) -> TransportPair:
    """One pair: the transport, the paired cost and efficiency, the floor and the class parts."""
    w = traj.weights
    res = solve(p.src, p.tgt, w, w, spec)
    same_space = int(p.src.shape[1]) == int(p.tgt.shape[1])
    paired = paired_cost(p.src, p.tgt, w) if same_space else None
    efficiency = None
    if paired is not None and res.quantity in _EFFICIENCY_QUANTITIES:
        efficiency = 1.0 if paired == 0 else res.cost / paired
    src_name = f"P({traj.names[p.s]})" if p.shortcut else traj.names[p.s]
    floor = floors.larger((src_name, p.src), (traj.names[p.t], p.tgt))
    class_cost = class_paired = None
    if by_class:
        class_cost, class_paired = _class_costs(traj, p, same_space, spec)
    return TransportPair(
        source=p.s,
        target=p.t,
        source_name=traj.names[p.s],
        target_name=traj.names[p.t],
        cost=float(res.cost),
        distance=float(res.distance),
        quantity=res.quantity,
        paired=paired,
        efficiency=efficiency,
        noise_floor=floor,
        shortcut=p.shortcut,
        method=res.method,
        eps=res.params.get("eps"),
        converged=bool(res.converged),
        solver=res.to_dict(),
        class_cost=class_cost,
        class_paired=class_paired or None,
    )


def _class_costs(
    traj: Trajectory, p: _Pair, same_space: bool, spec: TransportSpec
) -> tuple[dict[int, float], dict[int, float]]:
    """Per class ``k``: the transport between ``mu_s^k`` and ``mu_t^k`` and its paired cost
    (classes without mass are left out)."""
    w = traj.weights
    class_cost: dict[int, float] = {}
    class_paired: dict[int, float] = {}
    for k in traj.classes:
        idx = np.flatnonzero(traj.labels == k)
        try:
            wk = sub_weights(w, idx)
        except ValueError:
            continue
        xs, xt = take_rows(p.src, idx), take_rows(p.tgt, idx)
        class_cost[int(k)] = solve(xs, xt, wk, wk, spec).cost
        if same_space:
            class_paired[int(k)] = paired_cost(xs, xt, wk)
    return class_cost, class_paired


def _replicate_distances(
    traj: Trajectory,
    planned: list[_Pair],
    boot_size: int,
    seeds: list[int],
    spec: TransportSpec,
    progress: bool,
) -> list[list[float]]:
    """Per pair, its distance on every seeded, class-stratified subsample of ``boot_size``."""
    reps: list[list[float]] = [[] for _ in planned]
    for bs in bar(seeds, progress, "subsampling intervals"):
        idx = traj.subsample_indices(boot_size, bs)
        wb = sub_weights(traj.weights, idx)
        for rep, p in zip(reps, planned, strict=True):
            sub = solve(take_rows(p.src, idx), take_rows(p.tgt, idx), wb, wb, spec)
            rep.append(sub.distance)
    return reps


def _warn_unconverged(rows: list[TransportPair]) -> None:
    """Non-convergence is reported, never hidden (each row keeps its solver record)."""
    bad = [f"{r.source_name} -> {r.target_name}" for r in rows if not r.converged]
    if bad:
        warnings.warn(
            f"transport did not converge for {len(bad)} pair(s): {', '.join(bad)}; see each row's "
            "solver record (raise max_iter, lower tol, or use an exact method on a subsample).",
            stacklevel=3,
        )
