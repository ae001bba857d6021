"""Quick start: train a small residual MLP on scikit-learn's digits, then measure its geometry.

    python tutorials/quickstart.py

Runs in about half a minute on a 2-core CPU, downloads nothing. It builds the block trajectory of
a constant-width residual network (layer 0 = the input of the first block, then one measure per
block output), and runs the three analyses of otcollapse on it: the transport profile between
successive layers, the Wasserstein-geodesic tests, and the layer-wise collapse metrics.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits

from otcollapse import Trajectory, collapse_profile, geodesic_test, transport_profile

SEED, WIDTH, BLOCKS, EPOCHS = 0, 32, 6, 150


class ResidualMLP(torch.nn.Module):
    def __init__(self, d_in: int, width: int, n_blocks: int, n_classes: int):
        super().__init__()
        self.embed = torch.nn.Linear(d_in, width)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(
                torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, width)
            )
            for _ in range(n_blocks)
        )
        self.head = torch.nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = self.embed(x)
        feats = [h]
        for block in self.blocks:
            h = h + block(h)
            feats.append(h)
        return self.head(h), feats


def main() -> None:
    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    xt, yt = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y)
    torch.manual_seed(SEED)
    model = ResidualMLP(64, WIDTH, BLOCKS, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(EPOCHS):  # full-batch training into the terminal phase
        opt.zero_grad()
        logits, _ = model(xt)
        loss = torch.nn.functional.cross_entropy(logits, yt)
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits, feats = model(xt)
    acc = float((logits.argmax(1) == yt).float().mean())
    print(
        f"trained {BLOCKS}-block residual MLP on digits: loss {loss.item():.4f}, train acc {acc:.3f}"
    )

    traj = Trajectory.from_arrays(
        [h.numpy() for h in feats],
        labels=y,
        names=["input"] + [f"block{i + 1}" for i in range(BLOCKS)],
        classifier=(model.head.weight.detach().numpy(), model.head.bias.detach().numpy()),
        logits=logits.numpy(),
        metadata={"dataset": "digits", "split": "train", "seed": SEED, "epochs": EPOCHS},
    )
    print(traj)

    profile = transport_profile(traj)
    print("\nW2 between successive layers, and transport efficiency W2^2 / paired cost:")
    for row in profile.table():
        print(
            f"  {row['source_name']:>7} -> {row['target_name']:<7} W2 = {row['distance']:.4f}   "
            f"efficiency = {row['efficiency']:.4f}   noise floor = {row['noise_floor']:.4f}"
        )

    report = geodesic_test(traj)
    seg = report.segments[0]
    print(
        f"\npath ratio R = {seg.path_ratio:.4f} (1 on a geodesic), OTS = {seg.ots:.3f}, "
        f"LSS mean = {seg.lss.mean:.3f}"
    )

    collapse = collapse_profile(traj)
    nc1 = collapse.values("nc1")
    print("\nNC1 by layer:", np.array2string(nc1, precision=3))
    pfc = collapse.pfc["nc1"]
    print(
        f"PFC (NC1 non-increasing in depth): Kendall tau = {pfc.kendall_tau:.3f}, "
        f"monotone = {pfc.monotone}"
    )


if __name__ == "__main__":
    main()
