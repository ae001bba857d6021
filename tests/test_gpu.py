"""The device paths on a CUDA GPU: each result equals the CPU's on the same data.

Skipped where torch sees no CUDA GPU (CI); run on a GPU machine with ``pytest tests/test_gpu.py``.
Exact transport must agree to the certificate's tolerance (the value is re-evaluated in float64
from the differences on either device), entropic and statistical results to float rounding.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from test_transport_collapsed import collapsed, collapsed_w2sq

from otcollapse import (
    collapse_profile,
    fit_mufm,
    geodesic_test,
    transport_profile,
    wasserstein,
)
from otcollapse.constructions import transparent_model

#: the device under test; OTC_TEST_DEVICE=cpu runs the same comparisons on the CPU (a check of
#: the tests themselves)
DEVICE = os.environ.get("OTC_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(
    DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="needs a CUDA GPU"
)

RTOL = 1e-9


def clouds(kind: str, n: int, d: int, seed: int = 0):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, d))
    if kind == "residual":
        W = g.normal(size=(d, d)) / np.sqrt(d)
        return x, x + 0.3 * np.tanh(x @ W)
    return x, g.normal(size=(n, d)) + 0.2


@pytest.mark.parametrize(
    ("kind", "n", "opts"),
    [
        ("residual", 3000, {}),  # sparse certified path
        ("unrelated", 1500, {}),  # dense path
        ("unrelated", 1500, {"candidates": "auction"}),  # streamed auction
        ("unrelated", 3000, {"max_dense_bytes": 2**20}),  # auto -> streamed beyond the budget
    ],
)
def test_assignment_on_cuda_equals_cpu(kind, n, opts):
    x, y = clouds(kind, n, 64)
    cpu = wasserstein(x, y, method="assignment", **opts)
    gpu = wasserstein(
        torch.tensor(x).to(DEVICE), torch.tensor(y).to(DEVICE), method="assignment", **opts
    )
    assert gpu.converged and cpu.converged
    assert gpu.params["path"] == cpu.params["path"]
    assert gpu.cost == pytest.approx(cpu.cost, rel=RTOL, abs=0)


@pytest.mark.parametrize("norm", [1.0, 1e3])
def test_collapsed_features_exact_on_cuda(norm):
    x, y, labels = collapsed(10, 2000, 32, 1e-6 * norm, norm, seed=3)
    ref = collapsed_w2sq(x, y, labels)
    res = wasserstein(torch.tensor(x).to(DEVICE), torch.tensor(y).to(DEVICE))
    assert res.cost == pytest.approx(ref, rel=RTOL, abs=0)
    assert res.converged and res.gap <= RTOL * res.cost


def test_sinkhorn_on_cuda_equals_cpu():
    x, y = clouds("unrelated", 2000, 32)
    cpu = wasserstein(x, y, method="sinkhorn", eps=1.0)
    gpu = wasserstein(
        torch.tensor(x).to(DEVICE), torch.tensor(y).to(DEVICE), method="sinkhorn", eps=1.0
    )
    assert gpu.converged and cpu.converged
    assert gpu.cost == pytest.approx(cpu.cost, rel=1e-6)


def test_analyses_of_a_trajectory_on_cuda_equal_cpu():
    X, _, labels = collapsed(5, 600, 16, 1.0, 3.0, seed=1)
    traj = transparent_model(X, labels, 5, seed=0)
    on_gpu = traj.to(DEVICE)
    for f in (transport_profile, lambda t: geodesic_test(t, n_boot=3)):
        a, b = f(traj).to_dict(), f(on_gpu).to_dict()
        _assert_close(a, b)
    a = collapse_profile(traj).to_dict()
    b = collapse_profile(on_gpu).to_dict()
    _assert_close(a, b, rel=1e-8)


def test_mufm_on_cuda_equals_cpu():
    g = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    X = g.normal(size=(60, 6)) + 2 * np.eye(6)[y]
    kw = {"n_layers": 3, "lambda_ot": 1e-2, "lambda_w": 5e-3, "lambda_h": 5e-3}
    cpu = fit_mufm(X, y, **kw)
    gpu = fit_mufm(torch.tensor(X).to(DEVICE), y, **kw)
    assert gpu.objective == pytest.approx(cpu.objective, rel=1e-6)


def _assert_close(a, b, rel=1e-7):
    """Nested results equal to ``rel`` on floats, exactly elsewhere (seconds excluded)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            if "seconds" not in str(k):
                _assert_close(a[k], b[k], rel)
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            _assert_close(u, v, rel)
    elif isinstance(a, float) and isinstance(b, float):
        if np.isnan(a):
            assert np.isnan(b)
        else:
            assert b == pytest.approx(a, rel=rel, abs=1e-12)
    else:
        assert a == b
