"""Optional dependencies: each belongs to one extra of ``pip install fr_fast[...]`` (see pyproject.toml).

``require`` imports one on first use and, when it is missing, raises :class:`MissingExtraError` whose
message is one line naming the extra to install; the CLI prints it as ``fr-fast CMD: error: ...``.
"""
from __future__ import annotations

import importlib
from types import ModuleType

# torchattacks pins requests~=2.25.1 but never imports requests (nor torchvision); it imports torch,
# numpy and scipy. The eval extra brings scipy, and torchattacks goes in without its dependencies.
TORCHATTACKS = "torchattacks==3.5.1"

# top-level module -> (extra, command that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "torchattacks": ("eval", f"pip install 'fr_fast[eval]' && pip install --no-deps {TORCHATTACKS}"),
    "matplotlib": ("analysis", "pip install 'fr_fast[analysis]'"),
    "mlxtend": ("data", "pip install 'fr_fast[data]'"),
    "scipy": ("data", "pip install 'fr_fast[data]'"),
    "PIL": ("data", "pip install 'fr_fast[data]'"),
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (e.g. "scipy.io") for ``purpose`` (e.g. "reading SVHN"), or raise MissingExtraError."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as err:  # the package, or one of its own dependencies (err.name), is missing
        extra, command = EXTRAS[top]
        missing = err.name if err.name and err.name.split(".")[0] != top else top
        raise MissingExtraError(f"{purpose} needs {missing} (the fr_fast[{extra}] extra): {command}",
                                name=missing) from None
