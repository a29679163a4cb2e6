"""The fused ops: input checks, backend choice and autograd wiring. Kernels live in csrc/.

Python decides, kernels compute: every public function validates its arguments, picks the C++/CUDA
kernel when the extension provides one for the tensors' device, and otherwise falls back to
``fr_fast.ops.reference`` (with a one-time warning: at import when the extension did not load, else at
the first op on a device it has no kernel for).
"""
from __future__ import annotations

import math
import sys
import warnings

import torch
from torch import Tensor

from fr_fast.ops import _extension, reference
from fr_fast.ops._extension import LOAD_ERROR as EXTENSION_ERROR  # None once the kernels are registered
from fr_fast.ops.reference import DISTANCES, FFT_MODES, REDUCTIONS
from fr_fast.utils.checks import check_choice, check_radius

_REDUCTION_CODES = {"none": 0, "mean": 1, "sum": 2}
_warned = False


def _devices_with_kernels() -> frozenset[str]:
    if EXTENSION_ERROR is not None:
        return frozenset()
    return frozenset(device for device, key in (("cpu", "CPU"), ("cuda", "CUDA"))
                     if torch._C._dispatch_has_kernel_for_dispatch_key("fr_fast::pgd_step_", key))


# Looked up once: backend() then stays plain Python that torch.compile traces without a graph break.
_KERNEL_DEVICES = _devices_with_kernels()
# fr_fast._C.pgd_step_ / .fr_loss: the ops without torch.ops' generic argument parsing, checked in C++
# (None: not built).
_step_entry = getattr(sys.modules.get("fr_fast._C"), "pgd_step_", None) if EXTENSION_ERROR is None else None
_loss_entry = getattr(sys.modules.get("fr_fast._C"), "fr_loss", None) if EXTENSION_ERROR is None else None


def backend(device: str | torch.device = "cpu") -> str:
    """Which implementation runs the fused ops for tensors on ``device``: "cuda", "cpp" or "reference"."""
    device_type = torch.device(device).type
    if EXTENSION_ERROR is not None or device_type not in _KERNEL_DEVICES:
        return "reference"
    return "cpp" if device_type == "cpu" else "cuda"


def _fused(device: torch.device) -> bool:
    global _warned
    if device.type in _KERNEL_DEVICES:  # the hot path: one set lookup
        return True
    if not _warned and EXTENSION_ERROR is None:  # a load error was reported once, at import
        _warned = True
        reason = _extension.no_kernel_reason(device.type, _extension.build_info())
        warnings.warn(f"fr_fast: fused kernels unavailable ({reason}); using the pure-PyTorch reference ops",
                      RuntimeWarning, stacklevel=3)
    return False


def _check_float_tensor(name: str, tensor: object) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")


