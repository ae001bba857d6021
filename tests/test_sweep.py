"""Sweeps on Dask (loopback only): grid files, serial vs LocalCluster, a worker killed mid-sweep,
a killed sweep resumed, reruns that compute nothing, and the Zarr store's round trip.

Every cluster here listens on 127.0.0.1 and is closed by the test that starts it; every wait is
bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from sweep_grids import BASE, GRID, grid_file

from otcollapse.cli import main
from otcollapse.experiments import RunConfig, load_grid, load_sweep, run_experiment, sweep
from otcollapse.experiments.stages import StageContext, executions, seed_graph
from otcollapse.experiments.store import STORE

QUIET = {"progress": False, "log": lambda s: None, "threads": 1}


def _strip(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.copy()
    ds.attrs = {}
    return ds


def _stage_keys(grid: dict, root: Path) -> set[str]:
    """Every stage key of ``grid``'s graphs (what a complete sweep computes once each)."""
    keys: set[str] = set()
    for c in load_grid(grid).cells:
        for s in range(c.seed, c.seed + c.seeds):
            keys |= set(seed_graph(c, s, StageContext(str(root))).tasks)
    return keys


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> Path:
    """The 2 x 2 grid run in the calling thread (Dask's synchronous scheduler)."""
    return sweep(GRID, tmp_path_factory.mktemp("serial") / "sw", scheduler="serial", **QUIET)


