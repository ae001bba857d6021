"""Bad files and paths on the command line, and one writer per output folder (issues 18, 19).

Every damaged or misplaced file, every bad path and every bad setting gets one line
``otcollapse: error: ...`` on stderr naming the file (or the setting), exit status 2, no
traceback, and no output folder left behind; a second command writing into a folder that another
one holds is refused the same way.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otcollapse.cli import main
from otcollapse.experiments import RunConfig, run_experiment
from otcollapse.io import LOCK_FILE

RUN = ["run", "--quick", "--no-mufm", "--epochs", "2", "--no-progress"]


def _features() -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    layers = {f"layer_{i}": rng.normal(size=(24, 3)) for i in range(3)}
    return layers, np.arange(24) % 3


def _npz_bytes() -> bytes:
    layers, y = _features()
    buf = io.BytesIO()
    np.savez(buf, labels=y, **layers)
    return buf.getvalue()


def _pt_bytes() -> bytes:
    layers, y = _features()
    buf = io.BytesIO()
    torch.save(
        {"layers": [torch.as_tensor(a) for a in layers.values()], "labels": torch.as_tensor(y)},
        buf,
    )
    return buf.getvalue()


NPZ, PT = _npz_bytes(), _pt_bytes()


def _crc_broken(raw: bytes) -> bytes:
    """The archive with one byte of the member ``layer_1.npy``'s data flipped."""
    at = raw.index(b"layer_1.npy") + len("layer_1.npy") + 140  # inside the array's data
    return raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :]


