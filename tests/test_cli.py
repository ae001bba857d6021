"""The command line and the run folder: run --quick, resume, analyze, mufm, report, reproduce."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from otcollapse import geodesic_test, save_trajectory
from otcollapse.cli import load_features, main
from otcollapse.constructions import transparent_model
from otcollapse.experiments import RunConfig, aggregate_seeds, load_sweep, run_experiment

TINY = {
    "width": 8,
    "blocks": 2,
    "epochs": 3,
    "max_samples": 120,
    "mufm": False,
    "capture_epochs": (0, 2),
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``otcollapse run --quick``: what the test suite runs of the main job (about a minute)."""
    out = tmp_path_factory.mktemp("run") / "quick"
    assert main(["run", "--quick", "--out", str(out), "--no-progress"]) == 0
    return out


def _images(html: str) -> list[bytes]:
    import base64

    return [
        base64.b64decode(b) for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    ]


def test_run_quick_writes_a_complete_run_folder(quick_run):
    m = json.loads((quick_run / "metrics.json").read_text())
    # every setting, the versions and the data provenance are recorded
    assert m["settings"]["quick"] is True and m["settings"]["data"] == "digits"
    assert m["settings"]["capture_epochs"][0] == 0
    assert m["versions"]["torch"].startswith("2.") and "otcollapse" in m["versions"]
    assert m["provenance"]["dataset"] == "digits"
    # both networks, at the end and at initialisation (the baseline)
    assert {"resnet", "plain", "resnet_init", "plain_init"} <= set(m["headline"])
    for name in ("resnet", "plain"):
        h = m["headline"][name]
        assert 0.0 <= h["ots"] <= 1.0 and h["lss_mean"] >= 1.0 and h["path_ratio"] >= 1.0
        assert h["train_accuracy"] > 0.9
    # raw and aligned scores with intervals, the null baselines and the feature space (#21)
    geo = {(r["model"], r["gauge"]): r for r in m["geometry"]}
    for name in ("resnet", "plain", "resnet_init", "plain_init"):
        for gauge in ("none", "orthogonal"):
            r = geo[(name, gauge)]
            lo, hi = r["efficiency_ci"]  # W2^2 <= paired cost, up to rounding
            assert 0 <= lo <= hi <= 1 + 1e-12 and 0 <= r["efficiency"] <= 1 + 1e-12
        assert geo[(name, "none")]["ots"] == m["headline"][name]["ots"]
        assert geo[(name, "orthogonal")]["ots"] == m["headline"][name]["ots_aligned"]
    assert {"null: random walk", "null: unrelated"} <= {r["model"] for r in m["geometry"]}
    assert "residual stream" in m["feature_space"]["resnet"]
    # noise floor beside every W2 of the profile
    rows = m["results"]["resnet"]["geodesic"]["profile"]["rows"]
    assert all(r["noise_floor"] is not None and r["noise_floor"] > 0 for r in rows)
    # the verdict table is computed from the numbers, against every baseline the run has
    v = {(x.get("score"), x["comparison"]): x for x in m["verdicts"] if x["verdict"] != "count"}
    assert {c for _, c in v} == {"trained, τ < 0", "trained − init", "ResNet − plain"}
    assert {s for s, _ in v} == {"nc1_kendall_tau", "path_ratio", "lss_mean", "ots"}
    assert all(x["verdict"] in ("holds", "fails", "not resolved") for x in v.values())
    # steps at or below the noise floor: flagged per step, counted beside the verdicts
    rows = m["results"]["resnet"]["geodesic"]["profile"]["rows"]
    below = sum(r["distance"] <= r["noise_floor"] for r in rows)
    assert m["headline"]["resnet"]["steps_below_floor"] == below
    (count,) = [x for x in m["verdicts"] if x.get("verdict") == "count"]
    assert f"ResNet: {below} of {len(rows)} steps at or below the floor" in count["measured"]
    res, pl = m["headline"]["resnet"], m["headline"]["plain"]
    ots = v[("ots", "ResNet − plain")]
    assert ots["values"] == [[res["ots"], pl["ots"]]]
    assert ots["effect"] == pytest.approx(res["ots"] - pl["ots"])
    # MUFM calibrated: its NC1 matches the network's within the grid's reach
    assert m["mufm"]["lambda_ot"] > 0 and np.isfinite(m["mufm"]["value"])
    # and in shape and scale: per-layer residuals beside the network's split-half spread
    joint = m["mufm"]["profile"]
    assert joint["fitted"] and joint["lambda_w"] == m["settings"]["weight_decay"]
    wd = m["settings"]["weight_decay"]
    assert wd / 10 * (1 - 1e-9) <= joint["lambda_h"] <= wd * 10 * (1 + 1e-9)
    rows = joint["residuals"]
    assert [r["layer"] for r in rows] == list(range(1, len(rows) + 1))
    for r in rows:
        assert r["log_ratio_nc1"] == pytest.approx(np.log(r["nc1_mufm"] / r["nc1_network"]))
        assert r["within"] == (
            abs(r["log_ratio_nc1"]) <= r["spread_nc1"]
            and abs(r["log_ratio_cost"]) <= r["spread_cost"]
        )
    assert joint["reproduces"] == f"{sum(r['within'] for r in rows)} of {len(rows)} steps"
    assert "mufm_profile.png" in m["figures"]
    assert "Shape and scale" in (quick_run / "report.html").read_text()
    # trajectories at every captured epoch, checkpoints, figures, the report
    for e in m["settings"]["capture_epochs"]:
        assert (quick_run / "trajectories" / f"resnet_train_epoch{e:04d}.npz").exists()
    assert len(list(quick_run.glob("stages/train-*/checkpoints/checkpoint.pt"))) == 2
    html = (quick_run / "report.html").read_text()
    imgs = _images(html)
    assert len(imgs) == len(m["figures"]) >= 8
    assert all(b.startswith(b"\x89PNG") for b in imgs)
    assert "What each number means" in html and "Package versions" in html
    assert "Change of basis: raw and aligned scores" in html and "null: unrelated" in html
    assert "≤ floor" in html


