"""Transport engine: agreement with POT, closed forms, W2 axioms, entropic limits, bad input."""

from __future__ import annotations

import json

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import brute_force_w2sq, gaussian_w2sq, w2sq_1d_uniform, weighted_moments

from otcollapse import wasserstein
from otcollapse.transport import ConvergenceWarning, geometry, transport_methods


def residual_pair(n, d, seed=0, scale=0.3):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, d))
    W = g.normal(size=(d, d)) / np.sqrt(d)
    return x, x + scale * np.tanh(x @ W)


def pot_emd2(x, y, a=None, b=None):
    a = np.full(len(x), 1 / len(x)) if a is None else a
    b = np.full(len(y), 1 / len(y)) if b is None else b
    val, log = ot.emd2(a, b, ot.dist(x, y), numItermax=10**9, log=True)
    assert log["result_code"] == 1, log["warning"]
    return float(val)


# ----------------------------------------------------------------------------- exact methods
@pytest.mark.parametrize("kind", ["residual", "unrelated"])
@pytest.mark.parametrize("method", ["exact", "assignment", "auto"])
def test_exact_methods_agree_with_pot(kind, method, as_input):
    if kind == "residual":
        x, y = residual_pair(400, 16, seed=1)
    else:
        g = np.random.default_rng(2)
        x, y = g.normal(size=(400, 16)), g.normal(size=(400, 16)) + 0.2
    ref = pot_emd2(x, y)
    res = wasserstein(as_input(x), as_input(y), method=method)
    assert res.quantity == "W2^2"
    assert res.converged
    assert res.cost == pytest.approx(ref, rel=1e-9)
    assert res.distance == pytest.approx(np.sqrt(ref), rel=1e-9)


def test_exact_weighted_distance_to_itself_is_zero():
    g = np.random.default_rng(12)
    x = g.normal(size=(50, 4))
    a = g.random(50)
    a /= a.sum()
    assert wasserstein(x, x, a=a, b=a, method="exact").distance == 0.0


def test_exact_with_weights_and_unequal_sizes_agrees_with_pot():
    g = np.random.default_rng(3)
    x, y = g.normal(size=(150, 5)), g.normal(size=(90, 5)) * 2
    a, b = g.random(150), g.random(90)
    a, b = a / a.sum(), b / b.sum()
    res = wasserstein(x, y, a=a, b=b)
    assert res.method == "exact" and "network simplex" in res.params["auto"]
    assert res.cost == pytest.approx(pot_emd2(x, y, a, b), rel=1e-9)
    assert res.gap_kind == "duality gap" and res.gap <= 1e-9 * res.cost
    assert res.params["dual_violation"] <= 1e-9


def test_assignment_index_form_and_plan():
    x, y = residual_pair(50, 4)
    perm = np.random.default_rng(0).permutation(50)
    res = wasserstein(x, y[perm], method="assignment", return_plan=True)
    # the residual map is close to the identity: the assignment must undo the shuffle
    assert np.array_equal(perm[res.assignment], np.arange(50))
    assert res.plan.shape == (50, 50) and np.allclose(res.plan.sum(1), 1 / 50)
    assert res.gap is None and "no dual" in res.params["certificate"]


def test_assignment_refuses_weights_and_unequal_sizes():
    x = np.zeros((5, 2))
    with pytest.raises(ValueError, match="method='exact'"):
        wasserstein(x, np.ones((6, 2)), method="assignment")
    with pytest.raises(ValueError, match="uniform"):
        wasserstein(x, np.ones((5, 2)), a=[0.5, 0.5, 0, 0, 0], method="assignment")


@pytest.mark.parametrize("method", ["exact", "assignment"])
def test_one_dimensional_closed_form(method):
    g = np.random.default_rng(4)
    x, y = g.normal(size=200), g.exponential(size=200)
    res = wasserstein(x[:, None], y[:, None], method=method)
    assert res.cost == pytest.approx(w2sq_1d_uniform(x, y), rel=1e-12)


@pytest.mark.parametrize("method", ["exact", "assignment"])
def test_brute_force_on_tiny_problems(method):
    g = np.random.default_rng(5)
    for _ in range(5):
        x, y = g.normal(size=(6, 3)), g.normal(size=(6, 3))
        assert wasserstein(x, y, method=method).cost == pytest.approx(
            brute_force_w2sq(x, y), rel=1e-12
        )


@pytest.mark.parametrize("method", ["exact", "assignment", "gaussian"])
def test_translation(method):
    g = np.random.default_rng(6)
    x = g.normal(size=(100, 7))
    c = g.normal(size=7)
    assert wasserstein(x, x + c, method=method).cost == pytest.approx(c @ c, rel=1e-10)


