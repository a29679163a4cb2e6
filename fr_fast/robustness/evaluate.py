"""Robustness report: clean, PGD-20, PGD-50, CW-inf and AutoAttack accuracy, with sanity checks.

Protocol (the paper's Table 2): L-inf threat model, eps = 8/255 and step size 2/255 for CIFAR/SVHN/
Tiny ImageNet; PGD with one uniform random start; CW-inf = PGD on the CW margin loss (uncapped, as the
authors' code; ``cw_kappa`` caps it), 30 steps;
AutoAttack "standard". All attacks run in float32 with the model in eval mode. Robust accuracy is
the plain accuracy on the adversarial examples (the PGD convention), so "robust <= clean" is a real
check, not a consequence of the definition.

Sanity checks (in ``report["checks"]``, failures also in ``report["warnings"]``):

* robust accuracy of every attack <= clean accuracy;
* accuracy under PGD-20 falls monotonically along the eps curve ``eps * (0, 1/4, 1/2, 1, 2)``, i.e.
  0, 2, 4, 8, 16/255 for eps = 8/255 and the same fractions of the dataset's eps otherwise
  (0, 0.075, 0.15, 0.3, 0.6 for MNIST at eps = 0.3);
* a large-eps PGD-20 (eps = 0.5: any image can be moved to uniform grey) leaves ~0 % accuracy;
* PGD and AutoAttack agree within 3 points -- AA far below PGD is the classic sign of gradient
  masking, AA far above PGD means an attack is broken.
"""
from __future__ import annotations

import math
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from fr_fast.robustness import attacks as atk
from fr_fast.robustness.measure import batches, example_count, is_correct, model_device, progress_bar

DEFAULT_ATTACKS = ("clean", "pgd20", "pgd50", "cw", "aa")
CURVE_FRACTIONS = (0.0, 0.25, 0.5, 1.0, 2.0)  # of eps: 0, 2, 4, 8, 16/255 at eps = 8/255
LARGE_EPS = 0.5
LARGE_EPS_MAX_ACC = 2.0   # percent
PGD_AA_MAX_GAP = 3.0      # percentage points
MONOTONE_TOL = 0.5        # percentage points of slack for the eps curve (random starts)
CW_STEPS = 30


@dataclass
class AttackSpec:
    """One row of the report: a name, the settings written to the JSON, and the function producing x_adv."""

    name: str
    settings: dict
    run: Callable[[nn.Module, Tensor, Tensor], Tensor]


def attack_spec(name: str, eps: float, alpha: float, *, aa_version: str = "standard", aa_steps: int = 100,
                restarts: int = 1, cw_kappa: float | None = None, aa_implementation: str = "auto",
                on_stage: Callable[[str], None] | None = None) -> AttackSpec:
    """Parse an attack name: "clean", "pgdN" (N steps, CE), "cw" / "cwN" (CW-inf, default 30 steps), "aa".

    ``alpha`` is the PGD/CW step size; AutoAttack is step-size free (``aa_steps``: APGD/FAB iterations,
    100 in the official standard version; ``aa_implementation``: see :func:`fr_fast.robustness.attacks.autoattack`,
    the settings name the one that runs). ``on_stage`` hears AutoAttack's stages.
    """
    if name == "clean":
        return AttackSpec(name, {"attack": "none"}, lambda m, x, y: x)
    match = re.fullmatch(r"(pgd|cw)(\d*)", name)
    if match:
        loss = "ce" if match.group(1) == "pgd" else "cw"
        if not match.group(2) and loss == "ce":
            raise ValueError(f"attack {name!r}: give PGD's step count, e.g. 'pgd20'")
        steps = int(match.group(2) or CW_STEPS)
        settings = {"attack": "pgd", "loss": loss, "eps": eps, "alpha": alpha, "steps": steps,
                    "restarts": restarts, "random_start": True}
        kappa = cw_kappa if loss == "cw" else None
        if loss == "cw":
            settings["kappa"] = kappa  # None: the uncapped margin (the FR authors' form)
        return AttackSpec(name, settings, lambda m, x, y: atk.pgd(m, x, y, eps=eps, alpha=alpha, steps=steps,
                                                                  loss=loss, restarts=restarts, cw_kappa=kappa))
    if name == "aa":
        implementation = atk.aa_implementation(aa_implementation)  # fails here, before any attack runs
        if aa_version not in atk.AA_VERSIONS:
            raise ValueError(f"aa_version must be one of {atk.AA_VERSIONS}, got {aa_version!r}")
        settings = {"attack": "autoattack", "version": aa_version, "eps": eps, "steps": aa_steps,
                    "n_queries": 5000, "implementation": implementation}
        return AttackSpec(name, settings, lambda m, x, y: atk.autoattack(
            m, x, y, eps=eps, version=aa_version, steps=aa_steps, implementation=aa_implementation,
            on_stage=on_stage))
    raise ValueError(f"unknown attack {name!r}: use clean, pgdN (e.g. pgd20), cw, cwN or aa")


