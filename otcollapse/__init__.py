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
    "ClassStatistics": "otcollapse.collapse",
    "CollapseProfile": "otcollapse.collapse",
    "DecayFit": "otcollapse.collapse",
    "LayerCollapse": "otcollapse.collapse",
    "PFCStatistic": "otcollapse.collapse",
    "cdnv": "otcollapse.collapse",
    "cdnv_matrix": "otcollapse.collapse",
    "class_statistics": "otcollapse.collapse",
    "collapse_profile": "otcollapse.collapse",
    "layer_collapse": "otcollapse.collapse",
    "nc1": "otcollapse.collapse",
    "nc1_tilde": "otcollapse.collapse",
    "nc2": "otcollapse.collapse",
    "nc3": "otcollapse.collapse",
    "nc4": "otcollapse.collapse",
    "separation_fuzziness": "otcollapse.collapse",
    "w2sq_to_class_means": "otcollapse.collapse",
    "discrete_geodesic": "otcollapse.constructions",
    "etf_clusters": "otcollapse.constructions",
    "simplex_etf": "otcollapse.constructions",
    "transparent_model": "otcollapse.constructions",
    "Dataset": "otcollapse.data",
    "load_dataset": "otcollapse.data",
    "DynamicsRecorder": "otcollapse.experiments",
    "DynamicsTrace": "otcollapse.experiments",
    "SquareLossExperiment": "otcollapse.experiments",
    "normalised_margins": "otcollapse.nets",
    "run_square_loss_experiment": "otcollapse.experiments",
    "GeodesicReport": "otcollapse.geodesic",
    "LSSResult": "otcollapse.geodesic",
    "LayerComparison": "otcollapse.geodesic",
    "McCannFit": "otcollapse.geodesic",
    "SegmentReport": "otcollapse.geodesic",
    "TrajectoryComparison": "otcollapse.geodesic",
    "TransportPair": "otcollapse.geodesic",
    "TransportProfile": "otcollapse.geodesic",
    "compare_trajectories": "otcollapse.geodesic",
    "geodesic_test": "otcollapse.geodesic",
    "lss": "otcollapse.geodesic",
    "mccann_interpolate": "otcollapse.geodesic",
    "ots": "otcollapse.geodesic",
    "split_half_floor": "otcollapse.geodesic",
    "transport_profile": "otcollapse.geodesic",
    "load_json": "otcollapse.io",
    "load_trajectory": "otcollapse.io",
    "save_json": "otcollapse.io",
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
    "ULPMSeparation": "otcollapse.surrogates",
    "ULPMSolution": "otcollapse.surrogates",
    "calibrate_mufm": "otcollapse.surrogates",
    "fit_dufm": "otcollapse.surrogates",
    "fit_mufm": "otcollapse.surrogates",
    "fit_perturbed": "otcollapse.surrogates",
    "fit_ufm": "otcollapse.surrogates",
    "fit_ulpm": "otcollapse.surrogates",
    "ConvergenceWarning": "otcollapse.exceptions",
    "TransportResult": "otcollapse.transport",
    "bures_map": "otcollapse.transport",
    "gaussian_w2": "otcollapse.transport",
    "transport_methods": "otcollapse.transport",
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
    from otcollapse.collapse import (
        ClassStatistics,
        CollapseProfile,
        DecayFit,
        LayerCollapse,
        PFCStatistic,
        cdnv,
        cdnv_matrix,
        class_statistics,
        collapse_profile,
        layer_collapse,
        nc1,
        nc1_tilde,
        nc2,
        nc3,
        nc4,
        separation_fuzziness,
        w2sq_to_class_means,
    )
    from otcollapse.constructions import (
        discrete_geodesic,
        etf_clusters,
        simplex_etf,
        transparent_model,
    )
    from otcollapse.data import Dataset, load_dataset
    from otcollapse.experiments import (
        DynamicsRecorder,
        DynamicsTrace,
        SquareLossExperiment,
        run_square_loss_experiment,
    )
    from otcollapse.exceptions import ConvergenceWarning
    from otcollapse.geodesic import (
        GeodesicReport,
        LayerComparison,
        LSSResult,
        McCannFit,
        SegmentReport,
        TrajectoryComparison,
        TransportPair,
        TransportProfile,
        compare_trajectories,
        geodesic_test,
        lss,
        mccann_interpolate,
        ots,
        split_half_floor,
        transport_profile,
    )
    from otcollapse.io import load_json, load_trajectory, save_json, save_trajectory
    from otcollapse.measures import LayerMeasure, Trajectory
    from otcollapse.nets import TrainHistory, capture, train
    from otcollapse.surrogates import (
        DUFMSolution,
        MUFMCalibration,
        MUFMSolution,
        PerturbedSolution,
        UFMSolution,
        ULPMSeparation,
        ULPMSolution,
        calibrate_mufm,
        fit_dufm,
        fit_mufm,
        fit_perturbed,
        fit_ufm,
        fit_ulpm,
    )
    from otcollapse.transport import (
        TransportResult,
        bures_map,
        gaussian_w2,
        transport_methods,
        wasserstein,
    )
