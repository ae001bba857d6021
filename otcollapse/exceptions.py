"""The warnings and errors otcollapse raises, in one place (as scikit-learn's ``exceptions``)."""

from __future__ import annotations

__all__ = ["ConvergenceWarning", "DenseBudgetError"]


class ConvergenceWarning(UserWarning):
    """A solver stopped before meeting its tolerance; the result says ``converged=False``."""


class DenseBudgetError(ValueError):
    """A solver needs dense (n, m) matrices beyond ``max_dense_bytes``; ``fallback`` says why
    the assignment's sparse path needed them (None when it was not tried)."""

    fallback: str | None = None
