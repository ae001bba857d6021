r"""Wasserstein-geodesic analysis of a layer trajectory.

Does the forward pass of a residual network move the distribution of features along a Wasserstein
geodesic — straight, at constant speed, by an optimal map? This module measures it on a
:class:`~otcollapse.measures.Trajectory` (one empirical measure per layer over the same samples):

- :func:`transport_profile` — W2 between layers, the paired (kinetic) cost of the network's own
  coupling, the block efficiency, a split-half noise floor and the record of every solve;
- :func:`geodesic_test` — per segment of equal dimension: path ratio, speed variation, McCann fit,
  optimal transport score (OTS) and line-shape score (LSS), with subsampling intervals on request;
- :func:`compare_trajectories` — two trajectories over the same samples, layer by layer;
- the scores on their own: :func:`ots`, :func:`lss`, :func:`mccann_interpolate`,
  :func:`split_half_floor`.

Every W2 goes through :func:`otcollapse.transport.wasserstein`; conventions (full squared cost,
sample masses ``a_i``, uniform ``1/n`` by default) are those of ``DESIGN.md`` section 1.

References
----------
Gai & Zhang, "Deep Residual Networks Learn the Geodesic Curve in the Wasserstein Space".
Wang, Gai & Zhang, "Progressive Feedforward Collapse of ResNet Training".
McCann, "A convexity principle for interacting gases", Adv. Math. 128 (1997).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from otcollapse import _resampling
from otcollapse._utils import ArrayLike, json_safe, progress_bar, to_numpy, to_tensor
from otcollapse._validation import check_int, check_real
from otcollapse.measures import LayerMeasure, Trajectory
from otcollapse.transport import TransportResult, bures_map, gaussian_w2, wasserstein
from otcollapse.transport.geometry import DEFAULT_MAX_DENSE_BYTES

__all__ = [
    "GeodesicReport",
    "LSSResult",
    "LayerComparison",
    "McCannFit",
    "SegmentReport",
    "TrajectoryComparison",
    "TransportPair",
    "TransportProfile",
    "compare_trajectories",
    "geodesic_test",
    "lss",
    "mccann_interpolate",
    "ots",
    "split_half_floor",
    "transport_profile",
]

#: the ``pairs=`` keywords of :func:`transport_profile`
PAIR_KINDS = ("successive", "all", "endpoints")
#: quantities that lower-bound the paired cost, so that ``cost / paired`` lies in [0, 1]
_EFFICIENCY_QUANTITIES = ("W2^2", "W2^2 (Bures)")
#: McCann fit by majorize-minimize: stop when t moves less than this, or after this many solves
_MM_XTOL = 1e-9
_MM_MAX_ITER = 100
#: grid of the Gaussian (Bures) McCann fit before the bounded Brent refinement
_GAUSS_GRID = 21
#: plan entries below this fraction of their row's mass are rounding residue of the solver
_PLAN_RTOL = 1e-12


# ============================================================================ small helpers
def _progress(items: Iterable[Any], progress: bool, desc: str, total: int | None = None) -> Any:
    return progress_bar(items, progress=progress, desc=desc, total=total)


def _f64(x: ArrayLike, what: str = "the points") -> torch.Tensor:
    """The points as a float64 tensor on their own device (a memory map is read whole)."""
    return to_tensor(x, dtype=torch.float64, what=what)


def _rows(x: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of an array, memory map or tensor (a tensor stays on its device)."""
    if isinstance(x, torch.Tensor):
        return x[torch.as_tensor(idx, device=x.device)]
    return np.asarray(x[idx])


def _sub_weights(w: np.ndarray | None, idx: np.ndarray) -> np.ndarray | None:
    """The masses of a subset of samples, renormalised (None stays None: uniform)."""
    if w is None:
        return None
    ws = w[idx]
    total = float(ws.sum())
    if total <= 0:
        raise ValueError("the selected samples carry zero total weight.")
    return ws / total


def _paired_cost(x: ArrayLike, y: ArrayLike, w: np.ndarray | None) -> float:
    """``sum_i a_i ||y_i - x_i||^2`` in float64 (the coupling of sample i with itself)."""
    xt = _f64(x)
    yt = _f64(y).to(xt.device)
    sq = ((yt - xt) ** 2).sum(1)
    if w is None:
        return float(sq.mean())
    return float(sq @ torch.as_tensor(w, dtype=torch.float64, device=sq.device))


def _check_trajectory(traj: Any, who: str) -> None:
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


def _check_boot(n_boot: int, boot_fraction: float, ci_level: float) -> None:
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


def _check_max_dense_bytes(options: dict[str, Any]) -> None:
    """The memory budget, when given, checked before it sizes anything here."""
    if options.get("max_dense_bytes") is not None:
        check_int(options["max_dense_bytes"], "max_dense_bytes", minimum=0)


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


def _floor_value(
    x: Any,
    halves: tuple[np.ndarray, np.ndarray],
    w: np.ndarray | None,
    method: str,
    options: dict[str, Any],
) -> float | None:
    a_idx, b_idx = halves
    try:
        wa, wb = _sub_weights(w, a_idx), _sub_weights(w, b_idx)
    except ValueError:
        return None
    return wasserstein(
        _rows(x, a_idx), _rows(x, b_idx), a=wa, b=wb, method=method, **options
    ).distance


