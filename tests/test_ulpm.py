"""Tests of otcollapse.surrogates.ulpm: the unconstrained layer-peeled model (Ji et al., ICLR 2022).

Closed form of the minimum-norm separation problem (balanced classes, n per class, d >= K - 1),
derived by hand: with h_i = h̄_{y_i} on a simplex ETF of squared norm a and w_k = √n h̄_k, every
margin is (w_k - w_j)ᵀh̄_k = √n a K/(K-1), equal to 1 for a = (K-1)/(K√n); then
‖w_k‖² = n a = √n(K-1)/K and the value ½‖W‖² + ½‖H‖² = ½K·√n(K-1)/K + ½Kn·(K-1)/(K√n)
= √n(K-1) (K = 3, n = 2: 2√2 = 2.8284271).
Gradient flow conserves ‖W‖² - ‖H‖² (d/dt‖W‖² = -2⟨W, GH⟩ = -2⟨H, GᵀW⟩ = d/dt‖H‖²); a gradient
step changes it by lr²(‖GH‖² - ‖GᵀW‖²), so over a fixed time lr·steps the drift is O(lr).
Any (W, H) scaled to margin 1 is feasible, so the normalised margin min g / (½‖θ‖²) never exceeds
1 / value.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy.optimize import minimize

from otcollapse.collapse import collapse_profile
from otcollapse.surrogates.ulpm import fit_ulpm, solve_ulpm_separation

Y32 = np.repeat(np.arange(3), 2)


def _class_means(H, y):
    return np.stack([H[y == k].mean(axis=0) for k in range(int(y.max()) + 1)])


def _cosines(M):
    """Off-diagonal cosines between the rows of M, centred over the rows."""
    Mc = M - M.mean(axis=0)
    G = Mc @ Mc.T
    nrm = np.sqrt(np.diag(G))
    C = G / np.outer(nrm, nrm)
    return C[~np.eye(M.shape[0], dtype=bool)]


def _all_margins(W, H, y):
    Z = W @ H.T
    return np.array(
        [Z[y[i], i] - Z[j, i] for i in range(len(y)) for j in range(W.shape[0]) if j != y[i]]
    )


# --------------------------------------------------------------------------- separation problem
@pytest.mark.parametrize(("K", "n", "d"), [(3, 2, 3), (4, 3, 5), (2, 4, 2)])
def test_separation_closed_form_balanced(K, n, d):
    y = np.repeat(np.arange(K), n)
    sep = solve_ulpm_separation(y, dim=d)
    value = math.sqrt(n) * (K - 1)
    assert sep.converged and sep.duality_gap <= 1e-9
    assert sep.value == pytest.approx(value, rel=1e-10)
    assert sep.dual_value == pytest.approx(value, rel=1e-9)
    assert 0.5 * ((sep.W**2).sum() + (sep.H**2).sum()) == pytest.approx(value, rel=1e-12)
    # every margin is exactly 1
    np.testing.assert_allclose(sep.margins, 1.0, atol=1e-9)
    np.testing.assert_allclose(_all_margins(sep.W, sep.H, y), 1.0, atol=1e-9)
    # within-class collapse, norms, self-duality w_k = sqrt(n) h̄_k
    M = _class_means(sep.H, y)
    np.testing.assert_allclose(sep.H, M[y], atol=1e-9)
    np.testing.assert_allclose((sep.H**2).sum(1), (K - 1) / (K * math.sqrt(n)), rtol=1e-9)
    np.testing.assert_allclose((sep.W**2).sum(1), math.sqrt(n) * (K - 1) / K, rtol=1e-9)
    np.testing.assert_allclose(sep.W, math.sqrt(n) * M, atol=1e-9)
    # simplex ETF: mean zero, equal norms, cosines -1/(K-1)
    np.testing.assert_allclose(M.sum(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(_cosines(M), -1.0 / (K - 1), atol=1e-9)
    assert sep.rank == K - 1
    assert sep.kkt_residual < 1e-8
    assert sep.multipliers.min() >= 0 and np.all(sep.multipliers[np.arange(len(y)), y] == 0)


def test_separation_worked_example():
    sep = solve_ulpm_separation(Y32)
    assert sep.value == pytest.approx(2.8284271, abs=5e-8)
    assert sep.W.shape == (3, 3) and sep.H.shape == (6, 3)


def test_separation_unbalanced_matches_an_independent_solver():
    """SLSQP on the factorised problem itself (W, H free, margin constraints), best of a few
    starts, reaches the nuclear-norm solver's value and not below it."""
    y = np.array([0, 1, 1, 1, 2, 2, 2, 2])
    K, N, d = 3, y.size, 3
    sep = solve_ulpm_separation(y, dim=d)
    assert sep.converged and sep.duality_gap <= 1e-9 * sep.value
    assert sep.min_margin >= 1 - 1e-9
    assert sep.kkt_residual < 1e-8

    def unpack(x):
        return x[: K * d].reshape(K, d), x[K * d :].reshape(N, d)

    def obj(x):
        return 0.5 * float(x @ x)

    def cons(x):
        W, H = unpack(x)
        return _all_margins(W, H, y) - 1.0

    best = math.inf
    g = np.random.default_rng(0)
    for _ in range(4):
        x0 = g.normal(size=(K + N) * d) * 2.0
        res = minimize(
            obj,
            x0,
            constraints=[{"type": "ineq", "fun": cons}],
            method="SLSQP",
            options={"maxiter": 1000, "ftol": 1e-12},
        )
        if res.success and cons(res.x).min() >= -1e-8:
            best = min(best, res.fun)
    assert best >= sep.value * (1 - 1e-7)  # the certificate: nothing feasible is lower
    assert best == pytest.approx(sep.value, rel=1e-6)


