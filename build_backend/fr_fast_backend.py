"""PEP 517 backend: setuptools' own, plus the build requirements that only building the extension needs.

torch and ninja are asked for when a wheel is built (pip's isolated build installs them), not for an sdist,
which is packaged without compiling anything. `--no-build-isolation` builds use the environment as it is.

The extension loads only into the torch version it was compiled against. pip's isolated build would install
the newest torch to compile against, whatever the environment being installed into has; so when that
environment already has torch, the build asks for the same version.
"""
from __future__ import annotations

import subprocess
import sys

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (every hook not redefined here)

TORCH_REQUIREMENT = "torch>=2.4"  # as in pyproject.toml's dependencies
# ninja: parallel compilation that honours MAX_JOBS.
OTHER_BUILD_REQUIRES = ["ninja"]


def installed_torch_version(python: str = sys.executable) -> str | None:
    """The torch version of the environment ``python`` belongs to, seen without pip's build-environment paths
    (``-I``: no PYTHONPATH, no user site), or None when it has no torch."""
    code = "import importlib.metadata as m; print(m.version('torch'))"
    try:
        result = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    version = result.stdout.strip()
    return version if result.returncode == 0 and version else None


def public_version(version: str) -> str:
    """``2.14.1+cu130`` -> ``2.14.1`` (the local part names the CUDA flavour, not the C++ ABI)."""
    return version.split("+")[0]


def torch_build_requirement(installed: str | None) -> str:
    """The torch to compile against: the installed one's version, else any supported one."""
    return f"torch=={public_version(installed)}" if installed else TORCH_REQUIREMENT


def _extension_requires() -> list[str]:
    return [torch_build_requirement(installed_torch_version()), *OTHER_BUILD_REQUIRES]


def get_requires_for_build_wheel(config_settings=None):
    return _setuptools.get_requires_for_build_wheel(config_settings) + _extension_requires()


def get_requires_for_build_editable(config_settings=None):
    return _setuptools.get_requires_for_build_editable(config_settings) + _extension_requires()
