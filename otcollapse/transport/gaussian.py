"""Gaussian (Bures–Wasserstein) closed form from the empirical means and covariances."""

from __future__ import annotations

import time

import numpy as np
import torch

from otcollapse.transport.geometry import PointCloudCost, format_bytes
from otcollapse.transport.options import GaussianOptions
from otcollapse.transport.result import TransportResult

__all__ = ["bures_map", "gaussian_w2", "solve_gaussian", "sqrtm_psd"]


def _eigh(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric matrix; LAPACK's divide-and-conquer can fail to
    converge on rank-deficient matrices (a few points in many dimensions), so the SVD, which
    equals it for a PSD matrix, takes over then."""
    S = 0.5 * (S + S.T)
    try:
        return np.linalg.eigh(S)
    except np.linalg.LinAlgError:
        u, sv, _ = np.linalg.svd(S)
        return sv[::-1], u[:, ::-1]


def sqrtm_psd(S: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix.

    Eigenvalues within the rounding of the decomposition (``8 d eps`` of the largest) are set to
    zero: the square root would turn a rounding error of ``1e-16`` into ``1e-8`` (a singular
    covariance, e.g. fewer points than dimensions, has exact zeros there)."""
    vals, vecs = _eigh(S)
    floor = 8 * len(vals) * np.finfo(np.float64).eps * float(np.abs(vals).max(initial=0.0))
    vals = np.where(vals > floor, vals, 0.0)
    return (vecs * np.sqrt(vals)) @ vecs.T


def _check_covariance(S: np.ndarray, name: str) -> np.ndarray:
    """A symmetric PSD covariance, or a ValueError: its eigenvalues may dip below zero only by
    rounding (``1e-10`` of the largest)."""
    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1] or not np.all(np.isfinite(S)):
        raise ValueError(f"{name} must be a finite square matrix; got shape {S.shape}.")
    scale = float(np.abs(S).max()) if S.size else 0.0
    if float(np.abs(S - S.T).max(initial=0.0)) > 1e-10 * scale:
        raise ValueError(f"{name} is not symmetric; a covariance is.")
    low = float(_eigh(S)[0].min()) if S.size else 0.0
    if low < -1e-10 * scale:
        raise ValueError(
            f"{name} has a negative eigenvalue ({low:.3g}); a covariance is positive semi-definite."
        )
    return S


def gaussian_w2(m0: np.ndarray, S0: np.ndarray, m1: np.ndarray, S1: np.ndarray) -> float:
    """W2^2 between N(m0, S0) and N(m1, S1) (Dowson & Landau 1982; Olkin & Pukelsheim 1982).

    $$W_2^2 = \\|m_0 - m_1\\|^2 + \\operatorname{Tr}\\Big(\\Sigma_0 + \\Sigma_1
      - 2\\big(\\Sigma_1^{1/2} \\Sigma_0 \\Sigma_1^{1/2}\\big)^{1/2}\\Big).$$

    Rank-deficient (singular) covariances are allowed: ``Tr((S1^{1/2} S0 S1^{1/2})^{1/2})`` is
    computed as the nuclear norm of ``S0^{1/2} S1^{1/2}`` (the sum of its singular values), which
    needs no inverse. A covariance that is not symmetric positive semi-definite is refused.
    """
    m0, m1 = np.asarray(m0, dtype=np.float64), np.asarray(m1, dtype=np.float64)
    S0, S1 = _check_covariance(S0, "S0"), _check_covariance(S1, "S1")
    cross = np.linalg.svd(sqrtm_psd(S0) @ sqrtm_psd(S1), compute_uv=False).sum()
    val = float(np.sum((m0 - m1) ** 2) + np.trace(S0) + np.trace(S1) - 2 * cross)
    return max(val, 0.0)


def bures_map(S0: np.ndarray, S1: np.ndarray) -> np.ndarray:
    """The linear optimal map between centred Gaussians N(0, S0) -> N(0, S1) (S0 positive definite).

    $$A = \\Sigma_0^{-1/2} \\big(\\Sigma_0^{1/2} \\Sigma_1 \\Sigma_0^{1/2}\\big)^{1/2} \\Sigma_0^{-1/2},
      \\qquad A \\Sigma_0 A = \\Sigma_1,$$

    so ``T(x) = m_1 + A (x - m_0)`` pushes N(m0, S0) to N(m1, S1) optimally; ``(1 - t) x + t T(x)``
    is the McCann interpolation (a constant-speed geodesic).
    """
    S0 = np.asarray(S0, dtype=np.float64)
    vals, vecs = _eigh(S0)
    if vals.min() <= 1e-12 * max(vals.max(), 1e-300):
        raise ValueError("bures_map needs a positive-definite source covariance S0.")
    r0 = (vecs * np.sqrt(vals)) @ vecs.T
    r0_inv = (vecs / np.sqrt(vals)) @ vecs.T
    return r0_inv @ sqrtm_psd(r0 @ np.asarray(S1, dtype=np.float64) @ r0) @ r0_inv


def _moments(x: torch.Tensor, w: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    x = x.double()
    w = w.double()
    mean = w @ x
    xc = x - mean
    cov = (xc * w[:, None]).T @ xc
    return mean.cpu().numpy(), cov.cpu().numpy()


def solve_gaussian(
    geom: PointCloudCost,
    a: torch.Tensor,
    b: torch.Tensor,
    opts: GaussianOptions,
) -> TransportResult:
    """W2^2 between the Gaussians with the measures' means and covariances (weighted, ``1/sum w``).

    A lower bound on the W2^2 of the measures themselves (Gelbrich 1990), equal to it for
    Gaussian measures. Needs two d x d covariances: refused beyond the dense memory budget.
    """
    d = int(geom.x.shape[1])
    if 3 * d * d * 8 > geom.max_dense_bytes:
        raise ValueError(
            f"method='gaussian' needs {format_bytes(3 * d * d * 8)} of d x d matrices (d = {d}), "
            f"over max_dense_bytes ({format_bytes(geom.max_dense_bytes)}); "
            "project the layers first (Trajectory.project) or use method='sliced'."
        )
    t0 = time.perf_counter()
    m0, S0 = _moments(geom.x, a)
    m1, S1 = _moments(geom.y, b)
    cost = gaussian_w2(m0, S0, m1, S1)
    return TransportResult(
        cost=cost,
        quantity="W2^2 (Bures)",
        method="gaussian",
        params={"covariance": "weighted, normalised by sum of weights (population)"},
        converged=True,
        n_iter=None,
        gap=None,
        gap_kind=None,
        seconds=time.perf_counter() - t0,
    )
