"""The baseline: one AT+FR / TRADES+FR training step written the way the public repositories write it.

With the default :class:`Features` (all off) the step is what a user copying the AT loop of
locuslab/robust_overfitting (Rice et al. 2020) or the TRADES loop of yaodongyu/TRADES would run,
with the FR term of Eq. 2 added through ``torch.fft`` (``fr_fast.ops.reference.fr_loss``):

* float32, contiguous NCHW tensors, no autocast;
* AT: uniform random start, mean cross-entropy, ``loss.backward()`` inside the attack with the
  parameters still requiring grad (so every attack step also computes and accumulates weight
  gradients, zeroed before the update), the model left in train mode during the attack (Rice et al.);
* TRADES: start at ``x + 0.001 N(0, 1)``, summed KL objective, ``torch.autograd.grad`` on the input with
  the parameters requiring grad, the model in eval mode during the attack (TRADES code);
* clamp-chain PGD step ``min(max(x + alpha sign(g), x - eps), x + eps).clamp(0, 1)`` creating new tensors;
* SGD momentum 0.9, weight decay 5e-4; one ``loss.item()`` per step (both repositories log the loss).

Where this baseline is *faster* than the repositories (so speedups against it are conservative):
the TRADES repository recomputes ``softmax(model(x_natural))`` inside every attack step and runs
``model(x_natural)`` twice in the final loss; here the natural probabilities are computed once per attack
(no grad; identical values in eval mode) and the natural logits once in the loss. Rice et al.'s attack
also runs one extra forward pass after the loop to pick the best restart; with one restart we skip it.

The :class:`Features` flags switch on, one at a time, the speed features of fr_fast inside this same
loop; ``benchmarks/bench_train.py`` uses them for the ablation rows.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fr_fast
from fr_fast.ops import reference

EPS = 8 / 255
ALPHA = 2 / 255
STEPS = 10
LAM = 0.1
TRADES_BETA = 6.0
TRADES_START_STD = 0.001


@dataclass(frozen=True)
class Features:
    """Speed features toggled inside the reference loop (all False = the faithful baseline).

    fused_ops : fr_fast.fr_loss / pgd_step_ / random_start_ instead of torch.fft and the clamp chain
    frozen_params : parameters do not require grad during the attack; input gradient by autograd.grad
    channels_last : model and batch in channels_last memory format
    autocast_bf16 : attack and loss under ``torch.autocast(device, bfloat16)``
    """

    fused_ops: bool = False
    frozen_params: bool = False
    channels_last: bool = False
    autocast_bf16: bool = False


BASELINE = Features()


def make_optimizer(model: nn.Module, lr: float = 0.1) -> torch.optim.Optimizer:
    """SGD with the repositories' momentum 0.9 and weight decay 5e-4."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)


@contextlib.contextmanager
def _params_frozen(model: nn.Module, enabled: bool):
    params = [p for p in model.parameters() if p.requires_grad] if enabled else []
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def _step_(x_adv: Tensor, grad: Tensor, x_nat: Tensor, alpha: float, eps: float, fused: bool) -> Tensor:
    if fused:
        return fr_fast.pgd_step_(x_adv, grad, x_nat, alpha, eps)
    # The clamp chain of the repositories: new tensors every step.
    x_adv = x_adv.detach() + alpha * torch.sign(grad.detach())
    x_adv = torch.min(torch.max(x_adv, x_nat - eps), x_nat + eps)
    return torch.clamp(x_adv, 0.0, 1.0)


def _input_grad(loss: Tensor, x_adv: Tensor, use_backward: bool) -> Tensor:
    if use_backward:  # Rice et al.: loss.backward() also fills (and accumulates) every parameter's .grad
        loss.backward()
        return x_adv.grad.detach()
    (grad,) = torch.autograd.grad(loss, [x_adv])
    return grad


