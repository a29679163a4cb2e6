"""Running a classifier over data: shared by the robustness report (:mod:`fr_fast.robustness.evaluate`) and the
Fourier analyses (:mod:`fr_fast.spectral.analyses`, :mod:`fr_fast.spectral.heatmap`).

``data`` is either a map-style Dataset of ``(x, y)`` items (batched here, in order) or any iterable of
``(x, y)`` batches (a DataLoader, ``fr_fast.data.BatchLoader``, a list); x is (N, C, H, W) in [0, 1].
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from fr_fast.models.modes import eval_mode
from fr_fast.utils.progress import Progress, track


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a model with neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _is_dataset(data: object) -> bool:
    return isinstance(data, Dataset) and not isinstance(data, IterableDataset)


def example_count(data: Dataset | Iterable, n: int | None = None) -> int | None:
    """How many examples :func:`batches` yields for ``data`` and ``n``, or None when unknown."""
    inner = data if _is_dataset(data) else getattr(data, "dataset", None)
    known = len(inner) if inner is not None and hasattr(inner, "__len__") else None
    if known is None:
        return n
    return known if n is None else min(n, known)


def batches(data: Dataset | Iterable, n: int | None, device: torch.device | str,
            batch_size: int = 256) -> Iterator[tuple[Tensor, Tensor]]:
    """``(x, y)`` batches of the first ``n`` examples of ``data`` (all if None): x float32, both on ``device``."""
    if n is not None and n <= 0:
        raise ValueError(f"the number of examples must be positive, got {n}")
    if _is_dataset(data):
        data = DataLoader(Subset(data, range(example_count(data, n))), batch_size=batch_size, shuffle=False)
    seen = 0
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("the data must yield (x, y) pairs")
        x, y = batch[0], batch[1]
        if n is not None:
            x, y = x[: n - seen], y[: n - seen]
        if x.dim() != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(x.shape)}")
        yield x.to(device, torch.float32), y.to(device)
        seen += x.shape[0]
        if n is not None and seen >= n:
            return


def is_correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """(B,) bool: ``model`` (in eval mode, float32, no autograd) predicts ``y`` on ``x``."""
    with eval_mode(model), torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        return model(x.float()).argmax(1) == y


def progress_bar(iterable: Iterable | None = None, desc: str = "", enabled: bool = True, total: int | None = None,
                 unit: str = "it") -> Progress | Iterator:
    """Progress over ``iterable`` (or a manual :class:`~fr_fast.utils.progress.Progress` when None), shown only when
    ``enabled``: a bar on a terminal, plain periodic lines with an ETA otherwise."""
    if iterable is None:
        return Progress(total, desc, unit, enabled=enabled)
    return track(iterable, desc, enabled=enabled, total=total, unit=unit)
