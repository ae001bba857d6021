"""The main job as stages with persisted, content-addressed artefacts.

One seed of one setting (a *cell*) is the task graph::

    train(resnet) ─┬─ capture(train, epoch e) ── analyse(e) ─┐
                   ├─ capture(test, last)     ── analyse     ├─ seed  (metrics of the seed)
                   └─ capture(train, last)    ── calibrate ──┘
    train(plain)  ─── capture ... ── analyse ... ────────────┘

Each stage is a function of its inputs and settings. Its artefact lives in
``ROOT/<stage>-<key>/``, where ``key`` hashes the stage's settings, the keys of its inputs and the
package version; ``result.pkl`` (written atomically, last) marks it complete. A stage whose
artefact exists is read back, never recomputed, and an interrupted stage starts again from what it
left: training resumes from its last checkpoint (:func:`otcollapse.nets.train`). This makes every
stage a task Dask can schedule, retry and run anywhere that sees ``ROOT``.

The graph is a plain Dask graph (a dict of tasks keyed by the stage keys): ``otcollapse run``
executes it in the calling thread (``dask.get``), ``otcollapse sweep`` on a Dask cluster. Equal
keys are one task, so cells that share a stage (two calibration grids on one training) share it.

``result.pkl`` is a private cache of this machine's own results, like Dask's spill files: the
files to share are ``metrics.json``, the trajectories (``.npz``, no pickle) and the Zarr store.
Each completed computation appends one line to ``ROOT/executions.jsonl`` (the count a sweep
reports and its tests read).

What a key leaves out: the device and the torch thread count, which say where and how a stage
runs, not what it computes (training on a GPU is not bit-for-bit the CPU's; rerun into a fresh
folder to compare devices). Every stage runs on ``config.resolved_device()``: training and capture
there, and the analyse stage moves the captured trajectory there (the calibrate stage too) so that
transport and collapse statistics run on it; results come back as NumPy and Python numbers. On the
CPU the trajectory is analysed as it was read (NumPy), exactly as before devices were supported.

A large capture (above :data:`MEMMAP_BYTES`, e.g. the flattened residual stream of a wide
ResNet) is streamed batch by batch into ``.npy`` memory maps in the stage folder (capture's
``memmap_dir``), then written into ``trajectory.npz`` uncompressed and the maps removed; the
analyses read that file back memory-mapped (:func:`load_captured`), so no stage holds the whole
trajectory in RAM (a GPU gets it in row blocks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import pickle
import shutil
import struct
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from otcollapse._utils import atomic_path, json_safe
from otcollapse.measures import Trajectory

__all__ = [
    "STAGES",
    "SeedGraph",
    "StageContext",
    "StageName",
    "executions",
    "load_captured",
    "seed_graph",
    "stage_key",
    "torch_threads",
]

#: the stages, in the order a cell runs them
STAGES = ("train", "capture", "analyse", "calibrate", "seed")
#: bumped whenever what a stage computes or stores changes (a fix of an analysis included):
#: every key changes with it, so no result of the old code is read back as the new one's
FORMAT = 4
RESULT = "result.pkl"
TRAJECTORY = "trajectory.npz"
#: a capture whose layers (and shortcut images) would take more than this many bytes in float32
#: is streamed into memory maps and read back memory-mapped. The threshold is a size, not a model:
#: pooled ResNet features are small at any depth (n x 8..512 per layer), while the flattened
#: stream of a width-64 ResNet-18 on 4,500 CIFAR-sized images is about 6 GB. Below it a capture in
#: RAM is faster than the disk round trip and no bigger than the model's own activations.
MEMMAP_BYTES = 256 * 2**20
#: the folder of a capture's memory maps inside its stage folder (removed once written out)
MAPPED_DIR = "mapped"
#: what the analyse stage computes beyond its settings (a new analysis changes this, and the key)
ANALYSES = ("collapse", "geodesic", "geodesic:orthogonal", "efficiency")
EXECUTIONS = "executions.jsonl"

# the RunConfig fields each stage's result depends on (beyond the keys of its inputs)
_TRAIN_FIELDS = ("model", "width", "blocks", "epochs", "lr", "weight_decay", "batch_size")


@dataclasses.dataclass(frozen=True)
class StageContext:
    """Where and how the stages run (none of it enters a key).

    Attributes
    ----------
    root : str
        The folder of the artefacts (one sub-folder per stage key); on a cluster, a path every
        worker sees.
    threads : int
        torch's intra-op threads in every stage (set before the stage computes).
    progress : bool
        Progress bars in the stages (the serial path on a terminal).
    log : callable, optional
        Called with one line per stage event; must be picklable to run on a Dask cluster.
    """

    root: str
    threads: int = 1
    progress: bool = False
    log: Callable[[str], Any] | None = None

    def say(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """torch's intra-op threads set to ``n`` inside the block, restored after it."""
    import torch

    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def stage_key(stage: str, settings: Mapping[str, Any], inputs: Sequence[str] = ()) -> str:
    """``<stage>-<20 hex digits>``: SHA-256 of the stage, its settings, its inputs' keys, the
    package version and :data:`FORMAT` (canonical JSON, sorted keys)."""
    from otcollapse import __version__

    blob = json.dumps(
        {
            "stage": stage,
            "format": FORMAT,
            "version": __version__,
            "settings": json_safe(dict(settings)),
            "inputs": list(inputs),
        },
        sort_keys=True,
        allow_nan=True,
    )
    return f"{stage}-{hashlib.sha256(blob.encode()).hexdigest()[:20]}"


