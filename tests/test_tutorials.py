"""Every tutorial notebook in ``tutorials/`` runs from top to bottom without an error.

Each notebook is executed by nbclient in a fresh IPython kernel of *this* interpreter
(``sys.executable``, through a kernel spec written for the test, so a ``python3`` kernel of some
other environment is never picked up), with the repository root first on ``PYTHONPATH`` so that
the checked-out package is the one under test. The first cell of the executed copy reports the
kernel's interpreter, and the test checks it. Notebooks are found by globbing, so a new tutorial
is tested as soon as it is added.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
KERNEL = "otcollapse-tests"
CELL_TIMEOUT_S = 600  # generous: a tutorial takes well under a minute on one CPU core
PROBE = "import sys; print(sys.executable)"


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
def kernel_specs(tmp_path_factory: pytest.TempPathFactory) -> KernelSpecManager:
    """A kernel spec that starts ipykernel with the interpreter running the tests."""
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
    return KernelSpecManager(kernel_dirs=[str(kernels)], ensure_native_kernel=False)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, kernel_specs: KernelSpecManager) -> None:
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(PROBE))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    km = AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=kernel_specs)
    client = NotebookClient(
        nb,
        km=km,
        timeout=CELL_TIMEOUT_S,
        startup_timeout=120,
        resources={"metadata": {"path": str(TUTORIALS)}},
    )
    try:
        client.execute(env=env)
    except (CellExecutionError, CellTimeoutError) as err:
        pytest.fail(f"tutorials/{path.name} failed:\n{err}", pytrace=False)
    probe = "".join(o.get("text", "") for o in nb.cells[0].outputs).strip()
    assert probe == sys.executable, (
        f"the kernel ran {probe!r}, not the test interpreter {sys.executable!r}"
    )
    errors = [
        (i, o.get("ename"))
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        for o in cell.outputs
        if o.output_type == "error"
    ]
    assert not errors, f"tutorials/{path.name}: error outputs in cells {errors}"
