"""Trajectory and LayerMeasure: construction, validation, segments, subsampling, projection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from otcollapse import Trajectory, wasserstein


def make(dims=(4, 4, 8, 8, 8, 2), n=30, seed=0, **kw):
    g = np.random.default_rng(seed)
    layers = [g.normal(size=(n, d)) for d in dims]
    labels = np.repeat(np.arange(3), n // 3)
    return Trajectory.from_arrays(layers, labels=labels, **kw)


def test_basic_protocol(as_input):
    g = np.random.default_rng(0)
    layers = [as_input(g.normal(size=(6, 3))) for _ in range(3)]
    traj = Trajectory.from_arrays(layers, labels=[0, 0, 1, 1, 2, 2], names=["in", "b1", "b2"])
    assert len(traj) == 3 and traj.n_steps == 2 and traj.n_samples == 6
    assert traj.names == ("in", "b1", "b2") and traj.n_classes == 3
    assert traj[1].name == "b1" and traj[-1].name == "b2" and traj[0].dim == 3
    assert [m.name for m in traj] == ["in", "b1", "b2"]
    assert np.allclose(traj.masses(), 1 / 6)
    assert "n=6" in repr(traj)


def test_default_names_and_segments():
    traj = make()
    assert traj.names[:2] == ("layer0", "layer1")
    assert traj.segments == (range(0, 2), range(2, 5), range(5, 6))
    assert traj.dims == (4, 4, 8, 8, 8, 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layers": []}, "at least one layer"),
        ({"layers": [np.zeros((0, 2))]}, "no samples"),
        ({"layers": [np.zeros(5)]}, "2-D"),
        ({"layers": [np.zeros((5, 2)), np.zeros((4, 2))]}, "'layer1' has 4 samples"),
        (
            {"layers": [np.zeros((3, 2)), np.array([[np.nan, 1], [np.inf, 2], [np.nan, 0]])]},
            "'layer1' contains 2 NaN and 1 infinite",
        ),
        ({"layers": [np.zeros((3, 2))], "labels": [0, 1]}, "labels have length 2"),
        ({"layers": [np.zeros((3, 2))], "labels": [0.5, 1, 1]}, "integers"),
        ({"layers": [np.zeros((3, 2))], "weights": [0.5, 0.6, -0.1]}, "non-negative"),
        ({"layers": [np.zeros((3, 2))], "weights": [0.5, 0.6, 0.1]}, "sum to 1.2"),
        ({"layers": [np.zeros((3, 2))], "names": ["a", "b"]}, "2 names given for 1 layers"),
        ({"layers": [np.zeros((3, 2))] * 2, "names": ["a", "a"]}, "unique"),
    ],
)
def test_validation_errors_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Trajectory.from_arrays(**kwargs)


def test_memmap_layers_stay_mapped_and_are_scanned(tmp_path):
    path = tmp_path / "layer.dat"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(20000, 3))
    mm[:] = 1.0
    mm[19999, 2] = np.nan  # in the last scan block
    mm.flush()
    ro = np.load(path, mmap_mode="r")
    with pytest.raises(ValueError, match="1 NaN"):
        Trajectory.from_arrays([ro])
    mm[19999, 2] = 0.0
    mm.flush()
    traj = Trajectory.from_arrays([np.load(path, mmap_mode="r")])
    assert isinstance(traj.layers[0], np.memmap)


def test_weights_and_class_measure():
    w = np.array([0.1, 0.2, 0.3, 0.4])
    traj = Trajectory.from_arrays([np.arange(8.0).reshape(4, 2)], labels=[0, 1, 0, 1], weights=w)
    cm = traj.class_measure(0, 1)
    assert np.array_equal(cm.points, [[2, 3], [6, 7]])
    assert np.allclose(cm.weights, [0.2 / 0.6, 0.4 / 0.6])
    with pytest.raises(ValueError, match="class 5 has no samples"):
        traj.class_measure(0, 5)


def test_shortcut_steps_are_measured_in_the_output_space():
    g = np.random.default_rng(1)
    h0 = g.normal(size=(50, 3))
    P = g.normal(size=(3, 5))
    h1 = h0 @ P + 0.1 * g.normal(size=(50, 5))
    traj = Trajectory.from_arrays([h0, h1], shortcuts={0: h0 @ P})
    src, dst = traj.step_measures(0)
    assert src.dim == dst.dim == 5 and np.allclose(src.points, h0 @ P)
    no_sc = Trajectory.from_arrays([h0, h1])
    with pytest.raises(ValueError, match=r"gromov.*project"):
        no_sc.step_measures(0)
    with pytest.raises(ValueError, match=r"must be \(n, d_\{l\+1\}\)"):
        Trajectory.from_arrays([h0, h1], shortcuts={0: h0})
    with pytest.raises(ValueError, match=r"only steps 0\.\.0 exist"):
        Trajectory.from_arrays([h0, h1], shortcuts={1: h0 @ P})


def test_subsample_is_stratified_and_seeded():
    labels = np.repeat([0, 1, 2], [10, 30, 60])
    traj = Trajectory.from_arrays([np.random.default_rng(0).normal(size=(100, 2))], labels=labels)
    sub = traj.subsample(20, seed=3)
    assert sub.n_samples == 20
    assert np.array_equal(np.bincount(sub.labels), [2, 6, 12])
    assert np.array_equal(traj.subsample_indices(20, 3), traj.subsample_indices(20, 3))
    assert not np.array_equal(traj.subsample_indices(20, 3), traj.subsample_indices(20, 4))
    assert sub.metadata["subsample"] == {"n": 20, "of": 100, "seed": 3, "stratified": True}
    # every class keeps at least one sample when n allows it
    tiny = traj.subsample_indices(3, seed=0)
    assert sorted(labels[tiny]) == [0, 1, 2]


def test_take_renormalises_weights():
    w = np.array([0.1, 0.2, 0.3, 0.4])
    traj = Trajectory.from_arrays([np.eye(4)], weights=w)
    sub = traj.take([1, 3])
    assert np.allclose(sub.weights, [1 / 3, 2 / 3])


def test_project_random_shares_one_map_per_dimension():
    traj = make(dims=(8, 8, 16, 3))
    proj = traj.project(8, method="random", seed=0)
    assert proj.dims == (8, 8, 8, 8)
    # dimension 8 untouched, dimension 3 zero-padded: distances preserved exactly
    assert np.array_equal(proj.layers[0], traj.layers[0])
    assert np.allclose(proj.layers[3][:, :3], traj.layers[3]) and np.all(proj.layers[3][:, 3:] == 0)
    # a trajectory whose two 16-d layers are equal stays at W2 = 0 after projection
    twin = Trajectory.from_arrays([traj.layers[2], traj.layers[2]]).project(4, seed=2)
    assert wasserstein(twin.layers[0], twin.layers[1]).cost == pytest.approx(0, abs=1e-12)
    assert proj.metadata["projection"] == {"dim": 8, "method": "random", "seed": 0}


def test_project_pca_keeps_the_top_principal_subspace():
    g = np.random.default_rng(2)
    low = g.normal(size=(200, 2)) * [5.0, 3.0]
    x = np.hstack([low, 1e-3 * g.normal(size=(200, 4))])
    traj = Trajectory.from_arrays([x, 2 * x])
    proj = traj.project(2, method="pca")
    # the projection is an isometry on the dominant plane: pairwise distances nearly unchanged
    d_orig = np.linalg.norm(x[:, None] - x[None], axis=-1)
    d_proj = np.linalg.norm(proj.layers[0][:, None] - proj.layers[0][None], axis=-1)
    assert np.allclose(d_orig, d_proj, atol=1e-2)
    with pytest.raises(ValueError, match="unknown projection"):
        traj.project(2, method="umap")


def test_to_device_gives_tensors():
    traj = make(dims=(3, 3)).to("cpu", dtype=torch.float32)
    assert all(isinstance(x, torch.Tensor) and x.dtype == torch.float32 for x in traj.layers)


def test_take_layers_keeps_consecutive_shortcuts():
    g = np.random.default_rng(3)
    h = [g.normal(size=(5, 2)), g.normal(size=(5, 4)), g.normal(size=(5, 4))]
    traj = Trajectory.from_arrays(h, shortcuts={0: g.normal(size=(5, 4))})
    assert 0 in traj.take_layers([0, 1]).shortcuts
    assert traj.take_layers([1, 2]).shortcuts == {}


@pytest.mark.parametrize("as_tensor", [False, True])
def test_finite_values_whose_sum_overflows_pass_and_bad_values_are_counted(as_tensor):
    """The NaN/inf check sums each block first (NaN and inf propagate through a sum): a finite
    layer whose float32 sum overflows must still pass, and a bad value still be counted."""
    big = np.full((4, 2), 3e38, dtype=np.float32)  # sum overflows float32 to inf
    layer = torch.as_tensor(big) if as_tensor else big
    assert Trajectory.from_arrays([layer]).n_samples == 4
    bad = big.copy()
    bad[1, 1], bad[2, 0] = -np.inf, np.nan
    with pytest.raises(ValueError, match="1 NaN and 1 infinite"):
        Trajectory.from_arrays([torch.as_tensor(bad) if as_tensor else bad])


@pytest.mark.parametrize("form", ["numpy", "torch", "list"])
def test_complex_values_are_refused_by_name(form):
    g = np.random.default_rng(4)
    x = g.normal(size=(6, 2))
    z = x + 1j * g.normal(size=(6, 2))
    zin = {"numpy": z, "torch": torch.as_tensor(z), "list": z.tolist()}[form]
    with pytest.raises(ValueError, match="complex values in layer 'b1'"):
        Trajectory.from_arrays([x, zin], names=["in", "b1"])
    with pytest.raises(ValueError, match="complex values in weights"):
        Trajectory.from_arrays([x], weights=np.full(6, 1 / 6) + 0j)
    with pytest.raises(ValueError, match="complex values in logits"):
        Trajectory.from_arrays([x], logits=zin)
    with pytest.raises(ValueError, match="complex values in classifier W"):
        Trajectory.from_arrays([x], classifier=(zin[:2] if form != "list" else z[:2], None))
    with pytest.raises(ValueError, match="complex values in labels"):
        Trajectory.from_arrays([x], labels=np.arange(6) + 0j)


def test_to_subsample_and_project_refuse_bad_parameters():
    traj = make(dims=(3, 3))
    with pytest.raises(TypeError, match="dtype"):
        traj.to("cpu", dtype=torch.int64)
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        traj.to("gpu")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        traj[0].tensor(device="gpu")
    with pytest.raises(TypeError, match="subsample size"):
        traj.subsample(10.0)
    with pytest.raises(TypeError, match="dim"):
        traj.project(2.5)
    with pytest.raises(ValueError, match="dim"):
        traj.project(0)
