"""The linear assignment family: the dense path, the sparse certified path, the projected bound
and the auction's warm start. :func:`solve_assignment` is its front door."""

from otcollapse.transport.assignment.dense import (
    ASSIGNMENT_COPIES,
    certify_permutation,
    permutation_plan,
    solve_assignment,
)
from otcollapse.transport.assignment.sparse import SparseAssignment, solve_sparse_assignment

__all__ = [
    "ASSIGNMENT_COPIES",
    "SparseAssignment",
    "certify_permutation",
    "permutation_plan",
    "solve_assignment",
    "solve_sparse_assignment",
]
