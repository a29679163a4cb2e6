"""pytest-benchmark suite of one AT+FR / TRADES+FR training step: fr_fast versus the reference loop.

    .venv/bin/python -m pytest benchmarks/test_bench_train.py --benchmark-group-by=param:method

Small sizes (small CNN, batch 8, PGD-3) so the suite runs in seconds; ``benchmarks/bench_train.py``
measures the real sizes (batch 128, PGD-10) and prints the speedup ratios.
"""
import math

import pytest
import torch

import reference_loop as ref
from bench_train import make_fast_step, make_model

BATCH, ATTACK_STEPS = 8, 3


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny steps on a shared machine: one thread avoids OpenMP barrier stalls (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _step(impl: str, method: str):
    fast = impl == "fr_fast"
    model = make_model("small_cnn", "cpu", channels_last=fast)
    optimizer = ref.make_optimizer(model, lr=0.01)
    if fast:
        return make_fast_step(method, model, optimizer, steps=ATTACK_STEPS)
    return ref.make_step(method, model, optimizer, steps=ATTACK_STEPS)


@pytest.mark.parametrize("impl", ["reference", "fr_fast"])
@pytest.mark.parametrize("method", ["at", "trades"])
def test_train_step(benchmark, impl, method):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (BATCH,), generator=g)
    step = _step(impl, method)
    loss = benchmark.pedantic(step, args=(x, y), rounds=3, warmup_rounds=1)
    assert math.isfinite(loss)
