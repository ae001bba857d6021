"""The main job: train a ResNet and its plain twin, capture their layers, analyse, report.

:func:`run_experiment` is what ``otcollapse run`` calls: the one-cell case of a sweep. Its stages
(:mod:`otcollapse.experiments.stages`: train → capture → analyse → calibrate → seed) run in the
calling thread, their artefacts kept in the run folder, which is self-contained::

    RUN_DIR/
      report.html          figures inline, tables, settings, what each number means
      metrics.json         every setting, package versions, data provenance, every result
      figures/*.png
      trajectories/*.npz   captured layers (otcollapse.io format; no pickle), links into stages/
      stages/<stage>-<key>/   content-addressed artefacts; checkpoints in stages/train-*/

With ``seeds > 1`` each seed gets its own folder ``seed_<s>/`` and the top-level
``metrics.json`` aggregates the headline numbers over seeds (mean, standard deviation and a 95%
Student-t interval) and tests the verdicts over the seeds; its figures and detailed results are
those of the first seed.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from otcollapse._utils import json_safe
from otcollapse._validation import check_int
from otcollapse.experiments.analysis import (
    Log,
    aggregate_seeds,
    profile_over_seeds,
    say,
    verdicts,
    write_figures,
)
from otcollapse.experiments.config import TWINS, RunConfig, check_model, load_splits
from otcollapse.experiments.stages import (
    TRAJECTORY,
    SeedGraph,
    StageContext,
    load_captured,
    seed_graph,
)
from otcollapse.io import LOCK_FILE, locked_folder, save_json

__all__ = ["default_threads", "run_experiment"]


def default_threads() -> int:
    """The cores this process may use (its CPU affinity where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def run_experiment(
    config: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Log = say,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train, capture, analyse and report; returns the contents of ``metrics.json``.

    Every stage runs on ``config.resolved_device()`` (``device="auto"``: CUDA when torch sees
    a GPU, else the CPU), recorded as ``device`` in ``metrics.json``.

    For each seed: train the residual network and its plain twin with weight decay (atomic
    checkpoints; ``resume=True`` continues a killed run: every stage already done is read back,
    an interrupted training resumes from its last checkpoint), capture the block trajectories at ``config.epochs_captured()`` (epoch 0,
    the initialisation, is the baseline), and run ``collapse_profile`` and ``geodesic_test``
    (which includes ``transport_profile`` with the split-half noise floor beside every W2) at
    every captured epoch; then fit and calibrate the MUFM to the ResNet's last layers
    (``calibrate_mufm`` with the NC1 discrepancy), draw the figures and write ``report.html``.

    The data set is read and the settings are checked before ``out`` is touched. The run holds
    ``out`` with :func:`otcollapse.io.locked_folder` from start to end: a second run into the same
    folder is refused at once, and the temporary files of writes killed before their rename are
    removed when the run starts or resumes. A folder this call made is removed again when the run
    fails before writing anything into it.

    ``threads`` sets torch's intra-op threads (default: the cores this process may use,
    :func:`default_threads`); it is recorded under ``execution`` in ``metrics.json``. Results
    are bit-for-bit reproducible at a given thread count on the CPU.

    Raises
    ------
    ValueError
        An existing non-empty ``out`` folder without ``resume`` (nothing is overwritten), bad
        settings, an unknown or unreadable data set, a device that does not exist here.
    otcollapse.io.FolderInUseError
        Another process is writing into ``out``.
    """
    out = Path(out)
    seeds = [config.seed + i for i in range(config.seeds)]
    threads = default_threads() if threads is None else check_int(threads, "threads", minimum=1)
    config.resolved_device()  # a device that is not here fails before anything is read
    data, _ = load_splits(config, seeds[0])  # the data set is read before the folder is made
    check_model(config, data)
    with locked_folder(out, on_error="empty"):
        # checked while holding the folder: no other run can start writing there meanwhile
        if not resume and any(e.name != LOCK_FILE for e in out.iterdir()):
            raise ValueError(
                f"the output folder {str(out)!r} is not empty; pass resume=True (--resume) to "
                "continue the run there, or choose another folder."
            )
        log(f"data: {data!r}")
        ctx = StageContext(str((out / "stages").resolve()), threads, progress, log)
        return _run_seeds(config, seeds, out, ctx)


def _run_seeds(config: RunConfig, seeds: list[int], out: Path, ctx: StageContext) -> dict[str, Any]:
    import dask

    from otcollapse.report import write_report

    t0 = time.perf_counter()
    graphs = [seed_graph(config, s, ctx) for s in seeds]
    tasks: dict[str, Any] = {}
    for g in graphs:
        tasks.update(g.tasks)
    keys = [k for g in graphs for k in (g.metrics, *g.parts.values())]
    # the stages in this thread, in Dask's order (its synchronous scheduler)
    got = dict(zip(keys, dask.get(tasks, keys), strict=True))
    seconds = time.perf_counter() - t0
    per_seed = []
    for s, g in zip(seeds, graphs, strict=True):
        folder = out if len(seeds) == 1 else out / f"seed_{s}"
        per_seed.append(_finish_seed(config, g, got, folder, ctx, seconds))
        if len(seeds) > 1:
            write_report(folder)
    metrics = per_seed[0] if len(seeds) == 1 else _over_seeds(out, seeds, per_seed)
    path = write_report(out)
    ctx.say(f"report: {path}")
    return metrics


def _finish_seed(
    config: RunConfig,
    g: SeedGraph,
    got: dict[str, Any],
    folder: Path,
    ctx: StageContext,
    seconds: float,
) -> dict[str, Any]:
    """One seed's ``metrics.json``, figures and ``trajectories/`` (links to the artefacts)."""
    part = {label: got[k] for label, k in g.parts.items()}
    final: dict[str, Any] = {}
    epochs: dict[str, dict[int, Any]] = {}
    trajs = {}
    last = config.epochs
    for net, _plain in TWINS:
        final[net] = part[f"analyse:{net}:{last}"]
        epochs[net] = {e: part[f"analyse:{net}:{e}"]["collapse"] for e in config.epochs_captured()}
        trajs[net] = load_captured(Path(ctx.root) / part[f"capture:{net}:{last}"])
    cal = part.get("calibrate")
    metrics = dict(got[g.metrics])
    device = config.resolved_device()
    # the seed stage's key leaves the device out: what ran where is recorded here
    metrics["settings"] = {**metrics["settings"], "device": config.device}
    metrics["device"] = device
    metrics["execution"] = {
        "scheduler": "serial (the calling thread)",
        "torch_threads": ctx.threads,
        "device": device,
        "stages": str(Path(ctx.root)),
    }
    metrics["figures"] = write_figures(
        {k: v for k, v in final.items() if k in ("resnet", "plain")},
        epochs,
        trajs,
        None if cal is None else (cal["calibration"], cal["fitted_on"], cal.get("profile")),
        folder / "figures",
    )
    metrics["seconds"] = seconds
    _link_trajectories(g, folder, last)
    save_json(folder / "metrics.json", json_safe(metrics))
    return metrics


def _link_trajectories(g: SeedGraph, folder: Path, last: int) -> None:
    """``trajectories/<net>_<split>_epoch<e>.npz``: hard links to the capture artefacts."""
    (folder / "trajectories").mkdir(parents=True, exist_ok=True)
    for label, key in g.parts.items():
        if not label.startswith("capture:"):
            continue
        _, net, which = label.split(":")
        split, epoch = ("test", last) if which == "test" else ("train", int(which))
        name = f"{net}_{split}_epoch{epoch:04d}.npz"
        src = Path(g.tasks[key][1].root) / key / TRAJECTORY
        dst = folder / "trajectories" / name
        dst.unlink(missing_ok=True)
        try:
            os.link(src, dst)
        except OSError:  # another file system, or links not allowed: a copy
            shutil.copyfile(src, dst)


def _over_seeds(out: Path, seeds: list[int], per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """The top-level ``metrics.json`` of a run over several seeds (the first seed's details)."""
    first = out / f"seed_{seeds[0]}"
    (out / "figures").mkdir(exist_ok=True)
    for f in per_seed[0]["figures"]:
        shutil.copyfile(first / "figures" / f, out / "figures" / f)
    metrics = dict(per_seed[0])
    joint = profile_over_seeds(per_seed)
    if joint is not None:
        metrics["mufm"] = {**metrics["mufm"], "profile": joint}
    metrics.update(
        {
            "seeds": seeds,
            "aggregate": aggregate_seeds(per_seed),
            "per_seed": {str(s): p["headline"] for s, p in zip(seeds, per_seed, strict=True)},
            "verdicts": verdicts(per_seed),
            "note": f"the verdicts are tested over all {len(seeds)} seeds; the figures and "
            f"detailed results are those of seed {seeds[0]}; every seed's own report is in "
            "seed_<s>/.",
        }
    )
    save_json(out / "metrics.json", metrics)
    return metrics
