"""The transport specification: typed options checked once, one memory model, auto at every n."""

import warnings

import numpy as np
import pytest

from otcollapse.exceptions import ConvergenceWarning
from otcollapse.transport import (
    AssignmentOptions,
    SinkhornOptions,
    TransportSpec,
    wasserstein,
)
from otcollapse.transport.spec import METHODS


def _clouds(n, d=3, seed=0):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, d))
    return x, x + 0.1 * np.tanh(x @ g.normal(size=(d, d)))


@pytest.mark.parametrize("n", [50, 200, 2000])
def test_auto_takes_the_same_options_at_every_size(n):
    """``auto`` accepts Sinkhorn's eps at every n (it was refused at n = 200 and taken at large
    n): the solver that runs takes its own options and the result lists the others."""
    x, y = _clouds(n)
    res = wasserstein(x, y, eps=0.5)
    assert res.method == "assignment"  # uniform, equal sizes: exact at every n
    assert res.params["unused_options"] == ["eps"]
    ref = wasserstein(x, y, method="assignment")
    assert res.cost == ref.cost
    # unequal sizes: the network simplex, which also ignores eps, and says so
    res = wasserstein(x[: n // 2], y, eps=0.5)
    assert res.method == "exact" and res.params["unused_options"] == ["eps"]


def test_auto_routes_options_to_the_solver_that_runs():
    x, y = _clouds(300)
    budget = 8 * 300 * 300  # the assignment's dense fallback does not fit: sparse path only
    res = wasserstein(x, y, candidates=0, max_dense_bytes=budget)
    assert res.params["path"] == "sparse" and res.params["candidates"] == 0
    assert "unused_options" not in res.params
    # beyond the exact budget with unequal sizes: chunked Sinkhorn takes eps and tol
    res = wasserstein(x[:200], y, eps=0.5, tol=1e-6, max_dense_bytes=8 * 200 * 300)
    assert res.method == "sinkhorn" and res.params["eps"] == 0.5 and res.params["tol"] == 1e-6


@pytest.mark.parametrize(
    ("method", "options", "error", "match"),
    [
        ("auto", {"foo": 1}, ValueError, r"method='auto' .* takes no option\(s\) \['foo'\]"),
        ("exact", {"eps": 0.5}, ValueError, "'eps' is an option of method='sinkhorn'"),
        (
            "sliced",
            {"candidates": 3},
            ValueError,
            "'candidates' is an option of method='assignment'",
        ),
        ("gaussian", {"seed": 1}, ValueError, r"its options: none"),
        ("sinkhorn", {"max_iter": 2.5}, TypeError, "max_iter must be an integer"),
        ("sinkhorn", {"debias": "yes"}, TypeError, "debias must be True or False"),
        ("assignment", {"return_plan": 1}, TypeError, "return_plan must be True or False"),
        ("sinkhorn", {"eps": 0.0}, ValueError, "eps must be > 0"),
        ("sinkhorn", {"dtype": "float16"}, ValueError, "dtype must be one of"),
        ("exact", {"num_iter_max": 10}, ValueError, "'num_iter_max' is now 'max_iter'"),
        ("nope", {}, ValueError, "unknown method 'nope'"),
    ],
)
def test_options_are_typed_and_checked_once(method, options, error, match):
    with pytest.raises(error, match=match):
        TransportSpec.create(method, **options)
    x, y = _clouds(20)
    with pytest.raises(error, match=match):  # the same message from the front door
        wasserstein(x, y, method=method, **options)


def test_spec_is_checked_before_any_data_is_read():
    """A bad option is refused even when the data would be refused too: the spec comes first."""
    with pytest.raises(ValueError, match="'eps' is an option of method='sinkhorn'"):
        wasserstein(np.full((3, 2), np.nan), np.zeros((3, 2)), method="exact", eps=1.0)


def test_spec_coerce_and_with_options():
    spec = TransportSpec.coerce("sinkhorn", eps=0.25)
    assert isinstance(spec.options, SinkhornOptions) and spec.options.eps == 0.25
    assert TransportSpec.coerce(spec) is spec
    with pytest.raises(ValueError, match="put them in the spec"):
        TransportSpec.coerce(spec, eps=1.0)
    with pytest.raises(TypeError, match="method name or a TransportSpec"):
        TransportSpec.coerce(3)
    plan = spec.with_options(return_plan=True)
    assert plan.options.return_plan and plan.options.eps == 0.25 and not spec.options.return_plan
    with pytest.raises(TypeError, match="takes AssignmentOptions"):
        TransportSpec("assignment", SinkhornOptions())
    assert TransportSpec("assignment", AssignmentOptions(max_iter=3)).options.max_iter == 3


def test_one_memory_model():
    """The analyses and auto read the dense copies from the registry."""
    spec = TransportSpec.create("exact")
    assert spec.dense_bytes(100, 200) == int(METHODS["exact"].dense_copies * 100 * 200 * 8)
    assert TransportSpec.create("auto").dense_bytes(10, 10) == spec.dense_bytes(10, 10)
    assert METHODS["exact"].dense_copies > METHODS["assignment"].dense_copies > 0


def test_spec_solve_skips_the_data_checks_and_matches_the_front_door():
    x, y = _clouds(100)
    spec = TransportSpec.create("exact")
    w = np.full(100, 0.01)
    ref = wasserstein(x, y, a=w, b=w, method="exact").cost
    assert spec.solve(x, y, w, w).cost == pytest.approx(ref, rel=1e-14)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        spec.solve(x, y)


def test_debiased_sinkhorn_runs_its_three_problems_in_one_loop():
    """S_eps of a measure with itself is zero (OT(a, a) - OT(a, a)/2 - OT(a, a)/2), and the
    three problems' marginal errors all meet tol."""
    x, _ = _clouds(60)
    res = wasserstein(x, x, method="sinkhorn", eps=0.5, debias=True, tol=1e-10, max_iter=5000)
    assert res.converged and abs(res.cost) < 1e-9
    assert res.params["marginal_error_xx"] <= 1e-10 and res.params["marginal_error_yy"] <= 1e-10
    assert res.params["ot_eps_xx"] == pytest.approx(res.params["ot_eps"], rel=1e-9)
