"""Tests of otcollapse.surrogates (UFM, MUFM): closed forms derived by hand, the reduction lemma,
the λ_OT limits and bad input.

Closed forms (balanced classes, n per class, d >= K, s = q = sqrt(n λ_W λ_H)):
- CE with a regularised bias (Zhu et al. 2021, b* = 0): the optimum is a simplex ETF with
  h_i = c e_{y_i}, w_k = a e_k; the margin x = ac K/(K-1) and balancing λ_W K a² = λ_H N c² give
  the value ln(1 + (K-1)e^{-x}) + K q u with u = ac = (K-1)x/K, minimised at
  x = ln((1 - (K-1)q)/q); ‖w‖² = u sqrt(nλ_H/λ_W), ‖h̄‖² = u sqrt(λ_W/(nλ_H)).
- MSE: min over W H^T = Z of the weight decays is sqrt(λ_W λ_H)‖Z‖_* (balanced factorisation),
  so Z is the singular-value soft-threshold of the (centred, with a free bias) one-hot matrix:
  every singular value sqrt(n) shrinks to sqrt(n) z, z = 1 - K s. Bias-free: W h_i = z e_{y_i},
  value ½(1-z)² + K s z, ‖w‖² = z sqrt(nλ_H/λ_W), ‖h̄‖² = z sqrt(λ_W/(nλ_H)), class means
  orthogonal. Free bias: W h_i = z(e_{y_i} - 1/K), b = 1/K, value ½(1-z)²(K-1)/K + (K-1) s z,
  norms ((K-1)/K) times the bias-free ones, class means a simplex ETF.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings

import numpy as np
import pytest

from otcollapse.collapse import collapse_profile, nc1, nc2, nc3
from otcollapse.constructions import etf_clusters
from otcollapse.exceptions import ConvergenceWarning
from otcollapse.geodesic import transport_profile
from otcollapse.surrogates import fit_mufm, fit_ufm, minimize_lbfgs

K, N_PER, LAM = 4, 5, 5e-4
Y = np.repeat(np.arange(K), N_PER)


def _means(H, y):
    return np.stack([H[y == k].mean(axis=0) for k in range(int(y.max()) + 1)])


def _etf_gram_error(M):
    """‖G/‖G‖ - P_K/sqrt(K-1)‖ for the Gram of the centred rows of M."""
    k = M.shape[0]
    Mc = M - M.mean(axis=0)
    G = Mc @ Mc.T
    P = np.eye(k) - 1.0 / k
    return np.linalg.norm(G / np.linalg.norm(G) - P / np.sqrt(k - 1))


def _ce_closed_form(k, n, lw, lh):
    q = math.sqrt(n * lw * lh)
    x = math.log((1 - (k - 1) * q) / q)
    u = (k - 1) / k * x
    return {
        "w2": u * math.sqrt(n * lh / lw),
        "h2": u * math.sqrt(lw / (n * lh)),
        "value": math.log(1 + (k - 1) * math.exp(-x)) + k * q * u,
    }


def test_ufm_ce_closed_form_regularised_bias():
    cf = _ce_closed_form(K, N_PER, LAM, LAM)
    # the worked example
    assert cf["w2"] == pytest.approx(11.391912, rel=1e-7)
    assert cf["h2"] == pytest.approx(2.2783824, rel=1e-7)
    assert cf["value"] == pytest.approx(0.0261435631, rel=1e-9)
    sol = fit_ufm(Y, dim=5, lambda_w=LAM, lambda_h=LAM, lambda_b=LAM, loss="ce")
    assert sol.converged and sol.grad_norm <= 1e-8
    assert sol.objective == pytest.approx(cf["value"], rel=1e-10)
    assert sum(sol.terms.values()) == pytest.approx(sol.objective, rel=1e-14)
    np.testing.assert_allclose((sol.W**2).sum(1), cf["w2"], rtol=1e-5)
    np.testing.assert_allclose((_means(sol.H, Y) ** 2).sum(1), cf["h2"], rtol=1e-5)
    np.testing.assert_allclose(sol.b, 0.0, atol=1e-5)
    assert nc1(sol.H, Y) < 1e-10
    assert nc2(sol.H, Y)["nc2_etf_distance"] < 1e-5
    assert nc3(sol.H, Y, (sol.W, sol.b)) < 1e-10
    assert _etf_gram_error(_means(sol.H, Y)) < 1e-5


def test_ufm_ce_unregularised_bias_same_optimum():
    cf = _ce_closed_form(3, 3, 1e-3, 2e-3)
    y = np.repeat(np.arange(3), 3)
    sol = fit_ufm(y, dim=4, lambda_w=1e-3, lambda_h=2e-3, lambda_b=0.0, loss="ce", seed=1)
    assert sol.converged
    assert sol.objective == pytest.approx(cf["value"], rel=1e-10)
    np.testing.assert_allclose((sol.W**2).sum(1), cf["w2"], rtol=1e-5)
    np.testing.assert_allclose(sol.b - sol.b.mean(), 0.0, atol=1e-5)
    assert _etf_gram_error(_means(sol.H, y)) < 1e-5


def test_ufm_ce_heavy_decay_collapses_to_zero():
    # q = sqrt(n λ_W λ_H) = 0.5 >= 1/K: the optimum is H = 0, W = 0 with value ln K
    y = np.repeat(np.arange(3), 4)
    lam = 0.25
    sol = fit_ufm(y, dim=3, lambda_w=lam, lambda_h=lam, lambda_b=lam, loss="ce")
    assert sol.objective == pytest.approx(math.log(3), rel=1e-8)
    assert np.abs(sol.H).max() < 1e-4 and np.abs(sol.W).max() < 1e-4


def test_ufm_mse_bias_free_orthogonal_frame():
    s = math.sqrt(N_PER * LAM * LAM)
    z = 1 - K * s
    sol = fit_ufm(Y, dim=6, lambda_w=LAM, lambda_h=LAM, loss="mse", bias=False)
    assert sol.converged and sol.b is None
    assert sol.objective == pytest.approx(0.5 * (z - 1) ** 2 + K * s * z, rel=1e-10)
    M = _means(sol.H, Y)
    h2 = z * math.sqrt(LAM / (N_PER * LAM))
    np.testing.assert_allclose(M @ M.T, h2 * np.eye(K), atol=1e-6)
    np.testing.assert_allclose((sol.W**2).sum(1), z * math.sqrt(N_PER), rtol=1e-5)
    np.testing.assert_allclose(sol.H @ sol.W.T, z * np.eye(K)[Y], atol=1e-6)
    assert nc1(sol.H, Y) < 1e-10


def test_ufm_mse_free_bias_simplex_etf():
    s = math.sqrt(N_PER * LAM * LAM)
    z = 1 - K * s
    sol = fit_ufm(Y, dim=5, lambda_w=LAM, lambda_h=LAM, lambda_b=0.0, loss="mse", bias=True)
    assert sol.converged
    value = 0.5 * (1 - z) ** 2 * (K - 1) / K + (K - 1) * s * z
    assert sol.objective == pytest.approx(value, rel=1e-10)
    frac = (K - 1) / K
    np.testing.assert_allclose(sol.b, 1.0 / K, atol=1e-6)
    np.testing.assert_allclose((sol.W**2).sum(1), frac * z * math.sqrt(N_PER), rtol=1e-5)
    M = _means(sol.H, Y)
    np.testing.assert_allclose((M**2).sum(1), frac * z / math.sqrt(N_PER), rtol=1e-5)
    np.testing.assert_allclose(M.mean(axis=0), 0.0, atol=1e-6)
    assert _etf_gram_error(M) < 1e-5
    assert nc3(sol.H, Y, (sol.W, sol.b)) < 1e-10


def test_ufm_trajectory_and_json():
    sol = fit_ufm(Y, dim=5, lambda_w=LAM, lambda_h=LAM, lambda_b=LAM)
    traj = sol.trajectory
    assert len(traj) == 1 and traj.n_classes == K
    np.testing.assert_array_equal(traj.labels, Y)
    d = json.loads(json.dumps(sol.to_dict()))
    assert d["converged"] is True and d["params"]["loss"] == "ce"
    # same seed, same numbers
    again = fit_ufm(Y, dim=5, lambda_w=LAM, lambda_h=LAM, lambda_b=LAM)
    np.testing.assert_array_equal(sol.H, again.H)


def test_solver_state_is_read_from_the_record():
    sol = fit_ufm(Y, dim=5, lambda_w=LAM, lambda_h=LAM, lambda_b=LAM)
    rec = sol.record
    assert (sol.n_iter, sol.converged, sol.grad_norm) == (rec.n_iter, rec.converged, rec.grad_norm)
    assert sol.rel_grad_norm == rec.rel_grad_norm and sol.objective == sum(sol.terms.values())
    d = sol.to_dict()
    assert (d["n_iter"], d["converged"], d["grad_norm"]) == (rec.n_iter, True, rec.grad_norm)
    assert d["objective"] == sol.objective and d["record"] == rec.to_dict()
    assert not {"H", "labels", "trajectory"} & set(d)  # the features are left out
    np.testing.assert_array_equal(d["W"], sol.W)


# ------------------------------------------------------------------------------------ MUFM
X3, Y3 = etf_clusters(3, 4, r=2.0, sigma=0.7)
X3 = np.asarray(X3, dtype=np.float64)
KW = dict(lambda_w=5e-3, lambda_h=5e-3, lambda_b=5e-3)


@pytest.mark.parametrize("L", [1, 3])
def test_mufm_reduced_and_full_agree(L):
    red = fit_mufm(X3, Y3, n_layers=L, lambda_ot=0.01, solver="reduced", **KW)
    full = fit_mufm(X3, Y3, n_layers=L, lambda_ot=0.01, solver="full", **KW)
    assert red.converged and full.converged
    assert full.objective == pytest.approx(red.objective, rel=1e-8)
    np.testing.assert_allclose(full.H, red.H, atol=1e-5)
    # the full solver's intermediate layers are equally spaced between X and H_L
    for l in range(L + 1):
        np.testing.assert_allclose(full.layers[l], X3 + l / L * (full.H - X3), atol=1e-5)
    # and the transport term equals (λ_OT/2)‖H_L - X‖² whatever L is
    assert full.terms["transport"] == pytest.approx(
        0.5 * 0.01 * ((full.H - X3) ** 2).sum(), rel=1e-6
    )
    assert len(red.trajectory) == L + 1


def test_mufm_zero_transport_is_the_ufm():
    n = int(np.sum(Y3 == 0))
    cf = _ce_closed_form(3, n, 5e-3, 5e-3)
    sol = fit_mufm(X3, Y3, n_layers=2, lambda_ot=0.0, **KW)
    assert sol.converged
    assert sol.objective == pytest.approx(cf["value"], rel=1e-10)
    assert _etf_gram_error(_means(sol.H, Y3)) < 1e-5


def test_mufm_transport_limits_and_monotone_collapse():
    grid = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    sols = [fit_mufm(X3, Y3, n_layers=2, lambda_ot=lo, **KW) for lo in grid]
    assert all(s.converged for s in sols)
    gaps = [np.linalg.norm(s.H - X3) for s in sols]
    assert all(a > b for a, b in itertools.pairwise(gaps))
    assert gaps[-1] < 1e-3 * np.linalg.norm(X3)
    # H_L - X = -(λ_H H_L + ∇_H loss)/λ_OT: the gap decays like 1/λ_OT
    assert gaps[-1] * grid[-1] == pytest.approx(gaps[-2] * grid[-2], rel=0.05)
    data = nc1(X3, Y3)
    nc = [nc1(s.H, Y3) for s in sols]
    assert all(0 < v < data for v in nc)
    assert all(a < b for a, b in itertools.pairwise(nc))
    assert nc[-1] == pytest.approx(data, rel=1e-2)


def test_mufm_trajectory_feeds_the_analyses():
    sol = fit_mufm(X3, Y3, n_layers=3, lambda_ot=0.05, **KW)
    traj = sol.trajectory
    assert len(traj) == 4
    np.testing.assert_allclose(traj[0].numpy(), X3)
    prof = collapse_profile(traj)
    assert prof.values("nc1")[-1] < prof.values("nc1")[0]
    # the fitted layers are equally spaced on the segment X -> H_L (reduction lemma): every step's
    # paired cost is ‖H_L - X‖² / (N L²), and together they make up the transport term
    tp = transport_profile(traj)
    assert len(tp) == 3 and tp.converged
    n, L = len(Y3), 3
    step = ((sol.H - X3) ** 2).sum() / (n * L**2)
    np.testing.assert_allclose(tp.paired, step, rtol=1e-12)
    assert sol.terms["transport"] == pytest.approx(0.5 * 0.05 * L * n * tp.paired.sum(), rel=1e-12)
    # here the sample-to-sample coupling is optimal (H_L moves each point towards its class),
    # so the path is a constant-speed W2 geodesic: W2 per step = sqrt(paired), efficiency 1
    np.testing.assert_allclose(tp.distances, math.sqrt(step), rtol=1e-6)
    np.testing.assert_allclose(tp.efficiency, 1.0, rtol=1e-6)
    assert json.loads(json.dumps(sol.to_dict()))["params"]["n_layers"] == 3


def test_mufm_embedding():
    sol = fit_mufm(X3, Y3, n_layers=1, lambda_ot=0.1, dim=6, embed="pad", **KW)
    assert sol.H.shape == (len(Y3), 6)
    np.testing.assert_allclose(sol.X[:, :4], X3)
    np.testing.assert_allclose(sol.X[:, 4:], 0.0)
    rnd = fit_mufm(X3, Y3, n_layers=1, lambda_ot=0.1, dim=6, embed="random", **KW)
    # an isometry keeps the pairwise distances and hence the optimal value
    assert rnd.objective == pytest.approx(sol.objective, rel=1e-8)
    pca = fit_mufm(X3, Y3, n_layers=1, lambda_ot=0.1, dim=3, embed="pca", **KW)
    assert pca.X.shape == (len(Y3), 3)
    with pytest.raises(ValueError, match="embed='pad' needs dim"):
        fit_mufm(X3, Y3, n_layers=1, lambda_ot=0.1, dim=2, **KW)


def test_bad_input():
    with pytest.raises(ValueError, match="lambda_ot"):
        fit_mufm(X3, Y3, n_layers=1, lambda_ot=-1.0, **KW)
    with pytest.raises(ValueError, match="lambda_w"):
        fit_ufm(Y, dim=4, lambda_w=-1e-3, lambda_h=1e-3)
    with pytest.raises(ValueError, match="K >= 2"):
        fit_ufm(np.zeros(5, dtype=int), dim=4, lambda_w=1e-3, lambda_h=1e-3)
    with pytest.raises(ValueError, match="n_layers"):
        fit_mufm(X3, Y3, n_layers=0, lambda_ot=1.0, **KW)
    bad = X3.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="1 NaN"):
        fit_mufm(bad, Y3, n_layers=1, lambda_ot=1.0, **KW)
    with pytest.raises(ValueError, match="length"):
        fit_mufm(X3, Y3[:-1], n_layers=1, lambda_ot=1.0, **KW)
    with pytest.raises(ValueError, match="coupling"):
        fit_mufm(X3, Y3, n_layers=1, lambda_ot=1.0, coupling="sinkhorn", **KW)


def test_bad_solver_parameters_and_devices_are_refused_by_name():
    ufm = dict(dim=4, lambda_w=1e-3, lambda_h=1e-3)
    for call, kind, match in [
        (lambda: fit_ufm(Y, **ufm, tol=-1.0), ValueError, "tol"),
        (lambda: fit_ufm(Y, **ufm, tol=0.0), ValueError, "tol"),
        (lambda: fit_ufm(Y, **ufm, tol="1e-9"), TypeError, "tol"),
        (lambda: fit_ufm(Y, **ufm, tol=math.nan), ValueError, "tol"),
        (lambda: fit_ufm(Y, **ufm, max_iter=-1), ValueError, "max_iter"),
        (lambda: fit_ufm(Y, **ufm, max_iter=2.5), TypeError, "max_iter"),
        (lambda: fit_ufm(Y, dim=4.5, lambda_w=1e-3, lambda_h=1e-3), TypeError, "dim"),
        (lambda: fit_ufm(Y, dim=4, lambda_w="1e-3", lambda_h=1e-3), TypeError, "lambda_w"),
        (lambda: fit_ufm(Y, **ufm, device="gpu"), ValueError, "unknown device 'gpu'"),
        (lambda: fit_ufm(Y, **ufm, device="cuda:99"), ValueError, "device 'cuda:99'"),
        (lambda: fit_mufm(X3, Y3, n_layers=1, lambda_ot=1.0, tol=-1.0, **KW), ValueError, "tol"),
        (
            lambda: fit_mufm(X3, Y3, n_layers=1, lambda_ot=1.0, max_iter=-1, **KW),
            ValueError,
            "max_iter",
        ),
        (
            lambda: fit_mufm(X3 + 1j, Y3, n_layers=1, lambda_ot=1.0, **KW),
            ValueError,
            "complex values in X",
        ),
        (
            lambda: fit_mufm((X3 + 1j).tolist(), Y3, n_layers=1, lambda_ot=1.0, **KW),
            ValueError,
            "complex values in X",
        ),
    ]:
        with pytest.raises(kind, match=match):
            call()


def test_non_convergence_is_reported():
    with pytest.warns(ConvergenceWarning, match="converged=False"):
        sol = fit_ufm(Y, dim=5, lambda_w=LAM, lambda_h=LAM, max_iter=2)
    assert not sol.converged and sol.n_iter == 2 and sol.rel_grad_norm > 1e-9
    with pytest.warns(ConvergenceWarning):
        msol = fit_mufm(X3, Y3, n_layers=2, lambda_ot=0.1, max_iter=1, **KW)
    assert not msol.converged
    for solver in ("reduced", "full"):
        with pytest.warns(ConvergenceWarning, match="converged=False"):
            wsol = fit_mufm(
                X3,
                Y3,
                n_layers=2,
                lambda_ot=0.1,
                coupling="wasserstein",
                solver=solver,
                max_iter=2,
                **KW,
            )
        assert not wsol.converged and wsol.rel_grad_norm > 1e-9


def test_core_solves_a_quadratic():
    import torch

    A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    c = torch.tensor([1.0, -1.0], dtype=torch.float64)
    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = minimize_lbfgs(lambda: 0.5 * x @ A @ x - c @ x, [x], tol=1e-12)
    assert rec.converged
    np.testing.assert_allclose(
        x.detach().numpy(), np.linalg.solve(A.numpy(), c.numpy()), atol=1e-11
    )
    with pytest.raises(ValueError, match="float64"):
        minimize_lbfgs(lambda: x.sum(), [torch.zeros(2, requires_grad=True)])


def test_mufm_wasserstein_coupling():
    import ot

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 4)
    X = rng.standard_normal((12, 4))
    lo, L = 0.03, 2
    paired = fit_mufm(X, y, n_layers=L, lambda_ot=lo, **KW)
    w2 = fit_mufm(X, y, n_layers=L, lambda_ot=lo, coupling="wasserstein", **KW)
    assert paired.converged and w2.converged
    n = len(y)
    # the transport term is (λ_OT/2) N W2^2(μ_X, μ_{H_L}): check against POT in float64
    emd = ot.emd2(np.full(n, 1 / n), np.full(n, 1 / n), ot.dist(X, w2.H))
    assert w2.terms["transport"] == pytest.approx(0.5 * lo * n * emd, rel=1e-10)
    # it never exceeds the paired cost at the same H_L, so the W2 optimum is no worse
    for H in (w2.H, paired.H):
        w2_cost = n * ot.emd2(np.full(n, 1 / n), np.full(n, 1 / n), ot.dist(X, H))
        assert w2_cost <= ((H - X) ** 2).sum() + 1e-12
    assert w2.objective <= paired.objective + 1e-12
    # here the optimal plan crosses classes, and the W2 optimum is strictly better
    sigma = w2.assignment
    assert w2.mismatch_fraction == pytest.approx(np.mean(y[sigma] != y))
    assert 0 < w2.mismatch_fraction < 1
    assert w2.objective < paired.objective - 1e-3
    # McCann interpolation indexed by the input sample
    for l in range(L + 1):
        np.testing.assert_allclose(w2.layers[l], X + l / L * (w2.H[sigma] - X), atol=1e-12)
    assert w2.trajectory.metadata["matched_labels"] == y[sigma].tolist()
    assert w2.path_excess is None and w2.record.converged


def _w2sq(A, B):
    import ot

    n = len(A)
    return float(ot.emd2(np.full(n, 1 / n), np.full(n, 1 / n), ot.dist(A, B)))


@pytest.mark.parametrize("L", [2, 3])
def test_mufm_wasserstein_full_and_reduced_agree_as_measures(L):
    # the full solver optimises H_1..H_L as free point clouds with one optimal assignment per
    # step; the reduced one optimises H_L and fills in the McCann interpolation. Rows of the two
    # need not correspond, so they are compared as measures.
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 4)
    X = rng.standard_normal((12, 4))
    lo, n = 0.03, len(y)
    red = fit_mufm(X, y, n_layers=L, lambda_ot=lo, coupling="wasserstein", **KW)
    full = fit_mufm(X, y, n_layers=L, lambda_ot=lo, coupling="wasserstein", solver="full", **KW)
    assert red.converged and full.converged
    assert full.record.method.startswith("alternating") and full.assignment_rounds >= 1
    assert full.objective == pytest.approx(red.objective, rel=1e-8)
    for key in ("loss", "reg_w", "reg_h", "transport"):
        assert full.terms[key] == pytest.approx(red.terms[key], rel=1e-5, abs=1e-12)
    for l in range(L + 1):
        assert _w2sq(full.layers[l], red.layers[l]) < 1e-10
    # the fitted path is a constant-speed geodesic (reduction lemma): its transport term equals
    # (λ_OT/2) N W2²(X, H_L), each step is W2(X, H_L)/L, and the layers (reordered along the
    # composed step assignments) are the McCann interpolation row by row
    assert abs(full.path_excess) < 1e-9
    total = _w2sq(X, full.H)
    assert full.terms["transport"] == pytest.approx(0.5 * lo * n * total, rel=1e-7)
    for l in range(1, L + 1):
        step = _w2sq(full.layers[l - 1], full.layers[l])
        assert step == pytest.approx(total / L**2, rel=1e-5)
        np.testing.assert_allclose(full.layers[l], X + l / L * (full.layers[-1] - X), atol=1e-5)
    np.testing.assert_allclose(full.layers[-1], full.H[full.assignment])
    assert ((full.H[full.assignment] - X) ** 2).sum() == pytest.approx(n * total, rel=1e-7)
    # the W2 optimum is below the paired one, which the full solver passes on its way
    assert full.objective < fit_mufm(X, y, n_layers=L, lambda_ot=lo, **KW).objective - 1e-2
    d = json.loads(json.dumps(full.to_dict()))
    assert d["assignment_rounds"] == full.assignment_rounds and d["params"]["solver"] == "full"


# 1-D data: two clusters, each holding two samples of each class
X1 = np.array([2.0, 2.3, 1.8, 2.6, -2.1, -1.7, -2.4, -2.0])[:, None]
Y1 = np.array([0, 1, 0, 1, 0, 1, 0, 1])


def test_mufm_wasserstein_large_lambda_pins_the_measure_not_the_rows():
    # λ_OT → ∞ with the W2 coupling: μ_{H_L} → μ_X, but H_L is a rearrangement of X chosen by
    # the loss (here: each class takes one cluster), not X row by row. Every rearrangement is a
    # local minimiser at large λ_OT, so the branch is followed from a small λ_OT by warm starts.
    kw = dict(n_layers=2, coupling="wasserstein", **KW)
    sols, prev = [], None
    grid = [1e-2, 1e2, 1e4]
    for lo in grid:
        prev = fit_mufm(X1, Y1, lambda_ot=lo, init=prev, **kw)
        sols.append(prev)
    assert all(s.converged for s in sols)
    w2 = [math.sqrt(_w2sq(s.H, X1)) for s in sols]
    assert w2[-1] < 1e-5
    # W2(μ_{H_L}, μ_X) = O(1/λ_OT)
    assert grid[-1] * w2[-1] == pytest.approx(grid[-2] * w2[-2], rel=1e-2)
    last = sols[-1]
    sigma = last.assignment
    # not pinned row by row: H_L is X rearranged, half of the samples moved across clusters
    assert np.linalg.norm(last.H - X1) > 5.0
    np.testing.assert_allclose(last.H[sigma], X1, atol=1e-5)
    assert last.mismatch_fraction == pytest.approx(0.5)
    # the loss-minimising rearrangement in 1-D: each class takes one cluster (a threshold)
    values = np.sort(X1[:, 0])
    class0 = np.sort(last.H[Y1 == 0, 0])
    assert min(np.abs(class0 - values[:4]).max(), np.abs(class0 - values[4:]).max()) < 1e-5
    # more concentrated than the data, not collapsed, and NC1 grows with λ_OT toward the NC1
    # of the rearranged data
    nc = [nc1(s.H, Y1) for s in sols]
    assert all(0 < v < nc1(X1, Y1) / 100 for v in nc)
    assert nc[0] < nc[1] <= nc[2] * (1 + 1e-6)
    assert nc[-1] == pytest.approx(nc1(X1, Y1[sigma]), rel=1e-4)
    # a cold start at the same λ_OT stays at the given arrangement (a worse local minimiser),
    # as does the paired coupling, which pins H_L to X row by row
    cold = fit_mufm(X1, Y1, lambda_ot=grid[-1], **kw)
    paired = fit_mufm(X1, Y1, n_layers=2, lambda_ot=grid[-1], **KW)
    for s in (cold, paired):
        assert np.linalg.norm(s.H - X1) < 1e-4
        assert s.objective > last.objective + 0.5


def test_mufm_wasserstein_zero_transport_is_the_ufm():
    n = int(np.sum(Y3 == 0))
    cf = _ce_closed_form(3, n, 5e-3, 5e-3)
    for solver in ("reduced", "full"):
        sol = fit_mufm(
            X3, Y3, n_layers=2, lambda_ot=0.0, coupling="wasserstein", solver=solver, **KW
        )
        assert sol.converged
        assert sol.objective == pytest.approx(cf["value"], rel=1e-10)
        assert sol.terms["transport"] == 0.0


def test_mufm_warm_start():
    sol = fit_mufm(X3, Y3, n_layers=2, lambda_ot=0.05, **KW)
    again = fit_mufm(X3, Y3, n_layers=2, lambda_ot=0.05, init=sol, **KW)
    assert again.converged and again.objective == pytest.approx(sol.objective, rel=1e-12)
    assert np.abs(again.H - sol.H).max() < 1e-6 and again.params["warm_start"] is True
    with pytest.raises(ValueError, match="n_layers = 3"):
        fit_mufm(X3, Y3, n_layers=3, lambda_ot=0.05, solver="full", init=sol, **KW)
    with pytest.raises(ValueError, match="same data"):
        fit_mufm(X3, Y3, n_layers=2, lambda_ot=0.05, dim=6, init=sol, **KW)
    with pytest.raises(ValueError, match="MUFMSolution"):
        fit_mufm(X3, Y3, n_layers=2, lambda_ot=0.05, init=sol.H, **KW)


def test_lbfgs_history_is_capped_by_memory(monkeypatch):
    import torch

    from otcollapse.surrogates import core

    monkeypatch.setattr(core, "HISTORY_BYTES", 16 * 1000 * 7)  # room for 7 pairs of 1000 numbers
    x = torch.zeros(1000, dtype=torch.float64, requires_grad=True)
    target = torch.arange(1000, dtype=torch.float64)
    rec = core.minimize_lbfgs(lambda: ((x - target) ** 2).sum(), [x], history_size=50)
    assert rec.history_size == 7 and rec.converged
    assert torch.allclose(x.detach(), target)
