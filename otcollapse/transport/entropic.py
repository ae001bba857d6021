"""Entropic optimal transport: log-domain Sinkhorn with epsilon-scaling, dense or chunked.

With ``C_ij = ||x_i - y_j||^2`` and ``eps`` in the units of ``C``:

$$OT_\\varepsilon(\\mu, \\nu) = \\min_{\\pi \\in \\Pi(a, b)} \\langle \\pi, C \\rangle
  + \\varepsilon\\, \\mathrm{KL}(\\pi \\,\\|\\, a \\otimes b),$$

with minimiser ``pi_eps``. Sinkhorn iterates the dual potentials in the log domain,

$$f_i \\leftarrow -\\varepsilon \\log \\sum_j b_j\\, e^{(g_j - C_{ij})/\\varepsilon}, \\qquad
  g_j \\leftarrow -\\varepsilon \\log \\sum_i a_i\\, e^{(f_i - C_{ij})/\\varepsilon},$$

so ``pi_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)``. Each update is computed over row blocks of
the cost, every block one GEMM (``C = ||x||^2 + ||y||^2 - 2 x y^T``): memory stays O((n + m) d)
plus one block, never an n x m matrix ("chunked"; a single block is the "dense" case).

References
----------
Cuturi, "Sinkhorn distances", NeurIPS 2013; Schmitzer, "Stabilized sparse scaling algorithms for
entropy regularized transport problems", SIAM J. Sci. Comput. 2019 (log domain, eps-scaling);
Feydy et al., "Interpolating between optimal transport and MMD using Sinkhorn divergences",
AISTATS 2019 (debiasing; GeomLoss).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from otcollapse._utils import progress_bar
from otcollapse.transport.geometry import PointCloudCost
from otcollapse.transport.options import SinkhornOptions
from otcollapse.transport.result import TransportResult

__all__ = ["entropic_plan_cost", "softmin", "solve_sinkhorn"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64, None: None}


def softmin(geom: PointCloudCost, h: torch.Tensor, log_w: torch.Tensor, eps: float) -> torch.Tensor:
    """``-eps log sum_q w_q exp((h_q - C(p, q)) / eps)`` for every row point ``p``, by row blocks.

    Uses ``(h_q - C_pq)/eps = -||p||^2/eps + (2 p.q + h_q - ||q||^2)/eps``, so each block is one
    GEMM scaled and shifted in place, then a log-sum-exp over the row.
    """
    out = torch.empty(geom.n, dtype=geom.dtype, device=geom.device)
    shift = ((h - geom.yy) / eps + log_w)[None, :]
    yT = geom.y.T
    rows = geom.block_rows()
    for start in range(0, geom.n, rows):
        stop = min(geom.n, start + rows)
        # one fused GEMM gives the scaled, shifted block: no extra passes over it
        s = torch.addmm(shift, geom.x[start:stop], yT, alpha=2.0 / eps)
        out[start:stop] = geom.xx[start:stop] - eps * torch.logsumexp(s, dim=1)
    return out


def entropic_plan_cost(
    geom: PointCloudCost,
    f: torch.Tensor,
    g: torch.Tensor,
    log_a: torch.Tensor,
    log_b: torch.Tensor,
    eps: float,
    *,
    want_plan: bool = False,
) -> tuple[float, float, torch.Tensor | None]:
    """One pass over row blocks of ``pi = a b exp((f + g - C) / eps)``.

    Returns ``<pi, C>``, the L1 marginal error ``||pi 1 - a||_1 + ||pi^T 1 - b||_1`` and, on
    request, the dense plan.
    """
    total = torch.zeros((), dtype=torch.float64, device=geom.device)
    row = torch.empty(geom.n, dtype=torch.float64, device=geom.device)
    col = torch.zeros(geom.m, dtype=torch.float64, device=geom.device)
    plan = (
        torch.empty((geom.n, geom.m), dtype=geom.dtype, device=geom.device) if want_plan else None
    )
    for start, stop, c in geom.blocks():
        logp = (
            (f[start:stop, None] + g[None, :] - c) / eps + log_a[start:stop, None] + log_b[None, :]
        )
        p = torch.exp(logp)
        total += (p * c).sum(dtype=torch.float64)
        row[start:stop] = p.sum(1, dtype=torch.float64)
        col += p.sum(0, dtype=torch.float64)
        if plan is not None:
            plan[start:stop] = p
    err = (row - log_a.exp().double()).abs().sum() + (col - log_b.exp().double()).abs().sum()
    return float(total), float(err), plan


def _schedule(geom: PointCloudCost, eps: float, scaling: float) -> list[float]:
    """Geometric annealing from the squared diameter down to ``eps`` (one update per stage)."""
    eps0 = max(geom.diameter_sq_bound(), eps)
    n_stages = math.ceil(math.log(eps0 / eps) / -math.log(scaling)) if eps0 > eps else 0
    return [max(eps, eps0 * scaling**k) for k in range(n_stages)]


class _Problem:
    """One entropic problem of the loop: OT_eps(a, b) by alternating updates of ``(f, g)``, or a
    symmetric OT_eps(a, a) by the averaged update ``f <- (f + T(f)) / 2`` (Feydy et al. 2019)."""

    def __init__(self, geom: PointCloudCost, log_a: torch.Tensor, log_b: torch.Tensor | None):
        self.geom, self.log_a, self.log_b = geom, log_a, log_b
        self.geom_t = None if log_b is None else geom.transposed()
        self.a = log_a.exp()
        self.f = torch.zeros(geom.n, dtype=geom.dtype, device=geom.device)
        self.g = (
            self.f if log_b is None else torch.zeros(geom.m, dtype=geom.dtype, device=geom.device)
        )

    def update(self, eps: float) -> float:
        """One update at ``eps``; returns the L1 error of the row marginal before it (the row
        marginal of the plan ``(f, g)`` is ``a_i exp((f_i - T(g)_i) / eps)``: the error is free)."""
        if self.log_b is None:
            t = softmin(self.geom, self.f, self.log_a, eps)
            err = float((self.a * torch.expm1((self.f - t) / eps).abs()).sum())
            self.f = self.g = 0.5 * (self.f + t)
            return err
        f_new = softmin(self.geom, self.g, self.log_b, eps)
        err = float((self.a * torch.expm1((self.f - f_new) / eps).abs()).sum())
        self.f = f_new
        self.g = softmin(self.geom_t, self.f, self.log_a, eps)
        return err


def _sinkhorn(
    problems: list[_Problem],
    eps: float,
    scaling: float,
    tol: float,
    max_iter: int,
    progress: bool = False,
) -> tuple[int, list[float]]:
    """The one Sinkhorn loop: eps-scaling stages, then updates at ``eps`` of every problem in
    lockstep until each row-marginal error is at most ``tol`` or ``max_iter``. Returns the
    iterations at ``eps`` and each problem's last error."""
    for e in _schedule(problems[0].geom, eps, scaling):
        for p in problems:
            p.update(e)
    errs = [math.inf] * len(problems)
    it = 0
    bar = progress_bar(progress=progress, desc="sinkhorn", total=max_iter)
    while it < max_iter:
        errs = [p.update(eps) if e > tol else e for p, e in zip(problems, errs, strict=True)]
        it += 1
        bar.update(1)
        bar.set_postfix(marginal_error=f"{max(errs):.2e}", refresh=False)
        if max(errs) <= tol:
            break
    bar.close()
    return it, errs


