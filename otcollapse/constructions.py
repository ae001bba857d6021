"""Known-answer constructions: simplex ETFs, the transparent model, exact discrete geodesics.

These build data whose optimal-transport and collapse quantities are known in closed form; the
tests check the analyses against those answers (the answers themselves live in ``tests/``).
"""

from __future__ import annotations

import numpy as np

from otcollapse._utils import ArrayLike, rng, to_numpy
from otcollapse.measures import Trajectory

__all__ = [
    "NULL_KINDS",
    "discrete_geodesic",
    "etf_clusters",
    "null_trajectory",
    "simplex_etf",
    "transparent_model",
]


def simplex_etf(K: int, d: int | None = None, seed: int | None = 0) -> np.ndarray:
    """A simplex equiangular tight frame: ``K`` unit vectors in ``R^d`` with cosines ``-1/(K-1)``.

    $$M = \\sqrt{\\tfrac{K}{K-1}}\\; R\\, Q^\\top, \\qquad
      M^\\top M = \\tfrac{K}{K-1}\\Big(I_K - \\tfrac{1}{K}\\mathbf 1\\mathbf 1^\\top\\Big),$$

    with ``Q`` (K, K-1) an orthonormal basis of the vectors orthogonal to ``1`` and ``R`` (d, K-1)
    with orthonormal columns: seeded random when ``seed`` is an int, the first ``K - 1`` coordinate
    axes when ``seed`` is None.

    Parameters
    ----------
    K : int
        Number of vertices, ``K >= 2``.
    d : int, optional
        Ambient dimension, ``d >= K - 1``; defaults to ``K``.
    seed : int or None

    Returns
    -------
    ndarray, shape (d, K)
        The vertices as columns.

    References
    ----------
    Papyan, Han & Donoho, "Prevalence of neural collapse during the terminal phase of deep
    learning training", PNAS 2020.
    """
    if K < 2:
        raise ValueError(f"a simplex ETF needs K >= 2 vertices; got K = {K}.")
    d = K if d is None else int(d)
    if d < K - 1:
        raise ValueError(
            f"a simplex ETF of K = {K} vertices needs d >= K - 1 = {K - 1}; got d = {d}."
        )
    centred = np.eye(K) - 1.0 / K
    q, _ = np.linalg.qr(centred[:, : K - 1])  # orthonormal basis of 1-perp
    if seed is None:
        r = np.eye(d, K - 1)
    else:
        r, _ = np.linalg.qr(rng(seed).standard_normal((d, K - 1)))
    return np.sqrt(K / (K - 1)) * r @ q.T


