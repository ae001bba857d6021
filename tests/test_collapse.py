"""Tests of otcollapse.collapse: closed forms, invariances, a dense oracle, streaming, bad input.

The answers are written here, independently of the code under test: closed forms derived by hand
for the constructions, and a direct dense in-memory computation (``_dense``) of every metric that
forms the d x d covariance matrices the streaming code avoids.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

from otcollapse import _utils
from otcollapse.collapse import (
    METRICS,
    CollapseProfile,
    cdnv,
    cdnv_matrix,
    class_statistics,
    collapse_profile,
    layer_collapse,
    nc1,
    nc1_tilde,
    nc2,
    nc3,
    nc4,
    separation_fuzziness,
    w2sq_to_class_means,
)
from otcollapse.constructions import etf_clusters, simplex_etf, transparent_model
from otcollapse.measures import Trajectory

RTOL = 1e-10  # streaming vs dense agreement asked for by the issue


# ------------------------------------------------------------------------------ the dense oracle
def _dense(X, y, *, W=None, b=None, weights=None, logits=None, rtol=1e-10):
    """Every metric by the textbook formulas, with full d x d matrices, in float64."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    classes = np.unique(y)
    K = len(classes)
    a = np.full(len(X), 1 / len(X)) if weights is None else np.asarray(weights) / np.sum(weights)
    p = np.array([a[y == k].sum() for k in classes])
    means = np.stack([(a[y == k] @ X[y == k]) / a[y == k].sum() for k in classes])
    mG = means.mean(axis=0)
    own = means[np.searchsorted(classes, y)]
    Sw = ((X - own) * a[:, None]).T @ (X - own)
    C = means - mG
    Sb = C.T @ C / K
    D = float(np.trace(Sw @ np.linalg.pinv(Sb, rcond=rtol, hermitian=True)))
    var = np.array(
        [a[y == k] @ ((X[y == k] - means[i]) ** 2).sum(1) / p[i] for i, k in enumerate(classes)]
    )
    pairs = list(itertools.combinations(range(K), 2))
    cd = np.full((K, K), np.nan)
    for i, j in pairs:
        cd[i, j] = cd[j, i] = (var[i] + var[j]) / (2 * np.sum((means[i] - means[j]) ** 2))
    norms = np.linalg.norm(C, axis=1)
    cos = [C[i] @ C[j] / (norms[i] * norms[j]) for i, j in pairs]
    G = C @ C.T
    P = np.eye(K) - np.ones((K, K)) / K
    dist = cdist(X, means, "sqeuclidean")
    ncc = classes[np.argmin(dist, axis=1)]
    out = {
        "nc1": D / K,
        "he_su_d": D,
        "nc1_tilde": np.trace(Sw) / np.trace(Sb),
        "cdnv": np.mean([cd[i, j] for i, j in pairs]),
        "cdnv_matrix": cd,
        "nc2_equinorm": norms.std() / norms.mean(),
        "nc2_equiangularity": np.mean(np.abs(np.array(cos) + 1 / (K - 1))),
        "nc2_etf_distance": np.linalg.norm(G / np.linalg.norm(G) - P / np.sqrt(K - 1)),
        "nc4_ncc_error": a @ (ncc != y),
        "tr_sigma_w": np.trace(Sw),
        "tr_sigma_b": np.trace(Sb),
        "w2sq_to_class_means": ot.emd2(a, p, dist, numItermax=10**7),
        "Sw": Sw,
    }
    if W is not None:
        M = C.T
        out["nc3"] = np.sum((W.T / np.linalg.norm(W) - M / np.linalg.norm(M)) ** 2)
        scores = X @ W.T + (0 if b is None else b)
        out["nc4_mismatch"] = a @ (ncc != np.argmax(scores, axis=1))
    elif logits is not None:
        out["nc4_mismatch"] = a @ (ncc != np.argmax(logits, axis=1))
    return out


def _close(got, want, rtol=RTOL, atol=1e-13):
    return math.isclose(got, want, rel_tol=rtol, abs_tol=atol)


def _assert_matches_dense(res, ref, rtol=RTOL):
    for m, v in res.metrics.items():
        assert _close(v, float(ref[m]), rtol), (m, v, float(ref[m]))
    if res.cdnv_matrix is not None:
        np.testing.assert_allclose(res.cdnv_matrix, ref["cdnv_matrix"], rtol=rtol)


def _clusters(sizes, d, spread=1.0, sep=1.5, seed=0):
    """Gaussian classes of the given sizes around random means (overlapping a little)."""
    g = np.random.default_rng(seed)
    means = sep * g.normal(size=(len(sizes), d))
    X = np.concatenate(
        [m + spread * g.normal(size=(n, d)) for m, n in zip(means, sizes, strict=True)]
    )
    y = np.repeat(np.arange(len(sizes)), sizes)
    return X, y


