"""What a training run reports: the line printed after each epoch, the summary dict and the final table."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fr_fast.config.train_config import TrainConfig
from fr_fast.training.runtime import Runtime
from fr_fast.training.state import TrainState
from fr_fast.utils.progress import clock


def epoch_line(cfg: TrainConfig, metrics: dict[str, Any], eta_s: float | None = None) -> str:
    """The one line printed after each epoch; ``eta_s``: the run's estimated time left (shown when given)."""
    val = (f" | val clean {metrics['val_clean']:.2f}% PGD-{cfg.eval_pgd_steps} {metrics['val_pgd']:.2f}%"
           if "val_pgd" in metrics else "")
    if "avg_val_pgd" in metrics:
        val += f" | average: clean {metrics['avg_val_clean']:.2f}% PGD {metrics['avg_val_pgd']:.2f}%"
    return (f"epoch {metrics['epoch']:3d}/{cfg.epochs} | lr {metrics['lr']:.4g} | loss {metrics['train_loss']:.4f} "
            f"| train acc {metrics['train_acc']:.2f}% | {metrics['images_per_s']:.0f} img/s{val}"
            + (f" | run ETA {clock(eta_s)}" if eta_s is not None and metrics["epoch"] < cfg.epochs else ""))


def run_eta(started: float, now: float, first_epoch: int, epochs_done: int, epochs: int) -> float:
    """Seconds left for the whole run: the mean time of the epochs this process trained (validation and
    checkpoints included) times the epochs still to go."""
    trained = max(epochs_done - first_epoch, 1)
    return (now - started) / trained * max(epochs - epochs_done, 0)


def run_summary(state: TrainState, select_key: str, out_dir: Path, seconds: float, rt: Runtime) -> dict[str, Any]:
    """The summary :func:`fr_fast.training.train.train` returns: best and final metrics, history, paths, timing."""
    history = state.history
    best = history[state.best_epoch - 1] if state.best_epoch > 0 else {}
    prefix = "avg_" if select_key.startswith("avg_") else ""  # the average is the evaluated model
    return {"best_val_pgd": best.get(f"{prefix}val_pgd", -1.0), "best_val_clean": best.get(f"{prefix}val_clean", -1.0),
            "selected_by": select_key, "best_epoch": state.best_epoch, "final": history[-1] if history else {},
            "history": history, "out_dir": str(out_dir), "last_checkpoint": str(out_dir / "last.pt"),
            "best_checkpoint": str(out_dir / "best.pt") if state.best_epoch > 0 else None,
            "total_time_s": seconds, "rank": rt.rank, "world_size": rt.world}


def summary_table(cfg: TrainConfig, summary: dict[str, Any]) -> str:
    """A small text table of the run: best and final validation accuracy, throughput, files."""
    final = summary["final"]
    method = cfg.method + (f"({cfg.awp_base})" if cfg.method == "awp" else "") + \
        ("" if cfg.fr == "none" else f" + {cfg.fr.upper().replace('FRWA', 'FR/WA')}") + \
        (f" (wa_role {cfg.wa_role})" if cfg.uses_wa else "")
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
