"""Regression check: exit 1 when a fused path is slower than its reference.

    python benchmarks/check.py [--device cpu|cuda] [--tolerance 0.05] [--threads N]
    python benchmarks/check.py --from-json benchmarks/results/ops_cpu.json benchmarks/results/train_cpu.json

Default: a short interleaved measurement (``common.compare``) in this process of
  * the fused ops against ``fr_fast.ops.reference``: FR loss forward+backward (B=128, C=10 and C=100),
    PGD step and random start on 128x3x32x32 (NCHW and channels_last);
  * one AT+FR training step of the small CNN (batch 32, PGD-10): fr_fast against the reference loop.
``--from-json``: the rows of result files written by bench_ops.py (``speedup``) and bench_train.py (rows
marked ``check``: fr_fast against the reference, ``speedup_vs_reference``).
A row fails when fused time > reference time * (1 + tolerance); every failing row is printed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ops import fr_cases, pgd_cases  # noqa: E402
from common import compare  # noqa: E402

import fr_fast  # noqa: E402

Pair = dict[str, Callable[[], object]]


def op_pairs(device: str) -> Iterator[tuple[str, Pair]]:
    """bench_ops.py's cases, fused against reference only: FR B=128 at C=10 and 100, PGD step, random start."""
    yield from fr_cases(device, sizes=((128, 10), (128, 100)), baselines=False)
    yield from pgd_cases(device, baselines=False)


def train_pair(device: str, batch: int) -> tuple[str, Pair]:
    import reference_loop as ref
    from bench_train import make_fast_step, make_model

    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    fast_model, ref_model = make_model("small_cnn", device, True), make_model("small_cnn", device, False)
    fast = make_fast_step("at", fast_model)
    slow = ref.make_step("at", ref_model, ref.make_optimizer(ref_model, lr=0.01))
    return f"AT+FR train step small_cnn B={batch}", {"fused": lambda: fast(x, y), "reference": lambda: slow(x, y)}


def measure(device: str, rounds: int, batch: int) -> list[tuple[str, float]]:
    """(row, speedup = reference time / fused time) from a fresh interleaved measurement."""
    rows = []
    for name, pair in [*op_pairs(device), train_pair(device, batch)]:
        times = compare(pair, rounds=rounds, min_run_time=0.1)
        rows.append((name, times["reference"] / times["fused"]))
    return rows


def from_json(paths: list[Path]) -> list[tuple[str, float]]:
    rows = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"no results file {path}")
        data = json.loads(path.read_text())
        device = data.get("machine", {}).get("device", "?")
        for row in data.get("rows", []):
            if "speedup" in row and "case" in row:  # bench_ops.py
                rows.append((f"[{path.name}] {row['case']} ({device})", float(row["speedup"])))
            elif row.get("check"):  # bench_train.py: fr_fast against the reference loop
                rows.append((f"[{path.name}] {row['model']} {row['method']} {row['row']} B={row['batch']} ({device})",
                             float(row["speedup_vs_reference"])))
    if not rows:
        raise ValueError(f"no checkable rows in {', '.join(map(str, paths))}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-json", nargs="+", type=Path, default=None, metavar="PATH")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="allowed slowdown before a row fails (0.05 = fused may be 5%% slower: timing noise)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32, help="batch of the training-step row")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.tolerance < 0:
        parser.error("--tolerance must be >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.from_json:
        rows = from_json(args.from_json)
    else:
        if args.device == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda but CUDA is not available")
        print(f"backend: {fr_fast.backend(args.device)}", flush=True)
        rows = measure(args.device, args.rounds, args.batch)
    threshold = 1.0 / (1.0 + args.tolerance)
    failed = [(name, speedup) for name, speedup in rows if speedup < threshold]
    for name, speedup in rows:
        print(f"{'FAIL' if speedup < threshold else 'ok  '}  {name:<72} speedup x{speedup:.2f}")
    if failed:
        print(f"\n{len(failed)} row(s) where the fused path is slower than its reference "
              f"(speedup < {threshold:.3f}):", file=sys.stderr)
        for name, speedup in failed:
            print(f"  {name}: x{speedup:.2f}", file=sys.stderr)
        return 1
    print(f"\nall {len(rows)} rows: fused path at least as fast as its reference (tolerance {args.tolerance:.0%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
