"""Run folders: default names, the run lock, protection of a previous run's files, writable checks."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fr_fast.cli import runs
from fr_fast.config.train_config import load_config
from fr_fast.runs.runfolder import (
    RunFolderBusy,
    RunFolderError,
    RunLock,
    claim_run_folder,
    default_out_dir,
    ensure_writable_dir,
    ensure_writable_file,
    latest_run,
    run_dir,
)


def test_default_out_dir_has_preset_and_timestamp(tmp_path):
    out = default_out_dir("mnist_cnn_at", root=tmp_path)
    assert re.fullmatch(re.escape(str(tmp_path / "mnist_cnn_at")) + r"/\d{8}-\d{6}", out)
    assert latest_run("mnist_cnn_at", root=tmp_path) is None
    for stamp in ("20260101-000000", "20260102-000000", "20260103-000000"):
        (tmp_path / "mnist_cnn_at" / stamp).mkdir(parents=True)
    for stamp in ("20260101-000000", "20260102-000000"):  # the newest folder has no checkpoint yet
        (tmp_path / "mnist_cnn_at" / stamp / "last.pt").write_bytes(b"x")
    assert latest_run("mnist_cnn_at", root=tmp_path) == tmp_path / "mnist_cnn_at" / "20260102-000000"


def test_lock_excludes_a_second_holder_and_names_its_pid(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunFolderBusy, match=rf"in use by process {os.getpid()} "):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path):  # released on exit: free again
        pass


def test_lock_of_a_killed_holder_is_free(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from fr_fast.runs.runfolder import RunLock; "
                               f"RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=rf"in use by process {holder.pid} "):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())


def test_claim_protects_an_existing_run(tmp_path):
    claim_run_folder(tmp_path, resume=False, overwrite=False)  # empty: fine
    (tmp_path / "last.pt").write_bytes(b"old")
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match=r"already holds a run \(last.pt, metrics.jsonl\); pass --resume .*"
                                             r"--overwrite"):
        claim_run_folder(tmp_path, resume=False, overwrite=False)
    claim_run_folder(tmp_path, resume=True, overwrite=False)
    assert (tmp_path / "last.pt").exists()
    claim_run_folder(tmp_path, resume=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_paths(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(RunFolderError, match="not writable"):
            ensure_writable_dir(ro / "run")
        with pytest.raises(RunFolderError, match="not writable"):
            ensure_writable_file(ro / "r.json")
    finally:
        ro.chmod(0o700)


def test_writable_checks(tmp_path):
    assert ensure_writable_dir(tmp_path / "a" / "b").is_dir()
    assert ensure_writable_file(tmp_path / "r.json") == tmp_path / "r.json"
    assert list(tmp_path.glob(".write-test-*")) == []
    with pytest.raises(RunFolderError, match="does not exist"):
        ensure_writable_file("/nonexistent/r.json")
    with pytest.raises(RunFolderError, match="is a folder"):
        ensure_writable_file(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(RunFolderError, match="not writable"):
        ensure_writable_dir(tmp_path / "file" / "sub")


def test_run_dir_names_new_runs_and_finds_the_one_to_resume(tmp_path):
    assert Path(run_dir("mnist_cnn_at", None, root=tmp_path)).parent == tmp_path / "mnist_cnn_at"
    assert Path(run_dir("mnist_cnn_at", "auto", root=tmp_path)).parent == tmp_path / "mnist_cnn_at"  # none yet
    assert Path(run_dir("mnist_cnn_at", "last", root=tmp_path)).parent == tmp_path / "mnist_cnn_at"  # train says
    old = tmp_path / "mnist_cnn_at" / "20260101-000000"
    old.mkdir(parents=True)
    (old / "last.pt").write_bytes(b"x")
    assert run_dir("mnist_cnn_at", "last", root=tmp_path) == str(old)
    assert run_dir("mnist_cnn_at", "auto", root=tmp_path) == str(old)
    assert run_dir("mnist_cnn_at", None, root=tmp_path) != str(old)
    assert run_dir("other", "auto", root=tmp_path).startswith(str(tmp_path / "other"))


def test_presets_get_their_own_timestamped_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = load_config("mnist_cnn_at").out_dir, load_config("mnist_cnn_at_fr").out_dir
    assert re.fullmatch(r"runs/mnist_cnn_at/\d{8}-\d{6}", a) and re.fullmatch(r"runs/mnist_cnn_at_fr/\d{8}-\d{6}", b)
    assert load_config("mnist_cnn_at", ["--out_dir=mine"]).out_dir == "mine"
    (tmp_path / "runs" / "mnist_cnn_at" / "20260101-000000").mkdir(parents=True)
    (tmp_path / "runs" / "mnist_cnn_at" / "20260101-000000" / "last.pt").write_bytes(b"x")
    assert load_config("mnist_cnn_at", ["--resume"]).out_dir == "runs/mnist_cnn_at/20260101-000000"


@pytest.mark.parametrize("command", [runs.main, runs.compare_main])
def test_runs_and_compare_check_the_plot_path_first(tmp_path, capsys, command):
    assert command([str(tmp_path), "--plot", "/nonexistent/curves.png"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--plot file '/nonexistent/curves.png'" in err and "does not exist" in err
