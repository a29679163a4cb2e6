"""Damaged and hostile data files: each is refused with one line naming the file, and no file runs code."""
from __future__ import annotations

import gzip
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fr_fast.cli.eval import main as eval_main
from fr_fast.data import load_dataset
from fr_fast.models import build_model
from fr_fast.runs.checkpoint import save_checkpoint


def _cifar10(root: Path, n: int = 3, labels=None, data=None, test_batch: object = None) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": np.zeros((n, 3072), np.uint8) if data is None else data,
                 "labels": list(range(n)) if labels is None else labels, "batch_label": name}
        with open(folder / name, "wb") as fh:
            pickle.dump(test_batch if (name == "test_batch" and test_batch is not None) else batch, fh, protocol=2)
    return folder


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_eval_of_a_checkpoint_pointing_at_a_planted_pickle_runs_no_code(tmp_path, capsys):
    """The attack of the issue: a checkpoint that loads safely names a data_dir with a malicious test_batch."""
    marker = tmp_path / "pwned"
    planted = tmp_path / "planted"
    _cifar10(planted, test_batch={"data": np.zeros((1, 3072), np.uint8), "labels": _Payload(marker)})
    kwargs = dict(name="small_cnn", num_classes=10, in_channels=3, width=4)
    checkpoint = tmp_path / "shared.pt"
    save_checkpoint({"config": {"dataset": "cifar10", "data_dir": str(planted), "model": "small_cnn",
                                "eps": 8 / 255, "pad_to": None},
                     "model_kwargs": kwargs, "model": build_model(**kwargs).state_dict()}, checkpoint)
    assert eval_main([str(checkpoint), "--no-progress", "--device", "cpu", "--attacks", "clean"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "taken from the checkpoint" in err[0] and str(planted) in err[0]
    assert len(err) == 2 and re.search(r"test_batch: refused to load: global (posix|os)\.system is not allowed",
                                       err[1]), err
    assert not marker.exists()


@pytest.mark.parametrize("change, message", [
    (dict(labels=[0, 1]), r"data_batch_1: 3 images but 2 labels"),
    (dict(data=np.zeros((3, 3000), np.uint8)), r"data_batch_1: 'data' is uint8 \(3, 3000\), expected uint8 rows"),
    (dict(data=np.zeros((3, 3072), np.float32)), r"data_batch_1: 'data' is float32"),
    (dict(labels=[0, 1, 10]), r"data_batch_1: labels range over \[0, 10\], expected 0..9"),
    (dict(test_batch=[1, 2, 3]), r"test_batch: not a CIFAR batch"),
])
def test_cifar_batches_are_checked(tmp_path, change, message):
    _cifar10(tmp_path, **change)
    with pytest.raises(ValueError, match=message):
        load_dataset("cifar10", "test" if "test_batch" in change else "train", tmp_path)


def test_cifar_truncated_pickle_names_the_file(tmp_path):
    folder = _cifar10(tmp_path)
    raw = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"test_batch: corrupt or truncated pickle"):
        load_dataset("cifar10", "test", tmp_path)


def _idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    (gzip.open if compress else open)(path, "wb").write(header + array.astype(np.uint8).tobytes())


def _mnist(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        _idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        _idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)


@pytest.mark.parametrize("images, labels, message", [
    (np.zeros((4, 20, 20)), np.arange(4), r"train-images-idx3-ubyte.gz: holds images of shape \(20, 20\), "
                                          r"expected 28x28"),
    (np.zeros((4, 28, 28)), np.arange(3), r"train-labels-idx1-ubyte.gz: 3 labels for the 4 images"),
    (np.zeros((4, 28, 28)), np.array([0, 1, 2, 12]), r"train-labels-idx1-ubyte.gz: labels range over \[0, 12\]"),
])
def test_idx_sizes_are_checked(tmp_path, images, labels, message):
    _mnist(tmp_path, images, labels)
    with pytest.raises(ValueError, match=message):
        load_dataset("fashion_mnist", "train", tmp_path)


def test_bad_gzip_names_the_file(tmp_path):
    _mnist(tmp_path, np.zeros((4, 28, 28)), np.arange(4))
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:30])  # a truncated gzip stream
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz: unreadable \(EOFError"):
        load_dataset("fashion_mnist", "train", tmp_path)
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz: unreadable \(BadGzipFile"):
        load_dataset("fashion_mnist", "train", tmp_path)


def test_svhn_sizes_are_checked(tmp_path):
    savemat = pytest.importorskip("scipy.io").savemat
    savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((32, 32, 3, 5), np.uint8), "y": np.ones((4, 1))})
    with pytest.raises(ValueError, match=r"train_32x32.mat: X has shape \(32, 32, 3, 5\) and y 4 labels"):
        load_dataset("svhn", "train", tmp_path)
    (tmp_path / "train_32x32.mat").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"train_32x32.mat: not an SVHN .mat file"):
        load_dataset("svhn", "train", tmp_path)


@pytest.mark.parametrize("value, dtype", [(np.nan, np.float64), (np.inf, np.float32), (300, np.float64),
                                          (-5, np.int16), (300, np.int32), (0.5, np.float64)])
def test_svhn_pixels_must_be_bytes(tmp_path, value, dtype):
    """A cast would make NaN 0, 300 44 and -5 251 (issue 26, D2): such a file is refused, naming it."""
    savemat = pytest.importorskip("scipy.io").savemat
    x = np.zeros((32, 32, 3, 2), dtype)
    x[0, 0, 0, 1] = value
    savemat(tmp_path / "train_32x32.mat", {"X": x, "y": np.ones((2, 1))})
    with pytest.raises(ValueError, match=r"train_32x32.mat: X holds values outside the whole numbers 0..255"):
        load_dataset("svhn", "train", tmp_path, val_fraction=0.5)


def test_svhn_whole_float_pixels_and_labels_load(tmp_path):
    savemat = pytest.importorskip("scipy.io").savemat
    x = np.full((32, 32, 3, 2), 255.0)
    savemat(tmp_path / "test_32x32.mat", {"X": x, "y": np.array([[10.0], [3.0]])})
    ds = load_dataset("svhn", "test", tmp_path)
    assert float(ds[0][0].max()) == 1.0 and sorted(int(ds[i][1]) for i in range(2)) == [0, 3]
    savemat(tmp_path / "test_32x32.mat", {"X": x.astype(np.uint8), "y": np.array([[np.nan], [3.0]])})
    with pytest.raises(ValueError, match=r"test_32x32.mat: y holds float64 values that are not whole numbers"):
        load_dataset("svhn", "test", tmp_path)


def test_good_files_still_load(tmp_path):
    rows = np.random.default_rng(0).integers(0, 256, (3, 3072), dtype=np.uint8)
    _cifar10(tmp_path, data=rows, labels=[7, 0, 9])
    test = load_dataset("cifar10", "test", tmp_path)
    assert len(test) == 3 and [int(test[i][1]) for i in range(3)] == [7, 0, 9]
    assert torch.equal((test[0][0] * 255).round().to(torch.uint8).flatten(), torch.from_numpy(rows[0]))
