"""Figures and data files of the Fourier analyses (matplotlib, Agg backend), for ``analyze`` and ``experiments/``.

matplotlib is imported on first use, so the analyses themselves never need it.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Mapping

import torch
from torch import Tensor

from fr_fast._optional import require
from fr_fast.spectral.fourier import centered_spectrum, high_pass, low_pass


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
    with open(path, "w") as f:
        json.dump(_jsonable(obj), f, indent=1)
    return path


def save_accuracy_csv(results: Mapping[str, Mapping[int, float]], path: str | os.PathLike) -> str:
    """Write {series name: {bandwidth: accuracy fraction}} as a CSV with one row per series, in percent:
    columns ``series, bw4_acc_pct, bw8_acc_pct, ...``."""
    path = _ensure_parent(path)
    bws = sorted({int(k) for r in results.values() for k in r})
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["series", *(f"bw{b}_acc_pct" for b in bws)])
        for name, r in results.items():
            writer.writerow([name, *(f"{100 * r[k]:.2f}" if k in r else "" for k in bws)])
    return path


def _save_figure(plt, fig, path: str, title: str | None = None) -> None:
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    panels = [("low-pass (LPF) inputs", low)] + ([("high-pass (HPF) inputs", high)] if high else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, (sub, results) in zip(axes[0], panels):
        for name, r in results.items():
            ks = sorted(int(k) for k in r)
            vals = {int(k): v for k, v in r.items()}
            ax.plot(ks, [100 * vals[k] for k in ks], marker="o", label=name)
        ax.set_xlabel("bandwidth k")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(sub, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save_figure(plt, fig, path, title)
    return path


def _panel_row(path, n: int, width: float, height: float):
    """A figure with one row of ``n`` panels (one per model): (pyplot, output path, figure, axes)."""
    if n == 0:
        raise ValueError("nothing to plot")
    plt = _plt()
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return plt, _ensure_parent(path), fig, axes[0]


def _heat_grid(
    maps: Mapping[str, Tensor], path: str, title: str, cmap: str, log: bool, vmin=None, vmax=None
) -> str:
    names = list(maps)
    plt, path, fig, axes = _panel_row(path, len(names), 3.2, 3.2)
    for ax, name in zip(axes, names):
        m = maps[name].detach().float().cpu()
        if log:
            m = torch.log10(m + 1e-8)
        im = ax.imshow(m.numpy(), cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    _save_figure(plt, fig, path, title)
    return path


def plot_spectra(
    spectra: Mapping[str, Tensor], path: str | os.PathLike, *, log: bool = True,
    title: str = "Mean |FFT| of PGD perturbations (centred; log10)",
) -> str:
    """Heat maps of centred (H, W) spectra side by side (one panel per model / example)."""
    return _heat_grid(spectra, os.fspath(path), title, "jet", log)


def plot_fourier_heatmaps(
    heatmaps: Mapping[str, Tensor], path: str | os.PathLike, *, title: str = "Fourier heat map (error rate)"
) -> str:
    """Fourier heat maps (error rates in [0, 1], low frequencies centred), one panel per model."""
    return _heat_grid(heatmaps, os.fspath(path), title, "jet", False, vmin=0.0, vmax=1.0)


def plot_band_accuracy(bands: Mapping[str, Mapping[str, object]], path: str | os.PathLike) -> str:
    """Fig.-3-style plot: per model, clean accuracy on LPF inputs and robust accuracy with LPF/HPF
    filtered perturbations vs bandwidth (``bands``: name -> :func:`perturbation_band_accuracy`)."""
    names = list(bands)
    plt, path, fig, axes = _panel_row(path, len(names), 4.2, 3.6)
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
        ax.axhline(100 * r["robust"], color="gray", ls="--", lw=1, label="robust, full delta")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("bandwidth k")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    _save_figure(plt, fig, path)
    return path


def _to_hwc(img: Tensor):
    img = img.detach().float().cpu()
    if img.shape[0] == 1:
        return img[0].numpy(), "gray"
    return img.permute(1, 2, 0).numpy(), None


def plot_panel(
    x: Tensor, delta: Tensor, bandwidth: int, path: str | os.PathLike, *, title: str | None = None
) -> str:
    """Fig.-1-style panel: per row one image, its low-pass part, its high-pass part, the
    perturbation ``delta`` (min-max scaled, jet) and ``delta``'s centred spectrum (log10, jet).

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
    spec = torch.log10(centered_spectrum(delta).mean(dim=1) + 1e-8)
    heads = ["x", f"LPF(x), k={bandwidth}", f"HPF(x)+0.5, k={bandwidth}", "delta", "log10 |FFT(delta)|"]
    fig, axes = plt.subplots(rows, 5, figsize=(10, 2.1 * rows), squeeze=False)
    for r in range(rows):
        d = delta[r].float().mean(dim=0)
        panels = [_to_hwc(x[r]), _to_hwc(low[r]), _to_hwc(high[r]), (d.numpy(), "jet"), (spec[r].numpy(), "jet")]
        for c, (img, cmap) in enumerate(panels):
            ax = axes[r][c]
            kw = {"vmin": 0, "vmax": 1} if c < 3 else {}
            ax.imshow(img, cmap=cmap, **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(heads[c], fontsize=8)
    _save_figure(plt, fig, path, title)
    return path
