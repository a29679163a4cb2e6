"""The fused 2-D FR op (fr_loss(fft="2d"), fr_fast::fr2d_l1) against autograd through torch.fft."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fr_fast
from fr_fast.ops import functional as ops

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
requires_extension = pytest.mark.skipif(ops.EXTENSION_ERROR is not None, reason="fr_fast._C not built")
CODES = {"mean": 1, "sum": 2}
# Shapes: odd and even B and C, B or C = 1, the presets' (128, 10), and sizes past the CUDA crossover.
# On CPU, B * C <= 4096 with factors 2, 3, 5, 7 take the small-FFT path ((64, 64) and (35, 105): every
# radix), the others ATen's FFT: a prime factor ((33, 11), (64, 101)) or the size ((60, 70), (128, 200)).
SHAPES = [(1, 1), (1, 10), (7, 1), (2, 2), (3, 5), (4, 6), (5, 7), (8, 10), (33, 11), (128, 10), (64, 101),
          (64, 64), (35, 105), (60, 70), (128, 200)]


def torch_fft_2d(a, b, reduction):
    """The authors' form: L1 between the stacked real/imaginary parts of two 2-D FFTs (float32 for 16-bit)."""
    a, b = (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in (a, b))
    spec_a, spec_b = torch.view_as_real(torch.fft.fft2(a)), torch.view_as_real(torch.fft.fft2(b))
    return torch.nn.functional.l1_loss(spec_a, spec_b, reduction=reduction)


def _leaves(shape, dtype, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    a, b = (torch.randn(shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
            for _ in range(2))
    return a.requires_grad_(), b.requires_grad_()


def _compare(a, b, reduction, value_tol, grad_tol, upstream=1.0):
    """fr_loss(fft="2d") and its gradients versus torch_fft_2d on the same (rounded) inputs."""
    loss = fr_fast.fr_loss(a, b, fft="2d", reduction=reduction)
    ref_dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    ra, rb = (t.detach().to(ref_dtype).requires_grad_() for t in (a, b))
    expected = torch_fft_2d(ra, rb, reduction)
    assert loss.dtype == ref_dtype and loss.shape == ()
    scale = expected.abs().clamp_min(1.0)
    assert (loss.double() - expected.double()).abs() <= value_tol * scale
    grads = torch.autograd.grad(loss, (a, b), torch.tensor(upstream, dtype=loss.dtype, device=loss.device))
    expected_grads = torch.autograd.grad(expected, (ra, rb), torch.tensor(upstream, dtype=ref_dtype,
                                                                            device=loss.device))
    for grad, expected_grad in zip(grads, expected_grads):
        assert grad.dtype == a.dtype and grad.shape == a.shape
        g_scale = expected_grad.abs().max().clamp_min(1e-30)
        assert (grad.double() - expected_grad.double()).abs().max() <= grad_tol * g_scale


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_float64_matches_torch_fft(device, shape, reduction):
    a, b = _leaves(shape, torch.float64, device)
    _compare(a, b, reduction, 1e-12, 1e-12, upstream=0.7)


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (4, 6), (128, 10), (64, 101)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_low_precision_matches_torch_fft(device, dtype, shape, reduction):
    a, b = _leaves(shape, dtype, device)
    # float32 arithmetic in both; a sign that flips on a bin within round-off of 0 moves one gradient
    # entry by 2s, hence the looser gradient bound for 16-bit outputs (rounded once).
    _compare(a, b, reduction, 1e-5, 1e-5 if dtype == torch.float32 else 1e-2)


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["transposed", "strided_rows", "strided_cols", "offset_block"])
def test_non_contiguous_inputs(device, layout):
    base_a, base_b = _leaves((2, 24, 30), torch.float64, device)
    view = {"transposed": lambda t: t[0].t(), "strided_rows": lambda t: t[0, ::3], "strided_cols": lambda t: t[1, :, ::2],
            "offset_block": lambda t: t[1, 3:, 5:]}
    a, b = view[layout](base_a), view[layout](base_b)
    assert not a.is_contiguous()
    _compare(a, b, "mean", 1e-12, 1e-12)


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
def test_expanded_inputs(device):
    """Stride-0 rows: equal rows make every other spectrum row 0, where the subgradient is not unique
    (torch.fft's sign of its round-off there is as good as ours): the value is compared."""
    a, b = (t[0, :1].expand(5, 30) for t in _leaves((2, 24, 30), torch.float64, device))
    expected = torch_fft_2d(a.detach(), b.detach(), "mean")
    assert (fr_fast.fr_loss(a, b, fft="2d") - expected).abs() <= 1e-12


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(4, 6), (5, 7), (128, 200)])
@pytest.mark.parametrize("special", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_propagate_as_torch_fft(device, shape, special):
    a, b = _leaves(shape, torch.float32, device)
    with torch.no_grad():
        a[1 % shape[0], 2] = special
    loss = fr_fast.fr_loss(a, b, fft="2d")
    expected = torch.view_as_real(torch.fft.fft2(a.detach() - b.detach())).abs().mean()
    assert torch.isnan(loss) == torch.isnan(expected) and torch.isinf(loss) == torch.isinf(expected)
    assert not torch.isfinite(loss)
    (grad,) = torch.autograd.grad(loss, a)  # a gradient of the right shape, no error
    assert grad.shape == a.shape


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 10), (4, 0)])
def test_empty_logits_refused_as_torch_fft(device, shape):
    a, b = torch.zeros(shape, device=device), torch.zeros(shape, device=device)
    with pytest.raises(RuntimeError):
        torch_fft_2d(a, b, "mean")
    with pytest.raises(ValueError, match="at least one row and one class"):
        fr_fast.fr_loss(a, b, fft="2d")


