"""Images/s of one AT+FR (and TRADES+FR) training step: fr_fast versus the reference loop, same run.

    python benchmarks/bench_train.py [--device cpu|cuda] [--quick] [--no-compile] [--models small_cnn,resnet18]

Rows per model (synthetic 32x32x3 images, 10 classes, PGD-10 eps 8/255 alpha 2/255, lam 0.1):
the reference loop (``reference_loop.py``: float32, NCHW, torch.fft FR, clamp-chain PGD, parameter
gradients during the attack), then the ablation -- the features of fr_fast switched on *cumulatively*
inside that same loop, from the reference upward (fused ops, no parameter gradients in the attack,
channels_last, autocast bf16) -- then the library's real step (``fr_fast.training.train.make_step``, the step
``train()`` runs: attack, loss, GradScaler, SGD update; channels_last + autocast bf16), then the same
with ``torch.compile``, then "fr_fast step, CUDA graph": the ``cuda_graph`` step (the presets' FR form,
fft 2d), warmed up and captured before any timing so that only replays are timed (on the CPU the same
sync-free step without capture), and "fr_fast (fft 1d)" beside it. All candidates of one model are timed in one
process, the reference first: warm-up calls (compilation and CUDA-graph capture included) outside the timed
region, then the median of ``--blocks`` (>= 5) timed blocks, wall clock and CUDA-event GPU time; each row is
appended to ``--jsonl`` the moment it is measured, and ``--rows`` selects rows by name.

MFU: the FLOPs of one fr_fast step (``torch.utils.flop_counter.FlopCounterMode``; the useful work, the
same for every row) times the measured steps/s, as a fraction of the matmul peak measured in the same
run (bf16 peak for autocast rows; for float32 rows the TF32 peak on CUDA, where cuDNN runs float32
convolutions in TF32 by default, else the fp32 peak; the best ``torch.mm`` rate of two sizes, before and
after the steps). On CUDA a GPU-time column (CUDA events around back-to-back steps) sits beside wall time. The reference step itself executes more FLOPs (weight gradients in every
attack step); that count is reported as well. On CPU, oneDNN's convolutions can beat ``torch.mm``, so an
MFU above 100 % means the mm "peak" under-estimates the machine, not a counting error.

Also: the attack-strength check -- PGD-20 robust accuracy of one fixed model (a small CNN adversarially
trained on the embedded MNIST subset for one epoch) under the float32 attack and under the autocast-bf16
attack used inside training. Writes benchmarks/results/train_<device>[_<tag>].{json,md}.
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
from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference_loop as ref  # noqa: E402
from common import machine, write_results  # noqa: E402

import fr_fast  # noqa: E402
from fr_fast.config.train_config import TrainConfig  # noqa: E402
from fr_fast.data import DATASETS, load_dataset, to_float  # noqa: E402
from fr_fast.models import build_model  # noqa: E402
from fr_fast.robustness.attacks import ce_loss, perturb, pgd  # noqa: E402
from fr_fast.training import sync_free  # noqa: E402
from fr_fast.training.runtime import resolve_amp  # noqa: E402
from fr_fast.training.state import TrainState  # noqa: E402
from fr_fast.training.train import make_step  # noqa: E402

NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)

Step = Callable[[Tensor, Tensor], float]


# ----------------------------------------------------------------------------------------- the steps
def make_model(name: str, device: str, channels_last: bool, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return build_model(name, NUM_CLASSES, 3).to(device=device, memory_format=fmt)


def make_fast_step(method: str, model: nn.Module, *, eps: float = ref.EPS, alpha: float = ref.ALPHA,
                   steps: int = ref.STEPS, lam: float = ref.LAM, lr: float = 0.01, amp: str = "bf16",
                   channels_last: bool = True, compile_model: bool = False, compile_mode: str = "default",
                   fft: str | None = None, cuda_graph: bool = False) -> Step:
    """fr_fast's training step: the trainer's own :func:`fr_fast.training.train.make_step` for ``method`` + FR.

    The config is the trainer's (SGD momentum 0.9, wd 5e-4, GradScaler, FR from the first epoch); the
    model must already be in the matching memory format. Returns ``step(x, y) -> loss``.
    """
    cfg = TrainConfig(method=method, fr="fr", fr_start_epoch=0, lam=lam, eps=eps, alpha=alpha, attack_steps=steps,
                      lr=lr, amp=amp, channels_last=channels_last, compile=compile_model, compile_mode=compile_mode,
                      cuda_graph=cuda_graph, **({} if fft is None else {"fft": fft}))
    state = TrainState(cfg, model, resolve_amp(amp, next(model.parameters()).device))
    step = make_step(cfg, state, epoch=0)
    if cuda_graph:  # the sync-free step returns nothing (its statistics stay on the device)
        return step
    return lambda x, y: step(x, y).loss


def graph_row(device: str) -> str:
    return "fr_fast step, CUDA graph" if device == "cuda" else f"fr_fast step, sync-free (no capture on {device})"


def graph_candidates(method: str, model_name: str, device: str, x: Tensor,
                     y: Tensor) -> dict[str, tuple[Step, torch.dtype | None]]:
    """The ``cuda_graph`` step (the presets' FR form, fft 2d; bf16, channels_last), warmed up and captured here,
    before any timing: the timed calls are replays (on the CPU: the sync-free step, no capture)."""
    model = make_model(model_name, device, True)
    step = make_fast_step(method, model, fft="2d", cuda_graph=True)
    for _ in range(sync_free.WARMUP_BATCHES + 1):  # eager warm-up batches, then the capture (and a replay)
        step(x, y)
    sync(device)
    return {graph_row(device): (step, torch.bfloat16)}


def candidates(method: str, model_name: str, device: str, ablation: bool, with_compile: bool,
               trainer_defaults: bool) -> dict[str, tuple[Step, torch.dtype | None]]:
    """name -> (step, compute dtype); every candidate owns a copy of the same initial model."""
    rows: dict[str, tuple[Step, torch.dtype | None]] = {}
    cumulative = [("reference", ref.Features())]
    if ablation:
        cumulative += [
            ("+ fused ops", ref.Features(fused_ops=True)),
            ("+ no param-grads in attack", ref.Features(fused_ops=True, frozen_params=True)),
            ("+ channels_last", ref.Features(fused_ops=True, frozen_params=True, channels_last=True)),
            ("+ autocast bf16", ref.Features(fused_ops=True, frozen_params=True, channels_last=True,
                                             autocast_bf16=True)),
        ]
    for label, feats in cumulative:
        model = make_model(model_name, device, feats.channels_last)
        step = ref.make_step(method, model, ref.make_optimizer(model, lr=0.01), features=feats)
        rows[label] = (step, torch.bfloat16 if feats.autocast_bf16 else None)
    if trainer_defaults:  # what `fr-fast train` runs on CPU by default (amp off, NCHW)
        model = make_model(model_name, device, False)
        rows["fr_fast fp32 NCHW (trainer CPU default)"] = (
            make_fast_step(method, model, amp="off", channels_last=False), None)
    model = make_model(model_name, device, True)
    rows["fr_fast"] = (make_fast_step(method, model), torch.bfloat16)  # the presets' FR form (fft 2d, the default)
    model = make_model(model_name, device, True)
    rows["fr_fast (fft 1d)"] = (make_fast_step(method, model, fft="1d"), torch.bfloat16)
    if with_compile:
        model = make_model(model_name, device, True)
        rows["fr_fast + torch.compile"] = (
            make_fast_step(method, model, compile_model=True), torch.bfloat16)
        if device == "cuda":  # CUDA graphs: the launch-bound regime of small models and batches
            model = make_model(model_name, device, True)
            rows["fr_fast + torch.compile(reduce-overhead)"] = (
                make_fast_step(method, model, compile_model=True, compile_mode="reduce-overhead"), torch.bfloat16)
    return rows


# ------------------------------------------------------------------------------------------ timing
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_step(step: Step, x: Tensor, y: Tensor, device: str, blocks: int, min_block_s: float,
              warmup: int = 3) -> dict[str, float]:
    """Seconds per step: median of ``blocks`` timed blocks of n calls each (wall clock; CUDA events too).

    Warm-up first, outside every timed block: ``warmup`` calls, which include torch.compile's compilation
    and CUDA-graph recording/capture; then n is chosen so that one block lasts about ``min_block_s``.
    """
    for _ in range(warmup):
        step(x, y)
    sync(device)
    start = time.perf_counter()
    step(x, y)
    sync(device)
    calls = max(1, int(min_block_s / max(time.perf_counter() - start, 1e-6)))
    wall, gpu = [], []
    for _ in range(blocks):
        if device == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
        start = time.perf_counter()
        for _ in range(calls):
            step(x, y)
        if device == "cuda":
            end.record()
        sync(device)
        wall.append((time.perf_counter() - start) / calls)
        if device == "cuda":
            gpu.append(begin.elapsed_time(end) / 1e3 / calls)
    return {"wall_s": statistics.median(wall), "gpu_s": statistics.median(gpu) if gpu else None,
            "calls_per_block": calls, "blocks": blocks}


def append_row(path: Path | None, row: dict) -> None:
    """One JSON line per row, written the moment it is measured (a run cut off keeps its rows)."""
    if path is not None:
        with open(path, "a") as fh:
            fh.write(json.dumps(row) + "\n")


# ------------------------------------------------------------------------------------- FLOPs and peak
def count_flops(step: Step, x: Tensor, y: Tensor) -> int:
    """FLOPs (matmuls and convolutions, forward and backward) of one call of ``step``."""
    counter = FlopCounterMode(display=False)
    # Its per-module ModuleTracker installs backward hooks that make torch.autograd.grad(loss, x_adv)
    # fail ("A leaf node was passed to _will_engine_execute_node"); we only need the global total.
    counter.mod_tracker = _GlobalOnly()
    with counter:
        step(x, y)
    return counter.get_total_flops()


class _GlobalOnly:
    """Stand-in for FlopCounterMode's ModuleTracker: every FLOP goes to the "Global" total."""

    parents = {"Global"}

    def __enter__(self) -> "_GlobalOnly":
        return self

    def __exit__(self, *exc) -> None:
        return None


def matmul_peak(device: str, dtype: torch.dtype, n: int) -> float:
    """Measured FLOP/s of ``torch.mm``: the best of n/2 and n square sizes (the machine's practical peak)."""
    best = 0.0
    for size in (n // 2, n):
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        t = Timer(stmt="torch.mm(a, b); sync()", globals={"torch": torch, "a": a, "b": b, "sync": lambda: sync(device)})
        best = max(best, 2 * size ** 3 / t.blocked_autorange(min_run_time=1.0).median)
    return best


def measure_peaks(device: str, n: int) -> dict[str, float]:
    """fp32 and bf16 matmul peaks; on CUDA also the TF32 peak (float32 matmuls on tensor cores)."""
    peaks = {"fp32": matmul_peak(device, torch.float32, n), "bf16": matmul_peak(device, torch.bfloat16, n)}
    if device == "cuda":
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            peaks["tf32"] = matmul_peak(device, torch.float32, n)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
    return peaks


def peak_of(dtype: torch.dtype | None, device: str) -> str:
    """The peak a row's MFU is measured against: bf16 rows against bf16; float32 rows against TF32 on CUDA
    when cuDNN may run float32 convolutions in TF32 (its default), else against fp32."""
    if dtype == torch.bfloat16:
        return "bf16"
    return "tf32" if device == "cuda" and torch.backends.cudnn.allow_tf32 else "fp32"


# --------------------------------------------------------------------------------- attack strength
def attack_strength(device: str, seed: int = 0, n_test: int = 1000, eps: float = 0.1) -> dict:
    """PGD-20 robust accuracy of one fixed MNIST model: float32 attack vs the autocast-bf16 training attack.

    The model: small_cnn (width 16), one epoch of fr_fast AT (PGD-5, eps 0.1, alpha eps/4, batch 64,
    bf16 autocast) on the 3600 training images of the embedded subset. eps 0.1 rather than MNIST's 0.3
    keeps the robust accuracy of a one-epoch model away from 0 %, where both attacks would trivially agree.
    Both attacks: PGD-20, alpha eps/4, CE, uniform random start with the same seed, model in eval mode;
    accuracy on the resulting x_adv is always measured in float32.
    """
    info = DATASETS["mnist"]
    train_set, test_set = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    x_train, y_train = to_float(train_set.images).to(device), train_set.labels.to(device)
    x_test, y_test = to_float(test_set.images[:n_test]).to(device), test_set.labels[:n_test].to(device)
    torch.manual_seed(seed)
    model = build_model("small_cnn", 10, 1, mean=list(info.mean), std=list(info.std)).to(
        device, memory_format=torch.channels_last)
    step = make_fast_step("at", model, eps=eps, alpha=eps / 4, steps=5, lam=ref.LAM, lr=0.05)
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed)).to(device)
    start = time.perf_counter()
    for i in range(0, len(order) - 63, 64):
        idx = order[i:i + 64]
        step(x_train[idx], y_train[idx])
    train_s = time.perf_counter() - start
    model.eval()

    def accuracy(x: Tensor) -> float:
        with torch.no_grad():
            return 100.0 * (model(x).argmax(1) == y_test).float().mean().item()

    torch.manual_seed(seed + 1)
    adv_fp32 = torch.cat([pgd(model, xb, yb, eps=eps, alpha=eps / 4, steps=20)
                          for xb, yb in zip(x_test.split(250), y_test.split(250))])
    torch.manual_seed(seed + 1)
    with torch.autocast(device, torch.bfloat16):
        adv_bf16 = torch.cat([perturb(model, xb, yb, ce_loss, eps=eps, alpha=eps / 4, steps=20)
                              for xb, yb in zip(x_test.split(250), y_test.split(250))])
    return {"model": "small_cnn w16, 1 epoch fr_fast AT+FR on embedded MNIST (3600 images)",
            "eps": eps, "alpha": eps / 4, "steps": 20, "n_test": n_test, "train_s": train_s,
            "clean_acc": accuracy(x_test), "pgd20_fp32_acc": accuracy(adv_fp32.float()),
            "pgd20_bf16_autocast_acc": accuracy(adv_bf16.float())}


