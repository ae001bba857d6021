"""The cost between two point clouds, kept apart from the solvers that read it.

``C_ij = ||x_i - y_j||^2`` (the full squared Euclidean cost, POT's convention). The geometry
gives the dense matrix when it fits in the memory budget and refuses otherwise, or streams it in
row blocks, each block one GEMM ``||x||^2 + ||y||^2 - 2 x y^T``, so that entropic solvers need
only O((n + m) d) memory. Both clouds are shifted by one common vector (the midpoint of their
means): costs are unchanged, and the GEMM form loses less to cancellation.

Exact costs never come from the shifted copies: the shift rounds every coordinate to the
precision of the coordinate itself, which for tight clusters far from the origin (collapsed
features) is larger than the distances inside a cluster. :meth:`PointCloudCost.paired` and the
exact solvers' values use the original points (``x64``, ``y64``) and their differences; the GEMM
form is used only where :meth:`PointCloudCost.gemm_error` bounds its error.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import torch

from otcollapse.exceptions import DenseBudgetError

__all__ = [
    "DEFAULT_MAX_DENSE_BYTES",
    "PointCloudCost",
    "format_bytes",
    "is_uniform",
    "rows_per_block",
]

#: memory budget for a dense float64 cost matrix (and the exact solvers' copies of it)
DEFAULT_MAX_DENSE_BYTES = 2 * 1024**3
#: target size of one row block of the cost when it is streamed
BLOCK_BYTES = 64 * 1024**2
#: a block kept in cache between a product and its reductions (the assignment's scans)
CACHE_BLOCK_BYTES = 2 * 1024**2


def rows_per_block(cols: int, itemsize: int, budget: int | None = None, minimum: int = 1) -> int:
    """Rows of a ``cols``-wide block of ``itemsize``-byte entries that fit in ``budget`` bytes
    (default ``BLOCK_BYTES``; at least ``minimum``): the one sizer of every row-blocked pass."""
    budget = BLOCK_BYTES if budget is None else budget
    return max(minimum, budget // max(1, cols * itemsize))


def format_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``: sizes in binary units, readable at any scale."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class PointCloudCost:
    """Squared Euclidean cost between ``x`` (n, d) and ``y`` (m, d), dense or in row blocks.

    Parameters
    ----------
    x, y : Tensor
        Point clouds on one device, of one floating dtype.
    max_dense_bytes : int
        Budget for the dense float64 (n, m) matrices a solver holds at once; :meth:`dense`
        refuses beyond it (its ``copies`` says how many the caller holds).
    """

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, max_dense_bytes: int = DEFAULT_MAX_DENSE_BYTES
    ):
        self.x0, self.y0 = x, y
        shift = 0.5 * (x.mean(0) + y.mean(0))
        self.x = x - shift
        self.y = y - shift
        self.max_dense_bytes = int(max_dense_bytes)

    @functools.cached_property
    def x64(self) -> torch.Tensor:
        """The original (unshifted) ``x`` in float64: the source of every exact cost."""
        return self.x0.double()

    @functools.cached_property
    def y64(self) -> torch.Tensor:
        """The original (unshifted) ``y`` in float64."""
        return self.y0.double()

    def gemm_gamma(self, dtype: torch.dtype) -> float:
        """``gamma`` with ``|C_gemm_ij - c_ij| <= gamma (||x'_i|| + ||y'_j||)^2`` for the shifted
        points ``x'``, ``y'``: the dot product of length ``d + 2`` (``2 gamma_{d+2}``, Higham,
        "Accuracy and Stability of Numerical Algorithms", 2002, sec. 3.1), the squared norms,
        and the rounding of the shift in the clouds' own dtype (relative to ``x'`` itself)."""
        k = self.x.shape[1] + 2
        u = float(torch.finfo(dtype).eps) / 2
        u_shift = float(torch.finfo(self.x.dtype).eps) / 2
        return 2 * k * u / (1 - k * u) + 2 * k * u + 6 * u_shift

    def gemm_error(self, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> float:
        """A bound on ``|<pi, C_gemm> - <pi, C>|`` for every coupling ``pi`` of ``a`` and ``b``:
        ``2 gamma (sum_i a_i ||x'_i||^2 + sum_j b_j ||y'_j||^2)``, since
        ``(||x'_i|| + ||y'_j||)^2 <= 2 ||x'_i||^2 + 2 ||y'_j||^2``."""
        scale = float(a.double() @ self.xx.double() + b.double() @ self.yy.double())
        return 2 * self.gemm_gamma(dtype) * scale

    # squared norms on first use: the sparse assignment never needs them
    @functools.cached_property
    def xx(self) -> torch.Tensor:
        """``||x_i||^2`` after the shift, shape (n,)."""
        return self.x.square().sum(1)

    @functools.cached_property
    def yy(self) -> torch.Tensor:
        """``||y_j||^2`` after the shift, shape (m,)."""
        return self.y.square().sum(1)

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def m(self) -> int:
        return int(self.y.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    @property
    def device(self) -> torch.device:
        return self.x.device

    def dense_bytes(self, copies: float = 1.0) -> int:
        """Bytes of ``copies`` dense float64 (n, m) matrices."""
        return int(self.n * self.m * 8 * copies)

    def fits(self, copies: float = 1.0) -> bool:
        """Whether ``copies`` dense float64 (n, m) matrices fit in the budget."""
        return self.dense_bytes(copies) <= self.max_dense_bytes

    def dense(self, dtype: torch.dtype | None = None, *, copies: float = 1.0) -> torch.Tensor:
        """The dense (n, m) cost matrix, or a ValueError when the solver's ``copies`` of float64
        (n, m) matrices would exceed the budget."""
        if not self.fits(copies):
            raise DenseBudgetError(
                f"this solver needs {format_bytes(self.dense_bytes(copies))} of dense {self.n} x "
                f"{self.m} matrices, over the budget of {format_bytes(self.max_dense_bytes)} "
                "(max_dense_bytes); use method='sinkhorn' (chunked, O(n d) memory) or "
                "method='sliced', subsample, or raise max_dense_bytes if the machine has the memory."
            )
        return self.block(0, self.n, dtype)

    def block(self, start: int, stop: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Rows ``start:stop`` of the cost from one GEMM, clamped at zero.

        ``C = [x, ||x||^2, 1] [-2y, 1, ||y||^2]^T``: the norms ride along in two extra columns,
        so the block is written once, with no broadcast sums before or after the product.
        """
        dtype = dtype or self.dtype
        xb = self.x[start:stop].to(dtype)
        ones = torch.ones((stop - start, 1), dtype=dtype, device=self.device)
        left = torch.cat([xb, self.xx[start:stop, None].to(dtype), ones], dim=1)
        return (left @ self._right(dtype).T).clamp_(min=0)

    def _right(self, dtype: torch.dtype) -> torch.Tensor:
        """``[-2y, 1, ||y||^2]`` in ``dtype``, built once per dtype."""
        cache = self.__dict__.setdefault("_right_cache", {})
        if dtype not in cache:
            y = self.y.to(dtype)
            ones = torch.ones((self.m, 1), dtype=dtype, device=self.device)
            cache[dtype] = torch.cat([-2 * y, ones, self.yy[:, None].to(dtype)], dim=1)
        return cache[dtype]

    def block_rows(self, itemsize: int | None = None) -> int:
        """Rows per block so that one block of the cost takes about ``BLOCK_BYTES``."""
        itemsize = itemsize or self.x.element_size()
        return min(self.n, rows_per_block(self.m, itemsize))

    def blocks(self, dtype: torch.dtype | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``(start, stop, C[start:stop])`` over row blocks; never the whole matrix at once."""
        rows = self.block_rows(torch.empty((), dtype=dtype or self.dtype).element_size())
        for start in range(0, self.n, rows):
            stop = min(self.n, start + rows)
            yield start, stop, self.block(start, stop, dtype)

    def paired(self, cols: torch.Tensor) -> torch.Tensor:
        """``C[i, cols[i]]`` in float64, from the differences of the original points."""
        diff = self.x64 - self.y64[cols]
        return (diff * diff).sum(1)

    def transposed(self) -> PointCloudCost:
        """The geometry from ``y`` to ``x`` (same shift, same budget)."""
        t = PointCloudCost.__new__(PointCloudCost)
        t.x, t.y, t.xx, t.yy = self.y, self.x, self.yy, self.xx
        t.x0, t.y0 = self.y0, self.x0
        t.max_dense_bytes = self.max_dense_bytes
        return t

    def diameter_sq_bound(self) -> float:
        """An upper bound on ``max_ij C_ij``: ``(max ||x_i|| + max ||y_j||)^2`` after the shift."""
        return float((self.xx.max().sqrt() + self.yy.max().sqrt()) ** 2)

    def mean_cost(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """``sum_ij a_i b_j C_ij`` in O((n + m) d)."""
        xa = a.to(self.x.dtype) @ self.x
        yb = b.to(self.y.dtype) @ self.y
        val = a.to(self.xx.dtype) @ self.xx + b.to(self.yy.dtype) @ self.yy - 2 * (xa @ yb)
        return float(val)


def is_uniform(w: torch.Tensor) -> bool:
    """Whether the masses are all ``1/len(w)``, to a few ulps (the rounding of normalising them):
    masses that differ by more must be transported as they are."""
    return float((w.double() - 1.0 / len(w)).abs().max()) <= 8 * np.finfo(np.float64).eps / len(w)
