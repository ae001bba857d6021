"""The verdicts against baselines (otcollapse.experiments.verdicts): effects whose answer is known
by construction, saturated scores, effects within the split-half floor, intervals over seeds."""

import math

import numpy as np
import pytest

from otcollapse.constructions import null_trajectory
from otcollapse.experiments.analysis import analyse, headline
from otcollapse.experiments.verdicts import verdicts
from otcollapse.measures import Trajectory

N, D, L = 160, 3, 4


def _clouds(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), N // 4)
    return g.normal(size=(N, D)), labels


def _geodesic() -> Trajectory:
    """x0 translated by a constant shift in L equal steps: an exact W2 geodesic (R = 1, OTS = 1)."""
    x0, y = _clouds()
    shift = np.array([6.0, 0.0, 0.0])
    return Trajectory.from_arrays([x0 + shift * l / L for l in range(L + 1)], labels=y)


def _detour() -> Trajectory:
    """The same ends, reached by a zigzag: every odd layer displaced by 4 along the second axis.
    The whole cloud moves rigidly, so every block is still an optimal map (OTS = 1), but the
    path is longer than the endpoint distance (R > 1)."""
    x0, y = _clouds()
    shift, off = np.array([6.0, 0.0, 0.0]), np.array([0.0, 4.0, 0.0])
    return Trajectory.from_arrays(
        [x0 + shift * l / L + off * (l % 2) for l in range(L + 1)], labels=y
    )


def _seed_metrics(trajs: dict[str, Trajectory], seed: int = 0, n_boot: int = 20) -> dict:
    res = {k: analyse(t, seed=seed, n_boot=n_boot) for k, t in trajs.items()}
    resampled = {k: r.pop("resampled") for k, r in res.items()}
    return {"headline": headline(res), "resampled": resampled}


def _row(rows: list[dict], score: str, comparison: str) -> dict:
    (r,) = [v for v in rows if v.get("score") == score and v["comparison"] == comparison]
    return r


@pytest.fixture(scope="module")
def geodesic_vs_detour() -> list[dict]:
    trajs = {"resnet": _geodesic(), "plain": _detour(), "resnet_init": _detour()}
    return verdicts([_seed_metrics(trajs)])


def test_a_geodesic_against_a_detour_holds(geodesic_vs_detour):
    for comparison in ("ResNet − plain", "trained − init"):
        r = _row(geodesic_vs_detour, "path_ratio", comparison)
        # R = 1 against sqrt(6^2 + 4 * 4^2 ... ) / 6 > 1: the effect is R(detour) - 1 > 0
        detour_r = sum(np.hypot(6 / L, 4) for _ in range(L)) / 6
        assert r["effect"] == pytest.approx(detour_r - 1, rel=1e-6)
        assert r["verdict"] == "holds" and r["holds"] is True, r
        assert r["ci95"][0] > 0
        assert "paired subsamples" in r["interval"]
        assert r["floor"] < r["effect"]


def test_a_saturated_score_is_not_resolved(geodesic_vs_detour):
    # every block of both trajectories is an optimal map: OTS = 1 at both ends of the comparison
    r = _row(geodesic_vs_detour, "ots", "ResNet − plain")
    assert r["values"] == [[1.0, 1.0]]
    assert r["saturated"] is True
    assert r["verdict"] == "not resolved" and r["holds"] is None
    assert "saturated" in r["why"]


def test_an_effect_within_the_noise_floor_is_not_resolved():
    # the "plain" twin is the ResNet's random walk with a perturbation far below its spread: any
    # difference between them is sampling noise
    walk = null_trajectory("random_walk", N, 4, L + 1, seed=3, labels=np.repeat(np.arange(4), 40))
    g = np.random.default_rng(1)
    twin = Trajectory.from_arrays(
        [np.asarray(h) + 1e-4 * g.normal(size=np.shape(h)) for h in walk.layers],
        labels=walk.labels,
    )
    rows = verdicts([_seed_metrics({"resnet": walk, "plain": twin})])
    for score in ("path_ratio", "lss_mean"):
        r = _row(rows, score, "ResNet − plain")
        assert abs(r["effect"]) < 1e-2
        assert r["floor"] > abs(r["effect"])
        assert r["verdict"] == "not resolved", r
        assert r["why"] in ("within the split-half floor", "interval contains 0")


def _synthetic(effect_values: list[float], halves: tuple[float, float], reps: list[float]) -> list:
    """Seeds whose ResNet LSS is 2 and whose plain twin's is 2 + effect (the effect as given)."""
    return [
        {
            "headline": {"resnet": {"lss_mean": 2.0}, "plain": {"lss_mean": 2.0 + e}},
            "resampled": {
                "resnet": {"halves": {"lss_mean": [2.0, 2.0]}, "replicates": {"lss_mean": reps}},
                "plain": {
                    "halves": {"lss_mean": list(halves)},
                    "replicates": {"lss_mean": [2.0 + e + r for r in reps]},
                },
            },
        }
        for e in effect_values
    ]


