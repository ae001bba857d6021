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

from otcollapse._utils import json_safe
from otcollapse._validation import check_real
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
) -> dict[str, Any]:
    """Run the analyses on trajectories a user saved and write the same run folder.

    Each trajectory gets ``collapse_profile`` and, when it has a segment of at least two
    layers, ``geodesic_test`` (per segment of equal dimension); figures compare them side by
    side. ``max_samples`` analyses a stratified subsample. ``out`` is held with
    :func:`otcollapse.io.locked_folder` while it is written; a folder this call made is removed
    again when the analysis fails.
    """
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
            try:
                results[name] = stage.analyse(traj, seed=seed, geodesic=len(traj) >= 2)
            except ValueError as err:  # say which of the trajectories (for analyze: which file)
                raise ValueError(f"trajectory {name!r}: {err}") from err
            kept[name] = traj
            save_trajectory(folder / "trajectories" / f"{name}.npz", traj)
        head = stage.headline(results)
        pca = {k: t for k, t in kept.items() if len(set(t.dims)) == 1}
        metrics = {
            "kind": kind,
            "settings": {"seed": seed, "max_samples": max_samples},
            "versions": stage.package_versions(),
            "provenance": json_safe(dict(source or {})),
            "headline": head,
            "verdicts": stage.verdicts(head),
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
    ``samples`` the size of the stratified subsample fitted on (all samples when None).
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "lambda_ot", tuple(self.lambda_ot))
        if not self.lambda_ot:
            raise ValueError("lambda_ot must hold at least one value.")
        for lam in self.lambda_ot:
            check_real(lam, "each lambda_ot value", minimum=0.0)
        for name in ("lambda_w", "lambda_h", "lambda_b"):
            check_real(getattr(self, name), name, minimum=0.0)

    def fit_options(self, lambda_ot: float, n_features: int) -> dict[str, Any]:
        """The keyword arguments of ``fit_mufm`` for one λ_OT on inputs of ``n_features``
        (reduced to ``dim`` by PCA when ``dim`` is smaller, else padded)."""
        embed = "pca" if self.dim is not None and self.dim < n_features else "pad"
        opts = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del opts["samples"]
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
    log: Log = say,
) -> dict[str, Any]:
    """Fit the MUFM for each ``lambda_ot`` on a data set and analyse each fitted trajectory.

    ``data`` is a built-in data set (its training split) or a ``.npz`` file with ``X`` and
    ``y``; the inputs are flattened (and reduced to ``dim`` by PCA when given: ``embed="pca"``),
    then ``fit_mufm`` runs for every λ_OT and its trajectory ``H_0 = X, ..., H_L`` goes through
    :func:`analyze_trajectories`. ``metrics.json`` records every solution (objective and its
    terms, gradient norm, iterations, converged). The settings and the data are checked before
    ``out`` is made (:class:`MUFMReportSettings`), and ``out`` is held
    (:func:`otcollapse.io.locked_folder`) from the first fit to the report.
    """
    opts = MUFMReportSettings(
        n_layers, tuple(lambda_ot), lambda_w, lambda_h, lambda_b, loss, coupling, samples, dim, seed
    )
    config = RunConfig(data=data, mufm=False)  # validates nothing MUFM-specific; reuses the loader
    ds = load_run_data(config, "train", seed)
    with locked_folder(out, on_error="remove"):
        return _fit_mufm_report(ds, data, out, opts, log)


def _fit_mufm_report(
    ds: Dataset, data: str, out: str | Path, opts: MUFMReportSettings, log: Log
) -> dict[str, Any]:
    from otcollapse.surrogates import fit_mufm

    if opts.samples is not None:
        ds = ds.subsample(opts.samples, seed=opts.seed)
    X = ds.X.reshape(len(ds), -1).double().numpy()
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
    return analyze_trajectories(trajs, out, seed=opts.seed, kind="mufm", extra=extra, log=log)
