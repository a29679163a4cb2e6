"""Writing result files so that a crash, a full disk or a planted link never costs or corrupts work.

- :func:`atomic_write`: every file fr_fast writes (checkpoints, ``run.json``, ``metrics.*``, eval reports,
  analysis tables and figures) goes to a temporary file beside its target, is fsynced and renamed over
  it, so a reader or a crash sees the old file or the new one, never a torn or empty one. The rename
  replaces a symbolic link planted at the target instead of writing through it, so nothing is written
  outside the folder. The file gets the permissions of a plain ``open()`` (``0o666`` minus the umask).
- :class:`DiskFullError`: ENOSPC/EDQUOT at any of those writes, one line naming the path and the free
  space (exit status 1); the temporary file is removed, the previous file is untouched.
- :func:`check_free_space`: refuse early (before hours of work) when a folder cannot hold what will be written.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator

TEMP_SUFFIX = ".tmp"


class DiskFullError(OSError):
    """No space left to write a file; the message names the path and the free space (exit status 1)."""

    exit_code = 1

    def __str__(self) -> str:  # OSError(errno, text) would print "[Errno 28] text"
        return self.strerror or super().__str__()


def is_disk_full(exc: BaseException | None) -> bool:
    """ENOSPC/EDQUOT, also when a library wraps it (torch.save's zip writer raises a RuntimeError)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(exc, RuntimeError) and ("No space left" in str(exc) or "file write failed" in str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def nearest_existing(path: str | os.PathLike) -> Path:
    """``path`` itself if it exists, else its nearest existing parent (where a folder for it would be made)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(folder: str | os.PathLike) -> int:
    """Free bytes on the file system of ``folder`` (or of its nearest existing parent; 0 when it cannot be asked)."""
    try:
        return shutil.disk_usage(nearest_existing(Path(folder).absolute())).free
    except OSError:
        return 0


def disk_full(path: str | os.PathLike, exc: BaseException | None = None) -> DiskFullError:
    """The :class:`DiskFullError` of a failed write of ``path``."""
    folder = Path(path).parent
    full = DiskFullError(errno.ENOSPC, f"no space left on the device writing {path} "
                         f"({free_bytes(folder) / 2**20:.2f} MiB free in {folder}); free space or write elsewhere")
    full.__cause__ = exc
    return full


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *, newline: str | None = None,
                 before_rename=None) -> Iterator[IO]:
    """``with atomic_write(path) as fh: fh.write(...)``: the content appears at ``path`` only when the block ends
    without an exception (temporary file + fsync + rename + fsync of the folder).

    ``mode`` is "w" (text, UTF-8) or "wb". ``before_rename`` (tests) is called between the fsync and the rename.
    Raises :class:`DiskFullError` when the disk is full; the temporary file never survives a failure.
    """
    path = Path(path)
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; results are shared like any other file
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": newline})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_disk_full(exc):
            raise disk_full(path, exc) from None
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_write`; returns the path."""
    with atomic_write(path) as fh:
        fh.write(text)
    return Path(path)


def check_free_space(folder: str | os.PathLike, needed: int, what: str) -> None:
    """DiskFullError (one line) unless ``folder`` has at least ``needed`` bytes free; ``what`` says what for."""
    free = free_bytes(folder)
    if free < needed:
        raise DiskFullError(errno.ENOSPC, f"{folder} has {free / 2**20:.2f} MiB free but {what} needs about "
                            f"{needed / 2**20:.2f} MiB; free space or choose another folder")


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> Path:
    """``fig.savefig`` through :func:`atomic_write` (the format from the file's suffix); returns the path."""
    path = Path(path)
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format=path.suffix.lstrip(".") or "png", **savefig_kwargs)
    return path
