"""Reproductions of published reference points, on built-in data or data the user has on disk.

``otcollapse reproduce NAME --data DATA`` reruns one experiment of the literature with the
published numbers beside the measured ones (in ``published.json`` / ``metrics.json`` under
``published``, and in the report). Nothing is downloaded: ``DATA`` is a built-in data set
(``digits``, ``mnist1d``, ...), a ``.npz`` file with arrays ``X`` and ``y`` or an image folder
``root/<class>/<image>`` (``otcollapse.data.from_folder``), e.g. MNIST exported once by the user.
Our networks are small stand-ins for the papers' (a constant-width residual network and its plain
twin), so agreement is expected in direction and rough size, not to the digit.

``resnet-vs-plain-wd``, ``pfc-depth`` and ``wd-depth`` are sweeps: their grids are shipped files
(``otcollapse/experiments/grids/<name>.toml``, printed by :func:`grid_file`) run by
:func:`otcollapse.experiments.sweep.sweep`, so they use every core (or a cluster) and resume when
rerun; their folder is a sweep folder (``store.zarr``, ``report.html`` with the grid figures).

=====================  ==========================================================================
name                   what it reruns
=====================  ==========================================================================
``gai-zhang-mnist``    Gai & Zhang: a ResNet trained with L2 regularisation on MNIST;
                       published LSS = 1.12, OTS = 0.96.
``resnet-vs-plain-wd`` Gai & Zhang: ResNet vs plain twin over weight decays; published on
                       CIFAR-100, ResNets LSS ≈ 1.3–1.8, OTS ≈ 0.85–1.0, plain nets LSS ≈ 3.5–4.6,
                       OTS ≤ 0.22.
``pfc-depth``          Wang, Gai & Zhang: progressive feedforward collapse, collapse metrics
                       decreasing over depth at the terminal phase (MNIST / CIFAR-10).
``wd-depth``           Both papers: ResNet and plain twin over weight decay (0 to 5e-3) and
                       depth (4, 8, 16 blocks), 3 seeds; published direction: stronger weight
                       decay gives straighter, more collapsed trajectories. Its figure and table
                       (:mod:`otcollapse.experiments.wd_depth`) say per score whether the
                       direction appears here, by a stated rule.
=====================  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from otcollapse.data import dataset_names
from otcollapse.experiments.config import RunConfig, read_data_file
from otcollapse.experiments.run import run_experiment
from otcollapse.io import locked_folder, save_json

__all__ = ["REPRODUCTIONS", "reproduce"]

_GZ = "K. Gai, S. Zhang, Deep residual networks learn the geodesic curve in the Wasserstein space"
_WGZ = "S. Wang, K. Gai, S. Zhang, Progressive feedforward collapse of ResNet training"


def _data_settings(data: str) -> dict[str, Any]:
    """``data`` and the model it takes: a built-in set keeps the grid's model; a file on disk
    of images of at least 4x4 pixels gets the conv model, vectors the MLP."""
    if data in dataset_names():
        return {"data": data}
    shape = read_data_file(data).input_shape  # validates the path and tells images from vectors
    model = "conv" if len(shape) == 3 and min(shape[1:]) >= 4 else "mlp"
    return {"data": str(data), "model": model}


def _config(data: str, quick: bool, seed: int, **kw: Any) -> RunConfig:
    base: dict[str, Any] = {"model": "mlp", **_data_settings(data), "seed": seed, "mufm": False}
    base.update(_QUICK if quick else {"width": 64, "blocks": 6, "epochs": 40})
    base.update(kw)
    return RunConfig(**base)


#: the --quick settings: tiny, to check the pipeline (on a stand-in), not to reproduce anything
_QUICK: dict[str, Any] = {
    "width": 16,
    "blocks": 3,
    "epochs": 4,
    "max_samples": 200,
    "capture_epochs": (0,),
}


def _finish(out: Path, metrics: dict[str, Any], published: list[dict[str, Any]], ref: str) -> None:
    from otcollapse.report import write_report

    metrics["published"] = published
    metrics["reference"] = ref
    save_json(out / "metrics.json", metrics)
    print(f"report: {write_report(out)}")


def _gai_zhang(data: str, out: Path, quick: bool, seed: int) -> dict[str, Any]:
    m = run_experiment(_config(data, quick, seed), out, progress=not quick)
    h = m["headline"]["resnet"]
    pub = [
        {"quantity": "ResNet LSS (mean)", "published": 1.12, "measured": h.get("lss_mean")},
        {"quantity": "ResNet OTS", "published": 0.96, "measured": h.get("ots")},
    ]
    _finish(out, m, pub, _GZ + " (MNIST, ResNet with L2 regularisation)")
    return m


def grid_file(name: str) -> Path:
    """The shipped grid file of the sweep reproduction ``name``."""
    return Path(__file__).parent / "grids" / f"{name}.toml"


def _sweep_grid(name: str, data: str, quick: bool, seed: int) -> dict[str, Any]:
    """The shipped grid of ``name`` on ``data``; ``quick``: tiny settings, the grid's ends."""
    from otcollapse.experiments.sweep import read_grid_file

    grid = read_grid_file(grid_file(name))
    base = grid["base"]
    base.update(_data_settings(data), seed=seed)
    if quick:
        base.update({k: list(v) if isinstance(v, tuple) else v for k, v in _QUICK.items()})
        base["seeds"] = 1
        grid["grid"] = {k: [v[0], v[-1]] for k, v in grid["grid"].items()}
    return grid


