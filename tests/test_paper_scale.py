"""The staged ResNets end to end (issue #16): ``otcollapse run --model resnet18|resnet34``.

- a staged ResNet's trajectory: the stem, then one layer per block; the captured layers and the
  shortcut images ``P h_l`` are those of a forward pass written out by hand, exactly; segments
  are the stages in every feature space (also when a projection gives every layer one dimension);
- the run's settings: the models, their fixed layouts, ``device="auto"`` and a missing GPU;
- the projected space's distortion: recorded numbers equal a direct computation, and a
  Johnson–Lindenstrauss bound holds;
- memory-mapped captures read back mapped and equal;
- the device: on the CPU a run's numbers are those of the analyses called on the NumPy
  trajectory; stage keys do not depend on the device;
- a tiny ResNet-18 run: the report names the space, the segments and the steps across stages.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from otcollapse import collapse_profile, geodesic_test
from otcollapse._utils import json_safe
from otcollapse.cli import main
from otcollapse.data import from_arrays
from otcollapse.experiments import RunConfig, run_experiment
from otcollapse.experiments import stages as stages_mod
from otcollapse.experiments.analysis import (
    analyse,
    projection_pairs,
    space_record,
    stream_distortion,
)
from otcollapse.experiments.config import resolve_device
from otcollapse.experiments.stages import StageContext, load_captured, on_device, seed_graph
from otcollapse.io import load_trajectory, save_trajectory
from otcollapse.nets import ResNet, capture, projection_matrix, resnet_layout

NO_CUDA = not torch.cuda.is_available()
QUIET = {"progress": False, "log": lambda s: None}


def _tiny_net(plain: bool = False, blocks: tuple[int, ...] = (1, 2)) -> ResNet:
    torch.manual_seed(0)
    net = ResNet((4, 8), blocks, in_channels=3, n_classes=3, plain=plain)
    for m in net.modules():  # non-trivial batch-norm statistics (eval mode uses them)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def _images(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 8, 8, generator=g), torch.arange(n) % 3


def _by_hand(net: ResNet, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[int, torch.Tensor]]:
    """The forward pass written out: stem, then each BasicBlock from its parts."""
    with torch.no_grad():
        stem = net.stem
        h = F.relu(stem[1](stem[0](x)))
        layers, shortcuts = [h], {}
        for l, b in enumerate(net.blocks):
            f = b.bn2(b.conv2(F.relu(b.bn1(b.conv1(h)))))
            if b.shortcut is None:  # the plain twin
                h = F.relu(f)
            elif isinstance(b.shortcut, torch.nn.Identity):
                h = F.relu(f + h)
            else:
                p = b.shortcut[1](b.shortcut[0](h))  # P h_l: 1x1 convolution, batch norm
                shortcuts[l] = p
                h = F.relu(f + p)
            layers.append(h)
    return layers, shortcuts


# ---------------------------------------------------------------------------- trajectory
@pytest.mark.parametrize("blocks", [(1, 1), (1, 2)])
def test_capture_is_the_forward_pass_by_hand_exactly(blocks):
    net = _tiny_net(blocks=blocks)
    x, y = _images()
    layers, shortcuts = _by_hand(net, x)
    flat = capture(net, (x, y), pool="flatten", batch_size=len(x))
    assert flat.names == ("stem", *[f"blocks.{i}" for i in range(sum(blocks))])
    for got, h in zip(flat.layers, layers, strict=True):
        assert np.array_equal(got, h.reshape(len(x), -1).numpy())
    assert sorted(flat.shortcuts) == [blocks[0]] == sorted(shortcuts)
    for l, p in shortcuts.items():
        assert np.array_equal(flat.shortcuts[l], p.reshape(len(x), -1).numpy())
    pooled = capture(net, (x, y), batch_size=len(x))
    for got, h in zip(pooled.layers, layers, strict=True):
        assert np.array_equal(got, h.mean(dim=(2, 3)).numpy())
    for l, p in shortcuts.items():
        assert np.array_equal(pooled.shortcuts[l], p.mean(dim=(2, 3)).numpy())
    # the segments: stage 0 (stem and its blocks), stage 1; the step between crosses stages
    n0 = blocks[0] + 1
    expected = (range(0, n0), range(n0, n0 + blocks[1]))
    assert flat.segments == pooled.segments == expected
    assert pooled.crossings == (n0 - 1,)
    shapes = [list(h.shape[1:]) for h in layers]
    assert pooled.metadata["stream_shapes"] == shapes


def test_projected_layers_of_one_dimension_stay_in_their_stages():
    net = _tiny_net()
    x, y = _images()
    layers, shortcuts = _by_hand(net, x)
    k = 64  # the stem's stream is 4*8*8 = 256, stage 1's 8*4*4 = 128: both projected to 64
    proj = capture(net, (x, y), pool=("project", k), seed=3, batch_size=len(x))
    assert proj.dims == (k,) * 4
    assert proj.segments == (range(0, 2), range(2, 4))  # not one segment of dimension 64
    G = {d: projection_matrix(d, k, seed=3) for d in (256, 128)}
    for got, h in zip(proj.layers, layers, strict=True):
        flat = h.reshape(len(x), -1)
        assert np.array_equal(got, (flat @ G[flat.shape[1]]).numpy())
    # P h_1 lives in stage 1's stream (128) and is projected with stage 1's map
    assert np.array_equal(proj.shortcuts[1], (shortcuts[1].reshape(len(x), -1) @ G[128]).numpy())
    rep = geodesic_test(proj, seed=0)
    assert [s.layers for s in rep.segments] == [(0, 1), (2, 3)]
    cross = [r for r in rep.profile.rows if r.source == 1]
    assert len(cross) == 1 and cross[0].shortcut  # measured from P h_1, in stage 1's space
    # the plain twin has no P: its stage change is in no space, so it is not measured
    plain = capture(_tiny_net(plain=True), (x, y), pool=("project", k), seed=3)
    with pytest.raises(ValueError, match="another stage"):
        plain.step_measures(1)
    rep_plain = geodesic_test(plain, seed=0)
    assert [r.source for r in rep_plain.profile.rows] == [0, 2]
    # take_layers keeps the stream shapes of the kept layers
    assert proj.take_layers([2, 3]).segments == (range(0, 2),)


def test_one_step_segments_have_trivial_ratio_and_lss():
    net = _tiny_net(blocks=(2, 1))
    x, _ = _images(30)
    traj = capture(net, (x, torch.arange(30) % 3))
    rep = geodesic_test(traj, seed=0)
    assert [len(s.layers) for s in rep.segments] == [3]  # stage 1 has one layer: no path
    rec = space_record(traj)
    assert [s["steps"] for s in rec["segments"]] == [2, 0]
    traj2 = capture(_tiny_net(blocks=(1, 2)), (x, torch.arange(30) % 3))
    rep2 = geodesic_test(traj2, seed=0)
    for s in rep2.segments:
        assert len(s.layers) == 2
        assert s.path_ratio == pytest.approx(1.0) and s.lss.mean == pytest.approx(1.0)
    rec2 = space_record(traj2)
    assert [s["one_step"] for s in rec2["segments"]] == [True, True]
    assert rec2["crossings"][0]["step"] == "blocks.0 → blocks.1"
    assert "shortcut image" in rec2["crossings"][0]["measured"]


def test_resnet18_and_34_layouts():
    r18, r34 = resnet_layout("resnet18", width=2), resnet_layout("resnet34", width=2, plain=True)
    assert len(r18.blocks) == 8 and len(r34.blocks) == 16
    assert r18.stage_of == [0, 0, 1, 1, 2, 2, 3, 3] and r34.head.in_features == 16
    assert all(b.shortcut is None for b in r34.blocks)
    with pytest.raises(ValueError, match="unknown ResNet layout"):
        resnet_layout("resnet50")


# ---------------------------------------------------------------------------- settings
def test_run_config_models_layouts_and_devices():
    cfg = RunConfig(model="resnet34", width=16)
    assert cfg.n_blocks() == 16 and cfg.widths() == (16, 32, 64, 128)
    assert "widths 16, 32, 64, 128" in cfg.describe_model()
    with pytest.raises(ValueError, match="does not apply to model='resnet18'"):
        RunConfig(model="resnet18", blocks=4)
    quick = RunConfig.quick_preset(model="resnet18")
    assert quick.width == 8 and quick.blocks == RunConfig().blocks and quick.n_blocks() == 8
    assert RunConfig.quick_preset().blocks == 4  # mlp / conv keep their preset
    assert RunConfig(device="auto").resolved_device() == ("cpu" if NO_CUDA else "cuda")
    assert resolve_device("cpu") == "cpu"


@pytest.mark.skipif(not NO_CUDA, reason="a CUDA GPU is present")
def test_cuda_without_a_gpu_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
        RunConfig(device="cuda")
    out = tmp_path / "r"
    argv = ["run", "--model", "resnet18", "--device", "cuda", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("otcollapse: error:") and "cuda" in err
    assert "device='auto'" in err and not out.exists()


def test_stage_keys_do_not_depend_on_the_device():
    ctx = StageContext("/x")
    a = seed_graph(RunConfig(model="resnet18", capture_epochs=(0,)), 0, ctx)
    b = seed_graph(RunConfig(model="resnet18", capture_epochs=(0,), device="auto"), 0, ctx)
    assert set(a.tasks) == set(b.tasks) and a.metrics == b.metrics


# ---------------------------------------------------------------------------- projection
def test_recorded_distortion_is_the_direct_computation_and_jl_holds():
    net = _tiny_net()
    x, y = _images(40)
    flat = capture(net, (x, y), pool="flatten")
    k, seed = 96, 5  # the stem (256) is projected, stage 1 (128) too; 780 pairs of 40 samples
    rec = stream_distortion(flat, k, seed=seed, n_pairs=500)
    pairs = projection_pairs(40, 500, seed)
    assert rec["n_pairs"] == len(pairs) == 500 and len(np.unique(pairs, axis=0)) == 500
    assert (pairs[:, 0] < pairs[:, 1]).all()
    for l, layer in enumerate(rec["layers"]):
        X = np.asarray(flat.layers[l], dtype=np.float64)
        G = projection_matrix(X.shape[1], k, seed=seed).double().numpy()
        d = X[pairs[:, 0]] - X[pairs[:, 1]]
        ratio = ((d @ G) ** 2).sum(1) / (d**2).sum(1)
        assert layer["projected"] and layer["pairs"] == 500
        assert layer["min"] == pytest.approx(ratio.min(), rel=1e-12)
        assert layer["max"] == pytest.approx(ratio.max(), rel=1e-12)
        assert layer["median"] == pytest.approx(np.median(ratio), rel=1e-12)
        assert layer["max_rel_error"] == pytest.approx(np.abs(ratio - 1).max(), rel=1e-12)
        # Johnson–Lindenstrauss: P(|chi2_k/k - 1| > eps) <= 2 exp(-k eps^2 / 8); over 500 pairs
        # with failure probability 1e-3, every ratio lies within 1 +- eps
        eps = math.sqrt(8 * math.log(2 * 500 / 1e-3) / k)
        assert layer["max_rel_error"] < eps
        assert abs(layer["median"] - 1) < 3 * rec["jl_sd"]
    assert rec["max_rel_error"] == max(r["max_rel_error"] for r in rec["layers"])
    # W2^2 of each measurable step (within a stage, and across it from P h_l) before and after
    assert [s["step"] for s in rec["steps"]] == ["stem → blocks.0", "P(blocks.0) → blocks.1",
                                                 "blocks.1 → blocks.2"]  # fmt: skip
    for s in rec["steps"]:
        assert s["rel_error"] == pytest.approx(
            abs(s["w2_sq_projected"] - s["w2_sq_stream"]) / s["w2_sq_stream"]
        )
        assert s["rel_error"] < eps
    small = stream_distortion(flat, 512, seed=seed)  # no layer above 512: nothing projected
    assert not any(r["projected"] for r in small["layers"]) and small["max_rel_error"] == 0


# ---------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A tiny labelled 3x8x8 image data set on disk (any image data works the same)."""
    g = np.random.default_rng(0)
    y = np.arange(150) % 3
    X = g.normal(size=(150, 3, 8, 8)).astype(np.float32) + y[:, None, None, None] * 0.7
    path = tmp_path_factory.mktemp("data") / "imgs.npz"
    np.savez(path, X=X, y=y)
    assert from_arrays(X, y).input_shape == (3, 8, 8)
    return str(path)


