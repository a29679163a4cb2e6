"""The paper's claim at GPU scale: full Fashion-MNIST, ResNet18, AT vs AT+FR vs AT+FR/WA, in a time budget.

    python experiments/reproduce_gpu.py --out DIR --budget-s 230 [--runs at:0,at:1,at_fr:0,at_fr:1,at_frwa:0]
    python experiments/reproduce_gpu.py --out DIR --dry-run        # CPU smoke run on generated images

All runs train concurrently on the one GPU (one process each), with the trainer as users run it
(``fr_fast.training.train``: bf16 autocast, channels_last, the fused kernels). A short probe of every run first
measures the images/s the runs reach together; the number of epochs is then sized so that training and
evaluation end inside ``--budget-s``. Learning-rate decays at 75 % and 90 % of the epochs; FR and the
weight average switch on at the first decay (the paper). Each finished run writes ``runs/<run>.json``
at once (partial results survive a kill); the driver then writes ``results.json``, ``table.md`` and
``curves.png`` (validation clean / PGD-20 accuracy per epoch).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

import fr_fast
from fr_fast.config.train_config import load_config
from fr_fast.data import load_dataset
from fr_fast.robustness.evaluate import evaluate
from fr_fast.runs.checkpoint import load_model
from fr_fast.training.train import train

# name -> overrides on top of the Fashion-MNIST AT preset. fft "2d" with lambda 0.1: the authors' code
# (the formulation that produced the published numbers), as in the paper presets.
METHODS = {"at": [], "at_fr": ["--fr=fr"], "at_frwa": ["--fr=frwa"],
           "trades": ["--method=trades"], "trades_fr": ["--method=trades", "--fr=fr"]}
PRESET = "fashion_mnist_cnn_at"
TEST_ATTACKS = ("clean", "pgd20", "cw")
N_TRAIN, N_VAL = 54_000, 6_000
# Cost of one image in units of one attack step (forward + input gradient): a PGD-10 training step is
# ~10 attack steps + the weight update + the teacher's forward; PGD-20 / CW-30 evaluations ~20 / 30.
TRAIN_UNITS, VAL_UNITS, TEST_UNITS, AA_UNITS = 12.0, 21.0, 52.0, 650.0


def run_overrides(name: str, seed: int, args: argparse.Namespace, epochs: int, out_dir: Path,
                  train_batches: int | None = None) -> list[str]:
    """Config overrides of one run: the issue's setting plus the budget."""
    milestones = [max(1, round(0.75 * epochs)), max(1, round(0.9 * epochs))] if epochs > 1 else [1]
    common = [f"--model={args.model}", "--pad_to=32", f"--batch_size={args.batch_size}", "--lr=0.1",
              "--eps=0.1", "--alpha=0.025", "--attack_steps=10", "--fft=2d", "--lam=0.1",
              f"--epochs={epochs}", f"--lr_milestones={sorted(set(milestones))}", f"--seed={seed}",
              f"--out_dir={out_dir}", "--progress=false", f"--cpu_threads={args.threads}", "--model_kwargs={}",
              f"--max_train_batches={'null' if train_batches is None else train_batches}",
              f"--max_val_batches={'null' if args.val_batches is None else args.val_batches}"]
    if args.data_dir:
        common.append(f"--data_dir={args.data_dir}")
    # the Fashion-MNIST presets are CPU presets: name the device (dry run: the CPU)
    common += ["--fake_data=128", "--device=cpu"] if args.dry_run else ["--device=cuda"]
    if train_batches is not None:  # probe: FR and WA on from the first step, so the probe times them
        common += ["--fr_start_epoch=0", "--wa_start_epoch=0"]
    return [*common, *METHODS[name], *args.override]


