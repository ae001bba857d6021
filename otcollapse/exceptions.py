"""The warnings and errors otcollapse raises, in one place (as scikit-learn's ``exceptions``)."""

from __future__ import annotations

from typing import Any

__all__ = ["ConvergenceWarning", "DenseBudgetError", "SweepError"]


class ConvergenceWarning(UserWarning):
    """A solver stopped before meeting its tolerance; the result says ``converged=False``."""


class DenseBudgetError(ValueError):
    """A solver needs dense (n, m) matrices beyond ``max_dense_bytes``; ``fallback`` says why
    the assignment's sparse path needed them (None when it was not tried)."""

    fallback: str | None = None


class SweepError(RuntimeError):
    """Some cells of a sweep failed after their retries; the others are in its store.

    ``failed`` holds one ``(cell label, error)`` pair per failed cell; the sweep's ``sweep.json``
    records them too, and a rerun of the sweep retries them.
    """

    def __init__(self, message: str, failed: list[tuple[str, str]], folder: Any = None) -> None:
        super().__init__(message)
        self.failed = failed
        #: the sweep folder (a ``pathlib.Path``)
        self.folder = folder
