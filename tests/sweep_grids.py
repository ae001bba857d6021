"""The tiny grid the sweep tests share: two weight decays x (ResNet, plain twin), two seeds."""

from __future__ import annotations

import json
from pathlib import Path

BASE = {
    "width": 8,
    "blocks": 2,
    "epochs": 2,
    "max_samples": 80,
    "mufm": False,
    "capture_epochs": [0],
    "seeds": 2,
}
GRID = {"base": BASE, "grid": {"weight_decay": [0.0, 5e-4]}}


def grid_file(folder: Path) -> Path:
    """:data:`GRID` written as a TOML grid file in ``folder``."""
    path = folder / "grid.toml"
    path.write_text(
        "[base]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in BASE.items())
        + "[grid]\nweight_decay = [0.0, 5e-4]\n"
    )
    return path
