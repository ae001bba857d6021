"""The cost between two point clouds, kept apart from the solvers that read it.

``C_ij = ||x_i - y_j||^2`` (the full squared Euclidean cost, POT's convention). The geometry
gives the dense matrix when it fits in the memory budget and refuses otherwise, or streams it in
row blocks, each block one GEMM ``||x||^2 + ||y||^2 - 2 x y^T``, so that entropic solvers need
only O((n + m) d) memory. Both clouds are shifted by one common vector (the midpoint of their
means): costs are unchanged, and the GEMM form loses less to cancellation.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = ["DEFAULT_MAX_DENSE_BYTES", "PointCloudCost"]

#: memory budget for a dense float64 cost matrix (and the exact solvers' copies of it)
DEFAULT_MAX_DENSE_BYTES = 2 * 1024**3
#: target size of one row block of the cost when it is streamed
BLOCK_BYTES = 64 * 1024**2


class PointCloudCost:
    """Squared Euclidean cost between ``x`` (n, d) and ``y`` (m, d), dense or in row blocks.

    Parameters
    ----------
    x, y : Tensor
        Point clouds on one device, of one floating dtype.
    max_dense_bytes : int
        Budget for one dense float64 matrix; :meth:`dense` refuses beyond it.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, max_dense_bytes: int = DEFAULT_MAX_DENSE_BYTES):
        shift = 0.5 * (x.mean(0) + y.mean(0))
        self.x = x - shift
        self.y = y - shift
        self.max_dense_bytes = int(max_dense_bytes)
        self.xx = (self.x * self.x).sum(1)
        self.yy = (self.y * self.y).sum(1)

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

    def dense_bytes(self) -> int:
        return self.n * self.m * 8

    def fits(self) -> bool:
        """Whether a dense float64 cost matrix fits in the budget."""
        return self.dense_bytes() <= self.max_dense_bytes

    def dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense (n, m) cost matrix, or a ValueError when it exceeds the budget."""
        if not self.fits():
            raise ValueError(
                f"the dense {self.n} x {self.m} cost matrix needs {self.dense_bytes() / 1e9:.1f} GB, "
                f"over the budget of {self.max_dense_bytes / 1e9:.1f} GB (max_dense_bytes); use "
                "method='sinkhorn' (chunked, O(n d) memory) or method='sliced', subsample, or "
                "raise max_dense_bytes if the machine has the memory."
            )
        return self.block(0, self.n, dtype)

    def block(self, start: int, stop: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Rows ``start:stop`` of the cost, from one GEMM, clamped at zero."""
        dtype = dtype or self.dtype
        xb = self.x[start:stop].to(dtype)
        c = torch.addmm(
            self.xx[start:stop, None].to(dtype) + self.yy[None, :].to(dtype),
            xb,
            self.y.to(dtype).T,
            alpha=-2.0,
        )
        return c.clamp_(min=0)

    def block_rows(self, itemsize: int | None = None) -> int:
        """Rows per block so that one block of the cost takes about ``BLOCK_BYTES``."""
        itemsize = itemsize or self.x.element_size()
        return max(1, min(self.n, BLOCK_BYTES // max(1, self.m * itemsize)))

    def blocks(self, dtype: torch.dtype | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``(start, stop, C[start:stop])`` over row blocks; never the whole matrix at once."""
        rows = self.block_rows(torch.empty((), dtype=dtype or self.dtype).element_size())
        for start in range(0, self.n, rows):
            stop = min(self.n, start + rows)
            yield start, stop, self.block(start, stop, dtype)

    def paired(self, cols: torch.Tensor) -> torch.Tensor:
        """``C[i, cols[i]]`` in float64, from the differences (no cancellation)."""
        diff = self.x.double() - self.y.double()[cols]
        return (diff * diff).sum(1)

    def transposed(self) -> PointCloudCost:
        """The geometry from ``y`` to ``x`` (same shift, same budget)."""
        t = PointCloudCost.__new__(PointCloudCost)
        t.x, t.y, t.xx, t.yy = self.y, self.x, self.yy, self.xx
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
