"""Atomic checkpoints and loading a trained model back.

A checkpoint is a dict saved with ``torch.save`` holding only tensors and plain Python values (so it loads
with ``weights_only=True``): ``format``, ``version``, ``config`` (``asdict(TrainConfig)``), ``model_kwargs``
(what :func:`fr_fast.models.build_model` needs), ``model`` (the student's state dict), ``teacher`` (weight
average or None), ``optimizer``, ``scheduler``, ``scaler``, ``rng``, ``epoch`` (epochs completed),
``best_val_score`` (of the ``selected_by`` metric) and ``history`` (per-epoch metrics).
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

FORMAT = "fr_fast.checkpoint"
VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync, then ``os.replace``.

    A crash or exception while writing leaves any previous file at ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "version": VERSION, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises FileNotFoundError when ``path`` is missing and ValueError when it is not an fr_fast checkpoint.
    """
    path = Path(path)
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


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained student model of a checkpoint, in eval mode on ``device``.

    Returns
    -------
    (model, cfg) : cfg is the run's config dict plus ``num_classes`` and ``in_channels``; it names at least
        dataset, data_dir, model, num_classes, eps.
    """
    from fr_fast.models import build_model

    state = load_checkpoint(path, map_location="cpu")
    kwargs = dict(state["model_kwargs"])
    model = build_model(**kwargs)
    model.load_state_dict(state["model"])
    model.to(device).eval()
    cfg = dict(state["config"])
    cfg.update(num_classes=kwargs["num_classes"], in_channels=kwargs.get("in_channels", 3))
    return model, cfg


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
