"""Training objectives: AT / TRADES / MART formulas, FR and FR/WA teachers, and the training attacks."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fr_fast
from fr_fast.losses import base_loss, craft_adversarial, mart_loss, trades_loss, training_loss


def _tiny(num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, num_classes))


def _batch(b: int = 6, num_classes: int = 5):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(b, 1, 8, 8, generator=g)
    x_adv = (x + 0.05 * torch.randn(b, 1, 8, 8, generator=g)).clamp(0, 1)
    y = torch.randint(0, num_classes, (b,), generator=g)
    return x, x_adv, y


class _Fixed(nn.Module):
    """Returns pre-set logits for x and x_adv (identified by object identity) to test formulas exactly."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, x):
        return self.table[id(x)]


def test_at_is_ce_on_adversarial():
    model = _tiny()
    x, x_adv, y = _batch()
    out = base_loss("at", model, x, x_adv, y)
    model.eval()  # same BN behaviour for the check
    torch.testing.assert_close(base_loss("at", model, x, x_adv, y).loss, F.cross_entropy(model(x_adv), y))
    assert out.nat_logits is None and out.adv_logits.shape == (6, 5)


def test_trades_formula_by_hand():
    x, x_adv, y = _batch()
    nat, adv = torch.randn(6, 5), torch.randn(6, 5)
    model = _Fixed({id(x): nat, id(x_adv): adv})
    p, q = nat.softmax(1), adv.softmax(1)
    kl = (p * (p.log() - q.log())).sum(1).mean()
    expected = F.cross_entropy(nat, y) + 6.0 * kl
    torch.testing.assert_close(trades_loss(model, x, x_adv, y, beta=6.0).loss, expected)


def test_mart_formula_by_hand():
    x, x_adv, y = _batch()
    nat, adv = torch.randn(6, 5), torch.randn(6, 5)
    model = _Fixed({id(x): nat, id(x_adv): adv})
    p_adv, p_nat = adv.softmax(1), nat.softmax(1)
    total = 0.0
    for i in range(6):
        wrong = max((k for k in range(5) if k != y[i]), key=lambda k: p_adv[i, k].item())
        bce = -math.log(p_adv[i, y[i]].item()) - math.log(1.0001 - p_adv[i, wrong].item() + 1e-12)
        kl = sum(p_nat[i, k].item() * (math.log(p_nat[i, k].item()) - math.log(p_adv[i, k].item() + 1e-12))
                 for k in range(5))
        total += bce / 6 + 6.0 * kl * (1.0000001 - p_nat[i, y[i]].item()) / 6
    assert mart_loss(model, x, x_adv, y, beta=6.0).loss.item() == pytest.approx(total, rel=1e-5)


def test_natural_loss_ignores_adversarial_for_ce():
    model = _tiny().eval()
    x, x_adv, y = _batch()
    loss, logits = training_loss("natural", model, x, None, y)
    torch.testing.assert_close(loss, F.cross_entropy(model(x), y))
    torch.testing.assert_close(logits, model(x))


def test_fr_adds_lambda_times_fr_loss_and_flows_to_both_branches():
    model = _tiny().eval()
    x, x_adv, y = _batch()
    fr = fr_fast.FRLoss(0.1, "l1", "1d")
    loss, _ = training_loss("at", model, x, x_adv, y, fr=fr)
    expected = F.cross_entropy(model(x_adv), y) + 0.1 * fr_fast.fr_loss(model(x), model(x_adv))
    torch.testing.assert_close(loss, expected)
    # Gradient of the FR part reaches the natural branch (Eq. 2: f1 = f2 = the model, no detach).
    x_req = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(training_loss("at", model, x_req, x_adv, y, fr=fr)[0], x_req)
    assert g.abs().sum() > 0


def test_fr_reuses_natural_logits_of_trades():
    calls = []
    model = _tiny().eval()
    model.register_forward_hook(lambda m, i, o: calls.append(1))
    x, x_adv, y = _batch()
    training_loss("trades", model, x, x_adv, y, fr=fr_fast.FRLoss(0.1))
    assert len(calls) == 2  # x and x_adv once each; FR reuses the natural logits


def test_frwa_teacher_is_not_differentiated():
    model, teacher = _tiny().eval(), _tiny().eval()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.1)
    x, x_adv, y = _batch()
    loss, _ = training_loss("at", model, x, x_adv, y, fr=fr_fast.FRLoss(0.5), teacher=teacher)
    expected = F.cross_entropy(model(x_adv), y) + 0.5 * fr_fast.fr_loss(teacher(x), model(x_adv))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in model.parameters())


def test_unknown_method():
    x, x_adv, y = _batch()
    with pytest.raises(ValueError, match="unknown training objective"):
        base_loss("fgsm", _tiny(), x, x_adv, y)
    with pytest.raises(ValueError, match="no training attack"):
        craft_adversarial("awp", _tiny(), x, y, eps=0.1, alpha=0.05, steps=1)


@pytest.mark.parametrize("method", ["at", "trades", "mart"])
def test_training_attack_stays_in_ball_and_restores_mode(method):
    model = _tiny()
    model.train()
    x, _, y = _batch()
    eps = 0.1
    x_adv = craft_adversarial(method, model, x, y, eps=eps, alpha=0.03, steps=3)
    assert model.training
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert all(p.requires_grad for p in model.parameters())
    model.eval()
    clean = F.cross_entropy(model(x), y)
    if method != "trades":  # the CE attacks must increase the CE
        assert F.cross_entropy(model(x_adv), y) > clean


def test_trades_attack_runs_in_eval_mode():
    model = _tiny()
    modes = []
    model.register_forward_pre_hook(lambda m, i: modes.append(m.training))
    x, _, y = _batch()
    craft_adversarial("trades", model, x, y, eps=0.1, alpha=0.03, steps=2)
    assert modes and not any(modes)
    modes.clear()
    craft_adversarial("at", model, x, y, eps=0.1, alpha=0.03, steps=2)
    assert modes and all(modes)  # Madry / Rice AT attack the train-mode model
