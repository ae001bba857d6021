"""Experiments: the jobs of the command line and the square-loss experiment.

The top room below ``cli``: it uses every analysis, ``nets``, ``data``, ``io`` and ``report``.

- :mod:`~otcollapse.experiments.config` — :class:`RunConfig`, the settings of ``otcollapse run``,
  and the data set they name;
- :mod:`~otcollapse.experiments.stages` — the main job as content-addressed stages (train →
  capture → analyse → calibrate → seed), one Dask graph per seed of a cell;
- :mod:`~otcollapse.experiments.run` — :func:`run_experiment`: the one-cell case, in the calling
  thread: train a ResNet and its plain twin, capture, analyse every captured epoch, calibrate the
  MUFM, aggregate over seeds, report;
- :mod:`~otcollapse.experiments.sweep` — :func:`sweep` over a grid of settings on Dask
  (``otcollapse sweep``), :func:`load_grid`;
- :mod:`~otcollapse.experiments.store` — the results store (xarray / Zarr), :func:`load_sweep`;
- :mod:`~otcollapse.experiments.analysis` — the analysis stage the jobs share (headline numbers,
  verdicts, aggregation over seeds, figures);
- :mod:`~otcollapse.experiments.analyze` — :func:`analyze_trajectories` (``otcollapse analyze``)
  and :func:`fit_mufm_report` (``otcollapse mufm``);
- :mod:`~otcollapse.experiments.reproductions` — :func:`reproduce` (``otcollapse reproduce``);
- :mod:`~otcollapse.experiments.dynamics` — :class:`DynamicsRecorder`, a training callback
  recording normalised margins, collapse and weight norms;
- :mod:`~otcollapse.experiments.square_loss` — :func:`run_square_loss_experiment`, batch
  normalisation x weight decay under the square loss.
"""

from otcollapse.experiments.analysis import aggregate_seeds, headline, package_versions
from otcollapse.experiments.analyze import (
    MUFMReportSettings,
    analyze_trajectories,
    fit_mufm_report,
)
from otcollapse.experiments.config import MODELS, RunConfig
from otcollapse.experiments.dynamics import (
    DEFAULT_DYNAMICS_METRICS,
    DynamicsRecord,
    DynamicsRecorder,
    DynamicsTrace,
)
from otcollapse.experiments.reproductions import REPRODUCTIONS, reproduce
from otcollapse.experiments.run import run_experiment
from otcollapse.experiments.square_loss import (
    Prediction,
    SquareLossExperiment,
    SquareLossRun,
    run_square_loss_experiment,
)
from otcollapse.experiments.store import load_sweep
from otcollapse.experiments.sweep import Grid, load_grid, sweep

__all__ = [
    "DEFAULT_DYNAMICS_METRICS",
    "MODELS",
    "REPRODUCTIONS",
    "DynamicsRecord",
    "DynamicsRecorder",
    "DynamicsTrace",
    "Grid",
    "MUFMReportSettings",
    "Prediction",
    "RunConfig",
    "SquareLossExperiment",
    "SquareLossRun",
    "aggregate_seeds",
    "analyze_trajectories",
    "fit_mufm_report",
    "headline",
    "load_grid",
    "load_sweep",
    "package_versions",
    "reproduce",
    "run_experiment",
    "run_square_loss_experiment",
    "sweep",
]
