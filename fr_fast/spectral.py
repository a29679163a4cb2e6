"""Fourier-domain analyses of robustness (paper sec. 3 and appendix A.2/A.4).

Conventions used throughout
---------------------------
* Images are tensors ``(..., H, W)`` (typically ``(N, C, H, W)``) with values in ``[0, 1]``;
  every 2-D transform acts on the last two dimensions, i.e. per channel.
* "Centred" spectra are ``torch.fft.fftshift``-ed: the DC term sits at row ``H // 2`` and column
  ``W // 2`` (for even and odd sizes alike), low frequencies in the middle.
* The centred ``k x k`` square (bandwidth ``k``) covers rows ``H//2 - k//2 ... H//2 - k//2 + k - 1``
  and columns ``W//2 - k//2 ... W//2 - k//2 + k - 1`` of the centred spectrum. For odd ``k`` it is
  symmetric about DC; for even ``k`` it holds one more negative than positive frequency per axis
  (the usual slicing convention of Yin et al. 2019). ``k`` must satisfy ``1 <= k <= min(H, W)``;
  non-square images use the same ``k x k`` square centred on DC. ``k = H = W`` keeps every
  frequency.
* Filters return the real part of the inverse FFT. For even ``k`` the square is not conjugate
  symmetric, so taking the real part gives half weight to the unmatched edge frequencies;
  because of this, ``low_pass(x, k, clip=False) + high_pass(x, k, clip=False) == x`` exactly
  (up to float error) for every ``k``.

Note on the paper: its prose calls the HPF "the centre patch of the *unshifted* spectrum";
we follow the standard (Yin et al.) definition in which HPF removes the centred low-frequency
square of the shifted spectrum, i.e. HPF = identity - LPF.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import operator
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

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
    "plot_filtered_accuracy",
    "plot_spectra",
    "plot_band_accuracy",
    "plot_fourier_heatmaps",
    "plot_panel",
    "save_json",
    "save_accuracy_csv",
]

Attack = Callable[[nn.Module, Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------------
def _check_image(x: Tensor, name: str = "x") -> tuple[int, int]:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{name} must have shape (..., H, W), got {tuple(x.shape)}")
    if x.is_complex():
        raise ValueError(f"{name} must be real, got dtype {x.dtype}")
    h, w = x.shape[-2], x.shape[-1]
    if h < 1 or w < 1:
        raise ValueError(f"{name} has an empty spatial size {(h, w)}")
    return h, w


def _check_bandwidth(bandwidth: int, h: int, w: int) -> int:
    if isinstance(bandwidth, bool):
        raise ValueError(f"bandwidth must be an integer, got {bandwidth!r}")
    try:
        k = operator.index(bandwidth)
    except TypeError:
        if not (isinstance(bandwidth, float) and bandwidth.is_integer()):
            raise ValueError(f"bandwidth must be an integer, got {bandwidth!r}") from None
        k = int(bandwidth)
    if k <= 0 or k > min(h, w):
        raise ValueError(
            f"bandwidth must be in [1, min(H, W)] = [1, {min(h, w)}] for images of size {h}x{w}, got {k}"
        )
    return k


def _square_bounds(n: int, k: int) -> tuple[int, int]:
    """Start/stop (exclusive) of the centred length-``k`` window in a centred axis of length ``n``."""
    start = n // 2 - k // 2
    return start, start + k


@lru_cache(maxsize=64)
def _low_mask_unshifted(h: int, w: int, k: int, device: str) -> Tensor:
    # Build the mask on the centred grid, then move it to the FFT's native order once, so that
    # filtering needs no fftshift of the (large) data.
    mask = torch.zeros(h, w, dtype=torch.bool)
    r0, r1 = _square_bounds(h, k)
    c0, c1 = _square_bounds(w, k)
    mask[r0:r1, c0:c1] = True
    return torch.fft.ifftshift(mask, dim=(-2, -1)).to(device)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _filter(x: Tensor, bandwidth: int, keep_low: bool, clip: bool) -> Tensor:
    h, w = _check_image(x)
    k = _check_bandwidth(bandwidth, h, w)
    mask = _low_mask_unshifted(h, w, k, str(x.device))
    if not keep_low:
        mask = ~mask
    spec = torch.fft.fft2(x.to(_compute_dtype(x)), dim=(-2, -1))
    out = torch.fft.ifft2(spec * mask, dim=(-2, -1)).real
    if clip:
        out = out.clamp_(0.0, 1.0)
    return out.to(x.dtype)


def low_pass(x: Tensor, bandwidth: int, *, clip: bool = True) -> Tensor:
    """Keep only the centred ``bandwidth x bandwidth`` low-frequency square of each channel.

    Parameters
    ----------
    x : Tensor, shape (..., H, W)
        Real images (any float dtype; 16-bit inputs are filtered in float32), usually in [0, 1].
    bandwidth : int
        Side ``k`` of the centred square kept, ``1 <= k <= min(H, W)`` (see the module docstring
        for the exact index range). ``k = H = W`` returns ``x`` unchanged (up to clipping).
    clip : bool
        Clamp the result to [0, 1] (images). Use ``clip=False`` for perturbations.

    Returns
    -------
    Tensor, same shape and dtype as ``x``.
    """
    return _filter(x, bandwidth, keep_low=True, clip=clip)


def high_pass(x: Tensor, bandwidth: int, *, clip: bool = True) -> Tensor:
    """Remove the centred ``bandwidth x bandwidth`` low-frequency square of each channel.

    ``high_pass(x, k, clip=False) == x - low_pass(x, k, clip=False)``. Shapes, ranges and the
    bandwidth rule are those of :func:`low_pass`; ``k = H = W`` gives all zeros.
    """
    return _filter(x, bandwidth, keep_low=False, clip=clip)


def centered_spectrum(x: Tensor) -> Tensor:
    """Magnitude of the centred 2-D spectrum, ``|fftshift(fft2(x))|``.

    Parameters
    ----------
    x : Tensor, shape (..., H, W), real.

    Returns
    -------
    Tensor, shape (..., H, W), float32 (float64 for float64 input), DC at ``(H // 2, W // 2)``.
    """
    _check_image(x)
    spec = torch.fft.fft2(x.to(_compute_dtype(x)), dim=(-2, -1))
    return torch.fft.fftshift(spec, dim=(-2, -1)).abs()


# --------------------------------------------------------------------------------------------
# Helpers for model/loader evaluation
# --------------------------------------------------------------------------------------------
def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _batches(loader: Iterable, n_images: int | None, device: torch.device):
    """Yield ``(x, y)`` on ``device`` until ``n_images`` images were produced (all if None)."""
    if n_images is not None and n_images <= 0:
        raise ValueError(f"n_images must be positive, got {n_images}")
    seen = 0
    for batch in loader:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("loader must yield (x, y) pairs")
        x, y = batch[0], batch[1]
        if n_images is not None:
            x, y = x[: n_images - seen], y[: n_images - seen]
        if x.dim() != 4:
            raise ValueError(f"loader images must have shape (N, C, H, W), got {tuple(x.shape)}")
        yield x.to(device, torch.float32), y.to(device)
        seen += x.shape[0]
        if n_images is not None and seen >= n_images:
            return


def _correct(model: nn.Module, x: Tensor, y: Tensor) -> int:
    with torch.inference_mode():
        return int((model(x).argmax(dim=1) == y).sum())


def _check_bandwidths(bandwidths: Sequence[int]) -> list[int]:
    bws = [int(b) for b in bandwidths]
    if not bws:
        raise ValueError("bandwidths must not be empty")
    return bws


def _progress(iterable, desc: str, progress: bool, total: int | None = None):
    if not progress:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False)


def filtered_accuracy(
    model: nn.Module,
    loader: Iterable,
    bandwidths: Sequence[int],
    mode: str = "low",
    *,
    n_images: int | None = None,
    progress: bool = False,
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

    Returns
    -------
    dict mapping bandwidth -> accuracy in [0, 1].
    """
    if mode not in ("low", "high"):
        raise ValueError(f"mode must be 'low' or 'high', got {mode!r}")
    bws = _check_bandwidths(bandwidths)
    filt = low_pass if mode == "low" else high_pass
    device = _model_device(model)
    correct = dict.fromkeys(bws, 0)
    total = 0
    for x, y in _progress(_batches(loader, n_images, device), f"{mode}-pass accuracy", progress):
        for k in bws:
            correct[k] += _correct(model, filt(x, k), y)
        total += x.shape[0]
    if total == 0:
        raise ValueError("loader produced no images")
    return {k: correct[k] / total for k in bws}


# --------------------------------------------------------------------------------------------
# Perturbation spectra and band aggressiveness (sec. 3.2, Fig. 2/3, A.4)
# --------------------------------------------------------------------------------------------
def _default_attack(eps: float, alpha: float | None, steps: int) -> Attack:
    from fr_fast import attacks  # imported lazily: the spectral filters must not depend on it

    step = eps / 4 if alpha is None else alpha

    def attack(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return attacks.pgd(model, x, y, eps=eps, alpha=step, steps=steps, random_start=True)

    return attack


def _check_eps(eps: float) -> float:
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


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
        Replaces the default ``fr_fast.attacks.pgd`` (PGD-``steps``, step ``alpha`` = eps/4 unless
        given, random start).
    n_examples : int
        How many per-image examples to keep.

    Returns
    -------
    PerturbationSpectrum
    """
    eps = _check_eps(eps)
    attack = attack or _default_attack(eps, alpha, steps)
    device = _model_device(model)
    total = None
    count = 0
    ex_x: list[Tensor] = []
    ex_d: list[Tensor] = []
    for x, y in _progress(_batches(loader, n_images, device), "perturbation spectrum", progress):
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
) -> dict[str, object]:
    """Aggressiveness of perturbation bands (paper Fig. 3).

    For each batch the attack runs once; its perturbation ``delta`` is low- or high-pass filtered
    (``clip=False``) at every bandwidth and the model is evaluated on ``clip(x + filtered delta,
    0, 1)``. The filtered ``delta`` may exceed ``eps`` in L-inf norm, as in the paper.

    Returns
    -------
    dict with keys
        ``bandwidths`` : list[int];
        ``clean`` / ``robust`` : accuracy on ``x`` / on the unfiltered ``x_adv``;
        ``lpf_delta`` / ``hpf_delta`` : {bandwidth: accuracy} with low/high-pass filtered delta;
        ``lpf_input`` : {bandwidth: accuracy} on low-pass filtered clean inputs;
        ``n_images`` : int.  All accuracies are in [0, 1].
    """
    eps = _check_eps(eps)
    bws = _check_bandwidths(bandwidths)
    attack = attack or _default_attack(eps, alpha, steps)
    device = _model_device(model)
    counts = {"clean": 0, "robust": 0}
    bands = {key: dict.fromkeys(bws, 0) for key in ("lpf_delta", "hpf_delta", "lpf_input")}
    total = 0
    for x, y in _progress(_batches(loader, n_images, device), "perturbation bands", progress):
        x_adv = attack(model, x, y).detach()
        delta = x_adv - x
        counts["clean"] += _correct(model, x, y)
        counts["robust"] += _correct(model, x_adv, y)
        for k in bws:
            bands["lpf_delta"][k] += _correct(model, (x + low_pass(delta, k, clip=False)).clamp(0, 1), y)
            bands["hpf_delta"][k] += _correct(model, (x + high_pass(delta, k, clip=False)).clamp(0, 1), y)
            bands["lpf_input"][k] += _correct(model, low_pass(x, k), y)
        total += x.shape[0]
    if total == 0:
        raise ValueError("loader produced no images")
    out: dict[str, object] = {"bandwidths": bws, "n_images": total}
    out.update({key: c / total for key, c in counts.items()})
    out.update({key: {k: c / total for k, c in d.items()} for key, d in bands.items()})
    return out


# --------------------------------------------------------------------------------------------
# Fourier heat maps (Yin et al. 2019; paper A.2, Fig. 4)
# --------------------------------------------------------------------------------------------
def _unshifted_index(i: int, n: int) -> int:
    """Index in FFT order of the centred (fftshift-ed) index ``i`` on an axis of length ``n``."""
    return (i - n // 2) % n


def _shifted_index(u: int, n: int) -> int:
    return (u + n // 2) % n


def _mirror(i: int, j: int, h: int, w: int) -> tuple[int, int]:
    """Centred coordinates of the conjugate-symmetric partner of centred ``(i, j)``."""
    u, v = _unshifted_index(i, h), _unshifted_index(j, w)
    return _shifted_index(-u % h, h), _shifted_index(-v % w, w)


def fourier_basis(i: int, j: int, h: int, w: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Real 2-D Fourier basis image ``U_ij`` of unit L2 norm (paper A.2).

    Computed as the real part of the inverse FFT of a spectrum that is 1 at centred position
    ``(i, j)`` and 0 elsewhere, then normalised; its FFT is non-zero only at ``(i, j)`` and its
    conjugate-symmetric point (one point when they coincide), so ``U_ij == U_mirror(ij)``.

    Parameters
    ----------
    i, j : int
        Centred frequency coordinates, ``0 <= i < h``, ``0 <= j < w`` (DC at ``(h//2, w//2)``).

    Returns
    -------
    Tensor, shape (h, w), unit Frobenius norm.
    """
    if not (0 <= i < h and 0 <= j < w):
        raise ValueError(f"frequency ({i}, {j}) outside a {h}x{w} spectrum")
    spec = torch.zeros(h, w, dtype=torch.complex128)
    spec[_unshifted_index(i, h), _unshifted_index(j, w)] = 1.0
    basis = torch.fft.ifft2(spec).real
    return (basis / basis.norm()).to(dtype)


def heatmap_signs(
    n_images: int, channels: int, h: int, w: int, generator: torch.Generator | None = None
) -> Tensor:
    """Random signs ``r`` in {-1, +1} per frequency, image and channel, shape (h, w, N, C).

    A frequency and its conjugate-symmetric partner share their signs: they denote the same basis
    image, so the loop and the symmetric fast path see identical perturbed inputs.
    """
    raw = torch.randint(0, 2, (h, w, n_images, channels), generator=generator) * 2 - 1
    signs = raw.clone()
    for i in range(h):
        for j in range(w):
            mi, mj = _mirror(i, j, h, w)
            # the lexicographically smaller point of each pair owns the draw
            if (mi, mj) < (i, j):
                signs[i, j] = raw[mi, mj]
    return signs.float()


def _check_heatmap_inputs(model, x: Tensor, y: Tensor, eps_norm: float) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError("model must be an nn.Module")
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {getattr(x, 'shape', None)}")
    if not isinstance(y, Tensor) or y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},), got {getattr(y, 'shape', None)}")
    _check_eps(eps_norm)