def solve_sinkhorn(
    geom: PointCloudCost,
    a: torch.Tensor,
    b: torch.Tensor,
    opts: SinkhornOptions,
) -> TransportResult:
    """Entropic transport by log-domain Sinkhorn with eps-scaling, in torch on the input's device.

    Options (:class:`~otcollapse.transport.options.SinkhornOptions`)
    ----------------------------------------------------------------
    eps : float, optional
        Regularisation in the units of the full squared cost. Default
        ``eps_rel * sum_ij a_i b_j C_ij`` (the mean cost), reported in ``params["eps"]``.
    debias : bool
        False (default): ``cost`` is ``<pi_eps, C>``, the transport cost of the entropic plan
        (``quantity="<plan, C>"``; always ``>= W2^2``, and ``-> W2^2`` as ``eps -> 0``).
        True: ``cost`` is the Sinkhorn divergence
        ``S_eps = OT_eps(mu, nu) - OT_eps(mu, mu)/2 - OT_eps(nu, nu)/2`` (``quantity="S_eps"``),
        KL terms included; the three problems run in one loop, as in GeomLoss.
        ``params["ot_eps"]`` always holds ``OT_eps(mu, nu)``.
    tol : float, optional
        Stop when the L1 error of the row marginal is below ``tol`` (the column marginal is exact
        after each update). ``gap`` reports the final L1 error of both marginals, recomputed.
        Default ``1e-5`` in float64 and ``1e-3`` in float32, whose GEMM-form costs carry errors
        of about ``1e-7 ||x||^2``, i.e. ``1e-7 ||x||^2 / eps`` in the log of every plan entry.
    max_iter : int
        Iterations at the target ``eps`` (after the annealing stages). ``converged`` is False,
        and a warning is the caller's to raise, when the marginal error is still above ``tol``.
    scaling : float, optional
        Annealing factor in (0, 1): ``eps_k = max(eps, diameter^2 * scaling^k)``. Default 0.5,
        and 0.95 for the GeomLoss backends, whose fixed schedule has no tolerance: with 0.5 its
        plan can miss the marginals by O(1).
    dtype : {"float32", "float64"}, optional
        Computation dtype; default the input's.
    backend : {"torch", "geomloss", "geomloss-online", "geomloss-multiscale"}
        The implementation that runs. ``"geomloss"`` runs GeomLoss's tensorized
        ``SamplesLoss("sinkhorn", p=2)`` instead of ours (``-online`` / ``-multiscale``: its
        pykeops backends, which need a GPU and the ``keops`` extra). Its cost is
        ``||x - y||^2 / 2``, so ``blur = sqrt(eps / 2)``: its ``eps`` is ``blur^2 = eps / 2`` in
        our units; its potentials are doubled back into our units, and ``<pi_eps, C>`` and the
        marginal error are computed from them here. GeomLoss runs a fixed annealing schedule
        with no tolerance: ``converged`` says whether its plan met ``tol``. Note that POT's
        ``import ot`` already imports GeomLoss, and GeomLoss imports pykeops whenever it is
        installed: never install pykeops on a CPU-only machine.
    return_plan, return_potentials : bool
        The dense plan (refused beyond the dense memory budget) and ``(f, g)``.
    progress : bool
        A progress bar over the iterations (shown only on a terminal).
    """
    geomloss = opts.backend.startswith("geomloss")
    scaling = opts.scaling if opts.scaling is not None else (0.95 if geomloss else 0.5)
    if opts.backend in ("geomloss-online", "geomloss-multiscale"):
        import importlib.util

        if importlib.util.find_spec("pykeops") is None:
            raise ValueError(
                f"backend={opts.backend!r} needs pykeops (the 'keops' extra, on a GPU machine); "
                "use backend='geomloss' or 'torch'."
            )
    if opts.return_plan and not geom.fits():
        raise ValueError("return_plan=True needs the dense plan, over max_dense_bytes.")
    t0 = time.perf_counter()
    if _DTYPES[opts.dtype] is not None and _DTYPES[opts.dtype] != geom.dtype:
        dt = _DTYPES[opts.dtype]
        geom = PointCloudCost(geom.x.to(dt), geom.y.to(dt), geom.max_dense_bytes)
    tol = opts.tol if opts.tol is not None else (1e-3 if geom.dtype == torch.float32 else 1e-5)
    eps = opts.eps if opts.eps is not None else opts.eps_rel * geom.mean_cost(a, b)
    if not eps > 0:
        raise ValueError(
            f"eps must be positive; got {eps} (are the two measures identical points?)."
        )
    eps = float(eps)
    log_a = a.to(geom.dtype).log()
    log_b = b.to(geom.dtype).log()
    params: dict[str, Any] = {
        "eps": eps,
        "eps_units": "full squared Euclidean cost",
        "debias": opts.debias,
        "tol": tol,
        "scaling": scaling,
        "dtype": str(geom.dtype).replace("torch.", ""),
        "backend": opts.backend,
        "mode": "dense" if geom.block_rows() >= geom.n else "chunked",
        "block_rows": geom.block_rows(),
    }
    value_debiased, sym_ok, n_iter = None, True, None
    if geomloss:
        f, g, value_debiased = _geomloss(geom, a, b, eps, scaling, opts.debias, opts.backend)
        params["geomloss_blur"] = math.sqrt(eps / 2)
    else:
        problems = [_Problem(geom, log_a, log_b)]
        if opts.debias:
            problems += [
                _Problem(PointCloudCost(geom.x, geom.x, geom.max_dense_bytes), log_a, None),
                _Problem(PointCloudCost(geom.y, geom.y, geom.max_dense_bytes), log_b, None),
            ]
        n_iter, errs = _sinkhorn(problems, eps, scaling, tol, opts.max_iter, opts.progress)
        f, g = problems[0].f, problems[0].g
        params["max_iter"] = opts.max_iter
        if opts.debias:
            params.update(
                ot_eps_xx=2 * float(a.to(geom.dtype) @ problems[1].f),
                ot_eps_yy=2 * float(b.to(geom.dtype) @ problems[2].f),
                marginal_error_xx=errs[1],
                marginal_error_yy=errs[2],
            )
            sym_ok = errs[1] <= tol and errs[2] <= tol
    ot_ab = float(a.to(geom.dtype) @ f + b.to(geom.dtype) @ g)
    params["ot_eps"] = ot_ab
    plan_cost, err, plan = entropic_plan_cost(
        geom, f, g, log_a, log_b, eps, want_plan=opts.return_plan
    )
    if opts.debias:
        cost = (
            value_debiased
            if value_debiased is not None
            else ot_ab - 0.5 * (params["ot_eps_xx"] + params["ot_eps_yy"])
        )
        quantity = "S_eps"
        params["plan_cost"] = plan_cost
    else:
        cost, quantity = plan_cost, "<plan, C>"
    return TransportResult(
        cost=float(cost),
        quantity=quantity,
        method="sinkhorn",
        params=params,
        converged=bool(err <= tol and sym_ok),
        n_iter=n_iter,
        gap=err,
        gap_kind="marginal error (L1)",
        seconds=time.perf_counter() - t0,
        plan=None if plan is None else plan.double().cpu().numpy(),
        potentials=(f.double().cpu().numpy(), g.double().cpu().numpy())
        if opts.return_potentials
        else None,
    )


def _geomloss(
    geom: PointCloudCost,
    a: torch.Tensor,
    b: torch.Tensor,
    eps: float,
    scaling: float,
    debias: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """Potentials (our units) from GeomLoss's tensorized solver, and its S_eps when debiased."""
    from geomloss import SamplesLoss

    blur = math.sqrt(eps / 2)
    x, y = geom.x.contiguous(), geom.y.contiguous()
    wa, wb = a.to(geom.dtype).contiguous(), b.to(geom.dtype).contiguous()
    # our backend names "geomloss-online" / "-multiscale" are GeomLoss's "online" / "multiscale"
    kw = {
        "p": 2,
        "blur": blur,
        "scaling": scaling,
        "backend": backend.partition("-")[2] or "tensorized",
    }
    F, G = SamplesLoss("sinkhorn", debias=False, potentials=True, **kw)(wa, x, wb, y)
    value = None
    if debias:
        value = 2.0 * float(SamplesLoss("sinkhorn", debias=True, **kw)(wa, x, wb, y))
    return 2.0 * F.reshape(-1), 2.0 * G.reshape(-1), value
