"""Resume rules (which config changes are refused or applied), signal stop, and best.pt reconciliation."""
from __future__ import annotations

import os
import signal

import pytest
import torch

from fr_fast.config.train_config import TrainConfig, config_to_dict
from fr_fast.runs.checkpoint import load_checkpoint, save_checkpoint
from fr_fast.runs.runfolder import reconcile_best
from fr_fast.training.interrupt import Interrupted, StopOnSignal
from fr_fast.training.resume import apply_schedule_overrides, check_resume, override_record, resume_changes


def test_run_control_fields_may_change_training_fields_may_not():
    saved = config_to_dict(TrainConfig(lr=0.05, epochs=10))
    same = TrainConfig(lr=0.05, epochs=10, out_dir="elsewhere", device="cpu", progress=False, num_workers=2,
                       data_dir="/data", resume="last")
    assert resume_changes(saved, same) == {}
    assert check_resume(saved, same, allow_override=False) == {}
    changed = TrainConfig(lr=0.2, epochs=10, method="trades", lam=0.3)
    assert resume_changes(saved, changed) == {"method": ("at", "trades"), "lam": (0.1, 0.3), "lr": (0.05, 0.2)}
    with pytest.raises(ValueError, match=r"cannot resume with settings that change the training: method 'at' -> "
                                         r"'trades', lam 0.1 -> 0.3 \(checkpoint -> now\); drop") as info:
        check_resume(saved, changed, allow_override=True)
    assert "\n" not in str(info.value)


def test_schedule_changes_need_the_override_flag():
    saved = config_to_dict(TrainConfig(lr=0.05, epochs=10, lr_milestones=[6, 8]))
    new = TrainConfig(lr=0.2, epochs=12, lr_milestones=[6, 8])
    with pytest.raises(ValueError, match=r"would change epochs 10 -> 12, lr 0.05 -> 0.2 \(checkpoint -> now\); "
                                         r"pass --resume-override"):
        check_resume(saved, new, allow_override=False)
    assert check_resume(saved, new, allow_override=True) == {"lr": (0.05, 0.2), "epochs": (10, 12)}
    assert override_record({"lr": (0.05, 0.2)}, 3) == {"from_epoch": 4, "lr": [0.05, 0.2]}


def test_fields_a_checkpoint_predates_compare_with_defaults():
    saved = config_to_dict(TrainConfig())
    del saved["lam"]
    assert resume_changes(saved, TrainConfig()) == {}
    assert resume_changes(saved, TrainConfig(lam=0.5)) == {"lam": (0.1, 0.5)}


@pytest.mark.parametrize("epochs_done", [0, 3, 5, 7])
def test_schedule_overrides_match_a_fresh_schedule(epochs_done):
    def schedule(lr, milestones):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr, momentum=0.9)
        return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)

    old_opt, old_sched = schedule(0.05, [2, 4])
    for _ in range(epochs_done):
        old_opt.step()
        old_sched.step()
    restored_opt, restored_sched = schedule(0.05, [2, 4])  # a resume: fresh objects, then load_state_dict
    restored_opt.load_state_dict(old_opt.state_dict())
    restored_sched.load_state_dict(old_sched.state_dict())
    apply_schedule_overrides(restored_opt, restored_sched, TrainConfig(lr=0.2, lr_milestones=[4, 6], lr_gamma=0.1))

    fresh_opt, fresh_sched = schedule(0.2, [4, 6])
    for _ in range(epochs_done):
        fresh_opt.step()
        fresh_sched.step()
    for _ in range(4):  # the following epochs use the same rates as a run started with the new values
        assert restored_opt.param_groups[0]["lr"] == pytest.approx(fresh_opt.param_groups[0]["lr"])
        for o, s in ((restored_opt, restored_sched), (fresh_opt, fresh_sched)):
            o.step()
            s.step()


def test_signal_stops_at_the_next_check():
    with StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: only a request
        assert stop.requested
        with pytest.raises(Interrupted) as info:
            stop.check("after step 3 of epoch 2")
        assert info.value.exit_code == 130
        assert str(info.value) == "interrupted by SIGINT after step 3 of epoch 2; resume with --resume"
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C acts at once
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(Interrupted) as info:
            stop.check("now")
        assert info.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def _ckpt(epoch, best_epoch, value):
    return {"epoch": epoch, "best_epoch": best_epoch, "model": {"w": torch.full((3,), float(value))}}


def test_reconcile_best_after_a_kill_between_last_and_best(tmp_path):
    save_checkpoint(_ckpt(1, 1, 1.0), tmp_path / "best.pt")
    last = _ckpt(2, 2, 2.0)  # epoch 2 improved; the process died before best.pt was rewritten
    save_checkpoint(last, tmp_path / "last.pt")
    note = reconcile_best(tmp_path, load_checkpoint(tmp_path / "last.pt"))
    assert "repaired" in note and "epoch 1" in note and "epoch 2" in note
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 2 and torch.equal(best["model"]["w"], last["model"]["w"])
    assert reconcile_best(tmp_path, load_checkpoint(tmp_path / "last.pt")) is None  # now consistent


def test_reconcile_best_missing_damaged_or_unrecoverable(tmp_path):
    last = _ckpt(1, 1, 1.0)
    assert "repaired" in reconcile_best(tmp_path, last)  # best.pt never written
    (tmp_path / "best.pt").write_bytes(b"truncated")
    assert "repaired" in reconcile_best(tmp_path, last)
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1
    assert reconcile_best(tmp_path, _ckpt(3, -1, 0.0)) is None  # no best epoch recorded (no validation yet)
    note = reconcile_best(tmp_path, _ckpt(5, 4, 0.0))  # best epoch 4 is neither in best.pt nor in last.pt
    assert note.startswith("warning") and load_checkpoint(tmp_path / "best.pt")["epoch"] == 1
