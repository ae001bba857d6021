"""Capture a network's block features as a :class:`~otcollapse.measures.Trajectory`.

Forward hooks on the block modules record each block's output (after the residual sum), and a
forward-pre-hook on the first block records its input, layer 0:

$$h_0 = \\mathrm{stem}(x), \\qquad h_{l} = B_l(h_{l-1}), \\quad l = 1..L.$$

Hooks sit on block modules, never on activations: a module such as a ReLU that runs twice per
forward pass would be recorded twice, and capture refuses it. For a block with a non-identity
shortcut ``P`` (a 1x1 convolution where the shape changes) the shortcut image ``P h_{l-1}`` of the
block's input is also recorded, pooled the same way, as ``shortcuts[l - 1]``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from otcollapse._utils import check_device, progress_bar
from otcollapse._validation import check_int
from otcollapse.measures import Trajectory
from otcollapse.nets.common import as_xy, linear_head, place

__all__ = ["capture", "find_blocks", "projection_matrix"]

PoolSpec = Any  # "avg" | "flatten" | ("project", k)


# ---------------------------------------------------------------------------- blocks
def _candidates(model: nn.Module, limit: int = 40) -> list[str]:
    names = [n for n, m in model.named_modules() if n and len(list(m.children())) > 0]
    return names[:limit] + (["..."] if len(names) > limit else [])


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The residual blocks of ``model`` in forward order, as ``(qualified name, module)`` pairs.

    Looked up, in this order: a ``block_modules()`` method, a ``blocks`` ModuleList/Sequential
    (every model of :mod:`otcollapse.nets.resnet`), or torchvision's layout — children
    ``layer1, layer2, ...`` whose children are the blocks (BasicBlock/Bottleneck, by duck typing).

    Raises
    ------
    ValueError
        No blocks found; the message lists candidate module names to pass as ``layers=[...]``.
    """
    ids = {id(m): n for n, m in model.named_modules()}
    mods: list[nn.Module] = []
    if callable(getattr(model, "block_modules", None)):
        mods = list(model.block_modules())
    elif isinstance(getattr(model, "blocks", None), (nn.ModuleList, nn.Sequential)):
        mods = list(model.blocks)
    else:
        stages = sorted(
            (
                (int(m.group(1)), child)
                for name, child in model.named_children()
                if (m := re.fullmatch(r"layer(\d+)", name))
            ),
            key=lambda t: t[0],
        )
        for _, stage in stages:
            mods.extend(stage.children() if len(list(stage.children())) else [stage])
    if not mods:
        raise ValueError(
            f"could not find the blocks of {type(model).__name__}: it has no block_modules() "
            "method, no `blocks` ModuleList and no torchvision-style layer1..layerN stages; pass "
            f"layers=[...] with module names, e.g. from {_candidates(model)}."
        )
    missing = [m for m in mods if id(m) not in ids]
    if missing:
        raise ValueError("block_modules() returned modules that are not submodules of the model.")
    return [(ids[id(m)], m) for m in mods]


def _named_layers(model: nn.Module, names: Sequence[str]) -> list[tuple[str, nn.Module]]:
    table = dict(model.named_modules())
    unknown = [n for n in names if n not in table or n == ""]
    if unknown:
        avail = [n for n in table if n]
        shown = avail[:60] + (["..."] if len(avail) > 60 else [])
        raise ValueError(
            f"no module named {unknown} in {type(model).__name__}; available: {shown}."
        )
    if len(set(names)) != len(names):
        raise ValueError(f"layer names must be distinct; got {list(names)}.")
    return [(n, table[n]) for n in names]


def _shortcut_of(block: nn.Module) -> nn.Module | None:
    """The block's non-identity shortcut module (``shortcut`` or torchvision's ``downsample``)."""
    for attr in ("shortcut", "downsample"):
        sc = getattr(block, attr, None)
        if isinstance(sc, nn.Module) and not isinstance(sc, nn.Identity):
            if isinstance(sc, nn.Sequential) and len(sc) == 0:
                continue
            return sc
    return None


