"""Tests of otcollapse.surrogates.perturbation: the perturbation model of Tirer, Huang &
Niles-Weed ("Perturbation Analysis of Neural Collapse", ICML 2023), solved as a one-step MSE MUFM.

Oracles written here, independently of the module:
- the paper's objective (Eq. 2) in its own normalisation, columns = samples, minimised directly;
- the orthogonal collapse of the bias-free MSE UFM (Tirer & Bruna 2022, Thm 3.1) checked against
  the UFM solver and the closed form value ½(1-z)² + K s z of tests/test_mufm.py;
- the central-path velocity as -N times the autograd gradient of the paper's objective at
  W = W*(H) (envelope theorem);
- the Jacobian F against central finite differences of the solver;
- Theorem 3.1 (monotone traces along the flow) and Theorem 4.2 (block singular values near
  collapse, with their O(β^-2) error).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from otcollapse.collapse import nc1_tilde
from otcollapse.exceptions import ConvergenceWarning
from otcollapse.surrogates import fit_ufm, minimize_lbfgs
from otcollapse.surrogates.central_path import central_path_flow, central_path_velocity
from otcollapse.surrogates.perturbation import (
    collapsed_minimizer,
    fit_perturbed,
    mufm_parameters,
    near_collapse_singular_values,
    perturbation_jacobian,
)

K3, N3, D3 = 3, 4, 5
Y3 = np.repeat(np.arange(K3), N3)
H03 = np.random.default_rng(1).standard_normal((K3 * N3, D3)) + 1.5 * np.eye(K3, D3)[Y3]
LW, LH = 0.3, 0.2


def _paper_objective(Wt, Ht, H0t, Y, *, beta, lw, lh, K, n):
    """Eq. 2 of the paper: H is d x Kn (columns = samples), W is K x d."""
    return (
        ((Wt @ Ht - Y) ** 2).sum() / (2 * K * n)
        + lw / (2 * K) * (Wt**2).sum()
        + lh / (2 * K * n) * (Ht**2).sum()
        + beta / (2 * K * n) * ((Ht - H0t) ** 2).sum()
    )


def test_mapping_solves_the_paper_form():
    beta = 5.0
    K, n = K3, N3
    assert mufm_parameters(beta=beta, lambda_w=LW, lambda_h=LH, n_samples=K * n, n_classes=K) == {
        "lambda_ot": beta / (K * n),
        "lambda_w": LW / K,
        "lambda_h": LH / (K * n),
    }
    Ht = torch.tensor(H03.T.copy(), requires_grad=True)
    Wt = torch.tensor(
        np.random.default_rng(5).standard_normal((K, D3)) / np.sqrt(D3), requires_grad=True
    )
    Y, H0t = torch.tensor(np.eye(K)[Y3].T), torch.tensor(H03.T)
    kw = dict(beta=beta, lw=LW, lh=LH, K=K, n=n)
    rec = minimize_lbfgs(lambda: _paper_objective(Wt, Ht, H0t, Y, **kw), [Ht, Wt], tol=1e-11)
    sol = fit_perturbed(H03, Y3, beta=beta, lambda_w=LW, lambda_h=LH, tol=1e-11)
    assert rec.converged and sol.converged
    with torch.no_grad():
        direct = float(_paper_objective(Wt, Ht, H0t, Y, **kw))
    assert sol.objective == pytest.approx(direct, rel=1e-12)
    np.testing.assert_allclose(sol.H, Ht.detach().numpy().T, atol=1e-8)
    np.testing.assert_allclose(sol.W, Wt.detach().numpy(), atol=1e-8)
    # each term in the paper's normalisation, and they are the MUFM's terms
    Wn, Hn = sol.W, sol.H.T
    assert sol.terms["reg_w"] == pytest.approx(LW / (2 * K) * (Wn**2).sum(), rel=1e-12)
    assert sol.terms["reg_h"] == pytest.approx(LH / (2 * K * n) * (Hn**2).sum(), rel=1e-12)
    prox = beta / (2 * K * n) * ((sol.H - H03) ** 2).sum()
    assert sol.terms["proximity"] == pytest.approx(prox, rel=1e-12)
    assert sum(sol.terms.values()) == pytest.approx(sol.objective, rel=1e-14)
    assert sol.mufm.objective == pytest.approx(sol.objective, rel=1e-14)
    assert sol.mufm.params["loss"] == "mse" and sol.mufm.params["n_layers"] == 1
    assert sol.mufm.b is None


def test_collapsed_input_is_a_fixed_point():
    # Corollary 2.2: H0 a minimiser of the β = 0 problem ⇒ it is the minimiser for every β
    K, n, d = 3, 4, 5
    y = np.repeat(np.arange(K), n)
    lw, lh = 0.5, 0.4
    H0, W0 = collapsed_minimizer(y, dim=d, lambda_w=lw, lambda_h=lh, seed=3)
    # it is a β = 0 minimiser: the UFM solver (DESIGN normalisation) reaches the same value,
    # and it has the closed form of the bias-free MSE UFM
    ufm = fit_ufm(y, dim=d, lambda_w=lw / K, lambda_h=lh / (K * n), loss="mse", bias=False)
    value = float(
        _paper_objective(
            torch.tensor(W0),
            torch.tensor(H0.T),
            torch.tensor(H0.T),
            torch.tensor(np.eye(K)[y].T),
            beta=0.0,
            lw=lw,
            lh=lh,
            K=K,
            n=n,
        )
    )
    s = math.sqrt(lw * lh) / K
    z = 1 - K * s
    assert ufm.objective == pytest.approx(value, rel=1e-10)
    assert value == pytest.approx(0.5 * (1 - z) ** 2 + K * s * z, rel=1e-12)
    M = H0[::n]
    rho = (1 - math.sqrt(lw * lh)) * math.sqrt(lw / lh)
    np.testing.assert_allclose(M @ M.T, rho * np.eye(K), atol=1e-12)
    for beta in (0.5, 30.0):
        sol = fit_perturbed(H0, y, beta=beta, lambda_w=lw, lambda_h=lh, seed=1, tol=1e-11)
        assert sol.converged
        np.testing.assert_allclose(sol.H, H0, atol=1e-8)
        np.testing.assert_allclose(sol.W, W0, atol=1e-8)
        assert sol.terms["proximity"] < 1e-14


def test_central_path_velocity_is_the_scaled_gradient():
    # -N ∇L(H) with L(H) = f(W*(H), H; β = 0): by the envelope theorem, the gradient of the
    # paper's objective in H with W held at W*(H)
    K, n = K3, N3
    H = torch.tensor(H03.T.copy(), requires_grad=True)
    Hn = H03
    Ws = np.eye(K)[Y3].T @ Hn @ np.linalg.inv(Hn.T @ Hn + n * LW * np.eye(D3))
    Y = torch.tensor(np.eye(K)[Y3].T)
    f = _paper_objective(torch.tensor(Ws), H, H.detach(), Y, beta=0.0, lw=LW, lh=LH, K=K, n=n)
    (g,) = torch.autograd.grad(f, H)
    v = central_path_velocity(H03, Y3, lambda_w=LW, lambda_h=LH)
    np.testing.assert_allclose(v, -K * n * g.numpy().T, atol=1e-12)
    # W*(H) is the minimiser over W: the W-gradient vanishes there
    Wt = torch.tensor(Ws, requires_grad=True)
    f = _paper_objective(Wt, H.detach(), H.detach(), Y, beta=0.0, lw=LW, lh=LH, K=K, n=n)
    (gw,) = torch.autograd.grad(f, Wt)
    assert float(gw.abs().max()) < 1e-13


def test_central_path_flow_theorem_3_1():
    times = np.linspace(0.0, 20.0, 41)
    flow = central_path_flow(H03, Y3, lambda_w=LW, lambda_h=LH, times=times)
    assert flow.success and len(flow.trajectory) == times.size
    np.testing.assert_allclose(flow.layers[0], H03)
    assert flow.nc1_tilde[0] == pytest.approx(nc1_tilde(H03, Y3), rel=1e-12)
    # Tr Σ_W / Tr Σ_B strictly decreases, toward 0
    assert np.all(np.diff(flow.nc1_tilde) < 0)
    assert flow.nc1_tilde[-1] < 1e-2 * flow.nc1_tilde[0]
    # e^{2 λ_H t} Tr Σ_W decreases, e^{2 λ_H t} Tr Σ_B strictly increases
    sw, sb = flow.scaled_tr_sigma_w, flow.scaled_tr_sigma_b
    assert np.all(np.diff(sw) <= 1e-12 * sw[0]) and sw[-1] < 0.8 * sw[0]
    assert np.all(np.diff(sb) > 0)
    np.testing.assert_allclose(sw, np.exp(2 * LH * times) * flow.tr_sigma_w)
    # with λ_H = 0 the separation is plain: Tr Σ_W falls while Tr Σ_B rises
    flat = central_path_flow(H03, Y3, lambda_w=LW, lambda_h=0.0, times=times[:11])
    assert np.all(np.diff(flat.tr_sigma_w) < 0) and np.all(np.diff(flat.tr_sigma_b) > 0)
    d = json.loads(json.dumps(flow.to_dict()))
    assert d["success"] is True and len(d["nc1_tilde"]) == times.size
    rows = flow.table()  # one row per time
    assert [r["time"] for r in rows] == times.tolist()
    np.testing.assert_allclose([r["nc1_tilde"] for r in rows], flow.tr_sigma_w / flow.tr_sigma_b)


def test_minimiser_is_an_implicit_euler_step_of_the_flow():
    # β (H_{1/β} - H0) = -N ∇L(H_{1/β}) exactly (stationarity), so H_{1/β} is one backward-Euler
    # step of the flow: it differs from H_t at t = 1/β by O(β^-2), and NC1 decreases
    errs = []
    for beta in (10.0, 100.0):
        sol = fit_perturbed(H03, Y3, beta=beta, lambda_w=LW, lambda_h=LH, tol=1e-11)
        assert sol.converged
        v = central_path_velocity(sol.H, Y3, lambda_w=LW, lambda_h=LH)
        np.testing.assert_allclose(beta * (sol.H - H03), v, atol=1e-9)
        flow = central_path_flow(H03, Y3, lambda_w=LW, lambda_h=LH, times=[0.0, 1.0 / beta])
        errs.append(np.abs(sol.H - flow.layers[-1]).max())
        h0, h = sol.nc1_tilde
        assert h < h0
    assert errs[0] / errs[1] == pytest.approx(100.0, rel=0.1)


def test_near_collapse_blocks_theorem_4_2():
    K, n, d = 4, 10, 10
    y = np.repeat(np.arange(K), n)
    lw, lh = math.sqrt(2.0), 0.5
    # the worked example
    pred = near_collapse_singular_values(beta=100, lambda_w=lw, lambda_h=lh)
    assert pred["intra_sigma_min"] == pytest.approx(0.99405, abs=5e-6)
    assert pred["inter_sigma_max"] == pytest.approx(0.00159, abs=5e-6)
    H0, W0 = collapsed_minimizer(y, dim=d, lambda_w=lw, lambda_h=lh, seed=0)
    devs = []
    for beta in (100.0, 200.0):
        sol = fit_perturbed(H0, y, beta=beta, lambda_w=lw, lambda_h=lh, tol=1e-11)
        assert sol.converged
        np.testing.assert_allclose(sol.H, H0, atol=1e-8)
        np.testing.assert_allclose(sol.W, W0, atol=1e-8)
        jac = perturbation_jacobian(sol)
        assert jac.F.shape == (K * n * d, K * n * d) and jac.min_hessian_eigenvalue > 0
        sv = jac.block_singular_values()
        pred = near_collapse_singular_values(beta=beta, lambda_w=lw, lambda_h=lh)
        intra, inter = sv["intra"], sv["inter"]
        assert intra.shape == (K, d * n)
        np.testing.assert_allclose(intra[:, 0], 1.0, atol=1e-10)
        off = ~np.isnan(inter[..., 0])
        assert off.sum() == K * (K - 1)
        assert inter[..., 1][off].max() < 1e-10 * inter[..., 0][off].min()  # rank one
        dev = (
            intra[:, -1] - pred["intra_sigma_min"],
            inter[..., 0][off] - pred["inter_sigma_max"],
        )
        assert np.abs(dev[0]).max() < 1 / beta**2 and np.abs(dev[1]).max() < 1 / beta**2
        devs.append([np.abs(x).max() for x in dev])
        # the full intra-class block is far from its rank-one inter-class neighbours
        assert inter[..., 0][off].max() < 1e-2 * intra[:, -1].min()
    # the error of the closed forms is O(β^-2): doubling β divides it by 4
    for a, b in zip(devs[0], devs[1], strict=True):
        assert a / b == pytest.approx(4.0, rel=0.1)
    assert json.loads(json.dumps(jac.to_dict()))["intra_sigma_max"] == pytest.approx(1.0)


def test_jacobian_matches_finite_differences():
    K, n, d = 3, 3, 4
    y = np.repeat(np.arange(K), n)
    rng = np.random.default_rng(7)
    H0 = rng.standard_normal((K * n, d)) + 2.0 * np.eye(K, d)[y]
    kw = dict(beta=20.0, lambda_w=0.2, lambda_h=0.1, tol=1e-12)
    sol = fit_perturbed(H0, y, **kw)
    jac = perturbation_jacobian(sol)
    V = rng.standard_normal(H0.shape)
    eps = 1e-4
    plus = fit_perturbed(H0 + eps * V, y, **kw).H
    minus = fit_perturbed(H0 - eps * V, y, **kw).H
    fd = (plus - minus) / (2 * eps)
    lin = (jac.F @ V.reshape(-1)).reshape(H0.shape)
    np.testing.assert_allclose(lin, fd, rtol=1e-5, atol=1e-7)
    # the block view is the matrix restricted to the classes' rows and columns
    rows = np.flatnonzero(y == 1)
    np.testing.assert_allclose(
        jac.block(1, 2), jac.F.reshape(K * n, d, K * n, d)[rows][:, :, y == 2].reshape(n * d, -1)
    )


def test_results_and_bad_input():
    sol = fit_perturbed(H03, Y3, beta=2.0, lambda_w=LW, lambda_h=LH)
    assert len(sol.trajectory) == 2 and list(sol.trajectory.names) == ["H0", "H"]
    np.testing.assert_allclose(sol.trajectory[0].numpy(), H03)
    np.testing.assert_allclose(sol.trajectory[1].numpy(), sol.H)
    d = json.loads(json.dumps(sol.to_dict()))
    assert d["params"]["beta"] == 2.0 and d["params"]["mufm"]["lambda_ot"] == 2.0 / len(Y3)
    with pytest.raises(ValueError, match="beta"):
        fit_perturbed(H03, Y3, beta=-1.0, lambda_w=LW, lambda_h=LH)
    bad = H03.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="1 NaN"):
        fit_perturbed(bad, Y3, beta=1.0, lambda_w=LW, lambda_h=LH)
    with pytest.raises(ValueError, match="length"):
        fit_perturbed(H03, Y3[:-1], beta=1.0, lambda_w=LW, lambda_h=LH)
    with pytest.raises(ValueError, match="balanced"):
        collapsed_minimizer(np.array([0, 0, 1]), dim=3, lambda_w=0.1, lambda_h=0.1)
    with pytest.raises(ValueError, match="W = H = 0"):
        collapsed_minimizer(Y3, dim=4, lambda_w=2.0, lambda_h=1.0)
    with pytest.raises(ValueError, match="dim >= K"):
        collapsed_minimizer(Y3, dim=2, lambda_w=0.1, lambda_h=0.1)
    with pytest.raises(ValueError, match="lambda_w must be > 0"):
        central_path_flow(H03, Y3, lambda_w=0.0, lambda_h=0.1, times=[0, 1])
    with pytest.raises(ValueError, match="non-decreasing"):
        central_path_flow(H03, Y3, lambda_w=0.1, lambda_h=0.1, times=[1, 0])
    with pytest.raises(ValueError, match="beta = 0"):
        perturbation_jacobian(fit_perturbed(H03, Y3, beta=0.0, lambda_w=LW, lambda_h=LH))
    with pytest.warns(ConvergenceWarning, match="fit_perturbed"):
        short = fit_perturbed(H03, Y3, beta=1.0, lambda_w=LW, lambda_h=LH, max_iter=1)
    assert not short.converged