# ------------------------------------------------------------------------------------------- driver
def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def bench_model(args, model_name: str, method: str, peaks: dict[str, float], jsonl: Path | None = None) -> list[dict]:
    """Time every candidate of one model (reference first); append each row as soon as it is measured."""
    batch = args.batch if model_name == "small_cnn" else args.resnet_batch
    ablation = method == "at" and not args.no_ablation and not (args.quick and model_name != "small_cnn")
    steps = candidates(method, model_name, args.device, ablation=ablation,
                       with_compile=args.compile and method == "at",
                       trainer_defaults=ablation and args.device == "cpu" and model_name == "small_cnn")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *IMAGE_SHAPE, generator=g).to(args.device)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=g).to(args.device)
    if not args.rows or graph_row(args.device) in args.rows:  # captured here, before any timing
        steps.update(graph_candidates(method, model_name, args.device, x, y))
    if args.rows:  # select by name; a row this build does not have is said so, not an error
        wanted = ["reference", *[r for r in args.rows if r != "reference"]]
        for name in wanted:
            if name not in steps:
                print(f"{model_name} {method.upper()}+FR {name}: not available in this build", flush=True)
        steps = {name: steps[name] for name in wanted if name in steps}
    # FLOPs grow linearly with the batch: count on a small batch (FlopCounterMode runs eagerly and slowly).
    count_batch = min(batch, 16)
    fast_model, ref_model = make_model(model_name, args.device, True), make_model(model_name, args.device, False)
    flop_fast = count_flops(make_fast_step(method, fast_model), x[:count_batch], y[:count_batch]) / count_batch
    flop_ref = count_flops(ref.make_step(method, ref_model, ref.make_optimizer(ref_model, lr=0.01)),
                           x[:count_batch], y[:count_batch]) / count_batch
    rows, reference = [], None
    for name, (fn, dtype) in steps.items():
        timing = time_step(fn, x, y, args.device, args.blocks, args.block_s)
        seconds = timing["wall_s"]
        reference = reference or seconds  # the reference loop, measured first in this same call
        peak = peak_of(dtype, args.device)
        row = {"model": model_name, "method": f"{method.upper()}+FR", "row": name, "batch": batch,
               "step_s": seconds, "gpu_step_s": timing["gpu_s"], "images_per_s": batch / seconds,
               "speedup_vs_reference": reference / seconds, "mfu": flop_fast * batch / seconds / peaks[peak],
               "peak": peak, "model_flops_per_image": flop_fast, "reference_flops_per_image": flop_ref,
               "timing": f"median of {timing['blocks']} blocks of {timing['calls_per_block']} calls; warm-up, "
                         "compilation and capture outside", "check": name == "fr_fast", "device": args.device}
        rows.append(row)
        append_row(jsonl, row)
        gpu = f"  GPU {timing['gpu_s'] * 1e3:.1f} ms" if timing["gpu_s"] is not None else ""
        print(f"{model_name:9} {method.upper()}+FR  {name:<42} {batch / seconds:8.1f} img/s  wall {seconds * 1e3:.1f} ms"
              f"{gpu}  x{reference / seconds:5.2f}  MFU {row['mfu']:.1%} ({peak})", flush=True)
    return rows


