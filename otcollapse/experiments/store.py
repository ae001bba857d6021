"""The sweep's results store: one labelled xarray Dataset, kept as Zarr.

Layout on disk: ``SWEEP/store.zarr/<cell>/``, one Zarr group (Zarr format 2) per cell, each written to a
temporary folder and renamed into place when complete (a killed write leaves no partial cell;
cells are added without touching the others). :func:`load_sweep` joins the cells of the sweep's
grid along ``cell`` into one ``xarray.Dataset``:

dimensions
    ``cell`` (the grid's cells, in order), ``seed``, ``net`` (``resnet``, ``plain``), ``epoch``
    (the captured epochs; 0 is the initialisation), ``layer`` (0 = the input of the first block)
    and ``step`` (the successive pair ``layer -> layer + 1``).
coordinates
    every ``RunConfig`` setting: those the grid varies along ``cell``, the others as scalars.
variables
    the metrics in :data:`VARIABLES`, each with ``units`` and ``long_name`` (its definition) in
    its attributes; a value that was not computed (the McCann fit between the first and last
    epochs, a setting a cell lacks) is NaN.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from otcollapse.experiments.stages import as_float

__all__ = ["STORE", "VARIABLES", "cell_dataset", "load_sweep", "write_cell"]

STORE = "store.zarr"
NETS = ("resnet", "plain")

#: name -> (dimensions after ``cell``, units, definition)
VARIABLES: dict[str, tuple[tuple[str, ...], str, str]] = {
    "ots": (
        ("seed", "net", "epoch"),
        "1",
        "optimal-transport score of the longest segment: the largest mass an optimal coupling of "
        "its first and last layer keeps on the network's own pairing (Gai & Zhang)",
    ),
    "lss_mean": (
        ("seed", "net", "epoch"),
        "1",
        "line-shape score, mean over samples: path length of a sample's track over its chord "
        "(1 = straight)",
    ),
    "lss_median": (("seed", "net", "epoch"), "1", "line-shape score, median over samples"),
    "path_ratio": (
        ("seed", "net", "epoch"),
        "1",
        "sum of successive W2 over W2(first, last) of the longest segment (1 = on a geodesic); "
        "computed where the full geodesic test ran: epoch 0 (initialisation) and the last epoch",
    ),
    "speed_cv": (
        ("seed", "net", "epoch"),
        "1",
        "coefficient of variation of the successive W2 (0 = constant speed)",
    ),
    "mccann_max_residual": (
        ("seed", "net", "epoch"),
        "1",
        "largest relative W2 between a layer and McCann's interpolation at its arc-length time",
    ),
    "efficiency": (
        ("seed", "net", "epoch"),
        "1",
        "end-to-end transport efficiency of the longest segment: W2²(first, last) over the paired "
        "cost (1 = the network's map is optimal; OTS's continuous companion)",
    ),
    "ots_aligned": (
        ("seed", "net", "epoch"),
        "1",
        "OTS after aligning successive layers by orthogonal Procrustes (gauge 'orthogonal')",
    ),
    "efficiency_aligned": (
        ("seed", "net", "epoch"),
        "1",
        "end-to-end efficiency after orthogonal alignment of successive layers",
    ),
    "lss_mean_aligned": (
        ("seed", "net", "epoch"),
        "1",
        "LSS (mean) after orthogonal alignment of successive layers",
    ),
    "path_ratio_aligned": (
        ("seed", "net", "epoch"),
        "1",
        "path ratio after orthogonal alignment of successive layers",
    ),
    "nc1_first": (("seed", "net", "epoch"), "1", "NC1 = tr(Σ_W Σ_B^+)/K at the first layer"),
    "nc1_last": (("seed", "net", "epoch"), "1", "NC1 = tr(Σ_W Σ_B^+)/K at the last layer"),
    "nc1_kendall_tau": (
        ("seed", "net", "epoch"),
        "1",
        "Kendall τ of NC1 against depth (−1 = decreasing at every layer: progressive collapse)",
    ),
    "nc1_frac_non_increasing": (
        ("seed", "net", "epoch"),
        "1",
        "fraction of successive layers at which NC1 does not increase",
    ),
    "nc1_log_slope": (
        ("seed", "net", "epoch"),
        "1",
        "least-squares slope β of ln NC1_l = α + β·l/L over the layers (the log-fold change of "
        "NC1 across the depth; < 0: NC1 decreases, comparable between depths)",
    ),
    "train_accuracy": (("seed", "net", "epoch"), "1", "training accuracy at that epoch"),
    "w2": (
        ("seed", "net", "epoch", "step"),
        "feature units",
        "W2 between layer l and l + 1 (exact unless the run says otherwise)",
    ),
    "w2_sq": (("seed", "net", "epoch", "step"), "feature units²", "W2² between layer l and l + 1"),
    "noise_floor": (
        ("seed", "net", "epoch", "step"),
        "feature units",
        "split-half noise floor of the step's W2: the W2 between two halves of one layer",
    ),
    "step_efficiency": (
        ("seed", "net", "epoch", "step"),
        "1",
        "W2² over the paired cost of the step (1 = the block moves mass optimally)",
    ),
    "terminal_epoch": (
        ("seed", "net"),
        "epoch",
        "first epoch with 100% training accuracy (the terminal phase); NaN when training never "
        "reached it (then train_accuracy at the last epoch is below 1)",
    ),
    "test_accuracy": (("seed", "net"), "1", "accuracy on the test split at the last epoch"),
    "test_ots": (("seed", "net"), "1", "OTS on the test split at the last epoch"),
    "test_lss_mean": (("seed", "net"), "1", "LSS (mean) on the test split at the last epoch"),
    "test_nc1_kendall_tau": (("seed", "net"), "1", "Kendall τ of NC1 on the test split"),
    "mufm_lambda_ot": (
        ("seed",),
        "1",
        "λ_OT of the MUFM calibrated to the ResNet's last-epoch NC1 profile",
    ),
    "mufm_discrepancy": (("seed",), "1", "the calibration's NC1 discrepancy at that λ_OT"),
}
#: per-layer collapse metrics (dims seed, net, epoch, layer): name -> definition
LAYER_METRICS = {
    "nc1": "NC1 = tr(Σ_W Σ_B^+)/K (Papyan, Han & Donoho 2020)",
    "he_su_d": "D = tr(Σ_W Σ_B^+) = K·NC1 (He & Su 2023)",
    "nc1_tilde": "ÑC1 = tr(Σ_W)/tr(Σ_B) (Tirer et al. 2023)",
    "cdnv": "class-distance normalised variance, mean over class pairs (Galanti et al. 2022)",
    "nc2_equinorm": "NC2 equinorm: std/mean of the class-mean norms (Papyan et al. 2020)",
    "nc2_equiangularity": "NC2 equiangularity: std of the class-mean cosines (Papyan et al. 2020)",
    "nc2_etf_distance": "distance of the normalised class-mean Gram matrix to the simplex ETF's",
    "nc3": "NC3 self-duality: distance between normalised classifier rows and class means",
    "nc4_ncc_error": "NC4: error of the nearest-class-centre rule against the labels",
    "nc4_mismatch": "NC4: disagreement of the nearest-class-centre rule with the classifier",
    "tr_sigma_w": "tr(Σ_W), within-class scatter",
    "tr_sigma_b": "tr(Σ_B), between-class scatter",
    "w2sq_to_class_means": "W2² from the layer to its class means (≤ tr Σ_W)",
}


def cell_dataset(settings: Mapping[str, Any], per_seed: Sequence[Mapping[str, Any]]) -> Any:
    """The ``xarray.Dataset`` of one cell from its seeds' metrics (``seed_metrics`` output).

    Dimensions ``seed × net × epoch × layer × step``; the settings are scalar coordinates
    (``None`` and tuples as JSON text). Missing values are NaN.
    """
    import xarray as xr

    seeds = [int(m["seed"]) for m in per_seed]
    epochs = sorted({int(r["epoch"]) for m in per_seed for n in NETS for r in m["epochs"][n]})
    n_layer = max(
        len(v)
        for m in per_seed
        for n in NETS
        for p in m["profiles"][n].values()
        for v in p["layers"].values()
    )
    shape = {
        "seed": len(seeds),
        "net": len(NETS),
        "epoch": len(epochs),
        "layer": n_layer,
        "step": max(n_layer - 1, 0),
    }
    arrays: dict[str, np.ndarray] = {}

    def put(name: str, dims: tuple[str, ...], index: tuple[int, ...], value: Any) -> None:
        if name not in arrays:
            arrays[name] = np.full([shape[d] for d in dims], np.nan)
        arr = arrays[name]
        v = np.asarray([as_float(x) for x in value]) if isinstance(value, list) else value
        if isinstance(v, np.ndarray):
            arr[index][: v.size] = v
        else:
            arr[index] = as_float(v)

    for i, m in enumerate(per_seed):
        _fill(put, i, m, epochs)
    data_vars = {}
    for name, arr in arrays.items():
        if name in VARIABLES:
            dims, units, definition = VARIABLES[name]
        else:
            dims = ("seed", "net", "epoch", "layer")
            units, definition = "1", LAYER_METRICS.get(name, f"collapse metric {name!r}")
            if name.startswith("tr_") or name.startswith("w2sq"):
                units = "feature units²"
        data_vars[name] = (dims, arr, {"units": units, "long_name": definition})
    coords: dict[str, Any] = {
        "seed": seeds,
        "net": list(NETS),
        "epoch": epochs,
        "layer": np.arange(shape["layer"]),
        "step": np.arange(shape["step"]),
    }
    coords.update({k: ((), _coord(v)) for k, v in settings.items() if k not in ("seed", "seeds")})
    ds = xr.Dataset(data_vars, coords=coords)
    ds.attrs["settings"] = json.dumps(dict(settings))
    # what produced the numbers: package versions and the data's provenance (seed 0's)
    ds.attrs["versions"] = json.dumps(per_seed[0].get("versions"))
    ds.attrs["provenance"] = json.dumps(per_seed[0].get("provenance"), default=str)
    return ds


def _fill(put: Any, i: int, m: Mapping[str, Any], epochs: list[int]) -> None:
    """Put seed ``i``'s metrics ``m`` into the cell's arrays (``put(name, dims, index, v)``)."""
    for j, n in enumerate(NETS):
        for r in m["epochs"][n]:
            k = epochs.index(int(r["epoch"]))
            for name, (dims, _u, _d) in VARIABLES.items():
                if dims == ("seed", "net", "epoch") and name in r:
                    put(name, dims, (i, j, k), r[name])
            prof = m["profiles"][n][str(r["epoch"])]
            for name, vals in prof["layers"].items():
                put(name, ("seed", "net", "epoch", "layer"), (i, j, k), list(vals))
            for name, vals in prof.get("steps", {}).items():
                if name in VARIABLES:
                    put(name, VARIABLES[name][0], (i, j, k), list(vals))
        terminal = m["headline"].get(n, {}).get("terminal_epoch")
        put("terminal_epoch", ("seed", "net"), (i, j), terminal)  # None (never reached): NaN
        test = m["headline"].get(f"{n}_test", {})
        for key in ("accuracy", "ots", "lss_mean", "nc1_kendall_tau"):
            value = m["headline"][n].get("test_accuracy") if key == "accuracy" else test.get(key)
            if value is not None:
                put(f"test_{key}", ("seed", "net"), (i, j), value)
    mufm = m.get("mufm")
    if mufm:
        put("mufm_lambda_ot", ("seed",), (i,), mufm.get("lambda_ot"))
        put("mufm_discrepancy", ("seed",), (i,), mufm.get("value"))


def _coord(v: Any) -> Any:
    """A setting as a coordinate value: numbers, flags and texts as they are, the rest as JSON."""
    if isinstance(v, (bool, int, float, str)):
        return v
    return json.dumps(v)


def write_cell(sweep_dir: str | os.PathLike, cell: str, ds: Any) -> Path:
    """Write one cell's Dataset as the group ``store.zarr/<cell>``, atomically; returns it.

    The group is written into a temporary folder beside it and renamed into place; a cell already
    in the store is left as it is (its key names its settings, so it holds the same results).
    """
    import zarr

    root = Path(sweep_dir) / STORE
    final = root / cell
    if final.exists():
        return final
    fmt = _format_2()
    zarr.open_group(str(root), mode="a", **fmt)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{cell}.", suffix=".tmp"))
    try:
        # Zarr format 2: its text arrays have a specification every Zarr reader follows
        ds.to_zarr(str(tmp), mode="w", consolidated=False, **fmt)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def _format_2() -> dict[str, Any]:
    """The keyword that asks zarr-python 3 for format 2 (zarr-python 2 writes nothing else)."""
    import zarr

    return {"zarr_format": 2} if int(zarr.__version__.split(".")[0]) >= 3 else {}


def clean_store(sweep_dir: str | os.PathLike) -> list[Path]:
    """Remove the temporary groups that killed writes left in ``store.zarr``; returns them."""
    root = Path(sweep_dir) / STORE
    removed = [p for p in root.glob(".*.tmp") if p.is_dir()] if root.exists() else []
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def load_sweep(path: str | os.PathLike) -> Any:
    """The results of a sweep as one ``xarray.Dataset`` (in memory).

    ``path`` is a folder written by :func:`otcollapse.sweep` (``otcollapse sweep``). The cells
    of its grid that are in the store are joined along ``cell``; settings the grid varies become
    coordinates along ``cell``. See :mod:`otcollapse.experiments.store` for the layout.

    Raises
    ------
    ValueError
        ``path`` is not a sweep folder, or none of its cells has finished.
    """
    import xarray as xr

    from otcollapse.io import load_json

    path = Path(path)
    manifest = path / "sweep.json"
    if not manifest.is_file():
        raise ValueError(f"{str(path)!r} is not a sweep folder: it has no sweep.json.")
    cells = [c["cell"] for c in load_json(manifest)["cells"]]
    done = [c for c in cells if (path / STORE / c).is_dir()]
    if not done:
        raise ValueError(f"no cell of the sweep in {str(path)!r} has finished yet.")
    parts = []
    for c in done:
        with xr.open_zarr(str(path / STORE / c), consolidated=False) as ds:
            parts.append(ds.load().expand_dims(cell=[c]))
    if len(parts) == 1:
        out = parts[0]
    else:
        out = xr.concat(parts, dim="cell", coords="different", compat="equals", join="outer")
    out.attrs = {"sweep": str(path.resolve()), "cells_missing": len(cells) - len(done)}
    return out
