r"""Normalised margins of a classifier: the margin of the network with unit-norm weight matrices.

For a positively homogeneous network $f(W; x) = W_L\,\sigma(W_{L-1}\cdots\sigma(W_1 x))$ every
layer splits as $W_k = \rho_k V_k$ with $\lVert V_k\rVert_F = 1$, and

$$f(W; x) = \rho\, f(V; x), \qquad \rho = \prod_{k=1}^L \rho_k = \prod_{k=1}^L \lVert W_k\rVert_F ,$$

so the margin of $f(V;\cdot)$ is the network's margin divided by $\rho$ (Xu, Rangamani, Liao,
Galanti & Poggio). :func:`normalised_margins` measures it on a network of :mod:`otcollapse.nets` or
any classifier; the square-loss experiment (:mod:`otcollapse.experiments.square_loss`) records it
during training. :func:`forward_pass` is the one evaluation pass both use: logits, the penultimate
features and the weight matrices fed directly into a BatchNorm (scale-invariant).

References
----------
M. Xu, A. Rangamani, Q. Liao, T. Galanti, T. Poggio, "Dynamics in deep classifiers trained with
the square loss: normalization, low rank, neural collapse, and generalization bounds", Research 6,
0024 (2023).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from otcollapse._results import Result
from otcollapse._validation import check_int
from otcollapse.nets.common import as_xy, linear_head, weight_norms

__all__ = [
    "RHO_MODES",
    "MarginResult",
    "check_rho",
    "find_classifier",
    "forward_pass",
    "margin_result",
    "normalised_margins",
]

#: the two normalisers of the margins (see :func:`normalised_margins`)
RHO_MODES = ("effective", "all")


def check_rho(rho: str) -> str:
    """``rho`` if it is one of :data:`RHO_MODES`, else a ValueError listing them."""
    if rho not in RHO_MODES:
        raise ValueError(f"unknown rho {rho!r}; use one of {list(RHO_MODES)}.")
    return rho


def find_classifier(model: nn.Module, classifier: str | None) -> tuple[str, nn.Linear]:
    """The linear classifier whose input is the penultimate feature, by name or found.

    Found: the model's ``head`` or ``fc`` (:func:`~otcollapse.nets.common.linear_head`), else its
    last ``nn.Linear``; the qualified module name comes with it (``""`` is the model itself).
    """
    modules = dict(model.named_modules())
    if classifier is not None:
        if classifier not in modules:
            raise ValueError(
                f"no module named {classifier!r} in the model; linear modules are "
                f"{[n for n, m in modules.items() if isinstance(m, nn.Linear)]} ('' = the model)."
            )
        mod = modules[classifier]
        if not isinstance(mod, nn.Linear):
            raise ValueError(
                f"module {classifier!r} is a {type(mod).__name__}; the classifier must be an "
                "nn.Linear (its input is the penultimate feature, its weight the classifier W)."
            )
        return classifier, mod
    head = linear_head(model)
    if head is not None:
        return next(n for n, m in modules.items() if m is head), head
    linears = [(n, m) for n, m in modules.items() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            "the model has no nn.Linear classifier; name it with classifier='module name' or "
            "record without collapse metrics (metrics=())."
        )
    return linears[-1]


def forward_pass(
    model: nn.Module,
    X: torch.Tensor,
    *,
    head: nn.Linear | None,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """Logits, penultimate features (the classifier's input) and the scale-invariant weights.

    One pass in eval mode without gradients. During the first batch forward hooks find every
    weight matrix whose module output is fed directly into a ``BatchNorm`` (the same tensor
    object): those weights are scale-invariant, ``BN(cWx + b) = BN(Wx + b)`` for ``c > 0`` with
    batch statistics (the mean subtraction also removes the bias).
    """
    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, tuple[torch.Tensor, str]] = {}
    invariant: set[str] = set()
    feats: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    calls = {"head": 0}

    def out_hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if isinstance(output, torch.Tensor):
            produced[id(output)] = (output, names[module])

    def bn_hook(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        x = inputs[0] if inputs else None
        hit = produced.get(id(x))
        if hit is not None and hit[0] is x:
            invariant.add(f"{hit[1]}.weight" if hit[1] else "weight")

    def head_hook(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        calls["head"] += 1
        x = inputs[0]
        feats.append(x.detach().reshape(x.shape[0], -1).to("cpu", torch.float64).numpy())

    scan: list[Any] = []
    for mod in model.modules():
        w = getattr(mod, "weight", None)
        if isinstance(w, torch.Tensor) and w.ndim >= 2 and not list(mod.children()):
            scan.append(mod.register_forward_hook(out_hook))
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            scan.append(mod.register_forward_pre_hook(bn_hook))
    hooks = [] if head is None else [head.register_forward_pre_hook(head_hook)]
    p = next((q for q in model.parameters() if q.is_floating_point()), None)
    dev = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None else torch.float32
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for s in range(0, X.shape[0], batch_size):
                calls["head"] = 0
                out = model(X[s : s + batch_size].to(dev, dtype))
                out = out[0] if isinstance(out, (tuple, list)) else out
                if head is not None and calls["head"] != 1:
                    raise ValueError(
                        f"the classifier ran {calls['head']} times in one forward pass; name the "
                        "final linear classifier (run once) with classifier='module name'."
                    )
                logits.append(out.detach().reshape(out.shape[0], -1).to("cpu", torch.float64))
                if scan:
                    for h in scan:
                        h.remove()
                    scan = []
                    produced.clear()
    finally:
        for h in [*scan, *hooks]:
            h.remove()
        model.train(was)
    lg = torch.cat(logits).numpy()
    return lg, (np.concatenate(feats) if head is not None else None), tuple(sorted(invariant))


def _log_rho(norms: Mapping[str, float], leave_out: Iterable[str]) -> float:
    skip = set(leave_out)
    vals = [v for n, v in norms.items() if n not in skip]
    if any(v == 0.0 for v in vals):
        return -math.inf
    return float(sum(math.log(v) for v in vals))


def _margins(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    n, k = logits.shape
    if k < 2:
        raise ValueError(f"the model has {k} output(s); a classification margin needs K >= 2.")
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise ValueError(f"labels must lie in 0..{k - 1} (the model's outputs).")
    rows = np.arange(n)
    correct = logits[rows, y]
    other = logits.copy()
    other[rows, y] = -np.inf
    return correct - other.max(axis=1)


# ---------------------------------------------------------------------------------------------
# normalised margins
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class MarginResult(Result):
    r"""Multi-class margins of a network and their normalisation by $\rho$.

    ``to_dict()`` records the fields (the per-sample arrays included) and ``min``, ``mean``.

    Attributes
    ----------
    raw : ndarray, shape (n,)
        $f(x_i)_{y_i} - \max_{j \ne y_i} f(x_i)_j$ (float64, from the float32 logits).
    margins : ndarray, shape (n,)
        ``raw / rho`` (NaN when $\rho = 0$).
    rho, log_rho : float
        $\rho = \prod_{W\in\mathcal W}\lVert W\rVert_F$ and its logarithm (exact even when
        $\rho$ overflows).
    rho_all : float
        The product over *every* weight matrix (equal to ``rho`` for ``rho="all"`` and for
        networks without batch normalisation).
    rho_mode : str
        ``"effective"`` or ``"all"``.
    scale_invariant : tuple of str
        Weight matrices fed directly into a BatchNorm (left out of ``rho`` for ``"effective"``).
    weight_norms : dict str -> float
        $\lVert W\rVert_F$ of every parameter with at least two axes.
    """

    _derived: ClassVar[tuple[str, ...]] = ("min", "mean")

    raw: np.ndarray
    margins: np.ndarray
    rho: float
    log_rho: float
    rho_all: float
    rho_mode: str
    scale_invariant: tuple[str, ...]
    weight_norms: dict[str, float]

    @property
    def min(self) -> float:
        """The smallest normalised margin $\\min_i \\gamma_i$."""
        return float(np.min(self.margins))

    @property
    def mean(self) -> float:
        """The mean normalised margin."""
        return float(np.mean(self.margins))


def margin_result(
    logits: np.ndarray,
    y: np.ndarray,
    norms: dict[str, float],
    invariant: tuple[str, ...],
    rho: str,
) -> MarginResult:
    """The margins of ``logits`` (n, K) for labels ``y``, normalised by the ``rho`` of ``norms``
    (the weights in ``invariant`` left out for ``rho="effective"``)."""
    raw = _margins(logits, y)
    log_rho = _log_rho(norms, invariant if rho == "effective" else ())
    log_all = _log_rho(norms, ())
    if log_rho == -math.inf:
        margins = np.full_like(raw, np.nan)
    else:
        margins = raw * math.exp(-log_rho)
    return MarginResult(
        raw=raw,
        margins=margins,
        rho=math.inf if log_rho > 700 else math.exp(log_rho),
        log_rho=log_rho,
        rho_all=math.inf if log_all > 700 else math.exp(log_all),
        rho_mode=rho,
        scale_invariant=invariant,
        weight_norms=norms,
    )


def normalised_margins(
    model: nn.Module,
    data: Any,
    *,
    rho: str = "effective",
    batch_size: int = 1024,
) -> MarginResult:
    r"""Margins of ``model`` on ``data``, normalised by the product of its weight-matrix norms.

    $$\gamma_i = \frac{f(x_i)_{y_i} - \max_{j\ne y_i} f(x_i)_j}{\rho},\qquad
      \rho = \prod_{W\in\mathcal W} \lVert W\rVert_F ,$$

    with $f$ the network's output (logits) in eval mode. For a positively homogeneous ReLU
    network without biases or normalisation, $f(W;x) = \rho\,f(V;x)$ with
    $V_k = W_k/\lVert W_k\rVert_F$, so $\gamma_i$ is the margin of the normalised network
    $f(V;\cdot)$ — the quantity of Xu et al. (2023); it is unchanged when any layer is multiplied
    by $c > 0$ (this is tested). $\mathcal W$ (``rho``):

    * ``"all"`` — every parameter with at least two axes (every linear / convolution weight): the
      paper's $\rho = \prod_k\lVert W_k\rVert_F$;
    * ``"effective"`` (default) — the same, *leaving out the weights fed directly into a
      BatchNorm*. Those are scale-invariant, $\mathrm{BN}(cWx + b) = \mathrm{BN}(Wx + b)$ for
      $c > 0$: batch normalisation already normalises them (they are the paper's $V_k$), their
      norm does not reach the output, and with batch normalisation and no weight decay it grows
      without changing $f$. Leaving them out makes $\gamma$ a property of the function. Without
      batch normalisation both modes agree.

    Biases, the BatchNorm affine parameters and skip connections make the networks of
    :mod:`otcollapse.nets` not homogeneous, so for them $\gamma$ is this stated convention, exactly
    invariant only to rescalings that leave $f$ unchanged up to the factor; compare values between
    runs of one architecture. In eval mode a BatchNorm uses its running statistics, so the scale
    invariance of the left-out weights holds up to the lag of those statistics.

    Parameters
    ----------
    model : nn.Module
        Outputs logits of shape (n, K), K >= 2.
    data : Dataset or (X, y)
        Inputs and integer labels ``0..K-1``.
    rho : {"effective", "all"}
    batch_size : int
        Evaluation batch size (the result does not depend on it).

    Returns
    -------
    MarginResult

    Raises
    ------
    ValueError
        Unknown ``rho``, empty data, NaN inputs, labels outside the outputs, fewer than 2 outputs.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = net.weight.copy_(3.0 * torch.eye(2))
    >>> res = normalised_margins(net, (torch.tensor([[2.0, 1.0], [0.0, 1.0]]), [0, 1]))
    >>> res.raw.tolist(), round(res.rho, 6), res.margins.round(6).tolist()
    ([3.0, 3.0], 4.242641, [0.707107, 0.707107])

    References
    ----------
    M. Xu, A. Rangamani, Q. Liao, T. Galanti, T. Poggio, "Dynamics in deep classifiers trained with
    the square loss", Research 6, 0024 (2023).
    """
    check_rho(rho)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    X, y = as_xy(data, purpose="evaluate on")
    logits, _, invariant = forward_pass(model, X, head=None, batch_size=batch_size)
    return margin_result(logits, y.numpy(), weight_norms(model), invariant, rho)
