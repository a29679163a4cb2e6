"""Per-channel input normalisation as the first layer of every model."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with mean/std stored as buffers (never trained).

    Keeping normalisation inside the model lets attacks, the PGD projection and the [0, 1] clamp
    all work in pixel space, as the paper's epsilons are defined there.

    Parameters
    ----------
    mean, std : float or sequence of floats
        One value per channel, or a scalar broadcast to all ``channels``. ``std`` must be > 0.
    channels : int
        Number of input channels C.

    Shape
    -----
    (B, C, H, W) -> (B, C, H, W), preserving the memory format (contiguous or channels_last).
    """

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float], channels: int):
        super().__init__()
        mean_t = self._per_channel(mean, channels, "mean")
        std_t = self._per_channel(std, channels, "std")
        if not bool((std_t > 0).all()):
            raise ValueError(f"std must be > 0 for every channel, got {std_t.tolist()}")
        self.channels = channels
        self.register_buffer("mean", mean_t.view(1, channels, 1, 1))
        self.register_buffer("std", std_t.view(1, channels, 1, 1))

    @staticmethod
    def _per_channel(value: float | Sequence[float], channels: int, what: str) -> torch.Tensor:
        t = torch.as_tensor(value, dtype=torch.float32).flatten()
        if t.numel() == 1:
            return t.expand(channels).clone()
        if t.numel() != channels:
            raise ValueError(f"{what} has {t.numel()} values but the model has {channels} input channels")
        return t.clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"expected input of shape (B, {self.channels}, H, W), got {tuple(x.shape)}"
            )
        # Buffers are float32; cast so bf16/fp16 inputs (autocast or .half()) keep their dtype.
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
