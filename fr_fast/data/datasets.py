"""The dataset registry (:data:`DATASETS`), the 9:1 train/validation split and the dataset classes.

Every dataset yields ``(x, y)`` with ``x`` float32 (C, H, W) in [0, 1] and ``y`` int64; mean/std
normalisation lives inside the models (see :mod:`fr_fast.models`). Small datasets are held in memory as one
uint8 tensor (:class:`TensorImageDataset`), so the loader slices whole batches; only Tiny ImageNet stays on
disk (:class:`FolderImageDataset`). The files are read by :mod:`fr_fast.data.readers`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from fr_fast.data.readers import default_data_dir, missing, read_arrays, read_image, tinyimagenet_files

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset.

    Attributes
    ----------
    num_classes, channels, image_size : int
        Label count, image channels and native side length (images are square).
    mean, std : tuple of float
        Per-channel statistics of the training images, for the model's ``Normalize`` layer. The
        paper only states that inputs are scaled to [0, 1]; whether to pass these is the caller's
        choice (``build_model(..., mean=None)`` disables normalisation).
    default_eps : float
        L-inf attack radius used for this dataset (pixel scale [0, 1]).
    augment : str
        Default training augmentation policy for :func:`augment_batch`.
    """

    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_eps: float
    augment: str


# Augmentation follows the paper (Sec. 4.1): crop (pad 4) + flip for CIFAR, flip only for Tiny
# ImageNet, nothing for SVHN. MNIST/Fashion-MNIST are not in the paper: we use a 2-pixel crop
# (a 4-pixel shift is large for 28 px objects), no flip for digits, flip for clothes.
DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("mnist", 10, 1, 28, (0.1307,), (0.3081,), 0.3, "crop2"),
        DatasetInfo("fashion_mnist", 10, 1, 28, (0.2860,), (0.3530,), 0.1, "crop2+flip"),
        DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                    8 / 255, "crop4+flip"),
        DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                    8 / 255, "crop4+flip"),
        DatasetInfo("svhn", 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                    8 / 255, "none"),
        DatasetInfo("tinyimagenet", 200, 3, 64, (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821),
                    8 / 255, "flip"),
    )
}


def dataset_info(name: str) -> DatasetInfo:
    """Return ``DATASETS[name]`` or raise ValueError listing the valid names."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return DATASETS[name]


class TensorImageDataset(Dataset):
    """Images held in memory as uint8 (N, C, H, W) plus int64 labels (N,).

    ``dataset[i]`` returns ``(x, y)``: x float32 (C, H, W) in [0, 1], y int64 scalar tensor.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, info: DatasetInfo):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64)
        self.info = info

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_float(self.images[index]), self.labels[index]

    def raw(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 (C, H, W) image and its label, before any conversion."""
        return self.images[index], self.labels[index]


class FolderImageDataset(Dataset):
    """Images decoded from files on access (Tiny ImageNet); same item contract as TensorImageDataset."""

    def __init__(self, files: Sequence[str], labels: Sequence[int], *, info: DatasetInfo,
                 pad_to: int | None = None):
        self.files = list(files)
        self.labels = torch.as_tensor(list(labels), dtype=torch.int64)
        self.info = info
        self.pad_to = pad_to

    def __len__(self) -> int:
        return len(self.files)

    def raw(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (C, H, W) image and its label, before float conversion (cheap to batch)."""
        img = read_image(self.files[index], self.info.image_size)
        if self.pad_to is not None:
            img = _pad_images(img[None], self.pad_to)[0]
        return img, self.labels[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, y = self.raw(index)
        return to_float(img), y


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in 0..255 -> float32 in [0, 1]."""
    return images.to(torch.float32).div_(255.0)


def _pad_images(images: torch.Tensor, pad_to: int) -> torch.Tensor:
    """Zero-pad (N, C, H, W) images symmetrically to (N, C, pad_to, pad_to)."""
    h, w = images.shape[-2:]
    if pad_to < max(h, w):
        raise ValueError(f"pad_to={pad_to} is smaller than the images ({h}x{w})")
    top, left = (pad_to - h) // 2, (pad_to - w) // 2
    return F.pad(images, (left, pad_to - w - left, top, pad_to - h - top))


def train_val_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic disjoint split of range(n): (train_idx, val_idx), each sorted ascending.

    ``round(n * val_fraction)`` indices go to validation, chosen by a permutation seeded with ``seed``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(n * val_fraction))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def load_dataset(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    pad_to: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> TensorImageDataset | FolderImageDataset:
    """Load one split of a dataset.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS`.
    split : {"train", "val", "test"}
        "train"/"val" partition the official training set (``val_fraction`` to val, seeded);
        "test" is the official test set (Tiny ImageNet: its labelled val folder).
    data_dir : path, optional
        Folder holding the files (or the standard sub-folder, e.g. ``cifar-10-batches-py``).
        Default: the Debian folder for Fashion-MNIST, the embedded subset for MNIST, else
        ``$FR_FAST_DATA_DIR`` or ``./data``.
    pad_to : int, optional
        Zero-pad images symmetrically to ``pad_to x pad_to`` (e.g. 28 -> 32 for Fashion-MNIST).
    val_fraction : float
        Fraction of the training set held out as validation (paper: 0.1).
    seed : int
        Seed of the train/val permutation.

    Returns
    -------
    Dataset
        Items ``(x, y)``: x float32 (C, H, W) in [0, 1], y int64. Has ``.info`` (DatasetInfo).

    Raises
    ------
    ValueError
        Unknown name/split or bad ``pad_to``/``val_fraction``.
    FileNotFoundError
        Data files missing; the message says what to download and where to put it.
    """
    info = dataset_info(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if pad_to is not None and pad_to < info.image_size:
        raise ValueError(f"pad_to={pad_to} is smaller than {name}'s {info.image_size}px images")
    if split == "val" and val_fraction == 0.0:
        raise ValueError("split='val' needs val_fraction > 0")
    path = Path(data_dir).expanduser() if data_dir is not None else None
    if path is not None and not path.is_dir():
        raise missing(name, path, "directory does not exist")
    train = split != "test"

    if name == "tinyimagenet":
        files, labels = tinyimagenet_files(path or default_data_dir(name), train)
        if train:
            tr, va = train_val_indices(len(files), val_fraction, seed)
            keep = (tr if split == "train" else va).tolist()
            files, labels = [files[i] for i in keep], [labels[i] for i in keep]
        return FolderImageDataset(files, labels, info=info, pad_to=pad_to)

    images, labels = read_arrays(name, path, train)
    if labels.numel() and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise ValueError(f"{name}: labels outside [0, {info.num_classes}) in the files")
    if train:
        tr, va = train_val_indices(len(labels), val_fraction, seed)
        keep = tr if split == "train" else va
        images, labels = images[keep], labels[keep]
    if pad_to is not None:
        images = _pad_images(images, pad_to)
    return TensorImageDataset(images, labels, info=info)
