"""fr_fast: fast adversarial training with Frequency Regularization.

The fused ops are imported here; the rest (``attacks``, ``spectral``, ``train``, ...) loads on first use,
so ``import fr_fast`` stays cheap and ``fr_fast.attacks.pgd(...)`` works after a plain ``import fr_fast``.
"""
from __future__ import annotations

import importlib

from fr_fast.ops import FRLoss, backend, fr_loss, pgd_step_, random_start_

__all__ = ["FRLoss", "backend", "fr_loss", "pgd_step_", "random_start_"]
__version__ = "0.1.0"

_SUBMODULES = {"attacks", "averaging", "checkpoint", "config", "data", "evaluate", "fourier", "heatmap", "losses",
               "models", "plots", "reference", "spectral", "state", "train", "analyze"}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"fr_fast.{name}")
    raise AttributeError(f"module 'fr_fast' has no attribute {name!r}")
