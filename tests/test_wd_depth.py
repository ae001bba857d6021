"""The weight-decay / depth reproduction (``reproduce wd-depth``): the shipped grid, a quick run
end to end, the direction rule on data whose answer is known, the store's new variables, and the
tables of docs/wd-depth.md against the committed runs (docs/figures/wd_depth_*.json)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from otcollapse.experiments import REPRODUCTIONS, load_grid, load_sweep, reproduce
from otcollapse.experiments.reproductions import grid_file
from otcollapse.experiments.store import VARIABLES, cell_dataset
from otcollapse.experiments.wd_depth import SCORES, _fmt, direction, summary

WDS = [0.0, 1e-4, 5e-4, 1e-3, 5e-3]
DEPTHS = [4, 8, 16]


def test_the_shipped_grid_holds_the_issues_weight_decays_depths_and_seeds():
    assert "wd-depth" in REPRODUCTIONS
    g = load_grid(grid_file("wd-depth"))
    assert set(g.swept) == {"weight_decay", "blocks"}
    assert len(g.cells) == len(WDS) * len(DEPTHS)
    assert sorted({c.weight_decay for c in g.cells}) == WDS
    assert sorted({c.blocks for c in g.cells}) == DEPTHS
    assert {(c.weight_decay, c.blocks) for c in g.cells} == {(w, b) for w in WDS for b in DEPTHS}
    assert all(c.seeds == 3 and c.mufm and c.n_boot == 0 for c in g.cells)
    assert all(c.model == "mlp" and c.width == 64 for c in g.cells)
    # the last epoch is captured: the scores are those of the trained networks
    assert all(c.epochs in c.epochs_captured() for c in g.cells)


def _fake(values: dict[tuple[float, int], list[float]], var: str = "ots") -> xr.Dataset:
    """A sweep-like Dataset: cells (weight_decay, blocks), 3 seeds, both nets, one epoch."""
    keys = list(values)
    arr = np.array([[[v, v] for v in values[k]] for k in keys])[..., None]  # cell, seed, net, ep
    return xr.Dataset(
        {var: (("cell", "seed", "net", "epoch"), arr)},
        coords={
            "cell": [f"c{i}" for i in range(len(keys))],
            "seed": [0, 1, 2],
            "net": ["resnet", "plain"],
            "epoch": [40],
            "weight_decay": ("cell", [k[0] for k in keys]),
            "blocks": ("cell", [k[1] for k in keys]),
        },
    )


def _trend(slope: float, noise: float, depths=(4, 8)) -> dict[tuple[float, int], list[float]]:
    jitter = np.array([-1.0, 0.0, 1.0]) * noise
    return {(w, b): list(1.0 + slope * i + jitter) for b in depths for i, w in enumerate(WDS)}


def test_direction_rule_appears_when_the_score_moves_the_published_way():
    # OTS should grow with weight decay (+1): it does, well beyond the seeds' spread
    d = direction(_fake(_trend(+0.1, 0.01)), "ots")
    assert d["verdict"] == "appears"
    assert [p["verdict"] for p in d["per_depth"]] == ["appears", "appears"]
    p = d["per_depth"][0]
    assert (p["from"], p["to"]) == (0.0, 5e-3)
    assert p["diff"] == pytest.approx(0.4)
    assert p["kendall_tau"] == pytest.approx(1.0)


def test_direction_rule_opposite_when_the_score_moves_the_other_way():
    d = direction(_fake(_trend(-0.1, 0.01)), "ots")
    assert d["verdict"] == "opposite"
    # LSS should fall (−1): a falling LSS is the published direction
    d = direction(_fake(_trend(-0.1, 0.01), "lss_mean"), "lss_mean")
    assert d["verdict"] == "appears"


def test_direction_rule_not_resolved_within_the_noise():
    # a drift of 0.04 between the ends against seeds spread ±0.5: the interval holds 0
    d = direction(_fake(_trend(+0.01, 0.5)), "ots")
    assert d["verdict"] == "not resolved"
    assert all(abs(p["diff"]) <= p["half"] for p in d["per_depth"])


def test_direction_rule_mixed_and_no_published_direction():
    up, down = _trend(+0.1, 0.01, (4,)), _trend(-0.1, 0.01, (8,))
    assert direction(_fake({**up, **down}), "ots")["verdict"] == "mixed"
    # sign 0 (none stated): the measured trend in words
    assert direction(_fake(up), "ots", sign=0)["verdict"] == "increases"


def test_lambda_ot_is_not_defined_at_weight_decay_zero():
    vals = _trend(+0.1, 0.01)
    ds = _fake(vals)
    lam = ds["ots"].isel(net=0, epoch=0).drop_vars(["net", "epoch"]).copy()
    lam[{"cell": 0}] = 1e9  # wd = 0: whatever the solver returned
    ds["mufm_lambda_ot"] = lam
    d = direction(ds, "mufm_lambda_ot")
    assert d["per_depth"][0]["from"] == 1e-4  # the comparison starts where it is defined
    row = next(
        r
        for r in summary(ds)["cells"]
        if r["score"] == "mufm_lambda_ot" and r["weight_decay"] == 0.0 and r["blocks"] == 4
    )
    assert row["n"] == 0 and np.isnan(row["mean"])


def _seed_metrics(seed: int, terminal: int | None) -> dict:
    prof = {"layers": {"nc1": [1.0, 0.5, 0.25]}, "steps": {"w2": [1.0, 1.0]}}
    row = {"epoch": 4, "ots": 0.9, "nc1_log_slope": -1.386}
    return {
        "seed": seed,
        "epochs": {n: [row] for n in ("resnet", "plain")},
        "profiles": {n: {"4": prof} for n in ("resnet", "plain")},
        "headline": {
            "resnet": {"terminal_epoch": terminal},
            "plain": {"terminal_epoch": None},
        },
    }


def test_terminal_epoch_and_nc1_log_slope_reach_the_store():
    assert "terminal_epoch" in VARIABLES and "nc1_log_slope" in VARIABLES
    ds = cell_dataset({"weight_decay": 5e-4}, [_seed_metrics(0, 7), _seed_metrics(1, None)])
    te = ds["terminal_epoch"]
    assert te.dims == ("seed", "net")
    assert te.sel(seed=0, net="resnet") == 7
    assert np.isnan(te.sel(seed=1, net="resnet")) and np.isnan(te.sel(net="plain")).all()
    assert ds["nc1_log_slope"].sel(net="resnet", epoch=4).values.tolist() == [-1.386, -1.386]
    assert ds["terminal_epoch"].attrs["units"] == "epoch"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("wd") / "wd-depth"
    m = reproduce("wd-depth", "digits", out, quick=True, scheduler="serial")
    return out, m


def test_reproduce_wd_depth_quick_writes_the_figure_and_the_table(quick):
    out, m = quick
    assert m["name"] == "wd-depth" and "wd_depth" in m
    assert (out / "figures" / "wd_depth.png").stat().st_size > 10_000
    pub = json.loads((out / "published.json").read_text())
    assert pub["name"] == "wd-depth" and len(pub["published"]) == len(SCORES)
    res = pub["wd_depth"]
    assert {r["net"] for r in res["table"]} == {"resnet", "plain"}
    # --quick: the grid's ends, 2 weight decays x 2 depths, one seed
    assert res["weight_decays"] == [0.0, 5e-3]
    assert all(
        r["verdict"] in ("appears", "opposite", "not resolved", "mixed", "increases", "decreases")
        for r in res["direction"]
    )
    html = (out / "report.html").read_text()
    assert "Weight decay and depth" in html and "wd_depth.png" in html
    ds = load_sweep(out)
    assert ds.sizes["cell"] == 4 and ds.sizes["seed"] == 1
    for var in ("terminal_epoch", "nc1_log_slope", "mufm_lambda_ot"):
        assert var in ds.data_vars
    assert np.isfinite(ds["nc1_log_slope"].isel(epoch=-1)).all()
    assert np.isfinite(ds["mufm_lambda_ot"].where(ds.weight_decay > 0, drop=True)).all()


# ----------------------------------------------- the tables of docs/wd-depth.md against the runs

DOCS = Path(__file__).resolve().parents[1] / "docs"
_VERDICTS = "appears|opposite|not resolved|mixed|increases|decreases"
_DEPTH = re.compile(
    rf"(\d+) blocks \((\S+) → (\S+)\): Δ = (\S+) ± (\S+) \(({_VERDICTS}), τ = (\S+)\)"
)


def _g(x: float | None, digits: int) -> str:
    """A number as the tables print it (the json holds an undefined one as null)."""
    return _fmt(math.nan if x is None else x, digits)


def _tables(section: str) -> list[list[list[str]]]:
    """The markdown tables of a page section: rows of stripped cells, header first."""
    tables, rows = [], []
    for line in [*section.splitlines(), ""]:
        if line.startswith("|"):
            if not set(line) <= set("|-: "):  # skip the separator row
                rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            tables.append(rows)
            rows = []
    return tables


def _cell_problems(text: str, cell: dict, where: str) -> list[str]:
    """A score cell (``mean ± half``, ``(k/n)``, ``not reached``, ``not defined``) against the
    run's numbers, to the printed precision (3 significant digits, the half-width 2)."""
    if text in ("not reached", "not defined", "—"):
        return [] if cell["n"] == 0 else [f"{where}: {text!r} but {cell['n']} seeds have a value"]
    m = re.fullmatch(r"(\S+)(?: ± (\S+))?(?: \((\d+)/(\d+)\))?", text)
    if m is None:
        return [f"{where}: cannot read {text!r}"]
    mean, half, k, seeds = m.groups()
    want_n = int(k) if k else cell["seeds"]
    problems = []
    if (want_n, int(seeds or cell["seeds"])) != (cell["n"], cell["seeds"]):
        problems.append(f"{where}: {text!r} but {cell['n']}/{cell['seeds']} seeds")
    if mean != _g(cell["mean"], 3):
        problems.append(f"{where}: mean {mean} but the run has {_g(cell['mean'], 3)}")
    if (half or "—") != _g(cell["half"], 2):
        problems.append(f"{where}: ± {half} but the run has {_g(cell['half'], 2)}")
    return problems