def _tiny(images: str, **kw) -> RunConfig:
    base = {"data": images, "model": "resnet18", "width": 2, "epochs": 2, "batch_size": 50}
    base |= {"capture_epochs": (0,), "max_samples": 90, "n_boot": 0, "mufm_samples": 45}
    base |= {"mufm_grid": (1e-3,), "mufm_tol": 1e-6}
    return RunConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def tiny_run(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r18"
    metrics = run_experiment(_tiny(images), out, **QUIET)
    return out, metrics


def test_a_resnet18_run_reports_its_space_segments_and_crossings(tiny_run):
    out, m = tiny_run
    assert m["device"] == "cpu" and m["execution"]["device"] == "cpu"
    assert m["settings"]["model"] == "resnet18" and "widths 2, 4, 8, 16" in m["model"]
    sp = m["spaces"]["resnet"]
    assert sp["space"] == "pooled" and sp["dims"] == [2, 2, 2, 4, 4, 8, 8, 16, 16]
    assert [s["steps"] for s in sp["segments"]] == [2, 1, 1, 1]
    assert [s["one_step"] for s in sp["segments"]] == [False, True, True, True]
    assert all("shortcut image" in c["measured"] for c in sp["crossings"])
    assert all("not measured" in c["measured"] for c in m["spaces"]["plain"]["crossings"])
    assert m["headline"]["resnet"]["segments"] == 4
    assert m["headline"]["resnet"]["segment"] == "stem … blocks.1"
    assert m["mufm"]["fitted_layers"] == "blocks.6 … blocks.7" and m["mufm"]["fitted_dim"] == 16
    rows = m["results"]["resnet"]["geodesic"]["profile"]["rows"]
    assert [r["source"] for r in rows if r["shortcut"]] == [2, 4, 6]
    plain_rows = m["results"]["plain"]["geodesic"]["profile"]["rows"]
    assert [r["source"] for r in plain_rows] == [0, 1, 3, 5, 7]  # stage changes unmeasured
    # the per-step records (what a sweep stores) keep step l at position l, NaN (None) where
    # a step was not measured
    E = str(m["settings"]["epochs"])
    steps = m["profiles"]["plain"][E]["steps"]
    assert steps["source"] == list(range(8))
    assert [i for i, v in enumerate(steps["w2"]) if v is None] == [2, 4, 6]
    assert steps["w2"][3] == plain_rows[2]["distance"]
    html = (out / "report.html").read_text()
    assert "Feature space: where every number lives" in html
    assert html.index("Feature space: where every number lives") < html.index("Headline numbers")
    assert "by construction" in html and "across stages, from P h_l" in html
    assert html.count("— in global-average-pooled channels") >= 3  # the captions of the details
    assert "Computed on cpu" in html
    assert not _unglossed(html)


def _unglossed(page: str) -> set[str]:
    """Table headers of numbers that "What each number means" does not explain."""
    import html as html_lib
    import re

    from otcollapse.report import GLOSSARY

    terms = {t for key, _ in GLOSSARY for t in key.split(", ")}
    structure = {"model", "layer", "epoch", "pair", "segment", "metric", "method", "converged"}
    structure |= {"gauge", "measured", "prediction", "against", "quantity", "verdict", "published"}
    structure |= {"step"}
    headers = {html_lib.unescape(h) for h in re.findall(r"<th[^>]*>(.*?)</th>", page)}
    return {h for h in headers - structure - terms if not h.endswith("_ci")}


def test_on_the_cpu_the_run_is_the_analyses_on_numpy(tiny_run):
    """``device="cpu"`` analyses the trajectory as read (NumPy): the run's numbers are those of
    ``geodesic_test`` and ``collapse_profile`` called directly on the saved trajectory."""
    out, m = tiny_run
    E = m["settings"]["epochs"]
    traj = load_trajectory(out / "trajectories" / f"resnet_train_epoch{E:04d}.npz")
    assert on_device(traj, "cpu") is traj and isinstance(traj.layers[0], np.ndarray)
    geo = geodesic_test(traj, seed=0, n_boot=0)
    col = collapse_profile(traj)
    seg = geo.segments[0]
    h = m["headline"]["resnet"]
    assert h["ots"] == seg.ots and h["lss_mean"] == seg.lss.mean
    assert h["path_ratio"] == seg.path_ratio and h["speed_cv"] == seg.speed_cv
    assert h["nc1_first"] == col.values("nc1")[0] and h["nc1_last"] == col.values("nc1")[-1]
    steps = m["profiles"]["resnet"][str(E)]["steps"]["w2_sq"]
    assert steps == [r.cost for r in geo.profile.rows]
    direct = analyse(traj, seed=0, n_boot=0)
    assert json_safe(direct["collapse"].to_dict()) == m["results"]["resnet"]["collapse"]


def test_projected_run_records_the_distortion(images, tmp_path):
    m = run_experiment(
        _tiny(images, space="projected", project_dim=24, mufm=False), tmp_path / "p", **QUIET
    )
    sp = m["spaces"]["resnet"]
    # stage 3's stream (16 x 1 x 1) is below k: flattened only; the others all have d = 24
    assert sp["dims"] == [24] * 7 + [16, 16]
    assert len(sp["segments"]) == 4  # the stages, not one segment of dimension 24
    d = sp["projection_distortion"]
    assert d["dim"] == 24 and d["n_pairs"] == 2000 and len(d["layers"]) == 9
    projected = [r for r in d["layers"] if r["projected"]]
    assert [r["stream_dim"] for r in projected] == [128, 128, 128, 64, 64, 32, 32]
    assert d["max_rel_error"] == max(r["max_rel_error"] for r in projected)
    html = (tmp_path / "p" / "report.html").read_text()
    assert "Distortion of the random projection to k = 24" in html
    assert "W2² projected" in html and not _unglossed(html)


def test_a_large_capture_is_memory_mapped(images, tmp_path, monkeypatch):
    monkeypatch.setattr(stages_mod, "MEMMAP_BYTES", 1024)  # every capture counts as large
    cfg = _tiny(images, mufm=False, max_samples=None, model="resnet34")
    m = run_experiment(cfg, tmp_path / "mm", **QUIET)
    caps = sorted((tmp_path / "mm" / "stages").glob("capture-*"))
    assert caps and not any((c / stages_mod.MAPPED_DIR).exists() for c in caps)
    traj = load_captured(caps[0] / stages_mod.TRAJECTORY)
    whole = load_trajectory(caps[0] / stages_mod.TRAJECTORY)
    assert traj.metadata["mapped"] is True and len(traj) == 17
    assert all(isinstance(x, np.memmap) for x in traj.layers)
    assert all(isinstance(v, np.memmap) for v in traj.shortcuts.values())
    for a, b in zip(traj.layers, whole.layers, strict=True):
        assert np.array_equal(a, b)
    moved = traj.to("cpu")  # row blocks into a tensor
    assert all(torch.equal(t, torch.from_numpy(np.asarray(a))) for t, a in
               zip(moved.layers, whole.layers, strict=True))  # fmt: skip
    assert m["spaces"]["resnet"]["mapped"] is True
    # the analyses of mapped and in-RAM layers are the same numbers
    assert (
        geodesic_test(traj, seed=0).segments[0].ots == geodesic_test(whole, seed=0).segments[0].ots
    )


def test_a_compressed_file_is_read_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(stages_mod, "MEMMAP_BYTES", 16)
    x, y = _images()
    traj = capture(_tiny_net(), (x, y))
    save_trajectory(tmp_path / "c.npz", traj, compressed=True)
    back = load_captured(tmp_path / "c.npz")
    assert not isinstance(back.layers[0], np.memmap)
    assert np.array_equal(back.layers[0], traj.layers[0])
    save_trajectory(tmp_path / "u.npz", traj)
    mapped = load_captured(tmp_path / "u.npz")
    assert isinstance(mapped.layers[0], np.memmap) and mapped.segments == traj.segments
    assert json.dumps(mapped.metadata) == json.dumps(load_trajectory(tmp_path / "u.npz").metadata)


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
def test_on_a_gpu_the_run_matches_the_cpu_run(images, tmp_path):
    """The same trained networks analysed on the GPU: the numbers agree with the CPU's to float
    rounding, and every result came back to the host."""
    cpu = run_experiment(_tiny(images), tmp_path / "c", **QUIET)
    # the stages of the CPU run are read back except the analyses, recomputed on the GPU
    import shutil

    shutil.copytree(tmp_path / "c", tmp_path / "g")
    for p in (tmp_path / "g" / "stages").glob("analyse-*"):
        shutil.rmtree(p)
    for p in (tmp_path / "g" / "stages").glob("seed-*"):
        shutil.rmtree(p)
    (tmp_path / "g" / "metrics.json").unlink()
    gpu = run_experiment(_tiny(images, device="cuda"), tmp_path / "g", resume=True, **QUIET)
    assert gpu["device"].startswith("cuda") and gpu["settings"]["device"] == "cuda"
    for net in ("resnet", "plain"):
        a, b = cpu["headline"][net], gpu["headline"][net]
        for key in ("ots", "lss_mean", "path_ratio", "nc1_first", "nc1_last", "efficiency"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-8), (net, key)
    # every stage result came back to the host: no CUDA tensor in any result.pkl
    import pickle

    for f in (tmp_path / "g" / "stages").glob("*/result.pkl"):
        with open(f, "rb") as fh:
            assert not _cuda_inside(pickle.load(fh)), f.parent.name
    # a memory-mapped capture reaches the GPU in row blocks, equal to the file
    traj = load_captured(next((tmp_path / "g" / "stages").glob("capture-*")) / "trajectory.npz")
    moved = traj.to("cuda")
    assert all(t.is_cuda and np.array_equal(t.cpu().numpy(), np.asarray(a))
               for t, a in zip(moved.layers, traj.layers, strict=True))  # fmt: skip


def _cuda_inside(obj, depth: int = 0) -> bool:
    """Whether a CUDA tensor hides in ``obj`` (dataclasses, mappings, sequences walked)."""
    import dataclasses

    if depth > 12:
        return False
    if isinstance(obj, torch.Tensor):
        return obj.is_cuda
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_cuda_inside(v, depth + 1) for v in obj)
    return False
