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
from scipy.optimize import linear_sum_assignment

from otcollapse import wasserstein
from otcollapse.exceptions import ConvergenceWarning
from otcollapse.transport import geometry, transport_methods


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
    assert res.gap_kind == "certified gap" and res.gap <= 1e-9 * res.cost
    assert res.params["dual_violation"] <= 1e-9


def test_assignment_index_form_and_plan():
    x, y = residual_pair(50, 4)
    perm = np.random.default_rng(0).permutation(50)
    res = wasserstein(x, y[perm], method="assignment", return_plan=True)
    # the residual map is close to the identity: the assignment must undo the shuffle
    assert np.array_equal(perm[res.assignment], np.arange(50))
    assert res.plan.shape == (50, 50) and np.allclose(res.plan.sum(1), 1 / 50)
    assert res.gap_kind == "certified gap" and res.gap <= 1e-9 * res.cost and res.converged


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
    # unrelated clouds over the budget: the sparse path cannot certify, the dense one does not
    # fit, so the streamed auction (no n x n matrix) gives the exact value, and auto says why
    y = np.random.default_rng(1).normal(size=x.shape)
    res = wasserstein(x, y, max_dense_bytes=1000, eps=2.0)
    assert res.method == "assignment" and res.params["path"] == "auction" and res.converged
    assert "streamed auction" in res.params["auto"] and res.params["fallback"]
    assert res.cost == pytest.approx(pot_emd2(x, y), rel=1e-9)
    assert res.params["unused_options"] == ["eps"]


@pytest.mark.parametrize("n", [60, 700])
def test_auto_stays_exact_beyond_the_dense_budget_between_nearby_layers(n):
    """Uniform measures of equal size over max_dense_bytes: the sparse certified assignment
    needs O(n d) memory, so auto still gives the exact W2^2 (and says how it chose)."""
    x, y = residual_pair(n, 8, seed=2)
    budget = n * n  # an eighth of one float64 n x n matrix
    res = wasserstein(x, y, max_dense_bytes=budget)
    assert res.method == "assignment" and res.params["path"] == "sparse" and res.converged
    assert "sparse certified path" in res.params["auto"]
    assert res.cost == pytest.approx(pot_emd2(x, y), rel=1e-12)
    # options: each solver auto may run takes its own; one neither names is refused
    assert wasserstein(x, y, max_dense_bytes=budget, eps=2.0, rank=8).params["rank"] == 8
    with pytest.raises(ValueError, match=r"takes no option\(s\) \['epsilon'\]"):
        wasserstein(x, y, max_dense_bytes=budget, epsilon=2.0)
    with pytest.raises(ValueError, match="over the budget"):  # asked for explicitly: refused
        wasserstein(x, y, method="assignment", candidates="dense", max_dense_bytes=budget)
    with pytest.raises(ValueError, match=r"return_plan=True needs the dense .* res.assignment"):
        wasserstein(x, y, method="assignment", return_plan=True, max_dense_bytes=budget)


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
    with pytest.raises(ValueError, match=r"sinkhorn.*sliced"):
        wasserstein(x, y, method="exact", max_dense_bytes=1000)
    # the assignment needs no dense matrix: beyond the budget, unrelated clouds go to the
    # streamed auction; only the dense path asked for by name is refused
    y = np.random.default_rng(3).normal(size=x.shape)
    res = wasserstein(x, y, method="assignment", max_dense_bytes=1000)
    assert res.params["path"] == "auction" and res.converged
    with pytest.raises(ValueError, match=r"over the budget.*sinkhorn.*sliced"):
        wasserstein(x, y, method="assignment", candidates="dense", max_dense_bytes=1000)


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
        (np.zeros((3, 2)), np.zeros((3, 2)), {"a": [0.5, 0.6, 0.1]}, "sum to 1.2, not 1"),
        (np.zeros((3, 2)), np.zeros((3, 2)), {"b": [0.5, 0.5]}, "length 2"),
    ],
)
def test_bad_input(x, y, kw, match):
    with pytest.raises(ValueError, match=match):
        wasserstein(x, y, **kw)


