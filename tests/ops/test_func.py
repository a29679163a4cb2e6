"""The fused ops under torch.func (grad, vmap(grad), jacrev, jvp), double backward and full-graph compile."""
import pytest
import torch
from torch.func import grad, jacfwd, jacrev, vmap

import fr_fast
from fr_fast.ops import functional as ops
from fr_fast.ops import reference

requires_extension = pytest.mark.skipif(ops.EXTENSION_ERROR is not None, reason="fr_fast._C not built")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
# (fft, reduction) pairs fr_loss accepts for the L1 distance
FORMS = [("1d", "mean"), ("1d", "sum"), ("1d", "none"), ("2d", "mean"), ("2d", "sum")]


def _fused(fft, reduction):
    return lambda t, a: fr_fast.fr_loss(t, a, "l1", reduction, fft)


def _torch_fft(fft, reduction):
    return lambda t, a: reference.fr_loss(t, a, "l1", reduction, fft)


def _pair(shape=(6, 10), device="cpu", seed=0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=generator, dtype=torch.float64).to(device) for _ in range(2))


def _scalar(fn, reduction):
    """A scalar function of the logits (grad needs one) that weights every row differently for "none"."""
    if reduction != "none":
        return fn
    return lambda t, a: (fn(t, a) * torch.linspace(0.5, 1.5, t.shape[0], dtype=t.dtype, device=t.device)).sum()


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fft, reduction", FORMS)
def test_grad_and_jacrev_equal_torch_fft(device, fft, reduction):
    teacher, adv = _pair(device=device)
    ours, theirs = _scalar(_fused(fft, reduction), reduction), _scalar(_torch_fft(fft, reduction), reduction)
    for transform in (lambda f: grad(f, argnums=(0, 1)), lambda f: jacrev(f, argnums=(0, 1))):
        for mine, expected in zip(transform(ours)(teacher, adv), transform(theirs)(teacher, adv)):
            torch.testing.assert_close(mine, expected, rtol=0, atol=1e-12)
    if reduction == "none":  # the per-row loss itself: a (B, B, C) Jacobian
        torch.testing.assert_close(jacrev(_fused(fft, reduction))(teacher, adv),
                                   jacrev(_torch_fft(fft, reduction))(teacher, adv), rtol=0, atol=1e-12)


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fft, reduction", FORMS)
def test_vmap_of_grad_gives_per_sample_gradients(device, fft, reduction):
    """vmap(grad(...)) over a leading dimension of stacked logit matrices, one unbatched input included."""
    teacher = torch.randn(3, 5, 10, dtype=torch.float64, device=device)
    adv = torch.randn(3, 5, 10, dtype=torch.float64, device=device)
    ours, theirs = _scalar(_fused(fft, reduction), reduction), _scalar(_torch_fft(fft, reduction), reduction)
    torch.testing.assert_close(vmap(grad(ours))(teacher, adv), vmap(grad(theirs))(teacher, adv), rtol=0, atol=1e-12)
    in_dims = (0, None)
    torch.testing.assert_close(vmap(grad(ours, argnums=1), in_dims)(teacher, adv[0]),
                               vmap(grad(theirs, argnums=1), in_dims)(teacher, adv[0]), rtol=0, atol=1e-12)
    torch.testing.assert_close(vmap(_fused(fft, reduction))(teacher, adv), vmap(_torch_fft(fft, reduction))(teacher, adv),
                               rtol=0, atol=1e-12)


@requires_extension
@pytest.mark.parametrize("fft, reduction", FORMS)
def test_forward_mode_jvp(fft, reduction):
    teacher, adv = _pair()
    torch.testing.assert_close(jacfwd(_fused(fft, reduction))(teacher, adv),
                               jacfwd(_torch_fft(fft, reduction))(teacher, adv), rtol=0, atol=1e-12)


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fft, reduction", FORMS)
def test_double_backward_is_zero_as_torch_fft(device, fft, reduction):
    """The loss is piecewise linear: the gradient of its gradient is zero, and defined (no error)."""
    for fn in (_fused(fft, reduction), _torch_fft(fft, reduction)):
        teacher, adv = (t.requires_grad_() for t in _pair(device=device))
        loss = _scalar(fn, reduction)(teacher, adv)
        (first,) = torch.autograd.grad(loss, teacher, create_graph=True)
        second = torch.autograd.grad((first ** 2).sum(), (teacher, adv))
        assert all(torch.equal(g, torch.zeros_like(g)) for g in second)
    hessian = torch.func.hessian(_scalar(_fused(fft, reduction), reduction))(*_pair(device=device))
    assert torch.equal(hessian, torch.zeros_like(hessian))


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
def test_random_start_and_pgd_step_trace_fullgraph(device):
    def attack(x_adv, grad_, x_nat):
        fr_fast.random_start_(x_adv, x_nat, 8 / 255)
        fr_fast.pgd_step_(x_adv, grad_, x_nat, 2 / 255, 8 / 255)
        return x_adv

    compiled = torch.compile(attack, fullgraph=True, backend="aot_eager")
    x_nat = torch.rand(4, 3, 8, 8, device=device)
    grad_ = torch.randn_like(x_nat)
    torch.manual_seed(1)
    expected = reference.pgd_step_(reference.random_start_(torch.empty_like(x_nat), x_nat, 8 / 255), grad_, x_nat,
                                   2 / 255, 8 / 255)
    torch.manual_seed(1)
    result = compiled(torch.empty_like(x_nat), grad_, x_nat)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-6)  # aot_eager may fuse the noise ops differently


@requires_extension
def test_compiled_random_start_still_refuses_overlap():
    """Under compile the data_ptr-based check gives way to an identity check (a traced graph functionalises
    the in-place ops, so the kernel sees copies)."""
    compiled = torch.compile(lambda x, x0: fr_fast.random_start_(x, x0, 0.1), fullgraph=True, backend="aot_eager")
    x = torch.rand(2, 3, 4, 4)
    with pytest.raises(Exception, match="share memory"):  # fullgraph wraps the ValueError in dynamo's error
        compiled(x, x)
