"""The analysis stage every job shares: the analyses of a trajectory, the headline numbers, the
verdicts, the aggregation over seeds, the figures and the records of ``metrics.json``.

``otcollapse run`` (:mod:`otcollapse.experiments.run`), ``analyze`` and ``mufm``
(:mod:`otcollapse.experiments.analyze`) all go through these, so their run folders read alike.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from otcollapse import _resampling
from otcollapse._utils import atomic_path, json_safe
from otcollapse.collapse import CollapseProfile, collapse_profile
from otcollapse.experiments.verdicts import interval, number, verdicts
from otcollapse.geodesic import GeodesicReport, geodesic_test, lss, ots
from otcollapse.measures import Trajectory
from otcollapse.nets import TrainHistory

__all__ = [
    "Log",
    "aggregate_seeds",
    "analyse",
    "describe_space",
    "epoch_scores",
    "geometry_rows",
    "headline",
    "longest_index",
    "nc1_log_slope",
    "null_baselines",
    "package_versions",
    "profile_over_seeds",
    "profile_record",
    "projection_distortion",
    "projection_pairs",
    "record_results",
    "resampled_scores",
    "say",
    "seed_metrics",
    "space_record",
    "stream_distortion",
    "verdicts",
    "write_figures",
]

#: how a job reports its progress: one line at a time
Log = Callable[[str], Any]


def say(msg: str) -> None:
    """The default :data:`Log`: print, flushed (a long run shows its progress even when piped)."""
    print(msg, flush=True)


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("otcollapse", "numpy", "scipy", "torch", "pot", "geomloss", "matplotlib"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


# ---------------------------------------------------------------------------- analyses
#: the gauge of the aligned geodesic test beside the raw one (:mod:`otcollapse.geodesic.gauge`)
ALIGNED_GAUGE = "orthogonal"


def analyse(
    traj: Trajectory,
    *,
    seed: int,
    geodesic: bool = True,
    progress: bool = False,
    n_boot: int = 0,
) -> dict[str, Any]:
    """The analyses of one trajectory: the collapse profile and, with ``geodesic``, the geodesic
    test (which includes the transport profile) of the raw layers and of the layers aligned by
    orthogonal Procrustes (``geodesic_aligned``), each with ``n_boot`` subsampling intervals."""
    out: dict[str, Any] = {"collapse": collapse_profile(traj)}
    if geodesic:
        out["geodesic"] = geodesic_test(traj, seed=seed, n_boot=n_boot, progress=progress)
        out["geodesic_aligned"] = geodesic_test(
            traj, seed=seed, n_boot=n_boot, gauge=ALIGNED_GAUGE, progress=progress
        )
        out["resampled"] = resampled_scores(traj, out["geodesic"], seed=seed, n_boot=n_boot)
    return out


#: the scores the verdicts read from resamples (:mod:`otcollapse.experiments.verdicts`)
_GEODESIC_SCORES = ("path_ratio", "lss_mean", "ots")


def _tau(traj: Trajectory) -> float:
    pfc = collapse_profile(traj, metrics=("nc1",)).pfc.get("nc1")
    return number(None if pfc is None else pfc.kendall_tau)


def resampled_scores(
    traj: Trajectory, rep: GeodesicReport, *, seed: int, n_boot: int
) -> dict[str, Any]:
    """The verdicts' scores on resamples of ``traj``'s samples: ``halves`` (score -> its value on
    each of the two disjoint stratified halves, :func:`otcollapse._resampling.split_halves`;
    the split-half floor of a score is their difference) and ``replicates`` (score -> its value
    on each subsampling replicate, in replicate order).

    The geodesic scores (path ratio, LSS, OTS of the longest segment) of the replicates are
    ``rep``'s own (:attr:`SegmentReport.replicates`); NC1's Kendall τ is computed on the same
    replicate subsamples (half the samples, seeds :func:`otcollapse._resampling.boot_seeds`).
    Two trajectories of the same samples resampled with the same ``seed`` get the same halves
    and replicates, so effects between them pair. Empty entries where the samples are too few
    (fewer than 4, or halves of a single class)."""
    out: dict[str, Any] = {"halves": {}, "replicates": {}}
    s = _longest(rep)
    for key in _GEODESIC_SCORES:
        if key in s.replicates:
            out["replicates"][key] = list(s.replicates[key])
    labels = None if traj.labels is None else np.asarray(traj.labels)
    if labels is not None and n_boot:
        size = traj.n_samples // 2
        out["replicates"]["nc1_kendall_tau"] = (
            [
                _tau(traj.take(_resampling.stratified_indices(labels, size, bs)))
                for bs in _resampling.boot_seeds(seed, n_boot)
            ]
            if size >= 2
            else []
        )
    halves = _resampling.split_halves(labels, traj.n_samples, seed)
    if halves is None:
        return json_safe(out)
    scores: dict[str, list[float]] = {}
    seg = list(s.layers)
    for idx in halves:
        half = traj.take(idx)
        if labels is not None:
            scores.setdefault("nc1_kendall_tau", []).append(_tau(half))
        try:
            hs = geodesic_test(half.take_layers(seg), seed=seed).segments[0]
        except ValueError:  # too few samples for a transport solve or a McCann fit
            continue
        for key, val in (("path_ratio", hs.path_ratio), ("lss_mean", hs.lss.mean), ("ots", hs.ots)):
            scores.setdefault(key, []).append(number(val))
    out["halves"] = {k: v for k, v in scores.items() if len(v) == 2}
    return json_safe(out)


def describe_space(traj: Trajectory) -> str:
    """In words, the feature space a captured trajectory's layers live in (from its metadata),
    ending with its dimensions ``d = ...`` (the distinct ones, ascending)."""
    meta = traj.metadata
    dims = "–".join(str(d) for d in sorted(set(traj.dims)))
    pool = meta.get("pool")
    if meta.get("model") == "ResidualMLP" or pool is None:
        where = "the residual stream (vectors)"
    elif pool == "avg":
        where = "global-average-pooled channels of the residual stream"
    elif pool == "flatten":
        where = "the residual stream, flattened (channels × height × width)"
    else:
        where = f"a seeded Gaussian projection of the flattened residual stream ({pool})"
    return f"{where}, d = {dims}"


def space_record(traj: Trajectory) -> dict[str, Any]:
    """Where every number of a captured trajectory lives: the space, per layer its dimension
    and stream shape, the segments (one per stage of a ResNet) and the steps between them, and
    the projection's measured distortion (``"projected"``). JSON-safe.

    ``segments``: per segment its layers, dimension and steps; ``one_step`` marks a segment of
    two layers, whose path ratio and LSS are 1 by construction (only OTS and the step's W2 say
    anything there). ``crossings``: the steps between segments, in no segment's statistics;
    measured between the shortcut image ``P_# mu_l`` and ``mu_{l+1}`` where the block has a
    shortcut ``P``, else not measured (a plain twin's stage change).
    """
    meta = traj.metadata
    shapes = traj.stream_shapes
    segments = []
    for i, seg in enumerate(traj.segments):
        segments.append(
            {
                "index": i,
                "layers": [traj.names[l] for l in seg],
                "first": seg.start,
                "last": seg.stop - 1,
                "dim": traj.dims[seg.start],
                "stream_shape": None if shapes is None else list(shapes[seg.start]),
                "steps": len(seg) - 1,
                "one_step": len(seg) == 2,
            }
        )
    crossings = []
    for l in traj.crossings:
        crossings.append(
            {
                "step": f"{traj.names[l]} → {traj.names[l + 1]}",
                "source": l,
                "dims": [traj.dims[l], traj.dims[l + 1]],
                "measured": "between P_#μ_l (the shortcut image) and μ_{l+1}"
                if l in traj.shortcuts
                else "not measured: no shortcut image (the layers are in different spaces)",
            }
        )
    return json_safe(
        {
            "space": meta.get("space"),
            "pool": meta.get("pool"),
            "description": describe_space(traj),
            "names": list(traj.names),
            "dims": list(traj.dims),
            "stream_shapes": None if shapes is None else [list(s) for s in shapes],
            "segments": segments,
            "crossings": crossings,
            "projection_distortion": meta.get("projection_distortion"),
            "mapped": bool(meta.get("mapped", False)),
        }
    )


# ---------------------------------------------------------------------------- projection
#: quantiles of the squared-distance ratio recorded per layer
_RATIO_QUANTILES = {"q01": 0.01, "q05": 0.05, "median": 0.5, "q95": 0.95, "q99": 0.99}


def projection_pairs(n: int, n_pairs: int, seed: int) -> np.ndarray:
    """The sample pairs ``(i, j)``, ``i < j``, on which :func:`stream_distortion` measures a
    projection: ``n_pairs`` of the ``n (n - 1) / 2`` drawn without replacement by
    ``numpy.random.default_rng(seed)`` (all of them when there are fewer), shape (P, 2), in
    the order ``np.triu_indices(n, 1)`` lists them."""
    iu, ju = np.triu_indices(n, 1)
    total = len(iu)
    if n_pairs >= total:
        pick = np.arange(total)
    else:
        pick = np.sort(np.random.default_rng(seed).choice(total, size=n_pairs, replace=False))
    return np.stack([iu[pick], ju[pick]], axis=1)


def stream_distortion(
    flat: Trajectory, k: int, *, seed: int, n_pairs: int = 2000
) -> dict[str, Any]:
    r"""How much ``capture``'s projection ``("project", k)`` distorts the flattened stream.

    For every layer of ``flat`` (the flattened residual stream, ``pool="flatten"``) of dimension
    ``D > k``, with ``P = G/\sqrt k`` the map capture uses (``projection_matrix(D, k, seed)``),
    on the pairs of :func:`projection_pairs`:

    $$\rho_{ij} = \frac{\lVert P^\top (x_i - x_j)\rVert^2}{\lVert x_i - x_j\rVert^2},$$

    whose law for a fixed pair is $\chi^2_k / k$ (mean 1, standard deviation $\sqrt{2/k}$;
    Johnson–Lindenstrauss). Recorded per layer: min, quantiles, max, mean, and the largest relative
    error $\max |\rho - 1|$. Layers of dimension ``<= k`` are not projected (ratio 1). Per step
    ``l -> l+1`` that can be measured (in one space, or from the shortcut image), the relative
    error of $W_2^2$ after projection: $|W_2^2(P_\#\mu, P_\#\nu) - W_2^2(\mu, \nu)| /
    W_2^2(\mu, \nu)$ (exact transport on these samples). Computed in float64 on the CPU.

    Parameters
    ----------
    flat : Trajectory
        The flattened stream of a few samples (e.g. 100: 4,950 pairs), with shortcut images.
    k : int
        The projected dimension.
    seed : int
        The projection's seed (capture's ``seed``) and the seed of the pairs.
    n_pairs : int
        Pairs per layer.

    Returns
    -------
    dict
        ``dim``, ``seed``, ``n_samples``, ``n_pairs``, ``layers`` (one record per layer),
        ``steps`` (one per measured step), ``max_rel_error`` (over the projected layers),
        ``max_w2_rel_error`` (over the steps) and ``jl_sd`` $=\sqrt{2/k}$.
    """
    from otcollapse.nets import projection_matrix
    from otcollapse.transport import wasserstein

    pairs = projection_pairs(flat.n_samples, n_pairs, seed)
    i, j = torch.as_tensor(pairs[:, 0]), torch.as_tensor(pairs[:, 1])
    maps: dict[int, torch.Tensor | None] = {}

    def proj(d: int) -> torch.Tensor | None:
        if d not in maps:
            maps[d] = None if d <= k else projection_matrix(d, k, seed).double()
        return maps[d]

    layers = []
    for name, x in zip(flat.names, flat.layers, strict=True):
        X = torch.as_tensor(np.asarray(x), dtype=torch.float64)
        G = proj(X.shape[1])
        rec: dict[str, Any] = {"layer": name, "stream_dim": int(X.shape[1])}
        if G is None:
            rec.update({"projected": False, "max_rel_error": 0.0})
            layers.append(rec)
            continue
        PX = X @ G
        num = (PX[i] - PX[j]).pow(2).sum(1)
        den = (X[i] - X[j]).pow(2).sum(1)
        keep = den > 0
        ratio = (num[keep] / den[keep]).numpy()
        rec.update({"projected": True, "pairs": int(keep.sum()), "zero_pairs": int((~keep).sum())})
        if ratio.size:
            rec.update(
                {
                    "min": float(ratio.min()),
                    **{q: float(np.quantile(ratio, v)) for q, v in _RATIO_QUANTILES.items()},
                    "max": float(ratio.max()),
                    "mean": float(ratio.mean()),
                    "max_rel_error": float(np.abs(ratio - 1).max()),
                }
            )
        layers.append(rec)
    steps = []
    for l in range(flat.n_steps):
        try:
            src, tgt = flat.step_measures(l)
        except ValueError:
            continue  # a plain twin's stage change: not measured in any space
        a = torch.as_tensor(np.asarray(src.points), dtype=torch.float64)
        b = torch.as_tensor(np.asarray(tgt.points), dtype=torch.float64)
        G = proj(int(b.shape[1]))
        full = float(wasserstein(a, b).cost)
        projected = full if G is None else float(wasserstein(a @ G, b @ G).cost)
        steps.append(
            {
                "step": f"{src.name} → {tgt.name}",
                "w2_sq_stream": full,
                "w2_sq_projected": projected,
                "rel_error": abs(projected - full) / full if full > 0 else None,
            }
        )
    errs = [r["max_rel_error"] for r in layers if r.get("projected") and "max" in r]
    werrs = [s["rel_error"] for s in steps if s["rel_error"] is not None]
    return json_safe(
        {
            "dim": int(k),
            "seed": int(seed),
            "n_samples": flat.n_samples,
            "n_pairs": len(pairs),
            "jl_sd": math.sqrt(2.0 / k),
            "layers": layers,
            "steps": steps,
            "max_rel_error": max(errs) if errs else 0.0,
            "max_w2_rel_error": max(werrs) if werrs else None,
        }
    )


def projection_distortion(
    model: Any,
    data: Any,
    k: int,
    *,
    seed: int,
    device: str = "cpu",
    n_samples: int = 100,
    n_pairs: int = 2000,
) -> dict[str, Any]:
    """:func:`stream_distortion` of ``model``'s flattened stream on ``n_samples`` samples of
    ``data`` drawn without replacement by ``numpy.random.default_rng(seed)`` (sorted; recorded
    as ``samples``), captured with ``pool="flatten"`` on ``device``."""
    from otcollapse.nets import capture

    n = len(data)
    idx = np.sort(np.random.default_rng(seed).choice(n, size=min(n_samples, n), replace=False))
    t = torch.as_tensor(idx)
    flat = capture(model, (data.X[t], data.y[t]), device=device, seed=seed, pool="flatten")
    out = stream_distortion(flat, k, seed=seed, n_pairs=n_pairs)
    out["samples"] = idx.tolist()
    return out


def _longest(rep: GeodesicReport) -> Any:
    """The longest segment of a geodesic report (the first on a tie): the one the headline,
    the geometry table and the null baselines read."""
    return rep.segments[longest_index(rep)]


def longest_index(rep: GeodesicReport) -> int:
    """The index of :func:`_longest`'s segment in ``rep.segments``."""
    return max(range(len(rep.segments)), key=lambda i: len(rep.segments[i].layers))


def null_baselines(rep: GeodesicReport, seed: int) -> list[dict[str, Any]]:
    """The scores of the two null trajectories (:func:`otcollapse.constructions.null_trajectory`:
    a random walk, unrelated layers) at the ``n``, ``d`` and ``L`` of ``rep``'s longest segment,
    each raw and aligned: what "no geodesic structure" scores at the same size."""
    from otcollapse.constructions import NULL_KINDS, null_trajectory

    s = _longest(rep)
    rows = []
    for kind in NULL_KINDS:
        traj = null_trajectory(kind, rep.n_samples, s.dim, len(s.layers), seed=seed)
        for gauge in ("none", ALIGNED_GAUGE):
            seg = geodesic_test(traj, seed=seed, gauge=gauge).segments[0]
            rows.append(
                {
                    "model": f"null: {kind.replace('_', ' ')}",
                    "gauge": gauge,
                    "ots": seg.ots,
                    "efficiency": seg.efficiency,
                    "lss_mean": seg.lss.mean,
                    "path_ratio": seg.path_ratio,
                    "n": rep.n_samples,
                    "d": s.dim,
                    "L": len(s.layers) - 1,
                }
            )
    return json_safe(rows)


def geometry_rows(final: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per model with a geodesic test, its longest segment's scores raw and aligned, each with
    its subsampling interval (``*_ci``, None without replicates)."""
    rows = []
    for name, res in final.items():
        for key, gauge in (("geodesic", "none"), ("geodesic_aligned", ALIGNED_GAUGE)):
            if key not in res:
                continue
            s = _longest(res[key])
            row: dict[str, Any] = {"model": name, "gauge": gauge}
            for stat, value in (
                ("ots", s.ots),
                ("efficiency", s.efficiency),
                ("lss_mean", s.lss.mean),
                ("path_ratio", s.path_ratio),
            ):
                row[stat] = value
                row[f"{stat}_ci"] = s.ci.get(stat)
            rows.append(row)
    return json_safe(rows)


def epoch_scores(traj: Trajectory) -> dict[str, Any]:
    """OTS and LSS of the longest segment of equal dimension (no McCann fit)."""
    seg = max(traj.segments, key=len)
    tracks = traj.take_layers(list(seg))
    scores = lss(tracks)
    return {
        "ots": ots(tracks[0].numpy(), tracks[len(tracks) - 1].numpy()),
        "lss_mean": scores.mean,
        "lss_median": scores.median,
    }


def _segment_summary(rep: GeodesicReport) -> dict[str, Any]:
    s = _longest(rep)
    return {
        "segment": f"{s.names[0]} … {s.names[-1]}",
        "segments": len(rep.segments),
        "ots": s.ots,
        "lss_mean": s.lss.mean,
        "lss_median": s.lss.median,
        "path_ratio": s.path_ratio,
        "speed_cv": s.speed_cv,
        "mccann_max_residual": s.mccann.max_residual,
        "efficiency": s.efficiency,
        "steps": len(s.layers) - 1,
        "steps_below_floor": _below_floor(rep, s.layers),
    }


def _below_floor(rep: GeodesicReport, layers: Sequence[int]) -> int | None:
    """How many successive steps of ``layers`` have W2 at or below their split-half noise floor
    (None when the profile has no floors)."""
    rows = [rep.profile.row(l, l + 1) for l in layers[:-1]]
    if any(r.noise_floor is None for r in rows):
        return None
    return sum(r.distance <= r.noise_floor for r in rows)


def nc1_log_slope(values: Sequence[float] | np.ndarray) -> float | None:
    r"""The least-squares slope $\beta$ of $\ln \mathrm{NC1}_l = \alpha + \beta\, l / L$ over the
    layers $l = 0..L$ where NC1 is finite and $> 0$: the log-fold change of NC1 across the whole
    depth (negative: NC1 decreases; comparable between depths). None with fewer than two such
    layers. Reference: Wang, Gai & Zhang, "Progressive Feedforward Collapse of ResNet
    Training" (NC1 decreasing over depth)."""
    v = np.asarray(values, dtype=np.float64)
    depth = np.linspace(0.0, 1.0, v.size) if v.size > 1 else np.zeros(1)
    ok = np.isfinite(v) & (v > 0)
    if ok.sum() < 2:
        return None
    return float(np.polyfit(depth[ok], np.log(v[ok]), 1)[0])


def headline(results: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers a reader looks at first, per model: OTS, LSS, R, NC1 at both ends, PFC."""
    out: dict[str, Any] = {}
    for name, res in results.items():
        col: CollapseProfile = res["collapse"]
        nc1 = col.values("nc1")
        pfc = col.pfc.get("nc1")
        row: dict[str, Any] = {
            "nc1_first": float(nc1[0]),
            "nc1_last": float(nc1[-1]),
            "nc1_kendall_tau": None if pfc is None else pfc.kendall_tau,
            "nc1_log_slope": nc1_log_slope(nc1),
            "nc1_frac_non_increasing": None if pfc is None else pfc.frac_non_increasing,
            "nc1_monotone": None if pfc is None else pfc.monotone,
        }
        if "geodesic" in res:
            row.update(_segment_summary(res["geodesic"]))
        if "geodesic_aligned" in res:
            aligned = _segment_summary(res["geodesic_aligned"])
            for key in ("ots", "efficiency", "lss_mean", "path_ratio"):
                row[f"{key}_aligned"] = aligned[key]
        if "history" in res:
            h: TrainHistory = res["history"]
            row["train_accuracy"] = h.final_accuracy
            row["train_loss"] = h.loss[-1] if h.loss else None
            row["terminal_epoch"] = h.terminal_epoch
        if "test_accuracy" in res:
            row["test_accuracy"] = res["test_accuracy"]
        out[name] = json_safe(row)
    return out


# ---------------------------------------------------------------------------- one seed
def seed_metrics(config: Any, seed: int, parts: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics of one seed of a run (``metrics.json`` less figures and timings).

    ``parts`` holds the results of the seed's stages by label
    (:func:`otcollapse.experiments.stages.seed_graph`): ``train:<net>`` (history),
    ``analyse:<net>:<epoch>`` and ``analyse:<net>:test`` (:func:`analyse`'s output), and
    ``calibrate``. Besides the headline, verdicts and records, ``profiles`` holds per model and
    captured epoch the collapse metrics at every layer and, where the geodesic test ran, the W2
    of every successive step with its noise floor (what the sweep store is built from).
    """
    final: dict[str, Any] = {}
    tests: dict[str, Any] = {}
    rows: dict[str, list[dict[str, Any]]] = {}
    profiles: dict[str, dict[str, Any]] = {}
    spaces: dict[str, Any] = {}
    provenance = None
    space_records: dict[str, Any] = {}
    for net in ("resnet", "plain"):
        history = TrainHistory.from_dict(parts[f"train:{net}"]["history"])
        rows[net], profiles[net] = [], {}
        for e in config.epochs_captured():
            res = dict(parts[f"analyse:{net}:{e}"])
            provenance = res.pop("provenance", provenance)
            spaces[net] = res.pop("feature_space", spaces.get(net))
            record = res.pop("space", None)
            if e == config.epochs or net not in space_records:
                space_records[net] = record
            row = {"epoch": e, **headline({net: res})[net], **res.pop("scores", {})}
            if 0 < e <= len(history.accuracy):
                row["train_accuracy"] = history.accuracy[e - 1]
            rows[net].append(json_safe(row))
            profiles[net][str(e)] = _profile_arrays(res)
            if e == 0:
                final[f"{net}_init"] = res
            if e == config.epochs:
                final[net] = {**res, "history": history}
        if f"analyse:{net}:test" in parts:
            res_t = dict(parts[f"analyse:{net}:test"])
            res_t.pop("provenance", None)
            res_t.pop("feature_space", None)
            res_t.pop("space", None)
            final[net]["test_accuracy"] = res_t.get("test_accuracy")
            tests[net] = res_t
    resampled = {
        name: res.pop("resampled")
        for name, res in [*final.items(), *((f"{k}_test", v) for k, v in tests.items())]
        if "resampled" in res
    }
    head = headline(final)
    if tests:
        head.update(headline({f"{k}_test": v for k, v in tests.items()}))
    geometry = geometry_rows({**final, **{f"{k}_test": v for k, v in tests.items()}})
    if "geodesic" in final.get("resnet", {}):
        geometry += null_baselines(final["resnet"]["geodesic"], seed)
    cal = parts.get("calibrate")
    mufm = None
    if cal is not None:
        mufm = cal["calibration"].to_dict()
        mufm["format_grid"] = cal["calibration"].format_grid()
        mufm["warnings"] = cal["warnings"]
        fitted = cal["fitted_on"]
        first, last = cal["calibration"].layer_range
        mufm["fitted_layers"] = f"{fitted.names[first]} … {fitted.names[last]}"
        mufm["fitted_dim"] = int(fitted.dims[first])
        mufm["profile"] = profile_record(
            cal.get("profile"), cal.get("profile_spread"), cal.get("profile_note", "")
        )
    return json_safe(
        {
            "kind": "run",
            "settings": config.to_dict(),
            "seed": seed,
            "versions": package_versions(),
            "provenance": provenance,
            "headline": head,
            "verdicts": verdicts([{"headline": head, "resampled": resampled}]),
            "resampled": resampled,
            "geometry": geometry,
            "feature_space": spaces,
            "spaces": space_records,
            "model": config.describe_model(),
            "epochs": rows,
            "profiles": profiles,
            "results": {k: record_results(v) for k, v in final.items()},
            "test": {k: record_results(v) for k, v in tests.items()},
            "mufm": mufm,
        }
    )


def profile_record(
    joint: Any, spread: Mapping[str, Sequence[float]] | None, note: str = ""
) -> dict[str, Any]:
    """The joint MUFM fit (:class:`otcollapse.surrogates.MUFMProfileCalibration`) as a record:
    the fitted λ's, the criterion, the match, and per step its residuals beside the network's
    split-half spread (``spread_nc1``, ``spread_cost``:
    :func:`otcollapse.surrogates.calibrate.profile_spread`) with
    ``within`` (both log-ratios no larger than the spread). ``reproduces`` counts the steps
    within. ``{"fitted": False, "note": ...}`` when there is no fit."""
    if joint is None:
        return {"fitted": False, "note": note}
    spread = spread or {}
    rows = []
    for i, r in enumerate(joint.residuals):
        row = {
            k: r[k]
            for k in (
                "layer",
                "network_layer",
                "nc1_network",
                "nc1_mufm",
                "log_ratio_nc1",
                "cost_network",
                "cost_mufm",
                "log_ratio_cost",
            )
        }
        sn = spread.get("nc1", [])
        sc = spread.get("cost", [])
        if i < len(sn) and i < len(sc):
            row["spread_nc1"], row["spread_cost"] = sn[i], sc[i]
            row["within"] = bool(
                abs(r["log_ratio_nc1"]) <= sn[i] and abs(r["log_ratio_cost"]) <= sc[i]
            )
        rows.append(row)
    judged = [r["within"] for r in rows if "within" in r]
    return json_safe(
        {
            "fitted": True,
            "lambda_ot": joint.lambda_ot,
            "lambda_h": joint.lambda_h,
            "lambda_w": joint.lambda_w,
            "criterion": joint.value,
            "match": joint.match,
            "grid_edge": list(joint.grid_edge),
            "converged": joint.converged,
            "residuals": rows,
            "reproduces": None if not judged else f"{sum(judged)} of {len(judged)} steps",
            "note": note,
        }
    )


def profile_over_seeds(per_seed: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The first seed's joint MUFM fit (``mufm.profile``, :func:`profile_record`) read against
    the seed-to-seed spread of the network's own profile: per step, ``seed_spread_nc1`` and
    ``seed_spread_cost``, the range (max − min) over the seeds of the network's log NC1 and log
    step cost, and ``within_seeds`` (both of the fit's log-ratios no larger);
    ``reproduces_seeds`` counts the steps within. None when the first seed has no fit or some
    seed's fitted segment has another number of steps."""
    fits = [(p.get("mufm") or {}).get("profile") or {} for p in per_seed]
    if not fits[0].get("fitted") or not all(f.get("fitted") for f in fits):
        return None
    steps = {len(f["residuals"]) for f in fits}
    if len(steps) != 1:
        return None
    rows = [dict(r) for r in fits[0]["residuals"]]
    for i, row in enumerate(rows):
        for key in ("nc1", "cost"):
            logs = [math.log(max(f["residuals"][i][f"{key}_network"], 1e-300)) for f in fits]
            row[f"seed_spread_{key}"] = max(logs) - min(logs)
        row["within_seeds"] = bool(
            abs(row["log_ratio_nc1"]) <= row["seed_spread_nc1"]
            and abs(row["log_ratio_cost"]) <= row["seed_spread_cost"]
        )
    n_in = sum(r["within_seeds"] for r in rows)
    return json_safe(
        {
            **fits[0],
            "residuals": rows,
            "reproduces_seeds": f"{n_in} of {len(rows)} steps (over {len(per_seed)} seeds)",
        }
    )


def _profile_arrays(res: Mapping[str, Any]) -> dict[str, Any]:
    """Per-layer collapse metrics and per-step W2 (with noise floors) of one analysis.

    The step lists have one entry per step ``l -> l+1`` (entry ``l``), NaN where the step was not
    measured (a plain twin's stage change: no shortcut image), so that a step's position is its
    source layer in every network."""
    col: CollapseProfile = res["collapse"]
    out: dict[str, Any] = {"layers": {m: col.values(m).tolist() for m in col.metrics}}
    if "geodesic" in res:
        prof = res["geodesic"].profile
        n_steps = len(col.layers) - 1
        rows = {r.source: r for r in prof.rows if r.target == r.source + 1}
        at = [rows.get(l) for l in range(n_steps)]

        def field(get: Callable[[Any], Any]) -> list[Any]:
            return [math.nan if r is None else get(r) for r in at]

        out["steps"] = {
            "source": list(range(n_steps)),
            "w2": field(lambda r: r.distance),
            "w2_sq": field(lambda r: r.cost),
            "noise_floor": field(lambda r: number(r.noise_floor)),
            "step_efficiency": field(lambda r: number(r.efficiency)),
        }
    return out


# ---------------------------------------------------------------------------- seeds
def aggregate_seeds(per_seed: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean, standard deviation and a 95% Student-t interval of every headline number.

    ``per_seed`` holds each seed's ``metrics`` (its ``"headline"``: model -> statistic ->
    value). A statistic is aggregated over the seeds where it is a finite number: ``None``
    (a NaN in JSON) and infinities are missing, zero is a value. ``n`` counts the seeds used,
    ``values`` lists them; a statistic no seed has as a number is left out, and so are flags
    (booleans) and texts.
    """
    out: dict[str, Any] = {}
    for m in per_seed[0]["headline"]:
        rows = [p["headline"].get(m, {}) for p in per_seed]
        keys = dict.fromkeys(k for r in rows for k in r)  # in order, seed 0's first
        out[m] = {}
        for key in keys:
            vals = np.array([number(r.get(key)) for r in rows], dtype=float)
            vals = vals[np.isfinite(vals)]
            if vals.size:
                out[m][key] = interval(vals)
    return json_safe(out)


# ---------------------------------------------------------------------------- records
def record_results(res: Mapping[str, Any]) -> dict[str, Any]:
    """The analyses of one trajectory (``analyse``'s output and extras) as JSON-safe records."""
    return {k: v.to_dict() if hasattr(v, "to_dict") else json_safe(v) for k, v in res.items()}


def write_figures(
    final: Mapping[str, Any],
    epochs: Mapping[str, Mapping[int, CollapseProfile]],
    trajs: Mapping[str, Trajectory],
    calibration: Any,
    fig_dir: Path,
) -> list[str]:
    """Write the report's PNG figures into ``fig_dir`` (atomically); returns their file names.

    ``final`` maps a model to its analyses, ``epochs`` a model to its collapse profile per
    epoch, ``trajs`` a model to the trajectory of its PCA view; ``calibration`` is None or
    ``(MUFMCalibration, trajectory it was fitted on)``.
    """
    from otcollapse import plots

    fig_dir.mkdir(parents=True, exist_ok=True)
    made: list[tuple[str, Any]] = []
    cols = {k: v["collapse"] for k, v in final.items()}
    made.append(("collapse_depth_nc1.png", plots.plot_collapse_depth(cols, "nc1")))
    made.append(("collapse_depth_tr_sigma_w.png", plots.plot_collapse_depth(cols, "tr_sigma_w")))
    geos = {k: v["geodesic"] for k, v in final.items() if "geodesic" in v}
    if geos:
        steps = plots.plot_transport_steps({k: g.profile for k, g in geos.items()})
        made.append(("transport_steps.png", steps))
        # the longest segment (the headline's); the twins have the same segments
        seg = longest_index(next(iter(geos.values())))
        made.append(("mccann_fit.png", plots.plot_mccann_fit(geos, segment=seg)))
        made.append(("ots_lss.png", plots.plot_ots_lss(geos, segment=seg)))
    if epochs and any(len(v) > 1 for v in epochs.values()):
        made.append(("collapse_epochs_nc1.png", plots.plot_collapse_epochs(epochs, "nc1")))
    for name, traj in trajs.items():
        longest = max(traj.segments, key=len)  # one space: a ResNet's first longest stage
        view = traj if len(traj.segments) == 1 else traj.take_layers(list(longest))
        made.append((f"pca_{name}.png", plots.plot_layer_pca(view, n_tracks=25)))
    if calibration is not None:
        cal, fitted_on, *joint = calibration
        made.append(("mufm_calibration.png", plots.plot_mufm_calibration(cal, network=fitted_on)))
        if joint and joint[0] is not None:
            made.append(("mufm_profile.png", plots.plot_mufm_profile(joint[0], fitted_on)))
    names = []
    for fname, fig in made:
        with atomic_path(fig_dir / fname, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        names.append(fname)
    return names
