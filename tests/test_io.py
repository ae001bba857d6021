"""Saving and loading: round trips, atomic writes, refusal of pickled content."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from otcollapse import Trajectory, load_trajectory, save_trajectory
from otcollapse.io import load_json, save_json


def full_trajectory():
    g = np.random.default_rng(0)
    h0 = g.normal(size=(12, 3))
    h1 = g.normal(size=(12, 5)).astype(np.float32)
    w = g.random(12)
    return Trajectory.from_arrays(
        [h0, h1, h1 * 2],
        labels=np.arange(12) % 3,
        names=["stem", "stage2", "out"],
        weights=w / w.sum(),
        shortcuts={0: g.normal(size=(12, 5))},
        classifier=(g.normal(size=(3, 5)), g.normal(size=3)),
        logits=g.normal(size=(12, 3)),
        metadata={"dataset": "digits", "epoch": 7, "split": "train"},
    )


@pytest.mark.parametrize("compressed", [False, True])
def test_round_trip(tmp_path, compressed):
    traj = full_trajectory()
    path = save_trajectory(tmp_path / "t.npz", traj, compressed=compressed)
    back = load_trajectory(path)
    assert back.names == traj.names and back.metadata == traj.metadata
    for a, b in zip(traj.layers, back.layers, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert np.array_equal(back.labels, traj.labels) and np.array_equal(back.weights, traj.weights)
    assert np.array_equal(back.shortcuts[0], traj.shortcuts[0])
    assert np.array_equal(back.classifier[0], traj.classifier[0])
    assert np.array_equal(back.classifier[1], traj.classifier[1])
    assert np.array_equal(back.logits, traj.logits)
    # nothing but the file itself is left in the folder (the temporary file was renamed)
    assert os.listdir(tmp_path) == ["t.npz"]
    mask = os.umask(0)
    os.umask(mask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~mask


def test_suffix_added_and_overwrite_is_atomic(tmp_path):
    traj = full_trajectory()
    path = save_trajectory(tmp_path / "run", traj)
    assert path.name == "run.npz"
    save_trajectory(path, traj.replace(metadata={"epoch": 8}))
    assert load_trajectory(path).metadata == {"epoch": 8}
    assert sorted(os.listdir(tmp_path)) == ["run.npz"]


def test_failed_write_leaves_the_old_file(tmp_path):
    traj = full_trajectory()
    path = save_trajectory(tmp_path / "t.npz", traj)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="JSON-serialisable"):
        save_trajectory(path, traj.replace(metadata={"bad": object()}))
    assert path.read_bytes() == before


def test_refuses_pickled_content(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(
        path,
        header=np.array(
            '{"format": "otcollapse.trajectory", "version": 1, "n_layers": 1, "names": ["a"]}'
        ),
        layer_0=np.array([{"a": 1}], dtype=object),
    )
    with pytest.raises(ValueError, match="pickle"):
        load_trajectory(path)


def test_refuses_foreign_files(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, x=np.zeros(3))
    with pytest.raises(ValueError, match="not an otcollapse trajectory"):
        load_trajectory(path)
    with pytest.raises(FileNotFoundError):
        load_trajectory(tmp_path / "missing.npz")


def test_json_round_trip(tmp_path):
    obj = {"a": [1, 2.5, None], "b": "x"}
    save_json(tmp_path / "r.json", obj)
    assert load_json(tmp_path / "r.json") == obj


# ---------------------------------------------------------------------------- damaged files
def test_damaged_npz_files_name_the_file_and_the_problem(tmp_path):
    path = save_trajectory(tmp_path / "t.npz", full_trajectory())
    raw = path.read_bytes()
    cases = {
        "half.npz": (raw[: len(raw) // 2], "truncated or damaged"),
        "empty.npz": (b"", "empty (0 bytes)"),
        "text.npz": (b"layer_0,labels\n1,0\n", "not a .npz archive"),
        "pickle.npz": (b"\x80\x04K\x01.", "is a Python pickle"),
    }
    for name, (content, problem) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=re.escape(problem)) as info:
            load_trajectory(tmp_path / name)
        assert repr(str(tmp_path / name)) in str(info.value)
        assert "allow_pickle" not in str(info.value)
    np.save(tmp_path / "one.npy", np.zeros(3))
    os.replace(tmp_path / "one.npy", tmp_path / "one.npz")
    with pytest.raises(ValueError, match=r"single \.npy array"):
        load_trajectory(tmp_path / "one.npz")


def test_open_npz_reads_lazily_and_reports_crc_errors(tmp_path):
    from otcollapse.io import open_npz

    np.savez(tmp_path / "a.npz", good=np.arange(4.0), bad=np.arange(64.0))
    raw = bytearray((tmp_path / "a.npz").read_bytes())
    at = raw.index(b"bad.npy") + 200
    raw[at] ^= 0xFF
    (tmp_path / "a.npz").write_bytes(bytes(raw))
    with open_npz(tmp_path / "a.npz") as z:
        assert sorted(z.files) == ["bad", "good"] and "bad" in z and len(z) == 2
        assert np.array_equal(z["good"], np.arange(4.0))  # the intact member reads
        with pytest.raises(ValueError, match="CRC"):
            z["bad"]
        with pytest.raises(KeyError):
            z["missing"]
    with pytest.raises(IsADirectoryError):  # a path problem stays an OSError
        with open_npz(tmp_path):
            pass


def test_truncated_json_names_the_file(tmp_path):
    (tmp_path / "m.json").write_text('{"a": [1, 2')
    with pytest.raises(ValueError, match=r"m\.json' is not valid JSON"):
        load_json(tmp_path / "m.json")
    (tmp_path / "e.json").write_bytes(b"")
    with pytest.raises(ValueError, match=r"e\.json' is empty"):
        load_json(tmp_path / "e.json")


# ---------------------------------------------------------------------------- folder lock
def test_locked_folder_is_exclusive_reentrant_and_leaves_no_lock_file(tmp_path):
    import threading

    from otcollapse.io import LOCK_FILE, FolderInUseError, locked_folder

    out = tmp_path / "a" / "b"
    with locked_folder(out) as folder:
        assert folder == out and (out / LOCK_FILE).read_text().strip() == str(os.getpid())
        with locked_folder(out):  # the same thread may take it again (a nested job)
            pass
        assert (out / LOCK_FILE).exists()
        got: list[BaseException] = []

        def other() -> None:
            try:
                with locked_folder(out):
                    pass
            except BaseException as exc:
                got.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert len(got) == 1 and isinstance(got[0], FolderInUseError)
    assert os.listdir(out) == []
    with locked_folder(out):  # free again
        pass


def test_locked_folder_takes_over_a_stale_lock_and_cleans_killed_writes(tmp_path):
    from otcollapse.io import LOCK_FILE, clean_temporaries, locked_folder

    (tmp_path / "checkpoints" / "plain").mkdir(parents=True)
    (tmp_path / LOCK_FILE).write_text("12345\n")  # left by a killed process: no flock held
    dead = [
        tmp_path / ".metrics.json.ab_cd123.tmp",
        tmp_path / "checkpoints" / "plain" / ".checkpoint.pt.x1y2z3w4.tmp",
    ]
    alive = [tmp_path / "metrics.json", tmp_path / ".hidden.tmp", tmp_path / "my.abcdefgh.tmp"]
    for f in dead + alive:
        f.write_text("x")
    with locked_folder(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
        assert not any(f.exists() for f in dead) and all(f.exists() for f in alive)
    assert clean_temporaries(tmp_path) == []


@pytest.mark.parametrize(
    ("on_error", "write", "left"),
    [("keep", True, True), ("empty", False, False), ("empty", True, True), ("remove", True, False)],
)
def test_locked_folder_removes_what_a_failed_job_made(tmp_path, on_error, write, left):
    from otcollapse.io import locked_folder

    class Refused(Exception):
        pass

    with pytest.raises(Refused), locked_folder(tmp_path / "new" / "out", on_error=on_error) as f:
        if write:
            (f / "partial.json").write_text("{}")
        raise Refused
    assert (tmp_path / "new").exists() == left
    (tmp_path / "old").mkdir()  # a folder the job found is never removed
    with pytest.raises(Refused), locked_folder(tmp_path / "old", on_error="remove"):
        raise Refused
    assert (tmp_path / "old").is_dir()
