"""The projected lower bound of the squared distances, and the scans that use it.

For an ``r``-dimensional projection ``P`` with ``||P||_2 <= 1`` (top principal directions of the
pooled clouds), ``||P^T (x_i - y_j)||^2 <= c_ij``: a lower bound of every pair's cost from one
float32 product of rank ``r + 2``, with the dual potentials folded into its extra columns and a
rigorous float32 rounding margin. :func:`scan` flags the pairs whose bound cannot rule them out;
:func:`pair_costs` gives exact float64 costs of scattered pairs from the original points.

References
----------
Halko, Martinsson & Tropp, "Finding structure with randomness", SIAM Review 53 (2011) (the
randomised range finder).
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch

from otcollapse.transport.geometry import CACHE_BLOCK_BYTES, rows_per_block

__all__ = [
    "ProjectedBound",
    "nearest",
    "pair_costs",
    "projection_basis",
    "scan",
    "scan_dtype",
]

#: rows of the pooled clouds used for the principal directions
PCA_ROWS = 512
#: target size of one block of the scan (kept in cache between the product and its reductions)
SCAN_BLOCK_BYTES = CACHE_BLOCK_BYTES
#: target size of the gathered rows when exact costs of scattered pairs are computed
PAIR_CHUNK_BYTES = 2 * 1024**2


def projection_basis(
    x: torch.Tensor, y: torch.Tensor, rank: int, *, iterations: int = 1, ordered: bool = True
) -> torch.Tensor:
    """A ``(d, rank)`` basis of the leading principal directions with ``||P||_2 <= 1``.

    Randomised range finder (Halko, Martinsson & Tropp 2011) on the covariance of up to
    ``PCA_ROWS`` evenly spaced rows of the pooled clouds: ``rank + 8`` Gaussian directions (a
    fixed seed), ``iterations`` power iterations with a QR each, then Rayleigh–Ritz, so the
    columns come in decreasing variance and ``P[:, :r]`` is the best available choice for every
    ``r <= rank``. With ``ordered=False`` (one rank only, no prefixes needed) it is leaner:
    ``rank`` directions, the power iterations with one QR at the end, no Rayleigh–Ritz; on
    n = 1000 this saves about a tenth of the whole solve. Their accuracy only affects how tight
    the bound is, not its validity: the
    basis is scaled so that ``||P||_2 <= 1`` holds rigorously,
    ``||P||_2^2 = \\lambda_{max}(P^T P) <= 1 + \\sum_{kl} |(P^T P - I)_{kl}|`` (plus the rounding of
    that product), hence ``||P^T (x_i - y_j)||^2 <= ||x_i - y_j||^2`` for every pair.
    """
    d = x.shape[1]
    dev = x.device
    half = PCA_ROWS // 2
    # float32 is plenty for the directions: the rigour comes from the scaling below, in float64
    z = torch.cat([x[:: max(1, len(x) // half)], y[:: max(1, len(y) // half)]]).float()
    if ordered:  # principal directions of the covariance; else of the second moments (the
        z = z - z.mean(0)  # clouds come centred, or nearly, from the geometry and the solver)
    # the covariance pays when it is applied often enough (the ordered basis: several products)
    cov = z.T @ z if ordered and d <= z.shape[0] else None

    def apply(q: torch.Tensor) -> torch.Tensor:
        return cov @ q if cov is not None else z.T @ (z @ q)

    width = min(d, rank + 8) if ordered else rank
    gen = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn((d, width), generator=gen).to(dev)
    if ordered:
        for _ in range(iterations + 1):
            q, _ = torch.linalg.qr(apply(q))
        _, evecs = torch.linalg.eigh((q.T @ apply(q)).double())
        basis = (q.double() @ evecs.flip(1)[:, :rank]).contiguous()
    else:
        for _ in range(iterations + 1):  # rescaled, not orthonormalised, between the steps
            q = apply(q)
            q = q / q.abs().max().clamp(min=torch.finfo(q.dtype).tiny)
        basis = torch.linalg.qr(q)[0].double().contiguous()
    eye = torch.eye(rank, dtype=torch.float64, device=dev)
    # the computed product errs by at most gamma_d per entry; 1e-12 covers the division below
    eps64 = float(np.finfo(np.float64).eps)
    excess = float((basis.T @ basis - eye).abs().sum()) + rank * rank * d * eps64 + 1e-12
    return basis / math.sqrt(1.0 + excess)


class ProjectedBound:
    """Lower bounds ``||P^T (x_i - y_j)||^2 <= c_ij`` from one GEMM of rank ``r + 2``.

    With the potentials folded in, ``L = [a, ||a||^2 - u, 1]`` and ``R = [-2 b, 1, ||b||^2 - v]``
    (``a = P^T x``, ``b = P^T y`` rounded to the scan dtype) give
    ``(L R^T)_ij = ||a_i - b_j||^2 - u_i - v_j``. The computed entry differs from the exact
    reduced lower bound by at most the margin :meth:`factors` returns (the dot product error
    ``gamma_K sum |L_ik R_jk|`` with ``gamma_K = K u / (1 - K u)``, the rounding of the
    folded columns and of ``a``, ``b`` themselves, doubled for safety), so a pair with
    ``(L R^T)_ij >= margin`` satisfies ``u_i + v_j <= c_ij`` for certain.
    """

    def __init__(
        self,
        x64: torch.Tensor,
        y64: torch.Tensor,
        basis: torch.Tensor | None,
        dtype: torch.dtype,
        radius: float | None = None,
    ):
        """``radius``: an upper bound on every ``||x_i||`` and ``||y_j||`` (computed if None)."""
        self.dtype = dtype
        a = x64 if basis is None else x64 @ basis
        b = y64 if basis is None else y64 @ basis
        self.a, self.b = a.to(dtype), b.to(dtype)
        # norms of the rounded vectors, in float64
        self.aa = (self.a.double() ** 2).sum(1)
        self.bb = (self.b.double() ** 2).sum(1)
        self.rank = int(a.shape[1])
        self.unit = float(torch.finfo(dtype).eps) / 2
        self.amax, self.bmax = float(self.aa.max()), float(self.bb.max())
        # error of the float64 projections themselves: gamma_d ||x_i|| per unit column, sqrt(r)
        # columns, for a_i and b_j together (none without a projection)
        # and of the shifted copies themselves (each coordinate rounded relative to itself)
        if radius is None:
            radius = math.sqrt(
                max(float((x64 * x64).sum(1).max()), float((y64 * y64).sum(1).max()))
            )
        eps64 = float(np.finfo(np.float64).eps) / 2
        self.proj_error = 2 * 1.01 * eps64 * radius
        if basis is not None:
            self.proj_error += 2 * 1.01 * x64.shape[1] * eps64 * math.sqrt(self.rank) * radius

    def factors(self, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``L``, ``R`` and the rounding margin for potentials ``u``, ``v`` (float64)."""
        alpha, beta = self.aa - u, self.bb - v
        n, m = len(alpha), len(beta)
        dev = self.a.device
        left = torch.cat(
            [
                self.a,
                alpha[:, None].to(self.dtype),
                torch.ones((n, 1), dtype=self.dtype, device=dev),
            ],
            dim=1,
        )
        right = torch.cat(
            [
                -2 * self.b,
                torch.ones((m, 1), dtype=self.dtype, device=dev),
                beta[:, None].to(self.dtype),
            ],
            dim=1,
        )
        amax_fold, bmax_fold = float(alpha.abs().max()), float(beta.abs().max())
        k = self.rank + 2
        gamma = k * self.unit / (1 - k * self.unit)
        product = gamma * (self.amax + self.bmax + amax_fold + bmax_fold)
        folding = self.unit * (amax_fold + bmax_fold)
        # ||a - b|| >= ||a_hat - b_hat|| - eta with eta the rounding of a and b, so
        # ||a - b||^2 >= ||a_hat - b_hat||^2 - 2 eta (||a_hat|| + ||b_hat||)
        norms = math.sqrt(self.amax) + math.sqrt(self.bmax)
        rounding = 2 * (1.01 * self.unit * norms + self.proj_error) * norms
        # float64 arithmetic in the norms and the folded columns
        slack = (
            64 * float(np.finfo(np.float64).eps) * (self.amax + self.bmax + amax_fold + bmax_fold)
        )
        return left, right, 2.0 * (product + folding + rounding + slack)