def etf_clusters(
    K: int, d: int, r: float, sigma: float, seed: int | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Classes around a scaled simplex ETF with within-class covariance exactly ``sigma^2 I``.

    Class ``k`` is the ``2d`` points ``m_k +- sigma sqrt(d) e_j`` (j = 1..d) with ``m_k = r u_k``
    and ``u_k`` the vertices of :func:`simplex_etf`. Then ``Sigma_W = sigma^2 I_d`` and
    ``Sigma_B = (r^2 / K) * K/(K-1) * P`` exactly, which gives the collapse metrics in closed form.

    Returns
    -------
    X : ndarray, shape (2 d K, d)
    y : ndarray of int, shape (2 d K,)
    """
    if sigma < 0 or r < 0:
        raise ValueError("r and sigma must be non-negative.")
    means = r * simplex_etf(K, d, seed).T  # (K, d)
    offsets = sigma * np.sqrt(d) * np.concatenate([np.eye(d), -np.eye(d)])  # (2d, d)
    X = (means[:, None, :] + offsets[None, :, :]).reshape(-1, d)
    y = np.repeat(np.arange(K), 2 * d)
    return X, y


def transparent_model(
    x: ArrayLike,
    y: ArrayLike,
    n_layers: int,
    etf: ArrayLike | None = None,
    *,
    seed: int | None = 0,
) -> Trajectory:
    """The transparent model of a well-trained ResNet: features move straight to their ETF vertex.

    $$h_l(x) = \\big(1 - \\tfrac{l}{L}\\big)\\, x + \\tfrac{l}{L}\\, m_{y}, \\qquad l = 0..L,$$

    so the within-class covariance shrinks as ``Sigma_W(l) = (1 - l/L)^2 Sigma_W(0)`` exactly.

    Parameters
    ----------
    x : array-like, shape (n, d)
    y : array-like of int, shape (n,)
        Labels in ``0..K-1``.
    n_layers : int
        ``L``: the number of steps (the trajectory has ``L + 1`` layers).
    etf : array-like, shape (d, K), optional
        Class targets ``m_k`` as columns; defaults to ``simplex_etf(K, d, seed)``.

    References
    ----------
    Wang, Gai & Zhang, "Progressive Feedforward Collapse of ResNet Training".
    """
    x = to_numpy(x, dtype=np.float64)
    y = to_numpy(y).astype(np.int64)
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1; got {n_layers}.")
    K = int(y.max()) + 1
    M = simplex_etf(K, x.shape[1], seed) if etf is None else to_numpy(etf, dtype=np.float64)
    if M.ndim != 2 or M.shape[0] != x.shape[1] or M.shape[1] < K:
        raise ValueError(f"etf must have shape (d, K) = {(x.shape[1], K)}; got {M.shape}.")
    target = M[:, y].T
    t = np.arange(n_layers + 1) / n_layers
    layers = [(1 - s) * x + s * target for s in t]
    return Trajectory.from_arrays(layers, labels=y, metadata={"construction": "transparent_model"})


def discrete_geodesic(
    x0: ArrayLike,
    x1: ArrayLike,
    sigma: ArrayLike,
    n_layers: int,
    labels: ArrayLike | None = None,
) -> Trajectory:
    """The displacement interpolation between two point clouds along a given matching.

    $$h_l(i) = \\big(1 - \\tfrac{l}{L}\\big)\\, x^0_i + \\tfrac{l}{L}\\, x^1_{\\sigma(i)}, \\qquad l = 0..L.$$

    When ``sigma`` is an optimal assignment between the uniform measures on ``x0`` and ``x1``, the
    layers lie in order, equally spaced, on one Wasserstein geodesic (McCann 1997), so the path
    ratio is 1, the speed constant and every block an optimal map.

    Parameters
    ----------
    x0, x1 : array-like, shape (n, d)
    sigma : array-like of int, shape (n,)
        A permutation: sample ``i`` of ``x0`` travels to ``x1[sigma[i]]``.
    n_layers : int
        ``L``: the number of steps.
    """
    x0 = to_numpy(x0, dtype=np.float64)
    x1 = to_numpy(x1, dtype=np.float64)
    s = to_numpy(sigma).astype(np.int64)
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape; got {x0.shape} and {x1.shape}.")
    if s.shape != (x0.shape[0],) or not np.array_equal(np.sort(s), np.arange(x0.shape[0])):
        raise ValueError("sigma must be a permutation of 0..n-1.")
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1; got {n_layers}.")
    t = np.arange(n_layers + 1) / n_layers
    layers = [(1 - u) * x0 + u * x1[s] for u in t]
    return Trajectory.from_arrays(
        layers, labels=labels, metadata={"construction": "discrete_geodesic"}
    )


#: the null trajectories of :func:`null_trajectory`
NULL_KINDS = ("random_walk", "unrelated")


def null_trajectory(
    kind: str, n: int, d: int, n_layers: int, seed: int = 0, labels: ArrayLike | None = None
) -> Trajectory:
    r"""A trajectory with no geodesic structure: the baseline a network's scores are read against.

    ``kind="random_walk"``: ``h_0 ~ N(0, I_d)`` and ``h_l = h_{l-1} + \xi_l`` with independent
    ``\xi_l ~ N(0, I_d)``: every track is a random walk. Its unit steps are independent, so
    ``|\sum_l u_l|^2 \approx L`` and the line-shape score is about ``\sqrt{L}``.

    ``kind="unrelated"``: every layer an independent ``N(0, I_d)`` sample: the layers share no
    basis and no pairing. Successive unit steps share a point, ``\cos(u_l, u_{l+1}) \approx
    -1/2``, so ``|\sum_l u_l|^2 \approx 1`` and the line-shape score is about ``L``.

    (Both for large ``d``; at small ``d`` the measured values differ, which is why the report
    measures them at the network's ``n``, ``d`` and ``L`` rather than quoting the limits.)

    Parameters
    ----------
    kind : {"random_walk", "unrelated"}
    n, d : int
        Samples and dimension.
    n_layers : int
        Layers ``L + 1`` (at least 2).
    seed : int
    labels : array-like of int, shape (n,), optional
        Carried along (the scores do not use them).

    Examples
    --------
    >>> from otcollapse.geodesic import lss
    >>> round(lss(null_trajectory("random_walk", 2000, 512, 5)).mean, 1)   # sqrt(4) = 2
    2.0
    """
    if kind not in NULL_KINDS:
        raise ValueError(f"unknown null trajectory {kind!r}; use one of {list(NULL_KINDS)}.")
    g = rng(seed)
    if n_layers < 2:
        raise ValueError(f"a null trajectory needs at least 2 layers; got {n_layers}.")
    steps = g.normal(size=(n_layers, n, d))
    layers = np.cumsum(steps, axis=0) if kind == "random_walk" else steps
    return Trajectory.from_arrays(list(layers), labels=labels, names=None)
