"""Everything a training run carries from one epoch to the next, in one object: checkpoint and resume.

:class:`TrainState` owns the student model, its optimiser, learning-rate schedule and GradScaler, the weight
average (the FR/WA teacher of Eq. 3, once it exists), the AWP proxy, the per-epoch history and the best
validation score. :meth:`TrainState.state_dict` is what a checkpoint stores (with the random number
generator states of the moment it is called) and :meth:`TrainState.load_state_dict` restores all of it, so
resuming is bit-exact; a new piece of state is one edit here. The keys are documented in
:mod:`fr_fast.runs.checkpoint`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fr_fast.config.train_config import TrainConfig
from fr_fast.runs.checkpoint import rng_state, set_rng_state
from fr_fast.training.averaging import AWP, WeightAverage


class TrainState:
    """The model and everything that changes while it trains (built from a :class:`TrainConfig`).

    Parameters
    ----------
    cfg : the run's configuration (optimiser, schedule, AWP and averaging settings).
    model : the student, already on its device and in its memory format (unwrapped: not DDP, not compiled).
    amp_dtype : the autocast dtype of the run; float16 switches the GradScaler on.
    """

    def __init__(self, cfg: TrainConfig, model: nn.Module, amp_dtype: torch.dtype | None = None) -> None:
        device_type = next(model.parameters()).device.type
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=cfg.lr_milestones,
                                                              gamma=cfg.lr_gamma)
        self.scaler = torch.amp.GradScaler(device_type, enabled=amp_dtype == torch.float16)
        # AWP's size and proxy step: the fields, or the AWP code's defaults for awp_base (config.AWP_DEFAULTS).
        gamma, _, proxy_lr = cfg.resolved_awp()
        self.awp = AWP(model, gamma, proxy_lr=proxy_lr) if cfg.method == "awp" else None
        self.average: WeightAverage | None = None
        self._average_buffers = not cfg.bn_recalibrate
        self.epoch = 0               # epochs completed
        self.history: list[dict[str, Any]] = []
        self.best_score, self.best_epoch = -1.0, -1

    def start_average(self) -> WeightAverage:
        """Create the weight average from the current weights (its first member)."""
        self.average = WeightAverage(self.model, average_buffers=self._average_buffers)
        self.average.update(self.model)
        return self.average

    def record(self, metrics: dict[str, Any], select_key: str) -> bool:
        """Append one epoch's metrics; True when ``metrics[select_key]`` is the best score so far."""
        self.history.append(metrics)
        self.epoch = metrics["epoch"]
        improved = select_key in metrics and metrics[select_key] > self.best_score
        if improved:
            self.best_score, self.best_epoch = metrics[select_key], metrics["epoch"]
        return improved

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint entries (tensors and plain values only), including the current RNG states."""
        return {"model": self.model.state_dict(),
                "average": self.average.state_dict() if self.average is not None else None,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng_state(), "epoch": self.epoch,
                "best_val_score": self.best_score, "best_epoch": self.best_epoch, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore everything :meth:`state_dict` saved, the RNG states included."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.average = None
        average = state.get("average", state.get("teacher"))  # "teacher": checkpoints before wa_role
        if average is not None:
            self.average = WeightAverage(self.model, average_buffers=self._average_buffers)
            self.average.load_state_dict(average)
        set_rng_state(state["rng"])
        self.epoch, self.history = state["epoch"], list(state["history"])
        self.best_score, self.best_epoch = state["best_val_score"], state["best_epoch"]
