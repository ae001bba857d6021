"""Figures of the analyses: collapse over depth and epochs, transport steps, geodesic fits, tracks.

Every function takes result objects (or a mapping ``{label: result}`` to draw several models side
by side, e.g. ``{"ResNet": ..., "plain": ...}``), draws on a fresh
:class:`matplotlib.figure.Figure` (no pyplot state, so it is safe in scripts, servers and
notebooks) or on the ``ax`` given, and returns the figure. Save with ``fig.savefig(path)``.

Axes carry units: squared distances are in the squared units of the features (the full squared
Euclidean cost of the documentation's Concepts page, W2² = min_π Σ π_ij ‖x_i − y_j‖²), distances in their units.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from otcollapse.collapse import CollapseProfile
from otcollapse.geodesic import GeodesicReport, TransportProfile
from otcollapse.measures import Trajectory

if TYPE_CHECKING:
    import xarray as xr

__all__ = [
    "METRIC_LABELS",
    "plot_collapse_depth",
    "plot_collapse_epochs",
    "plot_layer_pca",
    "plot_mccann_fit",
    "plot_mufm_calibration",
    "plot_mufm_profile",
    "plot_ots_lss",
    "plot_sweep",
    "plot_transport_steps",
    "sweep_last_epochs",
    "sweep_statistics",
]

#: How each collapse metric is written on an axis.
METRIC_LABELS = {
    "nc1": r"NC1 $=\frac{1}{K}\mathrm{Tr}(\Sigma_W\Sigma_B^\dagger)$",
    "nc1_tilde": r"$\widetilde{\mathrm{NC1}} = \mathrm{Tr}\,\Sigma_W / \mathrm{Tr}\,\Sigma_B$",
    "cdnv": "CDNV (mean over class pairs)",
    "he_su_d": r"He–Su $D = \mathrm{Tr}(\Sigma_W\Sigma_B^\dagger)$",
    "tr_sigma_w": r"$\mathrm{Tr}\,\Sigma_W$ (squared feature units)",
    "tr_sigma_b": r"$\mathrm{Tr}\,\Sigma_B$ (squared feature units)",
    "nc2_etf_distance": "NC2: distance to a simplex ETF",
    "nc2_equinorm": "NC2 equinorm (std/mean of class-mean norms)",
    "nc4_ncc_error": "NC4: nearest-class-centre error",
    "w2sq_to_class_means": "W2² to the class means (squared feature units)",
}

_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def _named(obj: Any, kind: type | tuple[type, ...]) -> dict[str, Any]:
    """``obj`` as ``{label: result}``; a single result gets the label ``""``."""
    if isinstance(obj, kind):
        return {"": obj}
    if isinstance(obj, Mapping) and obj and all(isinstance(v, kind) for v in obj.values()):
        return dict(obj)
    names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
    raise ValueError(f"expected a {names} or a non-empty mapping label -> {names}; got {obj!r}.")


def _axes(ax: Any, ncols: int = 1, width: float = 6.0) -> tuple[Figure, Any]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=(width * ncols, 4.0), layout="constrained")
    axs = fig.subplots(1, ncols)
    return fig, axs


def _label(name: str, extra: str) -> str:
    return f"{name}: {extra}" if name else extra


def plot_collapse_depth(
    profiles: CollapseProfile | Mapping[str, CollapseProfile],
    metric: str = "nc1",
    *,
    ax: Any = None,
) -> Figure:
    """One collapse metric over depth (log scale), one line per model, PFC marked.

    The legend gives each model's PFC statistics for the metric (Kendall τ against depth and the
    number of non-increasing steps); a step where the metric *increases* (a violation of the
    progressive-feedforward-collapse conjecture) is marked with a red ×. Non-positive values
    (exact collapse) cannot be drawn on a log scale and are left out, which the title says.

    Reference: S. Wang, K. Gai, S. Zhang, "Progressive Feedforward Collapse of ResNet Training".
    """
    profs = _named(profiles, CollapseProfile)
    fig, ax = _axes(ax)
    hidden = 0
    marked = False
    for i, (name, prof) in enumerate(profs.items()):
        v = prof.values(metric)
        x = np.arange(len(v))
        ok = np.isfinite(v) & (v > 0)
        hidden += int(np.sum(np.isfinite(v) & (v <= 0)))
        s = prof.pfc.get(metric)
        extra = "PFC n/a"
        if s is not None and s.kendall_tau is not None:
            steps = len(s.layers) - 1
            n_ok = round((s.frac_non_increasing or 0.0) * steps)
            extra = f"τ = {s.kendall_tau:+.2f}, {n_ok}/{steps} steps non-increasing"
        colour = _COLOURS[i % len(_COLOURS)]
        ax.plot(x[ok], v[ok], "o-", color=colour, label=_label(name, extra))
        up = [b for a, b in itertools.pairwise(x) if ok[a] and ok[b] and v[b] > v[a]]
        if up:
            ax.plot(up, v[up], "x", color="red", ms=11, mew=2.5, zorder=5)
            marked = True
    if marked:
        ax.plot([], [], "x", color="red", ms=9, mew=2.5, label="increase over the previous layer")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer l (0 = input of the first block)")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    title = f"{metric} over depth"
    if hidden:
        title += f" ({hidden} exactly-collapsed value(s) not drawn)"
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    return fig


def plot_collapse_epochs(
    series: Mapping[str, Mapping[int, CollapseProfile]],
    metric: str = "nc1",
    *,
    layers: Sequence[int] | None = None,
    ax: Any = None,
) -> Figure:
    """One collapse metric over training epochs, for chosen layers of each model (log scale).

    ``series`` maps a model label to ``{epoch: CollapseProfile}`` (profiles of the trajectories
    captured during training). ``layers`` defaults to the first and the last layer; line style
    tells the layer, colour the model.
    """
    if not isinstance(series, Mapping) or not series:
        raise ValueError("series must map a model label to {epoch: CollapseProfile}.")
    fig, ax = _axes(ax)
    styles = ("-", "--", ":", "-.")
    for i, (name, by_epoch) in enumerate(series.items()):
        if not by_epoch:
            raise ValueError(f"no epochs for {name!r}.")
        epochs = sorted(by_epoch)
        first = by_epoch[epochs[0]]
        n_layers = len(first.layers)
        chosen = [0, n_layers - 1] if layers is None else list(layers)
        for j, layer in enumerate(chosen):
            v = np.array([by_epoch[e].values(metric)[layer] for e in epochs])
            ok = np.isfinite(v) & (v > 0)
            lname = first.layers[layer].name
            ax.plot(
                np.array(epochs)[ok],
                v[ok],
                styles[j % len(styles)],
                marker="o",
                ms=3,
                color=_COLOURS[i % len(_COLOURS)],
                label=_label(name, f"layer {lname}"),
            )
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (0 = initialisation)")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title(f"{metric} over training")
    ax.legend(fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    return fig


def plot_transport_steps(profiles: TransportProfile | Mapping[str, TransportProfile]) -> Figure:
    """W2² of each step and the network's paired cost beside it, and the efficiency W2²/paired.

    Left: per step l → l+1, the squared Wasserstein distance W2²(μ_l, μ_{l+1}) (solid), the paired
    (kinetic) cost (1/n) Σ_i ‖h_{l+1,i} − h_{l,i}‖² (dashed, ≥ W2²) and the split-half noise
    floor of the target layer (dotted, when computed). Right: the efficiency W2²/paired ∈ [0, 1]
    (1: the block moves the mass optimally).
    """
    profs = _named(profiles, TransportProfile)
    fig, (left, right) = _axes(None, ncols=2)
    for i, (name, prof) in enumerate(profs.items()):
        rows = [r for r in prof.rows if r.target == r.source + 1]
        if not rows:
            raise ValueError(f"profile {name!r} has no successive pairs to draw.")
        x = np.array([r.source for r in rows]) + 0.5
        c = _COLOURS[i % len(_COLOURS)]
        left.plot(x, [r.cost for r in rows], "o-", color=c, label=_label(name, "W2²"))
        paired = np.array([np.nan if r.paired is None else r.paired for r in rows])
        if np.isfinite(paired).any():
            left.plot(x, paired, "s--", color=c, alpha=0.7, label=_label(name, "paired cost"))
        floor = np.array([np.nan if r.noise_floor is None else r.noise_floor for r in rows])
        if np.isfinite(floor).any():
            left.plot(x, floor**2, ":", color=c, alpha=0.7, label=_label(name, "noise floor²"))
        eff = np.array([np.nan if r.efficiency is None else r.efficiency for r in rows])
        right.plot(x, eff, "o-", color=c, label=name or "efficiency")
    left.set_yscale("log")
    left.set_xlabel("step l → l+1 (drawn at l + ½)")
    left.set_ylabel("squared distance (squared feature units)")
    left.set_title("Step lengths: W2² and the paired cost")
    left.legend(fontsize="small")
    left.grid(True, which="both", alpha=0.3)
    right.set_ylim(0, 1.05)
    right.axhline(1.0, color="grey", lw=0.8)
    _finish(
        right,
        "step l → l+1 (drawn at l + ½)",
        "efficiency W2² / paired cost",
        "Transport efficiency (1 = optimal map)",
    )
    return fig


def _finish(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, title, a small legend and a light grid: the finish every panel here shares."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(True, alpha=0.3)


def plot_mccann_fit(
    reports: GeodesicReport | Mapping[str, GeodesicReport],
    *,
    segment: int = 0,
    ax: Any = None,
) -> Figure:
    """Fitted McCann time t_l against l/L; on a constant-speed geodesic the points lie on t = l/L.

    t_l = argmin_t W2(μ_l, μ_t) with μ_t = ((1−t)Id + tT)_#μ_0 the displacement interpolation
    between the segment's ends. The legend gives each model's path ratio
    R = Σ W2(μ_l, μ_{l+1}) / W2(μ_0, μ_L) (1 on a geodesic) and the largest residual.
    """
    reps = _named(reports, GeodesicReport)
    fig, ax = _axes(ax)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, label="constant-speed geodesic (t = l/L)")
    for i, (name, rep) in enumerate(reps.items()):
        if not 0 <= segment < len(rep.segments):
            raise ValueError(f"{name!r} has {len(rep.segments)} segment(s); no segment {segment}.")
        s = rep.segments[segment]
        extra = f"R = {s.path_ratio:.3f}, max residual {s.mccann.max_residual:.3f}"
        ax.plot(
            s.mccann.nominal,
            s.mccann.t,
            "o-",
            color=_COLOURS[i % len(_COLOURS)],
            label=_label(name, extra),
        )
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.05, 1.05)
    _finish(
        ax,
        "nominal time l / L",
        "fitted McCann time $t_l$",
        "Layers on the Wasserstein geodesic between the ends",
    )
    return fig


def plot_ots_lss(
    reports: GeodesicReport | Mapping[str, GeodesicReport], *, segment: int = 0
) -> Figure:
    """Gai & Zhang's scores side by side: OTS (bars) and the per-sample LSS (histograms).

    OTS = fraction of samples the optimal assignment from inputs to outputs sends to their own
    output (1 for an optimal-transport map); LSS = L / ‖x̃_L − x̃_0‖ ≥ 1 per sample (1 for a
    straight track). Published reference: on MNIST a ResNet with L2 regularisation gave LSS 1.12
    and OTS 0.96 (Gai & Zhang).
    """
    reps = _named(reports, GeodesicReport)
    fig, (left, right) = _axes(None, ncols=2, width=5.0)
    names = list(reps)
    segs = []
    for name in names:
        if not 0 <= segment < len(reps[name].segments):
            raise ValueError(f"{name!r} has no segment {segment}.")
        segs.append(reps[name].segments[segment])
    colours = [_COLOURS[i % len(_COLOURS)] for i in range(len(names))]
    left.bar([n or "model" for n in names], [s.ots for s in segs], color=colours)
    for j, s in enumerate(segs):
        left.text(j, s.ots, f"{s.ots:.3f}", ha="center", va="bottom")
    left.set_ylim(0, 1.1)
    left.set_xlabel("model")
    left.set_ylabel("OTS (fraction of samples)")
    left.set_title("Optimal-transport score")
    vals = [np.asarray(s.lss.values, dtype=float) for s in segs]
    finite = [v[np.isfinite(v)] for v in vals]
    top = max((float(np.quantile(v, 0.99)) for v in finite if v.size), default=2.0)
    bins = np.linspace(1.0, max(top, 1.05), 40)
    for j, (name, v, s) in enumerate(zip(names, finite, segs, strict=True)):
        mean = "—" if s.lss.mean is None else f"{s.lss.mean:.3f}"
        right.hist(
            np.clip(v, 1.0, bins[-1]),
            bins=bins,
            alpha=0.55,
            color=colours[j],
            label=_label(name, f"mean {mean}"),
        )
    right.set_xlabel("LSS (1 = straight track; values above the 99% quantile clipped)")
    right.set_ylabel("samples")
    right.set_title("Line-shape score per sample")
    right.legend(fontsize="small")
    return fig


def plot_layer_pca(
    traj: Trajectory,
    *,
    layers: Sequence[int] | None = None,
    n_tracks: int = 30,
    max_points: int = 2000,
    seed: int = 0,
) -> Figure:
    """2-D views of the layer measures, coloured by class, with the tracks of a few samples.

    All shown layers of one segment (equal dimension) are projected on the same two principal
    axes, those of the pooled shown layers, so positions are comparable across panels; the tracks
    (grey lines) follow ``n_tracks`` random samples through the shown layers. Layers of another
    dimension than the first shown one are rejected: project the trajectory first
    (``traj.project``).
    """
    L = len(traj)
    chosen = list(layers) if layers is not None else sorted({0, L // 2, L - 1})
    if not chosen or any(not -L <= i < L for i in chosen):
        raise ValueError(f"layers must be indices into the {L} layers; got {chosen}.")
    chosen = [i % L for i in chosen]
    dims = {int(traj[i].dim) for i in chosen}
    if len(dims) != 1:
        raise ValueError(
            f"the chosen layers have dimensions {sorted(dims)}; draw one segment at a time "
            "or bring them to one dimension with traj.project(dim)."
        )
    gen = np.random.default_rng(seed)
    n = traj.n_samples
    shown = np.sort(gen.choice(n, size=min(n, max_points), replace=False))
    feats = [np.asarray(traj[i].numpy()[shown], dtype=float) for i in chosen]
    pooled = np.concatenate(feats)
    centre = pooled.mean(0)
    _, _, vt = np.linalg.svd(pooled - centre, full_matrices=False)
    axes2 = vt[:2].T
    coords = [(f - centre) @ axes2 for f in feats]
    labels = None if traj.labels is None else np.asarray(traj.labels)[shown]
    fig = Figure(figsize=(3.6 * len(chosen), 3.8), layout="constrained")
    axs = np.atleast_1d(fig.subplots(1, len(chosen), sharex=True, sharey=True))
    tracks = gen.choice(len(shown), size=min(n_tracks, len(shown)), replace=False)
    path = np.stack([c[tracks] for c in coords], axis=1)  # (tracks, layers, 2)
    for j, (ax, c, i) in enumerate(zip(axs, coords, chosen, strict=True)):
        sc = ax.scatter(c[:, 0], c[:, 1], c=labels, cmap="tab10", s=6, alpha=0.7)
        for p in path:
            ax.plot(p[: j + 1, 0], p[: j + 1, 1], color="grey", lw=0.6, alpha=0.8)
        # the index every other figure and table uses, and the module's name when it has one
        name = traj.names[i]
        ax.set_title(f"layer {i}" if name == str(i) else f"layer {i} ({name})")
        ax.set_xlabel("PC 1 (feature units)")
        if j == 0:
            ax.set_ylabel("PC 2 (feature units)")
    if labels is not None:
        handles, names = sc.legend_elements(num=None)
        fig.legend(handles, [f"class {k}" for k in names], loc="outside right", fontsize="small")
    fig.suptitle(
        f"Layer measures on the pooled principal axes; grey: {len(tracks)} sample tracks "
        "up to each layer"
    )
    return fig


def plot_mufm_calibration(
    calibration: Any, metric: str = "nc1", *, network: Trajectory | None = None
) -> Figure:
    """The MUFM fitted to a network: discrepancy over λ_OT, collapse profiles, features.

    Left: the calibration discrepancy D(λ_OT) over the grid (and the refinement), with the chosen
    λ_OT marked. Middle: ``metric`` over depth for the network segment and the fitted MUFM.
    Right (when the calibrated ``network`` trajectory is given): the network's last-layer
    features and the fitted MUFM's last layer, on the principal axes of the network's, coloured
    by class. ``calibration`` is an :class:`otcollapse.MUFMCalibration`.
    """
    grid = [g for g in calibration.grid if g.get("discrepancy") is not None]
    grid += [g for g in calibration.refinement if g.get("discrepancy") is not None]
    if not grid:
        raise ValueError("the calibration has no evaluated grid point to draw.")
    ncols = 3 if network is not None else 2
    fig, axs = _axes(None, ncols=ncols, width=5.0)
    left, mid = axs[0], axs[1]
    lam = np.array([float(g["lambda_ot"]) for g in grid])
    dis = np.array([float(g["discrepancy"]) for g in grid])
    order = np.argsort(lam)
    pos = lam[order] > 0
    left.plot(lam[order][pos], dis[order][pos], "o-", label="MUFM fits")
    left.plot(
        [calibration.lambda_ot],
        [calibration.value],
        "*",
        color="red",
        ms=14,
        label=f"chosen λ_OT = {calibration.lambda_ot:.3g}",
    )
    left.set_xscale("log")
    left.set_xlabel("λ_OT (transport regulariser)")
    left.set_ylabel(f"discrepancy D ({calibration.discrepancy})")
    left.set_title("MUFM vs network over λ_OT")
    left.legend(fontsize="small")
    left.grid(True, which="both", alpha=0.3)
    plot_collapse_depth(
        {"network": calibration.network_profile, "fitted MUFM": calibration.mufm_profile},
        metric,
        ax=mid,
    )
    mid.set_title(f"{metric} over depth: network and fitted MUFM")
    if network is not None:
        _last_layers(axs[2], calibration, network)
        axs[2].set_title("Last-layer features: network (o) and MUFM (▲)")
    return fig


def _last_layers(ax: Any, calibration: Any, network: Trajectory) -> None:
    """The network's last layer of the fitted segment and the fitted MUFM's, on the principal
    axes of the network's (feature units), coloured by class."""
    net = np.asarray(network[calibration.layer_range[1]].numpy(), dtype=float)
    mufm = np.asarray(calibration.solution.trajectory[-1].numpy(), dtype=float)
    if net.shape != mufm.shape:
        raise ValueError(
            f"network last layer {net.shape} and MUFM last layer {mufm.shape} differ: pass "
            "the trajectory the calibration was fitted on."
        )
    centre = net.mean(0)
    _, _, vt = np.linalg.svd(net - centre, full_matrices=False)
    labels = None if network.labels is None else np.asarray(network.labels)
    for feats, marker, name in ((net, "o", "network"), (mufm, "^", "fitted MUFM")):
        c = (feats - centre) @ vt[:2].T
        ax.scatter(
            c[:, 0], c[:, 1], c=labels, cmap="tab10", s=10, marker=marker, alpha=0.6, label=name
        )
    ax.set_xlabel("PC 1 of the network's last layer (feature units)")
    ax.set_ylabel("PC 2 (feature units)")
    ax.legend(fontsize="small")