def _resolve_signs(x: Tensor, signs: Tensor | None, generator) -> Tensor:
    n, c, h, w = x.shape
    if signs is None:
        signs = heatmap_signs(n, c, h, w, generator)
    if signs.shape != (h, w, n, c):
        raise ValueError(f"signs must have shape {(h, w, n, c)}, got {tuple(signs.shape)}")
    return signs


def fourier_heatmap_loop(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps_norm: float,
    *,
    signs: Tensor | None = None,
    generator: torch.Generator | None = None,
    clip: bool = True,
    progress: bool = False,
) -> Tensor:
    """Reference Fourier heat map: one forward pass per basis, no symmetry shortcut.

    Same contract as :func:`fourier_heatmap` (which is much faster); kept for tests/benchmarks.
    """
    _check_heatmap_inputs(model, x, y, eps_norm)
    n, c, h, w = x.shape
    device = _model_device(model)
    x, y = x.to(device, torch.float32), y.to(device)
    signs = _resolve_signs(x, signs, generator).to(device)
    heat = torch.zeros(h, w)
    with torch.inference_mode():
        for i in _progress(range(h), "fourier heatmap (loop)", progress):
            for j in range(w):
                basis = fourier_basis(i, j, h, w).to(device)
                xp = x + eps_norm * signs[i, j][:, :, None, None] * basis
                if clip:
                    xp = xp.clamp(0.0, 1.0)
                heat[i, j] = (model(xp).argmax(dim=1) != y).float().mean().item()
    return heat


