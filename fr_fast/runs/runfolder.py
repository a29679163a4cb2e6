"""Where a run writes, and who may write there.

- :func:`default_out_dir`: ``runs/<preset>/<UTC timestamp>`` so two presets (or two runs of one preset) never
  share a folder by accident; :func:`latest_run` finds the newest one again for ``--resume``.
- :class:`RunLock`: an exclusive ``flock`` on ``<out_dir>/.lock`` held for the life of a run; a second run
  into the same folder fails at once naming the holder's pid. The kernel drops the lock when the holder
  dies, even by SIGKILL, so a killed run never leaves a stale lock behind.
- :func:`claim_run_folder`: a fresh run into a folder that already holds a run's files needs ``resume``
  or ``overwrite`` (which deletes them first). :func:`hold_run_folder` does all of the above for a run.
- :func:`resume_source`: which checkpoint ``resume`` = last / auto / a path means.
- :func:`ensure_writable_dir` / :func:`ensure_writable_file`: output paths are checked before any
  computation, so an evaluation is not lost to an unwritable ``--out``.
- :func:`branch_source` / :func:`branch_label`: the checkpoint a branched run starts from (never in its own
  folder) and how the run records it (``<run>/<epoch>``).
- :func:`reconcile_best`: best.pt is written right after last.pt, so a kill between the two can leave
  best.pt behind the best epoch last.pt records; on resume (and at the end of a run) it is rewritten
  from last.pt, which then holds exactly that state (only when it is finite).
- :func:`load_resume`: the checkpoint a run continues from, refused when it holds NaN/inf (naming the last
  finite one) or when the folder has no room for the next checkpoints.

Hostile folders: the lock file is opened without following links (a planted ``.lock`` link or hard link is
refused in one line) and every other run file is replaced by rename (:mod:`fr_fast.utils.files`), so a
link planted in a run folder never makes a run write outside it. A start that fails before its first
checkpoint removes the folder it created.

Errors are :class:`RunFolderError` (a ValueError) with a one-line message that names the fix.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are then unprotected against each other
    fcntl = None  # type: ignore[assignment]

from fr_fast.runs.checkpoint import (
    NonFiniteCheckpoint,
    load_checkpoint,
    nonfinite_entries,
    remove_stale_temps,
    save_checkpoint,
)
from fr_fast.utils.files import check_free_space, disk_full, is_disk_full, nearest_existing
from fr_fast.utils.paths import local_path

RUNS_ROOT = "runs"
LOCK_NAME = ".lock"
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "metrics.csv", "run.json")


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (busy, holds another run, not writable)."""


class RunFolderBusy(RunFolderError):
    """Another live process holds the folder's run lock."""


def default_out_dir(name: str, root: str | os.PathLike = RUNS_ROOT) -> str:
    """``<root>/<name>/<YYYYmmdd-HHMMSS>`` (UTC): a new folder per run, grouped by preset name."""
    return str(Path(root) / name / time.strftime("%Y%m%d-%H%M%S", time.gmtime()))


def latest_run(name: str, root: str | os.PathLike = RUNS_ROOT) -> Path | None:
    """The newest ``<root>/<name>/<timestamp>`` folder that holds a ``last.pt``, or None."""
    runs = sorted(p.parent for p in (Path(root) / name).glob("*/last.pt"))
    return runs[-1] if runs else None


def run_dir(name: str, resume: str | None, root: str | os.PathLike = RUNS_ROOT, label: str | None = None) -> str:
    """The out_dir of a run that names none: ``<root>/<name>/<label>`` for a labelled run (``--name``); else with
    ``resume`` = last/true/auto the newest earlier run of ``name`` that has a last.pt, else (or when there is
    none) a new :func:`default_out_dir`."""
    if label:
        return str(Path(root) / name / label)
    latest = latest_run(name, root) if resume in ("last", "true", "auto") else None
    return str(latest) if latest is not None else default_out_dir(name, root)


def ensure_writable_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``path`` if needed and prove a file can be created in it; RunFolderError otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise RunFolderError(f"{what} {str(path)!r} is not writable ({exc.strerror or exc}); "
                             "choose another path") from exc
    return path


