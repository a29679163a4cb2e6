"""The classifier head: the last layer of every model, computed in float32 under any autocast."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClassifierHead(nn.Linear):
    """``nn.Linear`` that marks a model's last layer and runs it in float32 even inside ``torch.autocast``.

    Why: the FR term compares teacher and adversarial logits that differ by a small fraction of their size,
    and its L1 gradient depends on the signs of their (2-D) spectrum difference. bf16 logits (8-bit mantissa)
    flip enough of those signs to move the FR gradient by 12-15 % (relative L2); float32 logits from the
    same features do not. The features may be 16-bit (autocast); only this layer and what follows it (the
    losses, the FR term) are float32. Same parameters and state-dict keys as ``nn.Linear``; float64 weights
    compute in float64. Output: float32 (float64) logits.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.float64 if self.weight.dtype == torch.float64 else torch.float32
        bias = None if self.bias is None else self.bias.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.to(dtype), self.weight.to(dtype), bias)


def has_head(network: nn.Module) -> bool:
    """Whether ``network`` contains a :class:`ClassifierHead` (its marked, float32 last layer)."""
    return any(isinstance(m, ClassifierHead) for m in network.modules())
