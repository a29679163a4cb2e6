"""Batches for training and evaluation: batched augmentation and a resumable, reproducible loader."""
from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from fr_fast.data.datasets import DATASETS, FolderImageDataset, TensorImageDataset, to_float
from fr_fast.utils.seeding import mix_seed


# ---------------------------------------------------------------------------------- augmentation
def parse_augment(policy: str | None) -> tuple[int, bool]:
    """Parse a policy: "none", "flip", "crop<P>", "crop<P>+flip", or a dataset name (its default).

    Returns ``(crop_padding, flip)``.
    """
    if policy is None:
        return 0, False
    if policy in DATASETS:
        policy = DATASETS[policy].augment
    pad, flip = 0, False
    for part in policy.split("+"):
        part = part.strip()
        if part == "flip":
            flip = True
        elif part.startswith("crop") and part[4:].isdigit():
            pad = int(part[4:])
        elif part != "none":
            raise ValueError(
                f"bad augmentation policy {policy!r}: use 'none', 'flip', 'crop<P>', 'crop<P>+flip' "
                f"or a dataset name ({', '.join(DATASETS)})"
            )
    return pad, flip


def augment_batch(x: torch.Tensor, policy: str | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with zero padding and/or horizontal flip, vectorised over a batch.

    Parameters
    ----------
    x : Tensor (B, C, H, W)
        Float images in [0, 1], on any device. Not modified.
    policy : str or None
        See :func:`parse_augment`. Each image gets its own shift in [-P, P]^2 and a fair-coin flip.
    generator : torch.Generator, optional
        CPU generator for the random draws (only B*3 numbers), making results reproducible.

    Returns
    -------
    Tensor (B, C, H, W), same dtype/device, values still in [0, 1].
    """
    pad, flip = parse_augment(policy)
    if x.dim() != 4:
        raise ValueError(f"augment_batch expects (B, C, H, W), got {tuple(x.shape)}")
    b, c, h, w = x.shape
    if pad > 0:
        shifts = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator).to(x.device)
        padded = F.pad(x, (pad, pad, pad, pad))
        # One gather over flattened pixels: image i reads rows shift_y..shift_y+H-1 and columns
        # shift_x..shift_x+W-1 of its padded copy (faster than 4-tensor advanced indexing).
        rows = shifts[:, 0, None] + torch.arange(h, device=x.device)  # (B, H)
        cols = shifts[:, 1, None] + torch.arange(w, device=x.device)  # (B, W)
        flat = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).reshape(b, 1, h * w)
        x = padded.reshape(b, c, -1).gather(2, flat.expand(b, c, h * w)).reshape(b, c, h, w)
    if flip:
        coin = torch.rand(b, generator=generator).lt(0.5).to(x.device)
        x = torch.where(coin[:, None, None, None], x.flip(3), x)
    return x


# ---------------------------------------------------------------------------------------- loader
class _RawView(Dataset):
    """Lets DataLoader workers batch raw uint8 images of either dataset kind; float conversion follows collation."""

    def __init__(self, dataset: FolderImageDataset | TensorImageDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset.raw(index)


class BatchLoader:
    """Iterable of ``(x, y)`` batches with reproducible order and augmentation.

    The shuffle order and the augmentation draws of epoch ``e`` depend only on ``(seed, e)`` (and
    the rank when distributed), so a run resumed at epoch ``e`` sees exactly the batches the
    uninterrupted run would have seen. Each ``iter()`` uses the current epoch and then advances it;
    :meth:`set_epoch` sets it explicitly. Batches ``(x, y)`` of a :func:`load_dataset` dataset: x float32
    (B, C, H, W) in [0, 1], y int64 (B,).

    Parameters
    ----------
    train : bool
        Shuffle (seeded by ``(seed, epoch)``) when True; fixed order when False.
    augment : str, optional
        Policy for :func:`augment_batch` (e.g. ``DATASETS[name].augment``); applied whenever given.
    distributed : bool
        Shard with ``DistributedSampler`` (needs an initialised process group).
    num_workers : int
        DataLoader workers; 0 slices in-memory datasets directly (fastest for small data).
    device : str or torch.device, optional
        Move uint8 batches there before float conversion and augmentation (cheaper transfers).
    transform : callable, optional
        Applied to every float batch after augmentation, ``x -> x'`` (e.g. the L-model's low-pass filter).
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, train: bool, augment: str | None = None,
                 seed: int = 0, distributed: bool = False, num_workers: int = 0,
                 drop_last: bool = False, device: str | torch.device | None = None,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if len(dataset) == 0:
            raise ValueError("cannot make a loader over an empty dataset")
        parse_augment(augment)  # fail early on a bad policy
        self.dataset = dataset
        self.batch_size = batch_size
        self.train = train
        self.augment = augment
        self.transform = transform
        self.seed = seed
        self.num_workers = num_workers
        self.drop_last = drop_last
        self.device = torch.device(device) if device is not None else None
        self.epoch = 0
        self.sampler = None
        self.rank = 0
        if distributed:
            if not dist.is_available() or not dist.is_initialized():
                raise ValueError("distributed=True needs an initialised torch.distributed process group")
            self.rank = dist.get_rank()
            self.sampler = DistributedSampler(dataset, shuffle=train, seed=seed, drop_last=drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order/augmentation the next iteration reproduces."""
        self.epoch = int(epoch)

    def _indices(self, epoch: int) -> torch.Tensor:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
            return torch.as_tensor(list(iter(self.sampler)), dtype=torch.int64)
        if self.train:
            return torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))
        return torch.arange(len(self.dataset))

    def _num_samples(self) -> int:
        return len(self.sampler) if self.sampler is not None else len(self.dataset)

    def __len__(self) -> int:
        n = self._num_samples()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        indices = self._indices(epoch)
        aug_gen = torch.Generator().manual_seed(mix_seed(self.seed, epoch, self.rank, 1))
        for x_raw, y in self._raw_batches(indices):
            if self.device is not None:
                non_blocking = self.device.type == "cuda"
                x_raw = x_raw.to(self.device, non_blocking=non_blocking)
                y = y.to(self.device, non_blocking=non_blocking)
            x = to_float(x_raw)
            if self.augment is not None:
                x = augment_batch(x, self.augment, aug_gen)
            if self.transform is not None:
                x = self.transform(x)
            yield x, y

    def _raw_batches(self, indices: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """uint8 image batches and labels, in ``indices`` order."""
        bs = self.batch_size
        n = len(indices) // bs * bs if self.drop_last else len(indices)
        if isinstance(self.dataset, TensorImageDataset) and self.num_workers == 0:
            for start in range(0, n, bs):
                idx = indices[start : start + bs]
                yield self.dataset.images[idx], self.dataset.labels[idx]
            return
        if not isinstance(self.dataset, (TensorImageDataset, FolderImageDataset)):
            raise ValueError(f"BatchLoader needs a dataset from load_dataset, got {type(self.dataset).__name__}")
        source = _RawView(self.dataset)
        loader = DataLoader(source, batch_size=bs, sampler=indices[:n].tolist(), num_workers=self.num_workers,
                            pin_memory=self.device is not None and self.device.type == "cuda",
                            persistent_workers=False)
        yield from loader
