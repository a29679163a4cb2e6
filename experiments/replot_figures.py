"""Redraw the committed figures from the data files beside them (no checkpoint, no data set, seconds):

    python experiments/replot_figures.py

* docs/figures/analysis/*.png: from the JSON files ``fr-fast analyze`` wrote there (fr_fast.spectral.plots.replot;
  the panels and the single-perturbation spectra need perturbation_examples.json, which analyze writes since
  the figures were redesigned: rerun analyze to get them, docs/reproduction.md has the command).
* docs/reproduction/figures/filtered_accuracy.png: from docs/reproduction/results.json.
"""
from __future__ import annotations

import json
from pathlib import Path

from fr_fast.spectral import plots

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    written = plots.replot(ROOT / "docs" / "figures" / "analysis")
    spectral = json.loads((ROOT / "docs" / "reproduction" / "results.json").read_text())["spectral"]
    if spectral.get("low"):
        written.append(plots.plot_filtered_accuracy(
            spectral["low"], ROOT / "docs" / "reproduction" / "figures" / "filtered_accuracy.png",
            high=spectral["high"], title="Fashion-MNIST (32x32): accuracy on LPF / HPF test images"))
    for path in written:
        print(f"wrote {Path(path).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
