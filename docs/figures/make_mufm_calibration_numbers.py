"""Make docs/figures/mufm_calibration_numbers.txt: the numbers of docs/mufm.md's sections
"Calibrating λ_OT to a network" and "Calibrating shape and scale".

    python docs/figures/make_mufm_calibration_numbers.py [--run DIR]

Made with the toolkit's public API, fixed seeds and torch on one thread:

* **the network** (issue #17, here on the small preset): ``otcollapse run --quick`` (digits,
  residual MLP of width 32 with 4 blocks, 12 epochs; made in a temporary folder, or ``--run DIR``
  reuses such a run), then ``calibrate_mufm`` with ``discrepancy="nc1"`` and ``"w2"`` on what the
  run calibrates (the ResNet's last captured epoch, its stratified subsample of 150 samples,
  ``lambda_W = lambda_H =`` the weight decay, its λ_OT grid and tolerance). The NC1 calibration is
  the run's own (checked against its ``metrics.json``). Then the run's joint fit
  (``calibrate_mufm_profile``, λ_H over a tenth, one and ten times the weight decay) and the same
  fit with the λ_H grid widened down to 5e-7, with both fitted last layers' spread (docs/mufm.md,
  "In the run's report");
* **the test problem** of tests/test_calibrate.py (an MUFM optimum at λ_OT = 0.05, λ_H = 0.01,
  λ_W = 1e-3; N = 60, K = 3, d = 6, L = 3; grids a decade apart holding neither true value):
  ``calibrate_mufm_profile``'s recovery, its fits and wall-clock time, the NC1-only calibration,
  the criterion along and across its valley, four Gaussian-noise draws at 3 % and at 10 % of the
  network's spread, three other λ_W, and a Nelder–Mead search on the same criterion (from the
  best grid point, a simplex of half the box, ``xatol`` 0.02 in log10; the point clipped to the
  grid's box), for comparison with the least-squares refinement;
* **the snippet** of "Calibrating shape and scale" (N = 30, K = 3, d = 4, L = 2, a 2 × 2 grid):
  how far its best grid point is from the truth and how many fits its refinement took.

Measured: 163 s wall-clock on a 2-core machine, torch on one thread (the quick
run about a minute and a half of it); the file's last line records the time of the run that
wrote it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize

from otcollapse import Trajectory
from otcollapse.exceptions import ConvergenceWarning
from otcollapse.io import load_trajectory
from otcollapse.surrogates import calibrate_mufm, calibrate_mufm_profile, fit_mufm

HERE = Path(__file__).parent
OUT = HERE / "mufm_calibration_numbers.txt"

# the test problem of tests/test_calibrate.py
TRUE_OT, TRUE_H, LW = 0.05, 0.01, 1e-3
OT_GRID = np.logspace(-2.5, -0.5, 3)  # 0.0032, 0.032, 0.32
H_GRID = np.logspace(-3.5, -1.5, 3)  # 0.00032, 0.0032, 0.032
FIT = dict(tol=1e-7)


def spread(H: np.ndarray) -> float:
    """Root-mean-square distance of the rows of ``H`` to their mean."""
    H = np.asarray(H, dtype=np.float64)
    return float(np.sqrt(np.mean(np.sum((H - H.mean(0)) ** 2, 1))))


# ------------------------------------------------------------------------------ the network


def quick_run(out: Path) -> None:
    cmd = "import sys; from otcollapse.cli import main; sys.exit(main())"
    args = ["run", "--quick", "--out", str(out), "--no-progress", "--threads", "1"]
    subprocess.run([sys.executable, "-c", cmd, *args], check=True)


def network(run: Path, lines: list[str]) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    cfg = metrics["settings"]
    if not cfg["quick"] or cfg["model"] != "mlp" or cfg["data"] != "digits":
        raise SystemExit(f"{run} is not an `otcollapse run --quick` run (settings {cfg})")
    last = sorted((run / "trajectories").glob("resnet_train_epoch*.npz"))[-1]
    traj = load_trajectory(last)
    sub = traj.subsample(min(cfg["mufm_samples"], traj.n_samples), seed=cfg["seed"])
    wd = cfg["weight_decay"]
    common = dict(
        lambda_w=wd,
        lambda_h=wd,
        grid=cfg["mufm_grid"],
        seed=cfg["seed"],
        refine_xatol=0.05,  # as the run's calibrate stage
        tol=cfg["mufm_tol"],
    )
    nc1 = calibrate_mufm(sub, discrepancy="nc1", **common)
    assert math.isclose(nc1.lambda_ot, metrics["mufm"]["lambda_ot"], rel_tol=1e-6), (
        "the NC1 calibration differs from the run's own",
        nc1.lambda_ot,
        metrics["mufm"]["lambda_ot"],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        w2 = calibrate_mufm(sub, discrepancy="w2", **common)
    net_spread = spread(sub.layers[-1])
    mufm_spread = spread(nc1.solution.layers[-1])
    grid = [float(v) for v in cfg["mufm_grid"]]
    lines += [
        f"quick run: {cfg['data']}, {cfg['model']} width {cfg['width']}, {cfg['blocks']} blocks, "
        f"{cfg['epochs']} epochs, weight decay {wd:g}; calibrated on {sub.n_samples} samples of "
        f"{last.name}, L = {len(sub.layers) - 1}, lambda_W = lambda_H = {wd:g}, grid {grid}",
        f"quick nc1: lambda_ot = {nc1.lambda_ot:.3g}, NC1 of the last layer: "
        f"MUFM {nc1.match['nc1_mufm']:.4f}, network {nc1.match['nc1_network']:.4f}",
        f"quick nc1: last-layer spread (rms distance to the mean): MUFM {mufm_spread:.2f}, "
        f"network {net_spread:.1f}; mean norm of the MUFM's last-layer points "
        f"{np.linalg.norm(np.asarray(nc1.solution.layers[-1]), axis=1).mean():.2f}",
        f"quick nc1: W2 between the last layers {nc1.match['w2']:.2f} = "
        f"{nc1.match['w2'] / net_spread:.2f} x the network's spread = "
        f"{nc1.match['w2_relative']:.2f} x the network's input-output W2",
        f"quick w2: lambda_ot = {w2.lambda_ot:.2g} (search bounded at "
        f"{10 ** (math.log10(grid[-1]) + 1):g}, a grid step past the grid's last point "
        f"{grid[-1]:g}); W2 between the last layers "
        f"{w2.match['w2'] / w2.match['w2_network_input_output']:.4f} x the network's "
        f"input-output W2; NC1 of the MUFM {w2.match['nc1_mufm']:.3f}",
        "quick w2: D along the grid and refinement "
        + ", ".join(
            f"{r['lambda_ot']:.2g}: {r['discrepancy']:.3f}"
            for r in sorted([*w2.grid, *w2.refinement], key=lambda r: r["lambda_ot"])
        )
        + f" ({len(caught)} ConvergenceWarning)",
    ]
    wide_lambda_h(sub, cfg, lines)


def wide_lambda_h(sub: Trajectory, cfg: dict, lines: list[str]) -> None:
    """The run's joint fit, and the same fit with the λ_H grid widened down to 5e-7."""
    wd = cfg["weight_decay"]
    common = dict(
        lambda_w=wd,
        lambda_ot_grid=list(cfg["mufm_grid"]),
        seed=cfg["seed"],
        refine_max_fits=12,
        tol=cfg["mufm_tol"],
    )
    for name, h_grid in (
        ("run's grid", [wd / 10, wd, wd * 10]),
        ("wide grid", [5e-7, 5e-6, 5e-5, 5e-4, 5e-3]),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            cal = calibrate_mufm_profile(sub, lambda_h_grid=h_grid, **common)
        lines.append(
            f"quick joint fit, {name} (lambda_H over {h_grid}): lambda_OT = {cal.lambda_ot:.3g}, "
            f"lambda_H = {cal.lambda_h:.3g}, J = {cal.value:.3f}; last-layer spread MUFM "
            f"{cal.match['mufm_spread']:.2f} against the network's {cal.match['network_spread']:.1f}; "
            f"grid edge {list(cal.grid_edge) or 'none'}"
        )


# ------------------------------------------------------------------------------ the test problem


def test_problem(noise: float = 0.0, seed: int = 0) -> Trajectory:
    """tests/test_calibrate.py's ``_profile_network``: the MUFM optimum at the true weights,
    with Gaussian noise of ``noise`` times the network's spread on the layers 1..L."""
    g = np.random.default_rng(0)
    K, n, d = 3, 20, 6
    y = np.repeat(np.arange(K), n)
    X = g.standard_normal((K * n, d)) + g.standard_normal((K, d))[y]
    ref = fit_mufm(X, y, n_layers=3, lambda_ot=TRUE_OT, lambda_w=LW, lambda_h=TRUE_H, tol=1e-10)
    layers = [np.asarray(h) for h in ref.trajectory.layers]
    if noise:
        scale = noise * spread(layers[-1]) / math.sqrt(d)
        gn = np.random.default_rng(seed)
        layers = [layers[0]] + [h + scale * gn.standard_normal(h.shape) for h in layers[1:]]
    return Trajectory.from_arrays(layers, labels=y)


def criterion(traj: Trajectory, lam_ot: float, lam_h: float) -> float:
    """J at one point: a calibration over a one-point grid."""
    cal = calibrate_mufm_profile(
        traj, lambda_w=LW, lambda_ot_grid=[lam_ot], lambda_h_grid=[lam_h], **FIT
    )
    return cal.value


def recovery(net: Trajectory, lines: list[str]) -> None:
    t0 = time.perf_counter()
    cal = calibrate_mufm_profile(
        net, lambda_w=LW, lambda_ot_grid=OT_GRID, lambda_h_grid=H_GRID, **FIT
    )
    seconds = time.perf_counter() - t0
    err = max(abs(cal.lambda_ot / TRUE_OT - 1), abs(cal.lambda_h / TRUE_H - 1))
    resid = max(max(abs(r["log_ratio_nc1"]), abs(r["log_ratio_cost"])) for r in cal.table())
    nc1_only = calibrate_mufm(
        net,
        lambda_w=LW,
        lambda_h=LW,
        grid=np.logspace(-3, 1, 5),
        discrepancy="nc1",
        refine_xatol=0.01,
        profile_metrics=["nc1"],
        **FIT,
    )
    step = math.sqrt(cal.table()[0]["cost_network"])  # one step's W2 over the spread
    lines += [
        f"test problem: largest relative error of the two weights {err:.0e}, J = {cal.value:.0e} "
        f"(the tests ask for 1 % and J < 1e-08)",
        f"test problem: largest |log-ratio| of the residuals {resid:.0e}; w2_relative "
        f"{cal.match['w2_relative']:.0e}; NC1-only calibration (lambda_H = lambda_W): "
        f"|log NC1 gap| {nc1_only.value:.0e}, W2 / network spread "
        f"{nc1_only.match['w2'] / cal.match['network_spread']:.2f} (the tests ask for residuals "
        "below 1e-04 and w2_relative below 1e-03)",
        f"test problem: step length (W2 of one step) / network spread {100 * step:.0f} %",
        f"test problem cost: {len(cal.grid)} grid fits + {len(cal.refinement)} refinement fits = "
        f"{len(cal.grid) + len(cal.refinement)} fits, {seconds:.1f} s wall-clock "
        f"(torch on 1 thread; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores)",
    ]


def valley(net: Trajectory, lines: list[str]) -> None:
    along = [criterion(net, TRUE_OT * f, TRUE_H * f) for f in (2.0, 0.5)]
    across2 = [criterion(net, TRUE_OT * f, TRUE_H / f) for f in (2.0, 0.5)]
    across10 = [criterion(net, TRUE_OT * f, TRUE_H / f) for f in (10.0, 0.1)]
    lines += [
        f"valley: J with both weights x2, x1/2 (along): {along[0]:.4f}, {along[1]:.4f}",
        f"valley: J with one weight x2, the other x1/2 (across): "
        f"{across2[0]:.0f}, {across2[1]:.0f}",
        f"valley: J with one weight x10, the other x1/10 (across): "
        f"{across10[0]:.0f}, {across10[1]:.0f}",
    ]


def noise(lines: list[str]) -> None:
    pushed, cases = 0, 0
    for level in (0.03, 0.10):
        f_ot, f_h, edges = [], [], 0
        for seed in range(4):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                cal = calibrate_mufm_profile(
                    test_problem(level, seed),
                    lambda_w=LW,
                    lambda_ot_grid=OT_GRID,
                    lambda_h_grid=H_GRID,
                    **FIT,
                )
            f_ot.append(cal.lambda_ot / TRUE_OT)
            f_h.append(cal.lambda_h / TRUE_H)
            edges += cal.at_grid_edge
            pushed += (cal.lambda_ot > TRUE_OT) + (cal.lambda_h > TRUE_H)
            cases += 2

        def factor(r: float) -> float:
            return max(r, 1 / r)

        lines.append(
            f"noise {100 * level:.0f} %: lambda_OT / truth "
            + ", ".join(f"{r:.2f}" for r in f_ot)
            + f" (within a factor {max(map(factor, f_ot)):.2f}); lambda_H / truth "
            + ", ".join(f"{r:.2f}" for r in f_h)
            + f" (within a factor {max(map(factor, f_h)):.2f}); at the grid's edge: {edges} of 4"
        )
    lines.append(f"noise: weights above the truth in {pushed} of the {cases} cases")


def other_lambda_w(net: Trajectory, lines: list[str]) -> None:
    found, worst_j, worst_w2 = [], 0.0, 0.0
    for factor in (0.25, 4.0, 30.0):
        cal = calibrate_mufm_profile(
            net, lambda_w=LW * factor, lambda_ot_grid=OT_GRID, lambda_h_grid=H_GRID, **FIT
        )
        found.append(f"x{factor:g}: ({cal.lambda_ot:.2g}, {cal.lambda_h:.2g})")
        worst_j, worst_w2 = max(worst_j, cal.value), max(worst_w2, cal.match["w2_relative"])
    lines.append(
        "lambda_W: "
        + ", ".join(found)
        + f"; largest J {worst_j:.0e} (below 1e-07), largest w2_relative "
        f"{100 * worst_w2:.1f} %"
    )


def nelder_mead(net: Trajectory, lines: list[str]) -> None:
    coarse = calibrate_mufm_profile(
        net, lambda_w=LW, lambda_ot_grid=OT_GRID, lambda_h_grid=H_GRID, refine=False, **FIT
    )
    lo, hi = np.log10([OT_GRID[0], H_GRID[0]]), np.log10([OT_GRID[-1], H_GRID[-1]])
    x0 = np.log10([coarse.lambda_ot, coarse.lambda_h])
    half = 0.5 * (hi - lo)
    inward = np.where(x0 > 0.5 * (lo + hi), -1.0, 1.0) * half
    simplex = np.vstack([x0, x0 + np.diag(inward)])
    fits = []

    def J(t: np.ndarray) -> float:
        fits.append(t)
        t = np.clip(t, lo, hi)
        return criterion(net, 10 ** t[0], 10 ** t[1])

    res = minimize(
        J, x0, method="Nelder-Mead", options=dict(xatol=0.02, fatol=1e-12, initial_simplex=simplex)
    )
    end = np.clip(res.x, lo, hi)
    a, h = 10**end
    # within a tenth of a grid step (a decade) of an end of the box, as calibrate_mufm_profile flags
    edge = [
        f"{name} {side}"
        for name, t, low, high in zip(("lambda_ot", "lambda_h"), end, lo, hi, strict=True)
        for side, at in (("low", t <= low + 0.1), ("high", t >= high - 0.1))
        if at
    ]
    lines.append(
        f"Nelder-Mead from the best grid point ({coarse.lambda_ot:.2g}, {coarse.lambda_h:.2g}): "
        f"stopped at ({a:.2g}, {h:.2g}), truth / fitted {TRUE_OT / a:.0f} and {TRUE_H / h:.0f}, "
        f"ratio lambda_H / lambda_OT {h / a:.3f} (truth {TRUE_H / TRUE_OT:.3f}), J = {res.fun:.2f}"
        f", {len(fits)} fits, at the grid's edge: {', '.join(edge) or 'no'}"
    )


# ------------------------------------------------------------------------------ the snippet


def snippet(lines: list[str]) -> None:
    g = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)
    X = g.standard_normal((30, 4)) + g.standard_normal((3, 4))[y]
    net = fit_mufm(X, y, n_layers=2, lambda_ot=0.05, lambda_w=1e-3, lambda_h=0.01, tol=1e-10)
    traj = Trajectory.from_arrays(list(net.trajectory.layers), labels=y)
    cal = calibrate_mufm_profile(
        traj, lambda_w=1e-3, lambda_ot_grid=[0.01, 0.1], lambda_h_grid=[0.003, 0.03], tol=1e-7
    )
    best = min(cal.grid, key=lambda r: r["criterion"])

    def off(v: float, truth: float) -> float:
        return max(v / truth, truth / v)

    lines.append(
        f"snippet: best grid point ({best['lambda_ot']:g}, {best['lambda_h']:g}), off by a factor "
        f"{off(best['lambda_ot'], 0.05):.0f} in lambda_OT and {off(best['lambda_h'], 0.01):.0f} "
        f"in lambda_H; refinement {len(cal.refinement)} fits"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="an existing `otcollapse run --quick` folder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            run = Path(tmp) / "quick"
            quick_run(run)
        network(run, lines)
    net = test_problem()
    recovery(net, lines)
    valley(net, lines)
    noise(lines)
    other_lambda_w(net, lines)
    nelder_mead(net, lines)
    snippet(lines)
    lines.append(
        f"total: {time.perf_counter() - t0:.0f} s wall-clock (torch on 1 thread; "
        f"{os.cpu_count()} cores)"
    )
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
