"""Fourier heat map speed: batched + conjugate-symmetric ``fourier_heatmap`` vs the one-forward-per-basis
``fourier_heatmap_loop`` on ``small_cnn`` at 28x28 (random weights: speed does not depend on training).

Run as a script (about a minute on a 2-core CPU)::

    PYTHONPATH=. python benchmarks/bench_heatmap.py [--images 8] [--repeats 2] [--device cpu]

It prints a table and writes ``benchmarks/results/heatmap_<device>.json``. Under pytest
(``pytest benchmarks/bench_heatmap.py``) the pytest-benchmark fixtures time a smaller case.
Times are the minimum over repeats (the machine may be shared), loop and fast runs interleaved.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from fr_fast.models import build_model
from fr_fast.spectral import analyses as sp

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE, CHANNELS, CLASSES, NORM = 28, 1, 10, 4.0

VARIANTS = {
    "fast (fp32)": {},
    "fast (fp32, channels_last)": {"channels_last": True},
    "fast (bf16 autocast, channels_last)": {"channels_last": True, "autocast_dtype": torch.bfloat16},
}


def _setup(n_images: int, device: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("small_cnn", CLASSES, in_channels=CHANNELS).to(device).eval()
    x = torch.rand(n_images, CHANNELS, SIZE, SIZE, device=device)
    y = torch.randint(0, CLASSES, (n_images,), device=device)
    signs = sp.heatmap_signs(n_images, CHANNELS, SIZE, SIZE, torch.Generator().manual_seed(seed))
    return model, x, y, signs


def _timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def run(images: list[int], repeats: int, device: str) -> dict:
    rows = []
    for n in images:
        model, x, y, signs = _setup(n, device)
        sp.fourier_heatmap(model, x[:1], y[:1], NORM, signs=signs[:, :, :1])  # warm-up
        times = {"loop": float("inf"), **{k: float("inf") for k in VARIANTS}}
        maps = {}
        for _ in range(repeats):
            t, maps["loop"] = _timed(lambda: sp.fourier_heatmap_loop(model, x, y, NORM, signs=signs))
            times["loop"] = min(times["loop"], t)
            for name, kw in VARIANTS.items():
                t, maps[name] = _timed(lambda: sp.fourier_heatmap(model, x, y, NORM, signs=signs, **kw))
                times[name] = min(times[name], t)
        for name in VARIANTS:
            row = {
                "images": n,
                "variant": name,
                "loop_s": round(times["loop"], 3),
                "fast_s": round(times[name], 3),
                "speedup": round(times["loop"] / times[name], 2),
                # agreement with the reference: max |difference| of the error-rate maps
                "max_abs_diff_vs_loop": float((maps[name] - maps["loop"]).abs().max()),
            }
            rows.append(row)
            print(f"{row['images']:>6}  {row['variant']:<38}{row['loop_s']:>8.2f}{row['fast_s']:>8.2f}"
                  f"{row['speedup']:>8.1f}x{row['max_abs_diff_vs_loop']:>10.3f}", flush=True)
    return {
        "benchmark": "fourier_heatmap vs fourier_heatmap_loop",
        "model": f"small_cnn (random init), {CHANNELS}x{SIZE}x{SIZE}, {CLASSES} classes, eps_norm={NORM}",
        "device": (f"{device} ({torch.cuda.get_device_name(device)})" if device.startswith("cuda")
                   else f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, nargs="+", default=[8])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/heatmap_<device>.json)")
    args = p.parse_args(argv)
    print(f"small_cnn {CHANNELS}x{SIZE}x{SIZE} on {args.device}, min of {args.repeats} runs", flush=True)
    print(f"{'images':>6}  {'variant':<38}{'loop s':>8}{'fast s':>8}{'speedup':>9}{'max|diff|':>10}")
    result = run(args.images, args.repeats, args.device)
    out = args.out or os.path.join(HERE, "results", f"heatmap_{args.device.split(':')[0]}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------- pytest-benchmark entry points
def test_bench_heatmap_fast(benchmark):
    model, x, y, signs = _setup(4, "cpu")
    benchmark.pedantic(lambda: sp.fourier_heatmap(model, x, y, NORM, signs=signs), rounds=2, iterations=1)


def test_bench_heatmap_loop(benchmark):
    model, x, y, signs = _setup(4, "cpu")
    benchmark.pedantic(lambda: sp.fourier_heatmap_loop(model, x, y, NORM, signs=signs), rounds=2, iterations=1)


if __name__ == "__main__":
    raise SystemExit(main())
