"""Training objectives: AT / TRADES / MART formulas, FR and FR/WA teachers, and the training attacks."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fr_fast
from fr_fast.training.losses import base_loss, craft_adversarial, make_fr, mart_loss, trades_loss, training_loss


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


@pytest.mark.parametrize("method, mode", [("at", "eval"), ("trades", "train"), ("mart", "train")])
def test_attack_mode_overrides_the_reference_mode(method, mode):
    model = _tiny().train()
    modes = []
    model.register_forward_pre_hook(lambda m, i: modes.append(m.training))
    x, _, y = _batch()
    craft_adversarial(method, model, x, y, eps=0.1, alpha=0.03, steps=2, mode=mode)
    assert modes and all(m == (mode == "train") for m in modes)
    assert model.training  # restored
    with pytest.raises(ValueError, match="attack mode"):
        craft_adversarial(method, model, x, y, eps=0.1, alpha=0.03, steps=1, mode="test")


def _fr_ratio(diff_rows: torch.Tensor) -> float:
    zeros = torch.zeros_like(diff_rows)
    return (fr_fast.fr_loss(diff_rows, zeros, fft="1d") / fr_fast.fr_loss(diff_rows, zeros, fft="2d")).item()


def _expected_gaussian_ratio(batch: int, classes: int) -> float:
    """E[1d] / E[2d] for i.i.d. N(0, 1) entries: E|N(0, s^2)| = s sqrt(2/pi) per real and imaginary part;
    n1 (n2) bins of the 1-D (2-D) DFT are real (DC, Nyquist), the others have Re and Im of half the variance."""
    n1 = 1 + (classes % 2 == 0)
    n2 = (1 + (batch % 2 == 0)) * n1
    root2 = math.sqrt(2.0)
    return 2 * classes * math.sqrt(batch) * (n1 + (classes - n1) * root2) / (n2 + (batch * classes - n2) * root2)


@pytest.mark.parametrize("classes", [10, 100, 200])
def test_fr_1d_over_2d_is_about_2c_over_sqrt_b_for_independent_rows(classes):
    """The measured relation of docs/method.md: Eq. 2 as written (1d) vs the authors' code (2d), B = 128."""
    torch.manual_seed(classes)
    batch = 128
    ratios = [_fr_ratio(torch.randn(batch, classes, dtype=torch.float64)) for _ in range(5)]
    mean = sum(ratios) / len(ratios)
    assert mean == pytest.approx(_expected_gaussian_ratio(batch, classes), rel=0.03)  # 1.67, 17.6, 35.3
    assert mean == pytest.approx(2 * classes / math.sqrt(batch), rel=0.08)


@pytest.mark.parametrize("classes", [10, 100])
def test_fr_1d_over_2d_is_2c_for_identical_rows(classes):
    torch.manual_seed(0)
    rows = torch.randn(1, classes, dtype=torch.float64).expand(64, classes).contiguous()
    assert _fr_ratio(rows) == pytest.approx(2 * classes, rel=1e-9)


def test_fr_term_is_lam_times_fr_loss_on_one_process():
    a, b = torch.randn(8, 10), torch.randn(8, 10)
    for fft in ("1d", "2d"):
        torch.testing.assert_close(make_fr(0.3, "l1", fft)(a, b), 0.3 * fr_fast.fr_loss(a, b, fft=fft))


@pytest.mark.parametrize("distance", ["l1", "l2", "cosine"])
def test_fr_term_runs_in_float32_under_bf16_autocast(distance):
    torch.manual_seed(0)
    teacher = torch.randn(32, 10).bfloat16()
    adv = (teacher.float() + 0.05 * torch.randn(32, 10)).bfloat16().requires_grad_()
    term = make_fr(0.1, distance, "2d")
    with torch.autocast("cpu", torch.bfloat16):
        value = term(teacher, adv)
    value.backward()
    adv32 = adv.detach().float().requires_grad_()
    expected = 0.1 * fr_fast.fr_loss(teacher.float(), adv32, distance, fft="2d")
    expected.backward()
    assert value.dtype == torch.float32
    assert torch.equal(value.detach(), expected.detach())
    assert torch.allclose(adv.grad.float(), adv32.grad.bfloat16().float())