def markdown_table(info: dict, rows: list[dict], attack: dict | None) -> str:
    where = info.get("gpu", info["cpu"])
    lines = [f"Training-step throughput, fr_fast vs reference loop, on {where} ({info['device']}, "
             f"{info['threads']} threads, torch {info['torch']}, backend {info['backend']}, {info['date']}"
             + (f", load average {info['load_average']}" if info.get("load_average") else "") + ").",
             "Matmul peak measured in this run: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in
                                                              info["peak_flops"].items())
             + " (float32 rows: against TF32 on CUDA, where cuDNN runs float32 convolutions in TF32). "
             "GPU ms: CUDA events around back-to-back steps. Ablation rows switch features on cumulatively "
             "inside the reference loop, from the reference upward. PGD-10, eps 8/255, lam 0.1, synthetic 32x32x3.",
             "", "| model | step | row | batch | wall ms | GPU ms | img/s | speedup | MFU | GFLOP/img (fr_fast / "
             "reference) |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        gpu_ms = "" if r.get("gpu_step_s") is None else f"{1e3 * r['gpu_step_s']:.1f}"
        lines.append(f"| {r['model']} | {r['method']} | {r['row']} | {r['batch']} | {1e3 * r['step_s']:.1f} | "
                     f"{gpu_ms} | {r['images_per_s']:.1f} | "
                     f"{r['speedup_vs_reference']:.2f}× | {r['mfu']:.1%} ({r['peak']}) | "
                     f"{r['model_flops_per_image'] / 1e9:.2f} / {r['reference_flops_per_image'] / 1e9:.2f} |")
    if attack:
        lines += ["", f"Attack strength ({attack['model']}; PGD-{attack['steps']}, eps {attack['eps']}, "
                      f"{attack['n_test']} test images): clean {attack['clean_acc']:.1f} %, robust accuracy under "
                      f"the float32 attack {attack['pgd20_fp32_acc']:.1f} %, under the autocast-bf16 attack "
                      f"{attack['pgd20_bf16_autocast_acc']:.1f} % (lower = stronger attack)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--models", default="small_cnn,resnet18")
    parser.add_argument("--batch", type=int, default=128, help="batch of the small CNN (and of resnet18 on CUDA)")
    parser.add_argument("--resnet-batch", type=int, default=None,
                        help="batch of resnet18 (default 128 on CUDA, 8 on CPU: one batch-128 reference step "
                             "takes minutes on 2 cores)")
    parser.add_argument("--blocks", type=int, default=5, help="timed blocks per row (the median is reported)")
    parser.add_argument("--block-s", type=float, default=0.5, help="target seconds of one timed block")
    parser.add_argument("--rows", default=None,
                        help="';'-separated row names to time (the reference is always first); a row this build "
                             "lacks prints 'not available in this build'")
    parser.add_argument("--jsonl", type=Path, default=None, help="append every row here the moment it is measured")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="add the torch.compile row (slow to warm up on CPU)")
    parser.add_argument("--no-ablation", action="store_true", help="only reference, fr_fast (and compile) rows")
    parser.add_argument("--trades-models", default=None,
                        help="models with TRADES+FR rows (default: all on CUDA, small_cnn on CPU; '' = none)")
    parser.add_argument("--attack-check", action=argparse.BooleanOptionalAction, default=None,
                        help="run the fp32-vs-bf16 attack-strength check (default: on for CPU; needs mlxtend)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--tag", default="", help="suffix of the result files: train_<device>_<tag>")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: batch 16 (resnet18: 2, no ablation), 2 short blocks, no compile, no attack check, "
                             "nothing written")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.resnet_batch is None:
        args.resnet_batch = 128 if args.device == "cuda" else 8
    if args.trades_models is None:
        args.trades_models = args.models if args.device == "cuda" else "small_cnn"
    if args.quick:
        args.batch, args.resnet_batch, args.blocks, args.block_s = 16, 2, 2, 0.05
        args.compile, args.attack_check = False, False
    if args.attack_check is None:
        args.attack_check = args.device == "cpu"
    for name in args.models.split(","):
        build_model(name, NUM_CLASSES)  # fail early on a bad name
    args.rows = [r.strip() for r in args.rows.split(";") if r.strip()] if args.rows else None  # names hold commas
    if args.jsonl is not None:
        args.jsonl.parent.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    load_before = load_average()
    n = 1024 if args.quick else (8192 if args.device == "cuda" else 3072)
    # Measured before and after the steps (the best of both): on a shared machine one reading can be low.
    peaks = measure_peaks(args.device, n)
    print(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s", flush=True)
    rows: list[dict] = []
    for model_name in args.models.split(","):
        for method in ("at", "trades") if model_name in args.trades_models.split(",") else ("at",):
            rows += bench_model(args, model_name, method, peaks, args.jsonl)
    peaks_after = measure_peaks(args.device, n)
    print(f"matmul peak after the steps: fp32 {peaks_after['fp32'] / 1e9:.1f} GFLOP/s, "
          f"bf16 {peaks_after['bf16'] / 1e9:.1f} GFLOP/s", flush=True)
    if any(peaks_after[k] > peaks[k] for k in peaks):  # MFU is relative to the best reading of the peak
        best = {k: max(peaks[k], peaks_after[k]) for k in peaks}
        for r in rows:
            r["mfu"] *= peaks[r["peak"]] / best[r["peak"]]
        peaks = best
    attack = attack_strength(args.device) if args.attack_check else None
    if attack:
        print(f"attack strength: clean {attack['clean_acc']:.1f} %  PGD-20 fp32 {attack['pgd20_fp32_acc']:.1f} %  "
              f"PGD-20 bf16-autocast {attack['pgd20_bf16_autocast_acc']:.1f} %", flush=True)
    info = {**machine(args.device), "backend": fr_fast.backend(args.device), "peak_flops": peaks,
            "load_average": load_before, "load_average_after": load_average(),
            "wall_s": time.perf_counter() - started, "argv": sys.argv[1:] if argv is None else argv}
    try:
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=Path(__file__).resolve().parent).stdout.strip()
    except OSError:
        pass
    markdown = markdown_table(info, rows, attack)
    print("\n" + markdown)
    if not args.quick:
        stem = f"train_{args.device}" + (f"_{args.tag}" if args.tag else "")
        write_results(stem, {"machine": info, "rows": rows, "attack_strength": attack}, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
