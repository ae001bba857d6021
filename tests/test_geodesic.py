"""Geodesic analysis: closed forms and constructions, not plausibility.

Every expected value below is written here, from the construction, independently of
``otcollapse.geodesic`` (the optimal assignments of the oracles come from scipy on a float64 cost
computed in this file; the Bures map from scipy's matrix square root).
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.optimize import linear_sum_assignment, linprog

from otcollapse import Trajectory, _resampling, wasserstein
from otcollapse.constructions import discrete_geodesic
from otcollapse.geodesic import (
    compare_trajectories,
    geodesic_test,
    lss,
    mccann_interpolate,
    ots,
    split_half_floor,
    transport_profile,
)


# ----------------------------------------------------------------------------- oracles
def optimal_sigma(x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """Optimal assignment x0_i -> x1[sigma[i]] from a float64 cost built here."""
    C = ((x0[:, None, :] - x1[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(C)
    sigma = np.empty(len(x0), dtype=np.int64)
    sigma[rows] = cols
    return sigma


def bures_map_oracle(S0: np.ndarray, S1: np.ndarray) -> np.ndarray:
    """A = S0^{-1/2} (S0^{1/2} S1 S0^{1/2})^{1/2} S0^{-1/2}, with scipy's sqrtm."""
    r = np.real(scipy.linalg.sqrtm(S0))
    ri = np.linalg.inv(r)
    A = ri @ np.real(scipy.linalg.sqrtm(r @ S1 @ r)) @ ri
    return 0.5 * (A + A.T)


def moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = x.mean(0)
    return m, (x - m).T @ (x - m) / len(x)


def geodesic_cloud(n=40, d=3, L=4, seed=0, shift=2.0):
    g = np.random.default_rng(seed)
    x0, x1 = g.normal(size=(n, d)), g.normal(size=(n, d)) + shift
    return x0, x1, optimal_sigma(x0, x1)


# ----------------------------------------------------------------------------- Gaussian McCann
def test_gaussian_mccann_interpolant_is_constant_speed_under_bures():
    """N((1-t)m0 + t m1, M_t S0 M_t), M_t = (1-t)I + tA: W2(mu_s, mu_t) = |t - s| W2(mu_0, mu_1).

    Realised on samples: x_t = (1-t) x0 + t (m1 + A (x0 - m0)) with (m0, S0) the samples' own
    moments, so every layer's empirical mean and covariance are exactly those of the Gaussian
    interpolant, and the `gaussian` method sees the Gaussian geodesic exactly.
    """
    g = np.random.default_rng(0)
    d, n, L = 3, 200, 4
    x0 = g.normal(size=(n, d)) @ np.array([[1.0, 0.2, 0.0], [0.0, 0.7, 0.3], [0.0, 0.0, 1.4]])
    m0, S0 = moments(x0)
    m1 = np.array([2.0, -1.0, 0.5])
    S1 = np.array([[2.0, 0.5, 0.1], [0.5, 1.0, -0.2], [0.1, -0.2, 0.6]])
    A = bures_map_oracle(S0, S1)
    T = m1 + (x0 - m0) @ A
    u = np.arange(L + 1) / L
    traj = Trajectory.from_arrays([(1 - s) * x0 + s * T for s in u])
    # closed form: the map between any two interpolants is the SPD affine map M_t M_s^{-1}
    W2sq = np.sum((m1 - m0) ** 2) + np.trace((A - np.eye(d)) @ S0 @ (A - np.eye(d)))
    prof = transport_profile(traj, transport="gaussian", pairs="all", noise_floor=False)
    assert len(prof) == (L + 1) * L // 2
    for r in prof.rows:
        assert r.quantity == "W2^2 (Bures)"
        assert r.cost == pytest.approx((u[r.target] - u[r.source]) ** 2 * W2sq, rel=1e-9)
    rep = geodesic_test(traj, transport="gaussian")
    seg = rep.segments[0]
    assert seg.path_ratio == pytest.approx(1.0, abs=1e-9)
    assert seg.speed_cv == pytest.approx(0.0, abs=1e-9)
    assert seg.mccann.method == "gaussian"
    # the Bures value is a difference of traces, exact to ~1e-15 * Tr(S): its square root (the
    # residual's numerator) is exact to ~1e-7, and t_l, the argmin of a quadratic, likewise
    np.testing.assert_allclose(seg.mccann.t, u, atol=1e-6)
    assert seg.mccann.max_residual < 1e-6
    assert seg.ots == 1.0  # an SPD affine map is optimal
    assert seg.lss.mean == pytest.approx(1.0, abs=1e-12)


