"""Sweeps: the main job over a grid of settings, on Dask, into one labelled results store.

A grid file (TOML)::

    [base]                       # any RunConfig setting; every cell starts from these
    quick = true                 # start from the --quick preset
    data = "digits"
    seeds = 3                    # seeds seed, seed+1, ... of every cell (a dimension, not cells)

    [grid]                       # lists, expanded as a product: 2 x 2 = 4 cells
    weight_decay = [0.0, 5e-4]
    blocks = [4, 8]

    [[cells]]                    # optional hand-picked cells (on top of [base]), after the product
    weight_decay = 1e-3
    blocks = 16

Each cell is one ``RunConfig``; each (cell, seed) is the task graph of
:mod:`otcollapse.experiments.stages`, all of them submitted at once, so one cell's analyses run
while another trains. :func:`sweep` runs them on an embedded ``LocalCluster`` (one worker
process per core, one thread each), on an existing Dask scheduler (``scheduler=
"tcp://HOST:PORT"`` or a ``distributed.Client``), or in the calling thread
(``scheduler="serial"``), and writes each finished cell into ``SWEEP/store.zarr``
(:mod:`otcollapse.experiments.store`; read it with :func:`load_sweep`).

The sweep folder::

    SWEEP/
      sweep.json       the grid's cells (settings, ids), status, computations, timings
      grid.toml        the grid file as given
      store.zarr/      one Zarr group per finished cell
      stages/          content-addressed artefacts (the cache that makes a rerun resume)

Rerunning a sweep computes only what is missing: finished cells are not submitted, and every
stage already in ``stages/`` is read back. On a cluster, ``SWEEP`` must be on a file system every
worker sees.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from otcollapse._validation import check_int, check_real
from otcollapse.data import dataset_names
from otcollapse.exceptions import SweepError
from otcollapse.experiments.analysis import Log, say
from otcollapse.experiments.config import RunConfig
from otcollapse.experiments.run import default_threads
from otcollapse.experiments.stages import StageContext, executions, seed_graph
from otcollapse.experiments.store import STORE, cell_dataset, clean_store, write_cell
from otcollapse.io import LOCK_FILE, locked_folder, save_json

__all__ = ["Grid", "load_grid", "read_grid_file", "sweep"]

_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))
_TUPLES = ("capture_epochs", "splits", "mufm_grid")


@dataclasses.dataclass(frozen=True)
class Grid:
    """The cells of a sweep: one ``RunConfig`` each, checked.

    Attributes
    ----------
    cells : tuple of RunConfig
    swept : tuple of str
        The settings that differ between cells (the coordinates along ``cell``).
    source : str
        Where the grid came from (a file's path, or ``"<dict>"``).
    """

    cells: tuple[RunConfig, ...]
    swept: tuple[str, ...]
    source: str = "<dict>"

    @property
    def ids(self) -> list[str]:
        """``cell-<12 hex digits>``: a hash of each cell's settings (its group in the store)."""
        return [_cell_id(c) for c in self.cells]

    def label(self, i: int) -> str:
        """The swept settings of cell ``i``, as ``name=value`` pairs."""
        d = self.cells[i].to_dict()  # as recorded (capture_epochs as captured)
        return ", ".join(f"{k}={d[k]}" for k in self.swept) or "the one cell"


def _cell_id(config: RunConfig) -> str:
    from otcollapse import __version__
    from otcollapse.experiments.stages import FORMAT

    # the version and format too: an upgraded package never adds its cells beside old ones
    record = {"settings": config.to_dict(), "version": __version__, "format": FORMAT}
    blob = json.dumps(record, sort_keys=True)
    return "cell-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def load_grid(grid: Grid | Mapping[str, Any] | str | Path) -> Grid:
    """A :class:`Grid` from a TOML file, a dict of the same shape, or a Grid.

    Raises
    ------
    ValueError
        Not valid TOML; a table other than ``[base]``, ``[grid]``, ``[[cells]]``; an unknown
        setting; a value of the wrong type or out of range (named with its cell); a ``[grid]``
        value that is not a non-empty list (an empty product); seeds listed as cells; two cells
        with the same settings.
    OSError
        The file cannot be read.
    """
    if isinstance(grid, Grid):
        return grid
    if isinstance(grid, Mapping):
        return _from_mapping(grid, "<dict>")
    return _from_mapping(read_grid_file(grid), str(grid))


def read_grid_file(path: str | Path) -> dict[str, Any]:
    """The tables of a grid file (TOML), unchecked; a ValueError for a file that is not TOML."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{str(path)!r} is not a text file; a grid is a TOML file.") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{str(path)!r} is not valid TOML: {err}.") from None


def _check_names(table: Mapping[str, Any], where: str) -> None:
    for k in table:
        if k not in _FIELDS and k != "quick":
            raise ValueError(
                f"unknown setting {k!r} in {where}; the settings are: {', '.join(_FIELDS)}."
            )


def _tables(d: Mapping[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    """``[base]``, ``[grid]`` and ``[[cells]]`` of a grid, each checked for its shape."""
    extra = sorted(set(d) - {"base", "grid", "cells"})
    if extra:
        raise ValueError(
            f"unknown table {extra[0]!r} in {where}; a grid has [base], [grid] and [[cells]]."
        )
    base, product = d.get("base", {}), d.get("grid", {})
    picked = d.get("cells", [])
    for name, table in (("[base]", base), ("[grid]", product)):
        if not isinstance(table, Mapping):
            raise ValueError(f"{name} in {where} must be a table of settings; got {table!r}.")
    if not isinstance(picked, list):
        raise ValueError(f"[[cells]] in {where} must be a list of tables; got {picked!r}.")
    for i, c in enumerate(picked):
        if not isinstance(c, Mapping):
            raise ValueError(f"[[cells]] entry {i + 1} in {where} must be a table.")
        _check_names(c, f"[[cells]] entry {i + 1} of {where}")
    if "device" in product or any("device" in c for c in picked):
        raise ValueError(
            f"device in [grid] or [[cells]] of {where}: the device says where a cell runs, not "
            "what it computes, so cells on two devices would share their results; run one "
            "sweep per device into its own folder."
        )
    _check_names(base, f"[base] of {where}")
    _check_names(product, f"[grid] of {where}")
    return dict(base), dict(product), picked


def _from_mapping(d: Mapping[str, Any], source: str) -> Grid:
    where = f"the grid {source}" if source != "<dict>" else "the grid"
    base, product, picked = _tables(d, where)
    for k, v in product.items():
        if k in ("seed", "seeds"):
            raise ValueError(
                f"[grid] {k} in {where}: seeds are not cells; set seeds = N (and seed = S) in "
                "[base]."
            )
        if not isinstance(v, list):
            raise ValueError(f"[grid] {k} in {where} must be a list of values; got {v!r}.")
        if not v:
            raise ValueError(f"[grid] {k} = [] in {where}: an empty product, no cells to run.")
    names = list(product)
    combos = [dict(zip(names, vals, strict=True)) for vals in itertools.product(*product.values())]
    settings = (combos if product else []) + [dict(c) for c in picked]
    if not settings:
        settings = [{}]  # no [grid] and no [[cells]]: the one cell [base]
    cells = tuple(_config({**base, **s}, s, where) for s in settings)
    ids = [_cell_id(c) for c in cells]
    for i, cid in enumerate(ids):
        j = ids.index(cid)
        if j != i:
            raise ValueError(f"cells {j + 1} and {i + 1} of {where} have the same settings.")
    swept = tuple(f for f in _FIELDS if len({json.dumps(c.to_dict()[f]) for c in cells}) > 1)
    return Grid(cells, swept, source)


def _config(settings: Mapping[str, Any], own: Mapping[str, Any], where: str) -> RunConfig:
    kw = {k: tuple(v) if k in _TUPLES and isinstance(v, list) else v for k, v in settings.items()}
    data = kw.get("data")
    if data is not None and not isinstance(data, str):
        raise ValueError(
            f"data in {where} must be a text (a data set name or a path); got {data!r}."
        )
    if isinstance(data, str) and data not in dataset_names() and not Path(data).is_absolute():
        kw["data"] = str(Path(data).resolve())  # workers elsewhere do not share our cwd
    quick = kw.pop("quick", False)
    if not isinstance(quick, bool):
        raise ValueError(f"quick in {where} must be true or false; got {quick!r}.")
    try:
        return RunConfig.quick_preset(**kw) if quick else RunConfig(**kw)
    except (TypeError, ValueError) as err:
        cell = ", ".join(f"{k}={v!r}" for k, v in own.items()) or "[base]"
        raise ValueError(f"the cell {cell} of {where}: {err}") from None


# ---------------------------------------------------------------------------- execution
@contextlib.contextmanager
def _client(
    scheduler: Any, workers: int | None, timeout: float, log: Log, gpu: bool
) -> Iterator[Any]:
    """A ``distributed.Client``: to ``scheduler`` (an address or a Client) or to an embedded
    ``LocalCluster`` on loopback, closed (with the cluster) on exit."""
    from distributed import Client, LocalCluster

    if not isinstance(scheduler, str) and scheduler is not None:
        yield scheduler  # the caller's Client: theirs to close
        return
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError, TypeError, ValueError) as err:
            reason = " ".join(str(err).split()) or type(err).__name__
            raise ValueError(
                f"cannot reach the Dask scheduler at {scheduler!r} within {timeout:g} s "
                f"({reason}); start it, or check the address (tcp://HOST:PORT)."
            ) from None
        with client:
            yield client
        return
    try:  # the dashboard's pages need bokeh; its address is printed only then
        import bokeh  # noqa: F401

        dashboard = True
    except ImportError:
        dashboard = False
    n = _embedded_workers(workers, gpu)
    with (
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",  # a free port: never clashes with another cluster
            resources={"GPU": 1} if gpu else None,
            silence_logs=40,  # logging.ERROR: worker restarts are reported by the sweep itself
        ) as cluster,
        Client(cluster) as client,
    ):
        if dashboard:
            log(f"Dask dashboard: {client.dashboard_link}")
        yield client


def _embedded_workers(workers: int | None, gpu: bool) -> int:
    """Worker processes of the embedded cluster: as asked, else one per core, or one with CUDA
    cells (one task on the GPU at a time; several GPUs want dask-cuda, see docs/sweeps.md)."""
    return workers or (1 if gpu else default_threads())


@dataclasses.dataclass
class _Cell:
    index: int
    id: str
    config: RunConfig
    seeds: list[int]
    metrics: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    error: str | None = None


def sweep(
    grid: Grid | Mapping[str, Any] | str | Path,
    out: str | Path | None = None,
    *,
    scheduler: Any = None,
    workers: int | None = None,
    threads: int | None = None,
    retries: int = 2,
    connect_timeout: float = 10.0,
    progress: bool = True,
    log: Log = say,
) -> Path:
    """Run every cell of ``grid`` and every seed, on Dask; returns the sweep folder.

    Parameters
    ----------
    grid : Grid, dict or path
        The grid (:func:`load_grid`): a TOML file, a dict of the same shape, or a :class:`Grid`.
    out : path, optional
        The sweep folder (default ``runs/sweep_<grid file's name>``). A rerun into the same
        folder computes only what is missing.
    scheduler : None, "serial", str or distributed.Client
        None: an embedded ``LocalCluster`` on 127.0.0.1 (``workers`` processes, one thread
        each), closed at the end. ``"serial"``: the calling thread (Dask's synchronous
        scheduler). ``"tcp://HOST:PORT"``: an existing scheduler. A ``Client``: used as it is.
    workers : int, optional
        Worker processes of the embedded cluster (default: the cores this process may use).
    threads : int, optional
        torch's intra-op threads in every stage (default: the cores over the workers for the
        embedded cluster, all the cores for ``"serial"``, 1 on an existing cluster). Results are
        bit-for-bit reproducible at a given thread count on the CPU; it is recorded.
    retries : int
        Dask's retries of a task that raised (a worker that dies is Dask's own business: its
        tasks are rescheduled, the stages resume from their artefacts).
    connect_timeout : float
        Seconds to reach an existing scheduler.
    progress : bool
        A progress bar over (cell, seed) pairs.

    Raises
    ------
    ValueError
        A bad grid (see :func:`load_grid`), bad options, an unreachable scheduler, an unknown
        data set; all before any work.
    otcollapse.io.FolderInUseError
        Another sweep is writing into ``out``.
    otcollapse.exceptions.SweepError
        Some cells failed (after the retries); the others are in the store, and a rerun retries
        the failed ones. Their errors are in ``sweep.json``.
    """
    from otcollapse.experiments.config import check_model, load_splits

    g = load_grid(grid)
    retries = check_int(retries, "retries", minimum=0)
    check_real(connect_timeout, "connect_timeout", minimum=0.0, open_min=True)
    if workers is not None:
        workers = check_int(workers, "workers", minimum=1)
        if scheduler is not None:
            raise ValueError(
                "workers sets the size of the embedded cluster; with scheduler="
                f"{scheduler!r} the workers are that cluster's (or this thread)."
            )
    data = {d: load_splits(c, c.seed)[0] for d, c in {c.data: c for c in g.cells}.items()}
    for c in g.cells:  # every cell's model against its data, before any work
        check_model(c, data[c.data])
    serial = scheduler == "serial"
    gpu = any(str(c.device).startswith("cuda") for c in g.cells)
    if threads is None:
        if serial:
            threads = default_threads()
        elif scheduler is None:
            threads = max(1, default_threads() // _embedded_workers(workers, gpu))
        else:
            threads = 1
    threads = check_int(threads, "threads", minimum=1)
    if out is None:
        name = Path(g.source).stem if g.source != "<dict>" else "grid"
        out = Path("runs") / f"sweep_{name}"
    out = Path(out)
    cells = [
        _Cell(i, cid, c, [c.seed + k for k in range(c.seeds)])
        for i, (cid, c) in enumerate(zip(g.ids, g.cells, strict=True))
    ]
    with contextlib.ExitStack() as stack:
        stack.enter_context(locked_folder(out, on_error="empty"))
        if not (out / "sweep.json").exists() and any(e.name != LOCK_FILE for e in out.iterdir()):
            raise ValueError(
                f"the folder {str(out)!r} is not empty and holds no sweep; choose another --out "
                "(a sweep folder is reused: a rerun there computes only what is missing)."
            )
        clean_store(out)
        todo = [c for c in cells if not (out / STORE / c.id).is_dir()]
        # a cluster only when there is work: a finished sweep reruns in a moment
        client = None
        if todo and not serial:
            client = stack.enter_context(_client(scheduler, workers, connect_timeout, log, gpu))
            threaded = {a: n for a, n in client.nthreads().items() if n > 1}
            if threaded:
                log(
                    f"sweep: warning: {len(threaded)} worker(s) run several threads; torch's "
                    "thread count is per process, so stages sharing a worker share it. For "
                    "reproducible numbers start workers with one thread (--nthreads 1)."
                )
        root = (out / "stages").resolve()
        root.mkdir(parents=True, exist_ok=True)
        ctx = StageContext(str(root), threads)
        before = len(executions(root))
        _manifest(out, g, cells, threads, scheduler, status="running")
        if isinstance(g.source, str) and Path(g.source).is_file():
            (out / "grid.toml").write_bytes(Path(g.source).read_bytes())
        t0 = time.perf_counter()
        log(
            f"sweep: {len(cells)} cells ({len(cells) - len(todo)} already done), "
            f"{sum(len(c.seeds) for c in todo)} (cell, seed) pairs to run; stages in {root}"
        )
        run = _run_serial if serial else _run_distributed
        run(client, todo, ctx, out, retries, progress)
        seconds = time.perf_counter() - t0
        computed = executions(root)[before:]
        _manifest(
            out,
            g,
            cells,
            threads,
            scheduler,
            status="done" if not any(c.error for c in cells) else "failed",
            computed=len(computed),
            seconds=seconds,
        )
    failed = [c for c in cells if c.error]
    log(f"sweep: {len(cells) - len(failed)} of {len(cells)} cells in {out / STORE}")
    if failed:
        raise SweepError(
            f"{len(failed)} of {len(cells)} cells failed (first: {g.label(failed[0].index)}: "
            f"{failed[0].error}); the others are in the store. Their errors are in "
            f"{out / 'sweep.json'}; rerun the sweep to retry them.",
            [(g.label(c.index), str(c.error)) for c in failed],
            out,
        )
    return out


def _manifest(
    out: Path,
    g: Grid,
    cells: Sequence[_Cell],
    threads: int,
    scheduler: Any,
    **extra: Any,
) -> None:
    where = (
        scheduler
        if isinstance(scheduler, str)
        else ("embedded LocalCluster" if scheduler is None else "a distributed.Client")
    )
    save_json(
        out / "sweep.json",
        {
            "kind": "sweep",
            "source": g.source,
            "swept": list(g.swept),
            "scheduler": where,
            "torch_threads": threads,
            "cells": [
                {
                    "cell": c.id,
                    "label": g.label(c.index),
                    "settings": c.config.to_dict(),
                    "seeds": c.seeds,
                    "done": (out / STORE / c.id).is_dir(),
                    "error": c.error,
                }
                for c in cells
            ],
            **extra,
        },
    )


def _finish(cell: _Cell, out: Path) -> None:
    """Write a cell whose seeds are all done into the store."""
    ds = cell_dataset(cell.config.to_dict(), [cell.metrics[s] for s in cell.seeds])
    write_cell(out, cell.id, ds)


def _bar(total: int, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sweep (cell, seed)", disable=not progress, leave=False)


def _run_serial(
    _client: Any,
    cells: Sequence[_Cell],
    ctx: StageContext,
    out: Path,
    _retries: int,
    progress: bool,
) -> None:
    import dask

    with _bar(sum(len(c.seeds) for c in cells), progress) as bar:
        for cell in cells:
            try:
                for s in cell.seeds:
                    graph = seed_graph(cell.config, s, ctx)
                    (cell.metrics[s],) = dask.get(graph.tasks, [graph.metrics])
                    bar.update()
                _finish(cell, out)
            except Exception as err:  # recorded; the sweep goes on with the other cells
                cell.error = f"{type(err).__name__}: {err}"


def _submit(
    client: Any, cells: Sequence[_Cell], ctx: StageContext, retries: int
) -> tuple[list[Any], dict[str, tuple[_Cell, int]]]:
    """Submit every (cell, seed) graph; returns the futures of the seeds' metrics and their
    owners. Two submissions: the tasks of CUDA cells ask for a GPU (worker resources)."""
    tasks: dict[bool, dict[str, Any]] = {False: {}, True: {}}
    owner: dict[str, tuple[_Cell, int]] = {}
    for cell in cells:
        on_gpu = str(cell.config.device).startswith("cuda")
        for s in cell.seeds:
            graph = seed_graph(cell.config, s, ctx)
            tasks[on_gpu].update(graph.tasks)
            owner[graph.metrics] = (cell, s)
    futures: list[Any] = []
    for on_gpu, graph_tasks in tasks.items():
        keys = [k for k in owner if k in graph_tasks]
        if keys:
            resources = {"GPU": 1} if on_gpu else None
            futures += client.get(
                graph_tasks, keys, sync=False, retries=retries, resources=resources
            )
    return futures, owner


def _run_distributed(
    client: Any,
    cells: Sequence[_Cell],
    ctx: StageContext,
    out: Path,
    retries: int,
    progress: bool,
) -> None:
    from distributed import as_completed

    futures, owner = _submit(client, cells, ctx, retries)
    if not futures:
        return
    stop = threading.Event()

    def collect() -> None:  # each cell into the store as soon as its seeds are done
        for fut in as_completed(futures):
            if stop.is_set():
                return
            cell, s = owner[fut.key]
            if fut.status == "finished":
                cell.metrics[s] = fut.result()
            elif cell.error is None:
                err = fut.exception()
                cell.error = f"{type(err).__name__}: {err}"
            if cell.error is None and len(cell.metrics) == len(cell.seeds):
                try:
                    _finish(cell, out)
                except Exception as err:
                    cell.error = f"{type(err).__name__}: {err}"

    failure: list[BaseException] = []

    def collect_or_record() -> None:
        try:
            collect()
        except BaseException as exc:  # raised below, in the caller's thread
            failure.append(exc)

    try:
        if not progress:
            collect()
            return
        from distributed import progress as dask_progress

        collector = threading.Thread(
            target=collect_or_record, name="otcollapse-sweep-store", daemon=True
        )
        collector.start()
        dask_progress(futures)  # Dask's own progress bar over every task of the graph
        collector.join()
    except BaseException:  # interrupted: nothing keeps running on a cluster the caller owns
        stop.set()
        client.cancel(futures)
        raise
    if failure:
        raise failure[0]
