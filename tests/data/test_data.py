"""Dataset readers on tiny generated files in each real format, splits, augmentation and the loader."""
import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fr_fast.data import (
    DATASETS,
    FASHION_MNIST_DEBIAN_DIR,
    BatchLoader,
    augment_batch,
    load_dataset,
    parse_augment,
    read_idx,
)


# ----------------------------------------------------------------------------- file generators
def _images(n, c, h, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, h, h), dtype=np.uint8)


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_fashion(root, n_train=40, n_test=10):
    root.mkdir(parents=True, exist_ok=True)
    train = _images(n_train, 1, 28, 0)[:, 0]
    train[:, 0, 0] = np.arange(n_train)  # unique marker pixel per image to track splits
    test = _images(n_test, 1, 28, 1)[:, 0]
    _write_idx(root / "train-images-idx3-ubyte.gz", train)
    _write_idx(root / "train-labels-idx1-ubyte.gz", np.arange(n_train) % 10)
    _write_idx(root / "t10k-images-idx3-ubyte.gz", test)
    _write_idx(root / "t10k-labels-idx1-ubyte.gz", (np.arange(n_test) * 3) % 10)
    return train, test


def _cifar_rows(imgs):
    # CIFAR row format written plane by plane: 1024 red bytes, 1024 green, 1024 blue.
    return np.concatenate([imgs[:, ch].reshape(len(imgs), -1) for ch in range(3)], axis=1)


def make_cifar10(root, per_batch=4, n_test=6):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i in range(1, 6):
        imgs = _images(per_batch, 3, 32, i)
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": _cifar_rows(imgs), "labels": [(i + j) % 10 for j in range(per_batch)]}, f)
    test = _images(n_test, 3, 32, 99)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({"data": _cifar_rows(test), "labels": list(range(n_test))}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return test


def make_cifar100(root, n_train=20, n_test=5):
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    for name, n, seed in (("train", n_train, 3), ("test", n_test, 4)):
        imgs = _images(n, 3, 32, seed)
        with open(d / name, "wb") as f:
            pickle.dump({"data": _cifar_rows(imgs), "fine_labels": [99 - k for k in range(n)],
                         "coarse_labels": [0] * n}, f)
    with open(d / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [str(i) for i in range(100)]}, f)


def make_svhn(root, n_train=10, n_test=10):
    from scipy.io import savemat

    out = {}
    for name, n, seed in (("train", n_train, 5), ("test", n_test, 6)):
        imgs = _images(n, 3, 32, seed)
        labels = (np.arange(n) % 10 + 1).reshape(n, 1)  # SVHN stores digit 0 as label 10
        savemat(root / f"{name}_32x32.mat", {"X": imgs.transpose(2, 3, 1, 0), "y": labels})
        out[name] = (imgs, labels[:, 0] % 10)
    return out


def make_tinyimagenet(root, wnids=("n01", "n02", "n03"), per_class=4):
    from PIL import Image

    def write_png(img, path, fmt="PNG"):  # (C, H, W) uint8 tensor -> image file
        arr = img.permute(1, 2, 0).numpy()
        Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(path, format=fmt)

    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")  # order must not matter
    for c, w in enumerate(wnids):
        img_dir = base / "train" / w / "images"
        img_dir.mkdir(parents=True)
        for j in range(per_class):
            img = torch.from_numpy(_images(1, 3, 64, 10 * c + j)[0])
            # j == 0: greyscale, j == 1: a real JPEG, else PNG content under the .JPEG name
            # (decoding sniffs the format; PNG keeps the val images exact for comparison).
            write_png(img if j else img[:1], str(img_dir / f"{w}_{j}.JPEG"), "JPEG" if j == 1 else "PNG")
    lines, val_imgs = [], []
    for j, w in enumerate(wnids):
        img = torch.from_numpy(_images(1, 3, 64, 100 + j)[0])
        write_png(img, str(base / "val" / "images" / f"val_{j}.JPEG"))
        lines.append(f"val_{j}.JPEG\t{w}\t0\t0\t63\t63")
        val_imgs.append(img)
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return val_imgs


def _all(ds):
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.stack(ys)


def _check_items(ds, channels, size, num_classes):
    x, y = _all(ds)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape[1:] == (channels, size, size)
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert 0 <= y.min() and y.max() < num_classes
    return x, y


