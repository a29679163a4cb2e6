"""The package layering (docs/design.md, "Layers"): each package imports only the packages below it, and no
library module imports the command line. Checked on the source (every import statement, including those
inside functions) and by importing every library module in a fresh interpreter."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fr_fast"
# package (or top-level module) -> what it may import from fr_fast; "spectral.fourier" is a leaf of pure
# tensor math that the models' low-pass layer uses, below the rest of spectral.
LEAVES = {"_optional", "_version", "utils", "_C"}
ALLOWED = {
    "utils": set(),
    "ops": LEAVES,
    "spectral.fourier": LEAVES,
    "models": LEAVES | {"ops", "spectral.fourier"},
    "data": LEAVES,
    "robustness": LEAVES | {"ops", "models", "data", "spectral.fourier"},
    "runs": LEAVES | {"ops", "models", "data"},
    "config": LEAVES | {"runs"},
    "spectral": LEAVES | {"ops", "models", "data", "robustness", "runs", "config", "spectral.fourier"},
    "training": LEAVES | {"ops", "models", "data", "robustness", "runs", "config", "spectral.fourier"},
    "cli": LEAVES | {"ops", "models", "data", "robustness", "runs", "config", "spectral", "spectral.fourier",
                     "training"},
}


def _unit(parts: tuple[str, ...]) -> str:
    """The layering unit of module fr_fast.<parts>: its package, or spectral.fourier."""
    if parts[:2] == ("spectral", "fourier"):
        return "spectral.fourier"
    return parts[0]


def _imports(path: Path) -> set[tuple[str, ...]]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("fr_fast"):
            base = tuple(node.module.split(".")[1:])
            found |= {base + (a.name,) for a in node.names} if not base else {base}
        elif isinstance(node, ast.Import):
            found |= {tuple(a.name.split(".")[1:]) for a in node.names if a.name.startswith("fr_fast.")}
    return found


def library_modules() -> list[tuple[str, ...]]:
    modules = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[0] in ("cli", "__main__"):
            continue
        modules.append(parts[:-1] if parts[-1] == "__init__" else parts)
    return modules


def test_every_package_imports_only_the_layers_below_it():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if len(parts) == 1:  # top-level files: __init__ (the public face), __main__, shared leaves
            continue
        unit = _unit(parts)
        for target in _imports(path):
            target_unit = _unit(target)
            if target_unit != unit and target_unit not in ALLOWED[unit]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)} imports fr_fast.{'.'.join(target)}")
    assert not wrong, "\n".join(wrong)


def test_no_library_module_pulls_in_the_cli():
    names = [".".join(("fr_fast", *parts)).rstrip(".") for parts in library_modules()]
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'fr_fast.cli' or m.startswith('fr_fast.cli.')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def test_top_level_keeps_only_the_public_face_and_shared_leaves():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "_optional.py", "_version.py"], top
