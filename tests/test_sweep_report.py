"""The grid report of a sweep: figures of each headline number against the swept settings, the
page that embeds them, its tables (mean over seeds and 95% Student-t interval, checked against
the store read on its own) and the cells that are missing from the store."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from scipy import stats
from sweep_grids import GRID

from otcollapse.cli import main
from otcollapse.experiments import load_sweep, sweep
from otcollapse.experiments.store import STORE
from otcollapse.plots import plot_sweep, sweep_statistics
from otcollapse.report import SWEEP_HEADLINE, write_sweep_report

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    """The 2-cell grid over weight decay, 2 seeds, run in the calling thread, with its report."""
    out = tmp_path_factory.mktemp("sweep_report") / "sw"
    sweep(GRID, out, scheduler="serial", threads=1, progress=False, log=lambda s: None)
    write_sweep_report(out, load_sweep(out))
    return out


def _copy(src: Path, dst: Path) -> Path:
    """The sweep folder without its stages (the report reads only sweep.json and the store)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("stages", "figures", "report.html"))
    return dst


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "sweep.json").read_text())


def _section(page: str, metric: str) -> str:
    """The table of ``metric`` in the page's headline numbers."""
    return page.split(f"<h3>{metric}</h3>", 1)[1].split("</table>", 1)[0]


def _row(label: str, net: str, epoch: int, v: np.ndarray) -> str:
    """A row's opening as the report writes it: the mean and half-width to 4 significant digits."""
    half = stats.t.ppf(0.975, v.size - 1) * np.std(v, ddof=1) / np.sqrt(v.size)
    return (
        f"<td class='l'>{label}</td><td class='l'>{net}</td><td>{epoch}</td>"
        f"<td>{np.mean(v):.4g}</td><td>{half:.4g}</td><td>{v.size}</td>"
    )


def test_every_headline_number_has_a_png_embedded_in_the_page(swept):
    names = [f"sweep_{m}_vs_weight_decay.png" for m in SWEEP_HEADLINE]
    page = (swept / "report.html").read_text(encoding="utf-8")
    for name in names:
        data = (swept / "figures" / name).read_bytes()
        assert data.startswith(PNG)
        assert base64.b64encode(data).decode("ascii") in page
    # no MUFM in this sweep: no λ_OT figure; nothing left half-written
    assert sorted(p.name for p in (swept / "figures").iterdir()) == sorted(names)
    assert "Dask scheduler: serial" in page and "torch threads per stage: 1" in page


def test_the_table_holds_the_mean_and_student_t_interval_of_the_store(swept):
    """Read one cell's group from the Zarr store on its own and redo the numbers by hand."""
    page = (swept / "report.html").read_text(encoding="utf-8")
    cell = _manifest(swept)["cells"][1]
    assert cell["label"] == "weight_decay=0.0005"
    with xr.open_zarr(str(swept / STORE / cell["cell"]), consolidated=False) as g:
        lss = g["lss_mean"].sel(net="plain").load()
        last = int(g["epoch"].max())
    for metric, net in (("lss_mean", "plain"), ("path_ratio", "resnet")):
        with xr.open_zarr(str(swept / STORE / cell["cell"]), consolidated=False) as g:
            da = g[metric].sel(net=net).load()
        v_last = da.sel(epoch=last).values
        v_init = da.sel(epoch=0).values
        assert v_last.size == 2 and np.all(np.isfinite(v_last)) and np.std(v_last) > 0
        row = _row(cell["label"], net, last, v_last)
        half0 = stats.t.ppf(0.975, 1) * np.std(v_init, ddof=1) / np.sqrt(2)
        row += f"<td>{np.mean(v_init):.4g}</td><td>{half0:.4g}</td><td>2</td></tr>"
        assert row in _section(page, metric)
    # the same numbers as sweep_statistics draws
    st = sweep_statistics(load_sweep(swept), "lss_mean").sel(cell=cell["cell"], net="plain")
    v = lss.sel(epoch=last).values
    assert float(st["mean"]) == pytest.approx(np.mean(v))
    assert float(st["half"]) == pytest.approx(
        stats.t.ppf(0.975, 1) * np.std(v, ddof=1) / np.sqrt(2)
    )


def test_a_failed_and_a_missing_cell_are_listed(swept, tmp_path):
    out = _copy(swept, tmp_path / "sw")
    m = _manifest(out)
    failed = m["cells"][1]
    shutil.rmtree(out / STORE / failed["cell"])
    failed.update(done=False, error="RuntimeError: boom")
    m["cells"].append(
        {
            "cell": "cell-000000000000",
            "label": "weight_decay=0.001",
            "settings": {},
            "seeds": [0, 1],
            "done": False,
            "error": None,
        }
    )
    (out / "sweep.json").write_text(json.dumps(m))
    ds = load_sweep(out)
    assert ds.sizes["cell"] == 1
    page = write_sweep_report(out, ds).read_text(encoding="utf-8")
    assert "2 of 3 cells are not in the store" in page
    assert "weight_decay=0.0005 (RuntimeError: boom)" in page
    assert "weight_decay=0.001 (not run yet" in page
    cells = page.split("<h2>Cells</h2>", 1)[1].split("</table>", 1)[0]
    assert cells.count("<tr>") == 4 and "RuntimeError: boom" in cells
    for metric in SWEEP_HEADLINE:
        assert (out / "figures" / f"sweep_{metric}_vs_weight_decay.png").read_bytes()[:8] == PNG
        assert "weight_decay=0.0005" not in _section(page, metric)
    title = plot_sweep(ds, "ots", "weight_decay").axes[0].get_title()
    assert "2 cell(s) of the grid not in the store" in title