def _means(ds: Any, var: str, net: str | None) -> list[tuple[Any, float]]:
    """(cell label, mean over seeds at the last epoch) of ``var`` for ``net``."""
    v = ds[var] if net is None else ds[var].sel(net=net)
    v = v.isel(epoch=-1) if "epoch" in v.dims else v
    m = v.mean("seed")
    return [(c, float(m.sel(cell=c))) for c in ds.cell.values]


def _span_of(ds: Any, var: str, net: str) -> str:
    vals = [x for _, x in _means(ds, var, net) if x == x]
    return "—" if not vals else f"{min(vals):.3g}–{max(vals):.3g}"


def _by_setting(ds: Any, var: str, setting: str) -> str:
    return ", ".join(
        f"{setting}={ds[setting].sel(cell=c).item()}: {x:+.3f}"
        for c, x in _means(ds, var, "resnet")
    )


def _published_resnet_vs_plain(ds: Any) -> list[dict[str, Any]]:
    return [
        {
            "quantity": "ResNet LSS",
            "published": "1.3–1.8",
            "measured": _span_of(ds, "lss_mean", "resnet"),
        },
        {
            "quantity": "ResNet OTS",
            "published": "0.85–1.0",
            "measured": _span_of(ds, "ots", "resnet"),
        },
        {
            "quantity": "plain LSS",
            "published": "3.5–4.6",
            "measured": _span_of(ds, "lss_mean", "plain"),
        },
        {"quantity": "plain OTS", "published": "≤ 0.22", "measured": _span_of(ds, "ots", "plain")},
    ]


def _published_pfc(ds: Any) -> list[dict[str, Any]]:
    return [
        {
            "quantity": "ResNet NC1 over depth (Kendall τ, mean over seeds)",
            "published": "decreasing at the terminal phase (τ < 0)",
            "measured": _by_setting(ds, "nc1_kendall_tau", "blocks"),
        },
        {
            "quantity": "ResNet NC1: fraction of non-increasing steps",
            "published": "1 (monotone)",
            "measured": _by_setting(ds, "nc1_frac_non_increasing", "blocks"),
        },
    ]


def _published_wd_depth(ds: Any) -> list[dict[str, Any]]:
    from otcollapse.experiments.wd_depth import summary

    return summary(ds)["published"]


