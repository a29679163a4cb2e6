"""PGD-20 attack throughput (images/s): the fused training path versus the reference path.

    python benchmarks/bench_attacks.py [--device cpu|cuda] [--batch-size B] [--reps 2] [--threads N]
                                       [--models small_cnn,resnet18] [--channels-last]

* fused: ``fr_fast.robustness.attacks.perturb`` -- parameters frozen during the attack, ``fr_fast.pgd_step_``.
* reference: the same loop written the plain way -- parameters left requiring grad,
  ``fr_fast.ops.reference.pgd_step_`` (a clamp chain), a new x_adv tensor every step.

Both run PGD-20 (eps 8/255, alpha 2/255, random start) on 32x32x3 inputs with the model in eval
mode, alternating fused/reference (order flipped every repetition) so both see the same machine load; the table
gives the best repetition (and the median). Prints a Markdown table and writes
benchmarks/results/attacks_<device>.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from common import machine, write_results

import fr_fast
from fr_fast.models import build_model
from fr_fast.ops import reference
from fr_fast.robustness.attacks import ce_loss, perturb

EPS, ALPHA = 8 / 255, 2 / 255
# CPU defaults keep the whole script under ~3 minutes on a 2-core machine (ResNet18 PGD-20 runs at
# ~1-2 img/s there); on CUDA both models use 128.
CPU_BATCH = {"small_cnn": 128, "resnet18": 32}
CUDA_BATCH = 128


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
    for rep in range(reps):
        order = list(paths.items()) if rep % 2 == 0 else list(paths.items())[::-1]  # no first-runner bias
        for path, fn in order:
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
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"default: {CPU_BATCH} on CPU, {CUDA_BATCH} on CUDA")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is steadier on a shared machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    def batch_for(name: str) -> int:
        if args.batch_size:
            return args.batch_size
        return CUDA_BATCH if args.device == "cuda" else CPU_BATCH.get(name, 64)

    rows = [bench_model(name, args.device, batch_for(name), args.steps, args.reps, args.channels_last)
            for name in args.models.split(",")]
    info = machine(args.device)
    info["backend"] = fr_fast.backend(args.device)
    info["load_avg_1min"] = os.getloadavg()[0]  # other jobs on the machine distort CPU numbers
    lines = [f"PGD-{args.steps} throughput, 32x32x3, best of {args.reps} "
             f"(device {args.device}, backend {info['backend']}, {info['cpu_count']} CPUs, {info['threads']} threads, "
             f"load average {info['load_avg_1min']:.1f}"
             + (f", {info['gpu']}" if "gpu" in info else "") + ")", "",
             "| model | batch | fused img/s | reference img/s | speedup | fused / reference median img/s |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['fused_img_per_s']:.1f} | {r['reference_img_per_s']:.1f} | "
                     f"{r['speedup']:.2f}x | {r['fused_img_per_s_median']:.1f} / {r['reference_img_per_s_median']:.1f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    write_results(f"attacks_{args.device}", {"machine": info, "rows": rows}, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
