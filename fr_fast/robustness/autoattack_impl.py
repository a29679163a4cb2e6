"""The two implementations of AutoAttack that :func:`fr_fast.robustness.attacks.autoattack` can run.

* official: the ``autoattack`` package of Croce & Hein (not on PyPI; the user installs it with
  ``pip install git+https://github.com/fra31/auto-attack``). Used whenever it is installed.
* torchattacks: the torchattacks 3.5.1 port of its attacks (installs from PyPI; the default install),
  assembled with the official settings.

Both take validated inputs (float32 images in [0, 1], int64 labels) and run inside the caller's attack
context (eval mode, frozen parameters, forked RNG); the caller projects the result.
"""
from __future__ import annotations

import importlib
import importlib.metadata
from types import ModuleType
from typing import Callable

from torch import Tensor, nn

from fr_fast._optional import MissingExtraError, require

IMPLEMENTATIONS = ("auto", "official", "torchattacks")
OFFICIAL_INSTALL = "pip install git+https://github.com/fra31/auto-attack"


def choose(implementation: str = "auto") -> tuple[str, ModuleType]:
    """("official" | "torchattacks", its module). "auto": the official package when it is installed."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation != "torchattacks":
        try:
            module = importlib.import_module("autoattack")
        except ImportError:
            module = None
        if module is not None and hasattr(module, "AutoAttack"):
            return "official", module
        if implementation == "official":
            raise MissingExtraError(f"AutoAttack (implementation='official') needs the autoattack package: "
                                    f"{OFFICIAL_INSTALL}", name="autoattack")
    return "torchattacks", require("torchattacks", "AutoAttack")


def describe(kind: str, module: ModuleType) -> str:
    """What the report and the RobustBench JSON say ran, e.g. "autoattack 0.1 (official)", "torchattacks 3.5.1"."""
    distribution = "autoattack" if kind == "official" else "torchattacks"
    version = getattr(module, "__version__", None)
    if version is None:
        try:
            version = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            version = "(version unknown)"
    return f"{distribution} {version} (official)" if kind == "official" else f"{distribution} {version}"


def run_official(module: ModuleType, model: nn.Module, x: Tensor, y: Tensor, *, eps: float, version: str,
                 steps: int, n_queries: int, n_targets: int, seed: int, verbose: bool,
                 on_stage: Callable[[str], None] | None = None) -> Tensor:
    """The official AutoAttack. "standard" and "rand" are its own versions; "fast" (ours) is its "custom"
    version with APGD-CE and APGD-T, set up as in "standard". Iterations, queries and target classes are
    set on its attack objects (its defaults: 100 iterations, 5000 queries, 9 targets)."""
    custom = version == "fast"
    adversary = module.AutoAttack(model, norm="Linf", eps=eps, version="custom" if custom else version,
                                  attacks_to_run=["apgd-ce", "apgd-t"] if custom else [], seed=seed,
                                  verbose=verbose, device=x.device)
    if custom:  # what its "standard" version sets and "custom" leaves at the class defaults
        adversary.apgd.n_restarts = adversary.apgd_targeted.n_restarts = 1
    for attack in (adversary.apgd, adversary.apgd_targeted, adversary.fab):
        attack.n_iter = steps
    for attack in (adversary.apgd_targeted, adversary.fab):
        attack.n_target_classes = n_targets  # 9 in the official standard version; fewer for K < 10 classes
    adversary.square.n_queries = n_queries
    if on_stage is not None:  # its stages run inside run_standard_evaluation (logged there with verbose)
        on_stage(f"official AutoAttack ({version})")
    return adversary.run_standard_evaluation(x, y, bs=x.shape[0])


def run_torchattacks(ta: ModuleType, model: nn.Module, x: Tensor, y: Tensor, *, eps: float, version: str,
                     steps: int, n_queries: int, n_targets: int, seed: int, verbose: bool,
                     on_stage: Callable[[str], None] | None = None) -> Tensor:
    """The torchattacks port, assembled here because ``torchattacks.AutoAttack`` keeps its classes' default
    of 10 iterations (the official package runs 100): APGD, APGDT, FAB and Square run in sequence on the
    examples still correctly classified (torchattacks.MultiAttack)."""
    common = dict(norm="Linf", eps=eps, seed=seed, verbose=verbose)
    n_classes = n_targets + 1  # torchattacks attacks (n_classes - 1) targets
    if version == "rand":
        attacks = [ta.APGD(model, steps=steps, loss="ce", eot_iter=20, n_restarts=1, **common),
                   ta.APGD(model, steps=steps, loss="dlr", eot_iter=20, n_restarts=1, **common)]
    else:
        attacks = [ta.APGD(model, steps=steps, loss="ce", n_restarts=1, **common),
                   ta.APGDT(model, steps=steps, n_classes=n_classes, n_restarts=1, **common)]
        if version == "standard":
            attacks += [ta.FAB(model, steps=steps, multi_targeted=True, n_classes=n_classes,
                               n_restarts=1, **common),
                        # resc_schedule=False as the official package: p shrinks at fixed query counts
                        # (torchattacks' default stretches that schedule to n_queries).
                        ta.Square(model, n_queries=n_queries, n_restarts=1, p_init=0.8, resc_schedule=False,
                                  **common)]
    if on_stage is not None:
        labels = {"APGD": "APGD-CE", "APGDT": "APGD-T", "FAB": "FAB-T"}
        for i, attack in enumerate(attacks):
            label = "APGD-DLR" if version == "rand" and i == 1 else labels.get(type(attack).__name__,
                                                                             type(attack).__name__)
            attack.forward = _announced(attack.forward, f"{label} ({i + 1}/{len(attacks)})", on_stage)
    return ta.MultiAttack(attacks)(x, y)


def _announced(forward: Callable, label: str, on_stage: Callable[[str], None]) -> Callable:
    """``forward`` that first tells ``on_stage`` which attack of the ensemble starts."""
    def run(*args, **kwargs):
        on_stage(label)
        return forward(*args, **kwargs)
    return run