# ------------------------------------------------------------------------------ simplex ETF
@pytest.mark.parametrize(("K", "d"), [(2, 2), (3, 3), (5, 5), (4, 9), (7, 6)])
def test_simplex_etf_geometry_and_nc2_zero(K, d):
    M = simplex_etf(K, d)
    np.testing.assert_allclose(np.linalg.norm(M, axis=0), 1.0, atol=1e-12)
    G = M.T @ M
    off = G[~np.eye(K, dtype=bool)]
    np.testing.assert_allclose(off, -1.0 / (K - 1), atol=1e-12)
    np.testing.assert_allclose(G, K / (K - 1) * (np.eye(K) - np.ones((K, K)) / K), atol=1e-12)
    out = nc2(M.T, np.arange(K))
    assert set(out) == {"nc2_equinorm", "nc2_equiangularity", "nc2_etf_distance"}
    for v in out.values():
        assert abs(v) < 1e-12
    # scaled and shifted ETF: still zero
    out = nc2(3.0 * M.T + 5.0, np.arange(K))
    assert max(abs(v) for v in out.values()) < 1e-12


# ------------------------------------------------------------------------------ closed forms
def _etf_cluster_answers(K, d, r, s):
    """Hand derivation: Sigma_W = s^2 I; Sigma_B has K-1 eigenvalues r^2/(K-1), Tr Sigma_B = r^2;
    ||m_k - m_k'||^2 = 2 r^2 K/(K-1); V_k = d s^2."""
    return {
        "nc1": s**2 * (K - 1) ** 2 / (K * r**2),
        "he_su_d": s**2 * (K - 1) ** 2 / r**2,
        "cdnv": d * s**2 * (K - 1) / (2 * K * r**2),
        "nc1_tilde": d * s**2 / r**2,
        "tr_sigma_w": d * s**2,
        "tr_sigma_b": r**2,
    }


def test_etf_clusters_issue_example():
    X, y = etf_clusters(4, 6, 3.0, 0.5)
    res = layer_collapse(X, y)
    assert _close(res["nc1"], 0.0625, 1e-12)
    assert _close(res["he_su_d"], 0.25, 1e-12)
    assert _close(res["cdnv"], 0.0625, 1e-12)
    assert _close(res["nc1_tilde"], 1 / 6, 1e-12)
    assert res.rank_between == 3
    assert _close(nc1(X, y), 0.0625, 1e-12)
    assert _close(separation_fuzziness(X, y), 0.25, 1e-12)
    assert _close(cdnv(X, y), 0.0625, 1e-12)
    assert _close(nc1_tilde(X, y), 1 / 6, 1e-12)


@pytest.mark.parametrize(
    ("K", "d", "r", "s"),
    [(4, 6, 3.0, 0.5), (2, 1, 1.0, 0.3), (3, 2, 1.0, 0.1), (5, 8, 2.0, 0.3), (10, 12, 4.0, 0.7)],
)
def test_etf_clusters_closed_forms(K, d, r, s, as_input):
    X, y = etf_clusters(K, d, r, s)
    res = layer_collapse(as_input(X), y)
    for m, want in _etf_cluster_answers(K, d, r, s).items():
        assert _close(res[m], want, 1e-10), (m, res[m], want)
    for m in ("nc2_equinorm", "nc2_equiangularity", "nc2_etf_distance", "nc4_ncc_error"):
        assert abs(res[m]) < 1e-10
    off = res.cdnv_matrix[~np.eye(K, dtype=bool)]
    np.testing.assert_allclose(off, _etf_cluster_answers(K, d, r, s)["cdnv"], rtol=1e-10)
    assert np.isnan(np.diag(res.cdnv_matrix)).all()
    assert res["w2sq_to_class_means"] <= res["tr_sigma_w"] * (1 + 1e-12)


# ------------------------------------------------------------------------------ invariances
def _three(X, y):
    res = layer_collapse(X, y, metrics=["nc1", "he_su_d", "nc1_tilde"])
    return np.array([res["nc1"], res["he_su_d"], res["nc1_tilde"]])


@pytest.mark.parametrize(("K", "d"), [(3, 5), (4, 4), (6, 3), (5, 4)])
def test_orthogonal_shift_scale_invariance(K, d):
    X, y = _clusters([12] * K, d, seed=K + d)
    g = np.random.default_rng(1)
    Q, _ = np.linalg.qr(g.normal(size=(d, d)))
    base = _three(X, y)
    np.testing.assert_allclose(_three(X @ Q.T + g.normal(size=d), y), base, rtol=1e-9)
    np.testing.assert_allclose(_three(7.5 * X, y), base, rtol=1e-9)
    np.testing.assert_allclose(_three(-0.01 * X @ Q - 3.0, y), base, rtol=1e-9)


