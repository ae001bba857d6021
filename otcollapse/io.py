"""Saving and loading trajectories and results, in formats that never execute code on load.

Trajectory file format (``.npz``, read with ``allow_pickle=False``):

========================  ==================================================================
key                       content
========================  ==================================================================
``layer_{l}``             float array (n, d_l), one per layer ``l = 0..L``
``labels``                int64 (n,), optional
``weights``               float64 (n,), optional
``shortcut_{l}``          float array (n, d_{l+1}): ``P h_l``, optional, per step
``classifier_W``          float64 (K, d_L), optional; ``classifier_b`` (K,), optional
``logits``                float64 (n, K), optional
``header``                a 0-d unicode string holding JSON: format version, layer names,
                          number of layers, metadata
========================  ==================================================================

Files are written atomically: a temporary file in the same folder, then a rename.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from otcollapse._utils import atomic_path, atomic_write_text, to_numpy
from otcollapse.measures import Trajectory

__all__ = ["load_json", "load_trajectory", "save_json", "save_trajectory"]

FORMAT = "otcollapse.trajectory"
VERSION = 1


def save_trajectory(path: str | os.PathLike, traj: Trajectory, *, compressed: bool = False) -> Path:
    """Write ``traj`` to ``path`` (``.npz``) atomically; returns the path written.

    Layers are written as they are (tensors are moved to the CPU; memory maps are read in full
    once). ``metadata`` must be JSON-serialisable.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
    try:
        header = json.dumps(
            {
                "format": FORMAT,
                "version": VERSION,
                "n_layers": len(traj),
                "names": list(traj.names),
                "metadata": traj.metadata,
            }
        )
    except TypeError as exc:
        raise ValueError(f"trajectory metadata must be JSON-serialisable: {exc}") from exc
    arrays: dict[str, Any] = {"header": np.array(header)}
    for l, x in enumerate(traj.layers):
        arrays[f"layer_{l}"] = to_numpy(x)
    for l, x in traj.shortcuts.items():
        arrays[f"shortcut_{l}"] = to_numpy(x)
    if traj.labels is not None:
        arrays["labels"] = traj.labels
    if traj.weights is not None:
        arrays["weights"] = traj.weights
    if traj.classifier is not None:
        arrays["classifier_W"] = traj.classifier[0]
        if traj.classifier[1] is not None:
            arrays["classifier_b"] = traj.classifier[1]
    if traj.logits is not None:
        arrays["logits"] = traj.logits
    save = np.savez_compressed if compressed else np.savez
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        save(fh, **arrays)
    return path


def load_trajectory(path: str | os.PathLike) -> Trajectory:
    """Read a trajectory written by :func:`save_trajectory` (no pickle, no code execution).

    Raises
    ------
    ValueError
        When the file is not an otcollapse trajectory, or needs pickle to be read.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such trajectory file: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            files = set(data.files)
            if "header" not in files:
                raise ValueError(
                    f"{path} is not an otcollapse trajectory file (no 'header' entry); "
                    "build one with Trajectory.from_arrays and save_trajectory."
                )
            header = json.loads(str(data["header"]))
            if header.get("format") != FORMAT:
                raise ValueError(f"{path}: unknown format {header.get('format')!r}.")
            if int(header.get("version", 0)) > VERSION:
                raise ValueError(
                    f"{path} was written by a newer otcollapse (format version "
                    f"{header['version']}); upgrade otcollapse to read it."
                )
            L1 = int(header["n_layers"])
            layers = [data[f"layer_{l}"] for l in range(L1)]
            shortcuts = {l: data[f"shortcut_{l}"] for l in range(L1) if f"shortcut_{l}" in files}
            classifier = None
            if "classifier_W" in files:
                b = data["classifier_b"] if "classifier_b" in files else None
                classifier = (data["classifier_W"], b)
            get = lambda key: data[key] if key in files else None  # noqa: E731
            return Trajectory.from_arrays(
                layers,
                labels=get("labels"),
                names=header["names"],
                weights=get("weights"),
                shortcuts=shortcuts,
                classifier=classifier,
                logits=get("logits"),
                metadata=header.get("metadata", {}),
            )
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise ValueError(
                f"{path} holds Python objects that would need pickle to load; otcollapse refuses "
                "to execute code from files. Save plain numeric arrays instead."
            ) from exc
        raise


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write a JSON-safe object (e.g. a result's ``to_dict()``) atomically."""
    path = Path(path)
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=True))
    return path


def load_json(path: str | os.PathLike) -> Any:
    """Read a JSON file written by :func:`save_json`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