@dataclass
class _Tally:
    correct: int = 0
    seconds: float = 0.0
    per_example: list = field(default_factory=list)


def evaluate(model: nn.Module, data: Dataset | Iterable, *, eps: float, alpha: float | None = None,
             attacks: Sequence[str] = DEFAULT_ATTACKS, n_examples: int | None = None, batch_size: int = 256,
             aa_version: str = "standard", aa_steps: int = 100, aa_implementation: str = "auto",
             restarts: int = 1, eps_curve: bool = True,
             curve_examples: int = 500, curve_steps: int = 20, device: str | torch.device | None = None,
             seed: int = 0, progress: bool = True, cw_kappa: float | None = None) -> dict:
    """Robust accuracy of ``model`` under several L-inf attacks, plus sanity checks.

    Parameters
    ----------
    model : nn.Module mapping (B, C, H, W) images in [0, 1] to (B, K) logits
    data : a map-style Dataset of (x, y) items, or any iterable of (x, y) batches (DataLoader,
        ``fr_fast.data.BatchLoader``, a list); x in [0, 1]
    eps : L-inf radius (paper: 8/255; MNIST-like data commonly 0.3)
    alpha : PGD/CW step size; None -> eps / 4 (2/255 at eps = 8/255, as in the paper)
    attacks : names, see :func:`attack_spec`; default clean, pgd20, pgd50, cw (30 steps), aa
    n_examples : evaluate the first n examples only (None: all)
    batch_size : batch size when ``data`` is a Dataset
    aa_version : AutoAttack version ("standard" | "fast" | "rand")
    aa_steps : APGD/FAB iterations of AutoAttack (official: 100; fewer only for quick checks)
    aa_implementation : "auto" (the official autoattack package when installed, else torchattacks) |
        "official" | "torchattacks"; the report's settings name the one that ran
    restarts : PGD/CW restarts
    eps_curve : also run PGD at eps * (0, 1/4, 1/2, 1, 2) (alpha = eps / 4) and at eps = 0.5 on the
        first ``curve_examples`` examples (the monotonicity and large-eps checks)
    curve_steps : PGD steps of those curve attacks (20)
    device : where to run; None -> the model's device
    seed : seeds the attacks' random starts (the caller's RNG state is restored afterwards)
    progress : progress display (:mod:`fr_fast.utils.progress`: per attack, with an ETA)
    cw_kappa : cap of the CW-inf margin; None (default) = uncapped, the FR authors' form (their published C&W
        numbers); 0 = Carlini-Wagner's kappa 0

    Returns
    -------
    dict (JSON-serialisable): ``eps``, ``alpha``, ``n_examples``, ``attacks`` = {name: {"accuracy"
    (percent), "correct", "seconds", "settings"}}, ``worst_case`` (percent of examples that survive
    every attack), ``eps_curve``, ``large_eps``, ``checks``, ``warnings``, ``seconds``, ``device``.
    """
    _check_arguments(eps, attacks, n_examples)
    alpha = eps / 4 if alpha is None else alpha
    device = model_device(model) if device is None else torch.device(device)
    specs = [attack_spec(name, eps, alpha, aa_version=aa_version, aa_steps=aa_steps, restarts=restarts,
                         cw_kappa=cw_kappa, aa_implementation=aa_implementation,
                         on_stage=lambda stage: _show_stage(bar, f"eval aa: {stage}{where[0]}"))
             for name in attacks]
    where = [""]  # ", batch i/n" while an attack runs, for the stage lines
    if len({s.name for s in specs}) != len(specs):
        raise ValueError(f"attacks has duplicates: {list(attacks)}")
    curve_eps = [eps * f for f in CURVE_FRACTIONS] if eps_curve else []
    curve_attack = f"pgd{curve_steps}"
    curve_specs = [attack_spec(curve_attack, e, max(e / 4, 1e-6)) for e in curve_eps]
    large_spec = attack_spec(curve_attack, LARGE_EPS, LARGE_EPS / 4)
    limit = example_count(data, n_examples)

    tallies = {s.name: _Tally() for s in specs}
    curve_correct = [0] * len(curve_specs)
    large_correct = curve_seen = seen = 0
    start = time.perf_counter()
    bar = progress_bar(desc="eval", enabled=progress, total=limit, unit="img")
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        n_batches = -(-limit // batch_size) if isinstance(data, Dataset) and limit else None
        for b, (x, y) in enumerate(batches(data, n_examples, device, batch_size)):
            where[0] = f", batch {b + 1}" + (f"/{n_batches}" if n_batches else "")
            for spec in specs:
                _show_stage(bar, f"eval {spec.name}{where[0]}")  # a line per attack and batch, not per batch
                bar.set_description(f"eval {spec.name}")
                t0 = time.perf_counter()
                correct = is_correct(model, spec.run(model, x, y), y)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                tallies[spec.name].seconds += time.perf_counter() - t0
                tallies[spec.name].correct += int(correct.sum())
                tallies[spec.name].per_example.append(correct.cpu())
                bar.update(0)  # a plain progress line is due after a long attack, too
            if eps_curve and curve_seen < curve_examples:
                bar.set_description("eval eps curve")
                xc, yc = x[: curve_examples - curve_seen], y[: curve_examples - curve_seen]
                for i, spec in enumerate(curve_specs):
                    curve_correct[i] += int(is_correct(model, spec.run(model, xc, yc), yc).sum())
                large_correct += int(is_correct(model, large_spec.run(model, xc, yc), yc).sum())
                curve_seen += len(yc)
            seen += len(y)
            bar.update(len(y))
            bar.set_postfix({f"{name} %": f"{100 * t.correct / seen:.1f}" for name, t in tallies.items()})
    bar.set_description("eval")
    bar.close()
    if seen == 0:
        raise ValueError("no examples to evaluate: the dataset or loader is empty")

    report = {
        "eps": eps, "eps_255": eps * 255, "alpha": alpha, "n_examples": seen, "device": str(device),
        "attacks": {name: {"accuracy": _pct(t.correct, seen), "correct": t.correct, "seconds": t.seconds,
                           "settings": spec.settings}
                    for (name, t), spec in zip(tallies.items(), specs)},
    }
    robust = [torch.cat(t.per_example) for name, t in tallies.items() if name != "clean"]
    if robust:
        survivors = torch.stack(robust).all(0)
        report["worst_case"] = _pct(int(survivors.sum()), seen)
    if eps_curve:
        report["eps_curve"] = {"eps": curve_eps, "accuracy": [_pct(c, curve_seen) for c in curve_correct],
                               "attack": curve_attack, "alpha": "eps / 4", "n_examples": curve_seen}
        report["large_eps"] = {"eps": LARGE_EPS, "accuracy": _pct(large_correct, curve_seen),
                               "attack": curve_attack}
    report["checks"], report["warnings"] = sanity_checks(report)
    report["seconds"] = time.perf_counter() - start
    for message in report["warnings"]:
        print(f"WARNING: {message}", file=sys.stderr)
    return report


def _show_stage(bar, description: str) -> None:
    """Show ``description`` now (a plain line off a terminal when one is due), then keep the bar's own."""
    previous = bar.desc
    bar.set_description(description)
    bar.update(0)
    bar.set_description(previous)


def _check_arguments(eps: float, attacks: Sequence[str], n_examples: int | None) -> None:
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if not attacks:
        raise ValueError("attacks is empty: name at least one of clean, pgdN, cw, aa")
    if n_examples is not None and n_examples < 1:
        raise ValueError(f"n_examples must be >= 1 or None, got {n_examples}")


def sanity_checks(report: dict) -> tuple[dict[str, bool], list[str]]:
    """The checks the field expects of a robustness evaluation; returns ({check: passed}, warnings)."""
    checks, warnings = {}, []
    acc = {name: row["accuracy"] for name, row in report["attacks"].items()}
    if "clean" in acc:
        above = [n for n, a in acc.items() if n != "clean" and a > acc["clean"]]
        checks["robust_le_clean"] = not above
        if above:
            warnings.append(f"robust accuracy above clean ({acc['clean']:.2f} %) for {', '.join(above)}: "
                            "the attack is not working")
    if "eps_curve" in report:
        curve = report["eps_curve"]["accuracy"]
        rises = [i for i in range(1, len(curve)) if curve[i] > curve[i - 1] + MONOTONE_TOL]
        checks["monotone_in_eps"] = not rises
        if rises:
            pairs = ", ".join(f"{report['eps_curve']['eps'][i] * 255:.1f}/255: {curve[i]:.2f} %" for i in rises)
            warnings.append(f"accuracy rises with eps ({pairs}): sign of gradient masking or a weak attack")
        large = report["large_eps"]["accuracy"]
        checks["large_eps_breaks"] = large <= LARGE_EPS_MAX_ACC
        if large > LARGE_EPS_MAX_ACC:
            warnings.append(f"PGD-20 at eps = {LARGE_EPS} leaves {large:.2f} % accuracy (expected ~0 %): "
                            "gradient masking or a broken attack")
    pgd_names = [n for n in acc if re.fullmatch(r"pgd\d+", n)]
    if pgd_names and "aa" in acc:
        best_pgd = min(pgd_names, key=acc.get)
        gap = acc[best_pgd] - acc["aa"]
        checks["pgd_aa_agree"] = abs(gap) <= PGD_AA_MAX_GAP
        if gap > PGD_AA_MAX_GAP:
            warnings.append(f"AutoAttack is {gap:.2f} points below {best_pgd}: possible gradient masking")
        elif gap < -PGD_AA_MAX_GAP:
            warnings.append(f"AutoAttack is {-gap:.2f} points above {best_pgd}: an attack is not working")
    return checks, warnings


def _pct(correct: int, n: int) -> float:
    return 100.0 * correct / n if n else math.nan


def format_table(report: dict) -> str:
    """The report as a plain-text table (accuracy in percent)."""
    lines = [f"eps = {report['eps_255']:.2f}/255 ({report['eps']:.4g}), alpha = {report['alpha']:.4g}, "
             f"n = {report['n_examples']}, device = {report['device']}",
             f"{'attack':<8} {'acc %':>7} {'seconds':>8}  settings"]
    for name, row in report["attacks"].items():
        s = row["settings"]
        detail = ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("eps", "alpha"))
        lines.append(f"{name:<8} {row['accuracy']:>7.2f} {row['seconds']:>8.1f}  {detail}")
    if "worst_case" in report:
        lines.append(f"{'worst':<8} {report['worst_case']:>7.2f}")
    if "eps_curve" in report:
        c = report["eps_curve"]
        points = "  ".join(f"{e * 255:.1f}:{a:.1f}" for e, a in zip(c["eps"], c["accuracy"]))
        lines.append(f"eps curve (x/255: acc %, {c['attack']}, n = {c['n_examples']}): {points}")
        lines.append(f"large eps {report['large_eps']['eps']}: {report['large_eps']['accuracy']:.2f} %")
    lines.append("checks: " + ", ".join(f"{k}={'ok' if v else 'FAIL'}" for k, v in report["checks"].items()))
    return "\n".join(lines)