def test_geomloss_backend_option_is_validated():
    x, y = residual_pair(20, 3)
    with pytest.raises(ValueError, match="'geomloss_backend' is now 'backend'"):
        wasserstein(x, y, method="sinkhorn", geomloss_backend="tensorized")
    with pytest.raises(ValueError, match="backend must be one of"):
        wasserstein(x, y, method="sinkhorn", backend="online")
    import importlib.util

    if importlib.util.find_spec("pykeops") is None:
        with pytest.raises(ValueError, match="needs pykeops"):
            wasserstein(x, y, method="sinkhorn", backend="geomloss-online")


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


# ----------------------------------------------------------------------------- sparse assignment
def dense_lsa(x, y):
    """Oracle: W2^2 from scipy's dense assignment on the difference-form float64 cost."""
    from scipy.optimize import linear_sum_assignment

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(C)
    return float(C[rows, cols].mean()), C


def assert_certificate(res, C):
    """Dual feasibility on every pair, equality on the matched ones, no duality gap."""
    u, v = res.potentials
    n = len(u)
    tol = 1e-12 * C.max()
    assert np.max(u[:, None] + v[None, :] - C) <= tol
    sigma = res.assignment
    assert np.sort(sigma).tolist() == list(range(n))  # a permutation
    assert np.allclose(u + v[sigma], C[np.arange(n), sigma], rtol=0, atol=tol)
    assert abs(np.mean(u) + np.mean(v) - res.cost) <= tol
    assert res.gap <= tol and res.gap_kind == "certified gap"
    assert res.params["dual_violation"] <= tol


def shuffled_clusters(n_clusters=50, size=6, seed=0):
    """Clusters far apart in two high-variance coordinates; inside a cluster the optimal match
    is a shuffle decided by six low-variance coordinates. A rank-2 projection sees only the
    clusters, so its nearest neighbours are arbitrary members of the right cluster."""
    g = np.random.default_rng(seed)
    group = np.repeat(np.arange(n_clusters), size)
    centres = 30 * g.normal(size=(n_clusters, 2))
    x = np.hstack([centres[group], g.normal(size=(len(group), 6))])
    perm = np.concatenate([g.permutation(np.flatnonzero(group == k)) for k in range(n_clusters)])
    return x, x[perm] + 0.01 * g.normal(size=x.shape)


@pytest.mark.parametrize("kind", ["residual", "shuffled", "unrelated"])
def test_sparse_assignment_agrees_with_dense_and_pot(kind, as_input):
    x, y = residual_pair(600, 32, seed=4)
    if kind == "shuffled":
        y = y[np.random.default_rng(5).permutation(600)]
    elif kind == "unrelated":
        y = np.random.default_rng(6).normal(size=(600, 32))
    ref, _ = dense_lsa(x, y)
    res = wasserstein(as_input(x), as_input(y))
    assert res.method == "assignment" and res.converged
    assert res.cost == pytest.approx(ref, rel=1e-12)
    assert res.cost == pytest.approx(pot_emd2(x, y), rel=1e-12)
    forced_dense = wasserstein(x, y, candidates="dense")
    assert forced_dense.params["path"] == "dense" and forced_dense.gap <= 1e-9 * ref
    assert forced_dense.cost == pytest.approx(ref, rel=1e-12)
    p = res.params
    if kind == "residual":  # the identity's potentials certify the identity in one scan
        assert p["path"] == "sparse" and p["rounds"] == 1 and p["k"] == 0
        assert p["candidates_per_row"] == 1.0 and p["flagged_fraction"] < 1e-3
        assert np.array_equal(res.assignment, np.arange(600))
    elif kind == "shuffled":  # nearest neighbours recover the shuffle
        assert p["path"] == "sparse" and p["k"] == 8
        assert any("nearest neighbours" in note for note in p["notes"])
    else:  # unrelated clouds: the bound cannot pay, the dense path runs and says why
        assert p["path"] == "dense" and "nearest" in p["fallback"]
        assert p["cost_dtype"] == "float64"  # the fallback stays exact
        assert "auction" in p["warm_start"]  # scipy starts from auction prices


