"""PEP 517 backend: setuptools' own, plus the build requirements that only building the extension needs.

torch and ninja are asked for when a wheel is built (pip's isolated build installs them), not for an sdist,
which is packaged without compiling anything. `--no-build-isolation` builds use the environment as it is.
"""
from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (every hook not redefined here)

# torch: the extension compiles against this torch and loads only into the same version (see README).
# ninja: parallel compilation that honours MAX_JOBS.
EXTENSION_BUILD_REQUIRES = ["torch>=2.4", "ninja"]


def get_requires_for_build_wheel(config_settings=None):
    return _setuptools.get_requires_for_build_wheel(config_settings) + EXTENSION_BUILD_REQUIRES


def get_requires_for_build_editable(config_settings=None):
    return _setuptools.get_requires_for_build_editable(config_settings) + EXTENSION_BUILD_REQUIRES