# ============================================================================ result objects
@dataclasses.dataclass(frozen=True)
class TransportPair:
    """One row of a :class:`TransportProfile`: the transport from layer ``source`` to ``target``.

    Attributes
    ----------
    source, target : int
        Layer indices (``source < target``).
    source_name, target_name : str
    cost : float
        The transport value; :attr:`quantity` says what it is (``"W2^2"`` for the exact methods).
    distance : float
        ``sqrt(cost)``: W2 for the W2 methods.
    quantity : str
        ``"W2^2"``, ``"W2^2 (Bures)"``, ``"SW2^2"``, ``"GW"``, ``"<plan, C>"`` or ``"S_eps"``.
    paired : float or None
        The paired (kinetic) cost of the network's own coupling,
        ``sum_i a_i ||h_target(x_i) - h_source(x_i)||^2`` (None when the two measures live in
        different spaces).
    efficiency : float or None
        ``cost / paired`` for the quantities that lower-bound the paired cost (W2^2 and its
        Bures lower bound); 1 by convention when ``paired == 0`` (a block that does not move
        moves optimally); None otherwise.
    noise_floor : float or None
        The larger of the two split-half distances of the compared measures (see
        :func:`split_half_floor`), in the units of :attr:`distance`: the W2 that two
        independent samples of one law show at half the sample size. A reference scale, not an
        interval (use ``n_boot``): layers of the same samples are coupled by the network, and
        their W2 is usually far less noisy than this.
    shortcut : bool
        Whether the source measure is the stored shortcut image ``P_# mu_source``.
    method : str
        The solver that ran.
    eps : float or None
        The entropic regularisation (Sinkhorn), in units of the full squared cost.
    converged : bool
    solver : dict
        The full JSON-safe solver record (:meth:`TransportResult.to_dict`).
    class_cost, class_paired : dict int -> float, or None
        Per class ``k`` (``by_class=True``): the transport cost between ``mu_source^k`` and
        ``mu_target^k`` and the paired cost of that class.
    ci : tuple (low, high) or None
        Subsampling interval of :attr:`distance` (``n_boot > 0``).
    """

    source: int
    target: int
    source_name: str
    target_name: str
    cost: float
    distance: float
    quantity: str
    paired: float | None
    efficiency: float | None
    noise_floor: float | None
    shortcut: bool
    method: str
    eps: float | None
    converged: bool
    solver: dict[str, Any]
    class_cost: dict[int, float] | None = None
    class_paired: dict[int, float] | None = None
    ci: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe record."""
        return json_safe(dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class TransportProfile:
    r"""W2 between the layers of a trajectory: one :class:`TransportPair` per requested pair.

    $$W_2^2(\mu_s, \mu_t) \;\le\; P_{s,t} = \sum_i a_i \,\|h_t(x_i) - h_s(x_i)\|^2,$$

    the second being the cost of the network's own coupling (sample ``i`` to sample ``i``); for
    successive layers ``P_l = P_{l,l+1}`` is the block's kinetic cost and ``W2^2 / P_l`` its
    transport efficiency (1 when the block moves mass optimally).

    Attributes
    ----------
    rows : tuple of TransportPair
    pairs : str
        The ``pairs=`` argument (``"custom"`` for an explicit list).
    method : str
        The requested method (each row says what ran).
    n_samples : int
    by_class : bool
    floors : dict str -> float
        Split-half distance of every measure that was compared, by measure name.
    skipped : tuple of (source, target, reason)
        Pairs left out with ``cross="skip"``.
    seed : int
        Seed of the split halves and of the subsampling intervals.
    n_boot, boot_size : int
        Replicates and subsample size of the intervals (0 when none).
    ci_level : float
    metadata : dict
        The trajectory's subsample / projection record, when it has one.
    """

    rows: tuple[TransportPair, ...]
    pairs: str
    method: str
    n_samples: int
    by_class: bool
    floors: dict[str, float]
    skipped: tuple[tuple[int, int, str], ...]
    seed: int
    n_boot: int
    boot_size: int
    ci_level: float
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, source: int, target: int) -> TransportPair:
        """The row of the pair ``source -> target`` (KeyError when it was not computed)."""
        for r in self.rows:
            if r.source == source and r.target == target:
                return r
        raise KeyError(f"the profile has no pair {source} -> {target}.")

    @property
    def costs(self) -> np.ndarray:
        """``cost`` of every row (W2^2 for the exact methods)."""
        return np.array([r.cost for r in self.rows], dtype=np.float64)

    @property
    def distances(self) -> np.ndarray:
        """``distance`` of every row (W2 for the exact methods)."""
        return np.array([r.distance for r in self.rows], dtype=np.float64)

    @property
    def paired(self) -> np.ndarray:
        """Paired cost of every row (NaN where not defined)."""
        return np.array([np.nan if r.paired is None else r.paired for r in self.rows])

    @property
    def efficiency(self) -> np.ndarray:
        """Efficiency of every row (NaN where not defined)."""
        return np.array([np.nan if r.efficiency is None else r.efficiency for r in self.rows])

    @property
    def converged(self) -> bool:
        """Whether every solve converged."""
        return all(r.converged for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe record: the settings and one dict per row."""
        return json_safe(
            {
                "pairs": self.pairs,
                "method": self.method,
                "n_samples": self.n_samples,
                "by_class": self.by_class,
                "seed": self.seed,
                "n_boot": self.n_boot,
                "boot_size": self.boot_size,
                "ci_level": self.ci_level,
                "floors": self.floors,
                "skipped": [list(s) for s in self.skipped],
                "metadata": self.metadata,
                "converged": self.converged,
                "rows": [r.to_dict() for r in self.rows],
            }
        )

    def table(self) -> list[dict[str, Any]]:
        """One JSON-safe dict per pair (the rows of :meth:`format_table`)."""
        return [r.to_dict() for r in self.rows]

    def __str__(self) -> str:
        return self.format_table()

    def format_table(self) -> str:
        """A markdown table, one row per pair."""
        head = (
            "| pair | quantity | cost | distance | paired | efficiency | noise floor | method "
            "| converged | shortcut |"
        )
        lines = [head, "|" + "---|" * 10]
        for r in self.rows:
            ci = "" if r.ci is None else f" [{r.ci[0]:.4g}, {r.ci[1]:.4g}]"
            lines.append(
                f"| {r.source_name} → {r.target_name} | {r.quantity} | {r.cost:.6g} "
                f"| {r.distance:.6g}{ci} | {_fmt(r.paired)} | {_fmt(r.efficiency)} "
                f"| {_fmt(r.noise_floor)} | {r.method} | {r.converged} | {r.shortcut} |"
            )
        for s, t, why in self.skipped:
            lines.append(f"| {s} → {t} | skipped: {why} |" + " |" * 8)
        return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.4g}"


