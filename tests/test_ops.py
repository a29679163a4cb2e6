"""Fused ops versus their pure-PyTorch references: values, gradients, dtypes, shapes, layouts, errors."""
import os
import warnings

import pytest
import torch

import fr_fast
from fr_fast import ops, reference

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
REDUCTION_CODES = {"none": 0, "mean": 1, "sum": 2}
# float32 accumulation: errors are relative to the magnitude of the result.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}
requires_extension = pytest.mark.skipif(ops.EXTENSION_ERROR is not None, reason="fr_fast._C not built")


def _close(actual, expected, rel):
    scale = expected.abs().max().clamp_min(1.0)
    assert actual.shape == expected.shape
    assert (actual.double() - expected.double()).abs().max() <= rel * scale


@pytest.mark.skipif(os.environ.get("FR_FAST_NO_EXT") == "1", reason="built without the extension on purpose")
def test_extension_is_built_and_selected():
    assert ops.EXTENSION_ERROR is None, ops.EXTENSION_ERROR
    assert fr_fast.backend("cpu") == "cpp"
    assert fr_fast.backend(torch.device("cpu")) == "cpp"


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1), (1, 10), (7, 2), (7, 3), (128, 10), (33, 100), (16, 200), (4, 1000)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fr_l1_kernel_matches_fft_reference(device, dtype, shape, reduction):
    a = torch.randn(shape, device=device).to(dtype).requires_grad_()
    b = torch.randn(shape, device=device).to(dtype).requires_grad_()
    fused = torch.ops.fr_fast.fr_l1(a, b, REDUCTION_CODES[reduction])
    # The reference sees the same (rounded) 16-bit values, computed in float32.
    ref_a, ref_b = (t.detach().to(torch.float64 if dtype == torch.float64 else torch.float32).requires_grad_()
                    for t in (a, b))
    expected = reference.fr_loss(ref_a, ref_b, "l1", reduction)
    assert fused.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    _close(fused, expected, TOLERANCE[dtype])
    upstream = torch.rand_like(expected) + 0.5
    grads = torch.autograd.grad(fused, (a, b), upstream)
    expected_grads = torch.autograd.grad(expected, (ref_a, ref_b), upstream)
    for grad, expected_grad in zip(grads, expected_grads):
        assert grad.dtype == dtype and grad.shape == a.shape
        # 16-bit gradients are rounded once at the end: compare at their resolution.
        rel = TOLERANCE[dtype] if dtype in (torch.float32, torch.float64) else 1e-2
        _close(grad, expected_grad, rel)


