"""The result types of the geodesic analysis: frozen dataclasses with the :class:`Result` mixin
(``to_dict`` records the fields and the derived values in ``_derived``; the tabular results keep
their own ``table`` and markdown ``format_table``)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np

from otcollapse._results import Result
from otcollapse._utils import json_safe


def _fmt(v: float | None, precision: int = 4) -> str:
    return "—" if v is None else f"{v:.{precision}g}"


@dataclasses.dataclass(frozen=True)
class TransportPair(Result):
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


@dataclasses.dataclass(frozen=True)
class TransportProfile(Result):
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

    _derived: ClassVar[tuple[str, ...]] = ("converged",)

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

    def table(self) -> list[dict[str, Any]]:
        """One JSON-safe dict per pair (the rows of :meth:`format_table`)."""
        return [r.to_dict() for r in self.rows]

    def __str__(self) -> str:
        return self.format_table()

    def format_table(self, precision: int = 4) -> str:
        """A markdown table, one row per pair (costs and distances to 6 significant digits, the
        other numbers to ``precision``)."""
        p = precision
        head = (
            "| pair | quantity | cost | distance | paired | efficiency | noise floor | method "
            "| converged | shortcut |"
        )
        lines = [head, "|" + "---|" * 10]
        for r in self.rows:
            ci = "" if r.ci is None else f" [{r.ci[0]:.{p}g}, {r.ci[1]:.{p}g}]"
            lines.append(
                f"| {r.source_name} → {r.target_name} | {r.quantity} | {r.cost:.6g} "
                f"| {r.distance:.6g}{ci} | {_fmt(r.paired, p)} | {_fmt(r.efficiency, p)} "
                f"| {_fmt(r.noise_floor, p)} | {r.method} | {r.converged} | {r.shortcut} |"
            )
        for s, t, why in self.skipped:
            lines.append(f"| {s} → {t} | skipped: {why} |" + " |" * 8)
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class LSSResult(Result):
    r"""Line-shape scores of a set of tracks (Gai & Zhang).

    $$\tilde x_0 = h_0, \quad \tilde x_l = \tilde x_{l-1} + \frac{h_l - h_{l-1}}{\|h_l - h_{l-1}\|},
      \qquad \mathrm{LSS} = \frac{L'}{\|\tilde x_L - \tilde x_0\|} \ge 1,$$

    zero steps skipped and ``L'`` the number of non-zero steps of the track.

    Attributes
    ----------
    values : ndarray, shape (n,)
        Per-sample LSS: ``1`` for a straight track, ``inf`` when the unit steps cancel exactly,
        NaN only for a track with no non-zero step (it has no LSS; counted in
        :attr:`n_undefined`, left out of every summary). ``to_dict`` writes NaN as None and
        infinities as ``"inf"``.
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


@dataclasses.dataclass(frozen=True)
class McCannFit(Result):
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

    _derived: ClassVar[tuple[str, ...]] = ("max_residual", "max_deviation")

    @property
    def max_residual(self) -> float:
        """The largest residual of the segment."""
        return float(np.max(self.residual))

    @property
    def max_deviation(self) -> float:
        """``max_l |t_l - l / L|``."""
        return float(np.max(np.abs(np.asarray(self.t) - np.asarray(self.nominal))))


@dataclasses.dataclass(frozen=True)
class SegmentReport(Result):
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
        ``efficiency``, ``lss_mean``, ``lss_median``.
    replicates : dict str -> tuple of float
        The same statistics on each subsampling replicate, in replicate order (NaN where
        undefined; empty without ``n_boot``). Replicate ``i`` of two trajectories of the same
        samples analysed with the same ``seed`` is the same subsample, so differences between
        them pair replicate by replicate.
    methods : dict str -> str
        The solver behind each statistic.
    notes : tuple of str
    efficiency : float
        The end-to-end transport efficiency, OTS's continuous companion,
        $$E = W_2^2(\mu_0, \mu_L) \,/\, \sum_i a_i \|h_L(x_i) - h_0(x_i)\|^2 \in [0, 1],$$
        1 when the network's own map from the first to the last layer is optimal (OTS = 1),
        and close to 1 when it costs little more than the optimal one even where OTS is 0;
        NaN when the paired cost is 0.
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
    #: W2^2(first, last) / paired cost(first, last): OTS's continuous companion (1: the
    #: network's end-to-end map is optimal; NaN when the paired cost is 0)
    efficiency: float = math.nan
    replicates: dict[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class GeodesicReport(Result):
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
    gauge : GaugeAlignment or None
        The alignment of successive layers the statistics were computed after (``gauge=``), or
        None for the raw layers.
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
    gauge: Any = None

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

    def format_table(self, precision: int = 4) -> str:
        """A markdown table, one row per segment (numbers to ``precision`` significant digits,
        the McCann columns to 3)."""
        lines = [
            "| segment | R | speed CV | max McCann residual | max abs(t_l - l/L) | OTS "
            "| LSS mean | LSS median [q25, q75] | no LSS |",
            "|" + "---|" * 9,
        ]
        lines += [_segment_line(s, precision) for s in self.segments]
        return "\n".join(lines)


def _segment_line(s: SegmentReport, p: int) -> str:
    """One segment's row of :meth:`GeodesicReport.format_table`, intervals beside the values."""

    def with_ci(key: str, val: float) -> str:
        c = s.ci.get(key)
        return f"{val:.{p}g}" + ("" if c is None else f" [{c[0]:.{p}g}, {c[1]:.{p}g}]")

    ls = s.lss
    med = "—" if ls.median is None else f"{ls.median:.{p}g} [{ls.q25:.{p}g}, {ls.q75:.{p}g}]"
    mean = "—" if ls.mean is None else with_ci("lss_mean", ls.mean)
    return (
        f"| {s.names[0]} … {s.names[-1]} | {with_ci('path_ratio', s.path_ratio)} "
        f"| {with_ci('speed_cv', s.speed_cv)} | {s.mccann.max_residual:.3g} "
        f"| {s.mccann.max_deviation:.3g} | {with_ci('ots', s.ots)} | {mean} | {med} "
        f"| {ls.n_undefined} |"
    )


@dataclasses.dataclass(frozen=True)
class LayerComparison(Result):
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


@dataclasses.dataclass(frozen=True)
class TrajectoryComparison(Result):
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

    def table(self) -> list[dict[str, Any]]:
        """One JSON-safe dict per compared layer."""
        return [c.to_dict() for c in self.layers]

    def __str__(self) -> str:
        return self.format_table()

    def format_table(self, precision: int = 4) -> str:
        """A markdown table, one row per compared layer (distances to 6 significant digits, the
        noise floors to ``precision``)."""
        lines = [
            "| layer | a | b | distance | paired rms | paired mean | floor a | floor b |",
            "|" + "---|" * 8,
        ]
        for c in self.layers:
            lines.append(
                f"| {c.layer} | {c.name_a} | {c.name_b} | {c.distance:.6g} | {c.paired_rms:.6g} "
                f"| {c.paired_mean:.6g} | {_fmt(c.noise_floor_a, precision)} "
                f"| {_fmt(c.noise_floor_b, precision)} |"
            )
        return "\n".join(lines)