@pytest.mark.parametrize("k", [0, 5])
def test_sparse_certificate_holds_on_every_pair(k):
    # a larger step: the identity is no longer optimal, violators must join the candidates
    x, y = residual_pair(200, 8, seed=7, scale=1.5)
    ref, C = dense_lsa(x, y)
    res = wasserstein(
        x, y, method="assignment", candidates=k, return_potentials=True, return_plan=True
    )
    assert res.params["path"] == "sparse" and res.converged
    assert res.cost == pytest.approx(ref, rel=1e-12)
    assert_certificate(res, C)
    assert np.allclose(res.plan.sum(0), 1 / 200) and np.allclose(res.plan.sum(1), 1 / 200)
    assert np.sum(res.plan * C) == pytest.approx(ref, rel=1e-12)
    assert not np.array_equal(res.assignment, np.arange(200))
    if k == 0:
        assert res.params["rounds"] > 1 and res.params["candidates_per_row"] > 1
    json.dumps(res.to_dict(), allow_nan=False)


def test_sparse_adversarial_projection_needs_more_rounds():
    x, y = shuffled_clusters()
    ref, C = dense_lsa(x, y)
    res = wasserstein(x, y, method="assignment", candidates=3, rank=2, return_potentials=True)
    p = res.params
    assert p["path"] == "sparse" and p["rank"] == 2 and p["k"] == 3
    assert p["rounds"] > 1  # the projected neighbours missed partners the scan had to add
    assert res.cost == pytest.approx(ref, rel=1e-12)
    assert_certificate(res, C)
    # capped rounds: the dense path takes over and says so, with the same value
    capped = wasserstein(x, y, method="assignment", candidates=3, rank=2, max_iter=1)
    assert capped.params["path"] == "dense" and "scans did not certify" in capped.params["fallback"]
    assert capped.cost == pytest.approx(ref, rel=1e-12)


def test_sparse_ties_duplicates_and_tiny_sizes():
    g = np.random.default_rng(8)
    xd = np.repeat(g.normal(size=(30, 5)), 10, axis=0)  # every point ten times
    res = wasserstein(xd, xd.copy(), method="assignment", candidates=0, return_potentials=True)
    assert res.params["path"] == "sparse" and res.cost == 0.0
    assert_certificate(res, dense_lsa(xd, xd)[1])
    shuffled = xd[g.permutation(300)]
    for k in (0, 4):  # the same measure, shuffled: zero, whatever path certifies it
        assert wasserstein(xd, shuffled, candidates=k).cost == 0.0
    grid = g.integers(0, 3, size=(200, 6)).astype(float)  # integer costs: many tied optima
    step = grid + g.integers(0, 2, size=grid.shape)
    res = wasserstein(grid, step, method="assignment", candidates=0, return_potentials=True)
    ref, C = dense_lsa(grid, step)
    assert res.params["path"] == "sparse" and res.cost == pytest.approx(ref, rel=1e-12)
    assert_certificate(res, C)
    for n in (1, 2, 3, 5):
        x, y = g.normal(size=(n, 3)), g.normal(size=(n, 3))
        res = wasserstein(x, y, candidates=0, return_potentials=True)
        assert res.cost == pytest.approx(brute_force_w2sq(x, y), rel=1e-12)


def test_sparse_float32_input_is_solved_exactly():
    # values on a 2^-10 grid with n a power of two: the geometry's float32 centring is exact,
    # so float32 and float64 inputs describe the same points and must give the same W2^2
    g = np.random.default_rng(9)
    x = np.round(g.normal(size=(512, 24)) * 256) / 1024
    y = x + np.round(np.tanh(x @ g.normal(size=(24, 24)) / 5) * 64) / 1024
    ref, C = dense_lsa(x, y)
    for data in (
        (x, y),
        (torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)),
    ):
        res = wasserstein(*data, candidates=0, return_potentials=True)
        assert res.params["path"] == "sparse"
        assert res.cost == pytest.approx(ref, rel=1e-12)
        assert_certificate(res, C)


