"""Pure-PyTorch references of every fused op.

They are written the straightforward way (``torch.fft`` for the FR distance, a clamp chain for the PGD
step), serve as the ground truth in tests and benchmarks, and are the fallback when the C++ extension
is not built. Nothing here checks its inputs: ``fr_fast.ops.functional`` does that before dispatching.
"""
from __future__ import annotations

import torch
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")
DISTANCES = ("l1", "l2", "cosine")
FFT_MODES = ("1d", "2d")


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def _spectrum(logits: Tensor, fft: str) -> Tensor:
    # torch.fft has no CPU half kernels: compute in float32 (float64 stays float64).
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return torch.fft.fft(logits, dim=-1) if fft == "1d" else torch.fft.fft2(logits)


def fr_loss(teacher_logits: Tensor, adv_logits: Tensor, distance: str = "l1",
            reduction: str = "mean", fft: str = "1d") -> Tensor:
    """The FR term of Eq. 2 computed with ``torch.fft``: distance between the spectra of two (B, C) logit tensors.

    ``fft="1d"`` (the paper's text): per example i, with A = F a_i and Bv = F b_i the DFT over the C classes,
      l1:     sum_k |Re(A_k - Bv_k)| + |Im(A_k - Bv_k)|
      l2:     sqrt(sum_k |A_k - Bv_k|^2)                 (Euclidean norm of the complex difference)
      cosine: 1 - <A, Bv> / (|A| |Bv|) on the spectra seen as real 2C-vectors [Re, Im]
    reduced over the batch by ``reduction`` ("mean" = the paper's 1/n sum_i).
    ``fft="2d"`` (the authors' public code): one 2-D DFT over the whole (B, C) matrix, D = F2 a - F2 b,
    and one value for the batch ("none" is not defined):
      l1:     the authors' distance: |Re D| and |Im D| averaged over all 2BC parts ("mean") or summed ("sum")
      l2:     our definition (the authors publish no 2-D l2): the Euclidean norm of D taken over its 2BC real
              parts ("sum"), or their root mean square ||D|| / sqrt(2BC) ("mean", the l1 "mean"'s scale)
      cosine: our definition: 1 - cos between F2 a and F2 b seen as real 2BC-vectors ("mean" = "sum")
    """
    spec_a, spec_b = _spectrum(teacher_logits, fft), _spectrum(adv_logits, fft)
    diff = spec_a - spec_b
    if fft == "2d":
        parts = torch.view_as_real(diff).flatten()
        if distance == "l1":
            return parts.abs().mean() if reduction == "mean" else parts.abs().sum()
        if distance == "l2":
            norm = parts.norm()
            return norm / parts.numel() ** 0.5 if reduction == "mean" else norm
        real_a, real_b = torch.view_as_real(spec_a).flatten(), torch.view_as_real(spec_b).flatten()
        return 1.0 - torch.nn.functional.cosine_similarity(real_a, real_b, dim=0, eps=1e-8)
    if distance == "l1":
        per_example = diff.real.abs().sum(-1) + diff.imag.abs().sum(-1)
    elif distance == "l2":
        per_example = torch.view_as_real(diff).flatten(-2).norm(dim=-1)
    else:
        real_a = torch.view_as_real(spec_a).flatten(-2)
        real_b = torch.view_as_real(spec_b).flatten(-2)
        per_example = 1.0 - torch.nn.functional.cosine_similarity(real_a, real_b, dim=-1, eps=1e-8)
    return _reduce(per_example, reduction)


def _per_sample(value: float | Tensor, like: Tensor) -> float | Tensor:
    """A number as it is; a (B,) tensor as (B, 1, ..., 1), one value per sample of ``like``."""
    return value.view(-1, *[1] * (like.dim() - 1)) if isinstance(value, Tensor) else value


def _clip(values: Tensor, clip_min: float | None, clip_max: float | None) -> Tensor:
    return values if clip_min is None and clip_max is None else values.clamp(clip_min, clip_max)


def pgd_step_(x_adv: Tensor, grad: Tensor, x_nat: Tensor, alpha: float | Tensor, eps: float | Tensor,
              clip_min: float | None = 0.0, clip_max: float | None = 1.0) -> Tensor:
    """L-inf PGD ascent step, projection onto the eps-ball around ``x_nat`` and clip, in place.

    ``alpha``/``eps``: numbers or (B,) per-sample tensors; a None clip bound does not clip.
    """
    stepped = x_adv + _per_sample(alpha, x_adv) * grad.sign()
    eps = _per_sample(eps, x_adv)
    projected = torch.min(torch.max(stepped, x_nat - eps), x_nat + eps)
    return x_adv.copy_(_clip(projected, clip_min, clip_max))


def uniform_noise_(noise: Tensor, eps: float | Tensor) -> Tensor:
    """Fill ``noise`` with U(-eps, eps) in place from torch's generator (U(-1, 1) * eps_b for a (B,) eps)."""
    if isinstance(eps, Tensor):
        return noise.uniform_(-1.0, 1.0).mul_(_per_sample(eps, noise))
    return noise.uniform_(-eps, eps)


def random_start_(x_adv: Tensor, x_nat: Tensor, eps: float | Tensor, clip_min: float | None = 0.0,
                  clip_max: float | None = 1.0) -> Tensor:
    """Uniform random start in the eps-ball around ``x_nat``, clipped, written into ``x_adv``."""
    noise = uniform_noise_(torch.empty_like(x_nat), eps)
    return x_adv.copy_(_clip(x_nat + noise, clip_min, clip_max))
