"""The weight-decay / depth experiment (``otcollapse reproduce wd-depth``): its table, its
direction rule and its figure, read from the sweep's store.

The sweep (``otcollapse/experiments/grids/wd-depth.toml``) trains a residual MLP and its plain
twin at every weight decay and depth of the grid, over several seeds, and stores the scores at
the last epoch. This module summarises it against weight decay, one line per depth:

- :func:`cell_statistics`: mean over the seeds and the half-width of its 95% Student-t interval
  ``t_{0.975, n−1}·s/√n`` (``s`` the sample standard deviation, ``n`` the seeds with a finite
  value), per score, network, depth and weight decay;
- :func:`direction`: whether a score moves the way the literature reports as weight decay
  grows (Gai & Zhang; Wang, Gai & Zhang: stronger weight decay → straighter, more collapsed
  trajectories), by the rule below;
- :func:`plot_wd_depth`: the figure.

**The direction rule.** At each depth, take the smallest and the largest weight decay at which
the score is defined for at least two seeds each, and the difference of their means
``Δ = mean(largest) − mean(smallest)`` with its 95% Welch interval
``Δ ± t_{0.975, ν}·√(s₁²/n₁ + s₂²/n₂)`` (ν the Welch–Satterthwaite degrees of freedom). With
``sign`` the published direction (+1: the score should grow with weight decay, −1: fall):

- ``"appears"``: the interval excludes 0 and ``sign·Δ > 0``;
- ``"opposite"``: the interval excludes 0 and ``sign·Δ < 0``;
- ``"not resolved"``: the interval contains 0 (or fewer than two seeds on either side).

Over the depths, a score's overall verdict is ``"appears"`` when it appears at one depth at
least and is opposite at none, ``"opposite"`` in the mirror case, ``"mixed"`` when both occur,
and ``"not resolved"`` when no depth resolves it. The Kendall τ of the five cell means against
weight decay is shown beside it (descriptive: with five points it is no test). Scores without a
published direction (the MUFM's λ_OT, the terminal epoch) get the same rule with ``"increases"``,
``"decreases"`` or ``"not resolved"``.

**λ_OT at weight decay 0.** The calibration fits the cross-entropy MUFM with
``λ_W = λ_H = weight decay``. At 0 that objective has no minimiser: with ``λ_W = 0`` the
classifier can be scaled up at no cost, which drives the cross-entropy towards 0 for any last
layer it separates, so the infimum is approached with ``‖W‖ → ∞`` and only the transport term
holds the features. What the calibration returns there depends on where the solver stopped, not
on the network. λ_OT is therefore reported as not defined (NaN) at weight decay 0 and left out of
the direction rule; the raw value stays in the store (``mufm_lambda_ot``) for inspection.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["SCORES", "cell_statistics", "direction", "plot_wd_depth", "summary"]

#: variable -> (label, published direction as weight decay grows: +1, −1, or 0 for none stated,
#: the networks shown)
SCORES: dict[str, tuple[str, int, tuple[str, ...]]] = {
    "lss_mean": ("LSS (mean over samples)", -1, ("resnet", "plain")),
    "path_ratio": ("path ratio", -1, ("resnet", "plain")),
    "ots": ("OTS", +1, ("resnet", "plain")),
    "nc1_kendall_tau": ("NC1 Kendall τ over depth", -1, ("resnet", "plain")),
    "nc1_log_slope": ("NC1 log slope over depth", -1, ("resnet", "plain")),
    "mufm_lambda_ot": ("MUFM λ_OT", 0, ("resnet",)),
    "terminal_epoch": ("terminal epoch (100% train acc.)", 0, ("resnet", "plain")),
}
#: what the published direction means, in words
_PUBLISHED = {
    "lss_mean": "decreases (straighter tracks)",
    "path_ratio": "decreases (closer to a geodesic)",
    "ots": "increases (closer to an optimal map)",
    "nc1_kendall_tau": "decreases (more progressive collapse)",
    "nc1_log_slope": "decreases (more collapse across the depth)",
    "mufm_lambda_ot": "no direction stated",
    "terminal_epoch": "no direction stated",
}


def _values(ds: Any, var: str, net: str) -> Any:
    """``var`` at the last epoch, dims ``(cell, seed)``; λ_OT NaN at weight decay 0."""
    da = ds[var]
    if "net" in da.dims:
        da = da.sel(net=net)
    if "epoch" in da.dims:
        da = da.isel(epoch=-1)
    if var == "mufm_lambda_ot":
        da = da.where(ds["weight_decay"] > 0)  # not defined at 0: see the module's docstring
    return da.transpose("cell", "seed")


def _stats(a: np.ndarray) -> tuple[float, float, int, float]:
    """Mean, 95% Student-t half-width (NaN with fewer than two values), count, std (ddof 1)."""
    from scipy import stats

    a = np.asarray(a, dtype=float)
    a = a[np.isfinite(a)]
    n = int(a.size)
    if n == 0:
        return math.nan, math.nan, 0, math.nan
    mean = float(a.mean())
    if n < 2:
        return mean, math.nan, n, math.nan
    sd = float(a.std(ddof=1))
    return mean, float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)), n, sd


def cell_statistics(ds: Any) -> list[dict[str, Any]]:
    """One row per score, network, depth and weight decay: ``mean``, ``half`` (95% Student-t
    half-width over the seeds), ``n`` (seeds with a finite value) and ``seeds`` (all seeds)."""
    rows = []
    wds = ds["weight_decay"].values
    blocks = ds["blocks"].values
    for var, (_label, _sign, nets) in SCORES.items():
        if var not in ds.data_vars:
            continue
        for net in nets:
            vals = _values(ds, var, net).values
            for i in range(ds.sizes["cell"]):
                mean, half, n, _sd = _stats(vals[i])
                rows.append(
                    {
                        "score": var,
                        "net": net,
                        "blocks": int(blocks[i]),
                        "weight_decay": float(wds[i]),
                        "mean": mean,
                        "half": half,
                        "n": n,
                        "seeds": int(vals.shape[1]),
                    }
                )
    return rows


def _welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """``mean(b) − mean(a)`` and the half-width of its 95% Welch interval (NaN when either side
    has fewer than two finite values; 0 when both have no spread)."""
    from scipy import stats

    a, b = (np.asarray(x, dtype=float) for x in (a, b))
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size < 2 or b.size < 2:
        return math.nan, math.nan
    diff = float(b.mean() - a.mean())
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se2 = va + vb
    if se2 == 0:
        return diff, 0.0
    nu = se2**2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    return diff, float(stats.t.ppf(0.975, nu) * math.sqrt(se2))


def _word(diff: float, half: float, sign: int) -> str:
    if not (math.isfinite(diff) and math.isfinite(half)) or abs(diff) <= half:
        return "not resolved"
    if sign == 0:
        return "increases" if diff > 0 else "decreases"
    return "appears" if sign * diff > 0 else "opposite"


def _overall(words: Sequence[str], sign: int) -> str:
    if sign == 0:
        ups, downs = words.count("increases"), words.count("decreases")
        if ups and downs:
            return "mixed"
        return "increases" if ups else "decreases" if downs else "not resolved"
    yes, no = words.count("appears"), words.count("opposite")
    if yes and no:
        return "mixed"
    return "appears" if yes else "opposite" if no else "not resolved"


def direction(ds: Any, var: str, net: str = "resnet", sign: int | None = None) -> dict[str, Any]:
    """Whether ``var`` of ``net`` moves in the published direction as weight decay grows.

    Parameters
    ----------
    ds : xarray.Dataset
        A sweep over ``weight_decay`` (and ``blocks``) with a ``seed`` dimension
        (:func:`otcollapse.load_sweep`).
    var : str
        A score of :data:`SCORES` (or any variable over ``cell, seed[, net][, epoch]``; then give
        ``sign``).
    net : str
        ``"resnet"`` or ``"plain"``.
    sign : {+1, −1, 0}, optional
        The published direction (default :data:`SCORES`'s; 0: none stated).

    Returns
    -------
    dict
        ``verdict`` over the depths and ``per_depth``: one dict per depth with the weight decays
        compared (``from``, ``to``), ``diff`` (mean at ``to`` − mean at ``from``), ``half`` (its
        95% Welch half-width), ``kendall_tau`` of the cell means against weight decay and
        ``verdict`` (the rule of the module's docstring).
    """
    from scipy import stats

    if sign is None:
        sign = SCORES[var][1] if var in SCORES else 0
    vals = _values(ds, var, net).values
    wds = np.asarray(ds["weight_decay"].values, dtype=float)
    blocks = (
        np.asarray(ds["blocks"].values).reshape(-1)
        if "blocks" in ds.coords
        else np.zeros(wds.size, int)
    )
    if blocks.size == 1:
        blocks = np.repeat(blocks, wds.size)
    per_depth = []
    for b in sorted(set(blocks.tolist())):
        idx = [i for i in np.argsort(wds, kind="stable") if blocks[i] == b]
        usable = [i for i in idx if np.isfinite(vals[i]).sum() >= 2]
        if len(usable) < 2:
            diff, half, lo, hi = math.nan, math.nan, math.nan, math.nan
        else:
            lo, hi = usable[0], usable[-1]
            diff, half = _welch(vals[lo], vals[hi])
            lo, hi = float(wds[lo]), float(wds[hi])
        means = [np.nanmean(vals[i]) if np.isfinite(vals[i]).any() else math.nan for i in idx]
        ok = [k for k, m in enumerate(means) if math.isfinite(m)]
        tau = math.nan
        if len(ok) >= 2:
            res = stats.kendalltau([wds[idx[k]] for k in ok], [means[k] for k in ok])
            tau = float(res.statistic) if res.statistic == res.statistic else math.nan
        per_depth.append(
            {
                "blocks": int(b),
                "from": lo,
                "to": hi,
                "diff": diff,
                "half": half,
                "kendall_tau": tau,
                "verdict": _word(diff, half, sign),
            }
        )
    return {
        "score": var,
        "net": net,
        "published": sign,
        "verdict": _overall([d["verdict"] for d in per_depth], sign),
        "per_depth": per_depth,
    }


def _fmt(x: float, digits: int = 3) -> str:
    return "—" if not math.isfinite(x) else f"{x:.{digits}g}"


def _pm(mean: float, half: float, n: int, seeds: int) -> str:
    if n == 0:
        return "—"
    text = _fmt(mean) if not math.isfinite(half) else f"{_fmt(mean)} ± {_fmt(half, 2)}"
    return text if n == seeds else f"{text} ({n}/{seeds})"


def summary(ds: Any) -> dict[str, Any]:
    """The table and the directions of the experiment (JSON-safe): ``table`` (one row per
    score, network and depth; one column ``wd=<value>`` per weight decay, ``mean ± half``, with
    ``(n/seeds)`` when some seeds lack a value; ``not reached``: no seed reached the terminal
    phase; ``not defined``: λ_OT at weight decay 0), ``direction`` (one row per score and network), ``published`` (the rows of
    ``published.json``: one per score, the ResNet's direction) and ``cells`` (the numbers)."""
    cells = cell_statistics(ds)
    wds = sorted({r["weight_decay"] for r in cells})
    table = []
    for var, (label, _sign, nets) in SCORES.items():
        for net in nets:
            mine = [r for r in cells if r["score"] == var and r["net"] == net]
            for b in sorted({r["blocks"] for r in mine}):
                row: dict[str, Any] = {"score": label, "net": net, "blocks": b}
                for r in (r for r in mine if r["blocks"] == b):
                    text = _pm(r["mean"], r["half"], r["n"], r["seeds"])
                    if r["n"] == 0 and var == "terminal_epoch":
                        text = "not reached"
                    elif r["n"] == 0 and var == "mufm_lambda_ot" and r["weight_decay"] == 0:
                        text = "not defined"
                    row[f"wd={r['weight_decay']:g}"] = text
                table.append(row)
    directions, published = [], []
    for var, (label, sign, nets) in SCORES.items():
        if var not in ds.data_vars:
            continue
        for net in nets:
            d = direction(ds, var, net, sign)
            by_depth = "; ".join(
                f"{p['blocks']} blocks ({_fmt(p['from'])} → {_fmt(p['to'])}): "
                f"Δ = {_fmt(p['diff'])} ± {_fmt(p['half'], 2)} "
                f"({p['verdict']}, τ = {_fmt(p['kendall_tau'], 2)})"
                for p in d["per_depth"]
            )
            directions.append(
                {
                    "score": label,
                    "net": net,
                    "published": _PUBLISHED[var],
                    "verdict": d["verdict"],
                    "per depth": by_depth,
                    "per_depth": d["per_depth"],
                }
            )
            if net == "resnet":
                published.append(
                    {
                        "quantity": f"ResNet {label} as weight decay grows",
                        "published": _PUBLISHED[var],
                        "measured": f"{d['verdict']} — {by_depth}",
                    }
                )
    reached = _terminal_reached(ds)
    return {
        "lambda_ot_at_zero": _lambda_ot_at_zero(ds),
        "weight_decays": wds,
        "table": table,
        "direction": directions,
        "published": published,
        "terminal_reached": reached,
        "cells": cells,
        "rule": (
            "Δ = mean at the largest − mean at the smallest weight decay where the score is "
            "defined (≥ 2 seeds each), per depth, with its 95% Welch interval: 'appears' when the "
            "interval excludes 0 on the published side, 'opposite' on the other, 'not resolved' "
            "when it contains 0. Over depths: 'appears' if it appears at ≥ 1 depth and is "
            "opposite at none, 'opposite' in the mirror case, 'mixed' if both."
        ),
    }


def _lambda_ot_at_zero(ds: Any) -> dict[str, Any] | None:
    """Why λ_OT is not shown at weight decay 0: the raw calibrated λ_OT there and the NC1
    discrepancy of the calibration (range over cells and seeds), against the discrepancy at the
    other weight decays."""
    if "mufm_lambda_ot" not in ds.data_vars or "mufm_discrepancy" not in ds.data_vars:
        return None
    zero = ds["weight_decay"] == 0
    if not bool(zero.any()):
        return None

    def span(da: Any) -> list[float]:
        v = np.asarray(da.values, dtype=float)
        v = v[np.isfinite(v)]
        return [float(v.min()), float(v.max())] if v.size else [math.nan, math.nan]

    disc = ds["mufm_discrepancy"]
    return {
        "raw_lambda_ot": span(ds["mufm_lambda_ot"].where(zero)),
        "discrepancy": span(disc.where(zero)),
        "discrepancy_elsewhere": span(disc.where(~zero)),
    }


def _terminal_reached(ds: Any) -> list[dict[str, Any]]:
    """Per network and depth: how many (weight decay, seed) runs reached 100% train accuracy."""
    if "terminal_epoch" not in ds.data_vars:
        return []
    out = []
    blocks = ds["blocks"].values
    for net in ("resnet", "plain"):
        te = ds["terminal_epoch"].sel(net=net).transpose("cell", "seed").values
        for b in sorted(set(blocks.tolist())):
            rows = te[blocks == b]
            out.append(
                {
                    "net": net,
                    "blocks": int(b),
                    "reached": int(np.isfinite(rows).sum()),
                    "runs": int(rows.size),
                }
            )
    return out


def plot_wd_depth(ds: Any, title: str = "") -> Any:
    """Every score of :data:`SCORES` against weight decay: one colour per depth, the ResNet
    solid (circles), the plain twin dashed (squares), the mean over seeds with its 95%
    Student-t interval as error bars; weight decays on an even categorical axis (0 at the
    left). A hollow marker: not every seed has a value (λ_OT is not defined at weight decay 0;
    a terminal epoch only exists when the run reached 100% train accuracy); a cross at the last
    epoch: no seed of that cell reached 100% train accuracy."""
    from matplotlib.figure import Figure

    cells = cell_statistics(ds)
    wds = sorted({r["weight_decay"] for r in cells})
    depths = sorted({r["blocks"] for r in cells})
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    last = int(ds["epochs"].values.max()) if "epochs" in ds.coords else None
    fig = Figure(figsize=(15, 7.2))
    axes = fig.subplots(2, 4).ravel()
    width = 0.3
    for ax, (var, (label, sign, nets)) in zip(axes, SCORES.items(), strict=False):
        mine = [r for r in cells if r["score"] == var]
        for net in nets:
            for k, b in enumerate(depths):
                rows = sorted(
                    (r for r in mine if r["net"] == net and r["blocks"] == b),
                    key=lambda r: r["weight_decay"],
                )
                if not rows:
                    continue
                dx = width * ((k + 0.5) / len(depths) - 0.5) + (0.04 if net == "plain" else 0)
                x = np.array([wds.index(r["weight_decay"]) + dx for r in rows])
                y = np.array([r["mean"] for r in rows])
                e = np.array([r["half"] if math.isfinite(r["half"]) else 0.0 for r in rows])
                full = np.array([r["n"] == r["seeds"] for r in rows])
                c = colours[k % len(colours)]
                ls = "-" if net == "resnet" else "--"
                mk = "o" if net == "resnet" else "s"
                ax.errorbar(
                    x, y, yerr=e, color=c, ls=ls, marker="none", capsize=2, lw=1.2,
                    label=f"{net}, {b} blocks",
                )  # fmt: skip
                ax.plot(x[full], y[full], mk, color=c, ms=5)
                ax.plot(x[~full], y[~full], mk, color=c, ms=5, mfc="white")
                if var == "terminal_epoch" and last is not None:
                    never = np.array([r["n"] == 0 for r in rows])  # no seed reached it
                    ax.plot(x[never], np.full(never.sum(), last), "x", color=c, ms=7)
        if var == "mufm_lambda_ot" and any(r["n"] and r["mean"] > 0 for r in mine):
            ax.set_yscale("log")  # λ_OT spans decades, as the weight decay does
        if var == "mufm_lambda_ot" and 0.0 in wds:
            ax.text(
                wds.index(0.0), 0.5, "not defined\nat weight\ndecay 0", transform=ax.get_xaxis_transform(),
                ha="center", va="center", fontsize=8, color="0.4",
            )  # fmt: skip
        if var == "terminal_epoch" and last is not None:
            ax.axhline(last, color="0.6", lw=0.8, ls=":")
            ax.set_ylabel(f"epoch (×: not reached in {last})")
        ax.set_xlim(-0.5, len(wds) - 0.5)
        ax.set_xticks(range(len(wds)))
        ax.set_xticklabels([f"{w:g}" for w in wds])
        ax.set_xlabel("weight decay")
        arrow = {1: " (published: ↑)", -1: " (published: ↓)", 0: ""}[sign]
        only = " (ResNet only)" if nets == ("resnet",) else ""
        ax.set_title(label + only + arrow, fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    axes[-1].axis("off")
    axes[-1].legend(handles, labels, loc="center", fontsize=9, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_wd_depth(folder: Any, ds: Any, title: str = "") -> dict[str, Any]:
    """Draw :func:`plot_wd_depth` into ``folder/figures/wd_depth.png`` (atomically) and return
    :func:`summary` with the figure's name under ``figures``."""
    from pathlib import Path

    from otcollapse._utils import atomic_path

    out = Path(folder) / "figures" / "wd_depth.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = plot_wd_depth(ds, title)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    res = summary(ds)
    res["figures"] = [
        {
            "file": "figures/wd_depth.png",
            "caption": (
                "Scores at the last epoch against weight decay (0 at the left), one colour per "
                "depth; ResNet solid with circles, plain twin dashed with squares; mean over the "
                "seeds with its 95% Student-t interval. Hollow markers: not every seed has a "
                "value (λ_OT is not defined at weight decay 0; a terminal epoch only where 100% "
                "train accuracy was reached); a cross at the last epoch: no seed reached it."
            ),
        }
    ]
    return res


def direction_rows(res: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The direction rows of :func:`summary` without the nested numbers (for a table)."""
    return [{k: v for k, v in r.items() if k != "per_depth"} for r in res.get("direction", [])]
