"""Loads the compiled kernels, fr_fast._C, and says in one line, at import, why they did not load.

setup.py writes ``_C.build.json`` next to the library: the torch it was compiled against, the CUDA
architectures, and, when the CUDA kernels were left out, why. A C++ extension only loads into the torch it
was built with (libtorch's C++ ABI is not stable across versions), so a mismatch is reported with the
command that rebuilds it.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

BUILD_INFO_FILE = Path(__file__).resolve().parent.parent / "_C.build.json"  # beside fr_fast/_C*.so
REBUILD = "pip install --no-build-isolation --force-reinstall --no-deps <fr_fast source or sdist>"


class KernelsNotLoadedWarning(RuntimeWarning):
    """fr_fast._C did not load: the pure-PyTorch reference ops run (correct, slower)."""


def build_info() -> dict:
    """What setup.py recorded about the build ({} for an in-place or older build)."""
    try:
        return json.loads(BUILD_INFO_FILE.read_text())
    except (OSError, ValueError):
        return {}


def _public(version: str) -> str:
    return version.split("+")[0]


def explain(error: ImportError, info: dict, torch_version: str) -> str:
    """One line: why fr_fast._C did not import (``info``: build_info(); ``torch_version``: the running torch)."""
    built = info.get("torch")
    if (built and _public(built) != _public(torch_version)) or "undefined symbol" in str(error):
        return (f"fr_fast._C was built against torch {built or 'another version'}, this is torch {torch_version}; "
                f"rebuild it against the installed torch: {REBUILD}")
    return " ".join(str(error).split())


def no_kernel_reason(device_type: str, info: dict) -> str:
    """One line: why the loaded extension has no kernel for ``device_type`` (e.g. a C++-only build on a GPU)."""
    if device_type == "cuda" and info.get("cuda") is False:
        why = info.get("no_cuda") or "C++ kernels only"
        return (f"fr_fast._C was built without CUDA kernels ({why}); rebuild on this machine, or with "
                f"FR_FAST_CUDA=1: {REBUILD}")
    return f"no fused kernel for device type {device_type!r}"


def summary(load_error: str | None, info: dict) -> str:
    """One line describing the kernels this installation runs (printed by `make install`)."""
    if load_error is not None:
        return f"fr_fast: kernels not loaded, the pure-PyTorch reference ops run: {load_error}"
    torch_text = f"torch {info['torch']}" if info.get("torch") else "torch unknown (in-place build)"
    if info.get("cuda"):
        return f"fr_fast: C++ and CUDA kernels (TORCH_CUDA_ARCH_LIST={info.get('cuda_archs')}, {torch_text})"
    if info.get("cuda") is False:
        return f"fr_fast: C++ kernels only ({info.get('no_cuda')}; {torch_text})"
    return f"fr_fast: C++ kernels loaded ({torch_text})"


def warn_not_loaded(load_error: str) -> None:
    """The one import-time warning. warn_explicit with no source line: the warning is exactly one line, and
    still filterable by category (KernelsNotLoadedWarning) or module ("fr_fast")."""
    warnings.warn_explicit(f"fr_fast: fused kernels not loaded, the pure-PyTorch reference ops run (correct, "
                           f"slower): {load_error}", KernelsNotLoadedWarning, filename="fr_fast", lineno=0,
                           module="fr_fast")


try:
    from fr_fast import _C  # noqa: F401  (loading it registers the torch.ops.fr_fast kernels)

    LOAD_ERROR: str | None = None
except ImportError as _error:  # not built, or built for another torch: the references take over
    LOAD_ERROR = explain(_error, build_info(), torch.__version__)
    warn_not_loaded(LOAD_ERROR)
