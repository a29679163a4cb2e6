"""The trainer under bad conditions, in-process: non-finite state with a finite loss, signals, a full disk,
resume with changed settings, run-folder rules, output checks, fp16 on the CPU. (Real kills: test_kill.py.)
"""
from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import pytest
import torch

import fr_fast.training.train as train_mod
from fr_fast.cli.train import main
from fr_fast.config.train_config import load_config
from fr_fast.runs.checkpoint import load_checkpoint
from fr_fast.training.train import TrainingDiverged, train

TINY = ["fake_data=64", "epochs=2", "lr_milestones=[1]", "batch_size=16", "max_train_batches=2", "max_val_batches=1",
        "attack_steps=1", "eval_pgd_steps=1", "model_kwargs={width: 4}", "progress=false", "device=cpu",
        "cpu_threads=1", "amp=off"]


def _cfg(out_dir: Path, *extra: str):
    return load_config("mnist_cnn_at", [*TINY, f"out_dir={out_dir}", *extra])


def _poison_weights_in_epoch(monkeypatch, bad_epoch: int) -> None:
    """Make one weight inf after the training steps of epoch ``bad_epoch`` (1-based): the loss stays finite."""
    real_validate = train_mod.validate
    calls = {"n": 0}

    def validate(model, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == bad_epoch:
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("inf")
        return real_validate(model, *args, **kwargs)

    monkeypatch.setattr(train_mod, "validate", validate)


def test_nonfinite_weights_with_finite_loss_are_never_saved(tmp_path, monkeypatch):
    _poison_weights_in_epoch(monkeypatch, bad_epoch=2)
    with pytest.raises(TrainingDiverged, match=r"non-finite values in model\.\S+ after epoch 2 \(the loss was finite\);"
                                               r" not saved; the last good checkpoint is .*last\.pt \(epoch 1\)"):
        train(_cfg(tmp_path))
    for name in ("last.pt", "best.pt"):
        state = load_checkpoint(tmp_path / name)
        assert state["epoch"] == 1
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_divergence_in_the_first_epoch_names_no_checkpoint(tmp_path, monkeypatch, capsys):
    _poison_weights_in_epoch(monkeypatch, bad_epoch=1)
    assert main(["mnist_cnn_at", *TINY, f"--out_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no checkpoint was written" in err and "last.pt" not in err
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()


def test_lr_1e6_ends_with_exit_1_and_only_finite_checkpoints(tmp_path, capsys):
    """The issue's reproduction: BN running variances overflow while the loss is still finite."""
    assert main(["mnist_cnn_at_fr", *TINY, "epochs=3", "max_train_batches=1", "--lr=1e6",
                 f"--out_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("non-finite values in" in err or "loss became" in err)
    for path in tmp_path.glob("*.pt"):
        state = load_checkpoint(path)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_after_the_current_step(tmp_path, monkeypatch, capsys, sig, code):
    real_loss = train_mod.training_loss
    calls = {"n": 0}

    def loss_then_signal(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 2, step 1: the signal arrives while the step runs
            os.kill(os.getpid(), sig)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_mod, "training_loss", loss_then_signal)
    assert main(["mnist_cnn_at", *TINY, "epochs=3", f"--out_dir={tmp_path}"]) == code
    err = capsys.readouterr().err
    assert err == f"fr-fast train: interrupted by {signal.Signals(sig).name} after step 1 of epoch 2; resume with " \
                  "--resume\n"
    assert calls["n"] == 3  # no further step ran
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    def full(obj, fh, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    assert main(["mnist_cnn_at", *TINY, "epochs=1", f"--out_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'last.pt'}" in err and "MiB free" in err


def test_resume_refuses_changed_training_and_applies_overrides(tmp_path, capsys):
    train(_cfg(tmp_path, "lr=0.05"))
    assert main(["mnist_cnn_at", *TINY, f"--out_dir={tmp_path}", "--resume", "--lr=0.2", "--method=trades"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "method 'at' -> 'trades'" in err and err.count("\n") == 1
    assert main(["mnist_cnn_at", *TINY, f"--out_dir={tmp_path}", "--resume", "--lr=0.2", "--epochs=3"]) == 2
    assert "--resume-override" in capsys.readouterr().err

    summary = train(_cfg(tmp_path, "resume=last", "lr=0.2", "epochs=3"), resume_override=True)
    third = summary["history"][2]
    assert third["epoch"] == 3 and third["lr"] == pytest.approx(0.2 * 0.1)  # milestone 1 passed: x lr_gamma
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["config"]["lr"] == 0.2 and state["config"]["epochs"] == 3
    assert state["resume_overrides"] == [{"from_epoch": 3, "lr": [0.05, 0.2], "epochs": [2, 3]}]
    assert state["optimizer"]["param_groups"][0]["initial_lr"] == 0.2


def test_run_folder_rules(tmp_path, capsys):
    train(_cfg(tmp_path, "epochs=1"))
    before = (tmp_path / "last.pt").read_bytes()
    assert main(["mnist_cnn_at", *TINY, "epochs=1", f"--out_dir={tmp_path}"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "last.pt").read_bytes() == before
    assert main(["mnist_cnn_at", *TINY, "epochs=1", "seed=1", f"--out_dir={tmp_path}", "--overwrite"]) == 0
    assert load_checkpoint(tmp_path / "last.pt")["config"]["seed"] == 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1

    fresh = tmp_path / "fresh"
    assert main(["mnist_cnn_at", *TINY, "epochs=1", f"--out_dir={fresh}", "--resume=auto"]) == 0  # nothing to resume
    assert main(["mnist_cnn_at", *TINY, "epochs=2", f"--out_dir={fresh}", "--resume=auto", "--resume-override"]) == 0
    assert [json.loads(line)["epoch"] for line in (fresh / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    capsys.readouterr()
    assert main(["mnist_cnn_at", *TINY, f"--out_dir={tmp_path / 'none'}", "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_unwritable_out_dir_fails_before_any_work(tmp_path, monkeypatch, capsys):
    def no_work(*args, **kwargs):
        raise AssertionError("data was loaded before out_dir was checked")

    monkeypatch.setattr(train_mod, "_datasets", no_work)
    (tmp_path / "file").write_text("")
    assert main(["mnist_cnn_at", *TINY, f"--out_dir={tmp_path / 'file' / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not writable" in err


def test_fp16_on_cpu_warns(tmp_path, capsys):
    train(_cfg(tmp_path, "amp=fp16", "epochs=1", "max_train_batches=1"))
    assert "amp=fp16 on the CPU is emulated and slow" in capsys.readouterr().err


def test_best_pt_is_reconciled_at_the_end_of_a_run(tmp_path, monkeypatch, capsys):
    scores = iter([10.0, 20.0])  # every epoch improves: best.pt is due after each one
    monkeypatch.setattr(train_mod, "validate", lambda *a, **k: dict.fromkeys(("val_clean", "val_pgd"), next(scores)))
    real_save = train_mod.save_checkpoint

    def lose_the_last_best_write(state, path):
        if not (Path(path).name == "best.pt" and state["epoch"] == 2):
            real_save(state, path)

    monkeypatch.setattr(train_mod, "save_checkpoint", lose_the_last_best_write)
    train(_cfg(tmp_path))
    assert "best.pt repaired: it held epoch 1, the run's best is epoch 2" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
