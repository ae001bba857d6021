"""Write docs/figures/square_loss_seeds.txt, the seed-by-seed numbers of docs/square_loss.md.

    python docs/figures/make_square_loss_seeds.py

Runs ``otcollapse.experiments.run_square_loss_experiment`` with its defaults (a residual MLP on the
built-in Gaussian mixture, the four settings batch normalisation x weight decay, square loss, 150
epochs) for seeds 0-4 and writes, per seed and setting, the training and test accuracy, rho, the
smallest and mean normalised margin, NC1 and NC3; then every prediction of
``SquareLossExperiment.predictions`` that fails, and, for each seed, the mean angle the
scale-invariant weights of the BN runs turn per epoch (the lower-right panel of
docs/figures/square_loss_dynamics.png for seed 0): for BN + WD its smallest value once the
training set is fitted and its range over epochs 51-150, for BN without WD its largest value over
the last 10 epochs. About a minute on one CPU core.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from otcollapse.experiments import run_square_loss_experiment

OUT = Path(__file__).with_name("square_loss_seeds.txt")
SEEDS = range(5)
LATE = 50  # the angles are reported over the epochs after this one


def _angles(run) -> np.ndarray:
    """Mean angle (rad) the scale-invariant weights of a BN run turn between records."""
    tr = run.dynamics
    return np.mean([tr.series("angular_update:" + n) for n in tr.scale_invariant], axis=0)


def main() -> None:
    torch.set_num_threads(1)
    rows = ["seed | setting | train acc | test acc | rho | min margin | mean margin | NC1 | NC3"]
    fails, angles = [], []
    for seed in SEEDS:
        exp = run_square_loss_experiment("gaussian_mixture", seed=seed)
        for s in exp.summary():
            rows.append(
                f"{seed} | {s['setting']} | {s['train_accuracy']:.3f} | {s['test_accuracy']:.3f}"
                f" | {s['rho']:.3g} | {s['margin_min']:.3g} | {s['margin_mean']:.3g}"
                f" | {s['nc1']:.3g} | {s['nc3']:.3g}"
            )
        fails += [f"seed {seed}: {p.claim}: {p.values}" for p in exp.predictions() if not p.holds]
        wd, no = (exp.run(batchnorm=True, weight_decay=w) for w in (True, False))
        ang, epochs = _angles(wd), np.asarray(wd.dynamics.epochs)
        fitted = wd.history.terminal_epoch
        after = epochs > (fitted if fitted is not None else np.inf)
        i = np.flatnonzero(after)[np.argmin(ang[after])] if after.any() else 0
        late = epochs > LATE
        angles.append(
            f"seed {seed}: BN + WD fits the training set at epoch {fitted}; then its smallest"
            f" angle {ang[i]:.3f} (epoch {epochs[i]}); over epochs {LATE + 1}-{epochs[-1]}"
            f" {ang[late].min():.3f} to {ang[late].max():.3f} rad per epoch. BN, no WD:"
            f" at most {_angles(no)[-10:].max():.4f} over the last 10 epochs"
        )
    text = "\n".join(
        [
            "Square-loss experiment, defaults (gaussian_mixture, 150 epochs), seeds 0-4",
            "",
            *rows,
            "",
            "Predictions that fail:",
            *(fails or ["none"]),
            "",
            "Mean angle turned per epoch by the scale-invariant weights (BN runs):",
            *angles,
        ]
    )
    OUT.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