@pytest.mark.parametrize(("K", "d"), [(3, 3), (3, 6), (4, 5)])
def test_general_linear_map_changes_all_three_when_d_ge_K(K, d):
    X, y = _clusters([15] * K, d, seed=3)
    A = np.diag(np.linspace(0.3, 3.0, d)) + 0.4 * np.random.default_rng(2).normal(size=(d, d))
    assert abs(np.linalg.det(A)) > 1e-3
    before, after = _three(X, y), _three(X @ A.T, y)
    assert np.all(np.abs(after - before) > 1e-3 * np.abs(before))


@pytest.mark.parametrize(("K", "d"), [(4, 3), (6, 4), (3, 2), (5, 1)])
def test_general_linear_map_keeps_nc1_when_d_le_K_minus_1(K, d):
    X, y = _clusters([15] * K, d, seed=4)
    A = np.diag(np.linspace(0.5, 2.0, d)) + 0.3 * np.random.default_rng(5).normal(size=(d, d))
    assert abs(np.linalg.det(A)) > 1e-3
    before, after = _three(X, y), _three(X @ A.T + 1.0, y)
    np.testing.assert_allclose(after[:2], before[:2], rtol=1e-9)  # NC1 and D
    if d > 1:  # in one dimension every linear map is a scaling
        assert abs(after[2] - before[2]) > 1e-3 * before[2]  # NC1 tilde is not invariant


# ------------------------------------------------------------------------------ transparent model
def _orthogonal_case(K=4, L=6, s=0.4, concentrated=False, seed=0):
    """ETF on the first K-1 axes, input class means on the next K-1 axes (orthogonal spans).

    Isotropic case: class k is mu_k +- s sqrt(d) e_j, so Sigma_W(0) = s^2 I exactly.
    Concentrated case: the within-class spread lies (mostly) in the span of the ETF."""
    d = 2 * (K - 1) + 1
    etf = simplex_etf(K, d, seed=None)  # columns on axes 0..K-2
    g = np.random.default_rng(seed)
    mu = np.zeros((K, d))
    mu[:, K - 1 : 2 * (K - 1)] = 3.0 * g.normal(size=(K, K - 1))
    if concentrated:
        offs = np.zeros((2 * (K - 1), d))
        for j in range(K - 1):
            offs[2 * j, j], offs[2 * j + 1, j] = 2.0, -2.0
        offs = np.concatenate([offs, 0.01 * np.concatenate([np.eye(d), -np.eye(d)])])
    else:
        offs = s * np.sqrt(d) * np.concatenate([np.eye(d), -np.eye(d)])
    X = (mu[:, None, :] + offs[None]).reshape(-1, d)
    y = np.repeat(np.arange(K), len(offs))
    return transparent_model(X, y, L, etf=etf), X, y


def test_transparent_model_within_covariance_shrinks_exactly():
    traj, X, y = _orthogonal_case()
    L = traj.n_steps
    S0 = _dense(traj.layers[0], y)["Sw"]
    np.testing.assert_allclose(S0, 0.4**2 * np.eye(X.shape[1]), atol=1e-12)
    prof = collapse_profile(traj, metrics=["tr_sigma_w"])
    for l in range(L + 1):
        Sl = _dense(traj.layers[l], y)["Sw"]
        np.testing.assert_allclose(Sl, (1 - l / L) ** 2 * S0, atol=1e-12)
        assert _close(prof.layers[l]["tr_sigma_w"], (1 - l / L) ** 2 * np.trace(S0), 1e-10)
    assert prof.layers[-1].collapsed and prof.layers[-1]["tr_sigma_w"] == 0.0


def test_transparent_model_isotropic_orthogonal_means_monotone():
    traj, _, y = _orthogonal_case(K=4, L=6)
    dense = [_dense(x, y) for x in traj.layers]
    for m in ("nc1", "nc1_tilde"):
        v = [r[m] for r in dense]
        assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(v)), (m, v)
    prof = collapse_profile(traj)
    for m in ("nc1", "he_su_d", "nc1_tilde", "tr_sigma_w", "w2sq_to_class_means"):
        st = prof.pfc[m]
        assert st.monotone is True and st.frac_non_increasing == 1.0, (m, st)
        assert st.kendall_tau == pytest.approx(-1.0), (m, st)
    for l, r in enumerate(dense[:-1]):
        _assert_matches_dense(prof.layers[l], r)
    # last layer: every sample sits on its ETF vertex, D = 0, left out of the decay fit
    assert prof.layers[-1]["nc1"] == 0.0 and prof.layers[-1]["he_su_d"] == 0.0
    assert prof.decay.layers == tuple(range(6)) and prof.decay.excluded == (6,)
    assert prof.decay.rate < 1


