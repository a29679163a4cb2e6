"""``fr-fast runs DIR`` and ``fr-fast compare RUN ...``: finished training runs in one table (+ curves)."""
from __future__ import annotations

import sys
from pathlib import Path

from fr_fast.cli.args import make_parser, run_guarded
from fr_fast.runs.compare import Run, expand_run_paths, find_runs, format_table, plot_curves, read_runs
from fr_fast.runs.runfolder import ensure_writable_file


def _read(folders: list[Path]) -> list[Run]:
    runs, skipped = read_runs(folders)
    for line in skipped:  # a damaged folder is named, the others are still shown
        print(line, file=sys.stderr, flush=True)
    return runs


def _show(runs: list[Run], plot: str | None) -> int:
    if not runs:
        raise ValueError("no finished runs to show (a run folder holds metrics.jsonl; --all shows unfinished ones)")
    print(format_table(runs))
    if plot:
        print(f"wrote {plot_curves(runs, plot)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``fr-fast runs DIR``: every finished run below DIR in one table."""
    parser = make_parser("fr-fast runs", "A table of the finished training runs below a folder (method, lambda, "
                         "best epoch, validation clean/PGD %, eval results if present).")
    parser.add_argument("folder", help="folder holding run folders (e.g. runs/)")
    parser.add_argument("--all", action="store_true", help="also list unfinished runs")
    parser.add_argument("--plot", default=None, help="write the validation curves to this PNG")

    def body() -> int:
        args = parser.parse_args(argv)
        if args.plot:  # before any work, as every command
            ensure_writable_file(args.plot, "--plot file")
        root = Path(args.folder)
        runs = _read(find_runs(root))
        for run in runs:
            if not run.config.get("name"):  # unnamed: its folder below root
                run.name = str(run.path.relative_to(root)) if run.path != root else run.path.name
        shown = [r for r in runs if r.finished or args.all]
        if len(shown) < len(runs):
            print(f"({len(runs) - len(shown)} unfinished runs not shown; --all lists them)")
        return _show(shown, args.plot)

    return run_guarded("fr-fast runs", argv, body)


def compare_main(argv: list[str] | None = None) -> int:
    """``fr-fast compare RUN [RUN ...]``: the given run folders side by side."""
    parser = make_parser("fr-fast compare", "Training runs side by side (method, lambda, best epoch, validation "
                         "clean/PGD %, eval results if present).")
    parser.add_argument("runs", nargs="+", help="run folders written by fr-fast train, or folders of runs "
                        "(e.g. runs/<preset>)")
    parser.add_argument("--plot", default=None, help="write the validation curves to this PNG")

    def body() -> int:
        args = parser.parse_args(argv)
        if args.plot:
            ensure_writable_file(args.plot, "--plot file")
        return _show(_read(expand_run_paths(args.runs)), args.plot)

    return run_guarded("fr-fast compare", argv, body)
