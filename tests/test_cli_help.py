"""The command line's help and its checks before any work.

- every option of every sub-command has a help text, and the default it shows is the value the
  command uses: RunConfig's (and its --quick preset's) for ``run``, MUFMReportSettings' for
  ``mufm``, analyze_trajectories' for ``analyze``;
- ``mufm`` checks every setting before the first fit (one line, exit 2, at once);
- ``analyze`` and ``mufm`` take ``--device``: ``cpu`` runs there, a device this machine lacks is
  one line and exit 2 before any file is read or any folder made.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import otcollapse.experiments as experiments
import otcollapse.surrogates as surrogates
from otcollapse import Trajectory
from otcollapse.cli import build_parser, main
from otcollapse.experiments import MUFMReportSettings, RunConfig, analyze_trajectories
from otcollapse.io import save_trajectory

COMMANDS = ("run", "analyze", "mufm", "sweep", "report", "reproduce")
NO_CUDA = not torch.cuda.is_available()


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _options(cmd: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in cmd._actions if a.option_strings and a.dest != "help"]


def _entries(cmd: argparse.ArgumentParser, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The shown help of each option, by its first option string (whitespace normalised)."""
    monkeypatch.setenv("COLUMNS", "2000")  # no wrapping inside a help text
    text = cmd.format_help()
    body = text.split("options:\n", 1)[1]
    out: dict[str, str] = {}
    for chunk in re.split(r"\n(?=  -)", "\n" + body):
        chunk = " ".join(chunk.split())
        if chunk:
            out[chunk.split()[0].rstrip(",")] = chunk
    return out


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(_shown(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _library_defaults(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if name == "run":
        base, quick = RunConfig(), RunConfig.quick_preset()
        fields = [f.name for f in dataclasses.fields(RunConfig)]
        return {f: getattr(base, f) for f in fields}, {f: getattr(quick, f) for f in fields}
    if name == "mufm":
        return {f.name: f.default for f in dataclasses.fields(MUFMReportSettings)}, {}
    params = inspect.signature(analyze_trajectories).parameters.values()
    return {p.name: p.default for p in params if p.default is not p.empty}, {}


# ---------------------------------------------------------------------------- help texts
@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_a_help_text(name, monkeypatch):
    cmd = _subparsers()[name]
    entries = _entries(cmd, monkeypatch)
    for action in cmd._actions:
        assert action.help and action.help.strip(), f"{name} {action.option_strings}: no help"
    for action in _options(cmd):
        shown = entries[action.option_strings[0]]
        assert len(shown) > len(" ".join(action.option_strings)) + 10, shown
        assert "{" + name not in shown and "None" not in shown, shown  # every default filled in


@pytest.mark.parametrize("name", ("run", "mufm", "analyze"))
def test_shown_defaults_are_the_library_defaults(name, monkeypatch):
    cmd = _subparsers()[name]
    entries = _entries(cmd, monkeypatch)
    base, quick = _library_defaults(name)
    checked = []
    for action in _options(cmd):
        if action.dest not in base or action.nargs == 0:  # a flag (--quick) has no default
            continue
        shown = entries[action.option_strings[0]]
        # not given, the option is left out and the library's own default applies
        assert action.default is None, f"{name} {action.dest}: a second default in the parser"
        value = base[action.dest]
        if value is not None:
            assert f"(default {_shown(value)}" in shown, shown
        else:
            assert "(default " in shown, shown
        if quick and quick[action.dest] != value:
            assert f"; {_shown(quick[action.dest])} with --quick)" in shown, shown
        checked.append(action.dest)
    expected = {
        "run": {"width", "epochs", "lr", "weight_decay", "batch_size", "seed", "mufm_samples"},
        "mufm": {"lambda_w", "lambda_h", "lambda_b", "loss", "coupling", "seed", "device"},
        "analyze": {"seed", "max_samples", "device"},
    }[name]
    assert expected <= set(checked), expected - set(checked)


def test_help_shows_the_quick_preset():
    text = " ".join(_subparsers()["run"].format_help().split())
    assert "(default 60; 12 with --quick)" in text  # --epochs
    assert "(default 64; 32 with --quick)" in text  # --width


def test_run_and_mufm_without_options_use_the_library_defaults(tmp_path, monkeypatch):
    seen: dict[str, Any] = {}
    monkeypatch.setattr(
        experiments, "run_experiment", lambda config, out, **kw: seen.update(run=config)
    )
    monkeypatch.setattr(
        experiments, "fit_mufm_report", lambda data, out, **kw: seen.update(mufm=kw)
    )
    assert main(["run", "--out", str(tmp_path / "r")]) == 0
    assert seen["run"] == RunConfig()
    assert main(["run", "--quick", "--out", str(tmp_path / "q")]) == 0
    assert seen["run"] == RunConfig.quick_preset()
    assert main(["mufm", "--out", str(tmp_path / "m")]) == 0
    assert MUFMReportSettings(**seen["mufm"]) == MUFMReportSettings()


# ---------------------------------------------------------------------------- mufm: checks first
@pytest.fixture
def no_fit(monkeypatch):
    """fit_mufm must not be reached."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("fit_mufm ran before the settings were checked")

    monkeypatch.setattr(surrogates, "fit_mufm", refuse)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--lambda-ot", "0,-1"], "lambda_ot"),
        (["--lambda-ot", "0,0.01,nan"], "lambda_ot"),
        (["--lambda-w", "-1"], "lambda_w"),
        (["--lambda-h", "inf"], "lambda_h"),
        (["--lambda-b", "-0.5"], "lambda_b"),
        (["--samples", "1"], "samples"),
        (["--samples", "5"], "fewer than the 10 classes"),
        (["--device", "gpu"], "device"),
        pytest.param(
            ["--device", "cuda"],
            "no CUDA GPU",
            marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU"),
        ),
        (["--data", "no-such-data"], "unknown data set"),
    ],
)
def test_mufm_refuses_a_bad_setting_at_once(argv, words, tmp_path, capsys, no_fit):
    out = tmp_path / "m"
    t0 = time.perf_counter()
    rc = main(["mufm", *argv, "--out", str(out)])
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("otcollapse: error: ") and err.count("\n") == 1, err
    assert words in err, err
    assert not out.exists()
    assert seconds < 0.5, f"refused after {seconds:.2f} s"


def test_mufm_settings_are_all_checked_at_construction():
    for bad in (
        {"lambda_ot": (0.0, -1.0)},
        {"lambda_ot": ()},
        {"n_layers": 0},
        {"loss": "hinge"},
        {"coupling": "sinkhorn"},
        {"samples": 0},
        {"dim": 0},
        {"device": "gpu"},
    ):
        with pytest.raises(ValueError):
            MUFMReportSettings(**bad)
    for bad in ({"n_layers": 2.0}, {"seed": "0"}, {"lambda_ot": 0.1}):
        with pytest.raises(TypeError):
            MUFMReportSettings(**bad)


# ---------------------------------------------------------------------------- --device
@pytest.fixture
def saved(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 12)
    layers = [rng.standard_normal((36, 3)) + (1 + l) * np.eye(3)[y] for l in range(3)]
    path = tmp_path / "feats.npz"
    save_trajectory(path, Trajectory.from_arrays(layers, labels=y))
    return path


@pytest.fixture
def small_data(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)
    path = tmp_path / "small.npz"
    np.savez(path, X=rng.standard_normal((30, 3)) + 2 * np.eye(3)[y], y=y)
    return path


@pytest.mark.parametrize("device", ([], ["--device", "cpu"]), ids=("default", "cpu"))
def test_analyze_runs_on_the_device_given(device, saved, tmp_path):
    out = tmp_path / "a"
    assert main(["analyze", str(saved), *device, "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["settings"]["device"] == "cpu"


def test_mufm_fits_on_the_device_given(small_data, tmp_path, monkeypatch):
    devices = []
    real = surrogates.fit_mufm

    def spy(X: Any, y: Any, **kw: Any) -> Any:
        devices.append(X.device.type)
        return real(X, y, **kw)

    monkeypatch.setattr(surrogates, "fit_mufm", spy)
    out = tmp_path / "m"
    argv = ["mufm", "--data", str(small_data), "--lambda-ot", "0.01", "--n-layers", "2"]
    assert main([*argv, "--device", "cpu", "--out", str(out)]) == 0
    assert devices == ["cpu"]
    assert json.loads((out / "metrics.json").read_text())["settings"]["device"] == "cpu"


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("command", ("analyze", "mufm"))
def test_a_missing_device_is_one_line_and_exit_2(command, saved, tmp_path, capsys, no_fit):
    out = tmp_path / "o"
    files = [str(saved)] if command == "analyze" else []
    assert main([command, *files, "--device", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("otcollapse: error: ") and err.count("\n") == 1, err
    assert "'cuda'" in err and "no CUDA GPU" in err, err
    assert not out.exists()


def test_analyze_checks_the_device_before_reading_files(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "missing.npz"), "--device", "gpu"]) == 2
    assert "unknown device 'gpu'" in capsys.readouterr().err
