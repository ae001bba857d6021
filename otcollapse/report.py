"""``report.html``: one self-contained page (figures inline) from a run folder's saved results.

:func:`write_report` reads ``metrics.json`` and the PNGs in ``figures/`` and writes
``report.html`` beside them; it never recomputes anything, so ``otcollapse report RUN_DIR``
rebuilds a report from saved results in a second. :func:`write_sweep_report` does the same for a
sweep folder from its ``sweep.json`` and its results Dataset (the caller loads the store, with
``otcollapse.load_sweep``: this module sits below ``experiments``), drawing the grid figures.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from otcollapse._utils import atomic_write_text
from otcollapse.io import load_json, locked_folder

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["GLOSSARY", "SWEEP_HEADLINE", "write_report", "write_sweep_report"]

#: What each reported number means (shown at the end of every report).
GLOSSARY: tuple[tuple[str, str], ...] = (
    (
        "W2², W2",
        "Squared 2-Wasserstein distance between two layer measures, min over couplings π of "
        "Σ π_ij ‖x_i − y_j‖² (full squared Euclidean cost), and its square root.",
    ),
    (
        "paired cost, paired",
        "(1/n) Σ_i ‖h_{l+1}(x_i) − h_l(x_i)‖²: the cost of the network's own coupling (sample i to "
        "sample i). Never below W2².",
    ),
    (
        "efficiency",
        "W2² / paired cost ∈ [0, 1]: 1 when the block (per step) or the network from the first "
        "to the last layer (end to end, OTS's continuous companion) moves the mass optimally; "
        "close to 1 when its map costs little more than the optimal one, even where OTS is 0.",
    ),
    (
        "gauge, aligned",
        "gauge none: the raw layers. orthogonal: each layer rotated onto the previous one by "
        "orthogonal Procrustes on the paired samples before any distance is taken (a change of "
        "basis the next linear layer can absorb leaves the network unchanged). *_aligned: a "
        "score after that alignment.",
    ),
    (
        "null: random walk, null: unrelated",
        "The scores of trajectories with no geodesic structure at the same n, d and L: "
        "Gaussian random-walk tracks (LSS ≈ √L for large d) and independent Gaussian layers "
        "(LSS ≈ L).",
    ),
    (
        "*_ci",
        "A percentile interval over subsamples without replacement (n_boot replicates of half "
        "the analysed samples): the spread of the statistic at half the sample size. OTS, W2 "
        "and the path ratio depend on the sample size, so the full-sample value can lie outside "
        "it; compare intervals with intervals.",
    ),
    (
        "noise floor",
        "W2 between two disjoint random halves of the same layer: distances at or below it are "
        "indistinguishable from sampling noise.",
    ),
    (
        "≤ floor, steps_below_floor",
        "A step whose W2 is at or below its noise floor (flagged yes in the transport table), "
        "and how many of a segment's steps are (counted in the verdict table).",
    ),
    (
        "path ratio R, R, path_ratio",
        "Σ_l W2(μ_l, μ_{l+1}) / W2(μ_0, μ_L) ≥ 1; 1 when the layers lie in order on one "
        "Wasserstein geodesic (Gai & Zhang).",
    ),
    (
        "speed CV, speed_cv",
        "Coefficient of variation of the step lengths W2(μ_l, μ_{l+1}); 0 for constant speed.",
    ),
    (
        "McCann fit, McCann t_l, mccann_max_residual",
        "For each layer, the time t_l of the nearest point of the displacement interpolation "
        "μ_t = ((1−t)Id + tT)_#μ_0 between the ends, and the residual W2(μ_l, μ_{t_l}) / "
        "W2(μ_0, μ_L); on a constant-speed geodesic t_l = l/L and the residual is 0.",
    ),
    (
        "OTS, ots",
        "Optimal-transport score: fraction of samples that the optimal assignment between the "
        "inputs h_0 and outputs h_L sends to their own output (Gai & Zhang). 1 for an optimal map.",
    ),
    (
        "LSS, LSS mean, LSS median, lss_mean, lss_median",
        "Line-shape score per sample: L / ‖x̃_L − x̃_0‖ with x̃ the track made of unit steps; 1 "
        "for a straight track (Gai & Zhang). Published: MNIST ResNet with L2, LSS 1.12, OTS 0.96.",
    ),
    (
        "NC1, nc1, nc1_first, nc1_last",
        "(1/K) Tr(Σ_W Σ_B^†), within-class over between-class scatter (Papyan, Han & Donoho); "
        "0 at neural collapse. He–Su's D = K·NC1.",
    ),
    (
        "Tr Σ_W, tr_sigma_w",
        "Total within-class variance (1/N) Σ_i ‖h_i − m_{y_i}‖², in squared feature units; an "
        "upper bound on W2² to the class means.",
    ),
    (
        "Kendall τ (PFC), kendall_tau, nc1_kendall_tau",
        "Rank correlation of a collapse metric with depth: −1 when it decreases at every layer, "
        "as the progressive feedforward collapse conjecture predicts (Wang, Gai & Zhang).",
    ),
    (
        "effect",
        "A prediction read against a baseline: s·(score − baseline score), s = −1 where lower is "
        "the prediction (τ, R, LSS) and +1 for OTS, so that it is positive when the prediction "
        "holds; with its 95% interval (over seeds, or over paired subsamples of one seed).",
    ),
    (
        "floor, split-half floor",
        "Of a score: |S(A) − S(B)| between the two disjoint stratified halves of the same "
        "samples (the largest over the arms compared): what sampling alone moves the score by. "
        "An effect no larger is not resolved.",
    ),
    (
        "terminal_epoch",
        "The first epoch with 100% training accuracy: the start of the terminal phase (Papyan, "
        "Han & Donoho); empty when it was not reached.",
    ),
    (
        "nc1_log_slope",
        "Least-squares slope β of ln NC1_l = α + β·l/L over the layers: the log-fold change of "
        "NC1 across the whole depth (negative: NC1 decreases; comparable between depths).",
    ),
    (
        "λ_H, λ_W, criterion J",
        "The MUFM's feature decay (fitted jointly with λ_OT) and classifier decay (held fixed at "
        "the network's weight decay), and J = Σ_l [log(NC1^M_l / NC1^N_l)² + log(c̃^M_l / "
        "c̃^N_l)²], the joint fit's criterion (0: both profiles agree at every step).",
    ),
    (
        "nc1_network, nc1_mufm, cost_network, cost_mufm",
        "Per step l of the fitted segment: NC1 of the network's and of the fitted MUFM's layer l, "
        "and the step cost c̃_l = W2²(μ_{l−1}, μ_l) / M_L, M_L the second moment of that model's "
        "centred last layer (dimensionless).",
    ),
    (
        "log_ratio_nc1, log_ratio_cost",
        "log(MUFM value / network value) of NC1 and of c̃_l at a step: the joint fit's residuals "
        "(0: the model reproduces the network there).",
    ),
    (
        "spread_nc1, spread_cost, within",
        "|log v(A) − log v(B)| of the network's NC1 and c̃_l between two disjoint halves of the "
        "fitted samples: how far sampling alone moves the network's own curve. within: both "
        "residuals of the step are no larger.",
    ),
    (
        "seed_spread_nc1, seed_spread_cost, within_seeds",
        "Over the seeds of a run: the range (max − min) of the network's log NC1 and log c̃_l at "
        "a step; within_seeds: both of the first seed's fit residuals there are no larger.",
    ),
    (
        "network_layer",
        "The index in the network of a layer of the fitted segment (0 = the network's first "
        "captured layer).",
    ),
    (
        "MUFM λ_OT",
        "Transport weight of the multilayer unconstrained feature model whose optimum best "
        "matches the network's last-layer NC1 (λ_OT = 0: the UFM, full collapse; λ_OT → ∞: the "
        "features stay at the input).",
    ),
    (
        "frac_non_increasing, monotone, p_value",
        "Over depth: the fraction of successive layers at which the metric does not increase, "
        "whether it never increases (within a relative tolerance), and the p-value of Kendall's "
        "test of no trend.",
    ),
    (
        "nc1_tilde",
        "ÑC1 = Tr Σ_W / Tr Σ_B, the scatter ratio without the pseudo-inverse (Tirer et al.).",
    ),
    (
        "cdnv",
        "Class-distance normalised variance, the mean over class pairs of "
        "(V_k + V_k') / (2‖m_k − m_k'‖²) (Galanti et al.); 0 at collapse.",
    ),
    (
        "nc2_etf_distance",
        "Distance of the normalised Gram matrix of the centred class means to the simplex "
        "ETF's (Papyan et al.); 0 at NC2.",
    ),
    (
        "nc3",
        "Self-duality: distance between the normalised classifier rows and the normalised "
        "centred class means (Papyan et al.); 0 at NC3, undefined without a classifier.",
    ),
    (
        "nc4_ncc_error",
        "Error rate of the nearest-class-centre rule against the labels (NC4).",
    ),
    (
        "train_accuracy, test_accuracy",
        "Fraction of the training (test) samples the network classifies correctly.",
    ),
    (
        "discrepancy, value",
        "What the MUFM calibration minimises over λ_OT: the NC1 gap |log NC1_MUFM − log "
        "NC1_network| (discrepancy 'nc1'), or W2 between the last layers ('w2'); value is its "
        "value at the fitted λ_OT.",
    ),
    (
        "w2, w2_relative, w2_network_input_output",
        "W2 between the MUFM's last-layer features and the network's; the network's own W2 from "
        "its first to its last layer; their ratio (below 1: the MUFM is closer to the network's "
        "output than the network's input is).",
    ),
    (
        "d",
        "Dimension of a layer's feature vectors in the space the numbers live in (the space is "
        "named at the top of the page and in every caption): channels when pooled, C·H·W when "
        "flattened, the projected dimension when projected.",
    ),
    (
        "stream shape",
        "Shape of the residual stream a layer was taken from, before pooling: (C, H, W) of a "
        "feature map, (d) of a vector. Layers of equal d and stream shape form a segment.",
    ),
    (
        "steps",
        "Steps l → l+1 inside a segment (its layers − 1). A segment of one step (two layers) "
        "has R = 1 and LSS = 1 by construction: only its OTS and W2 carry information.",
    ),
    (
        "note",
        "What sets a row apart: a one-step segment (R = 1, LSS = 1 by construction), or a step "
        "across stages (in no segment: measured from the shortcut image P h_l, or not at all).",
    ),
    (
        "D (stream), k",
        "The flattened stream's dimension C·H·W of a layer, and the dimension k it is projected "
        "to by a seeded Gaussian map G/√k (layers with D ≤ k are not projected).",
    ),
    (
        "ratio min, ratio q01, ratio median, ratio q99, ratio max, max |ratio − 1|",
        "Distortion of the random projection on sample pairs: the ratio ‖P(x − y)‖² / ‖x − y‖² "
        "of squared distances after and before projection (its law is χ²_k/k: mean 1, standard "
        "deviation √(2/k)), its extremes and quantiles, and the largest relative error.",
    ),
    (
        "W2² stream, W2² projected, relative error",
        "W2² of a step between the flattened-stream measures and between their projections, on "
        "the distortion check's samples, and |projected − stream| / stream.",
    ),
    (
        "nc1_network, nc1_mufm, log_nc1_gap",
        "NC1 of the network's last layer and of the fitted MUFM's, and |log NC1_MUFM − log "
        "NC1_network|.",
    ),
)

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em;
margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
.ok { color: #0a7d20; font-weight: bold; } .no { color: #b00020; font-weight: bold; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.muted { color: #666; font-size: 0.9em; }
"""

