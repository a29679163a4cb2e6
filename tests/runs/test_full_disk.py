"""A full disk at every write is one line and exit status 1, and leaves no empty or partial file (issue 26, F1).

Two ways: a real full file system (a small tmpfs; needs root, skipped otherwise) and ENOSPC injected into
the write itself (everywhere). Before the fix the lock's pid, the metrics append, ``eval --out`` and
``analyze --out`` ended in tracebacks, the last two leaving 0-byte files after the whole computation, and a
resume onto a full disk trained a whole epoch before failing.
"""
from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from fr_fast.cli import main as cli
from fr_fast.config.train_config import load_config
from fr_fast.training.train import train

TINY = ["fake_data=32", "epochs=1", "lr_milestones=[]", "batch_size=16", "max_train_batches=1", "max_val_batches=1",
        "attack_steps=1", "eval_pgd_steps=1", "model_kwargs={width: 2}", "progress=false", "device=cpu",
        "cpu_threads=1", "amp=off"]
EVAL = ["--n-examples=4", "--batch-size=4", "--attacks=clean", "--no-eps-curve", "--no-progress", "--device=cpu"]
ANALYZE = ["--what=lpf", "--n-images=4", "--bandwidths", "4", "--no-progress", "--device=cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(load_config("mnist_cnn_at", [*TINY, f"out_dir={out}"]))
    return out


@pytest.fixture
def full_fs(tmp_path):
    """A 512 KiB tmpfs filled to the last byte (root only: skipped where it cannot be mounted)."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        with open(mount / "filler", "wb", buffering=0) as fh:
            try:
                while True:
                    fh.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _one_line_exit_1(code: int, err: str, path_part: str) -> None:
    assert code == 1, err
    assert err.count("\n") == 1 and "no space left on the device writing" in err and path_part in err, err


def test_train_on_a_full_disk_fails_at_the_lock_and_leaves_no_folder(full_fs, capsys):
    out = full_fs / "runs" / "new"
    _one_line_exit_1(cli.main(["train", "mnist_cnn_at", *TINY, f"--out-dir={out}"]), capsys.readouterr().err, ".lock")
    assert not (full_fs / "runs").exists()


def test_resume_onto_a_full_disk_fails_before_training(run, full_fs, capsys):
    out = full_fs / "resume"
    out.mkdir()
    (full_fs / "filler").unlink()  # room for the copy and the lock, not for two more checkpoints
    for name in ("last.pt", "best.pt", "run.json", "metrics.jsonl", "metrics.csv"):
        (out / name).write_bytes((run / name).read_bytes())
    with open(full_fs / "filler", "wb", buffering=0) as fh:
        free = os.statvfs(full_fs).f_bavail * os.statvfs(full_fs).f_frsize
        fh.write(b"\0" * max(0, free - 2 * (run / "last.pt").stat().st_size + 8192))
    assert cli.main(["train", "mnist_cnn_at", *TINY, "epochs=2", f"--out-dir={out}", "--resume",
                     "--resume-override"]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "MiB free but resuming from" in captured.err
    assert "epoch   2/2" not in captured.out
    assert [line for line in (out / "metrics.jsonl").read_text().splitlines()] == \
        (run / "metrics.jsonl").read_text().splitlines()


@pytest.mark.parametrize("command", ["eval", "analyze"])
def test_reports_onto_a_full_disk_leave_no_empty_file(run, full_fs, capsys, command):
    target = full_fs / ("report.json" if command == "eval" else "analysis")
    argv = [command, str(run / "best.pt"), f"--out={target}", *(EVAL if command == "eval" else ANALYZE)]
    _one_line_exit_1(cli.main(argv), capsys.readouterr().err, str(full_fs))
    left = [p for p in full_fs.rglob("*") if p.name != "filler" and p.is_file()]
    assert left == []


@pytest.mark.parametrize("victim", ["run.json", "metrics.jsonl", "metrics.csv", "report.json", "meta.json",
                                    "filtered_accuracy.png"])
def test_injected_enospc_at_each_write_is_one_line(run, tmp_path, monkeypatch, capsys, victim):
    """ENOSPC raised by the fsync of one file (where a full disk reports itself on some file systems)."""
    real_fsync = os.fsync

    def fsync(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{victim}."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    if victim in ("run.json", "metrics.jsonl", "metrics.csv"):
        argv = ["train", "mnist_cnn_at", *TINY, f"--out-dir={tmp_path / 'run'}"]
    elif victim == "report.json":
        argv = ["eval", str(run / "best.pt"), f"--out={tmp_path / victim}", *EVAL]
    else:
        argv = ["analyze", str(run / "best.pt"), f"--out={tmp_path / 'analysis'}", *ANALYZE]
    _one_line_exit_1(cli.main(argv), capsys.readouterr().err, victim)
    assert not list(tmp_path.rglob(f"*{victim}*"))  # neither the file nor its temporary
