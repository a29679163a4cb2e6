"""The training loop: one function, :func:`train`, readable top to bottom.

``python -m fr_fast train configs/cifar10_resnet18_at_fr.yaml --epochs=10`` or ``fr-fast train ...``;
multi-GPU / multi-node with ``torchrun --nproc_per_node=N -m fr_fast train ...`` (DDP, rank-0 logging
and checkpointing; ``batch_size`` is the global batch, split evenly over the ranks).

Reproducibility: all randomness of epoch e (loader order, augmentation, attack starts, validation attack)
is seeded from (seed, epoch, rank) at the start of the epoch, and the loader order depends only on
(seed, epoch); a checkpoint is written after every epoch, so a run killed at any moment and resumed with
``--resume`` ends with the same weights as an uninterrupted run (bit-exact with ``deterministic=true``
on CPU).

Paper choices (sec. 5 and appendix A.3/A.6): SGD momentum 0.9, wd 5e-4 (2e-4 TRADES/MART), batch 128,
lr 0.1 decayed x0.1 at epochs 75 and 90 of 100, PGD-10 with alpha 2/255 and eps 8/255, 9:1 train/val
split, best checkpoint by validation PGD-20 (clean accuracy for natural training: ``select_by``), FR and WA switched on at the first lr decay
(``fr_start_epoch``/``wa_start_epoch`` None). Choices the paper does not state: the averaged teacher is
evaluated in eval mode; its BN statistics are re-estimated after each averaging step
(``bn_recalibrate``, as the authors' code); validation uses the same autocast as training.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from fr_fast.averaging import AWP, WeightAverage
from fr_fast.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from fr_fast.config import TrainConfig, config_to_dict, load_config
from fr_fast.losses import base_loss, craft_adversarial, make_fr, training_loss


def _mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (distinct tuples -> distinct streams)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3) % (1 << 64)
        h ^= h >> 31
    return h & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available")
    return device


def _cpu_has_native_bf16() -> bool:
    try:  # oneDNN's own test for AVX512-BF16 / AMX
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """autocast dtype for ``amp`` in {auto, bf16, fp16, off}; auto: bf16 (else fp16) on CUDA; on CPU bf16
    where the CPU computes it natively (AVX512-BF16/AMX: 1.3-1.4x faster steps in benchmarks/results/train_cpu.md
    and on the MNIST preset), else off (emulated bf16 convolutions are slower than float32).
    """
    if mode == "off" or (mode == "auto" and device.type != "cuda" and not _cpu_has_native_bf16()):
        return None
    if mode == "auto" and device.type != "cuda":
        return torch.bfloat16
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _init_distributed(device_name: str) -> tuple[int, int, int, bool]:
    """(rank, world_size, local_rank, we_initialised) from torchrun's environment variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0, False
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local_rank, False
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return rank, world, local_rank, True


def _datasets(cfg: TrainConfig):
    """(train, val) datasets: the 9:1 split of the training set, or random images when ``fake_data`` > 0."""
    from fr_fast.data import TensorImageDataset, dataset_info, load_dataset

    info = dataset_info(cfg.dataset)
    if cfg.fake_data > 0:
        g = torch.Generator().manual_seed(cfg.seed)
        size = cfg.pad_to or info.image_size
        n_val = max(1, int(cfg.fake_data * cfg.val_fraction))
        make = lambda n: TensorImageDataset(  # noqa: E731
            torch.randint(0, 256, (n, info.channels, size, size), dtype=torch.uint8, generator=g),
            torch.randint(0, info.num_classes, (n,), generator=g), info=info,
            low_pass_bandwidth=cfg.low_pass_bandwidth)
        return make(cfg.fake_data), make(n_val), info
    kwargs = dict(pad_to=cfg.pad_to, val_fraction=cfg.val_fraction, seed=cfg.seed,
                  low_pass_bandwidth=cfg.low_pass_bandwidth)
    return (load_dataset(cfg.dataset, "train", cfg.data_dir, **kwargs),
            load_dataset(cfg.dataset, "val", cfg.data_dir, **kwargs), info)


