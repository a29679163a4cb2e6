"""Atomic checkpoints and loading a trained model back.

A checkpoint is a dict saved with ``torch.save`` holding only tensors and plain Python values (so it loads
with ``weights_only=True``): ``format``, ``version``, ``config`` (``asdict(TrainConfig)``), ``model_kwargs``
(what :func:`fr_fast.models.build_model` needs, the L-model's ``low_pass_bandwidth`` included), ``model``
(the student's state dict), ``average`` (the weight average as an ``AveragedModel`` state dict, or None;
``teacher`` in older checkpoints), ``optimizer``, ``scheduler``, ``scaler``, ``rng``, ``epoch`` (epochs
completed), ``best_val_score`` (of the ``selected_by`` metric), ``best_epoch``, ``selected_by`` and
``history`` (per-epoch metrics); :class:`fr_fast.training.state.TrainState` writes and reads them.

Durability: a save writes a temporary file ``.<name>.<random>.tmp`` beside the target, fsyncs it, renames it
over the target and fsyncs the folder, so after a crash at any instant the target holds either the old or
the new checkpoint; :func:`remove_stale_temps` clears temporaries a killed save left behind. A full disk
raises :class:`DiskFullError` naming the path and the free space. :func:`nonfinite_entries` checks a state
for NaN/inf with one fused reduction before it is written.
"""
from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from fr_fast.models import build_model
from fr_fast.utils.files import TEMP_SUFFIX, atomic_write
from fr_fast.utils.files import DiskFullError as DiskFullError  # re-exported: raised by save_checkpoint
from fr_fast.utils.paths import local_path

FORMAT = "fr_fast.runs.checkpoint"
VERSION = 1
# Test hook (tests/test_kill.py): with FR_FAST_TEST_PAUSE_SAVE=best.pt@2 the save of best.pt holding
# epoch 2 announces itself on stderr and sleeps inside the save (temporary file written, not yet renamed),
# so a test can SIGKILL the process exactly there. Unset in normal use: one environment lookup per save.
PAUSE_SAVE_ENV = "FR_FAST_TEST_PAUSE_SAVE"


class NonFiniteCheckpoint(ValueError):
    """A checkpoint holds NaN/inf weights or state: it is refused wherever it would be used or promoted."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically (:func:`fr_fast.utils.files.atomic_write`: a temporary file in the
    same folder, fsync, ``os.replace``, fsync of the folder), with the permissions of any other run file.

    A crash or exception while writing leaves any previous file at ``path`` untouched. Raises
    :class:`DiskFullError` when the disk is full (the partial temporary file is removed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "version": VERSION, **state}
    with atomic_write(path, "wb", before_rename=lambda: _test_pause(path, state.get("epoch"))) as fh:
        torch.save(state, fh)


def _test_pause(path: Path, epoch: Any) -> None:
    wanted = os.environ.get(PAUSE_SAVE_ENV)
    if wanted and wanted == f"{path.name}@{epoch}":
        print(f"test hook: pausing inside the save of {path}", file=sys.stderr, flush=True)
        time.sleep(600)


def remove_stale_temps(folder: str | os.PathLike, names: Iterable[str] = ("*.pt",)) -> list[Path]:
    """Delete the temporary files that killed writes of the files ``names`` (glob patterns; atomic_write's
    ``.<name>.<random>.tmp``) left in ``folder``; returns them.

    Call it only while holding the folder's run lock (:mod:`fr_fast.runs.runfolder`): another live run's
    temporary file would otherwise be taken for an orphan.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if folder.is_dir():
        for name in names:
            for p in folder.glob(f".{name}.*{TEMP_SUFFIX}"):
                if p not in removed:
                    p.unlink(missing_ok=True)
                    removed.append(p)
    return removed


def nonfinite_entries(state: Any, prefix: str = "") -> list[str]:
    """Names (``model.fc.weight``, ``optimizer.state.3.momentum_buffer``) of the floating-point tensors in a
    nested dict/list ``state`` that hold NaN or inf; [] when all are finite.

    One fused max-abs reduction over all tensors and a single host sync in the common (finite) case; the
    offending names are only searched for after a failure.
    """
    named = list(_float_tensors(state, prefix))
    if not named:
        return []
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for _, t in named:
        by_device.setdefault(t.device, []).append(t)
    peaks = [torch.stack([n.float() for n in torch._foreach_norm(ts, float("inf"))]).amax()
             for ts in by_device.values()]
    if all(torch.isfinite(torch.stack([p.cpu() for p in peaks])).tolist()):
        return []
    return [name for name, t in named if not bool(torch.isfinite(t).all())]


