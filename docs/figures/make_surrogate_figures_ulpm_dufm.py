"""Make docs/figures/ulpm_gradient_descent.png and docs/figures/dufm_layers.png.

    python docs/figures/make_surrogate_figures_ulpm_dufm.py

The figures of docs/ulpm.md and docs/dufm.md, made with the toolkit itself: ``fit_ulpm`` (K = 3
classes, n = 4 per class, 100,000 gradient-descent steps) with ``collapse_profile`` over training
time, and ``fit_dufm`` (K = 2, L = 4; K = 4, L = 4, six restarts each) with its per-layer collapse
profile and the restart values against the deep-neural-collapse value. About a minute on one CPU
core.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch

from otcollapse import collapse_profile, fit_dufm, fit_ulpm
from otcollapse.exceptions import ConvergenceWarning

HERE = Path(__file__).parent
TOP = 1.4  # restart values above TOP * L_DNC are drawn as triangles at the top edge


def ulpm_figure() -> None:
    K, n = 3, 4
    y = np.repeat(np.arange(K), n)
    sol = fit_ulpm(y, n_steps=100_000, n_records=60, seed=0)
    t = np.maximum(sol.steps, 1)
    prof = collapse_profile(sol.trajectory, metrics=["nc1_tilde", "nc2_etf_distance"])
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))

    ax = axes[0]
    ax.semilogx(t, sol.normalized_margin * sol.value, label=r"$\gamma_t\,/\,\gamma^*$")
    ax.semilogx(t, sol.logit_distance, label=r"$\|Z_t/\|Z_t\| - Z^*/\|Z^*\|\|_F$")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_ylim(-0.1, 1.6)
    ax.set_xlabel("gradient-descent step t")
    ax.set_title("direction → separation optimum (slowly)")
    ax.legend(fontsize=8)

    ax = axes[1]
    sq = sol.w_sq + sol.h_sq
    ax.semilogx(t, sq, label=r"$\|W_t\|^2 + \|H_t\|^2$")
    ax.semilogx(t, sol.norm_gap, label=r"$\|W_t\|^2 - \|H_t\|^2$ (conserved)")
    late = sol.steps >= 1000
    slope = 2 * sol.value  # ||θ||² ≈ 2 · value · log t once the margins grow like log t
    ax.semilogx(
        t[late],
        sq[late][-1] + slope * (np.log(t[late]) - math.log(t[late][-1])),
        "k:",
        lw=1,
        label=r"slope $2\,\mathrm{value}\cdot\log t$",
    )
    ax.set_xlabel("gradient-descent step t")
    ax.set_title("norms grow like log t")
    ax.legend(fontsize=8)

    ax = axes[2]
    ax.loglog(t, prof.values("nc1_tilde"), label=r"$\widetilde{NC}_1$ of $H_t/\|\theta_t\|$")
    ax.loglog(t, prof.values("nc2_etf_distance"), label="NC2: distance to a simplex ETF")
    ax.set_xlabel("gradient-descent step t")
    ax.set_title("collapse_profile over training time")
    ax.legend(fontsize=8)
    fig.suptitle(
        f"ULPM, K = {K}, n = {n}: separation value √n(K−1) = {sol.value:.4f}, "
        f"γ_t/γ* = {sol.normalized_margin[-1] * sol.value:.3f} after {sol.steps[-1]:,} steps"
    )
    fig.tight_layout()
    fig.savefig(HERE / "ulpm_gradient_descent.png", dpi=110)
    plt.close(fig)


def dufm_figure() -> None:
    lam = 1e-3
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    y2 = np.repeat(np.arange(2), 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        bin4 = fit_dufm(y2, n_layers=4, width=4, lambda_w=lam, lambda_h=lam, restarts=6, seed=0)
        y4 = np.repeat(np.arange(4), 3)
        four = fit_dufm(y4, n_layers=4, width=6, lambda_w=lam, lambda_h=lam, restarts=6, seed=0)

    ax = axes[0]
    layers = np.arange(1, bin4.n_layers + 1)
    eps = 1e-17  # exact zeros drawn at the floor of the log axis
    ax.semilogy(layers, bin4.profile.values("nc1_tilde") + eps, "o-", label=r"$\widetilde{NC}_1$")
    ax.semilogy(layers, bin4.orthogonality + eps, "s-", label="distance to an orthogonal frame")
    ax.set_xticks(layers, bin4.trajectory.names)
    ax.set_title(f"K = 2, L = 4: deep neural collapse (vs_dnc = '{bin4.vs_dnc}')")
    ax.set_xlabel("layer (H1 has no predicted geometry)")
    ax.legend(fontsize=8)

    ax = axes[1]
    for i, (sol, lab) in enumerate([(bin4, "K = 2, L = 4"), (four, "K = 4, L = 4")]):
        rel = np.array(sol.restart_values) / sol.dnc_value
        xs = np.full(rel.size, i) + np.linspace(-0.15, 0.15, rel.size)
        top = rel > TOP
        ax.scatter(xs[~top], rel[~top], color=f"C{i}", label=lab)
        ax.scatter(xs[top], np.full(top.sum(), TOP - 0.01), color=f"C{i}", marker="^")
        ax.annotate(
            f"best {sol.objective / sol.dnc_value:.4f}\n({sol.vs_dnc} DNC)",
            (i + 0.2, sol.objective / sol.dnc_value),
            fontsize=8,
        )
    ax.axhline(1.0, color="grey", lw=0.8, ls=":", label=r"$\mathcal{L}_{DNC}$")
    ax.set_ylim(0.95, TOP)
    ax.set_xticks([0, 1], ["K = 2, L = 4", "K = 4, L = 4"])
    ax.set_xlim(-0.5, 1.9)
    ax.set_ylabel(r"restart value / $\mathcal{L}_{DNC}$")
    ax.set_title(f"six restarts each (▲: above {TOP}): DNC or a lower solution?")
    fig.tight_layout()
    fig.savefig(HERE / "dufm_layers.png", dpi=110)
    plt.close(fig)
    print(f"K=2: {bin4.objective:.8f} vs L_DNC {bin4.dnc_value:.8f} ({bin4.vs_dnc})")
    print(f"K=4: {four.objective:.8f} vs L_DNC {four.dnc_value:.8f} ({four.vs_dnc})")


def main() -> None:
    torch.set_num_threads(1)
    ulpm_figure()
    dufm_figure()


if __name__ == "__main__":
    main()
