"""The training loop: :func:`make_step` (one batch) and :func:`train` (the epochs), each read top to bottom.

``python -m fr_fast train configs/cifar10_resnet18_at_fr.yaml --epochs=10`` or ``fr-fast train ...``;
multi-GPU / multi-node with ``torchrun --nproc_per_node=N -m fr_fast train ...`` (DDP, rank-0 logging
and checkpointing; ``batch_size`` is the global batch, split evenly over the ranks).

Reproducibility: all randomness of epoch e (loader order, augmentation, attack starts, validation attack)
is seeded from (seed, epoch, rank) at the start of the epoch, and the loader order depends only on
(seed, epoch); a checkpoint (:class:`fr_fast.training.state.TrainState`) is written after every epoch, so a run
killed at any moment and resumed with ``--resume`` ends with the same weights as an uninterrupted run
(bit-exact with ``deterministic=true`` on CPU).

Paper choices (sec. 5 and appendix A.3/A.6): SGD momentum 0.9, wd 5e-4 (2e-4 TRADES/MART), batch 128,
lr 0.1 decayed x0.1 at epochs 75 and 90 of 100, PGD-10 with alpha 2/255 and eps 8/255, 9:1 train/val
split, best checkpoint by validation PGD-20 (clean accuracy for natural training: ``select_by``), FR and WA
switched on at the first lr decay (``fr_start_epoch``/``wa_start_epoch`` None). Choices the paper does not
state: the weight average runs in eval mode; its BN statistics are re-estimated at creation and after each
averaging step (``bn_recalibrate``, as the authors' code); validation uses the same autocast as training.
Where text and authors' code differ, ``fft``, ``wa_role`` and ``attack_mode`` choose (docs/method.md).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fr_fast.config.train_config import TrainConfig, config_to_dict
from fr_fast.data import BatchLoader, DatasetInfo, TensorImageDataset, dataset_info, load_dataset
from fr_fast.models import build_model
from fr_fast.robustness.attacks import pgd
from fr_fast.runs import runinfo
from fr_fast.runs.checkpoint import nonfinite_entries, save_checkpoint
from fr_fast.runs.metrics_log import MetricsLog
from fr_fast.runs.runfolder import (
    branch_label,
    branch_source,
    check_dir_creatable,
    hold_run_folder,
    load_resume,
    reconcile_best,
    resume_source,
    run_dir,
)
from fr_fast.spectral.fourier import low_pass
from fr_fast.training import sync_free
from fr_fast.training.branch import check_branch, start_branch
from fr_fast.training.interrupt import StopOnSignal
from fr_fast.training.losses import base_loss, craft_adversarial, make_fr, training_loss
from fr_fast.training.resume import apply_schedule_overrides, check_resume, override_record
from fr_fast.training.run_report import epoch_line, run_eta, run_summary, summary_table
from fr_fast.training.runtime import Runtime, autocast, resolve_amp, resolve_memory_format, runtime
from fr_fast.training.state import TrainState
from fr_fast.utils.progress import Progress
from fr_fast.utils.seeding import mix_seed, seed_everything


# ------------------------------------------------------------------------------------------- the step
class StepResult(NamedTuple):
    loss: float      # the batch's training loss (the step's one host sync: NaN guard and progress bar)
    stats: Tensor    # (2,) float32 on the device: the loss and the number of correct adversarial predictions


class NonFiniteLoss(FloatingPointError):
    """The training loss of a batch was NaN or infinite (raised before the weights change)."""


class TrainingDiverged(RuntimeError):
    """The loss or the model's state became NaN/inf; nothing non-finite was saved (exit status 1)."""

    exit_code = 1


def switches(cfg: TrainConfig, epoch: int) -> tuple[bool, bool]:
    """(FR on, AWP on) in epoch ``epoch`` (0-indexed)."""
    return cfg.fr != "none" and epoch >= cfg.resolved_fr_start(), cfg.method == "awp" and epoch >= cfg.resolved_awp()[1]


