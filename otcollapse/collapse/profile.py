r"""Collapse over depth: the metrics at every layer and the progressive-feedforward-collapse
(PFC) statistics.

The PFC conjecture (Wang, Gai & Zhang): collapse metrics do not increase with depth. Per metric,
over the layers where it is defined: Kendall's $\tau_b$ of the values against the layer index, the
fraction of non-increasing steps (``v[l+1] <= v[l]`` up to :data:`MONOTONE_RTOL`) and whether every
step is non-increasing. He & Su's law of data separation: the separation fuzziness
$D = \operatorname{Tr}(\Sigma_W\Sigma_B^\dagger)$ decays geometrically with depth, fitted as

$$\log D_l \approx \alpha + \beta\,l \quad\text{(least squares over the layers with } D_l > 0),
  \qquad \mathrm{rate} = e^\beta .$$

References
----------
Wang, Gai & Zhang, "Progressive Feedforward Collapse of ResNet Training", arXiv:2405.00985.
He & Su, "A law of data separation in deep learning", PNAS 2023.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from scipy import stats
from tqdm import tqdm

from otcollapse._results import Result
from otcollapse.collapse.metrics import (
    LayerCollapse,
    _check_metrics,
    _compute,
    _head_metrics,
    _Request,
)
from otcollapse.collapse.statistics import (
    DEFAULT_RTOL,
    _block_size,
    _check_head,
    _check_rtol,
    _prepare,
)
from otcollapse.measures import Trajectory

__all__ = [
    "MONOTONE_RTOL",
    "CollapseProfile",
    "DecayFit",
    "PFCStatistic",
    "collapse_profile",
]

#: a step counts as non-increasing when v[l+1] <= v[l] + MONOTONE_RTOL * max(|v[l]|, |v[l+1]|)
MONOTONE_RTOL = 1e-10


@dataclasses.dataclass(frozen=True)
class PFCStatistic(Result):
    r"""Progressive-feedforward-collapse statistics of one metric over depth.

    Attributes
    ----------
    metric : str
    layers : tuple of int
        Layers where the metric is defined (finite); the statistics use these only.
    kendall_tau : float or None
        Kendall's $\tau_b$ of the values against the layer index (``scipy.stats.kendalltau``);
        $-1$ for strictly decreasing. None when fewer than two layers or the values are constant
        (up to ``MONOTONE_RTOL`` relative to the largest).
    p_value : float or None
        Its two-sided p-value.
    frac_non_increasing : float or None
        Fraction of successive steps (between the defined layers) with
        ``v[l+1] <= v[l] + MONOTONE_RTOL * max(|v[l]|, |v[l+1]|)``.
    monotone : bool or None
        Every step non-increasing (the PFC conjecture holds for this metric).
    """

    metric: str
    layers: tuple[int, ...]
    kendall_tau: float | None
    p_value: float | None
    frac_non_increasing: float | None
    monotone: bool | None


@dataclasses.dataclass(frozen=True)
class DecayFit(Result):
    r"""Geometric decay of He–Su's $D$ over depth: $\log D_l \approx \alpha + \beta\, l$.

    Attributes
    ----------
    rate : float or None
        $e^\beta$: the per-layer factor, $D_l \approx D_{l_0}\,\mathrm{rate}^{\,l - l_0}$
        (below 1 for decay).
    slope, intercept : float or None
        $\beta$ and $\alpha$ of the least-squares line of $\log D$ against the layer index.
    r2 : float or None
        Coefficient of determination of the fit.
    layers : tuple of int
        The layers used: those where $D$ is finite and $> 0$.
    excluded : tuple of int
        The other layers.
    note : str
    """

    rate: float | None
    slope: float | None
    intercept: float | None
    r2: float | None
    layers: tuple[int, ...]
    excluded: tuple[int, ...]
    note: str = ""


def _pfc(metric: str, values: np.ndarray) -> PFCStatistic:
    ok = np.isfinite(values)
    layers = tuple(int(i) for i in np.flatnonzero(ok))
    v = values[ok]
    if v.shape[0] < 2:
        return PFCStatistic(metric, layers, None, None, None, None)
    steps = v[1:] <= v[:-1] + MONOTONE_RTOL * np.maximum(np.abs(v[1:]), np.abs(v[:-1]))
    tau = p = None
    if np.ptp(v) > MONOTONE_RTOL * np.max(np.abs(v)):  # else constant up to rounding: no tau
        res = stats.kendalltau(np.asarray(layers, dtype=np.float64), v)
        tau, p = float(res.statistic), float(res.pvalue)
    return PFCStatistic(metric, layers, tau, p, float(steps.mean()), bool(steps.all()))


def _decay(values: np.ndarray) -> DecayFit:
    ok = np.isfinite(values) & (values > 0)  # a collapsed layer (D = 0) has no logarithm
    layers = tuple(int(i) for i in np.flatnonzero(ok))
    excluded = tuple(int(i) for i in np.flatnonzero(~ok))
    if len(layers) < 2:
        return DecayFit(
            None, None, None, None, layers, excluded, "fewer than two layers with D > 0"
        )
    t = np.asarray(layers, dtype=np.float64)
    logd = np.log(values[ok])
    A = np.stack([np.ones_like(t), t], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(A, logd, rcond=None)
    fit = A @ np.array([alpha, beta])
    ss_tot = float(np.sum((logd - logd.mean()) ** 2))
    r2 = 1.0 - float(np.sum((logd - fit) ** 2)) / ss_tot if ss_tot > 0 else 1.0
    return DecayFit(
        float(math.exp(beta)), float(beta), float(alpha), r2, layers, excluded, "least squares"
    )


@dataclasses.dataclass(frozen=True, eq=False)
class CollapseProfile(Result):
    """Collapse metrics at every layer of a trajectory, with PFC statistics over depth.

    Attributes
    ----------
    layers : tuple of LayerCollapse
        One per layer, in depth order.
    metrics : tuple of str
        The metrics computed (table columns).
    pfc : dict str -> PFCStatistic
        Per metric defined on at least one layer: Kendall tau against depth, fraction of
        non-increasing steps, monotone or not.
    decay : DecayFit or None
        Geometric decay of ``he_su_d`` over depth (None when it was not computed).
    """

    #: ``to_dict`` records the conventions beside the fields
    _derived: ClassVar[tuple[str, ...]] = ("conventions",)

    layers: tuple[LayerCollapse, ...]
    metrics: tuple[str, ...]
    pfc: dict[str, PFCStatistic]
    decay: DecayFit | None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(lc.name for lc in self.layers)

    @property
    def conventions(self) -> dict[str, Any]:
        """The conventions the values follow (global mean, scatter matrices, cutoffs)."""
        return {
            "global_mean": "unweighted mean of the class means",
            "sigma_w": "sum_i a_i (h_i - m_y)(h_i - m_y)^T, a_i = 1/N unless weighted",
            "sigma_b": "(1/K) sum_k (m_k - m_G)(m_k - m_G)^T",
            "pinv_rtol": self.layers[0].rtol,
            "monotone_rtol": MONOTONE_RTOL,
        }

    def values(self, metric: str) -> np.ndarray:
        """One metric over depth: NaN where it is undefined or does not apply."""
        if metric not in self.metrics:
            raise ValueError(f"metric {metric!r} was not computed; have {list(self.metrics)}.")
        return np.array([lc.metrics.get(metric, float("nan")) for lc in self.layers])

    def table(self) -> list[dict[str, Any]]:
        """One dict per layer: ``layer``, ``name`` and every metric (None where it does not apply,
        NaN where undefined; the layer's ``notes`` say why)."""
        rows = []
        for i, lc in enumerate(self.layers):
            row: dict[str, Any] = {"layer": i, "name": lc.name}
            row.update({m: lc.metrics.get(m) for m in self.metrics})
            rows.append(row)
        return rows

    def format_table(self, precision: int = 4) -> str:
        """The table as aligned text (``-`` where a metric does not apply); the markdown of the
        other results would bury the depth trend this table is read for in ``|`` columns."""
        head = ["layer", "name", *self.metrics]
        body = [
            [str(r["layer"]), str(r["name"])]
            + ["-" if r[m] is None else f"{r[m]:.{precision}g}" for m in self.metrics]
            for r in self.table()
        ]
        widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
        rows = [head, *body]
        lines = ["  ".join(c.rjust(wd) for c, wd in zip(row, widths, strict=True)) for row in rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_table()


def _check_profile_input(
    traj: Any, classifier: Any, metrics: Sequence[str] | None, rtol: Any, block_size: Any
) -> tuple[tuple[str, ...], float, Any]:
    """The chosen metrics, the cutoff and the classifier to use, or the error a bad input
    deserves."""
    if not isinstance(traj, Trajectory):
        raise ValueError(
            f"collapse_profile needs a Trajectory; got {type(traj).__name__}. Build one with "
            "Trajectory.from_arrays(layers, labels=...), or use layer_collapse on one array."
        )
    if traj.labels is None:
        raise ValueError(
            "collapse metrics need class labels; this trajectory has none. Pass labels= to "
            "Trajectory.from_arrays."
        )
    chosen = _check_metrics(metrics)
    rtol = _check_rtol(rtol)
    if block_size is not None:
        _block_size(block_size, 1)
    head_given = classifier if classifier is not None else traj.classifier
    if metrics is not None:
        if "nc3" in chosen and head_given is None:
            raise ValueError(
                "nc3 needs the classifier: pass classifier=(W, b) or store it in the trajectory."
            )
        if "nc4_mismatch" in chosen and head_given is None and traj.logits is None:
            raise ValueError("nc4_mismatch needs a classifier (W, b) or the trajectory's logits.")
    return chosen, rtol, head_given


def collapse_profile(
    traj: Trajectory,
    *,
    classifier: Any = None,
    metrics: Sequence[str] | None = None,
    rtol: float = DEFAULT_RTOL,
    block_size: int | None = None,
    progress: bool = False,
) -> CollapseProfile:
    r"""Collapse metrics at every layer and their progressive-feedforward-collapse statistics.

    For each layer ``l`` the metrics of :func:`layer_collapse`; then, per metric, Kendall's
    $\tau$ against depth, the fraction of non-increasing steps and whether every step is
    non-increasing (the PFC conjecture: collapse metrics do not increase with depth), and the
    geometric decay rate of He–Su's $D$,

    $$\log D_l \approx \alpha + \beta\,l \ \text{(least squares over the layers with } D_l > 0),
      \qquad \mathrm{rate} = e^\beta .$$

    ``nc3`` and ``nc4_mismatch`` are computed at the last layer only, where the classifier acts.

    Parameters
    ----------
    traj : Trajectory
        Needs labels. Sample weights, when present, are used as the masses $a_i$.
    classifier : ndarray (K, d_L) or pair (W, b), optional
        Defaults to ``traj.classifier``; without one, ``nc4_mismatch`` falls back to
        ``traj.logits``.
    metrics : sequence of str, optional
        Names from :data:`METRICS` (default all that apply). Leave out
        ``w2sq_to_class_means`` for very large ``n`` (it solves an ``n x K`` exact problem per
        layer).
    rtol : float
        Pseudo-inverse cutoff for NC1 and D (relative to the largest eigenvalue of $\Sigma_B$).
    block_size : int, optional
        Rows per streamed block.
    progress : bool
        Show a progress bar over the layers (on a terminal only).

    Returns
    -------
    CollapseProfile

    Examples
    --------
    >>> import numpy as np
    >>> from otcollapse.constructions import transparent_model
    >>> g = np.random.default_rng(0)
    >>> y = np.repeat(np.arange(3), 20)
    >>> traj = transparent_model(g.normal(size=(60, 6)), y, n_layers=4)
    >>> prof = collapse_profile(traj, metrics=["nc1_tilde", "tr_sigma_w"])
    >>> prof.pfc["tr_sigma_w"].monotone
    True

    References
    ----------
    Wang, Gai & Zhang, "Progressive Feedforward Collapse of ResNet Training"; He & Su, PNAS 2023.
    """
    chosen, rtol, head_given = _check_profile_input(traj, classifier, metrics, rtol, block_size)
    head_only = _head_metrics(chosen)
    last = len(traj) - 1
    bar = tqdm(
        range(len(traj)),
        desc="collapse",
        disable=not (progress and sys.stderr.isatty()),
        leave=False,
    )
    results = []
    for l in bar:
        x, raw, classes, idx, a = _prepare(traj.layers[l], traj.labels, traj.weights)
        head = lg = None
        if l == last:
            head, lg = _check_head(raw, traj.dims[l], traj.n_samples, head_given, traj.logits)
        request = _Request(
            metrics=tuple(m for m in chosen if m not in head_only or l == last),
            rtol=rtol,
            block=_block_size(block_size, traj.dims[l]),
            name=traj.names[l],
            head=head,
            logits=lg,
        )
        results.append(_compute(x, classes, idx, a, request))
    computed = tuple(m for m in chosen if any(m in r.metrics for r in results))
    prof = CollapseProfile(tuple(results), computed, {}, None)
    pfc = {m: _pfc(m, prof.values(m)) for m in computed if m not in head_only}
    decay = _decay(prof.values("he_su_d")) if "he_su_d" in computed else None
    return dataclasses.replace(prof, pfc=pfc, decay=decay)
