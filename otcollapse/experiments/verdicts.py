r"""What the theory predicts for a trained ResNet, tested as effects against baselines.

Each prediction is a score that should move one way: NC1's Kendall τ over depth below 0
(progressive feedforward collapse), the path ratio $R$ and the line-shape score LSS nearer 1 and
the optimal-transport score OTS nearer 1 (a trajectory closer to a Wasserstein geodesic). A
prediction is read against each of its baselines:

- **absolute**: the trained ResNet's score against the score's null value (τ against 0), on the
  training samples and on the test split;
- **trained − init**: the trained ResNet against the same network at initialisation (what
  training does; a residual block near the identity is already an optimal map at init);
- **ResNet − plain**: the trained ResNet against its trained plain twin (what the shortcut does).

The **effect** is signed so that it is positive when the prediction holds:
$e = s\,(S_a - S_b)$, or $e = s\,S_a$ against the null, with $s = -1$ for τ, $R$ and LSS (lower is
the prediction) and $s = +1$ for OTS.

**Interval.** Over several seeds: the mean effect with a 95 % Student-t interval over the seeds'
effects. With one seed: a 95 % percentile interval of the effect over the paired subsampling
replicates of the analysis (``n_boot``; replicate $i$ of both arms is the same half of the
samples, so the effect is computed replicate by replicate); half-sample replicates vary more than
the full sample, so this interval is conservative. Without either there is no interval.

**Split-half floor.** The same score measured on the two disjoint stratified halves of one arm's
samples differs by $f = |S(A) - S(B)|$: what sampling alone moves it by. An effect's floor is the
largest $f$ of its arms (the mean over seeds); an effect whose mean is no larger than its floor is
indistinguishable from sampling noise.

**Verdict.** ``"not resolved"`` when the score is saturated (both arms at the same end of the
score's range, like OTS = 1 at init and trained: the score cannot discriminate), when there is
no interval, when the effect is within its split-half floor, or when the interval contains 0;
otherwise ``"holds"`` (interval above 0) or ``"fails"`` (interval below 0). ``why`` says which.

References: Papyan, Han & Donoho, PNAS 2020 (NC1); Wang, Gai & Zhang, "Progressive Feedforward
Collapse of ResNet Training" (τ); Gai & Zhang, "Deep Residual Networks Learn the Geodesic Curve in
the Wasserstein Space" (R, OTS, LSS).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from otcollapse._resampling import percentile_interval
from otcollapse._utils import json_safe

__all__ = ["PREDICTIONS", "SCORES", "interval", "number", "verdicts"]

#: score -> (sign s of the effect, the ends of its range, its null value or None)
SCORES: dict[str, tuple[int, tuple[float, float], float | None]] = {
    "nc1_kendall_tau": (-1, (-1.0, 1.0), 0.0),
    "path_ratio": (-1, (1.0, math.inf), None),
    "lss_mean": (-1, (1.0, math.inf), None),
    "ots": (+1, (0.0, 1.0), None),
}
_SYMBOL = {"nc1_kendall_tau": "τ(NC1)", "path_ratio": "R", "lss_mean": "LSS", "ots": "OTS"}

#: (claim, score, comparisons): a comparison is (arm a, arm b or None for the null value, label)
PREDICTIONS: tuple[tuple[str, str, tuple[tuple[str, str | None, str], ...]], ...] = (
    (
        "ResNet: NC1 decreases over depth (progressive feedforward collapse)",
        "nc1_kendall_tau",
        (
            ("resnet", None, "trained, τ < 0"),
            ("resnet_test", None, "test split, τ < 0"),
            ("resnet", "resnet_init", "trained − init"),
            ("resnet", "plain", "ResNet − plain"),
        ),
    ),
    (
        "ResNet: the layer trajectory is nearer a geodesic (path ratio R nearer 1)",
        "path_ratio",
        (("resnet", "resnet_init", "trained − init"), ("resnet", "plain", "ResNet − plain")),
    ),
    (
        "ResNet: straighter sample tracks (LSS nearer 1; Gai & Zhang)",
        "lss_mean",
        (("resnet", "resnet_init", "trained − init"), ("resnet", "plain", "ResNet − plain")),
    ),
    (
        "ResNet: its map from first to last layer is optimal (OTS nearer 1; Gai & Zhang)",
        "ots",
        (("resnet", "resnet_init", "trained − init"), ("resnet", "plain", "ResNet − plain")),
    ),
)
_SATURATION_ATOL = 1e-9
_LEVEL = 0.95


def number(v: Any) -> float:
    """A headline value as a float; NaN where it is missing (None: a NaN in JSON) or not a number
    (a flag, a text, ``"inf"``: how JSON records an infinity).

    Zero is a value: a score of exactly 0 (an OTS of 0 at initialisation) counts like any other.
    """
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        return float(v)
    return math.nan


def interval(vals: np.ndarray) -> dict[str, Any]:
    """Mean, standard deviation and a 95% Student-t interval of ``vals`` (finite, non-empty)."""
    from scipy import stats

    mean = float(vals.mean())
    sd = float(vals.std(ddof=1)) if vals.size > 1 else math.nan
    half = (
        float(stats.t.ppf(0.975, vals.size - 1) * sd / math.sqrt(vals.size))
        if vals.size > 1
        else math.nan
    )
    return {
        "mean": mean,
        "std": sd,
        "ci95": [mean - half, mean + half],
        "n": int(vals.size),
        "values": vals.tolist(),
    }


def _effect(sign: int, a: float, b: float | None, null: float | None) -> float:
    return sign * (a - (null if b is None else b))


def _saturated(score: str, a: float, b: float | None) -> bool:
    """Both arms at the same end of the score's range (never for a comparison with the null)."""
    if b is None:
        return False
    return any(
        math.isfinite(end) and abs(a - end) <= _SATURATION_ATOL and abs(b - end) <= _SATURATION_ATOL
        for end in SCORES[score][1]
    )


