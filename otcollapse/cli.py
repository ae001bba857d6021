"""The ``otcollapse`` command line: ``run``, ``analyze``, ``mufm``, ``report``, ``reproduce``.

Every command writes a run folder with ``report.html``, ``metrics.json`` and PNG figures, and
prints where the report is. Errors a user can act on (a missing, empty, truncated or damaged
file, a file of the wrong kind, a folder where a file is expected, an output folder that cannot
be made or written, a setting out of range, an unknown data set, layers of different sample
counts) print one line ``otcollapse: error: ...`` naming the file or the setting, what is wrong
and what to do, and exit with status 2; :func:`error_line` is the one place that words them. The
settings and the input files are checked before the output folder is made, and a refused
command removes an output folder it made. A command writing into a folder holds it
(:func:`otcollapse.io.locked_folder`): a second command writing into the same folder is refused
the same way. ``--help`` works on every command.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import inspect
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from otcollapse import __version__
from otcollapse.exceptions import SweepError
from otcollapse.io import FolderInUseError

__all__ = ["error_line", "load_features", "main"]

EXIT_USAGE = 2


class UserError(Exception):
    """A problem with the user's input: reported in one line, exit status 2."""


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return v


def _float_list(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {text!r}"
        ) from None
    if not vals:
        raise argparse.ArgumentTypeError("empty list")
    return vals


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None


# ---------------------------------------------------------------------------- loading features
_SAVE_PT = (
    "save a dict {'layers': [tensor, ...], 'labels': tensor} of plain tensors with torch.save"
)


def _input_file(p: Path) -> None:
    """A missing path or a folder where a file is expected: the OSError the one place words."""
    if not p.exists():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(p))
    if p.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(p))


