"""Private helpers shared by every layer of the package (imports nothing from otcollapse)."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

ArrayLike = Any  # numpy array, numpy memmap, torch tensor or nested sequence

#: rows per block when a large array is scanned (finite checks, streaming statistics)
SCAN_ROWS = 8192


def is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _refuse_complex(dtype: Any, what: str) -> None:
    raise ValueError(
        f"complex values in {what} (dtype {dtype}): otcollapse works with real numbers, and a cast "
        "would silently drop the imaginary part. Pass real values: x.real, abs(x), or both parts "
        "as separate features (np.concatenate([x.real, x.imag], axis=1))."
    )


def check_not_complex(x: Any, what: str) -> None:
    """Raise a ValueError naming ``what`` if ``x`` has a complex dtype (nothing is read)."""
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            _refuse_complex(x.dtype, what)
        return
    dt = getattr(x, "dtype", None)
    if isinstance(dt, np.dtype) and dt.kind == "c":
        _refuse_complex(dt, what)


def to_numpy(x: ArrayLike, dtype: Any = None, *, what: str = "the input") -> np.ndarray:
    """NumPy view of ``x`` (a tensor is detached and moved to the CPU); no copy when possible.

    Complex values are refused with a ValueError naming ``what``: a cast to a real dtype would
    drop the imaginary part without a word.
    """
    if isinstance(x, torch.Tensor):
        check_not_complex(x, what)
        x = x.detach().cpu().numpy()
    elif not isinstance(x, np.ndarray):
        x = np.asarray(x)  # a nested sequence: look at its own dtype before any cast
    check_not_complex(x, what)
    return np.asarray(x, dtype=dtype)


def to_tensor(
    x: ArrayLike, *, dtype: torch.dtype | None = None, device: Any = None, what: str = "the input"
) -> torch.Tensor:
    """Torch tensor of ``x`` on ``device`` (default: where ``x`` already is, else the CPU).

    Complex values are refused as in :func:`to_numpy`.
    """
    if isinstance(x, torch.Tensor):
        check_not_complex(x, what)
        return x.detach().to(device=device if device is not None else x.device, dtype=dtype)
    return torch.as_tensor(to_numpy(x, what=what), dtype=dtype, device=device)


def check_finite(x: ArrayLike, what: str) -> None:
    """Raise a ValueError naming ``what`` if ``x`` holds NaN or inf; scans large arrays by rows."""
    n_nan = n_inf = 0
    for block in iter_rows(x):
        # one sum first: NaN and inf propagate through it, so a finite sum clears the block
        # (an overflowing sum of finite values only costs the counts below)
        if isinstance(block, torch.Tensor):
            if block.is_floating_point() and bool(torch.isfinite(block.sum())):
                continue
            n_nan += int(torch.isnan(block).sum())
            n_inf += int(torch.isinf(block).sum())
        else:
            block = np.asarray(block)
            if np.issubdtype(block.dtype, np.floating):
                with np.errstate(over="ignore", invalid="ignore"):
                    if np.isfinite(block.sum()):
                        continue
            n_nan += int(np.isnan(block).sum())
            n_inf += int(np.isinf(block).sum())
    if n_nan or n_inf:
        raise ValueError(
            f"{what} contains {n_nan} NaN and {n_inf} infinite values; "
            "remove or impute those samples before the analysis."
        )


def iter_rows(x: ArrayLike, block: int = SCAN_ROWS) -> Iterator[Any]:
    """Blocks of rows of ``x``; a memory-mapped array is never read whole."""
    n = len(x)
    if n <= block:
        yield x
        return
    for start in range(0, n, block):
        yield x[start : start + block]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path`` atomically.

    A killed process leaves either the old file or the new one, never a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix + ".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# read once at import: os.umask can only be read by setting it, which is not thread-safe
_UMASK = _read_umask()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file, fsync, rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def available_devices() -> list[str]:
    """The torch devices this machine can run on: ``"cpu"``, each CUDA GPU, Apple's ``"mps"``."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def check_device(device: Any, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` that exists here, or a ValueError naming it.

    Accepts a string (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``), a ``torch.device`` or an
    int (a CUDA GPU's index). Refuses names torch does not know (``"gpu"``), CUDA when torch sees
    no CUDA GPU, a GPU index beyond the count, and device types otcollapse does not run on; the
    message lists the available devices.
    """
    avail = available_devices()
    if isinstance(device, (bool, np.bool_)) or not isinstance(
        device, (str, torch.device, int, np.integer)
    ):
        raise TypeError(
            f"{name} must be a device name such as 'cpu' or 'cuda:0' (or a torch.device); got "
            f"{device!r} ({type(device).__name__}). Available: {avail}."
        )
    if isinstance(device, (int, np.integer)):
        spec: Any = f"cuda:{int(device)}"
    else:
        spec = device
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        hint = " (an NVIDIA GPU is 'cuda')" if str(spec).strip().lower() == "gpu" else ""
        raise ValueError(f"unknown {name} {device!r}{hint}; available: {avail}.") from None
    if dev.type == "cpu":
        if dev.index not in (None, 0):
            raise ValueError(f"{name} {device!r} does not exist; available: {avail}.")
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{name} {device!r} asked for, but torch sees no CUDA GPU; available: {avail}."
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(
                f"{name} {device!r} does not exist: torch sees {count} CUDA GPU(s); "
                f"available: {avail}."
            )
        return dev
    if dev.type == "mps" and "mps" in avail:
        return dev
    raise ValueError(f"{name} {device!r} is not available here; available: {avail}.")


def json_safe(v: Any) -> Any:
    """JSON-safe copy: mappings and sequences recursed, arrays and tensors to lists, NumPy scalars
    to Python, NaN to None, +-inf to the strings ``"inf"`` / ``"-inf"``, anything else to str."""
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, np.ndarray):
        return json_safe(v.tolist())
    if isinstance(v, torch.Tensor):
        return json_safe(v.detach().cpu().numpy())
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if f != f:
            return None
        if f in (float("inf"), float("-inf")):
            return "inf" if f > 0 else "-inf"
        return f
    if v is None or isinstance(v, str):
        return v
    return str(v)


def progress_bar(items: Any = None, *, progress: bool, desc: str, total: int | None = None) -> Any:
    """tqdm over ``items``, shown only when asked for and stderr is a terminal."""
    from tqdm import tqdm

    show = bool(progress) and sys.stderr.isatty()
    return tqdm(items, desc=desc, total=total, disable=not show, leave=False)


def rng(seed: int) -> np.random.Generator:
    """A fresh NumPy generator; every random choice in otcollapse goes through one."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return np.random.default_rng(int(seed))