def _value(seed: Mapping[str, Any], arm: str, score: str) -> float:
    return number(seed["headline"].get(arm, {}).get(score))


def _resampled(seed: Mapping[str, Any], arm: str, what: str, score: str) -> np.ndarray:
    vals = seed.get("resampled", {}).get(arm, {}).get(what, {}).get(score)
    return np.asarray([number(v) for v in vals or []], dtype=np.float64)


def _floor(seed: Mapping[str, Any], arms: Sequence[str], score: str) -> float:
    """The largest split-half difference ``|S(A) - S(B)|`` of the arms (NaN when unknown)."""
    diffs = []
    for arm in arms:
        h = _resampled(seed, arm, "halves", score)
        if h.size != 2 or not np.isfinite(h).all():
            return math.nan
        diffs.append(abs(h[0] - h[1]))
    return max(diffs)


def _replicate_effects(seed: Mapping[str, Any], score: str, a: str, b: str | None) -> np.ndarray:
    sign, _, null = SCORES[score]
    ra = _resampled(seed, a, "replicates", score)
    if b is None:
        eff = sign * (ra - null)
    else:
        rb = _resampled(seed, b, "replicates", score)
        if ra.size != rb.size:  # not the same replicates: no pairing
            return np.empty(0)
        eff = sign * (ra - rb)
    return eff[np.isfinite(eff)]


