"""``fr-fast train``: a preset (or a paper row) plus overrides -> :func:`fr_fast.training.train.train`."""
from __future__ import annotations

import json

from fr_fast.cli.args import add_dataclass_options, add_option, make_parser, parse_args, run_guarded
from fr_fast.config.paper import row_config
from fr_fast.config.train_config import TrainConfig, config_to_dict, load_config
from fr_fast.data import dataset_info
from fr_fast.models import list_models
from fr_fast.training.train import train
from fr_fast.utils.checks import check_choice


def main(argv: list[str] | None = None) -> int:
    """``fr-fast train [PRESET | --paper ROW] [--key value | --key=value | key=value ...]``: train with a preset
    (or a row of configs/paper.yaml) and overrides."""
    parser = make_parser("fr-fast train", "Adversarial training with Frequency Regularization: a YAML preset "
                         "(path or name in configs/) plus overrides of any config field, e.g.\n"
                         "  fr-fast train mnist_cnn_at_fr --epochs 10 --lr-milestones 5 8 --no-progress",
                         usage="fr-fast train [PRESET | --paper ROW] [--FIELD VALUE | --FIELD=VALUE | FIELD=VALUE "
                         "...] [--print-config] [--debug]   (a field given twice: the last value wins)")
    parser.add_argument("preset", nargs="?", default=None, help="YAML preset (path or name in configs/)")
    parser.add_argument("overrides", nargs="*", default=[], help="key=value overrides (same as --key value)")
    parser.add_argument("--paper", default=None, metavar="ROW",
                        help='train a row of the paper\'s tables: its id or "Table 7: TRADES + FR" '
                        '(configs/paper.yaml, docs/presets.md)')
    add_option(parser, "print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--overwrite", action="store_true", help="replace the run files already in out_dir")
    add_option(parser, "resume-override", action="store_true",
               help="on resume, apply changed lr / epochs / lr_milestones instead of refusing them")
    names = add_dataclass_options(parser, TrainConfig, "config fields (override the preset)")

    def body() -> int:
        args, options = parse_args(parser, TrainConfig, names, argv)
        preset, overrides = args.preset, list(args.overrides)
        if preset is not None and "=" in preset:  # no preset, only key=value overrides
            preset, overrides = None, [preset, *overrides]
        if args.paper is not None and preset is not None:
            raise ValueError(f"give a preset ({preset!r}) or --paper ROW, not both")
        cfg = row_config(args.paper, [*overrides, *options]) if args.paper is not None \
            else load_config(preset, [*overrides, *options])
        if args.resume_override and not cfg.resume:
            raise ValueError("--resume-override changes a resumed run: give --resume too (or drop --resume-override)")
        info = dataset_info(cfg.dataset)  # names the valid data sets and models before anything runs or prints
        check_choice("model", cfg.model, list_models())
        if cfg.pad_to is not None and cfg.pad_to < info.image_size:
            raise ValueError(f"pad_to={cfg.pad_to} is smaller than the {info.image_size}px {cfg.dataset} images; "
                             f"give pad-to >= {info.image_size} or null")
        if args.print_config:
            print(json.dumps(config_to_dict(cfg), indent=2))
            return 0
        train(cfg, overwrite=args.overwrite, resume_override=args.resume_override)
        return 0

    return run_guarded("fr-fast train", argv, body)
