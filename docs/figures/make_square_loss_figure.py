"""Make docs/figures/square_loss_dynamics.png, the figure of docs/square_loss.md.

    python docs/figures/make_square_loss_figure.py

Runs ``otcollapse.experiments.run_square_loss_experiment`` with its defaults (a residual MLP on the
built-in Gaussian mixture, the four settings batch normalisation x weight decay, square loss, 150
epochs, seed 0; about 15 s on one CPU core) and plots the recorded dynamics.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch

from otcollapse.experiments import run_square_loss_experiment

OUT = Path(__file__).with_name("square_loss_dynamics.png")
COLORS = {"BN + WD": "C0", "BN, no WD": "C1", "no BN + WD": "C2", "no BN, no WD": "C3"}
STYLES = {"BN + WD": "-", "BN, no WD": "-", "no BN + WD": "--", "no BN, no WD": "--"}


def main() -> None:
    torch.set_num_threads(1)
    exp = run_square_loss_experiment("gaussian_mixture", seed=0)
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))

    def panel(ax, name, title, runs=exp.runs):
        for r in runs:
            tr = r.dynamics
            ax.plot(
                tr.epochs, tr.series(name), STYLES[r.label], color=COLORS[r.label], label=r.label
            )
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=10)

    panel(
        axes[0, 0],
        "scale_invariant_norm",
        "BN runs: norm of the weights fed into a BatchNorm",
        [r for r in exp.runs if r.batchnorm],
    )
    panel(axes[0, 1], "rho", r"$\rho$ = product of the weight norms that reach the output")
    panel(axes[0, 2], "margin_min", "smallest normalised margin")
    axes[0, 2].set_ylim(1e-4, None)
    panel(axes[1, 0], "nc1", r"NC1 of the penultimate features")
    panel(axes[1, 1], "nc3", "NC3 (classifier vs class means)")
    ax = axes[1, 2]
    for r in exp.runs:
        tr = r.dynamics
        names = tr.scale_invariant if r.batchnorm else tuple(tr.records[-1].weight_norms)
        ang = np.mean([tr.series("angular_update:" + n) for n in names], axis=0)
        ax.plot(tr.epochs[1:], ang[1:], STYLES[r.label], color=COLORS[r.label], label=r.label)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_title("angle turned per epoch (BN: scale-invariant weights)", fontsize=10)
    axes[0, 0].legend(fontsize=8)
    axes[0, 1].legend(fontsize=8)
    fig.suptitle(
        "Square loss, residual MLP on a Gaussian mixture: batch normalisation x weight decay",
        fontsize=12,
    )
    fig.tight_layout()
    fig.savefig(OUT, dpi=100)
    print(f"wrote {OUT}")
    for p in exp.predictions():
        print(("holds   " if p.holds else "FAILS   ") + p.claim)


if __name__ == "__main__":
    main()