def worker(args: argparse.Namespace) -> None:
    """One run: train (or probe), then evaluate the best checkpoint; write runs/<run>.json."""
    name, seed = args.worker.split(":")
    seed = int(seed)
    tag = f"{name}_seed{seed}"
    out_dir = args.out / ("probe" if args.probe else "work") / tag
    cfg = load_config(PRESET, run_overrides(name, seed, args, args.epochs, out_dir,
                                            args.probe_batches if args.probe else None))
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    start = time.perf_counter()
    summary = train(cfg)
    record = {"run": tag, "method": name, "seed": seed, "epochs": cfg.epochs, "lr_milestones": cfg.lr_milestones,
              "train_s": time.perf_counter() - start, "best_epoch": summary["best_epoch"],
              "best_val_pgd": summary["best_val_pgd"], "history": summary["history"],
              "images_per_s": statistics.median(h["images_per_s"] for h in summary["history"]),
              "backend": fr_fast.backend(device)}
    path = args.out / ("probe" if args.probe else "runs") / f"{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str))  # saved now: a kill during evaluation keeps it
    if args.probe:
        return
    model, run = load_model(summary["best_checkpoint"] or summary["last_checkpoint"], device=device)
    if args.dry_run:  # generated images of Fashion-MNIST's padded shape
        g = torch.Generator().manual_seed(seed)
        test_set = TensorDataset(torch.rand(args.n_test, 1, 32, 32, generator=g),
                                 torch.randint(0, 10, (args.n_test,), generator=g))
    else:
        test_set = load_dataset(run["dataset"], "test", run.get("data_dir"), pad_to=32)
    start, record["accuracy"] = time.perf_counter(), {}
    report = evaluate(model, test_set, eps=run["eps"], attacks=TEST_ATTACKS, n_examples=args.n_test,
                      eps_curve=False, progress=False, seed=seed)
    record["accuracy"].update({a: report["attacks"][a]["accuracy"] for a in TEST_ATTACKS})
    record["eval_s"] = time.perf_counter() - start
    path.write_text(json.dumps(record, indent=2, default=str))
    aa = evaluate(model, test_set, eps=run["eps"], attacks=("clean", "aa"), n_examples=args.n_aa,
                  aa_version=args.aa_version, eps_curve=False, progress=False, seed=seed)
    record["accuracy"]["aa"] = aa["attacks"]["aa"]["accuracy"]
    record["accuracy"]["clean_aa_subset"] = aa["attacks"]["clean"]["accuracy"]
    record["eval_s"] = time.perf_counter() - start
    path.write_text(json.dumps(record, indent=2, default=str))


def launch(runs: list[str], args: argparse.Namespace, extra: list[str], deadline: float) -> None:
    """Start one worker process per run, wait for all (killing them at the deadline)."""
    base = [sys.executable, os.path.abspath(__file__), "--out", str(args.out), "--threads", str(args.threads),
            "--n-test", str(args.n_test), "--n-aa", str(args.n_aa), "--aa-version", args.aa_version,
            "--model", args.model, "--batch-size", str(args.batch_size)]
    if args.val_batches is not None:
        base += ["--val-batches", str(args.val_batches)]
    if args.data_dir:
        base += ["--data-dir", args.data_dir]
    if args.dry_run:
        base.append("--dry-run")
    for item in args.override:
        base.append(f"--override={item}")
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for run in runs:
        log = open(logs / f"{run.replace(':', '_seed')}{'_probe' if '--probe' in extra else ''}.log", "w")
        procs.append((run, subprocess.Popen([*base, "--worker", run, *extra], stdout=log, stderr=subprocess.STDOUT)))
    for run, proc in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            print(f"{run}: killed at the deadline", flush=True)
        if proc.returncode not in (0, None):
            print(f"{run}: exit code {proc.returncode} (see {logs})", flush=True)


def size_epochs(probes: list[dict], args: argparse.Namespace, seconds: float) -> tuple[int, float]:
    """Epochs that fit in ``seconds`` at the slowest run's probed speed (all runs train together)."""
    rate = min(p["images_per_s"] for p in probes) * TRAIN_UNITS  # attack-step units per second, per run
    n_train = N_TRAIN if not args.dry_run else 115
    n_val = N_VAL if args.val_batches is None else min(N_VAL, args.val_batches * args.batch_size)
    per_epoch = (n_train * TRAIN_UNITS + n_val * VAL_UNITS) / rate + 3.0  # + checkpoint, BN recalibration
    evaluation = (args.n_test * TEST_UNITS + args.n_aa * AA_UNITS) / rate + 15.0  # + start-up
    # 85 %: the probe's speed is a guess for the whole run (cuDNN autotuning, evaluation batch sizes)
    # at least 2: FR and WA start at the first lr decay, which needs an epoch before it
    return max(2, min(args.max_epochs, int((0.85 * seconds - evaluation) / per_epoch))), per_epoch


