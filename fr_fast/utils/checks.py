"""Argument checks shared across layers (ops, config, analyses): one message for each kind of mistake."""
from __future__ import annotations

import math
from typing import Sequence


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    """ValueError naming ``name`` and the valid choices unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; {name} must be one of {', '.join(choices)}")


def check_radius(name: str, value: object) -> float:
    """``value`` as a float; ValueError unless it is a finite number >= 0 (an eps, a norm)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)
