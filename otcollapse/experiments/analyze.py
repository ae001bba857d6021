"""The jobs on trajectories that need no training: ``otcollapse analyze`` and ``otcollapse mufm``.

:func:`analyze_trajectories` analyses trajectories a user saved; :func:`fit_mufm_report` fits the
MUFM for several λ_OT on a data set and analyses each fitted trajectory the same way. Both write
the run folder of :func:`otcollapse.experiments.run_experiment` (``report.html``,
``metrics.json``, figures, trajectories).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from otcollapse._utils import check_device, json_safe
from otcollapse._validation import check_int, check_labels, check_real
from otcollapse.data import Dataset
from otcollapse.experiments import analysis as stage
from otcollapse.experiments.analysis import Log, say
from otcollapse.experiments.config import RunConfig, load_run_data
from otcollapse.io import locked_folder, save_json, save_trajectory
from otcollapse.measures import Trajectory

__all__ = ["MUFMReportSettings", "analyze_trajectories", "fit_mufm_report"]


# ---------------------------------------------------------------------------- analyze
def analyze_trajectories(
    trajectories: Mapping[str, Trajectory],
    out: str | Path,
    *,
    seed: int = 0,
    max_samples: int | None = None,
    source: Mapping[str, Any] | None = None,
    kind: str = "analyze",
    extra: Mapping[str, Any] | None = None,
    log: Log = say,
    device: str = "cpu",
) -> dict[str, Any]:
    """Run the analyses on trajectories a user saved and write the same run folder.

    Each trajectory gets ``collapse_profile`` and, when it has a segment of at least two
    layers, ``geodesic_test`` (per segment of equal dimension); figures compare them side by
    side. ``max_samples`` analyses a stratified subsample. The analyses run on ``device`` (the
    trajectories are moved there with :meth:`~otcollapse.Trajectory.to`; the saved ones stay as
    given). ``out`` is held with :func:`otcollapse.io.locked_folder` while it is written; a
    folder this call made is removed again when the analysis fails. The settings are checked
    before ``out`` is made.
    """
    seed = check_int(seed, "seed")
    if max_samples is not None:
        max_samples = check_int(max_samples, "max_samples", minimum=1)
    dev = check_device(device)
    if not trajectories:
        raise ValueError("no trajectories to analyse.")
    for name, traj in trajectories.items():
        if traj.labels is None:
            raise ValueError(f"trajectory {name!r} has no labels; the collapse metrics need them.")
    from otcollapse.report import write_report

    with locked_folder(out, on_error="remove") as folder:
        results: dict[str, Any] = {}
        kept: dict[str, Trajectory] = {}
        for name, traj in trajectories.items():
            if max_samples is not None and traj.n_samples > max_samples:
                traj = traj.subsample(max_samples, seed=seed)
            log(f"analysing {name}: {traj}")
            on_device = traj if dev.type == "cpu" else traj.to(dev)
            try:
                results[name] = stage.analyse(on_device, seed=seed, geodesic=len(traj) >= 2)
            except ValueError as err:  # say which of the trajectories (for analyze: which file)
                raise ValueError(f"trajectory {name!r}: {err}") from err
            kept[name] = traj
            save_trajectory(folder / "trajectories" / f"{name}.npz", traj)
        head = stage.headline(results)
        pca = {k: t for k, t in kept.items() if len(set(t.dims)) == 1}
        metrics = {
            "kind": kind,
            "settings": {"seed": seed, "max_samples": max_samples, "device": str(device)},
            "versions": stage.package_versions(),
            "provenance": json_safe(dict(source or {})),
            "headline": head,
            "verdicts": stage.verdicts(
                [
                    {
                        "headline": head,
                        "resampled": {k: r.pop("resampled", {}) for k, r in results.items()},
                    }
                ]
            ),
            "results": {k: stage.record_results(v) for k, v in results.items()},
        }
        metrics.update(json_safe(dict(extra or {})))
        metrics["figures"] = stage.write_figures(results, {}, pca, None, folder / "figures")
        save_json(folder / "metrics.json", json_safe(metrics))
        path = write_report(folder)
        log(f"report: {path}")
        return metrics


# ---------------------------------------------------------------------------- mufm
@dataclasses.dataclass(frozen=True)
class MUFMReportSettings:
    """The settings of :func:`fit_mufm_report` (recorded in ``metrics.json``), checked at once.

    ``lambda_ot`` holds one λ_OT per fit; the others are :func:`otcollapse.fit_mufm`'s options,
    ``samples`` the size of the stratified subsample fitted on (all samples when None),
    ``device`` the torch device the fits and the analyses run on. Every setting is checked here,
    before any fit: a bad one is a ValueError (TypeError for a value of the wrong type) naming it.
    """

    n_layers: int = 4
    lambda_ot: tuple[float, ...] = (0.0, 1e-3, 1e-2)
    lambda_w: float = 5e-4
    lambda_h: float = 5e-4
    lambda_b: float = 0.0
    loss: str = "ce"
    coupling: str = "paired"
    samples: int | None = 300
    dim: int | None = None
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        from otcollapse.surrogates.mufm import _COUPLINGS
        from otcollapse.surrogates.ufm import _LOSSES

        check_int(self.n_layers, "n_layers (transport steps)", minimum=1)
        if isinstance(self.lambda_ot, (str, bytes)) or not hasattr(self.lambda_ot, "__iter__"):
            raise TypeError(
                f"lambda_ot must be a sequence of numbers (one fit each); got {self.lambda_ot!r}."
            )
        object.__setattr__(self, "lambda_ot", tuple(self.lambda_ot))
        if not self.lambda_ot:
            raise ValueError("lambda_ot must hold at least one value.")
        for lam in self.lambda_ot:
            check_real(lam, "each lambda_ot value", minimum=0.0)
        for name in ("lambda_w", "lambda_h", "lambda_b"):
            check_real(getattr(self, name), name, minimum=0.0)
        if self.loss not in _LOSSES:
            raise ValueError(f"loss must be one of {list(_LOSSES)}; got {self.loss!r}.")
        if self.coupling not in _COUPLINGS:
            raise ValueError(f"coupling must be one of {list(_COUPLINGS)}; got {self.coupling!r}.")
        if self.samples is not None:
            check_int(self.samples, "samples", minimum=2)
        if self.dim is not None:
            check_int(self.dim, "dim (the feature dimension)", minimum=1)
        check_int(self.seed, "seed")
        check_device(self.device)

    def fit_options(self, lambda_ot: float, n_features: int) -> dict[str, Any]:
        """The keyword arguments of ``fit_mufm`` for one λ_OT on inputs of ``n_features``
        (reduced to ``dim`` by PCA when ``dim`` is smaller, else padded)."""
        embed = "pca" if self.dim is not None and self.dim < n_features else "pad"
        opts = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del opts["samples"], opts["device"]  # the device is where X lives (_fit_mufm_report)
        return {**opts, "lambda_ot": float(lambda_ot), "embed": embed}


def fit_mufm_report(
    data: str,
    out: str | Path,
    *,
    n_layers: int = 4,
    lambda_ot: Sequence[float] = (0.0, 1e-3, 1e-2),
    lambda_w: float = 5e-4,
    lambda_h: float = 5e-4,
    lambda_b: float = 0.0,
    loss: str = "ce",
    coupling: str = "paired",
    samples: int | None = 300,
    dim: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    log: Log = say,
) -> dict[str, Any]:
    """Fit the MUFM for each ``lambda_ot`` on a data set and analyse each fitted trajectory.

    ``data`` is a built-in data set (its training split) or a ``.npz`` file with ``X`` and
    ``y``; the inputs are flattened (and reduced to ``dim`` by PCA when given: ``embed="pca"``),
    then ``fit_mufm`` runs for every λ_OT and its trajectory ``H_0 = X, ..., H_L`` goes through
    :func:`analyze_trajectories`. ``metrics.json`` records every solution (objective and its
    terms, gradient norm, iterations, converged). The fits and the analyses run on ``device``.
    Every setting (:class:`MUFMReportSettings`) is checked first, then the data (the subsample
    must keep every class), all before the first fit and before ``out`` is made; ``out`` is
    held (:func:`otcollapse.io.locked_folder`) from the first fit to the report.
    """
    opts = MUFMReportSettings(
        n_layers=n_layers,
        lambda_ot=lambda_ot,
        lambda_w=lambda_w,
        lambda_h=lambda_h,
        lambda_b=lambda_b,
        loss=loss,
        coupling=coupling,
        samples=samples,
        dim=dim,
        seed=seed,
        device=device,
    )
    config = RunConfig(data=data, mufm=False)  # validates nothing MUFM-specific; reuses the loader
    ds = _mufm_data(load_run_data(config, "train", seed), data, opts)
    with locked_folder(out, on_error="remove"):
        return _fit_mufm_report(ds, data, out, opts, log)


def _mufm_data(ds: Dataset, data: str, opts: MUFMReportSettings) -> Dataset:
    """The subsample fitted on, checked: every class keeps a sample (the MUFM needs K >= 2
    classes labelled ``0..K-1``)."""
    n_classes = len(set(ds.y.tolist()))
    if opts.samples is not None and opts.samples < n_classes:
        raise ValueError(
            f"samples = {opts.samples} is fewer than the {n_classes} classes of {data!r}; the "
            f"MUFM needs a sample of every class: fit on at least {n_classes} samples, better a "
            "few per class (samples, or --samples on the command line)."
        )
    if opts.samples is not None:
        ds = ds.subsample(opts.samples, seed=opts.seed)
    try:
        check_labels(ds.y.numpy(), len(ds), min_classes=2)
    except ValueError as err:
        raise ValueError(f"data set {data!r}: {err}") from None
    return ds


def _fit_mufm_report(
    ds: Dataset, data: str, out: str | Path, opts: MUFMReportSettings, log: Log
) -> dict[str, Any]:
    from otcollapse.surrogates import fit_mufm

    # fit_mufm computes in float64 on the device of X
    X = ds.X.reshape(len(ds), -1).double().to(check_device(opts.device))
    y = ds.y.numpy()
    trajs: dict[str, Trajectory] = {}
    sols = {}
    for lam in opts.lambda_ot:
        log(f"fitting the MUFM with λ_OT = {lam:g} on {X.shape[0]} samples of {data!r}")
        sol = fit_mufm(X, y, **opts.fit_options(lam, X.shape[1]))
        if not sol.converged:
            log(f"warning: the fit with λ_OT = {lam:g} did not converge (see metrics.json).")
        label = f"lambda_ot={lam:g}"
        trajs[label] = sol.trajectory
        sols[label] = sol.to_dict()
    extra = {
        "settings": {"data": data, **dataclasses.asdict(opts)},
        "provenance": ds.provenance,
        "solution": sols,
    }
    return analyze_trajectories(
        trajs, out, seed=opts.seed, kind="mufm", extra=extra, log=log, device=opts.device
    )
