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

Files are written atomically: a temporary file in the same folder, then a rename. A folder that
a command writes into is held with :func:`locked_folder` for the whole job: one writer at a time,
and the temporary files of writes killed before their rename are removed when it is taken.

Every problem with a file being read is a ``ValueError`` that names the file, says what is wrong
with it and what to do (:func:`open_npz`, :func:`load_json`); problems with the path itself
(missing, a folder, no permission) stay ``OSError`` with the path in ``filename``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from otcollapse._utils import atomic_path, atomic_write_text, to_numpy
from otcollapse.measures import Trajectory

__all__ = [
    "LOCK_FILE",
    "FolderInUseError",
    "clean_temporaries",
    "load_json",
    "load_trajectory",
    "locked_folder",
    "open_npz",
    "save_json",
    "save_trajectory",
]

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


# ---------------------------------------------------------------------------- reading .npz files
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive (an empty one starts with the end)
_NPY_MAGIC = b"\x93NUMPY"
_PICKLE_MAGIC = b"\x80"
_SAVE_NPZ = "save plain numeric arrays with np.savez (or otcollapse.save_trajectory)"


def file_head(path: str | os.PathLike, n: int = 8) -> bytes:
    """The first ``n`` bytes of a file (what its format starts with)."""
    with open(path, "rb") as fh:
        return fh.read(n)


def short_reason(err: BaseException) -> str:
    """The first sentence of an exception's message (at most 120 characters), or its type."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = text.split(". ")[0].rstrip(".")
    return (text[:117] + "...") if len(text) > 120 else (text or type(err).__name__)


def _needs_pickle(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, ValueError) and any(
        s in text for s in ("allow_pickle", "pickled", "Object arrays")
    )


def npz_problem(path: str | os.PathLike, err: BaseException) -> ValueError:
    """The ValueError that says what is wrong with the ``.npz`` file ``path`` and what to do.

    ``err`` is what NumPy raised while reading it; the file's first bytes tell an empty file, a
    damaged archive, a single ``.npy`` array, a pickle and a file of another kind apart.
    """
    name = repr(str(path))
    try:
        head = file_head(path)
    except OSError:
        head = b"PK\x03\x04"  # readable a moment ago: describe what NumPy saw
    if not head:
        return ValueError(f"{name} is empty (0 bytes): it was not written completely; {_SAVE_NPZ}.")
    if head.startswith(_ZIP_MAGIC):
        if _needs_pickle(err):
            return ValueError(
                f"{name} holds Python objects that need pickle to load, which could run code; it "
                f"was refused. {_SAVE_NPZ[0].upper()}{_SAVE_NPZ[1:]}."
            )
        reason = "its zip directory is missing" if "not a zip file" in str(err) else None
        return ValueError(
            f"{name} is truncated or damaged ({reason or short_reason(err)}); write it again "
            "or copy it again from where it came from."
        )
    if head.startswith(_NPY_MAGIC):
        return ValueError(
            f"{name} holds a single .npy array, not a .npz archive of named arrays; {_SAVE_NPZ}."
        )
    if head.startswith(_PICKLE_MAGIC):
        return ValueError(
            f"{name} is a Python pickle, not a .npz archive; loading it could run code, so it was "
            f"refused. {_SAVE_NPZ[0].upper()}{_SAVE_NPZ[1:]}."
        )
    return ValueError(
        f"{name} is not a .npz archive (a .npz file is a zip of .npy arrays; is it another "
        f"kind of file renamed .npz?); {_SAVE_NPZ}."
    )


def _path_error(err: BaseException) -> bool:
    """An OSError about the path itself (missing, a folder, no permission): left as it is."""
    return isinstance(err, OSError) and err.filename is not None


class _CheckedNpz(Mapping[str, np.ndarray]):
    """An open ``.npz`` whose members raise :func:`npz_problem` when they cannot be read."""

    def __init__(self, path: Path, npz: Any) -> None:
        self.path, self._npz = path, npz

    @property
    def files(self) -> list[str]:
        return list(self._npz.files)

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._npz.files:
            raise KeyError(key)
        try:
            return self._npz[key]
        except MemoryError:
            raise
        except Exception as err:
            if _path_error(err):
                raise
            raise npz_problem(self.path, err) from err

    def __contains__(self, key: object) -> bool:
        return key in self._npz.files

    def __iter__(self) -> Iterator[str]:
        return iter(self._npz.files)

    def __len__(self) -> int:
        return len(self._npz.files)


@contextlib.contextmanager
def open_npz(path: str | os.PathLike) -> Iterator[Mapping[str, np.ndarray]]:
    """Open a ``.npz`` file with ``allow_pickle=False``; every content problem is a ValueError.

    Yields a read-only mapping from array names to arrays (``.files`` lists the names), read on
    access. A file that is empty, truncated, fails a CRC check, needs pickle, or is not a ``.npz``
    archive raises the ValueError of :func:`npz_problem` (the file, the problem, the fix); a
    missing file, a folder or a permission problem stays an ``OSError`` naming the path.
    """
    path = Path(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except MemoryError:
        raise
    except Exception as err:
        if _path_error(err):
            raise
        raise npz_problem(path, err) from err
    if not isinstance(npz, np.lib.npyio.NpzFile):  # a bare .npy array under another name
        raise npz_problem(path, ValueError("not an archive"))
    with npz:
        yield _CheckedNpz(path, npz)


def load_trajectory(path: str | os.PathLike) -> Trajectory:
    """Read a trajectory written by :func:`save_trajectory` (no pickle, no code execution).

    Raises
    ------
    ValueError
        When the file is not an otcollapse trajectory, is damaged or truncated, or needs pickle
        to be read; the message names the file.
    FileNotFoundError
        When there is no such file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no such trajectory file", str(path))
    with open_npz(path) as data:
        files = set(data.files)
        if "header" not in files:
            raise ValueError(
                f"{path} is not an otcollapse trajectory file (no 'header' entry); "
                "build one with Trajectory.from_arrays and save_trajectory."
            )
        try:
            header = json.loads(str(data["header"]))
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}: its header is not valid JSON ({short_reason(err)}); write the file "
                "again with save_trajectory."
            ) from None
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


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write a JSON-safe object (e.g. a result's ``to_dict()``) atomically."""
    path = Path(path)
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=True))
    return path