def test_discrete_mccann_interpolation_agrees_with_gaussian_up_to_sampling_error():
    """Discrete samples follow the Gaussian geodesic only up to the empirical-measure error.

    x0 ~ N(m0, S0), x1 ~ N(m1, S1) independent, n points each, d = 2. The Gaussian interpolant
    realised on x0 is y_t = (1-t) x0 + t T(x0), T(x) = m1 + A (x - m0) the population Bures map;
    z_t = mccann_interpolate(x0, x1, t). Both are geodesics from the same empirical measure, so:

    - exactly: t * delta <= W2(z_t, y_t) <= t * e, with delta = W2(x1, T(x0)) (W2 over R^d is
      positively curved: geodesics from one point spread at least linearly, Ambrosio–Gigli–Savaré
      Thm 7.3.2) and e = ||x1_sigma(i) - T(x0_i)||_{L2} (the coupling i <-> i);
    - statistically: delta compares two independent n-samples of N(m1, S1), so it is of the
      order of the empirical-measure error, sqrt(lambda_max(S1)) * n^(-1/d) * sqrt(log n) for
      d = 2 (Fournier & Guillin 2015; Ajtai–Komlós–Tusnády); 4 times that is the tolerance
      (0.71 here, against W2(mu_0, mu_1) = 3.2; over 30 seeds the largest observed was 0.47).
    """
    d, n = 2, 400
    m0, m1 = np.zeros(d), np.array([3.0, -1.0])
    S0 = np.array([[1.0, 0.3], [0.3, 0.5]])
    S1 = np.array([[2.0, -0.4], [-0.4, 0.8]])
    g = np.random.default_rng(7)
    x0 = g.multivariate_normal(m0, S0, size=n)
    x1 = g.multivariate_normal(m1, S1, size=n)
    A = bures_map_oracle(S0, S1)
    Tx0 = m1 + (x0 - m0) @ A
    sigma = optimal_sigma(x0, x1)
    e = math.sqrt(np.mean(((x1[sigma] - Tx0) ** 2).sum(1)))
    delta = wasserstein(x1, Tx0, method="assignment", cost_dtype="float64").distance
    tol = 4 * math.sqrt(np.linalg.eigvalsh(S1).max()) * n ** (-1 / d) * math.sqrt(math.log(n))
    W = math.sqrt(np.sum((m1 - m0) ** 2) + np.trace((A - np.eye(d)) @ S0 @ (A - np.eye(d))))
    assert tol < 0.25 * W  # the tolerance is not vacuous
    for t in (0.25, 0.5, 0.75):
        z = mccann_interpolate(x0, x1, t).points
        np.testing.assert_allclose(z, (1 - t) * x0 + t * x1[sigma], atol=1e-12)
        y = (1 - t) * x0 + t * Tx0
        dist = wasserstein(z, y, method="assignment", cost_dtype="float64").distance
        assert t * delta * (1 - 1e-9) <= dist <= t * e * (1 + 1e-9)
        assert dist <= t * tol


# ----------------------------------------------------------------------------- exact geodesic
def test_discrete_geodesic_from_optimal_assignment(as_input):
    x0, x1, sigma = geodesic_cloud(n=40, d=3, seed=1)
    L = 4
    base = discrete_geodesic(x0, x1, sigma, n_layers=L, labels=np.arange(40) % 3)
    traj = Trajectory.from_arrays([as_input(x) for x in base.layers], labels=base.labels)
    rep = geodesic_test(traj)
    seg = rep.segments[0]
    assert seg.layers == tuple(range(L + 1))
    assert seg.path_ratio == pytest.approx(1.0, abs=1e-9)
    assert seg.speed_cv == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(seg.mccann.t, np.arange(L + 1) / L, atol=1e-9)
    assert seg.mccann.max_residual <= 1e-9
    assert seg.ots == 1.0
    np.testing.assert_allclose(seg.lss.values, 1.0, atol=1e-9)
    assert seg.lss.n_undefined == 0
    # each block moves mass optimally, at 1/L of the total W2^2 / L^2
    W2sq = np.mean(((x1[sigma] - x0) ** 2).sum(1))
    for r in rep.profile.rows:
        assert r.cost == pytest.approx(W2sq / L**2, rel=1e-9)
        assert r.efficiency == pytest.approx(1.0, abs=1e-9)
        assert r.converged and r.quantity == "W2^2"
    assert rep.subsample is None and rep.n_samples == 40


def test_discrete_geodesic_with_sample_weights_uses_the_exact_plan():
    """A weighted measure along an optimal permutation: its graph is cyclically monotone, so it is
    the optimal plan for any masses. The network simplex's W2^2 is exact to ~1e-16 absolute
    (rounding residue on degenerate entries of its plan), so a zero W2 comes out ~1e-8: the
    residual is checked to 1e-7."""
    x0, x1, sigma = geodesic_cloud(n=30, d=2, seed=2)
    w = np.random.default_rng(3).random(30) + 0.1
    traj = discrete_geodesic(x0, x1, sigma, n_layers=3).replace(weights=w / w.sum())
    seg = geodesic_test(traj).segments[0]
    assert seg.methods["ots"] == "exact" and seg.mccann.method == "exact"
    assert seg.path_ratio == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(seg.mccann.t, np.arange(4) / 3, atol=1e-9)
    assert seg.mccann.max_residual <= 1e-7
    assert seg.ots == pytest.approx(1.0, abs=1e-12)
    assert seg.lss.weighted and seg.lss.mean == pytest.approx(1.0, abs=1e-9)


