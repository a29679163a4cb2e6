"""Figures and data files of the Fourier analyses (matplotlib, Agg backend), for ``analyze`` and ``experiments/``.

matplotlib is imported on first use, so the analyses themselves never need it.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor

from fr_fast._optional import require
from fr_fast.spectral.fourier import centered_spectrum, high_pass, low_pass
from fr_fast.utils.files import atomic_write, save_figure


def _plt():
    matplotlib = require("matplotlib", "plotting")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _ensure_parent(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    return path


def _jsonable(obj):
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def save_json(obj, path: str | os.PathLike) -> str:
    """Write ``obj`` (dicts/lists/tensors/numbers) as JSON; returns the path."""
    path = _ensure_parent(path)
    with atomic_write(path) as f:  # whole or not at all, also on a full disk
        json.dump(_jsonable(obj), f, indent=1)
    return path


def save_accuracy_csv(results: Mapping[str, Mapping[int, float]], path: str | os.PathLike) -> str:
    """Write {series name: {bandwidth: accuracy fraction}} as a CSV with one row per series, in percent:
    columns ``series, bw4_acc_pct, bw8_acc_pct, ...``."""
    path = _ensure_parent(path)
    bws = sorted({int(k) for r in results.values() for k in r})
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["series", *(f"bw{b}_acc_pct" for b in bws)])
        for name, r in results.items():
            writer.writerow([name, *(f"{100 * r[k]:.2f}" if k in r else "" for k in bws)])
    return path


# Perceptual colour maps (uniform lightness steps, readable in grey): magnitudes on viridis, error rates on
# magma, signed perturbations on a diverging map centred on zero.
SPECTRUM_CMAP, HEATMAP_CMAP, SIGNED_CMAP = "viridis", "magma", "RdBu_r"
FREQ_X, FREQ_Y = "horizontal frequency (cycles/image)", "vertical frequency (cycles/image)"
BANDWIDTH_LABEL = "bandwidth k (side of the k×k frequency square centred on DC)"


def _save_figure(plt, fig, path: str, title: str | None = None) -> None:
    if title:
        fig.suptitle(title, fontsize=10)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    try:
        save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)


def _integer_ticks(ax, values) -> None:
    """Ticks at the measured integer values (bandwidths), at most ~10 of them."""
    values = sorted(set(int(v) for v in values))
    step = max(1, -(-len(values) // 10))
    ax.set_xticks(values[::step])


def plot_filtered_accuracy(
    low: Mapping[str, Mapping[int, float]],
    path: str | os.PathLike,
    *,
    high: Mapping[str, Mapping[int, float]] | None = None,
    title: str = "Accuracy on filtered inputs",
) -> str:
    """Accuracy vs bandwidth, one line per model (Table 1 as a plot).

    Parameters
    ----------
    low : {model name: {bandwidth: accuracy in [0, 1]}}
        Accuracy on low-pass filtered inputs (left panel).
    high : same, optional
        Accuracy on high-pass filtered inputs (right panel).
    """
    plt = _plt()
    path = _ensure_parent(path)
    panels = [("low-pass (LPF) inputs: frequencies inside the k×k square kept", low)]
    if high:
        panels.append(("high-pass (HPF) inputs: frequencies inside the square removed", high))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False, sharey=True)
    for ax, (sub, results) in zip(axes[0], panels):
        for name, r in results.items():
            vals = {int(k): v for k, v in r.items()}
            ks = sorted(vals)
            ax.plot(ks, [100 * vals[k] for k in ks], marker="o", label=name)
            _integer_ticks(ax, ks)
        ax.set_xlabel(BANDWIDTH_LABEL)
        ax.set_ylim(0, 100)
        ax.set_title(sub, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("test accuracy (%)")
    _save_figure(plt, fig, path, title)
    return path


def _grid(n: int, ncols: int, size: float, **kwargs):
    """A constrained-layout figure with ``n`` square panels in rows of ``ncols``: (pyplot, figure, axes
    as a 2-D array); unused cells are hidden."""
    if n == 0:
        raise ValueError("nothing to plot")
    plt = _plt()
    ncols = min(n, ncols)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols + 1.2, size * nrows + 0.6), squeeze=False,
                             layout="constrained", **kwargs)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return plt, fig, axes


def _frequency_extent(h: int, w: int) -> tuple[float, float, float, float]:
    """imshow extent (with origin="lower") putting centred-spectrum pixel (i, j) at frequency
    (j - W//2, i - H//2): DC at (0, 0), as fr_fast.spectral.fourier centres spectra."""
    return (-(w // 2) - 0.5, w - w // 2 - 0.5, -(h // 2) - 0.5, h - h // 2 - 0.5)


def _frequency_ticks(n: int) -> list[int]:
    return sorted({-(n // 2), -(n // 4), 0, n // 4, n - n // 2 - 1})


def _frequency_image(ax, m, cmap: str, vmin: float, vmax: float, *, xlabel: bool, ylabel: bool):
    """A centred spectrum on frequency axes, DC marked; returns the image (for the shared colourbar)."""
    h, w = m.shape
    im = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower", extent=_frequency_extent(h, w),
                   interpolation="nearest")
    ax.plot(0, 0, marker="o", ms=7, mfc="none", mec="white", mew=1.2)
    ax.annotate("DC", (0, 0), xytext=(4, 4), textcoords="offset points", color="white", fontsize=7,
                fontweight="bold")
    ax.set_xticks(_frequency_ticks(w))
    ax.set_yticks(_frequency_ticks(h))
    ax.tick_params(labelsize=7)
    if xlabel:
        ax.set_xlabel(FREQ_X, fontsize=8)
    if ylabel:
        ax.set_ylabel(FREQ_Y, fontsize=8)
    return im


def _shared_range(maps: list[Tensor], log: bool) -> tuple[list[Tensor], float, float]:
    """The maps (log10 when ``log``) and one colour range for all of them. Log scales start at the 1st
    percentile, so that a single near-zero frequency does not flatten every other contrast."""
    maps = [m.detach().float().cpu() for m in maps]
    if log:
        maps = [torch.log10(m + 1e-8) for m in maps]
    values = torch.cat([m.flatten() for m in maps])
    low = torch.quantile(values, 0.01).item() if log else values.min().item()
    return maps, low, values.max().item()


def _heat_grid(maps: Mapping[str, Tensor], path: str, title: str, *, cmap: str, log: bool, label: str,
               vmin: float | None = None, vmax: float | None = None, ncols: int = 4) -> str:
    """One panel per map, frequency axes with DC marked, one colour scale and one colourbar for all."""
    names = list(maps)
    plt, fig, axes = _grid(len(names), ncols, 2.8, sharex=True, sharey=True)
    values, low, high = _shared_range([maps[n] for n in names], log)
    vmin, vmax = (low if vmin is None else vmin), (high if vmax is None else vmax)
    nrows, ncols = axes.shape
    for k, (ax, name) in enumerate(zip(axes.ravel(), names)):
        row, col = divmod(k, ncols)
        last_in_column = row == nrows - 1 or k + ncols >= len(names)
        im = _frequency_image(ax, values[k].numpy(), cmap, vmin, vmax, xlabel=last_in_column, ylabel=col == 0)
        ax.set_title(name, fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.85, label=label)
    _save_figure(plt, fig, path, title)
    return path


def plot_spectra(
    spectra: Mapping[str, Tensor], path: str | os.PathLike, *, log: bool = True,
    title: str = "Mean |FFT| of PGD perturbations (centred on DC)",
) -> str:
    """Centred (H, W) spectra side by side (one panel per model), on frequency axes with DC marked and one
    shared colour scale (log10 |FFT| by default)."""
    label = "log10 |FFT|" if log else "|FFT|"
    return _heat_grid(spectra, _ensure_parent(path), title, cmap=SPECTRUM_CMAP, log=log, label=label)


def plot_spectrum_examples(
    examples: Mapping[str, Sequence[Tensor]], path: str | os.PathLike, *, max_examples: int = 4,
    title: str = "|FFT| of single PGD perturbations (centred on DC)",
) -> str:
    """Spectra of single perturbations as a grid: one row per model, one column per example (the same test
    images in every row), log10 |FFT| on one shared scale."""
    names = [n for n in examples if len(examples[n])]
    cols = min(max_examples, max((len(examples[n]) for n in names), default=0))
    if not names or cols == 0:
        raise ValueError("nothing to plot")
    plt, fig, axes = _grid(len(names) * cols, cols, 2.4, sharex=True, sharey=True)
    maps = [examples[n][c] for n in names for c in range(cols) if c < len(examples[n])]
    values, vmin, vmax = _shared_range(maps, True)
    k = 0
    for r, name in enumerate(names):
        for c in range(cols):
            ax = axes[r][c]
            if c >= len(examples[name]):
                ax.set_visible(False)
                continue
            im = _frequency_image(ax, values[k].numpy(), SPECTRUM_CMAP, vmin, vmax,
                                  xlabel=r == len(names) - 1, ylabel=False)
            k += 1
            if r == 0:
                ax.set_title(f"test image #{c + 1}", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{name}\n{FREQ_Y}", fontsize=8)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.85, label="log10 |FFT|")
    path = _ensure_parent(path)
    _save_figure(plt, fig, path, title)
    return path


def plot_fourier_heatmaps(
    heatmaps: Mapping[str, Tensor], path: str | os.PathLike, *,
    title: str = "Fourier heat map: error rate under noise of each frequency",
) -> str:
    """Fourier heat maps (error rates in [0, 1]), one panel per model: the pixel at frequency (u, v) is the
    error rate on images plus a Fourier basis image of that frequency; DC at the centre, one 0-1 scale."""
    return _heat_grid(heatmaps, _ensure_parent(path), title, cmap=HEATMAP_CMAP, log=False,
                      label="error rate", vmin=0.0, vmax=1.0)


def plot_band_accuracy(bands: Mapping[str, Mapping[str, object]], path: str | os.PathLike, *,
                       title: str = "Accuracy with a low/high-pass filtered perturbation (delta) or input") -> str:
    """Fig.-3-style plot: per model, clean accuracy on LPF inputs and robust accuracy with LPF/HPF
    filtered perturbations vs bandwidth (``bands``: name -> :func:`perturbation_band_accuracy`)."""
    names = list(bands)
    if not names:
        raise ValueError("nothing to plot")
    plt = _plt()
    path = _ensure_parent(path)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False, sharey=True)
    axes = axes[0]
    series = [
        ("lpf_input", "clean, LPF input", "tab:red"),
        ("lpf_delta", "robust, LPF delta", "tab:orange"),
        ("hpf_delta", "robust, HPF delta", "tab:green"),
    ]
    for ax, name in zip(axes, names):
        r = bands[name]
        for key, label, color in series:
            d = {int(k): v for k, v in r[key].items()}
            ks = sorted(d)
            ax.plot(ks, [100 * d[k] for k in ks], marker="o", color=color, label=label)
            _integer_ticks(ax, ks)
        ax.axhline(100 * r["robust"], color="gray", ls="--", lw=1, label="robust, full delta")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(BANDWIDTH_LABEL, fontsize=8)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=7)
    _save_figure(plt, fig, path, title)
    return path


def _to_hwc(img: Tensor):
    img = img.detach().float().cpu()
    if img.shape[0] == 1:
        return img[0].numpy(), "gray"
    return img.permute(1, 2, 0).numpy(), None


def plot_panel(
    x: Tensor, delta: Tensor, bandwidth: int, path: str | os.PathLike, *, title: str | None = None
) -> str:
    """Fig.-1-style panel: per row one image, its low-pass part, its high-pass part, the perturbation
    ``delta`` (mean over channels, on a diverging scale centred on 0) and ``delta``'s centred spectrum
    (log10, frequency axes with DC marked). The two delta columns share one scale each, with a colourbar.

    Parameters
    ----------
    x, delta : Tensor (E, C, H, W)
        Natural images in [0, 1] and their adversarial perturbations.
    bandwidth : int
        Bandwidth of the low/high-pass split. The high-pass part is shown unclipped, shifted by
        0.5 so that zero is mid-grey.
    """
    if x.dim() != 4 or x.shape != delta.shape:
        raise ValueError(f"x and delta must both be (E, C, H, W), got {tuple(x.shape)}, {tuple(delta.shape)}")
    plt = _plt()
    path = _ensure_parent(path)
    rows = x.shape[0]
    low = low_pass(x, bandwidth)
    high = (high_pass(x, bandwidth, clip=False) + 0.5).clamp(0, 1)
    spectra, s_min, s_max = _shared_range(list(centered_spectrum(delta).mean(dim=1)), True)
    d = delta.detach().float().cpu().mean(dim=1)
    d_max = max(d.abs().max().item(), 1e-12)
    heads = ["image x", f"low-pass part, k={bandwidth}", f"high-pass part + 0.5, k={bandwidth}",
             "perturbation delta", "log10 |FFT(delta)|"]
    fig, axes = plt.subplots(rows, 5, figsize=(12.5, 2.3 * rows + 0.7), squeeze=False, layout="constrained")
    for r in range(rows):
        for c, (img, cmap) in enumerate([_to_hwc(x[r]), _to_hwc(low[r]), _to_hwc(high[r])]):
            axes[r][c].imshow(img, cmap=cmap, vmin=0, vmax=1)
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
        signed = axes[r][3].imshow(d[r].numpy(), cmap=SIGNED_CMAP, vmin=-d_max, vmax=d_max)
        axes[r][3].set_xticks([])
        axes[r][3].set_yticks([])
        spectrum = _frequency_image(axes[r][4], spectra[r].numpy(), SPECTRUM_CMAP, s_min, s_max,
                                    xlabel=r == rows - 1, ylabel=False)
        axes[r][4].set_ylabel("vertical freq.", fontsize=7)
    for c, head in enumerate(heads):
        axes[0][c].set_title(head, fontsize=9)
    fig.colorbar(signed, ax=axes[:, 3].tolist(), shrink=0.8, label="delta (mean over channels)")
    fig.colorbar(spectrum, ax=axes[:, 4].tolist(), shrink=0.8, label="log10 |FFT|")
    _save_figure(plt, fig, path, title)
    return path


def slug(name: str) -> str:
    """A model name as a file-name part (``AT+FR`` -> ``AT_FR``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def heatmap_title(norm: float) -> str:
    return f"Fourier heat map: error rate under noise of each frequency (L2 norm {norm:g})"


def panel_title(name: str, meta: Mapping) -> str:
    return f"{name}: eps={meta['eps']:.3g}, PGD-{meta['pgd_steps']}"


def _read(folder: Path, name: str):
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else None


def replot(folder: str | os.PathLike) -> list[str]:
    """Redraw every figure of an ``fr-fast analyze`` output folder from the data files it wrote (no model,
    no data set needed); returns the figures written. Panels need ``perturbation_examples.json``."""
    folder = Path(folder)
    meta = _read(folder, "meta.json") or {}
    written = []
    filtered = _read(folder, "filtered_accuracy.json")
    if filtered:
        written.append(plot_filtered_accuracy(filtered["low_pass"], folder / "filtered_accuracy.png",
                                              high=filtered["high_pass"]))
    bands = _read(folder, "band_accuracy.json")
    if bands:
        written.append(plot_band_accuracy(bands, folder / "band_accuracy.png"))
    spectra = _read(folder, "perturbation_spectrum.json")
    if spectra:
        written.append(plot_spectra({n: torch.tensor(s) for n, s in spectra.items()},
                                    folder / "perturbation_spectrum.png"))
    heatmaps = _read(folder, "fourier_heatmap.json")
    if heatmaps:
        norms = {m.get("heatmap_norm") for m in meta.values()} - {None}
        title = heatmap_title(norms.pop()) if len(norms) == 1 else None
        written.append(plot_fourier_heatmaps({n: torch.tensor(h) for n, h in heatmaps.items()},
                                             folder / "fourier_heatmap.png", **({"title": title} if title else {})))
    examples = _read(folder, "perturbation_examples.json")
    if examples:
        written.append(plot_spectrum_examples({n: list(torch.tensor(e["spectra"])) for n, e in examples.items()},
                                              folder / "perturbation_examples.png"))
        for name, e in examples.items():
            x, delta = torch.tensor(e["x"]), torch.tensor(e["delta"])
            bw = meta.get(name, {}).get("panel_bandwidth", min(8, *x.shape[-2:]))
            title = panel_title(name, meta[name]) if name in meta else name
            written.append(plot_panel(x, delta, bw, folder / f"panel_{slug(name)}.png", title=title))
    return [str(p) for p in written]
