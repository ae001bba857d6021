"""Built-in data sets (nothing is downloaded) and user data sets, as small labelled tensors.

Every loader returns a :class:`Dataset`: inputs ``X`` (float32 tensor), integer labels ``y``
(int64 tensor), the data set's name, the split (``"train"`` or ``"test"``) and a JSON-safe
``provenance`` record that says how the data were made (generator parameters, seed, split sizes,
normalisation statistics), so a captured :class:`~otcollapse.measures.Trajectory` can say where its
samples came from.

Built-in data sets (:func:`load_dataset`):

- ``"digits"``: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), standardised per
  pixel with the training split's statistics; ``X`` has shape (N, 1, 8, 8), or (N, 64) with
  ``flatten=True``.
- ``"gaussian_mixture"``: ``K`` Gaussian classes in ``R^d`` with seeded means; standardised with the
  training statistics.
- ``"mnist1d"``: MNIST-1D (Greydanus 2020), generated locally from the published 12-point digit
  templates and transforms (pad, dilate, scale, translate, correlated and i.i.d. noise, shear,
  subsample to 40 points); ``X`` has shape (N, 40), or (N, 1, 40) with ``channels=True``. With
  ``seed=42`` and the default options it reproduces the ``mnist1d`` package's ``make_dataset``
  output (the package seeds NumPy's global state; here a private ``RandomState`` replays the same
  stream).

- ``"shapes32"``: 32x32 RGB images of ten procedurally drawn figures (disc, ring, square,
  triangle, cross, horizontal and vertical stripes, checkerboard, gradient, dots) with random
  pose, colours, texture, clutter and noise; ``X`` has shape (N, 3, 32, 32), standardised per
  channel with the training split's statistics. CIFAR's shape without a download, so a staged
  ResNet-18 runs anywhere; it is not CIFAR and its numbers say nothing about CIFAR's.

User data: :func:`from_arrays` (arrays or tensors), :func:`from_torch_dataset` (any map-style torch
Dataset yielding ``(x, y)``) and :func:`from_folder` (a ``.npz`` file with arrays ``X``/``y``, or an
image folder ``root/<class>/<image>`` read with Pillow).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from otcollapse._resampling import stratified_indices
from otcollapse._utils import ArrayLike, rng, to_numpy
from otcollapse._validation import check_int, check_labels, check_real

__all__ = [
    "Dataset",
    "dataset_names",
    "from_arrays",
    "from_folder",
    "from_torch_dataset",
    "load_dataset",
    "mnist1d_templates",
]

_SPLITS = ("train", "test")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A labelled data set held in memory as tensors.

    Attributes
    ----------
    X : Tensor, shape (N, ...)
        Inputs, float32 (images are (N, C, H, W), vectors (N, d)).
    y : Tensor of int64, shape (N,)
        Class labels ``0..K-1``.
    name : str
    split : str
        ``"train"``, ``"test"`` or whatever the user called it.
    provenance : dict
        JSON-safe record of how the data were made (generator, parameters, seed, split).
    """

    X: torch.Tensor
    y: torch.Tensor
    name: str = "user"
    split: str = "train"
    provenance: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        X, y = _check_xy(self.X, self.y, self.name)
        object.__setattr__(self, "X", X)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "provenance", dict(self.provenance))

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, split={self.split!r}, n={len(self)}, "
            f"input_shape={self.input_shape}, K={self.n_classes})"
        )

    @property
    def n_classes(self) -> int:
        """Number of classes ``K = max(y) + 1``."""
        return int(self.y.max()) + 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input (without the sample axis)."""
        return tuple(int(s) for s in self.X.shape[1:])

    @property
    def n_features(self) -> int:
        """Number of input features (product of :attr:`input_shape`)."""
        return int(np.prod(self.input_shape))

    def flatten(self) -> Dataset:
        """The same data with every input flattened to a vector, shape (N, n_features)."""
        return dataclasses.replace(self, X=self.X.reshape(len(self), -1))

    def take(self, indices: ArrayLike) -> Dataset:
        """The data set restricted to ``indices`` (provenance records how many were kept)."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64).reshape(-1))
        prov = dict(self.provenance)
        prov["subset"] = {"n": len(idx), "of": len(self)}
        return dataclasses.replace(self, X=self.X[idx], y=self.y[idx], provenance=prov)

    def subsample(self, n: int, seed: int = 0) -> Dataset:
        """A seeded, class-stratified subset of ``n`` samples (all of them when ``n >= len``)."""
        if n >= len(self):
            return self
        return self.take(stratified_indices(self.y.numpy(), int(n), seed))

    def batches(self, batch_size: int = 256) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive ``(X, y)`` batches in order (no shuffling)."""
        for start in range(0, len(self), batch_size):
            yield self.X[start : start + batch_size], self.y[start : start + batch_size]

    def loader(
        self, batch_size: int = 128, *, shuffle: bool = True, seed: int = 0
    ) -> torch.utils.data.DataLoader:
        """A torch DataLoader over the data, shuffled by a seeded ``torch.Generator``."""
        gen = torch.Generator().manual_seed(int(seed))
        return torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(self.X, self.y),
            batch_size=batch_size,
            shuffle=shuffle,
            generator=gen,
        )


# ---------------------------------------------------------------------------- validation
def _check_xy(X: Any, y: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    Xt = X.detach() if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X))
    if Xt.ndim < 2:
        raise ValueError(
            f"data set {name!r}: X has shape {tuple(Xt.shape)}; it must be (N, ...) with one "
            "row per sample (reshape a single feature to (N, 1))."
        )
    if Xt.shape[0] == 0:
        raise ValueError(f"data set {name!r} is empty (X has 0 samples).")
    if not Xt.is_floating_point():
        if Xt.dtype == torch.bool or Xt.is_complex():
            raise ValueError(f"data set {name!r}: X has dtype {Xt.dtype}; inputs must be real.")
        Xt = Xt.float()
    Xt = Xt.to(torch.float32)
    n_bad = int((~torch.isfinite(Xt)).sum())
    if n_bad:
        raise ValueError(
            f"data set {name!r}: X contains {n_bad} NaN/inf values; remove or impute them."
        )
    yn = to_numpy(y, what="labels")
    yn = yn.reshape(-1) if yn.ndim > 0 else np.zeros(0)
    if yn.shape[0] != Xt.shape[0]:
        raise ValueError(
            f"data set {name!r}: {yn.shape[0]} labels for {int(Xt.shape[0])} samples; give one "
            "integer label per sample."
        )
    try:
        yn = check_labels(yn, yn.shape[0])
    except ValueError as err:
        raise ValueError(f"data set {name!r}: {err} Map class names to 0..K-1 first.") from None
    if yn.min() < 0:
        raise ValueError(f"data set {name!r}: labels must be >= 0; got {int(yn.min())}.")
    return Xt, torch.as_tensor(yn)


# ---------------------------------------------------------------------------- splitting
def _split_indices(y: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified train/test split (scikit-learn's ``train_test_split``)."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1); got {test_size}.")
    idx = np.arange(len(y))
    train, test = train_test_split(idx, test_size=test_size, random_state=seed, stratify=y)
    return np.sort(train), np.sort(test)


def _standardise(
    X: np.ndarray, train: np.ndarray, axis_mode: str
) -> tuple[np.ndarray, dict[str, Any]]:
    """Standardise with the training rows' statistics (per feature, or one global scalar)."""
    Xtr = X[train]
    if axis_mode == "feature":
        mean = Xtr.mean(axis=0)
        std = Xtr.std(axis=0)
        std = np.where(std > 1e-8, std, 1.0)  # constant pixels stay at zero
        rec = {"mode": "per-feature", "of": "train split"}
    else:
        mean = np.asarray(Xtr.mean())
        std = np.asarray(max(float(Xtr.std()), 1e-8))
        rec = {"mode": "global", "of": "train split", "mean": float(mean), "std": float(std)}
    return (X - mean) / std, rec


