"""Shared by the benchmark scripts: interleaved timing and result files that name the machine."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Callable

import torch
from torch.utils.benchmark import Timer

# FR_FAST_BENCH_RESULTS redirects every result file (benchmarks/run_gpu.sh collects them from there).
RESULTS = Path(os.environ.get("FR_FAST_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def machine(device: str) -> dict:
    """What ran the benchmark: stated next to every number we publish."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def compare(candidates: dict[str, Callable[[], object]], rounds: int = 5, min_run_time: float = 0.2) -> dict[str, float]:
    """Median seconds per call of each candidate, measured in alternating rounds (same process, same load)."""
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for fn in candidates.values():  # warm-up: caches, allocator, lazy initialisation
        for _ in range(3):
            fn()
    for _ in range(rounds):
        for name, fn in candidates.items():
            measurement = Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time)
            samples[name].append(measurement.median)
    return {name: statistics.median(values) for name, values in samples.items()}


def write_results(stem: str, payload: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown)
