"""Tests of calibrate_mufm: the λ_OT of a synthetic network that *is* an MUFM optimum is recovered.

The "network" is ``fit_mufm(X, y, lambda_ot=0.3).trajectory``; calibrating on it with the same
weight decays must find λ_OT within 2 % of 0.3 after refinement (the grid alone brackets it within
one grid step, a factor sqrt(10)), with a discrepancy near 0 there.
"""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest

from otcollapse.exceptions import ConvergenceWarning
from otcollapse.measures import Trajectory
from otcollapse.surrogates import MUFMCalibration, calibrate_mufm, fit_mufm

LAM_STAR = 0.3
LW = LH = 1e-3
GRID = np.logspace(-2, 0, 5)  # 0.01 .. 1, a factor sqrt(10) apart; 0.3 lies between 0.1 and 0.316
FIT = dict(tol=1e-7, max_iter=3000)


@pytest.fixture(scope="module")
def network() -> Trajectory:
    g = np.random.default_rng(0)
    K, n, d = 3, 10, 6
    y = np.repeat(np.arange(K), n)
    X = 0.5 * (g.standard_normal((K * n, d)) + g.standard_normal((K, d))[y])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = fit_mufm(X, y, n_layers=4, lambda_ot=LAM_STAR, lambda_w=LW, lambda_h=LH, tol=1e-10)
    return ref.trajectory


def _calibrate(traj: Trajectory, discrepancy: str, **kw) -> MUFMCalibration:
    return calibrate_mufm(
        traj,
        lambda_w=LW,
        lambda_h=LH,
        grid=kw.pop("grid", GRID),
        discrepancy=discrepancy,
        refine_xatol=kw.pop("refine_xatol", 5e-3),
        profile_metrics=["nc1", "tr_sigma_w"],
        **FIT,
        **kw,
    )


@pytest.mark.parametrize("discrepancy", ["w2", "nc1"])
def test_recovers_lambda_star(network: Trajectory, discrepancy: str) -> None:
    cal = _calibrate(network, discrepancy)
    # grid: the best grid point is the nearest one in log scale, 0.316
    grid_best = min(cal.grid, key=lambda r: r["discrepancy"])
    assert grid_best["lambda_ot"] == pytest.approx(10**-0.5)
    assert len(cal.grid) == GRID.size and len(cal.refinement) > 0
    # refinement: within 2 % of λ*, discrepancy ≈ 0 and far below every grid value
    assert cal.lambda_ot == pytest.approx(LAM_STAR, rel=0.02)
    assert cal.value < 1e-3 * max(r["discrepancy"] for r in cal.grid)
    assert cal.value <= grid_best["discrepancy"]
    assert cal.match["w2"] < 2e-3 * cal.match["w2_network_input_output"]
    assert cal.match["w2_relative"] < 2e-3
    assert cal.match["nc1_mufm"] == pytest.approx(cal.match["nc1_network"], rel=1e-3)
    assert cal.solution.params["lambda_ot"] == cal.lambda_ot
    assert cal.solution.n_layers == 4 and cal.layer_range == (0, 4) and cal.segment == 0
    # the discrepancy is that of the fitted solution's last layer
    if discrepancy == "nc1":
        assert cal.value == pytest.approx(cal.match["log_nc1_gap"])
    else:
        assert cal.value == pytest.approx(cal.match["w2"])
    # profiles side by side, one row per layer, agreeing at the recovered optimum
    table = cal.profiles_table()
    assert len(table) == 5
    for row in table:
        assert row["mufm_nc1"] == pytest.approx(row["network_nc1"], rel=1e-2, abs=1e-6)
    # the text names the fitted λ_OT and its discrepancy, then the table of every fit
    head, *table_lines = str(cal).splitlines()
    shown = dict(re.findall(r"(lambda_ot|discrepancy) = ([-+.e\d]+)", head))
    assert float(shown["lambda_ot"]) == pytest.approx(cal.lambda_ot, rel=1e-5)
    assert float(shown["lambda_ot"]) == pytest.approx(LAM_STAR, rel=0.02)
    assert float(shown["discrepancy"]) == pytest.approx(cal.value, rel=1e-3)
    assert table_lines[0].split() == ["lambda_ot", discrepancy, "w2", "nc1_mufm", "converged"]
    listed = [float(line.split()[0]) for line in table_lines[1:]]
    fitted = sorted(r["lambda_ot"] for r in cal.refinement)
    np.testing.assert_allclose(listed, [r["lambda_ot"] for r in cal.grid] + fitted, rtol=1e-3)


