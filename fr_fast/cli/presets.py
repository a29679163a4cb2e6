"""``fr-fast presets``: the shipped training presets, one line each (name, dataset, model, method)."""
from __future__ import annotations

from pathlib import Path

from fr_fast.cli.args import make_parser, run_guarded
from fr_fast.config.train_config import CONFIG_DIRS, load_config


def preset_rows() -> list[tuple[str, str, str, str]]:
    """(name, dataset, model, method) of every preset in the first presets folder (configs/), by name.

    The building blocks under ``dataset/``, ``model/``, ``method/`` and the paper's rows (``paper.yaml``,
    listed in docs/presets.md) are not presets of their own.
    """
    if not CONFIG_DIRS:
        raise FileNotFoundError("no presets folder found (configs/ in a source checkout, fr_fast/configs when "
                                "installed)")
    rows = []
    for path in sorted(Path(CONFIG_DIRS[0]).glob("*.yaml")):
        if path.name == "paper.yaml":
            continue
        cfg = load_config(path, ["out_dir=unused"])  # out_dir: no run folder is looked up for a listing
        method = cfg.method + (f"({cfg.awp_base})" if cfg.method == "awp" else "")
        method += {"none": "", "fr": " + FR", "frwa": " + FR/WA"}[cfg.fr]
        rows.append((path.stem, cfg.dataset, cfg.model, method))
    return rows


def main(argv: list[str] | None = None) -> int:
    """``fr-fast presets``: print the presets ``fr-fast train PRESET`` accepts."""
    parser = make_parser("fr-fast presets", "The training presets (configs/*.yaml) with their dataset, model "
                         "and method; `fr-fast train PRESET --print-config` shows one in full, "
                         "`fr-fast train --paper ROW` trains a row of the paper's tables (docs/presets.md).")

    def body() -> int:
        parser.parse_args(argv)
        rows = [("preset", "dataset", "model", "method"), *preset_rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[3])
        return 0

    return run_guarded("fr-fast presets", argv, body)