def test_the_floor_decides_when_the_interval_alone_would_say_holds():
    # paired replicates all give an effect of exactly 0.05 (interval [0.05, 0.05], above 0) but
    # the plain twin's two halves differ by 0.2: the effect is within the floor
    reps = [0.0] * 20
    (r,) = [v for v in verdicts(_synthetic([0.05], (2.0, 2.2), reps)) if v.get("score")]
    assert r["ci95"][0] > 0
    assert r["floor"] == pytest.approx(0.2)
    assert (r["verdict"], r["why"]) == ("not resolved", "within the split-half floor")
    # the same effect with halves that agree: it holds
    (r,) = [v for v in verdicts(_synthetic([0.05], (2.0, 2.0), reps)) if v.get("score")]
    assert r["verdict"] == "holds"


@pytest.mark.parametrize(
    ("effects", "verdict"),
    [
        ([0.5, 0.6, 0.55], "holds"),
        ([-0.5, -0.6, -0.55], "fails"),
        ([0.5, -0.6, 0.2], "not resolved"),
    ],
)
def test_over_seeds_a_student_t_interval(effects, verdict):
    rows = [v for v in verdicts(_synthetic(effects, (2.0, 2.0), [])) if v.get("score")]
    (r,) = rows
    assert r["n_seeds"] == 3 and "Student-t" in r["interval"]
    assert r["effect"] == pytest.approx(np.mean(effects))
    half = (r["ci95"][1] - r["ci95"][0]) / 2
    assert half == pytest.approx(4.302653 * np.std(effects, ddof=1) / math.sqrt(3), rel=1e-5)
    assert r["verdict"] == verdict


def test_without_replicates_one_seed_is_not_resolved():
    (r,) = [v for v in verdicts(_synthetic([1.0], (2.0, 2.0), [])) if v.get("score")]
    assert r["ci95"] is None and r["verdict"] == "not resolved" and r["why"] == "no interval"


def test_missing_arms_give_no_row():
    rows = verdicts([{"headline": {"resnet": {"nc1_kendall_tau": -1.0}}}])
    assert [r["comparison"] for r in rows] == ["trained, τ < 0"]


def test_profile_spread_is_scale_free_and_zero_for_identical_halves():
    """The network's split-half spread of NC1 and of W2²/M_L (what the joint MUFM fit's residuals
    are read against): unchanged when the trajectory is scaled, zero when both halves are the
    same points."""
    from otcollapse.surrogates.calibrate import profile_spread

    traj = _detour()
    a = profile_spread(traj, None, seed=0)
    scaled = Trajectory.from_arrays([7.0 * np.asarray(h) for h in traj.layers], labels=traj.labels)
    b = profile_spread(scaled, None, seed=0)
    assert len(a["nc1"]) == len(a["cost"]) == L
    assert np.allclose(a["nc1"], b["nc1"], atol=1e-9) and np.allclose(
        a["cost"], b["cost"], atol=1e-9
    )
    assert max(a["nc1"]) > 0
    # every sample twice: the split halves hold the same points when each pair is split
    from otcollapse._resampling import split_halves

    first, second = split_halves(traj.labels, traj.n_samples, 0)
    twin_layers = []
    for h in traj.layers:
        h = np.asarray(h).copy()
        h[second] = h[first]
        twin_layers.append(h)
    twin = Trajectory.from_arrays(twin_layers, labels=traj.labels)
    c = profile_spread(twin, None, seed=0)
    assert np.allclose(c["nc1"], 0, atol=1e-9) and np.allclose(c["cost"], 0, atol=1e-9)


def test_the_joint_fit_is_read_against_the_seed_to_seed_spread():
    from otcollapse.experiments.analysis import profile_over_seeds

    def seed(nc1_net: list[float], cost_net: list[float]) -> dict:
        rows = [
            {
                "layer": l + 1,
                "nc1_network": a,
                "cost_network": c,
                "log_ratio_nc1": 0.1,
                "log_ratio_cost": 0.05 * (l + 1),
            }
            for l, (a, c) in enumerate(zip(nc1_net, cost_net, strict=True))
        ]
        return {"mufm": {"profile": {"fitted": True, "residuals": rows}}}

    # the network's NC1 at step 1 varies by a factor e^0.3 over the seeds, at step 2 by e^0.05
    per_seed = [
        seed([1.0, 1.0], [0.2, 0.2]),
        seed([np.exp(0.3), np.exp(0.05)], [0.2 * np.exp(0.2), 0.2 * np.exp(0.2)]),
        seed([np.exp(0.1), 1.0], [0.2, 0.2]),
    ]
    got = profile_over_seeds(per_seed)
    r1, r2 = got["residuals"]
    assert r1["seed_spread_nc1"] == pytest.approx(0.3) and r2["seed_spread_nc1"] == pytest.approx(
        0.05
    )
    assert r1["seed_spread_cost"] == pytest.approx(0.2)
    # step 1: |0.1| <= 0.3 and |0.05| <= 0.2; step 2: |0.1| > 0.05
    assert (r1["within_seeds"], r2["within_seeds"]) == (True, False)
    assert got["reproduces_seeds"] == "1 of 2 steps (over 3 seeds)"
    # a seed without a fit (weight decay 0): nothing to read
    assert profile_over_seeds([*per_seed, {"mufm": {"profile": {"fitted": False}}}]) is None
