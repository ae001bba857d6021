"""Normalised margins (otcollapse.nets.margins), the dynamics recorder and the BN x WD experiment
(otcollapse.experiments.dynamics, otcollapse.experiments.square_loss)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from otcollapse.collapse import layer_collapse
from otcollapse.data import load_dataset
from otcollapse.experiments import DynamicsRecorder, run_square_loss_experiment
from otcollapse.nets import ConvResNet, ResidualMLP, normalised_margins, train


def _linear(W: np.ndarray) -> nn.Linear:
    K, d = W.shape
    net = nn.Linear(d, K, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.as_tensor(W, dtype=torch.float32))
    return net


def _gap_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x_i = a_i e_{y_i} + b_i e_{j_i} (j_i != y_i): with W = cI the raw margin is c (a_i - b_i)."""
    y = np.array([0, 1, 2, 0, 1, 2])
    j = np.array([1, 2, 0, 2, 0, 1])
    a = np.array([3.0, 2.0, 4.0, 1.5, 5.0, 2.5])
    b = np.array([1.0, 1.5, 0.5, 1.0, 2.0, 0.5])
    X = np.zeros((6, 3))
    X[np.arange(6), y] = a
    X[np.arange(6), j] = b
    return X, y, a - b


# ---------------------------------------------------------------------------------- margins
@pytest.mark.parametrize("c", [0.5, 4.0])
def test_linear_margin_closed_form(c):
    X, y, gap = _gap_data()
    net = _linear(c * np.eye(3))
    res = normalised_margins(net, (X, y))
    # f(x) = c x, so the raw margin is c (a - b); rho = ||c I||_F = c sqrt(3)
    np.testing.assert_allclose(res.raw, c * gap, rtol=1e-6)
    assert res.rho == pytest.approx(c * math.sqrt(3), rel=1e-6)
    assert res.rho_all == pytest.approx(res.rho, rel=1e-12)
    np.testing.assert_allclose(res.margins, gap / math.sqrt(3), rtol=1e-6)
    assert res.min == pytest.approx(0.5 / math.sqrt(3), rel=1e-6)
    assert res.mean == pytest.approx(gap.mean() / math.sqrt(3), rel=1e-6)
    assert res.scale_invariant == ()


def test_linear_margin_random_matrix_by_hand():
    g = np.random.default_rng(1)
    W = g.normal(size=(4, 5))
    X = g.normal(size=(30, 5))
    y = g.integers(0, 4, size=30)
    res = normalised_margins(_linear(W), (torch.as_tensor(X, dtype=torch.float32), y))
    Z = X.astype(np.float32).astype(np.float64) @ W.astype(np.float32).astype(np.float64).T
    other = np.where(np.eye(4, dtype=bool)[y], -np.inf, Z)
    raw = Z[np.arange(30), y] - other.max(1)
    np.testing.assert_allclose(res.raw, raw, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.margins, raw / np.linalg.norm(W), rtol=1e-5, atol=1e-5)


def test_recorder_on_linear_model_matches_layer_collapse():
    X, y, _ = _gap_data()
    X = X + 0.1 * np.random.default_rng(0).normal(size=X.shape)  # within-class scatter
    W = 2.0 * np.eye(3)
    rec = DynamicsRecorder((X, y))
    r = rec(0, _linear(W))
    res = normalised_margins(_linear(W), (X, y))
    assert r.margin_min == pytest.approx(res.min, rel=1e-12)
    assert r.margin_mean == pytest.approx(res.mean, rel=1e-12)
    assert r.rho == pytest.approx(2.0 * math.sqrt(3), rel=1e-6)
    # the classifier of a bare linear model is the model; its input (the data) is the feature
    ref = layer_collapse(X.astype(np.float32), y, classifier=W, metrics=list(rec.metrics)).metrics
    for k, v in ref.items():
        assert r.collapse[k] == pytest.approx(v, rel=1e-6, abs=1e-9)
    assert rec.trace().classifier == ""


def _homogeneous_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, 8, bias=False),
        nn.ReLU(),
        nn.Linear(8, 8, bias=False),
        nn.ReLU(),
        nn.Linear(8, 3, bias=False),
    )


