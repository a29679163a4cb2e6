"""Reproduce the paper's claims at CPU scale on real Fashion-MNIST, as a documented experiment.

    python experiments/reproduce_cpu.py [--out docs/reproduction] [--seeds 0 1 2] [--quick]

Trains natural, PGD-AT, AT+FR and AT+FR/WA small CNNs (same budget and seeds; AT and AT+FR over
several seeds), evaluates each on the test set with clean, PGD-20, CW-inf and AutoAttack, runs the
spectral analyses (LPF/HPF accuracy, perturbation spectra) on the natural and AT models, and writes
``<out>/results.json``, the figures and ``<out>/tables.md`` (pasted into docs/reproduction.md).
Each finished run leaves ``<out>/runs/<name>.json``; rerunning skips it, so the script resumes.
Requires the Debian package ``dataset-fashion-mnist`` (IDX files in /usr/share/datasets/fashion-mnist).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from fr_fast.config.train_config import load_config
from fr_fast.data import load_dataset
from fr_fast.robustness.evaluate import evaluate
from fr_fast.runs.checkpoint import load_model
from fr_fast.spectral import analyses as spectral
from fr_fast.spectral import plots
from fr_fast.training.train import train

# name -> (preset, extra overrides). Same budget for all; FR/WA switch on at the first lr decay (paper).
METHODS = {
    "natural": ("fashion_mnist_cnn_at", ["--method=natural"]),
    "at": ("fashion_mnist_cnn_at", []),
    "at_fr": ("fashion_mnist_cnn_at_fr", []),
    "at_frwa": ("fashion_mnist_cnn_at_frwa", []),
    # optional: the paper's lambda ablation (lam 0 = at, 0.1 = at_fr) and TRADES vs TRADES + FR
    "at_fr_lam0.05": ("fashion_mnist_cnn_at_fr", ["--lam=0.05"]),
    "at_fr_lam0.2": ("fashion_mnist_cnn_at_fr", ["--lam=0.2"]),
    "trades": ("fashion_mnist_cnn_at", ["--method=trades"]),
    "trades_fr": ("fashion_mnist_cnn_at_fr", ["--method=trades"]),
}
MAIN_METHODS = ["natural", "at", "at_fr", "at_frwa"]
MULTI_SEED = ("at", "at_fr", "trades", "trades_fr")  # the comparisons that get every seed
ATTACKS = ("clean", "pgd20", "cw", "aa", "clean_aa_subset", "pgd20_aa_subset")


def budget_overrides(args: argparse.Namespace) -> list[str]:
    epochs = args.epochs
    milestones = [round(0.75 * epochs), round(0.9 * epochs)]  # 75/90 of 100 as in the paper
    return [f"--epochs={epochs}", f"--lr_milestones={milestones}", f"--max_train_batches={args.train_batches}",
            f"--max_val_batches={args.val_batches}", f"--pad_to={args.pad_to}", f"--cpu_threads={args.threads}",
            "--batch_size=128", "--lr=0.1", "--progress=false", "--amp=off"]  # float32, as the committed results


def run_one(name: str, seed: int, args: argparse.Namespace, test_set) -> dict:
    record_path = args.out / "runs" / f"{name}_seed{seed}.json"
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if "pgd20_aa_subset" not in record["accuracy"]:  # records written before that column existed
            model, run = load_model(record["checkpoint"])
            subset = evaluate(model, test_set, eps=run["eps"], attacks=("pgd20",), n_examples=args.n_aa,
                              eps_curve=False, progress=False, seed=seed)
            record["accuracy"]["pgd20_aa_subset"] = subset["attacks"]["pgd20"]["accuracy"]
            record_path.write_text(json.dumps(record, indent=2, default=str))
        return record
    preset, extra = METHODS[name]
    out_dir = args.work / f"{name}_seed{seed}"
    cfg = load_config(preset, [*budget_overrides(args), *extra, f"--seed={seed}", f"--out_dir={out_dir}",
                               *args.override])
    start = time.perf_counter()
    summary = train(cfg)
    train_s = time.perf_counter() - start
    checkpoint = summary["best_checkpoint"] or summary["last_checkpoint"]
    model, run = load_model(checkpoint)
    start = time.perf_counter()
    # PGD/CW on n_test images; AutoAttack (the costliest) on the first n_aa of them.
    report = evaluate(model, test_set, eps=run["eps"], attacks=("clean", "pgd20", "cw"), n_examples=args.n_test,
                      eps_curve=False, progress=False, seed=seed)
    aa_report = evaluate(model, test_set, eps=run["eps"], attacks=("clean", "pgd20", "aa"), n_examples=args.n_aa,
                         aa_version=args.aa_version, aa_steps=args.aa_steps, eps_curve=False, progress=False,
                         seed=seed)
    report["attacks"]["aa"] = aa_report["attacks"]["aa"]
    report["attacks"]["clean_aa_subset"] = aa_report["attacks"]["clean"]
    report["attacks"]["pgd20_aa_subset"] = aa_report["attacks"]["pgd20"]
    record = {"name": name, "seed": seed, "checkpoint": str(checkpoint), "best_epoch": summary["best_epoch"],
              "best_val_pgd": summary["best_val_pgd"], "train_s": train_s, "eval_s": time.perf_counter() - start,
              "accuracy": {attack: report["attacks"][attack]["accuracy"] for attack in ATTACKS},
              "report": {k: v for k, v in report.items() if k != "model"}}
    record_path.parent.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=2, default=str))
    print(f"{name} seed {seed}: " + ", ".join(f"{a} {record['accuracy'][a]:.2f}" for a in ATTACKS)
          + f" (train {train_s:.0f} s)", flush=True)
    return record


SPECTRAL_MODELS = (("natural", "natural"), ("AT", "at"), ("AT+FR", "at_fr"))  # (label, method)


def spectral_analyses(records: dict, args: argparse.Namespace, test_set) -> dict:
    """LPF/HPF accuracy table and perturbation spectra of the natural, AT and AT+FR (first seed) models
    that were trained; a missing one is skipped with one line (``--methods`` runs any subset)."""
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(test_set, range(args.n_spectral)), batch_size=250)
    size = test_set[0][0].shape[-1]
    bandwidths = list(range(4, size + 1, 4))
    low, high, spectra = {}, {}, {}
    for label, name in SPECTRAL_MODELS:
        if name not in records:
            print(f"spectral analyses: skipping the {label} model ('{name}' is not among --methods)", flush=True)
            continue
        model, run = load_model(records[name][0]["checkpoint"])
        low[label] = spectral.filtered_accuracy(model, loader, bandwidths, "low")
        high[label] = spectral.filtered_accuracy(model, loader, bandwidths, "high")
        spectra[label] = spectral.perturbation_spectrum(model, loader, run["eps"], n_images=args.n_spectral).mean
    if not low:
        return {"bandwidths": bandwidths, "low": {}, "high": {}}
    figures = args.out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    plots.plot_filtered_accuracy(low, figures / "filtered_accuracy.png", high=high,
                                    title="Fashion-MNIST (32x32): accuracy on LPF / HPF test images")
    plots.plot_spectra(spectra, figures / "perturbation_spectra.png")
    plots.save_json(spectra, figures / "perturbation_spectra.json")  # so that the figure can be redrawn
    return {"bandwidths": bandwidths, "low": low, "high": high}


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def tables(records: dict, analyses: dict, args: argparse.Namespace) -> str:
    lines = [f"Fashion-MNIST padded to {args.pad_to}×{args.pad_to}, small CNN, {args.epochs} epochs × "
             f"{args.train_batches} batches of 128, eps 0.1; clean/PGD-20/CW∞ on the first {args.n_test} test "
             f"images, AutoAttack ('{args.aa_version}', {args.aa_steps} iterations) on the first {args.n_aa} "
             f"(clean and PGD-20 accuracy of that subset in the last two columns, to compare AA with). "
             f"Mean ± std over seeds (n = number of seeds).", "",
             "| method | n | clean | PGD-20 | CW∞ | AA | clean (AA subset) | PGD-20 (AA subset) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, runs in records.items():
        cells = [mean_std([r["accuracy"][a] for r in runs]) for a in ATTACKS]
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    if not analyses["low"]:
        return "\n".join(lines) + "\n"
    lines += ["", "Accuracy (%) on low-pass (LPF) and high-pass (HPF) filtered test images, by bandwidth:", "",
              "| model | filter | " + " | ".join(str(b) for b in analyses["bandwidths"]) + " |",
              "|---|---|" + "---:|" * len(analyses["bandwidths"])]
    for kind in ("low", "high"):
        for label, accs in analyses[kind].items():
            lines.append(f"| {label} | {'LPF' if kind == 'low' else 'HPF'} | "
                         + " | ".join(f"{100 * accs[b]:.1f}" for b in analyses["bandwidths"]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/reproduction"))
    parser.add_argument("--work", type=Path, default=Path("runs/reproduction"), help="checkpoints (not committed)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-batches", type=int, default=50, help="batches of 128 per epoch")
    parser.add_argument("--pad-to", type=int, default=32)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--n-aa", type=int, default=500, help="AutoAttack on the first N test images")
    parser.add_argument("--aa-steps", type=int, default=100, help="APGD iterations (official: 100)")
    parser.add_argument("--val-batches", type=int, default=4, help="validation batches (PGD-20) per epoch")
    parser.add_argument("--n-spectral", type=int, default=1000)
    parser.add_argument("--aa-version", default="fast", choices=("standard", "fast"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=MAIN_METHODS, choices=list(METHODS))
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 epochs, 5 batches, 200 test images")
    parser.add_argument("override", nargs="*", help="extra --key=value config overrides for every run")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.train_batches, args.n_test, args.n_spectral, args.seeds = 2, 5, 200, 200, args.seeds[:1]
        args.n_aa, args.aa_steps, args.val_batches = 100, 10, 1
        args.out, args.work = args.out / "quick", args.work / "quick"
    test_set = load_dataset("fashion_mnist", "test", None, pad_to=args.pad_to)
    records: dict[str, list[dict]] = {}
    for name in args.methods:
        seeds = args.seeds if name in MULTI_SEED else args.seeds[:1]
        records[name] = [run_one(name, seed, args, test_set) for seed in seeds]
    analyses = spectral_analyses(records, args, test_set)
    (args.out / "results.json").write_text(json.dumps({"records": records, "spectral": analyses}, indent=2, default=str))
    markdown = tables(records, analyses, args)
    (args.out / "tables.md").write_text(markdown)
    print("\n" + markdown)


if __name__ == "__main__":
    main()