def test_mccann_fit_finds_a_shuffled_layer_on_the_geodesic():
    """Layer 2 holds the points of the geodesic at t = 1/2, assigned to the wrong samples: as a
    measure it is mu_{1/2} (t_2 = 1/2, residual 0), but the network's own coupling is not
    optimal, so the fit has to move away from its start (the paired estimate) to get there."""
    x0, x1, sigma = geodesic_cloud(n=40, d=2, seed=20)
    layers = list(discrete_geodesic(x0, x1, sigma, n_layers=4).layers)
    layers[2] = layers[2][np.random.default_rng(0).permutation(40)]
    traj = Trajectory.from_arrays(layers)
    for grid in (0, 5):
        fit = geodesic_test(traj, mccann_grid=grid).segments[0].mccann
        assert fit.t[2] == pytest.approx(0.5, abs=1e-9)
        assert fit.residual[2] <= 1e-9
        assert fit.n_evals[2] >= 2 and all(fit.converged)
        np.testing.assert_allclose(fit.t, np.arange(5) / 4, atol=1e-9)


def test_subsampling_intervals_are_seeded_and_exact_on_a_geodesic():
    x0, x1, sigma = geodesic_cloud(n=40, d=2, seed=4)
    traj = discrete_geodesic(x0, x1, sigma, n_layers=3, labels=np.arange(40) % 2)
    rep = geodesic_test(traj, n_boot=4, seed=5)
    again = geodesic_test(traj, n_boot=4, seed=5)
    ci = rep.segments[0].ci
    assert rep.boot_size == 20 and rep.n_boot == 4
    # every subsample of a geodesic is a geodesic: R = OTS = LSS = 1 in every replicate
    for key in ("path_ratio", "ots", "lss_mean", "lss_median"):
        assert ci[key] == pytest.approx((1.0, 1.0), abs=1e-9)
    assert ci == again.segments[0].ci
    # the same numbers (the solver records differ only in their timings)
    assert [s.to_dict() for s in rep.segments] == [s.to_dict() for s in again.segments]


def test_large_trajectory_runs_on_a_stated_stratified_subsample():
    x0, x1, sigma = geodesic_cloud(n=120, d=2, seed=6)
    labels = np.repeat([0, 1, 2], [60, 40, 20])
    traj = discrete_geodesic(x0, x1, sigma, n_layers=2, labels=labels)
    rep = geodesic_test(traj, max_samples=60, seed=3)
    assert rep.n_samples == 60 and rep.n_total == 120
    assert rep.subsample == {"n": 60, "of": 120, "seed": 3, "stratified": True}
    assert any("subsample" in note for note in rep.notes)
    idx = traj.subsample_indices(60, 3)
    assert np.bincount(labels[idx]).tolist() == [30, 20, 10]
    # a subsample of a geodesic is a geodesic
    assert rep.segments[0].path_ratio == pytest.approx(1.0, abs=1e-9)
    assert rep.segments[0].ots == 1.0


# ----------------------------------------------------------------------------- OTS
@pytest.mark.parametrize("kind", ["translation", "spd"])
def test_ots_is_one_for_optimal_maps(kind, as_input):
    g = np.random.default_rng(8)
    x = g.normal(size=(60, 4))
    if kind == "translation":
        y = x + np.array([3.0, -1.0, 0.5, 2.0])
    else:
        Q, _ = np.linalg.qr(g.normal(size=(4, 4)))
        y = x @ (Q @ np.diag([0.3, 1.0, 2.0, 4.0]) @ Q.T)
    assert ots(as_input(x), as_input(y)) == 1.0


def test_ots_counts_the_fixed_points_of_a_random_permutation():
    g = np.random.default_rng(9)
    x = g.normal(size=(80, 3))
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(80)
        # output i is input perm[i]: the optimal assignment sends x_j to output perm^{-1}(j),
        # its own output exactly at the fixed points of perm
        assert ots(x, x[perm]) == pytest.approx(np.mean(perm == np.arange(80)), abs=1e-15)
        assert ots(x, x[perm]) <= 0.05


def _duplicated(n_distinct: int, copies: int, d: int, seed: int) -> np.ndarray:
    """``n_distinct`` random points, each repeated ``copies`` times, rows shuffled."""
    g = np.random.default_rng(seed)
    base = g.normal(size=(n_distinct, d))
    return base[g.permutation(np.repeat(np.arange(n_distinct), copies))]