# hypothesis: W2 axioms on small random clouds
clouds = st.integers(min_value=0, max_value=2**31 - 1).map(
    lambda s: (
        np.random.default_rng(s).normal(size=(12, 3)) * np.random.default_rng(s + 1).uniform(0.5, 3)
    )
)


@settings(max_examples=20, deadline=None)
@given(clouds, clouds, clouds)
def test_w2_axioms(x, y, z):
    w = lambda p, q: wasserstein(p, q, method="exact").distance  # noqa: E731
    assert w(x, y) == pytest.approx(w(y, x), rel=1e-10, abs=1e-12)
    assert w(x, z) <= w(x, y) + w(y, z) + 1e-10
    assert w(x, x) == pytest.approx(0, abs=1e-10)
    perm = np.random.default_rng(0).permutation(len(x))
    assert w(x[perm], y) == pytest.approx(w(x, y), rel=1e-10)
    assert wasserstein(x, y, method="assignment").cost == pytest.approx(w(x, y) ** 2, rel=1e-9)


# ----------------------------------------------------------------------------- gaussian, sliced, gromov
def test_gaussian_matches_bures_closed_form_with_weights():
    g = np.random.default_rng(7)
    x = g.normal(size=(300, 4)) @ g.normal(size=(4, 4))
    y = g.normal(size=(200, 4)) @ g.normal(size=(4, 4)) + 1.5
    b = g.random(200)
    b /= b.sum()
    res = wasserstein(x, y, b=b, method="gaussian")
    m0, S0 = weighted_moments(x)
    m1, S1 = weighted_moments(y, b)
    assert res.quantity == "W2^2 (Bures)"
    assert res.cost == pytest.approx(gaussian_w2sq(m0, S0, m1, S1), rel=1e-9)
    # Gelbrich: the Gaussian value is a lower bound on the W2^2 of the measures
    assert res.cost <= wasserstein(x, y, b=b, method="exact").cost + 1e-9


def test_sliced_translation_is_exact_and_bounded_by_w2():
    g = np.random.default_rng(8)
    x = g.normal(size=(80, 6))
    c = g.normal(size=6)
    res = wasserstein(x, x + c, method="sliced", n_projections=18, seed=3)
    assert res.quantity == "SW2^2" and res.params["n_projections"] == 18
    assert res.cost == pytest.approx(c @ c / 6, rel=1e-10)
    y = g.normal(size=(80, 6)) * 2
    w2 = wasserstein(x, y).cost
    for seed in range(3):
        assert wasserstein(x, y, method="sliced", seed=seed).cost <= w2 / 6 + 1e-12
    a = g.random(80)
    a /= a.sum()  # weighted path (POT's quantile solver) obeys the same bound
    assert wasserstein(x, y, a=a, method="sliced").cost <= wasserstein(x, y, a=a).cost / 6 + 1e-12


def test_sliced_is_seeded():
    g = np.random.default_rng(9)
    x, y = g.normal(size=(50, 5)), g.normal(size=(50, 5))
    r1, r2 = (wasserstein(x, y, method="sliced", seed=4) for _ in range(2))
    assert r1.cost == r2.cost
    assert wasserstein(x, y, method="sliced", seed=5).cost != r1.cost


def test_gromov_accepts_different_dimensions_and_is_zero_for_isometries():
    g = np.random.default_rng(10)
    x = g.normal(size=(10, 3))
    q, _ = np.linalg.qr(g.normal(size=(5, 5)))
    y = np.hstack([x, np.zeros((10, 2))]) @ q.T + 1.0  # isometric copy in R^5
    res = wasserstein(x, y, method="gromov")
    assert res.quantity == "GW" and res.method == "gromov"
    assert res.cost == pytest.approx(0, abs=1e-8)
    far = wasserstein(x, 3 * y, method="gromov")
    assert far.cost > 1.0


# ----------------------------------------------------------------------------- entropic
def _small_problem():
    g = np.random.default_rng(11)
    x = g.normal(size=(40, 2))
    y = g.normal(size=(40, 2)) * 0.7 + [2.0, 0.0]
    return x, y


def test_sinkhorn_plan_cost_matches_pot_sinkhorn():
    # POT's entropy -sum pi log pi and our KL(pi | a x b) differ by a constant on Pi(a, b): same plan
    x, y = _small_problem()
    eps = 0.5
    res = wasserstein(x, y, method="sinkhorn", eps=eps, tol=1e-12, max_iter=20000)
    a = np.full(40, 1 / 40)
    ref = ot.sinkhorn2(
        a, a, ot.dist(x, y), eps, method="sinkhorn_log", numItermax=100000, stopThr=1e-13
    )
    assert res.converged and res.quantity == "<plan, C>"
    assert res.cost == pytest.approx(float(ref), rel=1e-9)
    # OT_eps = <pi, C> + eps KL(pi | a x b) >= <pi, C>
    assert res.params["ot_eps"] >= res.cost


