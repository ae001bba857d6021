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
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from otcollapse.collapse import CollapseProfile
from otcollapse.geodesic import GeodesicReport, TransportProfile
from otcollapse.measures import Trajectory

__all__ = [
    "METRIC_LABELS",
    "plot_collapse_depth",
    "plot_collapse_epochs",
    "plot_layer_pca",
    "plot_mccann_fit",
    "plot_mufm_calibration",
    "plot_ots_lss",
    "plot_transport_steps",
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
        ax.set_title(f"layer {traj.names[i]}")
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
        right = axs[2]
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
            right.scatter(
                c[:, 0], c[:, 1], c=labels, cmap="tab10", s=10, marker=marker, alpha=0.6, label=name
            )
        right.set_xlabel("PC 1 of the network's last layer (feature units)")
        right.set_ylabel("PC 2 (feature units)")
        right.set_title("Last-layer features: network (o) and MUFM (▲)")
        right.legend(fontsize="small")
    return fig
