"""Fused ops versus their references and the best pure-PyTorch forms, measured side by side in one run.

    python benchmarks/bench_ops.py [--device cpu|cuda] [--quick] [--no-compile]

Rows: the FR loss forward+backward in the presets' 2-D form (fused; torch.fft2 reference; fft2 of the
difference; two GEMMs against the full DFT bases) and in the 1-D
form (fused; torch.fft reference; a matmul against the real-DFT basis [cos | -sin], eager and
torch.compile'd), the PGD step (fused; clamp chain, eager and compiled), the random start, the Python cost
of one PGD step call on a 1-element tensor against an in-place add_, and (``--large``, CUDA) the PGD step on
512x3x224x224 float32 and bfloat16 in GB/s and % of the GPU's HBM peak (``--hbm-gbs``, else the datasheet
figure of the GPU's name). Each row is appended to ``--jsonl`` the moment it is measured. torch.compile
baselines are built before the timed cases and skipped (with a note) when ``--budget-s`` leaves too little.
Prints a Markdown table of ratios (a ratio > 1 means the fused op is faster) and the PGD step's
bandwidth as a fraction of a plain copy, and writes benchmarks/results/ops_<device>.{json,md}. A
baseline that torch.compile cannot build is skipped with a note.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from typing import Callable, Iterator

import torch
from common import compare, machine, write_results

import fr_fast
from fr_fast.ops import reference

Candidates = dict[str, Callable[[], object]]
FR_SIZES = ((128, 10), (128, 100), (128, 200), (512, 10), (512, 100), (512, 200))
QUICK_FR_SIZES = ((128, 10), (128, 100))
FR2D_SIZES = ((128, 10), (128, 100), (128, 200), (512, 200), (1024, 1000))
IMAGE_SHAPE = (128, 3, 32, 32)
LARGE_SHAPE = (512, 3, 224, 224)
# HBM bandwidth of the datasheets (GB/s), by a substring of torch.cuda.get_device_name().
HBM_GBS = {"H100 80GB HBM3": 3350.0, "H100 PCIe": 2000.0, "H100 NVL": 3900.0, "H200": 4800.0, "A100-SXM4-80GB": 2039.0,
           "A100-SXM4-40GB": 1555.0, "A100-PCIE": 1555.0}
COMPILE_COST_S = 30.0  # what the two torch.compile baselines cost to build on a GPU machine (first run: ~25 s)
notes: list[str] = []


def dft_basis(classes: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The (C, 2K) real-DFT basis [cos | -sin] over the K = C/2 + 1 distinct bins and the (2K,) bin weights."""
    n = torch.arange(classes, dtype=torch.float64)
    k = torch.arange(classes // 2 + 1, dtype=torch.float64)
    angle = 2 * math.pi * torch.remainder(n[:, None] * k[None, :], classes) / classes
    weight = torch.full_like(k, 2.0)
    weight[0] = 1.0
    if classes % 2 == 0:
        weight[-1] = 1.0
    basis = torch.cat([angle.cos(), -angle.sin()], dim=1)
    return basis.float().to(device), torch.cat([weight, weight]).float().to(device)


def matmul_fr_loss(a: torch.Tensor, b: torch.Tensor, basis: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The FR L1 distance as one GEMM against the real-DFT basis: the best pure-PyTorch form."""
    return ((a - b) @ basis).abs().matmul(weight).mean()


def compiled(name: str, fn: Callable, probe: Callable[[Callable], object], enabled: bool,
             dynamic: bool | None = None) -> Callable | None:
    """torch.compile(fn), built and checked by one call of ``probe``; None (and a note) when it fails."""
    if not enabled:
        return None
    try:
        built = torch.compile(fn, dynamic=dynamic)
        probe(built)
        return built
    except Exception as error:  # any backend failure: the row is skipped, the run goes on
        notes.append(f"{name}: torch.compile failed ({type(error).__name__}: {str(error).splitlines()[0][:120]}); row skipped")
        return None


def fr_cases(device: str, sizes=FR_SIZES, baselines: bool = True, compile_rows: bool = True) -> Iterator[tuple[str, Candidates]]:
    compiled_matmul = None
    for batch, classes in sizes:
        a = torch.randn(batch, classes, device=device, requires_grad=True)
        b = torch.randn(batch, classes, device=device, requires_grad=True)
        candidates = {"fused": lambda a=a, b=b: fr_fast.fr_loss(a, b).backward(),
                      "reference": lambda a=a, b=b: reference.fr_loss(a, b).backward()}
        if baselines:
            basis, weight = dft_basis(classes, device)
            expected = reference.fr_loss(a.detach(), b.detach())
            torch.testing.assert_close(matmul_fr_loss(a.detach(), b.detach(), basis, weight), expected,
                                       rtol=1e-4, atol=1e-4)
            candidates["matmul"] = lambda a=a, b=b, m=basis, w=weight: matmul_fr_loss(a, b, m, w).backward()
            compiled_matmul = compiled_matmul or compiled(
                "FR matmul", matmul_fr_loss, lambda fn: fn(a, b, basis, weight).backward(), compile_rows,
                dynamic=True)  # one compile for every (B, C): compile time stays small on a GPU run
            if compiled_matmul is not None:
                candidates["matmul_compiled"] = (
                    lambda a=a, b=b, m=basis, w=weight, fn=compiled_matmul: fn(a, b, m, w).backward())
        yield f"FR loss fwd+bwd B={batch} C={classes}", candidates


def dft_2d_bases(batch: int, classes: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """[cos; sin] over the batch (2B, B) and [cos | sin] over the classes (C, 2C) of the full 2-D DFT."""
    def cos_sin(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = torch.arange(n, dtype=torch.float64)
        angle = 2 * math.pi * torch.remainder(k[:, None] * k[None, :], n) / n
        return angle.cos(), angle.sin()
    (cos_b, sin_b), (cos_c, sin_c) = cos_sin(batch), cos_sin(classes)
    return torch.cat([cos_b, sin_b]).float().to(device), torch.cat([cos_c, sin_c], 1).float().to(device)


def matmul_fr2d_loss(a: torch.Tensor, b: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The 2-D FR L1 as two GEMMs: Re X = Cb D Cc - Sb D Sc, -Im X = Sb D Cc + Cb D Sc."""
    batch, classes = a.shape
    blocks = rows @ ((a - b) @ cols)  # (2B, 2C): [[CDC, CDS], [SDC, SDS]]
    cdc, cds, sdc, sds = blocks[:batch, :classes], blocks[:batch, classes:], blocks[batch:, :classes], blocks[batch:, classes:]
    return ((cdc - sds).abs().sum() + (sdc + cds).abs().sum()) / (2 * batch * classes)


def fr2d_cases(device: str, sizes=FR2D_SIZES) -> Iterator[tuple[str, Candidates]]:
    """The presets' FR (fft 2d): fused; the torch.fft2 reference; fft2 of the difference; two GEMMs."""
    for batch, classes in sizes:
        a = torch.randn(batch, classes, device=device, requires_grad=True)
        b = torch.randn(batch, classes, device=device, requires_grad=True)
        rows, cols = dft_2d_bases(batch, classes, device)
        expected = reference.fr_loss(a.detach(), b.detach(), fft="2d")
        torch.testing.assert_close(matmul_fr2d_loss(a.detach(), b.detach(), rows, cols), expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fr_fast.fr_loss(a.detach(), b.detach(), fft="2d"), expected, rtol=1e-5, atol=1e-5)
        yield f"FR 2d loss fwd+bwd B={batch} C={classes}", {
            "fused": lambda a=a, b=b: fr_fast.fr_loss(a, b, fft="2d").backward(),
            "reference": lambda a=a, b=b: reference.fr_loss(a, b, fft="2d").backward(),
            "fft2_of_difference": lambda a=a, b=b: torch.view_as_real(torch.fft.fft2(a - b)).abs().mean().backward(),
            "matmul": lambda a=a, b=b, r=rows, c=cols: matmul_fr2d_loss(a, b, r, c).backward()}


def large_step_rows(device: str, hbm_gbs: float | None, rounds: int, batch: int = 512) -> Iterator[dict]:
    """The PGD step on 512x3x224x224 (float32, bfloat16): GB/s moved (3 reads + 1 write) and % of HBM peak."""
    for dtype in (torch.float32, torch.bfloat16):
        shape = (batch, *LARGE_SHAPE[1:])
        x_nat = torch.rand(shape, device=device).to(dtype)
        grad, x_adv = torch.randn_like(x_nat), x_nat.clone()
        name = f"PGD step {'x'.join(map(str, shape))} {str(dtype)[6:]}"
        row = measure(name, {
            "fused": lambda x_adv=x_adv, g=grad, x0=x_nat: fr_fast.pgd_step_(x_adv, g, x0, 2 / 255, 8 / 255),
            "reference": lambda x_adv=x_adv, g=grad, x0=x_nat: reference.pgd_step_(x_adv, g, x0, 2 / 255, 8 / 255),
            "clone": lambda x0=x_nat: x0.clone()}, rounds, 0.2)
        moved = 4 * x_nat.numel() * x_nat.element_size()
        row["fused_gb_s"] = moved / (row["fused_us"] * 1e-6) / 1e9
        row["hbm_peak_gb_s"] = hbm_gbs
        row["hbm_fraction"] = row["fused_gb_s"] / hbm_gbs if hbm_gbs else None
        yield row


def hbm_peak(device: str, given: float | None) -> float | None:
    if given or device != "cuda":
        return given
    name = torch.cuda.get_device_name()
    return next((gbs for key, gbs in HBM_GBS.items() if key in name), None)


def pgd_cases(device: str, baselines: bool = True, compile_rows: bool = True) -> Iterator[tuple[str, Candidates]]:
    compiled_step = None
    for fmt_name, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        x_nat = torch.rand(IMAGE_SHAPE, device=device).contiguous(memory_format=fmt)
        grad = torch.randn_like(x_nat)
        x_adv = x_nat.clone()
        shape = "x".join(map(str, IMAGE_SHAPE))
        step = {"fused": lambda x_adv=x_adv, g=grad, x0=x_nat: fr_fast.pgd_step_(x_adv, g, x0, 2 / 255, 8 / 255),
                "reference": lambda x_adv=x_adv, g=grad, x0=x_nat: reference.pgd_step_(x_adv, g, x0, 2 / 255, 8 / 255)}
        if baselines:
            compiled_step = compiled_step or compiled(
                "clamp chain", reference.pgd_step_, lambda fn: fn(x_adv.clone(), grad, x_nat, 2 / 255, 8 / 255),
                compile_rows)
            if compiled_step is not None:
                step["reference_compiled"] = (
                    lambda x_adv=x_adv, g=grad, x0=x_nat, fn=compiled_step: fn(x_adv, g, x0, 2 / 255, 8 / 255))
            step["clone"] = lambda x0=x_nat: x0.clone()
        yield f"PGD step {shape} {fmt_name}", step
        yield f"random start {shape} {fmt_name}", {
            "fused": lambda x_adv=x_adv, x0=x_nat: fr_fast.random_start_(x_adv, x0, 8 / 255),
            "reference": lambda x_adv=x_adv, x0=x_nat: reference.random_start_(x_adv, x0, 8 / 255)}


def call_overhead_case(device: str) -> tuple[str, Candidates]:
    """The Python + dispatch cost of one step call, next to the cheapest in-place op on the same tensor."""
    x_adv, grad, x_nat = (torch.rand(1, device=device) for _ in range(3))
    return "PGD step call, 1 element (vs add_)", {
        "fused": lambda: fr_fast.pgd_step_(x_adv, grad, x_nat, 2 / 255, 8 / 255),
        "reference": lambda: reference.pgd_step_(x_adv, grad, x_nat, 2 / 255, 8 / 255),
        "add_": lambda: x_adv.add_(grad)}


def measure(name: str, candidates: Candidates, rounds: int, min_run_time: float) -> dict:
    times = compare(candidates, rounds=rounds, min_run_time=min_run_time)
    fused = times["fused"]
    row = {"case": name, "fused_us": fused * 1e6, "reference_us": times["reference"] * 1e6,
           "speedup": times["reference"] / fused}
    for other in candidates.keys() - {"fused", "reference"}:
        row[f"{other}_us"] = times[other] * 1e6
        row[f"speedup_vs_{other}"] = times[other] / fused
    if "clone" in times:  # the step reads 3 tensors and writes 1, a clone reads 1 and writes 1
        row["copy_bandwidth_fraction"] = 2 * times["clone"] / fused
    return row


def describe(row: dict) -> str:
    """The row's baselines as 'name t µs (×ratio)', ratio = baseline time / fused time."""
    names = [key[len("speedup_vs_"):] for key in row if key.startswith("speedup_vs_")]
    return ", ".join(f"{name} {row[f'{name}_us']:.1f} µs (×{row[f'speedup_vs_{name}']:.2f})" for name in sorted(names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="fewer cases and rounds (smoke run)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd baselines")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--tag", default="", help="suffix of the results files (ops_<device>_<tag>)")
    parser.add_argument("--jsonl", default=None, help="append every row here the moment it is measured")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="time this call may take: the torch.compile baselines are skipped when it cannot "
                             f"afford their build (~{COMPILE_COST_S:.0f} s)")
    parser.add_argument("--large", action="store_true", help="add the 512x3x224x224 PGD-step bandwidth rows")
    parser.add_argument("--large-batch", type=int, default=512, help="batch of the large rows (dry runs: small)")
    parser.add_argument("--hbm-gbs", type=float, default=None, help="HBM peak in GB/s (default: by GPU name)")
    parser.add_argument("--only", default=None, help="comma list of case families: fr2d, fr, pgd, call, large")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = 2 if args.quick else 5
    compile_rows = not args.no_compile
    if compile_rows and args.budget_s is not None and args.budget_s < 2 * COMPILE_COST_S:
        compile_rows = False
        notes.append(f"torch.compile baselines skipped: a {args.budget_s:.0f} s budget cannot afford their "
                     f"~{COMPILE_COST_S:.0f} s build")
    families = set((args.only or "fr2d,fr,pgd,call,large").split(","))
    # Built here, before any case is timed (the generators compile their baselines on creation).
    cases = [*(fr2d_cases(args.device, FR2D_SIZES[:1] if args.quick else FR2D_SIZES) if "fr2d" in families else []),
             *(fr_cases(args.device, QUICK_FR_SIZES if args.quick else FR_SIZES, compile_rows=compile_rows)
               if "fr" in families else []),
             *(pgd_cases(args.device, compile_rows=compile_rows) if "pgd" in families else []),
             *([call_overhead_case(args.device)] if "call" in families else [])]
    rows = []

    def keep(row: dict) -> None:
        rows.append(row)
        if args.jsonl:
            with open(args.jsonl, "a") as fh:
                fh.write(json.dumps({**row, "device": args.device}) + "\n")
        gbs = f"  {row['fused_gb_s']:.0f} GB/s" if "fused_gb_s" in row else ""
        hbm = f" ({row['hbm_fraction']:.0%} of HBM)" if row.get("hbm_fraction") else ""
        print(f"{row['case']:<40} fused {row['fused_us']:9.1f} us  reference {row['reference_us']:9.1f} us  "
              f"x{row['speedup']:.2f}{gbs}{hbm}  {describe(row)}", flush=True)

    for name, candidates in cases:
        keep(measure(name, candidates, rounds, 0.05 if args.quick else 0.2))
    if args.large and "large" in families:
        for row in large_step_rows(args.device, hbm_peak(args.device, args.hbm_gbs), rounds, args.large_batch):
            keep(row)
    info = {**machine(args.device), "backend": fr_fast.backend(args.device), "load_average": os.getloadavg()}
    header = (f"Fused ops vs reference on {info.get('gpu', info['cpu'])} ({args.device}, {info['threads']} threads, "
              f"torch {info['torch']}, backend {info['backend']}, {info['date']}, load average "
              f"{info['load_average'][0]:.2f}). Median of {rounds} interleaved rounds; ×r = other time / fused time.\n\n")
    table = ["| case | fused (µs) | reference (µs) | speedup | other baselines | step bandwidth / copy bandwidth |",
             "|---|---:|---:|---:|---|---:|"]
    for row in rows:
        bandwidth = f"{row['copy_bandwidth_fraction']:.0%}" if "copy_bandwidth_fraction" in row else ""
        table.append(f"| {row['case']} | {row['fused_us']:.1f} | {row['reference_us']:.1f} | {row['speedup']:.2f}× "
                     f"| {describe(row)} | {bandwidth} |")
    markdown = header + "\n".join(table) + "\n" + "".join(f"\nNote: {note}" for note in notes) + "\n"
    print("\n" + markdown)
    if not args.quick:
        write_results(f"ops_{args.device}" + (f"_{args.tag}" if args.tag else ""),
                      {"machine": info, "rows": rows, "notes": notes}, markdown)


if __name__ == "__main__":
    main()
