"""otcollapse: the optimal-transport geometry of deep networks.

The names here are the entry points a user reaches for and their result types; everything else
lives in the subpackages (``otcollapse.transport``, ``geodesic``, ``collapse``, ``surrogates``,
``nets``, ``experiments``). Imports are deferred to first use, so ``import otcollapse`` loads
neither torch nor POT until a name needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it (imported on first access)
_EXPORTS: dict[str, str] = {
    "CollapseProfile": "otcollapse.collapse",
    "LayerCollapse": "otcollapse.collapse",
    "collapse_profile": "otcollapse.collapse",
    "layer_collapse": "otcollapse.collapse",
    "Dataset": "otcollapse.data",
    "load_sweep": "otcollapse.experiments",
    "sweep": "otcollapse.experiments",
    "load_dataset": "otcollapse.data",
    "GeodesicReport": "otcollapse.geodesic",
    "TrajectoryComparison": "otcollapse.geodesic",
    "TransportProfile": "otcollapse.geodesic",
    "compare_trajectories": "otcollapse.geodesic",
    "geodesic_test": "otcollapse.geodesic",
    "lss": "otcollapse.geodesic",
    "ots": "otcollapse.geodesic",
    "transport_profile": "otcollapse.geodesic",
    "load_trajectory": "otcollapse.io",
    "save_trajectory": "otcollapse.io",
    "LayerMeasure": "otcollapse.measures",
    "Trajectory": "otcollapse.measures",
    "TrainHistory": "otcollapse.nets",
    "capture": "otcollapse.nets",
    "train": "otcollapse.nets",
    "DUFMSolution": "otcollapse.surrogates",
    "MUFMCalibration": "otcollapse.surrogates",
    "MUFMSolution": "otcollapse.surrogates",
    "PerturbedSolution": "otcollapse.surrogates",
    "UFMSolution": "otcollapse.surrogates",
    "ULPMSolution": "otcollapse.surrogates",
    "calibrate_mufm": "otcollapse.surrogates",
    "fit_dufm": "otcollapse.surrogates",
    "fit_mufm": "otcollapse.surrogates",
    "fit_perturbed": "otcollapse.surrogates",
    "fit_ufm": "otcollapse.surrogates",
    "fit_ulpm": "otcollapse.surrogates",
    "ConvergenceWarning": "otcollapse.exceptions",
    "DenseBudgetError": "otcollapse.exceptions",
    "TransportResult": "otcollapse.transport",
    "TransportSpec": "otcollapse.transport",
    "wasserstein": "otcollapse.transport",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'otcollapse' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # static analysers and IDEs see the real imports
    from otcollapse.collapse import CollapseProfile, LayerCollapse, collapse_profile, layer_collapse
    from otcollapse.data import Dataset, load_dataset
    from otcollapse.exceptions import ConvergenceWarning, DenseBudgetError
    from otcollapse.experiments import load_sweep, sweep
    from otcollapse.geodesic import (
        GeodesicReport,
        TrajectoryComparison,
        TransportProfile,
        compare_trajectories,
        geodesic_test,
        lss,
        ots,
        transport_profile,
    )
    from otcollapse.io import load_trajectory, save_trajectory
    from otcollapse.measures import LayerMeasure, Trajectory
    from otcollapse.nets import TrainHistory, capture, train
    from otcollapse.surrogates import (
        DUFMSolution,
        MUFMCalibration,
        MUFMSolution,
        PerturbedSolution,
        UFMSolution,
        ULPMSolution,
        calibrate_mufm,
        fit_dufm,
        fit_mufm,
        fit_perturbed,
        fit_ufm,
        fit_ulpm,
    )
    from otcollapse.transport import TransportResult, TransportSpec, wasserstein
