"""Tests for the generated image data set ``"shapes32"`` of otcollapse.data."""

import numpy as np
import pytest
import torch

from otcollapse.data import _shapes32, dataset_names, load_dataset

N = 2000  # small enough to draw in a fraction of a second, 150 + 50 images per class
OPTS = {"num_samples": N}


@pytest.fixture(scope="module")
def splits():
    train = load_dataset("shapes32", seed=0, **OPTS)
    return train, load_dataset("shapes32", split="test", seed=0, **OPTS)


def _rows(ds):
    return {r.tobytes() for r in ds.X.reshape(len(ds), -1).numpy()}


def _nearest_mean_accuracy(f_train, y_train, f_test, y_test):
    """Accuracy of the nearest-class-mean classifier (Euclidean) on features of shape (n, p)."""
    means = np.stack([f_train[y_train == k].mean(0) for k in range(10)])
    d2 = ((f_test[:, None, :] - means[None]) ** 2).sum(-1)
    return float((d2.argmin(1) == y_test).mean())


def test_shapes32_is_listed_and_has_cifars_shape(splits):
    tr, te = splits
    assert "shapes32" in dataset_names()
    assert tuple(tr.X.shape) == (1500, 3, 32, 32) and tuple(te.X.shape) == (500, 3, 32, 32)
    assert tr.X.dtype == torch.float32 and tr.y.dtype == torch.int64
    assert tr.input_shape == (3, 32, 32) and tr.n_classes == 10
    # equal classes, stratified split: every class in both splits, in equal numbers
    assert np.bincount(tr.y.numpy(), minlength=10).tolist() == [150] * 10
    assert np.bincount(te.y.numpy(), minlength=10).tolist() == [50] * 10
    prov = tr.provenance
    assert prov["dataset"] == "shapes32" and "not CIFAR" in prov["source"]
    assert prov["n_train"] == 1500 and prov["n_test"] == 500
    assert len(prov["options"]["classes"]) == 10 and prov["options"]["num_samples"] == N
    assert prov["options"]["noise"] == 0.08 and prov["options"]["clutter"] == 3


def test_shapes32_num_samples_rounds_down_to_equal_classes():
    ds = load_dataset("shapes32", seed=0, num_samples=47, test_size=0.5)
    te = load_dataset("shapes32", seed=0, num_samples=47, test_size=0.5, split="test")
    assert len(ds) + len(te) == 40
    assert np.bincount(np.concatenate([ds.y, te.y])).tolist() == [4] * 10


def test_shapes32_is_seeded(splits):
    tr, _ = splits
    again = load_dataset("shapes32", seed=0, **OPTS)
    assert torch.equal(tr.X, again.X) and torch.equal(tr.y, again.y)
    other = load_dataset("shapes32", seed=1, **OPTS)
    assert not torch.equal(tr.X, other.X)
    assert not _rows(tr) & _rows(other)


def test_shapes32_splits_are_complementary(splits):
    tr, te = splits
    assert not _rows(tr) & _rows(te)  # no image in both (the noise makes every image distinct)
    assert len(_rows(tr)) == len(tr) and len(_rows(te)) == len(te)
    # the two splits partition the whole drawing
    made = _shapes32(0, **OPTS)
    both = np.sort(np.concatenate([made["train"], made["test"]]))
    assert np.array_equal(both, np.arange(N))
    assert np.array_equal(made["X"][made["train"]], tr.X.numpy())
    assert np.array_equal(made["y"][made["test"]], te.y.numpy())


def test_shapes32_standardised_per_channel_with_train_statistics(splits):
    tr, te = splits
    norm = tr.provenance["normalisation"]
    assert norm["mode"] == "per-channel" and norm["of"] == "train split"
    assert te.provenance["normalisation"] == norm
    mean, std = np.asarray(norm["mean"]), np.asarray(norm["std"])
    assert mean.shape == (3,) and std.shape == (3,) and np.all(std > 0)
    X = tr.X.double()
    assert torch.allclose(X.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(X.std((0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64),
                          atol=1e-5)  # fmt: skip
    # undoing the recorded standardisation gives images in [0, 1] (they are clipped there)
    scale, shift = torch.as_tensor(std)[:, None, None], torch.as_tensor(mean)[:, None, None]
    for ds in (tr, te):
        raw = ds.X.double() * scale + shift
        assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    assert torch.all(te.X.double().mean((0, 2, 3)).abs() < 0.1)  # same distribution


def test_shapes32_classes_differ_in_structure_not_in_mean_colour(splits):
    tr, te = splits
    ytr, yte = tr.y.numpy(), te.y.numpy()

    def structure(ds):  # how far each pixel is from its image's mean colour: the figure's outline
        X = ds.X.double()
        return (X - X.mean((2, 3), keepdim=True)).abs().sum(1).reshape(len(ds), -1).numpy()

    def mean_colour(ds):
        return ds.X.double().mean((2, 3)).numpy()

    acc_pixels = _nearest_mean_accuracy(structure(tr), ytr, structure(te), yte)
    acc_colour = _nearest_mean_accuracy(mean_colour(tr), ytr, mean_colour(te), yte)
    # chance is 0.1; 500 test images put its standard error at 0.013
    assert acc_pixels > 0.2
    assert acc_colour < 0.16
    assert acc_pixels - acc_colour > 0.1


def test_shapes32_options_are_validated():
    with pytest.raises(ValueError, match=r"valid options: \['num_samples', 'test_size', 'noise'"):
        load_dataset("shapes32", size=32)
    with pytest.raises(ValueError, match="num_samples"):
        load_dataset("shapes32", num_samples=20)
    with pytest.raises(ValueError, match="noise"):
        load_dataset("shapes32", num_samples=100, noise=-0.1)
    with pytest.raises(TypeError, match="clutter"):
        load_dataset("shapes32", num_samples=100, clutter=1.5)
    with pytest.raises(ValueError, match="test_size"):
        load_dataset("shapes32", num_samples=100, test_size=1.0)


def test_shapes32_without_noise_or_clutter_and_subset():
    ds = load_dataset("shapes32", seed=3, num_samples=200, noise=0.0, clutter=0, n=50)
    assert len(ds) == 50 and np.bincount(ds.y.numpy()).tolist() == [5] * 10
    assert ds.provenance["subset"]["n"] == 50
    assert torch.isfinite(ds.X).all()
