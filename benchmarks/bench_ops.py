"""Fused ops versus their references, measured side by side in one run.

    python benchmarks/bench_ops.py [--device cpu|cuda] [--quick]

Prints a Markdown table of speedups and the PGD step's bandwidth as a fraction of a plain copy,
and writes benchmarks/results/ops_<device>.{json,md}.
"""
from __future__ import annotations

import argparse
import os

import torch

import fr_fast
from fr_fast import reference

from common import compare, machine, write_results


def fr_cases(device: str, quick: bool):
    for batch in (128, 512):
        for classes in (10, 100, 200):
            if quick and batch == 512:
                continue
            a = torch.randn(batch, classes, device=device, requires_grad=True)
            b = torch.randn(batch, classes, device=device, requires_grad=True)

            def fused(a=a, b=b):
                fr_fast.fr_loss(a, b).backward()

            def ref(a=a, b=b):
                reference.fr_loss(a, b).backward()

            yield f"FR loss fwd+bwd B={batch} C={classes}", {"fused": fused, "reference": ref}


def pgd_cases(device: str):
    shape = (128, 3, 32, 32)
    for fmt_name, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        x_nat = torch.rand(shape, device=device).contiguous(memory_format=fmt)
        grad = torch.randn(shape, device=device).contiguous(memory_format=fmt)
        x_adv = x_nat.clone()
        yield f"PGD step 128x3x32x32 {fmt_name}", {
            "fused": lambda: fr_fast.pgd_step_(x_adv, grad, x_nat, 2 / 255, 8 / 255),
            "reference": lambda: reference.pgd_step_(x_adv, grad, x_nat, 2 / 255, 8 / 255),
            "clone": lambda: x_nat.clone(),
        }
        yield f"random start 128x3x32x32 {fmt_name}", {
            "fused": lambda: fr_fast.random_start_(x_adv, x_nat, 8 / 255),
            "reference": lambda: reference.random_start_(x_adv, x_nat, 8 / 255),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="fewer cases and rounds (smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--tag", default="", help="suffix of the results files (ops_<device>_<tag>)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = 2 if args.quick else 5
    rows = []
    for name, candidates in [*fr_cases(args.device, args.quick), *pgd_cases(args.device)]:
        times = compare(candidates, rounds=rounds, min_run_time=0.05 if args.quick else 0.2)
        row = {"case": name, "fused_us": times["fused"] * 1e6, "reference_us": times["reference"] * 1e6,
               "speedup": times["reference"] / times["fused"]}
        if "clone" in times:
            # the step reads 3 tensors and writes 1, a clone reads 1 and writes 1
            row["clone_us"] = times["clone"] * 1e6
            row["copy_bandwidth_fraction"] = 2 * times["clone"] / times["fused"]
        rows.append(row)
        print(f"{name:<44} fused {row['fused_us']:9.1f} us  reference {row['reference_us']:9.1f} us  "
              f"x{row['speedup']:.2f}" + (f"  copy-bw {row['copy_bandwidth_fraction']:.0%}" if "clone_us" in row else ""),
              flush=True)
    info = {**machine(args.device), "backend": fr_fast.backend(args.device), "load_average": os.getloadavg()}
    header = (f"Fused ops vs reference on {info.get('gpu', info['cpu'])} ({args.device}, {info['threads']} threads, "
              f"torch {info['torch']}, backend {info['backend']}, {info['date']}, load average "
              f"{info['load_average'][0]:.2f}). Median of {rounds} interleaved rounds.\n\n")
    table = ["| case | fused (µs) | reference (µs) | speedup | step bandwidth / copy bandwidth |",
             "|---|---:|---:|---:|---:|"]
    for row in rows:
        bandwidth = f"{row['copy_bandwidth_fraction']:.0%}" if "copy_bandwidth_fraction" in row else ""
        table.append(f"| {row['case']} | {row['fused_us']:.1f} | {row['reference_us']:.1f} | {row['speedup']:.2f}× | {bandwidth} |")
    markdown = header + "\n".join(table) + "\n"
    print("\n" + markdown)
    if not args.quick:
        write_results(f"ops_{args.device}" + (f"_{args.tag}" if args.tag else ""), {"machine": info, "rows": rows}, markdown)


if __name__ == "__main__":
    main()
