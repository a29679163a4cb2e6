"""`fr-fast <command> ...` (or `python -m fr_fast <command> ...`): one entry point, one module per command."""
from __future__ import annotations

import importlib
import sys

from fr_fast.cli.args import run_guarded

COMMANDS = {
    "train": ("fr_fast.cli.train", "train a model (AT/TRADES/MART/AWP, +FR or FR/WA) from a config preset"),
    "eval": ("fr_fast.cli.eval", "robustness report of a checkpoint: clean, PGD-20/50, CW-inf, AutoAttack"),
    "analyze": ("fr_fast.cli.analyze", "Fourier-domain analyses and figures for one or more checkpoints"),
    "demo": ("fr_fast.cli.demo", "AT+FR on embedded MNIST in a few minutes; prints clean and PGD-20 accuracy"),
    "runs": ("fr_fast.cli.runs", "table of the finished training runs below a folder (+ PNG of validation curves)"),
    "compare": ("fr_fast.cli.runs:compare_main", "the given training runs side by side (+ PNG of validation curves)"),
}


def _usage() -> str:
    lines = ["usage: fr-fast <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "`fr-fast <command> --help` shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"fr-fast: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, _, function = COMMANDS[command][0].partition(":")
    module = importlib.import_module(module_name)
    # Commands guard their own errors; this covers what escapes them (e.g. a missing optional extra).
    return run_guarded(f"fr-fast {command}", rest, lambda: getattr(module, function or "main")(rest))


if __name__ == "__main__":
    sys.exit(main())
