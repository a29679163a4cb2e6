"""Training objectives: natural, PGD-AT (Madry), TRADES, MART, each optionally plus the FR term.

Every base objective maps ``(model, x, x_adv, y)`` to a :class:`LossOutput` ``(loss, adv_logits,
nat_logits)``; :func:`training_loss` adds ``lam * fr_loss(teacher_logits, adv_logits)`` (Eq. 2 of the
paper) on top and returns ``(loss, adv_logits)``. :func:`craft_adversarial` builds the x_adv each
objective trains on, with the attack its authors use.

Formulas (written from the papers and checked against the authors' public code):
  AT      CE(f(x_adv), y)                                                   (Madry et al. 2018)
  TRADES  CE(f(x), y) + beta * KL(p(x) || p(x_adv)), batch-mean KL, beta = 6 (Zhang et al. 2019)
  MART    CE(f(x_adv), y) - log(1.0001 - max_{k != y} p_k(x_adv))
          + beta * mean_i [KL(p(x_i) || p(x_adv_i)) * (1 - p_y(x_i))], beta = 6 (Wang et al. 2020)
Shapes: x, x_adv (B, C, H, W) in [0, 1]; y (B,) int64; logits (B, K). Losses are scalars in float32.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from fr_fast.config.train_config import REFERENCE_ATTACK_MODES
from fr_fast.models.modes import module_mode
from fr_fast.ops.functional import FRLoss
from fr_fast.robustness.attacks import ce_loss, perturb

# Numerical guards of the MART reference code (keep the log finite when a probability is 0 or 1).
_MART_LOG_EPS = 1e-12
_MART_MARGIN = 1.0001
# TRADES / MART attacks start from x + N(0, 0.001^2) instead of a uniform point in the ball.
_SMALL_START_STD = 0.001


class LossOutput(NamedTuple):
    loss: Tensor                 # scalar, float32
    adv_logits: Tensor           # (B, K) logits on the adversarial input (natural input for plain natural training)
    nat_logits: Tensor | None    # (B, K) logits on the natural input when the objective computed them


def natural_loss(model: nn.Module, x: Tensor, x_adv: Tensor | None, y: Tensor) -> LossOutput:
    """Cross-entropy on natural inputs. ``x_adv`` (if given) is only forwarded so FR can use it."""
    nat = model(x)
    adv = model(x_adv) if x_adv is not None else nat
    return LossOutput(F.cross_entropy(nat.float(), y), adv, nat)


def at_loss(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> LossOutput:
    """PGD-AT: cross-entropy on the adversarial input."""
    adv = model(x_adv)
    return LossOutput(F.cross_entropy(adv.float(), y), adv, None)


def trades_loss(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, beta: float = 6.0) -> LossOutput:
    """TRADES: CE on x plus ``beta`` times the batch-mean KL(p(x) || p(x_adv)); gradients reach both branches."""
    nat, adv = model(x), model(x_adv)
    kl = F.kl_div(F.log_softmax(adv.float(), dim=1), F.softmax(nat.float(), dim=1), reduction="batchmean")
    return LossOutput(F.cross_entropy(nat.float(), y) + beta * kl, adv, nat)


def mart_loss(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, beta: float = 6.0) -> LossOutput:
    """MART: boosted CE on x_adv plus ``beta`` times the KL weighted by the natural misclassification (1 - p_y(x))."""
    nat, adv = model(x), model(x_adv)
    adv_probs = F.softmax(adv.float(), dim=1)
    nat_probs = F.softmax(nat.float(), dim=1)
    # The most likely wrong class of the adversarial prediction.
    top2 = adv_probs.topk(2, dim=1).indices
    wrong = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])
    boosted_ce = F.cross_entropy(adv.float(), y) + F.nll_loss(
        torch.log(_MART_MARGIN - adv_probs + _MART_LOG_EPS), wrong)
    kl_per_example = F.kl_div(torch.log(adv_probs + _MART_LOG_EPS), nat_probs, reduction="none").sum(dim=1)
    p_true = nat_probs.gather(1, y[:, None]).squeeze(1)
    robust = (kl_per_example * (1.0000001 - p_true)).mean()
    return LossOutput(boosted_ce + beta * robust, adv, nat)


def base_loss(method: str, model: nn.Module, x: Tensor, x_adv: Tensor | None, y: Tensor, *,
              trades_beta: float = 6.0, mart_beta: float = 6.0) -> LossOutput:
    """Dispatch on ``method`` in {"natural", "at", "trades", "mart"} (AWP passes its base method)."""
    if method == "natural":
        return natural_loss(model, x, x_adv, y)
    if method == "at":
        return at_loss(model, x, x_adv, y)
    if method == "trades":
        return trades_loss(model, x, x_adv, y, trades_beta)
    if method == "mart":
        return mart_loss(model, x, x_adv, y, mart_beta)
    raise ValueError(f"unknown training objective {method!r}; expected natural, at, trades or mart")


def training_loss(method: str, model: nn.Module, x: Tensor, x_adv: Tensor | None, y: Tensor, *,
                  fr: Callable[[Tensor, Tensor], Tensor] | None = None,
                  teacher: Callable[[Tensor], Tensor] | None = None,
                  trades_beta: float = 6.0, mart_beta: float = 6.0) -> tuple[Tensor, Tensor]:
    """Base objective plus, when ``fr`` is given, the FR term ``fr(teacher_logits, adv_logits)``.

    Parameters
    ----------
    fr : usually :func:`make_fr` (returns lam * fr_loss, DDP-aware for fft="2d"); None -> no FR term.
    teacher : None -> FR: the teacher logits are ``model(x)`` (reused when the objective computed them) and
        gradients flow through both branches, as in Eq. 2. A module (or ``WeightAverage``) -> FR/WA: the
        weight-averaged teacher, evaluated on x in its current mode under ``torch.no_grad``.

    Returns
    -------
    (loss, adv_logits) : float32 scalar and the (B, K) adversarial logits (for running accuracy).
    """
    out = base_loss(method, model, x, x_adv, y, trades_beta=trades_beta, mart_beta=mart_beta)
    loss = out.loss
    if fr is not None:
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(x)
        else:
            teacher_logits = out.nat_logits if out.nat_logits is not None else model(x)
        loss = loss + fr(teacher_logits, out.adv_logits)
    return loss, out.adv_logits


def kl_attack_loss(nat_probs: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """TRADES attack objective: summed KL(p_nat || p(x_adv)) against fixed natural probabilities."""
    def loss_fn(logits: Tensor, _y: Tensor) -> Tensor:
        return F.kl_div(F.log_softmax(logits.float(), dim=1), nat_probs, reduction="sum")
    return loss_fn


def craft_adversarial(method: str, model: nn.Module, x: Tensor, y: Tensor, *, eps: float, alpha: float,
                      steps: int, mode: str | None = None, freeze_params: bool = True) -> Tensor:
    """L-inf PGD examples for training objective ``method``, with the attack of each method's reference code.

    at / natural(+FR): CE, uniform random start (Madry).
    trades: KL(p(x) || p(x_adv)) from x + 0.001 * N(0, 1).
    mart: CE from x + 0.001 * N(0, 1).
    ``mode`` is the model's mode while attacking: "train" (BN uses and updates batch statistics) or "eval";
    None -> the method's reference code (``REFERENCE_ATTACK_MODES``: train for at/natural as Rice et al.,
    eval for trades/mart). The FR authors' code attacks in eval mode. The model's mode is restored
    afterwards. ``freeze_params``: as in :func:`fr_fast.robustness.attacks.perturb` (the trainer passes False
    to cast the weights once per step under autocast). Returns x_adv (B, C, H, W) in [0, 1], detached.
    """
    # ce_loss is the summed CE: 16-bit input gradients do not underflow.
    if method not in REFERENCE_ATTACK_MODES:
        raise ValueError(f"no training attack for method {method!r}")
    mode = REFERENCE_ATTACK_MODES[method] if mode is None else mode
    if mode not in ("train", "eval"):
        raise ValueError(f"attack mode must be 'train' or 'eval', got {mode!r}")
    with module_mode(model, mode == "train"):
        if method in ("natural", "at"):
            return perturb(model, x, y, ce_loss, eps=eps, alpha=alpha, steps=steps,
                           freeze_params=freeze_params).detach()
        x_init = (x + _SMALL_START_STD * torch.randn_like(x)).clamp_(0.0, 1.0)
        if method == "trades":
            with torch.no_grad():
                nat_probs = F.softmax(model(x).float(), dim=1)
            loss_fn = kl_attack_loss(nat_probs)
        else:
            loss_fn = ce_loss
        return perturb(model, x, y, loss_fn, eps=eps, alpha=alpha, steps=steps, x_init=x_init,
                       freeze_params=freeze_params).detach()


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(t: Tensor) -> Tensor:
    """Concatenate the (B, C) tensors of all ranks in rank order; only this rank's rows keep their autograd graph.

    Every rank must pass the same shape (the trainer's distributed loader gives equal per-rank batches).
    """
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.detach().contiguous())
    parts[dist.get_rank()] = t
    return torch.cat(parts)


class FRTerm(nn.Module):
    """The trainer's FR term: ``lam * fr_loss`` whose strength under DDP equals one process with the global batch.

    The 1-D form is a per-example mean, so DDP's gradient averaging already gives the global-batch term.
    The 2-D form (the authors' code) mixes examples through the DFT over the batch axis and its size grows
    with the batch (~sqrt(B) for independent rows), so under torch.distributed the logits of all ranks are
    gathered and every rank computes the term of the global (world x B_local, C) matrix (rows in rank order;
    a single process sees the same examples in another order, which changes the value but not its
    expectation). Only local rows carry gradients, so the term is scaled by the world size for the backward
    pass only (value unchanged): after DDP averages over ranks the gradient is that of the global term.
    """

    def __init__(self, lam: float, distance: str = "l1", fft: str = "1d") -> None:
        super().__init__()
        self.fr = FRLoss(lam=lam, distance=distance, fft=fft)

    def forward(self, teacher_logits: Tensor, adv_logits: Tensor) -> Tensor:
        # float32 under any autocast (the logits already are: the models' ClassifierHead): 16-bit logits
        # move the FR gradient by 12-15 % (fr_fast.models.head).
        with torch.autocast(adv_logits.device.type, enabled=False):
            teacher_logits, adv_logits = _at_least_float32(teacher_logits), _at_least_float32(adv_logits)
            world = _world_size()
            if self.fr.fft != "2d" or world == 1:
                return self.fr(teacher_logits, adv_logits)
            term = self.fr(gather_rows(teacher_logits), gather_rows(adv_logits))
            return world * term - (world - 1) * term.detach()


def _at_least_float32(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def make_fr(lam: float, distance: str = "l1", fft: str = "1d") -> nn.Module:
    """The FR term as a module (:class:`FRTerm`); one place that builds it for the trainer."""
    return FRTerm(lam, distance, fft)
