"""Every tutorial notebook in ``tutorials/`` runs from top to bottom without an error.

Each notebook is executed by nbclient in a fresh IPython kernel of *this* interpreter
(``sys.executable``, through a kernel spec written for the test, so a ``python3`` kernel of some
other environment is never picked up), with the repository root first on ``PYTHONPATH`` so that
the checked-out package is the one under test. The first cell of the executed copy reports the
kernel's interpreter and its torch thread count, and the test checks both. Notebooks are found by
globbing, so a new tutorial is tested as soon as it is added.

nbclient owns each kernel (it makes the kernel manager), so the kernel is shut down when the
notebook ends, however it ends: a cell over its timeout interrupts the kernel and fails the test,
and the kernel's process group (with any worker processes it started) is then killed at once. A
notebook never keeps computing beside the next one. The kernels run with one thread per BLAS /
OpenMP / torch pool (``THREADS``), so a notebook's time does not depend on the machine's load
through oversubscription.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from traitlets import default

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
KERNEL = "otcollapse-tests"
CELL_TIMEOUT_S = 300  # generous: the slowest cell takes well under a minute on one busy core
THREADS = "1"  # torch, OpenMP and BLAS threads in each kernel
PROBE = "import sys, torch; print(sys.executable); print(torch.get_num_threads())"


def test_tutorials_present() -> None:
    names = {p.name for p in NOTEBOOKS}
    for required in (
        "01_transport_between_layers.ipynb",
        "02_geodesic_resnet_vs_plain.ipynb",
        "03_mufm_calibration.ipynb",
    ):
        assert required in names, f"tutorials/{required} is missing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_valid_and_cleared(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, (
        f"{path.name}: code cells {dirty} carry outputs or execution counts; commit tutorials "
        "with outputs cleared (e.g. `jupyter nbconvert --clear-output --inplace`)."
    )


@pytest.fixture(scope="module")
def kernel_manager_class(tmp_path_factory: pytest.TempPathFactory) -> type[AsyncKernelManager]:
    """A kernel manager (for nbclient to make and own) whose kernel spec ``KERNEL`` starts
    ipykernel with the interpreter running the tests."""
    kernels = tmp_path_factory.mktemp("jupyter") / "kernels"
    spec = kernels / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "otcollapse tests",
                "language": "python",
            }
        )
    )

    class TestKernelManager(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _kernel_spec_manager_default(self) -> KernelSpecManager:
            return KernelSpecManager(kernel_dirs=[str(kernels)], ensure_native_kernel=False)

    return TestKernelManager


def _survivors(pgid: int, wait_s: float = 10.0) -> list[int]:
    """The processes of the process group ``pgid`` still running (not zombies) after up to
    ``wait_s`` seconds (Linux: read from /proc; elsewhere: whether the group still exists)."""
    deadline = time.monotonic() + wait_s
    while True:
        if Path("/proc/self/stat").exists():
            alive = []
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    fields = stat.read_text().rsplit(")", 1)[1].split()
                except (OSError, IndexError):
                    continue  # gone meanwhile
                if int(fields[2]) == pgid and fields[0] != "Z":
                    alive.append(int(stat.parent.name))
        else:
            try:
                os.killpg(pgid, 0)
                alive = [pgid]
            except ProcessLookupError:
                alive = []
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def _execute(
    nb: nbformat.NotebookNode, kernel_manager_class: type[AsyncKernelManager], timeout: int
) -> tuple[str | None, list[int], list[int]]:
    """Run ``nb`` in a kernel nbclient owns; return the failure (or None), the kernel's process
    group and the processes of that group that outlived the notebook (killed before returning)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = THREADS  # torch's intra-op pool follows OMP_NUM_THREADS
    client = NotebookClient(  # no km=: the client makes the kernel manager and shuts it down
        nb,
        kernel_name=KERNEL,
        kernel_manager_class=kernel_manager_class,
        timeout=timeout,
        interrupt_on_timeout=True,  # and the cell fails with this error, without waiting more
        error_on_timeout={
            "ename": "CellTimeoutError",
            "evalue": f"the cell ran over {timeout} s; the kernel was interrupted",
            "traceback": [f"CellTimeoutError: the cell ran over {timeout} s"],
        },
        shutdown_kernel="immediate",  # kill the kernel's process group when the notebook ends
        startup_timeout=120,
        resources={"metadata": {"path": str(TUTORIALS)}},
    )
    groups: list[int] = []  # the kernel's process group: the kernel and what it started

    def started(**_: object) -> None:
        prov = client.km.provisioner
        pgid = prov.pgid or prov.pid
        if pgid != os.getpgrp():  # the kernel has a session of its own (never this one's group)
            groups.append(pgid)

    client.on_notebook_start = started
    failure = None
    try:
        client.execute(env=env)
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as err:
        failure = str(err)
    finally:
        left = [pid for pgid in groups for pid in _survivors(pgid)]
        for pid in left:  # do not leave them to the next test
            os.kill(pid, signal.SIGKILL)
    return failure, groups, left


def test_a_cell_over_its_timeout_fails_and_its_kernel_is_killed(
    kernel_manager_class: type[AsyncKernelManager],
) -> None:
    """A cell that ignores the interrupt and has started a process: both are gone at once."""
    cell = (
        "import signal, subprocess, sys\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'while True: pass'])\n"
        "while True:\n"
        "    pass\n"
    )
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    t0 = time.monotonic()
    failure, groups, left = _execute(nb, kernel_manager_class, timeout=3)
    assert groups and not left, f"processes {left} outlived the notebook"
    assert failure is not None and "CellTimeoutError" in failure, failure
    assert time.monotonic() - t0 < 60


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, kernel_manager_class: type[AsyncKernelManager]) -> None:
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(PROBE))
    failure, groups, left = _execute(nb, kernel_manager_class, CELL_TIMEOUT_S)
    assert groups, "the kernel did not start"
    assert not left, f"processes {left} of the kernel outlived tutorials/{path.name}"
    if failure is not None:
        pytest.fail(f"tutorials/{path.name} failed:\n{failure}", pytrace=False)
    probe = "".join(o.get("text", "") for o in nb.cells[0].outputs).split()
    assert probe == [sys.executable, THREADS], (
        f"the kernel ran {probe[:1]!r} with {probe[1:]!r} torch threads, not the test "
        f"interpreter {sys.executable!r} with {THREADS}"
    )
    errors = [
        (i, o.get("ename"))
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        for o in cell.outputs
        if o.output_type == "error"
    ]
    assert not errors, f"tutorials/{path.name}: error outputs in cells {errors}"
