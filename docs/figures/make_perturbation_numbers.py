"""Write docs/figures/perturbation_numbers.txt, the numbers of docs/perturbation.md near collapse.

    python docs/figures/make_perturbation_numbers.py

Theorem 4.2 of Tirer, Huang & Niles-Weed against the exact Jacobian of the minimiser map, in the
paper's setting (K = 4, n = d = 10, λ_W = √2, λ_H = 0.5, H_0 the collapsed minimiser) for
β = 100 and 200, as in ``test_near_collapse_blocks_theorem_4_2`` of tests/test_perturbation.py:
the smallest singular value of the intra-class blocks F_kk and the largest of the inter-class
blocks F_kk̃, predicted and computed; the largest singular value of F_kk and the second one of
the inter-class blocks; and the factor by which the errors of the closed forms shrink when β
doubles. About 10 s on one CPU core.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from otcollapse.surrogates.perturbation import (
    collapsed_minimizer,
    fit_perturbed,
    near_collapse_singular_values,
    perturbation_jacobian,
)

OUT = Path(__file__).with_name("perturbation_numbers.txt")
K, N_PER, D = 4, 10, 10
LW, LH = math.sqrt(2.0), 0.5
BETAS = (100.0, 200.0)


def main() -> None:
    torch.set_num_threads(1)
    y = np.repeat(np.arange(K), N_PER)
    H0, _ = collapsed_minimizer(y, dim=D, lambda_w=LW, lambda_h=LH, seed=0)
    lines = [f"Theorem 4.2: K = {K}, n = d = {D}, lambda_W = sqrt(2), lambda_H = {LH}", ""]
    errors = []
    for beta in BETAS:
        sol = fit_perturbed(H0, y, beta=beta, lambda_w=LW, lambda_h=LH, tol=1e-11)
        assert sol.converged
        sv = perturbation_jacobian(sol).block_singular_values()
        pred = near_collapse_singular_values(beta=beta, lambda_w=LW, lambda_h=LH)
        intra, inter = sv["intra"], sv["inter"]
        off = ~np.isnan(inter[..., 0])
        intra_min, inter_max = intra[:, -1], inter[..., 0][off]
        errors.append(
            (
                np.abs(intra_min - pred["intra_sigma_min"]).max(),
                np.abs(inter_max - pred["inter_sigma_max"]).max(),
            )
        )
        lines += [
            f"beta = {beta:g}",
            f"  sigma_min(F_kk), Theorem 4.2:      {pred['intra_sigma_min']:.7f}",
            f"  sigma_min(F_kk), exact Jacobian:   {intra_min.min():.7f} to {intra_min.max():.7f}",
            f"  sigma_max(F_kk~), Theorem 4.2:     {pred['inter_sigma_max']:.7f}",
            f"  sigma_max(F_kk~), exact Jacobian:  {inter_max.min():.7f} to {inter_max.max():.7f}",
            f"  |sigma_max(F_kk) - 1|, largest:    {np.abs(intra[:, 0] - 1).max():.2e}",
            f"  second singular value of F_kk~, largest: {inter[..., 1][off].max():.2e}",
            f"  error of the closed forms: intra {errors[-1][0]:.3e}, inter {errors[-1][1]:.3e}",
            "",
        ]
    ratio = [a / b for a, b in zip(errors[0], errors[1], strict=True)]
    lines.append(
        f"error at beta = 100 / error at beta = 200: intra {ratio[0]:.2f}, inter {ratio[1]:.2f}"
    )
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text(), end="")


if __name__ == "__main__":
    main()
