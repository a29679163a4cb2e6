"""A checkpoint holding NaN is never resumed, promoted to best.pt or evaluated (issue 26, D1).

Before the fix a last.pt with a NaN weight was copied over best.pt on resume ("best.pt repaired"), the error
called it "the last good checkpoint", and ``fr-fast eval`` of it reported an accuracy with exit status 0.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from fr_fast.cli import main as cli
from fr_fast.config.train_config import load_config
from fr_fast.runs.checkpoint import NonFiniteCheckpoint, load_checkpoint, load_model, save_checkpoint
from fr_fast.runs.runfolder import load_resume, reconcile_best
from fr_fast.training.train import train

TINY = ["fake_data=32", "epochs=2", "lr_milestones=[]", "batch_size=16", "max_train_batches=1",
        "max_val_batches=1", "attack_steps=1", "eval_pgd_steps=1", "model_kwargs={width: 2}", "progress=false",
        "device=cpu", "cpu_threads=1", "amp=off", "select_by=clean"]


def _poison(path: Path, **changes) -> dict:
    state = load_checkpoint(path)
    next(iter(v for v in state["model"].values() if v.is_floating_point())).view(-1)[0] = float("nan")
    state.update(changes)
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "version")}, path)
    return state


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(load_config("mnist_cnn_at", [*TINY, f"out_dir={out}"]))
    return out


def test_resume_refuses_a_nan_last_pt_and_names_the_last_finite_one(run, tmp_path, capsys):
    out = tmp_path / "copy"
    out.mkdir()
    for name in ("last.pt", "best.pt", "run.json", "metrics.jsonl", "metrics.csv"):
        (out / name).write_bytes((run / name).read_bytes())
    best_before = (out / "best.pt").read_bytes()
    _poison(out / "last.pt", best_epoch=2)
    assert cli.main(["train", "mnist_cnn_at", *TINY, "epochs=3", f"--out-dir={out}", "--resume",
                     "--resume-override"]) == 2
    err = capsys.readouterr().err
    best_epoch = load_checkpoint(out / "best.pt")["epoch"]
    assert err.count("\n") == 1 and "holds non-finite values (model." in err
    assert f"the last finite checkpoint is {out / 'best.pt'} (epoch {best_epoch})" in err
    assert (out / "best.pt").read_bytes() == best_before  # not "repaired" from the NaN last.pt


def test_resume_with_no_finite_checkpoint_left_says_so(run, tmp_path):
    (tmp_path / "last.pt").write_bytes((run / "last.pt").read_bytes())
    _poison(tmp_path / "last.pt")
    with pytest.raises(NonFiniteCheckpoint, match="no finite checkpoint is left beside it"):
        load_resume(tmp_path / "last.pt", tmp_path)


def test_reconcile_never_promotes_a_nan_last_pt(run, tmp_path):
    (tmp_path / "best.pt").write_bytes((run / "best.pt").read_bytes())
    (tmp_path / "last.pt").write_bytes((run / "last.pt").read_bytes())
    before = (tmp_path / "best.pt").read_bytes()
    last = _poison(tmp_path / "last.pt", best_epoch=2)
    note = reconcile_best(tmp_path, last)
    assert note is not None and "non-finite" in note and "left as it is" in note
    assert (tmp_path / "best.pt").read_bytes() == before


@pytest.mark.parametrize("command", ["eval", "analyze"])
def test_eval_and_analyze_refuse_nan_weights(run, tmp_path, capsys, command):
    (tmp_path / "best.pt").write_bytes((run / "best.pt").read_bytes())
    _poison(tmp_path / "best.pt")
    extra = ["--attacks=clean", "--no-eps-curve"] if command == "eval" else [f"--out={tmp_path / 'a'}", "--what=lpf"]
    assert cli.main([command, str(tmp_path / "best.pt"), "--device=cpu", "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds non-finite student weights" in err


def test_load_model_accepts_finite_weights(run):
    model, cfg = load_model(run / "best.pt")
    assert cfg["weights"] == "student" and not model.training
