"""Train a network with weight decay into the terminal phase, with atomic checkpoints and resume.

The loss minimised is the empirical risk plus weight decay (coupled L2, as in SGD's
``weight_decay``):

$$\\min_\\theta\\; \\frac1N \\sum_{i=1}^N \\ell(f_\\theta(x_i), y_i) + \\frac{\\lambda}{2}\\|\\theta\\|^2,$$

with ``ℓ`` the cross-entropy or the squared loss ``½‖f_θ(x) − e_y‖²`` to the one-hot target. The
terminal phase of training (Papyan, Han & Donoho 2020) begins when the training accuracy reaches
100% and continues while the loss still falls; neural collapse is measured there.

Training is deterministic on the CPU for a given ``seed``: the batches are drawn by a
``torch.Generator`` seeded once, ``torch.use_deterministic_algorithms`` is on while training, and a
checkpoint stores the model, the optimiser, the scheduler, both RNG states and the history, so a
killed run resumed with ``resume=True`` ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from otcollapse._results import Result
from otcollapse._utils import atomic_path, check_device, json_safe, progress_bar
from otcollapse._validation import check_int, check_real
from otcollapse.nets.common import as_xy, linear_head, place, weight_norms

__all__ = ["CHECKPOINT_NAME", "TrainHistory", "load_checkpoint", "train"]

CHECKPOINT_NAME = "checkpoint.pt"

Callback = Callable[[int, nn.Module, "TrainHistory"], Any]

_FIELDS = ("epochs", "loss", "accuracy", "train_loss", "lr", "seconds", "weight_norms")


def _number(v: Any) -> float:
    """A recorded number back as a float (a JSON record holds NaN as None, inf as "inf")."""
    return math.nan if v is None else float(v)


@dataclasses.dataclass(frozen=True)
class TrainHistory(Result):
    """Per-epoch record of a training run (one entry per completed epoch).

    ``to_dict()`` records the fields and ``terminal_epoch`` (NaN as None, as every record);
    :meth:`from_dict` reads it back. ``table()`` has one row per epoch.

    Attributes
    ----------
    epochs : tuple of int
        ``1..E``.
    loss, accuracy : tuple of float
        Loss (without the weight-decay term) and accuracy on the whole training set, evaluated in
        eval mode after each epoch.
    train_loss : tuple of float
        Mean loss over the epoch's mini-batches (train mode, as it was optimised).
    lr : tuple of float
        Learning rate used during the epoch.
    seconds : tuple of float
        Wall time of each epoch (the only field that is not reproducible).
    weight_norms : tuple of dict
        ``{parameter name: ‖W‖_F}`` for every weight matrix / kernel (parameters with >= 2 axes).
    config : dict
        The training options.
    """

    _derived: ClassVar[tuple[str, ...]] = ("terminal_epoch",)

    epochs: tuple[int, ...] = ()
    loss: tuple[float, ...] = ()
    accuracy: tuple[float, ...] = ()
    train_loss: tuple[float, ...] = ()
    lr: tuple[float, ...] = ()
    seconds: tuple[float, ...] = ()
    weight_norms: tuple[Mapping[str, float], ...] = ()
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.epochs)

    @property
    def final_accuracy(self) -> float | None:
        """Training accuracy after the last epoch (None before any epoch)."""
        return self.accuracy[-1] if self.accuracy else None

    @property
    def terminal_epoch(self) -> int | None:
        """First epoch with 100% training accuracy, or None."""
        for e, a in zip(self.epochs, self.accuracy, strict=True):
            if a >= 1.0:
                return e
        return None

    def append(self, **row: Any) -> TrainHistory:
        """A new history with one more epoch."""
        return dataclasses.replace(self, **{f: (*getattr(self, f), row[f]) for f in _FIELDS})

    def table(self) -> list[dict[str, Any]]:
        """One JSON-safe row per epoch: loss, accuracy, mini-batch loss, learning rate, seconds
        (the weight norms, a dict per epoch, are in :meth:`to_dict`)."""
        cols = ("epoch", *_FIELDS[1:-1])
        values = zip(*(getattr(self, f) for f in _FIELDS[:-1]), strict=True)
        return json_safe([dict(zip(cols, row, strict=True)) for row in values])

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainHistory:
        """Inverse of :meth:`to_dict`."""
        kw: dict[str, Any] = {f: tuple(_number(v) for v in d.get(f, ())) for f in _FIELDS[1:-1]}
        kw["epochs"] = tuple(int(e) for e in d.get("epochs", ()))
        kw["weight_norms"] = tuple(
            {k: _number(v) for k, v in w.items()} for w in d.get("weight_norms", ())
        )
        return cls(**kw, config=dict(d.get("config", {})))


# ---------------------------------------------------------------------------- helpers
def _loss_fn(kind: str, n_classes: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if kind == "ce":
        return lambda out, y: F.cross_entropy(out, y)
    if kind == "mse":
        return lambda out, y: (
            0.5 * (out - F.one_hot(y, n_classes).to(out.dtype)).pow(2).sum(1).mean()
        )
    raise ValueError(f"unknown loss {kind!r}; use 'ce' (cross-entropy) or 'mse'.")


def _optimizer(model: nn.Module, name: str, lr: float, wd: float, momentum: float) -> Any:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    raise ValueError(f"unknown optimizer {name!r}; use 'sgd', 'adam' or 'adamw'.")


def _scheduler(opt: Any, schedule: str | None, epochs: int) -> Any:
    if schedule is None:
        return None
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    raise ValueError(f"unknown schedule {schedule!r}; use 'cosine' or None.")


def _callbacks(callbacks: Iterable[Any], epochs: int) -> list[tuple[Callback, set[int]]]:
    out = []
    for cb in callbacks:
        if callable(cb):
            out.append((cb, set(range(1, epochs + 1))))
        elif isinstance(cb, (tuple, list)) and len(cb) == 2 and callable(cb[0]):
            when = {int(e) for e in cb[1]}
            bad = sorted(e for e in when if not 0 <= e <= epochs)
            if bad:
                raise ValueError(f"callback epochs {bad} are outside 0..{epochs}.")
            out.append((cb[0], when))
        else:
            raise ValueError(
                f"a callback must be a callable(epoch, model, history) or a pair (callable, "
                f"epochs); got {cb!r}."
            )
    return out


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`train` (``torch.load(weights_only=True)``)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------- train
def train(
    model: nn.Module,
    data: Any,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    loss: str = "ce",
    optimizer: str = "sgd",
    momentum: float = 0.9,
    schedule: str | None = "cosine",
    batch_size: int = 128,
    seed: int = 0,
    device: Any = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
    progress: bool = False,
) -> TrainHistory:
    """Train ``model`` in place on ``data`` with weight decay; return the per-epoch history.

    Each epoch shuffles the training set with a ``torch.Generator`` seeded by ``seed`` (one
    generator for the whole run), takes SGD steps on mini-batches of the loss

    $$\\frac1B \\sum_{i \\in \\text{batch}} \\ell(f_\\theta(x_i), y_i) + \\frac{\\lambda}{2}\\|\\theta\\|^2$$

    (``ℓ`` cross-entropy, or ``½‖f_θ(x) − e_y‖²`` for ``loss="mse"``), steps the schedule, then
    evaluates loss and accuracy on the whole training set in eval mode.

    Parameters
    ----------
    model : nn.Module
        Initialised by the caller (seed ``torch.manual_seed`` before building it).
    data : Dataset or (X, y)
        Training data.
    epochs : int
    lr, weight_decay : float
        Learning rate and L2 coefficient ``λ``.
    loss : {"ce", "mse"}
    optimizer : {"sgd", "adam", "adamw"}
    momentum : float
        SGD momentum.
    schedule : {"cosine", None}
        Cosine annealing of the learning rate over ``epochs`` (stepped once per epoch).
    batch_size : int
    seed : int
        Seeds the batch order (the model's initialisation is the caller's).
    device : str or torch device, optional
        Default the model's device; one that does not exist here (``"gpu"``, ``"cuda"``
        without a CUDA GPU, ``"cuda:7"`` on a machine with fewer GPUs) is a ValueError.
    checkpoint_dir : path, optional
        Write ``checkpoint.pt`` there every ``checkpoint_every`` epochs and after the last,
        atomically (temporary file, then rename): a killed run leaves the previous checkpoint.
    checkpoint_every : int
    resume : bool
        Continue from ``checkpoint_dir/checkpoint.pt`` when it exists (the options must match the
        checkpoint's); the result equals an uninterrupted run's. Without a checkpoint, start anew.
    callbacks : sequence
        Callables ``fn(epoch, model, history)`` run after every epoch, or pairs ``(fn, epochs)``
        run after the given epochs (``0`` = before training). This is how a caller captures
        trajectories or collapse metrics during training.
    progress : bool
        A tqdm progress bar over epochs (on a terminal only).

    Returns
    -------
    TrainHistory

    Raises
    ------
    ValueError
        Unknown loss, optimizer or schedule; a learning rate that is not a finite number > 0, a
        negative or non-finite ``weight_decay``, ``momentum`` outside [0, 1); bad data (NaN/inf
        or complex inputs, labels that are not integer class indices, one label per sample);
        a device that does not exist here; a checkpoint made with other options.
    TypeError
        Non-numeric ``lr``, ``weight_decay``, ``momentum``; non-integer ``batch_size``,
        ``checkpoint_every`` or ``seed``.

    References
    ----------
    V. Papyan, X. Y. Han, D. L. Donoho, "Prevalence of neural collapse during the terminal phase of
    deep learning training", PNAS 2020.
    """
    config: dict[str, Any] = {
        "epochs": check_int(epochs, "epochs", minimum=1),
        "lr": check_real(lr, "lr (the learning rate)", minimum=0.0, open_min=True),
        "weight_decay": check_real(weight_decay, "weight_decay", minimum=0.0),
        "loss": loss,
        "optimizer": optimizer,
        "momentum": check_real(momentum, "momentum", minimum=0.0, maximum=1.0, open_max=True),
        "schedule": schedule,
        "batch_size": check_int(batch_size, "batch_size", minimum=1),
        "seed": check_int(seed, "seed"),
    }
    checkpoint_every = check_int(checkpoint_every, "checkpoint_every", minimum=1)
    dev_given = None if device is None else check_device(device)
    X, y = as_xy(data, purpose="train on")
    config["n"] = int(X.shape[0])
    loss_fn = _loss_fn(loss, _n_classes(model, y))
    dev = place(model, dev_given)
    X, y = X.to(dev), y.to(dev)
    run = _Run(model, config)
    cbs = _callbacks(callbacks, config["epochs"])
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir.")
    ckpt = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
    if resume and ckpt is not None and ckpt.exists():
        run.restore(ckpt)
    with _deterministic():
        run.fit(X, y, loss_fn, cbs, ckpt, checkpoint_every, progress)
    return run.history


def _n_classes(model: nn.Module, y: torch.Tensor) -> int:
    """The model's outputs (its linear head's), else ``max(y) + 1``; labels must fit them."""
    head = linear_head(model)
    n_classes = head.out_features if head is not None else int(y.max()) + 1
    if int(y.max()) >= n_classes or int(y.min()) < 0:
        raise ValueError(f"labels must lie in 0..{n_classes - 1} (the model's outputs).")
    return n_classes


def _call(cbs: list[tuple[Callback, set[int]]], epoch: int, model: nn.Module, h: Any) -> None:
    for fn, when in cbs:
        if epoch in when:
            fn(epoch, model, h)


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """``torch.use_deterministic_algorithms`` on (warn only) while training; restored after."""
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)


@dataclasses.dataclass
class _Run:
    """The state of one training run: what a checkpoint stores and restores."""

    model: nn.Module
    #: the training options (``train``'s ``config``)
    config: dict[str, Any]
    start: int = 0

    def __post_init__(self) -> None:
        c = self.config
        self.opt = _optimizer(self.model, c["optimizer"], c["lr"], c["weight_decay"], c["momentum"])
        self.sched = _scheduler(self.opt, c["schedule"], c["epochs"])
        self.gen = torch.Generator().manual_seed(c["seed"])
        self.history = TrainHistory(config=c)

    def restore(self, ckpt: Path) -> None:
        """Continue from the checkpoint ``ckpt`` (made with the same options)."""
        state = load_checkpoint(ckpt)
        made = state["config"]
        diff = {k: (made.get(k), v) for k, v in self.config.items() if made.get(k) != v}
        if diff:
            raise ValueError(
                f"the checkpoint {str(ckpt)!r} was made with other options {{option: (checkpoint, "
                f"now)}} = {diff}; resume with the same options or use another checkpoint_dir."
            )
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if self.sched is not None:
            self.sched.load_state_dict(state["scheduler"])
        self.gen.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        self.history = TrainHistory.from_dict(state["history"])
        self.start = int(state["epoch"])

    def save(self, ckpt: Path, epoch: int) -> None:
        """Write the checkpoint after ``epoch`` atomically."""
        state = {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": None if self.sched is None else self.sched.state_dict(),
            "rng": {"generator": self.gen.get_state(), "torch": torch.get_rng_state()},
            "history": self.history.to_dict(),
            "config": self.config,
        }
        with atomic_path(ckpt) as tmp:
            torch.save(state, tmp)

    def fit(
        self,
        X: torch.Tensor,
        y: torch.Tensor,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        cbs: list[tuple[Callback, set[int]]],
        ckpt: Path | None,
        checkpoint_every: int,
        progress: bool,
    ) -> None:
        """The epochs left (callbacks at 0 first when starting anew), with checkpoints."""
        epochs = self.config["epochs"]
        if self.start == 0:
            _call(cbs, 0, self.model, self.history)
        left = range(self.start + 1, epochs + 1)
        for epoch in progress_bar(left, progress=progress, desc="train", total=len(left)):
            self.epoch(epoch, X, y, loss_fn, self.config["batch_size"])
            # callbacks before the checkpoint: a run killed in between redoes the epoch and its
            # callbacks on resume, so a callback's output (e.g. a capture) is never skipped
            _call(cbs, epoch, self.model, self.history)
            if ckpt is not None and (epoch % checkpoint_every == 0 or epoch == epochs):
                self.save(ckpt, epoch)

    def epoch(
        self,
        epoch: int,
        X: torch.Tensor,
        y: torch.Tensor,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        batch_size: int,
    ) -> None:
        """One epoch: SGD steps on shuffled mini-batches, the schedule's step, the evaluation."""
        t0 = time.perf_counter()
        model, opt, n = self.model, self.opt, X.shape[0]
        model.train()
        lr_now = float(opt.param_groups[0]["lr"])
        perm = torch.randperm(n, generator=self.gen).to(X.device)
        total = 0.0
        for s in range(0, n, batch_size):
            idx = perm[s : s + batch_size]
            opt.zero_grad(set_to_none=True)
            batch_loss = loss_fn(model(X[idx]), y[idx])
            batch_loss.backward()
            opt.step()
            total += float(batch_loss.detach()) * len(idx)
        if self.sched is not None:
            self.sched.step()
        ev_loss, ev_acc = _evaluate(model, X, y, loss_fn, max(batch_size, 1024))
        self.history = self.history.append(
            epochs=epoch,
            loss=ev_loss,
            accuracy=ev_acc,
            train_loss=total / n,
            lr=lr_now,
            seconds=time.perf_counter() - t0,
            weight_norms=weight_norms(model),
        )


def _evaluate(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch_size: int,
) -> tuple[float, float]:
    """Loss and accuracy on ``(X, y)`` in eval mode, without gradients."""
    was = model.training
    model.eval()
    total = 0.0
    correct = 0
    with torch.no_grad():
        for s in range(0, X.shape[0], batch_size):
            out = model(X[s : s + batch_size])
            yb = y[s : s + batch_size]
            total += float(loss_fn(out, yb)) * len(yb)
            correct += int((out.argmax(1) == yb).sum())
    model.train(was)
    return total / X.shape[0], correct / X.shape[0]
