"""Paper scale: ``otcollapse analyze`` on a 10,000-sample, 9-layer ResNet-18-shaped trajectory.

    python benchmarks/paper_scale.py                 # n = 10,000, 9 layers, d = 512
    python benchmarks/paper_scale.py --n 2000        # a smaller smoke run

A ResNet-18's trajectory has 9 measures (the stem's output and its 8 blocks); projected to 512
dimensions (``--space projected --project-dim 512``) every layer lives in R^512. The trajectory
here is synthetic but shaped like a trained one: 10 classes, features that move from a noisy
input towards their class's vertex in residual steps of unequal size, with per-sample
nonlinear wiggles, so that the optimal couplings are near but not at the identity. It is saved
as ``.npz`` and analysed by the command line in a fresh process, whose wall time and peak
resident memory (``ru_maxrss`` of the child) are reported with the analysis's own per-stage
numbers. Writes benchmarks/results/paper_scale.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def trajectory(n: int, layers: int, d: int, k: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """A residual trajectory: h_{l+1} = h_l + s_l (m_y - h_l) + wiggle, float32."""
    g = np.random.default_rng(seed)
    y = np.arange(n) % k
    vertices = 3.0 * g.normal(size=(k, d))
    h = 0.4 * vertices[y] + g.normal(size=(n, d))
    mix = g.normal(size=(d, d)) / np.sqrt(d)
    steps = np.linspace(0.05, 0.3, layers - 1)
    out = {"layer_0": h.astype(np.float32)}
    for l, s in enumerate(steps, start=1):
        h = h + s * (vertices[y] - h) + 0.05 * np.tanh(h @ mix)
        out[f"layer_{l}"] = h.astype(np.float32)
    out["labels"] = y.astype(np.int64)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="samples (default 10,000)")
    ap.add_argument("--layers", type=int, default=9, help="measures (default 9: ResNet-18)")
    ap.add_argument("--dim", type=int, default=512, help="dimension (default 512)")
    ap.add_argument("--device", default="cpu", help="where the analyses run (default cpu)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet18_shaped.npz"
        t0 = time.perf_counter()
        np.savez(path, **trajectory(args.n, args.layers, args.dim))
        made = time.perf_counter() - t0
        out = Path(tmp) / "analyze"
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from otcollapse.cli import main; sys.exit(main(sys.argv[1:]))",
                "analyze",
                str(path),
                "--out",
                str(out),
                "--device",
                args.device,
            ],
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if proc.returncode != 0:
            sys.exit(f"otcollapse analyze failed:\n{proc.stderr[-3000:]}")
        metrics = json.loads(next(out.rglob("metrics.json")).read_text())
    row = {
        "n": args.n,
        "layers": args.layers,
        "dim": args.dim,
        "device": args.device,
        "trajectory_mb": args.n * args.layers * args.dim * 4 / 1e6,
        "generate_seconds": made,
        "analyze_seconds": seconds,
        "peak_rss_mb": peak_mb,
        "headline": metrics.get("headline", {}),
    }
    meta = {"python": platform.python_version(), "machine": platform.machine()}
    if args.device.startswith("cuda"):
        import torch

        meta["gpu"] = torch.cuda.get_device_name(args.device)
    print(json.dumps(row, indent=2))
    res = HERE / "results"
    res.mkdir(exist_ok=True)
    name = "paper_scale" if args.device == "cpu" else f"paper_scale_{args.device.split(':')[0]}"
    (res / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": [row]}, indent=2))
    lines = [
        "# `otcollapse analyze` at paper scale",
        "",
        f"`python benchmarks/paper_scale.py --n {args.n} --device {args.device}` "
        f"({platform.machine()}, one run).",
        "",
        "| samples | layers | dim | trajectory | analyze (wall) | peak RSS |",
        "|---|---|---|---|---|---|",
        f"| {args.n} | {args.layers} | {args.dim} | {row['trajectory_mb']:.0f} MB | "
        f"{seconds:.1f} s | {peak_mb:.0f} MB |",
    ]
    (res / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
