"""Read the CIFAR python pickles without letting them run code.

``pickle.load`` calls whatever callable a file names, so a ``data_batch_1`` planted in a data folder (for
example one a shared checkpoint points to) could run a shell command. :func:`load_restricted` accepts only
what the official CIFAR files contain: dicts, lists, tuples, str/bytes, numbers and plain numpy arrays;
any other global a file names raises :class:`UnsafePickleError` before it is called.

Arrays are also bounded by the file: an array built from nothing but a shape (``numpy.ndarray(shape)``,
``_reconstruct``) or a dtype may not be larger than the file itself (a 200-byte file cannot ask for a
terabyte), and zero strides (one byte shown as 100,000 images) are refused.
"""
from __future__ import annotations

import codecs
import math
import os
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np

try:  # numpy >= 2 moved the module; the files name the old path, which still resolves
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]


class UnsafePickleError(pickle.UnpicklingError):
    """The file names a global outside the allowed numpy-array vocabulary."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1").
    if codecs.lookup(encoding).name != "iso8859-1":
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin1")


class _Vocabulary:
    """The globals a file may name, each checked against ``limit`` (the file's size in bytes)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def dtype(self, *args: Any) -> np.dtype:
        dtype = np.dtype(*args)
        if dtype.hasobject:
            raise UnsafePickleError("object arrays are not allowed")
        if dtype.itemsize > self.limit:
            raise UnsafePickleError(f"a dtype of {dtype.itemsize} bytes cannot come from a {self.limit}-byte file")
        return dtype

    def _checked_size(self, shape: Any, dtype: Any) -> None:
        dims = (shape,) if isinstance(shape, int) else shape
        if not isinstance(dims, (tuple, list)) or not all(isinstance(d, int) and d >= 0 for d in dims):
            raise UnsafePickleError(f"array shape {shape!r} is not a tuple of sizes")
        count = math.prod(dims)
        nbytes = count * np.dtype(dtype).itemsize
        if nbytes > self.limit:
            raise UnsafePickleError(f"an array of {count} elements ({nbytes} bytes) cannot come from a "
                                    f"{self.limit}-byte file")

    def ndarray(self, shape: Any, dtype: Any = float, buffer: Any = None, offset: int = 0, strides: Any = None,
                order: Any = None) -> np.ndarray:
        dtype = self.dtype(dtype)
        self._checked_size(shape, dtype)
        if strides is not None and (not isinstance(strides, (tuple, list)) or 0 in strides):
            raise UnsafePickleError(f"array strides {strides!r} are not allowed (zero strides repeat data)")
        return np.ndarray(shape, dtype, buffer, offset, strides, order)

    def reconstruct(self, cls: Any, shape: Any, dtype: Any) -> np.ndarray:
        if cls is not np.ndarray and cls != self.ndarray:
            raise UnsafePickleError(f"array of class {cls!r} is not allowed")
        self._checked_size(shape, self.dtype(dtype))
        return _reconstruct(np.ndarray, shape, dtype)

    def scalar(self, dtype: np.dtype, data: Any = None) -> Any:
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise UnsafePickleError(f"numpy scalar of dtype {dtype!r} is not allowed")
        return scalar(dtype, data)

    def allowed(self) -> dict[tuple[str, str], Callable[..., Any]]:
        modules = ("numpy.core.multiarray", "numpy._core.multiarray")
        return {**{(m, "_reconstruct"): self.reconstruct for m in modules},
                **{(m, "scalar"): self.scalar for m in modules},
                ("numpy", "ndarray"): self.ndarray, ("numpy", "dtype"): self.dtype,
                ("_codecs", "encode"): _latin1_encode}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, fh: Any, limit: int, **kwargs: Any) -> None:
        super().__init__(fh, **kwargs)
        self._allowed = _Vocabulary(limit).allowed()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"global {module}.{name} is not allowed") from None


def load_restricted(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` (Python 2 pickles decoded as latin1) allowing only containers, str/bytes, numbers
    and plain numpy arrays.

    Raises ValueError naming the file for a refused global or oversized array (``UnsafePickleError``), a
    corrupt/truncated file, or one that exhausts memory.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return _RestrictedUnpickler(fh, max(os.fstat(fh.fileno()).st_size, 64), encoding="latin1").load()
    except UnsafePickleError as exc:
        raise ValueError(f"{path}: refused to load: {exc} (not a plain data pickle; the file may be "
                         "malicious, replace it with the official one)") from None
    except MemoryError:
        raise ValueError(f"{path}: the pickle asks for more memory than this machine has; the file is damaged or "
                         "malicious, download the data set again") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            OverflowError) as exc:
        raise ValueError(f"{path}: corrupt or truncated pickle ({type(exc).__name__}: {exc}); "
                         "download the data set again") from None