def test_nothing_swept_draws_against_the_cells(swept, tmp_path):
    out = _copy(swept, tmp_path / "one")
    m = _manifest(out)
    m["cells"] = m["cells"][:1]
    m["swept"] = []
    (out / "sweep.json").write_text(json.dumps(m))
    page = write_sweep_report(out, load_sweep(out)).read_text(encoding="utf-8")
    for metric in SWEEP_HEADLINE:
        data = (out / "figures" / f"sweep_{metric}_vs_cell.png").read_bytes()
        assert data[:8] == PNG and base64.b64encode(data).decode("ascii") in page
    assert "swept: nothing (one cell)" in page


def test_plot_sweep_draws_the_means_intervals_and_init_baseline(swept):
    ds = load_sweep(swept)
    fig = plot_sweep(ds, "lss_mean", "weight_decay")
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear"  # 0 and one positive value: nothing to span
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["resnet", "resnet at init", "plain", "plain at init"]
    last = sweep_statistics(ds, "lss_mean", "last")
    init = sweep_statistics(ds, "lss_mean", "init")
    for k, (st, net) in enumerate(((last, "resnet"), (init, "resnet"), (last, "plain"))):
        line, _caps, (bars,) = ax.containers[k]
        np.testing.assert_allclose(line.get_xdata(), [0.0, 5e-4])
        np.testing.assert_allclose(line.get_ydata(), st["mean"].sel(net=net).values)
        assert line.get_linestyle() == ("--" if st is init else "-")
        tops = np.array([seg[1, 1] for seg in bars.get_segments()])
        np.testing.assert_allclose(tops, (st["mean"] + st["half"]).sel(net=net).values)
    assert "mean over 2 seeds ± 95% Student-t interval" in ax.get_title()
    assert "line-shape score" in ax.get_ylabel() and "dimensionless" in ax.get_ylabel()


def _three_cells(ds: xr.Dataset, values: list) -> xr.Dataset:
    third = ds.isel(cell=[1]).assign_coords(cell=["cell-third"])
    out = xr.concat([ds, third], dim="cell", coords="different", compat="equals")
    return out.assign_coords(weight_decay=("cell", values))


@pytest.mark.parametrize(
    ("values", "scale"),
    [([1e-4, 1e-3, 1e-2], "log"), ([0.0, 1e-4, 1e-2], "symlog"), ([1.0, 2.0, 3.0], "linear")],
)
def test_plot_sweep_picks_the_axis_from_the_values(swept, values, scale):
    fig = plot_sweep(_three_cells(load_sweep(swept), values), "ots", "weight_decay")
    assert fig.axes[0].get_xscale() == scale


def test_text_settings_are_categories_and_other_settings_split_the_lines(swept):
    ds = _three_cells(load_sweep(swept), [0.0, 5e-4, 5e-4])
    ds = ds.assign_coords(data=("cell", ["digits", "digits", "mnist1d"]))
    ax = plot_sweep(ds, "ots", "data").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["digits", "mnist1d"]
    labels = ax.get_legend_handles_labels()[1]
    assert "resnet, weight_decay=0.0005" in labels and "plain, weight_decay=0.0 at init" in labels
    assert len(labels) == 8  # 2 nets x 2 weight decays, last epoch and init


def test_one_seed_has_no_interval_and_says_so(swept):
    ds = load_sweep(swept).isel(seed=[0])
    ax = plot_sweep(ds, "ots", "weight_decay").axes[0]
    assert "one seed: no interval" in ax.get_title()
    assert np.all(np.isnan(sweep_statistics(ds, "ots")["half"].values))


def test_a_metric_over_the_seeds_only_is_one_line(swept):
    ds = load_sweep(swept)
    lam = np.array([[1e-3, 2e-3], [1e-2, 3e-2]])
    attrs = {"units": "1", "long_name": "λ_OT of the MUFM"}
    ds = ds.assign(mufm_lambda_ot=(("cell", "seed"), lam, attrs))
    ax = plot_sweep(ds, "mufm_lambda_ot", "weight_decay").axes[0]
    assert ax.get_legend_handles_labels()[1] == ["mufm_lambda_ot"]
    np.testing.assert_allclose(ax.containers[0][0].get_ydata(), lam.mean(1))
    with pytest.raises(ValueError, match="no epoch dimension"):
        sweep_statistics(ds, "mufm_lambda_ot", "init")


def test_plot_sweep_refuses_what_it_cannot_draw(swept):
    ds = load_sweep(swept)
    with pytest.raises(ValueError, match="select one entry"):
        plot_sweep(ds, "nc1", "weight_decay")
    with pytest.raises(ValueError, match="no setting 'depth'"):
        plot_sweep(ds, "ots", "depth")
    with pytest.raises(ValueError, match="no variable 'nope'"):
        plot_sweep(ds, "nope", "weight_decay")
    assert plot_sweep(ds.isel(layer=-1), "nc1", "weight_decay").axes[0].get_title()


def test_the_report_command_rebuilds_a_sweep_report(swept, tmp_path, capsys):
    out = _copy(swept, tmp_path / "sw")
    assert not (out / "report.html").exists()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").is_file()
    assert str(out / "report.html") in capsys.readouterr().out
    assert (out / "figures" / "sweep_ots_vs_weight_decay.png").read_bytes()[:8] == PNG