def test_sinkhorn_tends_to_exact_as_eps_shrinks():
    x, y = _small_problem()
    exact = wasserstein(x, y, method="exact").cost
    errs, errs_deb = [], []
    for eps in [1.0, 0.3, 0.1]:
        r = wasserstein(x, y, method="sinkhorn", eps=eps, tol=1e-8, max_iter=50000)
        rd = wasserstein(x, y, method="sinkhorn", eps=eps, debias=True, tol=1e-8, max_iter=50000)
        assert r.converged and rd.converged
        assert r.cost >= exact - 1e-7  # the entropic plan is feasible
        errs.append(abs(r.cost - exact) / exact)
        errs_deb.append(abs(rd.cost - exact) / exact)
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.015
    assert errs_deb[0] > errs_deb[2] and errs_deb[2] < 0.01


def test_sinkhorn_chunked_equals_dense(monkeypatch):
    x, y = residual_pair(300, 8, seed=3)
    dense = wasserstein(x, y, method="sinkhorn", eps=4.0, debias=True, tol=1e-10)
    monkeypatch.setattr(geometry, "BLOCK_BYTES", 300 * 8 * 37)  # 37 rows per block
    chunked = wasserstein(x, y, method="sinkhorn", eps=4.0, debias=True, tol=1e-10)
    assert dense.converged and chunked.converged
    assert dense.params["mode"] == "dense" and chunked.params["mode"] == "chunked"
    assert chunked.params["block_rows"] == 37
    assert chunked.cost == pytest.approx(dense.cost, rel=1e-10)
    assert chunked.params["plan_cost"] == pytest.approx(dense.params["plan_cost"], rel=1e-10)


def test_sinkhorn_reports_non_convergence():
    x, y = _small_problem()
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        res = wasserstein(x, y, method="sinkhorn", eps=1e-3, max_iter=2, tol=1e-12)
    assert not res.converged and res.n_iter == 2 and res.gap > 1e-12
    assert "NOT CONVERGED" in repr(res)


def test_sinkhorn_float32_and_torch_input():
    x, y = residual_pair(200, 8)
    r64 = wasserstein(x, y, method="sinkhorn", eps=4.0)
    r32 = wasserstein(
        torch.as_tensor(x, dtype=torch.float32),
        torch.as_tensor(y, dtype=torch.float32),
        method="sinkhorn",
        eps=4.0,
    )
    assert r32.params["dtype"] == "float32" and r32.params["tol"] == 1e-3
    assert r64.converged and r32.converged
    assert r32.cost == pytest.approx(r64.cost, rel=1e-4)


def test_sinkhorn_divergence_of_a_measure_with_itself_is_zero():
    x, _ = _small_problem()
    res = wasserstein(x, x, method="sinkhorn", eps=0.3, debias=True, tol=1e-10)
    assert res.quantity == "S_eps"
    assert res.cost == pytest.approx(0, abs=1e-8)


@pytest.mark.parametrize("debias", [False, True])
def test_geomloss_backend_agrees_after_unit_conversion(debias):
    x, y = _small_problem()
    eps = 0.5
    ours = wasserstein(x, y, method="sinkhorn", eps=eps, debias=debias, tol=1e-11, max_iter=20000)
    with pytest.warns(ConvergenceWarning):  # its plan misses the marginals by ~6e-3
        gl = wasserstein(
            x, y, method="sinkhorn", eps=eps, debias=debias, backend="geomloss", scaling=0.99
        )
    assert gl.params["geomloss_blur"] == pytest.approx(np.sqrt(eps / 2))
    # dual values (OT_eps, S_eps) agree closely; GeomLoss ends its fixed annealing schedule with
    # one extrapolation step, so its plan misses the marginals by ~1e-2 (reported in gap) and
    # <pi, C> computed from its potentials agrees only to that order.
    assert gl.params["ot_eps"] == pytest.approx(ours.params["ot_eps"], rel=1e-4)
    if debias:
        assert gl.cost == pytest.approx(ours.cost, rel=1e-4)
    else:
        assert gl.cost == pytest.approx(ours.cost, rel=1e-2)
    assert gl.converged == (gl.gap <= 1e-5)
    # GeomLoss's own debias=False value is OT_eps (KL term included), in half units
    from geomloss import SamplesLoss

    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    val = SamplesLoss("sinkhorn", p=2, blur=np.sqrt(eps / 2), scaling=0.99, debias=False)(xt, yt)
    assert 2 * float(val) == pytest.approx(ours.params["ot_eps"], rel=1e-4)