def _load_pt(p: Path) -> Any:
    """``torch.load(weights_only=True)``; a file it cannot read is a UserError saying why."""
    import pickle
    import warnings

    import torch

    from otcollapse.io import file_head, short_reason

    head = file_head(p)  # a folder or a permission problem is an OSError here, worded in main
    if not head:
        raise UserError(
            f"{str(p)!r} is empty (0 bytes): it was not written completely; {_SAVE_PT}."
        )
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols: one line only
            warnings.simplefilter("ignore")
            return torch.load(p, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as err:
        if isinstance(err, OSError) and err.filename is not None:
            raise
        text = str(err)
        glob = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if glob:
            raise UserError(
                f"{str(p)!r} holds Python objects ({glob.group(1)}) that torch.load("
                "weights_only=True) refuses: loading them could run code from the file; it was "
                f"refused. {_SAVE_PT[0].upper()}{_SAVE_PT[1:]}."
            ) from None
        if not head.startswith((b"PK", b"\x80")):  # torch.save writes a zip (old: a pickle)
            raise UserError(
                f"{str(p)!r} is not a PyTorch file (torch.save writes a zip archive; is it another "
                f"kind of file renamed {p.suffix}?); {_SAVE_PT}."
            ) from None
        if isinstance(err, pickle.UnpicklingError):
            raise UserError(
                f"{str(p)!r} cannot be read with torch.load(weights_only=True): it is damaged, or "
                "holds Python objects that need pickle, which could run code, so it was refused; "
                f"{_SAVE_PT}."
            ) from None
        raise UserError(
            f"{str(p)!r} is truncated or damaged ({short_reason(err)}); write it again or copy it "
            "again from where it came from."
        ) from None


def load_features(path: str | Path) -> Any:
    """Load a saved trajectory without running code from the file.

    Accepted formats:

    - ``.npz`` written by :func:`otcollapse.io.save_trajectory`, or any ``.npz`` with arrays
      ``layer_0``, ``layer_1``, ... (each ``(n, d_l)``) and ``labels`` (or ``y``), read with
      ``np.load(allow_pickle=False)``;
    - ``.pt`` / ``.pth``: a dict ``{"layers": [tensor (n, d_l), ...], "labels": tensor (n,)}``
      (optionally ``"names"``), read with ``torch.load(weights_only=True)``.

    A file that needs pickle (arbitrary objects) is refused with an explanation; so is an empty,
    truncated or damaged file. Every refusal names the file.

    Raises
    ------
    UserError
        A file of the wrong kind or content (what is wrong, what to do).
    OSError
        A missing path, a folder, no permission (the path is the exception's ``filename``).
    """
    from otcollapse.io import load_trajectory, open_npz
    from otcollapse.measures import Trajectory

    p = Path(path)
    _input_file(p)
    if p.suffix == ".npz":
        try:
            with open_npz(p) as z:
                keys = list(z.files)
                if "header" in keys:
                    return load_trajectory(p)
                layer_keys = sorted(
                    (k for k in keys if re.fullmatch(r"layer_\d+", k)), key=lambda k: int(k[6:])
                )
                if not layer_keys:
                    raise UserError(
                        f"{str(p)!r} has no arrays layer_0, layer_1, ... (found {keys}); save one "
                        "array per layer under those names, with the labels as 'labels'."
                    )
                lab_key = "labels" if "labels" in keys else ("y" if "y" in keys else None)
                if lab_key is None:
                    raise UserError(f"{str(p)!r} has no 'labels' (or 'y') array.")
                layers = [z[k] for k in layer_keys]
                labels = z[lab_key]
            return Trajectory.from_arrays(layers, labels=labels, names=[k[6:] for k in layer_keys])
        except ValueError as err:
            raise _naming(p, err) from None
    if p.suffix in (".pt", ".pth"):
        obj = _load_pt(p)
        if not isinstance(obj, dict) or "layers" not in obj or "labels" not in obj:
            raise UserError(
                f"{str(p)!r} must hold a dict with 'layers' (a list of (n, d_l) tensors) and "
                f"'labels'; got {type(obj).__name__}"
                + (f" with keys {sorted(map(str, obj))}" if isinstance(obj, dict) else "")
                + "."
            )
        try:
            layers = list(obj["layers"])
            return Trajectory.from_arrays(layers, labels=obj["labels"], names=obj.get("names"))
        except (ValueError, TypeError) as err:
            raise _naming(p, err) from None
    raise UserError(f"{str(p)!r}: unknown format {p.suffix!r}; use .npz, .pt or .pth.")


def _naming(p: Path, err: Exception) -> UserError:
    """``err`` as a UserError whose message names the file ``p`` (once)."""
    text = str(err)
    return UserError(text if str(p) in text else f"{str(p)!r}: {text}")


# ---------------------------------------------------------------------------- commands
# The docstring of each command is its ``--help`` description.
def _cmd_run(args: argparse.Namespace) -> int:
    """Train a small constant-width ResNet and its plain twin with weight decay into the
    terminal phase (built-in digits by default, no download), capture their block trajectories
    during training, run the transport profile, geodesic tests and collapse metrics (beside the
    networks at initialisation and the split-half noise floor), fit and calibrate the MUFM, and
    write RUN_DIR/report.html, figures, metrics.json and the trajectories; the stages' artefacts
    (checkpoints included) are in RUN_DIR/stages, which --resume reads back."""
    from otcollapse.experiments import RunConfig, run_experiment

    special = ("quick", "mufm", "splits")  # flags and choices, turned into settings below
    opts: dict[str, Any] = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(RunConfig)
        if f.name not in special and getattr(args, f.name, None) is not None
    }
    if args.no_mufm:
        opts["mufm"] = False
    opts["splits"] = ("train", "test") if args.split == "both" else ("train",)
    config = RunConfig.quick_preset(**opts) if args.quick else RunConfig(**opts)
    out = Path(args.out) if args.out else Path("runs") / ("quick" if args.quick else "run")
    run_experiment(
        config, out, resume=args.resume, progress=not args.no_progress, threads=args.threads
    )
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    """Run the transport profile, geodesic tests and collapse metrics on saved features.
    Formats: .npz with arrays layer_0, layer_1, ... and labels (or a file written by
    otcollapse.save_trajectory), read with allow_pickle=False; .pt/.pth with a dict
    {'layers': [...], 'labels': ...}, read with torch.load(weights_only=True)."""
    from otcollapse._utils import check_device
    from otcollapse.experiments import analyze_trajectories

    if args.device is not None:  # before reading the files
        check_device(args.device)
    trajs = {}
    for f in args.features:
        name = Path(f).stem
        if name in trajs:
            raise UserError(f"two files are named {name!r}; rename one.")
        trajs[name] = load_features(f)
    out = Path(args.out) if args.out else Path("runs") / "analyze"
    opts = {k: getattr(args, k) for k in ("seed", "max_samples", "device")}
    analyze_trajectories(
        trajs,
        out,
        **{k: v for k, v in opts.items() if v is not None},  # None: analyze_trajectories' default
        source={"files": [str(Path(f).resolve()) for f in args.features]},
    )
    return 0