def test_normalised_margin_invariant_to_layer_rescaling():
    g = np.random.default_rng(2)
    X = torch.as_tensor(g.normal(size=(40, 5)), dtype=torch.float32)
    y = g.integers(0, 3, size=40)
    net = _homogeneous_net()
    rec = DynamicsRecorder((X, y))
    before = normalised_margins(net, (X, y))
    r0 = rec(0, net)
    with torch.no_grad():
        net[0].weight.mul_(3.0)  # f scales by 3, rho by 3
        net[2].weight.mul_(0.25)  # f scales by 1/4, rho by 1/4
    after = normalised_margins(net, (X, y))
    r1 = rec(1, net)
    np.testing.assert_allclose(after.raw, 0.75 * before.raw, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(after.margins, before.margins, rtol=1e-5, atol=1e-7)
    assert after.log_rho - before.log_rho == pytest.approx(math.log(0.75), abs=1e-6)
    assert r1.margin_min == pytest.approx(r0.margin_min, rel=1e-5)
    # the penultimate features scale by 3 * 1/4 (ReLU is positively homogeneous): the
    # scale-invariant collapse metrics do not move
    for k in ("nc1", "nc1_tilde", "nc2_etf_distance", "nc2_equinorm", "nc3"):
        assert r1.collapse[k] == pytest.approx(r0.collapse[k], rel=1e-4, abs=1e-8)
    # rescaling leaves every weight's direction alone: zero angular update
    assert all(v == pytest.approx(0.0, abs=1e-3) for v in r1.angular_updates.values())
    assert r0.angular_updates == {}


def test_margin_not_invariant_when_a_bias_breaks_homogeneity():
    """The invariance above is a property of homogeneous nets, not of the bookkeeping."""
    g = np.random.default_rng(3)
    X = torch.as_tensor(g.normal(size=(40, 5)), dtype=torch.float32)
    y = g.integers(0, 3, size=40)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        net[0].bias.fill_(1.0)
    before = normalised_margins(net, (X, y))
    with torch.no_grad():
        net[0].weight.mul_(3.0)
    after = normalised_margins(net, (X, y))
    assert np.max(np.abs(after.margins - before.margins)) > 1e-3


def test_batchnorm_fed_weights_are_scale_invariant_and_left_out():
    torch.manual_seed(0)
    net = ResidualMLP(4, 6, 2, 3, batchnorm=True)
    X = torch.randn(32, 4)
    y = np.arange(32) % 3
    res = normalised_margins(net, (X, y))
    assert set(res.scale_invariant) == {
        "stem.1.weight",
        "blocks.0.fc1.weight",
        "blocks.1.fc1.weight",
    }
    norms = {n: float(p.detach().double().norm()) for n, p in net.named_parameters() if p.ndim >= 2}
    eff = [v for n, v in norms.items() if n not in res.scale_invariant]
    assert res.rho == pytest.approx(float(np.prod(eff)), rel=1e-12)
    assert res.rho_all == pytest.approx(float(np.prod(list(norms.values()))), rel=1e-12)
    # the convention's premise: in train mode (batch statistics) these weights do not change f
    net.train()
    with torch.no_grad():
        out0 = net(X)
        for n, p in net.named_parameters():
            if n in res.scale_invariant:
                p.mul_(5.0)
        out1 = net(X)
    torch.testing.assert_close(out1, out0, rtol=1e-4, atol=1e-4)
    res5 = normalised_margins(net, (X, y))
    assert res5.rho == pytest.approx(res.rho, rel=1e-12)
    assert res5.rho_all == pytest.approx(res.rho_all * 5.0**3, rel=1e-6)  # float32 products
    res_all = normalised_margins(net, (X, y), rho="all")
    assert res_all.rho == pytest.approx(res5.rho_all, rel=1e-12)
    # without batch normalisation nothing is left out
    torch.manual_seed(0)
    plain = normalised_margins(ResidualMLP(4, 6, 2, 3, batchnorm=False), (X, y))
    assert plain.scale_invariant == ()
    assert plain.rho == pytest.approx(plain.rho_all, rel=1e-12)


def test_batchnorm_detection_in_conv_net():
    torch.manual_seed(0)
    net = ConvResNet(1, 4, 1, 3, batchnorm=True)
    X = torch.randn(6, 1, 8, 8)
    res = normalised_margins(net, (X, np.arange(6) % 3))
    assert set(res.scale_invariant) == {
        "stem.0.weight",
        "blocks.0.conv1.weight",
        "blocks.0.conv2.weight",
    }


def test_angular_update_of_an_orthogonal_replacement():
    X, y, _ = _gap_data()
    net = _linear(np.eye(3))
    rec = DynamicsRecorder((X, y), metrics=())
    rec(0, net)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    r = rec(1, net)
    assert r.angular_updates["weight"] == pytest.approx(math.pi / 2, abs=1e-7)
    assert r.collapse == {}
    assert rec.trace().classifier is None


# ---------------------------------------------------------------------------------- through train
def test_recorder_through_train_with_epoch_selection():
    ds = load_dataset("gaussian_mixture", seed=0, n_per_class=15, dim=6, n_classes=3)
    torch.manual_seed(0)
    net = ResidualMLP(ds.n_features, 8, 1, ds.n_classes, batchnorm=True)
    rec = DynamicsRecorder(ds)
    assert rec.every(2, epochs=5) == (rec, [0, 2, 4, 5])
    hist = train(
        net, ds, epochs=5, lr=0.05, weight_decay=1e-3, loss="mse", batch_size=12,
        callbacks=[(rec, [0, 2, 5])],
    )  # fmt: skip
    tr = rec.trace()
    assert tr.epochs.tolist() == [0, 2, 5]
    assert tr.records[1].weight_norms == hist.weight_norms[1]
    assert tr.records[2].weight_norms == hist.weight_norms[4]
    assert tr.records[0].angular_updates == {}
    assert set(tr.records[2].angular_updates) == set(hist.weight_norms[4])
    final = normalised_margins(net, ds)
    assert tr.records[-1].margin_min == pytest.approx(final.min, rel=1e-12)
    assert tr.records[-1].margin_mean == pytest.approx(final.mean, rel=1e-12)
    assert tr.records[-1].accuracy == pytest.approx(hist.accuracy[-1])
    assert set(tr.scale_invariant) == {"stem.1.weight", "blocks.0.fc1.weight"}
    np.testing.assert_array_equal(tr.series("margin_min"), [r.margin_min for r in tr.records])
    w = tr.series("weight_norm:head.weight")
    assert w[-1] == pytest.approx(hist.weight_norms[-1]["head.weight"])
    inv = tr.series("scale_invariant_norm")
    assert inv[0] == pytest.approx(
        math.sqrt(sum(tr.records[0].weight_norms[k] ** 2 for k in tr.scale_invariant))
    )
    assert np.isnan(tr.series("angular_update:head.weight")[0])
    json.dumps(tr.to_dict())
    with pytest.raises(ValueError, match="unknown series"):
        tr.series("nope")
    with pytest.raises(ValueError, match="no weight named"):
        tr.series("weight_norm:nope")


# ---------------------------------------------------------------------------------- errors
def test_bad_input():
    X, y, _ = _gap_data()
    net = _linear(np.eye(3))
    with pytest.raises(ValueError, match="unknown rho"):
        normalised_margins(net, (X, y), rho="bogus")
    with pytest.raises(ValueError, match="unknown collapse metrics"):
        DynamicsRecorder((X, y), metrics=["nc9"])
    with pytest.raises(ValueError, match="labels must lie"):
        normalised_margins(net, (X, y + 1))
    with pytest.raises(ValueError, match="K >= 2"):
        normalised_margins(_linear(np.ones((1, 3))), (X, np.zeros(6, dtype=int)))
    with pytest.raises(ValueError, match="no module named"):
        DynamicsRecorder((X, y), classifier="head")(0, net)
    seq = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    with pytest.raises(ValueError, match=r"must be an nn\.Linear"):
        DynamicsRecorder((X, y), classifier="1")(0, seq)
    with pytest.raises(ValueError, match=r"no nn\.Linear classifier"):
        DynamicsRecorder((X, y))(0, nn.Sequential(nn.Conv1d(1, 3, 3), nn.Flatten()))
    with pytest.raises(ValueError, match="NaN"):
        normalised_margins(net, (np.full((6, 3), np.nan), y))
    with pytest.raises(ValueError, match="weight_decay"):
        run_square_loss_experiment(weight_decay=0.0)
    with pytest.raises(ValueError, match="repeats"):
        run_square_loss_experiment(settings=[(True, True), (True, True)])
    with pytest.raises(ValueError, match="one sample"):
        run_square_loss_experiment((torch.randn(17, 3), np.arange(17) % 2), batch_size=8, epochs=1)


# ---------------------------------------------------------------------------------- experiment
def test_square_loss_experiment_end_to_end():
    exp = run_square_loss_experiment(
        "gaussian_mixture",
        data_options={"n_classes": 3, "n_per_class": 20, "dim": 6},
        width=8,
        n_blocks=1,
        epochs=6,
        lr=0.1,
        momentum=0.0,
        batch_size=16,
        record_every=2,
        seed=0,
    )
    assert [r.label for r in exp.runs] == ["BN + WD", "BN, no WD", "no BN + WD", "no BN, no WD"]
    for r in exp.runs:
        assert len(r.history) == 6
        assert r.dynamics.epochs.tolist() == [0, 2, 4, 6]
        assert r.history.config["loss"] == "mse"
        assert r.history.config["weight_decay"] == r.weight_decay
        assert bool(r.dynamics.scale_invariant) == r.batchnorm
        assert r.trajectory.n_samples == exp.config["n_train"]
        assert 0.0 <= r.test_accuracy <= 1.0
    # the two weight-decay settings of one BN setting start from the same network
    for bn in (True, False):
        a = exp.run(batchnorm=bn, weight_decay=True).dynamics.records[0]
        b = exp.run(batchnorm=bn, weight_decay=False).dynamics.records[0]
        assert a.weight_norms == b.weight_norms
        assert a.margin_min == b.margin_min
    # plain gradient steps are orthogonal to scale-invariant weights: without weight decay their
    # norm can only grow (||w + eta g||^2 = ||w||^2 + eta^2 ||g||^2)
    preds = {p.claim: p for p in exp.predictions()}
    grow = preds["BN, no WD: the scale-invariant weight norm never decreases"]
    assert grow.holds and grow.values["fraction_non_decreasing"] == 1.0
    assert grow.values["norm_last"] > grow.values["norm_first"]
    assert len(exp.summary()) == 4
    d = json.loads(json.dumps(exp.to_dict()))
    assert len(d["runs"]) == 4 and len(d["predictions"]) == len(preds)
    with pytest.raises(ValueError, match="no run"):
        run_square_loss_experiment(
            "gaussian_mixture",
            data_options={"n_classes": 3, "n_per_class": 10, "dim": 4},
            width=4,
            n_blocks=1,
            epochs=1,
            batch_size=10,
            settings=[(False, True)],
        ).run(batchnorm=True, weight_decay=True)


def test_diverged_run_is_reported_not_hidden():
    with pytest.warns(UserWarning, match="diverged"):
        exp = run_square_loss_experiment(
            "gaussian_mixture",
            data_options={"n_classes": 3, "n_per_class": 10, "dim": 4},
            width=8,
            n_blocks=1,
            epochs=3,
            lr=1e6,
            batch_size=10,
        )
    assert all(r.diverged and r.trajectory is None for r in exp.runs)
    last = exp.runs[0].dynamics.records[-1]
    assert math.isnan(last.margin_min) and math.isnan(last.collapse["nc1"])
    assert "collapse" in last.notes
    preds = exp.predictions()
    assert preds and all(not p.holds and p.values["diverged"] for p in preds)
    d = json.loads(json.dumps(exp.to_dict()))
    assert d["runs"][0]["diverged"] is True and d["runs"][0]["trajectory"] is None
