"""Fused ops versus their pure-PyTorch references: values, gradients, dtypes, shapes, layouts, errors."""
import os
import warnings

import pytest
import torch

import fr_fast
from fr_fast.ops import functional as ops
from fr_fast.ops import reference

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


def _fr_2d_by_fft(a, b, distance, reduction):
    """The 2-D l2 / cosine definitions written out with torch.fft (independent of fr_fast.ops.reference)."""
    spec_a, spec_b = torch.view_as_real(torch.fft.fft2(a)).flatten(), torch.view_as_real(torch.fft.fft2(b)).flatten()
    if distance == "l2":
        sq = ((spec_a - spec_b) ** 2).sum()
        return (sq / spec_a.numel()).sqrt() if reduction == "mean" else sq.sqrt()
    return 1.0 - (spec_a * spec_b).sum() / (spec_a.norm() * spec_b.norm())


@pytest.mark.parametrize("distance", ["l2", "cosine"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shape", [(16, 10), (5, 100), (3, 7)])
def test_fr_loss_2d_l2_and_cosine_match_their_fft_definition(distance, reduction, shape):
    a = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    b = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    expected = _fr_2d_by_fft(a, b, distance, reduction)
    for value in (fr_fast.fr_loss(a, b, distance, reduction, fft="2d"),  # Parseval closed form
                  reference.fr_loss(a, b, distance, reduction, fft="2d")):
        _close(value, expected, 1e-12)
        for grad, expected_grad in zip(torch.autograd.grad(value, (a, b), retain_graph=True),
                                       torch.autograd.grad(expected, (a, b), retain_graph=True)):
            _close(grad, expected_grad, 1e-10)
    # float32 inputs: the closed form stays float32 and close to the float64 definition
    value32 = fr_fast.fr_loss(a.detach().float(), b.detach().float(), distance, reduction, fft="2d")
    assert value32.dtype == torch.float32
    _close(value32, expected.detach(), 1e-5)


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
        (lambda: fr_fast.fr_loss(torch.randn(4, 10), torch.randn(4, 10), "cosine", "none", "2d"), "one value"),
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
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_every_op(device):
    a = torch.randn(5, 10, device=device, requires_grad=True)
    b = torch.randn(5, 10, device=device, requires_grad=True)
    for code in (0, 1, 2):
        torch.library.opcheck(torch.ops.fr_fast.fr_l1.default, (a, b, code))
    torch.library.opcheck(torch.ops.fr_fast.fr_l1_backward.default,
                          (torch.rand((), device=device), a.detach(), b.detach(), 1))
    for code in (0, 1, 2):
        torch.library.opcheck(torch.ops.fr_fast.fr_l1_with_grad.default, (a.detach(), b.detach(), code))
    x_adv, grad, x_nat = _images((2, 3, 4, 4), device=device)
    rows = torch.rand(2, device=device)
    torch.library.opcheck(torch.ops.fr_fast.pgd_step_.default, (x_adv, grad, x_nat, 0.01, 0.03))
    torch.library.opcheck(torch.ops.fr_fast.pgd_step_.default, (x_adv, grad, x_nat, 0.0, 0.0, None, 2.0, rows, rows))
    noise = torch.rand(2, 3, 4, 4, device=device) * 0.1
    torch.library.opcheck(torch.ops.fr_fast.add_clip_.default, (noise, x_nat))
    torch.library.opcheck(torch.ops.fr_fast.add_clip_.default, (noise, x_nat, -1.0, None))


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
def test_compiles_without_graph_breaks(device):
    def attack_step(x_adv, grad, x_nat, teacher, adv):
        fr_fast.pgd_step_(x_adv, grad, x_nat, 2 / 255, 8 / 255)
        return fr_fast.fr_loss(teacher, adv)

    compiled = torch.compile(attack_step, fullgraph=True, backend="aot_eager")
    x_adv, grad, x_nat = _images((2, 3, 8, 8), device=device)
    teacher, adv = torch.randn(4, 10, device=device), torch.randn(4, 10, device=device, requires_grad=True)
    expected_x = reference.pgd_step_(x_adv.clone(), grad, x_nat, 2 / 255, 8 / 255)
    loss = compiled(x_adv, grad, x_nat, teacher, adv)
    loss.backward()
    assert torch.equal(x_adv, expected_x)
    assert torch.allclose(loss, reference.fr_loss(teacher, adv), rtol=1e-5)
    assert adv.grad is not None


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
def test_compiled_step_with_per_sample_values_and_clip(device):
    def step(x_adv, grad, x_nat, alpha, eps):
        return fr_fast.pgd_step_(x_adv, grad, x_nat, alpha, eps, None, 2.0)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x_adv, grad, x_nat = _images((3, 3, 4, 4), device=device)
    alpha, eps = torch.tensor([0.1, 0.2, 0.3], device=device), torch.tensor([0.0, 0.5, 1.0], device=device)
    expected = reference.pgd_step_(x_adv.clone(), grad, x_nat, alpha, eps, None, 2.0)
    compiled(x_adv, grad, x_nat, alpha, eps)
    assert torch.equal(x_adv, expected)


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fr_l1_double_backward(device, reduction):
    a = torch.randn(4, 6, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(4, 6, dtype=torch.float64, device=device, requires_grad=True)
    code = REDUCTION_CODES[reduction]
    assert torch.autograd.gradgradcheck(lambda x, y: torch.ops.fr_fast.fr_l1(x, y, code), (a, b))
    # A gradient penalty of the FR term has the torch.fft reference's gradients.
    upstream = torch.rand((4,) if reduction == "none" else (), dtype=torch.float64, device=device, requires_grad=True)
    penalties = []
    for fn in (lambda x, y: torch.ops.fr_fast.fr_l1(x, y, code), lambda x, y: reference.fr_loss(x, y, "l1", reduction)):
        (grad,) = torch.autograd.grad(fn(a, b), a, upstream, create_graph=True)
        penalties.append(torch.autograd.grad((grad ** 2).sum(), (a, b, upstream), allow_unused=True,
                                             materialize_grads=True))
    assert penalties[0][2].abs().sum() > 0
    for ours, theirs in zip(*penalties):
        _close(ours, theirs, 1e-10)


@requires_extension
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_fr_l1_backward_rejects_grad_on_another_device():
    a, b = torch.randn(4, 10, device="cuda"), torch.randn(4, 10, device="cuda")
    with pytest.raises(ValueError, match="grad is on cpu"):
        torch.ops.fr_fast.fr_l1_backward(torch.ones(()), a, b, 1)


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


def _same(actual, expected, ulps=0):
    """NaN exactly where expected has NaN; elsewhere equal (or within `ulps` units of the dtype's epsilon)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert torch.equal(actual.isnan(), expected.isnan())
    a, e = (torch.where(t.isnan(), torch.zeros_like(t), t) for t in (actual, expected))
    if ulps == 0:
        assert torch.equal(a, e)
    else:
        assert ((a.double() - e.double()).abs() <= ulps * torch.finfo(a.dtype).eps).all()


def _with_specials(x_adv, grad, x_nat):
    """NaN and infinities in each operand, at different and at shared positions."""
    flat = [t.view(-1) if t.is_contiguous() else t.permute(0, 2, 3, 1).reshape(-1) for t in (x_adv, grad, x_nat)]
    nan, inf = float("nan"), float("inf")
    for t, first in zip(flat, (0, 1, 2)):
        t[first::11] = nan
    flat[0][3::13], flat[1][4::13], flat[2][5::13] = inf, -inf, -inf
    flat[0][6::17] = flat[2][6::17] = nan
    return x_adv, grad, x_nat


def _ulps(dtype):
    return 0 if dtype in (torch.float32, torch.float64) else 2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pgd_step_nan_and_inf_as_clamp_chain(device, dtype, channels_last):
    x_adv, grad, x_nat = _with_specials(*_images((4, 3, 8, 8), dtype, device, channels_last))
    expected = reference.pgd_step_(x_adv.clone(), grad, x_nat, 2 / 255, 8 / 255)
    fr_fast.pgd_step_(x_adv, grad, x_nat, 2 / 255, 8 / 255)
    assert expected.isnan().any() and not expected.isnan().all()
    _same(x_adv, expected, _ulps(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_random_start_nan_as_reference(device, dtype):
    _, _, x_nat = _with_specials(*_images((4, 3, 8, 8), dtype, device))
    torch.manual_seed(5)
    expected = reference.random_start_(torch.empty_like(x_nat), x_nat, 8 / 255)
    torch.manual_seed(5)
    actual = fr_fast.random_start_(torch.empty_like(x_nat), x_nat, 8 / 255)
    _same(actual, expected, _ulps(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("clip", [(None, None), (0.0, 255.0), (None, 200.0), (-1.0, None), (0.5, 0.5)])
def test_pgd_step_clip_bounds(device, clip):
    x_adv, grad, x_nat = (t * 255 for t in _images(device=device))  # 0-255 images: eps and alpha scale too
    x_adv[0, 0, 0, :4] = torch.tensor([-3.0, 300.0, 0.2, 254.9])
    expected = reference.pgd_step_(x_adv.clone(), grad, x_nat, 2.0, 8.0, *clip)
    fr_fast.pgd_step_(x_adv, grad, x_nat, 2.0, 8.0, *clip)
    assert torch.equal(x_adv, expected)
    if clip == (None, None):
        assert x_adv.max() > 1  # not clipped to [0, 1] silently
    assert clip[0] is None or x_adv.min() >= clip[0]
    assert clip[1] is None or x_adv.max() <= clip[1]


@pytest.mark.parametrize("device", DEVICES)
def test_random_start_clip_bounds(device):
    x_nat = torch.rand(4, 3, 8, 8, device=device) * 255
    torch.manual_seed(1)
    expected = reference.random_start_(torch.empty_like(x_nat), x_nat, 8.0, None, None)
    torch.manual_seed(1)
    actual = fr_fast.random_start_(torch.empty_like(x_nat), x_nat, 8.0, None, None)
    assert torch.equal(actual, expected) and actual.max() > 1 and (actual - x_nat).abs().max() <= 8.0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "batch_inner", "strided"])
@pytest.mark.parametrize("which", ["alpha", "eps", "both"])
def test_pgd_step_per_sample_alpha_eps(device, dtype, layout, which):
    x_adv, grad, x_nat = _images((6, 3, 5, 7), dtype, device, channels_last=layout == "channels_last")
    if layout == "batch_inner":  # dense, but the batch is not the outermost dimension in memory
        x_adv = x_adv.transpose(0, 1).contiguous().transpose(0, 1)
    if layout == "strided":
        x_adv = torch.stack([x_adv, x_adv], -1)[..., 0]
    alpha = torch.linspace(0.0, 0.05, 6, device=device) if which != "eps" else 0.01
    eps = torch.tensor([0.0, 0.01, 0.02, 0.03, 0.5, 1.0], device=device) if which != "alpha" else 0.03
    expected = reference.pgd_step_(x_adv.clone(), grad, x_nat, alpha, eps)
    assert fr_fast.pgd_step_(x_adv, grad, x_nat, alpha, eps) is x_adv
    # A scalar alpha or eps is rounded to 16 bits by the clamp chain, not by the kernel: one ulp apart.
    _same(x_adv, expected, 0 if which == "both" else _ulps(dtype))
    if which != "alpha":
        assert torch.equal(x_adv[0], x_nat[0])  # eps = 0: no move


@pytest.mark.parametrize("device", DEVICES)
def test_random_start_per_sample_eps(device):
    x_nat = torch.rand(5, 3, 4, 4, device=device)
    eps = torch.tensor([0.0, 0.01, 0.1, 0.2, 0.3], device=device)
    torch.manual_seed(2)
    expected = reference.random_start_(torch.empty_like(x_nat), x_nat, eps)
    torch.manual_seed(2)
    actual = fr_fast.random_start_(torch.empty_like(x_nat), x_nat, eps)
    assert torch.equal(actual, expected) and torch.equal(actual[0], x_nat[0])
    assert ((actual - x_nat).abs().amax(dim=(1, 2, 3)) <= eps + 1e-6).all()


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
def test_fr_l1_with_grad_is_the_gradient_for_an_upstream_of_one(device):
    for shape in ((128, 10), (64, 300)):  # the small direct path and the FFT path (CPU and CUDA)
        a = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
        b = torch.randn(shape, dtype=torch.float64, device=device)
        for reduction, code in REDUCTION_CODES.items():
            loss, pattern = torch.ops.fr_fast.fr_l1_with_grad(a.detach(), b, code)
            expected = reference.fr_loss(a, b, "l1", reduction)
            _close(loss, expected, 1e-12)
            (expected_grad,) = torch.autograd.grad(expected, a, torch.ones_like(expected))
            _close(pattern, expected_grad, 1e-10)


def test_pgd_step_general_path_for_other_argument_types():
    x_adv, grad, x_nat = _images((2, 3, 4, 4))
    expected = reference.pgd_step_(x_adv.clone(), grad, x_nat, 0.01, 0.03)
    as_parameter = torch.nn.Parameter(x_adv.clone(), requires_grad=False)  # a Tensor subclass
    fr_fast.pgd_step_(as_parameter, grad, x_nat, 0.01, 0.03)
    assert torch.equal(as_parameter.data, expected)
    fr_fast.pgd_step_(x_adv, grad, x_nat, torch.tensor(0.01).item(), 3 / 100)
    assert torch.equal(x_adv, expected)
    with pytest.raises(TypeError, match="x_adv must be a torch.Tensor"):
        fr_fast.pgd_step_([0.5], grad, x_nat, 0.01, 0.03)
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        fr_fast.pgd_step_(x_adv, grad, x_nat, "0.01", 0.03)


def _kernel_and_reference_paths(monkeypatch, device):
    """Yields once with the fused kernels dispatching, once with the Python reference path."""
    yield "fused"
    monkeypatch.setattr(ops, "_KERNEL_DEVICES", frozenset())
    monkeypatch.setattr(ops, "_step_entry", None)
    monkeypatch.setattr(ops, "_warned", True)
    yield "reference"


@pytest.mark.parametrize("device", DEVICES)
def test_overlapping_operands_raise(monkeypatch, device):
    for _ in _kernel_and_reference_paths(monkeypatch, device):
        x_adv, grad, x_nat = _images((2, 3, 4, 4), device=device)
        buffer = torch.rand(64, device=device)
        before = x_adv.clone()
        for call in (lambda: fr_fast.pgd_step_(x_adv, x_adv, x_nat, 0.01, 0.03),
                     lambda: fr_fast.pgd_step_(x_adv, grad, x_adv, 0.01, 0.03),
                     lambda: fr_fast.pgd_step_(buffer[:40], buffer[20:60], buffer[:40].clone(), 0.01, 0.03),
                     lambda: fr_fast.random_start_(x_adv, x_adv, 0.03)):
            with pytest.raises(ValueError, match="share memory"):
                call()
        assert torch.equal(x_adv, before)  # nothing was written, not even the random start's noise
        fr_fast.pgd_step_(x_adv, grad, grad, 0.01, 0.03)  # read-only operands may alias each other


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x, g, x0: fr_fast.pgd_step_(x, g, x0, x.new_full((3,), 0.1), 0.1), r"shape \(2,\)"),
        (lambda x, g, x0: fr_fast.pgd_step_(x, g, x0, 0.1, x.new_tensor([0.1, -0.1])), "eps must be finite and >= 0"),
        (lambda x, g, x0: fr_fast.pgd_step_(x, g, x0, x.new_tensor([0.1, float("nan")]), 0.1), "alpha must be finite"),
        (lambda x, g, x0: fr_fast.pgd_step_(x, g, x0, 0.1, 0.1, 1.0, 0.0), "clip_min <= clip_max"),
        (lambda x, g, x0: fr_fast.pgd_step_(x, g, x0, 0.1, 0.1, float("nan"), None), "clip_min"),
        (lambda x, g, x0: fr_fast.random_start_(x, x0, x.new_tensor([0.1, -0.1])), "eps must be finite and >= 0"),
        (lambda x, g, x0: fr_fast.random_start_(x, x0, 0.1, 2.0, 1.0), "clip_min <= clip_max"),
        (lambda x, g, x0: fr_fast.pgd_step_(x, g, x0, x.new_ones(2, dtype=torch.long), 0.1), "floating-point"),
    ],
)
def test_per_sample_and_clip_bad_input(monkeypatch, device, call, message):
    for _ in _kernel_and_reference_paths(monkeypatch, device):
        x_adv, grad, x_nat = _images((2, 3, 4, 4), device=device)
        with pytest.raises(ValueError, match=message):
            call(x_adv, grad, x_nat)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_pgd_step_unaligned_and_odd_sizes(device, dtype):
    # Views at an odd element offset and sizes that are not a multiple of the vector width take the
    # element-wise path of the CUDA kernel (and the tails of the vector path).
    for numel in (1, 7, 8, 9, 4099):
        for offset in (0, 1, 3):
            x_adv, grad, x_nat = (torch.rand(numel + offset, device=device).to(dtype)[offset:] for _ in range(3))
            expected = reference.pgd_step_(x_adv.clone(), grad - 0.5, x_nat, 0.01, 0.03)
            fr_fast.pgd_step_(x_adv, grad - 0.5, x_nat, 0.01, 0.03)
            _same(x_adv, expected, _ulps(dtype))


def test_reference_fallback_warns_once_and_matches(monkeypatch):
    # the extension loaded but has no kernel for the device (e.g. a C++-only build, CUDA tensors): one warning at
    # the first op (a load failure is reported at import instead: tests/test_packaging.py)
    monkeypatch.setattr(ops, "_KERNEL_DEVICES", frozenset())
    monkeypatch.setattr(ops, "_step_entry", None)
    monkeypatch.setattr(ops, "_warned", False)
    assert fr_fast.backend("cpu") == "reference"
    x_adv, grad, x_nat = _images()
    expected = reference.pgd_step_(x_adv.clone(), grad, x_nat, 0.01, 0.03)
    with pytest.warns(RuntimeWarning, match="no fused kernel for device type 'cpu'"):
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
