"""The README and docs/ as a newcomer meets them: the README's Python examples run (on CPU, as written), every
relative link of the user-facing pages points at a file that ships in the sdist, and the pages speak of the
project and its users only."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
# folders MANIFEST.in grafts into the sdist, and single files it includes
SDIST_FOLDERS = ("build_backend", "csrc", "configs", "docs", "benchmarks", "experiments", "tests")
MAX_README_CHARS = 12_000


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_python_examples_run():
    blocks = _python_blocks(README.read_text())
    assert len(blocks) >= 2
    torch.manual_seed(0)
    namespaces = []
    for block in blocks:
        namespace: dict = {"__name__": "readme_example"}
        exec(compile(block, f"README.md python block {len(namespaces) + 1}", "exec"), namespace)
        namespaces.append(namespace)
    first, step = namespaces[0], namespaces[1]
    assert first["loss_fr"].item() > 0 and first["clean_logits"].grad is not None
    # the PGD-AT + FR step: x_adv inside the eps-ball and [0, 1], a finite loss, the weights updated
    x, x_adv, eps = step["x"], step["x_adv"], step["eps"]
    assert (x_adv - x).abs().max().item() <= eps + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
    assert (x_adv - x).abs().max().item() > eps / 2  # the attack moved
    assert torch.isfinite(step["loss"]) and step["model"][1].weight.grad is not None


def test_readme_is_short():
    assert len(README.read_text()) <= MAX_README_CHARS


def _relative_links(page: Path) -> list[str]:
    targets = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def _manifest_includes(relative: str) -> bool:
    manifest = (ROOT / "MANIFEST.in").read_text()
    included = {f for line in manifest.splitlines() if line.startswith("include ") for f in line.split()[1:]}
    return relative.split("/")[0] in SDIST_FOLDERS or relative in included


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_point_at_files_in_the_sdist(page):
    for target in _relative_links(page):
        path = (page.parent / target).resolve()
        assert path.is_file(), f"{page.name} links to {target}, which does not exist"
        relative = path.relative_to(ROOT).as_posix()
        assert _manifest_includes(relative), f"{page.name} links to {relative}, which the sdist leaves out"
    manifest = (ROOT / "MANIFEST.in").read_text()
    assert all(f"graft {folder}" in manifest for folder in SDIST_FOLDERS)


# Words about the people and machines that make fr_fast, not about what users get.
NOT_FOR_USERS = ("load average", "device-minute", "device minute", "device time", "../shared", "example.org",
                 "this task", "the issues")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_speak_of_the_project_and_its_users(page):
    text = page.read_text()
    for phrase in NOT_FOR_USERS:
        assert phrase not in text.lower(), f"{page.name} mentions {phrase!r}"
    assert "DESIGN.md" not in text, f"{page.name} mentions the team's DESIGN.md"  # docs/design.md is the user's
