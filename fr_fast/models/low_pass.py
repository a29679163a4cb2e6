"""The L-model's input filter (paper sec. 3.1) as the model's first layer."""
from __future__ import annotations

import torch
import torch.nn as nn

from fr_fast.spectral.fourier import low_pass


class LowPass(nn.Module):
    """Keep the centred ``bandwidth x bandwidth`` low-frequency square of each channel, clipped to [0, 1].

    ``fr_fast.spectral.fourier.low_pass(x, bandwidth, clip=True)``. Built into the model (before
    :class:`Normalize`), every entry point -- training, validation, ``evaluate``, ``analyze``, attacks --
    sees the same L-model: an attack perturbs the raw [0, 1] image and the filter applies to the perturbed
    image inside the model (the paper does not say which image its attacks perturb). Gradients flow
    through the filter (zero where the clip is active). No parameters or buffers.

    Shape
    -----
    (B, C, H, W) -> (B, C, H, W), same dtype and memory format; ``1 <= bandwidth <= min(H, W)``.
    """

    def __init__(self, bandwidth: int):
        super().__init__()
        if isinstance(bandwidth, bool) or not isinstance(bandwidth, int) or bandwidth < 1:
            raise ValueError(f"low-pass bandwidth must be an integer >= 1, got {bandwidth!r}")
        self.bandwidth = bandwidth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = low_pass(x, self.bandwidth, clip=True)
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def extra_repr(self) -> str:
        return f"bandwidth={self.bandwidth}"