def _comparison(
    per_seed: Sequence[Mapping[str, Any]], score: str, a: str, b: str | None
) -> dict[str, Any] | None:
    sign, _, null = SCORES[score]
    pairs = [(_value(s, a, score), None if b is None else _value(s, b, score)) for s in per_seed]
    ok = [
        (s, x, y)
        for s, (x, y) in zip(per_seed, pairs, strict=True)
        if math.isfinite(x) and (y is None or math.isfinite(y))
    ]
    if not ok:
        return None
    effects = np.array([_effect(sign, x, y, null) for _, x, y in ok])
    floors = np.array([_floor(s, [a] if b is None else [a, b], score) for s, _, _ in ok])
    floor = float(floors.mean()) if np.isfinite(floors).all() else math.nan
    saturated = all(_saturated(score, x, y) for _, x, y in ok)
    mean = float(effects.mean())
    if len(ok) > 1:
        iv = interval(effects)
        ci, how = iv["ci95"], f"95% Student-t interval over {len(ok)} seeds"
    else:
        reps = _replicate_effects(ok[0][0], score, a, b)
        pi = percentile_interval(reps.tolist(), _LEVEL) if reps.size >= 2 else None
        ci = None if pi is None else list(pi)
        how = (
            f"95% percentile interval over {reps.size} paired subsamples of the samples (one seed)"
            if ci is not None
            else "no interval: one seed and no subsampling replicates (n_boot = 0)"
        )
    if saturated:
        verdict, why = "not resolved", "saturated: both at the end of the score's range"
    elif ci is None:
        verdict, why = "not resolved", "no interval"
    elif math.isfinite(floor) and abs(mean) <= floor:
        verdict, why = "not resolved", "within the split-half floor"
    elif ci[0] > 0:
        verdict, why = "holds", "interval above 0"
    elif ci[1] < 0:
        verdict, why = "fails", "interval below 0"
    else:
        verdict, why = "not resolved", "interval contains 0"
    return {
        "values": [[x, y] for _, x, y in ok],
        "effect": mean,
        "ci95": ci,
        "interval": how,
        "floor": floor,
        "saturated": saturated,
        "n_seeds": len(ok),
        "verdict": verdict,
        "holds": {"holds": True, "fails": False}.get(verdict),
        "why": why,
    }


def _measured(score: str, a: str, b: str | None, r: Mapping[str, Any]) -> str:
    sym = _SYMBOL[score]
    xs = [v[0] for v in r["values"]]
    first = f"{sym} = {np.mean(xs):.3f}"
    if b is not None:
        first += f" vs {np.mean([v[1] for v in r['values']]):.3f}"
    ci = r["ci95"]
    ci_txt = "no interval" if ci is None else f"[{_signed(ci[0])}, {_signed(ci[1])}]"
    floor = "floor unknown" if not math.isfinite(r["floor"]) else f"floor {r['floor']:.3f}"
    seeds = f" (mean of {r['n_seeds']} seeds)" if r["n_seeds"] > 1 else ""
    return f"{first}{seeds}; effect {_signed(r['effect'])}, 95% {ci_txt}, {floor}"


def _signed(x: float) -> str:
    """``x`` to three decimals with its sign; a value that rounds to zero is +0.000."""
    return f"{round(x, 3) + 0.0:+.3f}"


def verdicts(per_seed: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The predictions of :data:`PREDICTIONS`, each against its baselines (see the module
    docstring for the effect, the interval, the floor and the verdict rule).

    ``per_seed`` holds each seed's ``headline`` (model -> score) and, optionally, its
    ``resampled`` (model -> ``{"replicates": {score: [...]}, "halves": {score: [a, b]}}``, from
    :func:`otcollapse.experiments.analysis.resampled_scores`). A comparison whose arms are
    missing (no plain twin, no test split) is left out. The last row, when the headline has
    step counts, counts the steps at or below the split-half noise floor of W2 (context, the
    first seed's).

    Returns one dict per comparison: ``claim``, ``comparison``, ``score``, ``measured`` (in
    words), ``effect``, ``ci95``, ``interval`` (how it was made), ``floor``, ``saturated``,
    ``verdict`` (``"holds"``, ``"fails"``, ``"not resolved"``), ``holds`` (True, False, None)
    and ``why``.
    """
    out: list[dict[str, Any]] = []
    for claim, score, comparisons in PREDICTIONS:
        for a, b, label in comparisons:
            r = _comparison(per_seed, score, a, b)
            if r is None:
                continue
            out.append(
                {
                    "claim": claim,
                    "comparison": label,
                    "score": score,
                    "measured": _measured(score, a, b, r),
                    **r,
                }
            )
    head = per_seed[0]["headline"] if per_seed else {}
    floors = [
        f"{m}: {h['steps_below_floor']} of {h['steps']} steps at or below the floor"
        for m, h in (("ResNet", head.get("resnet")), ("plain", head.get("plain")))
        if h is not None and h.get("steps_below_floor") is not None
    ]
    if floors:
        out.append(
            {
                "claim": "Context, not a prediction: steps the geodesic scores can resolve (W2 above "
                "the split-half noise floor; a step at or below it is indistinguishable from "
                "sampling noise)",
                "comparison": "count",
                "measured": "; ".join(floors),
                "holds": None,
                "verdict": "count",
            }
        )
    return json_safe(out)