def test_sparse_scan_in_blocks_matches_one_block(monkeypatch):
    from otcollapse.transport.assignment import bound

    x, y = residual_pair(300, 12, seed=10, scale=1.0)
    one = wasserstein(x, y, candidates=2, return_potentials=True)
    monkeypatch.setattr(bound, "SCAN_BLOCK_BYTES", 17 * 300 * 4)  # 17 rows per block
    monkeypatch.setattr(bound, "PAIR_CHUNK_BYTES", 8 * 12 * 7)  # 7 pairs per chunk
    many = wasserstein(x, y, candidates=2, return_potentials=True)
    assert np.array_equal(one.assignment, many.assignment)
    assert many.cost == one.cost and many.params["rounds"] == one.params["rounds"]
    assert np.array_equal(one.potentials[0], many.potentials[0])


def test_sparse_path_needs_no_dense_matrix():
    x, y = residual_pair(600, 16, seed=11)
    budget = 1000  # far below one 600 x 600 matrix
    res = wasserstein(x, y, method="assignment", max_dense_bytes=budget)
    assert res.params["path"] == "sparse" and res.cost == pytest.approx(pot_emd2(x, y), rel=1e-12)
    # unrelated clouds: the sparse path falls back, and beyond the budget to the streamed
    # auction, which needs no dense matrix either
    g = np.random.default_rng(12)
    x, y = g.normal(size=(600, 16)), g.normal(size=(600, 16))
    res = wasserstein(x, y, method="assignment", max_dense_bytes=budget)
    assert res.params["path"] == "auction" and res.params["fallback"]
    assert res.cost == pytest.approx(pot_emd2(x, y), rel=1e-9) and res.converged


def test_dense_path_certificate_on_request():
    x, y = residual_pair(150, 6, seed=13, scale=2.0)
    res = wasserstein(x, y, candidates="dense", return_potentials=True)
    ref, C = dense_lsa(x, y)
    assert res.params["path"] == "dense" and res.converged
    assert res.cost == pytest.approx(ref, rel=1e-12)
    u, v = res.potentials
    assert np.max(u[:, None] + v[None, :] - C) <= 1e-9 * C.max()
    assert res.gap <= 1e-9 * C.max() and res.params["dual_violation"] <= 1e-9 * C.max()


def test_dense_path_certificate_after_the_auction_warm_start():
    """Above WARM_START_MIN_N scipy solves c_ij + p_j; the potentials returned are those of
    the unpriced costs c (v_j shifted back by p_j) and certify the value."""
    g = np.random.default_rng(21)
    x, y = g.normal(size=(600, 12)), g.normal(size=(600, 12))
    res = wasserstein(x, y, candidates="dense", return_potentials=True)
    ref, C = dense_lsa(x, y)
    assert "auction" in res.params["warm_start"] and res.converged
    assert res.cost == pytest.approx(ref, rel=1e-12)
    u, v = res.potentials
    assert np.max(u[:, None] + v[None, :] - C) <= 1e-9 * C.max()
    assert abs(u.mean() + v.mean() - ref) <= 1e-9 * C.max()
    # W2^2(s x, s y) = s^2 W2^2(x, y), also where float32 bids would overflow (s^2 = 1e36)
    for scale in (1e-6, 1e18):
        scaled = wasserstein(scale * x, scale * y, candidates="dense")
        assert scaled.cost == pytest.approx(scale**2 * ref, rel=1e-12)


