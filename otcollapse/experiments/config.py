"""The settings of ``otcollapse run`` (:class:`RunConfig`) and the data set they name.

``RunConfig.data`` is a built-in data set or a ``.npz`` file / image folder on disk;
:func:`load_run_data` reads it, :func:`read_data_file` reads one on disk with the words of
``otcollapse analyze`` for a damaged file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from otcollapse._utils import check_device, json_safe
from otcollapse._validation import check_int, check_real
from otcollapse.data import Dataset, dataset_names, from_folder, load_dataset
from otcollapse.io import open_npz

__all__ = [
    "MODELS",
    "SPACES",
    "TWINS",
    "RunConfig",
    "check_model",
    "load_run_data",
    "load_splits",
    "read_data_file",
]

MODELS = ("mlp", "conv")
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
    model : {"mlp", "conv"}
        ``ResidualMLP`` (constant width) or ``ConvResNet`` (constant-width convolutional, no
        downsampling); the plain twin is the same network without skip connections.
    width, blocks : int
        Width (features or channels) and number of residual blocks; the trajectory has
        ``blocks + 1`` layers.
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
    device : str
        Torch device for training and capture.
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
        device that does not exist here.
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
    device: str = "cpu"
    space: str = "pooled"
    project_dim: int = 256
    n_boot: int = 20
    quick: bool = False

    @classmethod
    def quick_preset(cls, **overrides: Any) -> RunConfig:
        """The ``--quick`` settings: a small net, few epochs, a small MUFM (about a minute)."""
        base: dict[str, Any] = {
            "width": 32,
            "blocks": 4,
            "epochs": 12,
            "max_samples": 600,
            "mufm_samples": 150,
            "mufm_grid": (1e-4, 1e-3, 1e-2),
            "quick": True,
        }
        base.update(overrides)
        return cls(**base)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; use one of {list(MODELS)}.")
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
        check_device(self.device)
        if self.space not in SPACES:
            raise ValueError(f"unknown space {self.space!r}; use one of {list(SPACES)}.")
        check_int(self.n_boot, "n_boot", minimum=0)
        if not self.mufm_grid:
            raise ValueError("mufm_grid must hold positive λ_OT values.")
        for g in self.mufm_grid:
            check_real(g, "each mufm_grid value (λ_OT)", minimum=0.0, open_min=True)

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


# ---------------------------------------------------------------------------- the data set
def load_run_data(config: RunConfig, split: str, seed: int) -> Dataset:
    """The ``split`` of the data set ``config.data`` names (a data set on disk has one split)."""
    if config.data in dataset_names():
        return load_dataset(config.data, split=split, seed=seed)
    path = Path(config.data)
    if not path.exists():
        raise ValueError(
            f"unknown data set {config.data!r}: not a built-in one ({list(dataset_names())}) "
            "and no such file or folder."
        )
    if split != "train":
        raise ValueError("a user data set on disk has one split: capture splits=('train',).")
    return read_data_file(path)


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
    """A ValueError when ``config.model`` cannot take the data's inputs (conv needs images)."""
    shape = data.input_shape
    if config.model == "conv" and len(shape) != 3:
        raise ValueError(
            f"model='conv' needs image inputs (C, H, W); {data.name!r} has shape {shape}."
        )
