"""Saving and loading: round trips, atomic writes, refusal of pickled content."""

from __future__ import annotations

import os

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
