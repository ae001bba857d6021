"""Tests for otcollapse.nets: models, capture (hooks vs manual forward), training and resume."""

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from otcollapse.data import load_dataset
from otcollapse.nets import (
    BasicBlock,
    ConvResNet,
    ResidualMLP,
    ResNet,
    TrainHistory,
    capture,
    find_blocks,
    load_checkpoint,
    resnet18_layout,
    train,
)


def _images(n=23, c=2, s=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, s, s, generator=g), torch.arange(n) % 3


def _randomise_bn(model, seed=0):
    """Give batch-norm layers non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.weight.data.copy_(1 + 0.1 * torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model


def _manual(model, x):
    """Stem output and block outputs computed by hand, without hooks."""
    model.eval()
    with torch.no_grad():
        h = model.stem(x)
        outs = [h]
        for b in model.blocks:
            h = b(h)
            outs.append(h)
    return outs


def _avg(h):
    return h.mean(dim=(2, 3)) if h.ndim == 4 else h


# ---------------------------------------------------------------------------- models
def test_models_forward_shapes_and_layouts():
    x, _ = _images()
    assert ResidualMLP(128, 16, 3, 5)(x).shape == (23, 5)
    assert ConvResNet(2, 8, 3, 4)(x).shape == (23, 4)
    net = ResNet((4, 8, 16), (1, 2, 1), in_channels=2, n_classes=7)
    assert net(x).shape == (23, 7) and len(net.blocks) == 4 and net.stage_of == [0, 1, 1, 2]
    r18 = resnet18_layout(in_channels=1, n_classes=10, width=4)
    assert len(r18.block_modules()) == 8 and r18.head.in_features == 32
    assert r18(torch.randn(2, 1, 11, 13)).shape == (2, 10)  # any image size
    with pytest.raises(ValueError, match="equal length"):
        ResNet((4, 8), (1,))


def test_plain_twin_has_no_skip():
    torch.manual_seed(0)
    res = ResidualMLP(10, 12, 3, 4)
    plain = ResidualMLP(10, 12, 3, 4, plain=True)
    plain.load_state_dict(res.state_dict())
    x = torch.randn(9, 10)
    with torch.no_grad():
        assert not torch.allclose(res(x), plain(x))
        h = plain.stem(x)
        for b in plain.blocks:
            h = b.fc2(F.relu(b.fc1(h)))
        assert torch.allclose(plain(x), plain.head(h))
    torch.manual_seed(1)
    cres = ResNet((4, 8), (1, 1), in_channels=2, n_classes=3)
    cplain = ResNet((4, 8), (1, 1), in_channels=2, n_classes=3, plain=True)
    missing = cplain.load_state_dict(cres.state_dict(), strict=False)
    assert all("shortcut" in k for k in missing.unexpected_keys) and not missing.missing_keys
    assert all(b.shortcut is None for b in cplain.blocks)
    cres.eval(), cplain.eval()
    xi, _ = _images()
    with torch.no_grad():
        h = cplain.stem(xi)
        for b in cplain.blocks:
            h = F.relu(b.bn2(b.conv2(F.relu(b.bn1(b.conv1(h))))))
        assert torch.allclose(cplain(xi), cplain.head(h.mean(dim=(2, 3))), atol=1e-6)
        assert not torch.allclose(cres(xi), cplain(xi))


# ---------------------------------------------------------------------------- capture
@pytest.mark.parametrize("kind", ["mlp", "conv", "resnet"])
def test_capture_equals_manual_forward(kind):
    torch.manual_seed(0)
    x, y = _images()
    if kind == "mlp":
        net = ResidualMLP(128, 16, 3, 3, batchnorm=True)
    elif kind == "conv":
        net = ConvResNet(2, 6, 2, 3)
    else:
        net = ResNet((4, 8, 12), (1, 1, 1), in_channels=2, n_classes=3)
    _randomise_bn(net)
    net.train()
    traj = capture(net, (x, y), batch_size=10)
    assert net.training  # mode restored
    manual = _manual(net, x)
    assert len(traj) == len(net.blocks) + 1
    assert traj.names[0] == "stem" and traj.names[1] == "blocks.0"
    for layer, h in zip(traj.layers, manual, strict=True):
        assert np.allclose(layer, _avg(h).numpy(), atol=1e-5)
    with torch.no_grad():
        assert np.allclose(traj.logits, net(x).numpy(), atol=1e-5)
    W, b = traj.classifier
    assert np.allclose(traj.layers[-1] @ W.T + b, traj.logits, atol=1e-4)
    assert np.array_equal(traj.labels, y.numpy())
    assert traj.metadata["split"] == "train" and traj.metadata["model"] == type(net).__name__


def test_shortcut_images_equal_P_by_hand():
    torch.manual_seed(0)
    net = _randomise_bn(ResNet((4, 8, 12), (1, 2, 1), in_channels=2, n_classes=3))
    x, y = _images()
    traj = capture(net, (x, y), pool="flatten")
    manual = _manual(net, x)
    # blocks 1 (4->8, stride 2) and 3 (8->12, stride 2) change the shape
    assert sorted(traj.shortcuts) == [1, 3]
    with torch.no_grad():
        for l in (1, 3):
            P_h = net.blocks[l].shortcut(manual[l]).reshape(len(x), -1)
            assert np.allclose(traj.shortcuts[l], P_h.numpy(), atol=1e-5)
    src, tgt = traj.step_measures(1)
    assert src.dim == tgt.dim == 8 * 4 * 4
    plain = capture(ResNet((4, 8), (1, 1), in_channels=2, n_classes=3, plain=True), (x, y))
    assert plain.shortcuts == {}


def test_capture_pooling_shapes_and_batch_invariance():
    torch.manual_seed(0)
    net = _randomise_bn(ConvResNet(2, 6, 2, 3))
    x, y = _images(n=40)
    a = capture(net, (x, y), pool="avg", batch_size=7)
    b = capture(net, (x, y), pool="avg", batch_size=1000)
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert np.allclose(la, lb, atol=1e-5)
    f = capture(net, (x, y), pool="flatten")
    assert f.dims == (6 * 64,) * 3 and "classifier" in f.metadata and f.classifier is None
    p7 = capture(net, (x, y), pool=("project", 20), batch_size=7, seed=3)
    p1000 = capture(net, (x, y), pool=("project", 20), batch_size=1000, seed=3)
    assert p7.dims == (20, 20, 20)
    for la, lb in zip(p7.layers, p1000.layers, strict=True):
        assert np.allclose(la, lb, atol=1e-4)
    other = capture(net, (x, y), pool=("project", 20), seed=4)
    assert not np.allclose(other.layers[1], p7.layers[1])
    assert p7.metadata["pool"] == ["project", 20]


def test_random_projection_preserves_distances():
    """Johnson–Lindenstrauss: squared distances kept within a few sqrt(2/k) relative deviations."""

    class Id(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Identity()
            self.blocks = nn.ModuleList([nn.Identity()])

        def forward(self, x):
            return self.blocks[0](self.stem(x))

    x = torch.randn(30, 2000, generator=torch.Generator().manual_seed(0))
    k = 1000
    traj = capture(Id(), x, pool=("project", k))
    d0 = torch.cdist(x, x).numpy() ** 2
    d1 = torch.cdist(torch.as_tensor(traj.layers[1]), torch.as_tensor(traj.layers[1])).numpy() ** 2
    iu = np.triu_indices(30, 1)
    ratio = d1[iu] / d0[iu]
    assert np.abs(ratio - 1).max() < 5 * np.sqrt(2 / k)
    assert abs(ratio.mean() - 1) < 0.02
    assert traj.labels is None


def test_capture_memmap_identical(tmp_path):
    torch.manual_seed(0)
    net = _randomise_bn(ResNet((4, 8), (1, 1), in_channels=2, n_classes=3))
    x, y = _images()
    ram = capture(net, (x, y), batch_size=5)
    mm = capture(net, (x, y), batch_size=5, memmap_dir=tmp_path)
    for a, b in zip(ram.layers, mm.layers, strict=True):
        assert isinstance(b, np.memmap) and np.array_equal(a, b)
    assert np.array_equal(ram.shortcuts[1], mm.shortcuts[1])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["layer000.npy", "layer001.npy", "layer002.npy", "shortcut001.npy"]

    def boom(module, inputs, output):
        raise RuntimeError("killed")

    handle = net.head.register_forward_hook(boom)  # fails after the block hooks have written
    with pytest.raises(RuntimeError, match="killed"):  # a failed capture leaves no partial file
        capture(net, (x, y), memmap_dir=tmp_path / "f")
    handle.remove()
    assert list((tmp_path / "f").iterdir()) == []


def test_capture_dataset_records_split_and_provenance():
    ds = load_dataset("digits", split="test", n=50)
    torch.manual_seed(0)
    traj = capture(ResidualMLP(64, 8, 2, 10), ds)
    assert traj.metadata["split"] == "test" and traj.metadata["dataset"] == "digits"
    assert traj.metadata["data_provenance"]["n_test"] == 450 and traj.n_samples == 50


def test_capture_named_layers_and_errors():
    torch.manual_seed(0)
    net = ResidualMLP(5, 6, 3, 2)
    x, y = torch.randn(8, 5), torch.arange(8) % 2
    traj = capture(net, (x, y), layers=["blocks.1", "blocks.2"])
    manual = _manual(net, x)
    assert traj.names == ("input", "blocks.1", "blocks.2")
    assert np.allclose(traj.layers[0], manual[1].numpy(), atol=1e-6)  # input of blocks.1
    assert np.allclose(traj.layers[2], manual[3].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match=r"available: .*blocks\.0"):
        capture(net, (x, y), layers=["blocks.7"])
    for bad in ("max", ("project", 0), ("project", 2.5), ("proj", 3)):
        with pytest.raises(ValueError, match="invalid pool"):
            capture(net, (x, y), pool=bad)
    with pytest.raises(ValueError, match="empty"):
        capture(net, (torch.zeros(0, 5), torch.zeros(0)))
    with pytest.raises(ValueError, match="labels for"):
        capture(net, (x, y[:3]))

    class NoBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 2))

        def forward(self, x):
            return self.body(x)

    with pytest.raises(ValueError, match=r"candidate|e\.g\. from \['body'\]"):
        capture(NoBlocks(), (x, y))


def test_capture_refuses_a_module_run_twice():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.act = nn.Linear(4, 4), nn.Linear(4, 4), nn.ReLU()

        def forward(self, x):
            return self.act(self.fc2(self.act(self.fc1(x))))

    with pytest.raises(ValueError, match="ran 2 times"):
        capture(Shared(), torch.randn(3, 4), layers=["fc1", "act"])


def test_torchvision_style_blocks_found_by_duck_typing():
    class TVBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 3, stride, 1)
            self.downsample = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride))
                if (cin != cout or stride > 1)
                else None
            )

        def forward(self, x):
            idt = x if self.downsample is None else self.downsample(x)
            return F.relu(self.conv(x) + idt)

    class TVNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(2, 4, 3, 1, 1)
            self.layer1 = nn.Sequential(TVBlock(4, 4, 1), TVBlock(4, 4, 1))
            self.layer2 = nn.Sequential(TVBlock(4, 8, 2))
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            h = self.layer2(self.layer1(self.conv1(x)))
            return self.fc(h.mean(dim=(2, 3)))

    net = TVNet()
    assert [n for n, _ in find_blocks(net)] == ["layer1.0", "layer1.1", "layer2.0"]
    x, y = _images()
    traj = capture(net, (x, y))
    assert traj.dims == (4, 4, 4, 8) and sorted(traj.shortcuts) == [2]
    assert traj.classifier is not None
    with torch.no_grad():
        h = net.layer1(net.conv1(x))
        assert np.allclose(
            traj.shortcuts[2], net.layer2[0].downsample(h).mean(dim=(2, 3)), atol=1e-5
        )


# ---------------------------------------------------------------------------- training
def _easy():
    return load_dataset("gaussian_mixture", n_classes=3, dim=8, n_per_class=60, separation=6.0)


def test_training_reaches_terminal_phase():
    ds = _easy()
    torch.manual_seed(0)
    net = ResidualMLP(8, 16, 2, 3)
    hist = train(net, ds, epochs=5, lr=0.05, weight_decay=5e-4, batch_size=32)
    assert isinstance(hist, TrainHistory) and hist.epochs == (1, 2, 3, 4, 5)
    assert hist.final_accuracy == 1.0 and hist.terminal_epoch is not None
    assert set(hist.weight_norms[0]) == {n for n, p in net.named_parameters() if p.ndim >= 2}
    d = hist.to_dict()
    assert d["accuracy"][-1] == 1.0 and TrainHistory.from_dict(d) == hist
    torch.manual_seed(0)
    net2 = ResidualMLP(8, 16, 2, 3)
    hist2 = train(net2, ds, epochs=3, lr=0.05, weight_decay=5e-4, loss="mse", schedule=None)
    assert hist2.lr == (0.05, 0.05, 0.05) and hist2.loss[-1] < hist2.loss[0]


def _fresh(batchnorm=True):
    torch.manual_seed(0)
    return ResidualMLP(8, 12, 2, 3, batchnorm=batchnorm)


def test_resume_gives_identical_results(tmp_path):
    ds = _easy()
    kw = dict(epochs=4, lr=0.05, weight_decay=5e-4, batch_size=32, seed=7)
    straight = _fresh()
    h_straight = train(straight, ds, **kw)

    class Killed(Exception):
        pass

    def kill(epoch, model, history):
        raise Killed

    interrupted = _fresh()
    with pytest.raises(Killed):
        train(interrupted, ds, checkpoint_dir=tmp_path, callbacks=[(kill, [2])], **kw)
    # killed in epoch 2's callback, before its checkpoint: the resumed run redoes epoch 2
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    seen = []
    resumed = _fresh()  # a new process: fresh model, everything else from the checkpoint
    h_resumed = train(
        resumed,
        ds,
        checkpoint_dir=tmp_path,
        resume=True,
        callbacks=[(lambda e, m, h: seen.append(e), [2, 3])],
        **kw,
    )
    assert seen == [2, 3]  # the interrupted callback runs again: nothing it writes is lost
    for (n, a), (_, b) in zip(
        straight.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), n
    assert h_resumed.epochs == h_straight.epochs
    assert h_resumed.loss == h_straight.loss and h_resumed.accuracy == h_straight.accuracy
    assert h_resumed.weight_norms == h_straight.weight_norms
    with pytest.raises(ValueError, match="other options"):
        train(_fresh(), ds, checkpoint_dir=tmp_path, resume=True, **dict(kw, lr=0.1))


def test_checkpoints_are_atomic(tmp_path, monkeypatch):
    ds = _easy()
    kw = dict(epochs=2, lr=0.05, weight_decay=5e-4, batch_size=64)
    train(_fresh(), ds, checkpoint_dir=tmp_path, **kw)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    good = load_checkpoint(tmp_path / "checkpoint.pt")

    real_save = torch.save

    def broken_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        train(_fresh(), ds, checkpoint_dir=tmp_path, **kw)
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left
    kept = load_checkpoint(tmp_path / "checkpoint.pt")
    assert kept["epoch"] == good["epoch"]
    for k, v in good["model"].items():
        assert torch.equal(v, kept["model"][k])


def test_callbacks_run_at_chosen_epochs():
    seen = []
    every = []
    train(
        _fresh(),
        _easy(),
        epochs=3,
        lr=0.05,
        weight_decay=0.0,
        callbacks=[
            (lambda e, m, h: seen.append((e, len(h))), [0, 2]),
            lambda e, m, h: every.append(e),
        ],
    )
    assert seen == [(0, 0), (2, 2)] and every == [1, 2, 3]
    with pytest.raises(ValueError, match="outside"):
        train(_fresh(), _easy(), epochs=2, lr=0.1, weight_decay=0.0, callbacks=[(print, [5])])


def test_train_bad_input():
    with pytest.raises(ValueError, match="unknown loss"):
        train(_fresh(), _easy(), epochs=1, lr=0.1, weight_decay=0.0, loss="hinge")
    with pytest.raises(ValueError, match="unknown optimizer"):
        train(_fresh(), _easy(), epochs=1, lr=0.1, weight_decay=0.0, optimizer="lbfgs")
    with pytest.raises(ValueError, match="labels for"):
        train(_fresh(), (torch.randn(4, 8), torch.zeros(3)), epochs=1, lr=0.1, weight_decay=0.0)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        train(_fresh(), _easy(), epochs=1, lr=0.1, weight_decay=0.0, resume=True)


def test_train_refuses_nan_rates_nan_inputs_and_non_integer_labels():
    """Each bad value gets a ValueError/TypeError that names it, before any training step."""
    X, y = torch.randn(12, 8), torch.arange(12) % 3
    kw = dict(epochs=1, weight_decay=0.0)
    Xnan = X.clone()
    Xnan[2, 3] = float("nan")
    for call, kind, match in [
        (lambda: train(_fresh(), (X, y), lr=float("nan"), **kw), ValueError, "lr"),
        (lambda: train(_fresh(), (X, y), lr=float("inf"), **kw), ValueError, "lr"),
        (lambda: train(_fresh(), (X, y), lr=-0.1, **kw), ValueError, "lr"),
        (lambda: train(_fresh(), (X, y), lr="0.1", **kw), TypeError, "lr"),
        (
            lambda: train(_fresh(), (X, y), lr=0.1, epochs=1, weight_decay=np.nan),
            ValueError,
            "weight_decay",
        ),
        (lambda: train(_fresh(), (X, y), lr=0.1, momentum=1.5, **kw), ValueError, "momentum"),
        (lambda: train(_fresh(), (X, y), lr=0.1, batch_size=0, **kw), ValueError, "batch_size"),
        (lambda: train(_fresh(), (X, y), lr=0.1, batch_size=8.0, **kw), TypeError, "batch_size"),
        (lambda: train(_fresh(), (X, y), lr=0.1, seed=0.5, **kw), TypeError, "seed"),
        (lambda: train(_fresh(), (Xnan, y), lr=0.1, **kw), ValueError, "inputs X contains 1 NaN"),
        (
            lambda: train(_fresh(), (X.numpy() + 1j, y), lr=0.1, **kw),
            ValueError,
            "complex values in the inputs X",
        ),
        (
            lambda: train(_fresh(), (X, y + 0.5), lr=0.1, **kw),
            ValueError,
            "labels must be integers",
        ),
        (
            lambda: train(
                _fresh(), (X, y.double().where(y > 0, torch.tensor(float("nan")))), lr=0.1, **kw
            ),
            ValueError,
            "labels must be integers",
        ),
    ]:
        with pytest.raises(kind, match=match):
            call()


@pytest.mark.parametrize("device", ["gpu", "cuda:99", "tpu", "cpu:3"])
def test_train_and_capture_refuse_unknown_devices(device):
    X, y = torch.randn(6, 8), torch.arange(6) % 3
    with pytest.raises(ValueError, match=f"device '{device}'.*available: \\['cpu'"):
        train(_fresh(), (X, y), epochs=1, lr=0.1, weight_decay=0.0, device=device)
    with pytest.raises(ValueError, match=f"device '{device}'.*available: \\['cpu'"):
        capture(_fresh(), (X, y), device=device)


def test_basic_block_shortcut_rules():
    assert isinstance(BasicBlock(4, 4, 1).shortcut, nn.Identity)
    assert isinstance(BasicBlock(4, 8, 1).shortcut, nn.Sequential)
    assert isinstance(BasicBlock(4, 4, 2).shortcut, nn.Sequential)
    assert BasicBlock(4, 8, 2, plain=True).shortcut is None
    net = ResNet((4,), (2,), in_channels=1, n_classes=2, batchnorm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert copy.deepcopy(net)(torch.randn(2, 1, 5, 5)).shape == (2, 2)
