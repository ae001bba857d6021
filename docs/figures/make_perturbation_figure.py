"""Make docs/figures/perturbation.png, the figure of docs/perturbation.md.

    python docs/figures/make_perturbation_figure.py

Left: the central-path flow (Theorem 3.1 of Tirer, Huang & Niles-Weed) from random features,
K = 4 classes, n = 10, d = 10, λ_W = 0.5, λ_H = 0.1, with the minimisers of the perturbation
model for several β placed at t = 1/β. Middle: singular values of an intra-class block F_kk of
the minimiser map near collapse (β = 100, λ_W = √2, several λ_H; the setting of the paper's
Figure 1) with the predicted smallest value of Theorem 4.2. Right: the largest singular value of
the inter-class blocks against λ_H, computed and predicted. About 20 s on one CPU core.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch

from otcollapse.surrogates.perturbation import (
    central_path_flow,
    collapsed_minimizer,
    fit_perturbed,
    near_collapse_singular_values,
    perturbation_jacobian,
)

OUT = Path(__file__).with_name("perturbation.png")
K, N_PER, D = 4, 10, 10


def main() -> None:
    torch.set_num_threads(1)
    y = np.repeat(np.arange(K), N_PER)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))

    # (a) the central-path flow and the minimisers H_{1/β}
    lw, lh = 0.5, 0.1
    H0 = np.random.default_rng(0).standard_normal((K * N_PER, D)) + 0.8 * np.eye(K, D)[y]
    times = np.linspace(0.0, 30.0, 121)
    flow = central_path_flow(H0, y, lambda_w=lw, lambda_h=lh, times=times)
    ax = axes[0]
    ax.plot(times, flow.nc1_tilde / flow.nc1_tilde[0], label=r"$\widetilde{NC}_1(H_t)$")
    ax.plot(
        times,
        flow.scaled_tr_sigma_w / flow.scaled_tr_sigma_w[0],
        label=r"$e^{2\lambda_H t}\,\mathrm{Tr}\,\Sigma_W(H_t)$",
    )
    ax.plot(
        times,
        flow.scaled_tr_sigma_b / flow.scaled_tr_sigma_b[0],
        label=r"$e^{2\lambda_H t}\,\mathrm{Tr}\,\Sigma_B(H_t)$",
    )
    betas = [0.05, 0.1, 0.2, 0.5, 1.0, 2.0]
    ratios = []
    for b in betas:
        sol = fit_perturbed(H0, y, beta=b, lambda_w=lw, lambda_h=lh)
        h0, h = sol.nc1_tilde
        ratios.append(h / h0)
    ax.plot(
        [1 / b for b in betas],
        ratios,
        "ko",
        ms=5,
        label=r"minimiser $H_{1/\beta}$: $\widetilde{NC}_1$ at $t = 1/\beta$",
    )
    ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel("relative to t = 0")
    ax.set_title("central-path flow (Thm 3.1)")
    ax.legend(fontsize=8)

    # (b) spectrum of an intra-class block near collapse; (c) inter-class blocks
    beta, lw2 = 100.0, math.sqrt(2.0)
    grid = [0.1, 0.25, 0.5, 0.7]
    inter_num, inter_pred = [], []
    for lh2 in grid:
        Hc, _ = collapsed_minimizer(y, dim=D, lambda_w=lw2, lambda_h=lh2, seed=0)
        jac = perturbation_jacobian(fit_perturbed(Hc, y, beta=beta, lambda_w=lw2, lambda_h=lh2))
        sv = jac.block_singular_values()
        pred = near_collapse_singular_values(beta=beta, lambda_w=lw2, lambda_h=lh2)
        line = axes[1].plot(sv["intra"][0], label=rf"$\lambda_H = {lh2}$")[0]
        axes[1].axhline(pred["intra_sigma_min"], color=line.get_color(), ls=":", lw=1)
        off = ~np.isnan(sv["inter"][..., 0])
        inter_num.append(sv["inter"][..., 0][off].max())
        inter_pred.append(pred["inter_sigma_max"])
    axes[1].set_xlabel("index")
    axes[1].set_ylabel(r"singular value of $F_{k,k}$")
    axes[1].set_title(r"intra-class block, $\beta = 100$ (dotted: Thm 4.2 $\sigma_{\min}$)")
    axes[1].legend(fontsize=8)
    axes[2].plot(grid, inter_num, "o", label="computed (implicit differentiation)")
    fine = np.linspace(0.05, 0.7, 100)
    axes[2].plot(fine, 2 * fine * (1 - np.sqrt(fine * lw2)) / beta, "-", label="Thm 4.2")
    axes[2].set_xlabel(r"$\lambda_H$")
    axes[2].set_ylabel(r"$\sigma_{\max}(F_{k,\tilde k})$")
    axes[2].set_title(r"inter-class blocks (rank one), $\beta = 100$")
    axes[2].legend(fontsize=8)
    fig.suptitle(
        r"Perturbation model (Tirer, Huang & Niles-Weed), $K = 4$, $n = 10$, $d = 10$", y=1.0
    )
    fig.tight_layout()
    fig.savefig(OUT, dpi=120, bbox_inches="tight")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
