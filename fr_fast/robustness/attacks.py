"""L-inf adversarial attacks: the PGD loop used inside training, PGD / CW-inf for evaluation, AutoAttack.

Every attack takes images in [0, 1] (NCHW float, contiguous or channels_last; normalisation lives
inside the model) and integer labels, and returns ``x_adv`` with ``||x_adv - x||_inf <= eps`` and
``x_adv`` in [0, 1], in the memory format of ``x``.

* :func:`perturb` -- the raw PGD loop for training: uses the model exactly as the caller left it
  (train/eval mode, autocast), only the input gradient is computed, no host sync inside the loop.
* :func:`pgd`, :func:`cw` -- evaluation-facing: float32, eval mode, input validation, restarts,
  and the model's state (train/eval flags, ``requires_grad`` flags, ``.grad``) left untouched.
* :func:`autoattack` -- AutoAttack: the official package when installed, else assembled from the
  torchattacks port (pinned: torchattacks 3.5.1) with the official settings (see its docstring).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fr_fast.models.modes import eval_mode
from fr_fast.ops.functional import pgd_step_, random_start_
from fr_fast.robustness import autoattack_impl

LossFn = Callable[[Tensor, Tensor], Tensor]
LOSSES = ("ce", "cw")
AA_VERSIONS = ("standard", "fast", "rand")
# x may exceed [0, 1] by this much (float rounding of a normalise/denormalise round trip) before we refuse it.
RANGE_TOL = 1e-6


# --------------------------------------------------------------------------------------------- losses
def ce_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Sum-reduced cross-entropy, the PGD objective to maximise.

    Sum rather than mean: the per-example input gradient then does not shrink with the batch size,
    so it cannot underflow in float16/bfloat16 for large batches (the sign step is otherwise the same).
    """
    return F.cross_entropy(logits.float(), y, reduction="sum")


def cw_margin(logits: Tensor, y: Tensor) -> Tensor:
    """Carlini-Wagner margin ``max_{j != y} z_j - z_y`` per example.

    Parameters
    ----------
    logits : (B, C) tensor
    y : (B,) int64 tensor, labels in [0, C)

    Returns
    -------
    (B,) float32 tensor; positive exactly where the example is misclassified.
    """
    logits = logits.float()
    true_logit = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return others.amax(dim=1) - true_logit


def cw_loss(logits: Tensor, y: Tensor, kappa: float | None = None) -> Tensor:
    """Sum over the batch of the CW-inf objective: the margin ``max_{j != y} z_j - z_y`` uncapped (``kappa``
    None: the FR authors' evaluation code, which produced the published C&W numbers), or ``min(margin, kappa)``.

    The cap at ``kappa`` is Carlini-Wagner's confidence term: once an example is misclassified by
    ``kappa`` its gradient is zero, so the sign step leaves it where it is.
    """
    margin = cw_margin(logits, y)
    return (margin if kappa is None else margin.clamp(max=kappa)).sum()


def _per_example_loss(name: str, logits: Tensor, y: Tensor) -> Tensor:
    if name == "ce":
        return F.cross_entropy(logits.float(), y, reduction="none")
    return cw_margin(logits, y)


# -------------------------------------------------------------------------------------- model state
@contextlib.contextmanager
def frozen_params(model: nn.Module) -> Iterator[nn.Module]:
    """Turn ``requires_grad`` off on every parameter for the duration of the block, then restore each flag.

    While attacking only the input gradient is needed. ``torch.autograd.grad(loss, x_adv)`` already
    skips the weight-gradient kernels (measured: same time frozen or not), so the point is safety:
    no ``.grad`` is ever written, even by attacks that call ``backward`` (torchattacks' FAB does), and
    a ``backward()`` by mistake cannot leak attack gradients into the optimiser step.
    """
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


