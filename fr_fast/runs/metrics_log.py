"""The per-epoch log of a training run: ``metrics.jsonl``, ``metrics.csv`` and, on request, TensorBoard.

``metrics.jsonl`` holds the raw per-epoch dicts (the checkpoint's ``history``; accuracies in percent).
``metrics.csv`` holds the same rows with the unit in each column name (``val_pgd_pct``, ``epoch_time_s``).
With ``tensorboard=True`` the numeric columns also go to ``tensorboard/`` as scalars (step = epoch).
``run.json`` records the config and the runtime (:mod:`fr_fast.runs.runinfo`) the run was produced with.

Every write replaces a whole file by rename (:func:`fr_fast.utils.files.atomic_write`): a reader never sees
a torn or empty file, a crash keeps the previous epoch's files, a link planted in the folder is replaced
rather than written through, and a full disk is one :class:`~fr_fast.utils.files.DiskFullError`. The files
are small (one row per epoch), so rewriting them per epoch costs nothing next to an epoch.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

from fr_fast.utils.files import atomic_write, write_text

# Columns whose name does not carry its unit yet -> the CSV / TensorBoard name with the unit.
UNIT_NAMES = {"train_acc": "train_acc_pct", "val_clean": "val_clean_pct", "val_pgd": "val_pgd_pct",
              "avg_val_clean": "avg_val_clean_pct", "avg_val_pgd": "avg_val_pgd_pct"}  # avg_: the weight average
CSV_FIRST = ("epoch", "lr", "train_loss", "train_acc_pct", "val_clean_pct", "val_pgd_pct", "images_per_s",
             "epoch_time_s")


def with_units(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with accuracy keys renamed to their percent-suffixed column names."""
    return {UNIT_NAMES.get(k, k): v for k, v in row.items()}


def tensorboard_writer(log_dir: Path, purge_step: int | None = None):
    """A ``torch.utils.tensorboard.SummaryWriter``; ValueError (one line) when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("tensorboard=true needs the tensorboard package: pip install tensorboard "
                         "(or drop --tensorboard)") from None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


class MetricsLog:
    """Writes the run's metrics files in ``out_dir``; ``history`` is what a resumed run already logged."""

    def __init__(self, out_dir: str | Path, history: Sequence[dict[str, Any]], run: dict[str, Any], *,
                 tensorboard: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.rows = [dict(h) for h in history]
        self.writer = tensorboard_writer(self.out_dir / "tensorboard", purge_step=len(self.rows) + 1) \
            if tensorboard else None
        write_text(self.out_dir / "run.json", json.dumps(run, indent=2, default=str) + "\n")
        self._write()

    def append(self, metrics: dict[str, Any]) -> None:
        """Log one epoch's metrics to every file."""
        self.rows.append(dict(metrics))
        self._write()
        if self.writer is not None:
            for key, value in with_units(metrics).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                    self.writer.add_scalar(key, value, global_step=metrics["epoch"])
            self.writer.flush()

    def _write(self) -> None:
        write_text(self.out_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in self.rows))
        rows = [with_units(r) for r in self.rows]
        keys = {k for r in rows for k in r}
        columns = [c for c in CSV_FIRST if c in keys or not rows] + sorted(keys - set(CSV_FIRST))
        with atomic_write(self.out_dir / "metrics.csv", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