@requires_extension
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("classes", [1, 2, 5, 10, 13])
def test_fr_l1_gradcheck(reduction, classes):
    a = torch.randn(4, classes, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, classes, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: torch.ops.fr_fast.fr_l1(x, y, REDUCTION_CODES[reduction]), (a, b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["transposed", "strided_rows", "strided_cols"])
def test_fr_loss_non_contiguous(device, layout):
    base_a, base_b = torch.randn(2, 64, 40, device=device), torch.randn(2, 64, 40, device=device)
    view = {"transposed": lambda t: t[0].t(), "strided_rows": lambda t: t[0, ::3], "strided_cols": lambda t: t[1, :, ::2]}
    a, b = view[layout](base_a).requires_grad_(), view[layout](base_b)
    assert not a.is_contiguous()
    fused = fr_fast.fr_loss(a, b, reduction="none")
    expected = reference.fr_loss(a.contiguous(), b.contiguous(), reduction="none")
    _close(fused, expected, 1e-5)
    (grad,) = torch.autograd.grad(fused.sum(), a)
    (expected_grad,) = torch.autograd.grad(reference.fr_loss(a, b, reduction="sum"), a)
    _close(grad, expected_grad, 1e-5)


@pytest.mark.parametrize("distance", ["l1", "l2", "cosine"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("classes", [1, 10, 100, 600])
def test_fr_loss_matches_reference_for_every_distance(distance, reduction, classes):
    a = torch.randn(9, classes, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, classes, dtype=torch.float64, requires_grad=True)
    fused = fr_fast.fr_loss(a, b, distance, reduction)
    expected = reference.fr_loss(a, b, distance, reduction)
    _close(fused, expected, 1e-10)
    upstream = torch.rand_like(expected)
    for grad, expected_grad in zip(torch.autograd.grad(fused, (a, b), upstream),
                                   torch.autograd.grad(expected, (a, b), upstream)):
        _close(grad, expected_grad, 1e-8)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fr_loss_2d_matches_authors_formulation(reduction):
    a = torch.randn(16, 10, dtype=torch.float64, requires_grad=True)
    b = torch.randn(16, 10, dtype=torch.float64, requires_grad=True)
    fused = fr_fast.fr_loss(a, b, fft="2d", reduction=reduction)
    # The authors' code: L1 between the stacked real/imaginary parts of two separate 2-D FFTs.
    spec_a, spec_b = torch.view_as_real(torch.fft.fft2(a)), torch.view_as_real(torch.fft.fft2(b))
    expected = torch.nn.functional.l1_loss(spec_a, spec_b, reduction=reduction)
    _close(fused, expected, 1e-12)
    _close(torch.autograd.grad(fused, a)[0], torch.autograd.grad(expected, a)[0], 1e-10)
    assert torch.autograd.gradcheck(lambda x, y: fr_fast.fr_loss(x, y, fft="2d", reduction=reduction), (a[:3], b[:3]))


def test_fr_loss_of_identical_logits_is_zero_with_zero_gradient():
    a = torch.randn(5, 10, requires_grad=True)
    for distance in ("l1", "l2", "cosine"):
        loss = fr_fast.fr_loss(a, a.detach().clone(), distance)
        assert loss.abs().item() < 1e-5
        (grad,) = torch.autograd.grad(loss, a)
        assert torch.isfinite(grad).all()


def test_fr_loss_detached_teacher_gets_no_gradient_and_dtypes_promote():
    teacher = torch.randn(8, 10, dtype=torch.bfloat16)
    adv = torch.randn(8, 10, requires_grad=True)
    loss = fr_fast.fr_loss(teacher, adv)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    loss.backward()
    assert adv.grad is not None and teacher.grad is None


def test_fr_loss_module_scales_by_lambda():
    a, b = torch.randn(6, 10), torch.randn(6, 10)
    module = fr_fast.FRLoss(lam=0.25, distance="l1")
    assert torch.allclose(module(a, b), 0.25 * fr_fast.fr_loss(a, b))
    assert "lam=0.25" in repr(module)
    with pytest.raises(ValueError, match="lam"):
        fr_fast.FRLoss(lam=-1.0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: fr_fast.fr_loss(torch.randn(4, 10), torch.randn(4, 9)), "shape"),
        (lambda: fr_fast.fr_loss(torch.randn(4, 10), torch.randn(4, 10, device="meta")), "on cpu but adv_logits is on meta"),
        (lambda: fr_fast.fr_loss(torch.ones(4, 10, dtype=torch.long), torch.randn(4, 10)), "floating-point"),
        (lambda: fr_fast.fr_loss(torch.randn(10), torch.randn(10)), "batch, classes"),
        (lambda: fr_fast.fr_loss(torch.randn(4, 10), torch.randn(4, 10), distance="l3"), "unknown distance 'l3'"),
        (lambda: fr_fast.fr_loss(torch.randn(4, 10), torch.randn(4, 10), reduction="max"), "unknown reduction"),
        (lambda: fr_fast.fr_loss(torch.randn(4, 10), torch.randn(4, 10), fft="3d"), "unknown fft"),
        (lambda: fr_fast.fr_loss(torch.randn(4, 10), torch.randn(4, 10), fft="2d", reduction="none"), "2d"),
        (lambda: fr_fast.fr_loss([1.0], torch.randn(4, 10)), "torch.Tensor"),
    ],
)
def test_fr_loss_bad_input(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


# ------------------------------------------------------------------------------------------ PGD step

def _images(shape=(8, 3, 16, 16), dtype=torch.float32, device="cpu", channels_last=False):
    x_nat = torch.rand(shape, device=device).to(dtype)
    x_adv = (x_nat + 0.05 * torch.randn(shape, device=device)).clamp(0, 1).to(dtype)
    grad = torch.randn(shape, device=device).to(dtype)
    grad.view(-1)[::7] = 0  # sign(0) = 0: no move
    if channels_last:
        x_nat, x_adv, grad = (t.contiguous(memory_format=torch.channels_last) for t in (x_nat, x_adv, grad))
    return x_adv, grad, x_nat


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(8, 3, 16, 16), (1, 1, 1, 1), (3, 3, 7, 5), (128, 3, 32, 32)])
def test_pgd_step_matches_clamp_chain(device, dtype, channels_last, shape):
    x_adv, grad, x_nat = _images(shape, dtype, device, channels_last)
    expected = reference.pgd_step_(x_adv.clone(), grad, x_nat, 2 / 255, 8 / 255)
    result = fr_fast.pgd_step_(x_adv, grad, x_nat, 2 / 255, 8 / 255)
    assert result is x_adv and x_adv.dtype == dtype
    assert x_adv.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if dtype in (torch.float32, torch.float64):
        assert torch.equal(x_adv, expected)  # same arithmetic, same rounding
    else:  # the kernel rounds once at the end, the clamp chain after every op: one 16-bit ulp apart at most
        ulp = torch.finfo(dtype).eps
        assert (x_adv.float() - expected.float()).abs().max() <= 2 * ulp
    assert ((x_adv.double() - x_nat.double()).abs() <= 8 / 255 + 1e-6 + (0 if dtype in (torch.float32, torch.float64) else 4e-3)).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("device", DEVICES)
