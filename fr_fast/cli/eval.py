"""``fr-fast eval CHECKPOINT``: the robustness report of a trained checkpoint (:mod:`fr_fast.robustness.evaluate`)."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Union

import torch

from fr_fast.cli.args import add_dataclass_options, make_parser, parse_options, run_guarded
from fr_fast.config.fields import check_ranges, knob
from fr_fast.config.paper import comparison_table, parse_row_label, published_for_eval, table1_bandwidths
from fr_fast.data import load_dataset
from fr_fast.robustness import attacks as atk
from fr_fast.robustness.evaluate import DEFAULT_ATTACKS, evaluate, format_table
from fr_fast.robustness.robustbench import default_name, robustbench_entry
from fr_fast.runs import runinfo
from fr_fast.runs.checkpoint import WEIGHTS, checkpoint_data_dir, load_model
from fr_fast.runs.runfolder import ensure_writable_file
from fr_fast.spectral.analyses import filtered_accuracy
from fr_fast.utils.checks import check_choice, check_device
from fr_fast.utils.files import write_text


@dataclass
class EvalOptions:
    """The options of ``fr-fast eval`` (one ``--name`` each; help generated from these fields)."""

    n_examples: Union[int, None] = knob(None, "evaluate the first N test examples (null: all)")
    batch_size: int = knob(256, "batch size")
    attacks: str = knob(",".join(DEFAULT_ATTACKS), "comma-separated: clean, pgdN, cw, cwN, aa")
    eps: Union[float, None] = knob(None, "L-inf radius, e.g. 8/255 (null: the run's eps)")
    alpha: Union[float, None] = knob(None, "PGD/CW step size (null: eps/4)")
    aa_version: str = knob("standard", f"AutoAttack version: {' | '.join(atk.AA_VERSIONS)}")
    aa_steps: int = knob(100, "APGD/FAB iterations of AutoAttack (official: 100)")
    aa_implementation: str = knob("auto", "AutoAttack implementation: auto (the official autoattack package "
                                  "when installed, else torchattacks) | official | torchattacks")
    restarts: int = knob(1, "PGD/CW restarts")
    cw_kappa: Union[float, None] = knob(None, "cap of the CW-inf margin (Carlini-Wagner's kappa, e.g. 0); null: "
                                        "uncapped, the FR authors' form behind the published C&W numbers")
    eps_curve: bool = knob(True, "also run the eps curve and the large-eps check")
    lpf: Union[list[int], None] = knob(None, "also measure the clean accuracy on test inputs low-pass filtered to "
                                       "these bandwidths (Table 1; [] for none); null: a Table 1 row's "
                                       "bandwidths, else none")
    data_dir: Union[str, None] = knob(None, "data set folder (null: the run's data_dir)")
    device: Union[str, None] = knob(None, "cpu | cuda | cuda:N (null: cuda if available, else cpu)")
    seed: int = knob(0, "seed of the attacks' random starts")
    threads: Union[int, None] = knob(None, "torch CPU threads (1 on a machine shared with other jobs)")
    weights: str = knob("auto", f"which weights to evaluate: {' | '.join(WEIGHTS)} (auto: the weight average "
                        "when the run selected it, wa_role evaluated/both; else the student)")
    out: Union[str, None] = knob(None, "write the report as JSON here")
    robustbench_json: Union[str, None] = knob(None, "also write the result as a RobustBench model entry here "
                                              "(needs clean and aa among the attacks)")
    robustbench_name: Union[str, None] = knob(None, "model name of the RobustBench entry (null: the run's "
                                              "--name, else its folder's name)")
    progress: bool = knob(True, "progress display (bars on a terminal, plain periodic lines otherwise)")

    def __post_init__(self) -> None:
        check_ranges(self, EVAL_RANGES)
        check_choice("aa-version", self.aa_version, atk.AA_VERSIONS)
        check_choice("weights", self.weights, WEIGHTS)


# Valid values of the numeric options (as TrainConfig's RANGES; None, where allowed, always passes).
EVAL_RANGES = {"n_examples": "[1, inf)", "batch_size": "[1, inf)", "eps": "[0, 1]", "alpha": "(0, 1]",
               "aa_steps": "[1, inf)", "restarts": "[1, inf)", "threads": "[1, 4096]", "seed": "[0, 4294967295]"}


def main(argv: list[str] | None = None) -> int:
    """``fr-fast eval CHECKPOINT``: evaluate a trained checkpoint on its dataset's test split."""
    parser = make_parser("fr-fast eval", "Robustness report of a checkpoint on its data set's test split: "
                         "clean, PGD, CW-inf and AutoAttack accuracy (%) with sanity checks.")
    parser.add_argument("checkpoint", help="checkpoint written by fr-fast train (e.g. runs/x/best.pt)")
    names = add_dataclass_options(parser, EvalOptions, "evaluation options")
    return run_guarded("fr-fast eval", argv, lambda: _run(*parse_options(parser, EvalOptions, names, argv)))