def attack_at(model: nn.Module, x: Tensor, y: Tensor, *, eps: float = EPS, alpha: float = ALPHA,
              steps: int = STEPS, features: Features = BASELINE) -> Tensor:
    """PGD on mean cross-entropy from a uniform random start, model in its current (train) mode."""
    x_nat = x.detach()
    if features.fused_ops:
        x_adv = fr_fast.random_start_(torch.empty_like(x_nat), x_nat, eps)
    else:
        x_adv = torch.clamp(x_nat + torch.empty_like(x_nat).uniform_(-eps, eps), 0.0, 1.0)
    with _params_frozen(model, features.frozen_params), torch.enable_grad():
        for _ in range(steps):
            x_adv = x_adv.detach().requires_grad_(True)
            with _autocast(x.device, features.autocast_bf16):
                loss = F.cross_entropy(model(x_adv).float(), y)
            grad = _input_grad(loss, x_adv, use_backward=not features.frozen_params)
            x_adv = _step_(x_adv.detach(), grad, x_nat, alpha, eps, features.fused_ops)
    return x_adv.detach()


def attack_trades(model: nn.Module, x: Tensor, *, eps: float = EPS, alpha: float = ALPHA, steps: int = STEPS,
                  features: Features = BASELINE) -> Tensor:
    """TRADES attack: maximise sum KL(p(x) || p(x_adv)) from x + 0.001 N(0, 1), model in eval mode."""
    x_nat = x.detach()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _autocast(x.device, features.autocast_bf16):
            nat_probs = F.softmax(model(x_nat).float(), dim=1)
        x_adv = (x_nat + TRADES_START_STD * torch.randn_like(x_nat)).clamp(0.0, 1.0)
        with _params_frozen(model, features.frozen_params), torch.enable_grad():
            for _ in range(steps):
                x_adv = x_adv.detach().requires_grad_(True)
                with _autocast(x.device, features.autocast_bf16):
                    loss = F.kl_div(F.log_softmax(model(x_adv).float(), dim=1), nat_probs, reduction="sum")
                grad = _input_grad(loss, x_adv, use_backward=False)  # TRADES uses autograd.grad
                x_adv = _step_(x_adv.detach(), grad, x_nat, alpha, eps, features.fused_ops)
    finally:
        model.train(was_training)
    return x_adv.detach()


def fr_term(features: Features) -> Callable[[Tensor, Tensor], Tensor]:
    return fr_fast.fr_loss if features.fused_ops else reference.fr_loss


def make_step(method: str, model: nn.Module, optimizer: torch.optim.Optimizer, *, eps: float = EPS,
              alpha: float = ALPHA, steps: int = STEPS, lam: float = LAM,
              features: Features = BASELINE) -> Callable[[Tensor, Tensor], float]:
    """One training step ``step(x, y) -> loss`` of ``method`` in {"at", "trades"} plus ``lam`` * FR.

    ``x`` (B, C, H, W) float32 in [0, 1], ``y`` (B,) int64. The model must already be in the memory
    format of ``features.channels_last``; the step converts the batch.
    """
    if method not in ("at", "trades"):
        raise ValueError(f"method must be 'at' or 'trades', got {method!r}")
    fmt = torch.channels_last if features.channels_last else torch.contiguous_format
    fr = fr_term(features)

    def step(x: Tensor, y: Tensor) -> float:
        x = x.contiguous(memory_format=fmt)
        model.train()
        if method == "at":
            x_adv = attack_at(model, x, y, eps=eps, alpha=alpha, steps=steps, features=features)
        else:
            x_adv = attack_trades(model, x, eps=eps, alpha=alpha, steps=steps, features=features)
        optimizer.zero_grad()  # also drops the weight gradients the AT attack accumulated
        with _autocast(x.device, features.autocast_bf16):
            if method == "at":
                adv_logits = model(x_adv)
                nat_logits = model(x)  # FR teacher = the model on natural inputs (Eq. 2), gradients flow
                loss = F.cross_entropy(adv_logits.float(), y)
            else:
                nat_logits = model(x)
                adv_logits = model(x_adv)
                kl = F.kl_div(F.log_softmax(adv_logits.float(), dim=1), F.softmax(nat_logits.float(), dim=1),
                              reduction="batchmean")
                loss = F.cross_entropy(nat_logits.float(), y) + TRADES_BETA * kl
            loss = loss + lam * fr(nat_logits, adv_logits)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step
