"""Atomic checkpoints, loading errors, RNG state round trip, and load_model."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from fr_fast.checkpoint import load_checkpoint, load_model, rng_state, save_checkpoint, set_rng_state


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
