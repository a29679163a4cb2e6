"""The CIFAR pickle reader runs no code from the file and accepts what the official files hold."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from fr_fast.data.restricted_pickle import load_restricted


class _Shell:
    """Unpickling this calls os.system: the attack a planted data file carries."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Eval:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


class _GetattrChain:
    """getattr(builtins module, 'exec') style gadget: only builtins, no os import."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import builtins
        return getattr(builtins, "exec"), (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("gadget", [_Shell, _Eval, _GetattrChain])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_hostile_pickle_runs_no_code(tmp_path, gadget, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "test_batch"
    with open(path, "wb") as fh:  # the payload sits inside an otherwise plausible CIFAR batch
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": gadget(marker)}, fh, protocol=protocol)
    pickle.loads(pickle.dumps(gadget(tmp_path / "control"), protocol=protocol))  # the gadget really works
    assert (tmp_path / "control").exists()
    with pytest.raises(ValueError, match=r"test_batch: refused to load: global .* is not allowed"):
        load_restricted(path)
    assert not marker.exists()


def test_object_arrays_refused(tmp_path):
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as fh:
        pickle.dump({"data": np.array([{"a": 1}, None], dtype=object)}, fh, protocol=2)
    with pytest.raises(ValueError, match="object arrays are not allowed"):
        load_restricted(path)


@pytest.mark.parametrize("protocol", [2, 4])
def test_plain_cifar_content_round_trips(tmp_path, protocol):
    batch = {"batch_label": "training batch 1 of 5", "data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072),
             "labels": [3, 7], "filenames": [b"a.png", "b.png"], "coarse": np.int64(4), "fine": (1.5, None)}
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as fh:
        pickle.dump(batch, fh, protocol=protocol)
    loaded = load_restricted(path)
    assert loaded.keys() == batch.keys()
    assert loaded["data"].dtype == np.uint8 and np.array_equal(loaded["data"], batch["data"])
    assert loaded["labels"] == [3, 7] and loaded["filenames"] == [b"a.png", "b.png"]
    assert loaded["coarse"] == 4 and loaded["fine"] == (1.5, None)


def test_python2_style_pickle(tmp_path):
    # What cPickle (protocol 2) wrote for the official files: numpy.core.multiarray names, latin1 str bytes.
    raw = pickle.dumps({"data": np.array([[0, 255]], dtype=np.uint8)}, protocol=2)
    raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path = tmp_path / "test_batch"
    path.write_bytes(raw)
    assert np.array_equal(load_restricted(path)["data"], [[0, 255]])


def test_truncated_pickle_names_the_file(tmp_path):
    path = tmp_path / "data_batch_2"
    path.write_bytes(pickle.dumps({"data": np.zeros(100, np.uint8)}, protocol=2)[:40])
    with pytest.raises(ValueError, match=r"data_batch_2: corrupt or truncated pickle"):
        load_restricted(path)


class _Reduce:
    """Pickles as ``func(*args)``: the hand-made array constructions a hostile file can hold."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("payload, message", [
    (_Reduce(np.ndarray, (2**40,), np.dtype("u1")), r"an array of 1099511627776 elements .* cannot come from a"),
    (_Reduce(np.ndarray, (100000, 3072), np.dtype("u1"), b"\0", 0, (0, 0)), r"an array of 307200000 elements .*cannot come from a"),
    (_Reduce(np.ndarray, (1, 3072), np.dtype("u1"), b"\0" * 3072, 0, (0, 0)), r"array strides \(0, 0\) are not allowed"),
    (_Reduce(np.dtype, ("u1", (2**30,))), r"a dtype of 1073741824 bytes cannot come from a"),
])
def test_arrays_are_bounded_by_the_file(tmp_path, payload, message):
    """Issue 26, H1: a small file forced a 1 TiB allocation, or passed as 100,000 black images (zero strides)."""
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": payload, "labels": [0]}, protocol=2))
    with pytest.raises(ValueError, match=r"data_batch_1: refused to load: " + message):
        load_restricted(path)


def test_memory_error_is_one_line_naming_the_file(tmp_path, monkeypatch):
    import fr_fast.data.restricted_pickle as rp

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": np.zeros((2, 4), np.uint8)}, protocol=2))

    def exhausted(self):
        raise MemoryError()

    monkeypatch.setattr(rp._RestrictedUnpickler, "load", exhausted)
    with pytest.raises(ValueError, match=r"data_batch_1: the pickle asks for more memory than this machine has"):
        load_restricted(path)
