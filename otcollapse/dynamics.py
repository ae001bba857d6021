r"""Training dynamics under the square loss: normalised margins, collapse and weight norms by epoch.

Xu, Rangamani, Liao, Galanti & Poggio study gradient flow on the square loss for deep ReLU
classifiers written in normalised form. For a positively homogeneous network
$f(W; x) = W_L\,\sigma(W_{L-1}\cdots\sigma(W_1 x))$ every layer splits as $W_k = \rho_k V_k$ with
$\lVert V_k\rVert_F = 1$, and

$$f(W; x) = \rho\, f(V; x), \qquad \rho = \prod_{k=1}^L \rho_k = \prod_{k=1}^L \lVert W_k\rVert_F .$$

Normalisation (batch or weight normalisation) keeps the $V_k$ on the unit sphere; weight decay
penalises the $\rho_k$. Their results: with normalisation *and* weight decay the flow reaches
quasi-interpolating solutions of small $\rho$ — large normalised margin, since
$\rho f(V; x_n) \approx y_n$ makes the margin of $f(V;\cdot)$ about $1/\rho$ — that show neural
collapse, and margin-based generalisation bounds follow from $\rho$; with batch normalisation and no
weight decay the dynamical system is singular (every interpolating $V$ is an equilibrium, so nothing
selects a large margin and the solution depends on the initial conditions).

This module turns that into measurements on a network trained by :func:`otcollapse.nets.train`:

* :class:`DynamicsRecorder` — a ``train`` callback that records, at the epochs it is called, the
  normalised margins (:func:`normalised_margins`), the collapse metrics of the penultimate features
  (through :func:`otcollapse.collapse.layer_collapse`), the Frobenius norm of every weight matrix
  and the angle each weight matrix turned through since the previous record;
* :func:`run_square_loss_experiment` — the four settings batch normalisation x weight decay,
  trained with the square loss on one data set from the same initialisation, with
  :meth:`SquareLossExperiment.predictions` checking the paper's predicted differences.

It sits on the top layer of the package (it imports :mod:`otcollapse.nets`, :mod:`otcollapse.data`
and :mod:`otcollapse.collapse`), so that ``nets`` stays below the analysis modules.

References
----------
M. Xu, A. Rangamani, Q. Liao, T. Galanti, T. Poggio, "Dynamics in deep classifiers trained with
the square loss: normalization, low rank, neural collapse, and generalization bounds", Research 6,
0024 (2023).
T. Poggio, Q. Liao, "Explicit regularization and implicit bias in deep network classifiers trained
with the square loss", arXiv:2101.00072 (2020) (the singular dynamics with BN and no weight decay).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from otcollapse._utils import json_safe
from otcollapse._validation import check_labels
from otcollapse.collapse import METRICS, layer_collapse
from otcollapse.data import Dataset, load_dataset
from otcollapse.measures import Trajectory
from otcollapse.nets import ResidualMLP, TrainHistory, capture, train
from otcollapse.nets.train import _xy

__all__ = [
    "DEFAULT_DYNAMICS_METRICS",
    "DynamicsRecord",
    "DynamicsRecorder",
    "DynamicsTrace",
    "MarginResult",
    "Prediction",
    "SquareLossExperiment",
    "SquareLossRun",
    "normalised_margins",
    "run_square_loss_experiment",
]

#: collapse metrics recorded by default (names from ``otcollapse.collapse.METRICS``)
DEFAULT_DYNAMICS_METRICS: tuple[str, ...] = (
    "nc1",
    "nc1_tilde",
    "nc2_etf_distance",
    "nc2_equinorm",
    "nc3",
)

_RHO_MODES = ("effective", "all")


# ---------------------------------------------------------------------------------------------
# input checks and the one forward pass
# ---------------------------------------------------------------------------------------------
def _as_xy(data: Any) -> tuple[torch.Tensor, np.ndarray]:
    Xt, y = _xy(data, purpose="evaluate on")
    if not bool(torch.isfinite(Xt).all()):
        raise ValueError(f"the inputs contain {int((~torch.isfinite(Xt)).sum())} NaN/inf values.")
    return Xt, check_labels(y.numpy(), int(Xt.shape[0]))


def _check_rho(rho: str) -> str:
    if rho not in _RHO_MODES:
        raise ValueError(f"unknown rho {rho!r}; use one of {list(_RHO_MODES)}.")
    return rho


def _find_classifier(model: nn.Module, classifier: str | None) -> tuple[str, nn.Linear]:
    """The linear classifier whose input is the penultimate feature, by name or found."""
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
    for name in ("head", "fc"):
        mod = getattr(model, name, None)
        if isinstance(mod, nn.Linear):
            return name, mod
    linears = [(n, m) for n, m in modules.items() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            "the model has no nn.Linear classifier; name it with classifier='module name' or "
            "record without collapse metrics (metrics=())."
        )
    return linears[-1]


def _forward(
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


def _weight_norms(model: nn.Module) -> dict[str, float]:
    """``{name: ||W||_F}`` of every parameter with >= 2 axes (as ``TrainHistory.weight_norms``)."""
    return {
        n: float(p.detach().double().norm()) for n, p in model.named_parameters() if p.ndim >= 2
    }


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
class MarginResult:
    r"""Multi-class margins of a network and their normalisation by $\rho$.

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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe record (the per-sample arrays included)."""
        return json_safe(dataclasses.asdict(self) | {"min": self.min, "mean": self.mean})


def _margin_result(
    logits: np.ndarray,
    y: np.ndarray,
    norms: dict[str, float],
    invariant: tuple[str, ...],
    rho: str,
) -> MarginResult:
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
    _check_rho(rho)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
    X, y = _as_xy(data)
    logits, _, invariant = _forward(model, X, head=None, batch_size=batch_size)
    return _margin_result(logits, y, _weight_norms(model), invariant, rho)


# ---------------------------------------------------------------------------------------------
# the recorder
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DynamicsRecord:
    r"""What :class:`DynamicsRecorder` measured after one epoch (0 = before training).

    Attributes
    ----------
    epoch : int
    margin_min, margin_mean : float
        $\min_i\gamma_i$ and the mean of the normalised margins (:func:`normalised_margins`).
    raw_margin_min, raw_margin_mean : float
        The same for the unnormalised margins $f(x_i)_{y_i} - \max_{j\ne y_i} f(x_i)_j$.
    rho, log_rho, rho_all : float
        The normaliser of the margins (see :func:`normalised_margins`) and the product over every
        weight matrix.
    accuracy : float
        Fraction of samples with a positive margin (ties count as errors).
    weight_norms : dict str -> float
        $\lVert W\rVert_F$ of every parameter with at least two axes.
    angular_updates : dict str -> float
        The angle (radians) between each weight matrix now and at the previous record,
        $\arccos\frac{\langle W_t, W_s\rangle}{\lVert W_t\rVert\lVert W_s\rVert}$; it ignores
        rescaling, so for a scale-invariant weight it is how far the function-relevant direction
        moved. Empty at the first record.
    collapse : dict str -> float
        Collapse metrics of the penultimate features with the classifier (NaN when undefined,
        explained in ``notes``).
    notes : dict str -> str
    """

    epoch: int
    margin_min: float
    margin_mean: float
    raw_margin_min: float
    raw_margin_mean: float
    rho: float
    log_rho: float
    rho_all: float
    accuracy: float
    weight_norms: dict[str, float]
    angular_updates: dict[str, float]
    collapse: dict[str, float]
    notes: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe record (NaN becomes None)."""
        return json_safe(dataclasses.asdict(self))


