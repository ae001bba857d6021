"""The settings of ``otcollapse run`` (:class:`RunConfig`) and the data set they name.

``RunConfig.data`` is a built-in data set or a ``.npz`` file / image folder on disk;
:func:`load_run_data` reads it, :func:`read_data_file` reads one on disk with the words of
``otcollapse analyze`` for a damaged file.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

from otcollapse._utils import check_device, json_safe
from otcollapse._validation import check_int, check_real
from otcollapse.data import Dataset, dataset_names, from_folder, load_dataset
from otcollapse.io import open_npz
from otcollapse.nets import RESNET_LAYOUTS

__all__ = [
    "AUTO_DEVICE",
    "MODELS",
    "RESNETS",
    "SPACES",
    "TWINS",
    "RunConfig",
    "check_model",
    "load_run_data",
    "load_splits",
    "read_data_file",
    "resolve_device",
]

MODELS = ("mlp", "conv", "resnet18", "resnet34")
#: the staged ResNets: blocks per stage (``otcollapse.nets.RESNET_LAYOUTS``); widths
#: ``width * (1, 2, 4, 8)``, so ``RunConfig.width`` is their base width
RESNETS = RESNET_LAYOUTS
#: the ``device`` that picks CUDA when torch sees a GPU, else the CPU
AUTO_DEVICE = "auto"
#: the feature space a conv model's layers are captured in (an MLP's are vectors in every case):
#: RunConfig.space -> otcollapse.nets.capture's pool
SPACES = {"pooled": "avg", "stream": "flatten", "projected": "project"}
#: The two networks every run trains: the residual network and its plain twin.
TWINS = (("resnet", False), ("plain", True))

_POSITIVE_INTS = (
    "width",
    "blocks",
    "epochs",
    "batch_size",
    "seeds",
    "mufm_samples",
    "project_dim",
)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Settings of ``otcollapse run`` (all recorded in ``metrics.json``).

    Attributes
    ----------
    data : str
        A built-in data set (``otcollapse.data.dataset_names()``) or a ``.npz`` file / image
        folder already on disk (``otcollapse.data.from_folder``).
    model : {"mlp", "conv", "resnet18", "resnet34"}
        ``ResidualMLP`` (constant width), ``ConvResNet`` (constant-width convolutional, no
        downsampling), or the CIFAR-style ResNet-18 / ResNet-34 (``otcollapse.nets.ResNet``:
        four stages of ``(2, 2, 2, 2)`` / ``(3, 4, 6, 3)`` BasicBlocks of widths
        ``width * (1, 2, 4, 8)``, a stride-2 block with a 1x1 shortcut ``P`` opening each later
        stage); the plain twin is the same network without skip connections (and without ``P``).
    width : int
        Features (mlp) or channels (conv) of every block; the *base* width of a ResNet-18/34
        (its first stage; 64 is He et al.'s).
    blocks : int
        Residual blocks of an mlp or conv model; the trajectory has ``blocks + 1`` layers. A
        ResNet-18/34 has its own layout (8 / 16 blocks, so 9 / 17 layers: the stem, then one per
        block): ``blocks`` must be left at its default there.
    epochs, lr, weight_decay, batch_size : training (SGD with momentum 0.9, cosine schedule).
    seed : int
        Seeds the data split, the initialisation and the batch order.
    seeds : int
        Number of seeds ``seed, seed+1, ...`` run and aggregated.
    capture_epochs : tuple of int, optional
        Epochs at which the trajectories are captured (0 = initialisation, the baseline);
        default ``0, E/4, E/2, 3E/4, E``.
    splits : tuple of str
        Captured splits: ``("train",)`` or ``("train", "test")``; analyses of the last epoch run
        on each.
    max_samples : int, optional
        Analyse a seeded, class-stratified subsample of this many samples (at least 20).
    mufm : bool
        Fit and calibrate the MUFM to the ResNet's last-epoch trajectory.
    mufm_samples : int
        Samples (stratified subsample) the MUFM is fitted on.
    mufm_grid : tuple of float
        λ_OT grid of the calibration (refined by a 1-D search around the best point).
    mufm_tol : float
        Convergence tolerance of every MUFM fit (``fit_mufm``'s ``tol``). A ResNet-18/34 is
        calibrated on its last stage (the segment that feeds the classifier).
    device : str
        Torch device of every stage: training, capture, and the analyses and MUFM fits (the
        trajectory is moved there; results come back as NumPy / Python numbers). ``"cpu"``,
        ``"cuda"``, ``"cuda:<i>"``, ``"mps"``, or ``"auto"``: CUDA when torch sees a GPU, else
        the CPU (:func:`resolve_device`; ``metrics.json`` records the device used). It enters
        no stage key: it says where a stage runs, not what it computes.
    space : {"pooled", "stream", "projected"}
        The feature space of a conv model's layers: global-average-pooled channels, the
        residual stream flattened (C·H·W), or a seeded Gaussian projection of the flattened
        stream to ``project_dim`` dimensions (``otcollapse.nets.capture``'s ``pool``). An MLP's
        layers are vectors in every space. Recorded with every result.
    project_dim : int
        Dimension of the ``"projected"`` space.
    n_boot : int
        Subsampling replicates of the geodesic tests (intervals of OTS, efficiency, LSS and the
        path ratio; 0 for none).
    quick : bool
        Whether these are the ``--quick`` settings (recorded only).

    Raises
    ------
    TypeError
        A size that is not an integer, a rate that is not a real number.
    ValueError
        An unknown model or space, a size below 1, a negative ``n_boot``, a negative or
        non-finite rate, bad splits, capture epochs outside ``0..epochs``, an empty λ_OT grid, a
        device that does not exist here (``"cuda"`` without a CUDA GPU), a ``blocks`` other
        than the default for a ResNet-18/34.
    """

    data: str = "digits"
    model: str = "mlp"
    width: int = 64
    blocks: int = 6
    epochs: int = 60
    lr: float = 0.05
    weight_decay: float = 5e-4
    batch_size: int = 128
    seed: int = 0
    seeds: int = 1
    capture_epochs: tuple[int, ...] | None = None
    splits: tuple[str, ...] = ("train",)
    max_samples: int | None = None
    mufm: bool = True
    mufm_samples: int = 300
    mufm_grid: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2)
    mufm_tol: float = 1e-9
    device: str = "cpu"
    space: str = "pooled"
    project_dim: int = 256
    n_boot: int = 20
    quick: bool = False

    @classmethod
    def quick_preset(cls, **overrides: Any) -> RunConfig:
        """The ``--quick`` settings: a small net, few epochs, a small MUFM.

        mlp / conv: width 32, 4 blocks, 12 epochs (about a minute on 2 cores). resnet18 /
        resnet34: base width 8 (widths 8, 16, 32, 64), 6 epochs, no subsampling intervals
        (``n_boot=0``) — a ResNet-18 run on ``shapes32`` (4,500 training images of 32x32x3)
        takes about three minutes on 2 cores (``docs/networks.md`` has the measured time).
        Analysed: a stratified subsample of 600 samples; the MUFM on 150.
        """
        base: dict[str, Any] = {
            "width": 32,
            "blocks": 4,
            "epochs": 12,
            "max_samples": 600,
            "mufm_samples": 150,
            "mufm_grid": (1e-4, 1e-3, 1e-2),
            "quick": True,
        }
        if overrides.get("model") in RESNETS:
            del base["blocks"]  # the layout fixes them
            # a few epochs leave NC1 near 1, where fits at the default tolerance take thousands
            # of iterations; at 1e-6 they converge in a few hundred to the same objective (1e-9)
            base.update({"width": 8, "epochs": 6, "n_boot": 0, "mufm_tol": 1e-6})
        base.update(overrides)
        return cls(**base)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; use one of {list(MODELS)}.")
        default_blocks = next(f.default for f in dataclasses.fields(self) if f.name == "blocks")
        if self.model in RESNETS and self.blocks != default_blocks:
            raise ValueError(
                f"blocks={self.blocks!r} does not apply to model={self.model!r}: its layout is "
                f"fixed ({', '.join(map(str, RESNETS[self.model]))} blocks per stage, "
                f"{sum(RESNETS[self.model])} in all); leave blocks (--blocks) out, or use model "
                "'conv' for a constant-width ResNet of any depth."
            )
        for name in _POSITIVE_INTS:
            check_int(getattr(self, name), name, minimum=1)
        check_real(self.lr, "lr", minimum=0.0, open_min=True)
        check_real(self.weight_decay, "weight_decay", minimum=0.0)
        bad = [s for s in self.splits if s not in ("train", "test")]
        if bad or "train" not in self.splits:
            raise ValueError(f"splits must be ('train',) or ('train', 'test'); got {self.splits}.")
        if self.max_samples is not None:
            check_int(self.max_samples, "max_samples", minimum=20)
        if any(not 0 <= e <= self.epochs for e in self.epochs_captured()):
            raise ValueError(f"capture_epochs must lie in 0..{self.epochs}.")
        resolve_device(self.device)
        if self.space not in SPACES:
            raise ValueError(f"unknown space {self.space!r}; use one of {list(SPACES)}.")
        check_int(self.n_boot, "n_boot", minimum=0)
        if not self.mufm_grid:
            raise ValueError("mufm_grid must hold positive λ_OT values.")
        for g in self.mufm_grid:
            check_real(g, "each mufm_grid value (λ_OT)", minimum=0.0, open_min=True)
        check_real(self.mufm_tol, "mufm_tol", minimum=0.0, open_min=True)

    def epochs_captured(self) -> tuple[int, ...]:
        """The epochs captured: ``capture_epochs`` and the last epoch, or the default five."""
        if self.capture_epochs is not None:
            return tuple(sorted({int(e) for e in self.capture_epochs} | {self.epochs}))
        E = self.epochs
        return tuple(sorted({0, E // 4, E // 2, (3 * E) // 4, E}))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe record of every setting (``capture_epochs`` as captured)."""
        d = dataclasses.asdict(self)
        d["capture_epochs"] = list(self.epochs_captured())
        return json_safe(d)

    def resolved_device(self) -> str:
        """The device the stages run on: ``device``, with ``"auto"`` resolved here."""
        return resolve_device(self.device)

    def layout(self) -> tuple[int, ...] | None:
        """Blocks per stage of a ResNet-18/34 (None for the constant-width models)."""
        return RESNETS.get(self.model)

    def n_blocks(self) -> int:
        """The residual blocks of the model (the trajectory has one more layer: the stem)."""
        layout = self.layout()
        return self.blocks if layout is None else sum(layout)

    def widths(self) -> tuple[int, ...]:
        """The width of each stage: ``(width,)``, or ``width * (1, 2, 4, 8)`` for a ResNet."""
        return (
            (self.width,) if self.layout() is None else tuple(self.width * m for m in (1, 2, 4, 8))
        )

    def describe_model(self) -> str:
        """The model in words, e.g. ``"resnet18 (widths 8, 16, 32, 64; blocks 2, 2, 2, 2)"``."""
        layout = self.layout()
        if layout is None:
            return f"{self.model}, width {self.width}, {self.blocks} blocks"
        widths = ", ".join(map(str, self.widths()))
        return f"{self.model} (widths {widths}; blocks {', '.join(map(str, layout))})"


def resolve_device(device: str) -> str:
    """``device`` as the name of a device that exists here; ``"auto"``: ``"cuda"`` when torch
    sees a CUDA GPU, else ``"cpu"``.

    Raises
    ------
    ValueError
        A device that does not exist here, e.g. ``"cuda"`` without a CUDA GPU (one line that
        lists the available devices; the command line prints it and exits with status 2).
    """
    if device == AUTO_DEVICE:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = check_device(device)
    except ValueError as err:
        raise ValueError(
            f"{err} Use device='auto' to take a GPU only where there is one."
        ) from None
    return str(dev)


# ---------------------------------------------------------------------------- the data set
def load_run_data(config: RunConfig, split: str, seed: int) -> Dataset:
    """The ``split`` of the data set ``config.data`` names (a data set on disk has one split).

    A built-in data set is generated once per process and split (the stages of a run all read
    it: ``shapes32`` takes seconds to draw); every caller gets the same, unmodified object.
    """
    if config.data in dataset_names():
        return _builtin(config.data, split, seed)
    path = Path(config.data)
    if not path.exists():
        raise ValueError(
            f"unknown data set {config.data!r}: not a built-in one ({list(dataset_names())}) "
            "and no such file or folder."
        )
    if split != "train":
        raise ValueError("a user data set on disk has one split: capture splits=('train',).")
    return read_data_file(path)


@functools.lru_cache(maxsize=4)
def _builtin(name: str, split: str, seed: int) -> Dataset:
    return load_dataset(name, split=split, seed=seed)


def read_data_file(path: str | Path) -> Dataset:
    """``from_folder(path)``; a damaged ``.npz`` gets the words of ``otcollapse analyze``."""
    path = Path(path)
    try:
        return from_folder(path)
    except Exception:
        if path.is_file() and path.suffix == ".npz":
            with open_npz(path) as z:  # raises the ValueError naming what is wrong with it
                for key in z.files:
                    z[key]
        raise


def load_splits(config: RunConfig, seed: int) -> tuple[Dataset, Dataset | None]:
    """The training split and, when ``config.splits`` asks for it, the test split."""
    data = load_run_data(config, "train", seed)
    test = load_run_data(config, "test", seed) if "test" in config.splits else None
    return data, test


def check_model(config: RunConfig, data: Dataset) -> None:
    """A ValueError when ``config.model`` cannot take the data's inputs (conv and the ResNets
    need images; a ResNet's three stride-2 stages need at least 8 x 8 pixels)."""
    shape = data.input_shape
    if config.model != "mlp" and len(shape) != 3:
        raise ValueError(
            f"model={config.model!r} needs image inputs (C, H, W); {data.name!r} has shape "
            f"{shape}; use model='mlp'."
        )
    if config.model in RESNETS and min(shape[1:]) < 8:
        raise ValueError(
            f"model={config.model!r} halves the image three times (stages 2-4); {data.name!r} "
            f"has {shape[1]}x{shape[2]} pixels, too small. Use images of at least 8x8 "
            "(e.g. data 'shapes32', 32x32x3), or model='conv'."
        )