def load_json(path: str | os.PathLike) -> Any:
    """Read a JSON file written by :func:`save_json`.

    Raises
    ------
    ValueError
        When the file is not valid JSON (truncated or damaged); the message names the file.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        what = "is empty (0 bytes)" if not raw else f"is not valid JSON ({short_reason(err)})"
        raise ValueError(
            f"{str(path)!r} {what}: it is truncated or damaged; write it again (rerun the "
            "command that made it)."
        ) from None


# ---------------------------------------------------------------------------- folder lock
#: The lock file of a folder being written (it holds the writer's process id).
LOCK_FILE = ".otcollapse.lock"

# a temporary file of otcollapse._utils.atomic_path (".NAME." + 8 random characters + suffix +
# ".tmp") for a NAME otcollapse writes into a run folder, or of a capture to a memory map
# (".NAME.npy.partial"); another program's temporary files look different or are left alone
_TEMPORARY = re.compile(
    r"\.(?:metrics\.json|report\.html|history_[^/]+\.json|[^/]+\.npz|[^/]+\.png|[^/]+\.pt"
    r"|result\.pkl)\.[a-z0-9_]{8}(?:\.png|\.pt)?\.tmp|\.[^/]+\.npy\.partial"
)
# the sub-folders otcollapse writes into a run folder (checkpoints and stages/ have their own)
_SUBFOLDERS = re.compile(r"figures|trajectories|checkpoints|stages|seed_-?\d+|weight_decay_.+")
# the sub-folders whose every sub-folder is otcollapse's
_ALL_OURS = ("checkpoints", "stages")


class FolderInUseError(RuntimeError):
    """Another process holds the lock of a folder: one writer per folder at a time."""


class _Held:
    def __init__(self, key: str, path: Path, fd: int) -> None:
        self.key, self.path, self.fd, self.depth = key, path, fd, 1
        self.thread = threading.get_ident()


# the folders this process holds, by real path: the holding thread may take one again (a
# reproduction holds its folder while run_experiment takes it), any other thread is refused
_HELD: dict[str, _Held] = {}
_HELD_GUARD = threading.Lock()


def _pid_of(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


def _in_use(folder: Path, pid: str, *, stale_hint: bool = False) -> FolderInUseError:
    hint = f" (If no such process runs, delete {LOCK_FILE!r} there.)" if stale_hint else ""
    return FolderInUseError(
        f"the folder {str(folder)!r} is in use by another otcollapse process (pid {pid}) that is "
        "writing into it; wait for it to finish, or choose another output folder." + hint
    )


def _open_lock_file(folder: Path, flags: int) -> int:
    try:
        return os.open(folder / LOCK_FILE, flags, 0o644)
    except (FileExistsError, FileNotFoundError):
        raise
    except OSError as err:  # e.g. no permission: name the folder, not the lock file
        raise type(err)(err.errno, err.strerror, str(folder)) from None


def _acquire(folder: Path) -> _Held:
    key = os.path.realpath(folder)
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            if held.thread != threading.get_ident():
                raise _in_use(folder, str(os.getpid()))
            held.depth += 1
            return held
        held = _HELD[key] = _lock(folder, key)
    try:
        clean_temporaries(folder)  # the only writer now: what a killed write left is garbage
    except BaseException:
        _release(held)
        raise
    return held


def _lock(folder: Path, key: str) -> _Held:
    """Take the lock file of ``folder`` (``flock``, process id written in it)."""
    path = folder / LOCK_FILE
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock (Windows): the file's existence is the lock
        try:
            fd = _open_lock_file(folder, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            raise _in_use(folder, "unknown", stale_hint=True) from None
    else:
        while True:
            fd = _open_lock_file(folder, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _pid_of(fd)
                os.close(fd)
                raise _in_use(folder, pid) from None
            # a lock file left by a killed process is taken over (its flock died with it); one
            # unlinked by its last holder between our open and our flock is opened again
            try:
                st, now = os.fstat(fd), os.stat(path)
                if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return _Held(key, path, fd)


def _release(held: _Held) -> None:
    with _HELD_GUARD:
        held.depth -= 1
        if held.depth:
            return
        del _HELD[held.key]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(held.path)  # unlinked while still locked: see the inode check in _lock
        os.close(held.fd)


def _make_folder(folder: Path) -> Path | None:
    """Create ``folder`` and its missing parents; returns the topmost one created, or None."""
    missing = []
    p = folder
    while not p.exists() and not p.is_symlink() and p != p.parent:
        missing.append(p)
        p = p.parent
    created = None
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            if not d.is_dir():
                raise
            continue  # made meanwhile by another process: not ours to remove
        created = created or d
    if not folder.is_dir():  # an existing file, or a link to one
        raise FileExistsError(errno.EEXIST, "exists and is not a folder", str(folder))
    return created


def _remove_made(folder: Path, created: Path) -> None:
    """Remove ``folder`` and then its parents up to ``created`` (those this job made) if empty."""
    shutil.rmtree(folder, ignore_errors=True)
    p = folder.parent
    while p != created.parent and p != p.parent:
        try:
            p.rmdir()
        except OSError:
            return
        p = p.parent


def _holds_files(folder: Path) -> bool:
    return any(f != LOCK_FILE for _, _, files in os.walk(folder) for f in files)


@contextlib.contextmanager
def locked_folder(folder: str | os.PathLike, *, on_error: str = "keep") -> Iterator[Path]:
    """Hold an exclusive lock on the output folder ``folder`` (created if missing) for a job.

    The lock is ``fcntl.flock`` on ``folder/.otcollapse.lock``, which holds the process id; a
    second process (or another thread) asking for the same folder gets a
    :class:`FolderInUseError` at once, while the thread holding it may ask again (nested calls
    are free: a reproduction holds its folder while ``run_experiment`` takes it). A lock file
    left by a killed process is taken over: the kernel released its ``flock``. On taking the lock
    the temporary files of atomic writes killed before their rename are removed
    (:func:`clean_temporaries`). The lock file is removed when the job ends.

    Parameters
    ----------
    folder : str or path
        The output folder; missing parents are created too.
    on_error : {"keep", "empty", "remove"}
        What happens to a folder this call created when the job raises: kept as it is, removed
        when it holds no file yet ("empty": the job was refused before writing anything), or
        removed with everything in it ("remove": partial results nobody can continue from).

    Raises
    ------
    FolderInUseError
        When another process holds the folder.
    OSError
        When the folder cannot be created or written (the path is in ``filename``).
    """
    if on_error not in ("keep", "empty", "remove"):
        raise ValueError(f"on_error must be 'keep', 'empty' or 'remove'; got {on_error!r}.")
    folder = Path(folder)
    created = _make_folder(folder)
    try:
        held = _acquire(folder)
    except FolderInUseError:
        raise  # the holder may have found the folder we made: it is theirs now
    except BaseException:
        if created is not None and not _holds_files(created):
            _remove_made(folder, created)
        raise
    try:
        yield folder
    except BaseException:
        if created is not None and (
            on_error == "remove" or (on_error == "empty" and not _holds_files(created))
        ):
            _remove_made(folder, created)  # still locked: nobody else writes there
        raise
    finally:
        _release(held)


def clean_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that atomic writes killed before their rename left behind.

    Looks in ``folder`` and the sub-folders otcollapse writes there (``figures``,
    ``trajectories``, ``checkpoints/<model>``, ``stages/...``, ``seed_<s>``, ``weight_decay_<w>``), for the
    temporary names ``otcollapse._utils.atomic_path`` gives the files of a run folder
    (``.metrics.json.xxxxxxxx.tmp``, ``.checkpoint.pt.xxxxxxxx.tmp``, ...) and those of
    memory-mapped captures (``.NAME.npy.partial``); other files are left alone. Call it only while holding the folder
    (:func:`locked_folder`), when no write can be under way. Returns the files removed.
    """
    removed: list[Path] = []

    def visit(d: str, any_sub: bool) -> None:
        with os.scandir(d) as it:
            entries = list(it)
        for e in entries:
            if e.is_file(follow_symlinks=False) and _TEMPORARY.fullmatch(e.name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(e.path)
                    removed.append(Path(e.path))
            elif e.is_dir(follow_symlinks=False) and (any_sub or _SUBFOLDERS.fullmatch(e.name)):
                visit(e.path, any_sub or e.name in _ALL_OURS)

    visit(os.fspath(folder), False)
    return removed
