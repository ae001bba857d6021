"""The main job: train a ResNet and its plain twin, capture their layers, analyse, report.

:func:`run_experiment` is what ``otcollapse run`` calls. It writes a self-contained run folder::

    RUN_DIR/
      report.html          figures inline, tables, settings, what each number means
      metrics.json         every setting, package versions, data provenance, every result
      figures/*.png
      trajectories/*.npz   captured layers (otcollapse.io format; no pickle)
      checkpoints/<model>/checkpoint.pt   (written atomically, used by --resume)

With ``seeds > 1`` each seed gets its own folder ``seed_<s>/`` and the top-level
``metrics.json`` aggregates the headline numbers over seeds (mean, standard deviation and a 95%
Student-t interval); its verdicts, figures and detailed results are those of the first seed.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from otcollapse._utils import json_safe
from otcollapse.collapse import CollapseProfile
from otcollapse.data import Dataset
from otcollapse.exceptions import ConvergenceWarning
from otcollapse.experiments.analysis import (
    Log,
    aggregate_seeds,
    analyse,
    epoch_scores,
    headline,
    package_versions,
    record_results,
    say,
    verdicts,
    write_figures,
)
from otcollapse.experiments.config import TWINS, RunConfig, check_model, load_splits
from otcollapse.io import LOCK_FILE, load_trajectory, locked_folder, save_json, save_trajectory
from otcollapse.measures import Trajectory
from otcollapse.nets import ConvResNet, ResidualMLP, TrainHistory, capture, train

__all__ = ["run_experiment"]


def run_experiment(
    config: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Log = say,
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
    first = load_splits(config, seeds[0])
    check_model(config, first[0])
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
        job = _SeedRun(config, s, folder, resume=resume, progress=progress, log=log)
        per_seed.append(job.run(splits))
        if len(seeds) > 1:
            write_report(folder)
    metrics = per_seed[0] if len(seeds) == 1 else _over_seeds(out, seeds, per_seed)
    path = write_report(out)
    log(f"report: {path}")
    return metrics


def _over_seeds(out: Path, seeds: list[int], per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """The top-level ``metrics.json`` of a run over several seeds (the first seed's details)."""
    first = out / f"seed_{seeds[0]}"
    (out / "figures").mkdir(exist_ok=True)
    for f in per_seed[0]["figures"]:
        shutil.copyfile(first / "figures" / f, out / "figures" / f)
    metrics = dict(per_seed[0])
    metrics.update(
        {
            "seeds": seeds,
            "aggregate": aggregate_seeds(per_seed),
            "per_seed": {str(s): p["headline"] for s, p in zip(seeds, per_seed, strict=True)},
            "note": f"figures, verdicts and detailed results are those of seed {seeds[0]}; "
            "every seed's own report is in seed_<s>/.",
        }
    )
    save_json(out / "metrics.json", metrics)
    return metrics


# ---------------------------------------------------------------------------- one seed
def _build(config: RunConfig, data: Dataset, plain: bool) -> torch.nn.Module:
    check_model(config, data)
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


def _traj_path(folder: Path, model: str, split: str, epoch: int) -> Path:
    return folder / "trajectories" / f"{model}_{split}_epoch{epoch:04d}.npz"


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


@dataclasses.dataclass
class _SeedRun:
    """One seed of a run: train both twins, analyse every captured epoch, calibrate, record."""

    config: RunConfig
    seed: int
    folder: Path
    resume: bool
    progress: bool
    log: Log
    #: model (and ``<model>_init``) -> its analyses at the last epoch (at initialisation)
    final: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    epoch_profiles: dict[str, dict[int, CollapseProfile]] = dataclasses.field(default_factory=dict)
    epoch_rows: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    last_trajs: dict[str, Trajectory] = dataclasses.field(default_factory=dict)
    test_results: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def run(self, splits: tuple[Dataset, Dataset | None] | None) -> dict[str, Any]:
        """Train, analyse and record this seed; returns (and writes) its ``metrics.json``."""
        t0 = time.perf_counter()
        config, seed = self.config, self.seed
        data, test = splits if splits is not None else load_splits(config, seed)
        self.log(f"[seed {seed}] data: {data!r}")
        for name, plain in TWINS:
            model, history = self._train(name, plain, data)
            self._analyse_epochs(name, model, data, history)
            if test is not None:
                self._analyse_test(name, model, test)
        calibration = None
        if config.mufm:
            resnet = self.last_trajs["resnet"]
            fitted_on = resnet.subsample(min(config.mufm_samples, resnet.n_samples), seed=seed)
            calibration = (self._calibrate(fitted_on), fitted_on)
        head = headline(self.final)
        if self.test_results:
            head.update(headline({f"{k}_test": v for k, v in self.test_results.items()}))
        metrics: dict[str, Any] = {
            "kind": "run",
            "settings": config.to_dict(),
            "seed": seed,
            "versions": package_versions(),
            "provenance": data.provenance,
            "headline": head,
            "verdicts": verdicts(head),
            "epochs": self.epoch_rows,
            "results": {k: record_results(v) for k, v in self.final.items()},
            "test": {k: record_results(v) for k, v in self.test_results.items()},
            "mufm": None if calibration is None else _calibration_record(calibration[0]),
        }
        metrics["figures"] = write_figures(
            {k: v for k, v in self.final.items() if k in ("resnet", "plain")},
            self.epoch_profiles,
            self.last_trajs,
            calibration,
            self.folder / "figures",
        )
        metrics["seconds"] = time.perf_counter() - t0
        save_json(self.folder / "metrics.json", json_safe(metrics))
        return metrics

    def _capture(self, model: torch.nn.Module, data: Dataset, epoch: int) -> Trajectory:
        config, seed = self.config, self.seed
        traj = capture(model, data, device=config.device, seed=seed)
        if config.max_samples is not None and traj.n_samples > config.max_samples:
            traj = traj.subsample(config.max_samples, seed=seed)
        meta = dict(traj.metadata)
        meta.update({"epoch": int(epoch), "seed": int(seed), "provenance": data.provenance})
        return traj.replace(metadata=json_safe(meta))

    def _train(self, name: str, plain: bool, data: Dataset) -> tuple[torch.nn.Module, TrainHistory]:
        """Train one twin, capturing its trajectory at the captured epochs (kept on resume)."""
        config, seed = self.config, self.seed
        torch.manual_seed(seed)
        model = _build(config, data, plain)

        def save_capture(epoch: int, net: torch.nn.Module, _h: Any) -> None:
            path = _traj_path(self.folder, name, "train", epoch)
            if not (self.resume and path.exists()):
                save_trajectory(path, self._capture(net, data, epoch))

        self.log(
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
            checkpoint_dir=self.folder / "checkpoints" / name,
            resume=self.resume,
            callbacks=[(save_capture, config.epochs_captured())],
            progress=self.progress,
        )
        save_json(self.folder / f"history_{name}.json", history.to_dict())
        self.log(
            f"[seed {seed}] {name}: train accuracy {history.final_accuracy:.4f}, "
            f"loss {history.loss[-1]:.4g}"
        )
        return model, history

    def _analyse_epochs(
        self, name: str, model: torch.nn.Module, data: Dataset, history: TrainHistory
    ) -> None:
        """The analyses of every captured epoch of one twin (the full geodesic test at the
        baseline and the end; OTS and LSS only in between, where the McCann fit would dominate
        the run time)."""
        config, seed = self.config, self.seed
        self.epoch_profiles[name] = {}
        self.epoch_rows[name] = []
        for e in config.epochs_captured():
            path = _traj_path(self.folder, name, "train", e)
            if not path.exists():  # only when a resumed run lost a capture: take it now
                if e != config.epochs:
                    self.log(f"[seed {seed}] capture of {name} at epoch {e} is missing; left out.")
                    continue
                save_trajectory(path, self._capture(model, data, e))
            traj = load_trajectory(path)
            self.log(f"[seed {seed}] analysing {name} at epoch {e}")
            full = e in (0, config.epochs)
            res = analyse(traj, seed=seed, geodesic=full, progress=self.progress and full)
            self.epoch_profiles[name][e] = res["collapse"]
            row = {"epoch": e, **headline({name: res})[name]}
            if not full:
                row.update(epoch_scores(traj))
            if 0 < e < len(history.accuracy) + 1:
                row["train_accuracy"] = history.accuracy[e - 1]
            self.epoch_rows[name].append(json_safe(row))
            if e == 0:
                self.final[f"{name}_init"] = res
            if e == config.epochs:
                res["history"] = history
                self.final[name] = res
                self.last_trajs[name] = traj

    def _analyse_test(self, name: str, model: torch.nn.Module, test: Dataset) -> None:
        """Capture and analyse the test split of one trained twin."""
        config = self.config
        traj_t = self._capture(model, test, config.epochs)
        save_trajectory(_traj_path(self.folder, name, "test", config.epochs), traj_t)
        res_t = analyse(traj_t, seed=self.seed, progress=self.progress)
        acc = _accuracy(model, test, config.device)
        self.final[name]["test_accuracy"] = acc
        res_t["test_accuracy"] = acc
        self.test_results[name] = res_t

    def _calibrate(self, sub: Trajectory) -> Any:
        """``calibrate_mufm`` on ``sub`` (NC1 discrepancy); unconverged fits are logged."""
        from otcollapse.surrogates import calibrate_mufm

        config, seed = self.config, self.seed
        self.log(
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
            self.log(f"[seed {seed}] warning: {w.message}")
        return cal


def _calibration_record(cal: Any) -> dict[str, Any]:
    d = cal.to_dict()
    d["format_grid"] = cal.format_grid()
    return d