def _float_tensors(obj: Any, prefix: str):
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.numel():
            yield prefix, obj.detach()
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _float_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _float_tensors(v, f"{prefix}.{i}" if prefix else str(i))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises FileNotFoundError when ``path`` is missing, IsADirectoryError when it is a folder and ValueError
    when it is a URL or not an fr_fast checkpoint.
    """
    path = local_path(path, "checkpoint")
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {str(path)!r} is a folder; give a checkpoint file in it, e.g. "
                                f"{str(path / 'best.pt')!r}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, foreign objects, ...
        raise ValueError(f"{str(path)!r} is not a readable fr_fast checkpoint: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not an fr_fast checkpoint (no format={FORMAT!r} entry)")
    if state.get("version", 0) > VERSION:
        raise ValueError(f"{str(path)!r} has checkpoint version {state['version']}, this fr_fast reads <= {VERSION}")
    return state


WEIGHTS = ("auto", "student", "average")


def average_weights(state: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The weight average's network state dict of a checkpoint (None when the run kept no average).

    Accepts the ``torch.optim.swa_utils.AveragedModel`` layout (``module.``-prefixed keys plus
    ``n_averaged``) as well as a plain network state dict.
    """
    avg = state.get("average", state.get("teacher"))
    if avg is None:
        return None
    if "n_averaged" in avg:
        return {k[len("module."):]: v for k, v in avg.items() if k.startswith("module.")}
    return dict(avg)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               weights: str = "auto") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model of a checkpoint, in eval mode on ``device``; :class:`NonFiniteCheckpoint` when the
    chosen weights hold NaN/inf.

    ``weights``: "student" (the trained model), "average" (its weight average, BN statistics as the
    trainer re-estimated them) or "auto": the average when the run evaluated it (``wa_role`` evaluated or
    both), else the student.

    Returns
    -------
    (model, cfg) : cfg is the run's config dict plus ``num_classes``, ``in_channels`` and ``weights`` (which
        weights were loaded); it names at least dataset, data_dir, model, num_classes, eps.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    state = load_checkpoint(path, map_location="cpu")
    cfg = dict(state["config"])
    average = average_weights(state)
    if weights == "auto":
        evaluated = cfg.get("wa_role") in ("evaluated", "both") and (cfg.get("fr") == "frwa" or cfg.get("wa"))
        weights = "average" if evaluated and average is not None else "student"
    if weights == "average" and average is None:
        raise ValueError(f"{str(path)!r} holds no weight average (the run kept none): use --weights student")
    chosen = average if weights == "average" else state["model"]
    bad = nonfinite_entries(chosen)
    if bad:
        raise NonFiniteCheckpoint(f"{str(path)!r} holds non-finite {weights} weights ({bad[0]}"
                                  f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}); refusing to evaluate "
                                  "them: use a checkpoint of an earlier epoch")
    kwargs = dict(state["model_kwargs"])
    # Checkpoints written before the L-model filter became a layer name it only in their config.
    kwargs.setdefault("low_pass_bandwidth", state["config"].get("low_pass_bandwidth"))
    model = build_model(**kwargs)
    model.load_state_dict(chosen)
    model.to(device).eval()
    cfg.update(num_classes=kwargs["num_classes"], in_channels=kwargs.get("in_channels", 3), weights=weights)
    return model, cfg


def checkpoint_data_dir(cfg: dict[str, Any], override: str | None, prog: str) -> str | None:
    """The data folder to read a checkpoint's test set from: ``override`` when given, else the one the
    checkpoint's config names, announced on stderr (a checkpoint from elsewhere can point anywhere).
    """
    if override is not None:
        return override
    named = cfg.get("data_dir")
    if named is not None:
        print(f"{prog}: reading {cfg.get('dataset')} from data_dir {str(named)!r}, taken from the checkpoint "
              "(override with --data-dir)", file=sys.stderr, flush=True)
    return named


def rng_state() -> dict[str, Any]:
    """All random number generator states (torch CPU, CUDA, numpy, python) as weights_only-loadable values."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