# ----------------------------------------------------------------------------- front door
def test_auto_reports_its_choice():
    x, y = residual_pair(60, 3)
    assert wasserstein(x, y).method == "assignment"
    res = wasserstein(x, y, max_dense_bytes=1000, eps=2.0)
    assert res.method == "sinkhorn" and "chunked Sinkhorn" in res.params["auto"]
    assert res.params["mode"] in ("dense", "chunked")


def test_memory_budget_counts_the_matrices_each_solver_holds():
    x, y = residual_pair(60, 3)  # one float64 60 x 60 matrix: 28.1 KiB
    budget = 50_000  # fits the assignment (1.5 matrices), not the network simplex (5)
    assert wasserstein(x, y, max_dense_bytes=budget).method == "assignment"
    with pytest.raises(ValueError, match=r"needs 140.6 KiB .* budget of 48.8 KiB"):
        wasserstein(x, y, method="exact", max_dense_bytes=budget)
    a = np.full(60, 1 / 60)
    a[:2] = [1 / 120, 1 / 40]
    res = wasserstein(x, y, a=a, max_dense_bytes=budget, eps=2.0)
    assert res.method == "sinkhorn" and "140.6 KiB" in res.params["auto"]


def test_exact_refuses_oversized_problems_naming_alternatives():
    x, y = residual_pair(60, 3)
    for method in ("exact", "assignment"):
        with pytest.raises(ValueError, match=r"sinkhorn.*sliced"):
            wasserstein(x, y, method=method, max_dense_bytes=1000)


def test_result_to_dict_is_json_safe():
    x, y = residual_pair(30, 3)
    for method in ("exact", "assignment", "sinkhorn", "sliced", "gaussian"):
        opts = {"eps": 2.0} if method == "sinkhorn" else {}
        d = wasserstein(x, y, method=method, **opts).to_dict()
        json.dumps(d, allow_nan=False)
        assert d["method"] == method and d["distance"] == pytest.approx(np.sqrt(max(d["cost"], 0)))


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        wasserstein(np.zeros((2, 2)), np.ones((2, 2)), method="emd")
    for name in transport_methods():
        assert name in str(err.value)


def test_unknown_option_is_refused():
    with pytest.raises(ValueError, match="takes no option"):
        wasserstein(np.zeros((2, 2)), np.ones((2, 2)), method="exact", eps=1.0)


@pytest.mark.parametrize(
    ("x", "y", "kw", "match"),
    [
        (np.array([[0.0, np.nan], [np.inf, 1.0]]), np.zeros((2, 2)), {}, "1 NaN and 1 infinite"),
        (np.zeros((0, 2)), np.zeros((2, 2)), {}, "empty"),
        (np.zeros(3), np.zeros((3, 1)), {}, "2-D"),
        (np.zeros((3, 2)), np.zeros((3, 3)), {}, "gromov"),
        (np.zeros((3, 2)), np.zeros((3, 2)), {"a": [0.5, 0.6, -0.1]}, "non-negative"),
        (np.zeros((3, 2)), np.zeros((3, 2)), {"a": [0.5, 0.6, 0.1]}, "sums to"),
        (np.zeros((3, 2)), np.zeros((3, 2)), {"b": [0.5, 0.5]}, "length 2"),
    ],
)
def test_bad_input(x, y, kw, match):
    with pytest.raises(ValueError, match=match):
        wasserstein(x, y, **kw)


def test_geomloss_backend_option_is_validated():
    x, y = residual_pair(20, 3)
    with pytest.raises(ValueError, match="only with backend='geomloss'"):
        wasserstein(x, y, method="sinkhorn", geomloss_backend="tensorized")
    import importlib.util

    if importlib.util.find_spec("pykeops") is None:
        with pytest.raises(ValueError, match="needs pykeops"):
            wasserstein(x, y, method="sinkhorn", backend="geomloss", geomloss_backend="online")


def test_exact_certifies_tiny_costs_of_collapsed_features():
    # features within 1e-6 of one point: costs ~1e-12, below POT's absolute pivot tolerance scale
    g = np.random.default_rng(13)
    x = 5.0 + 1e-6 * g.normal(size=(300, 8))
    lab = g.integers(0, 3, 300)
    means = np.stack([x[lab == k].mean(0) for k in range(3)])
    b = np.bincount(lab) / 300
    res = wasserstein(x, means, b=b, method="exact")
    assert res.converged
    # sending every feature to its own class mean is a coupling: W2^2 <= Tr Sigma_W
    assert res.cost <= np.mean(np.sum((x - means[lab]) ** 2, 1)) + 1e-18
