"""Seeds: one mixing function for every derived random stream, and seeding all generators at once."""
from __future__ import annotations

import random

import numpy as np
import torch


def mix_seed(*parts: int) -> int:
    """Combine integers into one 63-bit seed (distinct (seed, epoch, ...) tuples give distinct streams)."""
    h = 0x2545F4914F6CDD1D
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3 % (1 << 64)
        h ^= h >> 29
    return h & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
