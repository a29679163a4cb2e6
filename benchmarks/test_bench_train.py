"""pytest-benchmark suite of one AT+FR / TRADES+FR training step: fr_fast versus the reference loop.

    .venv/bin/python -m pytest benchmarks/test_bench_train.py --benchmark-group-by=param:method

Small sizes (small CNN, batch 8, PGD-3) so the suite runs in seconds; ``benchmarks/bench_train.py``
measures the real sizes (batch 128, PGD-10) and prints the speedup ratios.
"""
import math

import pytest
import reference_loop as ref
import torch
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
    if fast:
        return make_fast_step(method, model, steps=ATTACK_STEPS)
    return ref.make_step(method, model, ref.make_optimizer(model, lr=0.01), steps=ATTACK_STEPS)


@pytest.mark.parametrize("impl", ["reference", "fr_fast"])
@pytest.mark.parametrize("method", ["at", "trades"])
def test_train_step(benchmark, impl, method):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (BATCH,), generator=g)
    step = _step(impl, method)
    loss = benchmark.pedantic(step, args=(x, y), rounds=3, warmup_rounds=1)
    assert math.isfinite(loss)


@pytest.mark.parametrize("features", [ref.BASELINE, ref.Features(True, True, True, True)], ids=["baseline", "all"])
@pytest.mark.parametrize("method", ["at", "trades"])
def test_reference_attack_is_a_valid_stronger_input(features, method):
    """The baseline's attack stays in the eps-ball and [0, 1], raises the loss, and restores the model."""
    torch.manual_seed(0)
    model = make_model("small_cnn", "cpu", channels_last=features.channels_last)
    x = torch.rand(BATCH, 3, 32, 32)
    y = torch.randint(0, 10, (BATCH,))
    if method == "at":
        x_adv = ref.attack_at(model, x, y, steps=5, features=features)
    else:
        x_adv = ref.attack_trades(model, x, steps=5, features=features)
    assert (x_adv - x).abs().max() <= ref.EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert all(p.requires_grad for p in model.parameters()) and model.training
    model.eval()
    with torch.no_grad():
        if method == "at":
            before, after = (torch.nn.functional.cross_entropy(model(v), y).item() for v in (x, x_adv))
        else:
            p_nat = torch.softmax(model(x), 1)
            before, after = (torch.nn.functional.kl_div(torch.log_softmax(model(v), 1), p_nat, reduction="sum").item()
                             for v in (x + 1e-3 * torch.randn_like(x), x_adv))
    assert after > before
