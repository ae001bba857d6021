r"""Gauge alignment: the layers of a trajectory in one basis before they are compared.

A block whose output feeds a linear layer can have its features expressed in any basis: an
orthogonal change ``h -> h Q`` between layers (or an invertible affine one, ``h -> h A + b``,
absorbed by the next layer's weights and bias) leaves the network's function unchanged but moves
W2, OTS, LSS and the path ratio. Aligning successive layers removes that freedom:

- ``"orthogonal"`` — within each segment of equal dimension, layer ``l`` is rotated onto the
  already aligned layer ``l-1`` by orthogonal Procrustes on the paired samples,

  $$Q_l = \arg\min_{Q^\top Q = I} \sum_i a_i \,\|(h_l(x_i) - \bar h_l) Q
        - (\tilde h_{l-1}(x_i) - \bar{\tilde h}_{l-1})\|^2 = U V^\top,
    \quad U \Sigma V^\top = (H_l - \bar h_l)^\top \operatorname{diag}(a) (\tilde H_{l-1} -
    \bar{\tilde h}_{l-1}),$$

  and ``\tilde h_l = h_l Q_l`` (a rotation about the origin: distances within the layer, its
  W2 to any rotated copy of itself and its norms are kept). The first layer of a segment keeps
  its basis, so the aligned trajectory is in that layer's basis.
- ``"affine"`` — each layer is first centred and whitened (ZCA on its span: the eigenvalues of
  its covariance above ``rtol`` times the largest; the others are dropped), then aligned as
  above. Any invertible affine map between layers then disappears: the whitened images of
  ``H`` and ``H A + b`` differ by a rotation, which Procrustes removes. What is left is the part
  of the change that no affine map explains (W2 is then in whitened units).

The alignment's own size is reported per aligned layer: the paired cost to the previous aligned
layer before and after the rotation (``paired_before`` / ``paired_after``).

References
----------
P. H. Schönemann, "A generalized solution of the orthogonal Procrustes problem",
Psychometrika 31 (1966). Gai & Zhang, "Deep Residual Networks Learn the Geodesic Curve in the
Wasserstein Space" (raw, unaligned layers).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from otcollapse._results import Result
from otcollapse._utils import ArrayLike, to_numpy
from otcollapse.measures import Trajectory

__all__ = ["GAUGES", "GaugeAlignment", "align_trajectory", "check_gauge", "procrustes"]

#: the gauges: no alignment, rotations between layers, invertible affine maps between layers
GAUGES = ("none", "orthogonal", "affine")
#: eigenvalues of a layer's covariance at or below this times the largest are not whitened
WHITEN_RTOL = 1e-10


def check_gauge(gauge: Any) -> str:
    """``gauge`` if it is one of :data:`GAUGES`, else a ValueError naming them."""
    if gauge not in GAUGES:
        raise ValueError(f"unknown gauge {gauge!r}; use one of {list(GAUGES)}.")
    return str(gauge)


def procrustes(x: ArrayLike, y: ArrayLike, weights: ArrayLike | None = None) -> np.ndarray:
    r"""The rotation ``Q`` (``Q^T Q = I``) that best maps the centred ``x`` onto the centred ``y``.

    $$Q = \arg\min_{Q^\top Q = I} \sum_i a_i \|(x_i - \bar x) Q - (y_i - \bar y)\|^2 = U V^\top,
      \qquad U \Sigma V^\top = (X - \bar x)^\top \operatorname{diag}(a) (Y - \bar y),$$

    ``x`` and ``y`` of shape ``(n, d)`` paired row by row, ``a`` the sample masses (``1/n`` by
    default). When ``y = x R + c`` for a rotation ``R`` and ``x`` spans its space, ``Q = R``.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.stats import special_ortho_group
    >>> x = np.random.default_rng(0).normal(size=(50, 4))
    >>> R = special_ortho_group.rvs(4, random_state=1)
    >>> bool(np.allclose(procrustes(x, x @ R + 3.0), R))
    True
    """
    x64, y64 = to_numpy(x, np.float64), to_numpy(y, np.float64)
    if x64.ndim != 2 or x64.shape != y64.shape:
        raise ValueError(
            f"procrustes needs two (n, d) arrays of one shape; got {x64.shape} and {y64.shape}."
        )
    a = _masses(weights, x64.shape[0])
    xc = x64 - a @ x64
    yc = y64 - a @ y64
    u, _, vt = np.linalg.svd(xc.T @ (a[:, None] * yc))
    return u @ vt


def _masses(weights: ArrayLike | None, n: int) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    return to_numpy(weights, np.float64)


def _whitening(h: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """ZCA whitening of ``h`` on its span: the shift, the matrix and the rank kept."""
    shift = a @ h
    hc = h - shift
    lam, v = np.linalg.eigh(hc.T @ (a[:, None] * hc))
    keep = lam > WHITEN_RTOL * max(float(lam.max()), 0.0)
    mat = (v[:, keep] / np.sqrt(lam[keep])) @ v[:, keep].T
    return shift, mat, int(keep.sum())


def _paired(x: np.ndarray, y: np.ndarray, a: np.ndarray) -> float:
    return float(a @ ((x - y) ** 2).sum(axis=1))


@dataclasses.dataclass(frozen=True)
class GaugeAlignment(Result):
    """What the alignment of a trajectory did.

    Attributes
    ----------
    gauge : {"orthogonal", "affine"}
    layers : tuple of int
        The layers rotated onto their predecessor (a segment's first layer is not).
    paired_before, paired_after : tuple of float
        Per rotated layer ``l``: the paired cost ``sum_i a_i ||h_l - h~_{l-1}||^2`` to the aligned
        previous layer before and after the rotation (after whitening for ``"affine"``).
    ranks : tuple of int
        Per layer, the dimension whitened (``"affine"``; the layer's dimension otherwise).
    """

    gauge: str
    layers: tuple[int, ...]
    paired_before: tuple[float, ...]
    paired_after: tuple[float, ...]
    ranks: tuple[int, ...]


def align_trajectory(
    traj: Trajectory, gauge: str = "orthogonal"
) -> tuple[Trajectory, GaugeAlignment]:
    """``traj`` with its layers in one basis per segment (see the module docstring).

    Returns the aligned trajectory (float64 NumPy layers; labels, names, weights and metadata
    kept, the gauge recorded in its metadata; shortcut images mapped with their target layer)
    and the :class:`GaugeAlignment`. ``gauge="none"`` returns ``traj`` unchanged.

    Raises
    ------
    ValueError
        An unknown gauge.
    """
    gauge = check_gauge(gauge)
    if gauge == "none":
        return traj, GaugeAlignment("none", (), (), (), tuple(traj.dims))
    a = _masses(traj.weights, traj.n_samples)
    layers = [to_numpy(h, np.float64) for h in traj.layers]
    maps: list[tuple[np.ndarray, np.ndarray]] = []  # per layer: shift, matrix
    ranks = []
    for h in layers:
        if gauge == "affine":
            shift, mat, r = _whitening(h, a)
        else:
            shift, mat, r = np.zeros(h.shape[1]), np.eye(h.shape[1]), h.shape[1]
        maps.append((shift, mat))
        ranks.append(r)
    out = [(h - s) @ m for h, (s, m) in zip(layers, maps, strict=True)]
    rotated, before, after = [], [], []
    for seg in traj.segments:
        for l in list(seg)[1:]:
            q = procrustes(out[l], out[l - 1], a)
            before.append(_paired(out[l], out[l - 1], a))
            out[l] = out[l] @ q
            after.append(_paired(out[l], out[l - 1], a))
            maps[l] = (maps[l][0], maps[l][1] @ q)
            rotated.append(l)
    shortcuts = {
        s: (to_numpy(img, np.float64) - maps[s + 1][0]) @ maps[s + 1][1]
        for s, img in traj.shortcuts.items()
    }
    rec = GaugeAlignment(gauge, tuple(rotated), tuple(before), tuple(after), tuple(ranks))
    meta = dict(traj.metadata)
    meta["gauge"] = gauge
    classifier = None  # an affine gauge's whitening has no inverse on a rank-deficient layer
    if traj.classifier is not None and gauge == "orthogonal":  # logits = h W^T = h~ (W Q)^T
        w, b = traj.classifier
        classifier = (to_numpy(w, np.float64) @ maps[-1][1], b)
    aligned = traj.replace(
        layers=tuple(out), shortcuts=shortcuts, classifier=classifier, metadata=meta
    )
    return aligned, rec