def plot_mufm_profile(calibration: Any, network: Trajectory) -> Figure:
    r"""The MUFM fitted jointly in shape and scale (:func:`otcollapse.calibrate_mufm_profile`)
    beside the network it was fitted to.

    Left: NC1 at every step $l = 1..L$ of the segment, network and fitted MUFM (log scale).
    Middle: the normalised step costs $\tilde c_l = W_2^2(\mu_{l-1}, \mu_l) / M_L$ of both.
    Right: the network's last-layer features and the fitted MUFM's last layer on the same axes
    (the principal axes of the network's, in feature units), coloured by class: a model that
    matches only a scale-free ratio shows here as a cloud of another size. ``network`` is the
    trajectory the calibration was fitted on.
    """
    rows = calibration.residuals
    if not rows:
        raise ValueError("the calibration has no residuals to draw.")
    fig, (left, mid, right) = _axes(None, ncols=3, width=5.0)
    layers = [r["network_layer"] if "network_layer" in r else r["layer"] for r in rows]
    for ax, key, title in (
        (left, "nc1", "NC1 per layer"),
        (mid, "cost", "step cost W2² / M_L"),
    ):
        ax.plot(layers, [r[f"{key}_network"] for r in rows], "o-", label="network")
        ax.plot(layers, [r[f"{key}_mufm"] for r in rows], "^--", label="fitted MUFM")
        ax.set_yscale("log")
        ax.set_xlabel("layer (index in the network)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    _last_layers(right, calibration, network)
    right.set_title(
        f"Last layers (o network, ▲ MUFM), W2 rel. {calibration.match['w2_relative']:.3g}"
    )
    return fig


# ---------------------------------------------------------------------------- sweeps
#: dimensions a metric plotted over a sweep may have (a per-layer or per-step metric: select one)
_SWEEP_DIMS = frozenset({"cell", "seed", "net", "epoch"})


def _sweep_metric(ds: Any, metric: str) -> Any:
    """``ds[metric]``, checked to be a sweep variable over (cell, seed[, net][, epoch])."""
    if "cell" not in ds.dims or "seed" not in ds.dims:
        raise ValueError(
            "expected the Dataset of a sweep (dimensions cell and seed), as "
            "otcollapse.load_sweep returns it."
        )
    if metric not in ds.data_vars:
        raise ValueError(
            f"no variable {metric!r} in the sweep; it has: {', '.join(sorted(map(str, ds.data_vars)))}."
        )
    da = ds[metric]
    extra = [d for d in da.dims if d not in _SWEEP_DIMS]
    if extra or "seed" not in da.dims:
        raise ValueError(
            f"{metric!r} has dimensions {da.dims}; plot a variable over (seed, net, epoch), or "
            f"select one entry first (e.g. ds.isel({extra[0] if extra else 'layer'}=-1))."
        )
    return da


def sweep_last_epochs(ds: xr.Dataset) -> xr.DataArray:
    """The last captured epoch of each cell: the largest epoch at which it has any value.

    Cells of a sweep may capture different epochs (when ``epochs`` is swept); the store joins
    them, so a cell is NaN at the epochs it did not capture. Returns an integer DataArray along
    ``cell``.
    """
    import xarray as xr

    epochs = np.asarray(ds["epoch"].values)
    has = np.zeros((ds.sizes["cell"], epochs.size), dtype=bool)
    for name in ds.data_vars:
        da = ds[name]
        if "epoch" in da.dims and "cell" in da.dims:
            other = [d for d in da.dims if d not in ("cell", "epoch")]
            has |= da.notnull().any(other).transpose("cell", "epoch").values
    last = [int(epochs[row].max()) if row.any() else int(epochs.max()) for row in has]
    return xr.DataArray(last, dims="cell", coords={"cell": ds["cell"].values}, name="epoch")


def _seed_stats(a: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, std, 95% Student-t half-width and count over the last axis (the seeds), NaN-aware.

    The half-width is t_{0.975, n−1} · s / √n with s the sample standard deviation (ddof 1); with
    fewer than two finite values it is NaN (no interval), as is the mean with none.
    """
    from scipy import stats

    ok = np.isfinite(a)
    n = ok.sum(-1)
    m = np.maximum(n, 1)
    mean = np.where(n > 0, np.where(ok, a, 0.0).sum(-1) / m, np.nan)
    dev = np.where(ok, a - mean[..., None], 0.0)
    var = np.where(n > 1, (dev**2).sum(-1) / np.maximum(n - 1, 1), np.nan)
    std = np.sqrt(var)
    half = np.where(n > 1, stats.t.ppf(0.975, np.maximum(n - 1, 1)) * std / np.sqrt(m), np.nan)
    return {"mean": mean, "std": std, "half": half, "n": n}


def sweep_statistics(ds: xr.Dataset, metric: str, at: str = "last") -> xr.Dataset:
    """Mean over seeds and its 95% Student-t interval of ``metric``, per cell (and net).

    Parameters
    ----------
    ds : xarray.Dataset
        A sweep's results (:func:`otcollapse.load_sweep`).
    metric : str
        A variable over ``(cell, seed[, net][, epoch])``.
    at : {"last", "init"}
        ``"last"``: each cell's last captured epoch (:func:`sweep_last_epochs`); ``"init"``:
        epoch 0, the networks at initialisation. A variable without an epoch dimension (the
        test split, the MUFM's λ_OT) is taken as it is, and has no ``"init"``.

    Returns
    -------
    xarray.Dataset
        ``mean``, ``std`` (ddof 1), ``half`` (half-width of the interval
        ``mean ± t_{0.975, n−1} s/√n``; NaN with fewer than two seeds) and ``n`` (the seeds with a
        finite value) over ``(cell[, net])``, with the epoch used as coordinate ``epoch`` along
        ``cell`` (absent without an epoch dimension).

    Raises
    ------
    ValueError
        Not a sweep variable; ``at="init"`` for a variable without epochs or a sweep that did
        not capture epoch 0; an unknown ``at``.
    """
    import xarray as xr

    if at not in ("last", "init"):
        raise ValueError(f"at must be 'last' or 'init'; got {at!r}.")
    da = _sweep_metric(ds, metric)
    if "epoch" in da.dims:
        if at == "init" and 0 not in set(ds["epoch"].values.tolist()):
            raise ValueError(f"the sweep did not capture epoch 0: no initialisation of {metric!r}.")
        when = sweep_last_epochs(ds).values if at == "last" else np.zeros(ds.sizes["cell"], int)
        da = da.sel(epoch=xr.DataArray(when, dims="cell"))
    elif at == "init":
        raise ValueError(f"{metric!r} has no epoch dimension: no initialisation to show.")
    da = da.transpose("cell", ..., "seed")
    template = da.isel(seed=0, drop=True)
    out = {k: template.copy(data=v) for k, v in _seed_stats(np.asarray(da.values, float)).items()}
    return xr.Dataset(out, attrs=dict(ds[metric].attrs))


def _sweep_x(ds: Any, setting: str) -> tuple[np.ndarray, str, list[str]]:
    """Positions of the cells along x, the axis kind and the category names (categorical only).

    Numbers go on a numeric axis: logarithmic when all positive and spanning more than 10x,
    symmetric-logarithmic when 0 is among otherwise positive values spanning more than 10x,
    linear otherwise; texts, flags and mixed values are categories in the grid's order.
    """
    if setting not in ds.coords:
        along = [str(c) for c in ds.coords if c not in ("seed", "net", "epoch", "layer", "step")]
        raise ValueError(f"no setting {setting!r} in the sweep; its settings are: {along}.")
    values = np.asarray(ds[setting].broadcast_like(ds["cell"]).values)
    if values.dtype.kind in "iuf":
        v = values.astype(float)
        pos = v[v > 0]
        wide = pos.size > 0 and pos.max() / pos.min() > 10
        if np.all(v > 0) and wide:
            return v, "log", []
        if np.all(v >= 0) and wide:
            return v, "symlog", []
        return v, "linear", []
    names = [str(x) for x in values.tolist()]
    cats = list(dict.fromkeys(names))
    return np.array([cats.index(n) for n in names], dtype=float), "categorical", cats


def _along_cells(ds: Any, name: str) -> list[str]:
    return [str(v) for v in np.asarray(ds[name].broadcast_like(ds["cell"]).values).tolist()]


def _sweep_others(ds: Any, setting: str, by: Sequence[str] | None) -> list[str]:
    """The other settings that split the lines: ``by``, or every other coordinate that varies
    along ``cell`` and is not a function of ``setting`` (``capture_epochs`` when ``epochs`` is
    swept: it would only cut the line into points)."""
    if by is not None:
        missing = [b for b in by if b not in ds.coords]
        if missing:
            raise ValueError(f"no setting {missing[0]!r} in the sweep.")
        return [b for b in by if b != setting]
    x = _along_cells(ds, setting)
    out = []
    for c in ds.coords:
        if c in (setting, "cell") or ds[c].dims != ("cell",):
            continue
        v = _along_cells(ds, str(c))
        if len(set(v)) > 1 and len(set(zip(x, v, strict=True))) > len(set(x)):
            out.append(str(c))
    return out


def _sweep_groups(ds: Any, others: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """``(label, cell indices)`` per combination of the ``others`` settings, in grid order."""
    if not others:
        return [("", np.arange(ds.sizes["cell"]))]
    cols = [_along_cells(ds, o) for o in others]
    combos = [tuple(c[i] for c in cols) for i in range(ds.sizes["cell"])]
    out = []
    for combo in dict.fromkeys(combos):
        label = ", ".join(f"{o}={v}" for o, v in zip(others, combo, strict=True))
        out.append((label, np.array([i for i, c in enumerate(combos) if c == combo])))
    return out


def _sweep_ylabel(attrs: Mapping[str, Any], metric: str) -> str:
    import textwrap

    name = str(attrs.get("long_name", metric)).split(":")[0].split(";")[0]
    units = str(attrs.get("units", ""))
    units = "dimensionless" if units in ("1", "") else units
    return textwrap.fill(f"{metric}: {name} ({units})", 48)


def _sweep_xaxis(ax: Any, x: np.ndarray, kind: str, cats: Sequence[str], setting: str) -> None:
    ticks = np.unique(x[np.isfinite(x)])
    if kind == "categorical":
        ax.set_xticks(range(len(cats)), cats, rotation=20 if len(cats) > 4 else 0)
        ax.set_xlim(-0.5, len(cats) - 0.5)
    elif kind in ("log", "symlog"):
        if kind == "symlog":
            ax.set_xscale("symlog", linthresh=float(ticks[ticks > 0].min()))
        else:
            ax.set_xscale("log")
        if ticks.size <= 8:
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    elif ticks.size <= 8:
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    scale = {"log": " (log scale)", "symlog": " (symmetric log scale: linear near 0)"}
    ax.set_xlabel(setting + scale.get(kind, ""))


def _sweep_line(ax: Any, x: np.ndarray, st: Any, style: Mapping[str, Any], dx: float) -> None:
    """One line of :func:`plot_sweep`: the means at ``x`` with their 95% intervals as bars, drawn
    ``dx`` points to the side (so that the bars of several lines at one x stay apart)."""
    from matplotlib.transforms import offset_copy

    order = np.argsort(x, kind="stable")
    bars = ax.errorbar(
        x[order],
        np.asarray(st["mean"].values, float)[order],
        yerr=np.asarray(st["half"].values, float)[order],  # NaN (one seed): no bar
        **style,
    )
    # shifted after drawing: the data limits are those of the data, not of the shift
    shifted = offset_copy(ax.transData, fig=ax.figure, x=dx, y=0.0, units="points")
    for artist in bars.get_children():
        artist.set_transform(shifted)


def _sweep_lines(
    ds: Any, metric: str, setting: str, by: Sequence[str] | None, init: bool
) -> list[tuple[np.ndarray, str, str, bool]]:
    """``(cell indices, net or "", label, at init)`` of every line of :func:`plot_sweep`."""
    nets = [str(n) for n in ds["net"].values] if "net" in ds[metric].dims else [""]
    out = []
    for label, cells in _sweep_groups(ds, _sweep_others(ds, setting, by)):
        for net in nets:
            name = ", ".join(t for t in (net, label) if t) or metric
            out.append((cells, net, name, False))
            if init:
                out.append((cells, net, f"{name} at init", True))
    return out


def _sweep_title(
    ds: Any, metric: str, setting: str, ns: np.ndarray, init: bool, epoch: bool
) -> str:
    n = ns[ns > 0]
    if n.size == 0:
        seeds = "no finite value"
    elif n.max() < 2:
        seeds = "one seed: no interval"
    else:
        span = f"{n.min()}" if n.min() == n.max() else f"{n.min()}–{n.max()}"
        seeds = f"mean over {span} seeds ± 95% Student-t interval"
    title = f"{metric} vs {setting}{' at the last epoch' if epoch else ''}\n{seeds}"
    if init:
        title += "; dashed: at init"
    missing = int(ds.attrs.get("cells_missing", 0) or 0)
    if missing:
        title += f"\n{missing} cell(s) of the grid not in the store (not drawn)"
    return title


def plot_sweep(
    ds: xr.Dataset,
    metric: str,
    setting: str,
    *,
    by: Sequence[str] | None = None,
    ax: Any = None,
) -> Figure:
    """A metric of a sweep against one swept setting, mean over seeds with 95% intervals.

    For each cell, the metric at its last captured epoch (the largest epoch where the cell has
    data) is averaged over the seeds; solid lines join the cells along ``setting`` on x, with
    error bars of the 95% Student-t interval ``mean ± t_{0.975, n−1} s/√n`` (none with one seed,
    as the title says). Dashed lines are the same computation at epoch 0, the initialisation
    (when captured). There is one line per network (``resnet``, ``plain``) and per combination
    of the other swept settings; a variable over the seeds only (``mufm_lambda_ot``) has one line
    per combination. The points of different lines at one x are drawn a few points apart, so
    that their bars stay readable.

    Numeric settings are drawn on a numeric axis (logarithmic when all positive and spanning
    more than 10x, symmetric-logarithmic when 0 is among them), texts and flags as categories.

    Parameters
    ----------
    ds : xarray.Dataset
        A sweep's results (:func:`otcollapse.load_sweep`).
    metric : str
        A variable over ``(cell, seed[, net][, epoch])``; for a per-layer or per-step variable
        select one entry first (``ds.isel(layer=-1)``).
    setting : str
        A coordinate of ``ds`` (a swept setting along ``cell``, or ``"cell"``).
    by : sequence of str, optional
        The settings that split the lines (default: every other setting varying along ``cell``).
    ax : matplotlib Axes, optional

    Raises
    ------
    ValueError
        An unknown metric or setting, or a metric with other dimensions.
    """
    last = sweep_statistics(ds, metric, "last")
    da = ds[metric]
    init = None
    if "epoch" in da.dims and 0 in set(ds["epoch"].values.tolist()):
        init = sweep_statistics(ds, metric, "init")
    x, kind, cats = _sweep_x(ds, setting)
    lines = _sweep_lines(ds, metric, setting, by, init is not None)
    fig, ax = _axes(ax, width=7.0 if len(lines) <= 4 else 10.0)  # room for the legend beside
    step = min(4.0, 24.0 / len(lines))
    groups = sum(not at_init for *_, at_init in lines)
    cmap = matplotlib.colormaps["tab20"]
    palette = _COLOURS if groups <= len(_COLOURS) else [cmap(j % 20) for j in range(groups)]
    colour = -1
    for k, (cells, net, label, at_init) in enumerate(lines):
        colour += 0 if at_init else 1
        style = {"fmt": "o-", "capsize": 4, "label": label}
        if at_init:
            style |= {"fmt": "s--", "alpha": 0.6, "mfc": "none", "capsize": 2}
        style["color"] = palette[colour % len(palette)]
        st = (init if at_init else last).isel(cell=cells).sel({"net": net} if net else {})
        _sweep_line(ax, x[cells], st, style, (k - (len(lines) - 1) / 2) * step)
    ax.margins(x=0.08)  # the shifted end points stay inside
    _sweep_xaxis(ax, x, kind, cats, setting)
    ax.set_ylabel(_sweep_ylabel(da.attrs, metric))
    ns = np.asarray(last["n"].values)
    ax.set_title(_sweep_title(ds, metric, setting, ns, init is not None, "epoch" in da.dims))
    if len(lines) > 4:  # beside the axes: a long legend would hide the points
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    return fig
