"""Constructions: exact properties of the known-answer data."""

from __future__ import annotations

import numpy as np
import pytest

from otcollapse.constructions import discrete_geodesic, etf_clusters, simplex_etf, transparent_model


@pytest.mark.parametrize(
    ("K", "d", "seed"), [(2, 1, 0), (3, 2, None), (4, 6, 1), (10, 10, 2), (5, 40, 3)]
)
def test_simplex_etf_gram(K, d, seed):
    M = simplex_etf(K, d, seed)
    assert M.shape == (d, K)
    gram = M.T @ M
    assert np.allclose(gram, K / (K - 1) * (np.eye(K) - 1 / K), atol=1e-12)
    assert np.allclose(M.sum(1), 0, atol=1e-12)


def test_simplex_etf_needs_room():
    with pytest.raises(ValueError, match="d >= K - 1"):
        simplex_etf(5, 3)
    with pytest.raises(ValueError, match="K >= 2"):
        simplex_etf(1)


def test_etf_clusters_within_class_covariance_is_isotropic():
    X, y = etf_clusters(K=4, d=6, r=3.0, sigma=0.5)
    assert X.shape == (48, 6) and np.array_equal(np.bincount(y), [12] * 4)
    means = np.stack([X[y == k].mean(0) for k in range(4)])
    assert np.allclose(np.linalg.norm(means, axis=1), 3.0)
    resid = X - means[y]
    assert np.allclose(resid.T @ resid / len(X), 0.25 * np.eye(6), atol=1e-12)


def test_transparent_model_moves_on_straight_lines():
    g = np.random.default_rng(0)
    x = g.normal(size=(30, 5))
    y = np.arange(30) % 3
    traj = transparent_model(x, y, n_layers=4)
    M = simplex_etf(3, 5, 0)
    assert len(traj) == 5
    assert np.allclose(traj.layers[0], x) and np.allclose(traj.layers[-1], M[:, y].T)
    assert np.allclose(traj.layers[2], 0.5 * (x + M[:, y].T))


def test_discrete_geodesic_layers_and_validation():
    g = np.random.default_rng(1)
    x0, x1 = g.normal(size=(6, 2)), g.normal(size=(6, 2))
    s = np.array([1, 0, 2, 3, 5, 4])
    traj = discrete_geodesic(x0, x1, s, n_layers=3)
    assert np.allclose(traj.layers[1], (2 * x0 + x1[s]) / 3)
    with pytest.raises(ValueError, match="permutation"):
        discrete_geodesic(x0, x1, [0, 0, 1, 2, 3, 4], 2)


@pytest.mark.parametrize(("kind", "expected"), [("random_walk", np.sqrt(6)), ("unrelated", 6.0)])
def test_null_trajectories_have_the_line_shape_scores_of_no_structure(kind, expected):
    """Random-walk tracks: LSS -> sqrt(L); unrelated layers: LSS -> L (large d, L = 6)."""
    from otcollapse.constructions import null_trajectory
    from otcollapse.geodesic import lss

    traj = null_trajectory(kind, 400, 1024, 7, seed=3)
    assert lss(traj).mean == pytest.approx(expected, rel=0.02)
    with pytest.raises(ValueError, match="unknown null"):
        null_trajectory("walk", 10, 2, 3)