# ---------------------------------------------------------------------------- pooling
def _parse_pool(pool: PoolSpec) -> tuple[str, int]:
    if pool in ("avg", "flatten"):
        return str(pool), 0
    if (
        isinstance(pool, (tuple, list))
        and len(pool) == 2
        and pool[0] == "project"
        and isinstance(pool[1], (int, np.integer))
        and not isinstance(pool[1], bool)
        and pool[1] >= 1
    ):
        return "project", int(pool[1])
    raise ValueError(
        f"invalid pool {pool!r}; use 'avg' (global average over spatial axes), 'flatten', or "
        "('project', k) with k a positive int (seeded Gaussian projection of the flattened map)."
    )


def projection_matrix(dim: int, k: int, seed: int = 0) -> torch.Tensor:
    """The Gaussian map ``G / sqrt(k)`` that ``capture(..., pool=("project", k), seed=seed)``
    applies to flattened feature maps of dimension ``dim``.

    $$G_{ij} \\sim N(0, 1), \\qquad \\mathbb E\\,\\lVert (G/\\sqrt k)^\\top v\\rVert^2 =
    \\lVert v\\rVert^2,$$

    drawn on the CPU by a ``torch.Generator`` seeded with ``(seed * 1_000_003 + dim) mod 2^63``:
    one matrix per input dimension, the same for every batch and every layer of that dimension.
    For a fixed ``v`` the ratio ``||(G/√k)^T v||^2 / ||v||^2`` follows ``χ²_k / k``
    (Johnson–Lindenstrauss).

    Returns
    -------
    Tensor, shape (dim, k), float32 on the CPU

    Examples
    --------
    >>> projection_matrix(1024, 64, seed=0).shape
    torch.Size([1024, 64])
    """
    dim = check_int(dim, "dim", minimum=1)
    k = check_int(k, "k", minimum=1)
    gen = torch.Generator().manual_seed((check_int(seed, "seed") * 1_000_003 + dim) % (2**63))
    return torch.randn(dim, k, generator=gen, dtype=torch.float32) / k**0.5


class _Pooler:
    """Pools a feature map to a vector; random projections are fixed per input dimension."""

    def __init__(self, mode: str, k: int, seed: int) -> None:
        self.mode, self.k, self.seed = mode, k, seed
        self._maps: dict[tuple[int, str], torch.Tensor] = {}

    def matrix(self, dim: int, device: torch.device) -> torch.Tensor:
        key = (dim, str(device))
        if key not in self._maps:
            self._maps[key] = projection_matrix(dim, self.k, self.seed).to(device)
        return self._maps[key]

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        h = h.float()
        if self.mode == "avg":
            return h.mean(dim=tuple(range(2, h.ndim))) if h.ndim > 2 else h
        h = h.reshape(h.shape[0], -1)
        if self.mode == "project" and h.shape[1] > self.k:
            h = h @ self.matrix(int(h.shape[1]), h.device)
        return h


# ---------------------------------------------------------------------------- data
Batches = Iterator[tuple[torch.Tensor, torch.Tensor | None]]


def _as_batches(data: Any, batch_size: int) -> tuple[int, Batches]:
    """``(n, iterator of (x, y))`` for a Dataset, an ``(X, y)`` pair, a tensor or a torch Dataset."""
    is_xy = hasattr(data, "X") and hasattr(data, "y")
    if isinstance(data, torch.utils.data.DataLoader):
        return len(data.dataset), _loader_batches(data)  # type: ignore[arg-type]
    if isinstance(data, torch.utils.data.Dataset) and not is_xy:
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
        return len(data), _loader_batches(loader)  # type: ignore[arg-type]
    X, y = as_xy(
        data,
        purpose="capture",
        labels=False,
        convert=False,
        others="a torch Dataset or DataLoader (not shuffled)",
    )
    n = int(X.shape[0])

    def gen() -> Batches:
        for s in range(0, n, batch_size):
            yield X[s : s + batch_size], None if y is None else y[s : s + batch_size]

    return n, gen()


def _loader_batches(loader: torch.utils.data.DataLoader) -> Batches:
    for batch in loader:
        if isinstance(batch, (tuple, list)):
            yield batch[0], batch[1] if len(batch) > 1 else None
        else:
            yield batch, None


