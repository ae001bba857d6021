r"""Record a network's training dynamics: normalised margins, collapse and weight norms by epoch.

:class:`DynamicsRecorder` is a :func:`otcollapse.nets.train` callback. At the epochs it is called
it records the normalised margins (:func:`otcollapse.nets.normalised_margins`), the collapse
metrics of the penultimate features (through :func:`otcollapse.collapse.layer_collapse`), the
Frobenius norm of every weight matrix and the angle each weight matrix turned through since the
previous record; :class:`DynamicsTrace` holds the records. The square-loss experiment
(:mod:`otcollapse.experiments.square_loss`) runs it on the four settings batch normalisation x
weight decay.

It sits above the analyses (it imports :mod:`otcollapse.collapse`), so that ``nets`` stays below
them. The quantities are those of Xu, Rangamani, Liao, Galanti & Poggio (Research 6, 0024, 2023;
full reference in :mod:`otcollapse.experiments.square_loss`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from otcollapse._results import Result
from otcollapse._validation import check_int
from otcollapse.collapse import METRICS, layer_collapse
from otcollapse.nets import TrainHistory
from otcollapse.nets.common import as_xy, weight_norms
from otcollapse.nets.margins import check_rho, find_classifier, forward_pass, margin_result

__all__ = [
    "DEFAULT_DYNAMICS_METRICS",
    "DynamicsRecord",
    "DynamicsRecorder",
    "DynamicsTrace",
]

#: collapse metrics recorded by default (names from ``otcollapse.collapse.METRICS``)
DEFAULT_DYNAMICS_METRICS: tuple[str, ...] = (
    "nc1",
    "nc1_tilde",
    "nc2_etf_distance",
    "nc2_equinorm",
    "nc3",
)


@dataclasses.dataclass(frozen=True)
class DynamicsRecord(Result):
    r"""What :class:`DynamicsRecorder` measured after one epoch (0 = before training).

    Attributes
    ----------
    epoch : int
    margin_min, margin_mean : float
        $\min_i\gamma_i$ and the mean of the normalised margins (:func:`~otcollapse.nets.normalised_margins`).
    raw_margin_min, raw_margin_mean : float
        The same for the unnormalised margins $f(x_i)_{y_i} - \max_{j\ne y_i} f(x_i)_j$.
    rho, log_rho, rho_all : float
        The normaliser of the margins (see :func:`~otcollapse.nets.normalised_margins`) and the product over every
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


#: the scalar fields of a record (``DynamicsTrace.series`` names)
_SCALARS = tuple(f.name for f in dataclasses.fields(DynamicsRecord) if f.type == "float")


@dataclasses.dataclass(frozen=True)
class DynamicsTrace(Result):
    """The records of a :class:`DynamicsRecorder`, in the order they were taken.

    Attributes
    ----------
    records : tuple of DynamicsRecord
    rho_mode : str
        ``"effective"`` or ``"all"`` (see :func:`~otcollapse.nets.normalised_margins`).
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


class DynamicsRecorder:
    r"""A :func:`otcollapse.nets.train` callback recording margins, collapse and weight norms.

    Called as ``recorder(epoch, model, history)`` — by ``train`` after the epochs it was given,
    or by hand — it evaluates ``model`` on ``data`` in eval mode (one forward pass, no gradients)
    and appends a :class:`DynamicsRecord`:

    * normalised margins $\gamma_i = (f(x_i)_{y_i} - \max_{j\ne y_i} f(x_i)_j)/\rho$, their
      minimum and mean, with $\rho = \prod_{W\in\mathcal W}\lVert W\rVert_F$ as in
      :func:`~otcollapse.nets.normalised_margins` (``rho="effective"`` leaves out the weights fed into a BatchNorm,
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
        X, y = as_xy(data, purpose="evaluate on")
        self._X, self._y = X, y.numpy()
        self.rho = check_rho(rho)
        metrics = tuple(metrics)
        bad = [m for m in metrics if m not in METRICS]
        if bad:
            raise ValueError(f"unknown collapse metrics {bad}; choose from {list(METRICS)}.")
        self.metrics = metrics
        self.classifier = classifier
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
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
        k = check_int(k, "k", minimum=1)
        epochs = check_int(epochs, "epochs", minimum=0)
        return self, sorted({*range(0, epochs + 1, k), epochs})

    def __call__(
        self, epoch: int, model: nn.Module, history: TrainHistory | None = None
    ) -> DynamicsRecord:
        """Measure ``model`` now and append the record (also returned)."""
        head = None
        if self.metrics:
            self._head_name, head = find_classifier(model, self.classifier)
        logits, feats, invariant = forward_pass(
            model, self._X, head=head, batch_size=self.batch_size
        )
        self._invariant = invariant
        norms = weight_norms(model)
        m = margin_result(logits, self._y, norms, invariant, self.rho)
        notes: dict[str, str] = {}
        if m.log_rho == -math.inf:
            notes["margins"] = "a weight matrix in rho is zero, so rho = 0: margins are NaN"
        collapse: dict[str, float] = {}
        if self.metrics and feats is not None and head is not None:
            collapse = self._collapse(feats, head, notes)
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
            angular_updates=self._angles(model),
            collapse=collapse,
            notes=notes,
        )
        self._records.append(rec)
        return rec

    def _collapse(
        self, feats: np.ndarray, head: nn.Linear, notes: dict[str, str]
    ) -> dict[str, float]:
        """The collapse metrics of the penultimate features with the classifier ``head``
        (NaN, and a note, when either holds NaN/inf)."""
        W = head.weight.detach().to("cpu", torch.float64).numpy()
        b = None if head.bias is None else head.bias.detach().to("cpu", torch.float64).numpy()
        if not (np.all(np.isfinite(feats)) and np.all(np.isfinite(W))):
            notes["collapse"] = "the penultimate features or the classifier contain NaN/inf"
            return {k: math.nan for k in self.metrics}
        lc = layer_collapse(
            feats, self._y, classifier=(W, b), metrics=self.metrics, name=self._head_name
        )
        notes.update(lc.notes)
        return dict(lc.metrics)

    def _angles(self, model: nn.Module) -> dict[str, float]:
        """The angle each weight matrix turned through since the previous record (then keeps
        a copy of the weights for the next one)."""
        params = {n: p.detach() for n, p in model.named_parameters() if p.ndim >= 2}
        angles: dict[str, float] = {}
        for n, p in params.items():
            q = self._previous.get(n)
            if q is None or q.shape != p.shape:
                continue
            a, b = p.double().reshape(-1), q.double().reshape(-1).to(p.device)
            den = float(a.norm() * b.norm())
            c = float(a @ b) / den if den > 0 else math.nan
            angles[n] = math.acos(min(1.0, max(-1.0, c))) if c == c else math.nan
        self._previous = {n: p.to("cpu", copy=True) for n, p in params.items()}
        return angles

    def trace(self) -> DynamicsTrace:
        """The records so far as a :class:`DynamicsTrace`."""
        return DynamicsTrace(
            records=tuple(self._records),
            rho_mode=self.rho,
            scale_invariant=self._invariant,
            classifier=self._head_name if self.metrics else None,
            metrics=self.metrics,
        )