def test_transparent_model_concentrated_covariance_not_monotone():
    traj, _, y = _orthogonal_case(K=4, L=6, concentrated=True)
    v = [_dense(x, y)["nc1"] for x in traj.layers]
    assert any(b > a * 1.01 for a, b in itertools.pairwise(v))  # NC1 rises somewhere
    prof = collapse_profile(traj, metrics=["nc1", "nc1_tilde"])
    np.testing.assert_allclose(prof.values("nc1")[:-1], v[:-1], rtol=1e-9)
    st = prof.pfc["nc1"]
    assert st.monotone is False and st.frac_non_increasing < 1.0
    steps = [b <= a for a, b in itertools.pairwise(v)]
    assert st.frac_non_increasing == pytest.approx(np.mean(steps))


# ------------------------------------------------------------------------------ dense agreement
def _imbalanced(seed=0):
    X, y = _clusters([5, 20, 80], 7, spread=1.0, sep=0.4, seed=seed)
    g = np.random.default_rng(seed + 10)
    W, b = g.normal(size=(3, 7)), g.normal(size=3)
    return X, y, W, b


def test_imbalanced_classes_match_dense(as_input):
    X, y, W, b = _imbalanced()
    ref = _dense(X, y, W=W, b=b)
    assert 0 < ref["nc4_ncc_error"] < 1 and 0 < ref["nc4_mismatch"] < 1  # nontrivial case
    res = layer_collapse(as_input(X), y, classifier=(W, b))
    assert set(res.metrics) == set(METRICS)
    _assert_matches_dense(res, ref)
    assert res.class_counts.tolist() == [5, 20, 80]
    # the plain functions agree with the one-layer result
    assert _close(nc1(X, y), ref["nc1"])
    assert _close(nc3(X, y, (W, b)), ref["nc3"])
    assert nc4(X, y, classifier=(W, b)) == pytest.approx(
        {"nc4_ncc_error": ref["nc4_ncc_error"], "nc4_mismatch": ref["nc4_mismatch"]}, rel=1e-12
    )
    assert _close(w2sq_to_class_means(X, y), ref["w2sq_to_class_means"])
    np.testing.assert_allclose(cdnv_matrix(X, y), ref["cdnv_matrix"], rtol=RTOL)


def test_weighted_samples_match_dense():
    X, y, W, b = _imbalanced(seed=1)
    w = np.random.default_rng(3).uniform(0.2, 2.0, size=len(y))
    ref = _dense(X, y, W=W, b=b, weights=w)
    _assert_matches_dense(layer_collapse(X, y, classifier=(W, b), weights=w / w.sum()), ref)
    traj = Trajectory.from_arrays([X, 2 * X], labels=y, weights=w / w.sum())
    prof = collapse_profile(traj, metrics=["nc1", "cdnv", "w2sq_to_class_means"])
    _assert_matches_dense(prof.layers[0], ref)


def test_weights_are_masses_like_repeated_samples():
    """Integer weights c_i / sum(c) are the same measure as sample i repeated c_i times."""
    X, y, W, b = _imbalanced(seed=5)
    c = np.random.default_rng(6).integers(0, 4, size=len(y))
    first = np.searchsorted(y, [0, 1, 2])
    c[np.concatenate([first, first + 1])] = 2  # every class keeps two samples of positive mass
    weighted = layer_collapse(X, y, classifier=(W, b), weights=c / c.sum())
    repeated = layer_collapse(np.repeat(X, c, axis=0), np.repeat(y, c), classifier=(W, b))
    for m, v in repeated.metrics.items():
        assert _close(weighted[m], v, 1e-10, atol=1e-12), (m, weighted[m], v)


def test_unnormalised_weights_are_refused():
    X, y = _clusters([5, 6, 7], 3)
    w = np.ones(len(y))  # sums to 18: one weight rule everywhere, masses must sum to one
    for call in (
        lambda: layer_collapse(X, y, weights=w),
        lambda: nc1(X, y, weights=w),
        lambda: cdnv_matrix(X, y, weights=2 * w / w.sum()),
        lambda: class_statistics(X, y, weights=w),
    ):
        with pytest.raises(ValueError, match=r"weights sum to .*, not 1; normalise them"):
            call()
    assert _close(nc1(X, y, weights=w / w.sum()), nc1(X, y))


def test_arbitrary_labels_and_logits():
    X, y, W, b = _imbalanced(seed=2)
    labels = np.array([3, 10, 42])[y]  # sparse class labels, no classifier
    logits = X @ W.T + b
    ref = _dense(X, labels)
    res = layer_collapse(X, labels)
    assert res.classes.tolist() == [3, 10, 42]
    _assert_matches_dense(res, ref)
    # logits are indexed by class row: use labels 0..K-1 with them
    res = layer_collapse(X, y, logits=logits, metrics=["nc4_mismatch"])
    ref = _dense(X, y, logits=logits)
    assert _close(res["nc4_mismatch"], ref["nc4_mismatch"])
    # a profile without a classifier falls back to the trajectory's logits at the last layer
    prof = collapse_profile(Trajectory.from_arrays([2 * X, X], labels=y, logits=logits))
    assert prof.table()[0]["nc4_mismatch"] is None and "nc3" not in prof.metrics
    assert _close(prof.table()[1]["nc4_mismatch"], ref["nc4_mismatch"])


