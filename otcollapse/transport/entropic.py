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
from otcollapse._validation import check_int, check_real
from otcollapse.transport.geometry import PointCloudCost
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


def _sinkhorn_ab(
    geom: PointCloudCost,
    log_a: torch.Tensor,
    log_b: torch.Tensor,
    eps: float,
    scaling: float,
    tol: float,
    max_iter: int,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """Alternating log-domain updates with eps-scaling; returns f, g, iterations, last row error."""
    geom_t = geom.transposed()
    f = torch.zeros(geom.n, dtype=geom.dtype, device=geom.device)
    g = torch.zeros(geom.m, dtype=geom.dtype, device=geom.device)
    for e in _schedule(geom, eps, scaling):
        f = softmin(geom, g, log_b, e)
        g = softmin(geom_t, f, log_a, e)
    a = log_a.exp()
    err = math.inf
    it = 0
    bar = progress_bar(progress=progress, desc="sinkhorn", total=max_iter)
    while it < max_iter:
        f_new = softmin(geom, g, log_b, eps)
        # row marginal of the plan (f, g) is a_i exp((f_i - f_new_i) / eps): the error is free
        err = float((a * torch.expm1((f - f_new) / eps).abs()).sum())
        f = f_new
        g = softmin(geom_t, f, log_a, eps)
        it += 1
        bar.update(1)
        bar.set_postfix(marginal_error=f"{err:.2e}", refresh=False)
        if err <= tol:
            break
    bar.close()
    return f, g, it, err


def _sinkhorn_sym(
    geom: PointCloudCost, log_a: torch.Tensor, eps: float, scaling: float, tol: float, max_iter: int
) -> tuple[torch.Tensor, int, float]:
    """Symmetric problem OT_eps(a, a): averaged updates f <- (f + T(f)) / 2 (Feydy et al. 2019)."""
    f = torch.zeros(geom.n, dtype=geom.dtype, device=geom.device)
    for e in _schedule(geom, eps, scaling):
        f = 0.5 * (f + softmin(geom, f, log_a, e))
    a = log_a.exp()
    err = math.inf
    it = 0
    while it < max_iter:
        t = softmin(geom, f, log_a, eps)
        err = float((a * torch.expm1((f - t) / eps).abs()).sum())
        f = 0.5 * (f + t)
        it += 1
        if err <= tol:
            break
    return f, it, err


def solve_sinkhorn(
    geom: PointCloudCost,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    eps: float | None = None,
    eps_rel: float = 1e-2,
    debias: bool = False,
    tol: float | None = None,
    max_iter: int = 2000,
    scaling: float | None = None,
    dtype: str | None = None,
    backend: str = "torch",
    geomloss_backend: str | None = None,
    return_plan: bool = False,
    return_potentials: bool = False,
    progress: bool = False,
    **unused: Any,
) -> TransportResult:
    """Entropic transport by log-domain Sinkhorn with eps-scaling, in torch on the input's device.

    Parameters
    ----------
    eps : float, optional
        Regularisation in the units of the full squared cost. Default
        ``eps_rel * sum_ij a_i b_j C_ij`` (the mean cost), reported in ``params["eps"]``.
    debias : bool
        False (default): ``cost`` is ``<pi_eps, C>``, the transport cost of the entropic plan
        (``quantity="<plan, C>"``; always ``>= W2^2``, and ``-> W2^2`` as ``eps -> 0``).
        True: ``cost`` is the Sinkhorn divergence
        ``S_eps = OT_eps(mu, nu) - OT_eps(mu, mu)/2 - OT_eps(nu, nu)/2`` (``quantity="S_eps"``),
        KL terms included. ``params["ot_eps"]`` always holds ``OT_eps(mu, nu)``.
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
        and 0.95 for the GeomLoss backend, whose fixed schedule has no tolerance: with 0.5 its
        plan can miss the marginals by O(1).
    dtype : {"float32", "float64"}, optional
        Computation dtype; default the input's.
    backend : {"torch", "geomloss"}
        ``"geomloss"`` runs GeomLoss's tensorized ``SamplesLoss("sinkhorn", p=2)`` instead. Its
        cost is ``||x - y||^2 / 2``, so ``blur = sqrt(eps / 2)``: its ``eps`` is
        ``blur^2 = eps / 2`` in our units; its potentials are doubled back into our units, and
        ``<pi_eps, C>`` and the marginal error are computed from them here. GeomLoss runs a fixed
        annealing schedule with no tolerance: ``converged`` says whether its plan met ``tol``.
        Note that POT's ``import ot`` already imports GeomLoss, and GeomLoss imports pykeops
        whenever it is installed: never install pykeops on a CPU-only machine.
    geomloss_backend : {"tensorized", "online", "multiscale"}, optional
        GeomLoss's own backend (with ``backend="geomloss"`` only; default ``"tensorized"``);
        ``online`` and ``multiscale`` need pykeops (a GPU and the ``keops`` extra).
    return_plan, return_potentials : bool
        The dense plan (refused beyond the dense memory budget) and ``(f, g)``.
    progress : bool
        A progress bar over the iterations (shown only on a terminal).
    """
    if unused:
        raise ValueError(f"method='sinkhorn' takes no option(s) {sorted(unused)}.")
    if eps is not None:
        eps = check_real(eps, "eps", minimum=0.0, open_min=True)
    eps_rel = check_real(eps_rel, "eps_rel", minimum=0.0, open_min=True)
    if tol is not None:
        tol = check_real(tol, "tol", minimum=0.0, open_min=True)
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    if scaling is not None:
        scaling = check_real(
            scaling, "scaling", minimum=0.0, maximum=1.0, open_min=True, open_max=True
        )
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64'; got {dtype!r}.")
    if scaling is None:
        scaling = 0.95 if backend == "geomloss" else 0.5
    if not 0 < scaling < 1:
        raise ValueError(f"scaling must lie in (0, 1); got {scaling}.")
    if backend not in ("torch", "geomloss"):
        raise ValueError(f"backend must be 'torch' or 'geomloss'; got {backend!r}.")
    if geomloss_backend is not None and backend != "geomloss":
        raise ValueError("geomloss_backend applies only with backend='geomloss'.")
    geomloss_backend = geomloss_backend or "tensorized"
    if geomloss_backend not in ("tensorized", "online", "multiscale"):
        raise ValueError(
            f"geomloss_backend must be 'tensorized', 'online' or 'multiscale'; got {geomloss_backend!r}."
        )
    if geomloss_backend != "tensorized":
        import importlib.util

        if importlib.util.find_spec("pykeops") is None:
            raise ValueError(
                f"geomloss_backend={geomloss_backend!r} needs pykeops (the 'keops' extra, on a "
                "GPU machine); use geomloss_backend='tensorized' or backend='torch'."
            )
    if return_plan and not geom.fits():
        raise ValueError("return_plan=True needs the dense plan, over max_dense_bytes.")
    t0 = time.perf_counter()
    if _DTYPES[dtype] is not None and _DTYPES[dtype] != geom.dtype:
        geom = PointCloudCost(
            geom.x.to(_DTYPES[dtype]), geom.y.to(_DTYPES[dtype]), geom.max_dense_bytes
        )
    if tol is None:
        tol = 1e-3 if geom.dtype == torch.float32 else 1e-5
    if eps is None:
        eps = eps_rel * geom.mean_cost(a, b)
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
        "debias": debias,
        "tol": tol,
        "scaling": scaling,
        "dtype": str(geom.dtype).replace("torch.", ""),
        "backend": backend,
        "mode": "dense" if geom.block_rows() >= geom.n else "chunked",
        "block_rows": geom.block_rows(),
    }
    if backend == "geomloss":
        f, g, value_debiased = _geomloss(geom, a, b, eps, scaling, debias, geomloss_backend)
        n_iter = None
        params["geomloss_blur"] = math.sqrt(eps / 2)
        params["geomloss_backend"] = geomloss_backend
        sym_ok = True
    else:
        f, g, n_iter, _ = _sinkhorn_ab(geom, log_a, log_b, eps, scaling, tol, max_iter, progress)
        params["max_iter"] = max_iter
        value_debiased = None
        sym_ok = True
        if debias:
            fx, _, errx = _sinkhorn_sym(
                PointCloudCost(geom.x, geom.x, geom.max_dense_bytes),
                log_a,
                eps,
                scaling,
                tol,
                max_iter,
            )
            fy, _, erry = _sinkhorn_sym(
                PointCloudCost(geom.y, geom.y, geom.max_dense_bytes),
                log_b,
                eps,
                scaling,
                tol,
                max_iter,
            )
            ot_xx = 2 * float(a.to(geom.dtype) @ fx)
            ot_yy = 2 * float(b.to(geom.dtype) @ fy)
            params.update(
                ot_eps_xx=ot_xx, ot_eps_yy=ot_yy, marginal_error_xx=errx, marginal_error_yy=erry
            )
            sym_ok = errx <= tol and erry <= tol
    ot_ab = float(a.to(geom.dtype) @ f + b.to(geom.dtype) @ g)
    params["ot_eps"] = ot_ab
    plan_cost, err, plan = entropic_plan_cost(geom, f, g, log_a, log_b, eps, want_plan=return_plan)
    if debias:
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
        if return_potentials
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
    kw = {"p": 2, "blur": blur, "scaling": scaling, "backend": backend}
    F, G = SamplesLoss("sinkhorn", debias=False, potentials=True, **kw)(wa, x, wb, y)
    value = None
    if debias:
        value = 2.0 * float(SamplesLoss("sinkhorn", debias=True, **kw)(wa, x, wb, y))
    return 2.0 * F.reshape(-1), 2.0 * G.reshape(-1), value