def _cmd_mufm(args: argparse.Namespace) -> int:
    """Fit the multilayer unconstrained feature model for each λ_OT on the data (X = the
    standardised inputs), then analyse each fitted trajectory like a network's."""
    from otcollapse.experiments import MUFMReportSettings, fit_mufm_report

    out = Path(args.out) if args.out else Path("runs") / "mufm"
    settings = {  # an option not given (None) takes MUFMReportSettings' default
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(MUFMReportSettings)
        if getattr(args, f.name, None) is not None
    }
    fit_mufm_report(args.data, out, **settings)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    """Run the main job over a grid of settings (a TOML file: [base] settings, [grid] lists
    expanded as a product, [[cells]] hand-picked) on Dask: an embedded LocalCluster on this
    machine by default, or an existing scheduler (--scheduler tcp://HOST:PORT). Finished cells go
    into SWEEP/store.zarr (read it with otcollapse.load_sweep); a rerun computes only what is
    missing. Then write SWEEP/report.html with the grid figures."""
    from otcollapse.experiments import load_sweep, sweep
    from otcollapse.report import write_sweep_report

    out = Path(args.out) if args.out else None
    try:
        path = sweep(
            args.grid,
            out,
            scheduler=args.scheduler,
            workers=args.workers,
            threads=args.threads,
            retries=args.retries,
            connect_timeout=args.connect_timeout,
            progress=not args.no_progress and sys.stdout.isatty(),
        )
    except SweepError as err:  # the report lists the failed cells beside the finished ones
        if err.folder is not None and any((err.folder / "store.zarr").glob("cell-*")):
            print(f"report: {write_sweep_report(err.folder, load_sweep(err.folder))}")
        raise
    print(f"store: {path / 'store.zarr'} (otcollapse.load_sweep({str(path)!r}))")
    print(f"report: {write_sweep_report(path, load_sweep(path))}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    """Rebuild RUN_DIR/report.html from the run folder's metrics.json and figures (nothing is
    recomputed); for a sweep folder, draw the grid figures from its store."""
    from otcollapse.report import write_report, write_sweep_report

    if (Path(args.run_dir) / "sweep.json").is_file():
        from otcollapse.experiments import load_sweep

        path = write_sweep_report(args.run_dir, load_sweep(args.run_dir))
    else:
        path = write_report(args.run_dir)
    print(f"report: {path}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    """Reproductions: gai-zhang-mnist (one run), resnet-vs-plain-wd, pfc-depth and wd-depth
    (sweeps over the shipped grid files, on Dask). --data: a built-in data set (digits, mnist1d) or one on
    disk (a .npz with X and y, or an image folder root/<class>/<image>)."""
    from otcollapse.experiments import REPRODUCTIONS, reproduce

    if args.name not in REPRODUCTIONS:
        raise UserError(f"unknown reproduction {args.name!r}; choose from {sorted(REPRODUCTIONS)}.")
    out = Path(args.out) if args.out else Path("runs") / f"reproduce_{args.name}"
    reproduce(args.name, args.data, out, quick=args.quick, seed=args.seed, scheduler=args.scheduler)
    return 0


# ---------------------------------------------------------------------------- parser
#: A help text names a setting's default as ``{run:NAME}``, ``{mufm:NAME}`` or
#: ``{analyze:NAME}`` (``{run:NAME|words}``: the words when the default is None). The help
#: formatter fills it in when the help is shown, from where the default lives: RunConfig (and
#: its --quick preset), MUFMReportSettings, analyze_trajectories. So the help cannot drift from
#: the settings, and building the parser imports none of them.
_DEFAULT_TOKEN = re.compile(r"\{(run|mufm|analyze):(\w+)(?:\|([^}]*))?\}")


def _format_default(value: Any) -> str:
    """A default as the user would type it: numbers ``%g``, sequences comma-separated."""
    if isinstance(value, (tuple, list)):
        return ",".join(_format_default(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _library_defaults(owner: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The defaults of the settings of ``owner`` (and, for ``run``, those of --quick)."""
    if owner == "run":
        from otcollapse.experiments import RunConfig

        base = {f.name: getattr(RunConfig(), f.name) for f in dataclasses.fields(RunConfig)}
        quick = RunConfig.quick_preset()
        return base, {k: getattr(quick, k) for k in base}
    if owner == "mufm":
        from otcollapse.experiments import MUFMReportSettings

        fields = dataclasses.fields(MUFMReportSettings)
        return {f.name: f.default for f in fields}, {}
    from otcollapse.experiments import analyze_trajectories

    params = inspect.signature(analyze_trajectories).parameters.values()
    return {q.name: q.default for q in params if q.default is not q.empty}, {}


