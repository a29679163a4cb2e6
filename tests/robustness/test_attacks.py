"""Tests of fr_fast.robustness.attacks: eps-ball membership, model-state restore, monotonicity, cross-check with torchattacks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fr_fast.robustness import attacks

EPS = 0.1  # MNIST-scale radius where the tiny model is partly robust (robust accuracy ~30 %)


def _tiny_cnn(in_channels: int = 1, num_classes: int = 10, bn: bool = False) -> nn.Module:
    layers = [nn.Conv2d(in_channels, 8, 5, stride=2)]
    if bn:
        layers.append(nn.BatchNorm2d(8))
    layers += [nn.ReLU(), nn.Dropout(0.1), nn.Flatten(), nn.LazyLinear(num_classes)]
    model = nn.Sequential(*layers)
    model(torch.zeros(1, in_channels, 28, 28))  # materialise the lazy layer
    return model


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _assert_in_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> None:
    assert x_adv.shape == x.shape
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0


def _batch(n: int = 16, channels: int = 1, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, 28, 28, generator=gen), torch.randint(0, 10, (n,), generator=gen)


# ------------------------------------------------------------------------------------------ perturb
def test_perturb_stays_in_ball_and_raises_loss():
    torch.manual_seed(0)
    model = _tiny_cnn().eval()
    x, y = _batch()
    x_adv = attacks.perturb(model, x, y, attacks.ce_loss, eps=0.05, alpha=0.01, steps=10)
    _assert_in_ball(x_adv, x, 0.05)
    assert not x_adv.requires_grad
    assert attacks.ce_loss(model(x_adv), y) > attacks.ce_loss(model(x), y)


def test_perturb_keeps_channels_last_and_callers_mode():
    torch.manual_seed(0)
    model = _tiny_cnn(in_channels=3, bn=True).to(memory_format=torch.channels_last).train()
    x, y = _batch(channels=3)
    x = x.to(memory_format=torch.channels_last)
    running_mean = model[1].running_mean.clone()
    x_adv = attacks.perturb(model, x, y, attacks.ce_loss, eps=8 / 255, alpha=2 / 255, steps=3)
    _assert_in_ball(x_adv, x, 8 / 255)
    assert x_adv.is_contiguous(memory_format=torch.channels_last)
    assert model.training  # perturb uses the model as the caller left it ...
    assert not torch.equal(model[1].running_mean, running_mean)  # ... so train-mode BN saw the batches


def test_perturb_freezes_and_restores_parameters():
    model = _tiny_cnn()
    model[0].bias.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    seen = []

    def loss_fn(logits, y):
        seen.append([p.requires_grad for p in model.parameters()])
        return attacks.ce_loss(logits, y)

    x, y = _batch(4)
    attacks.perturb(model, x, y, loss_fn, eps=0.1, alpha=0.05, steps=2)
    assert seen and all(not any(s) for s in seen)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_perturb_restores_flags_when_the_loss_raises():
    model = _tiny_cnn()

    def broken(logits, y):
        raise RuntimeError("boom")

    x, y = _batch(2)
    with pytest.raises(RuntimeError, match="boom"):
        attacks.perturb(model, x, y, broken, eps=0.1, alpha=0.05, steps=1)
    assert all(p.requires_grad for p in model.parameters())


def test_perturb_from_x_init_is_deterministic_and_matches_reference_loop():
    from fr_fast.ops import reference
    torch.manual_seed(0)
    model = _tiny_cnn().eval()
    x, y = _batch(8)
    x_init = x.clone()
    ours = attacks.perturb(model, x, y, attacks.ce_loss, eps=0.1, alpha=0.02, steps=5, x_init=x_init)
    assert torch.equal(x_init, x)  # x_init is not modified
    expected = x.clone()
    for _ in range(5):
        expected.requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model(expected), y, reduction="sum"), expected)
        expected = reference.pgd_step_(expected.detach(), grad, x, 0.02, 0.1)
    torch.testing.assert_close(ours, expected)


def test_perturb_works_under_no_grad():
    model = _tiny_cnn().eval()
    x, y = _batch(4)
    with torch.no_grad():
        x_adv = attacks.perturb(model, x, y, attacks.ce_loss, eps=0.1, alpha=0.05, steps=2)
    assert not torch.equal(x_adv, x)


# ----------------------------------------------------------------------------------- pgd / cw / aa
@pytest.mark.parametrize("kwargs", [dict(loss="ce"), dict(loss="cw"), dict(restarts=3), dict(random_start=False),
                                    dict(eps=0.0), dict(eps=0.5, alpha=0.1)])
def test_pgd_output_in_eps_ball(kwargs):
    torch.manual_seed(0)
    model = _tiny_cnn().eval()
    x, y = _batch()
    kwargs = {"eps": 0.05, "alpha": 0.01, "steps": 5, **kwargs}
    x_adv = attacks.pgd(model, x, y, **kwargs)
    _assert_in_ball(x_adv, x, kwargs["eps"])
    assert x_adv.dtype == torch.float32


def test_cw_output_in_eps_ball_and_channels_last():
    torch.manual_seed(0)
    model = _tiny_cnn(in_channels=3).eval()
    x, y = _batch(channels=3)
    x = x.to(memory_format=torch.channels_last)
    x_adv = attacks.cw(model, x, y, eps=8 / 255, steps=5)
    _assert_in_ball(x_adv, x, 8 / 255)
    assert x_adv.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("attack", ["pgd", "cw", "aa"])
def test_attacks_restore_model_state(attack):
    torch.manual_seed(0)
    model = _tiny_cnn(bn=True).train()
    model[2].eval()  # a mixed state (one submodule in eval) must survive exactly
    model[0].bias.requires_grad_(False)
    model[-1].weight.grad = torch.full_like(model[-1].weight, 3.0)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    bn_stats = model[1].running_mean.clone()
    x, y = _batch(8)
    if attack == "pgd":
        attacks.pgd(model, x, y, eps=0.1, steps=3)
    elif attack == "cw":
        attacks.cw(model, x, y, eps=0.1, steps=3)
    else:
        attacks.autoattack(model, x, y, eps=0.1, version="standard", steps=3, n_queries=20)
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    for p, g in zip(model.parameters(), grads):
        assert (p.grad is None) if g is None else torch.equal(p.grad, g)
    assert torch.equal(model[1].running_mean, bn_stats)  # eval mode: BN statistics untouched


def test_cw_margin_sign_matches_misclassification():
    logits = torch.tensor([[3.0, 1.0, 0.5], [0.0, 2.0, 1.0], [1.0, 1.0, 4.0], [2.0, 5.0, -1.0]])
    y = torch.tensor([0, 0, 2, 1])
    margin = attacks.cw_margin(logits, y)
    torch.testing.assert_close(margin, torch.tensor([-2.0, 2.0, -3.0, -3.0]))
    assert torch.equal(margin > 0, logits.argmax(1) != y)
    # kappa = 0 caps the objective at 0: already-fooled examples contribute nothing more
    assert attacks.cw_loss(logits, y, kappa=0.0).item() == pytest.approx(-2.0 - 3.0 - 3.0)
    # the default is the FR authors' uncapped margin: the fooled example counts with its margin
    assert attacks.cw_loss(logits, y).item() == pytest.approx(-2.0 + 2.0 - 3.0 - 3.0)


def test_cw_kappa_reaches_the_attack_and_the_report(mnist_model):
    from fr_fast.robustness.evaluate import evaluate
    model, x, y = mnist_model
    seen = []
    original = attacks.cw_loss

    def spy(logits, y, kappa=None):
        seen.append(kappa)
        return original(logits, y, kappa)

    attacks.cw_loss = spy
    try:
        for kappa in (None, 0.0):
            report = evaluate(model, [(x[:8], y[:8])], eps=0.1, attacks=("cw2",), eps_curve=False, progress=False,
                              cw_kappa=kappa)
            assert report["attacks"]["cw2"]["settings"]["kappa"] == kappa
    finally:
        attacks.cw_loss = original
    assert seen == [None, None, 0.0, 0.0]  # two steps each


def test_pgd_accuracy_falls_monotonically_with_eps(mnist_model):
    model, x, y = mnist_model
    x, y = x[:200], y[:200]
    accs = []
    for eps in (0.0, 0.05, 0.1, 0.2, 0.4):
        torch.manual_seed(0)
        x_adv = attacks.pgd(model, x, y, eps=eps, alpha=max(eps / 4, 1e-3), steps=10)
        accs.append(_accuracy(model, x_adv, y))
    assert accs[0] == pytest.approx(_accuracy(model, x, y))
    assert accs[0] > 0.8
    assert all(a >= b for a, b in zip(accs, accs[1:])), accs
    assert accs[2] < accs[0] - 0.2  # the attack does bite at eps = 0.1
    assert accs[-1] <= 0.01  # a large-eps attack breaks (almost) everything


def test_pgd_agrees_with_torchattacks(mnist_model):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = mnist_model
    x, y = x[:500], y[:500]
    torch.manual_seed(0)
    ours = _accuracy(model, attacks.pgd(model, x, y, eps=EPS, alpha=EPS / 4, steps=20), y)
    torch.manual_seed(1)
    theirs = _accuracy(model, torchattacks.PGD(model, eps=EPS, alpha=EPS / 4, steps=20)(x, y), y)
    assert 0.1 < ours < _accuracy(model, x, y) - 0.2  # a regime where the comparison means something
    assert abs(ours - theirs) <= 0.01, (ours, theirs)


def test_cw_is_a_real_attack(mnist_model):
    model, x, y = mnist_model
    x, y = x[:200], y[:200]
    torch.manual_seed(0)
    acc_cw = _accuracy(model, attacks.cw(model, x, y, eps=EPS, alpha=EPS / 4, steps=10), y)
    torch.manual_seed(0)
    acc_pgd = _accuracy(model, attacks.pgd(model, x, y, eps=EPS, alpha=EPS / 4, steps=10), y)
    assert acc_cw < _accuracy(model, x, y) - 0.2
    assert abs(acc_cw - acc_pgd) < 0.1  # two losses, same threat model: similar strength


def test_restarts_never_increase_accuracy(mnist_model):
    model, x, y = mnist_model
    x, y = x[:300], y[:300]
    per_example = []
    for restarts in (1, 3):
        torch.manual_seed(0)  # the first restart of the 3 repeats the single run
        x_adv = attacks.pgd(model, x, y, eps=EPS, alpha=EPS / 8, steps=3, restarts=restarts)
        with torch.no_grad():
            per_example.append(model(x_adv).argmax(1) == y)
    single, multi = per_example
    assert not (multi & ~single).any()  # an example broken once stays broken
    assert multi.sum() <= single.sum()


def test_autoattack_fast_on_a_tiny_batch(mnist_model):
    pytest.importorskip("torchattacks")
    model, x, y = mnist_model
    x, y = x[:32], y[:32]
    state = torch.random.get_rng_state()
    x_adv = attacks.autoattack(model, x, y, eps=EPS, version="fast", steps=5)
    assert torch.equal(torch.random.get_rng_state(), state)  # torchattacks' seeding does not leak
    _assert_in_ball(x_adv, x, EPS)
    torch.manual_seed(0)
    acc_pgd = _accuracy(model, attacks.pgd(model, x, y, eps=EPS, alpha=EPS / 4, steps=5), y)
    acc_aa = _accuracy(model, x_adv, y)
    assert acc_aa < _accuracy(model, x, y)
    assert acc_aa <= acc_pgd + 2 / 32  # APGD is at least about as strong as PGD


@pytest.mark.parametrize("version", ["standard", "rand"])
def test_autoattack_versions_in_eps_ball(version):
    pytest.importorskip("torchattacks")
    torch.manual_seed(0)
    model = _tiny_cnn(in_channels=3).eval()
    x, y = _batch(6, channels=3)
    x = x.to(memory_format=torch.channels_last)
    x_adv = attacks.autoattack(model, x, y, eps=8 / 255, version=version, steps=3, n_queries=20)
    _assert_in_ball(x_adv, x, 8 / 255)
    assert x_adv.is_contiguous(memory_format=torch.channels_last)


def test_autoattack_standard_runs_the_official_components(monkeypatch):
    """APGD-CE, APGD-T, FAB-T and Square as the official package: 100 iterations, Square's p schedule not
    rescaled to the query budget (resc_schedule=False)."""
    torchattacks = pytest.importorskip("torchattacks")
    built = []

    class _Record:
        def __init__(self, attacks_):
            built.extend(attacks_)

        def __call__(self, x, y):
            return x

    monkeypatch.setattr(torchattacks, "MultiAttack", _Record)
    x, y = _batch(4, channels=3)
    attacks.autoattack(_tiny_cnn(in_channels=3).eval(), x, y, eps=8 / 255, implementation="torchattacks")
    assert [type(a).__name__ for a in built] == ["APGD", "APGDT", "FAB", "Square"]
    square = built[-1]
    assert (square.n_queries, square.p_init, square.rescale_schedule) == (5000, 0.8, False)
    assert all(a.steps == 100 for a in built[:3])


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs, match", [
    (dict(eps=-0.1), "eps"),
    (dict(eps=float("nan")), "eps"),
    (dict(alpha=0.0), "alpha"),
    (dict(steps=0), "steps"),
    (dict(restarts=0), "restarts"),
    (dict(loss="l2"), "loss"),
])
def test_pgd_rejects_bad_settings(kwargs, match):
    x, y = _batch(2)
    with pytest.raises(ValueError, match=match):
        attacks.pgd(_tiny_cnn(), x, y, **kwargs)


@pytest.mark.parametrize("attack", [attacks.pgd, attacks.cw, attacks.autoattack])
def test_attacks_reject_bad_inputs(attack):
    model = _tiny_cnn()
    x, y = _batch(4)
    with pytest.raises(ValueError, match="labels"):
        attack(model, x, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="labels"):
        attack(model, x, torch.tensor([0, -1, 2, 3]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attack(model, x * 255, y)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attack(model, x - 0.5, y)
    with pytest.raises(ValueError, match="length"):
        attack(model, x, y[:3])
    with pytest.raises(ValueError, match="integer"):
        attack(model, x, y.float())
    with pytest.raises(ValueError, match="device"):
        attack(_tiny_cnn().to("meta"), x, y)
    attack(model, (x + 5e-7).clamp(max=1 + 5e-7), y)  # within the 1e-6 tolerance: accepted


def test_autoattack_rejects_bad_version_and_too_few_classes():
    x, y = _batch(2)
    with pytest.raises(ValueError, match="version"):
        attacks.autoattack(_tiny_cnn(), x, y, version="plus")
    with pytest.raises(ValueError, match="4 classes"):
        attacks.autoattack(_tiny_cnn(num_classes=3), x, y % 3)


def test_perturb_rejects_bad_settings():
    x, y = _batch(2)
    with pytest.raises(ValueError, match="eps"):
        attacks.perturb(_tiny_cnn(), x, y, attacks.ce_loss, eps=-1.0, alpha=0.1, steps=1)
    with pytest.raises(ValueError, match="x_init"):
        attacks.perturb(_tiny_cnn(), x, y, attacks.ce_loss, eps=0.1, alpha=0.1, steps=1, x_init=x[:1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pgd_on_cuda_matches_eps_ball_and_rejects_cpu_model():
    torch.manual_seed(0)
    model = _tiny_cnn().eval()
    x, y = _batch(16)
    with pytest.raises(ValueError, match="device"):
        attacks.pgd(model, x.cuda(), y.cuda(), eps=0.05, steps=2)
    model.cuda()
    x_adv = attacks.pgd(model, x.cuda(), y.cuda(), eps=0.05, alpha=0.01, steps=5)
    assert x_adv.is_cuda
    _assert_in_ball(x_adv.cpu(), x, 0.05)