# ---------------------------------------------------------------------------- built-ins
def _digits(seed: int, test_size: float = 0.25, flatten: bool = False) -> dict[str, Any]:
    from sklearn.datasets import load_digits

    d = load_digits()
    X = d.data.astype(np.float64)  # (1797, 64), pixel values 0..16
    y = d.target.astype(np.int64)
    train, test = _split_indices(y, test_size, seed)
    X, norm = _standardise(X, train, "feature")
    X = X if flatten else X.reshape(-1, 1, 8, 8)
    params = {"test_size": test_size, "flatten": flatten}
    source = "sklearn.datasets.load_digits (UCI optical digits, 8x8, 10 classes)"
    return {"X": X, "y": y, "train": train, "test": test, "params": params, "source": source,
            "normalisation": norm}  # fmt: skip


def _gaussian_mixture(
    seed: int,
    n_classes: int = 4,
    dim: int = 16,
    n_per_class: int = 100,
    separation: float = 4.0,
    noise: float = 1.0,
    test_size: float = 0.25,
) -> dict[str, Any]:
    """Means ``m_k = separation * g_k / ||g_k||`` (``g_k`` standard normal), ``x = m_y + noise * z``."""
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2; got {n_classes}.")
    if dim < 1 or n_per_class < 2:
        raise ValueError(f"need dim >= 1 and n_per_class >= 2; got {dim}, {n_per_class}.")
    g = rng(seed)
    means = g.standard_normal((n_classes, dim))
    means *= separation / np.linalg.norm(means, axis=1, keepdims=True)
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = means[y] + noise * g.standard_normal((len(y), dim))
    train, test = _split_indices(y, test_size, seed)
    X, norm = _standardise(X, train, "feature")
    params = {"n_classes": n_classes, "dim": dim, "n_per_class": n_per_class,
              "separation": separation, "noise": noise, "test_size": test_size,
              "means": means.tolist()}  # fmt: skip
    source = "otcollapse gaussian mixture: x = m_y + noise * z, ||m_k|| = separation"
    return {"X": X, "y": y, "train": train, "test": test, "params": params, "source": source,
            "normalisation": norm}  # fmt: skip


