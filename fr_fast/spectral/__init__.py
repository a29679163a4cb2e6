"""Fourier-domain tools: the primitives (:mod:`~fr_fast.spectral.fourier`: filters, spectra, bases), the
paper's analyses (:mod:`~fr_fast.spectral.analyses`), Fourier heat maps, figures, and the ``analyze`` entry
point for checkpoints. The analyses' names are re-exported here on first use, so that importing
``fr_fast.spectral.fourier`` (as the models' low-pass layer does) stays free of the attack machinery."""
from __future__ import annotations

import importlib

_ANALYSES = ("low_pass", "high_pass", "centered_spectrum", "filtered_accuracy", "PerturbationSpectrum",
             "perturbation_spectrum", "perturbation_band_accuracy", "fourier_basis", "heatmap_signs",
             "fourier_heatmap", "fourier_heatmap_loop")
__all__ = list(_ANALYSES)


def __getattr__(name: str):
    if name in _ANALYSES:
        return getattr(importlib.import_module("fr_fast.spectral.analyses"), name)
    raise AttributeError(f"module 'fr_fast.spectral' has no attribute {name!r}")
