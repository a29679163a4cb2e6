"""PGD-20 attack throughput (images/s): the fused training path versus the reference path.

    python benchmarks/bench_attacks.py [--device cpu|cuda] [--batch-size 64] [--reps 2] [--models small_cnn,resnet18]

* fused: ``fr_fast.attacks.perturb`` -- parameters frozen during the attack, ``fr_fast.pgd_step_``.
* reference: the same loop written the plain way -- parameters left requiring grad,
  ``fr_fast.reference.pgd_step_`` (a clamp chain), a new x_adv tensor every step.

Both run PGD-20 (eps 8/255, alpha 2/255, random start) on 32x32x3 inputs with the model in eval
mode, alternating fused/reference each repetition so both see the same machine load; the table
gives the best repetition (and the median). Prints a Markdown table and writes
benchmarks/results/attacks_<device>.{json,md}.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import fr_fast
from fr_fast import reference
from fr_fast.attacks import ce_loss, perturb
from fr_fast.models import build_model

from common import machine, write_results

EPS, ALPHA = 8 / 255, 2 / 255


def reference_pgd(model, x, y, steps):
    """PGD the way it is usually written: no frozen parameters, no in-place buffer."""
    x_adv = reference.random_start_(torch.empty_like(x), x, EPS)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        grad, = torch.autograd.grad(loss, x_adv)
        x_adv = reference.pgd_step_(x_adv.detach().clone(), grad, x, ALPHA, EPS)
    return x_adv


def fused_pgd(model, x, y, steps):
    return perturb(model, x, y, ce_loss, eps=EPS, alpha=ALPHA, steps=steps)


def _timed(fn, device) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_model(name: str, device: str, batch: int, steps: int, reps: int, channels_last: bool) -> dict:
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(name, 10).to(device, memory_format=fmt).eval()
    x = torch.rand(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)
    paths = {"fused": fused_pgd, "reference": reference_pgd}
    for fn in paths.values():  # warm-up: allocator, lazy init, cudnn autotuning
        fn(model, x, y, 2)
    seconds = {path: [] for path in paths}
    for _ in range(reps):
        for path, fn in paths.items():
            seconds[path].append(_timed(lambda: fn(model, x, y, steps), device))
    row = {"model": name, "batch": batch, "steps": steps, "reps": reps, "channels_last": channels_last}
    for path, values in seconds.items():
        row[f"{path}_s"] = values
        # best-of-reps: on a shared machine the minimum is the least disturbed measurement
        row[f"{path}_img_per_s"] = batch / min(values)
        row[f"{path}_img_per_s_median"] = batch / statistics.median(values)
    row["speedup"] = row["fused_img_per_s"] / row["reference_img_per_s"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--models", default="small_cnn,resnet18")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args(argv)

    rows = [bench_model(name, args.device, args.batch_size, args.steps, args.reps, args.channels_last)
            for name in args.models.split(",")]
    info = machine(args.device)
    info["backend"] = fr_fast.backend(args.device)
    lines = [f"PGD-{args.steps} throughput, 32x32x3, batch {args.batch_size}, best of {args.reps} "
             f"(device {args.device}, backend {info['backend']}, {info['cpu_count']} CPUs, {info['threads']} threads"
             + (f", {info['gpu']}" if "gpu" in info else "") + ")", "",
             "| model | fused img/s | reference img/s | speedup | fused / reference median img/s |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['fused_img_per_s']:.1f} | {r['reference_img_per_s']:.1f} | "
                     f"{r['speedup']:.2f}x | {r['fused_img_per_s_median']:.1f} / {r['reference_img_per_s_median']:.1f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    write_results(f"attacks_{args.device}", {"machine": info, "rows": rows}, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
