"""What may change when a run is resumed, and applying the changes that may.

A resumed run continues the checkpoint's optimiser, schedule and weights, so a config field that changes
the training (method, lam, eps, seed, ...) must match the checkpoint's; a difference is an error listing
the fields (:func:`resume_changes`). Only where and how fast the run computes may differ freely
(:data:`RUN_CONTROL_FIELDS`). ``lr``, ``epochs`` and ``lr_milestones`` may change on purpose with
``--resume-override``: :func:`apply_schedule_overrides` then really sets them in the restored optimiser and
schedule, and the checkpoint records them (its config, plus a ``resume_overrides`` log).
"""
from __future__ import annotations

from typing import Any

import torch

from fr_fast.config.train_config import RUN_CONTROL_FIELDS, TrainConfig, config_to_dict

# Fields a resumed run may change with --resume-override.
OVERRIDABLE_FIELDS = ("lr", "epochs", "lr_milestones")


def resume_changes(saved_config: dict[str, Any], cfg: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """{field: (checkpoint value, requested value)} for every training-changing field that differs.

    Fields a checkpoint predates are compared with their defaults (what the older run used).
    """
    defaults = config_to_dict(TrainConfig())
    changes = {}
    for name, value in config_to_dict(cfg).items():
        if name in RUN_CONTROL_FIELDS:
            continue
        old = saved_config.get(name, defaults[name])
        if old != value:
            changes[name] = (old, value)
    return changes


def check_resume(saved_config: dict[str, Any], cfg: TrainConfig, allow_override: bool) -> dict[str, tuple[Any, Any]]:
    """The overridable changes to apply; ValueError (one line) listing any change that is not allowed."""
    changes = resume_changes(saved_config, cfg)
    shown = lambda names: ", ".join(f"{n} {changes[n][0]!r} -> {changes[n][1]!r}" for n in names)  # noqa: E731
    fixed = [n for n in changes if n not in OVERRIDABLE_FIELDS]
    if fixed:
        raise ValueError(f"cannot resume with settings that change the training: {shown(fixed)} (checkpoint -> "
                         "now); drop those "
                         "overrides to continue the checkpoint's run, or start a new run in another --out-dir")
    if changes and not allow_override:
        raise ValueError(f"resuming would change {shown(changes)} (checkpoint -> now); pass --resume-override to "
                         f"apply the new values from here on ({', '.join(OVERRIDABLE_FIELDS)} may change), or drop "
                         "those overrides")
    return changes


def apply_schedule_overrides(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.MultiStepLR,
                             cfg: TrainConfig) -> None:
    """Set a restored optimiser and MultiStepLR schedule to ``cfg.lr`` and ``cfg.lr_milestones``.

    The learning rate of the next epoch becomes ``lr * lr_gamma ** (milestones already passed)``, exactly
    what a fresh run with these values would use at this epoch.
    """
    scheduler.milestones = type(scheduler.milestones)(cfg.lr_milestones)
    scheduler.base_lrs = [cfg.lr for _ in optimizer.param_groups]
    passed = sum(1 for m in cfg.lr_milestones if m <= scheduler.last_epoch)
    for group in optimizer.param_groups:
        group["initial_lr"] = cfg.lr
        group["lr"] = cfg.lr * cfg.lr_gamma ** passed
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def override_record(changes: dict[str, tuple[Any, Any]], epoch: int) -> dict[str, Any]:
    """One entry of a checkpoint's ``resume_overrides`` log: the epoch it applies from and old/new values."""
    return {"from_epoch": epoch + 1, **{name: list(values) for name, values in changes.items()}}

