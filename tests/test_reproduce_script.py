"""experiments/reproduce_cpu.py runs any subset of --methods: analyses whose model is missing are skipped."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from fr_fast.models import build_model
from fr_fast.runs.checkpoint import save_checkpoint

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "reproduce_cpu.py"


def _script():
    spec = importlib.util.spec_from_file_location("reproduce_cpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_spectral_stage_with_a_subset_of_methods(tmp_path, capsys):
    script = _script()
    kwargs = dict(name="small_cnn", num_classes=10, in_channels=1, width=4)
    path = tmp_path / "at.pt"
    save_checkpoint({"config": {"dataset": "fashion_mnist", "model": "small_cnn", "eps": 0.1},
                     "model_kwargs": kwargs, "model": build_model(**kwargs).state_dict()}, path)
    test_set = TensorDataset(torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,)))
    args = argparse.Namespace(n_spectral=4, out=tmp_path / "out", pad_to=8, epochs=1, train_batches=1, n_test=4,
                              aa_version="fast", aa_steps=1, n_aa=4)
    records = {"at": [{"checkpoint": str(path), "accuracy": {a: 50.0 for a in script.ATTACKS}}]}
    analyses = script.spectral_analyses(records, args, test_set)  # was: KeyError 'natural'
    printed = capsys.readouterr().out.splitlines()
    assert [line for line in printed if "skipping" in line] == [
        "spectral analyses: skipping the natural model ('natural' is not among --methods)",
        "spectral analyses: skipping the AT+FR model ('at_fr' is not among --methods)"]
    assert list(analyses["low"]) == ["AT"] and set(analyses["low"]["AT"]) == {4, 8}
    markdown = script.tables(records, analyses, args)
    assert "| at | 1 |" in markdown and "| AT | LPF |" in markdown
    empty = script.spectral_analyses({}, args, test_set)
    assert empty["low"] == {} and "filtered" not in script.tables({}, empty, args)