class _Sink:
    """Collects one layer's rows: in memory, or into a .npy memory map."""

    def __init__(self, n: int, path: Path | None) -> None:
        self.n, self.path, self.rows = n, path, 0
        self.parts: list[np.ndarray] = []
        self.mm: np.memmap | None = None
        self.tmp: Path | None = None

    def add(self, block: torch.Tensor) -> None:
        arr = block.detach().to("cpu", torch.float32).numpy()
        if self.path is None:
            self.parts.append(arr)
        else:
            if self.mm is None:
                self.tmp = self.path.with_name(f".{self.path.name}.partial")
                self.mm = np.lib.format.open_memmap(
                    self.tmp, mode="w+", dtype=np.float32, shape=(self.n, arr.shape[1])
                )
            self.mm[self.rows : self.rows + len(arr)] = arr
        self.rows += len(arr)

    def discard(self) -> None:
        """Remove a partial memory-map file (after a failed capture)."""
        self.mm = None
        if self.tmp is not None and self.tmp.exists():
            self.tmp.unlink()

    def result(self) -> np.ndarray:
        if self.rows != self.n:
            raise RuntimeError(f"captured {self.rows} rows, expected {self.n}.")
        if self.path is None:
            return np.concatenate(self.parts)
        assert self.mm is not None and self.tmp is not None
        self.mm.flush()
        del self.mm
        self.mm = None
        os.replace(self.tmp, self.path)
        # copy-on-write: torch takes it without a read-only warning; the file is never written
        return np.load(self.path, mmap_mode="c")


