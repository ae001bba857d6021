"""Unconstrained-feature surrogate models around one float64 solver core.

- :mod:`~otcollapse.surrogates.core`: the L-BFGS (strong-Wolfe) solver :func:`minimize_lbfgs`, its
  :class:`SolverRecord`, the base solution type :class:`SolverSolution` (iterations, convergence
  and gradient norm read from the record) and the input checks every model shares.
- :mod:`~otcollapse.surrogates.ufm`: ``fit_ufm``, the single-layer UFM, whose terms are the last
  layer of every model below.
- :mod:`~otcollapse.surrogates.mufm`: ``fit_mufm``, the multilayer, transport-regularised UFM;
  :mod:`~otcollapse.surrogates.calibrate`: :func:`calibrate_mufm` fits its λ_OT to a network,
  :func:`calibrate_mufm_profile` its λ_OT and λ_H to a network's per-layer profile.
- :mod:`~otcollapse.surrogates.ulpm`: ``fit_ulpm``, the unconstrained layer-peeled model, and
  :mod:`~otcollapse.surrogates.ulpm_separation`, the minimum-norm separation problem it tends to.
- :mod:`~otcollapse.surrogates.dufm`: ``fit_dufm``, the deep ReLU unconstrained features model.
- :mod:`~otcollapse.surrogates.perturbation`: ``fit_perturbed``, the perturbation model of Tirer,
  Huang & Niles-Weed (a one-step MSE MUFM) and its Jacobian; its central-path flow is in
  :mod:`~otcollapse.surrogates.central_path`.

Every result inherits :class:`otcollapse._results.Result` (``to_dict``, ``table``,
``format_table``).
"""

from otcollapse.surrogates.calibrate import (
    MUFMCalibration,
    MUFMProfileCalibration,
    calibrate_mufm,
    calibrate_mufm_profile,
    default_lambda_grid,
)
from otcollapse.surrogates.central_path import (
    CentralPathFlow,
    central_path_flow,
    central_path_velocity,
)
from otcollapse.surrogates.core import SolverRecord, SolverSolution, minimize_lbfgs
from otcollapse.surrogates.dufm import DUFMSolution, dnc_value, fit_dufm
from otcollapse.surrogates.mufm import MUFMSolution, fit_mufm
from otcollapse.surrogates.perturbation import (
    PerturbationJacobian,
    PerturbedSolution,
    collapsed_minimizer,
    fit_perturbed,
    mufm_parameters,
    near_collapse_singular_values,
    perturbation_jacobian,
)
from otcollapse.surrogates.ufm import UFMSolution, fit_ufm
from otcollapse.surrogates.ulpm import GDRecord, ULPMSolution, fit_ulpm
from otcollapse.surrogates.ulpm_separation import ULPMSeparation, solve_ulpm_separation

__all__ = [
    "CentralPathFlow",
    "DUFMSolution",
    "GDRecord",
    "MUFMCalibration",
    "MUFMProfileCalibration",
    "MUFMSolution",
    "PerturbationJacobian",
    "PerturbedSolution",
    "SolverRecord",
    "SolverSolution",
    "UFMSolution",
    "ULPMSeparation",
    "ULPMSolution",
    "calibrate_mufm",
    "calibrate_mufm_profile",
    "central_path_flow",
    "central_path_velocity",
    "collapsed_minimizer",
    "default_lambda_grid",
    "dnc_value",
    "fit_dufm",
    "fit_mufm",
    "fit_perturbed",
    "fit_ufm",
    "fit_ulpm",
    "minimize_lbfgs",
    "mufm_parameters",
    "near_collapse_singular_values",
    "perturbation_jacobian",
    "solve_ulpm_separation",
]