def check_dir_creatable(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Without creating anything: ``path`` is a writable folder, or the nearest existing folder above it is
    writable (so that it can be made later); RunFolderError otherwise. For checks before the expensive work."""
    path = Path(path)
    existing = nearest_existing(path)
    if not existing.is_dir():
        raise RunFolderError(f"{what} {str(path)!r} is not writable ({str(existing)!r} is a file, not a folder); "
                             "choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunFolderError(f"{what} {str(path)!r} is not writable ({str(existing)!r} does not allow it); "
                             "choose another path")
    return path


def ensure_writable_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Check that ``path`` can be written (its folder exists and is writable, it is not a folder)."""
    path = Path(path)
    if path.is_dir():
        raise RunFolderError(f"{what} {str(path)!r} is a folder; give a file name")
    if not path.parent.is_dir():
        raise RunFolderError(f"{what} {str(path)!r}: folder {str(path.parent)!r} does not exist; create it "
                             "or choose another path")
    if path.exists() and not os.access(path, os.W_OK):
        raise RunFolderError(f"{what} {str(path)!r} exists and is not writable; choose another path")
    ensure_writable_dir(path.parent, what=f"folder of the {what}")
    return path


def existing_run_files(out_dir: str | os.PathLike) -> list[str]:
    """Which of the :data:`RUN_FILES` exist in ``out_dir`` (a dangling link counts: it is not ours to ignore)."""
    return [name for name in RUN_FILES if os.path.lexists(Path(out_dir) / name)]


def claim_run_folder(out_dir: str | os.PathLike, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start a fresh run over another run's files unless ``overwrite`` (which deletes them).

    Call it while holding the folder's :class:`RunLock`.
    """
    found = existing_run_files(out_dir)
    if resume or not found:
        return
    if not overwrite:
        raise RunFolderError(f"{out_dir} already holds a run ({', '.join(found)}); pass --resume to continue "
                             "it, --overwrite to replace it, or choose another --out-dir")
    for name in found:
        (Path(out_dir) / name).unlink()


def resume_source(resume: str | None, out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint a run continues from: ``resume`` = last/true -> out_dir/last.pt (which must exist);
    auto -> out_dir/last.pt if it exists, else None (a fresh start); a path -> that file; None -> None."""
    if not resume:
        return None
    if resume not in ("last", "true", "auto"):
        return local_path(resume, "resume")
    path = Path(out_dir) / "last.pt"
    if path.is_file():
        return path
    if resume == "auto":
        return None
    raise FileNotFoundError(f"--resume: {path} does not exist (nothing to resume in {out_dir}); pass the run's "
                            "--out-dir, or --resume=auto to start afresh when there is nothing to resume")


@contextlib.contextmanager
def hold_run_folder(out_dir: str | os.PathLike, *, resuming: bool, overwrite: bool,
                    enabled: bool = True) -> Iterator[None]:
    """For the life of a run (``with``): ``out_dir`` is writable, locked by this process, holds no other run's
    files (unless ``resuming``, or ``overwrite`` which deletes them) and no temporaries of killed saves.

    When the run fails before writing its first checkpoint, the folder is removed again if this call
    created it (a failed start leaves nothing behind). ``enabled`` False (the non-writing ranks of a DDP
    run) makes it a no-op.
    """
    if not enabled:
        yield
        return
    created = _missing_folders(Path(out_dir))
    ensure_writable_dir(out_dir, "out_dir")
    try:
        with RunLock(out_dir):
            claim_run_folder(out_dir, resume=resuming, overwrite=overwrite)
            for p in remove_stale_temps(out_dir, RUN_FILES):
                print(f"removed {p}, left by an interrupted write", file=sys.stderr, flush=True)
            try:
                yield
            except BaseException:
                _remove_failed_start(Path(out_dir), created)  # while the lock is held
                raise
    except RunFolderBusy:  # the folder is another run's
        raise
    except BaseException:  # e.g. no room for the lock's pid
        _remove_failed_start(Path(out_dir), created)
        raise
    finally:
        for folder in created:  # parents this call created, innermost first; rmdir keeps any in use
            with contextlib.suppress(OSError):
                folder.rmdir()


def _remove_failed_start(out_dir: Path, created: list[Path]) -> None:
    """Remove ``out_dir`` when this run created it and wrote no checkpoint into it."""
    if created and out_dir.is_dir() and not any(os.path.lexists(out_dir / n) for n in ("last.pt", "best.pt")):
        (out_dir / LOCK_NAME).unlink(missing_ok=True)  # first: a newcomer then makes its own lock file
        shutil.rmtree(out_dir, ignore_errors=True)


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, innermost first."""
    missing = []
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def load_resume(path: str | os.PathLike, out_dir: str | os.PathLike,
                map_location: str | Any = "cpu") -> dict[str, Any]:
    """Load the checkpoint a run resumes from, refusing what would be lost work later.

    Raises :class:`NonFiniteCheckpoint` (naming the newest finite checkpoint beside it, if any) when it holds
    NaN/inf, and :class:`fr_fast.utils.files.DiskFullError` when ``out_dir`` cannot hold two more of it (the
    next last.pt and best.pt), before any training.
    """
    saved = load_checkpoint(path, map_location=map_location)
    bad = nonfinite_entries(saved)
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise NonFiniteCheckpoint(f"{path} holds non-finite values ({bad[0]}{more}) and cannot be resumed; "
                                  + _finite_hint(Path(path), Path(out_dir)))
    size = Path(path).stat().st_size
    check_free_space(out_dir, 2 * size + 2**20, f"resuming from {path} (checkpoints of {size / 2**20:.1f} MiB)")
    return saved


def _finite_hint(bad: Path, out_dir: Path) -> str:
    """Where to resume from instead: the finite checkpoint with the most epochs beside ``bad`` or in ``out_dir``."""
    best: tuple[int, Path] | None = None
    for candidate in dict.fromkeys(p for folder in (bad.parent, out_dir) for p in (folder / "last.pt",
                                                                                    folder / "best.pt")):
        if not candidate.is_file() or candidate.resolve() == bad.resolve():
            continue
        try:
            state = load_checkpoint(candidate)
        except ValueError:
            continue
        if not nonfinite_entries(state) and (best is None or state.get("epoch", 0) > best[0]):
            best = (int(state.get("epoch", 0)), candidate)
    if best is None:
        return "no finite checkpoint is left beside it: start afresh with --overwrite"
    return (f"the last finite checkpoint is {best[1]} (epoch {best[0]}): resume from it with "
            f"--resume={best[1]}")


def reconcile_best(out_dir: str | os.PathLike, last: dict[str, Any]) -> str | None:
    """Make ``out_dir/best.pt`` the checkpoint of the best epoch that ``last`` (the loaded last.pt) records.

    Returns a one-line note when best.pt was repaired or cannot be (the best epoch's state is gone: only
    possible when best.pt was deleted or damaged by hand), None when it was already right.
    """
    best_epoch = last.get("best_epoch", -1)
    if best_epoch is None or best_epoch < 1:
        return None
    path = Path(out_dir) / "best.pt"
    try:
        held_state = load_checkpoint(path) if path.is_file() else None
        held = held_state.get("epoch") if held_state is not None and not nonfinite_entries(held_state) else None
    except ValueError:  # damaged
        held = None
    if held == best_epoch:
        return None
    if last.get("epoch") == best_epoch and nonfinite_entries(last):  # never promote NaN/inf to best.pt
        return (f"warning: best.pt holds epoch {held} but the run's best is epoch {best_epoch}, and last.pt holds "
                "non-finite values; best.pt is left as it is")
    if last.get("epoch") == best_epoch:
        save_checkpoint(last, path)
        return f"best.pt repaired: it held epoch {held}, the run's best is epoch {best_epoch} (rewritten from last.pt)"
    return (f"warning: best.pt holds epoch {held} but the run's best is epoch {best_epoch}, whose weights are no "
            "longer available; best.pt is left as it is")


class RunLock:
    """Exclusive lock on a run folder for the life of a run (a context manager).

    The lock file keeps the holder's pid for the error message of the next comer. It is never deleted:
    unlinking a lock file others may have opened would let two processes hold "the" lock.
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.path = Path(out_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunFolderBusy` naming the holder's pid.

        RunFolderError when ``.lock`` is a link (symbolic or hard) or not a plain file: writing the pid through
        it would change a file outside the run folder.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # a holder removing its folder after a failed start unlinks the lock file: retry
            fd = self._open()
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                    os.close(fd)
                    raise RunFolderBusy(f"run folder {self.path.parent} is in use by process {holder} (lock file "
                                        f"{self.path}); wait for it to finish or choose another --out-dir") from None
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                    break
            os.close(fd)
        else:
            raise RunFolderBusy(f"run folder {self.path.parent} keeps changing its lock file; choose another --out-dir")
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:
            os.close(fd)
            if is_disk_full(exc):
                raise disk_full(self.path, exc) from None
            raise
        self._fd = fd
        return self

    def _open(self) -> int:
        """The lock file's descriptor, refusing links and anything but a plain file."""
        refused = RunFolderError(f"lock file {self.path} is a link or not a plain file: refused (a run writes only "
                                 "inside its folder); remove it, or choose another --out-dir")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) |
                         getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0), 0o644)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO, errno.EISDIR):
                raise refused from None
            if is_disk_full(exc):
                raise disk_full(self.path, exc) from None
            raise
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            raise refused
        return fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def branch_source(branch_from: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """The checkpoint a branch starts from; RunFolderError when it lies in the branch's own out_dir (the new
    run would overwrite it) and FileNotFoundError when it does not exist."""
    path = local_path(branch_from, "branch_from")
    if not path.is_file():
        raise FileNotFoundError(f"--branch_from: checkpoint {str(path)!r} does not exist; pass a run's last.pt "
                                "(or best.pt)")
    if path.resolve().parent == Path(out_dir).resolve():
        raise RunFolderError(f"--branch_from {str(path)!r} lies in the branch's own --out_dir; a branch is a new "
                             "run: choose another --out_dir")
    return path


def branch_label(checkpoint: str | os.PathLike, epoch: int) -> str:
    """``<run folder>/<epoch>``: how a branched run records where it comes from (run.json, checkpoints)."""
    return f"{Path(checkpoint).parent}/{epoch}"