def test_separation_invariant_under_relabelling_and_sample_order():
    y = np.array([0, 0, 1, 2, 2, 2, 3])
    sep = solve_ulpm_separation(y, dim=4)
    perm = np.random.default_rng(1).permutation(y.size)
    relabel = np.array([2, 3, 0, 1])
    sep2 = solve_ulpm_separation(relabel[y[perm]], dim=4)
    assert sep2.value == pytest.approx(sep.value, rel=1e-9)
    # the logits follow the permutations
    np.testing.assert_allclose(sep2.Z[relabel], sep.Z[:, perm], atol=1e-7)


def test_separation_rejects_bad_input():
    with pytest.raises(ValueError, match="dim must be >= K - 1"):
        solve_ulpm_separation(np.repeat(np.arange(4), 2), dim=2)
    with pytest.raises(ValueError, match="K >= 2"):
        solve_ulpm_separation(np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="rho"):
        solve_ulpm_separation(Y32, rho=0.0)
    with pytest.raises(ValueError, match="cover"):
        solve_ulpm_separation(np.array([0, 0, 2, 2]))


def test_separation_reports_non_convergence():
    sep = solve_ulpm_separation(np.array([0, 1, 1, 2, 2, 2, 2]), tol=1e-300, max_iter=20)
    assert not sep.converged and "max_iter" in sep.message
    assert sep.duality_gap >= 0


# --------------------------------------------------------------------------- gradient descent
def test_gd_conserves_norm_gap_to_step_size_error():
    """Same time horizon lr * steps, step halved: the drift of ‖W‖² - ‖H‖² halves (O(lr))."""
    drifts = []
    for lr, steps in [(0.4, 1000), (0.2, 2000), (0.1, 4000)]:
        sol = fit_ulpm(Y32, lr=lr, n_steps=steps, n_records=5, init_scale=0.3, seed=3)
        assert sol.steps[-1] == steps
        drifts.append(abs(sol.norm_gap[-1] - sol.norm_gap[0]))
        # the norms themselves move a lot: conservation is not trivial
        growth = sol.w_sq[-1] - sol.w_sq[0]
        assert growth > 20.0
    assert drifts[-1] < 1e-3 * growth
    for a, b in itertools.pairwise(drifts):
        assert 1.8 < a / b < 2.2


