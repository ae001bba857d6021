"""Layer measures and trajectories: one empirical measure per layer over the same samples.

A :class:`Trajectory` holds the features ``h_l(x_i)`` of the same ``n`` samples at layers
``l = 0..L``; layer ``l`` is the empirical measure

$$\\mu_l = \\sum_{i=1}^n a_i\\, \\delta_{h_l(x_i)}, \\qquad a_i = 1/n \\text{ unless weights are given}.$$

Layers may have different dimensions (a ResNet changes width between stages); maximal runs of
consecutive layers in one space are the trajectory's :attr:`Trajectory.segments`: layers of equal
dimension and, where the metadata records the shape of the residual stream each layer was taken
from (``metadata["stream_shapes"]``, written by :func:`otcollapse.nets.capture`), of equal stream
shape — a random projection brings the stages of a ResNet to one dimension without putting them in
one space. For a block whose linear shortcut ``P`` changes the space (``h_{l+1} = P h_l + f(h_l)``)
the trajectory may store the shortcut image ``P h_l`` so that the step ``l -> l+1`` is measured in
the output space, between ``P_# mu_l`` and ``mu_{l+1}``.

Layers may be NumPy arrays, NumPy memory maps (a 50,000 x 16,384 layer need not sit in RAM: it is
only ever read in row blocks here) or torch tensors on any device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from otcollapse._resampling import stratified_indices
from otcollapse._utils import (
    ArrayLike,
    check_device,
    check_finite,
    check_not_complex,
    iter_rows,
    rng,
    to_numpy,
    to_tensor,
)
from otcollapse._validation import check_int, check_labels, check_weights

__all__ = ["LayerMeasure", "Trajectory"]


@dataclasses.dataclass(frozen=True, eq=False)
class LayerMeasure:
    """One empirical measure ``sum_i a_i delta_{x_i}``.

    Attributes
    ----------
    points : array-like or Tensor, shape (n, d)
        Support points (NumPy array, memory map or torch tensor).
    weights : ndarray, shape (n,), or None
        Masses ``a_i`` summing to one; None means uniform ``1/n``.
    labels : ndarray of int, shape (n,), or None
        Class label of every point.
    name : str
        Layer name.
    """

    points: Any
    weights: np.ndarray | None = None
    labels: np.ndarray | None = None
    name: str = ""

    @property
    def n(self) -> int:
        return int(self.points.shape[0])

    @property
    def dim(self) -> int:
        return int(self.points.shape[1])

    @property
    def uniform(self) -> bool:
        return self.weights is None

    def masses(self) -> np.ndarray:
        """The weights as a float64 array (uniform ``1/n`` when none were given)."""
        if self.weights is None:
            return np.full(self.n, 1.0 / self.n)
        return np.asarray(self.weights, dtype=np.float64)

    def numpy(self, dtype: Any = np.float64) -> np.ndarray:
        """The points as a NumPy array of ``dtype`` (reads a memory map whole)."""
        return to_numpy(self.points, dtype=dtype)

    def tensor(self, dtype: torch.dtype = torch.float64, device: Any = None) -> torch.Tensor:
        """The points as a torch tensor (on their own device unless ``device`` is given)."""
        dev = None if device is None else check_device(device)
        return to_tensor(self.points, dtype=dtype, device=dev)


def _as_2d_layer(x: ArrayLike, name: str) -> Any:
    check_not_complex(x, f"layer {name!r}")
    if isinstance(x, torch.Tensor):
        arr = x.detach()
        if not arr.is_floating_point() and arr.dtype != torch.bool:
            arr = arr.double()
    elif isinstance(x, np.ndarray):  # includes np.memmap: keep it mapped
        arr = x
    else:
        arr = to_numpy(x, dtype=np.float64, what=f"layer {name!r}")
    if arr.ndim != 2:
        raise ValueError(
            f"layer {name!r} has shape {tuple(arr.shape)}; every layer must be a 2-D array "
            "(n_samples, n_features): flatten or pool feature maps first (e.g. x.reshape(n, -1))."
        )
    if not (
        arr.dtype.is_floating_point if isinstance(arr, torch.Tensor) else arr.dtype.kind in "fiu"
    ):
        raise ValueError(f"layer {name!r} has dtype {arr.dtype}; features must be real numbers.")
    if isinstance(arr, np.ndarray) and arr.dtype.kind in "iu":
        arr = arr.astype(np.float64)
    return arr


@dataclasses.dataclass(frozen=True, eq=False)
class Trajectory:
    """Per-layer empirical measures of the same samples, with labels and optional extras.

    Build one with :meth:`Trajectory.from_arrays`. Indexing gives a :class:`LayerMeasure`;
    ``len`` is the number of layers ``L + 1``; iteration runs over the layer measures.

    Attributes
    ----------
    layers : tuple of array-like, each shape (n, d_l)
        Features at layers ``0..L``.
    labels : ndarray of int, shape (n,), or None
    names : tuple of str
    weights : ndarray, shape (n,), or None
        Sample masses (same at every layer); None means uniform.
    shortcuts : dict int -> array, shape (n, d_{l+1})
        ``shortcuts[l] = P h_l``: the linear shortcut's image of layer ``l`` in the space of layer
        ``l + 1``, for blocks that change the dimension.
    classifier : tuple (W, b) or None
        The network's last linear layer, ``W`` of shape (K, d_L) and ``b`` of shape (K,) or None.
    logits : ndarray, shape (n, K), or None
    metadata : dict
        Data set, split, seed, epoch, provenance: JSON-safe values.
    """

    layers: tuple[Any, ...]
    labels: np.ndarray | None = None
    names: tuple[str, ...] = ()
    weights: np.ndarray | None = None
    shortcuts: Mapping[int, Any] = dataclasses.field(default_factory=dict)
    classifier: tuple[np.ndarray, np.ndarray | None] | None = None
    logits: np.ndarray | None = None
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(
        cls,
        layers: Sequence[ArrayLike],
        labels: ArrayLike | None = None,
        names: Sequence[str] | None = None,
        weights: ArrayLike | None = None,
        *,
        shortcuts: Mapping[int, ArrayLike] | None = None,
        classifier: tuple[ArrayLike, ArrayLike | None] | None = None,
        logits: ArrayLike | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Trajectory:
        """Build and validate a trajectory from a list of ``(n, d_l)`` arrays or tensors.

        Parameters
        ----------
        layers : sequence of array-like or Tensor, each shape (n, d_l)
            Features of the same ``n`` samples at every layer; memory maps stay mapped.
        labels : array-like of int, shape (n,), optional
        names : sequence of str, optional
            Defaults to ``layer0, layer1, ...``.
        weights : array-like, shape (n,), optional
            Non-negative sample masses summing to one.
        shortcuts, classifier, logits, metadata
            See the class attributes.

        Raises
        ------
        ValueError
            Empty input, a layer that is not 2-D, NaN/inf values (with counts, naming the layer),
            different sample counts across layers, labels of the wrong length, negative or
            non-normalised weights, misshapen shortcuts, classifier or logits.

        Examples
        --------
        >>> import numpy as np
        >>> traj = Trajectory.from_arrays([np.zeros((4, 2)), np.ones((4, 2))], labels=[0, 0, 1, 1])
        >>> len(traj), traj.n_classes, traj.segments
        (2, 2, (range(0, 2),))
        """
        return cls(
            layers=tuple(layers),
            labels=None if labels is None else labels,
            names=tuple(names) if names is not None else (),
            weights=weights,
            shortcuts=dict(shortcuts or {}),
            classifier=classifier,
            logits=logits,
            metadata=dict(metadata or {}),
        )

    def __post_init__(self) -> None:
        names, layers = _check_layers(self.layers, self.names)
        n = int(layers[0].shape[0])
        set_ = object.__setattr__
        set_(self, "layers", layers)
        set_(self, "names", names)
        set_(self, "labels", None if self.labels is None else check_labels(self.labels, n))
        set_(self, "weights", None if self.weights is None else check_weights(self.weights, n))
        set_(self, "shortcuts", _check_shortcuts(self.shortcuts, layers, names))
        set_(self, "classifier", _check_classifier(self.classifier, int(layers[-1].shape[1])))
        set_(self, "logits", _check_logits(self.logits, n))
        set_(self, "metadata", dict(self.metadata))

    # ------------------------------------------------------------------ container protocol
    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, l: int) -> LayerMeasure:
        if isinstance(l, slice):
            raise TypeError(
                "index a Trajectory with an int; use .take_layers(...) for a sub-trajectory."
            )
        l = range(len(self))[l]
        return LayerMeasure(self.layers[l], self.weights, self.labels, self.names[l])

    def __iter__(self) -> Iterator[LayerMeasure]:
        for l in range(len(self)):
            yield self[l]

    def __repr__(self) -> str:
        dims = "→".join(str(d) for d in self.dims)
        k = f", K={self.n_classes}" if self.labels is not None else ""
        return f"Trajectory(L+1={len(self)} layers, n={self.n_samples}, dims={dims}{k})"

    # ------------------------------------------------------------------ properties
    @property
    def n_samples(self) -> int:
        return int(self.layers[0].shape[0])

    @property
    def n_steps(self) -> int:
        """``L``: the number of steps between consecutive layers."""
        return len(self.layers) - 1

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(int(x.shape[1]) for x in self.layers)

    @property
    def classes(self) -> np.ndarray:
        """The distinct labels, sorted."""
        if self.labels is None:
            raise ValueError(
                "this trajectory has no labels; pass labels= to Trajectory.from_arrays."
            )
        return np.unique(self.labels)

    @property
    def n_classes(self) -> int:
        """Number of distinct labels."""
        return int(self.classes.shape[0])

    @property
    def stream_shapes(self) -> tuple[tuple[int, ...], ...] | None:
        """The shape of the residual stream each layer was taken from (``(C, H, W)`` of a feature
        map, ``(d,)`` of a vector), from ``metadata["stream_shapes"]`` (written by
        :func:`otcollapse.nets.capture`); None when not recorded for every layer."""
        shapes = self.metadata.get("stream_shapes")
        if not isinstance(shapes, (list, tuple)) or len(shapes) != len(self.layers):
            return None
        return tuple(tuple(int(v) for v in s) for s in shapes)

    def _space_keys(self) -> list[tuple[Any, ...]]:
        """Per layer what puts it in a space: its dimension and, when recorded, its stream shape."""
        shapes = self.stream_shapes
        return [(d,) if shapes is None else (d, shapes[l]) for l, d in enumerate(self.dims)]

    @property
    def segments(self) -> tuple[range, ...]:
        """Maximal runs of consecutive layers in one space, as ranges of layer indices.

        Layers share a space when they have equal dimension and, where ``stream_shapes`` is
        recorded, were taken from residual streams of equal shape: the stages of a ResNet are
        separate segments even when a random projection (``pool=("project", k)``) gives all its
        layers dimension ``k``.
        """
        out, start = [], 0
        keys = self._space_keys()
        for l in range(1, len(keys) + 1):
            if l == len(keys) or keys[l] != keys[start]:
                out.append(range(start, l))
                start = l
        return tuple(out)

    @property
    def crossings(self) -> tuple[int, ...]:
        """The steps ``l -> l + 1`` that leave a segment (between two segments), by ``l``."""
        return tuple(seg.stop - 1 for seg in self.segments[:-1])

    def masses(self) -> np.ndarray:
        """Sample masses as float64 (uniform ``1/n`` when no weights were given)."""
        return self[0].masses()

    # ------------------------------------------------------------------ steps
    def step_measures(self, l: int) -> tuple[LayerMeasure, LayerMeasure]:
        """The two measures compared for the step ``l -> l + 1``, in one space.

        Equal dimensions: ``(mu_l, mu_{l+1})``. A dimension change with a stored shortcut image:
        ``(P_# mu_l, mu_{l+1})``. Otherwise a ValueError says what to do.
        """
        if not 0 <= l < self.n_steps:
            raise ValueError(
                f"step {l} -> {l + 1} does not exist; the trajectory has {self.n_steps} steps."
            )
        target = self[l + 1]
        if l in self.shortcuts:
            src = LayerMeasure(self.shortcuts[l], self.weights, self.labels, f"P({self.names[l]})")
            return src, target
        if self.dims[l] != self.dims[l + 1]:
            raise ValueError(
                f"layers {self.names[l]!r} (d={self.dims[l]}) and {self.names[l + 1]!r} "
                f"(d={self.dims[l + 1]}) differ in dimension and no shortcut image P h_l is stored; "
                "store it (shortcuts={l: P h_l}), use method='gromov', or bring the layers to one "
                "dimension with traj.project(dim)."
            )
        keys = self._space_keys()
        if keys[l] != keys[l + 1]:
            raise ValueError(
                f"layers {self.names[l]!r} and {self.names[l + 1]!r} share the dimension "
                f"{self.dims[l]} but were taken from residual streams of shapes {keys[l][1]} and "
                f"{keys[l + 1][1]} (another stage): their coordinates are not one space, and no "
                "shortcut image P h_l is stored. Store it (capture records it for a block with a "
                "shortcut), or compare layers within a segment (traj.segments)."
            )
        return self[l], target

    # ------------------------------------------------------------------ derived trajectories
    def replace(self, **changes: Any) -> Trajectory:
        """A validated copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def take(self, indices: ArrayLike) -> Trajectory:
        """The sub-trajectory of the samples ``indices`` (weights renormalised)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise ValueError("take() needs at least one sample index.")
        if idx.min() < -self.n_samples or idx.max() >= self.n_samples:
            raise ValueError(f"sample indices out of range for n = {self.n_samples}.")

        def pick(x: Any) -> Any:
            if isinstance(x, torch.Tensor):
                return x[torch.as_tensor(idx, device=x.device)]
            return np.asarray(x[idx])

        w = None
        if self.weights is not None:
            w = self.weights[idx]
            if w.sum() <= 0:
                raise ValueError("the selected samples carry zero total weight.")
            w = w / w.sum()
        return self.replace(
            layers=tuple(pick(x) for x in self.layers),
            labels=None if self.labels is None else self.labels[idx],
            weights=w,
            shortcuts={l: pick(v) for l, v in self.shortcuts.items()},
            logits=None if self.logits is None else self.logits[idx],
        )

    def take_layers(self, layer_indices: Sequence[int]) -> Trajectory:
        """The trajectory restricted to some layers (shortcuts kept only for kept consecutive steps)."""
        keep = [range(len(self))[i] for i in layer_indices]
        if not keep:
            raise ValueError("take_layers() needs at least one layer.")
        shortcuts = {
            j: self.shortcuts[keep[j]]
            for j in range(len(keep) - 1)
            if keep[j] in self.shortcuts and keep[j + 1] == keep[j] + 1
        }
        classifier = self.classifier if keep[-1] == len(self) - 1 else None
        meta = dict(self.metadata)
        for key in _PER_LAYER_METADATA:  # per-layer records follow the layers kept
            vals = meta.get(key)
            if isinstance(vals, (list, tuple)) and len(vals) == len(self):
                meta[key] = [vals[i] for i in keep]
        return self.replace(
            layers=tuple(self.layers[i] for i in keep),
            names=tuple(self.names[i] for i in keep),
            shortcuts=shortcuts,
            classifier=classifier,
            metadata=meta,
        )

    def subsample_indices(self, n: int, seed: int = 0) -> np.ndarray:
        """Sorted indices of a seeded, class-stratified sample of ``n`` samples, without replacement.

        Each class gets ``n * n_k / N`` samples rounded by largest remainder, and at least one
        sample while ``n`` allows it.
        """
        return stratified_indices(self.labels, n, seed, self.n_samples)

    def subsample(self, n: int, seed: int = 0) -> Trajectory:
        """A seeded, class-stratified subsample of ``n`` samples (see :meth:`subsample_indices`)."""
        n = check_int(n, "the subsample size n", minimum=1)
        if n >= self.n_samples:
            return self
        sub = self.take(self.subsample_indices(n, seed))
        meta = dict(sub.metadata)
        meta["subsample"] = {
            "n": int(n),
            "of": self.n_samples,
            "seed": int(seed),
            "stratified": self.labels is not None,
        }
        return sub.replace(metadata=meta)

    def project(self, dim: int, method: str = "random", seed: int = 0) -> Trajectory:
        """Bring every layer to dimension ``dim`` with one linear map per input dimension.

        Layers of equal dimension share one map, so distances between them stay comparable.
        ``d_l == dim``: unchanged. ``d_l < dim``: zero padding (an isometry). ``d_l > dim``:
        ``method="random"`` uses a seeded Gaussian map ``G / sqrt(dim)`` (Johnson–Lindenstrauss:
        squared distances preserved in expectation); ``method="pca"`` projects onto the top ``dim``
        principal directions of all layers of that dimension pooled. The classifier is dropped when
        the last layer is changed (it no longer applies); logits are kept.
        """
        if method not in ("random", "pca"):
            raise ValueError(f"unknown projection method {method!r}; use 'random' or 'pca'.")
        dim = check_int(dim, "dim", minimum=1)
        g = rng(seed)
        maps: dict[int, np.ndarray | None] = {}
        for d in sorted(set(self.dims)):
            if d == dim:
                maps[d] = None
            elif d < dim:
                maps[d] = np.eye(d, dim)
            elif method == "random":
                maps[d] = g.standard_normal((d, dim)) / np.sqrt(dim)
            else:
                maps[d] = _pooled_pca(
                    [x for x, dd in zip(self.layers, self.dims, strict=True) if dd == d],
                    self.masses(),
                    dim,
                )

        def apply(x: Any) -> Any:
            M = maps[int(x.shape[1])]
            if M is None:
                return x
            if isinstance(x, torch.Tensor):
                return x @ torch.as_tensor(M, dtype=x.dtype, device=x.device)
            return np.concatenate([np.asarray(b, dtype=np.float64) @ M for b in iter_rows(x)])

        meta = dict(self.metadata)
        meta["projection"] = {"dim": int(dim), "method": method, "seed": int(seed)}
        return self.replace(
            layers=tuple(apply(x) for x in self.layers),
            shortcuts={l: apply(v) for l, v in self.shortcuts.items()},
            classifier=self.classifier if maps[self.dims[-1]] is None else None,
            metadata=meta,
        )

    def to(self, device: Any, dtype: torch.dtype | None = None) -> Trajectory:
        """A copy whose layers (and shortcut images) are torch tensors on ``device``.

        A memory-mapped layer is read in row blocks straight into the tensor on ``device``: the
        host never holds more than one block of it.

        Parameters
        ----------
        device : str, torch.device or int
            ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``; a device that does not exist here
            (``"gpu"``, CUDA without a CUDA GPU, a GPU index beyond the count) is a ValueError
            listing the available ones.
        dtype : torch floating dtype, optional
            Cast to it (default: keep each layer's dtype).
        """
        dev = check_device(device)
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(
                f"dtype must be a torch floating dtype such as torch.float32 or torch.float64; "
                f"got {dtype!r}."
            )

        def move(x: Any) -> torch.Tensor:
            if isinstance(x, np.memmap) or (
                isinstance(x, np.ndarray) and isinstance(x.base, np.memmap)
            ):
                t = _mapped_to(x, dev, dtype)  # in row blocks: never read whole into RAM
            else:
                t = to_tensor(x, device=dev)
            return t if dtype is None else t.to(dtype)

        return self.replace(
            layers=tuple(move(x) for x in self.layers),
            shortcuts={l: move(v) for l, v in self.shortcuts.items()},
        )

    def class_measure(self, l: int, k: int) -> LayerMeasure:
        """``mu_l^k``: the points of class ``k`` at layer ``l``, their masses renormalised."""
        if self.labels is None:
            raise ValueError("class_measure needs labels; pass labels= to Trajectory.from_arrays.")
        idx = np.flatnonzero(self.labels == k)
        if idx.size == 0:
            raise ValueError(f"class {k} has no samples; classes present: {self.classes.tolist()}.")
        x = self.layers[range(len(self))[l]]
        pts = (
            x[torch.as_tensor(idx, device=x.device)]
            if isinstance(x, torch.Tensor)
            else np.asarray(x[idx])
        )
        w = None
        if self.weights is not None:
            w = self.weights[idx] / self.weights[idx].sum()
        return LayerMeasure(pts, w, self.labels[idx], f"{self.names[l]}[class {k}]")


#: metadata entries with one value per layer (``take_layers`` keeps those of the kept layers)
_PER_LAYER_METADATA = ("stream_shapes",)


def _mapped_to(x: np.ndarray, dev: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    """A memory-mapped array as a tensor on ``dev``, copied in row blocks of ``iter_rows``."""
    tdtype = dtype if dtype is not None else torch.from_numpy(np.empty(0, dtype=x.dtype)).dtype
    out = torch.empty(tuple(x.shape), dtype=tdtype, device=dev)
    start = 0
    for block in iter_rows(x):
        b = torch.from_numpy(np.ascontiguousarray(block))
        out[start : start + len(b)] = b.to(device=dev, dtype=tdtype)
        start += len(b)
    return out


def _pooled_pca(layers: list[Any], w: np.ndarray, dim: int) -> np.ndarray:
    """Top-``dim`` principal directions (d, dim) of several layers pooled, streamed by rows."""
    d = int(layers[0].shape[1])
    total = np.zeros(d)
    second = np.zeros((d, d))
    for x in layers:
        start = 0
        for block in iter_rows(x):
            b = to_numpy(block, dtype=np.float64)
            wb = w[start : start + len(b)]
            start += len(b)
            total += wb @ b
            second += (b * wb[:, None]).T @ b
    mean = total / len(layers)
    cov = second / len(layers) - np.outer(mean, mean)
    _, vecs = np.linalg.eigh(cov)
    return vecs[:, ::-1][:, :dim].copy()


def _check_layers(layers: Sequence[Any], names: Sequence[str] | None) -> tuple[tuple, tuple]:
    """Names (given or ``layer0..``) and 2-D, finite layers of the same samples."""
    if len(layers) == 0:
        raise ValueError("a Trajectory needs at least one layer; got an empty list.")
    names = tuple(names) if names else tuple(f"layer{i}" for i in range(len(layers)))
    if len(names) != len(layers):
        raise ValueError(f"{len(names)} names given for {len(layers)} layers.")
    if len(set(names)) != len(names):
        raise ValueError(f"layer names must be unique; got {list(names)}.")
    out = tuple(_as_2d_layer(x, nm) for x, nm in zip(layers, names, strict=True))
    n = int(out[0].shape[0])
    if n == 0:
        raise ValueError(f"layer {names[0]!r} has no samples; a measure needs at least one point.")
    for x, nm in zip(out, names, strict=True):
        if int(x.shape[0]) != n:
            raise ValueError(
                f"layer {nm!r} has {int(x.shape[0])} samples but layer {names[0]!r} has {n}; "
                "every layer must hold the features of the same samples in the same order."
            )
        if int(x.shape[1]) == 0:
            raise ValueError(f"layer {nm!r} has zero features.")
        check_finite(x, f"layer {nm!r}")
    return names, out


def _check_shortcuts(shortcuts: Any, layers: tuple, names: tuple) -> dict[int, Any]:
    """``shortcuts[l]``: the image P h_l of layer l in the space of layer l + 1, shape
    (n, d_{l+1})."""
    n = int(layers[0].shape[0])
    out = {}
    for key, img in dict(shortcuts).items():
        l = int(key)
        if not 0 <= l < len(layers) - 1:
            raise ValueError(
                f"shortcut given for layer {l}, but only steps 0..{len(layers) - 2} exist; "
                "shortcuts[l] is P h_l, the image of layer l in the space of layer l + 1."
            )
        img = _as_2d_layer(img, f"shortcut of {names[l]}")
        if tuple(img.shape) != (n, int(layers[l + 1].shape[1])):
            raise ValueError(
                f"shortcut of layer {names[l]!r} has shape {tuple(img.shape)}; it must be "
                f"(n, d_{{l+1}}) = {(n, int(layers[l + 1].shape[1]))}, the image P h_l in the "
                f"space of layer {names[l + 1]!r}."
            )
        check_finite(img, f"shortcut of layer {names[l]!r}")
        out[l] = img
    return out


def _check_classifier(classifier: Any, d_last: int) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The last layer's linear classifier ``(W, b)``: W of shape (K, d_L), b of length K."""
    if classifier is None:
        return None
    W, b = classifier
    W = to_numpy(W, dtype=np.float64, what="classifier W")
    if W.ndim != 2 or W.shape[1] != d_last:
        raise ValueError(
            f"classifier W has shape {W.shape}; it must be (K, d_L) with d_L = {d_last}."
        )
    if b is not None:
        b = to_numpy(b, dtype=np.float64, what="classifier bias").reshape(-1)
        if b.shape[0] != W.shape[0]:
            raise ValueError(f"classifier bias has length {b.shape[0]}, W has {W.shape[0]} rows.")
    check_finite(W, "classifier W")
    return W, b


def _check_logits(logits: Any, n: int) -> np.ndarray | None:
    if logits is None:
        return None
    out = to_numpy(logits, dtype=np.float64, what="logits")
    if out.ndim != 2 or out.shape[0] != n:
        raise ValueError(f"logits have shape {out.shape}; they must be (n, K) with n = {n}.")
    check_finite(out, "logits")
    return out