@contextlib.contextmanager
def _attack_context(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Evaluation setting shared by pgd/autoattack: eval mode, frozen parameters, float32, grad enabled."""
    with eval_mode(model), frozen_params(model), torch.autocast(device.type, enabled=False), \
            torch.enable_grad():
        yield


# ------------------------------------------------------------------------------------------ checks
def _check_scalars(eps: float, alpha: float | None, steps: int | None, restarts: int = 1) -> None:
    if not eps >= 0:  # also rejects NaN
        raise ValueError(f"eps must be >= 0, got {eps}")
    if alpha is not None and not alpha > 0:
        raise ValueError(f"alpha (step size) must be > 0, got {alpha}")
    if steps is not None and (int(steps) != steps or steps < 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps}")
    if int(restarts) != restarts or restarts < 1:
        raise ValueError(f"restarts must be an integer >= 1, got {restarts}")


def _check_batch(x: Tensor, y: Tensor) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError("x must be a floating-point tensor of shape (B, ...) (images: (B, C, H, W))")
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be a 1-D label tensor of length B={x.shape[0]}, got shape "
                         f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")


def _check_eval_inputs(model: nn.Module, x: Tensor, y: Tensor) -> int:
    """Validate an evaluation batch; return the number of classes (from one clean forward pass)."""
    _check_batch(x, y)
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device != x.device:
            raise ValueError(f"model is on device {t.device} but x is on device {x.device}: "
                             "move both to the same device")
        break
    if x.numel() and (torch.isnan(x).any() or x.min() < -RANGE_TOL or x.max() > 1 + RANGE_TOL):
        raise ValueError("x must hold images in [0, 1] (normalisation belongs inside the model); "
                         f"got values in [{x.min().item():.4g}, {x.max().item():.4g}]")
    with eval_mode(model), torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        logits = model(x[:1].float())
    if logits.dim() != 2:
        raise ValueError(f"model must return (B, num_classes) logits, got shape {tuple(logits.shape)}")
    num_classes = logits.shape[1]
    if y.numel() and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}) for this model, got range "
                         f"[{y.min().item()}, {y.max().item()}]")
    return num_classes


def _project_(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Clip ``x_adv`` into the eps-ball around ``x`` and into [0, 1], in place (x_adv may alias x: the
    ensemble returns its input for examples it leaves alone, so this stays out of place until the copy)."""
    return x_adv.copy_(torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0))