def test_run_quick_agrees_with_the_library_on_its_saved_trajectory(quick_run):
    """The reported OTS/LSS are those of geodesic_test on the saved last-epoch trajectory."""
    from otcollapse import load_trajectory

    m = json.loads((quick_run / "metrics.json").read_text())
    E = m["settings"]["epochs"]
    traj = load_trajectory(quick_run / "trajectories" / f"resnet_train_epoch{E:04d}.npz")
    seg = geodesic_test(traj, seed=0).segments[0]
    assert m["headline"]["resnet"]["ots"] == pytest.approx(seg.ots)
    assert m["headline"]["resnet"]["lss_mean"] == pytest.approx(seg.lss.mean)


def test_report_rebuilds_from_saved_results(quick_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(quick_run, copy)
    before = (copy / "report.html").read_text()
    (copy / "report.html").unlink()
    assert main(["report", str(copy)]) == 0
    after = (copy / "report.html").read_text()
    assert _images(after) == _images(before)
    assert "report:" in capsys.readouterr().out
    # a missing figure is reported on the page, not silently dropped
    (copy / "figures" / "ots_lss.png").unlink()
    assert main(["report", str(copy)]) == 0
    assert "Figures missing from figures/: ots_lss.png" in (copy / "report.html").read_text()


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path):
    cfg = RunConfig(**TINY)
    ref = run_experiment(cfg, tmp_path / "ref", progress=False, log=lambda s: None)

    class Killed(Exception):
        pass

    def killer(msg: str) -> None:  # dies once the ResNet is trained, before the plain twin
        if "training plain" in msg:
            raise Killed

    with pytest.raises(Killed):
        run_experiment(cfg, tmp_path / "run", progress=False, log=killer)
    assert not (tmp_path / "run" / "metrics.json").exists()
    with pytest.raises(ValueError, match="not empty"):  # nothing is overwritten by accident
        run_experiment(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    got = run_experiment(cfg, tmp_path / "run", resume=True, progress=False, log=lambda s: None)
    assert got["headline"] == ref["headline"]


def test_seeds_are_aggregated_with_intervals(tmp_path):
    cfg = RunConfig(**{**TINY, "seeds": 2, "capture_epochs": ()})
    m = run_experiment(cfg, tmp_path / "s", progress=False, log=lambda s: None)
    assert m["seeds"] == [0, 1]
    ots = m["aggregate"]["resnet"]["ots"]
    vals = [m["per_seed"][s]["resnet"]["ots"] for s in ("0", "1")]
    assert ots["values"] == pytest.approx(vals) and ots["mean"] == pytest.approx(np.mean(vals))
    lo, hi = ots["ci95"]
    assert lo <= ots["mean"] <= hi
    # the verdicts are tested over both seeds, as effects with intervals
    v = next(
        x for x in m["verdicts"] if (x.get("score"), x["comparison"]) == ("ots", "ResNet − plain")
    )
    diffs = [m["per_seed"][s]["resnet"]["ots"] - m["per_seed"][s]["plain"]["ots"] for s in "01"]
    assert v["effect"] == pytest.approx(np.mean(diffs)) and v["n_seeds"] == 2
    assert "Student-t interval over 2 seeds" in v["interval"]
    assert v["verdict"] in ("holds", "fails", "not resolved")
    assert (tmp_path / "s" / "seed_1" / "report.html").exists()
    assert "Over 2 seeds" in (tmp_path / "s" / "report.html").read_text()


@pytest.mark.parametrize(
    ("ots", "verdict"),
    [
        ([(1.0, 0.0), (0.9, 0.1), (1.0, 0.05)], "holds"),
        ([(0.0, 1.0), (0.1, 0.9), (0.05, 1.0)], "fails"),
        ([(1.0, 1.0), (1.0, 1.0), (1.0, 1.0)], "not resolved"),  # saturated at both ends
        ([(1.0, 0.0), (0.0, 1.0), (0.5, 0.4)], "not resolved"),  # the interval crosses 0
        ([(1.0, 0.0)], "not resolved"),  # one seed without replicates: no interval
    ],
)
def test_verdicts_over_seeds_are_effects_with_intervals(ots, verdict):
    from otcollapse.experiments.verdicts import verdicts

    per_seed = [
        {"headline": {"resnet": {"ots": r, "nc1_kendall_tau": -1.0}, "plain": {"ots": p}}}
        for r, p in ots
    ]
    v = {(x["score"], x["comparison"]): x for x in verdicts(per_seed)}
    got = v[("ots", "ResNet − plain")]
    assert got["verdict"] == verdict
    assert got["holds"] == {"holds": True, "fails": False}.get(verdict)
    assert got["saturated"] == all(r == p == 1.0 for r, p in ots)
    # τ = -1 in every seed: an interval of zero width, above 0 with two seeds or more
    tau = v[("nc1_kendall_tau", "trained, τ < 0")]["verdict"]
    assert tau == ("holds" if len(ots) > 1 else "not resolved")
    assert not any(s == "lss_mean" for s, _ in v)  # no LSS in these headlines: no verdict


def test_aggregation_over_seeds_counts_zeros_as_values():
    """Issue #21: an exact 0 is a value, only None (NaN in JSON) is missing."""
    per_seed = [
        {"headline": {"plain_init": {"ots": v, "lss_mean": w, "nc1_monotone": True}}}
        for v, w in ((0.0, 2.0), (0, None), (0.005, 4.0))
    ]
    agg = aggregate_seeds(per_seed)["plain_init"]
    assert agg["ots"]["mean"] == pytest.approx(0.005 / 3, abs=1e-6)
    assert agg["ots"]["mean"] == pytest.approx(0.001667, abs=1e-6)
    assert agg["ots"]["n"] == 3 and agg["ots"]["values"] == [0.0, 0.0, 0.005]
    # a missing value is left out of its statistic, not of the others
    assert agg["lss_mean"]["n"] == 2 and agg["lss_mean"]["mean"] == pytest.approx(3.0)
    assert "nc1_monotone" not in agg  # flags are not averaged
    # the value seed 0 lacks is still aggregated over the seeds that have it
    first_missing = [{"headline": {"m": {"ots": None}}}, {"headline": {"m": {"ots": 0.5}}}]
    assert aggregate_seeds(first_missing)["m"]["ots"]["n"] == 1


@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 6))
    y = np.arange(90) % 3
    traj = transparent_model(x, y, n_layers=4)
    arrays = {f"layer_{i}": np.asarray(layer) for i, layer in enumerate(traj.layers)}
    np.savez(tmp_path / "plain_arrays.npz", labels=y, **arrays)
    torch.save(
        {"layers": [torch.as_tensor(a) for a in arrays.values()], "labels": torch.as_tensor(y)},
        tmp_path / "feats.pt",
    )
    save_trajectory(tmp_path / "ours.npz", traj)
    return tmp_path, traj