@pytest.mark.parametrize("kind", ["unrelated", "residual", "constant"])
def test_auction_prices_are_nearly_optimal_duals(kind):
    """Weak duality holds for any prices, D(p) = sum_i min_j (c_ij + p_j) - sum_j p_j <= OPT; an
    auction run to a full assignment at eps leaves D(p) >= OPT - n eps (eps-complementary
    slackness). Zero prices are far from that on unrelated clouds."""
    from otcollapse.transport.assignment.auction import auction_prices

    g = np.random.default_rng(22)
    n = 300
    x, y = residual_pair(n, 16, seed=3)
    if kind == "unrelated":
        y = g.normal(size=(n, 16))
    elif kind == "constant":
        x, y = x[:1].repeat(n, 0), y[:1].repeat(n, 0)
    C = ot.dist(x, y)
    r, c = linear_sum_assignment(C)
    opt = C[r, c].sum()
    eps_factors = (0.05, 0.01, 0.002)
    p, rounds = auction_prices(torch.as_tensor(C), eps_factors=eps_factors, stop_fraction=1.0)
    p = p.numpy()

    def dual(prices):
        return (C + prices[None, :]).min(1).sum() - prices.sum()

    eps = eps_factors[max(0, len(rounds) - 1)] * C.std()  # of the last phase that ran
    assert dual(p) <= opt + 1e-6 * abs(opt) + 1e-9
    with pytest.raises(ValueError, match="square"):
        auction_prices(torch.zeros(3, 4))
    if kind == "constant":  # nothing to bid for: no rounds, and the prices are exact duals
        assert rounds == [] and dual(p) == pytest.approx(opt)
        # equal only up to float32 rounding (GEMM tiles may differ in the last bits): no bids,
        # which could not move float32 prices (they ran 3 x 500 rounds before)
        noisy = C * (1 + 2.4e-7 * g.choice([-1.0, 0.0, 1.0], size=C.shape))  # float32 ulps
        assert auction_prices(torch.as_tensor(noisy).float(), stop_fraction=1.0)[1] == []
        # in float64 those differences are real: a few rounds, then the work cap stops it
        assert sum(auction_prices(torch.as_tensor(noisy), stop_fraction=1.0)[1]) <= 20
        return
    # (float32 bids: a rounding allowance of n ulps of the largest cost)
    assert dual(p) >= opt - 1.01 * n * eps - n * 1e-6 * C.max()
    assert all(0 < k < 500 for k in rounds)
    if kind == "unrelated":  # every phase runs, and the duals are far better than none
        assert len(rounds) == 3
        assert opt - dual(np.zeros(n)) > 10 * (opt - dual(p))
    else:  # nearby clouds: one round of the first phase settles it, no finer phase follows
        assert rounds == [1]


def test_auction_leaves_tied_rows_to_scipy():
    """Collapsed features: every row of a class ties with its classmates, and a Jacobi auction
    settles ten rows a round (3 x 500 rounds before its work cap). The warm start stops after
    a few reads of the matrix and the exact value is unchanged (zero: the same multiset)."""
    g = np.random.default_rng(23)
    centres = 5 * g.normal(size=(10, 16))
    labels = np.repeat(np.arange(10), 60)
    x, y = centres[labels], centres[g.permutation(labels)]
    from otcollapse.transport.assignment.auction import auction_prices

    C = torch.as_tensor(((x[:, None] - y[None]) ** 2).sum(-1), dtype=torch.float32)
    assert sum(auction_prices(C)[1]) <= 20
    # wasserstein splits the separated classes and solves each alone (see the blocks tests)
    res = wasserstein(x, y, candidates="dense")
    assert res.cost == 0.0 and res.converged and res.params["blocks"] == 10