def _block_rows(m: int, itemsize: int) -> int:
    return rows_per_block(m, itemsize, SCAN_BLOCK_BYTES, minimum=16)


_SCRATCH = threading.local()


def _scratch(rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
    """A ``(rows, cols)`` block for the scan's products, kept per thread between calls.

    A fresh multi-megabyte tensor per block comes from newly mapped pages (the C allocator hands
    large blocks back to the system when they are freed), and faulting them in costs several
    times the product itself at n = 1000; one kept buffer pays that once per process.
    """
    if rows * cols * like.element_size() > 2 * SCAN_BLOCK_BYTES:  # huge m: not kept
        return torch.empty((rows, cols), dtype=like.dtype, device=like.device)
    key = (like.device, like.dtype)
    pool = _SCRATCH.__dict__.setdefault("pool", {})
    buf = pool.get(key)
    if buf is None or buf.numel() < rows * cols:
        buf = pool[key] = torch.empty(rows * cols, dtype=like.dtype, device=like.device)
    return buf[: rows * cols].view(rows, cols)


def scan(
    bound: ProjectedBound,
    u: torch.Tensor,
    v: torch.Tensor,
    sigma: torch.Tensor,
    budget: int,
    block_bytes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """The pairs ``(i, j)``, ``j != sigma(i)``, whose lower bound cannot certify
    ``u_i + v_j <= c_ij``; None once more than ``budget`` are flagged. ``block_bytes``: the
    size of one block of the product (default: cache-sized)."""
    left, right, margin = bound.factors(u, v)
    n, m = left.shape[0], right.shape[0]
    if block_bytes is None:
        rows = min(n, _block_rows(m, left.element_size()))
    else:
        rows = min(n, rows_per_block(m, left.element_size(), block_bytes, minimum=16))
    block = _scratch(rows, m, left)
    identity = n == m and bool((sigma == torch.arange(n, device=sigma.device)).all())
    out_i, out_j = [], []
    count = 0
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        s = torch.matmul(left[start:stop], right.T, out=block[: stop - start])
        if identity:  # the matched pairs are a diagonal of the block: a strided fill
            s.diagonal(start).fill_(math.inf)
        else:
            s[torch.arange(stop - start, device=s.device), sigma[start:stop]] = math.inf
        low = s.amin(1) < margin
        if not bool(low.any()):
            continue
        hit_rows = low.nonzero()[:, 0]
        hits = (s[hit_rows] < margin).nonzero()
        count += hits.shape[0]
        if count > budget:
            return None
        out_i.append(hit_rows[hits[:, 0]] + start)
        out_j.append(hits[:, 1])
    if not out_i:
        empty = torch.zeros(0, dtype=torch.long, device=left.device)
        return empty, empty, margin
    return torch.cat(out_i), torch.cat(out_j), margin


def nearest(bound: ProjectedBound, k: int) -> torch.Tensor:
    """Each source's ``k`` nearest targets in the projection, shape (n, k)."""
    zeros_u = torch.zeros_like(bound.aa)
    zeros_v = torch.zeros_like(bound.bb)
    left, right, _ = bound.factors(zeros_u, zeros_v)
    n, m = left.shape[0], right.shape[0]
    k = min(k, m)
    rows = min(n, _block_rows(m, left.element_size()))
    block = _scratch(rows, m, left)
    out = []
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        s = torch.matmul(left[start:stop], right.T, out=block[: stop - start])
        out.append(torch.topk(s, k, dim=1, largest=False).indices)
    return torch.cat(out)


def pair_costs(
    x64: torch.Tensor,
    y64: torch.Tensor,
    i: torch.Tensor,
    j: torch.Tensor,
    delta: torch.Tensor | None = None,
) -> torch.Tensor:
    """``||x_i - y_j - delta||^2`` in float64 from the differences, in cache-sized chunks.

    Pass the original points: the difference ``x_i - y_j`` is then rounded relative to itself,
    so the cost is accurate to its own size however far the points are from the origin."""
    m, d = len(i), x64.shape[1]
    out = torch.empty(m, dtype=torch.float64, device=x64.device)
    chunk = max(1, min(m, PAIR_CHUNK_BYTES // (8 * d)))
    left = torch.empty((chunk, d), dtype=torch.float64, device=x64.device)
    right = torch.empty_like(left)
    for s in range(0, m, chunk):
        e = min(m, s + chunk)
        lb, rb = left[: e - s], right[: e - s]
        torch.index_select(x64, 0, i[s:e], out=lb)
        torch.index_select(y64, 0, j[s:e], out=rb)
        lb.sub_(rb)
        if delta is not None:
            lb.sub_(delta)
        lb.mul_(lb)
        torch.sum(lb, 1, out=out[s:e])
    return out


# ============================================================================ sparse solve


def scan_dtype(device: torch.device) -> torch.dtype:
    """float32 where its products are true float32 (no TF32 or bfloat16 shortcuts), else float64."""
    if torch.get_float32_matmul_precision() != "highest":
        return torch.float64
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return torch.float64
    return torch.float32
