"""`fr-fast <command> ...` (or `python -m fr_fast <command> ...`): one entry point, one module per command.

Nothing heavy is imported before the command is known, and Ctrl-C at any moment (during the imports of
torch and the command too) ends with one line and exit status 130.
"""
from __future__ import annotations

import importlib
import signal
import sys

COMMANDS = {
    "train": ("fr_fast.cli.train", "train a model (AT/TRADES/MART/AWP, +FR or FR/WA) from a config preset"),
    "eval": ("fr_fast.cli.eval", "robustness report of a checkpoint: clean, PGD-20/50, CW-inf, AutoAttack"),
    "analyze": ("fr_fast.cli.analyze", "Fourier-domain analyses and figures for one or more checkpoints"),
    "demo": ("fr_fast.cli.demo", "AT+FR on embedded MNIST in a few minutes; prints clean and PGD-20 accuracy"),
    "runs": ("fr_fast.cli.runs", "table of the finished training runs below a folder (+ PNG of validation curves)"),
    "compare": ("fr_fast.cli.runs:compare_main", "the given training runs side by side (+ PNG of validation curves)"),
    "presets": ("fr_fast.cli.presets", "list the training presets: name, dataset, model, method"),
}


def _usage() -> str:
    lines = ["usage: fr-fast <command> [options]   (fr-fast --version, fr-fast --help)", "", "commands:"]
    lines += [f"  {name:<8} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "`fr-fast <command> --help` shows a command's options. Options are spelled with dashes "
              "(--data-dir); --data_dir and data_dir=VALUE work too, and the last value given wins."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else None
    try:
        if command is None:
            print(_usage(), file=sys.stderr)
            return 2
        if command in ("-h", "--help"):
            print(_usage())
            return 0
        if command in ("-V", "--version"):
            from fr_fast._version import __version__
            print(f"fr-fast {__version__}")
            return 0
        if command not in COMMANDS:
            print(f"fr-fast: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
            return 2
        module_name, _, function = COMMANDS[command][0].partition(":")
        module = importlib.import_module(module_name)
        from fr_fast.cli.args import run_guarded

        # Commands guard their own errors; this covers what escapes them (e.g. a missing optional extra).
        return run_guarded(f"fr-fast {command}", argv[1:], lambda: getattr(module, function or "main")(argv[1:]))
    except KeyboardInterrupt:  # e.g. during the seconds torch takes to import
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the goodbye
        print(f"fr-fast{' ' + command if command in COMMANDS else ''}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
