"""The paper's Fourier-domain analyses of robustness: Table 1 and Figs. 2-3 (sec. 3, appendix A.4).

* :func:`filtered_accuracy` -- accuracy on low/high-pass filtered inputs (Table 1);
* :func:`perturbation_spectrum` -- mean spectrum of PGD perturbations (Fig. 2, A.4);
* :func:`perturbation_band_accuracy` -- robust accuracy with band-filtered perturbations (Fig. 3).

The Fourier primitives live in :mod:`fr_fast.spectral.fourier` (conventions there), the heat maps of Fig. 4 in
:mod:`fr_fast.spectral.heatmap`, the figures in :mod:`fr_fast.spectral.plots`. ``fr_fast.spectral.low_pass``,
``high_pass``, ``centered_spectrum``, ``fourier_basis`` and the heat-map functions are re-exported by the package.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from fr_fast.robustness import attacks
from fr_fast.robustness.measure import batches, is_correct, model_device, progress_bar
from fr_fast.spectral.fourier import centered_spectrum, fourier_basis, high_pass, low_pass
from fr_fast.spectral.heatmap import fourier_heatmap, fourier_heatmap_loop, heatmap_signs
from fr_fast.utils.checks import check_radius

__all__ = [
    "low_pass",
    "high_pass",
    "centered_spectrum",
    "filtered_accuracy",
    "PerturbationSpectrum",
    "perturbation_spectrum",
    "perturbation_band_accuracy",
    "fourier_basis",
    "heatmap_signs",
    "fourier_heatmap",
    "fourier_heatmap_loop",
]

Attack = Callable[[nn.Module, Tensor, Tensor], Tensor]


def _check_bandwidths(bandwidths: Sequence[int]) -> list[int]:
    bws = [int(b) for b in bandwidths]
    if not bws:
        raise ValueError("bandwidths must not be empty")
    return bws


def _n_correct(model: nn.Module, x: Tensor, y: Tensor) -> int:
    return int(is_correct(model, x, y).sum())


def filtered_accuracy(
    model: nn.Module,
    loader: Iterable,
    bandwidths: Sequence[int],
    mode: str = "low",
    *,
    n_images: int | None = None,
    progress: bool = False,
    hpf: str = "paper",
) -> dict[int, float]:
    """Accuracy of ``model`` on low- or high-pass filtered inputs (paper Table 1).

    Parameters
    ----------
    model : nn.Module
        Classifier on [0, 1] images; used as given (call ``model.eval()`` first).
    loader : iterable of (x, y)
        ``x`` (N, C, H, W) in [0, 1], ``y`` (N,) class indices.
    bandwidths : sequence of int
        Filter bandwidths, each in [1, min(H, W)].
    mode : {"low", "high"}
        Low-pass (keep the centred square) or high-pass (remove it); filtered images are clipped.
    n_images : int, optional
        Use only the first ``n_images`` images of the loader.
    hpf : {"paper", "complement"}
        High-pass definition (:func:`fr_fast.spectral.fourier.high_pass`); "paper" keeps the centre of the
        unshifted spectrum as sec. 3 defines it.

    Returns
    -------
    dict mapping bandwidth -> accuracy in [0, 1].
    """
    if mode not in ("low", "high"):
        raise ValueError(f"mode must be 'low' or 'high', got {mode!r}")
    bws = _check_bandwidths(bandwidths)
    filt = low_pass if mode == "low" else functools.partial(high_pass, definition=hpf)
    device = model_device(model)
    correct = dict.fromkeys(bws, 0)
    total = 0
    for x, y in progress_bar(batches(loader, n_images, device), f"{mode}-pass accuracy", progress):
        for k in bws:
            correct[k] += _n_correct(model, filt(x, k), y)
        total += x.shape[0]
    if total == 0:
        raise ValueError("loader produced no images")
    return {k: correct[k] / total for k in bws}


# --------------------------------------------------------------------------------------------
# Perturbation spectra and band aggressiveness (sec. 3.2, Fig. 2/3, A.4)
# --------------------------------------------------------------------------------------------
def _default_attack(eps: float, alpha: float | None, steps: int) -> Attack:
    step = eps / 4 if alpha is None else alpha

    def attack(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return attacks.pgd(model, x, y, eps=eps, alpha=step, steps=steps, random_start=True)

    return attack


@dataclass
class PerturbationSpectrum:
    """Result of :func:`perturbation_spectrum`.

    Attributes
    ----------
    mean : Tensor (H, W)
        Average centred spectrum magnitude of the perturbations over images and channels.
    n_images : int
        Number of images averaged.
    x : Tensor (E, C, H, W)
        The first ``E`` natural images (for per-image figures).
    delta : Tensor (E, C, H, W)
        Their perturbations ``x_adv - x``.
    spectra : Tensor (E, H, W)
        Their centred spectrum magnitudes, averaged over channels.
    """

    mean: Tensor
    n_images: int
    x: Tensor
    delta: Tensor
    spectra: Tensor


def perturbation_spectrum(
    model: nn.Module,
    loader: Iterable,
    eps: float,
    n_images: int | None = 2000,
    *,
    attack: Attack | None = None,
    alpha: float | None = None,
    steps: int = 20,
    n_examples: int = 4,
    progress: bool = False,
) -> PerturbationSpectrum:
    """Average Fourier spectrum of PGD perturbations ``delta = x_adv - x`` (paper Fig. 2, A.4).

    Parameters
    ----------
    model : nn.Module
        Classifier on [0, 1] images (put it in eval mode first).
    loader : iterable of (x, y)
        ``x`` (N, C, H, W) in [0, 1].
    eps : float
        L-inf radius of the default attack.
    n_images : int or None
        Images to average over (the paper uses 2000); None = the whole loader.
    attack : callable ``attack(model, x, y) -> x_adv``, optional
        Replaces the default ``fr_fast.robustness.attacks.pgd`` (PGD-``steps``, step ``alpha`` = eps/4 unless
        given, random start).
    n_examples : int
        How many per-image examples to keep.

    Returns
    -------
    PerturbationSpectrum
    """
    eps = check_radius("eps", eps)
    attack = attack or _default_attack(eps, alpha, steps)
    device = model_device(model)
    total = None
    count = 0
    ex_x: list[Tensor] = []
    ex_d: list[Tensor] = []
    for x, y in progress_bar(batches(loader, n_images, device), "perturbation spectrum", progress):
        delta = (attack(model, x, y).detach() - x).float()
        spec = centered_spectrum(delta)  # (N, C, H, W)
        batch_sum = spec.mean(dim=1).sum(dim=0)
        total = batch_sum if total is None else total + batch_sum
        count += x.shape[0]
        have = sum(t.shape[0] for t in ex_x)
        if have < n_examples:
            ex_x.append(x[: n_examples - have].cpu())
            ex_d.append(delta[: n_examples - have].cpu())
    if total is None:
        raise ValueError("loader produced no images")
    xs = torch.cat(ex_x) if ex_x else torch.empty(0)
    ds = torch.cat(ex_d) if ex_d else torch.empty(0)
    spectra = centered_spectrum(ds).mean(dim=1) if ds.numel() else torch.empty(0)
    return PerturbationSpectrum((total / count).cpu(), count, xs, ds, spectra)


def perturbation_band_accuracy(
    model: nn.Module,
    loader: Iterable,
    eps: float,
    bandwidths: Sequence[int],
    *,
    n_images: int | None = None,
    attack: Attack | None = None,
    alpha: float | None = None,
    steps: int = 20,
    progress: bool = False,
    hpf: str = "paper",
) -> dict[str, object]:
    """Aggressiveness of perturbation bands (paper Fig. 3).

    For each batch the attack runs once; its perturbation ``delta`` is low- or high-pass filtered
    (``clip=False``) at every bandwidth and the model is evaluated on ``clip(x + filtered delta,
    0, 1)``. The filtered ``delta`` may exceed ``eps`` in L-inf norm, as in the paper. ``hpf``: the
    high-pass definition, "paper" (sec. 3, Fig. 3) or "complement" (identity - LPF).

    Returns
    -------
    dict with keys
        ``bandwidths`` : list[int];
        ``clean`` / ``robust`` : accuracy on ``x`` / on the unfiltered ``x_adv``;
        ``lpf_delta`` / ``hpf_delta`` : {bandwidth: accuracy} with low/high-pass filtered delta;
        ``lpf_input`` : {bandwidth: accuracy} on low-pass filtered clean inputs;
        ``n_images`` : int.  All accuracies are in [0, 1].
    """
    eps = check_radius("eps", eps)
    bws = _check_bandwidths(bandwidths)
    attack = attack or _default_attack(eps, alpha, steps)
    device = model_device(model)
    counts = {"clean": 0, "robust": 0}
    bands = {key: dict.fromkeys(bws, 0) for key in ("lpf_delta", "hpf_delta", "lpf_input")}
    total = 0
    for x, y in progress_bar(batches(loader, n_images, device), "perturbation bands", progress):
        x_adv = attack(model, x, y).detach()
        delta = x_adv - x
        counts["clean"] += _n_correct(model, x, y)
        counts["robust"] += _n_correct(model, x_adv, y)
        for k in bws:
            bands["lpf_delta"][k] += _n_correct(model, (x + low_pass(delta, k, clip=False)).clamp(0, 1), y)
            high = high_pass(delta, k, clip=False, definition=hpf)
            bands["hpf_delta"][k] += _n_correct(model, (x + high).clamp(0, 1), y)
            bands["lpf_input"][k] += _n_correct(model, low_pass(x, k), y)
        total += x.shape[0]
    if total == 0:
        raise ValueError("loader produced no images")
    out: dict[str, object] = {"bandwidths": bws, "n_images": total}
    out.update({key: c / total for key, c in counts.items()})
    out.update({key: {k: c / total for k, c in d.items()} for key, d in bands.items()})
    return out
