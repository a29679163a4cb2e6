"""Fourier primitives on images: low/high-pass filters, centred spectra and Fourier basis images.

Conventions (shared by the filters here, the analyses in :mod:`fr_fast.spectral.analyses` and the heat maps in
:mod:`fr_fast.spectral.heatmap`)
---------------------------------------------------------------------------------------------------
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

* High-pass filters come in two definitions (``definition`` of :func:`high_pass`):
  ``"paper"`` -- sec. 3 of the paper: "after a FFT, only the k x k patch in the center (viz. high
  frequencies) is preserved": the centred ``k x k`` square of the *unshifted* spectrum, i.e. the
  highest frequencies around Nyquist; ``k = H = W`` keeps every frequency, small ``k`` keeps only
  the highest. The analyses use it (Fig. 3: HPF accuracy falls as the bandwidth grows).
  ``"complement"`` -- identity - LPF(k): everything outside the centred low-frequency square of the
  shifted spectrum (``k = H = W`` gives zeros); then ``low_pass + high_pass == x``.
"""
from __future__ import annotations

import operator
from functools import lru_cache

import torch
from torch import Tensor


# --------------------------------------------------------------------------------------------- filters
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


def _centre_square(h: int, w: int, k: int) -> Tensor:
    """A boolean h x w mask holding the centred k x k square."""
    mask = torch.zeros(h, w, dtype=torch.bool)
    r0, r1 = _square_bounds(h, k)
    c0, c1 = _square_bounds(w, k)
    mask[r0:r1, c0:c1] = True
    return mask


@lru_cache(maxsize=64)
def _low_mask_unshifted(h: int, w: int, k: int, device: str) -> Tensor:
    # The low frequencies (centred square of the shifted spectrum), moved to the FFT's native order once, so
    # that filtering needs no fftshift of the (large) data.
    return torch.fft.ifftshift(_centre_square(h, w, k), dim=(-2, -1)).to(device)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@lru_cache(maxsize=64)
def _centre_mask_unshifted(h: int, w: int, k: int, device: str) -> Tensor:
    # The paper's HPF: the centred k x k square of the spectrum in the FFT's own (unshifted) order.
    return _centre_square(h, w, k).to(device)


HPF_DEFINITIONS = ("paper", "complement")


def _filter(x: Tensor, bandwidth: int, keep: str, clip: bool) -> Tensor:
    h, w = _check_image(x)
    k = _check_bandwidth(bandwidth, h, w)
    if keep == "paper":
        mask = _centre_mask_unshifted(h, w, k, str(x.device))
    else:
        mask = _low_mask_unshifted(h, w, k, str(x.device))
        if keep == "complement":
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
    return _filter(x, bandwidth, "low", clip=clip)


def high_pass(x: Tensor, bandwidth: int, *, clip: bool = True, definition: str = "complement") -> Tensor:
    """High-pass filter each channel; shapes, ranges and the bandwidth rule are those of :func:`low_pass`.

    ``definition="complement"``: remove the centred ``k x k`` low-frequency square,
    ``high_pass(x, k, clip=False) == x - low_pass(x, k, clip=False)``; ``k = H = W`` gives zeros.
    ``definition="paper"`` (sec. 3): keep only the centred ``k x k`` square of the unshifted spectrum (the
    highest frequencies); ``k = H = W`` returns ``x``. The module docstring has both.
    """
    if definition not in HPF_DEFINITIONS:
        raise ValueError(f"unknown high-pass definition {definition!r}; expected one of {', '.join(HPF_DEFINITIONS)}")
    return _filter(x, bandwidth, definition, clip=clip)


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


# ----------------------------------------------------------------------------------- Fourier basis images
def _unshifted_index(i: int, n: int) -> int:
    """Index in FFT order of the centred (fftshift-ed) index ``i`` on an axis of length ``n``."""
    return (i - n // 2) % n


def _shifted_index(u: int, n: int) -> int:
    return (u + n // 2) % n


def mirror(i: int, j: int, h: int, w: int) -> tuple[int, int]:
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


def distinct_frequencies(h: int, w: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Centred coordinates of one representative per conjugate pair, and of their mirrors."""
    reps_i, reps_j, mir_i, mir_j = [], [], [], []
    for i in range(h):
        for j in range(w):
            mi, mj = mirror(i, j, h, w)
            if (i, j) <= (mi, mj):
                reps_i.append(i)
                reps_j.append(j)
                mir_i.append(mi)
                mir_j.append(mj)
    as_t = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return as_t(reps_i), as_t(reps_j), as_t(mir_i), as_t(mir_j)


def basis_stack(ii: Tensor, jj: Tensor, h: int, w: int) -> Tensor:
    """Unit-norm bases for centred coordinates ``(ii, jj)`` in one batched inverse FFT, (P, h, w)."""
    spec = torch.zeros(ii.numel(), h, w, dtype=torch.complex64)
    p = torch.arange(ii.numel())
    spec[p, (ii - h // 2) % h, (jj - w // 2) % w] = 1.0
    basis = torch.fft.ifft2(spec, dim=(-2, -1)).real
    return basis / basis.flatten(1).norm(dim=1)[:, None, None]
