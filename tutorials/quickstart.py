"""Quick start: a residual MLP and its plain twin on scikit-learn's digits, then their geometry.

    python tutorials/quickstart.py

About a minute on a 2-core CPU; downloads nothing. Both networks are trained with weight decay,
their block trajectories are captured on the training split (layer 0 = the input of the first
block, then one measure per block output), and the three analyses of otcollapse run on each: the
transport profile between successive layers, the Wasserstein-geodesic tests (path ratio, OTS,
LSS) and the layer-wise collapse metrics with their progressive-collapse statistics.
"""

from __future__ import annotations

import numpy as np

from otcollapse import capture, collapse_profile, geodesic_test, load_dataset, train
from otcollapse.nets import ResidualMLP

SEED, WIDTH, BLOCKS, EPOCHS = 0, 64, 4, 20


def analyse(name: str, plain: bool, data) -> None:
    import torch

    torch.manual_seed(SEED)
    model = ResidualMLP(64, WIDTH, BLOCKS, 10, plain=plain, batchnorm=True)
    hist = train(model, data, epochs=EPOCHS, lr=0.05, weight_decay=5e-4, seed=SEED)
    traj = capture(model, data)
    print(f"\n== {name}: train accuracy {hist.accuracy[-1]:.3f}, loss {hist.loss[-1]:.4f}")
    print(traj)

    report = geodesic_test(traj)
    print(report.profile.format_table())
    seg = report.segments[0]
    print(
        f"path ratio R = {seg.path_ratio:.3f} (1 on a geodesic)   OTS = {seg.ots:.3f}   "
        f"LSS mean = {seg.lss.mean:.3f}"
    )
    col = collapse_profile(traj)
    print("NC1 by layer:", np.array2string(col.values("nc1"), precision=3))
    pfc = col.pfc["nc1"]
    print(
        f"NC1 non-increasing in depth: Kendall tau = {pfc.kendall_tau:.3f}, monotone = {pfc.monotone}"
    )


def main() -> None:
    data = load_dataset("digits", split="train", seed=SEED)
    analyse("residual MLP", plain=False, data=data)
    analyse("plain twin (no skip connections)", plain=True, data=data)


if __name__ == "__main__":
    main()
