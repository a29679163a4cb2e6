"""Tests of fr_fast.robustness.autoattack_impl: the official ``autoattack`` package is used when it is installed
(here a fake one, injected in sys.modules, that records how it is driven), torchattacks otherwise, and the
report and the RobustBench entry name the implementation that ran."""
from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fr_fast._optional import MissingExtraError
from fr_fast.robustness import attacks, autoattack_impl
from fr_fast.robustness.evaluate import evaluate, format_table
from fr_fast.robustness.robustbench import robustbench_entry


def _tiny_model(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(16, num_classes))


def _batch(n: int = 6, num_classes: int = 10):
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 8, 8, generator=gen), torch.randint(0, num_classes, (n,), generator=gen)


class _Attack:
    """The attributes of the official package's attack objects that fr_fast sets (class defaults)."""

    def __init__(self):
        self.n_iter, self.n_restarts, self.n_target_classes, self.n_queries = 100, 5, 9, 5000


def _fake_autoattack(calls: list) -> types.ModuleType:
    """A stand-in for the official package: its AutoAttack constructor and run_standard_evaluation, recording
    the arguments, the attack objects' settings and the model's state at run time. It seeds the global RNG as
    the official one does, and returns a perturbation outside the eps ball (fr_fast must project it)."""

    class AutoAttack:
        def __init__(self, model, norm="Linf", eps=0.3, seed=None, verbose=True, attacks_to_run=(),
                     version="standard", is_tf_model=False, device="cuda", log_path=None):
            self.model, self.eps, self.seed = model, eps, seed
            self.init = dict(norm=norm, eps=eps, seed=seed, verbose=verbose, attacks_to_run=list(attacks_to_run),
                             version=version, device=device)
            self.apgd, self.apgd_targeted, self.fab, self.square = _Attack(), _Attack(), _Attack(), _Attack()

        def run_standard_evaluation(self, x, y, bs=250, return_labels=False):
            calls.append({"init": self.init, "bs": bs, "x": x.clone(), "y": y.clone(),
                          "training": self.model.training,
                          "frozen": not any(p.requires_grad for p in self.model.parameters()),
                          "n_iter": [a.n_iter for a in (self.apgd, self.apgd_targeted, self.fab)],
                          "n_restarts": [self.apgd.n_restarts, self.apgd_targeted.n_restarts],
                          "targets": [self.apgd_targeted.n_target_classes, self.fab.n_target_classes],
                          "n_queries": self.square.n_queries})
            torch.manual_seed(self.seed)
            return x + 3 * self.eps * torch.randn_like(x).sign()

    module = types.ModuleType("autoattack")
    module.AutoAttack = AutoAttack
    module.__version__ = "9.9"
    return module


@pytest.fixture
def official(monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "autoattack", _fake_autoattack(calls))
    return calls


def test_official_package_is_used_when_installed(official):
    model = _tiny_model().train()
    x, y = _batch()
    rng = torch.random.get_rng_state()
    x_adv = attacks.autoattack(model, x, y, eps=8 / 255, steps=7, n_queries=50)
    (call,) = official
    assert call["init"] == dict(norm="Linf", eps=8 / 255, seed=0, verbose=False, attacks_to_run=[],
                                version="standard", device=x.device)
    assert call["n_iter"] == [7, 7, 7] and call["n_queries"] == 50 and call["targets"] == [9, 9]
    assert call["bs"] == 6 and torch.equal(call["x"], x) and torch.equal(call["y"], y)
    assert call["training"] is False and call["frozen"]  # eval mode, parameters frozen during the attack
    assert model.training and all(p.requires_grad for p in model.parameters())  # restored afterwards
    assert torch.equal(torch.random.get_rng_state(), rng)  # its seeding does not leak to the caller
    assert (x_adv - x).abs().max().item() <= 8 / 255 + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
    assert attacks.aa_implementation() == "autoattack 9.9 (official)"


def test_official_fast_is_its_custom_version_and_targets_follow_the_classes(official):
    x, y = _batch(num_classes=5)
    attacks.autoattack(_tiny_model(num_classes=5), x, y, eps=0.1, version="fast", steps=3)
    (call,) = official
    assert call["init"]["version"] == "custom" and call["init"]["attacks_to_run"] == ["apgd-ce", "apgd-t"]
    assert call["n_restarts"] == [1, 1]  # as its standard version (its class default is 5)
    assert call["targets"] == [4, 4]  # min(9, K - 1) for K = 5 classes


def test_report_and_robustbench_entry_name_the_implementation(official, monkeypatch):
    x, y = _batch(8)
    data = TensorDataset(x, y)
    kwargs = dict(eps=0.1, attacks=["clean", "aa"], aa_version="fast", aa_steps=2, eps_curve=False,
                  progress=False, device="cpu")
    report = evaluate(_tiny_model(), data, **kwargs)
    assert report["attacks"]["aa"]["settings"]["implementation"] == "autoattack 9.9 (official)"
    assert "implementation=autoattack 9.9 (official)" in format_table(report)
    entry = robustbench_entry(dict(report, dataset="cifar10"), name="m", model="resnet18")
    assert entry["evaluation"]["autoattack"]["implementation"] == "autoattack 9.9 (official)"
    assert "not the official" not in entry["footnote"]

    torchattacks = pytest.importorskip("torchattacks")
    monkeypatch.setitem(sys.modules, "autoattack", None)  # not installed: torchattacks runs
    report = evaluate(_tiny_model(), data, **kwargs)
    expected = f"torchattacks {torchattacks.__version__}"
    assert report["attacks"]["aa"]["settings"]["implementation"] == expected
    entry = robustbench_entry(dict(report, dataset="cifar10"), name="m", model="resnet18")
    assert f"AutoAttack run with {expected}, not the official autoattack package" in entry["footnote"]


def test_torchattacks_can_be_chosen_over_the_official_package(official):
    pytest.importorskip("torchattacks")
    x, y = _batch()
    x_adv = attacks.autoattack(_tiny_model(), x, y, eps=0.05, version="fast", steps=2,
                               implementation="torchattacks")
    assert official == []  # the official package was not called
    assert (x_adv - x).abs().max().item() <= 0.05 + 1e-6
    assert attacks.aa_implementation("torchattacks").startswith("torchattacks ")


def test_official_asked_for_but_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "autoattack", None)
    with pytest.raises(MissingExtraError) as err:
        autoattack_impl.choose("official")
    message = str(err.value)
    assert "\n" not in message and "pip install git+https://github.com/fra31/auto-attack" in message
    with pytest.raises(ValueError, match="implementation must be one of"):
        autoattack_impl.choose("foolbox")


def test_an_unrelated_autoattack_module_is_not_taken_for_the_official_one(monkeypatch):
    pytest.importorskip("torchattacks")
    monkeypatch.setitem(sys.modules, "autoattack", types.ModuleType("autoattack"))  # no AutoAttack class
    assert autoattack_impl.choose("auto")[0] == "torchattacks"
