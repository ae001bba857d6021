"""torch threads on an idle and on a busy machine: one thread against all the cores.

    python benchmarks/threads.py            # 4 busy processes for the loaded case (about 2 min)
    python benchmarks/threads.py --busy 8

Two workloads of ``otcollapse run``'s size, each in a fresh process with torch on 1 thread and on
all the cores, first on the idle machine and then beside ``--busy`` processes that spin in pure
Python (CPU-bound, no threads of their own):

- ``geodesic``: ``geodesic_test(traj, n_boot=20)`` (the run's 20 subsampling intervals) on a
  synthetic residual trajectory of the default run's shape (1,347 samples, 10 classes, 7 layers
  of width 64; the generator of ``benchmarks/paper_scale.py``);
- ``mufm``: ``calibrate_mufm_profile`` on 300 of those samples (λ_W = 5e-4, a 2 × 2 grid, no
  refinement, tolerance 1e-9), the joint fit of the run's calibrate stage.

Writes benchmarks/results/threads.{json,md}. Each time is one run (median of 3 repeats inside the
process, after one warm-up), so expect a few percent of noise on the idle rows. The one-minute
load average is recorded before the idle measurements and after the busy ones (it lags).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = """
import json, statistics, sys, time, warnings
import torch
sys.path.insert(0, sys.argv[3])
from paper_scale import trajectory
from otcollapse import Trajectory, geodesic_test
from otcollapse.surrogates import calibrate_mufm_profile

torch.set_num_threads(int(sys.argv[2]))
warnings.simplefilter("ignore")
arrays = trajectory(1347, 7, 64)
traj = Trajectory.from_arrays([arrays[f"layer_{l}"] for l in range(7)], labels=arrays["labels"])
if sys.argv[1] == "geodesic":
    work = lambda: geodesic_test(traj, n_boot=20, seed=0)
else:
    sub = traj.subsample(300, seed=0)
    work = lambda: calibrate_mufm_profile(
        sub, lambda_w=5e-4, lambda_ot_grid=[1e-4, 1e-3], lambda_h_grid=[5e-5, 5e-4],
        refine=False, tol=1e-9,
    )
work()
times = []
for _ in range(3):
    t0 = time.perf_counter()
    work()
    times.append(time.perf_counter() - t0)
print(json.dumps(statistics.median(times)))
"""


def spin() -> None:
    while True:
        pass


def measure(work: str, threads: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, work, str(threads), str(HERE)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        sys.exit(f"the {work} workload on {threads} threads failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def table(threads_all: int) -> list[dict[str, object]]:
    return [
        {"work": work, "threads": t, "seconds": measure(work, t)}
        for work in ("geodesic", "mufm")
        for t in (1, threads_all)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--busy", type=int, default=4, help="busy processes (default 4)")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))  # the cores this process may use, as otcollapse run
    loads = {"idle": os.getloadavg()[0]}
    rows = {"idle": table(cores)}
    hogs = [mp.Process(target=spin, daemon=True) for _ in range(args.busy)]
    for h in hogs:
        h.start()
    try:
        time.sleep(1)
        rows[f"{args.busy} busy"] = table(cores)
        loads[f"{args.busy} busy"] = os.getloadavg()[0]
    finally:
        for h in hogs:
            h.terminate()
        for h in hogs:
            h.join()
    meta = {"python": platform.python_version(), "machine": platform.machine(), "cpus": cores}
    res = HERE / "results"
    res.mkdir(exist_ok=True)
    (res / "threads.json").write_text(
        json.dumps({"meta": meta, "loads": loads, "rows": rows}, indent=2) + "\n"
    )
    lines = [
        "# torch threads on an idle and on a busy machine",
        "",
        f"`python benchmarks/threads.py --busy {args.busy}` ({meta['machine']}, {cores} CPUs; "
        "median of 3 runs of each workload in a fresh process).",
        "",
        "| machine | load | workload | 1 thread | " + f"{cores} threads | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for state, rs in rows.items():
        for work in ("geodesic", "mufm"):
            one = next(r["seconds"] for r in rs if r["work"] == work and r["threads"] == 1)
            alls = next(r["seconds"] for r in rs if r["work"] == work and r["threads"] == cores)
            lines.append(
                f"| {state} | {loads[state]:.2f} | {work} | {one:.2f} s | {alls:.2f} s | "
                f"{alls / one:.2f} |"
            )
    (res / "threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
