"""Loads the compiled kernels, fr_fast._C, and says in one line why they did not load.

setup.py writes ``_C.build.json`` next to the library: the torch it was compiled against and, when the CUDA
kernels were left out, why. A C++ extension only loads into the torch it was built with (the ABI is not
stable across torch versions), so a mismatch is reported with the command that rebuilds it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

BUILD_INFO_FILE = Path(__file__).resolve().parent.parent / "_C.build.json"  # beside fr_fast/_C*.so
REBUILD = "pip install --no-build-isolation --force-reinstall --no-deps <fr_fast source or sdist>"


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
    return str(error)


try:
    from fr_fast import _C  # noqa: F401  (loading it registers the torch.ops.fr_fast kernels)

    LOAD_ERROR: str | None = None
except ImportError as _error:  # not built, or built for another torch: the references take over
    LOAD_ERROR = explain(_error, build_info(), torch.__version__)