def test_analyze_reads_the_three_formats_and_reports(saved, tmp_path):
    folder, traj = saved
    out = tmp_path / "an"
    files = [str(folder / f) for f in ("plain_arrays.npz", "feats.pt", "ours.npz")]
    assert main(["analyze", *files, "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    seg = geodesic_test(traj).segments[0]
    for name in ("plain_arrays", "feats", "ours"):
        assert m["headline"][name]["lss_mean"] == pytest.approx(seg.lss.mean)
        assert m["headline"][name]["ots"] == pytest.approx(seg.ots)
    # transparent model: Tr Σ_W(l) = (1 − l/L)² Tr Σ_W(0), so NC1 falls to 0 at the last layer
    assert m["headline"]["ours"]["nc1_last"] == pytest.approx(0.0, abs=1e-12)
    assert len(_images((out / "report.html").read_text())) == len(m["figures"])


def test_user_files_never_run_code(tmp_path):
    import fractions  # any class outside torch's weights-only allow-list stands for a payload

    torch.save({"layers": [fractions.Fraction(1, 3)], "labels": [0]}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="weights_only=True"):
        load_features(tmp_path / "evil.pt")
    np.savez(tmp_path / "obj.npz", layer_0=np.array([{"a": 1}], dtype=object), labels=[0])
    with pytest.raises(Exception, match="pickle"):
        load_features(tmp_path / "obj.npz")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["analyze", "does_not_exist.npz"], "no such file"),
        (["analyze", "{tmp}/notes.txt"], "unknown format"),
        (["analyze", "{tmp}/ragged.npz"], "samples"),
        (["analyze", "{tmp}/nolabels.npz"], "labels"),
        (["run", "--data", "cifar-11", "--out", "{tmp}/x"], "unknown data set"),
        (["report", "{tmp}"], "no metrics.json"),
        (["run", "--device", "cuda", "--out", "{tmp}/x"], "no CUDA GPU"),
        (["run", "--device", "nonsense", "--out", "{tmp}/x"], "unknown device"),
        (["reproduce", "nope", "--data", "{tmp}/ragged.npz"], "unknown reproduction"),
    ],
)
def test_errors_a_user_can_act_on(tmp_path, capsys, argv, message):
    (tmp_path / "notes.txt").write_text("hello")
    np.savez(
        tmp_path / "ragged.npz",
        layer_0=np.zeros((10, 2)),
        layer_1=np.zeros((9, 2)),
        labels=np.arange(10) % 2,
    )
    np.savez(tmp_path / "nolabels.npz", layer_0=np.zeros((10, 2)))
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("otcollapse: error:") and message in err


