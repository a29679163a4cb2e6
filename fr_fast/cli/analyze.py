"""``fr-fast analyze CHECKPOINT ... --out DIR``: the paper's Fourier-domain analyses (:mod:`fr_fast.spectral.analyze`)."""
from __future__ import annotations

import argparse

from fr_fast.cli.args import add_dataclass_options, make_parser, parse_options, run_guarded
from fr_fast.spectral.analyze import ANALYSES, AnalyzeOptions, analyze


def build_parser() -> tuple[argparse.ArgumentParser, list[str]]:
    """The ``fr-fast analyze`` parser and the names of its generated options."""
    p = make_parser("fr-fast analyze", "The paper's Fourier-domain analyses and figures for one or more "
                    f"checkpoints: {', '.join(ANALYSES)}.")
    p.add_argument("checkpoints", nargs="+", help="checkpoint files written by fr-fast train")
    return p, add_dataclass_options(p, AnalyzeOptions, "analysis options")


def main(argv: list[str] | None = None) -> int:
    parser, names = build_parser()

    def body() -> int:
        args, opts = parse_options(parser, AnalyzeOptions, names, argv)
        result = analyze(args.checkpoints, opts)
        for path in result["written"]:
            print(path)
        return 0

    return run_guarded("fr-fast analyze", argv, body)