@dataclasses.dataclass(frozen=True)
class LSSResult:
    r"""Line-shape scores of a set of tracks (Gai & Zhang).

    $$\tilde x_0 = h_0, \quad \tilde x_l = \tilde x_{l-1} + \frac{h_l - h_{l-1}}{\|h_l - h_{l-1}\|},
      \qquad \mathrm{LSS} = \frac{L'}{\|\tilde x_L - \tilde x_0\|} \ge 1,$$

    zero steps skipped and ``L'`` the number of non-zero steps of the track.

    Attributes
    ----------
    values : ndarray, shape (n,)
        Per-sample LSS: ``1`` for a straight track, ``inf`` when the unit steps cancel exactly,
        NaN only for a track with no non-zero step (it has no LSS; counted in
        :attr:`n_undefined`, left out of every summary).
    mean, median, q25, q75 : float or None
        Over the defined tracks (weighted by the sample masses when given); None when no track
        is defined.
    n_defined, n_undefined : int
    n_zero_steps : int
        Zero steps skipped, over all tracks.
    n_steps : int
        ``L``, the steps of every track.
    weighted : bool
    """

    values: np.ndarray
    mean: float | None
    median: float | None
    q25: float | None
    q75: float | None
    n_defined: int
    n_undefined: int
    n_zero_steps: int
    n_steps: int
    weighted: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe record (undefined per-sample values as None, infinite ones as "inf")."""
        return json_safe(dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class McCannFit:
    r"""Each layer's nearest point on the displacement interpolation between the segment ends.

    $$\mu_t = \big((1 - t)\,\mathrm{Id} + t\,T\big)_\# \mu_0, \qquad
      t_l = \arg\min_{t \in [0, 1]} W_2(\mu_l, \mu_t), \qquad
      r_l = \frac{W_2(\mu_l, \mu_{t_l})}{W_2(\mu_0, \mu_L)},$$

    ``T`` the optimal map (plan) from the first to the last layer of the segment.

    Attributes
    ----------
    layers : tuple of int
    t : tuple of float
        Fitted ``t_l`` (NaN when the segment's ends coincide).
    nominal : tuple of float
        ``l / L`` within the segment, beside ``t``.
    residual : tuple of float
        ``r_l``; 0 for a layer on the geodesic.
    n_evals : tuple of int
        Transport solves spent on each layer (0 at the ends, where ``t = 0, 1`` exactly).
    converged : tuple of bool
    method : str
        ``"assignment"`` or ``"exact"`` (majorize-minimize on the discrete interpolation) or
        ``"gaussian"`` (Bures interpolation, grid and bounded Brent).
    endpoint_cost : float
        ``W2^2(mu_0, mu_L)`` of the segment, in the same quantity.
    """

    layers: tuple[int, ...]
    t: tuple[float, ...]
    nominal: tuple[float, ...]
    residual: tuple[float, ...]
    n_evals: tuple[int, ...]
    converged: tuple[bool, ...]
    method: str
    endpoint_cost: float

    @property
    def max_residual(self) -> float:
        """The largest residual of the segment."""
        return float(np.max(self.residual))

    @property
    def max_deviation(self) -> float:
        """``max_l |t_l - l / L|``."""
        return float(np.max(np.abs(np.asarray(self.t) - np.asarray(self.nominal))))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe record."""
        d = dataclasses.asdict(self)
        d["max_residual"] = self.max_residual
        d["max_deviation"] = self.max_deviation
        return json_safe(d)


@dataclasses.dataclass(frozen=True)
class SegmentReport:
    r"""The geodesic statistics of one segment (maximal run of layers of equal dimension).

    Attributes
    ----------
    layers : tuple of int
    names : tuple of str
    dim : int
    step_lengths : tuple of float
        ``W2(mu_l, mu_{l+1})`` along the segment (the method's distance).
    endpoint_distance : float
        ``W2(mu_first, mu_last)`` (the method's distance).
    path_ratio : float
        $$R = \sum_l W_2(\mu_l, \mu_{l+1}) \,/\, W_2(\mu_0, \mu_L) \ge 1,$$
        1 when the layers lie in order on one geodesic; NaN when the ends coincide.
    speed_cv : float
        Coefficient of variation (population std / mean) of the step lengths; 0 for constant
        speed, and 0 when no step moves.
    mccann : McCannFit
    ots : float
        Optimal transport score between the first and last layers (see :func:`ots`).
    lss : LSSResult
    ci : dict str -> (low, high)
        Subsampling intervals (``n_boot > 0``) of ``path_ratio``, ``speed_cv``, ``ots``,
        ``lss_mean``, ``lss_median``.
    methods : dict str -> str
        The solver behind each statistic.
    notes : tuple of str
    """

    layers: tuple[int, ...]
    names: tuple[str, ...]
    dim: int
    step_lengths: tuple[float, ...]
    endpoint_distance: float
    path_ratio: float
    speed_cv: float
    mccann: McCannFit
    ots: float
    lss: LSSResult
    ci: dict[str, tuple[float, float]]
    methods: dict[str, str]
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe record."""
        return json_safe(
            {
                "layers": self.layers,
                "names": self.names,
                "dim": self.dim,
                "step_lengths": self.step_lengths,
                "endpoint_distance": self.endpoint_distance,
                "path_ratio": self.path_ratio,
                "speed_cv": self.speed_cv,
                "mccann": self.mccann.to_dict(),
                "ots": self.ots,
                "lss": self.lss.to_dict(),
                "ci": self.ci,
                "methods": self.methods,
                "notes": self.notes,
            }
        )


@dataclasses.dataclass(frozen=True)
class GeodesicReport:
    """How close a trajectory's path is to a Wasserstein geodesic, per segment.

    Attributes
    ----------
    segments : tuple of SegmentReport
        One per segment of at least two layers.
    profile : TransportProfile
        The successive steps the statistics were computed from (with their noise floors).
    method : str
        The requested method.
    n_samples : int
        Samples analysed.
    n_total : int
        Samples in the trajectory given.
    subsample : dict or None
        ``{"n", "of", "seed", "stratified"}`` when the analysis ran on a subsample.
    n_boot, boot_size : int
    ci_level : float
    seed : int
    notes : tuple of str
    """

    segments: tuple[SegmentReport, ...]
    profile: TransportProfile
    method: str
    n_samples: int
    n_total: int
    subsample: dict[str, Any] | None
    n_boot: int
    boot_size: int
    ci_level: float
    seed: int
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe record (the profile included)."""
        return json_safe(
            {
                "method": self.method,
                "n_samples": self.n_samples,
                "n_total": self.n_total,
                "subsample": self.subsample,
                "n_boot": self.n_boot,
                "boot_size": self.boot_size,
                "ci_level": self.ci_level,
                "seed": self.seed,
                "notes": self.notes,
                "segments": [s.to_dict() for s in self.segments],
                "profile": self.profile.to_dict(),
            }
        )

    def table(self) -> list[dict[str, Any]]:
        """One JSON-safe dict per segment: R, speed CV, McCann fit, OTS and LSS summaries."""
        rows = []
        for s in self.segments:
            rows.append(
                json_safe(
                    {
                        "first": s.names[0],
                        "last": s.names[-1],
                        "dim": s.dim,
                        "path_ratio": s.path_ratio,
                        "speed_cv": s.speed_cv,
                        "mccann_max_residual": s.mccann.max_residual,
                        "mccann_max_deviation": s.mccann.max_deviation,
                        "ots": s.ots,
                        "lss_mean": s.lss.mean,
                        "lss_median": s.lss.median,
                        "lss_undefined": s.lss.n_undefined,
                        "ci": {k: list(v) for k, v in s.ci.items()},
                    }
                )
            )
        return rows

    def __str__(self) -> str:
        return self.format_table()

    def format_table(self) -> str:
        """A markdown table, one row per segment."""
        lines = [
            "| segment | R | speed CV | max McCann residual | max abs(t_l - l/L) | OTS "
            "| LSS mean | LSS median [q25, q75] | no LSS |",
            "|" + "---|" * 9,
        ]
        for s in self.segments:
            ci = s.ci

            def with_ci(key: str, val: float, ci: dict[str, tuple[float, float]] = ci) -> str:
                tail = f" [{ci[key][0]:.4g}, {ci[key][1]:.4g}]" if key in ci else ""
                return f"{val:.4g}{tail}"

            lss_ = s.lss
            med = (
                "—"
                if lss_.median is None
                else (f"{lss_.median:.4g} [{lss_.q25:.4g}, {lss_.q75:.4g}]")
            )
            mean = "—" if lss_.mean is None else with_ci("lss_mean", lss_.mean)
            lines.append(
                f"| {s.names[0]} … {s.names[-1]} | {with_ci('path_ratio', s.path_ratio)} "
                f"| {with_ci('speed_cv', s.speed_cv)} | {s.mccann.max_residual:.3g} "
                f"| {s.mccann.max_deviation:.3g} | {with_ci('ots', s.ots)} | {mean} | {med} "
                f"| {lss_.n_undefined} |"
            )
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class LayerComparison:
    """Two trajectories at one layer index: W2 between their measures and their paired distance.

    Attributes
    ----------
    layer : int
    name_a, name_b : str
    cost, distance : float
        Transport between ``mu_l^a`` and ``mu_l^b`` (:attr:`quantity` says what).
    quantity, method : str
    converged : bool
    paired_mean : float
        ``sum_i a_i ||h^a_l(x_i) - h^b_l(x_i)||``.
    paired_rms : float
        ``(sum_i a_i ||h^a_l(x_i) - h^b_l(x_i)||^2)^{1/2} >= W2``.
    noise_floor_a, noise_floor_b : float or None
        Split-half distances of the two measures.
    """

    layer: int
    name_a: str
    name_b: str
    cost: float
    distance: float
    quantity: str
    method: str
    converged: bool
    paired_mean: float
    paired_rms: float
    noise_floor_a: float | None
    noise_floor_b: float | None

    def to_dict(self) -> dict[str, Any]:
        return json_safe(dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class TrajectoryComparison:
    """Two trajectories over the same samples (a network and its MUFM, a ResNet and its twin).

    Attributes
    ----------
    layers : tuple of LayerComparison
        Corresponding layers (same index) of equal dimension.
    not_compared : tuple of dict
        Corresponding layers whose dimensions differ, and layers present in one trajectory only.
    profile_a, profile_b : TransportProfile
        Successive-step profiles of the two trajectories.
    step_differences : tuple of dict
        Per step present in both: ``distance_a``, ``distance_b``, ``distance_diff`` (b - a),
        ``efficiency_a``, ``efficiency_b``, ``efficiency_diff``.
    geodesic_a, geodesic_b : GeodesicReport or None
        With ``geodesic=True``.
    geodesic_differences : tuple of dict
        Per segment with the same layers in both: differences (b - a) of R, speed CV, OTS, LSS
        mean and the largest McCann residual.
    """

    layers: tuple[LayerComparison, ...]
    not_compared: tuple[dict[str, Any], ...]
    profile_a: TransportProfile
    profile_b: TransportProfile
    step_differences: tuple[dict[str, Any], ...]
    geodesic_a: GeodesicReport | None = None
    geodesic_b: GeodesicReport | None = None
    geodesic_differences: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "layers": [c.to_dict() for c in self.layers],
                "not_compared": self.not_compared,
                "profile_a": self.profile_a.to_dict(),
                "profile_b": self.profile_b.to_dict(),
                "step_differences": self.step_differences,
                "geodesic_a": None if self.geodesic_a is None else self.geodesic_a.to_dict(),
                "geodesic_b": None if self.geodesic_b is None else self.geodesic_b.to_dict(),
                "geodesic_differences": self.geodesic_differences,
            }
        )

    def table(self) -> list[dict[str, Any]]:
        """One JSON-safe dict per compared layer."""
        return [c.to_dict() for c in self.layers]

    def __str__(self) -> str:
        return self.format_table()

    def format_table(self) -> str:
        """A markdown table, one row per compared layer."""
        lines = [
            "| layer | a | b | distance | paired rms | paired mean | floor a | floor b |",
            "|" + "---|" * 8,
        ]
        for c in self.layers:
            lines.append(
                f"| {c.layer} | {c.name_a} | {c.name_b} | {c.distance:.6g} | {c.paired_rms:.6g} "
                f"| {c.paired_mean:.6g} | {_fmt(c.noise_floor_a)} | {_fmt(c.noise_floor_b)} |"
            )
        return "\n".join(lines)