@pytest.mark.parametrize("cmd", [[], ["run"], ["analyze"], ["mufm"], ["report"], ["reproduce"]])
def test_help_on_everything(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    assert "usage: otcollapse" in capsys.readouterr().out


def test_console_script_is_installed_and_fails_cleanly():
    import sys
    from pathlib import Path

    beside = Path(sys.executable).parent / "otcollapse"  # the venv's own script, if installed
    exe = str(beside) if beside.exists() else shutil.which("otcollapse")
    if exe is None:
        pytest.skip("the otcollapse console script is not on PATH (package not installed)")
    r = subprocess.run([exe, "analyze", "missing.npz"], capture_output=True, text=True)
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_mufm_command_fits_and_orders_concentration(tmp_path):
    out = tmp_path / "mufm"
    argv = [
        "mufm",
        "--data",
        "gaussian_mixture",
        "--samples",
        "60",
        "--n-layers",
        "2",
        "--lambda-ot",
        "0,0.1",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    sols = m["solution"]
    assert set(sols) == {"lambda_ot=0", "lambda_ot=0.1"}
    assert all(s["converged"] for s in sols.values())
    # λ_OT = 0 is the UFM (collapsed last layer); the transport term keeps the classes spread
    nc1 = {k: m["headline"][k]["nc1_last"] for k in sols}
    assert nc1["lambda_ot=0"] < 1e-3 < nc1["lambda_ot=0.1"]


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """A tiny synthetic stand-in for a data set on disk (vectors, three classes)."""
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 40)
    X = rng.normal(size=(120, 12)) + 3.0 * np.eye(3, 12)[y]
    path = tmp_path_factory.mktemp("data") / "standin.npz"
    np.savez(path, X=X.astype(np.float32), y=y)
    return path


@pytest.mark.parametrize("name", ["gai-zhang-mnist", "resnet-vs-plain-wd", "pfc-depth"])
def test_reproductions_run_end_to_end_on_a_stand_in(stand_in, tmp_path, name):
    out = tmp_path / name
    argv = ["reproduce", name, "--data", str(stand_in), "--quick", "--out", str(out)]
    assert main([*argv, "--scheduler", "serial"]) == 0
    sweep = name != "gai-zhang-mnist"  # the other two are sweeps over shipped grid files
    m = json.loads((out / ("published.json" if sweep else "metrics.json")).read_text())
    assert m["published"] and all(r["measured"] not in (None, "—") for r in m["published"])
    if sweep:
        ds = load_sweep(out)
        assert ds.sizes["cell"] == 2 and ds.sizes["seed"] == 1  # --quick: the grid's end points
    html = (out / "report.html").read_text()
    assert "Published and measured" in html


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_report_renders_in_headless_chromium(quick_run, tmp_path):
    """Open report.html in headless Chromium: every figure decodes, and a screenshot is made."""
    exe = _chromium()
    if exe is None:
        if os.environ.get("OTCOLLAPSE_REQUIRE_CHROMIUM"):
            pytest.fail("OTCOLLAPSE_REQUIRE_CHROMIUM is set but no Chromium was found")
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium)")
    html = (quick_run / "report.html").read_text()
    probe = (
        "<script>window.addEventListener('load', () => { const ok = [...document.images]"
        ".filter(i => i.complete && i.naturalWidth > 100).length; "
        "document.body.setAttribute('data-images-ok', ok + '/' + document.images.length); });"
        "</script></body>"
    )
    page = tmp_path / "probe.html"
    page.write_text(html.replace("</body>", probe))
    flags = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run(
        [*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    m = re.search(r'data-images-ok="(\d+)/(\d+)"', dom.stdout)
    assert m is not None, dom.stderr[-2000:]
    assert int(m.group(1)) == int(m.group(2)) >= 8
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            *flags,
            f"--screenshot={shot}",
            "--window-size=1200,2400",
            (quick_run / "report.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    from matplotlib.image import imread

    img = imread(shot)
    assert img.shape[0] == 2400 and img[..., :3].std() > 0.05  # not a blank page


def test_version_is_printed(capsys):
    import otcollapse

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"otcollapse {otcollapse.__version__}"


def test_the_feature_space_of_a_conv_model_is_chosen_and_recorded(tmp_path):
    """``space``: pooled channels (d = width) or the flattened residual stream (d = C·H·W)."""
    tiny = {**TINY, "model": "conv", "width": 4, "epochs": 1, "capture_epochs": (0,), "n_boot": 0}
    pooled = run_experiment(RunConfig(**tiny), tmp_path / "p", progress=False, log=lambda s: None)
    stream = run_experiment(
        RunConfig(**tiny, space="stream"), tmp_path / "s", progress=False, log=lambda s: None
    )
    assert pooled["feature_space"]["resnet"].endswith("d = 4")
    assert "global-average-pooled" in pooled["feature_space"]["resnet"]
    assert "flattened" in stream["feature_space"]["plain"]
    assert stream["feature_space"]["plain"].endswith("d = 256")  # 4 channels x 8 x 8 pixels
    assert stream["settings"]["space"] == "stream"
    with pytest.raises(ValueError, match="unknown space"):
        RunConfig(space="pixels")


def test_every_number_in_the_report_has_a_glossary_entry(quick_run):
    """Walk the report's tables: every column of numbers (and every MUFM match quantity) is named
    in "What each number means"; the structural columns (names, labels) are not numbers."""
    import html as html_lib

    from otcollapse.report import GLOSSARY

    page = (quick_run / "report.html").read_text()
    terms = {t for key, _ in GLOSSARY for t in key.split(", ")}
    structure = {"model", "layer", "epoch", "pair", "segment", "metric", "method", "converged"}
    structure |= {"gauge", "measured", "prediction", "against", "quantity", "verdict", "published"}
    headers = {html_lib.unescape(h) for h in re.findall(r"<th[^>]*>(.*?)</th>", page)}
    numbers = {h for h in headers - structure if not h.endswith("_ci")}
    assert numbers and numbers <= terms, sorted(numbers - terms)
    m = json.loads((quick_run / "metrics.json").read_text())
    assert set(m["mufm"]["match"]) <= terms, sorted(set(m["mufm"]["match"]) - terms)
    assert any(h.endswith("_ci") for h in headers) and "*_ci" in terms


def test_an_analyze_report_carries_no_run_only_boilerplate(tmp_path):
    """No ``_init`` suffix, MUFM or accuracy in the report of saved features: its glossary
    defines what the page shows, and the headline names only the suffixes it has (#20)."""
    g = np.random.default_rng(0)
    labels = np.arange(120) % 3
    traj = transparent_model(g.normal(size=(120, 6)), labels, 3, seed=0)
    path = tmp_path / "t.npz"
    save_trajectory(path, traj)
    assert main(["analyze", str(path), "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").read_text()
    for absent in ("_init", "MUFM λ_OT", "train_accuracy", "discrepancy"):
        assert absent not in page, absent
    assert "<b>NC1, nc1, nc1_first, nc1_last</b>" in page  # what it shows is still defined
