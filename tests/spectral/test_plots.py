"""Tests of fr_fast.spectral.plots: what makes the figures readable without the code (frequency axes with DC
marked, perceptual colour maps on one shared scale with a colourbar, examples as a grid), checked on the
matplotlib figures themselves; and replot, which redraws an analysis folder from its data files."""
from __future__ import annotations

import json

import pytest
import torch

from fr_fast.spectral import plots

plt = pytest.importorskip("matplotlib.pyplot")


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions draw (they are saved as usual, then kept open here for inspection)."""
    captured = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: captured.append(fig))
    yield captured
    for fig in captured:
        close(fig)


def _panels(fig):
    return [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]


def _colourbars(fig):
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def test_spectra_on_frequency_axes_with_dc_one_scale_one_colourbar(figures, tmp_path):
    maps = {"natural": torch.rand(8, 8) * 100, "AT": torch.rand(8, 8)}  # ranges 100x apart
    plots.plot_spectra(maps, tmp_path / "spectra.png")
    (fig,) = figures
    panels = _panels(fig)
    assert len(panels) == 2 and len(_colourbars(fig)) == 1
    images = [ax.images[0] for ax in panels]
    assert {im.get_cmap().name for im in images} == {"viridis"}
    assert images[0].get_clim() == images[1].get_clim()  # one scale: the two panels compare by colour
    assert images[0].get_clim()[1] == pytest.approx(torch.log10(maps["natural"].max() + 1e-8).item(), rel=1e-5)
    # pixel (H//2, W//2) of a centred spectrum, DC, sits at frequency (0, 0); pixels are one frequency wide
    assert images[0].get_extent() == [-4.5, 3.5, -4.5, 3.5]
    assert all(any(t.get_text() == "DC" for t in ax.texts) for ax in panels)
    assert "frequency" in panels[0].get_xlabel() and "frequency" in panels[0].get_ylabel()
    assert 0 in panels[0].get_xticks()


def test_fourier_heatmaps_use_magma_on_zero_to_one(figures, tmp_path):
    plots.plot_fourier_heatmaps({"a": torch.rand(6, 6) * 0.3, "b": torch.rand(6, 6)}, tmp_path / "heat.png")
    (fig,) = figures
    images = [ax.images[0] for ax in _panels(fig)]
    assert {im.get_cmap().name for im in images} == {"magma"} and {im.get_clim() for im in images} == {(0.0, 1.0)}
    assert len(_colourbars(fig)) == 1 and _colourbars(fig)[0].get_ylabel() == "error rate"


def test_spectrum_examples_are_a_grid_of_models_by_images(figures, tmp_path):
    examples = {"natural": list(torch.rand(3, 8, 8)), "AT": list(torch.rand(3, 8, 8)), "AT+FR": list(torch.rand(3, 8, 8))}
    plots.plot_spectrum_examples(examples, tmp_path / "examples.png")
    (fig,) = figures
    panels = _panels(fig)
    assert len(panels) == 9
    rows = {ax.get_subplotspec().rowspan.start for ax in panels}
    cols = {ax.get_subplotspec().colspan.start for ax in panels}
    assert rows == {0, 1, 2} and cols == {0, 1, 2}  # 3 x 3, not one strip of 9
    assert len({ax.images[0].get_clim() for ax in panels}) == 1 and len(_colourbars(fig)) == 1
    width, height = fig.get_size_inches()
    assert width / height < 2  # roughly square
    first_column = [ax for ax in panels if ax.get_subplotspec().colspan.start == 0]
    assert [ax.get_ylabel().split("\n")[0] for ax in first_column] == ["natural", "AT", "AT+FR"]


def test_panel_shows_delta_on_a_symmetric_diverging_scale(figures, tmp_path):
    x = torch.rand(2, 3, 8, 8)
    delta = torch.tensor([0.1, -0.02]).view(2, 1, 1, 1) * torch.randn(2, 3, 8, 8).sign()
    plots.plot_panel(x, delta, 4, tmp_path / "panel.png", title="AT")
    (fig,) = figures
    deltas = [ax.images[0] for ax in _panels(fig) if ax.images[0].get_cmap().name == "RdBu_r"]
    spectra = [ax.images[0] for ax in _panels(fig) if any(t.get_text() == "DC" for t in ax.texts)]
    assert {im.get_cmap().name for im in spectra} == {"viridis"}
    assert len(deltas) == 2 and len(spectra) == 2 and len(_colourbars(fig)) == 2
    low, high = deltas[0].get_clim()
    assert low == -high and high == pytest.approx(0.1)  # zero is white, both rows on the same scale
    assert deltas[0].get_clim() == deltas[1].get_clim() and spectra[0].get_clim() == spectra[1].get_clim()


def test_filtered_accuracy_ticks_at_the_bandwidths_and_shares_the_scale(figures, tmp_path):
    acc = {"AT": {4: 0.5, 8: 0.7, 12: 0.75}}
    plots.plot_filtered_accuracy(acc, tmp_path / "lpf.png", high=acc)
    (fig,) = figures
    left, right = fig.axes
    assert list(left.get_xticks()) == [4, 8, 12] and left.get_shared_y_axes().joined(left, right)


def test_replot_redraws_an_analysis_folder_from_its_data(tmp_path):
    folder = tmp_path / "analysis"
    plots.save_json({"m": {"eps": 0.1, "pgd_steps": 5, "heatmap_norm": 4.0, "panel_bandwidth": 4}},
                    folder / "meta.json")
    plots.save_json({"low_pass": {"m": {4: 0.5, 8: 0.9}}, "high_pass": {"m": {4: 0.2, 8: 0.1}}},
                    folder / "filtered_accuracy.json")
    plots.save_json({"m": torch.rand(8, 8)}, folder / "perturbation_spectrum.json")
    plots.save_json({"m": torch.rand(8, 8)}, folder / "fourier_heatmap.json")
    x = torch.rand(2, 1, 8, 8)
    plots.save_json({"m": {"x": x, "delta": 0.1 * torch.randn_like(x), "spectra": torch.rand(2, 8, 8)}},
                    folder / "perturbation_examples.json")
    written = plots.replot(folder)
    names = sorted(p.rsplit("/", 1)[1] for p in written)
    assert names == ["filtered_accuracy.png", "fourier_heatmap.png", "panel_m.png", "perturbation_examples.png",
                     "perturbation_spectrum.png"]
    for path in written:
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert json.loads((folder / "meta.json").read_text())["m"]["eps"] == 0.1  # data files left as they were
