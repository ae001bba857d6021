"""Unconstrained-feature surrogate models around one float64 solver core.

``fit_ufm`` (the single-layer UFM) and ``fit_mufm`` (the multilayer, transport-regularised UFM)
live in :mod:`otcollapse.surrogates.mufm`; :mod:`otcollapse.surrogates.core` holds the L-BFGS
(strong-Wolfe) solver and its :class:`SolverRecord`, shared by every surrogate model. :func:`calibrate_mufm`
(:mod:`otcollapse.surrogates.calibrate`) fits the MUFM's λ_OT to a trained network.
``fit_ulpm`` (:mod:`otcollapse.surrogates.ulpm`) is the unconstrained layer-peeled model and
``fit_dufm`` (:mod:`otcollapse.surrogates.dufm`) the deep ReLU unconstrained features model.
``fit_perturbed`` (:mod:`otcollapse.surrogates.perturbation`) is the perturbation model of Tirer,
Huang & Niles-Weed, solved as a one-step MSE MUFM, with its central-path flow and Jacobian.
"""

from otcollapse.surrogates.calibrate import MUFMCalibration, calibrate_mufm, default_lambda_grid
from otcollapse.surrogates.core import SolverRecord, minimize_lbfgs
from otcollapse.surrogates.dufm import DUFMSolution, dnc_value, fit_dufm
from otcollapse.surrogates.mufm import MUFMSolution, UFMSolution, fit_mufm, fit_ufm
from otcollapse.surrogates.perturbation import (
    CentralPathFlow,
    PerturbationJacobian,
    PerturbedSolution,
    central_path_flow,
    central_path_velocity,
    collapsed_minimizer,
    fit_perturbed,
    mufm_parameters,
    near_collapse_singular_values,
    perturbation_jacobian,
)
from otcollapse.surrogates.ulpm import (
    GDRecord,
    ULPMSeparation,
    ULPMSolution,
    fit_ulpm,
    solve_ulpm_separation,
)

__all__ = [
    "CentralPathFlow",
    "DUFMSolution",
    "GDRecord",
    "MUFMCalibration",
    "MUFMSolution",
    "PerturbationJacobian",
    "PerturbedSolution",
    "SolverRecord",
    "UFMSolution",
    "ULPMSeparation",
    "ULPMSolution",
    "calibrate_mufm",
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
