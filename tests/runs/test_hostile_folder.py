"""Run folders that someone tampered with: planted links, damaged files, concurrent readers, umask, failed starts.

Each test reproduces a failure found by trying (issue 26, S1/C1): before the fix a planted link made a run
write outside its folder, a reader saw empty files, one damaged folder broke ``fr-fast runs``.
"""
from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from fr_fast.cli import main as cli
from fr_fast.config.train_config import load_config
from fr_fast.runs.checkpoint import save_checkpoint
from fr_fast.runs.metrics_log import MetricsLog
from fr_fast.runs.runfolder import RunFolderError, RunLock, claim_run_folder, hold_run_folder
from fr_fast.training.train import train

TINY = ["fake_data=32", "epochs=1", "lr_milestones=[]", "batch_size=16", "max_train_batches=1", "max_val_batches=1",
        "attack_steps=1", "eval_pgd_steps=1", "model_kwargs={width: 2}", "progress=false", "device=cpu",
        "cpu_threads=1", "amp=off"]


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    return victim


def test_planted_lock_symlink_is_refused_and_the_target_untouched(tmp_path):
    victim, run = _victim(tmp_path), tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(victim)
    with pytest.raises(RunFolderError, match=r"lock file .*\.lock is a link or not a plain file: refused"):
        RunLock(run).acquire()
    assert victim.read_text() == "precious\n"
    (run / ".lock").unlink()
    os.link(victim, run / ".lock")  # a hard link writes into the victim just as well
    with pytest.raises(RunFolderError, match="is a link"):
        RunLock(run).acquire()
    assert victim.read_text() == "precious\n"


def test_train_with_a_planted_lock_link_is_one_line_exit_2(tmp_path, capsys):
    victim, run = _victim(tmp_path), tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(victim)
    assert cli.main(["train", "mnist_cnn_at", *TINY, f"--out-dir={run}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a link" in err
    assert victim.read_text() == "precious\n"


def test_resume_replaces_planted_metric_links_instead_of_writing_through_them(tmp_path):
    run = tmp_path / "run"
    train(load_config("mnist_cnn_at", [*TINY, f"out_dir={run}"]))
    victims = {}
    for name in ("run.json", "metrics.jsonl", "metrics.csv"):
        victims[name] = tmp_path / f"victim_{name}"
        victims[name].write_text("precious\n")
        (run / name).unlink()
        (run / name).symlink_to(victims[name])
    train(load_config("mnist_cnn_at", [*TINY, "epochs=2", f"out_dir={run}", "resume=auto"]), resume_override=True)
    for name, victim in victims.items():
        assert victim.read_text() == "precious\n"
        assert not (run / name).is_symlink() and (run / name).stat().st_size > 0
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_dangling_link_counts_as_a_run_file(tmp_path):
    (tmp_path / "last.pt").symlink_to(tmp_path / "nowhere.pt")
    with pytest.raises(RunFolderError, match=r"already holds a run \(last\.pt\)"):
        claim_run_folder(tmp_path, resume=False, overwrite=False)
    claim_run_folder(tmp_path, resume=False, overwrite=True)  # --overwrite removes the link itself
    assert not os.path.lexists(tmp_path / "last.pt")


def test_concurrent_readers_never_see_a_torn_metrics_file(tmp_path):
    log = MetricsLog(tmp_path, [], {"config": {}})
    done, seen = threading.Event(), []

    def writer():
        for epoch in range(1, 81):
            log.append({"epoch": epoch, "train_loss": 1.0 / epoch})
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    while not done.is_set():
        for name in ("metrics.jsonl", "metrics.csv", "run.json"):
            text = (tmp_path / name).read_text()
            seen.append(text)
            if name == "metrics.jsonl":
                rows = [json.loads(line) for line in text.splitlines()]
                assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
            else:
                assert text  # header or JSON: never an empty file
    thread.join()
    assert len(seen) > 3 and not list(tmp_path.glob("*.tmp"))


def test_runs_skips_and_names_a_damaged_folder(tmp_path, capsys):
    for name in ("good", "bad"):
        (tmp_path / name).mkdir()
        log = MetricsLog(tmp_path / name, [], {"config": {"epochs": 1, "method": "at"}})
        log.append({"epoch": 1, "val_clean": 50.0, "val_pgd": 20.0})
    (tmp_path / "bad" / "run.json").write_bytes(b"\xff\xfe{not json")
    assert cli.main(["runs", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "| good " in captured.out and "bad" not in captured.out
    assert captured.err.count("\n") == 1 and "damaged run folder" in captured.err and "bad" in captured.err


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        save_checkpoint({"epoch": 1}, tmp_path / "last.pt")
        MetricsLog(tmp_path, [], {"config": {}})
    finally:
        os.umask(old)
    for name in ("last.pt", "run.json", "metrics.jsonl", "metrics.csv"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name


def test_a_failed_start_leaves_no_folder(tmp_path):
    out = tmp_path / "runs" / "preset" / "20260101-000000"
    with pytest.raises(ValueError, match="boom"):
        with hold_run_folder(out, resuming=False, overwrite=False):
            (out / "run.json").write_text("{}")
            raise ValueError("boom")
    assert not (tmp_path / "runs").exists()
    existing = tmp_path / "kept"
    existing.mkdir()
    with pytest.raises(ValueError):
        with hold_run_folder(existing, resuming=False, overwrite=False):
            raise ValueError("boom")
    assert existing.is_dir()  # a folder the user made stays


def test_a_failed_cli_start_leaves_no_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "mnist_cnn_at", *TINY, "fake_data=0", "dataset=cifar10",
                     f"data_dir={tmp_path / 'nodata'}"]) == 2
    assert "CIFAR-10" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_folder_given_as_checkpoint_is_called_a_folder(tmp_path, capsys):
    assert cli.main(["eval", str(tmp_path), "--device=cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") <= 2 and "is a folder" in err and "best.pt" in err