# ============================================================================ scores on their own
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


def _fit_method(weights: np.ndarray | None, method: str) -> str:
    """The exact solver for OTS and the McCann fit: the requested one if exact, else by weights."""
    if method in ("assignment", "exact"):
        return method
    return "assignment" if weights is None else "exact"


def _exact_solve(
    x: Any,
    y: Any,
    w: np.ndarray | None,
    fit: str,
    options: dict[str, Any],
    what: str,
    b: np.ndarray | None = None,
) -> TransportResult:
    """An exact solve that returns the coupling (assignment, or the dense plan)."""
    extra = {"return_plan": True} if fit == "exact" else {}
    try:
        return wasserstein(x, y, a=w, b=w if b is None else b, method=fit, **options, **extra)
    except ValueError as err:
        raise ValueError(
            f"{what} needs the exact coupling (method={fit!r}): {err} For large n run the "
            "geodesic test on a stratified subsample (geodesic_test(..., max_samples=5000) or "
            "traj.subsample(n, seed))."
        ) from err


def ots(
    x_in: ArrayLike, x_out: ArrayLike, *, weights: ArrayLike | None = None, **options: Any
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
    **options
        Passed to :func:`~otcollapse.transport.wasserstein` (e.g. ``cost_dtype="float64"``
        for the assignment, ``max_dense_bytes``).

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
    fit = "assignment" if w is None else "exact"
    res = _exact_solve(x_in, x_out, w, fit, options, "ots")
    return _ots_from_coupling(res, x_in, x_out, w)


def _track_layers(tracks: Any) -> list[torch.Tensor]:
    if isinstance(tracks, Trajectory):
        if len(set(tracks.dims)) != 1:
            raise ValueError(
                f"lss needs tracks in one space; the trajectory's dimensions are {tracks.dims}. "
                "Score each segment on its own: lss(traj.take_layers(list(segment))) for segment "
                "in traj.segments."
            )
        return [_f64(x) for x in tracks.layers]
    if isinstance(tracks, (np.ndarray, torch.Tensor)) and tracks.ndim == 3:
        return [_f64(tracks[i], "the tracks") for i in range(tracks.shape[0])]
    if isinstance(tracks, (list, tuple)):
        layers = [_f64(x, f"layer {i} of the tracks") for i, x in enumerate(tracks)]
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
    values = values_t.cpu().numpy()
    zero_steps = int((len(layers) - 1) * n - int(count.sum()))
    defined = ~np.isnan(values)
    nd = int(defined.sum())
    mean = median = q25 = q75 = None
    if nd:
        v = values[defined]
        wd = None if w is None else w[defined]
        if wd is not None and wd.sum() <= 0:
            wd = None
        if wd is None:
            mean = float(np.mean(v))
        else:
            pos = wd > 0
            mean = float(np.inf) if np.isinf(v[pos]).any() else float(v[pos] @ wd[pos] / wd.sum())
        q25, median, q75 = _quantiles(v, wd, (0.25, 0.5, 0.75))
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


def mccann_interpolate(
    x0: ArrayLike,
    x1: ArrayLike,
    t: float,
    *,
    plan: ArrayLike | TransportResult | None = None,
    a: ArrayLike | None = None,
    b: ArrayLike | None = None,
    **options: Any,
) -> LayerMeasure:
    r"""McCann's displacement interpolation between two discrete measures.

    $$\mu_t = \sum_{ij} \pi_{ij}\, \delta_{(1 - t)\,x^0_i + t\,x^1_j}, \qquad t \in [0, 1],$$

    ``pi`` an optimal plan between ``mu_0 = sum_i a_i delta_{x0_i}`` and
    ``mu_1 = sum_j b_j delta_{x1_j}``. Then ``t -> mu_t`` is a constant-speed W2 geodesic:
    ``W2(mu_s, mu_t) = |t - s| W2(mu_0, mu_1)`` (McCann 1997). With uniform masses on equal
    numbers of points the optimal plan is a permutation ``sigma`` and
    ``mu_t = (1/n) sum_i delta_{(1 - t) x0_i + t x1_sigma(i)}``.

    Parameters
    ----------
    x0 : array-like or Tensor, shape (n, d)
    x1 : array-like or Tensor, shape (m, d)
    t : float
        In [0, 1].
    plan : optional
        The coupling to interpolate along: an int array of shape (n,) (``x0_i -> x1[plan[i]]``,
        a permutation), a dense (n, m) plan of non-negative masses summing to one, or a
        :class:`~otcollapse.transport.TransportResult` carrying either. Default: solve for the
        optimal one (``method="assignment"`` for uniform equal sizes, else ``"exact"``).
    a, b : array-like, optional
        Masses of ``x0`` and ``x1`` when the plan is solved here; uniform when omitted.
    **options
        Passed to :func:`~otcollapse.transport.wasserstein` when the plan is solved here.

    Returns
    -------
    LayerMeasure
        For a permutation: the ``n`` points in the order of ``x0`` (row ``i`` is where
        ``x0_i`` is at time ``t``), uniform weights (``weights=None``). For a general plan: one
        point per positive entry of the plan, with its mass. Points are a tensor when ``x0`` is
        one (on its device), else a float64 NumPy array.

    Examples
    --------
    >>> import numpy as np
    >>> x0 = np.array([[0.0], [1.0]]); x1 = np.array([[3.0], [2.0]])
    >>> mccann_interpolate(x0, x1, 0.5).points   # sorted matching: 0 -> 2, 1 -> 3
    array([[1.],
           [2.]])

    References
    ----------
    McCann, "A convexity principle for interacting gases", Adv. Math. 128 (1997).
    """
    t = check_real(t, "t (the time of the displacement interpolation)", minimum=0.0, maximum=1.0)
    X0, X1 = _f64(x0, "x0"), _f64(x1, "x1")
    X1 = X1.to(X0.device)
    if X0.ndim != 2 or X1.ndim != 2 or X0.shape[1] != X1.shape[1]:
        raise ValueError(
            f"x0 and x1 must be (n, d) and (m, d) in one space; got {tuple(X0.shape)} and "
            f"{tuple(X1.shape)}."
        )
    n, m = int(X0.shape[0]), int(X1.shape[0])
    as_tensor = isinstance(x0, torch.Tensor)

    def out(points: torch.Tensor, masses: np.ndarray | None) -> LayerMeasure:
        pts = points if as_tensor else points.cpu().numpy()
        return LayerMeasure(pts, masses, None, f"mccann(t={t:g})")

    if plan is None:
        wa = None if a is None else to_numpy(a, dtype=np.float64, what="a").reshape(-1)
        wb = None if b is None else to_numpy(b, dtype=np.float64, what="b").reshape(-1)
        if wa is None and wb is None and n == m:
            plan = wasserstein(x0, x1, method="assignment", **options)
        else:
            plan = wasserstein(x0, x1, a=wa, b=wb, method="exact", return_plan=True, **options)
    if isinstance(plan, TransportResult):
        if plan.assignment is None and plan.plan is None:
            raise ValueError(
                "the TransportResult carries no coupling; solve with method='assignment' or "
                "with return_plan=True."
            )
        plan = plan.assignment if plan.assignment is not None else plan.plan
    P = to_numpy(plan, what="plan")
    if P.ndim == 1:
        sigma = P.astype(np.int64)
        if n != m or sigma.shape != (n,) or not np.array_equal(np.sort(sigma), np.arange(n)):
            raise ValueError(
                "an index plan must be a permutation of 0..n-1 between two clouds of equal size "
                f"(n = {n}, m = {m}); pass a dense (n, m) plan otherwise."
            )
        idx = torch.as_tensor(sigma, device=X0.device)
        return out((1 - t) * X0 + t * X1[idx], None)
    P = P.astype(np.float64)
    if P.shape != (n, m):
        raise ValueError(f"the plan has shape {P.shape}; it must be (n, m) = {(n, m)}.")
    if not np.all(np.isfinite(P)) or (P < 0).any() or abs(P.sum() - 1.0) > 1e-6:
        raise ValueError("the plan must hold finite non-negative masses summing to one.")
    rows, cols = np.nonzero(P > 0)
    masses = P[rows, cols] / P[rows, cols].sum()
    r_t = torch.as_tensor(rows, device=X0.device)
    c_t = torch.as_tensor(cols, device=X0.device)
    return out((1 - t) * X0[r_t] + t * X1[c_t], masses)


def split_half_floor(
    x: ArrayLike,
    *,
    labels: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    method: str = "auto",
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
    method : str
        Transport method (see :func:`~otcollapse.transport.wasserstein`).
    seed : int
    **options
        Passed to the solver.

    Returns
    -------
    float
        The distance (W2 for the W2 methods).
    """
    traj = Trajectory.from_arrays([x], labels=labels, weights=weights)
    halves = _resampling.split_halves(traj.labels, traj.n_samples, seed)
    if halves is None:
        raise ValueError(f"a split-half floor needs at least 4 samples; got {traj.n_samples}.")
    val = _floor_value(traj.layers[0], halves, traj.weights, method, options)
    if val is None:
        raise ValueError("one of the halves carries zero total weight; use another seed.")
    return val


# ============================================================================ transport profile
def _resolve_pairs(traj: Trajectory, pairs: Any) -> tuple[str, list[tuple[int, int]]]:
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
    out = []
    for p in pairs:
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
        out.append((min(s, t), max(s, t)))
    if not out:
        raise ValueError(f"pairs is empty; {form}.")
    return "custom", out


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
    method: str = "auto",
    pairs: str | Sequence[tuple[int, int]] = "successive",
    by_class: bool = False,
    noise_floor: bool = True,
    cross: str = "error",
    n_boot: int = 0,
    boot_fraction: float = 0.5,
    ci_level: float = 0.95,
    seed: int = 0,
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
    Any other pair across a change of dimension needs ``method="gromov"`` (every pair is then
    Gromov–Wasserstein between the raw layers, a different quantity) or a trajectory brought to
    one dimension by ``traj.project(dim)``; otherwise a ValueError says so (``cross="skip"``
    leaves such pairs out and lists them in ``skipped``).

    Parameters
    ----------
    traj : Trajectory
        At least two layers.
    method : str
        Transport method of :func:`~otcollapse.transport.wasserstein` (``"auto"``: the exact
        assignment / network simplex while the dense cost fits, chunked Sinkhorn beyond).
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
    progress : bool
        A progress bar (tqdm) on a terminal.
    **options
        Passed to every solve (e.g. ``eps`` for Sinkhorn, ``cost_dtype`` for the assignment,
        ``max_dense_bytes``).

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
    _check_trajectory(traj, "transport_profile")
    kind, pair_list = _resolve_pairs(traj, pairs)
    if cross not in ("error", "skip"):
        raise ValueError(f"cross must be 'error' or 'skip'; got {cross!r}.")
    if by_class and traj.labels is None:
        raise ValueError("by_class=True needs labels; pass labels= to Trajectory.from_arrays.")
    _check_boot(n_boot, boot_fraction, ci_level)
    # resolve every pair's space first: a bad pair fails before any expensive solve
    planned: list[tuple[int, int, Any, Any, bool]] = []
    skipped: list[tuple[int, int, str]] = []
    for s, t in pair_list:
        try:
            src, tgt, sc = _pair_arrays(traj, s, t, method)
        except ValueError as err:
            if cross == "error":
                raise
            skipped.append((s, t, str(err)))
            continue
        planned.append((s, t, src, tgt, sc))
    w = traj.weights
    halves = _resampling.split_halves(traj.labels, traj.n_samples, seed) if noise_floor else None
    floors: dict[str, float] = {}

    def floor_of(name: str, x: Any) -> float | None:
        if halves is None:
            return None
        if name not in floors:
            val = _floor_value(x, halves, w, method, options)
            if val is None:
                return None
            floors[name] = val
        return floors[name]

    rows: list[TransportPair] = []
    for s, t, src, tgt, sc in _progress(planned, progress, "transport_profile"):
        res = wasserstein(src, tgt, a=w, b=w, method=method, **options)
        same_space = int(src.shape[1]) == int(tgt.shape[1])
        paired = _paired_cost(src, tgt, w) if same_space else None
        efficiency = None
        if paired is not None and res.quantity in _EFFICIENCY_QUANTITIES:
            efficiency = 1.0 if paired == 0 else res.cost / paired
        floor = None
        if halves is not None:
            src_name = f"P({traj.names[s]})" if sc else traj.names[s]
            fs, ft = floor_of(src_name, src), floor_of(traj.names[t], tgt)
            vals = [v for v in (fs, ft) if v is not None]
            floor = max(vals) if vals else None
        class_cost = class_paired = None
        if by_class:
            class_cost, class_paired = {}, {}
            for k in traj.classes:
                idx = np.flatnonzero(traj.labels == k)
                try:
                    wk = _sub_weights(w, idx)
                except ValueError:
                    continue
                xs, xt = _rows(src, idx), _rows(tgt, idx)
                class_cost[int(k)] = wasserstein(xs, xt, a=wk, b=wk, method=method, **options).cost
                if same_space:
                    class_paired[int(k)] = _paired_cost(xs, xt, wk)
        rows.append(
            TransportPair(
                source=s,
                target=t,
                source_name=traj.names[s],
                target_name=traj.names[t],
                cost=float(res.cost),
                distance=float(res.distance),
                quantity=res.quantity,
                paired=paired,
                efficiency=efficiency,
                noise_floor=floor,
                shortcut=sc,
                method=res.method,
                eps=res.params.get("eps"),
                converged=bool(res.converged),
                solver=res.to_dict(),
                class_cost=class_cost,
                class_paired=class_paired or None,
            )
        )
    boot_size = 0
    if n_boot:
        boot_size = _resampling.boot_size(traj.n_samples, boot_fraction)
        reps: list[list[float]] = [[] for _ in planned]
        seeds = _resampling.boot_seeds(seed, n_boot)
        for bs in _progress(seeds, progress, "subsampling intervals"):
            idx = traj.subsample_indices(boot_size, bs)
            wb = _sub_weights(w, idx)
            for i, (_, _, src, tgt, _) in enumerate(planned):
                r = wasserstein(
                    _rows(src, idx), _rows(tgt, idx), a=wb, b=wb, method=method, **options
                )
                reps[i].append(r.distance)
        rows = [
            dataclasses.replace(r, ci=_resampling.percentile_interval(v, ci_level))
            for r, v in zip(rows, reps, strict=True)
        ]
    bad = [f"{r.source_name} -> {r.target_name}" for r in rows if not r.converged]
    if bad:
        warnings.warn(
            f"transport did not converge for {len(bad)} pair(s): {', '.join(bad)}; see each row's "
            "solver record (raise max_iter, lower tol, or use an exact method on a subsample).",
            stacklevel=2,
        )
    meta = {k: traj.metadata[k] for k in ("subsample", "projection") if k in traj.metadata}
    return TransportProfile(
        rows=tuple(rows),
        pairs=kind,
        method=method,
        n_samples=traj.n_samples,
        by_class=bool(by_class),
        floors=floors,
        skipped=tuple(skipped),
        seed=int(seed),
        n_boot=int(n_boot),
        boot_size=boot_size,
        ci_level=float(ci_level),
        metadata=meta,
    )


# ============================================================================ geodesic test
class _Interpolation:
    """The discrete displacement interpolation ``z_j(t) = base_j + t disp_j`` with masses ``g_j``.

    Built from the optimal coupling of a segment's first and last layers: support point ``j``
    is a pair ``(owner_j, partner_j)`` of the coupling (a permutation: ``owner_j = j``).
    """

    def __init__(self, x0: torch.Tensor, x1: torch.Tensor, res: TransportResult):
        if res.assignment is not None:
            sigma = torch.as_tensor(np.asarray(res.assignment), device=x0.device)
            self.base = x0
            self.disp = x1[sigma] - x0
            self.mass: np.ndarray | None = None
            self.owner = torch.arange(x0.shape[0], device=x0.device)
            self.g = torch.full(
                (x0.shape[0],), 1.0 / x0.shape[0], dtype=torch.float64, device=x0.device
            )
        else:
            plan = np.asarray(res.plan, dtype=np.float64)
            # the network simplex leaves rounding residue (~1e-17) on degenerate basic entries:
            # drop entries below 1e-12 of their row's mass, then renormalise
            row_mass = plan.sum(1, keepdims=True)
            rows, cols = np.nonzero(plan > _PLAN_RTOL * row_mass)
            mass = plan[rows, cols] / plan[rows, cols].sum()
            r_t = torch.as_tensor(rows, device=x0.device)
            self.base = x0[r_t]
            self.disp = x1[torch.as_tensor(cols, device=x0.device)] - x0[r_t]
            self.mass = mass
            self.owner = r_t
            self.g = torch.as_tensor(mass, dtype=torch.float64, device=x0.device)
        #: W2^2 of the ends along this coupling (the endpoint cost, from the differences)
        self.w2sq = float(self.g @ (self.disp * self.disp).sum(1))
        self._base_disp = float(self.g @ (self.base * self.disp).sum(1))

    def at(self, t: float) -> torch.Tensor:
        return self.base + t * self.disp

    def paired_start(self, h: torch.Tensor) -> float:
        """``argmin_t`` of the cost of the coupling sample i <-> its own support points."""
        num = float(self.g @ ((h[self.owner] - self.base) * self.disp).sum(1))
        return min(1.0, max(0.0, num / self.w2sq))

    def update(self, h: torch.Tensor, res: TransportResult) -> float:
        """Minimiser over [0, 1] of the quadratic majorant given by the coupling ``res``."""
        if res.assignment is not None:
            j = torch.as_tensor(np.asarray(res.assignment), device=h.device)
            num = float(((h - self.base[j]) * self.disp[j]).sum(1).mean())
        else:
            P = torch.as_tensor(np.asarray(res.plan, dtype=np.float64), device=h.device)
            num = float(((P @ self.disp) * h).sum()) - self._base_disp
        return min(1.0, max(0.0, num / self.w2sq))


def _mccann_discrete(
    layers: list[torch.Tensor],
    seg: Sequence[int],
    end: TransportResult,
    w: np.ndarray | None,
    fit: str,
    fit_options: dict[str, Any],
    grid: int,
    progress: bool,
) -> McCannFit:
    r"""Majorize-minimize fit of ``t_l`` on the discrete displacement interpolation.

    For any coupling ``pi`` of ``mu_l`` with ``mu_t`` the cost
    ``q_pi(t) = sum pi_ij ||h_i - z_j(t)||^2`` is a quadratic in ``t`` with leading coefficient
    ``W2^2(mu_0, mu_L)`` whatever ``pi`` is, and ``W2^2(mu_l, mu_t) = min_pi q_pi(t)``
    (a convex quadratic plus a concave piecewise-linear function). Minimising ``q_pi`` for the
    optimal ``pi`` at ``t_k`` gives ``t_{k+1}`` with ``W2^2(mu_l, mu_{t_{k+1}}) <= q(t_{k+1})
    <= W2^2(mu_l, mu_{t_k})``: a monotone descent that stops at a fixed point (a local minimum)
    after finitely many solves.
    """
    interp = _Interpolation(layers[0], layers[-1], end)
    L = len(seg) - 1
    D = math.sqrt(interp.w2sq)
    ts, res_, evals, conv = [], [], [], []
    for pos, h in _progress(list(enumerate(layers)), progress, "McCann fit"):
        if pos in (0, L):  # mu_0 and mu_1 are the ends themselves: t = 0, 1 exactly
            ts.append(float(pos / L))
            res_.append(0.0)
            evals.append(0)
            conv.append(True)
            continue
        if interp.w2sq <= 0:
            ts.append(math.nan)
            res_.append(math.nan)
            evals.append(0)
            conv.append(False)
            continue
        starts = [interp.paired_start(h)]
        if grid >= 1:
            starts += [float(v) for v in np.linspace(0.0, 1.0, grid)]
        best_t, best_cost, n_ev, ok_all = math.nan, math.inf, 0, True
        done: dict[float, float] = {}
        for t in starts:
            ok = False
            for _ in range(_MM_MAX_ITER):
                if t in done:  # a point already solved: its descent is known
                    ok = True
                    break
                r = wasserstein(
                    h,
                    interp.at(t),
                    a=w,
                    b=interp.mass,
                    method=fit,
                    **fit_options,
                    **({"return_plan": True} if fit == "exact" else {}),
                )
                n_ev += 1
                done[t] = r.cost
                if r.cost < best_cost:
                    best_t, best_cost = t, r.cost
                t_new = interp.update(h, r)
                if abs(t_new - t) <= _MM_XTOL:
                    ok = True
                    break
                t = t_new
            ok_all = ok_all and ok
        ts.append(float(best_t))
        res_.append(math.sqrt(max(best_cost, 0.0)) / D)
        evals.append(n_ev)
        conv.append(ok_all)
    return McCannFit(
        layers=tuple(seg),
        t=tuple(ts),
        nominal=tuple(i / L for i in range(L + 1)),
        residual=tuple(res_),
        n_evals=tuple(evals),
        converged=tuple(conv),
        method=fit,
        endpoint_cost=interp.w2sq,
    )


def _moments(x: torch.Tensor, w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and (population) covariance, as the ``gaussian`` method computes them."""
    xn = x.cpu().numpy()
    a = np.full(xn.shape[0], 1.0 / xn.shape[0]) if w is None else w
    m = a @ xn
    xc = xn - m
    return m, (xc * a[:, None]).T @ xc


def _mccann_gaussian(
    layers: list[torch.Tensor],
    seg: Sequence[int],
    w: np.ndarray | None,
    names: Sequence[str],
    grid: int,
    progress: bool,
) -> McCannFit:
    r"""McCann fit on the Gaussian (Bures) geodesic between the ends' Gaussian approximations.

    ``mu_t = N((1 - t) m_0 + t m_1, M_t S_0 M_t)``, ``M_t = (1 - t) I + t A``, ``A`` the Bures
    map; ``t_l`` minimises the Bures distance to layer ``l``'s Gaussian on a grid, refined by
    bounded Brent in the best grid cell.
    """
    m0, S0 = _moments(layers[0], w)
    m1, S1 = _moments(layers[-1], w)
    try:
        A = bures_map(S0, S1)
    except ValueError as err:
        raise ValueError(
            f"the Gaussian McCann fit needs a positive-definite covariance at layer {names[0]!r} "
            f"({err}); project to fewer dimensions than samples (traj.project(dim, "
            "method='pca')) or use method='auto' for the exact discrete fit."
        ) from err
    d = S0.shape[0]
    eye = np.eye(d)
    w2sq = gaussian_w2(m0, S0, m1, S1)
    D = math.sqrt(w2sq)
    L = len(seg) - 1
    n_grid = max(grid, _GAUSS_GRID)
    ts, res_, evals, conv = [], [], [], []
    for pos, h in _progress(list(enumerate(layers)), progress, "McCann fit (Gaussian)"):
        if pos in (0, L):
            ts.append(float(pos / L))
            res_.append(0.0)
            evals.append(0)
            conv.append(True)
            continue
        if w2sq <= 0:
            ts.append(math.nan)
            res_.append(math.nan)
            evals.append(0)
            conv.append(False)
            continue
        ml, Sl = _moments(h, w)

        def f(t: float, ml: np.ndarray = ml, Sl: np.ndarray = Sl) -> float:
            M = (1 - t) * eye + t * A
            return gaussian_w2(ml, Sl, (1 - t) * m0 + t * m1, M @ S0 @ M)

        grid_t = np.linspace(0.0, 1.0, n_grid)
        vals = [f(float(v)) for v in grid_t]
        k = int(np.argmin(vals))
        lo, hi = grid_t[max(k - 1, 0)], grid_t[min(k + 1, n_grid - 1)]
        opt = minimize_scalar(f, bounds=(lo, hi), method="bounded", options={"xatol": 1e-12})
        t_best, v_best = (
            (float(opt.x), float(opt.fun))
            if opt.fun <= vals[k]
            else (float(grid_t[k]), float(vals[k]))
        )
        ts.append(t_best)
        res_.append(math.sqrt(max(v_best, 0.0)) / D)
        evals.append(n_grid + int(opt.nfev))
        conv.append(bool(opt.success))
    return McCannFit(
        layers=tuple(seg),
        t=tuple(ts),
        nominal=tuple(i / L for i in range(L + 1)),
        residual=tuple(res_),
        n_evals=tuple(evals),
        converged=tuple(conv),
        method="gaussian",
        endpoint_cost=w2sq,
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


def _segment_quick(
    work: Trajectory,
    seg: range,
    method: str,
    options: dict[str, Any],
    fit: str,
    fit_options: dict[str, Any],
) -> dict[str, float]:
    """The statistics of one segment that the subsampling intervals cover (no McCann fit)."""
    w = work.weights
    steps = [
        wasserstein(work.layers[l], work.layers[l + 1], a=w, b=w, method=method, **options).distance
        for l in seg[:-1]
    ]
    end = _exact_solve(
        work.layers[seg[0]], work.layers[seg[-1]], w, fit, fit_options, "geodesic_test"
    )
    if method in ("auto", fit):
        D = end.distance
    else:
        D = wasserstein(
            work.layers[seg[0]], work.layers[seg[-1]], a=w, b=w, method=method, **options
        ).distance
    R, cv, _ = _path_stats(steps, D)
    ls = lss([work.layers[l] for l in seg], weights=w)
    return {
        "path_ratio": R,
        "speed_cv": cv,
        "ots": _ots_from_coupling(end, work.layers[seg[0]], work.layers[seg[-1]], w),
        "lss_mean": math.nan if ls.mean is None else ls.mean,
        "lss_median": math.nan if ls.median is None else ls.median,
    }


def geodesic_test(
    traj: Trajectory,
    *,
    method: str = "auto",
    n_boot: int = 0,
    seed: int = 0,
    max_samples: int | None = 5000,
    boot_fraction: float = 0.5,
    ci_level: float = 0.95,
    mccann_grid: int = 0,
    profile: TransportProfile | None = None,
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
    local minima. With ``method="gaussian"`` every value is the Bures (Gaussian) one and the fit
    runs on the Gaussian geodesic (grid, then bounded Brent).

    OTS and the McCann fit need the exact coupling (assignment for uniform masses, network
    simplex for weighted samples); with ``method`` ``"sinkhorn"`` or ``"sliced"`` the step
    lengths and ``R`` use that method and the fit and OTS the exact one (``methods`` says which).
    For ``n > max_samples`` everything runs on a seeded, class-stratified subsample, and the
    report says so.

    Parameters
    ----------
    traj : Trajectory
        At least two layers. Steps across a change of dimension do not enter any segment's
        statistics; they are in :attr:`GeodesicReport.profile` when measurable.
    method : str
        Transport method for the step lengths and ``R``: ``"auto"`` (exact while it fits),
        ``"assignment"``, ``"exact"``, ``"gaussian"``, ``"sinkhorn"``, ``"sliced"``.
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
        :func:`transport_profile`) whose step values are reused instead of recomputed.
    progress : bool
        Progress bars (tqdm) on a terminal.
    **options
        Passed to the step solves (and to the exact fit when it uses the same method).

    Returns
    -------
    GeodesicReport

    Raises
    ------
    ValueError
        Fewer than two layers; no two consecutive layers of equal dimension;
        ``method="gromov"``; a profile that does not match; an exact coupling too large for
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
    _check_trajectory(traj, "geodesic_test")
    if method == "gromov":
        raise ValueError(
            "geodesic_test needs a W2-type method: Gromov–Wasserstein compares each space's "
            "inner distances, not positions, so it has no geodesic path. Use method='auto' "
            "within segments (and traj.project(dim) to analyse across a change of dimension)."
        )
    _check_boot(n_boot, boot_fraction, ci_level)
    if max_samples is not None:
        check_int(max_samples, "max_samples (or None for all samples)", minimum=2)
    mccann_grid = check_int(mccann_grid, "mccann_grid (extra starts of the McCann fit)", minimum=0)
    _check_max_dense_bytes(options)
    notes: list[str] = []
    subsample = None
    work = traj
    if max_samples is not None and traj.n_samples > max_samples:
        work = traj.subsample(max_samples, seed)
        subsample = dict(work.metadata["subsample"])
        notes.append(
            f"analysed a class-stratified subsample of {max_samples} of {traj.n_samples} samples "
            f"(seed {seed}); pass max_samples=None for all of them"
        )
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
    w = work.weights
    fit = _fit_method(w, method)
    fit_options = (
        dict(options)
        if method in ("auto", fit)
        else {k: v for k, v in options.items() if k == "max_dense_bytes"}
    )
    budget = int(options.get("max_dense_bytes", DEFAULT_MAX_DENSE_BYTES))
    # dense float64 (n, n) matrices the exact solver holds: 1.5 (assignment), 2 (network simplex)
    need = work.n_samples**2 * 8 * (1.5 if fit == "assignment" else 2.0)
    if need > budget:
        raise ValueError(
            f"geodesic_test needs exact couplings for OTS and the McCann fit, and n = "
            f"{work.n_samples} needs {need / 2**20:.1f} MiB of dense matrices (over "
            "max_dense_bytes); set max_samples (default 5000) to run on a stratified subsample."
        )
    if profile is None:
        profile = transport_profile(
            work,
            method=method,
            pairs="successive",
            cross="skip",
            seed=seed,
            progress=progress,
            **options,
        )
    else:
        if profile.n_samples != work.n_samples or profile.method != method:
            raise ValueError(
                f"the profile given was computed on {profile.n_samples} samples with method "
                f"{profile.method!r}; this test analyses {work.n_samples} with {method!r}. Pass "
                "a profile of the same samples and method, or none."
            )
    reports = []
    for seg in _progress(segments, progress, "segments"):
        seg_notes: list[str] = []
        steps = []
        for l in seg[:-1]:
            try:
                row = profile.row(l, l + 1)
            except KeyError as err:
                raise ValueError(
                    f"the profile given has no step {work.names[l]!r} -> {work.names[l + 1]!r}; "
                    "compute it with pairs='successive'."
                ) from err
            if row.shortcut:  # an equal-dimension step with a stored shortcut: use mu_l itself
                seg_notes.append(
                    f"step {row.source_name} -> {row.target_name} measured without "
                    "its stored shortcut image, inside the segment's space"
                )
                steps.append(
                    wasserstein(
                        work.layers[l], work.layers[l + 1], a=w, b=w, method=method, **options
                    ).distance
                )
            else:
                steps.append(row.distance)
        layers = [_f64(work.layers[l]) for l in seg]
        end = _exact_solve(
            work.layers[seg[0]], work.layers[seg[-1]], w, fit, fit_options, "geodesic_test"
        )
        if method in ("auto", fit):
            D = end.distance
        else:
            D = wasserstein(
                work.layers[seg[0]], work.layers[seg[-1]], a=w, b=w, method=method, **options
            ).distance
        R, cv, extra = _path_stats(steps, D)
        seg_notes += extra
        if method == "gaussian":
            mc = _mccann_gaussian(
                layers, seg, w, [work.names[i] for i in seg], mccann_grid, progress
            )
        else:
            mc = _mccann_discrete(layers, seg, end, w, fit, fit_options, mccann_grid, progress)
        if not all(mc.converged) and end.cost > 0:
            seg_notes.append("McCann fit stopped at its iteration cap for some layer")
        ls = lss(layers, weights=w)
        if ls.n_undefined:
            seg_notes.append(f"{ls.n_undefined} track(s) never move: no LSS, counted not averaged")
        quantity = profile.row(seg[0], seg[0] + 1).quantity
        reports.append(
            SegmentReport(
                layers=tuple(seg),
                names=tuple(work.names[i] for i in seg),
                dim=work.dims[seg[0]],
                step_lengths=tuple(float(s) for s in steps),
                endpoint_distance=float(D),
                path_ratio=R,
                speed_cv=cv,
                mccann=mc,
                ots=_ots_from_coupling(end, work.layers[seg[0]], work.layers[seg[-1]], w),
                lss=ls,
                ci={},
                methods={
                    "steps": profile.row(seg[0], seg[0] + 1).method,
                    "steps_quantity": quantity,
                    "mccann": mc.method,
                    "ots": end.method,
                },
                notes=tuple(seg_notes),
            )
        )
    boot_size = 0
    if n_boot:
        boot_size = _resampling.boot_size(work.n_samples, boot_fraction)
        reps: list[dict[str, list[float]]] = [{} for _ in segments]
        for bs in _progress(
            _resampling.boot_seeds(seed, n_boot), progress, "subsampling intervals"
        ):
            sub = work.take(work.subsample_indices(boot_size, bs))
            for i, seg in enumerate(segments):
                for key, val in _segment_quick(sub, seg, method, options, fit, fit_options).items():
                    reps[i].setdefault(key, []).append(val)
        new = []
        for rep, vals in zip(reports, reps, strict=True):
            ci = {
                k: c
                for k, v in vals.items()
                if (c := _resampling.percentile_interval(v, ci_level)) is not None
            }
            new.append(dataclasses.replace(rep, ci=ci))
        reports = new
        notes.append(
            f"intervals: {n_boot} subsamples of {boot_size} without replacement (seed {seed}), "
            f"{ci_level:.0%} percentile; statistics of size-{boot_size} samples (W2, OTS and "
            "R are biased by the sample size)"
        )
    return GeodesicReport(
        segments=tuple(reports),
        profile=profile,
        method=method,
        n_samples=work.n_samples,
        n_total=traj.n_samples,
        subsample=subsample,
        n_boot=int(n_boot),
        boot_size=boot_size,
        ci_level=float(ci_level),
        seed=int(seed),
        notes=tuple(notes),
    )


# ============================================================================ comparison
def compare_trajectories(
    a: Trajectory,
    b: Trajectory,
    *,
    method: str = "auto",
    noise_floor: bool = True,
    geodesic: bool = False,
    seed: int = 0,
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
    method : str
        Transport method (see :func:`~otcollapse.transport.wasserstein`).
    noise_floor : bool
    geodesic : bool
        Also run :func:`geodesic_test` on both (``seed`` and ``method`` passed on).
    seed : int
    progress : bool
    **options
        Passed to every solve.

    Returns
    -------
    TrajectoryComparison
    """
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
    w = a.weights
    halves = (
        _resampling.split_halves((a if a.labels is not None else b).labels, a.n_samples, seed)
        if noise_floor
        else None
    )
    rows, not_compared = [], []
    common = min(len(a), len(b))
    for l in _progress(range(common), progress, "layers"):
        xa, xb = a.layers[l], b.layers[l]
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
        res = wasserstein(xa, xb, a=w, b=w, method=method, **options)
        ta = _f64(xa)
        tb = _f64(xb).to(ta.device)
        dist = (ta - tb).norm(dim=1)
        aw = (
            torch.full_like(dist, 1.0 / dist.shape[0])
            if w is None
            else torch.as_tensor(w, dtype=torch.float64, device=dist.device)
        )
        fa = fb = None
        if halves is not None:
            fa = _floor_value(xa, halves, w, method, options)
            fb = _floor_value(xb, halves, w, method, options)
        rows.append(
            LayerComparison(
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
        )
    for t, tag in ((a, "a"), (b, "b")):
        for l in range(common, len(t)):
            not_compared.append(
                {"layer": l, f"name_{tag}": t.names[l], "reason": f"only in trajectory {tag}"}
            )
    prof_a = transport_profile(
        a, method=method, cross="skip", noise_floor=False, seed=seed, **options
    )
    prof_b = transport_profile(
        b, method=method, cross="skip", noise_floor=False, seed=seed, **options
    )
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
    geo_a = geo_b = None
    geo_diffs = []
    if geodesic:
        geo_a = geodesic_test(a, method=method, seed=seed, **options)
        geo_b = geodesic_test(b, method=method, seed=seed, **options)
        segs_b = {s.layers: s for s in geo_b.segments}
        for sa in geo_a.segments:
            sb = segs_b.get(sa.layers)
            if sb is None:
                continue
            geo_diffs.append(
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
    return TrajectoryComparison(
        layers=tuple(rows),
        not_compared=tuple(not_compared),
        profile_a=prof_a,
        profile_b=prof_b,
        step_differences=tuple(diffs),
        geodesic_a=geo_a,
        geodesic_b=geo_b,
        geodesic_differences=tuple(geo_diffs),
    )