# ---------------------------------------------------------------------------- capture
def capture(
    model: nn.Module,
    data: Any,
    *,
    layers: str | Sequence[str] = "blocks",
    pool: PoolSpec = "avg",
    device: Any = None,
    batch_size: int = 256,
    split: str | None = None,
    progress: bool = False,
    seed: int = 0,
    memmap_dir: str | os.PathLike | None = None,
) -> Trajectory:
    """Record the features of every block of ``model`` on ``data`` as a Trajectory.

    Layer 0 is the input of the first hooked module (the stem's output for ``layers="blocks"``),
    layer ``l`` the output of the ``l``-th module. The model runs in eval mode without gradients,
    in batches, in float32; its training mode is restored afterwards.

    Pooling (``pool``) turns a feature map of shape (C, H, W) into a vector:
    ``"avg"`` — global average ``(1/HW) sum_{ij} h_{c,ij}``, giving C features (vectors are kept);
    ``"flatten"`` — all ``C H W`` values; ``("project", k)`` — the flattened map times a seeded
    Gaussian matrix ``G / sqrt(k)`` (``G_{ij} ~ N(0, 1)``, shape (CHW, k)), one matrix per input
    dimension, the same for every batch and every layer of that dimension, so that squared
    distances are preserved in expectation (Johnson–Lindenstrauss; :func:`projection_matrix`
    gives the matrix); maps of dimension ``<= k`` are flattened only.

    Parameters
    ----------
    model : nn.Module
        A model of :mod:`otcollapse.nets`, a torchvision ResNet, or any model with a
        ``block_modules()`` method or a ``blocks`` ModuleList; otherwise name ``layers``.
    data : Dataset, (X, y), Tensor, torch Dataset or DataLoader
        The samples, in a fixed order (a DataLoader must not shuffle).
    layers : "blocks" or list of str
        ``"blocks"`` finds the blocks (:func:`find_blocks`); a list gives module names from
        ``model.named_modules()``, hooked in the order given.
    pool : "avg", "flatten" or ("project", k)
    device : str or torch device, optional
        Where to run; default the model's device. The model is moved there (in place). A device
        that does not exist here (``"gpu"``, ``"cuda"`` without a CUDA GPU, a GPU index beyond
        the count) is a ValueError listing the available ones.
    batch_size : int
        The features do not depend on it (eval mode).
    split : str, optional
        Which split the data are, recorded in the metadata; default the data's own ``split``
        attribute, else ``"train"`` (the terminal phase is about training data).
    progress : bool
        A tqdm progress bar over batches (on a terminal only).
    seed : int
        Seed of the random projection.
    memmap_dir : path, optional
        Stream every layer (and shortcut image) to ``layerNNN.npy`` / ``shortcutNNN.npy`` memory
        maps in this folder instead of RAM; the trajectory holds memory maps (copy-on-write: a
        change to them never reaches the files).

    Returns
    -------
    Trajectory
        Layers (float32), labels, names (``"stem"`` or ``"input"``, then module names),
        ``shortcuts`` for blocks with a dimension-changing shortcut, ``logits = model(x)``, the
        ``classifier`` ``(W, b)`` of the linear head when it applies to the last layer, and
        ``metadata`` (split, pool, model class, n, data provenance, and ``stream_shapes``: the
        shape of the feature map or vector each layer was taken from, before pooling, which
        splits :attr:`Trajectory.segments` between the stages of a ResNet in every space).

    Raises
    ------
    ValueError
        No identifiable blocks (candidate names listed), unknown layer names (available ones
        listed), an invalid pool spec, a hooked module that runs more than once per forward pass,
        unreadable, complex or empty data, a device that does not exist here.

    Examples
    --------
    >>> from otcollapse.nets import ResidualMLP
    >>> net = ResidualMLP(8, 16, 3, 2)
    >>> traj = capture(net, (torch.randn(20, 8), torch.arange(20) % 2))
    >>> traj.names, traj.dims
    (('stem', 'blocks.0', 'blocks.1', 'blocks.2'), (16, 16, 16, 16))
    """
    mode, k = _parse_pool(pool)
    pooler = _Pooler(mode, k, check_int(seed, "seed"))
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    dev_given = None if device is None else check_device(device)
    hooked, first_name = _hooked_modules(model, layers)
    dev = place(model, dev_given)
    n, batches = _as_batches(data, batch_size)
    if n == 0:
        raise ValueError("the data set is empty; capture needs at least one sample.")
    mdir = None if memmap_dir is None else Path(memmap_dir)
    if mdir is not None:
        mdir.mkdir(parents=True, exist_ok=True)
    rec = _Recorder(hooked, pooler, n, mdir)
    n_batches = -(-n // batch_size)
    rec.run(model, progress_bar(batches, progress=progress, desc="capture", total=n_batches), dev)
    feats, shortcuts = rec.results()
    logits = np.concatenate(rec.logits)
    meta = _metadata(model, data, split, pool=mode if mode != "project" else ["project", k])
    meta.update(
        {
            "n": n,
            "seed": int(seed),
            "layers": "blocks" if isinstance(layers, str) else list(layers),
            "stream_shapes": rec.shapes,
        }
    )
    if mdir is not None:
        meta["memmap_dir"] = str(mdir)
    if rec.unchained:
        meta["shortcuts_skipped"] = sorted(rec.unchained)
    return Trajectory.from_arrays(
        feats,
        labels=np.concatenate(rec.labels) if rec.labels else None,
        names=[first_name, *[nm for nm, _ in hooked]],
        shortcuts=shortcuts,
        classifier=_classifier(model, feats[-1].shape[1], logits, meta),
        logits=logits if logits.ndim == 2 else None,
        metadata=meta,
    )


def _metadata(model: nn.Module, data: Any, split: str | None, pool: Any) -> dict[str, Any]:
    """What a captured trajectory records about where it came from (the rest is added)."""
    meta: dict[str, Any] = {
        "source": "otcollapse.nets.capture",
        "model": type(model).__name__,
        "split": split if split is not None else str(getattr(data, "split", "train")),
        "pool": pool,
        "dtype": "float32",
    }
    if hasattr(data, "name"):
        meta["dataset"] = str(data.name)
    if isinstance(getattr(data, "provenance", None), dict):
        meta["data_provenance"] = data.provenance
    return meta


def _hooked_modules(
    model: nn.Module, layers: str | Sequence[str]
) -> tuple[list[tuple[str, nn.Module]], str]:
    """The modules ``layers`` names (``"blocks"``: :func:`find_blocks`) and layer 0's name."""
    if isinstance(layers, str):
        if layers != "blocks":
            raise ValueError(f"layers must be 'blocks' or a list of module names; got {layers!r}.")
        return find_blocks(model), "stem"
    hooked = _named_layers(model, list(layers))
    if not hooked:
        raise ValueError("layers is empty; give at least one module name.")
    return hooked, "input"


def _classifier(
    model: nn.Module, last_dim: int, logits: np.ndarray, meta: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """``(W, b)`` of the linear head when it maps the last layer to the logits (else a note in
    ``meta`` says why it was not recorded)."""
    head = linear_head(model)
    if head is None or logits.ndim != 2:
        return None
    if head.in_features == last_dim and head.out_features == logits.shape[1]:
        W = head.weight.detach().to("cpu", torch.float64).numpy()
        b = None if head.bias is None else head.bias.detach().to("cpu", torch.float64).numpy()
        return W, b
    meta["classifier"] = (
        f"not recorded: the head takes {head.in_features} features, the last layer has "
        f"{last_dim} (use pool='avg')"
    )
    return None


class _Recorder:
    """The hooks of one capture: layer 0 (the first module's input), every hooked module's
    output, the shortcut images ``P h`` of blocks with a shortcut, the logits and the labels."""

    def __init__(
        self, hooked: list[tuple[str, nn.Module]], pooler: _Pooler, n: int, mdir: Path | None
    ) -> None:
        self.hooked, self.pooler = hooked, pooler
        self.sinks = [
            _Sink(n, None if mdir is None else mdir / f"layer{i:03d}.npy")
            for i in range(len(hooked) + 1)
        ]
        self.shortcut_mods = {i: _shortcut_of(m) for i, (_, m) in enumerate(hooked)}
        # shortcuts[i] = P h_i: block i maps layer i
        self.shortcut_sinks = {
            i: _Sink(n, None if mdir is None else mdir / f"shortcut{i:03d}.npy")
            for i, sc in self.shortcut_mods.items()
            if sc is not None
        }
        self.logits: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.unchained: set[str] = set()
        self.shapes: list[list[int] | None] = [None] * (len(hooked) + 1)
        self.calls = [0] * len(hooked)
        self.pre_calls = 0
        self.prev: Any = None

    def _add(self, i: int, h: torch.Tensor) -> None:
        """Layer ``i``'s batch ``h``: its stream shape noted, pooled, recorded."""
        if self.shapes[i] is None:
            self.shapes[i] = [int(v) for v in h.shape[1:]]
        self.sinks[i].add(self.pooler(h))

    def pre_hook(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        self.pre_calls += 1
        if self.pre_calls == 1:
            self.prev = inputs[0]
            self._add(0, inputs[0])

    def hook(self, i: int) -> Any:
        name = self.hooked[i][0]

        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            self.calls[i] += 1
            if self.calls[i] > 1:
                raise ValueError(
                    f"module {name!r} ran {self.calls[i]} times in one forward pass; hook "
                    "modules that run once (blocks), not shared activations such as a ReLU."
                )
            out = output[0] if isinstance(output, (tuple, list)) else output
            self._add(i + 1, out)
            if i in self.shortcut_sinks:
                if inputs[0] is not self.prev:
                    self.unchained.add(name)
                else:
                    sc = self.shortcut_mods[i]
                    self.shortcut_sinks[i].add(self.pooler(sc(inputs[0])))  # type: ignore[misc]
            self.prev = out

        return hook

    def run(self, model: nn.Module, batches: Iterable[Any], dev: torch.device) -> None:
        """One forward pass per batch in eval mode without gradients (the mode is restored)."""
        handles = [self.hooked[0][1].register_forward_pre_hook(self.pre_hook)]
        handles += [m.register_forward_hook(self.hook(i)) for i, (_, m) in enumerate(self.hooked)]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for xb, yb in batches:
                    self._batch(model, xb, yb, dev)
        except BaseException:
            for sink in [*self.sinks, *self.shortcut_sinks.values()]:
                sink.discard()
            raise
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)

    def _batch(
        self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor | None, dev: torch.device
    ) -> None:
        self.pre_calls = 0
        self.calls = [0] * len(self.hooked)
        self.prev = None
        out = model(xb.to(dev, torch.float32) if xb.is_floating_point() else xb.to(dev))
        missed = [self.hooked[i][0] for i, c in enumerate(self.calls) if c == 0]
        if missed:
            raise ValueError(f"modules {missed} did not run in the forward pass.")
        out = out[0] if isinstance(out, (tuple, list)) else out
        self.logits.append(out.detach().to("cpu", torch.float32).numpy())
        if yb is not None:
            self.labels.append(np.asarray(yb).reshape(-1))

    def results(self) -> tuple[list[np.ndarray], dict[int, np.ndarray]]:
        """The layers and the shortcut images of the blocks whose input was the previous output."""
        feats = [s.result() for s in self.sinks]
        shortcuts = {
            i: s.result()
            for i, s in self.shortcut_sinks.items()
            if self.hooked[i][0] not in self.unchained
        }
        return feats, shortcuts