@requires_extension
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradcheck_and_gradgradcheck(reduction):
    a, b = _leaves((3, 5), torch.float64, "cpu")
    fn = lambda x, y: torch.ops.fr_fast.fr2d_l1(x, y, CODES[reduction])  # noqa: E731
    assert torch.autograd.gradcheck(fn, (a, b))
    assert torch.autograd.gradgradcheck(fn, (a, b))


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
def test_with_grad_is_the_gradient_for_an_upstream_of_one(device):
    for shape in ((8, 10), (128, 200)):
        a, b = _leaves(shape, torch.float64, device)
        for reduction, code in CODES.items():
            loss, pattern = torch.ops.fr_fast.fr2d_l1_with_grad(a.detach(), b.detach(), code)
            expected = torch_fft_2d(a, b, reduction)
            (expected_grad,) = torch.autograd.grad(expected, a)
            assert (loss - expected).abs() <= 1e-12 * expected.abs().clamp_min(1)
            assert (pattern - expected_grad).abs().max() <= 1e-12 * expected_grad.abs().max()


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    a, b = (t.detach() for t in _leaves((5, 10), torch.float32, device))
    for code in CODES.values():
        torch.library.opcheck(torch.ops.fr_fast.fr2d_l1.default, (a.requires_grad_(), b, code))
        torch.library.opcheck(torch.ops.fr_fast.fr2d_l1_with_grad.default, (a.detach(), b, code))


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
def test_compiles_fullgraph(device):
    compiled = torch.compile(lambda x, y: fr_fast.fr_loss(x, y, fft="2d"), fullgraph=True, backend="aot_eager")
    a, b = _leaves((16, 10), torch.float32, device)
    loss = compiled(a, b)
    (grad,) = torch.autograd.grad(loss, a)
    expected = torch_fft_2d(a, b, "mean")
    (expected_grad,) = torch.autograd.grad(expected, a)
    assert torch.allclose(loss, expected, rtol=1e-5) and torch.allclose(grad, expected_grad, atol=1e-6)


class _OpNames(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


@requires_extension
def test_fr_loss_2d_runs_a_fr_fast_op_on_cpu():
    for grad in (False, True):
        with _OpNames() as seen:
            loss = fr_fast.fr_loss(torch.randn(8, 10, requires_grad=grad), torch.randn(8, 10), fft="2d")
        assert any(name.startswith("fr_fast.fr2d_l1") for name in seen.names), seen.names
        assert not any("fft" in name for name in seen.names), seen.names
        assert torch.isfinite(loss)


@requires_extension
@pytest.mark.parametrize("shape", [(128, 10), (512, 200)])  # small-FFT and ATen paths
def test_multithreaded_equals_single_threaded(shape):
    a, b = _leaves(shape, torch.float32, "cpu")
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            loss = fr_fast.fr_loss(a, b, fft="2d")
            results.append((loss, *torch.autograd.grad(loss, (a, b))))
    finally:
        torch.set_num_threads(previous)
    for first, second in zip(*results):
        assert torch.equal(first, second)


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
def test_raw_op_refuses_bad_arguments(device):
    a, b = _leaves((4, 6), torch.float32, device)
    with pytest.raises(ValueError, match="reduction code"):
        torch.ops.fr_fast.fr2d_l1(a, b, 0)
    with pytest.raises(ValueError, match="reduction code"):
        torch.ops.fr_fast.fr2d_l1_with_grad(a.detach(), b.detach(), 7)
    with pytest.raises(ValueError, match="same shape"):
        torch.ops.fr_fast.fr2d_l1(a, b[:, :5], 1)


# ------------------------------------------------------------------------------------------ CUDA only

@requires_extension
@CUDA
@pytest.mark.parametrize("shape", [(128, 10), (128, 200), (1024, 1000)])  # one-kernel and cuFFT paths
def test_cuda_twice_in_a_row_and_in_a_cuda_graph(shape):
    """The grid counter of the last-block reduction resets itself: repeated calls and graph replays agree."""
    a, b = (t.detach() for t in _leaves(shape, torch.float32, "cuda"))
    first = torch.ops.fr_fast.fr2d_l1_with_grad(a, b, 1)
    second = torch.ops.fr_fast.fr2d_l1_with_grad(a, b, 1)
    assert all(torch.equal(x, y) for x, y in zip(first, second))  # bit-identical: fixed-order reduction
    expected = torch_fft_2d(a.double(), b.double(), "mean")
    assert (first[0].double() - expected).abs() <= 1e-5 * expected
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.ops.fr_fast.fr2d_l1_with_grad(a, b, 1)  # warm-up on the capture stream
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = torch.ops.fr_fast.fr2d_l1_with_grad(a, b, 1)
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured[0], first[0]) and torch.equal(captured[1], first[1])