def _distinct_frequencies(h: int, w: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Centred coordinates of one representative per conjugate pair, and of their mirrors."""
    reps_i, reps_j, mir_i, mir_j = [], [], [], []
    for i in range(h):
        for j in range(w):
            mi, mj = _mirror(i, j, h, w)
            if (i, j) <= (mi, mj):
                reps_i.append(i)
                reps_j.append(j)
                mir_i.append(mi)
                mir_j.append(mj)
    as_t = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return as_t(reps_i), as_t(reps_j), as_t(mir_i), as_t(mir_j)


def _basis_stack(ii: Tensor, jj: Tensor, h: int, w: int) -> Tensor:
    """Unit-norm bases for centred coordinates ``(ii, jj)`` in one batched inverse FFT, (P, h, w)."""
    spec = torch.zeros(ii.numel(), h, w, dtype=torch.complex64)
    p = torch.arange(ii.numel())
    spec[p, (ii - h // 2) % h, (jj - w // 2) % w] = 1.0
    basis = torch.fft.ifft2(spec, dim=(-2, -1)).real
    return basis / basis.flatten(1).norm(dim=1)[:, None, None]


def fourier_heatmap(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps_norm: float,
    *,
    batch_size: int | None = None,
    signs: Tensor | None = None,
    generator: torch.Generator | None = None,
    clip: bool = True,
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> Tensor:
    """Fourier heat map of a model's error rate under Fourier-basis noise (Yin et al. 2019).

    For every centred frequency ``(i, j)``, each image is perturbed as
    ``x + r * eps_norm * U_ij`` (``r`` in {-1, +1} drawn per image and channel, see
    :func:`heatmap_signs`; every channel is perturbed by the same basis), clipped to [0, 1]
    when ``clip``, and the error rate over the images is recorded.

    Speed: only one frequency of each conjugate pair is evaluated (``U_ij`` equals its mirror's
    basis, and the signs are shared), the value is copied to the mirror; perturbed images of many
    bases are stacked into batches of up to ``batch_size`` images under ``torch.inference_mode``.

    Parameters
    ----------
    model : nn.Module
        Classifier on [0, 1] images, in the mode the caller wants (normally eval).
    x : Tensor (N, C, H, W) in [0, 1];  y : Tensor (N,) class indices.
    eps_norm : float
        L2 norm ``v`` of the per-channel perturbation (Yin et al. use 4 for CIFAR-10).
    batch_size : int, optional
        Images per forward pass (rounded down to whole bases; at least one basis). Default 256 on
        CPU, where larger batches fall out of cache without a per-image gain, 4096 on GPUs.
    signs : Tensor (H, W, N, C), optional
        Explicit signs (else drawn with ``generator``).
    channels_last : bool
        Feed channels_last batches (faster convolutions on CPU/GPU; float rounding may differ
        from the loop's, which can flip a prediction that sits on a decision boundary).
    autocast_dtype : torch.dtype, optional
        Run the model under ``torch.autocast`` with this dtype (e.g. ``torch.bfloat16``): faster,
        but no longer bit-comparable with :func:`fourier_heatmap_loop`.

    Returns
    -------
    Tensor (H, W), float32 error rates in [0, 1], low frequencies in the centre (DC at
    ``(H//2, W//2)``); symmetric under the conjugate mirror by construction.
    """
    _check_heatmap_inputs(model, x, y, eps_norm)
    n, c, h, w = x.shape
    device = _model_device(model)
    if batch_size is None:
        batch_size = 256 if device.type == "cpu" else 4096
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x, y = x.to(device, torch.float32), y.to(device)
    signs = _resolve_signs(x, signs, generator)
    ri, rj, mi, mj = _distinct_frequencies(h, w)
    bases_per_batch = max(1, batch_size // n)
    errors = torch.empty(ri.numel())
    starts = range(0, ri.numel(), bases_per_batch)
    amp = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), amp:
        for s in _progress(starts, "fourier heatmap", progress, total=len(starts)):
            bi, bj = ri[s : s + bases_per_batch], rj[s : s + bases_per_batch]
            basis = _basis_stack(bi, bj, h, w).to(device)  # (P, H, W)
            r = signs[bi, bj].to(device)  # (P, N, C)
            xp = x[None] + (eps_norm * r)[..., None, None] * basis[:, None, None]
            xp = xp.reshape(-1, c, h, w)
            if clip:
                xp = xp.clamp_(0.0, 1.0)
            if channels_last:
                xp = xp.contiguous(memory_format=torch.channels_last)
            wrong = model(xp).argmax(dim=1).view(-1, n) != y
            errors[s : s + bi.numel()] = wrong.float().mean(dim=1).cpu()
    heat = torch.zeros(h, w)
    heat[ri, rj] = errors
    heat[mi, mj] = errors
    return heat


# --------------------------------------------------------------------------------------------
# Output helpers and plots (matplotlib, Agg backend)
# --------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

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
    """Write {series name: {bandwidth: accuracy}} as a CSV with one row per series."""
    path = _ensure_parent(path)
    bws = sorted({int(k) for r in results.values() for k in r})
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["series", *bws])
        for name, r in results.items():
            writer.writerow([name, *(f"{r[k]:.4f}" if k in r else "" for k in bws)])
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