def test_gd_moves_toward_the_separation_optimum():
    K, n = 3, 2
    sol = fit_ulpm(Y32, n_steps=10000, seed=0)
    assert sol.record.finite and sol.record.separated
    assert sol.value == pytest.approx(math.sqrt(n) * (K - 1), rel=1e-10)
    np.testing.assert_allclose(sol.margins, 1.0, atol=1e-9)
    gamma_star = 1.0 / sol.value
    # the normalised margin never exceeds 1/value, and approaches it
    assert np.all(sol.normalized_margin <= gamma_star * (1 + 1e-12))
    late = sol.normalized_margin[sol.steps >= 100]
    assert np.all(np.diff(late) > 0)
    assert late[-1] >= 0.95 * gamma_star
    # logits align with the optimal logits (rotation-free distance)
    assert sol.logit_distance[-1] < 0.1 * sol.logit_distance[0]
    assert sol.logit_distance[-1] < 0.1
    # normalised iterates: ETF cosines and the ratio ||w_k|| / ||h_i|| -> sqrt(n)
    Hn, Wn = sol.H_path[-1], sol.W_path[-1]
    np.testing.assert_allclose(_cosines(_class_means(Hn, Y32)), -1.0 / (K - 1), atol=0.03)
    ratio = np.linalg.norm(Wn, axis=1).mean() / np.linalg.norm(Hn, axis=1).mean()
    assert ratio == pytest.approx(math.sqrt(n), rel=0.05)
    # the normalised iterates have unit norm
    norms = (sol.W_path**2).sum(axis=(1, 2)) + (sol.H_path**2).sum(axis=(1, 2))
    np.testing.assert_allclose(norms, 1.0, rtol=1e-12)


def test_gd_norm_grows_logarithmically():
    """Once separated, the smallest margin grows like log t (so ||θ_t||² ~ 2 log t · value):
    over the last decade of steps it grows by about log 10, the loss falls like 1/t."""
    sol = fit_ulpm(Y32, n_steps=10000, n_records=41, seed=0)
    margin = 0.5 * (sol.w_sq + sol.h_sq) * sol.normalized_margin
    i, j = np.searchsorted(sol.steps, 1000), len(sol.steps) - 1
    assert sol.steps[i] == 1000 and sol.steps[j] == 10000
    assert 0.9 < (margin[j] - margin[i]) / math.log(10) < 1.3
    sq = sol.w_sq + sol.h_sq
    assert 0.9 < (sq[j] - sq[i]) / (2 * sol.value * math.log(10)) < 1.4
    assert 5 < sol.loss[i] / sol.loss[j] < 15


def test_trajectory_collapse_profile_and_records():
    sol = fit_ulpm(Y32, n_steps=3000, n_records=10, seed=1)
    traj = sol.trajectory
    assert len(traj) == len(sol.steps) and traj.names[0] == "t=0"
    np.testing.assert_array_equal(np.asarray(traj.layers[-1]), sol.H_path[-1])
    prof = collapse_profile(traj, metrics=["nc1_tilde", "nc2_etf_distance"])
    nc1 = prof.values("nc1_tilde")
    assert nc1[-1] < 1e-2 * nc1[0]
    sep_prof = collapse_profile(sol.separation.trajectory, metrics=["nc1_tilde", "nc3"])
    assert sep_prof.values("nc1_tilde")[0] < 1e-16
    assert sep_prof.values("nc3")[0] < 1e-16  # w_k ∝ h̄_k
    d = sol.to_dict()
    json.dumps(d)
    assert d["separation"]["value"] == pytest.approx(sol.value)
    assert len(d["steps"]) == len(sol.steps)
    again = fit_ulpm(Y32, n_steps=3000, n_records=10, seed=1)
    np.testing.assert_array_equal(again.H_path, sol.H_path)


def test_gd_reports_divergence():
    sol = fit_ulpm(Y32, lr=5.0, n_steps=300, init_scale=1.0, seed=0)
    assert not sol.record.finite
    assert "non-finite" in sol.record.message
    assert sol.record.n_steps < 300
    assert np.all(np.isfinite(sol.H_path)) and sol.steps[-1] <= sol.record.n_steps
    # a huge first step jumps far past the data: the loss and the gradient underflow to 0
    stuck = fit_ulpm(Y32, lr=50.0, n_steps=500, init_scale=3.0, seed=0)
    assert stuck.record.finite and stuck.record.grad_norm == 0.0
    assert "underflowed" in stuck.record.message


def test_fit_ulpm_rejects_bad_input():
    with pytest.raises(ValueError, match="lr"):
        fit_ulpm(Y32, lr=-1.0)
    with pytest.raises(ValueError, match="n_steps"):
        fit_ulpm(Y32, n_steps=-3)
    with pytest.raises(ValueError, match="n_records"):
        fit_ulpm(Y32, n_records=0)
    with pytest.raises(ValueError, match="init_scale"):
        fit_ulpm(Y32, init_scale=0.0)
    with pytest.raises(ValueError, match="dim"):
        fit_ulpm(Y32, dim=1)