@torch.no_grad()
def _batch_stats(loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([loss.detach().float(), (logits.argmax(1) == y).sum().float()])


def validate(model: nn.Module, loader, cfg: TrainConfig, device: torch.device,
             amp_dtype: torch.dtype | None, memory_format: torch.memory_format = torch.contiguous_format,
             ) -> dict[str, float]:
    """Clean and PGD-``eval_pgd_steps`` accuracy (%) of ``model`` (eval mode) on ``loader``.

    The clean forward uses the training autocast; the PGD attack itself runs in float32 (attacks.pgd).
    """
    from fr_fast.attacks import pgd

    model.eval()
    correct_clean = correct_adv = total = 0
    for i, (x, y) in enumerate(loader):
        if cfg.max_val_batches is not None and i >= cfg.max_val_batches:
            break
        x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        with torch.no_grad(), torch.autocast(device.type, amp_dtype or torch.float32, enabled=amp_dtype is not None):
            correct_clean += (model(x).argmax(1) == y).sum().item()
        x_adv = pgd(model, x, y, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.eval_pgd_steps)
        with torch.no_grad(), torch.autocast(device.type, amp_dtype or torch.float32, enabled=amp_dtype is not None):
            correct_adv += (model(x_adv).argmax(1) == y).sum().item()
        total += y.numel()
    return {"val_clean": 100.0 * correct_clean / max(total, 1), "val_pgd": 100.0 * correct_adv / max(total, 1),
            "val_images": total}


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train one model as ``cfg`` says; returns a summary dict (best/final metrics, history, paths).

    Raises RuntimeError when the loss becomes NaN/inf (the last good checkpoint is kept).
    """
    from fr_fast.data import make_loader
    from fr_fast.models import build_model

    # ---- processes, device, determinism -------------------------------------------------------------
    rank, world, local_rank, own_group = _init_distributed(cfg.device)
    device = resolve_device(cfg.device, local_rank)
    is_main = rank == 0
    previous_det, previous_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    if cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    seed_everything(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts them)
    amp_dtype = resolve_amp(cfg.amp, device)
    autocast = lambda: torch.autocast(device.type, amp_dtype or torch.float32,  # noqa: E731
                                      enabled=amp_dtype is not None)
    channels_last = device.type == "cuda" if cfg.channels_last == "auto" else bool(cfg.channels_last)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    out_dir = Path(cfg.out_dir)
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {world} processes")

    try:
        # ---- data -----------------------------------------------------------------------------------
        train_set, val_set, info = _datasets(cfg)
        augment = info.augment if cfg.augment == "auto" else (None if cfg.augment in (None, "none") else cfg.augment)
        train_loader = make_loader(train_set, cfg.batch_size // world, train=True, augment=augment, seed=cfg.seed,
                                   distributed=world > 1, num_workers=cfg.num_workers, device=device)
        # Shuffled once with a fixed order (set_epoch(0) before each pass): a capped validation
        # (max_val_batches) then sees a random subset rather than the first classes.
        val_loader = make_loader(val_set, cfg.batch_size, train=True, augment=None, seed=cfg.seed,
                                 num_workers=cfg.num_workers, device=device)
        in_channels = train_set[0][0].shape[0]

        # ---- model, optimiser, schedule, objective pieces --------------------------------------------
        model_kwargs = dict(name=cfg.model, num_classes=info.num_classes, in_channels=in_channels,
                            mean=list(info.mean) if cfg.normalize else None,
                            std=list(info.std) if cfg.normalize else None, **cfg.model_kwargs)
        model = build_model(**model_kwargs).to(device, memory_format=memory_format)
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=cfg.lr_milestones, gamma=cfg.lr_gamma)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        objective = cfg.awp_base if cfg.method == "awp" else cfg.method
        fr_term = make_fr(cfg.lam, cfg.distance, cfg.fft) if cfg.fr != "none" else None
        fr_start, wa_start = cfg.resolved_fr_start(), cfg.resolved_wa_start()
        # AWP's proxy takes one ascent step: lr 0.01 in the AT-AWP code, the training lr in TRADES-AWP.
        awp = AWP(model, cfg.awp_gamma, proxy_lr=0.01 if cfg.awp_base == "at" else cfg.lr) \
            if cfg.method == "awp" else None
        wa: WeightAverage | None = None
        # The attack runs on the bare module (no DDP hooks: it never back-propagates into parameters).
        attack_model: nn.Module = torch.compile(model) if cfg.compile else model
        train_model: nn.Module = model
        if world > 1:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.compile:
            train_model = torch.compile(train_model)

        # ---- resume ------------------------------------------------------------------------------------
        select_key = cfg.resolved_select_by()
        start_epoch, best_score, best_epoch, history = 0, -1.0, -1, []
        if cfg.resume:
            path = out_dir / "last.pt" if cfg.resume in ("last", "auto", "true") else Path(cfg.resume)
            state = load_checkpoint(path, map_location=device)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            if state.get("teacher") is not None:
                wa = WeightAverage(model, average_buffers=not cfg.bn_recalibrate)
                wa.load_state_dict(state["teacher"])
            set_rng_state(state["rng"])
            start_epoch, history = state["epoch"], list(state["history"])
            best_score, best_epoch = state["best_val_score"], state["best_epoch"]
            if is_main:
                print(f"resumed from {path} after epoch {start_epoch}", flush=True)

        def checkpoint_state(epoch_done: int) -> dict[str, Any]:
            return {"config": config_to_dict(cfg), "model_kwargs": model_kwargs, "model": model.state_dict(),
                    "teacher": wa.state_dict() if wa is not None else None,
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "rng": rng_state(), "epoch": epoch_done,
                    "best_val_score": best_score, "selected_by": select_key, "best_epoch": best_epoch,
                    "history": history}

        # ---- epochs --------------------------------------------------------------------------------------
        if is_main:  # metrics.jsonl mirrors the checkpoint's history (fresh run: empty; resume: up to its epoch)
            with open(out_dir / "metrics.jsonl", "w") as fh:
                fh.writelines(json.dumps(h) + "\n" for h in history)
        run_start = time.perf_counter()
        for epoch in range(start_epoch, cfg.epochs):
            seed_everything(_mix_seed(cfg.seed, epoch, rank))
            train_loader.set_epoch(epoch)
            if cfg.uses_wa and wa is None and epoch >= wa_start:
                wa = WeightAverage(model, average_buffers=not cfg.bn_recalibrate)
                wa.update(model)
            fr_on = fr_term is not None and epoch >= fr_start
            teacher = wa if (fr_on and cfg.fr == "frwa") else None
            awp_on = awp is not None and epoch >= cfg.awp_warmup
            needs_attack = objective != "natural" or fr_on
            n_batches = len(train_loader) if cfg.max_train_batches is None else min(len(train_loader),
                                                                                    cfg.max_train_batches)
            bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (is_main and cfg.progress),
                       leave=False, dynamic_ncols=True)
            train_model.train()
            sums = torch.zeros(2, device=device)
            seen, t0 = 0, time.perf_counter()
            for step, (x, y) in enumerate(train_loader):
                if step >= n_batches:
                    break
                x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                y = y.to(device, non_blocking=True)
                with autocast():
                    x_adv = craft_adversarial(objective, attack_model, x, y, eps=cfg.eps, alpha=cfg.alpha,
                                              steps=cfg.attack_steps) if needs_attack else None
                    if awp_on:
                        diff = awp.perturbation(lambda m: base_loss(objective, m, x, x_adv, y,
                                                                    trades_beta=cfg.trades_beta,
                                                                    mart_beta=cfg.mart_beta).loss)
                        awp.perturb(diff)
                    loss, adv_logits = training_loss(objective, train_model, x, x_adv, y,
                                                     fr=fr_term if fr_on else None, teacher=teacher,
                                                     trades_beta=cfg.trades_beta, mart_beta=cfg.mart_beta)
                stats = _batch_stats(loss, adv_logits, y)
                loss_value = stats[0].item()  # the one host sync per step (progress bar + NaN guard)
                if not math.isfinite(loss_value):
                    if awp_on:
                        awp.restore(diff)
                    raise RuntimeError(
                        f"loss became {loss_value} at epoch {epoch + 1} (index {epoch}), step {step}: stopping; "
                        f"the last good checkpoint is {out_dir / 'last.pt'} (lower lr, or amp=off)")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if awp_on:
                    awp.restore(diff)
                sums += stats * torch.tensor([y.numel(), 1.0], device=device)
                seen += y.numel()
                bar.update(1)
                if is_main and cfg.progress:
                    rate = seen * world / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(loss=f"{loss_value:.4f}", acc=f"{100 * sums[1].item() / seen:.1f}",
                                    img_s=f"{rate:.0f}", refresh=False)
            bar.close()
            if world > 1:
                totals = torch.cat([sums, torch.tensor([float(seen)], device=device)])
                dist.all_reduce(totals)
                sums, seen = totals[:2], int(totals[2].item())
            train_time = time.perf_counter() - t0
            lr_used = optimizer.param_groups[0]["lr"]
            scheduler.step()

            # Eq. 3: fold this epoch's weights into the average, then fix its BN statistics.
            if wa is not None:
                wa.update(model)
                if cfg.bn_recalibrate:
                    wa.recalibrate_bn(train_loader, device, cfg.bn_recalibrate_batches or cfg.max_train_batches,
                                      channels_last=channels_last)

            metrics: dict[str, Any] = {
                "epoch": epoch + 1, "lr": lr_used, "train_loss": sums[0].item() / max(seen, 1),
                "train_acc": 100.0 * sums[1].item() / max(seen, 1), "images_per_s": seen / max(train_time, 1e-9),
                "epoch_time_s": train_time, "fr": fr_on, "awp": awp_on,
                "wa_models": wa.n_averaged if wa is not None else 0}
            validate_now = (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs
            if is_main and validate_now:
                val_loader.set_epoch(0)
                metrics.update(validate(model, val_loader, cfg, device, amp_dtype, memory_format))
            history.append(metrics)
            if is_main:
                improved = select_key in metrics and metrics[select_key] > best_score
                if improved:
                    best_score, best_epoch = metrics[select_key], epoch + 1
                state = checkpoint_state(epoch + 1)
                save_checkpoint(state, out_dir / "last.pt")
                if improved:
                    save_checkpoint(state, out_dir / "best.pt")
                with open(out_dir / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(metrics) + "\n")
                val = (f" | val clean {metrics['val_clean']:.2f}% PGD-{cfg.eval_pgd_steps} {metrics['val_pgd']:.2f}%"
                       if "val_pgd" in metrics else "")
                print(f"epoch {epoch + 1:3d}/{cfg.epochs} | lr {lr_used:.4g} | loss {metrics['train_loss']:.4f} "
                      f"| train acc {metrics['train_acc']:.2f}% | {metrics['images_per_s']:.0f} img/s{val}",
                      flush=True)
            if world > 1:
                dist.barrier()

        best_metrics = history[best_epoch - 1] if best_epoch > 0 else {}
        summary = {"best_val_pgd": best_metrics.get("val_pgd", -1.0), "best_val_clean": best_metrics.get("val_clean", -1.0),
                   "selected_by": select_key, "best_epoch": best_epoch, "final": history[-1] if history else {},
                   "history": history, "out_dir": str(out_dir), "last_checkpoint": str(out_dir / "last.pt"),
                   "best_checkpoint": str(out_dir / "best.pt") if best_epoch > 0 else None,
                   "total_time_s": time.perf_counter() - run_start, "rank": rank, "world_size": world}
        if is_main:
            print(summary_table(cfg, summary), flush=True)
        summary["model"] = model  # the trained student (unwrapped), for programmatic use
        return summary
    finally:
        torch.use_deterministic_algorithms(previous_det)
        torch.set_num_threads(previous_threads)
        if own_group and dist.is_initialized():
            dist.destroy_process_group()


def summary_table(cfg: TrainConfig, summary: dict[str, Any]) -> str:
    """A small text table of the run: best and final validation accuracy, throughput, files."""
    final = summary["final"]
    method = cfg.method + (f"({cfg.awp_base})" if cfg.method == "awp" else "") + \
        ("" if cfg.fr == "none" else f" + {cfg.fr.upper().replace('FRWA', 'FR/WA')}")
    rows = [("run", f"{method} | {cfg.model} | {cfg.dataset}"),
            ("epochs", str(final.get("epoch", 0))),
            (f"best epoch (by {summary['selected_by']})", f"{summary['best_epoch']}: val clean "
             f"{summary['best_val_clean']:.2f}%, PGD-{cfg.eval_pgd_steps} {summary['best_val_pgd']:.2f}%"),
            ("final val clean", f"{final['val_clean']:.2f}%" if "val_clean" in final else "-"),
            ("final val PGD-%d" % cfg.eval_pgd_steps, f"{final['val_pgd']:.2f}%" if "val_pgd" in final else "-"),
            ("throughput", f"{final.get('images_per_s', 0):.0f} img/s (last epoch)"),
            ("wall time", f"{summary['total_time_s']:.1f} s"),
            ("checkpoints", f"{summary['last_checkpoint']}, best: {summary['best_checkpoint']}")]
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 3 + max(len(v) for _, v in rows))
    return "\n".join([line] + [f"{k.ljust(width)} | {v}" for k, v in rows] + [line])


def main(argv: list[str] | None = None) -> int:
    """``fr-fast train [PRESET] [--key=value ...]``: train with a YAML preset and overrides."""
    parser = argparse.ArgumentParser(
        prog="fr-fast train", description="Adversarial training with Frequency Regularization. "
        "Any TrainConfig field can be overridden as --key=value (e.g. --fr=frwa --epochs=10 --lr_milestones=[5,8]).")
    parser.add_argument("preset", nargs="?", default=None, help="YAML preset (path or name in configs/)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args, overrides = parser.parse_known_args(argv)
    try:
        cfg = load_config(args.preset, overrides)
    except (ValueError, FileNotFoundError) as exc:
        print(f"fr-fast train: error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(config_to_dict(cfg), indent=2))
        return 0
    train(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
