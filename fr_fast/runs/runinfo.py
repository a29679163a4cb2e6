"""How a run computes, in one dict and one banner line: device (GPU name), threads, autocast dtype, memory
format, torch.compile, kernel backend (cpp / cuda / reference) and the torch and fr_fast versions.

``train``, ``eval`` and ``analyze`` print :func:`banner` at start and store :func:`describe` in their
result files (the checkpoint and ``run.json``, the eval report, the analysis ``meta.json``), so every
result says how it was produced.
"""
from __future__ import annotations

import platform
from typing import Any

import torch

from fr_fast._version import __version__
from fr_fast.ops import functional as ops

# The keys of describe(), in banner order.
FIELDS = ("device", "threads", "amp", "memory_format", "compile", "kernels", "torch", "fr_fast")


def device_name(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3)`` or ``cpu (<processor>)``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    model = _cpu_model()
    return f"{device.type} ({model})" if model else device.type


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor()


def describe(device: torch.device | str, *, amp_dtype: torch.dtype | None = None,
             memory_format: torch.memory_format = torch.contiguous_format, compile: bool = False) -> dict[str, Any]:
    """The facts of :data:`FIELDS` for a computation on ``device`` (JSON-serialisable)."""
    device = torch.device(device)
    kernels = ops.backend(device)
    info = {"device": device_name(device), "threads": torch.get_num_threads(),
            "amp": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "off",
            "memory_format": "channels_last" if memory_format == torch.channels_last else "contiguous",
            "compile": bool(compile), "kernels": kernels, "torch": str(torch.__version__), "fr_fast": __version__}
    if kernels == "reference":
        info["kernels_note"] = " ".join((ops.EXTENSION_ERROR or f"no fused kernel for {device.type}").split())
    return info


def banner(command: str, info: dict[str, Any]) -> str:
    """One line: ``fr-fast train | device cpu (...) | threads 2 | amp off | ... | fr_fast 0.1.0``."""
    parts = [f"fr-fast {command}"]
    for key in FIELDS:
        value = info[key]
        shown = ("on" if value else "off") if isinstance(value, bool) else value
        parts.append(f"{'memory format' if key == 'memory_format' else key} {shown}")
    if "kernels_note" in info:
        parts.append(f"(reference ops: {info['kernels_note']})")
    return " | ".join(parts)
