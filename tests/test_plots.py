"""Figures: what is drawn is the data (not only that a figure appears), with labels and legends."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from otcollapse import Trajectory, collapse_profile, geodesic_test, transport_profile
from otcollapse.constructions import discrete_geodesic, etf_clusters, transparent_model
from otcollapse.plots import (
    plot_collapse_depth,
    plot_collapse_epochs,
    plot_layer_pca,
    plot_mccann_fit,
    plot_ots_lss,
    plot_transport_steps,
)


def _labelled(fig: Figure) -> None:
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()


def _scaled_clusters(scales):
    """Same class means at every layer, within-class spread scaled: NC1 ∝ scale²."""
    X, y = etf_clusters(3, 4, r=3.0, sigma=1.0)
    means = np.stack([X[y == k].mean(0) for k in range(3)])[y]
    return Trajectory.from_arrays([means + s * (X - means) for s in scales], labels=y)


def test_collapse_depth_marks_exactly_the_increasing_steps():
    traj = _scaled_clusters([1.0, 0.5, 0.8, 0.2])
    prof = collapse_profile(traj)
    fig = plot_collapse_depth({"net": prof}, "nc1")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    line, marks = ax.lines[0], ax.lines[1]
    np.testing.assert_allclose(line.get_ydata(), prof.values("nc1"))
    assert list(marks.get_xdata()) == [2]  # 0.5² → 0.8²: the only rise
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "2/3 steps non-increasing" in labels[0] and "increase" in labels[-1]
    _labelled(fig)


def test_collapse_depth_says_what_a_log_scale_cannot_draw():
    rng = np.random.default_rng(0)
    traj = transparent_model(rng.normal(size=(60, 5)), np.arange(60) % 3, n_layers=3)
    fig = plot_collapse_depth(collapse_profile(traj), "tr_sigma_w")
    ax = fig.axes[0]
    assert "1 exactly-collapsed value(s) not drawn" in ax.get_title()
    assert len(ax.lines[0].get_xdata()) == 3  # the collapsed last layer is left out


def test_collapse_epochs_draws_first_and_last_layer_per_model():
    profs = {e: collapse_profile(_scaled_clusters([1.0, 1.0 / (e + 1)])) for e in range(3)}
    fig = plot_collapse_epochs({"a": profs, "b": profs}, "nc1")
    ax = fig.axes[0]
    assert len(ax.lines) == 4
    last = ax.lines[1].get_ydata()
    np.testing.assert_allclose(last / last[0], [1.0, 1 / 4, 1 / 9])
    _labelled(fig)


def test_transport_steps_and_mccann_fit_on_an_exact_geodesic():
    rng = np.random.default_rng(1)
    x0, x1 = rng.normal(size=(40, 3)), rng.normal(size=(40, 3)) + 2.0
    from otcollapse import wasserstein

    sigma = wasserstein(x0, x1, method="assignment").assignment
    traj = discrete_geodesic(x0, x1, sigma, n_layers=4, labels=np.arange(40) % 2)
    rep = geodesic_test(traj)
    fig = plot_mccann_fit({"geodesic": rep})
    pts = fig.axes[0].lines[1]
    np.testing.assert_allclose(pts.get_ydata(), pts.get_xdata(), atol=1e-6)  # t_l = l/L
    prof = transport_profile(traj)
    fig = plot_transport_steps({"g": prof})
    left, right = fig.axes
    np.testing.assert_allclose(left.lines[0].get_ydata(), [r.cost for r in prof.rows])
    np.testing.assert_allclose(right.lines[-1].get_ydata(), 1.0, atol=1e-9)  # optimal steps
    _labelled(fig)


def test_ots_lss_bars_are_the_scores():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 4))
    y = np.arange(50) % 2
    straight = transparent_model(x, y, n_layers=3)
    shuffled = Trajectory.from_arrays(
        [x, rng.permutation(x) + 0.1, rng.normal(size=(50, 4))], labels=y
    )
    reps = {"straight": geodesic_test(straight), "shuffled": geodesic_test(shuffled)}
    fig = plot_ots_lss(reps)
    bars = [p.get_height() for p in fig.axes[0].patches]
    assert bars == pytest.approx([r.segments[0].ots for r in reps.values()])
    _labelled(fig)


def test_layer_pca_panels_and_dimension_check():
    traj = _scaled_clusters([1.0, 0.5, 0.2])
    fig = plot_layer_pca(traj, layers=[0, 1, 2], n_tracks=5)
    assert len(fig.axes) == 3
    # shared principal axes: the collapsing spread shows as shrinking scatter extents
    spreads = [np.ptp(ax.collections[0].get_offsets(), axis=0).max() for ax in fig.axes]
    assert spreads[0] > spreads[1] > spreads[2]
    mixed = Trajectory.from_arrays([np.ones((6, 2)), np.ones((6, 3))], labels=np.arange(6) % 2)
    with pytest.raises(ValueError, match="dimensions"):
        plot_layer_pca(mixed, layers=[0, 1])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="CollapseProfile"):
        plot_collapse_depth("nc1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="series must map"):
        plot_collapse_epochs({})