def test_grid_only_brackets_lambda_star(network: Trajectory) -> None:
    cal = _calibrate(network, "w2", refine=False)
    assert cal.refinement == ()
    assert cal.lambda_ot == pytest.approx(10**-0.5)  # within a factor 1.06 of 0.3
    vals = [r["discrepancy"] for r in cal.grid]
    # decreasing towards λ*, then increasing
    assert vals[0] > vals[1] > vals[2] > vals[3] < vals[4]


def test_ufm_end_wins_for_a_collapsed_network() -> None:
    # a network whose last layer is the λ_OT = 0 optimum (NC1 ≈ 0): the nc1 discrepancy picks 0
    g = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 6)
    X = g.standard_normal((18, 5))
    ufm = fit_mufm(X, y, n_layers=2, lambda_ot=0.0, lambda_w=LW, lambda_h=LH, tol=1e-8)
    traj = Trajectory.from_arrays(list(ufm.layers), labels=y)
    cal = calibrate_mufm(
        traj,
        lambda_w=LW,
        lambda_h=LH,
        grid=[0.0, 0.1, 1.0],
        discrepancy="nc1",
        profile_metrics=["nc1"],
        tol=1e-8,
    )
    assert cal.lambda_ot == 0.0
    assert cal.refinement == ()
    assert "UFM end" in cal.settings["refinement"]


def test_multi_segment_needs_segment(network: Trajectory) -> None:
    g = np.random.default_rng(2)
    y = network.labels
    layers = [np.asarray(h) for h in network.layers] + [g.standard_normal((len(y), 3))] * 2
    traj = Trajectory.from_arrays(layers, labels=y)
    assert len(traj.segments) == 2
    with pytest.raises(ValueError, match="differ in dimension"):
        calibrate_mufm(traj, lambda_w=LW, lambda_h=LH, grid=[0.3])
    with pytest.raises(ValueError, match="segment must be"):
        calibrate_mufm(traj, lambda_w=LW, lambda_h=LH, grid=[0.3], segment=5)
    # choosing the first segment recovers the calibration on the network part
    cal = _calibrate(traj, "w2", segment=0, grid=[0.1, 0.3, 1.0], refine=False)
    assert cal.lambda_ot == 0.3 and cal.value < 1e-3 and cal.layer_range == (0, 4)
    # a segment of a single layer has no step
    one = Trajectory.from_arrays([*layers[:5], g.standard_normal((len(y), 3))], labels=y)
    with pytest.raises(ValueError, match="single layer"):
        calibrate_mufm(one, lambda_w=LW, lambda_h=LH, grid=[0.3], segment=1)


def test_bad_input(network: Trajectory) -> None:
    with pytest.raises(ValueError, match="discrepancy"):
        calibrate_mufm(network, lambda_w=LW, lambda_h=LH, discrepancy="kl")
    with pytest.raises(ValueError, match="grid value"):
        calibrate_mufm(network, lambda_w=LW, lambda_h=LH, grid=[-1.0])
    with pytest.raises(ValueError, match="at least one"):
        calibrate_mufm(network, lambda_w=LW, lambda_h=LH, grid=[])
    with pytest.raises(ValueError, match="n_layers"):
        calibrate_mufm(network, lambda_w=LW, lambda_h=LH, grid=[0.3], n_layers=2)
    with pytest.raises(ValueError, match="labels"):
        calibrate_mufm(Trajectory.from_arrays(list(network.layers)), lambda_w=LW, lambda_h=LH)


def test_non_convergence_warns_once(network: Trajectory) -> None:
    with pytest.warns(ConvergenceWarning, match="did not converge") as rec:
        cal = calibrate_mufm(
            network, lambda_w=LW, lambda_h=LH, grid=[0.1, 0.3], refine=False, max_iter=3,
            profile_metrics=["nc1"],
        )  # fmt: skip
    assert sum("calibrate_mufm" in str(w.message) for w in rec) == 1
    assert not any(r["converged"] for r in cal.grid)
    assert cal.settings["not_converged"] == [0.1, 0.3]


def test_to_dict_json_safe(network: Trajectory) -> None:
    cal = _calibrate(network, "w2", grid=[0.0, 0.3, 1.0], refine=False)
    d = cal.to_dict()
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert back["lambda_ot"] == pytest.approx(0.3)
    assert back["discrepancy"] == "w2"
    assert [r["lambda_ot"] for r in back["grid"]] == [0.0, 0.3, 1.0]
    assert len(back["profiles_table"]) == 5
    assert "Progressive Feedforward Collapse" in back["reference"]
