"""Sweep benchmark: one grid run serially and on an embedded LocalCluster, Dask's cost per task,
and the cost of one cell (stage seconds and store bytes) for planning a paper-scale sweep.

    python benchmarks/sweep.py            # 8 cells of the --quick preset (about 3 minutes, 2 cores)
    python benchmarks/sweep.py --quick    # 4 tiny cells: checks that the script runs (~30 s)

1. The same grid (``otcollapse.experiments.sweep.sweep``), each run into a fresh temporary folder:
   ``scheduler="serial"`` (the calling thread, torch on all the cores) and the embedded
   ``LocalCluster`` (``--workers`` processes x 1 thread). Wall time includes the cluster's
   start-up; the ratio serial / cluster is the speed-up (the issue's floor: >= 1.6x on 2 cores).
   The sum of the stage computations' seconds (``SWEEP/stages/executions.jsonl``) over the
   wall time is the stages' concurrency (over the workers: the parallel efficiency).
2. Dask's overhead per task: a LocalCluster (``--workers`` processes x 1 thread, 127.0.0.1)
   runs ``--tasks`` no-op tasks submitted as one dict graph (``client.get``, as the sweep does)
   and as ``client.map``; ms per task.
3. Per cell: the mean seconds of each stage kind (the key's prefix: train, capture, analyse,
   calibrate, seed) and the bytes of the cell's group in ``SWEEP/store.zarr``.

Results go to benchmarks/results/sweep.{md,json} (--quick: sweep_quick.{md,json}, so a check never
overwrites a full run). Run it on an idle machine: the timings are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from otcollapse._utils import atomic_write_text
from otcollapse.experiments.run import default_threads
from otcollapse.experiments.stages import executions
from otcollapse.experiments.store import STORE
from otcollapse.experiments.sweep import load_grid, sweep

HERE = Path(__file__).resolve().parent
KINDS = ("train", "capture", "analyse", "calibrate", "seed")
FLOOR = 1.6  # the floor for serial / cluster on 2 cores


def grid(quick: bool) -> dict[str, Any]:
    if quick:  # 4 tiny cells: a check that the script runs
        base = {
            "quick": True,
            "data": "digits",
            "width": 8,
            "blocks": 2,
            "epochs": 2,
            "max_samples": 80,
            "mufm": False,
            "capture_epochs": [0],
        }
        return {"base": base, "grid": {"weight_decay": [0.0, 1e-3], "lr": [0.05, 0.1]}}
    # 8 cells of the --quick preset (its small MUFM included, so calibrate is measured)
    return {
        "base": {"quick": True, "data": "digits"},
        "grid": {"weight_decay": [0.0, 1e-4, 5e-4, 1e-3], "blocks": [4, 8]},
    }


def _quiet(_msg: str) -> None:
    pass


def _noop(x: int) -> int:
    return x


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_sweep(spec: dict[str, Any], scheduler: str | None, workers: int, threads: int) -> dict:
    """One sweep of ``spec`` into a fresh temporary folder: wall time, stage seconds, store."""
    with tempfile.TemporaryDirectory(prefix="otc-bench-sweep-") as tmp:
        t0 = time.perf_counter()
        out = sweep(
            spec,
            Path(tmp) / "sweep",
            scheduler=scheduler,
            workers=None if scheduler == "serial" else workers,
            threads=threads,
            progress=False,
            log=_quiet,
        )
        wall = time.perf_counter() - t0
        manifest = json.loads((out / "sweep.json").read_text())
        runs = executions(out / "stages")
        cells = [c["cell"] for c in manifest["cells"]]
        store = [folder_bytes(out / STORE / c) for c in cells]
    by_kind: dict[str, list[float]] = defaultdict(list)
    for e in runs:
        by_kind[e["key"].split("-", 1)[0]].append(float(e["seconds"]))
    stage_s = sum(sum(v) for v in by_kind.values())
    cores = 1 if scheduler == "serial" else workers
    return {
        "scheduler": "serial" if scheduler == "serial" else "LocalCluster",
        "workers": cores,
        "threads": threads,
        "cells": len(cells),
        "wall_s": wall,
        "sweep_json_s": float(manifest["seconds"]),
        "computed": int(manifest["computed"]),
        "stage_s": stage_s,
        # stages running at once on average (serial: at most 1; the cluster: at most workers)
        "concurrency": stage_s / wall,
        "processes": len({e["pid"] for e in runs}),
        "by_kind": {k: {"n": len(v), "seconds": sum(v)} for k, v in by_kind.items()},
        "store_bytes": store,
    }


def overhead(workers: int, n: int) -> dict:
    """ms per no-op task on a LocalCluster (``workers`` processes x 1 thread)."""
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.ERROR,
    )
    try:
        client = Client(cluster)
        try:
            client.wait_for_workers(workers)
            startup = time.perf_counter() - t0
            client.get({"warm-0": (_noop, 0)}, "warm-0")  # ships _noop, warms the connections
            client.gather(client.map(_noop, range(workers), pure=False))
            graph = {f"noop-{i}": (_noop, i) for i in range(n)}
            t0 = time.perf_counter()
            got = client.get(graph, list(graph))
            graph_s = time.perf_counter() - t0
            assert list(got) == list(range(n))
            t0 = time.perf_counter()
            got = client.gather(client.map(_noop, range(n), key=[f"map-{i}" for i in range(n)]))
            map_s = time.perf_counter() - t0
            assert list(got) == list(range(n))
        finally:
            client.close()
    finally:
        cluster.close()
    return {"startup_s": startup, "tasks": n, "graph_s": graph_s, "map_s": map_s}


def table(cols: list[str], rows: list[list[Any]]) -> list[str]:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 tiny cells (a check, ~30 s)")
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    ap.add_argument("--tasks", type=int, default=2000, help="no-op tasks of the overhead test")
    args = ap.parse_args()
    import dask
    import distributed
    import torch

    spec = grid(args.quick)
    g = load_grid(spec)
    cores = default_threads()
    print(f"{len(g.cells)} cells ({', '.join(g.swept)}); {cores} cores", flush=True)

    serial = run_sweep(spec, "serial", args.workers, threads=cores)
    print(f"serial: {serial['wall_s']:.1f} s", flush=True)
    cluster = run_sweep(spec, None, args.workers, threads=1)
    print(f"LocalCluster: {cluster['wall_s']:.1f} s", flush=True)
    speedup = serial["wall_s"] / cluster["wall_s"]
    over = overhead(args.workers, args.tasks)
    print(f"overhead: {1e3 * over['graph_s'] / over['tasks']:.3f} ms/task", flush=True)

    meta = {
        "cpu_count": os.cpu_count(),
        "affinity": cores,
        "machine": platform.machine(),
        "processor": cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "command": "python " + shlex.join(sys.argv),
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "grid": spec,
    }
    n = len(g.cells)
    runs = [serial, cluster]
    lines = [
        "# Sweep benchmark",
        "",
        f"Machine: {meta['cpu_count']} cores (os.cpu_count(); {cores} usable), "
        f"{meta['processor']}; Python {meta['python']}, torch {meta['torch']}, "
        f"dask {meta['dask']}, distributed {meta['distributed']}; {meta['date']}.",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Grid: {n} cells, base {json.dumps(spec['base'])}, swept {json.dumps(spec['grid'])}; "
        "1 seed. Each run into a fresh temporary folder (nothing cached).",
        "",
        "## Serial vs LocalCluster",
        "",
        "Wall: the `sweep()` call (the cluster's start-up included); sweep.json: its own "
        "`seconds` (from the cluster's being up to the last cell written); stage seconds: "
        "the sum over `executions.jsonl` (wall seconds of each computation); concurrency: stage "
        "seconds / wall, the stages running at once on average (at most 1 serially, at most the "
        "workers on the cluster: concurrency / workers is the parallel efficiency).",
        "",
    ]
    lines += table(
        [
            "scheduler",
            "workers x threads",
            "wall s",
            "sweep.json s",
            "computations",
            "stage seconds",
            "concurrency",
            "s per cell (wall)",
        ],
        [
            [
                r["scheduler"],
                f"{r['workers']} x {r['threads']}",
                r["wall_s"],
                r["sweep_json_s"],
                r["computed"],
                r["stage_s"],
                r["concurrency"],
                r["wall_s"] / n,
            ]
            for r in runs
        ],
    )
    verdict = "meets" if speedup >= FLOOR else "misses"
    lines += [
        "",
        f"Speed-up serial / LocalCluster: **{speedup:.2f}x** ({verdict} the floor of "
        f"{FLOOR}x). Cells per hour on the cluster: {3600 * n / cluster['wall_s']:.0f}.",
        "",
        "## Dask's overhead per task",
        "",
        f"LocalCluster ({args.workers} processes x 1 thread, 127.0.0.1): start-up "
        f"{over['startup_s']:.2f} s (until its workers are up); {over['tasks']} no-op tasks "
        "after a warm-up.",
        "",
    ]
    lines += table(
        ["submitted as", "tasks", "seconds", "ms per task"],
        [
            [how, over["tasks"], over[key], 1e3 * over[key] / over["tasks"]]
            for how, key in (("one dict graph (client.get)", "graph_s"), ("client.map", "map_s"))
        ],
    )
    lines += [
        "",
        "## Per cell",
        "",
        "Mean per cell of each stage kind: computations, and seconds serial (torch on "
        f"{cores} threads) and on the cluster (1 thread per worker).",
        "",
    ]
    rows = []
    for kind in [k for k in KINDS if k in cluster["by_kind"] or k in serial["by_kind"]] + sorted(
        set(cluster["by_kind"]) - set(KINDS)
    ):
        s = serial["by_kind"].get(kind, {"n": 0, "seconds": 0.0})
        c = cluster["by_kind"].get(kind, {"n": 0, "seconds": 0.0})
        rows.append([kind, c["n"] / n, s["seconds"] / n, c["seconds"] / n])
    rows.append(
        ["all stages", cluster["computed"] / n, serial["stage_s"] / n, cluster["stage_s"] / n]
    )
    lines += table(["stage", "computations per cell", "serial s", "cluster s"], rows)
    store = cluster["store_bytes"]
    lines += [
        "",
        f"Store per cell (`store.zarr/<cell>`): mean {sum(store) / len(store) / 1024:.1f} KiB "
        f"(min {min(store) / 1024:.1f}, max {max(store) / 1024:.1f} KiB); "
        f"{n} cells: {sum(store) / 1024:.1f} KiB.",
    ]
    text = "\n".join(lines) + "\n"
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stem = "sweep_quick" if args.quick else "sweep"
    record = {"meta": meta, "serial": serial, "cluster": cluster, "speedup": speedup}
    record["overhead"] = over
    atomic_write_text(out / f"{stem}.json", json.dumps(record, indent=2, default=str) + "\n")
    atomic_write_text(out / f"{stem}.md", text)
    print(text)


if __name__ == "__main__":
    main()
