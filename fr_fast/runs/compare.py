"""``fr-fast runs DIR`` / ``fr-fast compare RUN ...``: finished training runs side by side.

A run is a folder written by ``fr-fast train``: ``metrics.jsonl`` (per-epoch history) and ``run.json``
(config and runtime; older runs: the config inside ``last.pt``). The table shows per run the method,
lambda, epochs, the best epoch (by the run's ``select_by`` metric) with its validation clean and PGD
accuracy, and the clean / PGD-20 / AutoAttack accuracy of an ``fr-fast eval --out`` report saved in
the run folder, if there is one. ``--plot curves.png`` draws the validation curves of all runs.

A damaged folder (unreadable or torn files) is skipped with a one-line note naming it
(:func:`read_runs`), so one bad folder never hides the others. A run is labelled by its ``name`` (``fr-fast
train --name``), else by its folder.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fr_fast._optional import require
from fr_fast.runs.checkpoint import load_checkpoint
from fr_fast.utils.files import save_figure

COLUMNS = ("run", "method", "lambda", "epochs", "best epoch", "val clean %", "val PGD %", "eval clean %",
           "eval PGD-20 %", "eval AA %")


@dataclass
class Run:
    """One training run folder, read back."""

    path: Path
    config: dict[str, Any]
    history: list[dict[str, Any]]
    selected_by: str = "val_pgd"
    report: dict[str, Any] | None = None   # an fr-fast eval report found in the folder
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return bool(self.history) and self.history[-1].get("epoch") == self.config.get("epochs")

    @property
    def best(self) -> dict[str, Any]:
        """The history row with the best ``selected_by`` value ({} when no epoch was validated)."""
        scored = [h for h in self.history if self.selected_by in h]
        return max(scored, key=lambda h: h[self.selected_by]) if scored else {}

    @property
    def method(self) -> str:
        cfg = self.config
        label = cfg.get("method", "?") + (f"({cfg.get('awp_base')})" if cfg.get("method") == "awp" else "")
        fr = cfg.get("fr", "none")
        return label + ("" if fr == "none" else "+" + {"fr": "FR", "frwa": "FR/WA"}.get(fr, fr))


def find_runs(root: str | Path) -> list[Path]:
    """Run folders (holding metrics.jsonl) at or below ``root``, sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs folder {str(root)!r} does not exist")
    return sorted(p.parent for p in root.rglob("metrics.jsonl"))


def _eval_report(folder: Path) -> dict[str, Any] | None:
    """The newest JSON file in ``folder`` that is an fr-fast eval report (has "attacks")."""
    for path in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        if path.name == "run.json":
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("attacks"), dict):
            return data
    return None


def load_run(folder: str | Path) -> Run:
    """Read one run folder; FileNotFoundError when it is not one, ValueError (naming the folder and the file)
    when it is damaged."""
    folder = Path(folder)
    metrics = folder / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{str(folder)!r} is not a run folder (no metrics.jsonl)")
    try:
        history = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
        if (folder / "run.json").is_file():
            info = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        elif (folder / "last.pt").is_file():  # runs written before run.json existed
            info = load_checkpoint(folder / "last.pt")
        else:
            raise ValueError("neither run.json nor last.pt: cannot tell its config")
        if not isinstance(info, dict) or not all(isinstance(h, dict) for h in history):
            raise ValueError("run.json or metrics.jsonl does not hold the expected records")
        config = dict(info.get("config") or {})
    except (OSError, ValueError, TypeError) as exc:  # JSON and UTF-8 errors are ValueErrors
        raise ValueError(f"damaged run folder {str(folder)!r}: {exc}") from None
    return Run(folder, config, history, info.get("selected_by", "val_pgd"), _eval_report(folder),
               name=str(config.get("name") or folder))


def read_runs(folders: list[Path]) -> tuple[list[Run], list[str]]:
    """(the runs of ``folders`` that could be read, one line per damaged folder that was skipped)."""
    runs, skipped = [], []
    for folder in folders:
        try:
            runs.append(load_run(folder))
        except ValueError as exc:
            skipped.append(f"skipped {exc}")
    return runs, skipped


def expand_run_paths(paths: list[str | Path]) -> list[Path]:
    """Run folders named by ``paths``: a run folder as is, a folder of runs (``runs/<preset>``) as the runs in it.

    FileNotFoundError (one line) for a path that is neither.
    """
    folders: list[Path] = []
    for path in map(Path, paths):
        if (path / "metrics.jsonl").is_file():
            folders.append(path)
        elif path.is_dir() and (inside := find_runs(path)):
            folders.extend(inside)
        else:
            what = "folder holds no training runs" if path.is_dir() else "not a run folder: it does not exist"
            raise FileNotFoundError(f"{str(path)!r}: {what} (a run folder holds metrics.jsonl)")
    return list(dict.fromkeys(folders))


def _pct(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "-"


def table_rows(runs: list[Run]) -> list[list[str]]:
    """One row of :data:`COLUMNS` strings per run."""
    rows = []
    for run in runs:
        best, cfg = run.best, run.config
        attacks = (run.report or {}).get("attacks", {})
        acc = lambda name: attacks.get(name, {}).get("accuracy")  # noqa: E731
        done = run.history[-1].get("epoch", 0) if run.history else 0
        rows.append([run.name, run.method, f"{cfg.get('lam'):g}" if cfg.get("fr", "none") != "none" else "-",
                     f"{done}/{cfg.get('epochs', '?')}", str(best.get("epoch", "-")),
                     _pct(best.get("val_clean")), _pct(best.get("val_pgd")),
                     _pct(acc("clean")), _pct(acc("pgd20")), _pct(acc("aa"))])
    return rows


def format_table(runs: list[Run]) -> str:
    """The runs as an aligned Markdown table (pastes into notes and papers as is)."""
    rows = [list(COLUMNS)] + table_rows(runs)
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *(line(r) for r in rows[1:])])


def plot_curves(runs: list[Run], path: str | Path) -> Path:
    """Validation clean and PGD accuracy (%) per epoch of every run: two panels sharing both axes (so the two
    accuracies read on one scale), whole-epoch ticks, one colour per run; saved as a PNG."""
    matplotlib = require("matplotlib", "plotting")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True, sharey=True)
    for run in runs:
        rows = [h for h in run.history if "val_pgd" in h]
        epochs = [h["epoch"] for h in rows]
        for ax, key in zip(axes, ("val_clean", "val_pgd")):
            ax.plot(epochs, [h[key] for h in rows], marker="o", markersize=3, label=run.name)
    for ax, title in zip(axes, ("clean accuracy (validation)", "PGD accuracy (validation)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)