# ------------------------------------------------------------------------------ streaming
def test_streaming_blocks_equal_in_memory(tmp_path, monkeypatch):
    X, y = _clusters([30, 45, 25, 60], 9, seed=7)
    X = X + 1e3  # a large common offset: the merge must stay accurate
    ref = _dense(X, y)
    whole = layer_collapse(X, y, block_size=10**6)
    _assert_matches_dense(whole, ref)
    for bs in (1, 7, 33):
        _assert_matches_dense(layer_collapse(X, y, block_size=bs), ref)
    # memory map on disk, read in blocks
    mm = np.lib.format.open_memmap(
        tmp_path / "layer.npy", mode="w+", dtype=np.float64, shape=X.shape
    )
    mm[:] = X
    mm.flush()
    mm = np.load(tmp_path / "layer.npy", mmap_mode="r")
    assert isinstance(mm, np.memmap)
    _assert_matches_dense(layer_collapse(mm, y, block_size=16), ref)
    # the module-wide block size is honoured at call time
    monkeypatch.setattr(_utils, "SCAN_ROWS", 11)
    _assert_matches_dense(layer_collapse(mm, y), ref)
    traj = Trajectory.from_arrays([mm, mm], labels=y)
    prof = collapse_profile(traj)
    _assert_matches_dense(prof.layers[1], ref)
    st = class_statistics(mm, y, block_size=5)
    np.testing.assert_allclose(
        st.basis.T @ ref["Sw"] @ st.basis, st.within_proj, rtol=1e-9, atol=1e-12
    )


@settings(max_examples=25, deadline=None)
@given(block=st.integers(1, 90), shift=st.floats(-1e4, 1e4), seed=st.integers(0, 10**6))
def test_block_size_does_not_change_results(block, shift, seed):
    X, y = _clusters([9, 30, 50], 4, seed=seed)
    X = X + shift
    whole = layer_collapse(X, y, block_size=len(X))
    parts = layer_collapse(X, y, block_size=block)
    for m, v in whole.metrics.items():
        assert _close(parts[m], v, 1e-10, atol=1e-12), (m, parts[m], v)


class _RowRecorder:
    """An array wrapper that records how many rows each read asks for."""

    def __init__(self, x):
        self.x, self.rows = x, []

    @property
    def shape(self):
        return self.x.shape

    def __len__(self):
        return len(self.x)

    def __getitem__(self, key):
        out = self.x[key]
        self.rows.append(len(out))
        return out


def test_streaming_never_reads_more_than_a_block(tmp_path):
    X, y = _clusters([40, 40, 40], 5, seed=8)
    np.save(tmp_path / "x.npy", X)
    rec = _RowRecorder(np.load(tmp_path / "x.npy", mmap_mode="r"))
    res = layer_collapse(rec, y, block_size=16)
    assert rec.rows and max(rec.rows) <= 16
    _assert_matches_dense(res, _dense(X, y))


def test_torch_float32_input():
    X, y = _clusters([20, 30, 25], 6, seed=9)
    X32 = X.astype(np.float32)
    ref = _dense(X32.astype(np.float64), y)
    _assert_matches_dense(
        layer_collapse(torch.from_numpy(X32), torch.from_numpy(y), block_size=8), ref
    )


