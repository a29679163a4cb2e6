"""Per-channel input normalisation as the first layer of every model."""
from __future__ import annotations

from typing import Sequence

import numpy as np
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
        mean_v = self._per_channel(mean, channels, "mean")
        std_v = self._per_channel(std, channels, "std")
        if not all(s > 0 for s in std_v):
            raise ValueError(f"std must be > 0 for every channel, got {std_v}")
        self.channels = channels
        self.register_buffer("mean", torch.tensor(mean_v, dtype=torch.float32).view(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(std_v, dtype=torch.float32).view(1, channels, 1, 1))

    @staticmethod
    def _per_channel(value: float | Sequence[float], channels: int, what: str) -> list[float]:
        # Plain floats (not tensors) so validation also works under torch.device("meta").
        values = [float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1)]
        if len(values) == 1:
            return values * channels
        if len(values) != channels:
            raise ValueError(f"{what} has {len(values)} values but the model has {channels} input channels")
        return values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"expected input of shape (B, {self.channels}, H, W), got {tuple(x.shape)}"
            )
        # Buffers are float32; cast so bf16/fp16 inputs (autocast or .half()) keep their dtype.
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
