"""The shared input checks of otcollapse._utils: complex values, numbers, devices.

Every public entry point converts its arrays with ``to_numpy`` / ``to_tensor`` and its devices with
``check_device``; these tests pin the messages down once, and check that the entry points use them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from otcollapse import Trajectory
from otcollapse._utils import available_devices, check_device, to_numpy, to_tensor
from otcollapse._validation import check_int, check_real
from otcollapse.nets import ResidualMLP, capture, train
from otcollapse.surrogates import fit_ufm


# ----------------------------------------------------------------------------- complex values
@pytest.mark.parametrize("form", ["numpy", "torch", "list"])
def test_complex_values_are_refused_by_both_converters(form):
    z = np.array([[1.0 + 2.0j, 3.0], [0.5, -1.0j]])
    zin = {"numpy": z, "torch": torch.as_tensor(z), "list": z.tolist()}[form]
    for convert in (
        lambda v: to_numpy(v, dtype=np.float64, what="the test input"),
        lambda v: to_tensor(v, dtype=torch.float64, what="the test input"),
    ):
        with pytest.raises(ValueError, match=r"complex values in the test input.*x\.real"):
            convert(zin)


def test_real_values_pass_unchanged_and_numpy_arrays_are_not_copied():
    x = np.arange(6.0).reshape(3, 2)
    assert to_numpy(x) is x
    assert np.shares_memory(to_numpy(torch.as_tensor(x)), x)  # a CPU tensor's own memory
    np.testing.assert_array_equal(to_numpy([[1, 2], [3, 4]], dtype=np.float64), [[1, 2], [3, 4]])
    assert to_tensor(x).dtype == torch.float64


# ----------------------------------------------------------------------------- numbers
def test_check_int():
    assert check_int(np.int64(3), "k", minimum=0) == 3
    for bad in (True, 3.0, "3", None):
        with pytest.raises(TypeError, match="k must be an integer"):
            check_int(bad, "k")
    with pytest.raises(ValueError, match="k must be >= 0; got -1"):
        check_int(-1, "k", minimum=0)
    with pytest.raises(ValueError, match="k must be <= 5; got 6"):
        check_int(6, "k", maximum=5)


def test_check_real():
    assert check_real(np.float32(0.5), "x", minimum=0.0, maximum=1.0) == 0.5
    assert check_real(2, "x") == 2.0
    for bad in (True, "0.1", 1j, None):
        with pytest.raises(TypeError, match="x must be a real number"):
            check_real(bad, "x")
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="x must be a finite number"):
            check_real(bad, "x")
    with pytest.raises(ValueError, match=r"x must lie in \(0, 1\); got 1"):
        check_real(1.0, "x", minimum=0.0, maximum=1.0, open_min=True, open_max=True)
    with pytest.raises(ValueError, match="x must be > 0; got 0"):
        check_real(0.0, "x", minimum=0.0, open_min=True)
    with pytest.raises(ValueError, match="x must be >= 0; got -1"):
        check_real(-1.0, "x", minimum=0.0)


# ----------------------------------------------------------------------------- devices
@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_cpu_is_always_available():
    assert check_device("cpu") == torch.device("cpu")
    assert check_device(torch.device("cpu")) == torch.device("cpu")
    assert check_device("cpu:0") == torch.device("cpu:0")
    assert available_devices()[0] == "cpu"


@pytest.mark.parametrize("device", ["gpu", "GPU", "garbage", "", "cuda:-1", "cuda:0:1"])
def test_unknown_device_names_are_refused(device):
    with pytest.raises(ValueError, match=r"unknown device .*available: \['cpu'"):
        check_device(device)


@pytest.mark.parametrize("device", [None, 1.5, True, ["cpu"]])
def test_device_of_another_type_is_refused(device):
    with pytest.raises(TypeError, match="device must be a device name"):
        check_device(device)


@pytest.mark.parametrize("device", ["cuda", "cuda:0", 0, torch.device("cuda")])
def test_cuda_without_a_cuda_gpu_is_refused(no_cuda, device):
    with pytest.raises(ValueError, match=r"no CUDA GPU; available: \['cpu'\]"):
        check_device(device)


def test_gpu_index_beyond_the_count_is_refused(two_gpus):
    assert available_devices()[:3] == ["cpu", "cuda:0", "cuda:1"]
    assert check_device("cuda:1") == torch.device("cuda:1")  # nothing is allocated
    with pytest.raises(ValueError, match=r"'cuda:7' does not exist: torch sees 2 CUDA GPU\(s\)"):
        check_device("cuda:7")
    with pytest.raises(ValueError, match=r"available: \['cpu', 'cuda:0', 'cuda:1'"):
        check_device(7)


def test_device_types_otcollapse_does_not_run_on_are_refused(monkeypatch, no_cuda):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for device in ("mps", "meta", "xpu", "cpu:1"):
        with pytest.raises(ValueError, match=rf"device '{device}'.*available: \['cpu'\]"):
            check_device(device)


def test_every_entry_point_uses_the_one_parser(no_cuda):
    """Trajectory.to, fit_ufm, capture and train refuse "cuda" here with the same message."""
    x = np.zeros((6, 3))
    y = np.arange(6) % 2
    net = ResidualMLP(3, 4, 1, 2)
    data = (torch.zeros(6, 3), torch.as_tensor(y))
    calls = [
        lambda: Trajectory.from_arrays([x]).to("cuda"),
        lambda: fit_ufm(y, dim=2, lambda_w=1e-3, lambda_h=1e-3, device="cuda"),
        lambda: capture(net, data, device="cuda"),
        lambda: train(net, data, epochs=1, lr=0.1, weight_decay=0.0, device="cuda"),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"device 'cuda' asked for, but torch sees no CUDA"):
            call()
