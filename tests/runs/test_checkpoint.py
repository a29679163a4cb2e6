"""Atomic, durable checkpoints, orphaned temporaries, full disk, finite-state check, loading errors, RNG
state round trip, and load_model."""
from __future__ import annotations

import errno
import os
import random
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from fr_fast.runs.checkpoint import (
    DiskFullError,
    load_checkpoint,
    load_model,
    nonfinite_entries,
    remove_stale_temps,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def test_round_trip(tmp_path: Path):
    path = tmp_path / "sub" / "a.pt"
    save_checkpoint({"w": torch.arange(3), "epoch": 2}, path)
    state = load_checkpoint(path)
    assert state["epoch"] == 2 and torch.equal(state["w"], torch.arange(3))
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary file left behind


def test_failing_save_keeps_old_file(tmp_path: Path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)
    before = path.read_bytes()

    def broken_save(obj, fh, *args, **kwargs):
        fh.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1


def test_missing_and_foreign_files(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nope.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="not an fr_fast checkpoint"):
        load_checkpoint(foreign)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a readable fr_fast checkpoint"):
        load_checkpoint(text)


def test_rng_round_trip():
    state = rng_state()
    first = (torch.rand(3), np.random.rand(2), random.random())
    set_rng_state(state)
    second = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]


def test_load_model(tmp_path: Path):
    from fr_fast.models import build_model

    kwargs = dict(name="small_cnn", num_classes=10, in_channels=1, mean=None, std=None, width=4)
    model = build_model(**kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    save_checkpoint({"config": {"dataset": "mnist", "data_dir": None, "model": "small_cnn", "eps": 0.3},
                     "model_kwargs": kwargs, "model": model.state_dict()}, tmp_path / "m.pt")
    loaded, cfg = load_model(tmp_path / "m.pt")
    assert not loaded.training
    assert cfg["num_classes"] == 10 and cfg["dataset"] == "mnist" and cfg["eps"] == 0.3
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_load_model_of_an_l_model_written_before_the_low_pass_layer(tmp_path: Path):
    """Older checkpoints name the L-model's bandwidth only in their config: load_model builds the filter."""
    from fr_fast.models import LowPass, build_model
    from fr_fast.spectral.fourier import low_pass

    kwargs = dict(name="small_cnn", num_classes=10, in_channels=1, mean=None, std=None, width=4)
    model = build_model(**kwargs).eval()
    save_checkpoint({"config": {"dataset": "mnist", "data_dir": None, "model": "small_cnn", "eps": 0.3,
                                "low_pass_bandwidth": 8},
                     "model_kwargs": kwargs, "model": model.state_dict()}, tmp_path / "l.pt")
    loaded, _ = load_model(tmp_path / "l.pt")
    assert isinstance(loaded[0], LowPass) and loaded[0].bandwidth == 8
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model(low_pass(x, 8, clip=True)))


def test_save_fsyncs_file_and_folder(tmp_path: Path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    save_checkpoint({"epoch": 1}, tmp_path / "last.pt")
    assert synced == [False, True]  # the temporary file, then the folder after the rename


def test_remove_stale_temps_only_removes_orphans(tmp_path: Path):
    save_checkpoint({"epoch": 1}, tmp_path / "last.pt")
    orphans = [tmp_path / ".last.pt.ab12cd.tmp", tmp_path / ".best.pt.x_9.tmp"]
    keep = [tmp_path / "last.pt", tmp_path / "notes.tmp", tmp_path / ".lock", tmp_path / "metrics.jsonl"]
    for p in orphans + keep[1:]:
        p.write_bytes(b"partial")
    assert sorted(remove_stale_temps(tmp_path)) == sorted(orphans)
    assert sorted(tmp_path.iterdir()) == sorted(keep)
    assert remove_stale_temps(tmp_path / "missing") == []


def test_remove_stale_temps_of_every_run_file(tmp_path: Path):
    """A kill inside the atomic write of run.json or metrics.* leaves its temporary file too."""
    from fr_fast.runs.runfolder import RUN_FILES

    orphans = [tmp_path / ".run.json.k2j.tmp", tmp_path / ".metrics.csv.q1.tmp", tmp_path / ".last.pt.z.tmp"]
    keep = [tmp_path / ".notes.txt.a.tmp", tmp_path / "run.json"]
    for p in orphans + keep:
        p.write_bytes(b"partial")
    assert remove_stale_temps(tmp_path) == [tmp_path / ".last.pt.z.tmp"]  # default: checkpoints only
    orphans.pop()
    assert sorted(remove_stale_temps(tmp_path, RUN_FILES)) == sorted(orphans)
    assert sorted(tmp_path.iterdir()) == sorted(keep)


def test_disk_full_is_one_line_with_path_and_free_space(tmp_path: Path, monkeypatch):
    path = tmp_path / "last.pt"

    def full_disk(obj, fh, *args, **kwargs):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DiskFullError) as info:
        save_checkpoint({"epoch": 2}, path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "MiB free" in message
    assert list(tmp_path.iterdir()) == []  # the partial temporary file is gone

    def zip_writer_error(obj, fh, *args, **kwargs):  # torch's zip writer wraps the OSError
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0") from \
            OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", zip_writer_error)
    with pytest.raises(DiskFullError):
        save_checkpoint({"epoch": 2}, path)


def test_nonfinite_entries_names_every_bad_tensor():
    state = {"model": {"w": torch.ones(3), "bn.running_var": torch.tensor([1.0, float("inf")]),
                       "bn.num_batches_tracked": torch.tensor(5)},
             "optimizer": {"state": {0: {"momentum_buffer": torch.tensor([float("nan")], dtype=torch.bfloat16)}}},
             "teacher": None, "history": [{"loss": 1.0}], "rng": {"torch": torch.zeros(4, dtype=torch.uint8)}}
    assert nonfinite_entries(state) == ["model.bn.running_var", "optimizer.state.0.momentum_buffer"]
    state["model"]["bn.running_var"][1] = 2.0
    state["optimizer"]["state"][0]["momentum_buffer"].zero_()
    assert nonfinite_entries(state) == []
    assert nonfinite_entries({"empty": torch.empty(0), "none": None}) == []


def test_nonfinite_entries_one_host_sync_when_finite(monkeypatch):
    calls = {"n": 0}
    real = torch.Tensor.tolist

    def counting(self):
        calls["n"] += 1
        return real(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting)
    assert nonfinite_entries({f"p{i}": torch.randn(10) for i in range(50)}) == []
    assert calls["n"] == 1


def test_disk_full_error_keeps_its_errno(tmp_path: Path, monkeypatch):
    def full(obj, fh, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFullError) as info:
        save_checkpoint({}, tmp_path / "x.pt")
    assert info.value.errno == errno.ENOSPC and str(info.value).startswith("no space left on the device writing")