def _check_pair(op: str, first: tuple[str, Tensor], second: tuple[str, Tensor]) -> None:
    (name_a, a), (name_b, b) = first, second
    if a.shape != b.shape:
        raise ValueError(f"{op}: {name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"{op}: {name_a} is on {a.device} but {name_b} is on {b.device}")


# --------------------------------------------------------------------------------------------- FR loss

def fr_loss(teacher_logits: Tensor, adv_logits: Tensor, distance: str = "l1", reduction: str = "mean",
            fft: str = "1d") -> Tensor:
    """Frequency-regularisation distance between teacher and adversarial logits (the λ-free term of Eq. 2).

    Parameters
    ----------
    teacher_logits, adv_logits : (B, C) floating tensors on one device (any strides). Mixed dtypes are
        promoted. Gradients flow to both unless the caller detaches one.
    distance : "l1" (the paper), "l2" or "cosine" (its ablation). Formulas in ``fr_fast.ops.reference.fr_loss``.
        By Parseval, l2 equals sqrt(C)·‖a − b‖₂ and cosine equals 1 − cos(a, b) in logit space, so both
        are computed without a DFT.
    reduction : "mean" (the paper's 1/n Σ_i), "sum" or "none" (a (B,) tensor).
    fft : "1d" (DFT over classes: Eq. 2 as printed) or "2d" (the authors' code: one 2-D DFT over the whole
        (B, C) matrix, L1 averaged over all 2·B·C real and imaginary parts; one value, no "none"). The
        published numbers were produced with "2d" (the trainer's default, ``TrainConfig.fft``); "1d" is
        ~2C/sqrt(B) times stronger at the same lam. The 2-D l2 and cosine are our definitions (the
        authors publish none), in ``reference.fr_loss``; by Parseval l2 is sqrt(BC)·‖a − b‖_F ("sum") or
        ‖a − b‖_F / sqrt(2) ("mean") and cosine is 1 − cos(vec a, vec b), computed without a DFT.

    Returns
    -------
    Tensor: float32 for float16/bfloat16/float32 inputs, float64 for float64.

    The L1 forms run the fused ops (fr_fast::fr_l1, fr_fast::fr2d_l1) on CPU and CUDA; they work with
    torch.func (grad, vmap, jacrev, jvp), double backward (zeros, as torch.fft) and torch.compile(fullgraph=True).
    """
    if _loss_entry is not None and not torch.compiler.is_compiling():  # the hot path: C++ checks everything
        loss = _loss_entry(teacher_logits, adv_logits, distance, reduction, fft)
        if loss is not NotImplemented:
            return loss
    _check_float_tensor("teacher_logits", teacher_logits)
    _check_float_tensor("adv_logits", adv_logits)
    check_choice("distance", distance, DISTANCES)
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("fft", fft, FFT_MODES)
    if teacher_logits.dim() != 2:
        raise ValueError(f"fr_loss expects (batch, classes) logits, got shape {tuple(teacher_logits.shape)}")
    _check_pair("fr_loss", ("teacher_logits", teacher_logits), ("adv_logits", adv_logits))
    if fft == "2d" and reduction == "none":
        raise ValueError("fft='2d' gives one value for the batch: use reduction 'mean' or 'sum'")
    dtype = teacher_logits.dtype
    if adv_logits.dtype != dtype:
        dtype = torch.promote_types(dtype, adv_logits.dtype)
        teacher_logits, adv_logits = teacher_logits.to(dtype), adv_logits.to(dtype)
    compute_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    if distance == "l1" and _fused(teacher_logits.device):  # fr_fast::fr_l1 (1-D) or fr_fast::fr2d_l1 (2-D)
        code = _REDUCTION_CODES[reduction]
        if _transforms_active():
            return _FunctorchFR.apply(teacher_logits, adv_logits, fft, code)[0]
        op = torch.ops.fr_fast.fr2d_l1 if fft == "2d" else torch.ops.fr_fast.fr_l1
        return op(teacher_logits, adv_logits, code)
    if fft == "2d" and distance != "l1":
        return _fr_2d_parseval(teacher_logits.to(compute_dtype), adv_logits.to(compute_dtype), distance, reduction)
    if fft == "2d":
        diff = teacher_logits.to(compute_dtype) - adv_logits.to(compute_dtype)
        parts = torch.view_as_real(torch.fft.fft2(diff)).abs()  # linearity: one 2-D FFT instead of two
        return parts.mean() if reduction == "mean" else parts.sum()
    if distance == "l2":
        diff = teacher_logits.to(compute_dtype) - adv_logits.to(compute_dtype)
        return reference._reduce(diff.norm(dim=-1) * math.sqrt(diff.shape[-1]), reduction)  # Parseval
    if distance == "cosine":
        similarity = torch.nn.functional.cosine_similarity(
            teacher_logits.to(compute_dtype), adv_logits.to(compute_dtype), dim=-1, eps=1e-8)
        return reference._reduce(1.0 - similarity, reduction)
    return reference.fr_loss(teacher_logits, adv_logits, "l1", reduction, "1d")


def _fr_2d_parseval(teacher: Tensor, adv: Tensor, distance: str, reduction: str) -> Tensor:
    """The 2-D l2 / cosine FR terms of ``reference.fr_loss`` in closed form (Parseval: ‖F2 d‖² = BC‖d‖²,
    Re<F2 a, F2 b> = BC<a, b>), without a DFT."""
    if distance == "l2":
        norm = (teacher - adv).norm()
        return norm / math.sqrt(2.0) if reduction == "mean" else norm * math.sqrt(teacher.numel())
    return 1.0 - torch.nn.functional.cosine_similarity(teacher.flatten(), adv.flatten(), dim=0, eps=1e-8)


def _transforms_active() -> bool:
    """Whether a torch.func transform (grad, vmap, jacrev, jvp, ...) is running around this call."""
    return not torch.compiler.is_compiling() and torch._C._functorch.peek_interpreter_stack() is not None


class _FunctorchFR(torch.autograd.Function):
    """The fused FR ops under torch.func transforms, which cannot run the ops' C++ autograd.

    ``forward`` runs fr_l1_with_grad / fr2d_l1_with_grad: the loss and its gradient for an upstream of 1
    (the "pattern"). The loss is piecewise linear, so the gradient is upstream * pattern and the pattern's
    own derivative is zero: double backward gives zeros, as autograd through torch.fft does. The
    pattern stays a (differentiable) output so that the first gradient is connected to the inputs.
    vmap comes from the ops' vmap rules (``_register_vmap_rules``).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(teacher: Tensor, adv: Tensor, fft: str, reduction: int) -> tuple[Tensor, Tensor]:
        op = torch.ops.fr_fast.fr2d_l1_with_grad if fft == "2d" else torch.ops.fr_fast.fr_l1_with_grad
        return op(teacher, adv, reduction)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        teacher, _, fft, reduction = inputs
        ctx.save_for_backward(output[1])
        ctx.save_for_forward(output[1])
        ctx.per_row = fft == "1d" and reduction == _REDUCTION_CODES["none"]
        ctx.dtype = teacher.dtype

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_pattern: Tensor):
        (pattern,) = ctx.saved_tensors
        grad = (grad_loss.unsqueeze(-1) if ctx.per_row else grad_loss) * pattern
        return grad.to(ctx.dtype), grad.neg().to(ctx.dtype), None, None

    @staticmethod
    def jvp(ctx, tangent_teacher: Tensor | None, tangent_adv: Tensor | None, _fft, _reduction):
        (pattern,) = ctx.saved_tensors
        tangent = torch.zeros_like(pattern)
        if tangent_teacher is not None:
            tangent = tangent + tangent_teacher.to(pattern.dtype)
        if tangent_adv is not None:
            tangent = tangent - tangent_adv.to(pattern.dtype)
        product = pattern * tangent
        return (product.sum(-1) if ctx.per_row else product.sum()), torch.zeros_like(pattern)


class FRLoss(torch.nn.Module):
    """``lam * fr_loss(teacher_logits, adv_logits)``: the FR term to add to an adversarial-training loss.

    ``fft="1d"`` (default) is Eq. 2 as printed; the published numbers were produced with ``fft="2d"`` (the
    authors' code), which the trainer uses by default."""

    def __init__(self, lam: float = 0.1, distance: str = "l1", fft: str = "1d", reduction: str = "mean") -> None:
        super().__init__()
        if not math.isfinite(lam) or lam < 0:
            raise ValueError(f"FRLoss: lam must be a finite number >= 0, got {lam}")
        check_choice("distance", distance, DISTANCES)
        check_choice("fft", fft, FFT_MODES)
        check_choice("reduction", reduction, REDUCTIONS)
        self.lam, self.distance, self.fft, self.reduction = lam, distance, fft, reduction

    def forward(self, teacher_logits: Tensor, adv_logits: Tensor) -> Tensor:
        return self.lam * fr_loss(teacher_logits, adv_logits, self.distance, self.reduction, self.fft)

    def extra_repr(self) -> str:
        return f"lam={self.lam}, distance={self.distance!r}, fft={self.fft!r}, reduction={self.reduction!r}"


# --------------------------------------------------------------------------------------------- PGD step

Radius = float | Tensor  # a number, or a (B,) tensor of one value per sample


def _check_images(op: str, x_adv: Tensor, others: dict[str, Tensor]) -> None:
    _check_float_tensor("x_adv", x_adv)
    for name, tensor in others.items():
        _check_float_tensor(name, tensor)
        _check_pair(op, ("x_adv", x_adv), (name, tensor))
        if tensor.dtype != x_adv.dtype:
            raise ValueError(f"{op}: x_adv is {x_adv.dtype} but {name} is {tensor.dtype}; convert it with .to(x_adv.dtype)")
    if x_adv.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{op}: x_adv requires grad; pass a detached tensor (e.g. x_adv.detach_()) to update in place")


def _shares_memory(a: Tensor, b: Tensor) -> bool:
    """Whether the memory spans of ``a`` and ``b`` intersect (conservative for interleaved views)."""
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device or a.device.type == "meta":
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False

    def span(t: Tensor) -> tuple[int, int]:
        last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
        return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()

    (a_begin, a_end), (b_begin, b_end) = span(a), span(b)
    return a_begin < b_end and b_begin < a_end


def _check_no_overlap(op: str, x_adv: Tensor, others: dict[str, Tensor]) -> None:
    for name, tensor in others.items():
        if _shares_memory(x_adv, tensor):
            raise ValueError(f"{op}: x_adv and {name} share memory; pass a separate tensor (e.g. {name}.clone())")


def _check_clip(op: str, clip_min: float | None, clip_max: float | None) -> None:
    for name, value in (("clip_min", clip_min), ("clip_max", clip_max)):
        if value is not None and (not isinstance(value, (int, float)) or math.isnan(value)):
            raise ValueError(f"{op}: {name} must be a number or None (no bound), got {value!r}")
    if clip_min is not None and clip_max is not None and clip_min > clip_max:
        raise ValueError(f"{op}: need clip_min <= clip_max (None for no bound), got {clip_min} and {clip_max}")


def _checked_radius(op: str, name: str, value: Radius, x_adv: Tensor, non_negative: bool) -> Radius:
    """A number checked, or a per-sample (B,) tensor checked and cast to the kernels' compute dtype."""
    if not isinstance(value, Tensor):
        if non_negative:
            return check_radius(name, value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{op}: {name} must be a finite number, got {value!r}")
        return value
    if x_adv.dim() == 0 or value.shape != x_adv.shape[:1]:
        raise ValueError(f"{op}: a per-sample {name} must have shape ({x_adv.shape[0] if x_adv.dim() else 0},), "
                         f"one value per sample of x_adv, got {tuple(value.shape)}")
    _check_float_tensor(name, value)
    if value.device != x_adv.device:
        raise ValueError(f"{op}: x_adv is on {x_adv.device} but {name} is on {value.device}")
    value = value.to(torch.float64 if x_adv.dtype == torch.float64 else torch.float32)
    ok = value.isfinite() & (value >= 0) if non_negative else value.isfinite()
    if not bool(ok.all()):
        raise ValueError(f"{op}: every {name} must be finite{' and >= 0' if non_negative else ''}")
    return value


def pgd_step_(x_adv: Tensor, grad: Tensor, x_nat: Tensor, alpha: Radius, eps: Radius,
              clip_min: float | None = 0.0, clip_max: float | None = 1.0) -> Tensor:
    """One L-inf PGD step in place: ``x_adv ← clamp(min(max(x_adv + α·sign(grad), x_nat − ε), x_nat + ε), clip_min, clip_max)``.

    All three tensors share shape, dtype (float16/bfloat16/float32/float64) and device; any memory format
    (x_adv keeps its own); x_adv must not share memory with grad or x_nat. ``alpha`` and ``eps`` are
    numbers or (B,) tensors of one value per sample (checked with one device sync). A ``None`` clip bound
    does not clip: pass ``None, None`` for normalised or 0–255 images. NaN in x_adv or x_nat gives NaN, as
    in the clamp chain; sign(NaN) = 0. The fused kernels compute in float32 and round once. Returns ``x_adv``.
    """
    if _step_entry is not None and not torch.compiler.is_compiling():  # the hot path: C++ checks everything
        done = _step_entry(x_adv, grad, x_nat, alpha, eps, clip_min, clip_max)
        if done is not NotImplemented:
            return done
    if isinstance(x_adv, Tensor) and x_adv.device.type in _KERNEL_DEVICES:  # torch.compile, per-sample values
        per_alpha, per_eps = isinstance(alpha, Tensor), isinstance(eps, Tensor)
        for name, value in (("alpha", alpha), ("eps", eps)):  # else a meta tensor would pick the fake kernel
            if isinstance(value, Tensor) and value.device != x_adv.device:
                raise ValueError(f"pgd_step_: x_adv is on {x_adv.device} but {name} is on {value.device}")
        if not per_alpha:
            _checked_radius("pgd_step_", "alpha", alpha, x_adv, non_negative=False)
        if not per_eps:
            _checked_radius("pgd_step_", "eps", eps, x_adv, non_negative=True)
        torch.ops.fr_fast.pgd_step_(x_adv, grad, x_nat, 0.0 if per_alpha else alpha, 0.0 if per_eps else eps,
                                    clip_min, clip_max, alpha if per_alpha else None, eps if per_eps else None)
        return x_adv
    _check_images("pgd_step_", x_adv, {"grad": grad, "x_nat": x_nat})
    _check_no_overlap("pgd_step_", x_adv, {"grad": grad, "x_nat": x_nat})
    _check_clip("pgd_step_", clip_min, clip_max)
    alpha = _checked_radius("pgd_step_", "alpha", alpha, x_adv, non_negative=False)
    eps = _checked_radius("pgd_step_", "eps", eps, x_adv, non_negative=True)
    _fused(x_adv.device)  # warns once that the reference runs
    return reference.pgd_step_(x_adv, grad, x_nat, alpha, eps, clip_min, clip_max)


def random_start_(x_adv: Tensor, x_nat: Tensor, eps: Radius, clip_min: float | None = 0.0,
                  clip_max: float | None = 1.0) -> Tensor:
    """Write ``clamp(x_nat + U(−ε, ε), clip_min, clip_max)`` into ``x_adv`` (the PGD random start). Returns ``x_adv``.

    ``eps`` is a number or a (B,) tensor (then the noise is ``U(−1, 1)·ε_b``); a ``None`` bound does not
    clip. The noise comes from torch's generator (``torch.manual_seed`` reproduces it) and is drawn into
    ``x_adv`` itself, which must not share memory with ``x_nat``; one fused pass then adds ``x_nat`` and clips.
    """
    _check_images("random_start_", x_adv, {"x_nat": x_nat})
    if not torch.compiler.is_compiling():
        _check_no_overlap("random_start_", x_adv, {"x_nat": x_nat})
    elif x_adv is x_nat:  # data_ptr would break the graph; partial overlaps of views pass unseen here
        raise ValueError("random_start_: x_adv and x_nat share memory; pass a separate tensor (e.g. x_nat.clone())")
    _check_clip("random_start_", clip_min, clip_max)
    eps = _checked_radius("random_start_", "eps", eps, x_adv, non_negative=True)
    if not _fused(x_adv.device):
        return reference.random_start_(x_adv, x_nat, eps, clip_min, clip_max)
    target = x_adv if _is_dense(x_adv) else torch.empty_like(x_nat)
    reference.uniform_noise_(target, eps)
    torch.ops.fr_fast.add_clip_(target, x_nat, clip_min, clip_max)
    return x_adv if target is x_adv else x_adv.copy_(target)


def _is_dense(tensor: Tensor) -> bool:
    """True when the elements fill one block of memory without gaps or overlaps (any dimension order)."""
    expected = 1
    for stride, size in sorted((st, s) for s, st in zip(tensor.shape, tensor.stride()) if s != 1):
        if stride != expected:
            return False
        expected *= size
    return True


# ------------------------------------------------------------------------- torch.library registration

def _check_devices(op: str, tensors: dict[str, Tensor | None]) -> None:
    """One device for all tensors. Also in the fake kernels: a meta tensor among CPU ones selects them."""
    given = [(name, t) for name, t in tensors.items() if t is not None]
    for name, tensor in given[1:]:
        if tensor.device != given[0][1].device:
            raise ValueError(f"{op}: {given[0][0]} is on {given[0][1].device} but {name} is on {tensor.device}")


def _register_library_functions() -> None:
    """Fake (meta) implementations for torch.compile (the autograd of fr_l1/fr2d_l1 is registered in C++)."""

    @torch.library.register_fake("fr_fast::fr_l1")
    def _(teacher: Tensor, adv: Tensor, reduction: int) -> Tensor:
        _check_devices("fr_l1", {"teacher": teacher, "adv": adv})
        dtype = torch.float64 if teacher.dtype == torch.float64 else torch.float32
        shape = (teacher.shape[0],) if reduction == 0 else ()
        return teacher.new_empty(shape, dtype=dtype)

    @torch.library.register_fake("fr_fast::fr_l1_with_grad")
    def _(teacher: Tensor, adv: Tensor, reduction: int) -> tuple[Tensor, Tensor]:
        _check_devices("fr_l1_with_grad", {"teacher": teacher, "adv": adv})
        dtype = torch.float64 if teacher.dtype == torch.float64 else torch.float32
        shape = (teacher.shape[0],) if reduction == 0 else ()
        return teacher.new_empty(shape, dtype=dtype), teacher.new_empty(teacher.shape, dtype=dtype)

    @torch.library.register_fake("fr_fast::fr_l1_backward")
    def _(grad: Tensor, teacher: Tensor, adv: Tensor, reduction: int) -> tuple[Tensor, Tensor]:
        _check_devices("fr_l1_backward", {"teacher": teacher, "adv": adv, "grad": grad})
        return (torch.empty(teacher.shape, dtype=teacher.dtype, device=teacher.device),
                torch.empty(adv.shape, dtype=adv.dtype, device=adv.device))

    @torch.library.register_fake("fr_fast::fr2d_l1")
    def _(teacher: Tensor, adv: Tensor, reduction: int) -> Tensor:
        _check_devices("fr2d_l1", {"teacher": teacher, "adv": adv})
        return teacher.new_empty((), dtype=torch.float64 if teacher.dtype == torch.float64 else torch.float32)

    @torch.library.register_fake("fr_fast::fr2d_l1_with_grad")
    def _(teacher: Tensor, adv: Tensor, reduction: int) -> tuple[Tensor, Tensor]:
        _check_devices("fr2d_l1_with_grad", {"teacher": teacher, "adv": adv})
        dtype = torch.float64 if teacher.dtype == torch.float64 else torch.float32
        return teacher.new_empty((), dtype=dtype), teacher.new_empty(teacher.shape, dtype=dtype)

    @torch.library.register_fake("fr_fast::pgd_step_")
    def _(x_adv: Tensor, grad: Tensor, x_nat: Tensor, alpha: float, eps: float, clip_min: float | None = 0.0,
          clip_max: float | None = 1.0, alpha_rows: Tensor | None = None, eps_rows: Tensor | None = None) -> None:
        _check_images("pgd_step_", x_adv, {"grad": grad, "x_nat": x_nat})
        _check_devices("pgd_step_", {"x_adv": x_adv, "alpha": alpha_rows, "eps": eps_rows})
        return None

    @torch.library.register_fake("fr_fast::add_clip_")
    def _(x_adv: Tensor, x_nat: Tensor, clip_min: float | None = 0.0, clip_max: float | None = 1.0) -> None:
        _check_images("add_clip_", x_adv, {"x_nat": x_nat})
        return None


def _register_vmap_rules() -> None:
    """vmap rules of the *_with_grad ops (used by ``_FunctorchFR`` under torch.func.vmap).

    1-D: rows are independent, so the vmapped batch folds into B and one call serves all samples. 2-D:
    the transform couples the rows, so each sample is one call.
    """

    def batched(in_dims, teacher: Tensor, adv: Tensor) -> tuple[Tensor, Tensor]:
        size = (teacher if in_dims[0] is not None else adv).shape[in_dims[0] if in_dims[0] is not None else in_dims[1]]
        return tuple(t.movedim(d, 0) if d is not None else t.expand(size, *t.shape)
                     for t, d in zip((teacher, adv), in_dims[:2]))

    @torch.library.register_vmap("fr_fast::fr_l1_with_grad")
    def _(info, in_dims, teacher: Tensor, adv: Tensor, reduction: int):
        teacher, adv = batched(in_dims, teacher, adv)
        samples, rows, classes = teacher.shape
        values, pattern = torch.ops.fr_fast.fr_l1_with_grad(teacher.reshape(-1, classes), adv.reshape(-1, classes),
                                                           _REDUCTION_CODES["none"])
        values, pattern = values.view(samples, rows), pattern.view(samples, rows, classes)
        if reduction == _REDUCTION_CODES["mean"]:
            values, pattern = values.mean(1), pattern / max(rows, 1)
        elif reduction == _REDUCTION_CODES["sum"]:
            values = values.sum(1)
        return (values, pattern), (0, 0)

    @torch.library.register_vmap("fr_fast::fr2d_l1_with_grad")
    def _(info, in_dims, teacher: Tensor, adv: Tensor, reduction: int):
        teacher, adv = batched(in_dims, teacher, adv)
        results = [torch.ops.fr_fast.fr2d_l1_with_grad(t, a, reduction) for t, a in zip(teacher, adv)]
        return (torch.stack([r[0] for r in results]), torch.stack([r[1] for r in results])), (0, 0)


if EXTENSION_ERROR is None:
    _register_library_functions()
    _register_vmap_rules()