def mnist1d_templates() -> dict[str, np.ndarray]:
    """The ten 12-point MNIST-1D digit templates (Greydanus 2020), whitened as in the package.

    Each raw template is centred, scaled to unit standard deviation, shifted so the signal starts
    at zero, and divided by 6; ``t`` is the template's abscissa ``linspace(-5, 5, 12) / 6``.

    Returns
    -------
    dict
        ``x`` of shape (10, 12), ``t`` of shape (12,), ``y = arange(10)``.

    References
    ----------
    S. Greydanus, "Scaling down deep learning", 2020, arXiv:2011.14439
    (https://github.com/greydanus/mnist1d).
    """
    x = np.asarray(
        [
            [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
            [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
            [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
            [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
            [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
            [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
            [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
            [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
            [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
            [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
        ],
        dtype=np.float64,
    )
    x -= x.mean(1, keepdims=True)
    x /= x.std(1, keepdims=True)
    x -= x[:, :1]
    return {"x": x / 6.0, "t": np.linspace(-5, 5, 12) / 6.0, "y": np.arange(10)}


def _interp(x: np.ndarray, n: int) -> np.ndarray:
    """Linear resampling of ``x`` to ``n`` equally spaced points (``interp1d(kind='linear')``)."""
    return np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(x)), x)


def _mnist1d_transform(x: np.ndarray, rs: np.random.RandomState, a: dict[str, Any]) -> np.ndarray:
    """One MNIST-1D sample from a template, drawing from ``rs`` in the package's order."""
    from scipy.ndimage import gaussian_filter

    eps = 1e-8
    low, high = a["padding"]
    p = low + int(rs.rand() * (high - low + 1))  # pad with zeros
    new_x = np.concatenate([x + eps, np.zeros(p)])
    new_x = _interp(new_x, a["template_len"] + high)  # dilate
    new_x = new_x * (1 + a["scale_coeff"] * (rs.rand() - 0.5))  # scale
    k = rs.choice(a["max_translation"])  # translate (circular shift)
    new_x = np.concatenate([new_x[-k:], new_x[:-k]]) if k else new_x
    mask = new_x != 0
    corr = gaussian_filter(a["corr_noise_scale"] * rs.randn(*new_x.shape), 2)
    new_x = mask * new_x + (1 - mask) * corr
    new_x = new_x + a["iid_noise_scale"] * rs.randn(*new_x.shape)
    coeff = a["shear_scale"] * (rs.rand() - 0.5)  # shear
    new_x = new_x - coeff * np.linspace(-0.5, 0.5, len(new_x))
    return _interp(new_x, a["final_seq_length"])  # subsample


def _mnist1d(
    seed: int,
    num_samples: int = 5000,
    train_split: float = 0.8,
    channels: bool = False,
    shuffle_seq: bool = False,
) -> dict[str, Any]:
    a = {
        "num_samples": num_samples,
        "train_split": train_split,
        "template_len": 12,
        "padding": [36, 60],
        "scale_coeff": 0.4,
        "max_translation": 48,
        "corr_noise_scale": 0.25,
        "iid_noise_scale": 2e-2,
        "shear_scale": 0.75,
        "shuffle_seq": shuffle_seq,
        "final_seq_length": 40,
    }
    tpl = mnist1d_templates()
    rs = np.random.RandomState(seed)  # private stream; the package uses np.random.seed(seed)
    per_class = num_samples // 10
    xs = [_mnist1d_transform(tpl["x"][k], rs, a) for k in range(10) for _ in range(per_class)]
    ys = np.repeat(np.arange(10), per_class)
    perm = rs.permutation(len(ys))
    X = np.stack(xs)[perm]
    y = ys[perm].astype(np.int64)
    if shuffle_seq:
        X = X[..., rs.permutation(a["final_seq_length"])]
    mean, std = float(X.mean()), float(X.std())
    X = (X - mean) / std  # the package centres the whole data set to mean 0, std 1
    split = int(len(y) * train_split)
    if channels:
        X = X[:, None, :]
    norm = {"mode": "global", "of": "whole data set (as the mnist1d package)", "mean": mean,
            "std": std}  # fmt: skip
    params = dict(a, channels=channels)
    source = "MNIST-1D (Greydanus 2020) generated from its templates; seed=42 matches the package"
    return {"X": X, "y": y, "train": np.arange(split), "test": np.arange(split, len(y)),
            "params": params, "source": source, "normalisation": norm}  # fmt: skip


#: The classes of ``"shapes32"``, in label order (recorded in the provenance's options).
_SHAPES32_CLASSES = (
    "disc",
    "ring",
    "square",
    "triangle",
    "cross",
    "horizontal stripes",
    "vertical stripes",
    "checkerboard",
    "gradient",
    "dots",
)
_SHAPES_SIDE = 32
#: largest rotation (radians) of the classes whose orientation is their identity (the two stripe
#: classes) and of the gradient; the others turn freely
_SHAPES_TILT = np.pi / 9
#: probability that a figure is drawn in the lighter of its two colours (else either, at random)
_SHAPES_LIGHT = 0.8


def _shape_sd(k: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (local units, > 0 inside) to the figure of class ``k`` at local ``(u, v)``;
    for the gradient, the inside of its square patch."""
    box = 0.9 - np.maximum(np.abs(u), np.abs(v))  # the square patch |u|, |v| < 0.9
    if k == 0:  # disc
        return 1.0 - np.hypot(u, v)
    if k == 1:  # ring of radius 0.75, thickness 0.4
        return 0.2 - np.abs(np.hypot(u, v) - 0.75)
    if k == 2:  # square
        return 0.8 - np.maximum(np.abs(u), np.abs(v))
    if k == 3:  # equilateral triangle with inradius 0.5
        c, s = 0.5, np.sqrt(3.0) / 2
        return 0.5 - np.maximum(np.maximum(-v, c * v + s * u), c * v - s * u)
    if k == 4:  # plus-shaped cross, arms 0.56 wide
        arm_u = np.minimum(0.28 - np.abs(u), 1.0 - np.abs(v))
        arm_v = np.minimum(0.28 - np.abs(v), 1.0 - np.abs(u))
        return np.maximum(arm_u, arm_v)
    if k in (5, 6):  # three bars of width 0.3, period 0.6, along u (5) or v (6)
        w = v if k == 5 else u
        return np.minimum(box, 0.15 - np.abs(w - 0.6 * np.clip(np.round(w / 0.6), -1, 1)))
    if k == 7:  # checkerboard of 4 x 4 cells of side 0.45
        a, b = u / 0.45, v / 0.45
        parity = np.where((np.floor(a) + np.floor(b)) % 2 == 0, 1.0, -1.0)
        edge = np.minimum(np.abs(a - np.round(a)), np.abs(b - np.round(b))) * 0.45
        return np.minimum(box, parity * edge)
    if k == 8:  # the gradient's square patch (its ramp is applied by the caller)
        return box
    # 3 x 3 dots of radius 0.22 on a grid of step 0.6
    gu = 0.6 * np.clip(np.round(u / 0.6), -1, 1)
    gv = 0.6 * np.clip(np.round(v / 0.6), -1, 1)
    return 0.22 - np.hypot(u - gu, v - gv)


def _smooth_field(g: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """``n`` smooth random fields on the 32 x 32 grid: a ``cells x cells`` standard normal grid,
    bilinearly upsampled; shape (n, 32, 32), float32."""
    t = np.linspace(0.0, cells - 1.0, _SHAPES_SIDE)
    lo = np.minimum(np.floor(t).astype(int), cells - 2)
    w = (t - lo).astype(np.float32)
    A = np.zeros((_SHAPES_SIDE, cells), dtype=np.float32)
    A[np.arange(_SHAPES_SIDE), lo] = 1.0 - w
    A[np.arange(_SHAPES_SIDE), lo + 1] = w
    z = g.standard_normal((n, cells, cells), dtype=np.float32)
    return A @ z @ A.T


def _contrasting_colours(g: np.random.Generator, n: int, min_dist: float) -> tuple[np.ndarray, ...]:
    """Foreground and background RGB colours, uniform on [0, 1]^3, at least ``min_dist`` apart."""
    fg = g.random((n, 3), dtype=np.float32)
    bg = g.random((n, 3), dtype=np.float32)
    for _ in range(64):  # redraw the close pairs (about a tenth of them each round)
        close = np.linalg.norm(fg - bg, axis=1) < min_dist
        if not close.any():
            break
        fg[close] = g.random((int(close.sum()), 3), dtype=np.float32)
    return fg, bg


def _shapes32(
    seed: int,
    num_samples: int = 6000,
    test_size: float = 0.25,
    noise: float = 0.08,
    clutter: int = 3,
) -> dict[str, Any]:
    r"""Draw ``"shapes32"``: seeded 32 x 32 RGB images of ten kinds of figure, CIFAR's shape.

    A stand-in for CIFAR-10 in the pipeline (same input shape (3, 32, 32), ten classes, a task a
    staged ResNet-18 has to learn), generated on the spot so that nothing is downloaded. It is not
    CIFAR: its accuracies, collapse and transport numbers say nothing about CIFAR's.

    The classes (labels 0..9): disc, ring, square, triangle, cross (plus sign), horizontal
    stripes, vertical stripes, checkerboard, gradient (a colour ramp across a square patch, along
    a diagonal), dots (3 x 3 grid). The class is the figure's structure; everything else is
    nuisance drawn independently of it:

    - pose: centre within 4 pixels of the image centre, size (a disc's radius) 6-11 pixels,
      aspect 0.85-1.15, any rotation (within ±20° of its axis for the stripes and the gradient,
      whose orientation is part of the class);
    - colour: foreground and background uniform on $[0, 1]^3$, at least 0.45 apart, the figure
      the lighter of the two in 90% of the images; the background carries a smooth random
      texture (amplitude 0.12), the figure a smooth multiplicative shading (±15%);
    - clutter: each of ``clutter`` small squares or discs (radius 1.5-3.5 pixels, random colour
      and place) is drawn, over the figure, with probability 1/2, so it may occlude it;
    - i.i.d. Gaussian pixel noise of standard deviation ``noise``; the image is clipped to
      $[0, 1]$, then standardised per channel with the training split's mean and std
      (recorded in ``normalisation``).

    Figures are drawn from signed distances with one pixel of antialiasing, vectorised over the
    images (one to two seconds for 10,000 images on one core). Mean colour carries almost no class
    information (the figures' areas differ, the colours are random), and a linear classifier on
    the pixels stays far below a small convolutional network.

    Parameters
    ----------
    seed : int
        Seeds the drawing and the stratified train/test split.
    num_samples : int
        Number of images, rounded down to a multiple of 10 (equal classes); at least 40.
    test_size : float
        Fraction of the images in the test split, in (0, 1).
    noise : float
        Standard deviation of the i.i.d. pixel noise (images in [0, 1]), at least 0.
    clutter : int
        Number of clutter blobs that may be drawn on each image, at least 0.
    """
    num_samples = check_int(num_samples, "num_samples", minimum=40)
    noise = check_real(noise, "noise", minimum=0.0)
    clutter = check_int(clutter, "clutter", minimum=0)
    g = rng(seed)
    side, K = _SHAPES_SIDE, len(_SHAPES32_CLASSES)
    y = g.permutation(np.repeat(np.arange(K), num_samples // K)).astype(np.int64)
    n = len(y)
    f32 = np.float32
    # pose: centre, size (radius in pixels, slightly anisotropic) and rotation
    scale = g.uniform(6.0, 11.0, n).astype(f32)
    aspect = g.uniform(0.85, 1.15, n).astype(f32)
    cx, cy = (g.uniform(side / 2 - 4, side / 2 + 4, (2, n)) - 0.5).astype(f32)
    tilted = np.isin(y, (5, 6, 8))
    angle = np.where(
        tilted, g.uniform(-_SHAPES_TILT, _SHAPES_TILT, n), g.uniform(0, 2 * np.pi, n)
    ).astype(f32)
    angle[y == 8] += np.pi / 4  # the gradient runs along a diagonal
    grid = np.arange(side, dtype=f32)
    dx = grid[None, None, :] - cx[:, None, None]
    dy = grid[None, :, None] - cy[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    sx, sy = (scale * aspect)[:, None, None], (scale / aspect)[:, None, None]
    u = (cos * dx + sin * dy) / sx
    v = (-sin * dx + cos * dy) / sy
    # coverage: signed distance in pixels, clipped to [0, 1] (one pixel of antialiasing)
    alpha = np.empty((n, side, side), dtype=f32)
    for k in range(K):
        i = np.flatnonzero(y == k)
        alpha[i] = np.clip(_shape_sd(k, u[i], v[i]) * scale[i, None, None] + 0.5, 0.0, 1.0)
    i = np.flatnonzero(y == 8)
    alpha[i] *= np.clip(0.5 + u[i] / 1.8, 0.0, 1.0)  # the gradient: a ramp across its patch
    # colours and textures: a smoothly varying background, shaded foreground
    fg, bg = _contrasting_colours(g, n, 0.45)
    dark = (g.random(n) < _SHAPES_LIGHT) & (fg.sum(1) < bg.sum(1))
    fg[dark], bg[dark] = bg[dark], fg[dark].copy()  # mostly light figures on darker grounds
    bg_tex = 0.12 * _smooth_field(g, n, 5)[:, None]
    fg_shade = 1.0 + 0.15 * _smooth_field(g, n, 4)[:, None]
    img = bg[:, :, None, None] + bg_tex
    img += alpha[:, None] * (fg[:, :, None, None] * fg_shade - img)
    # clutter: up to `clutter` small blobs of random colour drawn over the figure (occlusion)
    for _ in range(clutter):
        i = np.flatnonzero(g.random(n) < 0.5)  # each blob is drawn in half of the images
        r = g.uniform(1.5, 3.5, (len(i), 1, 1)).astype(f32)
        bx, by = g.uniform(0, side, (2, len(i), 1, 1)).astype(f32)
        square = g.random((len(i), 1, 1)) < 0.5  # a small square or a small disc
        ddx, ddy = np.abs(grid[None, None, :] - bx), np.abs(grid[None, :, None] - by)
        dist = np.where(square, np.maximum(ddx, ddy), np.hypot(ddx, ddy))
        a = np.clip(r - dist + 0.5, 0.0, 1.0)[:, None]
        col = g.random((len(i), 3, 1, 1), dtype=f32)
        img[i] += a * (col - img[i])
    img += noise * g.standard_normal(img.shape, dtype=f32)
    np.clip(img, 0.0, 1.0, out=img)
    train, test = _split_indices(y, test_size, seed)
    mean = img[train].mean(axis=(0, 2, 3), dtype=np.float64)
    std = img[train].std(axis=(0, 2, 3), dtype=np.float64)
    img -= mean.astype(f32)[None, :, None, None]
    img /= std.astype(f32)[None, :, None, None]
    norm = {"mode": "per-channel", "of": "train split", "mean": mean.tolist(),
            "std": std.tolist()}  # fmt: skip
    params = {"num_samples": num_samples, "test_size": test_size, "noise": noise,
              "clutter": clutter, "classes": list(_SHAPES32_CLASSES)}  # fmt: skip
    source = "otcollapse shapes32: procedurally drawn 32x32 RGB figures, 10 classes (not CIFAR)"
    return {"X": img, "y": y, "train": train, "test": test, "params": params, "source": source,
            "normalisation": norm}  # fmt: skip


_BUILTINS: dict[str, Callable[..., dict[str, Any]]] = {
    "digits": _digits,
    "gaussian_mixture": _gaussian_mixture,
    "mnist1d": _mnist1d,
    "shapes32": _shapes32,
}


def dataset_names() -> tuple[str, ...]:
    """Names accepted by :func:`load_dataset`."""
    return tuple(sorted(_BUILTINS))


def load_dataset(
    name: str, *, split: str = "train", seed: int = 0, n: int | None = None, **options: Any
) -> Dataset:
    """Load a built-in data set (generated or shipped locally; nothing is downloaded).

    Parameters
    ----------
    name : {"digits", "gaussian_mixture", "mnist1d", "shapes32"}
    split : {"train", "test"}
        Which part of the seeded split to return; the same ``seed`` gives complementary splits.
    seed : int
        Seeds the generator (Gaussian mixture, MNIST-1D, shapes32) and the train/test split.
    n : int, optional
        Keep a seeded, class-stratified subset of ``n`` samples of the split.
    **options
        Options of the data set: ``digits``: ``test_size=0.25``, ``flatten=False``;
        ``gaussian_mixture``: ``n_classes=4``, ``dim=16``, ``n_per_class=100``,
        ``separation=4.0``, ``noise=1.0``, ``test_size=0.25``; ``mnist1d``:
        ``num_samples=5000``, ``train_split=0.8``, ``channels=False``, ``shuffle_seq=False``;
        ``shapes32``: ``num_samples=6000``, ``test_size=0.25``, ``noise=0.08``, ``clutter=3``.

    Returns
    -------
    Dataset
        Its ``provenance`` records the source, options, seed, split sizes and normalisation.

    Raises
    ------
    ValueError
        Unknown name (the valid names are listed), unknown split or option, invalid ``n``.

    Examples
    --------
    >>> ds = load_dataset("digits", split="train", seed=0)
    >>> tuple(ds.X.shape), ds.n_classes
    ((1347, 1, 8, 8), 10)

    References
    ----------
    S. Greydanus, "Scaling down deep learning", 2020, arXiv:2011.14439 (MNIST-1D).
    """
    if name not in _BUILTINS:
        raise ValueError(
            f"unknown data set {name!r}; built-in data sets are {list(dataset_names())} "
            "(user data: from_arrays, from_folder, from_torch_dataset)."
        )
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {list(_SPLITS)}.")
    rng(seed)  # validates the seed
    builder = _BUILTINS[name]
    import inspect

    allowed = [p for p in inspect.signature(builder).parameters if p != "seed"]
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise ValueError(
            f"unknown option(s) {bad} for data set {name!r}; valid options: {allowed}."
        )
    made = builder(int(seed), **options)
    idx = made["train"] if split == "train" else made["test"]
    X, y = made["X"][idx], made["y"][idx]
    prov: dict[str, Any] = {
        "dataset": name,
        "source": made["source"],
        "seed": int(seed),
        "split": split,
        "n_train": len(made["train"]),
        "n_test": len(made["test"]),
        "options": made["params"],
        "normalisation": made["normalisation"],
    }
    if n is not None:
        keep = stratified_indices(y, int(n), seed)
        X, y = X[keep], y[keep]
        prov["subset"] = {"n": int(n), "of": len(idx), "seed": int(seed), "stratified": True}
    return Dataset(
        torch.as_tensor(np.ascontiguousarray(X), dtype=torch.float32),
        torch.as_tensor(y, dtype=torch.int64),
        name=name,
        split=split,
        provenance=prov,
    )


# ---------------------------------------------------------------------------- user data
def from_arrays(
    X: ArrayLike,
    y: ArrayLike,
    *,
    name: str = "user",
    split: str = "train",
    provenance: Mapping[str, Any] | None = None,
) -> Dataset:
    """A :class:`Dataset` from arrays or tensors ``X`` of shape (N, ...) and labels ``y`` (N,).

    Raises
    ------
    ValueError
        Empty data, labels of the wrong length or not integers, negative labels, NaN/inf inputs.

    Examples
    --------
    >>> import numpy as np
    >>> ds = from_arrays(np.zeros((6, 3)), [0, 1, 2, 0, 1, 2])
    >>> len(ds), ds.n_classes
    (6, 3)
    """
    prov = {"source": "arrays"}
    prov.update(provenance or {})
    return Dataset(X, y, name=name, split=split, provenance=prov)


def from_torch_dataset(
    dataset: Any, *, name: str = "user", split: str = "train", batch_size: int = 512
) -> Dataset:
    """Materialise a map-style torch Dataset yielding ``(x, y)`` pairs as one :class:`Dataset`."""
    if len(dataset) == 0:
        raise ValueError(f"data set {name!r} is empty.")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    xs, ys = [], []
    for batch in loader:
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise ValueError("the torch Dataset must yield (input, label) pairs.")
        xs.append(torch.as_tensor(batch[0]))
        ys.append(torch.as_tensor(batch[1]))
    prov = {"source": f"torch Dataset {type(dataset).__name__}"}
    return Dataset(torch.cat(xs), torch.cat(ys), name=name, split=split, provenance=prov)


def from_folder(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    split: str = "train",
    grayscale: bool = False,
) -> Dataset:
    """Load user data from disk: a ``.npz`` file or an image folder ``root/<class>/<image>``.

    A ``.npz`` file must hold arrays ``X`` (or ``x``) and ``y``; it is read with
    ``np.load(allow_pickle=False)``, so no code is ever unpickled. An image folder has one
    sub-folder per class (sorted names give labels ``0..K-1``, recorded in the provenance); images
    are read with Pillow, scaled to ``[0, 1]`` and must all have one size.

    Raises
    ------
    ValueError
        Missing path, missing arrays, no images, images of different sizes.
    """
    p = Path(path)
    name = name or p.stem
    if not p.exists():
        raise ValueError(f"{str(p)!r} does not exist; give a .npz file or an image folder.")
    if p.is_file():
        if p.suffix != ".npz":
            raise ValueError(f"{str(p)!r} is not a .npz file or a folder.")
        with np.load(p, allow_pickle=False) as z:
            keys = list(z.keys())
            xkey = "X" if "X" in keys else "x" if "x" in keys else None
            if xkey is None or "y" not in keys:
                raise ValueError(f"{str(p)!r} holds arrays {keys}; it needs 'X' (or 'x') and 'y'.")
            X, y = z[xkey], z["y"]
        return Dataset(X, y, name=name, split=split, provenance={"source": str(p)})
    from PIL import Image

    classes = sorted(d.name for d in p.iterdir() if d.is_dir())
    if not classes:
        raise ValueError(f"{str(p)!r} has no class sub-folders (root/<class>/<image>).")
    xs, ys = [], []
    for k, cls in enumerate(classes):
        for f in sorted((p / cls).iterdir()):
            if f.suffix.lower() in _IMAGE_SUFFIXES:
                with Image.open(f) as im:
                    im = im.convert("L" if grayscale else "RGB")
                    a = np.asarray(im, dtype=np.float32) / 255.0
                xs.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
                ys.append(k)
    if not xs:
        raise ValueError(f"no images ({', '.join(_IMAGE_SUFFIXES)}) found under {str(p)!r}.")
    shapes = sorted({x.shape for x in xs})
    if len(shapes) > 1:
        raise ValueError(f"images under {str(p)!r} have different sizes {shapes}; resize them.")
    prov = {"source": str(p), "classes": classes, "scale": "[0, 1]"}
    return Dataset(np.stack(xs), np.asarray(ys), name=name, split=split, provenance=prov)