def _run(args: argparse.Namespace, opts: EvalOptions) -> int:
    attacks = [a for a in opts.attacks.split(",") if a]
    if opts.out:  # before any computation: an unwritable --out must not cost a whole AutoAttack
        ensure_writable_file(opts.out, "--out file")
    if opts.robustbench_json:
        ensure_writable_file(opts.robustbench_json, "--robustbench-json file")
        if not {"clean", "aa"} <= set(attacks):
            raise ValueError("--robustbench-json needs the clean and aa attacks (e.g. --attacks clean,pgd20,aa)")
    device = check_device(opts.device)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    environment = runinfo.describe(device)  # attacks run in float32, contiguous, eager
    print(runinfo.banner("eval", environment), flush=True)
    model, cfg = load_model(args.checkpoint, device=device, weights=opts.weights)
    dataset = load_dataset(cfg["dataset"], "test", checkpoint_data_dir(cfg, opts.data_dir, "fr-fast eval"),
                           pad_to=cfg.get("pad_to"))
    eps = cfg["eps"] if opts.eps is None else opts.eps
    report = evaluate(model, dataset, eps=eps, alpha=opts.alpha, attacks=attacks,
                      n_examples=opts.n_examples, batch_size=opts.batch_size, aa_version=opts.aa_version,
                      aa_steps=opts.aa_steps, aa_implementation=opts.aa_implementation,
                      restarts=opts.restarts, eps_curve=opts.eps_curve,
                      device=device, seed=opts.seed, progress=opts.progress, cw_kappa=opts.cw_kappa)
    report.update(checkpoint=str(args.checkpoint), name=cfg.get("name"), dataset=cfg["dataset"],
                  model=cfg.get("model"),
                  runtime=environment, weights=cfg["weights"])
    row_id, modified = parse_row_label(cfg["paper_row"]) if cfg.get("paper_row") else (None, False)
    bands = opts.lpf if opts.lpf is not None else (table1_bandwidths(row_id) if row_id else [])
    if bands:  # Table 1: the (plain) model on LPF_k(x); its PGD-20 above is on unfiltered inputs
        limit = min(opts.n_examples or len(dataset), len(dataset))
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(limit)), batch_size=opts.batch_size)
        report["lpf"] = {k: 100.0 * v for k, v in filtered_accuracy(model.eval(), loader, bands).items()}
    print(f"weights: {cfg['weights']}")
    print(format_table(report))
    if report.get("lpf"):
        print("low-pass inputs (bandwidth: acc %): " + "  ".join(f"{k}: {v:.2f}" for k, v in report["lpf"].items()))
    if row_id:  # trained with --paper: the published numbers beside ours, or apart when the run was modified
        report["paper"] = {"row": row_id, "label": cfg["paper_row"], "like_for_like": not modified,
                           "accuracy": published_for_eval(row_id, cfg)}
        print(comparison_table(report, cfg["paper_row"], cfg))
    if opts.out:
        write_text(opts.out, json.dumps(report, indent=2))
        print(f"wrote {opts.out}")
    if opts.robustbench_json:
        name = opts.robustbench_name or cfg.get("name") or default_name(args.checkpoint)
        entry = robustbench_entry(report, name=name,
                                  model=cfg.get("model"), model_kwargs=cfg.get("model_kwargs"))
        write_text(opts.robustbench_json, json.dumps(entry, indent=2))
        print(f"wrote {opts.robustbench_json}")
    return 0
