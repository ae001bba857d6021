"""What the parts of ``nets`` share: data as tensors, where a model runs, its weights and its head.

:func:`as_xy` is the one way ``(X, y)`` data become tensors in :mod:`otcollapse.nets` (training,
capture, margins) and in the experiments above it.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import numpy as np
import torch
from torch import nn

from otcollapse._utils import check_finite, check_not_complex
from otcollapse._validation import check_labels

__all__ = ["as_xy", "linear_head", "place", "weight_norms"]


@overload
def as_xy(
    data: Any,
    *,
    purpose: str,
    labels: Literal[True] = True,
    convert: bool = True,
    others: str = "",
) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def as_xy(
    data: Any, *, purpose: str, labels: bool, convert: bool = True, others: str = ""
) -> tuple[torch.Tensor, torch.Tensor | None]: ...


def as_xy(
    data: Any, *, purpose: str, labels: bool = True, convert: bool = True, others: str = ""
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(X, y)`` of a data set as tensors, with the shape, label and value checks.

    Parameters
    ----------
    data : Dataset, (X, y) pair, or (``labels=False``) an array / tensor of inputs
        Anything with attributes ``X`` and ``y`` (an :class:`otcollapse.data.Dataset`), or a pair
        of arrays / tensors.
    purpose : str
        What the caller does with the data, for the messages (``"train on"``, ``"capture"``).
    labels : bool
        Whether labels are required; with ``False`` a bare array or tensor of inputs is accepted
        and ``y`` is None.
    convert : bool
        Return ``X`` as float32 and refuse NaN/inf inputs; with ``False`` ``X`` keeps its dtype
        (integer inputs of an embedding stay integers) and is not scanned.
    others : str
        Other kinds of data the caller accepts itself, named in the message for a wrong type.

    Returns
    -------
    X : Tensor, shape (n, ...)
    y : Tensor of int64, shape (n,), or None
        Integer class indices (:func:`otcollapse._validation.check_labels`).

    Raises
    ------
    ValueError
        Data of another type, complex or empty inputs, a label count other than the sample count,
        labels that are not integers, NaN/inf inputs (``convert``).
    """
    X = y = None
    if hasattr(data, "X") and hasattr(data, "y"):
        X, y = data.X, data.y
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        X, y = data
    elif not labels and isinstance(data, (torch.Tensor, np.ndarray)):
        X = data
    else:
        kinds = ["an otcollapse Dataset", "an (X, y) pair of arrays/tensors"]
        kinds += [] if labels else ["an array or tensor of inputs"]
        kinds += [others] if others else []
        raise ValueError(
            f"cannot {purpose} data of type {type(data).__name__}; give "
            f"{', '.join(kinds[:-1])} or {kinds[-1]}."
        )
    check_not_complex(X, "the inputs X")
    X = X if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X))
    if X.ndim < 1 or X.shape[0] == 0:
        raise ValueError(f"the data set is empty; there is nothing to {purpose}.")
    n = int(X.shape[0])
    if y is not None:
        y_shape = tuple(y.shape) if hasattr(y, "shape") else (len(y),)
        if len(y_shape) == 1 and y_shape[0] != n:
            raise ValueError(f"{y_shape[0]} labels for {n} samples; give one per sample.")
        # integer class indices: 0.5 or NaN would otherwise be truncated to a class silently
        y = torch.as_tensor(check_labels(y, n))
    if convert:
        X = X.float()
        check_finite(X, "the inputs X")
    return X, y


def place(model: nn.Module, device: torch.device | None) -> torch.device:
    """The device ``model`` runs on: ``device`` (checked by the caller; the model is moved there
    in place), else the device of its first parameter (the CPU for a model without any)."""
    if device is not None:
        model.to(device)
        return device
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def weight_norms(model: nn.Module) -> dict[str, float]:
    """``{name: ||W||_F}`` of every parameter with at least two axes (weight matrices, kernels)."""
    return {
        n: float(p.detach().double().norm()) for n, p in model.named_parameters() if p.ndim >= 2
    }


def linear_head(model: nn.Module) -> nn.Linear | None:
    """The model's linear classifier: its ``head``, else its ``fc`` (torchvision), else None."""
    for name in ("head", "fc"):
        mod = getattr(model, name, None)
        if isinstance(mod, nn.Linear):
            return mod
    return None