# ----------------------------------------------------------------------------------------- attacks
def perturb(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn, *, eps: float, alpha: float,
            steps: int, x_init: Tensor | None = None, freeze_params: bool = True) -> Tensor:
    """Raw L-inf PGD loop (the attack inside adversarial training).

    Each step: forward ``x_adv``, gradient of ``loss_fn(logits, y)`` with respect to ``x_adv`` only,
    then the fused ``fr_fast.pgd_step_`` (ascent by ``alpha * sign(grad)``, projection onto the
    eps-ball around ``x``, clip to [0, 1]). The model is used as the caller left it: train/eval mode
    (BatchNorm in train mode updates its running statistics on adversarial batches) and the caller's
    autocast context. Parameters do not require grad during the loop (flags restored afterwards) unless
    ``freeze_params`` is False, and nothing in the loop synchronises with the host.

    Parameters
    ----------
    model : nn.Module mapping (B, C, H, W) images in [0, 1] to (B, K) logits
    x : (B, C, H, W) float tensor in [0, 1], contiguous or channels_last
    y : (B,) int64 labels (or whatever ``loss_fn`` expects as its second argument)
    loss_fn : callable ``(logits, y) -> scalar`` to MAXIMISE, e.g. :func:`ce_loss` (sum-reduced CE)
    eps, alpha : L-inf radius (>= 0) and step size (> 0), in [0, 1] pixel units
    steps : number of PGD steps (>= 1)
    x_init : optional (B, C, H, W) starting point; None -> uniform random start in the eps-ball
        (``fr_fast.random_start_``)
    freeze_params : False -> parameters keep ``requires_grad`` (only the input gradient is computed either
        way): under autocast each weight is then cast once per autocast block, reused by every forward,
        instead of once per forward (autocast caches the casts of trainable leaves only)

    Returns
    -------
    (B, C, H, W) tensor ``x_adv`` (detached, same dtype and memory format as ``x``) with
    ``||x_adv - x||_inf <= eps`` and values in [0, 1].
    """
    _check_scalars(eps, alpha, steps)
    x_nat = x.detach()
    if x_init is None:
        x_adv = random_start_(torch.empty_like(x_nat), x_nat, eps)
    else:
        if x_init.shape != x_nat.shape:
            raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected {tuple(x_nat.shape)}")
        x_adv = x_init.detach().to(dtype=x_nat.dtype).clone(memory_format=torch.preserve_format)
    with frozen_params(model) if freeze_params else contextlib.nullcontext(), torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = loss_fn(model(x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            # One buffer for the whole loop: drop the leaf's grad flag, then update it in place.
            x_adv.requires_grad_(False)
            pgd_step_(x_adv, grad, x_nat, alpha, eps)
    return x_adv


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float = 8 / 255, alpha: float = 2 / 255,
        steps: int = 20, random_start: bool = True, loss: str = "ce", restarts: int = 1,
        cw_kappa: float | None = None) -> Tensor:
    """L-inf PGD for evaluation (Madry et al. 2018), on cross-entropy or on the CW margin (CW-inf).

    Runs in float32 with autocast off and the model in eval mode; parameters never receive
    gradients; the model's train/eval flags and ``requires_grad`` flags are restored afterwards.
    With ``restarts > 1`` the worst case per example is kept: a misclassified candidate beats a
    correctly classified one, ties go to the higher loss, so an example counts as broken if any
    restart breaks it (accuracy never increases with restarts).

    Parameters
    ----------
    model : nn.Module mapping (B, C, H, W) images in [0, 1] to (B, K) logits, on x's device
    x : (B, C, H, W) float tensor in [0, 1] (contiguous or channels_last)
    y : (B,) integer labels in [0, K)
    eps : L-inf radius, >= 0 (paper: 8/255)
    alpha : step size, > 0 (paper: 2/255)
    steps : PGD steps, >= 1 (PGD-20 / PGD-50 in the paper)
    random_start : start from a uniform point in the eps-ball (else from x)
    loss : "ce" (cross-entropy) or "cw" (Carlini-Wagner margin ``max_{j!=y} z_j - z_y``, :func:`cw_loss`)
    restarts : independent runs, >= 1
    cw_kappa : cap of the CW margin (Carlini-Wagner's kappa, e.g. 0); None = uncapped, the FR authors' form

    Returns
    -------
    (B, C, H, W) float32 tensor ``x_adv`` in [0, 1] with ``||x_adv - x||_inf <= eps``, in x's
    memory format.

    Raises
    ------
    ValueError
        eps < 0, alpha <= 0, steps < 1, restarts < 1, unknown loss, labels outside [0, K),
        x outside [0, 1], model on another device than x.
    """
    _check_scalars(eps, alpha, steps, restarts)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    _check_eval_inputs(model, x, y)
    x_nat = x.detach().float().clamp(0.0, 1.0)
    y = y.to(device=x.device, dtype=torch.long)
    loss_fn = ce_loss if loss == "ce" else functools.partial(cw_loss, kappa=cw_kappa)

    best = best_fooled = best_loss = None
    with _attack_context(model, x.device):
        for _ in range(restarts):
            x_init = random_start_(torch.empty_like(x_nat), x_nat, eps) if random_start else x_nat.clone()
            x_adv = perturb(model, x_nat, y, loss_fn, eps=eps, alpha=alpha, steps=steps, x_init=x_init)
            if restarts == 1:
                return x_adv
            with torch.no_grad():
                logits = model(x_adv)
                fooled = logits.argmax(1) != y
                cand_loss = _per_example_loss(loss, logits, y)
            if best is None:
                best, best_fooled, best_loss = x_adv, fooled, cand_loss
                continue
            better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (cand_loss > best_loss))
            best[better] = x_adv[better]
            best_fooled = best_fooled | fooled
            best_loss = torch.where(better, cand_loss, best_loss)
    return best


def cw(model: nn.Module, x: Tensor, y: Tensor, eps: float = 8 / 255, alpha: float = 2 / 255,
       steps: int = 30, random_start: bool = True, restarts: int = 1, kappa: float | None = None) -> Tensor:
    """CW-inf: :func:`pgd` on the Carlini-Wagner margin loss, 30 steps by default; ``kappa`` None = the
    uncapped margin (the FR authors'), a number caps it (Carlini-Wagner's confidence; 0 = stop once fooled).

    Same arguments, return value and errors as :func:`pgd` (``loss`` fixed to "cw").
    """
    return pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
               loss="cw", restarts=restarts, cw_kappa=kappa)


