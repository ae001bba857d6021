"""The main job, timed: ``otcollapse run`` as the docs quote it, with the numbers it reports.

    python benchmarks/pipeline.py                       # all three runs (about 8 minutes idle)
    python benchmarks/pipeline.py --only quick          # one of: default, quick, resnet18-quick
    python benchmarks/pipeline.py --only resnet18-step  # the full-width ResNet-18's training step

Each run is ``otcollapse run`` in a fresh process (the README's main command and its presets):

- ``default``: ``otcollapse run`` (digits, a 64-wide residual MLP of 6 blocks and its plain twin);
- ``quick``: ``otcollapse run --quick``;
- ``resnet18-quick``: ``otcollapse run --model resnet18 --data shapes32 --quick``.

For each it records the wall time, the peak resident memory of the process (``ru_maxrss``), the
machine's load average when it started (the docs' times are only meaningful on an idle machine),
the run's own per-stage computation times (``stages/executions.jsonl``, summed by stage kind), the
headline of every network, the verdict table, and the MUFM calibrations (the λ_OT fit and the
joint shape-and-scale fit).

``resnet18-step`` does not run the pipeline: it times SGD steps (batch 128, torch on 2 threads, the
median of 5 after 2 warm-up steps) and evaluation forward passes of the full default
``--model resnet18`` (base width 64) on ``shapes32``, and from them the training time of the full
default (both networks, 60 epochs of 36 steps and one evaluation pass over the 4,500 images
each), an estimate for a machine where the full run is out of reach. Runs are merged into benchmarks/results/pipeline.json by name, so one
can be refreshed alone; benchmarks/results/pipeline.md is rebuilt from it. The numbers quoted in
docs/getting-started.md, docs/networks.md and docs/mufm.md are checked against the JSON by
tests/test_docs.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

RUNS: dict[str, list[str]] = {
    "default": [],
    "quick": ["--quick"],
    "resnet18-quick": ["--model", "resnet18", "--data", "shapes32", "--quick"],
}

#: every measurement, in the order of the results (the pipeline runs, then the training step)
NAMES = (*RUNS, "resnet18-step")

# Runs the command line in a child and prints its peak RSS, so each run's memory is its own
# (RUSAGE_CHILDREN of this process would keep the maximum over all runs).
WRAP = """
import json, resource, subprocess, sys
rc = subprocess.run(sys.argv[1:]).returncode
print(json.dumps({"rc": rc, "maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""

HEADLINE_KEYS = (
    "ots",
    "lss_mean",
    "path_ratio",
    "efficiency",
    "nc1_first",
    "nc1_last",
    "nc1_kendall_tau",
    "steps",
    "steps_below_floor",
    "segment",
    "segments",
    "train_accuracy",
    "terminal_epoch",
)


def stage_seconds(stages: Path) -> dict[str, float]:
    """Seconds of computation per stage kind (train, capture, analyse, calibrate, seed)."""
    from otcollapse.experiments.stages import executions

    out: dict[str, float] = defaultdict(float)
    for rec in executions(stages):
        out[rec["key"].split("-")[0]] += rec["seconds"]
    return dict(out)


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """What the docs quote from a run's metrics.json."""
    out: dict[str, Any] = {
        "pipeline_seconds": metrics["seconds"],
        "headline": {
            net: {k: row[k] for k in HEADLINE_KEYS if k in row}
            for net, row in metrics["headline"].items()
        },
        "verdicts": [
            {
                k: v.get(k)
                for k in ("claim", "comparison", "measured", "effect", "ci95", "floor", "verdict")
            }
            for v in metrics["verdicts"]
        ],
        "feature_space": metrics.get("feature_space"),
    }
    mufm = metrics.get("mufm")
    if mufm:
        out["mufm"] = {"lambda_ot": mufm["lambda_ot"], "match": mufm["match"]}
        profile = mufm.get("profile") or {}
        if profile.get("fitted"):
            out["mufm_profile"] = {
                k: profile[k] for k in ("lambda_ot", "lambda_h", "lambda_w", "criterion")
            } | {"match": profile["match"], "reproduces": profile["reproduces"]}
    return out


def run(name: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / name
        # the installed entry point, as a user types it
        exe = str(Path(sys.executable).with_name("otcollapse"))
        cmd = [exe, "run", *RUNS[name], "--out", str(out)]
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", WRAP, *cmd], capture_output=True, text=True, check=False
        )
        seconds = time.perf_counter() - t0
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            sys.exit(f"could not run {cmd}:\n{proc.stderr[-3000:]}")
        status = json.loads(lines[-1])
        if status["rc"] != 0:
            sys.exit(f"otcollapse run {' '.join(RUNS[name])} failed:\n{proc.stderr[-3000:]}")
        metrics = json.loads((out / "metrics.json").read_text())
        stages = stage_seconds(out / "stages")
    return {
        "command": " ".join(["otcollapse", "run", *RUNS[name]]),
        "wall_seconds": seconds,
        "peak_rss_mib": status["maxrss_kb"] / 1024,  # ru_maxrss is in KiB on Linux
        "load_at_start": load,
        "stage_seconds": stages,
        **summary(metrics),
    }


def resnet18_step(epochs: int = 60, batch: int = 128, threads: int = 2) -> dict[str, Any]:
    import statistics

    import torch

    from otcollapse import load_dataset
    from otcollapse.nets import resnet_layout

    load = os.getloadavg()[0]
    torch.set_num_threads(threads)
    data = load_dataset("shapes32", split="train", seed=0)
    x, y = data.X[:batch], data.y[:batch]
    model = resnet_layout("resnet18", in_channels=3, n_classes=10, width=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        return time.perf_counter() - t0

    def forward() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            model(x)
        return time.perf_counter() - t0

    model.train()
    steps = [step() for _ in range(7)][2:]
    model.eval()
    forwards = [forward() for _ in range(7)][2:]
    n = len(data.y)
    per_epoch = -(-n // batch)  # steps per epoch, the last batch partial
    t_step, t_fwd = statistics.median(steps), statistics.median(forwards)
    hours = 2 * epochs * per_epoch * (t_step + t_fwd) / 3600
    return {
        "command": "resnet18 step (width 64, batch 128)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "samples": n,
        "threads": threads,
        "load_at_start": load,
        "step_seconds": t_step,
        "step_seconds_all": steps,
        "forward_seconds": t_fwd,
        "steps_per_epoch": per_epoch,
        "epochs": epochs,
        "estimated_training_hours": hours,
    }


def minutes(s: float) -> str:
    return f"{int(s // 60)} min {s % 60:.0f} s"


def markdown(rows: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# The main job, timed",
        "",
        f"`python benchmarks/pipeline.py` ({meta['machine']}, {meta['cpus']} CPUs, one run each; "
        "load average at the start of each run beside it).",
        "",
        "| run | wall | peak RSS | load | train | capture | analyse | calibrate | seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    pipelines = {k: r for k, r in rows.items() if "stage_seconds" in r}
    for r in pipelines.values():
        st = r["stage_seconds"]
        cells = " | ".join(
            f"{st.get(k, 0.0):.1f} s" for k in ("train", "capture", "analyse", "calibrate", "seed")
        )
        lines.append(
            f"| `{r['command']}` | {r['wall_seconds']:.1f} s ({minutes(r['wall_seconds'])}) | "
            f"{r['peak_rss_mib']:.0f} MiB | {r['load_at_start']:.2f} | {cells} |"
        )
    if "resnet18-step" in rows:
        r = rows["resnet18-step"]
        lines += [
            "",
            f"Full default `--model resnet18` (width 64, {r['parameters'] / 1e6:.1f} M parameters), "
            f"batch 128 on {r['threads']} threads (load {r['load_at_start']:.2f}): one SGD step "
            f"{r['step_seconds']:.2f} s, one evaluation forward pass {r['forward_seconds']:.2f} s; "
            f"training both networks for {r['epochs']} epochs of {r['steps_per_epoch']} steps "
            f"(with one evaluation pass per epoch) would take about "
            f"{r['estimated_training_hours']:.1f} hours here (an estimate from these steps).",
        ]
    for name, r in pipelines.items():
        lines += ["", f"## `{r['command']}`", "", "| network | " + " | ".join(HEADLINE_KEYS) + " |"]
        lines.append("|---" * (len(HEADLINE_KEYS) + 1) + "|")
        for net, h in r["headline"].items():
            vals = [h.get(k, "") for k in HEADLINE_KEYS]
            lines.append(
                f"| {net} | "
                + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in vals)
                + " |"
            )
        lines += [
            "",
            "| prediction | comparison | measured | verdict |",
            "|---|---|---|---|",
        ]
        for v in r["verdicts"]:
            lines.append(f"| {v['claim']} | {v['comparison']} | {v['measured']} | {v['verdict']} |")
        if "mufm" in r:
            m = r["mufm"]
            lines += [
                "",
                f"MUFM λ_OT fit ({name}): λ_OT = {m['lambda_ot']:.3g}, NC1 network "
                f"{m['match']['nc1_network']:.4g}, MUFM {m['match']['nc1_mufm']:.4g}.",
            ]
        if "mufm_profile" in r:
            p = r["mufm_profile"]
            mt = p["match"]
            lines += [
                "",
                f"Joint MUFM fit ({name}): λ_OT = {p['lambda_ot']:.3g}, λ_H = {p['lambda_h']:.3g} "
                f"(λ_W = {p['lambda_w']:.3g}), J = {p['criterion']:.3f}, RMS log ratio "
                f"{mt['rms_log_ratio']:.3f}, spread MUFM {mt['mufm_spread']:.3g} against network "
                f"{mt['network_spread']:.3g}, W2 relative {mt['w2_relative']:.3f}; within the "
                f"split-half spread at {p['reproduces']}.",
            ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=NAMES, action="append", help="run only these")
    args = ap.parse_args()
    path = RESULTS / "pipeline.json"
    data = json.loads(path.read_text()) if path.exists() else {"meta": {}, "runs": {}}
    data["meta"] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }
    for name in args.only or NAMES:
        print(f"{name} ...", flush=True)
        data["runs"][name] = resnet18_step() if name == "resnet18-step" else run(name)
    ordered = {k: data["runs"][k] for k in NAMES if k in data["runs"]}
    data["runs"] = ordered
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "pipeline.md").write_text(markdown(ordered, data["meta"]))


if __name__ == "__main__":
    main()
