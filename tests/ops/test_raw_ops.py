"""The raw torch.ops.fr_fast ops refuse every bad shape, device, dtype and code in C++ (no out-of-bounds reads)."""
import pytest
import torch

import fr_fast
from fr_fast.ops import functional as ops

requires_extension = pytest.mark.skipif(ops.EXTENSION_ERROR is not None, reason="fr_fast._C not built")
pytestmark = requires_extension
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
B, C = 2048, 10


def _logits(device, batch=B, classes=C):
    return torch.randn(batch, classes, device=device), torch.randn(batch, classes, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "grad_shape, reduction, message",
    [
        ((1, B), 0, r"shape \(2048,\)"),  # the reported segfault: (1, B) has B elements but stride B
        ((B, 1), 0, r"shape \(2048,\)"),
        ((B // 2,), 0, r"shape \(2048,\)"),
        ((), 0, r"shape \(2048,\)"),
        ((2,), 1, "one element"),
        ((B,), 2, "one element"),
    ],
)
def test_fr_l1_backward_checks_the_grad_shape(device, grad_shape, reduction, message):
    teacher, adv = _logits(device)
    with pytest.raises(ValueError, match=message):
        torch.ops.fr_fast.fr_l1_backward(torch.ones(grad_shape, device=device), teacher, adv, reduction)


@pytest.mark.parametrize("device", DEVICES)
def test_fr_l1_backward_accepts_a_strided_per_row_grad(device):
    teacher, adv = _logits(device, 8)
    upstream = torch.rand(8, 2, device=device)[:, 0]  # (B,) with stride 2
    ours = torch.ops.fr_fast.fr_l1_backward(upstream, teacher, adv, 0)
    expected = torch.ops.fr_fast.fr_l1_backward(upstream.contiguous(), teacher, adv, 0)
    assert all(torch.equal(x, y) for x, y in zip(ours, expected))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("code", [-1, 3, 100])
def test_invalid_reduction_codes(device, code):
    teacher, adv = _logits(device, 4)
    for call in (lambda: torch.ops.fr_fast.fr_l1(teacher, adv, code),
                 lambda: torch.ops.fr_fast.fr_l1_with_grad(teacher, adv, code),
                 lambda: torch.ops.fr_fast.fr_l1_backward(torch.ones((), device=device), teacher, adv, code),
                 lambda: torch.ops.fr_fast.fr2d_l1(teacher, adv, code),
                 lambda: torch.ops.fr_fast.fr2d_l1_with_grad(teacher, adv, code)):
        with pytest.raises(ValueError, match="reduction code"):
            call()


@pytest.mark.parametrize("op", ["fr_l1", "fr_l1_with_grad", "fr2d_l1", "fr2d_l1_with_grad"])
def test_logit_checks(op):
    fn = getattr(torch.ops.fr_fast, op)
    a = torch.randn(4, 10)
    with pytest.raises(ValueError, match="same shape"):
        fn(a, a[:, :9], 1)
    with pytest.raises(ValueError, match="same shape"):
        fn(a[0], a[0], 1)
    with pytest.raises(ValueError, match="adv is torch.float64"):
        fn(a, a.double(), 1)
    with pytest.raises(ValueError, match="float16, bfloat16, float32 or float64"):
        fn(a.long(), a.long(), 1)
    with pytest.raises(ValueError, match="meta"):  # a meta tensor selects the fake kernel, which checks too
        fn(a, a.to("meta"), 1)


def test_fr_l1_backward_grad_device_and_dtype():
    teacher, adv = _logits("cpu", 4)
    with pytest.raises(ValueError, match="floating-point"):
        torch.ops.fr_fast.fr_l1_backward(torch.ones((), dtype=torch.long), teacher, adv, 1)
    with pytest.raises(ValueError, match="meta"):
        torch.ops.fr_fast.fr_l1_backward(torch.ones((), device="meta"), teacher, adv, 1)


@pytest.mark.parametrize("name, value", [("alpha", True), ("eps", False), ("alpha", False)])
def test_pgd_step_refuses_bools(name, value):
    x_nat = torch.rand(2, 3, 4, 4)
    x_adv, grad = x_nat.clone(), torch.randn_like(x_nat)
    kwargs = {"alpha": 0.01, "eps": 0.03, name: value}
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        fr_fast.pgd_step_(x_adv, grad, x_nat, **kwargs)
    assert torch.equal(x_adv, x_nat)


@pytest.mark.parametrize("name", ["alpha", "eps"])
def test_pgd_step_refuses_per_sample_values_on_another_device(name):
    x_nat = torch.rand(2, 3, 4, 4)
    x_adv, grad = x_nat.clone(), torch.randn_like(x_nat)
    kwargs = {"alpha": 0.01, "eps": 0.03, name: torch.full((2,), 0.05, device="meta")}
    with pytest.raises(ValueError, match=f"{name} is on meta"):
        fr_fast.pgd_step_(x_adv, grad, x_nat, **kwargs)
    with pytest.raises(ValueError, match="is on meta"):  # the raw op as well
        torch.ops.fr_fast.pgd_step_(x_adv, grad, x_nat, 0.0, 0.0, 0.0, 1.0, kwargs["alpha"] if name == "alpha" else None,
                                    kwargs["eps"] if name == "eps" else None)
