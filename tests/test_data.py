"""Tests for otcollapse.data: built-in data sets, splits, user data."""

import numpy as np
import pytest
import torch

from otcollapse.data import (
    Dataset,
    dataset_names,
    from_arrays,
    from_folder,
    from_torch_dataset,
    load_dataset,
    mnist1d_templates,
)


def test_digits_shapes_split_and_standardisation():
    tr = load_dataset("digits", seed=0)
    te = load_dataset("digits", split="test", seed=0)
    assert tuple(tr.X.shape[1:]) == (1, 8, 8) and tr.X.dtype == torch.float32
    assert len(tr) + len(te) == 1797 and tr.n_classes == 10
    assert tr.provenance["n_train"] == len(tr) and tr.provenance["n_test"] == len(te)
    # standardised with training statistics: per-pixel mean 0, std 1 (or 0 for constant pixels)
    flat = tr.X.reshape(len(tr), -1).double()
    assert torch.allclose(flat.mean(0), torch.zeros(64, dtype=torch.float64), atol=1e-5)
    std = flat.std(0, unbiased=False)
    assert torch.all((torch.abs(std - 1) < 1e-4) | (std < 1e-6))
    # stratified: class proportions agree between the splits
    p_tr = np.bincount(tr.y.numpy()) / len(tr)
    p_te = np.bincount(te.y.numpy()) / len(te)
    assert np.abs(p_tr - p_te).max() < 0.01
    flat_ds = load_dataset("digits", flatten=True)
    assert tuple(flat_ds.X.shape) == (len(tr), 64)
    assert torch.equal(flat_ds.X, tr.X.reshape(len(tr), -1))


def test_splits_are_disjoint_and_seeded():
    a = load_dataset("digits", seed=1)
    b = load_dataset("digits", seed=1)
    c = load_dataset("digits", seed=2)
    assert torch.equal(a.X, b.X) and torch.equal(a.y, b.y)
    assert not torch.equal(a.y, c.y)
    te = load_dataset("digits", seed=1, split="test")
    rows_tr = {tuple(r) for r in a.X.reshape(len(a), -1).numpy().round(4).tolist()}
    rows_te = {tuple(r) for r in te.X.reshape(len(te), -1).numpy().round(4).tolist()}
    assert len(rows_tr & rows_te) <= 5  # digits has a handful of duplicate images


def test_gaussian_mixture_parameters_recorded_and_subset():
    ds = load_dataset("gaussian_mixture", n_classes=3, dim=5, n_per_class=40, seed=3)
    assert tuple(ds.X.shape) == (90, 5) and ds.n_classes == 3
    opts = ds.provenance["options"]
    assert opts["n_classes"] == 3 and np.array(opts["means"]).shape == (3, 5)
    assert np.allclose(np.linalg.norm(opts["means"], axis=1), opts["separation"])
    sub = load_dataset("gaussian_mixture", n_classes=3, dim=5, n_per_class=40, seed=3, n=30)
    assert len(sub) == 30 and np.bincount(sub.y.numpy()).tolist() == [10, 10, 10]
    assert sub.provenance["subset"]["n"] == 30


def test_mnist1d_templates_and_reference_values():
    tpl = mnist1d_templates()
    assert tpl["x"].shape == (10, 12)
    assert np.allclose(tpl["x"][:, 0], 0)  # signals start at zero
    tr = load_dataset("mnist1d", seed=42)
    te = load_dataset("mnist1d", seed=42, split="test")
    assert tuple(tr.X.shape) == (4000, 40) and len(te) == 1000
    # reference values of the mnist1d package's make_dataset(get_dataset_args()) (seed 42)
    ref_x0 = [
        -0.3320056674,
        -0.4719103657,
        -0.7786970763,
        -1.0097408265,
        -0.8823525654,
        0.1039348126,
    ]
    assert np.allclose(tr.X[0, :6].numpy(), ref_x0, atol=1e-5)
    assert tr.y[:12].tolist() == [2, 6, 4, 5, 6, 6, 6, 0, 3, 1, 6, 9]
    assert np.allclose(
        te.X[-1, -4:].numpy(), [0.4472328851, 0.6598756471, 0.8777343498, 1.1931518368], atol=1e-5
    )
    assert tuple(load_dataset("mnist1d", channels=True, num_samples=200).X.shape) == (160, 1, 40)


def test_mnist1d_matches_the_package_when_installed(monkeypatch):
    import importlib.util
    import sys
    import types

    if importlib.util.find_spec("mnist1d") is None:
        pytest.skip("the mnist1d package is not installed")
    if importlib.util.find_spec("requests") is None:  # imported by mnist1d.data, unused here
        monkeypatch.setitem(sys.modules, "requests", types.ModuleType("requests"))
    data = pytest.importorskip("mnist1d.data")
    ref = data.make_dataset(data.get_dataset_args())
    tr = load_dataset("mnist1d", seed=42)
    assert np.allclose(ref["x"], tr.X.numpy(), atol=1e-5)
    assert np.array_equal(ref["y"], tr.y.numpy())


def test_unknown_names_and_options():
    with pytest.raises(ValueError, match="digits"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", split="val")
    with pytest.raises(ValueError, match="unknown option"):
        load_dataset("digits", n_classes=3)
    with pytest.raises(ValueError, match="n must be"):
        load_dataset("digits", n=0)
    assert set(dataset_names()) == {"digits", "gaussian_mixture", "mnist1d", "shapes32"}


def test_from_arrays_validates():
    ds = from_arrays(np.arange(12.0).reshape(6, 2), [0, 1, 2, 0, 1, 2], name="toy")
    assert isinstance(ds, Dataset) and ds.n_classes == 3 and ds.X.dtype == torch.float32
    with pytest.raises(ValueError, match="empty"):
        from_arrays(np.zeros((0, 3)), [])
    with pytest.raises(ValueError, match="labels for"):
        from_arrays(np.zeros((4, 3)), [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        from_arrays(np.full((2, 2), np.nan), [0, 1])
    with pytest.raises(ValueError, match="integer"):
        from_arrays(np.zeros((2, 2)), [0.5, 1])


def test_from_folder_npz_and_images(tmp_path):
    X = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    y = np.arange(10) % 2
    np.savez(tmp_path / "d.npz", X=X, y=y)
    ds = from_folder(tmp_path / "d.npz")
    assert np.array_equal(ds.X.numpy(), X) and ds.name == "d"
    np.savez(tmp_path / "bad.npz", a=X)
    with pytest.raises(ValueError, match="needs 'X'"):
        from_folder(tmp_path / "bad.npz")
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((4, 5), 60 * i, dtype=np.uint8)).save(
                tmp_path / "img" / cls / f"{i}.png"
            )
    imgs = from_folder(tmp_path / "img", grayscale=True)
    assert tuple(imgs.X.shape) == (4, 1, 4, 5) and imgs.y.tolist() == [0, 0, 1, 1]
    assert imgs.provenance["classes"] == ["cat", "dog"]
    with pytest.raises(ValueError, match="does not exist"):
        from_folder(tmp_path / "nope")


def test_from_torch_dataset_and_loader_is_seeded():
    X, y = torch.randn(20, 3), torch.arange(20) % 4
    ds = from_torch_dataset(torch.utils.data.TensorDataset(X, y))
    assert torch.equal(ds.X, X) and torch.equal(ds.y, y)
    a = [b[1].tolist() for b in ds.loader(8, seed=5)]
    b = [b[1].tolist() for b in ds.loader(8, seed=5)]
    assert a == b
