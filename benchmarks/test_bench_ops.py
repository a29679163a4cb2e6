"""pytest-benchmark suite of the fused ops and their references.

    .venv/bin/python -m pytest benchmarks/test_bench_ops.py --benchmark-group-by=param:case

(`benchmarks/bench_ops.py` prints the speedup ratios of one interleaved run.)
"""
import pytest
import torch

import fr_fast
from fr_fast.ops import reference

IMPLEMENTATIONS = {"fused": (fr_fast.fr_loss, fr_fast.pgd_step_), "reference": (reference.fr_loss, reference.pgd_step_)}


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("case", ["B128-C10", "B128-C100", "B128-C200", "B512-C10", "B512-C100", "B512-C200"])
def test_fr_loss_forward_backward(benchmark, impl, case):
    batch, classes = (int(part[1:]) for part in case.split("-"))
    a = torch.randn(batch, classes, requires_grad=True)
    b = torch.randn(batch, classes, requires_grad=True)
    loss_fn = IMPLEMENTATIONS[impl][0]
    benchmark(lambda: loss_fn(a, b).backward())


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("case", ["B128-C10", "B128-C100", "B512-C200"])
def test_fr2d_loss_forward_backward(benchmark, impl, case):
    batch, classes = (int(part[1:]) for part in case.split("-"))
    a = torch.randn(batch, classes, requires_grad=True)
    b = torch.randn(batch, classes, requires_grad=True)
    loss_fn = IMPLEMENTATIONS[impl][0]
    benchmark(lambda: loss_fn(a, b, fft="2d").backward())


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("case", ["NCHW", "channels_last"])
def test_pgd_step(benchmark, impl, case):
    fmt = torch.channels_last if case == "channels_last" else torch.contiguous_format
    x_nat = torch.rand(128, 3, 32, 32).contiguous(memory_format=fmt)
    grad = torch.randn_like(x_nat)
    x_adv = x_nat.clone()
    step = IMPLEMENTATIONS[impl][1]
    benchmark(lambda: step(x_adv, grad, x_nat, 2 / 255, 8 / 255))


@pytest.mark.parametrize("case", ["NCHW"])
def test_clone_baseline(benchmark, case):
    x = torch.rand(128, 3, 32, 32)
    benchmark(x.clone)