_CAPTIONS = {
    "collapse_depth_nc1.png": "NC1 over depth (log scale) for each network; a red × marks a "
    "layer where NC1 rose over the previous one (against progressive feedforward collapse).",
    "collapse_depth_tr_sigma_w.png": "Within-class variance Tr Σ_W over depth (log scale).",
    "transport_steps.png": "Left: W2² of every block's step beside the paired cost of the "
    "network's own coupling and the split-half noise floor. Right: transport efficiency.",
    "mccann_fit.png": "McCann fit: each layer's fitted time on the Wasserstein geodesic between "
    "the first and last layer against l/L (the diagonal is a constant-speed geodesic).",
    "ots_lss.png": "Gai & Zhang's scores: OTS (left) and the per-sample LSS (right).",
    "collapse_epochs_nc1.png": "NC1 of the first and last layer over the training epochs.",
    "mufm_calibration.png": "The MUFM fitted to the ResNet: discrepancy over λ_OT (left), NC1 "
    "over depth of the network and the fitted MUFM (middle), and the last-layer features of both "
    "on the principal axes of the network's (right).",
}


def _e(x: Any) -> str:
    return html.escape(str(x))


def _fmt(v: Any, precision: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int,)) and not isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        return f"{v:.{precision}g}"
    if isinstance(v, str) and v in ("inf", "-inf", "nan"):
        return v
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(t, float) for t in v):
        return f"[{v[0]:.{precision}g}, {v[1]:.{precision}g}]"
    return _e(v)


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "<p class='muted'>(none)</p>"
    cols = list(columns) if columns is not None else list(rows[0])
    head = "".join(
        f"<th class='l'>{_e(c)}</th>" if i == 0 else f"<th>{_e(c)}</th>" for i, c in enumerate(cols)
    )
    body = []
    for r in rows:
        cells = []
        for i, c in enumerate(cols):
            v = r.get(c)
            cls = " class='l'" if i == 0 or isinstance(v, str) else ""
            cells.append(f"<td{cls}>{_fmt(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _headline(head: Mapping[str, Mapping[str, Any]]) -> str:
    cols = [
        "model",
        "train_accuracy",
        "test_accuracy",
        "ots",
        "lss_mean",
        "path_ratio",
        "speed_cv",
        "mccann_max_residual",
        "nc1_first",
        "nc1_last",
        "nc1_kendall_tau",
    ]
    rows = [{"model": m, **v} for m, v in head.items()]
    present = [c for c in cols if c == "model" or any(r.get(c) is not None for r in rows)]
    return _table(rows, present)


def _verdicts(verdicts: Sequence[Mapping[str, Any]]) -> str:
    """The predictions, each against its baselines: one row per comparison, the claim once."""
    if not verdicts:
        return ""
    rows, last = [], None
    for v in verdicts:
        word = v.get("verdict", "holds" if v["holds"] else "does not hold")
        cls = {True: "ok", False: "no"}.get(v["holds"], "muted")
        why = f" <span class='muted'>({_e(v['why'])})</span>" if v.get("why") else ""
        mark = f"<span class='{cls}'>{_e(word)}</span>{why}"
        claim = "" if v["claim"] == last else _e(v["claim"])
        last = v["claim"]
        rows.append(
            f"<tr><td class='l'>{claim}</td><td class='l'>{_e(v.get('comparison', ''))}</td>"
            f"<td class='l'>{_e(v['measured'])}</td><td class='l'>{mark}</td></tr>"
        )
    how = sorted({v["interval"] for v in verdicts if v.get("interval")})
    return (
        "<h2>What the theory predicts, and what was measured</h2>"
        "<p class='muted'>Each prediction is read as an effect against its baselines (trained − "
        "init, ResNet − plain twin, or the null value), signed positive when the prediction "
        "holds, with a 95% interval and the split-half floor (the difference the two halves of "
        "the same samples show). Not resolved: the interval contains 0, the effect is within "
        "the floor, or the score is saturated in both arms (it cannot discriminate). Intervals: "
        + _e("; ".join(how) or "none")
        + ".</p><table><tr><th class='l'>prediction</th><th class='l'>against</th>"
        "<th class='l'>measured</th><th class='l'>verdict</th></tr>" + "".join(rows) + "</table>"
    )


def _aggregate(agg: Mapping[str, Mapping[str, Any]], seeds: Sequence[int]) -> str:
    rows = []
    for model, stats in agg.items():
        for key, s in stats.items():
            rows.append(
                {
                    "model": model,
                    "statistic": key,
                    "mean": s["mean"],
                    "std": s["std"],
                    "95% interval": s["ci95"],
                    "n": s["n"],
                }
            )
    return (
        f"<h2>Over {len(seeds)} seeds ({_e(', '.join(map(str, seeds)))})</h2>"
        "<p>Mean, standard deviation and a 95% Student-t interval of each headline number over "
        "the seeds; each seed's own report is in <code>seed_&lt;s&gt;/report.html</code>.</p>"
        + _table(rows)
    )


def _figures(folder: Path, names: Sequence[str]) -> tuple[str, list[str]]:
    parts, missing = [], []
    for name in names:
        p = folder / "figures" / name
        if not p.exists():
            missing.append(name)
            continue
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        cap = _CAPTIONS.get(name)
        if cap is None and name.startswith("pca_"):
            cap = (
                f"2-D PCA view of the {name[4:-4]} layer measures (first, middle and last layer on "
                "shared axes), coloured by class, with sample tracks."
            )
        parts.append(
            f"<figure><img alt='{_e(name)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{_e(cap or name)}</figcaption></figure>"
        )
    return "".join(parts), missing


def _step_segment(r: Mapping[str, Any], segments: Sequence[Mapping[str, Any]]) -> str:
    """The segment a profile row's step lies in (its index), or how it crosses two."""
    for i, seg in enumerate(segments):
        if r["source"] in seg["layers"] and r["target"] in seg["layers"]:
            return str(i)
    if r.get("shortcut"):
        return "across stages, from P h_l"
    return "across segments"


def _model_details(name: str, res: Mapping[str, Any], space: str = "") -> str:
    out = [f"<h3>{_e(name)}</h3>"]
    where = f" — in {_e(space)}" if space else ""
    geo = res.get("geodesic")
    if geo:
        rows = []
        multi = len(geo["segments"]) > 1
        for r in geo["profile"]["rows"]:
            seg = {"segment": _step_segment(r, geo["segments"])} if multi else {}
            rows.append(
                {
                    "pair": f"{r['source_name']} → {r['target_name']}",
                    **seg,
                    "W2²": r["cost"],
                    "W2": r["distance"],
                    "paired": r["paired"],
                    "efficiency": r["efficiency"],
                    "noise floor": r["noise_floor"],
                    "≤ floor": None
                    if r["noise_floor"] is None
                    else r["distance"] <= r["noise_floor"],
                    "method": r["method"],
                    "converged": r["converged"],
                }
            )
        cross = ""
        if multi:
            cross = (
                " A step across stages lies in no segment: it is measured between the shortcut "
                "image P_#μ_l and μ_{l+1} (segment “across stages, from P h_l”) and enters no "
                "segment's R, McCann fit, OTS or LSS; a step without a shortcut image between "
                "layers of different spaces (a plain twin's stage change) is not measured."
            )
        out.append(f"<p>Transport between successive layers{where}.{cross}</p>" + _table(rows))
        segs = []
        for i, s in enumerate(geo["segments"]):
            steps = len(s["layers"]) - 1
            segs.append(
                {
                    "segment": f"{i}: {s['names'][0]} … {s['names'][-1]}",
                    "d": s.get("dim"),
                    "steps": steps,
                    "R": s["path_ratio"],
                    "speed CV": s["speed_cv"],
                    "OTS": s["ots"],
                    "LSS mean": s["lss"]["mean"],
                    "LSS median": s["lss"]["median"],
                    "McCann t_l": ", ".join(_fmt(t, 3) for t in s["mccann"]["t"]),
                    "note": "one step: R = 1 and LSS = 1 by construction" if steps == 1 else "",
                }
            )
        trivial = sum(len(s["layers"]) == 2 for s in geo["segments"])
        caption = f"Geodesic tests per segment (layers in one space){where}."
        if trivial:
            caption += (
                f" {trivial} segment(s) have a single step (two layers): their R and LSS are 1 "
                "by construction and say nothing about geodesics; their OTS still does."
            )
        out.append(f"<p>{caption}</p>" + _table(segs))
        if geo.get("notes"):
            out.append("<p class='muted'>" + _e(" ".join(geo["notes"])) + "</p>")
    col = res.get("collapse")
    if col:
        keep = [
            "nc1",
            "nc1_tilde",
            "cdnv",
            "nc2_etf_distance",
            "nc3",
            "nc4_ncc_error",
            "tr_sigma_w",
        ]
        rows = []
        for i, layer in enumerate(col["layers"]):
            row = {"layer": f"{i} ({layer['name']})"}
            row.update({m: layer["metrics"].get(m) for m in keep if m in col["metrics"]})
            rows.append(row)
        out.append(f"<p>Collapse metrics per layer{where}</p>" + _table(rows))
        pfc = [
            {"metric": m, **{k: v for k, v in s.items() if k != "layers"}}
            for m, s in col["pfc"].items()
            if m in keep
        ]
        out.append(f"<p>Progressive feedforward collapse (over depth){where}</p>" + _table(pfc))
    return "".join(out)


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` from ``run_dir/metrics.json`` and ``run_dir/figures/``.

    The folder is held (:func:`otcollapse.io.locked_folder`) while the report is written, so a
    report is not rebuilt while another process is still writing the run.

    Raises
    ------
    ValueError
        When ``run_dir`` has no ``metrics.json`` (not a run folder), or a ``metrics.json`` that
        is not valid JSON (the message names the file).
    otcollapse.io.FolderInUseError
        When another process is writing into ``run_dir``.
    """
    folder = Path(run_dir)
    mpath = folder / "metrics.json"
    if not mpath.is_file():
        raise ValueError(
            f"{str(folder)!r} has no metrics.json: not an otcollapse run folder (made by "
            "`otcollapse run`, `analyze` or `mufm`)."
        )
    with locked_folder(folder):
        return _write_report(folder, load_json(mpath))


_TITLES = {
    "run": "otcollapse run: a ResNet and its plain twin",
    "analyze": "otcollapse analyze: saved trajectories",
    "mufm": "otcollapse mufm: the multilayer unconstrained feature model",
    "reproduce": "otcollapse reproduce: a published reference point",
}

#: the columns of the table over training epochs (those a run recorded)
_EPOCH_COLUMNS = (
    "epoch",
    "train_accuracy",
    "ots",
    "lss_mean",
    "path_ratio",
    "nc1_first",
    "nc1_last",
    "nc1_kendall_tau",
)


def _write_report(folder: Path, m: Mapping[str, Any]) -> Path:
    title = _TITLES.get(m.get("kind", "run"), "otcollapse report")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p class='muted'>Run folder <code>{_e(folder.resolve())}</code>",
    ]
    if "seconds" in m:
        parts.append(f" · {m['seconds']:.0f} s")
    parts.append("</p>")
    if m.get("note"):
        parts.append(f"<p>{_e(m['note'])}</p>")
    if m.get("device"):
        parts.append(f"<p class='muted'>Computed on {_e(m['device'])}.</p>")
    parts += _published_section(m)
    parts += _space_section(m)
    if m.get("sweep"):
        parts.append("<h2>Sweep</h2>" + _table(m["sweep"]))
    parts.append(_verdicts(m.get("verdicts", [])))
    parts += _headline_section(m)
    parts += _geometry_section(m)
    if m.get("aggregate"):
        parts.append(_aggregate(m["aggregate"], m.get("seeds", [])))
        if _in_space(m):
            parts.append(f"<p class='muted'>{_in_space(m).strip()}</p>")
    parts += _figures_section(folder, m)
    parts += _epochs_section(m)
    parts += _mufm_section(m)
    parts += _details_section(m)
    parts.append("<h2>What each number means</h2><table>")
    parts.extend(
        f"<tr><td class='l'><b>{_e(k)}</b></td><td class='l'>{_e(v)}</td></tr>"
        for k, v in _glossary_for("".join(parts))
    )
    parts.append("</table>")
    for key, head in (
        ("settings", "Settings"),
        ("provenance", "Data provenance"),
        ("versions", "Package versions"),
    ):
        if m.get(key):
            parts.append(f"<h2>{head}</h2><pre>{_e(json.dumps(m[key], indent=2))}</pre>")
    parts.append("</body></html>")
    out = folder / "report.html"
    atomic_write_text(out, "\n".join(parts))
    return out


def _geometry_section(m: Mapping[str, Any]) -> list[str]:
    """Raw and gauge-aligned scores with their intervals, beside the null baselines."""
    rows = m.get("geometry")
    if not rows:
        return []
    out = ["<h2>Change of basis: raw and aligned scores, against null baselines</h2>"]
    spaces = m.get("feature_space") or {}
    if spaces:
        out.append(
            "<p>Feature space: "
            + "; ".join(f"{_e(k)}: {_e(v)}" for k, v in spaces.items())
            + ".</p>"
        )
    out.append(
        "<p>Each model's longest segment, on its raw layers (gauge <code>none</code>) and after "
        "aligning successive layers by orthogonal Procrustes (gauge <code>orthogonal</code>: the "
        "change of basis a block's output can undergo without changing the network is removed). "
        "Intervals: percentile intervals over subsamples. The null rows are a random walk and "
        "unrelated layers at the same number of samples, dimension and depth: scores near "
        "them say no geodesic structure.</p>"
    )
    cols = ["model", "gauge", "ots", "ots_ci", "efficiency", "efficiency_ci", "lss_mean"]
    cols += ["lss_mean_ci", "path_ratio", "path_ratio_ci"]
    out.append(_table(rows, cols))
    return out


def _published_section(m: Mapping[str, Any]) -> list[str]:
    if not m.get("published"):
        return []
    parts = ["<h2>Published and measured</h2>"]
    if m.get("reference"):
        parts.append(f"<p>{_e(m['reference'])}</p>")
    parts.append(_table(m["published"], ["quantity", "published", "measured"]))
    return parts


def _in_space(m: Mapping[str, Any]) -> str:
    """`` Numbers in <space>.`` for a caption (empty when the run recorded no space)."""
    spaces = m.get("feature_space") or {}
    if not spaces:
        return ""
    first = next(iter(spaces.values()))
    return f" Numbers in {_e(first)}."


def _longest_note(m: Mapping[str, Any]) -> str:
    """Which segment the geodesic scores of a multi-segment run are taken from."""
    head = m.get("headline") or {}
    rows = [h for h in head.values() if isinstance(h, Mapping) and (h.get("segments") or 1) > 1]
    if not rows:
        return ""
    return (
        f" The geodesic scores are those of the longest segment ({_e(rows[0]['segment'])}, "
        f"{rows[0]['steps']} steps, of {rows[0]['segments']} segments); every segment is in the "
        "details below."
    )


#: glossary terms too common to show that an entry applies
_GENERIC_TERMS = {"value"}


def _glossary_for(body: str) -> list[tuple[str, str]]:
    """The glossary entries one of whose terms the page shows (an ``analyze`` report has no
    accuracies or MUFM, so it defines neither)."""
    out = []
    for key, text in GLOSSARY:
        terms = [t.strip() for t in key.split(",") if t.strip() not in _GENERIC_TERMS]
        if any(re.search(rf"(?<![\w]){re.escape(_e(t))}(?![\w])", body) for t in terms):
            out.append((key, text))
    return out


def _headline_section(m: Mapping[str, Any]) -> list[str]:
    if not m.get("headline"):
        return []
    names = list(m["headline"])
    suffixes = [
        text
        for suffix, text in (
            ("_init", "<code>_init</code>: the same network at initialisation, the baseline"),
            ("_test", "<code>_test</code>: the test split"),
        )
        if any(n.endswith(suffix) for n in names)
    ]
    said = f" (suffix {'; '.join(suffixes)})" if suffixes else ""
    return [
        "<h2>Headline numbers</h2>",
        f"<p>Last epoch{said}. Definitions at the end of the page."
        f"{_in_space(m)}{_longest_note(m)}</p>",
        _headline(m["headline"]),
    ]


def _figures_section(folder: Path, m: Mapping[str, Any]) -> list[str]:
    figs, missing = _figures(folder, m.get("figures", []))
    parts = []
    if figs:
        parts.append("<h2>Figures</h2>" + figs)
    if missing:
        parts.append(f"<p class='no'>Figures missing from figures/: {_e(', '.join(missing))}</p>")
    return parts


def _epochs_section(m: Mapping[str, Any]) -> list[str]:
    if not m.get("epochs"):
        return []
    parts = [f"<h2>Over training epochs</h2><p>{_in_space(m).strip()}</p>"]
    for name, rows in m["epochs"].items():
        cols = [c for c in _EPOCH_COLUMNS if c in rows[0]]
        parts.append(f"<h3>{_e(name)}</h3>" + _table(rows, cols))
    return parts


def _mufm_profile_section(p: Mapping[str, Any] | None) -> list[str]:
    """The joint fit of the MUFM's shape and scale: the fitted λ's, whether it reproduces the
    network's curve within its split-half spread, and the per-layer residuals."""
    if not p:
        return []
    out = ["<h3>Shape and scale: λ_OT and λ_H fitted to the per-layer profile</h3>"]
    if not p.get("fitted"):
        return [*out, f"<p>{_e(p.get('note', 'not fitted'))}.</p>"]
    edge = f" At the grid's edge: {_e(', '.join(p['grid_edge']))}." if p.get("grid_edge") else ""
    conv = "" if p.get("converged") else " Not every fit converged (see the warnings)."
    said = (
        f"The fitted model is within the network's split-half spread at {_e(p['reproduces'])} "
        "(rows marked within); elsewhere it does not reproduce the network's curve."
        if p.get("reproduces")
        else "The network's split-half spread is not measured (too few samples)."
    )
    if p.get("reproduces_seeds"):
        said += (
            f" Against the seed-to-seed spread of the network's profile it is within at "
            f"{_e(p['reproduces_seeds'])} (rows marked within_seeds)."
        )
    out.append(
        f"<p>λ_OT = {_fmt(p['lambda_ot'])}, λ_H = {_fmt(p['lambda_h'])} (λ_W = "
        f"{_fmt(p['lambda_w'])} fixed), criterion J = {_fmt(p['criterion'])}: the sum over "
        "steps of the squared log-ratios model/network of NC1 and of the step cost W2² / M_L. "
        f"Its last layer lies at W2 relative = {_fmt(p['match']['w2_relative'])} of the "
        f"network's spread (figure mufm_profile.png, right).{edge}{conv} {said}</p>"
    )
    out.append(_table(p["residuals"]))
    return out


def _mufm_section(m: Mapping[str, Any]) -> list[str]:
    parts = []
    if m.get("mufm"):
        mu = m["mufm"]
        parts.append("<h2>MUFM calibrated to the ResNet</h2>")
        fitted = ""
        if mu.get("fitted_layers"):
            fitted = (
                f" Fitted to the ResNet's layers {_e(mu['fitted_layers'])} (d = "
                f"{_e(mu.get('fitted_dim'))}: one segment, the MUFM's constant width; of a "
                "staged ResNet the last stage, whose last layer feeds the classifier)."
            )
        parts.append(
            f"<p>Fitted λ_OT = {_fmt(mu['lambda_ot'])} (discrepancy {_e(mu['discrepancy'])} "
            f"= {_fmt(mu['value'])}).{fitted}{_in_space(m)}</p>"
        )
        parts.append(_table([{"quantity": k, "value": v} for k, v in mu["match"].items()]))
        if mu.get("format_grid"):
            parts.append(f"<pre>{_e(mu['format_grid'])}</pre>")
        parts += _mufm_profile_section(mu.get("profile"))
    if m.get("solution"):
        parts.append(
            "<h2>MUFM solution</h2><pre>" + _e(json.dumps(m["solution"], indent=2)) + "</pre>"
        )
    return parts


def _space_of(m: Mapping[str, Any], name: str) -> str:
    """The space a model's numbers live in, in words (``feature_space``; ``resnet_init`` and
    ``resnet_test`` are in the space of ``resnet``)."""
    spaces = m.get("feature_space") or {}
    for key in (name, name.split("_")[0]):
        if key in spaces:
            return str(spaces[key])
    return ""


def _details_section(m: Mapping[str, Any]) -> list[str]:
    parts = []
    if m.get("results"):
        parts.append("<h2>Details per model</h2>")
        parts.extend(
            _model_details(name, res, _space_of(m, name)) for name, res in m["results"].items()
        )
    parts.extend(
        _model_details(f"{name} (test split)", res, _space_of(m, name))
        for name, res in (m.get("test") or {}).items()
    )
    return parts


def _space_section(m: Mapping[str, Any]) -> list[str]:
    """Where every number lives: the space, each layer's dimension and stream shape, the
    segments and the steps between them, and the projection's measured distortion."""
    records = {k: v for k, v in (m.get("spaces") or {}).items() if v}
    if not records:
        return []
    first = next(iter(records.values()))
    out = ["<h2>Feature space: where every number lives</h2>"]
    model = f" of {_e(m['model'])}" if m.get("model") else ""
    out.append(
        f"<p>Every W2, score and collapse metric below is computed on the layers{model} in "
        f"<b>{_e(first.get('space') or 'the captured space')}</b> space: "
        + "; ".join(f"{_e(k)}: {_e(v['description'])}" for k, v in records.items())
        + ". Layer 0 is the stem's output, then one layer per block.</p>"
    )
    seg_of = {}
    for seg in first["segments"]:
        for name in seg["layers"]:
            seg_of[name] = seg["index"]
    shapes = first.get("stream_shapes") or [None] * len(first["names"])
    rows = [
        {
            "layer": f"{i} ({name})",
            "stream shape": "×".join(map(str, shape)) if shape else None,
            "d": d,
            "segment": seg_of.get(name),
        }
        for i, (name, d, shape) in enumerate(
            zip(first["names"], first["dims"], shapes, strict=True)
        )
    ]
    out.append(_table(rows))
    segs = first["segments"]
    if len(segs) > 1:
        lines = []
        for seg in segs:
            what = f"{seg['layers'][0]} … {seg['layers'][-1]} (d = {seg['dim']}, "
            what += f"{seg['steps']} step{'s' if seg['steps'] != 1 else ''})"
            if seg["one_step"]:
                what += ": one step, so R = 1 and LSS = 1 by construction"
            lines.append(f"<li>segment {seg['index']}: {_e(what)}</li>")
        out.append(
            "<p>The geodesic statistics (R, speed, McCann fit, OTS, LSS) are per segment: "
            "consecutive layers in one space (one stage).</p><ul>" + "".join(lines) + "</ul>"
        )
        for name, rec in records.items():
            if rec["crossings"]:
                items = "".join(
                    f"<li>{_e(c['step'])} (d {c['dims'][0]} → {c['dims'][1]}): "
                    f"{_e(c['measured'])}</li>"
                    for c in rec["crossings"]
                )
                out.append(
                    f"<p>{_e(name)}: steps across stages, in no segment's statistics:</p>"
                    f"<ul>{items}</ul>"
                )
    proj = first.get("projection_distortion")
    if proj:
        out += _distortion_tables(proj)
    return out


def _distortion_tables(proj: Mapping[str, Any]) -> list[str]:
    """The random projection's measured distortion (``stream_distortion``'s record)."""
    rows = []
    for r in proj["layers"]:
        row: dict[str, Any] = {"layer": r["layer"], "D (stream)": r["stream_dim"], "k": proj["dim"]}
        if r.get("projected"):
            row.update(
                {
                    "ratio min": r.get("min"),
                    "ratio q01": r.get("q01"),
                    "ratio median": r.get("median"),
                    "ratio q99": r.get("q99"),
                    "ratio max": r.get("max"),
                    "max |ratio − 1|": r.get("max_rel_error"),
                }
            )
        rows.append(row)
    out = [
        f"<p>Distortion of the random projection to k = {proj['dim']} (seed {proj['seed']}), "
        f"measured on {proj['n_pairs']} pairs of {proj['n_samples']} samples per layer: the "
        "ratio of squared distances after and before projection (χ²_k/k for one pair: standard "
        f"deviation √(2/k) = {_fmt(proj['jl_sd'], 3)}). Largest relative error over the layers "
        f"{_fmt(proj['max_rel_error'], 3)}.</p>",
        _table(
            rows,
            [
                *("layer", "D (stream)", "k", "ratio min", "ratio q01", "ratio median"),
                *("ratio q99", "ratio max", "max |ratio − 1|"),
            ],
        ),
    ]
    if proj.get("steps"):
        steps = [
            {
                "step": s["step"],
                "W2² stream": s["w2_sq_stream"],
                "W2² projected": s["w2_sq_projected"],
                "relative error": s["rel_error"],
            }
            for s in proj["steps"]
        ]
        out.append(
            "<p>W2² of each step before and after projection on the same samples (exact "
            "transport).</p>" + _table(steps)
        )
    return out


# ---------------------------------------------------------------------------- sweeps
#: the headline numbers of a sweep's report (and ``mufm_lambda_ot`` where the MUFM was fitted)
SWEEP_HEADLINE = ("ots", "lss_mean", "path_ratio", "nc1_kendall_tau")


def write_sweep_report(sweep_dir: str | Path, ds: xr.Dataset) -> Path:
    """Write ``sweep_dir/report.html`` and the grid figures ``sweep_dir/figures/sweep_*.png``.

    For each headline number (:data:`SWEEP_HEADLINE`, and ``mufm_lambda_ot`` when the sweep
    fitted the MUFM) and each swept setting of ``sweep.json`` (the cells, by label, when none
    is), a figure of :func:`otcollapse.plots.plot_sweep`: the mean over seeds at each cell's last
    captured epoch with its 95% Student-t interval, the initialisation dashed. The page (figures
    inline) lists every cell of the grid, those missing from the store (failed, or not run)
    included, and tables of each headline number per cell and network, at the last epoch and at
    initialisation.

    Parameters
    ----------
    sweep_dir : str or path
        A sweep folder (``otcollapse sweep``; it holds ``sweep.json``).
    ds : xarray.Dataset
        Its results, ``otcollapse.load_sweep(sweep_dir)`` (this module does not read the store).

    Raises
    ------
    ValueError
        ``sweep_dir`` has no ``sweep.json``, or a damaged one.
    otcollapse.io.FolderInUseError
        Another process (a sweep) is writing into ``sweep_dir``.
    """
    folder = Path(sweep_dir)
    mpath = folder / "sweep.json"
    if not mpath.is_file():
        raise ValueError(
            f"{str(folder)!r} has no sweep.json: not a sweep folder (made by `otcollapse sweep`)."
        )
    with locked_folder(folder):
        return _write_sweep_report(folder, load_json(mpath), ds)


def _wd_depth_section(folder: Path, published: Mapping[str, Any]) -> list[str]:
    """The section of ``reproduce wd-depth`` (its figure, the table of mean ± 95% half-width per
    cell and the direction of each score, from ``published.json``'s ``wd_depth``); empty for
    other sweeps."""
    res = published.get("wd_depth")
    if not res:
        return []
    parts = [
        "<h2>Weight decay and depth</h2>",
        "<p>Every score at the last epoch against weight decay, per depth and network: the mean "
        "over the seeds ± the half-width of its 95% Student-t interval; (k/n): only k of the n "
        "seeds have a value (λ_OT is not defined at weight decay 0; a terminal epoch exists "
        "only where the run reached 100% training accuracy).</p>",
    ]
    for fig in res.get("figures", []):
        path = folder / fig["file"]
        if path.is_file():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(
                f"<figure><img alt='{_e(fig['file'])}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{_e(fig.get('caption', ''))}</figcaption></figure>"
            )
    parts.append(_table(res.get("table", [])))
    parts.append(f"<h3>Direction as weight decay grows</h3><p>{_e(res.get('rule', ''))}</p>")
    rows = [{k: v for k, v in r.items() if k != "per_depth"} for r in res.get("direction", [])]
    parts.append(_table(rows))
    reached = res.get("terminal_reached") or []
    if reached:
        parts.append("<h3>Terminal phase reached (runs over weight decays and seeds)</h3>")
        parts.append(_table(reached))
    return parts


def _sweep_metrics(ds: Any) -> list[str]:
    out = [m for m in SWEEP_HEADLINE if m in ds.data_vars]
    if "mufm_lambda_ot" in ds.data_vars and bool(ds["mufm_lambda_ot"].notnull().any()):
        out.append("mufm_lambda_ot")
    return out


def _sweep_axes(ds: Any, manifest: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """The Dataset to draw and the settings on x: the swept ones that are coordinates, or the
    cells by label (``"cell"``) when none is."""
    swept: list[str] = []
    for s in manifest.get("swept", []):
        if s in ds.coords and s not in ds.dims and not any(_same(ds, s, t) for t in swept):
            swept.append(s)
    if swept:
        return ds, swept
    labels = {c["cell"]: c["label"] for c in manifest.get("cells", [])}
    return ds.assign_coords(cell=[labels.get(c, c) for c in ds["cell"].values.tolist()]), ["cell"]


def _same(ds: Any, a: str, b: str) -> bool:
    """Whether settings ``a`` and ``b`` label the cells alike (``capture_epochs`` follows
    ``epochs``): one figure against either says it all."""
    va, vb = ([str(v) for v in ds[n].broadcast_like(ds["cell"]).values.tolist()] for n in (a, b))
    pairs = set(zip(va, vb, strict=True))
    return len(pairs) == len(set(va)) == len(set(vb))


def _sweep_figures(folder: Path, ds: Any, manifest: Mapping[str, Any]) -> list[str]:
    """Draw and write (atomically) every headline number against every swept setting."""
    from otcollapse import plots
    from otcollapse._utils import atomic_path

    drawn, settings = _sweep_axes(ds, manifest)
    names = []
    for metric in _sweep_metrics(ds):
        for setting in settings:
            fig = plots.plot_sweep(drawn, metric, setting)
            name = f"sweep_{metric}_vs_{setting}.png"
            with atomic_path(folder / "figures" / name, suffix=".png") as tmp:
                fig.savefig(tmp, dpi=110, format="png")
            names.append(name)
    return names


def _sweep_caption(name: str) -> str:
    metric, setting = name[len("sweep_") : -len(".png")].split("_vs_")
    x = "the cells" if setting == "cell" else setting
    return (
        f"{metric} against {x} at each cell's last captured epoch (solid): mean over the seeds "
        "with its 95% Student-t interval; dashed: the same networks at initialisation (epoch 0)."
    )


def _sweep_figures_html(folder: Path, names: Sequence[str]) -> str:
    parts = []
    for name in names:
        data = base64.b64encode((folder / "figures" / name).read_bytes()).decode("ascii")
        parts.append(
            f"<figure><img alt='{_e(name)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{_e(_sweep_caption(name))}</figcaption></figure>"
        )
    return "<h2>Figures</h2>" + "".join(parts) if parts else ""


def _sweep_cells(manifest: Mapping[str, Any], in_store: set[str]) -> list[str]:
    """The table of the grid's cells, and a warning naming those not in the store."""
    rows, missing = [], []
    for c in manifest.get("cells", []):
        done = bool(c.get("done")) and c["cell"] in in_store
        rows.append(
            {
                "cell": c["label"],
                "id": c["cell"],
                "seeds": ", ".join(map(str, c.get("seeds", []))),
                "done": done,
                "error": c.get("error") or "",
            }
        )
        if not done:
            why = c.get("error") or "not run yet (rerun the sweep)"
            missing.append(f"{c['label']} ({why})")
    parts = ["<h2>Cells</h2>", _table(rows)]
    if missing:
        parts.append(
            f"<p class='no'>{len(missing)} of {len(rows)} cells are not in the store and so in no "
            f"figure or table: {_e('; '.join(missing))}.</p>"
        )
    return parts


def _stat_columns(st: Any, i: int, net: str | None, prefix: str) -> dict[str, Any]:
    """Mean, 95% half-width and seed count of cell ``i`` (and ``net``) in ``sweep_statistics``."""
    if st is None:
        return {}
    pick = st.isel(cell=i)
    if net is not None:
        pick = pick.sel(net=net)
    half = float(pick["half"])
    return {
        f"{prefix}mean": float(pick["mean"]),
        f"{prefix}± 95%": half if math.isfinite(half) else None,
        f"{prefix}n": int(pick["n"]),
    }


def _sweep_stats_table(ds: Any, metric: str, labels: Mapping[str, str]) -> str:
    from otcollapse.plots import sweep_statistics

    da = ds[metric]
    last = sweep_statistics(ds, metric, "last")
    init = None
    if "epoch" in da.dims and 0 in set(ds["epoch"].values.tolist()):
        init = sweep_statistics(ds, metric, "init")
    nets = [str(n) for n in ds["net"].values] if "net" in da.dims else [None]
    rows = []
    for i, cid in enumerate(ds["cell"].values.tolist()):
        for net in nets:
            row: dict[str, Any] = {"cell": labels.get(cid, cid)}
            if net is not None:
                row["net"] = net
            if "epoch" in last.coords:
                row["epoch"] = int(last["epoch"][i])
            row.update(_stat_columns(last, i, net, ""))
            row.update(_stat_columns(init, i, net, "init "))
            rows.append(row)
    head = f"<h3>{_e(metric)}</h3><p class='muted'>{_e(da.attrs.get('long_name', ''))}</p>"
    return head + _table(rows)


def _units(attrs: Mapping[str, Any]) -> str:
    units = str(attrs.get("units", ""))
    return "dimensionless" if units in ("", "1") else f"in {units}"


def _sweep_glossary(ds: Any, metrics: Sequence[str]) -> str:
    rows = [(m, f"{ds[m].attrs.get('long_name', m)} ({_units(ds[m].attrs)})") for m in metrics]
    rows += [
        ("epoch", "the cell's last captured epoch, where the numbers are taken (0 = init)"),
        ("mean", "mean over the seeds with a finite value"),
        (
            "± 95%",
            "half-width of the 95% Student-t interval mean ± t_{0.975, n−1}·s/√n, s the sample "
            "standard deviation (ddof 1); — with one seed (no interval)",
        ),
        ("n", "the seeds with a finite value"),
        ("init …", "the same computation at epoch 0: the same networks at initialisation"),
    ]
    body = "".join(
        f"<tr><td class='l'><b>{_e(k)}</b></td><td class='l'>{_e(v)}</td></tr>" for k, v in rows
    )
    return f"<h2>What each number means</h2><table>{body}</table>"


def _sweep_header(folder: Path, manifest: Mapping[str, Any], ds: Any) -> list[str]:
    cells = manifest.get("cells", [])
    title = f"otcollapse sweep: {len(cells)} cells"
    facts = [
        f"Sweep folder <code>{_e(folder.resolve())}</code>",
        f"grid {_e(manifest.get('source', '?'))}",
        f"swept: {_e(', '.join(manifest.get('swept', [])) or 'nothing (one cell)')}",
        f"status {_e(manifest.get('status', '?'))}",
        f"Dask scheduler: {_e(manifest.get('scheduler', '?'))}",
        f"torch threads per stage: {_e(manifest.get('torch_threads', '?'))}",
        f"{ds.sizes['cell']} of {len(cells)} cells in the store",
    ]
    if "computed" in manifest:
        facts.append(f"{_e(manifest['computed'])} stages computed in the last run")
    if "seconds" in manifest:
        facts.append(f"{float(manifest['seconds']):.0f} s")
    return [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        "<p class='muted'>" + " · ".join(facts) + "</p>",
    ]


def _write_sweep_report(folder: Path, manifest: Mapping[str, Any], ds: Any) -> Path:
    labels = {c["cell"]: c["label"] for c in manifest.get("cells", [])}
    metrics = _sweep_metrics(ds)
    figures = _sweep_figures(folder, ds, manifest)
    parts = _sweep_header(folder, manifest, ds)
    published = folder / "published.json"
    if published.is_file():
        pub = load_json(published)
        parts += _published_section(pub)
        parts += _wd_depth_section(folder, pub)
    parts += _sweep_cells(manifest, set(ds["cell"].values.tolist()))
    parts.append(
        "<h2>Headline numbers</h2><p>Per cell and network: the mean over the seeds at the cell's "
        "last captured epoch, the half-width of its 95% Student-t interval and the number of "
        "seeds; <code>init</code>: the same at initialisation. Definitions below.</p>"
    )
    parts += [_sweep_stats_table(ds, m, labels) for m in metrics]
    parts.append(_sweep_figures_html(folder, figures))
    parts.append(_sweep_glossary(ds, metrics))
    cells = manifest.get("cells", [])
    if cells:
        swept = set(manifest.get("swept", []))
        const = {k: v for k, v in cells[0].get("settings", {}).items() if k not in swept}
        parts.append(f"<h2>Settings of every cell</h2><pre>{_e(json.dumps(const, indent=2))}</pre>")
    parts.append("</body></html>")
    out = folder / "report.html"
    atomic_write_text(out, "\n".join(parts))
    return out