_SCALARS = (
    "margin_min",
    "margin_mean",
    "raw_margin_min",
    "raw_margin_mean",
    "rho",
    "log_rho",
    "rho_all",
    "accuracy",
)


@dataclasses.dataclass(frozen=True)
class DynamicsTrace:
    """The records of a :class:`DynamicsRecorder`, in the order they were taken.

    Attributes
    ----------
    records : tuple of DynamicsRecord
    rho_mode : str
        ``"effective"`` or ``"all"`` (see :func:`normalised_margins`).
    scale_invariant : tuple of str
        Weight matrices fed directly into a BatchNorm.
    classifier : str or None
        Module name of the classifier whose input is the penultimate feature (None: no collapse
        metrics were recorded).
    metrics : tuple of str
        The collapse metrics recorded.
    """

    records: tuple[DynamicsRecord, ...]
    rho_mode: str
    scale_invariant: tuple[str, ...]
    classifier: str | None
    metrics: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def epochs(self) -> np.ndarray:
        """The recorded epochs, int array."""
        return np.array([r.epoch for r in self.records], dtype=np.int64)

    def series(self, name: str) -> np.ndarray:
        """One recorded quantity over the records, float64 array (NaN where absent).

        ``name`` is a scalar field (``"margin_min"``, ``"rho"``, ``"accuracy"``, ...), a collapse
        metric (``"nc1"``, ...), ``"weight_norm:<parameter>"``, ``"angular_update:<parameter>"``,
        or ``"scale_invariant_norm"`` / ``"total_norm"``: $\\sqrt{\\sum \\lVert W\\rVert_F^2}$
        over the scale-invariant weights / over all weights.
        """
        if name in _SCALARS:
            return np.array([getattr(r, name) for r in self.records], dtype=np.float64)
        if name in self.metrics:
            return np.array([r.collapse.get(name, np.nan) for r in self.records], dtype=np.float64)
        if name in ("scale_invariant_norm", "total_norm"):
            keep = set(self.scale_invariant) if name == "scale_invariant_norm" else None
            vals = []
            for r in self.records:
                sq = [v * v for k, v in r.weight_norms.items() if keep is None or k in keep]
                vals.append(math.sqrt(sum(sq)) if sq else np.nan)
            return np.array(vals, dtype=np.float64)
        for prefix, field in (
            ("weight_norm:", "weight_norms"),
            ("angular_update:", "angular_updates"),
        ):
            if name.startswith(prefix):
                key = name[len(prefix) :]
                if self.records and key not in self.records[-1].weight_norms:
                    raise ValueError(
                        f"no weight named {key!r}; recorded weights: "
                        f"{sorted(self.records[-1].weight_norms)}."
                    )
                return np.array(
                    [getattr(r, field).get(key, np.nan) for r in self.records], dtype=np.float64
                )
        raise ValueError(
            f"unknown series {name!r}; use one of {list(_SCALARS)}, the metrics "
            f"{list(self.metrics)}, 'scale_invariant_norm', 'total_norm', 'weight_norm:<name>' "
            "or 'angular_update:<name>'."
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe record."""
        return json_safe(
            {
                "rho_mode": self.rho_mode,
                "scale_invariant": list(self.scale_invariant),
                "classifier": self.classifier,
                "metrics": list(self.metrics),
                "records": [r.to_dict() for r in self.records],
            }
        )


class DynamicsRecorder:
    r"""A :func:`otcollapse.nets.train` callback recording margins, collapse and weight norms.

    Called as ``recorder(epoch, model, history)`` — by ``train`` after the epochs it was given,
    or by hand — it evaluates ``model`` on ``data`` in eval mode (one forward pass, no gradients)
    and appends a :class:`DynamicsRecord`:

    * normalised margins $\gamma_i = (f(x_i)_{y_i} - \max_{j\ne y_i} f(x_i)_j)/\rho$, their
      minimum and mean, with $\rho = \prod_{W\in\mathcal W}\lVert W\rVert_F$ as in
      :func:`normalised_margins` (``rho="effective"`` leaves out the weights fed into a BatchNorm,
      ``rho="all"`` keeps every weight matrix — the paper's $\rho$);
    * collapse metrics of the penultimate features $h_i$ (the classifier's input) with the
      classifier $(W, b)$, from :func:`otcollapse.collapse.layer_collapse` (NC1
      $= \frac1K\operatorname{Tr}(\Sigma_W\Sigma_B^\dagger)$,
      $\widetilde{\mathrm{NC1}} = \operatorname{Tr}\Sigma_W/\operatorname{Tr}\Sigma_B$, the NC2
      ETF distance and equinorm, NC3 by default);
    * $\lVert W\rVert_F$ of every weight matrix (the unnormalised weights; with batch
      normalisation and no weight decay the scale-invariant ones grow), and the angle each turned
      through since the previous record.

    ``train(..., callbacks=[(recorder, epochs)])`` records after the listed epochs (``0`` =
    before training); :meth:`every` builds such a pair. :meth:`trace` returns what was recorded.

    Parameters
    ----------
    data : Dataset or (X, y)
        Where margins and features are measured (usually the training set: the theory is about
        the training margins).
    classifier : str, optional
        Module name of the final ``nn.Linear``; default the model's ``head`` or ``fc``, else its
        last ``nn.Linear`` (``""`` names the model itself).
    rho : {"effective", "all"}
    metrics : sequence of str
        Collapse metrics (names from ``otcollapse.collapse.METRICS``); ``()`` records none and
        needs no classifier.
    batch_size : int
        Evaluation batch size.

    Examples
    --------
    >>> import torch
    >>> from otcollapse.nets import ResidualMLP, train
    >>> from otcollapse.data import load_dataset
    >>> ds = load_dataset("gaussian_mixture", n_per_class=20)
    >>> _ = torch.manual_seed(0)
    >>> net = ResidualMLP(ds.n_features, 16, 1, ds.n_classes, batchnorm=True)
    >>> rec = DynamicsRecorder(ds)
    >>> hist = train(net, ds, epochs=4, lr=0.05, weight_decay=5e-3, loss="mse",
    ...              callbacks=[rec.every(2, epochs=4)])
    >>> rec.trace().epochs.tolist()
    [0, 2, 4]

    References
    ----------
    M. Xu, A. Rangamani, Q. Liao, T. Galanti, T. Poggio, "Dynamics in deep classifiers trained with
    the square loss: normalization, low rank, neural collapse, and generalization bounds", Research
    6, 0024 (2023). V. Papyan, X. Y. Han, D. L. Donoho, PNAS 2020 (NC1-NC3).
    """

    def __init__(
        self,
        data: Any,
        *,
        classifier: str | None = None,
        rho: str = "effective",
        metrics: Sequence[str] = DEFAULT_DYNAMICS_METRICS,
        batch_size: int = 1024,
    ) -> None:
        self._X, self._y = _as_xy(data)
        self.rho = _check_rho(rho)
        metrics = tuple(metrics)
        bad = [m for m in metrics if m not in METRICS]
        if bad:
            raise ValueError(f"unknown collapse metrics {bad}; choose from {list(METRICS)}.")
        self.metrics = metrics
        self.classifier = classifier
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
        self.batch_size = batch_size
        self._records: list[DynamicsRecord] = []
        self._previous: dict[str, torch.Tensor] = {}
        self._invariant: tuple[str, ...] = ()
        self._head_name: str | None = None

    @property
    def records(self) -> tuple[DynamicsRecord, ...]:
        """The records taken so far."""
        return tuple(self._records)

    def every(self, k: int, *, epochs: int) -> tuple[DynamicsRecorder, list[int]]:
        """The callback pair ``(self, [0, k, 2k, ..., epochs])`` for ``train(callbacks=...)``.

        The last epoch is always included.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int; got {k!r}.")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative int; got {epochs!r}.")
        return self, sorted({*range(0, epochs + 1, k), epochs})

    def __call__(
        self, epoch: int, model: nn.Module, history: TrainHistory | None = None
    ) -> DynamicsRecord:
        """Measure ``model`` now and append the record (also returned)."""
        head = None
        if self.metrics:
            self._head_name, head = _find_classifier(model, self.classifier)
        logits, feats, invariant = _forward(model, self._X, head=head, batch_size=self.batch_size)
        self._invariant = invariant
        norms = _weight_norms(model)
        m = _margin_result(logits, self._y, norms, invariant, self.rho)
        notes: dict[str, str] = {}
        if m.log_rho == -math.inf:
            notes["margins"] = "a weight matrix in rho is zero, so rho = 0: margins are NaN"
        collapse: dict[str, float] = {}
        if self.metrics and feats is not None and head is not None:
            W = head.weight.detach().to("cpu", torch.float64).numpy()
            b = None if head.bias is None else head.bias.detach().to("cpu", torch.float64).numpy()
            if not (np.all(np.isfinite(feats)) and np.all(np.isfinite(W))):
                collapse = {k: math.nan for k in self.metrics}
                notes["collapse"] = "the penultimate features or the classifier contain NaN/inf"
            else:
                lc = layer_collapse(
                    feats, self._y, classifier=(W, b), metrics=self.metrics, name=self._head_name
                )
                collapse = dict(lc.metrics)
                notes.update(lc.notes)
        params = {n: p.detach() for n, p in model.named_parameters() if p.ndim >= 2}
        angles: dict[str, float] = {}
        if self._previous:
            for n, p in params.items():
                q = self._previous.get(n)
                if q is None or q.shape != p.shape:
                    continue
                a, b2 = p.double().reshape(-1), q.double().reshape(-1).to(p.device)
                den = float(a.norm() * b2.norm())
                c = float(a @ b2) / den if den > 0 else math.nan
                angles[n] = math.acos(min(1.0, max(-1.0, c))) if c == c else math.nan
        self._previous = {n: p.to("cpu", copy=True) for n, p in params.items()}
        rec = DynamicsRecord(
            epoch=int(epoch),
            margin_min=m.min,
            margin_mean=m.mean,
            raw_margin_min=float(m.raw.min()),
            raw_margin_mean=float(m.raw.mean()),
            rho=m.rho,
            log_rho=m.log_rho,
            rho_all=m.rho_all,
            accuracy=float(np.mean(m.raw > 0)),
            weight_norms=norms,
            angular_updates=angles,
            collapse=collapse,
            notes=notes,
        )
        self._records.append(rec)
        return rec

    def trace(self) -> DynamicsTrace:
        """The records so far as a :class:`DynamicsTrace`."""
        return DynamicsTrace(
            records=tuple(self._records),
            rho_mode=self.rho,
            scale_invariant=self._invariant,
            classifier=self._head_name if self.metrics else None,
            metrics=self.metrics,
        )


# ---------------------------------------------------------------------------------------------
# the experiment: batch normalisation x weight decay under the square loss
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class SquareLossRun:
    """One setting of :func:`run_square_loss_experiment`.

    Attributes
    ----------
    batchnorm : bool
    weight_decay : float
    history : TrainHistory
        Loss, accuracy and weight norms per epoch.
    dynamics : DynamicsTrace
        Margins, collapse metrics, weight norms and angular updates at the recorded epochs.
    test_accuracy : float or None
        Accuracy of the trained network on the test split (None without one).
    trajectory : Trajectory or None
        The trained network's block features on the training data (:func:`otcollapse.capture`),
        for ``collapse_profile``, ``transport_profile`` and ``geodesic_test``; None when the run
        diverged.
    diverged : bool
        Training ended with a non-finite loss or non-finite weights (lower ``lr``); its records
        hold NaN where they could not be computed.
    seconds : float
        Wall time of training and recording.
    model : nn.Module
        The trained network (not part of :meth:`to_dict`).
    """

    batchnorm: bool
    weight_decay: float
    history: TrainHistory
    dynamics: DynamicsTrace
    test_accuracy: float | None
    trajectory: Trajectory | None
    seconds: float
    diverged: bool
    model: nn.Module = dataclasses.field(repr=False)

    @property
    def label(self) -> str:
        """``"BN + WD"``, ``"BN, no WD"``, ``"no BN + WD"`` or ``"no BN, no WD"``."""
        bn = "BN" if self.batchnorm else "no BN"
        return f"{bn} + WD" if self.weight_decay > 0 else f"{bn}, no WD"

    def summary(self) -> dict[str, Any]:
        """One row: final accuracy, loss, rho, margins and collapse metrics, norm growth."""
        last = self.dynamics.records[-1]
        first = self.dynamics.records[0]
        inv = self.dynamics.series("scale_invariant_norm")
        tot = self.dynamics.series("total_norm")
        return {
            "setting": self.label,
            "diverged": self.diverged,
            "batchnorm": self.batchnorm,
            "weight_decay": self.weight_decay,
            "train_accuracy": self.history.final_accuracy,
            "test_accuracy": self.test_accuracy,
            "loss": self.history.loss[-1] if self.history.loss else None,
            "rho": last.rho,
            "margin_min": last.margin_min,
            "margin_mean": last.margin_mean,
            **{k: last.collapse.get(k, math.nan) for k in self.dynamics.metrics},
            "total_norm_ratio": float(tot[-1] / tot[0]) if first is not last else math.nan,
            "scale_invariant_norm_ratio": (
                float(inv[-1] / inv[0]) if first is not last and self.batchnorm else math.nan
            ),
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe record (without the model and the trajectory's arrays)."""
        return json_safe(
            {
                "label": self.label,
                "batchnorm": self.batchnorm,
                "weight_decay": self.weight_decay,
                "history": self.history.to_dict(),
                "dynamics": self.dynamics.to_dict(),
                "test_accuracy": self.test_accuracy,
                "seconds": self.seconds,
                "diverged": self.diverged,
                "trajectory": None
                if self.trajectory is None
                else {
                    "names": list(self.trajectory.names),
                    "dims": list(self.trajectory.dims),
                    "n_samples": self.trajectory.n_samples,
                },
                "summary": self.summary(),
            }
        )


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One predicted difference between settings and whether this run shows it.

    Attributes
    ----------
    claim : str
    holds : bool
    values : dict
        The numbers compared.
    """

    claim: str
    holds: bool
    values: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe record."""
        return json_safe(dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True, eq=False)
class SquareLossExperiment:
    """The four settings (batch normalisation x weight decay) of one square-loss experiment.

    Attributes
    ----------
    runs : tuple of SquareLossRun
        In the order BN + WD, BN no WD, no BN + WD, no BN no WD (those requested).
    config : dict
        Data set, architecture and training options.
    """

    runs: tuple[SquareLossRun, ...]
    config: dict[str, Any]

    def run(self, *, batchnorm: bool, weight_decay: bool) -> SquareLossRun:
        """The run with (``True``) or without (``False``) batch normalisation / weight decay."""
        for r in self.runs:
            if r.batchnorm == batchnorm and (r.weight_decay > 0) == weight_decay:
                return r
        raise ValueError(
            f"no run with batchnorm={batchnorm}, weight_decay={weight_decay}; runs: "
            f"{[r.label for r in self.runs]}."
        )

    def summary(self) -> list[dict[str, Any]]:
        """One row per run (see :meth:`SquareLossRun.summary`)."""
        return [r.summary() for r in self.runs]

    def predictions(self) -> list[Prediction]:
        r"""The predicted differences, checked on the last record of each run.

        For each batch-normalisation setting present with both weight-decay values, comparing
        the WD run with the no-WD run from the same initialisation:

        1. weight decay gives a smaller $\rho$ (minimum norm);
        2. weight decay gives a larger minimum normalised margin;
        3. weight decay gives stronger collapse: a smaller NC1 (when recorded);

        and, with batch normalisation and no weight decay, 4. the norm of the scale-invariant
        weights never decreases between records (the singular dynamics: gradients are orthogonal
        to scale-invariant weights, so in plain gradient descent
        $\lVert w_{t+1}\rVert^2 = \lVert w_t\rVert^2 + \eta^2\lVert g_t\rVert^2$; with momentum
        this is approximate), while with weight decay it ends below its start.

        (Item 2 is checked on the minimum and on the mean margin.) ``holds`` is the plain
        comparison, without any statistical margin: read the ``values``. A comparison involving
        a diverged run never holds and lists the diverged run under ``values["diverged"]``.
        """
        out: list[Prediction] = []
        for bn in (True, False):
            try:
                wd = self.run(batchnorm=bn, weight_decay=True)
                no = self.run(batchnorm=bn, weight_decay=False)
            except ValueError:
                continue
            tag = "BN" if bn else "no BN"
            a, b = wd.dynamics.records[-1], no.dynamics.records[-1]
            n0 = len(out)
            out.append(
                Prediction(
                    f"{tag}: weight decay ends at a smaller rho",
                    bool(a.log_rho < b.log_rho),
                    {"rho_wd": a.rho, "rho_no_wd": b.rho},
                )
            )
            out.append(
                Prediction(
                    f"{tag}: weight decay ends with a larger minimum normalised margin",
                    bool(a.margin_min > b.margin_min),
                    {"margin_min_wd": a.margin_min, "margin_min_no_wd": b.margin_min},
                )
            )
            out.append(
                Prediction(
                    f"{tag}: weight decay ends with a larger mean normalised margin",
                    bool(a.margin_mean > b.margin_mean),
                    {"margin_mean_wd": a.margin_mean, "margin_mean_no_wd": b.margin_mean},
                )
            )
            if "nc1" in wd.dynamics.metrics:
                x, y = a.collapse.get("nc1", math.nan), b.collapse.get("nc1", math.nan)
                out.append(
                    Prediction(
                        f"{tag}: weight decay ends with a smaller NC1",
                        bool(x < y),
                        {"nc1_wd": x, "nc1_no_wd": y},
                    )
                )
            if bn and len(no.dynamics) > 1:
                g = no.dynamics.series("scale_invariant_norm")
                with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf after divergence
                    frac = float(np.mean(np.diff(g) >= -1e-6 * g[:-1]))
                out.append(
                    Prediction(
                        "BN, no WD: the scale-invariant weight norm never decreases",
                        bool(frac == 1.0),
                        {
                            "fraction_non_decreasing": frac,
                            "norm_first": float(g[0]),
                            "norm_last": float(g[-1]),
                        },
                    )
                )
                h = wd.dynamics.series("scale_invariant_norm")
                out.append(
                    Prediction(
                        "BN + WD: the scale-invariant weight norm ends below its start",
                        bool(h[-1] < h[0]),
                        {"norm_first": float(h[0]), "norm_last": float(h[-1])},
                    )
                )
            bad = [r.label for r in (wd, no) if r.diverged]
            if bad:  # a diverged run shows nothing: say so in every comparison it enters
                out[n0:] = [
                    dataclasses.replace(p, holds=False, values={**p.values, "diverged": bad})
                    for p in out[n0:]
                ]
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe record of every run, the summary and the predictions."""
        return json_safe(
            {
                "config": self.config,
                "runs": [r.to_dict() for r in self.runs],
                "summary": self.summary(),
                "predictions": [p.to_dict() for p in self.predictions()],
            }
        )


def _accuracy(model: nn.Module, data: Dataset) -> float:
    X, y = _as_xy(data)
    logits, _, _ = _forward(model, X, head=None, batch_size=1024)
    return float(np.mean(np.argmax(logits, axis=1) == y))


def run_square_loss_experiment(
    data: str | Dataset | tuple[Any, Any] = "gaussian_mixture",
    *,
    test_data: Dataset | tuple[Any, Any] | None = None,
    width: int = 32,
    n_blocks: int = 2,
    plain: bool = False,
    epochs: int = 150,
    lr: float = 0.1,
    weight_decay: float = 5e-3,
    momentum: float = 0.9,
    batch_size: int = 64,
    record_every: int = 1,
    settings: Sequence[tuple[bool, bool]] = (
        (True, True),
        (True, False),
        (False, True),
        (False, False),
    ),
    rho: str = "effective",
    metrics: Sequence[str] = DEFAULT_DYNAMICS_METRICS,
    seed: int = 0,
    data_options: Mapping[str, Any] | None = None,
) -> SquareLossExperiment:
    r"""Train the four settings batch normalisation x weight decay with the square loss.

    Each setting trains a :class:`otcollapse.nets.ResidualMLP` (``batchnorm`` True/False) with
    :func:`otcollapse.nets.train` on

    $$\frac1B\sum_{i\in\text{batch}} \tfrac12\lVert f_\theta(x_i) - e_{y_i}\rVert^2
      + \frac\lambda2\lVert\theta\rVert^2,\qquad \lambda\in\{\texttt{weight\_decay}, 0\},$$

    with SGD at a constant learning rate (no schedule: closest to the gradient flow of the
    theory), and records a :class:`DynamicsRecorder` trace on the training data every
    ``record_every`` epochs (and before training). The two weight-decay settings of one
    batch-normalisation setting start from the same initialisation (``torch.manual_seed(seed)``
    before building the network) and see the same batches, so their difference is the weight
    decay alone. :meth:`SquareLossExperiment.predictions` checks the predicted differences:
    with weight decay a smaller $\rho$, a larger normalised margin and stronger collapse; with
    batch normalisation and no weight decay, scale-invariant weight norms that only grow.

    Parameters
    ----------
    data : str, Dataset or (X, y)
        A built-in data set name (train split; its test split becomes ``test_data``), or the
        training data. Inputs are flattened.
    test_data : Dataset or (X, y), optional
        Evaluated once after training (``SquareLossRun.test_accuracy``).
    width, n_blocks : int
        The residual MLP's width and number of blocks.
    plain : bool
        The plain twin (no skip connections), closer to the paper's feed-forward networks.
    epochs, lr, weight_decay, momentum, batch_size
        Training options (``weight_decay`` > 0 is the WD value; the other setting uses 0).
    record_every : int
        Record after every ``record_every`` epochs (the last epoch always).
    settings : sequence of (batchnorm, use_weight_decay)
        Which settings to run (default all four).
    rho : {"effective", "all"}
        The margin normaliser (:func:`normalised_margins`).
    metrics : sequence of str
        Collapse metrics to record.
    seed : int
        Seeds the data set (for a built-in name), the initialisation and the batch order.
    data_options : dict, optional
        Options for :func:`otcollapse.data.load_dataset` when ``data`` is a name.

    Returns
    -------
    SquareLossExperiment

    Raises
    ------
    ValueError
        ``weight_decay <= 0``, an empty or repeated ``settings``, a batch-normalised run whose
        last mini-batch would hold one sample, or invalid training options.

    Examples
    --------
    >>> exp = run_square_loss_experiment(
    ...     "gaussian_mixture", data_options={"n_per_class": 20, "dim": 8},
    ...     width=8, n_blocks=1, epochs=3, record_every=3)
    >>> [r.label for r in exp.runs]
    ['BN + WD', 'BN, no WD', 'no BN + WD', 'no BN, no WD']

    References
    ----------
    M. Xu, A. Rangamani, Q. Liao, T. Galanti, T. Poggio, "Dynamics in deep classifiers trained with
    the square loss: normalization, low rank, neural collapse, and generalization bounds", Research
    6, 0024 (2023). T. Poggio, Q. Liao, arXiv:2101.00072 (2020).
    """
    if not weight_decay > 0:
        raise ValueError(
            f"weight_decay is the value of the WD settings and must be > 0; got {weight_decay!r} "
            "(the no-WD settings use 0)."
        )
    settings = [(bool(b), bool(w)) for b, w in settings]
    if not settings or len(set(settings)) != len(settings):
        raise ValueError(f"settings must be non-empty and without repeats; got {settings}.")
    if isinstance(record_every, bool) or not isinstance(record_every, int) or record_every < 1:
        raise ValueError(f"record_every must be a positive int; got {record_every!r}.")
    if isinstance(data, str):
        opts = dict(data_options or {})
        train_ds = load_dataset(data, split="train", seed=seed, **opts)
        if test_data is None:
            test_data = load_dataset(data, split="test", seed=seed, **opts)
    else:
        if data_options:
            raise ValueError("data_options apply to a built-in data set name only.")
        if isinstance(data, Dataset):
            train_ds = data
        else:
            X, y = _as_xy(data)
            train_ds = Dataset(X, torch.as_tensor(y), name="user")
    train_ds = train_ds.flatten()
    test_ds = None
    if test_data is not None:
        test_ds = test_data if isinstance(test_data, Dataset) else Dataset(*test_data)
        test_ds = test_ds.flatten()
    n = len(train_ds)
    if any(b for b, _ in settings) and n % batch_size == 1:
        raise ValueError(
            f"{n} samples in batches of {batch_size} leave a last batch of one sample, which "
            "batch normalisation cannot train on; change batch_size."
        )
    d, K = train_ds.n_features, train_ds.n_classes
    runs = []
    for bn, use_wd in settings:
        t0 = time.perf_counter()
        torch.manual_seed(int(seed))
        model = ResidualMLP(d, width, n_blocks, K, plain=plain, batchnorm=bn)
        rec = DynamicsRecorder(train_ds, rho=rho, metrics=metrics)
        wd = float(weight_decay) if use_wd else 0.0
        hist = train(
            model,
            train_ds,
            epochs=epochs,
            lr=lr,
            weight_decay=wd,
            loss="mse",
            optimizer="sgd",
            momentum=momentum,
            schedule=None,
            batch_size=batch_size,
            seed=seed,
            callbacks=[rec.every(record_every, epochs=epochs)],
        )
        diverged = not (
            all(math.isfinite(v) for v in hist.loss)
            and all(bool(torch.isfinite(p).all()) for p in model.parameters())
        )
        if diverged:
            warnings.warn(
                f"the run with batchnorm={bn}, weight_decay={wd} diverged (non-finite loss or "
                f"weights); its records hold NaN. Lower lr (now {lr}).",
                UserWarning,
                stacklevel=2,
            )
        runs.append(
            SquareLossRun(
                batchnorm=bn,
                weight_decay=wd,
                history=hist,
                dynamics=rec.trace(),
                test_accuracy=None if test_ds is None else _accuracy(model, test_ds),
                trajectory=None if diverged else capture(model, train_ds),
                seconds=time.perf_counter() - t0,
                diverged=diverged,
                model=model,
            )
        )
    config = {
        "data": train_ds.name,
        "data_provenance": dict(train_ds.provenance),
        "n_train": n,
        "n_test": None if test_ds is None else len(test_ds),
        "n_classes": K,
        "model": "ResidualMLP",
        "width": width,
        "n_blocks": n_blocks,
        "plain": plain,
        "epochs": epochs,
        "lr": lr,
        "weight_decay": weight_decay,
        "momentum": momentum,
        "batch_size": batch_size,
        "record_every": record_every,
        "loss": "mse",
        "optimizer": "sgd",
        "schedule": None,
        "rho": rho,
        "metrics": list(metrics),
        "seed": seed,
    }
    return SquareLossExperiment(runs=tuple(runs), config=json_safe(config))
