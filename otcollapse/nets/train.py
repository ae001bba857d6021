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

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from otcollapse._utils import (
    atomic_path,
    check_device,
    check_finite,
    check_not_complex,
    progress_bar,
)
from otcollapse._validation import check_int, check_labels, check_real

__all__ = ["CHECKPOINT_NAME", "TrainHistory", "load_checkpoint", "train"]

CHECKPOINT_NAME = "checkpoint.pt"

Callback = Callable[[int, nn.Module, "TrainHistory"], Any]

_FIELDS = ("epochs", "loss", "accuracy", "train_loss", "lr", "seconds", "weight_norms")


@dataclasses.dataclass(frozen=True)
class TrainHistory:
    """Per-epoch record of a training run (one entry per completed epoch).

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

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record."""
        out: dict[str, Any] = {f: list(getattr(self, f)) for f in _FIELDS}
        out["weight_norms"] = [dict(w) for w in self.weight_norms]
        out["config"] = dict(self.config)
        out["terminal_epoch"] = self.terminal_epoch
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainHistory:
        """Inverse of :meth:`to_dict`."""
        kw: dict[str, Any] = {f: tuple(d.get(f, ())) for f in _FIELDS}
        kw["epochs"] = tuple(int(e) for e in kw["epochs"])
        kw["weight_norms"] = tuple(dict(w) for w in kw["weight_norms"])
        return cls(**kw, config=dict(d.get("config", {})))


# ---------------------------------------------------------------------------- helpers
def _xy(data: Any, purpose: str = "train on") -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, y)`` of a Dataset or a pair, as float32 and int64 tensors, with shape checks."""
    if hasattr(data, "X") and hasattr(data, "y"):
        X, y = data.X, data.y
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        X, y = data
    else:
        raise ValueError(
            f"cannot {purpose} data of type {type(data).__name__}; give an otcollapse Dataset or "
            "an (X, y) pair of arrays/tensors."
        )
    check_not_complex(X, "the inputs X")
    X = X if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X))
    if X.ndim < 1 or X.shape[0] == 0:
        raise ValueError("the data set is empty.")
    n = int(X.shape[0])
    y_shape = tuple(y.shape) if hasattr(y, "shape") else (len(y),)
    if len(y_shape) == 1 and y_shape[0] != n:
        raise ValueError(f"{y_shape[0]} labels for {n} samples; give one per sample.")
    # integer class indices: 0.5 or NaN would otherwise be truncated to a class silently
    y = torch.as_tensor(check_labels(y, n))
    X = X.float()
    check_finite(X, "the inputs X")
    return X, y


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


def _weight_norms(model: nn.Module) -> dict[str, float]:
    return {
        n: float(p.detach().double().norm()) for n, p in model.named_parameters() if p.ndim >= 2
    }


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


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


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
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int; got {epochs!r}.")
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    checkpoint_every = check_int(checkpoint_every, "checkpoint_every", minimum=1)
    lr = check_real(lr, "lr (the learning rate)", minimum=0.0, open_min=True)
    weight_decay = check_real(weight_decay, "weight_decay", minimum=0.0)
    momentum = check_real(momentum, "momentum", minimum=0.0, maximum=1.0, open_max=True)
    seed = check_int(seed, "seed")
    dev_given = None if device is None else check_device(device)
    X, y = _xy(data)
    n_out = None
    head = getattr(model, "head", getattr(model, "fc", None))
    if isinstance(head, nn.Linear):
        n_out = head.out_features
    n_classes = n_out if n_out is not None else int(y.max()) + 1
    if int(y.max()) >= n_classes or int(y.min()) < 0:
        raise ValueError(f"labels must lie in 0..{n_classes - 1} (the model's outputs).")
    loss_fn = _loss_fn(loss, n_classes)
    if dev_given is None:
        p = next(iter(model.parameters()), None)
        dev = p.device if p is not None else torch.device("cpu")
    else:
        dev = dev_given
        model.to(dev)
    X, y = X.to(dev), y.to(dev)
    opt = _optimizer(model, optimizer, lr, weight_decay, momentum)
    sched = _scheduler(opt, schedule, epochs)
    cbs = _callbacks(callbacks, epochs)
    config = {
        "epochs": epochs,
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "loss": loss,
        "optimizer": optimizer,
        "momentum": float(momentum),
        "schedule": schedule,
        "batch_size": int(batch_size),
        "seed": int(seed),
        "n": int(X.shape[0]),
    }
    gen = torch.Generator().manual_seed(int(seed))
    history = TrainHistory(config=config)
    start = 0
    ckpt = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
    if resume and ckpt is None:
        raise ValueError("resume=True needs checkpoint_dir.")
    if resume and ckpt is not None and ckpt.exists():
        state = load_checkpoint(ckpt)
        diff = {
            k: (state["config"].get(k), v) for k, v in config.items() if state["config"].get(k) != v
        }
        if diff:
            raise ValueError(
                f"the checkpoint {str(ckpt)!r} was made with other options {{option: (checkpoint, "
                f"now)}} = {diff}; resume with the same options or use another checkpoint_dir."
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        gen.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        history = TrainHistory.from_dict(state["history"])
        start = int(state["epoch"])

    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        if start == 0:
            for fn, when in cbs:
                if 0 in when:
                    fn(0, model, history)
        n = X.shape[0]
        for epoch in progress_bar(
            range(start + 1, epochs + 1), progress=progress, desc="train", total=epochs - start
        ):
            t0 = time.perf_counter()
            model.train()
            lr_now = float(opt.param_groups[0]["lr"])
            perm = torch.randperm(n, generator=gen).to(dev)
            total = 0.0
            for s in range(0, n, batch_size):
                idx = perm[s : s + batch_size]
                opt.zero_grad(set_to_none=True)
                batch_loss = loss_fn(model(X[idx]), y[idx])
                batch_loss.backward()
                opt.step()
                total += float(batch_loss.detach()) * len(idx)
            if sched is not None:
                sched.step()
            ev_loss, ev_acc = _evaluate(model, X, y, loss_fn, max(batch_size, 1024))
            history = history.append(
                epochs=epoch,
                loss=ev_loss,
                accuracy=ev_acc,
                train_loss=total / n,
                lr=lr_now,
                seconds=time.perf_counter() - t0,
                weight_norms=_weight_norms(model),
            )
            # callbacks before the checkpoint: a run killed in between redoes the epoch and its
            # callbacks on resume, so a callback's output (e.g. a capture) is never skipped
            for fn, when in cbs:
                if epoch in when:
                    fn(epoch, model, history)
            if ckpt is not None and (epoch % checkpoint_every == 0 or epoch == epochs):
                _save_checkpoint(
                    ckpt,
                    {
                        "epoch": epoch,
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "scheduler": None if sched is None else sched.state_dict(),
                        "rng": {"generator": gen.get_state(), "torch": torch.get_rng_state()},
                        "history": history.to_dict(),
                        "config": config,
                    },
                )
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
    return history


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