def _data_identity(data: str) -> dict[str, Any]:
    """What names a data set's contents: a built-in name, or a file's path, size and mtime."""
    from otcollapse.data import dataset_names

    if data in dataset_names():
        return {"builtin": data}
    p = Path(data).resolve()
    if p.is_dir():  # an image folder: every file's path, size and mtime
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            st = f.stat()
            h.update(f"{f.relative_to(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return {"path": str(p), "listing": h.hexdigest()}
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


# ---------------------------------------------------------------------------- the cache
@contextlib.contextmanager
def _stage_lock(folder: Path) -> Iterator[None]:
    """One process computes a stage at a time (a rescheduled task waits for a live one)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:  # a file system without flock (Lustre mounted noflock, ...):
            if err.errno not in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK):
                raise  # the atomic rename still keeps results whole; only work may be doubled
        yield
    finally:
        os.close(fd)  # closing releases the flock


@dataclasses.dataclass(frozen=True)
class StageName:
    """A stage's own key inside its task: Dask would read a bare key string as a dependency."""

    key: str


#: MUFM calibrations on at most this many samples run on one torch thread (see ``calibrate``)
SMALL_FIT_SAMPLES = 300

#: held while a stage seeds torch's global generator and draws a model's initial weights
_SEEDING = threading.Lock()


def _cached(ctx: StageContext, name: StageName, compute: Callable[[Path], Any]) -> Any:
    """The result of stage ``name``: read back when complete, else computed and written."""
    key = name.key
    folder = Path(ctx.root) / key
    done = folder / RESULT
    if not done.exists():
        with _stage_lock(folder):
            if not done.exists():  # another process may have finished it while we waited
                t0 = time.perf_counter()
                with torch_threads(ctx.threads):
                    value = compute(folder)
                with atomic_path(done) as tmp, open(tmp, "wb") as fh:
                    pickle.dump(value, fh, protocol=pickle.HIGHEST_PROTOCOL)
                line = json.dumps(
                    {"key": key, "seconds": time.perf_counter() - t0, "pid": os.getpid()}
                )
                # one short O_APPEND write: lines of concurrent workers never interleave
                fd = os.open(Path(ctx.root) / EXECUTIONS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                try:
                    os.write(fd, (line + "\n").encode())
                finally:
                    os.close(fd)
                return value
    with open(done, "rb") as fh:
        return pickle.load(fh)


def executions(root: str | os.PathLike) -> list[dict[str, Any]]:
    """The computations recorded in ``root`` (one dict per completed stage computation)."""
    path = Path(root) / EXECUTIONS
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a file system without atomic appends
            continue
    return out


# ---------------------------------------------------------------------------- stages
def _model(config: Any, data: Any, plain: bool) -> Any:
    from otcollapse.experiments.config import RESNETS, check_model
    from otcollapse.nets import ConvResNet, ResidualMLP, resnet_layout

    check_model(config, data)
    if config.model in RESNETS:
        return resnet_layout(
            config.model,
            in_channels=data.input_shape[0],
            n_classes=data.n_classes,
            width=config.width,
            plain=plain,
        )
    if config.model == "mlp":
        return ResidualMLP(
            data.n_features,
            config.width,
            config.blocks,
            data.n_classes,
            plain=plain,
            batchnorm=True,
        )
    return ConvResNet(data.input_shape[0], config.width, config.blocks, data.n_classes, plain=plain)


def _state_path(folder: Path, epoch: int) -> Path:
    return folder / "states" / f"state_epoch{epoch:04d}.pt"


def train_stage(
    ctx: StageContext, key: StageName, config: Any, seed: int, net: str
) -> dict[str, Any]:
    """Train one twin; keep its weights at every captured epoch. Returns the history and the
    artefact's folder (its checkpoint makes an interrupted training resume, not restart)."""

    def compute(folder: Path) -> dict[str, Any]:
        import torch

        from otcollapse.experiments.config import load_run_data
        from otcollapse.nets import train

        data = load_run_data(config, "train", seed)
        with _SEEDING:  # torch's global generator: one stage at a time in a threaded worker
            torch.manual_seed(seed)
            model = _model(config, data, plain=net == "plain")

        def keep(epoch: int, m: torch.nn.Module, _h: Any) -> None:
            with atomic_path(_state_path(folder, epoch), suffix=".pt") as tmp:
                torch.save(m.state_dict(), tmp)

        device = config.resolved_device()
        ctx.say(
            f"[seed {seed}] training {net} ({config.describe_model()}, {config.epochs} epochs, "
            f"weight decay {config.weight_decay}, on {device})"
        )
        ckpt = folder / "checkpoints"
        history = train(
            model,
            data,
            epochs=config.epochs,
            lr=config.lr,
            weight_decay=config.weight_decay,
            batch_size=config.batch_size,
            seed=seed,
            device=device,
            checkpoint_dir=ckpt,
            resume=(ckpt / "checkpoint.pt").exists(),
            callbacks=[(keep, config.epochs_captured())],
            progress=ctx.progress,
        )
        ctx.say(
            f"[seed {seed}] {net}: train accuracy {history.final_accuracy:.4f}, "
            f"loss {history.loss[-1]:.4g}"
        )
        # paths relative to the stage root: a moved folder (or a worker that mounts it
        # elsewhere) still finds them
        return {"history": history.to_dict(), "folder": folder.name, "net": net}

    return _cached(ctx, key, compute)


def capture_stage(
    ctx: StageContext,
    key: StageName,
    config: Any,
    seed: int,
    split: str,
    epoch: int,
    trained: Mapping[str, Any],
) -> str:
    """The trajectory of a trained twin at ``epoch`` on ``split`` (``.npz``); returns its path
    relative to the stage root.

    The metadata records the space (``space``; the stream shape of every layer from capture)
    and, in the ``"projected"`` space, the projection's measured distortion
    (``projection_distortion``, :func:`otcollapse.experiments.analysis.projection_distortion`).
    A capture above :data:`MEMMAP_BYTES` streams into memory maps (module docstring). On the
    test split the metadata also holds the network's accuracy there."""

    def compute(folder: Path) -> str:
        import torch

        from otcollapse.experiments.analysis import projection_distortion
        from otcollapse.experiments.config import SPACES, load_run_data
        from otcollapse.io import save_trajectory
        from otcollapse.nets import capture

        device = config.resolved_device()
        data = load_run_data(config, split, seed)
        model = _model(config, data, plain=trained["net"] == "plain")
        state_file = _state_path(Path(ctx.root) / trained["folder"], epoch)
        state = torch.load(state_file, weights_only=True, map_location="cpu")
        model.load_state_dict(state)
        model.to(device)
        pool: Any = SPACES[config.space]
        if pool == "project":
            pool = ("project", config.project_dim)
        mapped = folder / MAPPED_DIR
        big = _capture_bytes(model, data, pool, seed, device) > MEMMAP_BYTES
        traj = capture(
            model, data, device=device, seed=seed, pool=pool, memmap_dir=mapped if big else None
        )
        if config.max_samples is not None and traj.n_samples > config.max_samples:
            traj = traj.subsample(config.max_samples, seed=seed)
        meta = dict(traj.metadata)
        meta.pop("memmap_dir", None)  # removed below: the file written is the record
        meta.update({"epoch": int(epoch), "seed": int(seed), "provenance": data.provenance})
        meta["space"] = config.space
        meta["mapped"] = bool(big)
        if config.space == "projected":
            meta["projection_distortion"] = projection_distortion(
                model, data, config.project_dim, seed=seed, device=device
            )
        if split == "test":
            meta["accuracy"] = _accuracy(model, data, device)
        save_trajectory(folder / TRAJECTORY, traj.replace(metadata=json_safe(meta)))
        del traj
        shutil.rmtree(mapped, ignore_errors=True)
        return f"{folder.name}/{TRAJECTORY}"  # relative to the stage root

    return _cached(ctx, key, compute)


def _capture_bytes(model: Any, data: Any, pool: Any, seed: int, device: str) -> int:
    """The float32 bytes of a capture of all of ``data`` (layers and shortcut images), from a
    capture of its first two samples."""
    from otcollapse.nets import capture

    probe = capture(model, (data.X[:2], data.y[:2]), device=device, seed=seed, pool=pool)
    per_sample = sum(probe.dims) + sum(int(v.shape[1]) for v in probe.shortcuts.values())
    return 4 * per_sample * len(data)


# ---------------------------------------------------------------------------- mapped reading
def load_captured(path: str | os.PathLike) -> Trajectory:
    """A capture stage's ``trajectory.npz``: read whole when small (``load_trajectory``), its
    layers and shortcut images memory-mapped inside the file above :data:`MEMMAP_BYTES`.

    ``save_trajectory`` writes an uncompressed zip, so each ``.npy`` member lies contiguously in
    the file and maps in place; a member that cannot be mapped (compressed, an unknown ``.npy``
    version) makes this fall back to reading the file whole.
    """
    from otcollapse.io import load_trajectory

    path = Path(path)
    if path.stat().st_size <= MEMMAP_BYTES:
        return load_trajectory(path)
    mapped = _mapped_members(path)
    with np.load(path, allow_pickle=False) as z:
        header = json.loads(str(z["header"]))
        n = int(header["n_layers"])
        wanted = [f"layer_{l}" for l in range(n)]
        wanted += [k for k in z.files if k.startswith("shortcut_")]
        if any(k not in mapped for k in wanted):
            return load_trajectory(path)
        small = {k: z[k] for k in ("labels", "weights", "classifier_W", "classifier_b", "logits")
                 if k in z.files}  # fmt: skip
    classifier = None
    if "classifier_W" in small:
        classifier = (small["classifier_W"], small.get("classifier_b"))
    return Trajectory.from_arrays(
        [mapped[f"layer_{l}"] for l in range(n)],
        labels=small.get("labels"),
        names=header["names"],
        weights=small.get("weights"),
        shortcuts={int(k.split("_")[1]): v for k, v in mapped.items() if k.startswith("shortcut_")},
        classifier=classifier,
        logits=small.get("logits"),
        metadata=header.get("metadata", {}),
    )


def _mapped_members(path: Path) -> dict[str, np.ndarray]:
    """The uncompressed ``.npy`` members of a zip file, memory-mapped in place (copy-on-write:
    torch takes them without a read-only warning, and nothing is ever written to the file)."""
    import zipfile

    out: dict[str, np.ndarray] = {}
    fmt = np.lib.format
    readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
        for info in zf.infolist():
            if not info.filename.endswith(".npy") or info.compress_type != zipfile.ZIP_STORED:
                continue
            fh.seek(info.header_offset)
            local = fh.read(30)  # the local file header: its name and extra field lengths
            if local[:4] != b"PK\x03\x04":
                continue
            n_name, n_extra = struct.unpack("<HH", local[26:30])
            fh.seek(info.header_offset + 30 + n_name + n_extra)
            version = fmt.read_magic(fh)
            if version not in readers:
                continue
            shape, fortran, dtype = readers[version](fh)
            if dtype.hasobject or not shape:
                continue
            out[info.filename[:-4]] = np.memmap(  # copy-on-write: never writes to the file
                path,
                dtype=dtype,
                mode="c",
                offset=fh.tell(),
                shape=shape,
                order="F" if fortran else "C",
            )
    return out


def _accuracy(model: Any, data: Any, device: str) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for xb, yb in data.batches(1024):
            correct += int((model(xb.to(device)).argmax(1).cpu() == yb).sum())
    return correct / len(data)


def on_device(traj: Trajectory, device: str) -> Trajectory:
    """``traj`` where the analyses run: unchanged on the CPU (NumPy, as read), else moved to
    ``device`` (a memory-mapped layer in row blocks, :meth:`Trajectory.to`)."""
    from otcollapse.experiments.config import resolve_device

    dev = resolve_device(device)
    return traj if dev == "cpu" else traj.to(dev)


def analyse_stage(
    ctx: StageContext,
    key: StageName,
    seed: int,
    full: bool,
    n_boot: int,
    label: str,
    traj_path: str,
    device: str = "cpu",
) -> dict[str, Any]:
    """Collapse profile and, when ``full``, the geodesic test of one captured trajectory (else
    OTS and LSS only: the McCann fit would dominate the run time at every epoch), on ``device``
    (:func:`on_device`; not part of the key)."""

    def compute(_folder: Path) -> dict[str, Any]:
        from otcollapse.experiments.analysis import (
            analyse,
            describe_space,
            epoch_scores,
            space_record,
        )

        traj = load_captured(Path(ctx.root) / traj_path)
        work = on_device(traj, device)
        ctx.say(f"[seed {seed}] analysing {label}")
        res = analyse(work, seed=seed, geodesic=full, progress=ctx.progress and full, n_boot=n_boot)
        if not full:
            res["scores"] = epoch_scores(work)
        if "accuracy" in traj.metadata:
            res["test_accuracy"] = traj.metadata["accuracy"]
        res["provenance"] = traj.metadata.get("provenance")
        res["feature_space"] = describe_space(traj)
        res["space"] = space_record(traj)
        return res

    return _cached(ctx, key, compute)


def calibrate_stage(
    ctx: StageContext,
    key: StageName,
    config: Any,
    seed: int,
    traj_path: str,
) -> dict[str, Any]:
    """``calibrate_mufm`` (NC1 discrepancy) and ``calibrate_mufm_profile`` (λ_OT and λ_H fitted
    jointly to the per-layer NC1 and normalised step costs, λ_W = the weight decay; λ_OT over
    ``config.mufm_grid``, λ_H over a tenth, one and ten times the weight decay, then at most 12
    refinement fits) on a stratified subsample of the ResNet's last trajectory; returns both
    calibrations (the joint one None at weight decay 0, with ``profile_note`` saying why), the
    subsample, the network's split-half spread of the fitted profile
    (:func:`otcollapse.surrogates.calibrate.profile_spread`)
    and the warnings of unconverged fits.

    A trajectory of several segments (a ResNet-18/34's stages) is calibrated on its last
    segment of at least two layers: the MUFM's layers share one width and its last layer feeds
    the classifier, as the last stage's does. The subsample is moved to ``config``'s device
    (:func:`on_device`); every fit stops at ``config.mufm_tol``. A subsample of at most
    :data:`SMALL_FIT_SAMPLES` samples is fitted on one torch thread."""

    def compute(_folder: Path) -> dict[str, Any]:
        from otcollapse.exceptions import ConvergenceWarning
        from otcollapse.surrogates import calibrate_mufm, calibrate_mufm_profile
        from otcollapse.surrogates.calibrate import profile_spread

        traj = load_captured(Path(ctx.root) / traj_path)
        sub = traj.subsample(min(config.mufm_samples, traj.n_samples), seed=seed)
        segs = sub.segments
        segment = None
        if len(segs) > 1:  # the last stage with a step: the one the classifier reads
            segment = max(i for i in range(len(segs)) if len(segs[i]) >= 2)
        where = "" if segment is None else f", segment {segment} ({len(segs[segment])} layers)"
        ctx.say(
            f"[seed {seed}] fitting the MUFM to the ResNet ({sub.n_samples} samples{where}, "
            f"λ_OT grid {list(config.mufm_grid)}, λ_W = λ_H = {config.weight_decay})"
        )
        # Fits of a few hundred samples gain nothing from a second thread when the machine is
        # idle (at 1000 samples two threads were 1.2-1.4x faster), and beside other CPU-bound
        # work torch's spinning OpenMP threads made them several times slower than one thread
        # (benchmarks/threads.py).
        threads = 1 if sub.n_samples <= SMALL_FIT_SAMPLES else ctx.threads
        with warnings.catch_warnings(record=True) as caught, torch_threads(threads):
            warnings.simplefilter("always", ConvergenceWarning)
            cal = calibrate_mufm(
                on_device(sub, config.device),
                lambda_w=config.weight_decay,
                lambda_h=config.weight_decay,
                grid=list(config.mufm_grid),
                discrepancy="nc1",
                seed=seed,
                segment=segment,
                refine_xatol=0.05,  # λ_OT to about 12%: finer costs fits and changes no conclusion
                tol=config.mufm_tol,
            )
            joint, note = None, ""
            wd = config.weight_decay
            if wd > 0:
                ctx.say(f"[seed {seed}] fitting the MUFM's shape and scale (λ_OT, λ_H) jointly")
                joint = calibrate_mufm_profile(
                    on_device(sub, config.device),
                    lambda_w=wd,
                    lambda_ot_grid=list(config.mufm_grid),
                    lambda_h_grid=[wd / 10, wd, wd * 10],
                    seed=seed,
                    segment=segment,
                    refine_max_fits=12,
                    tol=config.mufm_tol,
                )
            else:
                note = (
                    "not fitted: weight decay 0 gives the classifier λ_W = 0, and the MUFM with "
                    "λ_W = 0 has no minimiser under cross-entropy"
                )
        notes = [str(w.message) for w in caught]
        for n in notes:
            ctx.say(f"[seed {seed}] warning: {n}")
        seg_layers = list(sub.segments[segment]) if segment is not None else None
        return {
            "calibration": cal,
            "fitted_on": sub,
            "warnings": notes,
            "profile": joint,
            "profile_note": note,
            "profile_spread": profile_spread(sub, seg_layers, seed),
        }

    return _cached(ctx, key, compute)


def seed_stage(
    ctx: StageContext,
    key: StageName,
    config: Any,
    seed: int,
    labels: Sequence[str],
    parts: Sequence[Any],
) -> dict[str, Any]:
    """The metrics of one seed (what ``metrics.json`` holds, less figures and timings) from the
    results of its other stages, named by ``labels`` (see :func:`seed_graph`)."""

    def compute(_folder: Path) -> dict[str, Any]:
        from otcollapse.experiments.analysis import seed_metrics

        return seed_metrics(config, seed, dict(zip(labels, parts, strict=True)))

    return _cached(ctx, key, compute)


# ---------------------------------------------------------------------------- the graph
@dataclasses.dataclass(frozen=True)
class SeedGraph:
    """The tasks of one seed of one cell: ``tasks`` (a Dask graph), the key of its metrics
    (``metrics``), and the keys of the parts the run's figures read (label -> key)."""

    tasks: dict[str, Any]
    metrics: str
    parts: dict[str, str]


def seed_graph(config: Any, seed: int, ctx: StageContext) -> SeedGraph:
    """The Dask graph of one seed of ``config`` (a ``RunConfig``): train both twins, capture and
    analyse every captured epoch (and the test split), calibrate the MUFM, assemble the metrics.

    Part labels: ``train:<net>``, ``analyse:<net>:<epoch>``, ``analyse:<net>:test``,
    ``capture:<net>:<epoch>``, ``calibrate``.
    """
    from otcollapse.experiments.config import TWINS

    data = _data_identity(config.data)
    tasks: dict[str, Any] = {}
    parts: dict[str, str] = {}
    last = config.epochs
    for net, _plain in TWINS:
        tk = stage_key(
            "train",
            {"data": data, "seed": seed, "net": net, "epochs_captured": config.epochs_captured()}
            | {f: getattr(config, f) for f in _TRAIN_FIELDS},
        )
        tasks[tk] = (train_stage, ctx, StageName(tk), config, seed, net)
        parts[f"train:{net}"] = tk
        captures = [("train", e) for e in config.epochs_captured()]
        if "test" in config.splits:
            captures.append(("test", last))
        for split, e in captures:
            space = {"space": config.space}
            if config.space == "projected":
                space["project_dim"] = config.project_dim
            ck = stage_key(
                "capture",
                {"split": split, "epoch": e, "max_samples": config.max_samples, "seed": seed}
                | space,
                [tk],
            )
            tasks[ck] = (capture_stage, ctx, StageName(ck), config, seed, split, e, tk)
            full = split == "test" or e in (0, last)
            label = f"{net}:{e}" if split == "train" else f"{net}:test"
            n_boot = config.n_boot if full else 0
            ak = stage_key(
                "analyse",
                {"seed": seed, "full": full, "n_boot": n_boot, "analyses": ANALYSES},
                [ck],
            )
            tasks[ak] = (
                analyse_stage,
                ctx,
                StageName(ak),
                seed,
                full,
                n_boot,
                f"{net} ({split}, epoch {e})",
                ck,
                config.device,
            )
            parts[f"analyse:{label}"] = ak
            parts[f"capture:{label}"] = ck
    if config.mufm:
        ck = parts[f"capture:resnet:{last}"]
        settings = {
            "seed": seed,
            "mufm_samples": config.mufm_samples,
            "mufm_grid": config.mufm_grid,
            "mufm_tol": config.mufm_tol,
            "weight_decay": config.weight_decay,
        }
        kk = stage_key("calibrate", settings, [ck])
        tasks[kk] = (calibrate_stage, ctx, StageName(kk), config, seed, ck)
        parts["calibrate"] = kk
    labels = sorted(parts)
    inputs = [parts[lb] for lb in labels]
    settings = {k: v for k, v in config.to_dict().items() if k != "device"}  # where, not what
    sk = stage_key("seed", {"settings": settings, "seed": seed}, inputs)
    tasks[sk] = (seed_stage, ctx, StageName(sk), config, seed, labels, inputs)
    return SeedGraph(tasks, sk, parts)


def as_float(v: Any) -> float:
    """``v`` as a float, NaN for None and anything that is not a number (a flag, a text)."""
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        return float(v)
    return float("nan")