def test_bellman_ford_potentials_detect_a_non_optimal_permutation():
    from otcollapse.transport.assignment.sparse import bellman_ford_potentials

    # two sources, two targets, all four pairs: swapping is cheaper than the identity
    C = np.array([[4.0, 1.0], [1.0, 4.0]])
    keys = np.arange(4)  # i * 2 + j
    assert bellman_ford_potentials(2, keys, C.ravel(), np.array([0, 1]), 1e-13) is None
    u, v, _ = bellman_ford_potentials(2, keys, C.ravel(), np.array([1, 0]), 1e-13)
    assert np.all(u[:, None] + v[None, :] <= C + 1e-15)
    assert u[0] + v[1] == 1.0 and u[1] + v[0] == 1.0


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"candidates": "sparse"}, "candidates must be"),
        ({"candidates": -1}, "candidates .* must be"),
        ({"candidates": True}, "candidates .* must be an integer"),
        ({"rank": 0}, "rank must be"),
        ({"max_iter": 0}, "max_iter must be"),
        ({"max_rounds": 3}, "'max_rounds' is now 'max_iter'"),
    ],
)
def test_sparse_options_are_validated(opts, match):
    x, y = residual_pair(20, 3)
    with pytest.raises((ValueError, TypeError), match=match):
        wasserstein(x, y, method="assignment", **opts)


def test_sparse_path_sees_through_a_common_translation():
    # a step plus a translation far larger than the step: each cloud is centred on its own
    # mean first, so the identity's potentials still certify the identity in one scan
    x, y = residual_pair(300, 10, seed=14)
    shift = np.full(10, 20.0)
    ref, C = dense_lsa(x, y + shift)
    res = wasserstein(x, y + shift, candidates=0, return_potentials=True)
    assert res.params["path"] == "sparse" and res.params["rounds"] == 1
    assert res.cost == pytest.approx(ref, rel=1e-12)
    assert res.cost == pytest.approx(
        wasserstein(x, y).cost + 2 * shift @ (y - x).mean(0) + 4000, rel=1e-12
    )
    assert_certificate(res, C)


@pytest.mark.parametrize("method", ["exact", "assignment"])
def test_converged_is_a_python_bool(method):
    x, y = residual_pair(40, 3)
    for opts in ({}, {"return_potentials": True}):
        res = wasserstein(x, y, method=method, **opts)
        assert type(res.converged) is bool


@pytest.mark.parametrize(
    "options, error, name",
    [
        ({"method": "sinkhorn", "eps": "0.1"}, TypeError, "eps"),
        ({"method": "sinkhorn", "eps": -1.0}, ValueError, "eps"),
        ({"method": "sinkhorn", "eps_rel": float("nan")}, ValueError, "eps_rel"),
        ({"method": "sinkhorn", "max_iter": -1}, ValueError, "max_iter"),
        ({"method": "sinkhorn", "max_iter": 2.5}, TypeError, "max_iter"),
        ({"method": "sinkhorn", "tol": -1e-3}, ValueError, "tol"),
        ({"method": "sinkhorn", "scaling": 1.0}, ValueError, "scaling"),
        ({"max_dense_bytes": -1}, ValueError, "max_dense_bytes"),
        ({"max_dense_bytes": "2GB"}, TypeError, "max_dense_bytes"),
        ({"method": "sliced", "n_projections": 2**62}, ValueError, "n_projections"),
        ({"method": "sliced", "n_projections": 0}, ValueError, "n_projections"),
        ({"method": "sliced", "seed": -3}, ValueError, "seed"),
        ({"method": "exact", "max_iter": 0}, ValueError, "max_iter"),
        ({"method": "exact", "num_iter_max": 9}, ValueError, "'num_iter_max' is now 'max_iter'"),
    ],
)
def test_bad_options_are_refused_by_name(options, error, name):
    x = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(error, match=name):
        wasserstein(x, x + 1.0, **options)


def test_complex_points_and_non_psd_covariances_are_refused(as_input):
    x = np.random.default_rng(0).normal(size=(10, 2))
    with pytest.raises(ValueError, match="complex"):
        wasserstein(as_input(x + 1j * x), as_input(x))
    from otcollapse.transport import gaussian_w2

    with pytest.raises(ValueError, match="S0 has a negative eigenvalue"):
        gaussian_w2(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="S1 is not symmetric"):
        gaussian_w2(np.zeros(2), np.eye(2), np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]))
    # a zero budget is a valid request (streamed Sinkhorn), only a negative one is refused
    res = wasserstein(x, x + 1.0, method="sinkhorn", eps=1.0, max_dense_bytes=0)
    assert res.converged
