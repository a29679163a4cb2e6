"""Local file arguments: a URL given where a path is expected is named as such, not as a missing file."""
from __future__ import annotations

import os
import re
from pathlib import Path

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def local_path(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path; ValueError when it is a URL (fr_fast reads local files only)."""
    text = os.fspath(path)
    if _URL.match(text):
        raise ValueError(f"{what} {text!r} is a URL; fr_fast reads local files: download it first "
                         f"(e.g. curl -LO {text}) and pass the local path")
    return Path(text)