@pytest.fixture
def bad(tmp_path):
    """A folder of damaged and misplaced files, named after what is wrong with them."""
    (tmp_path / "half.npz").write_bytes(NPZ[: len(NPZ) // 2])
    (tmp_path / "head.npz").write_bytes(NPZ[:100])
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "crc.npz").write_bytes(_crc_broken(NPZ))
    (tmp_path / "text.pt").write_text("these are not tensors\n")
    (tmp_path / "cut.pt").write_bytes(PT[: len(PT) // 2])
    (tmp_path / "folder.npz").mkdir()
    (tmp_path / "text.npz").write_text("these are not arrays\n")
    (tmp_path / "a_file").write_text("I am a file")
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 20)
    np.savez(tmp_path / "data.npz", X=rng.normal(size=(60, 5)) + 3 * np.eye(3, 5)[y], y=y)
    layers, labels = _features()
    np.savez(tmp_path / "feats.npz", labels=labels, **layers)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"kind": "analyze", "headline": {"a": {"ots": 0.5, ')
    return tmp_path


def _call(argv: list[str], tmp: Path, capsys) -> tuple[int, str]:
    rc = main([a.replace("{tmp}", str(tmp)) for a in argv])
    return rc, capsys.readouterr().err


def _one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("otcollapse: error: ")
    return lines[0]


# the rows of issue 18's table, the three misleading messages, and each on every sub-command
CASES = [
    (["analyze", "{tmp}/half.npz"], "half.npz", "truncated or damaged"),
    (["analyze", "{tmp}/head.npz"], "head.npz", "truncated or damaged"),
    (["analyze", "{tmp}/empty.npz"], "empty.npz", "empty (0 bytes)"),
    (["analyze", "{tmp}/crc.npz"], "crc.npz", "CRC"),
    (["analyze", "{tmp}/text.pt"], "text.pt", "not a PyTorch file"),
    (["analyze", "{tmp}/cut.pt"], "cut.pt", "truncated or damaged"),
    (["analyze", "{tmp}/folder.npz"], "folder.npz", "a folder, where a file is expected"),
    (["analyze", "{tmp}/text.npz"], "text.npz", "not a .npz archive"),
    (["analyze", "{tmp}/feats.npz", "--out", "{tmp}/a_file"], "a_file", "where a folder"),
    (["analyze", "{tmp}/feats.npz", "--out", "{tmp}/a_file/x"], "a_file/x", "is a file"),
    ([*RUN, "--out", "{tmp}/a_file"], "a_file", "where a folder"),
    (["mufm", "--data", "{tmp}/data.npz", "--out", "{tmp}/a_file"], "a_file", "where a folder"),
    (
        ["reproduce", "pfc-depth", "--data", "{tmp}/data.npz", "--quick", "--out", "{tmp}/a_file"],
        "a_file",
        "where a folder",
    ),
    ([*RUN, "--weight-decay", "inf", "--out", "{tmp}/new"], "weight_decay", "finite"),
    ([*RUN, "--lr", "nan", "--out", "{tmp}/new"], "lr", "finite"),
    ([*RUN, "--mufm-grid", "0.1,inf", "--out", "{tmp}/new"], "mufm_grid", "finite"),
    (["mufm", "--lambda-w", "inf", "--out", "{tmp}/new"], "lambda_w", "finite"),
    (["mufm", "--lambda-ot", "0,nan", "--out", "{tmp}/new"], "lambda_ot", "finite"),
    ([*RUN, "--data", "{tmp}/text.npz", "--out", "{tmp}/new"], "text.npz", "not a .npz archive"),
    ([*RUN, "--data", "{tmp}/crc.npz", "--out", "{tmp}/new"], "crc.npz", "CRC"),
    (["mufm", "--data", "{tmp}/half.npz", "--out", "{tmp}/new"], "half.npz", "truncated"),
    (
        ["reproduce", "pfc-depth", "--data", "{tmp}/text.npz", "--out", "{tmp}/new"],
        "text.npz",
        "not a",
    ),
    (["report", "{tmp}/run"], "metrics.json", "not valid JSON"),
]


@pytest.mark.parametrize(("argv", "name", "problem"), CASES)
def test_bad_files_and_paths_get_one_line(bad, capsys, argv, name, problem):
    before = sorted(os.listdir(bad))
    rc, err = _call(argv, bad, capsys)
    line = _one_line(err)
    assert rc == 2
    assert name in line and problem in line
    assert "allow_pickle" not in line  # NumPy's advice to load with pickle is never passed on
    assert sorted(os.listdir(bad)) == before  # no output folder left by a refused command


def test_same_file_same_words_in_every_command(bad, capsys):
    """A text file renamed .npz: analyze, run, mufm and reproduce say the same thing."""
    argvs = [
        ["analyze", "{tmp}/text.npz"],
        [*RUN, "--data", "{tmp}/text.npz", "--out", "{tmp}/o"],
        ["mufm", "--data", "{tmp}/text.npz", "--out", "{tmp}/o"],
        ["reproduce", "pfc-depth", "--data", "{tmp}/text.npz", "--out", "{tmp}/o"],
    ]
    lines = set()
    for argv in argvs:
        rc, err = _call(argv, bad, capsys)
        assert rc == 2
        lines.add(_one_line(err))
    assert len(lines) == 1 and "pickle" not in lines.pop()


def _refuse_writes_under(monkeypatch, root: Path) -> None:
    """Act as a read-only ``root`` does for a user who is not root (tests may run as root)."""
    mkdir, os_open = pathlib.Path.mkdir, os.open

    def guarded_mkdir(self, *args, **kwargs):
        if Path(self).is_relative_to(root):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return mkdir(self, *args, **kwargs)

    def guarded_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and Path(path).is_relative_to(root):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", guarded_mkdir)
    monkeypatch.setattr(os, "open", guarded_open)


@pytest.mark.parametrize("where", ["{tmp}/ro/new", "{tmp}/ro"])
@pytest.mark.parametrize(
    "argv",
    [
        ["analyze", "{tmp}/feats.npz"],
        [*RUN],
        ["mufm", "--data", "{tmp}/data.npz", "--samples", "30"],
        ["reproduce", "pfc-depth", "--data", "{tmp}/data.npz", "--quick"],
    ],
    ids=["analyze", "run", "mufm", "reproduce"],
)
def test_out_in_a_read_only_folder(bad, capsys, monkeypatch, argv, where):
    """--out inside a read-only folder (a new folder there), or the read-only folder itself."""
    (bad / "ro").mkdir()
    _refuse_writes_under(monkeypatch, bad / "ro")
    rc, err = _call([*argv, "--out", where], bad, capsys)
    line = _one_line(err)
    assert rc == 2 and "permission denied" in line
    assert repr(where.replace("{tmp}", str(bad))) in line  # the folder, not the lock file
    assert os.listdir(bad / "ro") == []


@pytest.mark.parametrize("where", ["{tmp}/ro/new", "{tmp}/ro"])
def test_out_in_a_really_read_only_folder(bad, capsys, where):
    ro = bad / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        try:
            (ro / "probe").mkdir()
        except PermissionError:
            pass
        else:
            pytest.skip("this user may write a read-only folder (root)")
        rc, err = _call(["analyze", "{tmp}/feats.npz", "--out", where], bad, capsys)
    finally:
        ro.chmod(0o755)
    line = _one_line(err)
    assert rc == 2 and "permission denied" in line
    assert repr(where.replace("{tmp}", str(bad))) in line
    assert os.listdir(ro) == []


def test_a_failed_analysis_removes_the_folder_it_made(tmp_path, capsys):
    np.savez(
        tmp_path / "one_class.npz",
        layer_0=np.ones((10, 2)),
        layer_1=np.ones((10, 2)),
        labels=np.zeros(10, int),
    )
    rc, err = _call(["analyze", "{tmp}/one_class.npz", "--out", "{tmp}/a/b"], tmp_path, capsys)
    assert rc == 2 and "K >= 2" in _one_line(err)
    assert sorted(os.listdir(tmp_path)) == ["one_class.npz"]


# ---------------------------------------------------------------------------- random bytes
_MAGIC = st.sampled_from([b"", b"PK\x03\x04", b"PK\x05\x06", b"\x80\x02", b"\x93NUMPY"])


def _analyze_bytes(raw: bytes, suffix: str) -> tuple[int, str, bool]:
    """``otcollapse analyze`` on a file holding ``raw``: the status, stderr, whether --out exists."""
    with tempfile.TemporaryDirectory() as d:
        path, out = Path(d) / f"feats{suffix}", Path(d) / "out"
        path.write_bytes(raw)
        err = io.StringIO()
        with (
            contextlib.redirect_stderr(err),
            contextlib.redirect_stdout(io.StringIO()),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always")
            rc = main(["analyze", str(path), "--out", str(out)])
        assert not [w for w in caught if "protocol" in str(w.message)]  # nothing else printed
        return rc, err.getvalue(), out.exists()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(magic=_MAGIC, body=st.binary(max_size=200), suffix=st.sampled_from([".npz", ".pt"]))
def test_random_bytes_are_refused_in_one_line(magic, body, suffix):
    rc, err, made_out = _analyze_bytes(magic + body, suffix)
    assert rc == 2
    assert f"feats{suffix}" in _one_line(err)
    assert not made_out


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), suffix=st.sampled_from([".npz", ".pt"]))
def test_damaged_files_are_refused_in_one_line(data, suffix):
    """Truncated good files are refused; a flipped byte is refused or (rarely) harmless."""
    good = NPZ if suffix == ".npz" else PT
    cut = data.draw(st.integers(0, len(good) - 1), label="cut")
    rc, err, made_out = _analyze_bytes(good[:cut], suffix)
    assert rc == 2 and f"feats{suffix}" in _one_line(err) and not made_out
    at = data.draw(st.integers(0, len(good) - 1), label="flip")
    flipped = good[:at] + bytes([good[at] ^ 0xFF]) + good[at + 1 :]
    rc, err, _ = _analyze_bytes(flipped, suffix)
    assert rc in (0, 2)
    if rc == 2:
        _one_line(err)


# ---------------------------------------------------------------------------- one writer per folder
@contextlib.contextmanager
def _held_elsewhere(folder: Path, pid: int):
    """Hold ``folder``'s lock as another process does: ``flock`` on an open file of our own."""
    import fcntl

    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{pid}\n".encode())
        yield
    finally:
        os.close(fd)
        os.unlink(folder / LOCK_FILE)


WRITERS = {
    "run": [*RUN, "--out", "{tmp}/x"],
    "run-resume": [*RUN, "--resume", "--out", "{tmp}/x"],
    "analyze": ["analyze", "{tmp}/feats.npz", "--out", "{tmp}/x"],
    "mufm": ["mufm", "--data", "{tmp}/data.npz", "--samples", "30", "--out", "{tmp}/x"],
    "reproduce": [
        "reproduce",
        "pfc-depth",
        "--data",
        "{tmp}/data.npz",
        "--quick",
        "--out",
        "{tmp}/x",
    ],
    "report": ["report", "{tmp}/x"],
}


@pytest.mark.parametrize("argv", WRITERS.values(), ids=WRITERS.keys())
def test_a_second_writer_is_refused(bad, capsys, argv):
    x = bad / "x"
    x.mkdir()
    (x / "metrics.json").write_text(json.dumps({"kind": "analyze", "headline": {}}))
    before = sorted(os.listdir(x))
    with _held_elsewhere(x, pid=4242):
        rc, err = _call(argv, bad, capsys)
        line = _one_line(err)
        assert rc == 2 and "in use by another otcollapse process (pid 4242)" in line
        assert repr(str(x)) in line
        assert sorted(os.listdir(x)) == sorted([*before, LOCK_FILE])  # nothing written


def test_the_lock_is_held_against_other_processes(tmp_path):
    """The lock is a real ``flock``: another process cannot take it while this one holds it."""
    from otcollapse.io import locked_folder

    code = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n"
        "    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "    print('took it')\n"
        "except BlockingIOError:\n"
        "    print('refused')\n"
    )
    lock = tmp_path / "x" / LOCK_FILE
    with locked_folder(tmp_path / "x"):
        assert lock.read_text().strip() == str(os.getpid())
        r = subprocess.run([sys.executable, "-c", code, str(lock)], capture_output=True, text=True)
        assert r.stdout.strip() == "refused", r.stderr
    assert not lock.exists()


TINY = {"width": 8, "blocks": 2, "epochs": 2, "max_samples": 60, "mufm": False}


def test_two_concurrent_runs_into_one_folder(tmp_path, capsys):
    """One run proceeds; the other, started while the first trains, exits 2 with one line.

    The first resumes a run killed with SIGKILL: its stale lock is taken over and the temporary
    files of its killed writes are removed.
    """
    out = tmp_path / "X"
    (out / "checkpoints" / "resnet").mkdir(parents=True)
    (out / LOCK_FILE).write_text("999999999\n")
    killed = [
        out / ".metrics.json.abcdefgh.tmp",
        out / "checkpoints/resnet/.checkpoint.pt.q_123456.tmp",
    ]
    training, go = threading.Event(), threading.Event()
    result: dict[str, object] = {}

    def log(msg: str) -> None:
        if "training resnet" in msg:
            training.set()
            go.wait(60)

    def first() -> None:
        cfg = RunConfig(**TINY, seed=0, capture_epochs=(0,))
        try:
            result["metrics"] = run_experiment(cfg, out, resume=True, progress=False, log=log)
        except BaseException as exc:  # reported by the assertion below
            result["error"] = exc

    for f in killed:
        f.write_bytes(b"half a file")
    t = threading.Thread(target=first)
    t.start()
    try:
        assert training.wait(60)
        assert not any(f.exists() for f in killed)
        rc, err = _call([*RUN, "--seed", "1", "--out", str(out)], tmp_path, capsys)
        assert rc == 2 and "in use" in _one_line(err) and repr(str(out)) in err
    finally:
        go.set()
        t.join(120)
    assert "error" not in result and result["metrics"]["seed"] == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["seed"] == 0 and m["settings"]["seed"] == 0
    assert not (out / LOCK_FILE).exists()
    # once the first run is done the folder is an ordinary finished run: not empty
    rc, err = _call([*RUN, "--seed", "1", "--out", str(out)], tmp_path, capsys)
    assert rc == 2 and "not empty" in _one_line(err)


def test_a_stale_lock_and_killed_writes_are_cleaned_up(bad, capsys):
    """A lock file of a killed process is taken over; temporary files of killed writes go."""
    x = bad / "x"
    (x / "trajectories").mkdir(parents=True)
    (x / "checkpoints" / "resnet").mkdir(parents=True)
    (x / LOCK_FILE).write_text("999999999\n")  # its process died: nobody holds the flock
    junk = [
        x / ".metrics.json.k2j4_x9q.tmp",
        x / "trajectories" / ".resnet_train_epoch0000.npz.abcdefgh.tmp",
        x / "checkpoints" / "resnet" / ".checkpoint.pt.0123456_.tmp",
        x / "figures" / ".ots_lss.png.zzzzzzzz.png.tmp",
    ]
    kept = [
        x / "notes.tmp",
        x / ".notes.txt.abcdefgh.tmp",  # not a name otcollapse writes: another program's
        x / "mine" / ".metrics.json.abcdefgh.tmp",  # not a folder otcollapse writes
    ]
    for f in junk + kept:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"partial")
    rc, err = _call(["analyze", "{tmp}/feats.npz", "--out", "{tmp}/x"], bad, capsys)
    assert rc == 0, err
    assert not any(f.exists() for f in junk)
    assert all(f.exists() for f in kept)
    assert not (x / LOCK_FILE).exists() and (x / "report.html").exists()
