"""Fourier heat maps (Yin et al. 2019; paper A.2, Fig. 4): a model's error rate under Fourier-basis noise.

:func:`fourier_heatmap` is the fast path (one frequency per conjugate pair, many bases per batch);
:func:`fourier_heatmap_loop` is its reference (one forward pass per basis, no symmetry shortcut), kept
beside it for the tests and ``benchmarks/bench_heatmap.py``. Frequency conventions: :mod:`fr_fast.spectral.fourier`.
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from fr_fast.robustness.measure import model_device, progress_bar
from fr_fast.spectral.fourier import basis_stack, distinct_frequencies, fourier_basis, mirror
from fr_fast.utils.checks import check_radius


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
            mi, mj = mirror(i, j, h, w)
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
    check_radius("eps_norm", eps_norm)


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
    device = model_device(model)
    x, y = x.to(device, torch.float32), y.to(device)
    signs = _resolve_signs(x, signs, generator).to(device)
    heat = torch.zeros(h, w)
    with torch.inference_mode():
        for i in progress_bar(range(h), "fourier heatmap (loop)", progress):
            for j in range(w):
                basis = fourier_basis(i, j, h, w).to(device)
                xp = x + eps_norm * signs[i, j][:, :, None, None] * basis
                if clip:
                    xp = xp.clamp(0.0, 1.0)
                heat[i, j] = (model(xp).argmax(dim=1) != y).float().mean().item()
    return heat


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
    device = model_device(model)
    if batch_size is None:
        batch_size = 256 if device.type == "cpu" else 4096
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x, y = x.to(device, torch.float32), y.to(device)
    signs = _resolve_signs(x, signs, generator)
    ri, rj, mi, mj = distinct_frequencies(h, w)
    bases_per_batch = max(1, batch_size // n)
    errors = torch.empty(ri.numel())
    starts = range(0, ri.numel(), bases_per_batch)
    amp = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), amp:
        for s in progress_bar(starts, "fourier heatmap", progress, total=len(starts)):
            bi, bj = ri[s : s + bases_per_batch], rj[s : s + bases_per_batch]
            basis = basis_stack(bi, bj, h, w).to(device)  # (P, H, W)
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