# ---------------------------------------------------------------------------- grid files
def test_a_grid_expands_as_a_product_plus_hand_picked_cells(tmp_path):
    f = tmp_path / "g.toml"
    f.write_text(
        "[base]\nquick = true\nseeds = 2\n\n[grid]\nweight_decay = [0.0, 5e-4]\nblocks = [2, 3]\n"
        "\n[[cells]]\nweight_decay = 1e-3\nblocks = 5\nmodel = 'mlp'\n"
    )
    g = load_grid(f)
    assert len(g.cells) == 5 and g.swept == ("blocks", "weight_decay")
    assert [(c.weight_decay, c.blocks) for c in g.cells] == [
        (0.0, 2),
        (0.0, 3),
        (5e-4, 2),
        (5e-4, 3),
        (1e-3, 5),
    ]
    assert all(c.quick and c.seeds == 2 and c.width == 32 for c in g.cells)  # the quick preset
    assert len(set(g.ids)) == 5


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[grid]\nwidht = [8, 16]\n", "unknown setting 'widht'"),
        ("[base]\nepochs = 'ten'\n", "epochs"),
        ("[grid]\nweight_decay = []\n", "empty product"),
        ("[grid]\nweight_decay = 0.1\n", "must be a list"),
        ("[grid]\nseed = [0, 1]\n", "seeds are not cells"),
        ("[gird]\nweight_decay = [0.1]\n", "unknown table 'gird'"),
        ("[[cells]]\nblocks = 2\n[[cells]]\nblocks = 2\n", "same settings"),
        ("[base\nx = 1\n", "not valid TOML"),
        ("[grid]\nweight_decay = [0.0, -1.0]\n", "weight_decay=-1.0"),
        ("base = 5\n", "[base]"),
        ("[[cells]]\nx = 1\n[base]\nepochs = 2\n", "unknown setting 'x'"),
        ("[base]\ndata = 5\n", "data in the grid"),
        ("[grid]\ndevice = ['cpu', 'cuda']\n", "one sweep per device"),
    ],
)
def test_a_bad_grid_file_is_one_line_and_exit_status_2(tmp_path, capsys, text, words):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    out = tmp_path / "out"
    assert main(["sweep", str(f), "--out", str(out), "--scheduler", "serial"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("otcollapse: error:") and "\n" not in err and words in err
    assert not out.exists()  # refused before any work


def test_an_unreachable_scheduler_is_one_line_and_exit_status_2(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    f = tmp_path / "g.toml"
    f.write_text("[base]\nepochs = 2\n")
    addr = f"tcp://127.0.0.1:{port}"
    argv = ["sweep", str(f), "--out", str(tmp_path / "o"), "--scheduler", addr]
    t0 = time.monotonic()
    assert main([*argv, "--connect-timeout", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot reach the Dask scheduler" in err and addr in err
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------- execution
def test_the_store_holds_what_the_run_reports(serial, tmp_path):
    """Round trip: a cell's numbers in the store equal ``otcollapse run`` on the same settings
    (the one-cell case, its own folder and stages) and the seed's metrics."""
    ds = load_sweep(serial)
    assert ds.sizes["cell"] == 2 and list(ds.net.values) == ["resnet", "plain"]
    assert list(ds.seed.values) == [0, 1] and list(ds.epoch.values) == [0, 2]
    assert list(ds.weight_decay.values) == [0.0, 5e-4]  # the swept setting, along cell
    assert ds.ots.attrs["units"] == "1" and "optimal-transport score" in ds.ots.attrs["long_name"]
    cfg = RunConfig(**{**BASE, "capture_epochs": (0,), "weight_decay": 5e-4})
    m = run_experiment(cfg, tmp_path / "run", **QUIET)
    cell = ds.sel(cell=ds.cell[ds.weight_decay == 5e-4].item())
    for net in ("resnet", "plain"):
        for key in ("ots", "lss_mean", "path_ratio", "nc1_kendall_tau"):
            got = cell[key].sel(net=net, seed=0, epoch=2).item()
            assert got == m["per_seed"]["0"][net][key]  # bit for bit: same stages, same threads
        nc1 = cell["nc1"].sel(net=net, seed=1, epoch=2).values
        assert nc1.shape == (3,) and np.all(np.isfinite(nc1))  # defined at every layer
        assert nc1[-1] == m["aggregate"][net]["nc1_last"]["values"][1]
    w2 = cell["w2"].sel(net="resnet", seed=0, epoch=2).values
    assert np.all(w2 > 0) and w2.shape == (2,)
    assert np.allclose(cell["w2_sq"].sel(net="resnet", seed=0, epoch=2).values, w2**2)


def test_a_rerun_of_a_finished_sweep_computes_nothing(serial):
    n = len(executions(serial / "stages"))
    assert n == len(_stage_keys(GRID, serial / "stages"))  # each stage computed once
    before = (serial / STORE).stat().st_mtime_ns, sorted(os.listdir(serial / STORE))
    sweep(GRID, serial, scheduler="serial", **QUIET)
    assert len(executions(serial / "stages")) == n
    assert json.loads((serial / "sweep.json").read_text())["computed"] == 0
    assert sorted(os.listdir(serial / STORE)) == before[1]


def _cluster():
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=40,
    )


def test_a_local_cluster_gives_the_serial_numbers_bit_for_bit(serial, tmp_path):
    out = sweep(GRID, tmp_path / "dask", workers=2, **QUIET)
    xr.testing.assert_identical(_strip(load_sweep(out)), _strip(load_sweep(serial)))
    pids = {e["pid"] for e in executions(out / "stages")}
    assert os.getpid() not in pids and len(pids) >= 1  # the stages ran in worker processes


def test_a_worker_killed_mid_sweep_loses_and_duplicates_no_cell(serial, tmp_path):
    """SIGKILL one worker while it trains: Dask reschedules its task, the stage resumes from its
    artefacts, and the store equals the serial run's (no cell lost, none twice)."""
    from distributed import Client

    out = tmp_path / "killed"
    result: dict[str, object] = {}
    with _cluster() as cluster, Client(cluster) as client:

        def run() -> None:
            try:
                result["path"] = sweep(GRID, out, scheduler=cluster.scheduler_address, **QUIET)
            except BaseException as exc:  # reported by the assertions below
                result["error"] = exc

        t = threading.Thread(target=run)
        t.start()
        try:
            pids = client.run(os.getpid)
            victim = None
            deadline = time.monotonic() + 60
            while victim is None and time.monotonic() < deadline:
                for addr, keys in client.processing().items():
                    if any(str(k).startswith("train-") for k in keys):
                        victim = addr
                        break
                time.sleep(0.01)
            assert victim is not None, "no worker was seen training"
            os.kill(pids[victim], signal.SIGKILL)
        finally:
            t.join(180)
        assert not t.is_alive(), "the sweep did not finish within 3 minutes"
    assert "error" not in result, result.get("error")
    assert sorted(p.name for p in (out / STORE).iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in (serial / STORE).iterdir() if not p.name.startswith(".")
    )
    xr.testing.assert_identical(_strip(load_sweep(out)), _strip(load_sweep(serial)))
    keys = [e["key"] for e in executions(out / "stages")]
    assert len(keys) == len(set(keys))  # no stage completed twice


def test_a_killed_sweep_resumes_where_it_stopped(serial, tmp_path):
    """``otcollapse sweep`` killed (SIGKILL to its whole process group, cluster included) after
    its first stages, then run again: only the missing stages run, the store is complete."""
    grid = grid_file(tmp_path)
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "otcollapse.cli", "sweep", str(grid), "--out", str(out)]
    cmd += ["--workers", "2", "--threads", "1", "--no-progress"]
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while len(executions(out / "stages")) < 3 and time.monotonic() < deadline:
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.05)
        assert len(executions(out / "stages")) >= 3
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    first = [e["key"] for e in executions(out / "stages")]
    assert not (out / STORE).exists() or len(list((out / STORE).glob("cell-*"))) < 2
    assert (
        main(
            [
                "sweep",
                str(grid),
                "--out",
                str(out),
                "--scheduler",
                "serial",
                "--threads",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    keys = [e["key"] for e in executions(out / "stages")]
    assert keys[: len(first)] == first and len(keys) == len(set(keys))  # nothing done twice
    assert set(keys) == _stage_keys(GRID, out / "stages")
    xr.testing.assert_identical(_strip(load_sweep(out)), _strip(load_sweep(serial)))
    assert (out / "report.html").exists()


def test_stage_keys_name_what_is_computed_not_where():
    from dataclasses import replace

    cfg = RunConfig(**{**BASE, "capture_epochs": (0,)})
    ctx = StageContext("/x")
    base = set(seed_graph(cfg, 0, ctx).tasks)
    assert set(seed_graph(cfg, 0, StageContext("/x", threads=7)).tasks) == base
    wd = set(seed_graph(replace(cfg, weight_decay=1e-3), 0, ctx).tasks)
    assert not {k for k in wd if k.startswith("train-")} & base
    # another λ_OT grid shares the training, captures and analyses
    other = set(seed_graph(replace(cfg, mufm=True, mufm_grid=(1e-2,)), 0, ctx).tasks)
    assert {k for k in other if not k.startswith(("calibrate-", "seed-"))} <= base


def test_a_failed_cell_is_reported_and_retried_by_a_rerun(serial, tmp_path, monkeypatch, capsys):
    """One cell fails in its last stage: exit status 1 with one line, the other cell is in the
    store and the report lists the failure; a rerun computes only the failed stage."""
    import otcollapse.experiments.analysis as analysis

    real = analysis.seed_metrics

    def flaky(config, seed, parts):
        if config.weight_decay > 0:
            raise RuntimeError("a disk that filled up")
        return real(config, seed, parts)

    grid = grid_file(tmp_path)
    out = tmp_path / "sw"
    argv = ["sweep", str(grid), "--out", str(out), "--scheduler", "serial", "--threads", "1"]
    monkeypatch.setattr(analysis, "seed_metrics", flaky)
    assert main([*argv, "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "1 of 2 cells failed" in err and "a disk that filled up" in err
    manifest = json.loads((out / "sweep.json").read_text())
    assert [c["done"] for c in manifest["cells"]] == [True, False]
    assert "a disk that filled up" in manifest["cells"][1]["error"]
    assert "a disk that filled up" in (out / "report.html").read_text()
    n = len(executions(out / "stages"))
    monkeypatch.setattr(analysis, "seed_metrics", real)
    assert main([*argv, "--no-progress"]) == 0
    keys = [e["key"] for e in executions(out / "stages")]
    assert len(keys) == len(set(keys))  # nothing finished before is computed again
    # its two seeds' last stages (the serial path stopped that cell at its first failure)
    assert sum(k.startswith("seed-") for k in keys[n:]) == 2
    xr.testing.assert_identical(_strip(load_sweep(out)), _strip(load_sweep(serial)))


def test_a_moved_run_folder_resumes_from_its_stages(tmp_path):
    """Stage results name their files relative to the stage root: a run folder that moved (or a
    worker that mounts it elsewhere) is read back, nothing recomputed."""
    cfg = RunConfig(**{**BASE, "seeds": 1, "capture_epochs": (0,)})
    first = run_experiment(cfg, tmp_path / "A", **QUIET)
    n = len(executions(tmp_path / "A" / "stages"))
    (tmp_path / "A").rename(tmp_path / "B")
    again = run_experiment(cfg, tmp_path / "B", resume=True, **QUIET)
    assert len(executions(tmp_path / "B" / "stages")) == n
    assert again["headline"] == first["headline"]


def test_a_folder_that_holds_something_else_is_not_a_sweep_folder(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    f = tmp_path / "g.toml"
    f.write_text("[base]\nepochs = 2\n")
    assert main(["sweep", str(f), "--out", str(tmp_path / "x"), "--scheduler", "serial"]) == 2
    assert "holds no sweep" in capsys.readouterr().err
    assert (tmp_path / "x" / "notes.txt").read_text() == "mine"


class _Seen(Exception):
    pass


@pytest.mark.parametrize(("samples", "expected"), [(150, 1), (1200, 3)])
def test_calibrate_stage_fits_small_subsamples_on_one_thread(
    tmp_path, monkeypatch, samples, expected
):
    """The MUFM calibration of at most SMALL_FIT_SAMPLES samples runs on one torch thread (the
    stage's count is restored after it); a larger one keeps the stage's count."""
    import torch

    import otcollapse.surrogates as surrogates
    from otcollapse import Trajectory, save_trajectory
    from otcollapse.experiments.stages import SMALL_FIT_SAMPLES, StageName, calibrate_stage

    assert 150 <= SMALL_FIT_SAMPLES < 1200
    seen: list[int] = []

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise _Seen

    monkeypatch.setattr(surrogates, "calibrate_mufm", spy)
    g = np.random.default_rng(0)
    y = np.arange(1200) % 3
    traj = Trajectory.from_arrays([g.normal(size=(1200, 4)) for _ in range(3)], labels=y)
    save_trajectory(tmp_path / "traj.npz", traj)
    before = torch.get_num_threads()
    config = RunConfig(mufm_samples=samples)
    with pytest.raises(_Seen):
        calibrate_stage(
            StageContext(str(tmp_path), threads=3), StageName("k"), config, 0, "traj.npz"
        )
    assert seen == [expected]
    assert torch.get_num_threads() == before
