"""Reproductions of published reference points, on data the user already has on disk.

``otcollapse reproduce NAME --data PATH`` reruns one experiment of the literature with the
published numbers beside the measured ones (in ``metrics.json`` under ``published`` and in the
report). Nothing is downloaded: ``PATH`` is a ``.npz`` file with arrays ``X`` and ``y`` or an image
folder ``root/<class>/<image>`` (``otcollapse.data.from_folder``), e.g. MNIST exported once by the
user. Our networks are small stand-ins for the papers' (a constant-width residual network and its
plain twin), so agreement is expected in direction and rough size, not to the digit.

=====================  ==========================================================================
name                   what it reruns
=====================  ==========================================================================
``gai-zhang-mnist``    Gai & Zhang: a ResNet trained with L2 regularisation on MNIST;
                       published LSS = 1.12, OTS = 0.96.
``resnet-vs-plain-wd`` Gai & Zhang: ResNet vs plain twin over weight decays; published on
                       CIFAR-100, ResNets LSS ≈ 1.3–1.8, OTS ≈ 0.85–1.0, plain nets LSS ≈ 3.5–4.6,
                       OTS ≤ 0.22.
``pfc-depth``          Wang, Gai & Zhang: progressive feedforward collapse, collapse metrics
                       decreasing over depth at the terminal phase (MNIST / CIFAR-10).
=====================  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from otcollapse.experiments.config import RunConfig, read_data_file
from otcollapse.experiments.run import run_experiment
from otcollapse.io import locked_folder, save_json

__all__ = ["REPRODUCTIONS", "reproduce"]

_GZ = "K. Gai, S. Zhang, Deep residual networks learn the geodesic curve in the Wasserstein space"
_WGZ = "S. Wang, K. Gai, S. Zhang, Progressive feedforward collapse of ResNet training"


def _config(data: str, quick: bool, seed: int, **kw: Any) -> RunConfig:
    shape = read_data_file(data).input_shape  # validates the path and tells images from vectors
    model = "conv" if len(shape) == 3 and min(shape[1:]) >= 4 else "mlp"
    base: dict[str, Any] = {"data": str(data), "model": model, "seed": seed, "mufm": False}
    if quick:
        base.update(width=16, blocks=3, epochs=4, max_samples=200, capture_epochs=(0,))
    else:
        base.update(width=64, blocks=6, epochs=40)
    base.update(kw)
    return RunConfig(**base)


def _finish(out: Path, metrics: dict[str, Any], published: list[dict[str, Any]], ref: str) -> None:
    from otcollapse.report import write_report

    metrics["published"] = published
    metrics["reference"] = ref
    save_json(out / "metrics.json", metrics)
    print(f"report: {write_report(out)}")


def _gai_zhang(data: str, out: Path, quick: bool, seed: int) -> dict[str, Any]:
    m = run_experiment(_config(data, quick, seed), out, progress=not quick)
    h = m["headline"]["resnet"]
    pub = [
        {"quantity": "ResNet LSS (mean)", "published": 1.12, "measured": h.get("lss_mean")},
        {"quantity": "ResNet OTS", "published": 0.96, "measured": h.get("ots")},
    ]
    _finish(out, m, pub, _GZ + " (MNIST, ResNet with L2 regularisation)")
    return m


def _resnet_vs_plain(data: str, out: Path, quick: bool, seed: int) -> dict[str, Any]:
    wds = (0.0, 5e-4) if quick else (0.0, 1e-4, 5e-4, 1e-3)
    rows = []
    for wd in wds:
        sub = out / f"weight_decay_{wd:g}"
        m = run_experiment(_config(data, quick, seed, weight_decay=wd), sub, progress=not quick)
        for model in ("resnet", "plain"):
            h = m["headline"][model]
            rows.append(
                {
                    "weight_decay": wd,
                    "model": model,
                    "ots": h.get("ots"),
                    "lss_mean": h.get("lss_mean"),
                    "train_accuracy": h.get("train_accuracy"),
                }
            )
    pub = [
        {
            "quantity": "ResNet LSS",
            "published": "1.3–1.8",
            "measured": _span(rows, "resnet", "lss_mean"),
        },
        {
            "quantity": "ResNet OTS",
            "published": "0.85–1.0",
            "measured": _span(rows, "resnet", "ots"),
        },
        {
            "quantity": "plain LSS",
            "published": "3.5–4.6",
            "measured": _span(rows, "plain", "lss_mean"),
        },
        {"quantity": "plain OTS", "published": "≤ 0.22", "measured": _span(rows, "plain", "ots")},
    ]
    metrics: dict[str, Any] = {
        "kind": "reproduce",
        "settings": {"data": str(data), "weight_decays": list(wds), "quick": quick, "seed": seed},
        "sweep": rows,
        "figures": [],
    }
    _finish(out, metrics, pub, _GZ + " (CIFAR-100; measured here on the data given)")
    return metrics


def _span(rows: list[dict[str, Any]], model: str, key: str) -> str:
    vals = [r[key] for r in rows if r["model"] == model and r[key] is not None]
    return "—" if not vals else f"{min(vals):.3g}–{max(vals):.3g}"


def _pfc(data: str, out: Path, quick: bool, seed: int) -> dict[str, Any]:
    cfg = _config(data, quick, seed, **({} if quick else {"blocks": 8}))
    m = run_experiment(cfg, out, progress=not quick)
    h = m["headline"]["resnet"]
    pub = [
        {
            "quantity": "ResNet NC1 over depth (Kendall τ)",
            "published": "decreasing at the terminal phase (τ < 0)",
            "measured": h.get("nc1_kendall_tau"),
        },
        {
            "quantity": "ResNet NC1: fraction of non-increasing steps",
            "published": "1 (monotone)",
            "measured": h.get("nc1_frac_non_increasing"),
        },
    ]
    _finish(out, m, pub, _WGZ + " (MNIST, CIFAR-10)")
    return m


REPRODUCTIONS: dict[str, Callable[[str, Path, bool, int], dict[str, Any]]] = {
    "gai-zhang-mnist": _gai_zhang,
    "resnet-vs-plain-wd": _resnet_vs_plain,
    "pfc-depth": _pfc,
}


def reproduce(
    name: str, data: str | Path, out: str | Path, *, quick: bool = False, seed: int = 0
) -> dict[str, Any]:
    """Rerun the reproduction ``name`` on the data set at ``data``; write a report to ``out``.

    Returns the ``metrics.json`` contents, whose ``published`` rows hold the published and the
    measured value of each reference point. ``quick=True`` uses tiny settings (to check the
    pipeline, e.g. on a synthetic stand-in), not to reproduce anything.

    The data set is read before ``out`` is made, and ``out`` is held
    (:func:`otcollapse.io.locked_folder`) for the whole reproduction: a second writer is refused.
    """
    if name not in REPRODUCTIONS:
        raise ValueError(f"unknown reproduction {name!r}; choose from {sorted(REPRODUCTIONS)}.")
    _config(str(data), quick, seed)  # the data set and the settings, before out is touched
    with locked_folder(out, on_error="empty") as folder:
        return REPRODUCTIONS[name](str(data), folder, quick, seed)
