"""Unconstrained-feature surrogate models around one float64 solver core.

``fit_ufm`` (the single-layer UFM) and ``fit_mufm`` (the multilayer, transport-regularised UFM)
live in :mod:`otcollapse.surrogates.mufm`; :mod:`otcollapse.surrogates.core` holds the L-BFGS
(strong-Wolfe) solver and its :class:`SolverRecord`, shared by every surrogate model. :func:`calibrate_mufm`
(:mod:`otcollapse.surrogates.calibrate`) fits the MUFM's λ_OT to a trained network.
"""

from otcollapse.surrogates.calibrate import MUFMCalibration, calibrate_mufm, default_lambda_grid
from otcollapse.surrogates.core import SolverRecord, minimize_lbfgs
from otcollapse.surrogates.mufm import MUFMSolution, UFMSolution, fit_mufm, fit_ufm

__all__ = [
    "MUFMCalibration",
    "MUFMSolution",
    "SolverRecord",
    "UFMSolution",
    "calibrate_mufm",
    "default_lambda_grid",
    "fit_mufm",
    "fit_ufm",
    "minimize_lbfgs",
]
