"""The weight-decay / depth reproduction (``reproduce wd-depth``): the shipped grid, a quick run
end to end, the direction rule on data whose answer is known, and the store's new variables."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from otcollapse.experiments import REPRODUCTIONS, load_grid, load_sweep, reproduce
from otcollapse.experiments.reproductions import grid_file
from otcollapse.experiments.store import VARIABLES, cell_dataset
from otcollapse.experiments.wd_depth import SCORES, direction, summary

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