def summarise(args: argparse.Namespace, meta: dict) -> dict:
    """results.json, table.md and curves.png from the finished runs."""
    records = [json.loads(p.read_text()) for p in sorted((args.out / "runs").glob("*.json"))]
    by_method: dict[str, list[dict]] = {}
    for r in records:
        by_method.setdefault(r["method"], []).append(r)
    results = {**meta, "runs": records}
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    cols = ("clean", "pgd20", "cw", "aa")
    lines = ["| method | seeds | clean | PGD-20 | CW∞ | AA | best epoch | img/s per run | train s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method, runs in by_method.items():
        cells = [_mean_std([r["accuracy"][c] for r in runs if c in r.get("accuracy", {})]) for c in cols]
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells)
                     + f" | {','.join(str(r['best_epoch']) for r in runs)} | "
                     f"{statistics.mean(r['images_per_s'] for r in runs):.0f} | "
                     f"{statistics.mean(r['train_s'] for r in runs):.0f} |")
    header = (f"{meta['device']}; {meta['epochs']} epochs, batch {args.batch_size}, {args.model}, "
              f"{len(records)} runs trained concurrently; test: {args.n_test} images (clean, PGD-20, CW∞), "
              f"AutoAttack '{args.aa_version}' on the first {args.n_aa}; accuracy in %, mean ± std over seeds.")
    (args.out / "table.md").write_text(header + "\n\n" + "\n".join(lines) + "\n")
    print(header + "\n" + "\n".join(lines), flush=True)
    _plot_curves(by_method, args.out / "curves.png")
    return results


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"  # run cut short before this evaluation
    return f"{values[0]:.2f}" if len(values) == 1 else f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _plot_curves(by_method: dict[str, list[dict]], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no curves.png", flush=True)
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for method, runs in by_method.items():
        for r in runs:
            epochs = [h["epoch"] for h in r["history"] if "val_pgd" in h]
            for ax, key in zip(axes, ("val_clean", "val_pgd")):
                ax.plot(epochs, [h[key] for h in r["history"] if key in h], label=f"{method} s{r['seed']}")
    for ax, title in zip(axes, ("validation clean accuracy (%)", "validation PGD-20 accuracy (%)")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if by_method:
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/reproduce_gpu"))
    p.add_argument("--budget-s", type=float, default=230.0, help="wall-clock budget of the whole experiment")
    p.add_argument("--runs", default="at:0,at_fr:0,at_frwa:0", help="method:seed,... (trained concurrently)")
    p.add_argument("--fixed-epochs", type=int, default=None, help="skip the probe and train this many epochs "
                   "(to add seeds to an earlier call's runs with the same budget)")
    p.add_argument("--summarise-only", action="store_true", help="rebuild results/table/curves from OUT/runs")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--n-test", type=int, default=10_000)
    p.add_argument("--n-aa", type=int, default=500)
    p.add_argument("--aa-version", default="fast")
    p.add_argument("--max-epochs", type=int, default=30)
    p.add_argument("--val-batches", type=int, default=16, help="validation batches per epoch (16 x 128 = 2048 "
                   "of the 6000 held-out images; 0 = all)")
    p.add_argument("--probe-batches", type=int, default=40)
    p.add_argument("--threads", type=int, default=3, help="CPU threads per run")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (default: the Debian package's)")
    p.add_argument("--override", action="append", default=[], help="extra config override for every run")
    p.add_argument("--dry-run", action="store_true", help="CPU, generated images, tiny sizes")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--epochs", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.dry_run:
        args.n_test, args.n_aa, args.val_batches, args.probe_batches = 32, 8, 1, 3
        args.batch_size, args.max_epochs, args.threads, args.model = 16, 2, 1, "small_cnn"
    if args.val_batches == 0:
        args.val_batches = None
    if args.worker:
        return worker(args)
    if args.summarise_only:
        summarise(args, json.loads((args.out / "results.json").read_text()) if (args.out / "results.json").exists()
                  else {"device": "?", "epochs": "?"})
        return None
    start = time.time()
    deadline = start + args.budget_s
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    for run in runs:
        if run.split(":")[0] not in METHODS:
            raise SystemExit(f"unknown method in --runs: {run!r}; choose from {sorted(METHODS)}")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.dry_run else "CPU (dry run)"
    backend = fr_fast.backend("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    print(f"reproduce_gpu: {device}, kernel backend {backend}, runs {runs}, budget {args.budget_s:.0f} s", flush=True)
    if backend == "reference":
        print("WARNING: fused kernels unavailable, the runs use the pure-PyTorch reference ops", flush=True)
    probes: list[dict] = []
    if args.fixed_epochs:
        epochs = args.fixed_epochs
    else:
        launch(runs, args, ["--probe", "--probe-batches", str(args.probe_batches)], deadline)
        probes = [json.loads(p.read_text()) for p in sorted((args.out / "probe").glob("*.json"))]
        if not probes:
            raise SystemExit("every probe run failed: see the logs folder")
        epochs, per_epoch = size_epochs(probes, args, deadline - time.time() - 10.0)
        print(f"probe: slowest run {min(p['images_per_s'] for p in probes):.0f} img/s with {len(runs)} runs at "
              f"once -> {epochs} epochs (~{per_epoch:.0f} s each) in {deadline - time.time():.0f} s left", flush=True)
    launch(runs, args, ["--epochs", str(epochs)], deadline)
    meta = {"device": device, "backend": backend, "torch": torch.__version__, "epochs": epochs,
            "probe_images_per_s": {p["run"]: p["images_per_s"] for p in probes},
            "wall_s": time.time() - start, "budget_s": args.budget_s, "n_test": args.n_test, "n_aa": args.n_aa,
            "aa_version": args.aa_version, "setting": run_overrides("at", 0, args, epochs, Path("<out>"))}
    summarise(args, meta)


if __name__ == "__main__":
    main()