# ------------------------------------------------------------------------------------- readers
def test_registry_fields():
    assert set(DATASETS) == {"mnist", "fashion_mnist", "cifar10", "cifar100", "svhn", "tinyimagenet"}
    assert DATASETS["mnist"].default_eps == 0.3 and DATASETS["fashion_mnist"].default_eps == 0.1
    assert DATASETS["cifar10"].default_eps == pytest.approx(8 / 255)
    for info in DATASETS.values():
        assert len(info.mean) == len(info.std) == info.channels
        parse_augment(info.augment)
    assert DATASETS["tinyimagenet"].image_size == 64 and DATASETS["cifar100"].num_classes == 100


def test_fashion_mnist_idx_gz(tmp_path):
    train, test = make_fashion(tmp_path)
    ds = load_dataset("fashion_mnist", "test", tmp_path)
    x, y = _check_items(ds, 1, 28, 10)
    torch.testing.assert_close(x[:, 0], torch.from_numpy(test).float() / 255)
    assert y.tolist() == [(i * 3) % 10 for i in range(10)]
    # Also the torchvision layout <root>/FashionMNIST/raw with uncompressed files.
    raw = tmp_path / "tv" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for p in tmp_path.glob("*.gz"):
        (raw / p.stem).write_bytes(gzip.decompress(p.read_bytes()))
    x2, _ = _all(load_dataset("fashion_mnist", "test", tmp_path / "tv"))
    torch.testing.assert_close(x2, x)


def test_read_idx_rejects_truncated(tmp_path):
    p = tmp_path / "bad-idx3-ubyte"
    p.write_bytes(bytes([0, 0, 8, 3]) + (5).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0" * 10)
    with pytest.raises(ValueError, match="header"):
        read_idx(p)


def test_cifar10_pickles(tmp_path):
    test = make_cifar10(tmp_path)
    ds = load_dataset("cifar10", "test", tmp_path)
    x, y = _check_items(ds, 3, 32, 10)
    torch.testing.assert_close(x, torch.from_numpy(test).float() / 255)
    assert y.tolist() == list(range(6))
    tr, va = load_dataset("cifar10", "train", tmp_path), load_dataset("cifar10", "val", tmp_path)
    assert (len(tr), len(va)) == (18, 2)  # 5 batches x 4 images, 9:1
    # Pointing directly at the extracted folder works too.
    assert len(load_dataset("cifar10", "test", tmp_path / "cifar-10-batches-py")) == 6


def test_cifar100_pickles(tmp_path):
    make_cifar100(tmp_path)
    x, y = _check_items(load_dataset("cifar100", "test", tmp_path), 3, 32, 100)
    assert y.tolist() == [99, 98, 97, 96, 95]
    assert len(load_dataset("cifar100", "train", tmp_path)) == 18


def test_svhn_mat(tmp_path):
    pytest.importorskip("scipy", reason="scipy is needed to write/read SVHN .mat files")
    data = make_svhn(tmp_path)
    x, y = _check_items(load_dataset("svhn", "test", tmp_path), 3, 32, 10)
    imgs, labels = data["test"]
    torch.testing.assert_close(x, torch.from_numpy(imgs).float() / 255)
    assert y.tolist() == labels.tolist() and 0 in y.tolist()  # label 10 became 0


def test_tinyimagenet_folder(tmp_path):
    val_imgs = make_tinyimagenet(tmp_path)
    test = load_dataset("tinyimagenet", "test", tmp_path)
    x, y = _check_items(test, 3, 64, 200)
    assert y.tolist() == [0, 1, 2]  # classes indexed by sorted wnid
    torch.testing.assert_close(x, torch.stack(val_imgs).float() / 255)  # PNG: lossless
    tr = load_dataset("tinyimagenet", "train", tmp_path, val_fraction=0.25)
    va = load_dataset("tinyimagenet", "val", tmp_path, val_fraction=0.25)
    assert (len(tr), len(va)) == (9, 3) and not set(tr.files) & set(va.files)
    xg, _ = _check_items(tr, 3, 64, 200)  # includes the greyscale file, expanded to RGB
    # DataLoader path (files are decoded in the loader) gives the same images as indexing.
    xb, yb = next(iter(BatchLoader(tr, 9, train=False)))
    torch.testing.assert_close(xb, xg)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "tinyimagenet", "fashion_mnist"])