def _fill_defaults(text: str) -> str:
    """``text`` with every ``{owner:NAME}`` replaced by ``default VALUE`` (see above)."""

    def fill(m: re.Match[str]) -> str:
        base, quick = _library_defaults(m.group(1))
        name, words = m.group(2), m.group(3)
        value = base[name]  # a KeyError here is a typo in a help text (tests/test_cli_help.py)
        out = f"default {words}" if value is None and words else f"default {_format_default(value)}"
        if quick and quick[name] != value:
            out += f"; {_format_default(quick[name])} with --quick"
        return out

    return _DEFAULT_TOKEN.sub(fill, text)


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, filling in the library's defaults (:func:`_fill_defaults`)."""

    def _expand_help(self, action: argparse.Action) -> str:
        return _fill_defaults(super()._expand_help(action))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``otcollapse`` (one sub-command per job)."""
    p = argparse.ArgumentParser(
        prog="otcollapse",
        description="Optimal-transport geometry of deep networks: train, capture, analyse, report.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = (
        (
            "run",
            _cmd_run,
            _run_options,
            "the main job: train a ResNet and its plain twin, analyse both, write a report",
        ),
        (
            "analyze",
            _cmd_analyze,
            _analyze_options,
            "analyse saved trajectories (.npz or .pt) and write the same report",
        ),
        (
            "mufm",
            _cmd_mufm,
            _mufm_options,
            "fit the MUFM for given λ's on a built-in or saved data set and report it",
        ),
        (
            "sweep",
            _cmd_sweep,
            _sweep_options,
            "the main job over a grid of settings, on Dask, into one results store",
        ),
        (
            "report",
            _cmd_report,
            _report_options,
            "rebuild report.html from a run folder's saved results",
        ),
        (
            "reproduce",
            _cmd_reproduce,
            _reproduce_options,
            "rerun a published reference point on data already on disk",
        ),
    )
    for name, func, options, help in commands:  # a command's docstring is its description
        cmd = sub.add_parser(
            name,
            help=help,
            description=inspect.cleandoc(func.__doc__ or ""),
            formatter_class=_HelpFormatter,
        )
        cmd.set_defaults(func=func)
        options(cmd)
    return p


def _report_options(rp: argparse.ArgumentParser) -> None:
    rp.add_argument("run_dir", help="a folder written by run, analyze, mufm or sweep")


def _sweep_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("grid", help="the grid file (TOML)")
    s.add_argument("--out", help="the sweep folder (default runs/sweep_GRIDNAME)")
    s.add_argument(
        "--scheduler",
        help="'serial' (this process), or the address of a running Dask scheduler "
        "(tcp://HOST:PORT); default: an embedded LocalCluster on this machine",
    )
    s.add_argument(
        "--workers",
        type=_positive_int,
        help="worker processes of the embedded cluster (default: the cores)",
    )
    s.add_argument(
        "--threads",
        type=_positive_int,
        help="torch threads in each task (default: cores / workers; 1 on an existing cluster)",
    )
    s.add_argument(
        "--retries", type=int, default=2, help="retries of a task that failed (default %(default)s)"
    )
    s.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        dest="connect_timeout",
        help="seconds to reach --scheduler (default %(default)g)",
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bar")


def _reproduce_options(rr: argparse.ArgumentParser) -> None:
    rr.add_argument("name", help="gai-zhang-mnist, resnet-vs-plain-wd, pfc-depth or wd-depth")
    rr.add_argument(
        "--data",
        required=True,
        help="a built-in data set (digits, mnist1d, ...) or one on disk (.npz or image folder)",
    )
    rr.add_argument(
        "--scheduler",
        help="for the sweeps (resnet-vs-plain-wd, pfc-depth, wd-depth): 'serial', or a Dask "
        "scheduler's address; default an embedded LocalCluster",
    )
    rr.add_argument("--out", help="output folder (default runs/reproduce_NAME)")
    rr.add_argument("--quick", action="store_true", help="tiny settings, for checking the pipeline")
    rr.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the runs (the first seed of a sweep) (default %(default)s)",
    )


def _run_options(r: argparse.ArgumentParser) -> None:
    r.add_argument(
        "--quick",
        action="store_true",
        help="a small preset: about a minute on 2 cores (mlp, conv), about three minutes for "
        "resnet18 on shapes32 (base width 8, 6 epochs)",
    )
    r.add_argument("--out", help="output folder (default runs/run, or runs/quick)")
    r.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    r.add_argument(
        "--data",
        help="a built-in data set (digits, gaussian_mixture, mnist1d, shapes32) or a .npz / image "
        "folder on disk ({run:data})",
    )
    r.add_argument(
        "--model",
        choices=("mlp", "conv", "resnet18", "resnet34"),
        help="residual MLP, constant-width convolutional ResNet, or the CIFAR-style ResNet-18 / "
        "ResNet-34 (four stages, widths W·(1,2,4,8) with W = --width, a 1x1 shortcut at each "
        "stage change; images of at least 8x8, e.g. --data shapes32) ({run:model})",
    )
    r.add_argument(
        "--width",
        type=_positive_int,
        help="width of every block: features (mlp) or channels (conv); the base width W of "
        "resnet18/resnet34 (stages W, 2W, 4W, 8W; 8 with --quick, 64 is He et al.'s) "
        "({run:width})",
    )
    r.add_argument(
        "--blocks",
        type=_positive_int,
        help="residual blocks of mlp and conv ({run:blocks}); resnet18/resnet34 have fixed "
        "layouts (2,2,2,2) / (3,4,6,3): leave --blocks out",
    )
    r.add_argument("--epochs", type=_positive_int, help="training epochs ({run:epochs})")
    r.add_argument(
        "--lr",
        type=float,
        help="initial learning rate (SGD, momentum 0.9, cosine schedule) ({run:lr})",
    )
    r.add_argument(
        "--weight-decay",
        type=float,
        dest="weight_decay",
        help="weight decay ({run:weight_decay})",
    )
    r.add_argument(
        "--batch-size",
        type=_positive_int,
        dest="batch_size",
        help="training batch size ({run:batch_size})",
    )
    r.add_argument(
        "--seed",
        type=int,
        help="seed of the data split, the initialisation and the batch order ({run:seed})",
    )
    r.add_argument(
        "--seeds",
        type=_positive_int,
        help="run N seeds (--seed, --seed + 1, ...) and aggregate with intervals ({run:seeds})",
    )
    r.add_argument(
        "--capture-epochs",
        type=_int_list,
        dest="capture_epochs",
        help="comma-separated epochs to capture, 0 = initialisation "
        "({run:capture_epochs|0,E/4,E/2,3E/4,E})",
    )
    r.add_argument(
        "--split",
        choices=("train", "both"),
        default="train",
        help="captured split: train, or both train and test (default %(default)s)",
    )
    r.add_argument(
        "--max-samples",
        type=_positive_int,
        dest="max_samples",
        help="analyse a stratified subsample of this size ({run:max_samples|all samples})",
    )
    r.add_argument("--no-mufm", action="store_true", help="skip the MUFM calibration")
    r.add_argument(
        "--mufm-samples",
        type=_positive_int,
        dest="mufm_samples",
        help="samples (a stratified subsample) the MUFM is fitted on ({run:mufm_samples})",
    )
    r.add_argument(
        "--mufm-grid",
        type=_float_list,
        dest="mufm_grid",
        help="λ_OT grid of the MUFM calibration, comma-separated ({run:mufm_grid})",
    )
    r.add_argument(
        "--mufm-tol",
        type=float,
        dest="mufm_tol",
        help="convergence tolerance of every MUFM fit ({run:mufm_tol}; 1e-06 with --quick "
        "for resnet18/resnet34)",
    )
    r.add_argument(
        "--device",
        help="torch device of every stage (training, capture, analyses): auto (CUDA when there "
        "is a GPU, else the CPU), cpu, cuda, cuda:1, mps; recorded in metrics.json ({run:device})",
    )
    r.add_argument(
        "--space",
        choices=("pooled", "stream", "projected"),
        help="feature space of a conv model's layers: global-average-pooled channels, the "
        "flattened residual stream, or its seeded Gaussian projection to --project-dim "
        "({run:space}); recorded with every number",
    )
    r.add_argument(
        "--project-dim",
        type=_positive_int,
        dest="project_dim",
        help="dimension of --space projected ({run:project_dim})",
    )
    r.add_argument(
        "--n-boot",
        type=int,
        dest="n_boot",
        help="subsampling replicates of the geodesic tests' intervals, 0 for none ({run:n_boot})",
    )
    r.add_argument(
        "--threads",
        type=_positive_int,
        help="torch threads (default: the cores this process may use); recorded",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bars")


def _analyze_options(a: argparse.ArgumentParser) -> None:
    a.add_argument("features", nargs="+", help="one or more trajectory files")
    a.add_argument("--out", help="output folder (default runs/analyze)")
    a.add_argument(
        "--seed",
        type=int,
        help="seed of the subsampling and the geodesic tests' null baselines ({analyze:seed})",
    )
    a.add_argument(
        "--max-samples",
        type=_positive_int,
        dest="max_samples",
        help="analyse a stratified subsample of this size ({analyze:max_samples|all samples})",
    )
    a.add_argument(
        "--device",
        help="torch device the analyses run on: cpu, cuda, cuda:1, mps ({analyze:device})",
    )


def _mufm_options(m: argparse.ArgumentParser) -> None:
    m.add_argument(
        "--data",
        default="digits",
        help="a built-in data set or a .npz file with X and y (default %(default)s)",
    )
    m.add_argument(
        "--lambda-ot",
        type=_float_list,
        dest="lambda_ot",
        help="comma-separated λ_OT values, one fit each ({mufm:lambda_ot})",
    )
    m.add_argument(
        "--lambda-w",
        type=float,
        dest="lambda_w",
        help="weight decay λ_W of the classifier ({mufm:lambda_w})",
    )
    m.add_argument(
        "--lambda-h",
        type=float,
        dest="lambda_h",
        help="feature decay λ_H of the last layer H_L ({mufm:lambda_h})",
    )
    m.add_argument(
        "--lambda-b",
        type=float,
        dest="lambda_b",
        help="decay λ_b of the classifier's bias ({mufm:lambda_b})",
    )
    m.add_argument(
        "--n-layers",
        type=_positive_int,
        dest="n_layers",
        help="L transport steps, L + 1 measures ({mufm:n_layers})",
    )
    m.add_argument(
        "--loss", choices=("ce", "mse"), help="cross-entropy or square loss ({mufm:loss})"
    )
    m.add_argument(
        "--coupling",
        choices=("paired", "wasserstein"),
        help="transport cost between layers: paired rows or W2 ({mufm:coupling})",
    )
    m.add_argument(
        "--samples",
        type=_positive_int,
        help="stratified subsample of the data to fit on ({mufm:samples|all samples})",
    )
    m.add_argument(
        "--dim",
        type=_positive_int,
        help="feature dimension: a PCA of the inputs when smaller, zero padding when larger "
        "({mufm:dim|the input dimension})",
    )
    m.add_argument("--seed", type=int, help="seed of the subsample and the fits ({mufm:seed})")
    m.add_argument(
        "--device",
        help="torch device the fits and analyses run on: cpu, cuda, cuda:1, mps ({mufm:device})",
    )
    m.add_argument("--out", help="output folder (default runs/mufm)")


# ---------------------------------------------------------------------------- errors
_PATH_PROBLEMS: dict[int, tuple[str, str]] = {
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.EISDIR: ("a folder, where a file is expected", "give the path of a file"),
    errno.ENOTDIR: ("a part of this path is a file, not a folder", "choose another path"),
    errno.EEXIST: (
        "a file, where a folder is wanted",
        "choose another output folder (--out), or move the file away",
    ),
    errno.EACCES: (
        "permission denied",
        "choose a place you may read or write (--out), or change its permissions",
    ),
    errno.EROFS: ("read-only file system", "choose a folder on a writable disk (--out)"),
    errno.ENOSPC: (
        "no space left on the disk",
        "free some space and run the command again (a run continues with --resume)",
    ),
    errno.ENAMETOOLONG: ("name too long", "choose a shorter path"),
}
_PATH_PROBLEMS[errno.EPERM] = _PATH_PROBLEMS[errno.EACCES]
_PATH_PROBLEMS[errno.EDQUOT] = _PATH_PROBLEMS[errno.ENOSPC]


def error_line(err: BaseException) -> str:
    """The one line ``otcollapse: error: ...`` for a problem with the user's input.

    The one place where the command line words problems with files and paths: an ``OSError``
    names its path, what is wrong (missing, a folder, no permission, an existing file where a
    folder is wanted, a full disk) and what to do; a ``UserError`` or ``ValueError`` (a file of
    the wrong kind or content, a bad setting, a folder in use) already says all three.
    """
    if isinstance(err, OSError) and not isinstance(err, FolderInUseError):
        path = err.filename2 if err.filename2 is not None else err.filename  # a rename's target
        what, fix = _PATH_PROBLEMS.get(
            err.errno or -1, (err.strerror or str(err) or type(err).__name__, "check the path")
        )
        text = f"{os.fspath(path)!r}: {what}; {fix}." if path is not None else f"{what}; {fix}."
    else:
        text = str(err)
    return "otcollapse: error: " + " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``otcollapse`` command; returns the exit status.

    A problem with the user's input (a file, a path, a setting, an output folder in use by
    another run) prints one line :func:`error_line` on stderr and returns 2, before any work
    that it would spoil; an output folder the refused command made is removed again.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (UserError, ValueError, FolderInUseError, OSError) as err:
        print(error_line(err), file=sys.stderr)
        return EXIT_USAGE
    except SweepError as err:  # the work ran; some of it failed: not a usage problem
        print("otcollapse: error: " + " ".join(str(err).split()), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("otcollapse: interrupted (a run can continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