def test_pgd_step_mixed_layouts_and_strided_target(device):
    x_adv, grad, x_nat = _images(device=device)
    expected = reference.pgd_step_(x_adv.clone(), grad, x_nat, 0.01, 0.03)
    cl_adv = x_adv.clone().contiguous(memory_format=torch.channels_last)
    fr_fast.pgd_step_(cl_adv, grad, x_nat, 0.01, 0.03)  # grad, x_nat contiguous: re-laid out, x_adv keeps channels_last
    assert cl_adv.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl_adv, expected)
    big = torch.zeros(2, *x_adv.shape, device=device)
    big[1] = x_adv
    view = big[1, :, :, ::2]  # a strided view is updated in place through its base
    expected_view = reference.pgd_step_(view.clone(), grad[:, :, ::2], x_nat[:, :, ::2], 0.01, 0.03)
    fr_fast.pgd_step_(view, grad[:, :, ::2], x_nat[:, :, ::2], 0.01, 0.03)
    assert torch.equal(big[1, :, :, ::2], expected_view) and big[0].abs().sum() == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_random_start_matches_reference_stream(device, channels_last):
    _, _, x_nat = _images(device=device, channels_last=channels_last)
    torch.manual_seed(3)
    expected = reference.random_start_(torch.empty_like(x_nat), x_nat, 8 / 255)
    torch.manual_seed(3)
    x_adv = torch.empty_like(x_nat)
    assert fr_fast.random_start_(x_adv, x_nat, 8 / 255) is x_adv
    assert torch.equal(x_adv, expected)
    assert ((x_adv - x_nat).abs() <= 8 / 255 + 1e-6).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv != x_nat).float().mean() > 0.9  # it actually moved


