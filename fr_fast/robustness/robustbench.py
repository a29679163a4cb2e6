"""An ``fr-fast eval`` report in the form of a RobustBench model entry (``model_info/<dataset>/Linf/<name>.json``).

RobustBench entries hold accuracies as strings with two decimals and eps as a fraction string; the
bibliographic fields (link, authors, venue, reported) are left empty for the submitter to fill. The
``evaluation`` block adds what a comparison needs: the AutoAttack settings (with the implementation that
ran: the official package or the torchattacks port, which the footnote also names), the number of test
images, and the runtime the numbers were produced with.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# fr_fast model names -> RobustBench architecture names
ARCHITECTURES = {"resnet18": "ResNet-18", "resnet152": "ResNet-152", "preact_resnet18": "PreActResNet-18",
                 "wrn34_10": "WideResNet-34-10", "wrn34_15": "WideResNet-34-15", "small_cnn": "SmallCNN"}
TEST_SET_SIZE = {"cifar10": 10000, "cifar100": 10000, "svhn": 26032, "mnist": 10000, "fashion_mnist": 10000,
                 "tinyimagenet": 10000}


def architecture_name(model: str | None, model_kwargs: dict[str, Any] | None = None) -> str:
    """RobustBench-style name of an fr_fast architecture (unknown names as given, options appended)."""
    name = ARCHITECTURES.get(model or "", model or "unknown")
    kwargs = dict(model_kwargs or {})
    if model == "wrn":
        name = f"WideResNet-{kwargs.pop('depth', 34)}-{kwargs.pop('widen', 10)}"
    if kwargs:
        name += " (" + ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items())) + ")"
    return name


def eps_text(eps: float) -> str:
    """``8/255`` when eps is a whole number of 255ths, else the number itself (``0.3``)."""
    steps = eps * 255
    return f"{round(steps)}/255" if abs(steps - round(steps)) < 1e-6 and steps >= 1 else f"{eps:g}"


def robustbench_entry(report: dict[str, Any], *, name: str, model: str | None,
                      model_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The RobustBench model entry of an :func:`fr_fast.robustness.evaluate.evaluate` report with ``clean`` and ``aa``.

    Raises ValueError when the report has no clean or AutoAttack accuracy.
    """
    attacks = report["attacks"]
    missing = [a for a in ("clean", "aa") if a not in attacks]
    if missing:
        raise ValueError(f"a RobustBench entry needs the {' and '.join(missing)} accuracy: run with "
                         "--attacks including clean,aa")
    aa = attacks["aa"]["settings"]
    dataset = report.get("dataset", "")
    full = TEST_SET_SIZE.get(dataset)
    notes = []
    if aa.get("version") != "standard":
        notes.append(f"AutoAttack version {aa.get('version')!r}, not 'standard'")
    implementation = aa.get("implementation", "unknown")
    if not implementation.endswith("(official)"):
        notes.append(f"AutoAttack run with {implementation}, not the official autoattack package")
    if full is not None and report["n_examples"] < full:
        notes.append(f"{report['n_examples']} of {full} test images")
    return {
        "link": "", "name": name, "authors": "", "venue": "", "reported": "",
        "additional_data": False,
        "number_forward_passes": 1,
        "dataset": dataset,
        "threat_model": "Linf",
        "architecture": architecture_name(model, model_kwargs),
        "eps": eps_text(report["eps"]),
        "clean_acc": f"{attacks['clean']['accuracy']:.2f}",
        "autoattack_acc": f"{attacks['aa']['accuracy']:.2f}",
        "footnote": "; ".join(notes),
        "evaluation": {"n_examples": report["n_examples"], "autoattack": aa,
                       "checkpoint": report.get("checkpoint"), "runtime": report.get("runtime"),
                       "other_attacks": {k: round(v["accuracy"], 2) for k, v in attacks.items()
                                         if k not in ("clean", "aa")}},
    }


def default_name(checkpoint: str) -> str:
    """A RobustBench-like model name from a checkpoint path: the run folder's name, alphanumerics only."""
    path = Path(checkpoint)
    stem = path.parent.name or path.stem
    return re.sub(r"[^A-Za-z0-9_]", "_", stem) or "fr_fast_model"
