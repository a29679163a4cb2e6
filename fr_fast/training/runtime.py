"""Where and how a run computes: device, autocast dtype, memory format, processes and determinism.

Each choice is a function of the config (and the machine), written once here and used by the trainer,
its step and the benchmarks that time that step.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from fr_fast.config.train_config import TrainConfig
from fr_fast.utils.checks import check_device
from fr_fast.utils.seeding import seed_everything


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> the local rank's GPU when CUDA is available, else the CPU; other names as given."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return check_device(name)


def _cpu_has_native_bf16() -> bool:
    try:  # oneDNN's own test for AVX512-BF16 / AMX
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """autocast dtype for ``amp`` in {auto, bf16, fp16, off}; auto: bf16 (else fp16) on CUDA; on CPU bf16
    where the CPU computes it natively (AVX512-BF16/AMX: 1.3-1.4x faster steps in benchmarks/results/train_cpu.md
    and on the MNIST preset), else off (emulated bf16 convolutions are slower than float32).
    """
    if mode == "off" or (mode == "auto" and device.type != "cuda" and not _cpu_has_native_bf16()):
        return None
    if mode == "auto" and device.type != "cuda":
        return torch.bfloat16
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def resolve_memory_format(channels_last: bool | str, device: torch.device) -> torch.memory_format:
    """``channels_last`` in {True, False, "auto"}; auto: channels_last on CUDA, NCHW on CPU."""
    on = device.type == "cuda" if channels_last == "auto" else bool(channels_last)
    return torch.channels_last if on else torch.contiguous_format


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> torch.autocast:
    """``torch.autocast`` to ``amp_dtype``, or a disabled one when it is None."""
    return torch.autocast(device.type, amp_dtype or torch.float32, enabled=amp_dtype is not None)


@dataclass(frozen=True)
class Runtime:
    """The resolved runtime of one process of a run."""

    rank: int
    world: int
    device: torch.device
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_name: str) -> tuple[int, int, int, bool]:
    """(rank, world_size, local_rank, we_initialised) from torchrun's environment variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0, False
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local_rank, False
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return rank, world, local_rank, True


@contextlib.contextmanager
def runtime(cfg: TrainConfig) -> Iterator[Runtime]:
    """Set up processes, device, threads, determinism and the initial seed for ``cfg``; undo it on exit."""
    rank, world, local_rank, own_group = _init_distributed(cfg.device)
    previous_det, previous_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    try:
        device = resolve_device(cfg.device, local_rank)
        if cfg.cpu_threads is not None:
            torch.set_num_threads(cfg.cpu_threads)
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = not cfg.deterministic
        seed_everything(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts them)
        if cfg.batch_size % world:
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {world} processes")
        amp_dtype = resolve_amp(cfg.amp, device)
        if rank == 0 and amp_dtype == torch.float16 and device.type == "cpu":
            print("fr-fast: warning: amp=fp16 on the CPU is emulated and slow (often slower than float32); use "
                  "amp=bf16 or amp=off", file=sys.stderr, flush=True)
        yield Runtime(rank, world, device, amp_dtype, resolve_memory_format(cfg.channels_last, device))
    finally:
        torch.use_deterministic_algorithms(previous_det)
        torch.set_num_threads(previous_threads)
        if own_group and dist.is_initialized():
            dist.destroy_process_group()
