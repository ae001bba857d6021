"""Gauge alignment (#21): a change of basis between layers leaves the network's function unchanged;
after alignment it leaves the geometry unchanged too."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group, special_ortho_group

from otcollapse import Trajectory, compare_trajectories, geodesic_test, lss, ots, transport_profile
from otcollapse.geodesic import align_trajectory, procrustes

RNG = np.random.default_rng(0)
X = RNG.normal(size=(120, 5))
Y = np.repeat(np.arange(4), 30)
C = 1.5 * RNG.normal(size=5)  # the geodesic's direction: layer l is X + l C


def _rotated_geodesic(n_layers: int = 5) -> Trajectory:
    """A translation geodesic whose every layer is expressed in its own random basis."""
    layers = [(X + l * C) @ ortho_group.rvs(5, random_state=l + 1) for l in range(n_layers)]
    return Trajectory.from_arrays(layers, labels=Y)


def test_procrustes_recovers_a_known_rotation():
    R = special_ortho_group.rvs(5, random_state=3)
    assert np.allclose(procrustes(X, X @ R + 7.0), R, atol=1e-12)
    w = RNG.uniform(0.5, 2.0, size=120)
    assert np.allclose(procrustes(X, X @ R - 1.0, weights=w / w.sum()), R, atol=1e-12)
    with pytest.raises(ValueError, match="one shape"):
        procrustes(X, X[:, :4])


def test_a_pure_change_of_basis_is_a_geodesic_after_alignment_and_not_before():
    traj = _rotated_geodesic()
    raw = geodesic_test(traj).segments[0]
    assert raw.path_ratio > 1.5 and raw.ots < 0.5 and raw.lss.mean > 1.5
    rep = geodesic_test(traj, gauge="orthogonal")
    seg = rep.segments[0]
    assert seg.path_ratio == pytest.approx(1.0, abs=1e-9)
    assert seg.ots == 1.0 and seg.lss.mean == pytest.approx(1.0, abs=1e-9)
    assert seg.mccann.max_residual == pytest.approx(0.0, abs=1e-6)
    # each aligned step is the translation by C: W2 = |C| exactly, at efficiency 1
    prof = transport_profile(traj, gauge="orthogonal")
    assert np.allclose(prof.distances, np.linalg.norm(C), rtol=1e-9)
    assert np.allclose([r.efficiency for r in prof.rows], 1.0, rtol=1e-9)
    assert prof.metadata["gauge"]["gauge"] == "orthogonal"
    # the alignment's own size: the rotation removed the change of basis, down to |C|^2
    al = rep.gauge
    assert al.layers == (1, 2, 3, 4)
    assert np.allclose(al.paired_after, np.sum(C**2), rtol=1e-9)
    assert all(b > a for b, a in zip(al.paired_before, al.paired_after, strict=True))


def test_alignment_does_not_see_a_rotation_of_one_layer():
    traj = _rotated_geodesic()
    layers = list(traj.layers)
    layers[2] = layers[2] @ ortho_group.rvs(5, random_state=99)
    other = Trajectory.from_arrays(layers, labels=Y)
    a = geodesic_test(traj, gauge="orthogonal").segments[0]
    b = geodesic_test(other, gauge="orthogonal").segments[0]
    assert b.path_ratio == pytest.approx(a.path_ratio, rel=1e-9)
    assert b.lss.mean == pytest.approx(a.lss.mean, rel=1e-9)
    # without alignment it does
    assert geodesic_test(other).segments[0].path_ratio != pytest.approx(
        geodesic_test(traj).segments[0].path_ratio, rel=1e-3
    )


def test_the_affine_gauge_removes_invertible_affine_maps_and_the_orthogonal_one_does_not():
    g = np.random.default_rng(5)
    layers = [(X + l * C) @ g.normal(size=(5, 5)) + g.normal(size=5) for l in range(4)]
    traj = Trajectory.from_arrays(layers, labels=Y)
    aligned, rec = align_trajectory(traj, "affine")
    for h in aligned.layers:  # whitened: mean 0, covariance I, and all the same points
        assert np.allclose(h.mean(0), 0, atol=1e-10)
        assert np.allclose(np.cov(h.T, bias=True), np.eye(5), atol=1e-9)
        assert np.allclose(h, aligned.layers[0], atol=1e-8)
    assert rec.ranks == (5, 5, 5, 5)
    assert np.allclose(transport_profile(traj, gauge="affine").distances, 0.0, atol=1e-6)
    assert np.all(transport_profile(traj, gauge="orthogonal").distances > 0.1)


def test_a_rank_deficient_layer_is_whitened_on_its_span():
    h = np.hstack([X[:, :3], X[:, :3] @ np.ones((3, 2))])  # rank 3 in 5 dimensions
    _, rec = align_trajectory(Trajectory.from_arrays([h, h + 1.0], labels=Y), "affine")
    assert rec.ranks == (3, 3)


def test_ots_lss_and_compare_take_the_gauge():
    R = ortho_group.rvs(5, random_state=7)
    assert ots(X, X @ R) < 0.5
    assert ots(X, X @ R, gauge="orthogonal") == 1.0
    tracks = [X, (X + C) @ R, (X + 2 * C) @ R.T]
    assert lss(tracks).mean > 1.2
    assert lss(tracks, gauge="orthogonal").mean == pytest.approx(1.0, abs=1e-9)
    a = _rotated_geodesic(3)
    b = Trajectory.from_arrays([h @ R for h in a.layers], labels=Y)
    raw = compare_trajectories(a, b, noise_floor=False)
    assert max(r.distance for r in raw.layers) > 0.5
    cmp = compare_trajectories(a, b, noise_floor=False, gauge="orthogonal")
    assert max(r.distance for r in cmp.layers) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("bad", ["rotation", None, 1])
def test_an_unknown_gauge_is_refused(bad):
    with pytest.raises(ValueError, match="unknown gauge"):
        geodesic_test(_rotated_geodesic(3), gauge=bad)


def test_end_to_end_efficiency_is_optimal_over_paired_cost_with_an_interval():
    """OTS's continuous companion: W2^2(first, last) / paired cost, checked against an
    independent assignment; 1 for the translation, below 1 for the rotated layers, and its
    subsampling interval brackets it."""
    from scipy.optimize import linear_sum_assignment

    traj = _rotated_geodesic(4)
    first, last = traj.layers[0], traj.layers[-1]
    cost = ((first[:, None, :] - last[None, :, :]) ** 2).sum(-1)
    r, c = linear_sum_assignment(cost)
    expected = cost[r, c].mean() / ((last - first) ** 2).sum(1).mean()
    rep = geodesic_test(traj, n_boot=20, seed=1)
    seg = rep.segments[0]
    assert seg.efficiency == pytest.approx(expected, rel=1e-9) and seg.efficiency < 0.99
    assert seg.ots < 0.5  # OTS near 0 while the map costs only a few % more than the optimum
    lo, hi = seg.ci["efficiency"]
    assert 0 < lo <= hi <= 1
    aligned = geodesic_test(traj, gauge="orthogonal").segments[0]
    assert aligned.efficiency == pytest.approx(1.0, rel=1e-9)
    assert rep.to_dict()["segments"][0]["efficiency"] == seg.efficiency
