"""Read the CIFAR python pickles without letting them run code.

``pickle.load`` calls whatever callable a file names, so a ``data_batch_1`` planted in a data folder (for
example one a shared checkpoint points to) could run a shell command. :func:`load_restricted` accepts only
what the official CIFAR files contain: dicts, lists, tuples, str/bytes, numbers and plain numpy arrays;
any other global a file names raises :class:`UnsafePickleError` before it is called.
"""
from __future__ import annotations

import codecs
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


def _array_reconstruct(cls: Any, shape: Any, dtype: Any) -> np.ndarray:
    if cls is not np.ndarray:
        raise UnsafePickleError(f"array of class {cls!r} is not allowed")
    return _reconstruct(cls, shape, dtype)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1").
    if codecs.lookup(encoding).name != "iso8859-1":
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin1")


def _scalar(dtype: np.dtype, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError(f"numpy scalar of dtype {dtype!r} is not allowed")
    return scalar(dtype, data)


def _plain_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise UnsafePickleError("object arrays are not allowed")
    return dtype


_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    **{(mod, "_reconstruct"): _array_reconstruct for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(mod, "scalar"): _scalar for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _plain_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"global {module}.{name} is not allowed") from None


def load_restricted(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` (Python 2 pickles decoded as latin1) allowing only containers, str/bytes, numbers
    and plain numpy arrays.

    Raises ValueError naming the file for a refused global (``UnsafePickleError``) or a corrupt/truncated file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return _RestrictedUnpickler(fh, encoding="latin1").load()
    except UnsafePickleError as exc:
        raise ValueError(f"{path}: refused to load: {exc} (not a plain data pickle; the file may be "
                         "malicious, replace it with the official one)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"{path}: corrupt or truncated pickle ({type(exc).__name__}: {exc}); "
                         "download the data set again") from None
