import numpy as np
import pytest
import torch


@pytest.fixture(params=["numpy", "torch"])
def as_input(request):
    """Run a test on NumPy arrays and on torch tensors alike."""
    if request.param == "numpy":
        return lambda x: np.asarray(x)
    return lambda x: torch.as_tensor(np.asarray(x))