def test_missing_or_empty_dir_says_what_to_download(tmp_path, name):
    hints = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz",
             "svhn": "train_32x32.mat", "tinyimagenet": "tiny-imagenet-200.zip",
             "fashion_mnist": "train-images-idx3-ubyte.gz"}
    for where in (tmp_path / "does_not_exist", tmp_path):
        with pytest.raises(FileNotFoundError, match=hints[name]) as err:
            load_dataset(name, "train", where)
        assert str(where) in str(err.value)


def test_bad_arguments(tmp_path):
    make_fashion(tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet", "train")
    with pytest.raises(ValueError, match="split"):
        load_dataset("fashion_mnist", "validation", tmp_path)
    with pytest.raises(ValueError, match="pad_to"):
        load_dataset("fashion_mnist", "test", tmp_path, pad_to=20)
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("fashion_mnist", "train", tmp_path, val_fraction=1.0)


# -------------------------------------------------------------------------- splits and padding
def test_train_val_split_disjoint_complete_and_seeded(tmp_path):
    make_fashion(tmp_path)

    def markers(split, seed):  # the marker pixel identifies the original training image
        return set(load_dataset("fashion_mnist", split, tmp_path, seed=seed).images[:, 0, 0, 0].tolist())

    tr, va = markers("train", 0), markers("val", 0)
    assert len(tr) == 36 and len(va) == 4
    assert not tr & va and tr | va == set(range(40))
    assert markers("val", 0) == va  # deterministic
    assert markers("val", 1) != va  # the seed matters


def test_pad_to_32(tmp_path):
    make_fashion(tmp_path)
    x, _ = _all(load_dataset("fashion_mnist", "test", tmp_path))
    xp, _ = _all(load_dataset("fashion_mnist", "test", tmp_path, pad_to=32))
    assert xp.shape == (10, 1, 32, 32)
    torch.testing.assert_close(xp[:, :, 2:30, 2:30], x)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (xp[:, :, border] == 0).all()


# -------------------------------------------------------------------------------- augmentation
def test_parse_augment():
    assert parse_augment(None) == (0, False) and parse_augment("none") == (0, False)
    assert parse_augment("crop4+flip") == (4, True) and parse_augment("flip") == (0, True)
    assert parse_augment("cifar10") == (4, True) and parse_augment("svhn") == (0, False)
    assert parse_augment("tinyimagenet") == (0, True)
    with pytest.raises(ValueError, match="policy"):
        parse_augment("rotate")


def test_crop_is_a_shift_of_the_zero_padded_image():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 12, 12)
    out = augment_batch(x, "crop2", torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    shifts = set()
    for i in range(16):
        match = [(dy, dx) for dy in range(5) for dx in range(5)
                 if torch.equal(out[i], padded[i, :, dy:dy + 12, dx:dx + 12])]
        assert len(match) == 1
        shifts.add(match[0])
    assert len(shifts) > 3  # shifts vary across images


def test_flip_and_range_and_seeds():
    x = torch.rand(64, 1, 8, 8)
    out = augment_batch(x, "flip", torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, xi.flip(2)) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert (flipped | kept).all() and 10 < flipped.sum() < 54
    a = augment_batch(x, "crop2+flip", torch.Generator().manual_seed(1))
    b = augment_batch(x, "crop2+flip", torch.Generator().manual_seed(1))
    c = augment_batch(x, "crop2+flip", torch.Generator().manual_seed(2))
    assert a.shape == x.shape and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(augment_batch(x, "none"), x)


def test_augment_channels_last_input():
    x = torch.rand(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    ref = augment_batch(x.contiguous(), "crop1+flip", torch.Generator().manual_seed(0))
    torch.testing.assert_close(augment_batch(x, "crop1+flip", g), ref)


# -------------------------------------------------------------------------------------- loader
def _epoch(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_loader_covers_each_sample_once_and_is_resumable(tmp_path):
    make_fashion(tmp_path)
    ds = load_dataset("fashion_mnist", "train", tmp_path)
    loader = BatchLoader(ds, 8, train=True, augment="crop2", seed=3)
    assert len(loader) == 5
    epochs = [_epoch(loader) for _ in range(3)]  # iterating advances the epoch
    x0, y0 = epochs[0]
    assert x0.shape == (36, 1, 28, 28) and sorted(y0.tolist()) == sorted(ds.labels.tolist())
    assert not torch.equal(epochs[0][1], epochs[1][1])  # new order each epoch
    resumed = BatchLoader(ds, 8, train=True, augment="crop2", seed=3)
    resumed.set_epoch(2)
    xr, yr = _epoch(resumed)
    assert torch.equal(xr, epochs[2][0]) and torch.equal(yr, epochs[2][1])
    other = BatchLoader(ds, 8, train=True, augment="crop2", seed=4)
    other.set_epoch(2)
    assert not torch.equal(_epoch(other)[0], epochs[2][0])


def test_eval_loader_keeps_order_and_drop_last(tmp_path):
    make_fashion(tmp_path)
    ds = load_dataset("fashion_mnist", "test", tmp_path)
    x, y = _epoch(BatchLoader(ds, 4, train=False))
    torch.testing.assert_close(x, _all(ds)[0])
    assert torch.equal(y, ds.labels)
    dropped = BatchLoader(ds, 4, train=True, drop_last=True)
    assert len(dropped) == 2 and _epoch(dropped)[0].shape[0] == 8


def test_loader_worker_path_matches_fast_path(tmp_path):
    make_fashion(tmp_path)
    ds = load_dataset("fashion_mnist", "train", tmp_path)
    fast = _epoch(BatchLoader(ds, 16, train=True, augment="crop2+flip", seed=1))
    workers = _epoch(BatchLoader(ds, 16, train=True, augment="crop2+flip", seed=1, num_workers=1))
    assert torch.equal(fast[0], workers[0]) and torch.equal(fast[1], workers[1])


def test_loader_distributed_single_process(tmp_path):
    import torch.distributed as dist

    make_fashion(tmp_path)
    ds = load_dataset("fashion_mnist", "train", tmp_path)
    with pytest.raises(ValueError, match="process group"):
        BatchLoader(ds, 8, train=True, distributed=True)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        loader = BatchLoader(ds, 8, train=True, distributed=True, seed=0)
        _, y = _epoch(loader)
        assert sorted(y.tolist()) == sorted(ds.labels.tolist())
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_loader_device_augments_there(tmp_path, device):
    make_fashion(tmp_path)
    ds = load_dataset("fashion_mnist", "train", tmp_path)
    ref = _epoch(BatchLoader(ds, 16, train=True, augment="crop2+flip", seed=5))
    x, y = _epoch(BatchLoader(ds, 16, train=True, augment="crop2+flip", seed=5, device=device))
    assert x.device.type == device and y.device.type == device
    assert torch.equal(y.cpu(), ref[1])
    # same crops and flips; CUDA divides by 255 as a multiply by its reciprocal: one float32 ulp apart at most
    torch.testing.assert_close(x.cpu(), ref[0], rtol=0, atol=2 ** -23)


def test_loader_rejects_bad_arguments(tmp_path):
    make_fashion(tmp_path)
    ds = load_dataset("fashion_mnist", "test", tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(ds, 0, train=True)
    with pytest.raises(ValueError, match="policy"):
        BatchLoader(ds, 4, train=True, augment="rotate")


# ------------------------------------------------------------------------------------ real data
def test_real_mnist_embedded():
    sizes = {s: len(load_dataset("mnist", s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 3600, "val": 400, "test": 1000}
    test = load_dataset("mnist", "test")
    assert torch.bincount(test.labels).tolist() == [100] * 10  # every digit in the test set
    x, y = test[0]
    assert x.shape == (1, 28, 28) and 0 <= x.min() and x.max() == 1.0 and x.mean() < 0.5


@pytest.mark.skipif(not Path(FASHION_MNIST_DEBIAN_DIR).is_dir(),
                    reason="apt-get install dataset-fashion-mnist for the real Fashion-MNIST files")
def test_real_fashion_mnist_debian_default():
    test = load_dataset("fashion_mnist", "test")
    assert len(test) == 10_000 and torch.bincount(test.labels).tolist() == [1000] * 10
    x, y = test[0]
    assert x.shape == (1, 28, 28) and 0 <= x.min() and x.max() <= 1.0