def autoattack(model: nn.Module, x: Tensor, y: Tensor, eps: float = 8 / 255, version: str = "standard",
               *, steps: int = 100, n_queries: int = 5000, seed: int = 0, verbose: bool = False,
               implementation: str = "auto", on_stage: Callable[[str], None] | None = None) -> Tensor:
    """AutoAttack (Croce & Hein 2020), L-inf: the official ``autoattack`` package when it is installed, else the
    torchattacks 3.5.1 port of its attacks assembled with the official settings
    (:mod:`fr_fast.robustness.autoattack_impl`; :func:`aa_implementation` says which one runs).

    * "standard": APGD-CE (100 it.), APGD-T (DLR, 9 target classes, 100 it.), FAB-T (9 targets,
      100 it.), Square (5000 queries, p schedule not rescaled); one restart each.
    * "fast" (ours, for quick checks): APGD-CE + APGD-T only, same settings.
    * "rand" (for randomised defences): APGD-CE + APGD-DLR with EOT over 20 draws.

    The paper describes AA as "APGD-CE, APGD-DLR, FAB and Square"; we use the standard version
    (targeted APGD-DLR and FAB), which is what the official package runs for "standard".
    Runs in float32, eval mode, parameters frozen, model state restored. Both implementations seed the
    global RNG; we fork the RNG so the caller's random state is unchanged.

    Parameters
    ----------
    model : nn.Module mapping (B, C, H, W) images in [0, 1] to (B, K) logits, K >= 4
    x : (B, C, H, W) float tensor in [0, 1]
    y : (B,) integer labels in [0, K)
    eps : L-inf radius, >= 0
    version : "standard" | "fast" | "rand"
    steps : iterations of APGD / APGD-T / FAB (official: 100)
    n_queries : Square's query budget (official: 5000)
    seed : seed of the attacks' random starts
    verbose : print the attacks' progress
    implementation : "auto" (official when installed) | "official" | "torchattacks"
    on_stage : called with "APGD-CE (1/4)", "APGD-T (2/4)", ... as each attack of the ensemble starts
        (progress displays; the official package: once, as it logs its stages itself with ``verbose``)

    Returns
    -------
    (B, C, H, W) float32 tensor ``x_adv`` in [0, 1] with ``||x_adv - x||_inf <= eps`` (projected
    once more for safety), in x's memory format; examples no attack broke are returned unchanged.
    """
    kind, module = autoattack_impl.choose(implementation)  # heavy import, only needed here
    _check_scalars(eps, None, steps)
    if version not in AA_VERSIONS:
        raise ValueError(f"version must be one of {AA_VERSIONS}, got {version!r}")
    num_classes = _check_eval_inputs(model, x, y)
    if num_classes < 4:  # the targeted DLR loss reads the 4th-largest logit
        raise ValueError(f"autoattack needs a model with >= 4 classes, got {num_classes}")
    x_nat = x.detach().float().clamp(0.0, 1.0).contiguous()  # torchattacks reshapes with .view
    y = y.to(device=x.device, dtype=torch.long)
    if eps == 0 or x.shape[0] == 0:
        return x_nat.clone(memory_format=torch.preserve_format).to(memory_format=_memory_format(x))

    run = autoattack_impl.run_official if kind == "official" else autoattack_impl.run_torchattacks
    fork_devices = [x.device] if x.device.type == "cuda" else []
    with _attack_context(model, x.device), torch.random.fork_rng(devices=fork_devices):
        # the official package attacks min(9, K - 1) target classes
        x_adv = run(module, model, x_nat, y, eps=eps, version=version, steps=steps, n_queries=n_queries,
                    n_targets=min(num_classes - 1, 9), seed=seed, verbose=verbose, on_stage=on_stage).detach()
    return _project_(x_adv, x_nat, eps).to(memory_format=_memory_format(x))


def aa_implementation(implementation: str = "auto") -> str:
    """Which AutoAttack :func:`autoattack` runs, as the reports name it ("torchattacks 3.5.1",
    "autoattack 0.1 (official)"). Raises MissingExtraError when none is installed."""
    return autoattack_impl.describe(*autoattack_impl.choose(implementation))


def _memory_format(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
