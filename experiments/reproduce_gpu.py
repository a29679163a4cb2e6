"""The paper's claim at GPU scale, paired: one AT trunk, forked into AT / AT+FR / AT+FR/WA at the first lr decay.

    python experiments/reproduce_gpu.py --out DIR --budget-s 330 [--methods at,at_fr,at_frwa] [--seeds 0]
    python experiments/reproduce_gpu.py --out DIR --dry-run        # CPU, generated images, tiny sizes

AT, AT+FR and AT+FR/WA are the same run until the first learning-rate decay (FR and the weight average
switch on there, sec. 5 of the paper). So the trunk (plain AT) is trained once, up to that decay, and each
method continues its last.pt with ``fr-fast train --branch_from`` (:mod:`fr_fast.training.branch`): the same
weights, optimiser, data order and attack seeds up to the fork, a paired comparison, in fewer GPU minutes
than three independent runs (docs/reproduction.md has the arithmetic).

Sizing: a probe trains every fork for ``--probe-batches`` batches, all at once, as they will run; the
epochs are then the most that fit in ``--budget-s`` (trunk alone at the summed speed, then the forks side
by side, then evaluation). Decays at 75 % and 90 % of the epochs, the first one always before the last
epoch, so FR and the average always switch on (at least 2 epochs: 1 trunk + 1 fork).

Each run's record is written as soon as it exists (``runs/<run>.json``: after training, after the full-test
evaluation, after AutoAttack) and the outputs are rebuilt from the records each time: ``gpu_fmnist.json``
(``device``; ``runs``: method, seed, epochs, clean, pgd20, cw, aa, aa_n, in percent), ``table.md``; the
driver adds ``curves.png`` (validation accuracy per epoch: the forks share the trunk's first epochs).
Test metrics: clean, PGD-20 and CW∞ (30 steps) on the whole test set, AutoAttack on its first ``--n-aa``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fmnist_report as report  # noqa: E402

import fr_fast  # noqa: E402
from fr_fast.config.train_config import TrainConfig, load_config  # noqa: E402
from fr_fast.data import load_dataset  # noqa: E402
from fr_fast.robustness.evaluate import evaluate  # noqa: E402
from fr_fast.runs.checkpoint import load_model  # noqa: E402
from fr_fast.training.train import train  # noqa: E402

METHODS = {"at": [], "at_fr": ["--fr=fr"], "at_frwa": ["--fr=frwa"]}
PRESET = "fashion_mnist_cnn_at"
TEST_ATTACKS = ("clean", "pgd20", "cw")
N_TRAIN, N_VAL = 54_000, 6_000
# Cost of one image in units of one attack step (forward + input gradient): a PGD-10 training step is ~10
# attack steps + the weight update + the teacher's forward; PGD-20 / CW-30 evaluation ~21 / 31 (+ clean);
# AutoAttack "fast" ~650; BN re-estimation of the average (FR/WA) one forward pass over the training set.
TRAIN_UNITS, VAL_UNITS, TEST_UNITS, AA_UNITS, BN_UNITS = 12.0, 21.0, 53.0, 650.0, 0.35
HAS_CUDA_GRAPH = "cuda_graph" in {f.name for f in dataclasses.fields(TrainConfig)}


def schedule(epochs: int) -> tuple[int, list[int]]:
    """(trunk epochs = first milestone, lr milestones) for ``epochs`` >= 2: decays at ~75 % and ~90 %, the first
    one at most epochs - 1 so that every fork trains at least one epoch with FR (and the average) on."""
    first = min(epochs - 1, max(1, round(0.75 * epochs)))
    second = max(first + 1, round(0.9 * epochs))
    return first, [first, second]


def overrides(method: str, seed: int, args: argparse.Namespace, epochs: int, out_dir: Path, *,
              trunk: bool = False, branch_from: Path | None = None, probe: bool = False) -> list[str]:
    """Config overrides of one run (trunk, fork or probe) on top of the Fashion-MNIST preset."""
    first, milestones = schedule(max(epochs, 2))
    common = [f"--model={args.model}", "--pad_to=32", f"--batch_size={args.batch_size}", "--lr=0.1",
              "--eps=0.1", "--alpha=0.025", "--attack_steps=10", "--fft=2d", "--lam=0.1", f"--seed={seed}",
              f"--lr_milestones={milestones}", f"--out_dir={out_dir}", "--progress=false",
              f"--cpu_threads={args.threads}", "--model_kwargs={}",
              f"--max_val_batches={'null' if args.val_batches is None else args.val_batches}"]
    common += [f"--data_dir={args.data_dir}"] if args.data_dir else []
    # the Fashion-MNIST presets are CPU presets: name the device (dry run: the CPU)
    common += ["--fake_data=128", "--device=cpu"] if args.dry_run else ["--device=cuda"]
    common += ["--cuda_graph=true"] if args.cuda_graph else []
    if probe:  # FR and WA on from the first step, so that the probe times them
        return [*common, "--epochs=1", f"--max_train_batches={args.probe_batches}", "--fr_start_epoch=0",
                "--wa_start_epoch=0", *METHODS[method], *args.override]
    common.append(f"--max_train_batches={'null' if args.train_batches is None else args.train_batches}")
    if trunk:
        return [*common, f"--epochs={first}", "--fr=none", *args.override]
    return [*common, f"--epochs={epochs}", f"--branch_from={branch_from}", "--resume=auto", *METHODS[method],
            *args.override]


# ------------------------------------------------------------------------------------------ the workers
def worker(args: argparse.Namespace, role: str) -> None:
    """One process: ``probe:METHOD:SEED``, ``trunk:SEED`` or ``fork:METHOD:SEED``; writes its record."""
    kind, *rest = role.split(":")
    method, seed = ("at", int(rest[0])) if kind == "trunk" else (rest[0], int(rest[1]))
    tag = f"trunk_seed{seed}" if kind == "trunk" else f"{method}_seed{seed}"
    work = args.out / ("probe" if kind == "probe" else "work")
    trunk_ckpt = args.out / "work" / f"trunk_seed{seed}" / "last.pt"
    cfg = load_config(PRESET, overrides(method, seed, args, args.epochs, work / tag, trunk=kind == "trunk",
                                        branch_from=trunk_ckpt, probe=kind == "probe"))
    started = time.perf_counter()
    summary = train(cfg)
    own = summary["history"][args.trunk_epochs:] if kind == "fork" else summary["history"]  # not the trunk's
    rates = [h["images_per_s"] for h in own] or [0.0]
    record = {"run": tag, "role": kind, "method": method, "seed": seed, "epochs": cfg.epochs,
              "trunk_epochs": args.trunk_epochs, "lr_milestones": cfg.lr_milestones,
              "train_s": time.perf_counter() - started, "startup_s": started - args.process_start,
              "images_per_s": sorted(rates)[len(rates) // 2], "best_epoch": summary["best_epoch"],
              "best_val_pgd": summary["best_val_pgd"], "history": summary["history"],
              "backend": fr_fast.backend(args.device), "checkpoint": summary["best_checkpoint"]}
    folder = args.out / ("probe" if kind == "probe" else "runs")
    report.write_json(folder / f"{tag}.json", record)  # saved now: a kill during evaluation keeps it
    if kind == "fork":
        evaluate_fork(args, record, summary["best_checkpoint"] or summary["last_checkpoint"], folder / f"{tag}.json")


def evaluate_fork(args: argparse.Namespace, record: dict, checkpoint: str, path: Path) -> None:
    """Clean / PGD-20 / CW∞ on the whole test set, then AutoAttack on its first ``n_aa``; record after each."""
    torch.set_num_threads(args.threads)  # as training did: more threads than cores share a busy CPU badly
    model, run = load_model(checkpoint, device=args.device)
    if args.dry_run:  # generated images of Fashion-MNIST's padded shape
        g = torch.Generator().manual_seed(1234)
        test_set = TensorDataset(torch.rand(args.n_test, 1, 32, 32, generator=g),
                                 torch.randint(0, 10, (args.n_test,), generator=g))
    else:
        test_set = load_dataset(run["dataset"], "test", run.get("data_dir"), pad_to=32)
    start, record["accuracy"] = time.perf_counter(), {}
    result = evaluate(model, test_set, eps=run["eps"], attacks=TEST_ATTACKS, n_examples=args.n_test,
                      eps_curve=False, progress=False, seed=record["seed"])
    record["accuracy"].update({a: result["attacks"][a]["accuracy"] for a in TEST_ATTACKS})
    record.update(n_test=result["n_examples"], eval_s=time.perf_counter() - start)
    report.write_json(path, record)
    report.write_outputs(args.out, report.meta_of(args.out))
    aa = evaluate(model, test_set, eps=run["eps"], attacks=("clean", "aa"), n_examples=args.n_aa,
                  aa_version=args.aa_version, aa_steps=args.aa_steps, eps_curve=False, progress=False,
                  seed=record["seed"])
    record["accuracy"].update(aa=aa["attacks"]["aa"]["accuracy"], clean_aa_subset=aa["attacks"]["clean"]["accuracy"])
    record.update(aa_n=aa["n_examples"], eval_s=time.perf_counter() - start)
    report.write_json(path, record)
    report.write_outputs(args.out, report.meta_of(args.out))


# ------------------------------------------------------------------------------------------- the driver
def launch(roles: list[str], args: argparse.Namespace, deadline: float, epochs: int = 1,
           trunk_epochs: int = 0) -> dict[str, int]:
    """Run one worker per role at once (subprocesses; sequentially in this process with --in-process).

    Returns {role: exit status} of the workers that did not succeed (124: killed at the deadline).
    """
    if args.in_process:
        for role in roles:
            sub = argparse.Namespace(**{**vars(args), "epochs": epochs, "trunk_epochs": trunk_epochs,
                                        "process_start": time.perf_counter()})
            worker(sub, role)
        return {}
    base = [sys.executable, os.path.abspath(__file__), "--epochs", str(epochs), "--trunk-epochs", str(trunk_epochs)]
    base += [a for a in args.argv if not a.startswith("--worker")]
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    procs, failed = [], {}
    for role in roles:
        log = open(args.out / "logs" / f"{role.replace(':', '_')}.log", "w")
        procs.append((role, subprocess.Popen([*base, f"--worker={role}"], stdout=log, stderr=subprocess.STDOUT)))
    for role, proc in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            print(f"{role}: killed at the deadline", flush=True)
            failed[role] = 124
            continue
        if proc.returncode != 0:
            print(f"{role}: exit code {proc.returncode} (see {args.out / 'logs'})", flush=True)
            failed[role] = proc.returncode
    return failed


def size_epochs(probes: list[dict], args: argparse.Namespace, seconds: float) -> tuple[int, dict]:
    """The most epochs whose trunk (alone) + forks (together) + evaluation fit in ``seconds``, and the plan."""
    per_run = min(p["images_per_s"] for p in probes) * TRAIN_UNITS   # attack-step units/s of one fork
    trunk_rate = sum(p["images_per_s"] for p in probes) * TRAIN_UNITS / len(args.seeds)  # the GPU's total, shared
    n_train = 115 if args.dry_run else (N_TRAIN if args.train_batches is None
                                        else min(N_TRAIN, args.train_batches * args.batch_size))
    n_val = N_VAL if args.val_batches is None else min(N_VAL, args.val_batches * args.batch_size)
    work = n_train * TRAIN_UNITS + n_val * VAL_UNITS
    trunk_epoch, fork_epoch = work / trunk_rate + 2.0, (work + n_train * BN_UNITS) / per_run + 2.0
    evaluation = (args.n_test * TEST_UNITS + args.n_aa * AA_UNITS) / per_run
    startup = max(p["startup_s"] for p in probes) + 5.0  # per phase (trunk, forks): imports, data, cuDNN
    fits = lambda e: (0.85 * (seconds - 2 * startup - evaluation)  # noqa: E731
                      >= schedule(e)[0] * trunk_epoch + (e - schedule(e)[0]) * fork_epoch)
    epochs = max([e for e in range(2, args.max_epochs + 1) if fits(e)], default=2)
    plan = {"trunk_epoch_s": trunk_epoch, "fork_epoch_s": fork_epoch, "evaluation_s": evaluation,
            "startup_s": startup, "seconds": seconds, "fits": fits(epochs)}
    return epochs, plan


def run_experiment(args: argparse.Namespace) -> dict:
    start = time.time()
    deadline = start + args.budget_s
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (dry run)"
    backend = fr_fast.backend(args.device)
    forks = [f"{m}:{s}" for s in args.seeds for m in args.methods]
    print(f"reproduce_gpu: {device}, kernels {backend}, batch {args.batch_size}"
          f"{' + CUDA graph' if args.cuda_graph else ''}, trunk -> {args.methods} x seeds {args.seeds}, "
          f"budget {args.budget_s:.0f} s", flush=True)
    meta = {"device": device, "backend": backend, "torch": torch.__version__, "batch_size": args.batch_size,
            "cuda_graph": args.cuda_graph, "budget_s": args.budget_s, "n_test": args.n_test, "n_aa": args.n_aa,
            "aa_version": args.aa_version, "model": args.model, "paired": "trunk + forks (--branch_from)"}
    if args.fixed_epochs:
        epochs, plan = args.fixed_epochs, {}
    else:
        launch([f"probe:{r}" for r in forks], args, deadline)
        probes = [json.loads(p.read_text()) for p in sorted((args.out / "probe").glob("*.json"))]
        if not probes:
            raise SystemExit("every probe run failed: see the logs folder")
        epochs, plan = size_epochs(probes, args, deadline - time.time() - 10.0)
        if not plan["fits"]:
            print("the budget left is too small even for 2 epochs (1 trunk + 1 fork) and evaluation at the probed "
                  "speed: trying 2 epochs; the forks may be cut off", flush=True)
        plan["probe_images_per_s"] = {p["run"]: p["images_per_s"] for p in probes}
        print(f"probe: {sum(plan['probe_images_per_s'].values()):.0f} img/s summed over {len(probes)} runs -> "
              f"{epochs} epochs (trunk ~{plan['trunk_epoch_s']:.0f} s/epoch, forks ~{plan['fork_epoch_s']:.0f} "
              f"s/epoch, evaluation ~{plan['evaluation_s']:.0f} s) in {deadline - time.time():.0f} s left", flush=True)
    trunk_epochs, milestones = schedule(epochs)
    meta.update(epochs=epochs, trunk_epochs=trunk_epochs, lr_milestones=milestones, plan=plan,
                setting=overrides("at", 0, args, epochs, Path("<out>"), branch_from=Path("<trunk>/last.pt")))
    report.write_json(args.out / "meta.json", meta)
    launch([f"trunk:{s}" for s in args.seeds], args, deadline, epochs, trunk_epochs)
    missing = [s for s in args.seeds if not (args.out / "work" / f"trunk_seed{s}" / "last.pt").exists()]
    if missing:
        raise SystemExit(f"the trunk of seed(s) {missing} did not finish: no forks (see {args.out / 'logs'})")
    failed = launch([f"fork:{r}" for r in forks], args, deadline, epochs, trunk_epochs)
    meta["wall_s"] = time.time() - start
    report.write_json(args.out / "meta.json", meta)
    result = report.write_outputs(args.out, meta, curves=True)
    if failed:  # the records written so far stay; 124 = out of time, 1 = a run failed
        raise SystemExit(124 if set(failed.values()) == {124} else 1)
    return result


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/reproduce_gpu"))
    p.add_argument("--budget-s", type=float, default=330.0, help="wall-clock budget of the whole experiment")
    p.add_argument("--methods", default="at,at_fr,at_frwa", help=f"forks, from {sorted(METHODS)}")
    p.add_argument("--seeds", default="0", help="one trunk per seed, e.g. 0,1")
    p.add_argument("--fixed-epochs", type=int, default=None, help="skip the probe and train this many epochs")
    p.add_argument("--max-epochs", type=int, default=40)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default: 128 with --cuda-graph, else 512 (docs/reproduction.md)")
    p.add_argument("--cuda-graph", action="store_true", help="train with the CUDA-graph step (TrainConfig.cuda_graph)")
    p.add_argument("--n-test", type=int, default=10_000)
    p.add_argument("--n-aa", type=int, default=1000)
    p.add_argument("--aa-version", default="fast")
    p.add_argument("--aa-steps", type=int, default=100, help="APGD/FAB iterations of AutoAttack (official: 100)")
    p.add_argument("--val-batches", type=int, default=4, help="validation batches per epoch (0 = all 6000 images)")
    p.add_argument("--train-batches", type=int, default=None, help="cap on training batches per epoch")
    p.add_argument("--probe-batches", type=int, default=20)
    p.add_argument("--threads", type=int, default=3, help="CPU threads per run")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (default: the Debian package's)")
    p.add_argument("--override", action="append", default=[], help="extra config override for every run")
    p.add_argument("--dry-run", action="store_true", help="CPU, generated images, tiny sizes")
    p.add_argument("--in-process", action="store_true", help="run the workers one after another in this process")
    p.add_argument("--summarise-only", action="store_true", help="rebuild the outputs from OUT/runs")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--epochs", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--trunk-epochs", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.process_start = time.perf_counter()
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if unknown := [m for m in args.methods if m not in METHODS]:
        p.error(f"unknown method(s) {unknown} in --methods; choose from {sorted(METHODS)}")
    if args.cuda_graph and not HAS_CUDA_GRAPH:
        p.error("--cuda-graph: the CUDA-graph step is not available in this build (no TrainConfig.cuda_graph)")
    if args.dry_run:
        args.n_test, args.n_aa, args.val_batches, args.probe_batches = 32, 8, 1, 3
        args.batch_size, args.max_epochs, args.threads, args.model = 16, 3, 1, "small_cnn"
        args.aa_steps, args.override = 2, ["--model_kwargs={width: 4}", *args.override]
    if args.batch_size is None:
        args.batch_size = 128 if args.cuda_graph else 512
    args.val_batches = None if args.val_batches == 0 else args.val_batches
    args.device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    return args


def main(argv: list[str] | None = None) -> dict | None:
    args = parse(argv)
    if args.worker:
        return worker(args, args.worker)
    if args.summarise_only:
        return report.write_outputs(args.out, report.meta_of(args.out), curves=True)
    return run_experiment(args)


if __name__ == "__main__":
    main()
