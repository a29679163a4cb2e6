"""Branching a new run from another run's checkpoint (``--branch_from``): trunk and fork.

A branch continues a checkpoint's weights, optimiser, learning-rate schedule position, weight average and
random-number state in a *new* run folder, with the FR / weight-average settings of the new config
(:data:`BRANCH_FIELDS`) from the checkpoint's epoch on. Everything else that shapes the training (model,
data, batch, attack, optimiser, schedule, seed, ...) must equal the checkpoint's: the branch is then, bit
for bit, the run that switched those settings at that epoch. This is how the paper runs its ablations
(Fig. 6: every lambda and distance from the same epoch-74 checkpoint), and how AT, AT+FR and AT+FR/WA
share one trunk up to the first learning-rate decay (they are the same run until then).

What happens at the branch point (:func:`start_branch`):
- the checkpoint's state is restored (:meth:`TrainState.load_state_dict`);
- a weight average the new settings do not keep is dropped; one they keep from exactly this epoch on
  (``wa_start`` = the checkpoint's epoch) is created as the uninterrupted run creates it at the end of the
  epoch before (current weights, BN re-estimated on the same batches); one that should have started
  earlier cannot be recreated and the branch is refused (:func:`check_branch`);
- best.pt is chosen among the branch point and later epochs, by the new config's selection metric.
"""
from __future__ import annotations

from typing import Any, Callable

from fr_fast.config.train_config import TrainConfig
from fr_fast.training.resume import resume_changes
from fr_fast.training.state import TrainState

# What a branch may set differently from its checkpoint: the FR term, the weight average, and how long
# the run goes on.
BRANCH_FIELDS = frozenset({"fr", "lam", "distance", "fft", "fr_start_epoch", "wa", "wa_role", "wa_start_epoch",
                           "bn_recalibrate", "bn_recalibrate_batches", "select_by", "epochs"})


def check_branch(saved: dict[str, Any], cfg: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """The changes a branch of checkpoint ``saved`` into ``cfg`` applies; ValueError (one line) when it cannot.

    Refused: a training-shaping field outside :data:`BRANCH_FIELDS` differs; nothing is left to train
    (``epochs`` <= the checkpoint's epoch); the new settings keep a weight average that should already
    exist at the branch point but the checkpoint has none.
    """
    changes = resume_changes(saved["config"], cfg)
    shown = lambda names: ", ".join(f"{n} {changes[n][0]!r} -> {changes[n][1]!r}" for n in names)  # noqa: E731
    fixed = sorted(n for n in changes if n not in BRANCH_FIELDS)
    if fixed:
        raise ValueError(f"cannot branch with settings that change the trunk's training: {shown(fixed)} "
                         f"(checkpoint -> now); a branch may change only {', '.join(sorted(BRANCH_FIELDS))}; "
                         "drop those overrides or train a new run")
    epoch = int(saved["epoch"])
    if cfg.epochs <= epoch:
        raise ValueError(f"nothing to train: the checkpoint is at epoch {epoch} and epochs={cfg.epochs}; "
                         f"set --epochs above {epoch}")
    if cfg.uses_wa and saved.get("average") is None and cfg.resolved_wa_start() < epoch:
        raise ValueError(f"the new settings keep a weight average from epoch index {cfg.resolved_wa_start()}, "
                         f"before the branch point (epoch {epoch}), and the checkpoint holds none; branch from an "
                         f"epoch <= {cfg.resolved_wa_start()} or set --wa_start_epoch={epoch} or later")
    return changes


def start_branch(cfg: TrainConfig, state: TrainState, saved: dict[str, Any],
                 fold_average: Callable[[], None], set_loader_epoch: Callable[[int], None]) -> None:
    """Restore ``saved`` into ``state`` and apply the branch-point rules of the module docstring.

    ``fold_average`` creates the weight average (and re-estimates its BN statistics on the training loader);
    ``set_loader_epoch`` positions that loader where the uninterrupted run's is when it creates it.
    """
    state.load_state_dict(saved)
    if not cfg.uses_wa:
        state.average = None
    elif state.average is None and cfg.resolved_wa_start() == state.epoch:
        # The uninterrupted run creates it at the end of epoch index epoch-1, after that epoch's pass
        # over the loader: the loader then stands at epoch `epoch`.
        set_loader_epoch(state.epoch)
        fold_average()
    key = cfg.resolved_select_by()
    last = state.history[-1] if state.history else {}
    state.best_score, state.best_epoch = (last[key], last["epoch"]) if key in last else (-1.0, -1)
