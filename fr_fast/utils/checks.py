"""Argument checks shared across layers (ops, config, analyses): one message for each kind of mistake."""
from __future__ import annotations

import math
from typing import Sequence

import torch


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    """ValueError naming ``name`` and the valid choices unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; {name} must be one of {', '.join(choices)}")


def check_radius(name: str, value: object) -> float:
    """``value`` as a float; ValueError unless it is a finite number >= 0 (an eps, a norm)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_device(name: str | None) -> torch.device:
    """The torch device named ``name`` (None: cuda when available, else cpu); ValueError (one line) for a name
    torch does not know, a device type other than cpu/cuda, or a GPU this machine does not have."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(name, str) or not name.isascii():
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {name!r}")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} but CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} but this machine has {torch.cuda.device_count()} GPU(s)")
    return device
