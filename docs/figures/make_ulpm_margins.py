"""Write docs/figures/ulpm_margins.txt, the normalised margins quoted in docs/ulpm.md.

    python docs/figures/make_ulpm_margins.py

``fit_ulpm`` with its defaults (step 0.5, seed 0) on K = 3 classes with n = 2 samples each (the
setting of the page's snippet) and n = 4 (the setting of docs/figures/ulpm_gradient_descent.png),
with 1,000, 10,000 and 100,000 gradient-descent steps; writes gamma_t / gamma* (the normalised
margin times the separation value) at the last step of each. About 30 s on one CPU core.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from otcollapse import fit_ulpm

OUT = Path(__file__).with_name("ulpm_margins.txt")
K, STEPS = 3, (1_000, 10_000, 100_000)


def main() -> None:
    torch.set_num_threads(1)
    lines = ["gamma_t / gamma* of fit_ulpm (lr = 0.5, seed 0), K = 3", ""]
    for n in (2, 4):
        y = np.repeat(np.arange(K), n)
        lines.append(f"n = {n}:")
        for steps in STEPS:
            sol = fit_ulpm(y, n_steps=steps, seed=0)
            ratio = sol.normalized_margin[-1] * sol.value
            lines.append(f"  after {sol.steps[-1]} steps: gamma_t / gamma* = {ratio:.4f}")
        lines.append("")
    OUT.write_text("\n".join(lines))
    print(OUT.read_text(), end="")


if __name__ == "__main__":
    main()
