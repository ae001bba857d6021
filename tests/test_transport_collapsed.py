"""Exactness where the users are: collapsed features, tight clusters far from the origin.

Every exact method is checked against an oracle that does not cancel (POT's network simplex on
each class's own centred costs, or scipy's assignment on costs formed from the differences),
to 1e-9 relative, with its certificate holding (``converged`` and ``gap <= 1e-9 cost``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import assignment_w2sq, collapsed_w2sq, weighted_moments

from otcollapse import Trajectory, geodesic_test, wasserstein
from otcollapse.exceptions import ConvergenceWarning
from otcollapse.geodesic import ots
from otcollapse.transport.blocks import find_groups
from otcollapse.transport.geometry import PointCloudCost

RTOL = 1e-9


def collapsed(K, n, d, spread, norm, seed=0, dtype=np.float64):
    """Two independent samples of K classes, each a Gaussian of std ``spread`` around a centre
    of norm ``norm`` (the terminal phase: NC1 -> 0)."""
    g = np.random.default_rng(seed)
    centres = g.normal(size=(K, d))
    centres *= norm / np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.arange(n) % K
    x = (centres[labels] + spread * g.normal(size=(n, d))).astype(dtype)
    y = (centres[labels] + spread * g.normal(size=(n, d))).astype(dtype)
    return x, y, labels


def class_balanced_weights(labels, seed):
    """Random masses with the same total on every class in both measures (so the optimal plan
    stays inside the classes and the per-class oracle applies)."""
    g = np.random.default_rng(seed)
    K = labels.max() + 1
    out = []
    for _ in range(2):
        w = g.uniform(0.5, 1.5, size=len(labels))
        for k in range(K):
            w[labels == k] /= w[labels == k].sum() * K
        out.append(w / w.sum())
    return out


def assert_exact(res, ref):
    assert res.cost == pytest.approx(ref, rel=RTOL, abs=0)
    assert res.converged and res.gap <= RTOL * res.cost and res.gap_kind == "certified gap"


@pytest.mark.parametrize("spread", [1e-2, 1e-4, 1e-6, 1e-8])
@pytest.mark.parametrize("norm", [1.0, 1e3])
@pytest.mark.parametrize("K,n", [(3, 51), (10, 600)])
def test_collapsed_clusters_uniform(spread, norm, K, n):
    x, y, labels = collapsed(K, n, 8, spread, norm, seed=K)
    ref = collapsed_w2sq(x, y, labels)
    assert ref == pytest.approx(assignment_w2sq(x, y)[0], rel=RTOL)  # the two oracles agree
    for method in ("auto", "exact", "assignment"):
        assert_exact(wasserstein(x, y, method=method), ref)


@pytest.mark.parametrize("spread", [1e-2, 1e-6, 1e-8])
@pytest.mark.parametrize("norm", [1.0, 1e3])
def test_collapsed_clusters_weighted(spread, norm):
    x, y, labels = collapsed(5, 200, 6, spread, norm, seed=3)
    a, b = class_balanced_weights(labels, seed=4)
    ref = collapsed_w2sq(x, y, labels, a, b)
    for method in ("auto", "exact"):
        res = wasserstein(x, y, a=a, b=b, method=method, return_potentials=True)
        assert res.method == "exact"
        assert_exact(res, ref)
        # the potentials glued across clusters are feasible on every pair (exact costs)
        u, v = res.potentials
        C = ((x[:, None] - y[None]) ** 2).sum(-1)
        assert np.max(u[:, None] + v[None, :] - C) <= 1e-9 * ref


@pytest.mark.parametrize("spread", [1e-4, 1e-6])
def test_collapsed_clusters_float32_input(spread, as_input):
    """float32 features are taken as the exact values they hold (cast to float64 first)."""
    x, y, labels = collapsed(4, 200, 16, spread, 30.0, seed=7, dtype=np.float32)
    ref = collapsed_w2sq(x, y, labels)
    for method in ("auto", "exact", "assignment"):
        assert_exact(wasserstein(as_input(x), as_input(y), method=method), ref)


def test_collapsed_clusters_large_n():
    x, y, labels = collapsed(10, 5000, 16, 1e-6, 1e3, seed=11)
    res = wasserstein(x, y)
    assert_exact(res, collapsed_w2sq(x, y, labels))
    assert res.method == "assignment" and res.params["blocks"] == 10


def test_collapsed_near_identity_step_and_scores():
    """A residual step at the terminal phase: each feature moves by 1e-3 of the (1e-6) class
    spread. W2, OTS and the geodesic test see the step as the brute-force assignment does."""
    g = np.random.default_rng(2)
    x, _, labels = collapsed(5, 300, 8, 1e-6, 1e2, seed=2)
    y = x + 1e-9 * g.normal(size=x.shape)
    ref, sigma = assignment_w2sq(x, y)
    assert_exact(wasserstein(x, y), ref)
    assert_exact(wasserstein(x, y, method="exact"), ref)
    assert ots(x, y) == pytest.approx(np.mean(sigma == np.arange(len(x))), abs=1e-12)
    traj = Trajectory.from_arrays([x, 0.5 * (x + y), y], labels=labels)
    report = geodesic_test(traj)
    seg = report.segments[0]
    assert seg.ots == pytest.approx(np.mean(sigma == np.arange(len(x))), abs=1e-12)
    # the layers lie on the segment from x to y: the path ratio is 1 to rounding
    assert seg.path_ratio == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("method", ["exact", "assignment", "auto"])
@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    log_spread=st.floats(-8, 0),
    log_offset=st.floats(0, 6),
)
def test_translation_invariance(method, seed, log_spread, log_offset):
    """W2^2(x + c, y + c) = W2^2(x, y) for offsets c up to 1e6 x the spread."""
    g = np.random.default_rng(seed)
    spread = 10.0**log_spread
    x, y, _ = collapsed(3, 30, 4, spread, 1.0, seed=seed)
    c = g.normal(size=4) * spread * 10.0**log_offset
    base = wasserstein(x, y, method=method)
    moved = wasserstein(x + c, y + c, method=method)
    assert base.converged and moved.converged
    assert moved.cost == pytest.approx(base.cost, rel=RTOL)


@pytest.mark.parametrize("method", ["exact", "assignment"])
@pytest.mark.parametrize("weighted", [False, True])
def test_scale_equivariance_over_twenty_decades(method, weighted):
    """W2^2(s x, s y) = s^2 W2^2(x, y) from s = 1e-10 to 1e10, certified at every scale (POT's
    absolute pivot tolerance once made the small scales wrong and 'converged')."""
    if method == "assignment" and weighted:
        return
    g = np.random.default_rng(0)
    x, z = g.normal(size=(40, 3)), g.normal(size=(40, 3))
    w = g.uniform(size=40) if weighted else None
    a = None if w is None else w / w.sum()
    b = None if w is None else g.permutation(a)
    ref = wasserstein(x, z, a=a, b=b, method=method).cost
    for s in 10.0 ** np.arange(-10, 11, 2):
        res = wasserstein(s * x, s * z, a=a, b=b, method=method)
        assert res.converged and res.cost / s**2 == pytest.approx(ref, rel=RTOL)


def test_certificate_can_fail():
    """Masses that differ by 1e-10 between two nearly identical clouds (steps of 1e-12 of the
    spread): no split applies, the value is far below the network simplex's resolution of the
    largest cost, and the result says it is not certified."""
    g = np.random.default_rng(1)
    x = g.normal(size=(60, 3))
    y = x + 1e-12 * g.normal(size=x.shape)
    a = g.uniform(size=60)
    a /= a.sum()
    b = a + 1e-10 * (g.permutation(60) - 29.5)
    b /= b.sum()
    with pytest.warns(ConvergenceWarning):
        res = wasserstein(x, y, a=a, b=b, method="exact")
    assert not res.converged and res.gap > RTOL * res.cost


def test_unbalanced_clusters_are_solved_whole():
    """One sample moved to another class: the plan must cross clusters, no split applies, and
    the value (dominated by the crossing) is still certified and exact."""
    x, y, _ = collapsed(3, 30, 4, 1e-6, 10.0, seed=5)
    y[0] = y[1]  # class 0 loses a point to class 1 in y
    geom = PointCloudCost(torch.as_tensor(x), torch.as_tensor(y))
    uniform = torch.full((30,), 1 / 30, dtype=torch.float64)
    assert find_groups(geom, uniform, uniform, 1e-12) is None
    ref = assignment_w2sq(x, y)[0]
    for method in ("exact", "assignment"):
        assert_exact(wasserstein(x, y, method=method), ref)


# ------------------------------------------------------------------------- degenerate inputs
def test_single_points():
    x, y = np.array([[1.0, 2.0, 3.0]]), np.array([[2.0, 0.0, 3.0]])
    for method in ("auto", "exact", "assignment"):
        assert wasserstein(x, y, method=method).cost == pytest.approx(5.0, rel=1e-15)
    assert wasserstein(x, y, method="sliced").cost == pytest.approx(5.0 / 3, rel=1e-12)
    assert wasserstein(x, y, method="gaussian").cost == pytest.approx(5.0, rel=1e-12)


def test_one_point_against_many():
    g = np.random.default_rng(0)
    x, y = g.normal(size=(1, 4)), g.normal(size=(500, 4))
    ref = float(((x - y) ** 2).sum(1).mean())  # everything goes to the one point
    for xs, ys in ((x, y), (y, x)):
        res = wasserstein(xs, ys)
        assert res.method == "exact" and res.converged
        assert res.cost == pytest.approx(ref, rel=1e-12)


def test_gaussian_with_rank_deficient_covariance():
    """3 points in R^4 against 2,000: a singular covariance is a valid Bures input. Oracle:
    with S0 = B B^T (B of full column rank), Tr (S1^1/2 S0 S1^1/2)^1/2 = sum sqrt(eig(B^T S1 B))."""
    g = np.random.default_rng(3)
    x, y = g.normal(size=(3, 4)), 2 * g.normal(size=(2000, 4)) + 1
    res = wasserstein(x, y, method="gaussian")
    m0, S0 = weighted_moments(x)
    m1, S1 = weighted_moments(y)
    assert np.linalg.matrix_rank(S0) == 2
    u, sv, _ = np.linalg.svd((x - m0).T / np.sqrt(len(x)))
    B = u[:, :2] * sv[:2]  # S0 = B B^T with B of full column rank (the third column is zero)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(B.T @ S1 @ B), 0, None)).sum()
    ref = np.sum((m0 - m1) ** 2) + np.trace(S0) + np.trace(S1) - 2 * cross
    assert res.cost == pytest.approx(ref, rel=1e-12)


def test_duplicated_points_and_shuffles_of_collapsed_classes():
    """Every point repeated: the same multiset shuffled has W2 = 0, certified."""
    x, _, _ = collapsed(4, 80, 5, 1e-7, 1e2, seed=9)
    xd = np.repeat(x, 3, axis=0)
    perm = np.random.default_rng(1).permutation(len(xd))
    for method in ("auto", "exact", "assignment"):
        res = wasserstein(xd, xd[perm], method=method)
        assert res.cost == 0.0 and res.converged and res.gap == 0.0


# ------------------------------------------------------------- what the split must not do
def test_masses_that_differ_beyond_rounding_are_not_split():
    """1e-14 of mass must cross a gap of 1e6: W2^2 >= 1e-2, never the in-cluster 1e-6."""
    x = np.array([[0, 0], [0, 1e-3], [1e6, 0], [1e6, 1e-3]])
    y = x + np.array([0, 1e-3])
    a = np.full(4, 0.25)
    b = np.array([0.25 + 1e-14, 0.25, 0.25 - 1e-14, 0.25])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # certified or not, never wrong
        res = wasserstein(x, y, a=a, b=b, method="exact")
    assert res.params.get("path") != "blocks"
    assert res.cost >= 0.99e-2 or not res.converged


def test_a_far_point_with_tiny_mass_is_not_dropped():
    x = np.array([[0, 0], [0, 1e-3], [1e6, 0], [1e6, 1e-3]])
    y = np.r_[x + np.array([0, 1e-3]), [[-1e6, 0]]]
    b = np.array([0.25, 0.25, 0.25, 0.25 - 1e-16, 1e-16])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = wasserstein(x, y, a=np.full(4, 0.25), b=b / b.sum(), method="exact", return_plan=True)
    assert res.params.get("path") != "blocks"
    assert res.plan[:, 4].sum() > 0  # the far target receives its mass
    assert res.cost >= 0.9e-16 * 1e12 or not res.converged


def test_points_without_mass_do_not_spoil_a_split():
    """Zero-mass points are not grouped: the problem is solved whole."""
    x, y, labels = collapsed(3, 60, 4, 1e-6, 10.0, seed=12)
    far = np.full((3, 4), 1e4)
    xa, ya = np.r_[x, far], np.r_[y, far + 1.0]
    w = np.r_[np.full(60, 1 / 60), np.zeros(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = wasserstein(xa, ya, a=w, b=w, method="exact")
    ref = collapsed_w2sq(x, y, labels)
    # one frame cannot resolve 1e-12 costs beside 1e8 ones: honest non-convergence, never a
    # wrong value marked converged
    assert not res.converged or res.cost == pytest.approx(ref, rel=RTOL)


def test_auto_keeps_float32_for_sinkhorn():
    """Only the exact solvers cast to float64; auto's chunked Sinkhorn keeps the input's dtype."""
    g = np.random.default_rng(0)
    x = torch.as_tensor(g.normal(size=(300, 4)), dtype=torch.float32)
    y = torch.as_tensor(g.normal(size=(280, 4)), dtype=torch.float32)
    res = wasserstein(x, y, max_dense_bytes=8 * 300 * 280)  # exact does not fit: Sinkhorn
    assert res.method == "sinkhorn" and res.params["dtype"] == "float32"