# ------------------------------------------------------------------------------ OT view
def test_ot_view_hand_computed():
    # class 0 = {0, 6} (mean 3), class 1 = {5, 7} (mean 6); Tr Sigma_W = (9 + 9 + 1 + 1)/4 = 5.
    # W2^2 to (delta_3 + delta_6)/2: the monotone matching 0,5 -> 3 and 6,7 -> 6 costs
    # (9 + 4 + 0 + 1)/4 = 3.5 < 5.
    X = np.array([[0.0], [6.0], [5.0], [7.0]])
    res = layer_collapse(X, [0, 0, 1, 1], metrics=["w2sq_to_class_means", "tr_sigma_w"])
    assert _close(res["tr_sigma_w"], 5.0, 1e-12)
    assert _close(res["w2sq_to_class_means"], 3.5, 1e-12)
    # separated classes {0, 2}, {3, 5}: the own-mean coupling is optimal, W2^2 = Tr Sigma_W = 1
    X = np.array([[0.0], [2.0], [3.0], [5.0]])
    assert _close(w2sq_to_class_means(X, [0, 0, 1, 1]), 1.0, 1e-12)
    # the same in R^3, embedded and rotated: the orthogonal part is handled exactly
    Q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    X3 = np.concatenate([[[0.0, 6.0, 5.0, 7.0]], np.ones((2, 4))]).T @ Q
    assert _close(w2sq_to_class_means(X3, [0, 0, 1, 1]), 3.5, 1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ot_view_below_trace(seed):
    X, y = _clusters([10, 15, 12], 4, spread=1.5, sep=1.0, seed=seed)
    res = layer_collapse(X, y, metrics=["w2sq_to_class_means", "tr_sigma_w"])
    assert res["w2sq_to_class_means"] <= res["tr_sigma_w"] + 1e-12
    assert res["w2sq_to_class_means"] < res["tr_sigma_w"]  # overlapping classes: strictly


def test_ot_view_not_converged_warns_at_the_caller(monkeypatch):
    from otcollapse.collapse import metrics as metrics_module

    real = metrics_module.wasserstein

    def unconverged(*args, **kwargs):
        return dataclasses.replace(real(*args, **kwargs), converged=False)

    monkeypatch.setattr(metrics_module, "wasserstein", unconverged)
    X, y = _clusters([10, 15, 12], 4, seed=3)
    for call in (
        lambda: layer_collapse(X, y, metrics=["w2sq_to_class_means"], name="blk"),
        lambda: collapse_profile(Trajectory.from_arrays([X], labels=y, names=["blk"])),
    ):
        with pytest.warns(UserWarning, match="layer 'blk': the exact transport solver") as rec:
            res = call()
        assert rec[0].filename == __file__  # the warning points at the line that asked for it
        lc = res if not isinstance(res, CollapseProfile) else res.layers[0]
        assert lc.transport["converged"] is False


# ------------------------------------------------------------------------------ NC3 closed forms
def test_nc3_self_dual_and_antidual():
    X, y = etf_clusters(4, 5, 2.0, 0.3)
    M = np.stack([X[y == k].mean(0) for k in range(4)])  # centred already (ETF)
    assert abs(nc3(X, y, 3.0 * M)) < 1e-12
    assert _close(nc3(X, y, (-M, np.zeros(4))), 4.0, 1e-12)  # ||-2 M/||M|| ||^2 = 4


# ------------------------------------------------------------------------------ profiles
def test_profile_pfc_statistics_and_decay_closed_form():
    # layers = etf_clusters with the same means and sigma_l^2 = v_l / d, so Tr Sigma_W = v_l
    K, d, r = 3, 4, 2.0
    v = [3.0, 1.0, 2.0, 0.5]
    layers = [etf_clusters(K, d, r, math.sqrt(t / d))[0] for t in v]
    y = etf_clusters(K, d, r, 0.1)[1]
    prof = collapse_profile(Trajectory.from_arrays(layers, labels=y))
    st = prof.pfc["tr_sigma_w"]
    # by hand: 5 discordant pairs, 1 concordant -> tau = (1 - 5)/6; steps down, up, down -> 2/3
    assert st.kendall_tau == pytest.approx(-2 / 3)
    assert st.frac_non_increasing == pytest.approx(2 / 3)
    assert st.monotone is False and st.layers == (0, 1, 2, 3)
    # D = (K-1)^2 sigma^2 / r^2 exactly; a geometric sequence gives the rate back
    q = 0.3
    layers = [etf_clusters(K, d, r, 0.5 * q**l)[0] for l in range(5)]
    prof = collapse_profile(Trajectory.from_arrays(layers, labels=y), metrics=["he_su_d"])
    assert prof.decay.rate == pytest.approx(q**2, rel=1e-9)
    assert prof.decay.r2 == pytest.approx(1.0)
    assert prof.decay.layers == (0, 1, 2, 3, 4) and prof.decay.excluded == ()
    assert prof.pfc["he_su_d"].monotone is True


def test_profile_table_dict_and_classifier_last_layer_only():
    X, y, W, b = _imbalanced(seed=4)
    traj = Trajectory.from_arrays([X, 0.5 * X, 0.25 * X + 1], labels=y, classifier=(W, b))
    prof = collapse_profile(traj)
    assert isinstance(prof, CollapseProfile)
    rows = prof.table()
    assert [r["layer"] for r in rows] == [0, 1, 2] and rows[2]["name"] == "layer2"
    assert rows[0]["nc3"] is None and rows[1]["nc4_mismatch"] is None
    ref = _dense(0.25 * X + 1, y, W=W, b=b)
    assert _close(rows[2]["nc3"], ref["nc3"]) and _close(
        rows[2]["nc4_mismatch"], ref["nc4_mismatch"]
    )
    assert "nc3" not in prof.pfc and "nc1" in prof.pfc
    # NC1, D, NC1 tilde are scale- and shift-invariant: constant over these layers
    assert prof.pfc["nc1"].monotone is True
    d = prof.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["layers"][0]["cdnv_matrix"][0][0] is None  # NaN diagonal -> None
    text = prof.format_table()
    assert "nc1" in text and len(text.splitlines()) == 4
    # an explicit classifier overrides; a classifier-free trajectory just omits nc3
    assert "nc3" not in collapse_profile(traj.replace(classifier=None)).metrics


def test_undefined_metric_is_nan_with_note():
    X = np.array([[1.0, 0.0], [1.0, 2.0], [1.0, 0.5], [1.0, 1.5]])  # both class means (1, 1)
    res = layer_collapse(X, [0, 0, 1, 1], metrics=["nc1", "nc1_tilde", "cdnv", "nc4_ncc_error"])
    for m in ("nc1", "nc1_tilde", "cdnv"):
        assert math.isnan(res[m]) and m in res.notes
    # every sample is equidistant from the two (equal) means; the tie goes to the first class,
    # so class 1's two samples of four are misassigned
    assert res["nc4_ncc_error"] == 0.5
    with pytest.raises(ValueError, match="undefined"):
        nc1(X, [0, 0, 1, 1])
    prof = collapse_profile(Trajectory.from_arrays([X, 2 * X], labels=[0, 0, 1, 1]))
    assert prof.pfc["nc1"].layers == () and prof.pfc["nc1"].monotone is None
    assert prof.decay.rate is None and prof.decay.excluded == (0, 1)


def test_metric_registry_order_and_independence():
    assert METRICS == (
        "nc1",
        "he_su_d",
        "nc1_tilde",
        "cdnv",
        "nc2_equinorm",
        "nc2_equiangularity",
        "nc2_etf_distance",
        "nc3",
        "nc4_ncc_error",
        "nc4_mismatch",
        "tr_sigma_w",
        "tr_sigma_b",
        "w2sq_to_class_means",
    )
    X, y, W, b = _imbalanced(seed=6)
    full = layer_collapse(X, y, classifier=(W, b))
    assert tuple(full.metrics) == METRICS  # table order
    for m in METRICS:  # each metric alone gives the value it has among all the others
        assert layer_collapse(X, y, classifier=(W, b), metrics=[m, "tr_sigma_b"])[m] == full[m]
    # an undefined metric explains itself, and only itself
    X0 = np.array([[1.0, 0.0], [1.0, 2.0], [1.0, 0.5], [1.0, 1.5]])
    assert set(layer_collapse(X0, [0, 0, 1, 1], metrics=["nc1"]).notes) == {"nc1"}


def test_result_records():
    X, y, W, b = _imbalanced(seed=7)
    traj = Trajectory.from_arrays([X, 0.5 * X], labels=y, classifier=(W, b))
    prof = collapse_profile(traj)
    d = json.loads(json.dumps(prof.to_dict(), allow_nan=False))
    assert set(d) == {"metrics", "layers", "pfc", "decay", "conventions"}
    assert d["metrics"] == list(prof.metrics) and d["conventions"]["pinv_rtol"] == 1e-10
    assert set(d["layers"][1]) == {
        "name", "n_samples", "n_classes", "dim", "metrics", "notes", "cdnv_matrix", "classes",
        "class_counts", "rank_between", "rtol", "collapsed", "transport",
    }  # fmt: skip
    assert d["layers"][1]["metrics"]["nc3"] == pytest.approx(prof.layers[1]["nc3"])
    assert set(d["pfc"]["nc1"]) == {
        "metric", "layers", "kendall_tau", "p_value", "frac_non_increasing", "monotone",
    }  # fmt: skip
    assert set(d["decay"]) == {
        "rate", "slope", "intercept", "r2", "layers", "excluded", "note",
    }  # fmt: skip
    st = class_statistics(X, y)
    rec = json.loads(json.dumps(st.to_dict(), allow_nan=False))
    assert rec["n_classes"] == 3 and rec["dim"] == 7
    assert _close(rec["tr_sigma_w"], _dense(X, y)["tr_sigma_w"])


@pytest.mark.skipif(nc1.__doc__ is None, reason="docstrings stripped (python -OO)")
def test_plain_functions_document_every_parameter():
    import inspect

    import otcollapse.collapse as collapse

    for name in collapse.__all__:
        f = getattr(collapse, name)
        if not inspect.isfunction(f):
            continue
        # one entry per parameter, in the order of the signature, each with a type
        documented = re.findall(r"^\s*(\w+) : \S", f.__doc__.split("Returns\n")[0], flags=re.M)
        assert documented == list(inspect.signature(f).parameters), name


# ------------------------------------------------------------------------------ bad input
def test_bad_inputs_raise_helpful_errors():
    X, y = _clusters([5, 6, 7], 3)
    with pytest.raises(ValueError, match="K >= 2"):
        nc1(X, np.zeros(len(y), dtype=int))
    y1 = y.copy()
    y1[0] = 9  # class 9 has one sample
    for f in (nc1, cdnv, nc1_tilde, separation_fuzziness, w2sq_to_class_means):
        with pytest.raises(ValueError, match="fewer than two samples"):
            f(X, y1)
    nc2(X, y1)  # means only: a singleton class is fine
    nc4(X, y1)
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        nc3(X, y1, np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        nc4(X, y, logits=np.ones((len(y), 2)))
    Xn = X.copy()
    Xn[3, 1] = np.nan
    Xn[4, 0] = np.inf
    with pytest.raises(ValueError, match="1 NaN and 1 infinite"):
        nc1(Xn, y)
    with pytest.raises(ValueError, match="1 NaN"):
        nc2(torch.as_tensor(Xn), y)
    with pytest.raises(ValueError, match="one integer label per sample"):
        nc1(X, y[:-1])
    with pytest.raises(ValueError, match="integer"):
        nc1(X, y + 0.5)
    with pytest.raises(ValueError, match="2-D"):
        nc1(X[:, 0], y)
    with pytest.raises(ValueError, match="empty"):
        nc1(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="unknown collapse metric"):
        layer_collapse(X, y, metrics=["nc5"])
    with pytest.raises(ValueError, match="needs the classifier"):
        layer_collapse(X, y, metrics=["nc3"])
    with pytest.raises(ValueError, match=r"\(K, d\)"):
        nc3(X, y, np.ones((3, 4)))
    with pytest.raises(ValueError, match="negative"):
        nc1(X, y, weights=-np.ones(len(y)))
    with pytest.raises(ValueError, match="rtol"):
        layer_collapse(X, y, rtol=2.0)
    with pytest.raises(ValueError, match="need class labels"):
        collapse_profile(Trajectory.from_arrays([X]))
    with pytest.raises(ValueError, match="Trajectory"):
        collapse_profile(X)
    with pytest.raises(ValueError, match="fewer than two samples"):
        collapse_profile(Trajectory.from_arrays([X, X], labels=y1))
    prof = collapse_profile(Trajectory.from_arrays([X, X], labels=y1), metrics=["nc2_etf_distance"])
    assert len(prof.layers) == 2
    with pytest.raises(ValueError, match="needs a classifier"):
        collapse_profile(Trajectory.from_arrays([X], labels=y), metrics=["nc4_mismatch"])


def test_classifier_class_without_samples():
    X, y = _clusters([6, 7, 8], 3)
    W = np.random.default_rng(0).normal(size=(4, 3))  # row 3: a class absent from the data
    res = layer_collapse(X, y, classifier=W, metrics=["nc3", "nc4_mismatch"])
    assert math.isnan(res["nc3"]) and "[3]" in res.notes["nc3"]
    assert _close(
        res["nc4_mismatch"], np.mean(np.argmin(cdist(X, _means(X, y)), 1) != np.argmax(X @ W.T, 1))
    )
    with pytest.raises(ValueError, match="no samples"):
        nc3(X, y, W)


def _means(X, y):
    return np.stack([X[y == k].mean(0) for k in np.unique(y)])


@pytest.mark.parametrize("form", ["numpy", "torch", "list"])
def test_complex_features_are_refused_not_truncated(form):
    """Casting complex features to float64 would drop the imaginary part silently (issue 19)."""
    X, y = _clusters([5, 6, 7], 3)
    Z = X + 1j * X[::-1]
    Zin = {"numpy": Z, "torch": torch.as_tensor(Z), "list": Z.tolist()}[form]
    for f in (nc1, cdnv, nc1_tilde, nc2, w2sq_to_class_means):
        with pytest.raises(ValueError, match="complex values in features"):
            f(Zin, y)
    with pytest.raises(ValueError, match="complex values in weights"):
        nc1(X, y, weights=np.ones(len(y)) + 0j)
    with pytest.raises(ValueError, match="complex values in layer 'layer0'"):
        collapse_profile(Trajectory.from_arrays([Zin], labels=y))


def test_bad_parameters_name_themselves():
    X, y = _clusters([5, 6, 7], 3)
    traj = Trajectory.from_arrays([X, X], labels=y)
    for call, kind, match in [
        (lambda: nc1(X, y, rtol="1e-10"), TypeError, "rtol"),
        (lambda: nc1(X, y, rtol=math.nan), ValueError, "rtol"),
        (lambda: nc1(X, y, rtol=-0.1), ValueError, "rtol"),
        (lambda: collapse_profile(traj, rtol=1.0), ValueError, "rtol"),
        (lambda: nc1(X, y, block_size=0), ValueError, "block_size"),
        (lambda: nc1(X, y, block_size=2.5), TypeError, "block_size"),
        (lambda: collapse_profile(traj, block_size="8"), TypeError, "block_size"),
        (lambda: layer_collapse(X, y, metrics=3), TypeError, "metrics"),
    ]:
        with pytest.raises(kind, match=match):
            call()