@requires_extension
def test_opcheck_every_op():
    a, b = torch.randn(5, 10, requires_grad=True), torch.randn(5, 10, requires_grad=True)
    for code in (0, 1, 2):
        torch.library.opcheck(torch.ops.fr_fast.fr_l1.default, (a, b, code))
    torch.library.opcheck(torch.ops.fr_fast.fr_l1_backward.default, (torch.rand(()), a.detach(), b.detach(), 1))
    x_adv, grad, x_nat = _images((2, 3, 4, 4))
    torch.library.opcheck(torch.ops.fr_fast.pgd_step_.default, (x_adv, grad, x_nat, 0.01, 0.03))
    torch.library.opcheck(torch.ops.fr_fast.add_clip_.default, (torch.rand(2, 3, 4, 4) * 0.1, x_nat))


@requires_extension
def test_compiles_without_graph_breaks():
    def attack_step(x_adv, grad, x_nat, teacher, adv):
        fr_fast.pgd_step_(x_adv, grad, x_nat, 2 / 255, 8 / 255)
        return fr_fast.fr_loss(teacher, adv)

    compiled = torch.compile(attack_step, fullgraph=True, backend="aot_eager")
    x_adv, grad, x_nat = _images((2, 3, 8, 8))
    teacher, adv = torch.randn(4, 10), torch.randn(4, 10, requires_grad=True)
    expected_x = reference.pgd_step_(x_adv.clone(), grad, x_nat, 2 / 255, 8 / 255)
    loss = compiled(x_adv, grad, x_nat, teacher, adv)
    loss.backward()
    assert torch.equal(x_adv, expected_x)
    assert torch.allclose(loss, reference.fr_loss(teacher, adv), rtol=1e-5)
    assert adv.grad is not None


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x, g, x0: fr_fast.pgd_step_(x, g, x0, 0.01, -0.1), "eps must be a finite number >= 0"),
        (lambda x, g, x0: fr_fast.pgd_step_(x, g, x0, float("nan"), 0.1), "alpha"),
        (lambda x, g, x0: fr_fast.pgd_step_(x, g[:1], x0, 0.01, 0.1), "grad has shape"),
        (lambda x, g, x0: fr_fast.pgd_step_(x, g.double(), x0, 0.01, 0.1), "grad is torch.float64"),
        (lambda x, g, x0: fr_fast.pgd_step_(x, g, x0.to("meta"), 0.01, 0.1), "x_nat is on meta"),
        (lambda x, g, x0: fr_fast.pgd_step_(x.long(), g, x0, 0.01, 0.1), "floating-point"),
        (lambda x, g, x0: fr_fast.pgd_step_(x.requires_grad_(), g, x0, 0.01, 0.1), "requires grad"),
        (lambda x, g, x0: fr_fast.random_start_(x, x0, -1.0), "eps"),
    ],
)
def test_pgd_step_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call(*_images((2, 3, 4, 4)))


def test_reference_fallback_warns_once_and_matches(monkeypatch):
    monkeypatch.setattr(ops, "EXTENSION_ERROR", "simulated: not built")
    monkeypatch.setattr(ops, "_KERNEL_DEVICES", frozenset())
    monkeypatch.setattr(ops, "_warned", False)
    assert fr_fast.backend("cpu") == "reference"
    x_adv, grad, x_nat = _images()
    expected = reference.pgd_step_(x_adv.clone(), grad, x_nat, 0.01, 0.03)
    with pytest.warns(RuntimeWarning, match="simulated"):
        fr_fast.pgd_step_(x_adv, grad, x_nat, 0.01, 0.03)
    assert torch.equal(x_adv, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fr_fast.fr_loss(torch.randn(3, 10), torch.randn(3, 10))  # no second warning


@requires_extension
def test_multithreaded_kernels_match_single_threaded():
    a, b = torch.randn(512, 100), torch.randn(512, 100)
    x_adv, grad, x_nat = _images((64, 3, 32, 32))
    results = {}
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            x = x_adv.clone()
            fr_fast.pgd_step_(x, grad, x_nat, 0.01, 0.03)
            results[threads] = (fr_fast.fr_loss(a, b, reduction="none"), x)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(results[1][0], results[2][0]) and torch.equal(results[1][1], results[2][1])
