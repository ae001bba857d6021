"""Gromov–Wasserstein between measures in spaces of different dimensions (POT)."""

from __future__ import annotations

import time

import ot
import torch

from otcollapse.transport.geometry import format_bytes
from otcollapse.transport.options import GromovOptions
from otcollapse.transport.result import TransportResult

__all__ = ["solve_gromov"]


def solve_gromov(
    x: torch.Tensor,
    y: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    opts: GromovOptions,
    *,
    max_dense_bytes: int,
) -> TransportResult:
    """Gromov–Wasserstein discrepancy with square loss on squared Euclidean distances.

    $$GW(\\mu, \\nu) = \\min_{\\pi \\in \\Pi(a, b)} \\sum_{ijkl}
      \\big(\\|x_i - x_k\\|^2 - \\|y_j - y_l\\|^2\\big)^2 \\pi_{ij} \\pi_{kl},$$

    solved by POT's conditional gradient (``ot.gromov.gromov_wasserstein2``), a local method on
    a non-convex problem: the value is an upper bound found from the product coupling. It
    compares intra-space distances, so ``x`` and ``y`` may have different dimensions; it is not
    a W2 and ``quantity`` says ``"GW"``. ``converged`` means the relative/absolute tolerance
    was met before ``max_iter``.

    References
    ----------
    Mémoli, "Gromov–Wasserstein distances and the metric approach to object matching",
    Found. Comput. Math. 2011; Peyré, Cuturi & Solomon, ICML 2016.
    """
    max_iter, tol = opts.max_iter, opts.tol
    n, m = int(x.shape[0]), int(y.shape[0])
    need = (n * n + m * m + 2 * n * m) * 8
    if need > max_dense_bytes:
        raise ValueError(
            f"method='gromov' needs {format_bytes(need)} of dense matrices, over max_dense_bytes "
            f"({format_bytes(max_dense_bytes)}); "
            "subsample the measures (Trajectory.subsample) or project to one dimension and use "
            "method='sinkhorn' or 'sliced'."
        )
    t0 = time.perf_counter()
    xd, yd = x.double().cpu().numpy(), y.double().cpu().numpy()
    C1, C2 = ot.dist(xd, xd), ot.dist(yd, yd)
    a_np, b_np = a.double().cpu().numpy(), b.double().cpu().numpy()
    value, log = ot.gromov.gromov_wasserstein2(
        C1,
        C2,
        a_np,
        b_np,
        loss_fun="square_loss",
        log=True,
        max_iter=max_iter,
        tol_rel=tol,
        tol_abs=tol,
    )
    n_iter = max(0, len(log.get("loss", [])) - 1)
    return TransportResult(
        cost=float(value),
        quantity="GW",
        method="gromov",
        params={
            "solver": "POT conditional gradient (ot.gromov.gromov_wasserstein2)",
            "loss": "square_loss on squared Euclidean distances",
            "tol": tol,
            "max_iter": max_iter,
        },
        converged=n_iter < max_iter,
        n_iter=n_iter,
        gap=None,
        gap_kind=None,
        seconds=time.perf_counter() - t0,
        plan=log["T"] if opts.return_plan else None,
    )
