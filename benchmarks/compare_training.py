"""Speed must not buy weaker training: fr_fast's step versus the reference loop, same seeds, real data.

    python benchmarks/compare_training.py [--epochs 3] [--seeds 0,1,2] [--threads 1]

Trains the small CNN (width 16) with AT+FR (PGD-5, eps 0.1, alpha 0.025, lam 0.1, SGD lr 0.05, batch 64)
on the 3600 training images of the embedded MNIST subset, once with fr_fast's step (channels_last,
autocast bf16, fused ops, frozen parameters during the attack) and once with the reference loop
(float32, NCHW, torch.fft FR, clamp-chain PGD), from the same initial weights and the same batch order
per seed. Then measures clean and PGD-20 accuracy (float32 attack, ``fr_fast.robustness.attacks.pgd``, alpha eps/4)
and PGD-20 under the autocast-bf16 training attack on the 1000 test images.
"Within noise": |mean(fast) - mean(reference)| <= 2 * noise, with noise the larger of the seed-to-seed
standard deviation and the binomial standard error of a difference of two accuracies on 1000 images.
eps 0.1 (not MNIST's usual 0.3) keeps a 3-epoch model's robust accuracy away from 0 %.
Writes benchmarks/results/train_compare_<device>.{json,md}.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference_loop as ref  # noqa: E402
from bench_train import make_fast_step  # noqa: E402
from common import machine, write_results  # noqa: E402

from fr_fast.data import DATASETS, load_dataset, to_float  # noqa: E402
from fr_fast.models import build_model  # noqa: E402
from fr_fast.robustness.attacks import ce_loss, perturb, pgd  # noqa: E402

EPS, ALPHA, STEPS, BATCH, LR = 0.1, 0.025, 5, 64, 0.05


def train_one(impl: str, seed: int, epochs: int, x: Tensor, y: Tensor) -> tuple[torch.nn.Module, float]:
    info = DATASETS["mnist"]
    fast = impl == "fr_fast"
    torch.manual_seed(seed)
    model = build_model("small_cnn", 10, 1, mean=list(info.mean), std=list(info.std))
    model = model.to(memory_format=torch.channels_last if fast else torch.contiguous_format)
    if fast:
        step = make_fast_step("at", model, eps=EPS, alpha=ALPHA, steps=STEPS, lr=LR)
    else:
        step = ref.make_step("at", model, ref.make_optimizer(model, lr=LR), eps=EPS, alpha=ALPHA, steps=STEPS)
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        torch.manual_seed(seed * 1000 + epoch)  # same attack random starts (up to the op used to draw them)
        for i in range(0, len(order) - BATCH + 1, BATCH):
            idx = order[i:i + BATCH]
            step(x[idx], y[idx])
    return model.eval(), time.perf_counter() - start


def evaluate(model: torch.nn.Module, x: Tensor, y: Tensor, seed: int) -> dict[str, float]:
    def accuracy(inputs: Tensor) -> float:
        with torch.no_grad():
            return 100.0 * (model(inputs).argmax(1) == y).float().mean().item()

    torch.manual_seed(seed)
    adv = torch.cat([pgd(model, xb, yb, eps=EPS, alpha=EPS / 4, steps=20) for xb, yb in zip(x.split(250), y.split(250))])
    torch.manual_seed(seed)
    with torch.autocast("cpu", torch.bfloat16):
        adv_bf16 = torch.cat([perturb(model, xb, yb, ce_loss, eps=EPS, alpha=EPS / 4, steps=20)
                              for xb, yb in zip(x.split(250), y.split(250))])
    return {"clean": accuracy(x), "pgd20": accuracy(adv), "pgd20_bf16_attack": accuracy(adv_bf16.float())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="600 training / 250 test images, 1 epoch, 1 seed")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    train_set, test_set = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    x_train, y_train = to_float(train_set.images), train_set.labels
    x_test, y_test = to_float(test_set.images), test_set.labels
    if args.quick:
        seeds, args.epochs = seeds[:1], 1
        x_train, y_train, x_test, y_test = x_train[:600], y_train[:600], x_test[:250], y_test[:250]

    runs = []
    for seed in seeds:
        for impl in ("reference", "fr_fast"):
            model, seconds = train_one(impl, seed, args.epochs, x_train, y_train)
            metrics = evaluate(model, x_test, y_test, seed=10_000 + seed)
            runs.append({"impl": impl, "seed": seed, "train_s": seconds, **metrics})
            print(f"{impl:9} seed {seed}: train {seconds:6.1f} s  clean {metrics['clean']:5.1f} %  "
                  f"PGD-20 {metrics['pgd20']:5.1f} %  PGD-20 (bf16 attack) {metrics['pgd20_bf16_attack']:5.1f} %",
                  flush=True)

    verdicts = {}
    n = len(x_test)
    for key in ("clean", "pgd20"):
        by_impl = {impl: [r[key] for r in runs if r["impl"] == impl] for impl in ("reference", "fr_fast")}
        means = {impl: statistics.fmean(v) for impl, v in by_impl.items()}
        p = means["reference"] / 100
        binomial = 100 * math.sqrt(2 * p * (1 - p) / n)
        seed_sd = max((statistics.stdev(v) for v in by_impl.values() if len(v) > 1), default=0.0)
        noise = max(binomial, seed_sd)
        diff = means["fr_fast"] - means["reference"]
        verdicts[key] = {"reference_mean": means["reference"], "fr_fast_mean": means["fr_fast"], "diff": diff,
                         "noise": noise, "within_noise": abs(diff) <= 2 * noise}

    info = {**machine("cpu"), "epochs": args.epochs, "eps": EPS, "alpha": ALPHA, "attack_steps": STEPS,
            "batch": BATCH, "lr": LR, "train_images": len(x_train), "test_images": n}
    lines = [f"AT+FR small CNN on embedded MNIST ({len(x_train)} train / {n} test images, {args.epochs} epochs, "
             f"PGD-{STEPS} eps {EPS}), fr_fast step vs reference loop, same seeds; {info['cpu']}, "
             f"{info['threads']} threads, torch {info['torch']}, {info['date']}.", "",
             "| step | seed | train s | clean % | PGD-20 % (fp32 attack) | PGD-20 % (bf16 attack) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(f"| {r['impl']} | {r['seed']} | {r['train_s']:.1f} | {r['clean']:.1f} | {r['pgd20']:.1f} | "
                     f"{r['pgd20_bf16_attack']:.1f} |")
    lines.append("")
    for key, v in verdicts.items():
        lines.append(f"- {key}: fr_fast {v['fr_fast_mean']:.1f} % vs reference {v['reference_mean']:.1f} % "
                     f"(diff {v['diff']:+.1f}, noise {v['noise']:.1f}): "
                     f"{'within' if v['within_noise'] else 'OUTSIDE'} 2x noise")
    markdown = "\n".join(lines) + "\n"
    print("\n" + markdown)
    if not args.quick:
        write_results("train_compare_cpu", {"machine": info, "runs": runs, "verdicts": verdicts}, markdown)
    return 0 if all(v["within_noise"] for v in verdicts.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