def best_fixed_points(x: np.ndarray, y: np.ndarray) -> float:
    """Brute force over all n! assignments: the most fixed points among the optimal ones."""
    n = len(x)
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    perms = np.array(list(itertools.permutations(range(n))))
    costs = C[np.arange(n), perms].sum(1)
    optimal = perms[costs <= costs.min() + 1e-9 * (1.0 + abs(costs.min()))]
    return float((optimal == np.arange(n)).sum(1).max() / n)


def best_diagonal_mass(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """Linear programs: the largest sum_i pi_ii over the optimal couplings of (x, w), (y, w)."""
    n = len(x)
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1).ravel()
    A_eq = np.vstack([np.kron(np.eye(n), np.ones(n)), np.kron(np.ones(n), np.eye(n))])
    b_eq = np.concatenate([w, w])
    best = linprog(C, A_eq=A_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    diag = -np.eye(n).ravel()
    res = linprog(
        diag,
        A_ub=C[None],
        b_ub=[best.fun + 1e-11],  # rounding room: gaps to other vertices are >> 1e-11
        A_eq=A_eq,
        b_eq=b_eq,
        bounds=(0, None),
        method="highs",
    )
    return float(-res.fun)


def test_ots_of_a_translation_of_duplicated_samples_is_one(as_input):
    """A pure translation is optimal however the solver pairs identical points: OTS = 1 with and
    without weights, and inside geodesic_test (issue 19: 1.0, 0.0 weighted, 0.567 in the test)."""
    x = _duplicated(15, 2, 3, seed=40)
    y = x + 0.3
    w = np.random.default_rng(41).uniform(0.5, 1.5, size=len(x))
    w /= w.sum()
    assert ots(as_input(x), as_input(y)) == 1.0
    assert ots(as_input(x), as_input(y), weights=np.full(len(x), 1 / len(x))) == pytest.approx(
        1.0, abs=1e-12
    )
    assert ots(as_input(x), as_input(y), weights=w) == pytest.approx(1.0, abs=1e-12)
    # every sample at one point: still a translation
    same = np.zeros((6, 2))
    assert ots(same, same + 1.0) == 1.0
    assert ots(same, same + 1.0, weights=np.full(6, 1 / 6)) == pytest.approx(1.0, abs=1e-12)
    layers = [as_input(x), as_input(x + 0.15), as_input(y)]
    rep = geodesic_test(Trajectory.from_arrays(layers), n_boot=3)
    assert rep.segments[0].ots == 1.0 and rep.segments[0].ci["ots"] == (1.0, 1.0)
    rep_w = geodesic_test(Trajectory.from_arrays(layers, weights=w))
    assert rep_w.segments[0].ots == pytest.approx(1.0, abs=1e-12)


def test_ots_without_duplicates_is_unchanged_against_a_brute_force_assignment():
    g = np.random.default_rng(42)
    x = g.normal(size=(40, 3))
    y = x + 0.6 * g.normal(size=(40, 3))  # noisy: some samples change partner
    expected = float(np.mean(optimal_sigma(x, y) == np.arange(40)))
    assert 0.0 < expected < 1.0
    assert ots(x, y) == expected
    assert ots(x, y, weights=np.full(40, 1 / 40)) == pytest.approx(expected, abs=1e-12)
    rep = geodesic_test(Trajectory.from_arrays([x, (x + y) / 2, y]))
    assert rep.segments[0].ots == expected


@pytest.mark.parametrize("seed", [43, 44, 45])
def test_ots_with_duplicates_is_the_best_optimal_assignment(seed):
    """Inputs and outputs with repeated points, not a translation: OTS is the most fixed points of
    any optimal assignment (brute force over 7! assignments), and the most diagonal mass of any
    optimal weighted coupling (two linear programs); reordering the samples changes nothing."""
    g = np.random.default_rng(seed)
    x = g.normal(size=(4, 2))[[0, 0, 1, 1, 2, 3, 3]]
    y = (x + 0.8 * g.normal(size=(4, 2))[[0, 0, 1, 2, 2, 3, 3]])[[0, 1, 2, 3, 4, 6, 5]]
    expected = best_fixed_points(x, y)
    assert ots(x, y) == pytest.approx(expected, abs=1e-15)
    order = g.permutation(7)
    assert ots(x[order], y[order]) == pytest.approx(expected, abs=1e-15)
    w = g.uniform(0.5, 1.5, size=7)
    w /= w.sum()
    assert ots(x, y, weights=w) == pytest.approx(best_diagonal_mass(x, y, w), abs=1e-8)


# ----------------------------------------------------------------------------- zig-zag, LSS
def test_zigzag_path_detours_with_exact_ratio_lss_and_mccann_fit():
    """Every sample follows the same zig-zag: layer l is x0 translated by u_l = c_1 + ... + c_l.

    Between translates W2 is the distance of the translations, so R = sum |c_l| / |u_L|; the
    unit steps alternate (1, +-1, 0)/sqrt(2), so LSS = 4 / |(4/sqrt(2), 0, 0)| = sqrt(2) for
    every track; the McCann interpolant is x0 + t u_L, so t_l = <u_l, u_L> / |u_L|^2 and the
    residual is the distance of u_l to the line, over |u_L|.
    """
    g = np.random.default_rng(10)
    x0 = g.normal(size=(30, 3))
    c = np.array([[1.0, 1.0, 0.0], [2.0, -2.0, 0.0], [0.5, 0.5, 0.0], [1.0, -1.0, 0.0]])
    u = np.vstack([np.zeros(3), np.cumsum(c, 0)])
    traj = Trajectory.from_arrays([x0 + v for v in u])
    seg = geodesic_test(traj).segments[0]
    lengths = np.linalg.norm(c, axis=1)
    R = lengths.sum() / np.linalg.norm(u[-1])
    assert R > 1.3
    assert seg.path_ratio == pytest.approx(R, rel=1e-12)
    assert seg.speed_cv == pytest.approx(lengths.std() / lengths.mean(), rel=1e-12)
    np.testing.assert_allclose(seg.lss.values, math.sqrt(2), rtol=1e-12)
    t = u @ u[-1] / (u[-1] @ u[-1])
    resid = np.linalg.norm(u - t[:, None] * u[-1], axis=1) / np.linalg.norm(u[-1])
    np.testing.assert_allclose(seg.mccann.t, t, atol=1e-12)
    np.testing.assert_allclose(seg.mccann.residual, resid, atol=1e-9)
    assert seg.ots == 1.0


def test_lss_is_one_on_a_straight_track_with_uneven_spacing():
    g = np.random.default_rng(11)
    x0 = g.normal(size=(25, 4))
    direction = g.normal(size=(25, 4))
    spacing = [0.0, 0.1, 0.15, 2.0, 2.5, 7.0]  # uneven, increasing
    res = lss([x0 + s * direction for s in spacing])
    np.testing.assert_allclose(res.values, 1.0, rtol=1e-12)
    assert res.mean == pytest.approx(1.0) and res.n_zero_steps == 0 and res.n_steps == 5


def test_lss_skips_zero_steps_without_nan():
    """A zero step has no direction: it is skipped and L' counts the non-zero steps (documented).
    Track 0: right, stay, up -> unit steps (1,0) + (0,1): LSS = 2 / sqrt(2). Track 1: straight
    with a repeated layer -> 1. Track 2 never moves: no LSS (NaN there), counted, not averaged."""
    x = np.zeros((3, 2))
    x[1] = [5.0, 5.0]
    steps = [
        np.zeros((3, 2)),
        np.array([[1.0, 0], [1, 1], [0, 0]]),
        np.zeros((3, 2)),
        np.array([[0.0, 1], [2, 2], [0, 0]]),
    ]
    layers = [x + s for s in np.cumsum(steps, 0)]
    res = lss(layers)
    assert res.values[0] == pytest.approx(math.sqrt(2), rel=1e-12)
    assert res.values[1] == pytest.approx(1.0, rel=1e-12)
    assert np.isnan(res.values[2])
    assert res.n_defined == 2 and res.n_undefined == 1
    assert res.n_steps == 3
    assert res.n_zero_steps == 1 + 3 + 1  # track 2 in steps 1 and 3, every track in step 2
    assert res.mean == pytest.approx((math.sqrt(2) + 1) / 2, rel=1e-12)
    assert not any(np.isnan(v) for v in (res.mean, res.median, res.q25, res.q75))
    d = res.to_dict()
    assert d["values"][2] is None
    json.dumps(d, allow_nan=False)


def test_zero_step_in_a_trajectory_gives_no_nan():
    x0, x1, sigma = geodesic_cloud(n=20, d=2, seed=12)
    layers = list(discrete_geodesic(x0, x1, sigma, n_layers=2).layers)
    traj = Trajectory.from_arrays([layers[0], layers[1], layers[1], layers[2]])
    rep = geodesic_test(traj)
    seg = rep.segments[0]
    assert rep.profile.rows[1].cost == 0.0
    assert rep.profile.rows[1].efficiency == 1.0  # a block that does not move moves optimally
    assert seg.path_ratio == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(seg.lss.values, 1.0, atol=1e-9)
    np.testing.assert_allclose(seg.mccann.t, [0, 0.5, 0.5, 1], atol=1e-9)
    json.dumps(rep.to_dict(), allow_nan=False)


# ----------------------------------------------------------------------------- dimension changes
def shortcut_trajectory(n=30, seed=13):
    """h0 in R^2, h1 = P h0 + c in R^3 (linear shortcut P, constant branch c), h2 = h1 + b."""
    g = np.random.default_rng(seed)
    h0 = g.normal(size=(n, 2))
    P = np.array([[1.0, 0.0], [0.5, 2.0], [0.0, -1.0]])
    c = np.array([0.3, -0.4, 1.2])
    b = np.array([1.0, 0.0, 0.0])
    h1 = h0 @ P.T + c
    return h0, h1, h1 + b, P, c, b


def test_step_across_a_stage_is_measured_in_the_output_space_with_the_shortcut_image():
    h0, h1, h2, P, c, b = shortcut_trajectory()
    traj = Trajectory.from_arrays([h0, h1, h2], shortcuts={0: h0 @ P.T})
    prof = transport_profile(traj)
    r0, r1 = prof.rows
    assert r0.shortcut and not r1.shortcut
    # P_# mu_0 -> mu_1 is the translation by c: W2^2 = paired = |c|^2
    assert r0.cost == pytest.approx(c @ c, rel=1e-12)
    assert r0.paired == pytest.approx(c @ c, rel=1e-12)
    assert r1.cost == pytest.approx(b @ b, rel=1e-12)
    assert "P(layer0)" in prof.floors
    rep = geodesic_test(traj)
    assert [s.layers for s in rep.segments] == [(1, 2)]
    assert any("one layer" in note for note in rep.notes)


def test_errors_say_what_to_do():
    x = np.zeros((5, 2))
    with pytest.raises(ValueError, match="at least two layers"):
        geodesic_test(Trajectory.from_arrays([x]))
    with pytest.raises(ValueError, match="at least two layers"):
        transport_profile(Trajectory.from_arrays([x]))
    h0, h1, h2, *_ = shortcut_trajectory()
    traj = Trajectory.from_arrays([h0, h1, h2])
    with pytest.raises(ValueError, match=r"gromov.*project") as err:
        transport_profile(traj)
    assert "layer0" in str(err.value)
    with pytest.raises(ValueError, match=r"gromov.*project"):
        transport_profile(Trajectory.from_arrays([h0, h1, h0 @ np.ones((2, 3))]), pairs=[(0, 2)])
    with pytest.raises(ValueError, match="project"):
        geodesic_test(Trajectory.from_arrays([h0, h1]))
    with pytest.raises(ValueError, match="successive"):
        transport_profile(traj, pairs="neighbours")
    with pytest.raises(ValueError, match="max_samples"):
        geodesic_test(Trajectory.from_arrays([h0, h0 + 1]), max_samples=None, max_dense_bytes=1000)
    # the two ways out
    gw = transport_profile(traj, transport="gromov", noise_floor=False)
    assert all(r.quantity == "GW" and r.efficiency is None for r in gw.rows)
    assert gw.rows[0].paired is None and gw.rows[1].paired is not None
    proj = transport_profile(traj.project(3), pairs="all", noise_floor=False)
    assert len(proj) == 3 and all(r.quantity == "W2^2" for r in proj.rows)
    skipped = transport_profile(traj, cross="skip")
    assert [(r.source, r.target) for r in skipped.rows] == [(1, 2)] and len(skipped.skipped) == 1


_X = np.random.default_rng(20).normal(size=(12, 2))
_TRAJ = Trajectory.from_arrays([_X, _X + 1.0, _X + 2.0])
BAD_PARAMETERS = [
    (lambda: geodesic_test(_TRAJ, mccann_grid=-1), ValueError, "mccann_grid"),
    (lambda: geodesic_test(_TRAJ, mccann_grid=2.5), TypeError, "mccann_grid"),
    (lambda: geodesic_test(_TRAJ, max_samples=1), ValueError, "max_samples"),
    (lambda: geodesic_test(_TRAJ, max_samples=10.0), TypeError, "max_samples"),
    (lambda: geodesic_test(_TRAJ, max_dense_bytes=-1), ValueError, "max_dense_bytes"),
    (lambda: geodesic_test(_TRAJ, n_boot=-1), ValueError, "n_boot"),
    (lambda: geodesic_test(_TRAJ, n_boot=2.0), TypeError, "n_boot"),
    (lambda: geodesic_test(_TRAJ, n_boot=2, boot_fraction="0.5"), TypeError, "boot_fraction"),
    (lambda: geodesic_test(_TRAJ, n_boot=2, boot_fraction=math.nan), ValueError, "boot_fraction"),
    (lambda: transport_profile(_TRAJ, ci_level=1.0), ValueError, "ci_level"),
    (lambda: transport_profile(_TRAJ, pairs=[(0, 9)]), ValueError, "pairs.*layer 9.*0..2"),
    (lambda: transport_profile(_TRAJ, pairs=[(-4, 1)]), ValueError, "pairs"),
    (lambda: transport_profile(_TRAJ, pairs=[(0, 1.5)]), TypeError, "pairs"),
    (lambda: transport_profile(_TRAJ, pairs=[(0, 1, 2)]), ValueError, "pairs"),
    (lambda: transport_profile(_TRAJ, pairs=(0, 1)), TypeError, "pairs"),
    (lambda: transport_profile(_TRAJ, pairs=[]), ValueError, "pairs is empty"),
    (lambda: transport_profile(_TRAJ, pairs=5), TypeError, "pairs"),
    (lambda: transport_profile(_TRAJ, pairs=[(1, 1)]), ValueError, "pairs.*itself"),
    (lambda: lss(_TRAJ, rtol=-1.0), ValueError, "rtol"),
    (lambda: lss(_TRAJ, rtol=math.nan), ValueError, "rtol"),
    (lambda: mccann_interpolate(_X, _X, "0.5"), TypeError, "t "),
    (lambda: mccann_interpolate(_X, _X, math.nan), ValueError, "t "),
    (lambda: ots(_X + 1j, _X), ValueError, "complex values in x_in"),
    (lambda: ots(_X, torch.as_tensor(_X + 1j)), ValueError, "complex values in x_out"),
    (lambda: lss([_X, _X + 1j]), ValueError, "complex values in layer 1 of the tracks"),
]


@pytest.mark.parametrize("call, kind, match", BAD_PARAMETERS)
def test_bad_parameters_are_refused_by_name(call, kind, match):
    with pytest.raises(kind, match=match):
        call()


# ----------------------------------------------------------------------------- profile extras
def test_profile_by_class_floors_intervals_and_records():
    g = np.random.default_rng(14)
    x = g.normal(size=(60, 3))
    y = np.arange(60) % 3
    shift = np.array([1.0, 2.0, 2.0])
    traj = Trajectory.from_arrays([x, x + shift, x + 2 * shift], labels=y)
    prof = transport_profile(traj, by_class=True, n_boot=3, seed=1)
    for r in prof.rows:
        assert r.cost == pytest.approx(9.0, rel=1e-12) and r.efficiency == pytest.approx(1.0)
        assert r.class_cost == pytest.approx({0: 9.0, 1: 9.0, 2: 9.0}, rel=1e-12)
        assert r.class_paired == pytest.approx({0: 9.0, 1: 9.0, 2: 9.0}, rel=1e-12)
        # a translation: every subsample has the same W2
        assert r.ci == pytest.approx((3.0, 3.0), rel=1e-9)
        assert r.method == "assignment" and r.converged and r.solver["quantity"] == "W2^2"
    # the floor is W2 between two disjoint, stratified halves of 30 samples, computed here from
    # scipy's optimal assignment; split halves of translates are translates: the same floor at
    # every layer
    first, rest = _resampling.split_halves(y, 60, seed=1)
    assert len(first) == len(rest) == 30 and not set(first) & set(rest)
    assert np.bincount(y[first]).tolist() == np.bincount(y[rest]).tolist() == [10, 10, 10]
    xa, xb = x[first], x[rest]
    expected = math.sqrt(np.mean(((xa - xb[optimal_sigma(xa, xb)]) ** 2).sum(1)))
    floors = list(prof.floors.values())
    assert len(floors) == 3
    np.testing.assert_allclose(floors, expected, rtol=1e-9)
    assert all(r.noise_floor == pytest.approx(expected, rel=1e-9) for r in prof.rows)
    assert split_half_floor(x, labels=y, seed=1) == pytest.approx(expected, rel=1e-12)
    d = prof.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["rows"][0]["class_cost"]["0"] == pytest.approx(9.0)
    assert "layer0 → layer1" in prof.format_table()
    with pytest.raises(ValueError, match="labels"):
        transport_profile(Trajectory.from_arrays([x, x]), by_class=True)


def test_other_methods_say_which_solver_gave_each_statistic():
    x0, x1, sigma = geodesic_cloud(n=30, d=2, seed=15)
    traj = discrete_geodesic(x0, x1, sigma, n_layers=2)
    seg = geodesic_test(traj, transport="sliced").segments[0]
    assert seg.methods == {
        "steps": "sliced",
        "steps_quantity": "SW2^2",
        "mccann": "assignment",
        "ots": "assignment",
    }
    assert seg.mccann.max_residual <= 1e-9 and seg.ots == 1.0
    with pytest.raises(ValueError, match=r"[gG]romov"):
        geodesic_test(traj, transport="gromov")


# ----------------------------------------------------------------------------- McCann interpolate
def test_mccann_interpolate_endpoints_and_plan_forms(as_input):
    x0, x1, sigma = geodesic_cloud(n=12, d=2, seed=16)
    z0 = mccann_interpolate(as_input(x0), as_input(x1), 0.0)
    z1 = mccann_interpolate(as_input(x0), as_input(x1), 1.0)
    np.testing.assert_allclose(np.asarray(z0.points), x0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(z1.points), x1[sigma], atol=1e-12)
    assert z0.weights is None
    dense = np.zeros((12, 12))
    dense[np.arange(12), sigma] = 1 / 12
    zi = mccann_interpolate(x0, x1, 0.3, plan=sigma)
    zd = mccann_interpolate(x0, x1, 0.3, plan=dense)
    np.testing.assert_allclose(zd.points, zi.points, atol=1e-12)
    np.testing.assert_allclose(zd.weights, 1 / 12)
    # constant speed along the interpolation
    w = wasserstein(x0, x1, method="assignment").distance
    ws = wasserstein(zi.points, mccann_interpolate(x0, x1, 0.8).points, method="assignment")
    assert ws.distance == pytest.approx(0.5 * w, rel=1e-9)
    # a general plan: two points to three, masses split
    a = np.array([[0.0], [1.0]])
    b = np.array([[0.0], [2.0], [4.0]])
    plan = np.array([[1 / 3, 1 / 6, 0.0], [0.0, 1 / 6, 1 / 3]])
    zm = mccann_interpolate(a, b, 0.5, plan=plan)
    np.testing.assert_allclose(zm.points.ravel(), [0.0, 1.0, 1.5, 2.5])
    np.testing.assert_allclose(zm.weights, [1 / 3, 1 / 6, 1 / 6, 1 / 3])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mccann_interpolate(x0, x1, 1.5)
    with pytest.raises(ValueError, match="permutation"):
        mccann_interpolate(x0, x1, 0.5, plan=np.zeros(12, dtype=int))


# ----------------------------------------------------------------------------- comparison
def test_compare_trajectories_translated_copy():
    x0, x1, sigma = geodesic_cloud(n=30, d=2, seed=17)
    a = discrete_geodesic(x0, x1, sigma, n_layers=3)
    shift = np.array([0.0, 3.0])
    b = Trajectory.from_arrays([x + shift for x in a.layers[:3]] + [np.zeros((30, 5))])
    cmp = compare_trajectories(a, b, geodesic=False)
    assert [c.layer for c in cmp.layers] == [0, 1, 2]
    for c in cmp.layers:
        assert c.distance == pytest.approx(3.0, rel=1e-12)
        assert c.paired_rms == pytest.approx(3.0, rel=1e-12)
        assert c.paired_mean == pytest.approx(3.0, rel=1e-12)
        assert c.noise_floor_a == pytest.approx(c.noise_floor_b, rel=1e-9)
    assert (
        cmp.not_compared[0]["layer"] == 3 and cmp.not_compared[0]["reason"] == "dimensions differ"
    )
    diffs = cmp.step_differences
    assert [(d["source"], d["target"]) for d in diffs] == [(0, 1), (1, 2)]
    for d in diffs:
        assert d["distance_diff"] == pytest.approx(0.0, abs=1e-12)
    json.dumps(cmp.to_dict(), allow_nan=False)
    with pytest.raises(ValueError, match="same samples"):
        compare_trajectories(a, Trajectory.from_arrays([x0[:10], x0[:10]]))


def test_compare_trajectories_geodesic_differences():
    x0, x1, sigma = geodesic_cloud(n=20, d=2, seed=18)
    a = discrete_geodesic(x0, x1, sigma, n_layers=2)
    c = np.array([[1.0, 1.0], [1.0, -1.0]])
    b = Trajectory.from_arrays([x0, x0 + c[0], x0 + c.sum(0)])
    cmp = compare_trajectories(a, b, geodesic=True, noise_floor=False)
    (gd,) = cmp.geodesic_differences
    assert gd["path_ratio_diff"] == pytest.approx(math.sqrt(2) - 1, abs=1e-9)
    assert gd["lss_mean_diff"] == pytest.approx(math.sqrt(2) - 1, abs=1e-9)
    assert gd["ots_diff"] == 0.0


def test_report_is_json_safe_and_tabular():
    x0, x1, sigma = geodesic_cloud(n=20, d=2, seed=19)
    rep = geodesic_test(discrete_geodesic(x0, x1, sigma, n_layers=2), n_boot=2)
    d = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    assert d["segments"][0]["path_ratio"] == pytest.approx(1.0)
    assert d["segments"][0]["mccann"]["nominal"] == [0.0, 0.5, 1.0]
    assert d["profile"]["rows"][0]["solver"]["method"] == "assignment"
    assert "| layer0 … layer2 |" in rep.format_table()


def test_torch_input_stays_a_tensor_in_mccann_interpolate():
    x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z = mccann_interpolate(x, x + 1.0, 0.5)
    assert isinstance(z.points, torch.Tensor)
    torch.testing.assert_close(z.points, x + 0.5)
