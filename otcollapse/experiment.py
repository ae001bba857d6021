"""The main job: train a ResNet and its plain twin, capture their layers, analyse, report.

:func:`run_experiment` is what ``otcollapse run`` calls; :func:`analyze_trajectories` is what
``otcollapse analyze`` calls on saved features. Both write a self-contained run folder::

    RUN_DIR/
      report.html          figures inline, tables, settings, what each number means
      metrics.json         every setting, package versions, data provenance, every result
      figures/*.png
      trajectories/*.npz   captured layers (otcollapse.io format; no pickle)
      checkpoints/<model>/checkpoint.pt   (run only; written atomically, used by --resume)

With ``seeds > 1`` each seed gets its own folder ``seed_<s>/`` and the top-level
``metrics.json`` aggregates the headline numbers over seeds (mean, standard deviation and a 95%
Student-t interval).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import platform
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from otcollapse._utils import atomic_path, check_device, json_safe
from otcollapse.collapse import CollapseProfile, collapse_profile
from otcollapse.data import Dataset, load_dataset
from otcollapse.geodesic import GeodesicReport, geodesic_test
from otcollapse.io import (
    LOCK_FILE,
    load_trajectory,
    locked_folder,
    open_npz,
    save_json,
    save_trajectory,
)
from otcollapse.measures import Trajectory
from otcollapse.nets import ConvResNet, ResidualMLP, capture, train
from otcollapse.nets.train import TrainHistory

__all__ = [
    "MODELS",
    "RunConfig",
    "analyze_trajectories",
    "headline",
    "package_versions",
    "run_experiment",
]

MODELS = ("mlp", "conv")
#: The two networks every run trains: the residual network and its plain twin.
TWINS = (("resnet", False), ("plain", True))

Log = Callable[[str], Any]


def _say(msg: str) -> None:
    print(msg, flush=True)  # flushed: a long run shows its progress even when piped to a file


def _check_number(name: str, value: Any, *, positive: bool = False) -> None:
    """A finite real number, ``> 0`` (``positive``) or ``>= 0``; else a ValueError naming it."""
    ok = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
    )
    if not ok:
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound}; got {value!r}.")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Settings of ``otcollapse run`` (all recorded in ``metrics.json``).

    Attributes
    ----------
    data : str
        A built-in data set (``otcollapse.data.dataset_names()``) or a ``.npz`` file / image
        folder already on disk (``otcollapse.data.from_folder``).
    model : {"mlp", "conv"}
        ``ResidualMLP`` (constant width) or ``ConvResNet`` (constant-width convolutional, no
        downsampling); the plain twin is the same network without skip connections.
    width, blocks : int
        Width (features or channels) and number of residual blocks; the trajectory has
        ``blocks + 1`` layers.
    epochs, lr, weight_decay, batch_size : training (SGD with momentum 0.9, cosine schedule).
    seed : int
        Seeds the data split, the initialisation and the batch order.
    seeds : int
        Number of seeds ``seed, seed+1, ...`` run and aggregated.
    capture_epochs : tuple of int, optional
        Epochs at which the trajectories are captured (0 = initialisation, the baseline);
        default ``0, E/4, E/2, 3E/4, E``.
    splits : tuple of str
        Captured splits: ``("train",)`` or ``("train", "test")``; analyses of the last epoch run
        on each.
    max_samples : int, optional
        Analyse a seeded, class-stratified subsample of this many samples.
    mufm : bool
        Fit and calibrate the MUFM to the ResNet's last-epoch trajectory.
    mufm_samples : int
        Samples (stratified subsample) the MUFM is fitted on.
    mufm_grid : tuple of float
        λ_OT grid of the calibration (refined by a 1-D search around the best point).
    device : str
        Torch device for training and capture.
    quick : bool
        Whether these are the ``--quick`` settings (recorded only).
    """

    data: str = "digits"
    model: str = "mlp"
    width: int = 64
    blocks: int = 6
    epochs: int = 60
    lr: float = 0.05
    weight_decay: float = 5e-4
    batch_size: int = 128
    seed: int = 0
    seeds: int = 1
    capture_epochs: tuple[int, ...] | None = None
    splits: tuple[str, ...] = ("train",)
    max_samples: int | None = None
    mufm: bool = True
    mufm_samples: int = 300
    mufm_grid: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2)
    device: str = "cpu"
    quick: bool = False

    @classmethod
    def quick_preset(cls, **overrides: Any) -> RunConfig:
        """The ``--quick`` settings: a small net, few epochs, a small MUFM (about a minute)."""
        base: dict[str, Any] = {
            "width": 32,
            "blocks": 4,
            "epochs": 12,
            "max_samples": 600,
            "mufm_samples": 150,
            "mufm_grid": (1e-4, 1e-3, 1e-2),
            "quick": True,
        }
        base.update(overrides)
        return cls(**base)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; use one of {list(MODELS)}.")
        for name in ("width", "blocks", "epochs", "batch_size", "seeds", "mufm_samples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int; got {v!r}.")
        _check_number("lr", self.lr, positive=True)
        _check_number("weight_decay", self.weight_decay)
        bad = [s for s in self.splits if s not in ("train", "test")]
        if bad or "train" not in self.splits:
            raise ValueError(f"splits must be ('train',) or ('train', 'test'); got {self.splits}.")
        if self.max_samples is not None and self.max_samples < 20:
            raise ValueError("max_samples must be at least 20.")
        if any(not 0 <= e <= self.epochs for e in self.epochs_captured()):
            raise ValueError(f"capture_epochs must lie in 0..{self.epochs}.")
        check_device(self.device)
        if not self.mufm_grid:
            raise ValueError("mufm_grid must hold positive λ_OT values.")
        for g in self.mufm_grid:
            _check_number("each mufm_grid value (λ_OT)", g, positive=True)

    def epochs_captured(self) -> tuple[int, ...]:
        if self.capture_epochs is not None:
            return tuple(sorted({int(e) for e in self.capture_epochs} | {self.epochs}))
        E = self.epochs
        return tuple(sorted({0, E // 4, E // 2, (3 * E) // 4, E}))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["capture_epochs"] = list(self.epochs_captured())
        return json_safe(d)


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("otcollapse", "numpy", "scipy", "torch", "pot", "geomloss", "matplotlib"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


# ---------------------------------------------------------------------------- analyses
def _analyse(
    traj: Trajectory, *, seed: int, geodesic: bool = True, progress: bool = False
) -> dict[str, Any]:
    """The three analyses of one trajectory (geodesic_test includes the transport profile)."""
    out: dict[str, Any] = {"collapse": collapse_profile(traj)}
    if geodesic:
        out["geodesic"] = geodesic_test(traj, seed=seed, progress=progress)
    return out


def _scores(traj: Trajectory) -> dict[str, Any]:
    """OTS and LSS of the longest segment of equal dimension (no McCann fit)."""
    from otcollapse.geodesic import lss, ots

    seg = max(traj.segments, key=len)
    tracks = traj.take_layers(list(seg))
    scores = lss(tracks)
    return {
        "ots": ots(tracks[0].numpy(), tracks[len(tracks) - 1].numpy()),
        "lss_mean": scores.mean,
        "lss_median": scores.median,
    }


def _segment_summary(rep: GeodesicReport) -> dict[str, Any]:
    s = max(rep.segments, key=lambda seg: len(seg.layers))  # the longest (first on a tie)
    return {
        "segment": f"{s.names[0]} … {s.names[-1]}",
        "ots": s.ots,
        "lss_mean": s.lss.mean,
        "lss_median": s.lss.median,
        "path_ratio": s.path_ratio,
        "speed_cv": s.speed_cv,
        "mccann_max_residual": s.mccann.max_residual,
    }


def headline(results: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers a reader looks at first, per model: OTS, LSS, R, NC1 at both ends, PFC."""
    out: dict[str, Any] = {}
    for name, res in results.items():
        col: CollapseProfile = res["collapse"]
        nc1 = col.values("nc1")
        row: dict[str, Any] = {
            "nc1_first": float(nc1[0]),
            "nc1_last": float(nc1[-1]),
            "nc1_kendall_tau": col.pfc["nc1"].kendall_tau if "nc1" in col.pfc else None,
            "nc1_frac_non_increasing": (
                col.pfc["nc1"].frac_non_increasing if "nc1" in col.pfc else None
            ),
            "nc1_monotone": col.pfc["nc1"].monotone if "nc1" in col.pfc else None,
        }
        if "geodesic" in res:
            row.update(_segment_summary(res["geodesic"]))
        if "history" in res:
            h: TrainHistory = res["history"]
            row["train_accuracy"] = h.final_accuracy
            row["train_loss"] = h.loss[-1] if h.loss else None
        if "test_accuracy" in res:
            row["test_accuracy"] = res["test_accuracy"]
        out[name] = json_safe(row)
    return out


def _verdicts(head: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What the theory predicts for a trained ResNet and its plain twin, and whether it held."""
    res, pl = head.get("resnet"), head.get("plain")
    out = []
    if res is not None:
        tau = res.get("nc1_kendall_tau")
        out.append(
            {
                "claim": "ResNet: NC1 decreases over depth (progressive feedforward collapse)",
                "measured": (
                    f"Kendall τ = {tau:+.3f}, non-increasing steps "
                    f"{res['nc1_frac_non_increasing']:.0%}"
                    if tau is not None
                    else "undefined"
                ),
                "holds": bool(tau is not None and tau < 0),
            }
        )
    if res is not None and pl is not None and "ots" in res and "ots" in pl:
        out.append(
            {
                "claim": "OTS of the ResNet above the plain twin's (Gai & Zhang)",
                "measured": f"{res['ots']:.3f} vs {pl['ots']:.3f}",
                "holds": bool(res["ots"] > pl["ots"]),
            }
        )
        if res.get("lss_mean") is not None and pl.get("lss_mean") is not None:
            out.append(
                {
                    "claim": "LSS of the ResNet below the plain twin's (straighter tracks)",
                    "measured": f"{res['lss_mean']:.3f} vs {pl['lss_mean']:.3f}",
                    "holds": bool(res["lss_mean"] < pl["lss_mean"]),
                }
            )
    return out


def _figures(
    final: Mapping[str, Any],
    epochs: Mapping[str, Mapping[int, CollapseProfile]],
    trajs: Mapping[str, Trajectory],
    calibration: Any,
    fig_dir: Path,
) -> list[str]:
    """Write the report's PNG figures; returns their file names."""
    from otcollapse import plots

    fig_dir.mkdir(parents=True, exist_ok=True)
    made: list[tuple[str, Any]] = []
    cols = {k: v["collapse"] for k, v in final.items()}
    made.append(("collapse_depth_nc1.png", plots.plot_collapse_depth(cols, "nc1")))
    made.append(("collapse_depth_tr_sigma_w.png", plots.plot_collapse_depth(cols, "tr_sigma_w")))
    geos = {k: v["geodesic"] for k, v in final.items() if "geodesic" in v}
    if geos:
        made.append(
            (
                "transport_steps.png",
                plots.plot_transport_steps({k: g.profile for k, g in geos.items()}),
            )
        )
        made.append(("mccann_fit.png", plots.plot_mccann_fit(geos)))
        made.append(("ots_lss.png", plots.plot_ots_lss(geos)))
    if epochs and any(len(v) > 1 for v in epochs.values()):
        made.append(("collapse_epochs_nc1.png", plots.plot_collapse_epochs(epochs, "nc1")))
    for name, traj in trajs.items():
        made.append((f"pca_{name}.png", plots.plot_layer_pca(traj, n_tracks=25)))
    if calibration is not None:
        cal, fitted_on = calibration
        made.append(("mufm_calibration.png", plots.plot_mufm_calibration(cal, network=fitted_on)))
    names = []
    for fname, fig in made:
        with atomic_path(fig_dir / fname, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        names.append(fname)
    return names


def _result_dicts(res: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in res.items():
        out[k] = v.to_dict() if hasattr(v, "to_dict") else json_safe(v)
    return out


# ---------------------------------------------------------------------------- run
def _load_data(config: RunConfig, split: str, seed: int) -> Dataset:
    from otcollapse.data import dataset_names

    if config.data in dataset_names():
        return load_dataset(config.data, split=split, seed=seed)
    path = Path(config.data)
    if not path.exists():
        raise ValueError(
            f"unknown data set {config.data!r}: not a built-in one ({list(dataset_names())}) "
            "and no such file or folder."
        )
    if split != "train":
        raise ValueError("a user data set on disk has one split: capture splits=('train',).")
    return _from_disk(path)


def _from_disk(path: str | Path) -> Dataset:
    """``from_folder(path)``; a damaged ``.npz`` gets the words of ``otcollapse analyze``."""
    from otcollapse.data import from_folder

    path = Path(path)
    try:
        return from_folder(path)
    except Exception:
        if path.is_file() and path.suffix == ".npz":
            with open_npz(path) as z:  # raises the ValueError naming what is wrong with it
                for key in z.files:
                    z[key]
        raise


def _build(config: RunConfig, data: Dataset, plain: bool) -> torch.nn.Module:
    _check_model(config, data)
    if config.model == "mlp":
        return ResidualMLP(
            data.n_features,
            config.width,
            config.blocks,
            data.n_classes,
            plain=plain,
            batchnorm=True,
        )
    return ConvResNet(data.input_shape[0], config.width, config.blocks, data.n_classes, plain=plain)


def _check_model(config: RunConfig, data: Dataset) -> None:
    shape = data.input_shape
    if config.model == "conv" and len(shape) != 3:
        raise ValueError(
            f"model='conv' needs image inputs (C, H, W); {data.name!r} has shape {shape}."
        )


def _traj_path(folder: Path, model: str, split: str, epoch: int) -> Path:
    return folder / "trajectories" / f"{model}_{split}_epoch{epoch:04d}.npz"


def _capture(
    model: torch.nn.Module, data: Dataset, config: RunConfig, seed: int, epoch: int
) -> Trajectory:
    traj = capture(model, data, device=config.device, seed=seed)
    if config.max_samples is not None and traj.n_samples > config.max_samples:
        traj = traj.subsample(config.max_samples, seed=seed)
    meta = dict(traj.metadata)
    meta.update({"epoch": int(epoch), "seed": int(seed), "provenance": data.provenance})
    return traj.replace(metadata=json_safe(meta))


def _load_splits(config: RunConfig, seed: int) -> tuple[Dataset, Dataset | None]:
    data = _load_data(config, "train", seed)
    test = _load_data(config, "test", seed) if "test" in config.splits else None
    return data, test


def _run_seed(
    config: RunConfig,
    seed: int,
    folder: Path,
    *,
    resume: bool,
    progress: bool,
    log: Log,
    splits: tuple[Dataset, Dataset | None] | None = None,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    data, test = splits if splits is not None else _load_splits(config, seed)
    log(f"[seed {seed}] data: {data!r}")
    final: dict[str, dict[str, Any]] = {}
    epoch_profiles: dict[str, dict[int, CollapseProfile]] = {}
    epoch_rows: dict[str, list[dict[str, Any]]] = {}
    last_trajs: dict[str, Trajectory] = {}
    test_results: dict[str, dict[str, Any]] = {}
    capture_at = config.epochs_captured()
    for name, plain in TWINS:
        torch.manual_seed(seed)
        model = _build(config, data, plain)

        def save_capture(epoch: int, net: torch.nn.Module, _h: Any, name: str = name) -> None:
            path = _traj_path(folder, name, "train", epoch)
            if not (resume and path.exists()):
                save_trajectory(path, _capture(net, data, config, seed, epoch))

        log(
            f"[seed {seed}] training {name} ({config.model}, width {config.width}, "
            f"{config.blocks} blocks, {config.epochs} epochs, weight decay {config.weight_decay})"
        )
        history = train(
            model,
            data,
            epochs=config.epochs,
            lr=config.lr,
            weight_decay=config.weight_decay,
            batch_size=config.batch_size,
            seed=seed,
            device=config.device,
            checkpoint_dir=folder / "checkpoints" / name,
            resume=resume,
            callbacks=[(save_capture, capture_at)],
            progress=progress,
        )
        save_json(folder / f"history_{name}.json", history.to_dict())
        log(
            f"[seed {seed}] {name}: train accuracy {history.final_accuracy:.4f}, "
            f"loss {history.loss[-1]:.4g}"
        )
        epoch_profiles[name] = {}
        epoch_rows[name] = []
        for e in capture_at:
            path = _traj_path(folder, name, "train", e)
            if not path.exists():  # only when a resumed run lost a capture: take it now
                if e != config.epochs:
                    log(f"[seed {seed}] capture of {name} at epoch {e} is missing; left out.")
                    continue
                save_trajectory(path, _capture(model, data, config, seed, e))
            traj = load_trajectory(path)
            last = e == config.epochs
            log(f"[seed {seed}] analysing {name} at epoch {e}")
            # the full geodesic test (McCann fit included) at the baseline and the end; OTS and
            # LSS only in between, where the McCann fit would dominate the run time
            full = e in (0, config.epochs)
            res = _analyse(traj, seed=seed, geodesic=full, progress=progress and full)
            epoch_profiles[name][e] = res["collapse"]
            row = {"epoch": e, **headline({name: res})[name]}
            if not full:
                row.update(_scores(traj))
            if e < len(history.accuracy) + 1 and e > 0:
                row["train_accuracy"] = history.accuracy[e - 1]
            epoch_rows[name].append(json_safe(row))
            if e == 0:
                final[f"{name}_init"] = res
            if last:
                res["history"] = history
                final[name] = res
                last_trajs[name] = traj
        if test is not None:
            traj_t = _capture(model, test, config, seed, config.epochs)
            save_trajectory(_traj_path(folder, name, "test", config.epochs), traj_t)
            res_t = _analyse(traj_t, seed=seed, progress=progress)
            acc = _accuracy(model, test, config.device)
            final[name]["test_accuracy"] = acc
            res_t["test_accuracy"] = acc
            test_results[name] = res_t
    calibration = fitted_on = None
    if config.mufm:
        fitted_on = last_trajs["resnet"].subsample(
            min(config.mufm_samples, last_trajs["resnet"].n_samples), seed=seed
        )
        calibration = _calibrate(fitted_on, config, seed, log)
    head = headline(final)
    if test_results:
        head.update(headline({f"{k}_test": v for k, v in test_results.items()}))
    metrics: dict[str, Any] = {
        "kind": "run",
        "settings": config.to_dict(),
        "seed": seed,
        "versions": package_versions(),
        "provenance": data.provenance,
        "headline": head,
        "verdicts": _verdicts(head),
        "epochs": epoch_rows,
        "results": {k: _result_dicts(v) for k, v in final.items()},
        "test": {k: _result_dicts(v) for k, v in test_results.items()},
        "mufm": None if calibration is None else _calibration_dict(calibration),
    }
    figs_final = {k: v for k, v in final.items() if k in ("resnet", "plain")}
    metrics["figures"] = _figures(
        figs_final,
        epoch_profiles,
        last_trajs,
        None if calibration is None else (calibration, fitted_on),
        folder / "figures",
    )
    metrics["seconds"] = time.perf_counter() - t0
    save_json(folder / "metrics.json", json_safe(metrics))
    return metrics


def _accuracy(model: torch.nn.Module, data: Dataset, device: str) -> float:
    was = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for xb, yb in data.batches(1024):
            pred = model(xb.to(device)).argmax(1).cpu()
            correct += int((pred == yb).sum())
    model.train(was)
    return correct / len(data)


def _calibrate(sub: Trajectory, config: RunConfig, seed: int, log: Log) -> Any:
    """``calibrate_mufm`` on ``sub`` (NC1 discrepancy); unconverged fits are logged."""
    import warnings

    from otcollapse.exceptions import ConvergenceWarning
    from otcollapse.surrogates import calibrate_mufm

    log(
        f"[seed {seed}] fitting the MUFM to the ResNet ({sub.n_samples} samples, λ_OT grid "
        f"{list(config.mufm_grid)}, λ_W = λ_H = {config.weight_decay})"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        cal = calibrate_mufm(
            sub,
            lambda_w=config.weight_decay,
            lambda_h=config.weight_decay,
            grid=list(config.mufm_grid),
            discrepancy="nc1",
            seed=seed,
            refine_xatol=0.05,  # λ_OT to about 12%: finer costs fits and changes no conclusion
        )
    for w in caught:
        log(f"[seed {seed}] warning: {w.message}")
    return cal


def _calibration_dict(cal: Any) -> dict[str, Any]:
    d = cal.to_dict()
    d["format_grid"] = cal.format_grid()
    return d


def _aggregate(per_seed: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean, standard deviation and a 95% Student-t interval of every headline number."""
    from scipy import stats

    out: dict[str, Any] = {}
    models = per_seed[0]["headline"].keys()
    for m in models:
        out[m] = {}
        for key, v0 in per_seed[0]["headline"][m].items():
            if isinstance(v0, bool) or not isinstance(v0, (int, float)):
                continue
            vals = np.array(
                [float(p["headline"][m].get(key) or np.nan) for p in per_seed], dtype=float
            )
            vals = vals[np.isfinite(vals)]
            if not vals.size:
                continue
            mean = float(vals.mean())
            sd = float(vals.std(ddof=1)) if vals.size > 1 else float("nan")
            half = (
                float(stats.t.ppf(0.975, vals.size - 1) * sd / math.sqrt(vals.size))
                if vals.size > 1
                else float("nan")
            )
            out[m][key] = {
                "mean": mean,
                "std": sd,
                "ci95": [mean - half, mean + half],
                "n": int(vals.size),
                "values": vals.tolist(),
            }
    return json_safe(out)


def run_experiment(
    config: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Log = _say,
) -> dict[str, Any]:
    """Train, capture, analyse and report; returns the contents of ``metrics.json``.

    For each seed: train the residual network and its plain twin with weight decay (atomic
    checkpoints; ``resume=True`` continues a killed run from them and reuses the trajectories
    already captured), capture the block trajectories at ``config.epochs_captured()`` (epoch 0,
    the initialisation, is the baseline), and run ``collapse_profile`` and ``geodesic_test``
    (which includes ``transport_profile`` with the split-half noise floor beside every W2) at
    every captured epoch; then fit and calibrate the MUFM to the ResNet's last layers
    (``calibrate_mufm`` with the NC1 discrepancy), draw the figures and write ``report.html``.

    The data set is read and the settings are checked before ``out`` is touched. The run holds
    ``out`` with :func:`otcollapse.io.locked_folder` from start to end: a second run into the same
    folder is refused at once, and the temporary files of writes killed before their rename are
    removed when the run starts or resumes. A folder this call made is removed again when the run
    fails before writing anything into it.

    Raises
    ------
    ValueError
        An existing non-empty ``out`` folder without ``resume`` (nothing is overwritten), bad
        settings, an unknown or unreadable data set.
    otcollapse.io.FolderInUseError
        Another process is writing into ``out``.
    """
    out = Path(out)
    seeds = [config.seed + i for i in range(config.seeds)]
    first = _load_splits(config, seeds[0])
    _check_model(config, first[0])
    with locked_folder(out, on_error="empty"):
        # checked while holding the folder: no other run can start writing there meanwhile
        if not resume and any(e.name != LOCK_FILE for e in out.iterdir()):
            raise ValueError(
                f"the output folder {str(out)!r} is not empty; pass resume=True (--resume) to "
                "continue the run there, or choose another folder."
            )
        return _run_seeds(config, seeds, out, first, resume=resume, progress=progress, log=log)


def _run_seeds(
    config: RunConfig,
    seeds: list[int],
    out: Path,
    first: tuple[Dataset, Dataset | None],
    *,
    resume: bool,
    progress: bool,
    log: Log,
) -> dict[str, Any]:
    from otcollapse.report import write_report

    per_seed = []
    for s in seeds:
        folder = out if len(seeds) == 1 else out / f"seed_{s}"
        folder.mkdir(parents=True, exist_ok=True)
        splits = first if s == seeds[0] else None
        m = _run_seed(config, s, folder, resume=resume, progress=progress, log=log, splits=splits)
        if len(seeds) > 1:
            write_report(folder)
        per_seed.append(m)
    if len(seeds) == 1:
        metrics = per_seed[0]
    else:
        first = out / f"seed_{seeds[0]}"
        (out / "figures").mkdir(exist_ok=True)
        for f in per_seed[0]["figures"]:
            shutil.copyfile(first / "figures" / f, out / "figures" / f)
        metrics = dict(per_seed[0])
        metrics.update(
            {
                "seeds": seeds,
                "aggregate": _aggregate(per_seed),
                "per_seed": {str(s): p["headline"] for s, p in zip(seeds, per_seed, strict=True)},
                "note": f"figures and detailed results are those of seed {seeds[0]}; "
                "every seed's own report is in seed_<s>/.",
            }
        )
        save_json(out / "metrics.json", metrics)
    path = write_report(out)
    log(f"report: {path}")
    return metrics


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
    log: Log = _say,
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
    with locked_folder(out, on_error="remove") as folder:
        return _analyze(
            trajectories,
            folder,
            seed=seed,
            max_samples=max_samples,
            source=source,
            kind=kind,
            extra=extra,
            log=log,
        )


def _analyze(
    trajectories: Mapping[str, Trajectory],
    out: Path,
    *,
    seed: int,
    max_samples: int | None,
    source: Mapping[str, Any] | None,
    kind: str,
    extra: Mapping[str, Any] | None,
    log: Log,
) -> dict[str, Any]:
    from otcollapse.report import write_report

    results: dict[str, Any] = {}
    kept: dict[str, Trajectory] = {}
    for name, traj in trajectories.items():
        if max_samples is not None and traj.n_samples > max_samples:
            traj = traj.subsample(max_samples, seed=seed)
        log(f"analysing {name}: {traj}")
        try:
            results[name] = _analyse(traj, seed=seed, geodesic=len(traj) >= 2)
        except ValueError as err:  # say which of the trajectories (for analyze: which file)
            raise ValueError(f"trajectory {name!r}: {err}") from err
        kept[name] = traj
        save_trajectory(out / "trajectories" / f"{name}.npz", traj)
    head = headline(results)
    pca = {k: t for k, t in kept.items() if len(set(t.dims)) == 1}
    metrics = {
        "kind": kind,
        "settings": {"seed": seed, "max_samples": max_samples},
        "versions": package_versions(),
        "provenance": json_safe(dict(source or {})),
        "headline": head,
        "verdicts": _verdicts(head),
        "results": {k: _result_dicts(v) for k, v in results.items()},
    }
    metrics.update(json_safe(dict(extra or {})))
    metrics["figures"] = _figures(results, {}, pca, None, out / "figures")
    save_json(out / "metrics.json", json_safe(metrics))
    path = write_report(out)
    log(f"report: {path}")
    return metrics


# ---------------------------------------------------------------------------- mufm
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
    log: Log = _say,
) -> dict[str, Any]:
    """Fit the MUFM for each ``lambda_ot`` on a data set and analyse each fitted trajectory.

    ``data`` is a built-in data set (its training split) or a ``.npz`` file with ``X`` and
    ``y``; the inputs are flattened (and reduced to ``dim`` by PCA when given: ``embed="pca"``),
    then ``fit_mufm`` runs for every λ_OT and its trajectory ``H_0 = X, ..., H_L`` goes through
    :func:`analyze_trajectories`. ``metrics.json`` records every solution (objective and its
    terms, gradient norm, iterations, converged). The settings and the data are checked before
    ``out`` is made, and ``out`` is held (:func:`otcollapse.io.locked_folder`) from the first fit
    to the report.
    """
    if not len(lambda_ot):
        raise ValueError("lambda_ot must hold at least one value.")
    for lam in lambda_ot:
        _check_number("each lambda_ot value", lam)
    for name, v in (("lambda_w", lambda_w), ("lambda_h", lambda_h), ("lambda_b", lambda_b)):
        _check_number(name, v)
    config = RunConfig(data=data, mufm=False)  # validates nothing MUFM-specific; reuses the loader
    ds = _load_data(config, "train", seed)
    with locked_folder(out, on_error="remove"):
        return _fit_mufm_report(
            ds,
            data,
            out,
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
            log=log,
        )


def _fit_mufm_report(
    ds: Dataset,
    data: str,
    out: str | Path,
    *,
    n_layers: int,
    lambda_ot: Sequence[float],
    lambda_w: float,
    lambda_h: float,
    lambda_b: float,
    loss: str,
    coupling: str,
    samples: int | None,
    dim: int | None,
    seed: int,
    log: Log,
) -> dict[str, Any]:
    from otcollapse.surrogates import fit_mufm

    if samples is not None:
        ds = ds.subsample(samples, seed=seed)
    X = ds.X.reshape(len(ds), -1).double().numpy()
    y = ds.y.numpy()
    trajs: dict[str, Trajectory] = {}
    sols = {}
    for lam in lambda_ot:
        log(f"fitting the MUFM with λ_OT = {lam:g} on {X.shape[0]} samples of {data!r}")
        sol = fit_mufm(
            X,
            y,
            n_layers=n_layers,
            lambda_ot=float(lam),
            lambda_w=lambda_w,
            lambda_h=lambda_h,
            lambda_b=lambda_b,
            loss=loss,
            coupling=coupling,
            dim=dim,
            embed="pca" if dim is not None and dim < X.shape[1] else "pad",
            seed=seed,
        )
        if not sol.converged:
            log(f"warning: the fit with λ_OT = {lam:g} did not converge (see metrics.json).")
        label = f"lambda_ot={lam:g}"
        trajs[label] = sol.trajectory
        sols[label] = sol.to_dict()
    extra = {
        "settings": {
            "data": data,
            "n_layers": n_layers,
            "lambda_ot": list(lambda_ot),
            "lambda_w": lambda_w,
            "lambda_h": lambda_h,
            "lambda_b": lambda_b,
            "loss": loss,
            "coupling": coupling,
            "samples": samples,
            "dim": dim,
            "seed": seed,
        },
        "provenance": ds.provenance,
        "solution": sols,
    }
    return analyze_trajectories(trajs, out, seed=seed, kind="mufm", extra=extra, log=log)