def wrap_models(cfg: TrainConfig, model: nn.Module, world: int = 1) -> tuple[nn.Module, nn.Module]:
    """(attack_model, train_model) of the step: compiled when ``cfg.compile``; the loss model DDP-wrapped when
    ``world`` > 1. The attack runs on the bare module (no DDP hooks: it never back-propagates into parameters).
    """
    mode = None if cfg.compile_mode == "default" else cfg.compile_mode
    attack_model: nn.Module = torch.compile(model, mode=mode) if cfg.compile else model
    train_model: nn.Module = model
    if world > 1:
        device = next(model.parameters()).device
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model, mode=mode)
    return attack_model, train_model


def make_step(cfg: TrainConfig, state: TrainState, epoch: int, models: tuple[nn.Module, nn.Module] | None = None,
              cache: dict[str, Any] | None = None) -> Callable[[Tensor, Tensor], StepResult | None]:
    """The training step of epoch ``epoch``: ``step(x, y)`` attacks, computes the loss and updates ``state``.

    x: (B, C, H, W) float in [0, 1] (moved to the model's device and memory format), y: (B,) int64. The
    objective, the FR term (and its teacher: ``state.average`` for FR/WA) and AWP are those ``cfg``
    switches on in that epoch; autocast and memory format are resolved from ``cfg`` and the model's device.
    ``models``: the (attack_model, train_model) pair of :func:`wrap_models` (default: built here).
    Eager (``cuda_graph`` off): returns a :class:`StepResult`; raises :class:`NonFiniteLoss` before any weight
    changes when the loss is NaN or infinite. ``cuda_graph`` on: a :mod:`fr_fast.training.sync_free` step
    (returns None; statistics and skipped updates on the device, read with ``step.read()``), taken from
    ``cache`` when an earlier epoch built one with the same switches (its lr is refreshed).
    """
    device = next(state.model.parameters()).device
    amp_dtype = resolve_amp(cfg.amp, device)
    memory_format = resolve_memory_format(cfg.channels_last, device)
    objective = cfg.awp_base if cfg.method == "awp" else cfg.method
    fr_on, awp_on = switches(cfg, epoch)
    teacher = state.average if fr_on and cfg.wa_teacher else None  # wa_role "evaluated": FR uses the model
    key = sync_free.step_key(fr_on, awp_on, teacher)
    if cfg.cuda_graph and cache is not None and cache.get("key") == key:
        cache["step"].set_lr()
        return cache["step"]
    attack_model, train_model = models if models is not None else wrap_models(cfg, state.model)
    fr = make_fr(cfg.lam, cfg.distance, cfg.fft) if fr_on else None  # fft="2d" under DDP: on the global batch
    awp = state.awp if awp_on else None
    betas = dict(trades_beta=cfg.trades_beta, mart_beta=cfg.mart_beta)
    held: dict[str, Any] = {}  # AWP's perturbation of the current batch, removed after the update
    freeze = amp_dtype is None or cfg.compile  # frozen parameters in the attack (see forward)

    def forward(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Attack, AWP perturbation and loss: the step up to its backward pass."""
        x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        train_model.train()
        # Under autocast the parameters stay trainable during the attack, so autocast casts each weight once
        # per step (its cache holds trainable leaves only) instead of once in each of the attack's forwards.
        # Not for a compiled model: its compiled backward would then compute the weight gradients too.
        with autocast(device, amp_dtype):
            x_adv = craft_adversarial(objective, attack_model, x, y, eps=cfg.eps, alpha=cfg.alpha,
                                      steps=cfg.attack_steps, mode=cfg.resolved_attack_mode(), freeze_params=freeze) \
                if objective != "natural" or fr_on else None
            if awp is not None:
                held["diff"] = awp.perturbation(lambda m: base_loss(objective, m, x, x_adv, y, **betas).loss)
                awp.perturb(held["diff"])
                torch.clear_autocast_cache()  # the cached casts hold the weights before the perturbation
            loss, adv_logits = training_loss(objective, train_model, x, x_adv, y, fr=fr, teacher=teacher, **betas)
        return loss, adv_logits

    def restore() -> None:
        if awp is not None:
            awp.restore(held.pop("diff"))

    if cfg.cuda_graph:
        step = sync_free.build_step(forward, state, device, after_update=restore)
        if cache is not None:
            cache.update(key=key, step=step)
        return step

    def step(x: Tensor, y: Tensor) -> StepResult:
        loss, adv_logits = forward(x, y)
        y = y.to(device, non_blocking=True)
        with torch.no_grad():
            stats = torch.stack([loss.detach().float(), (adv_logits.argmax(1) == y).sum().float()])
        value = stats[0].item()
        if not math.isfinite(value):
            restore()
            raise NonFiniteLoss(f"loss became {value}")
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        restore()
        return StepResult(value, stats)

    return step


# ------------------------------------------------------------------------------------------ the epochs
def _datasets(cfg: TrainConfig):
    """(train, val) datasets: the 9:1 split of the training set, or random images when ``fake_data`` > 0."""
    info = dataset_info(cfg.dataset)
    if cfg.fake_data > 0:
        g = torch.Generator().manual_seed(cfg.seed)
        size = cfg.pad_to or info.image_size
        n_val = max(1, int(cfg.fake_data * cfg.val_fraction))
        make = lambda n: TensorImageDataset(  # noqa: E731
            torch.randint(0, 256, (n, info.channels, size, size), dtype=torch.uint8, generator=g),
            torch.randint(0, info.num_classes, (n,), generator=g), info=info)
        return make(cfg.fake_data), make(n_val), info
    kwargs = dict(pad_to=cfg.pad_to, val_fraction=cfg.val_fraction, seed=cfg.split_seed)
    return (load_dataset(cfg.dataset, "train", cfg.data_dir, **kwargs),
            load_dataset(cfg.dataset, "val", cfg.data_dir, **kwargs), info)


def _loaders(cfg: TrainConfig, rt: Runtime, datasets=None):
    """(train loader, val loader, the model's arguments) over ``datasets`` (default: :func:`_datasets`)."""
    train_set, val_set, info = datasets if datasets is not None else _datasets(cfg)
    model_kwargs = _model_kwargs(cfg, info, train_set[0][0].shape)  # checks the bandwidth first
    augment = info.augment if cfg.augment == "auto" else (None if cfg.augment in (None, "none") else cfg.augment)
    # The L-model (paper sec. 3.1): filtering is a transform of the training data, the model stays plain.
    lpf = (functools.partial(low_pass, bandwidth=cfg.low_pass_bandwidth, clip=True)
           if cfg.low_pass_bandwidth is not None and cfg.low_pass_in == "data" else None)
    train_loader = BatchLoader(train_set, cfg.batch_size // rt.world, train=True, augment=augment, seed=cfg.seed,
                               distributed=rt.world > 1, num_workers=cfg.num_workers, device=rt.device,
                               transform=lpf)
    # Shuffled once with a fixed order (set_epoch(0) before each pass): a capped validation
    # (max_val_batches) then sees a random subset rather than the first classes.
    val_loader = BatchLoader(val_set, cfg.batch_size, train=True, augment=None, seed=cfg.seed,
                             num_workers=cfg.num_workers, device=rt.device, transform=lpf)
    return train_loader, val_loader, model_kwargs


def _model_kwargs(cfg: TrainConfig, info: DatasetInfo, image_shape: tuple[int, ...]) -> dict[str, Any]:
    """What :func:`fr_fast.models.build_model` needs (stored in checkpoints as ``model_kwargs``)."""
    side = min(image_shape[-2:])
    if cfg.low_pass_bandwidth is not None and cfg.low_pass_bandwidth > side:
        raise ValueError(f"low_pass_bandwidth must be in [1, {side}] for {side}px images, got {cfg.low_pass_bandwidth}")
    return dict(name=cfg.model, num_classes=info.num_classes, in_channels=image_shape[0],
                mean=list(info.mean) if cfg.normalize else None, std=list(info.std) if cfg.normalize else None,
                low_pass_bandwidth=cfg.low_pass_bandwidth if cfg.low_pass_in == "model" else None,
                **cfg.model_kwargs)


def validate(model: nn.Module, loader, cfg: TrainConfig, device: torch.device,
             amp_dtype: torch.dtype | None, memory_format: torch.memory_format = torch.contiguous_format,
             ) -> dict[str, float]:
    """Clean and PGD-``eval_pgd_steps`` accuracy (%) of ``model`` (eval mode) on ``loader``.

    The clean forward uses the training autocast; the PGD attack itself runs in float32 (attacks.pgd).
    """
    model.eval()
    correct_clean = correct_adv = total = 0
    for i, (x, y) in enumerate(loader):
        if cfg.max_val_batches is not None and i >= cfg.max_val_batches:
            break
        x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        with torch.no_grad(), autocast(device, amp_dtype):
            correct_clean += (model(x).argmax(1) == y).sum().item()
        x_adv = pgd(model, x, y, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.eval_pgd_steps)
        with torch.no_grad(), autocast(device, amp_dtype):
            correct_adv += (model(x_adv).argmax(1) == y).sum().item()
        total += y.numel()
    return {"val_clean": 100.0 * correct_clean / max(total, 1), "val_pgd": 100.0 * correct_adv / max(total, 1),
            "val_images": total}


def train_epoch(cfg: TrainConfig, step: Callable[[Tensor, Tensor], StepResult | None], loader, rt: Runtime,
                epoch: int, stop: StopOnSignal | None = None) -> dict[str, float]:
    """One pass of ``step`` over ``loader`` (at most ``max_train_batches``): loss, accuracy, throughput.

    A sync-free step (``cuda_graph``) is read every ``log_every`` steps and at the end. Raises NonFiniteLoss
    naming the epoch and step (sync-free: at the first read after it; that update was skipped); Interrupted
    after the step during which ``stop`` saw a signal.
    """
    n_batches = len(loader) if cfg.max_train_batches is None else min(len(loader), cfg.max_train_batches)
    show = rt.is_main and cfg.progress
    bar = Progress(n_batches, f"epoch {epoch + 1}/{cfg.epochs}", "batch", enabled=show, final_line=False)
    sync_free_step = cfg.cuda_graph
    if sync_free_step:
        step.reset()
    sums = torch.zeros(2, device=rt.device)
    seen, t0 = 0, time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if i >= n_batches:
            break
        seen += y.numel()
        if sync_free_step:
            step(x, y)
            if (i + 1) % cfg.log_every == 0 or i + 1 == n_batches:
                sums = _read(step, epoch)
                loss_shown = sums[0].item() / seen  # the epoch's mean so far
        else:
            try:
                result = step(x, y)
            except NonFiniteLoss as exc:
                raise NonFiniteLoss(f"{exc} at epoch {epoch + 1} (index {epoch}), step {i}") from None
            sums += result.stats * torch.tensor([y.numel(), 1.0], device=rt.device)
            loss_shown = result.loss
        if show and (not sync_free_step or (i + 1) % cfg.log_every == 0):
            rate = seen * rt.world / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{loss_shown:.4f}", acc_pct=f"{100 * sums[1].item() / seen:.1f}",
                            img_s=f"{rate:.0f}")
        bar.update(1)
        if stop is not None:
            stop.check(f"after step {i + 1} of epoch {epoch + 1}")
    bar.close()
    if rt.world > 1:
        totals = torch.cat([sums, torch.tensor([float(seen)], device=rt.device)])
        dist.all_reduce(totals)
        sums, seen = totals[:2], int(totals[2].item())
    seconds = time.perf_counter() - t0
    return {"train_loss": sums[0].item() / max(seen, 1), "train_acc": 100.0 * sums[1].item() / max(seen, 1),
            "images_per_s": seen / max(seconds, 1e-9), "epoch_time_s": seconds}


def _read(step: sync_free.SyncFreeStep | sync_free.CapturedStep, epoch: int) -> Tensor:
    """(loss sum, correct) of a sync-free step so far (one host sync); NonFiniteLoss if it skipped an update."""
    totals = step.read()
    if totals.skipped:
        raise NonFiniteLoss(f"loss became {totals.first_bad_loss} at epoch {epoch + 1} (index {epoch}), step "
                            f"{totals.first_bad_step} (its update was skipped)")
    return torch.tensor([totals.loss_sum, totals.correct], dtype=torch.float64)


def _diverged(what: str, last_good: Path | None, epoch: int) -> TrainingDiverged:
    where = f"the last good checkpoint is {last_good} (epoch {epoch})" if last_good else "no checkpoint was written"
    return TrainingDiverged(f"{what}; {where} (lower lr, or amp=off)")


def _resume(cfg: TrainConfig, state: TrainState, saved: dict[str, Any], changes: dict[str, tuple[Any, Any]],
            resume_from: Path, is_main: bool) -> list[dict[str, Any]]:
    """Restore ``state`` from the checkpoint ``saved``; returns the run's record of resume overrides."""
    state.load_state_dict(saved)
    overrides = list(saved.get("resume_overrides", []))
    if changes:  # checked by check_resume; --resume-override allowed them
        apply_schedule_overrides(state.optimizer, state.scheduler, cfg)
        overrides.append(override_record(changes, state.epoch))
    if is_main:
        print(f"resumed from {resume_from} after epoch {state.epoch}", flush=True)
        if changes:
            print(f"applied from epoch {state.epoch + 1}: " + ", ".join(
                f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items()), flush=True)
        out_dir = Path(cfg.out_dir)
        if resume_from == out_dir / "last.pt" and (note := reconcile_best(out_dir, saved)):
            print(note, file=sys.stderr, flush=True)
    return overrides


def _lineage(branch_from: Path | None, branch: dict[str, tuple[Any, Any]] | None, epoch: int,
             saved: dict[str, Any] | None, is_main: bool) -> dict[str, Any]:
    """run.json / checkpoint entries naming where a branched run comes from (kept when it is resumed)."""
    if branch is None:
        return {k: saved[k] for k in ("branched_from", "branch_changes") if saved is not None and k in saved}
    origin = branch_label(branch_from, epoch)
    if is_main:
        print(f"branched from {origin}: " + (", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in branch.items())
                                             or "no setting changed"), flush=True)
    return {"branched_from": origin, "branch_changes": {k: list(v) for k, v in branch.items()}}


def _save(out_dir: Path, checkpoint: dict[str, Any], improved: bool, last_good: Path | None, epoch: int) -> Path:
    """Write last.pt (and best.pt when ``improved``) unless something in them is non-finite; returns last.pt."""
    bad = nonfinite_entries(checkpoint)  # one fused reduction per epoch, before anything is written
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise _diverged(f"non-finite values in {bad[0]}{more} after epoch {epoch + 1} (the loss was "
                        "finite); not saved", last_good, epoch)
    save_checkpoint(checkpoint, out_dir / "last.pt")  # last.pt first: reconcile_best relies on it
    if improved:
        save_checkpoint(checkpoint, out_dir / "best.pt")
    return out_dir / "last.pt"


def _validation(cfg: TrainConfig, state: TrainState, loader: BatchLoader, rt: Runtime) -> dict[str, float]:
    """Validation metrics of the student, plus those of the weight average (``avg_*``, which then select
    best.pt) when it is the evaluated model (``wa_role`` evaluated or both)."""
    loader.set_epoch(0)
    metrics = validate(state.model, loader, cfg, rt.device, rt.amp_dtype, rt.memory_format)
    if cfg.wa_evaluated and state.average is not None:
        loader.set_epoch(0)
        average = validate(state.average.module, loader, cfg, rt.device, rt.amp_dtype, rt.memory_format)
        metrics.update({f"avg_{k}": v for k, v in average.items()})
    return metrics


def fold_average(cfg: TrainConfig, state: TrainState, loader: BatchLoader, rt: Runtime) -> None:
    """Eq. 3: start the weight average from the current weights, or fold them in; then re-estimate its BN
    statistics on natural training batches (``bn_recalibrate``, as the authors' code does after every update,
    the first included)."""
    if state.average is None:
        state.start_average()
    else:
        state.average.update(state.model)
    if cfg.bn_recalibrate:
        state.average.recalibrate_bn(loader, rt.device, cfg.bn_recalibrate_batches or cfg.max_train_batches,
                                     channels_last=rt.memory_format == torch.channels_last)


def train(cfg: TrainConfig, *, overwrite: bool = False, resume_override: bool = False) -> dict[str, Any]:
    """Train one model as ``cfg`` says; returns a summary dict (best/final metrics, history, paths).

    ``overwrite``: a fresh run may replace the run files already in ``out_dir`` (else RunFolderError).
    ``resume_override``: on resume, ``lr``/``epochs``/``lr_milestones`` may differ from the checkpoint's and
    are applied; without it, as for every other field that changes the training, a difference is a ValueError.

    ``cfg.branch_from``: a new run in ``out_dir`` continuing that checkpoint with this config's FR / WA
    settings (:mod:`fr_fast.training.branch`); ignored when ``resume`` finds a checkpoint to continue.

    Raises TrainingDiverged when the loss or the weights/buffers become NaN/inf (nothing non-finite is
    saved), Interrupted after the current step on SIGINT/SIGTERM, RunFolderBusy when another run holds
    ``out_dir``.
    """
    if cfg.out_dir is None:  # a TrainConfig built in code; load_config names the folder after the preset
        cfg = dataclasses.replace(cfg, out_dir=run_dir("default", cfg.resume))
    out_dir = Path(cfg.out_dir)
    resume_from = resume_source(cfg.resume, out_dir)
    check_dir_creatable(out_dir, "out_dir")  # cheap checks first: the folder, then the data
    datasets = _datasets(cfg)  # missing or damaged data fails here, before the run folder is made
    # A branch is checked before its folder is created: a refused branch leaves nothing behind.
    branch_from = branch_source(cfg.branch_from, out_dir) if cfg.branch_from and resume_from is None else None
    # As a resume: a checkpoint holding NaN/inf, or a disk without room for the new run's checkpoints, is refused.
    branched = load_resume(branch_from, out_dir) if branch_from is not None else None
    branch = check_branch(branched, cfg) if branched is not None else None
    with runtime(cfg) as rt, StopOnSignal() as stop, hold_run_folder(
            out_dir, resuming=resume_from is not None or cfg.resume == "auto", overwrite=overwrite,
            enabled=rt.is_main):
        environment = runinfo.describe(rt.device, amp_dtype=rt.amp_dtype, memory_format=rt.memory_format,
                                       compile=cfg.compile)
        sync_free.check_supported(cfg, rt.device, rt.amp_dtype, rt.world)
        if rt.is_main:
            print(runinfo.banner("train", environment), flush=True)
            if cfg.cuda_graph:
                print(sync_free.describe(rt.device), flush=True)
        saved = load_resume(resume_from, out_dir, map_location=rt.device) if resume_from is not None else None
        if branched is not None:
            saved, branched = branched, None
        changes = check_resume(saved["config"], cfg, resume_override) if resume_from is not None else {}
        train_loader, val_loader, model_kwargs = _loaders(cfg, rt, datasets)
        model = build_model(**model_kwargs).to(rt.device, memory_format=rt.memory_format)
        state = TrainState(cfg, model, rt.amp_dtype)
        models = wrap_models(cfg, model, rt.world)
        overrides = _resume(cfg, state, saved, changes, resume_from, rt.is_main) if resume_from is not None else []
        if branch is not None:
            start_branch(cfg, state, saved, lambda: fold_average(cfg, state, train_loader, rt), train_loader.set_epoch)
        lineage = _lineage(branch_from, branch, state.epoch, saved, rt.is_main)
        del saved
        last_good = resume_from  # the newest finite checkpoint on disk, for the divergence message
        select_key = cfg.resolved_select_by()
        run_info = {"config": config_to_dict(cfg), "model_kwargs": model_kwargs, "selected_by": select_key,
                    "resume_overrides": overrides, "runtime": environment}
        run_info.update(lineage)
        # metrics.jsonl/csv mirror the checkpoint's history (fresh run: empty; resume: up to its epoch)
        log = MetricsLog(out_dir, state.history, run_info, tensorboard=cfg.tensorboard) if rt.is_main else None
        if branch is not None and rt.is_main:  # the branch point is the new run's first checkpoint (and best so far)
            last_good = _save(out_dir, {**run_info, **state.state_dict()}, state.best_epoch == state.epoch, None,
                              state.epoch - 1)
        run_start = time.perf_counter()
        checkpoint: dict[str, Any] | None = None  # the newest one written (rank 0)
        steps: dict[str, Any] = {}  # cuda_graph: the sync-free step (and its CUDA graph) of the current switches
        first_epoch = state.epoch  # for the run's ETA
        for epoch in range(state.epoch, cfg.epochs):
            seed_everything(mix_seed(cfg.seed, epoch, rt.rank))
            train_loader.set_epoch(epoch)
            if cfg.uses_wa and state.average is None and epoch >= cfg.resolved_wa_start():  # wa_start_epoch=0
                fold_average(cfg, state, train_loader, rt)
            lr_used = state.optimizer.param_groups[0]["lr"]
            try:
                metrics: dict[str, Any] = {"epoch": epoch + 1, "lr": lr_used, **train_epoch(
                    cfg, make_step(cfg, state, epoch, models, steps), train_loader, rt, epoch, stop)}
            except NonFiniteLoss as exc:
                raise _diverged(f"{exc}: stopping", last_good, epoch) from None
            state.scheduler.step()
            # The average exists from epoch index wa_start on: it starts from the weights of the epoch before.
            if state.average is not None or (cfg.uses_wa and epoch + 1 >= cfg.resolved_wa_start()):
                fold_average(cfg, state, train_loader, rt)
            fr_on, awp_on = switches(cfg, epoch)
            metrics.update(fr=fr_on, awp=awp_on,
                           wa_models=state.average.n_averaged if state.average is not None else 0)
            if rt.is_main and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
                metrics.update(_validation(cfg, state, val_loader, rt))
            improved = state.record(metrics, select_key)
            if rt.is_main:
                checkpoint = {**run_info, **state.state_dict()}
                last_good = _save(out_dir, checkpoint, improved, last_good, epoch)
                log.append(metrics)
                eta = run_eta(run_start, time.perf_counter(), first_epoch, epoch + 1, cfg.epochs)
                print(epoch_line(cfg, metrics, eta), flush=True)
            if rt.world > 1:
                dist.barrier()
            if epoch + 1 < cfg.epochs:
                stop.check(f"after epoch {epoch + 1} (saved)")
        if checkpoint is not None and (note := reconcile_best(out_dir, checkpoint)):  # e.g. best.pt deleted meanwhile
            print(note, file=sys.stderr, flush=True)

        if log is not None:
            log.close()
        summary = run_summary(state, select_key, out_dir, time.perf_counter() - run_start, rt)
        summary["runtime"] = environment
        if rt.is_main:
            print(summary_table(cfg, summary), flush=True)
        summary["model"] = model  # the trained student (unwrapped), for programmatic use
        return summary
