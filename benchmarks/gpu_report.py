"""Fold the GPU run's scattered outputs into the few files that come back from the machine.

    python benchmarks/gpu_report.py WORK OUT

WORK holds ``stages.jsonl`` (one line per finished stage, written by run_gpu.sh), ``preflight.txt``,
``results/`` (the benchmarks' JSON and Markdown files) and ``fmnist/`` (experiments/reproduce_gpu.py).
OUT receives at most 6 files: ``gpu_results.json`` (every stage and every benchmark's JSON),
``gpu_summary.md`` (stage table, then every benchmark's Markdown table), the Fashion-MNIST experiment's
``gpu_fmnist.json``, ``fmnist_table.md`` and ``fmnist_curves.png`` when present, and
``rest.tar.gz`` with everything else from WORK (logs, per-run records; no checkpoints). The run log
(``run_gpu.log``) and the rows as measured (``rows.jsonl``) are written to OUT by run_gpu.sh and the benchmarks. Safe to call after every stage: each call
rewrites the files from what exists so far, so a run cut short still returns its partial results.
"""
from __future__ import annotations

import json
import shutil
import sys
import tarfile
from pathlib import Path

FMNIST_FILES = {"gpu_fmnist.json": "gpu_fmnist.json", "table.md": "fmnist_table.md", "curves.png": "fmnist_curves.png"}


def read_stages(work: Path) -> list[dict]:
    path = work / "stages.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summary_markdown(work: Path, stages: list[dict]) -> str:
    preflight = (work / "preflight.txt").read_text() if (work / "preflight.txt").exists() else "(no preflight)"
    lines = ["# GPU run", "", "```", preflight.strip(), "```", "", "| stage | exit code | seconds | limit |",
             "|---|---:|---:|---:|"]
    lines += [f"| {s['stage']} | {s['rc']} | {s['seconds']} | {s['limit']} |" for s in stages]
    for md in sorted((work / "results").glob("*.md")):
        lines += ["", f"## {md.stem}", "", md.read_text().strip()]
    table = work / "fmnist" / "table.md"
    if table.exists():
        lines += ["", "## Fashion-MNIST, ResNet18 (experiments/reproduce_gpu.py)", "", table.read_text().strip()]
    return "\n".join(lines) + "\n"


def _skip_in_tarball(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if info.name.endswith((".pt", ".pt.tmp")) else info


def report(work: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stages = read_stages(work)
    benchmarks = {p.stem: json.loads(p.read_text()) for p in sorted((work / "results").glob("*.json"))}
    payload = {"stages": stages, "benchmarks": benchmarks,
               "preflight": (work / "preflight.txt").read_text() if (work / "preflight.txt").exists() else None}
    (out / "gpu_results.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "gpu_summary.md").write_text(summary_markdown(work, stages))
    for src, dst in FMNIST_FILES.items():
        if (work / "fmnist" / src).exists():
            shutil.copyfile(work / "fmnist" / src, out / dst)
    with tarfile.open(out / "rest.tar.gz", "w:gz") as tar:
        tar.add(work, arcname="gpu_run", filter=_skip_in_tarball)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python benchmarks/gpu_report.py WORK OUT")
    report(Path(sys.argv[1]), Path(sys.argv[2]))