def _wd_depth_extra(out: Path, ds: Any) -> dict[str, Any]:
    """The wd-depth figure (``figures/wd_depth.png``), its table and its direction rows."""
    from otcollapse.experiments.wd_depth import write_wd_depth

    data = str(ds["data"].values.reshape(-1)[0]) if "data" in ds.coords else "the data given"
    return {"wd_depth": write_wd_depth(out, ds, f"wd-depth on {Path(data).name}")}


#: sweeps with more than the published rows: name -> writes the figures and returns the record
_EXTRAS: dict[str, Callable[[Path, Any], dict[str, Any]]] = {"wd-depth": _wd_depth_extra}


_SWEEPS: dict[str, tuple[Callable[[Any], list[dict[str, Any]]], str]] = {
    "resnet-vs-plain-wd": (
        _published_resnet_vs_plain,
        _GZ + " (CIFAR-100; measured here on the data given)",
    ),
    "pfc-depth": (_published_pfc, _WGZ + " (MNIST, CIFAR-10)"),
    "wd-depth": (
        _published_wd_depth,
        f"{_WGZ}; {_GZ} (stronger weight decay: straighter, more collapsed trajectories; "
        "measured here on the data given)",
    ),
}


def _run_sweep(
    name: str, data: str, out: Path, quick: bool, seed: int, scheduler: Any
) -> dict[str, Any]:
    from otcollapse.experiments.store import load_sweep
    from otcollapse.experiments.sweep import sweep
    from otcollapse.report import write_sweep_report

    sweep(_sweep_grid(name, data, quick, seed), out, scheduler=scheduler, progress=not quick)
    ds = load_sweep(out)
    published, ref = _SWEEPS[name]
    metrics = {"kind": "reproduce", "name": name, "published": published(ds), "reference": ref}
    if name in _EXTRAS:
        metrics.update(_EXTRAS[name](out, ds))
    save_json(out / "published.json", metrics)
    print(f"report: {write_sweep_report(out, ds)}")
    return metrics


#: the reproductions: one run, or a sweep over a shipped grid file
REPRODUCTIONS = ("gai-zhang-mnist", "resnet-vs-plain-wd", "pfc-depth", "wd-depth")


def reproduce(
    name: str,
    data: str | Path,
    out: str | Path,
    *,
    quick: bool = False,
    seed: int = 0,
    scheduler: Any = None,
) -> dict[str, Any]:
    """Rerun the reproduction ``name`` on the data set ``data``; write a report to ``out``.

    Returns a dict whose ``published`` rows hold the published and the measured value of each
    reference point (``metrics.json`` of the run, or ``published.json`` of the sweep). The
    sweeps run on ``scheduler`` (:func:`otcollapse.experiments.sweep.sweep`: an embedded
    ``LocalCluster`` by default, ``"serial"``, or a scheduler's address). ``quick=True`` uses tiny
    settings (and a sweep's end points only), to check the pipeline on a stand-in, not to
    reproduce anything.

    The data set is read before ``out`` is made, and ``out`` is held
    (:func:`otcollapse.io.locked_folder`) while the run or the sweep writes into it: a second
    writer is refused. A sweep's ``published.json`` and report are written after it (atomically);
    a sweep whose cells failed raises :class:`~otcollapse.exceptions.SweepError` before them
    (``otcollapse report OUT`` then draws what finished).
    """
    if name not in REPRODUCTIONS:
        raise ValueError(f"unknown reproduction {name!r}; choose from {sorted(REPRODUCTIONS)}.")
    _config(str(data), quick, seed)  # the data set and the settings, before out is touched
    if name in _SWEEPS:  # the sweep holds its own folder
        return _run_sweep(name, str(data), Path(out), quick, seed, scheduler)
    with locked_folder(out, on_error="empty") as folder:
        return _gai_zhang(str(data), folder, quick, seed)
