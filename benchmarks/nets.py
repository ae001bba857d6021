"""Networks benchmark: training time per epoch and capture throughput on the CPU.

    python benchmarks/nets.py            # digits, three models (about two minutes on 2 cores)
    python benchmarks/nets.py --quick    # a smoke run

For each model on scikit-learn's digits (train split): seconds per training epoch (SGD, weight
decay, batch 128), the epoch at which training accuracy first reaches 100% (if it does), and the
capture throughput in samples per second (eval mode, no gradients, average pooling). The plain
PyTorch way of the same forward pass (a loop of ``model(x)`` over the same batches, no hooks)
is timed beside capture, so the ratio is the cost of the hooks, pooling and bookkeeping.
Writes benchmarks/results/nets.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from otcollapse.data import load_dataset
from otcollapse.nets import ConvResNet, ResidualMLP, ResNet, capture, train

HERE = Path(__file__).resolve().parent


def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "ResidualMLP(64, width 64, 8 blocks)": ResidualMLP(64, 64, 8, 10),
        "ConvResNet(width 16, 4 blocks)": ConvResNet(1, 16, 4, 10),
        "ResNet(widths 16-32, 2+2 blocks)": ResNet((16, 32), (2, 2), in_channels=1, n_classes=10),
    }


def plain_forward(model: torch.nn.Module, X: torch.Tensor, batch_size: int) -> float:
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(X), batch_size):
            model(X[start : start + batch_size])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--epochs", type=int, default=15)
    args = ap.parse_args()
    epochs = 2 if args.quick else args.epochs
    data = load_dataset("digits", split="train", seed=0)
    rows = []
    for name, model in models().items():
        t0 = time.perf_counter()
        hist = train(model, data, epochs=epochs, lr=0.05, weight_decay=5e-4, seed=0)
        train_s = time.perf_counter() - t0
        acc = list(hist.accuracy)
        first_100 = next((i + 1 for i, a in enumerate(acc) if a >= 1.0), None)
        t0 = time.perf_counter()
        traj = capture(model, data, batch_size=256)
        cap_s = time.perf_counter() - t0
        plain_s = plain_forward(model, data.X, 256)
        n = traj.n_samples
        row = {
            "model": name,
            "n_train": n,
            "epochs": epochs,
            "seconds_per_epoch": train_s / epochs,
            "final_train_accuracy": acc[-1],
            "first_epoch_at_100pct": first_100,
            "capture_samples_per_s": n / cap_s,
            "plain_forward_samples_per_s": n / plain_s,
            "capture_overhead_ratio": cap_s / plain_s,
            "layers": len(traj),
            "dims": list(traj.dims),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "quick": args.quick,
    }
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    name = "nets_quick" if args.quick else "nets"
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    cols = [
        "model",
        "seconds_per_epoch",
        "final_train_accuracy",
        "first_epoch_at_100pct",
        "capture_samples_per_s",
        "plain_forward_samples_per_s",
        "capture_overhead_ratio",
        "dims",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    text = f"threads: {meta['threads']}, torch {meta['torch']}\n\n" + "\n".join(lines) + "\n"
    (out / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
