r"""The square-loss experiment: batch normalisation x weight decay, from one initialisation.

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

:func:`run_square_loss_experiment` trains the four settings batch normalisation x weight decay
with the square loss on one data set from the same initialisation, records each with a
:class:`~otcollapse.experiments.dynamics.DynamicsRecorder`, and
:meth:`SquareLossExperiment.predictions` checks the paper's predicted differences.

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
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from otcollapse._results import Result, record
from otcollapse._utils import json_safe
from otcollapse._validation import check_int, check_real
from otcollapse.data import Dataset, load_dataset
from otcollapse.experiments.dynamics import (
    DEFAULT_DYNAMICS_METRICS,
    DynamicsRecorder,
    DynamicsTrace,
)
from otcollapse.measures import Trajectory
from otcollapse.nets import ResidualMLP, TrainHistory, capture, train
from otcollapse.nets.common import as_xy
from otcollapse.nets.margins import forward_pass

__all__ = [
    "Prediction",
    "SquareLossExperiment",
    "SquareLossRun",
    "run_square_loss_experiment",
]


@dataclasses.dataclass(frozen=True, eq=False)
class SquareLossRun(Result):
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

    _derived: ClassVar[tuple[str, ...]] = ("label",)
    _unrecorded: ClassVar[tuple[str, ...]] = ("model", "trajectory")

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
        """A JSON-safe record: the fields and ``label``, the trajectory's names, dimensions and
        sample count (not its arrays), the :meth:`summary`; not the model."""
        t = self.trajectory
        shape = None if t is None else {"names": t.names, "dims": t.dims, "n_samples": t.n_samples}
        return super().to_dict() | json_safe({"trajectory": shape, "summary": self.summary()})


@dataclasses.dataclass(frozen=True)
class Prediction(Result):
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


@dataclasses.dataclass(frozen=True, eq=False)
class SquareLossExperiment(Result):
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

    def table(self) -> list[dict[str, Any]]:
        """One JSON-safe row per run (:meth:`summary`)."""
        return json_safe(self.summary())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe record of every run, the summary and the predictions."""
        extra = {"summary": self.summary(), "predictions": self.predictions()}
        return super().to_dict() | json_safe(record(extra))


def _accuracy(model: nn.Module, data: Dataset) -> float:
    X, y = as_xy(data, purpose="evaluate on")
    logits, _, _ = forward_pass(model, X, head=None, batch_size=1024)
    return float(np.mean(np.argmax(logits, axis=1) == y.numpy()))


@dataclasses.dataclass(frozen=True)
class _Setup:
    """What the settings of one experiment share: data, architecture, training, recording."""

    train_ds: Dataset
    test_ds: Dataset | None
    width: int
    n_blocks: int
    plain: bool
    rho: str
    metrics: tuple[str, ...]
    record_every: int
    #: keyword arguments of ``train`` besides the weight decay (recorded in the config too)
    train_options: dict[str, Any]

    def record(self, weight_decay: float) -> dict[str, Any]:
        """The experiment's configuration, JSON-safe (``SquareLossExperiment.config``)."""
        ds, test = self.train_ds, self.test_ds
        return json_safe(
            {
                "data": ds.name,
                "data_provenance": dict(ds.provenance),
                "n_train": len(ds),
                "n_test": None if test is None else len(test),
                "n_classes": ds.n_classes,
                "model": "ResidualMLP",
                "width": self.width,
                "n_blocks": self.n_blocks,
                "plain": self.plain,
                "weight_decay": weight_decay,
                "record_every": self.record_every,
                "rho": self.rho,
                "metrics": list(self.metrics),
                **self.train_options,
            }
        )

    def run(self, batchnorm: bool, weight_decay: float) -> SquareLossRun:
        """Train and record one setting from the seeded initialisation."""
        t0 = time.perf_counter()
        ds, opts = self.train_ds, self.train_options
        torch.manual_seed(int(opts["seed"]))
        model = ResidualMLP(
            ds.n_features,
            self.width,
            self.n_blocks,
            ds.n_classes,
            plain=self.plain,
            batchnorm=batchnorm,
        )
        rec = DynamicsRecorder(ds, rho=self.rho, metrics=self.metrics)
        when = rec.every(self.record_every, epochs=opts["epochs"])
        hist = train(model, ds, weight_decay=weight_decay, callbacks=[when], **opts)
        diverged = not (
            all(math.isfinite(v) for v in hist.loss)
            and all(bool(torch.isfinite(p).all()) for p in model.parameters())
        )
        if diverged:
            warnings.warn(
                f"the run with batchnorm={batchnorm}, weight_decay={weight_decay} diverged "
                f"(non-finite loss or weights); its records hold NaN. Lower lr (now {opts['lr']}).",
                UserWarning,
                stacklevel=3,
            )
        return SquareLossRun(
            batchnorm=batchnorm,
            weight_decay=weight_decay,
            history=hist,
            dynamics=rec.trace(),
            test_accuracy=None if self.test_ds is None else _accuracy(model, self.test_ds),
            trajectory=None if diverged else capture(model, ds),
            seconds=time.perf_counter() - t0,
            diverged=diverged,
            model=model,
        )


def _data(
    data: Any, test_data: Any, data_options: Mapping[str, Any] | None, seed: int
) -> tuple[Dataset, Dataset | None]:
    """The training and test data sets of the experiment, flattened."""
    if isinstance(data, str):
        opts = dict(data_options or {})
        train_ds = load_dataset(data, split="train", seed=seed, **opts)
        if test_data is None:
            test_data = load_dataset(data, split="test", seed=seed, **opts)
    elif data_options:
        raise ValueError("data_options apply to a built-in data set name only.")
    elif isinstance(data, Dataset):
        train_ds = data
    else:
        train_ds = Dataset(*as_xy(data, purpose="train on"), name="user")
    test_ds = None
    if test_data is not None:
        test_ds = test_data if isinstance(test_data, Dataset) else Dataset(*test_data)
        test_ds = test_ds.flatten()
    return train_ds.flatten(), test_ds


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
        The margin normaliser (:func:`~otcollapse.nets.normalised_margins`).
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
    if check_real(weight_decay, "weight_decay") <= 0:
        raise ValueError(
            f"weight_decay is the value of the WD settings and must be > 0; got {weight_decay!r} "
            "(the no-WD settings use 0)."
        )
    settings = [(bool(b), bool(w)) for b, w in settings]
    if not settings or len(set(settings)) != len(settings):
        raise ValueError(f"settings must be non-empty and without repeats; got {settings}.")
    record_every = check_int(record_every, "record_every", minimum=1)
    train_ds, test_ds = _data(data, test_data, data_options, seed)
    n = len(train_ds)
    if any(b for b, _ in settings) and n % batch_size == 1:
        raise ValueError(
            f"{n} samples in batches of {batch_size} leave a last batch of one sample, which "
            "batch normalisation cannot train on; change batch_size."
        )
    options = {"epochs": epochs, "lr": lr, "momentum": momentum, "batch_size": batch_size,
               "seed": seed, "loss": "mse", "optimizer": "sgd", "schedule": None}  # fmt: skip
    setup = _Setup(
        train_ds, test_ds, width, n_blocks, plain, rho, tuple(metrics), record_every, options
    )
    runs = []
    for bn, wd in settings:  # a loop, not a generator: the warning's stacklevel counts frames
        runs.append(setup.run(bn, float(weight_decay) if wd else 0.0))
    return SquareLossExperiment(runs=tuple(runs), config=setup.record(weight_decay))