@pytest.mark.parametrize(("data", "heading"), [("digits", "digits"), ("mnist1d", "MNIST-1D")])
def test_docs_tables_hold_the_numbers_of_the_committed_runs(data, heading):
    """Every number in the tables of a data set's section of docs/wd-depth.md (the cells, the
    directions, the terminal phase) is the one of its committed run,
    docs/figures/wd_depth_<data>.json, to the printed precision; no row is missing."""
    res = json.loads((DOCS / "figures" / f"wd_depth_{data}.json").read_text())["wd_depth"]
    page = (DOCS / "wd-depth.md").read_text(encoding="utf-8")
    section = page.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    scores, directions, terminal = _tables(section)
    labels = {label: var for var, (label, _sign, _nets) in SCORES.items()}
    problems = []

    wds = [float(w) for w in scores[0][3:]]
    assert scores[0][:3] == ["score", "net", "blocks"] and wds == res["weight_decays"]
    cells = {(c["score"], c["net"], c["blocks"], c["weight_decay"]): c for c in res["cells"]}
    assert len(scores) - 1 == len(res["table"]), "the page's table lacks rows of the run's"
    for score, net, blocks, *texts in scores[1:]:
        for wd, text in zip(wds, texts, strict=True):
            cell = cells[(labels[score], net, int(blocks), wd)]
            problems += _cell_problems(text, cell, f"{score}, {net}, {blocks} blocks, wd {wd:g}")

    assert "verdict" in directions[0] and len(directions) - 1 == len(res["direction"])
    for (score, net, published, verdict, per_depth), d in zip(
        directions[1:], res["direction"], strict=True
    ):
        where = f"direction of {score}, {net}"
        if (score, net, published, verdict) != (
            d["score"],
            d["net"],
            d["published"],
            f"**{d['verdict']}**",
        ):
            problems.append(f"{where}: {published!r}, {verdict!r} but the run has {d}")
        got = _DEPTH.findall(per_depth)
        want = [
            (
                str(p["blocks"]),
                _g(p["from"], 3),
                _g(p["to"], 3),
                _g(p["diff"], 3),
                _g(p["half"], 2),
                p["verdict"],
                _g(p["kendall_tau"], 2),
            )
            for p in d["per_depth"]
        ]
        if got != want:
            problems.append(f"{where}: the page has {got}, the run {want}")

    assert terminal[0][:2] == ["net", "blocks"]
    want = [
        [r["net"], str(r["blocks"]), f"{r['reached']} of {r['runs']}"]
        for r in res["terminal_reached"]
    ]
    if terminal[1:] != want:
        problems.append(f"terminal phase: the page has {terminal[1:]}, the run {want}")
    assert not problems, "\n".join(problems)
