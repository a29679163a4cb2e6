"""--branch_from: a fork of a trunk's checkpoint is, bit for bit, the run that switched its settings there."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fr_fast.cli.train import main
from fr_fast.config.train_config import load_config
from fr_fast.runs.checkpoint import load_checkpoint, save_checkpoint
from fr_fast.training.train import train

# AT until epoch index 2 (the first lr decay), then FR / FR+WA switch on: the trunk trains epochs 0-1.
TINY = ["lr_milestones=[2]", "batch_size=16", "fake_data=64", "max_train_batches=2", "max_val_batches=1",
        "attack_steps=2", "eval_pgd_steps=2", "model_kwargs={width: 4}", "progress=false", "bn_recalibrate_batches=2",
        "device=cpu", "cpu_threads=1", "deterministic=true"]


def _cfg(preset: str, out_dir: Path, *extra: str):
    return load_config(preset, [*TINY, f"out_dir={out_dir}", *extra])


@pytest.fixture(scope="module")
def trunk(tmp_path_factory) -> Path:
    """An AT run stopped at the first lr decay (epochs=2): the trunk the methods fork from."""
    out = tmp_path_factory.mktemp("trunk")
    train(_cfg("mnist_cnn_at", out, "epochs=2"))
    return out / "last.pt"


def _assert_same_state(a: dict, b: dict) -> None:
    for key in ("model", "average"):
        assert (a[key] is None) == (b[key] is None), key
        for name, value in (a[key] or {}).items():
            assert torch.equal(value, b[key][name]), f"{key}.{name}"
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][index]["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"]
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


@pytest.mark.parametrize("fr", ["fr", "frwa"])
def test_branch_equals_the_run_that_switched_at_that_epoch(trunk, tmp_path, fr):
    straight = train(_cfg(f"mnist_cnn_at_{fr}", tmp_path / "straight", "epochs=3"))
    branch = train(_cfg(f"mnist_cnn_at_{fr}", tmp_path / "branch", "epochs=3", f"branch_from={trunk}"))
    assert [h["fr"] for h in branch["history"]] == [False, False, True]
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "branch" / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    _assert_same_state(a, b)
    assert (b["average"] is not None) == (fr == "frwa")
    assert straight["history"][-1]["val_pgd"] == branch["history"][-1]["val_pgd"]
    run = json.loads((tmp_path / "branch" / "run.json").read_text())
    assert run["branched_from"] == f"{trunk.parent}/2"
    assert run["branch_changes"] == {"fr": ["none", fr], "epochs": [2, 3]}
    assert b["branched_from"] == run["branched_from"]
    assert [json.loads(line)["epoch"] for line in (tmp_path / "branch" / "metrics.jsonl").open()] == [1, 2, 3]


def test_a_branch_may_change_lambda_and_survives_a_resume(trunk, tmp_path):
    out = tmp_path / "lam"
    train(_cfg("mnist_cnn_at_fr", out, "epochs=3", "lam=0.5", f"branch_from={trunk}"))
    first = load_checkpoint(out / "last.pt")
    assert first["config"]["lam"] == 0.5 and first["branch_changes"]["lam"] == [0.1, 0.5]
    # resume=auto with the same command line continues the branch (it does not branch again)
    train(_cfg("mnist_cnn_at_fr", out, "epochs=4", "lam=0.5", f"branch_from={trunk}", "resume=auto"),
          resume_override=True)
    again = load_checkpoint(out / "last.pt")
    assert again["epoch"] == 4 and again["branched_from"] == first["branched_from"]


@pytest.mark.parametrize("extra, message", [
    (["batch_size=8"], r"cannot branch with settings that change the trunk's training: batch_size 16 -> 8"),
    (["eps=0.1", "model=resnet18"], r"eps 0.3 -> 0.1, model 'small_cnn' -> 'resnet18'"),
    (["epochs=2", "fr=none"], r"nothing to train: the checkpoint is at epoch 2 and epochs=2"),
    (["fr=frwa", "wa_start_epoch=1"], r"weight average from epoch index 1, before the branch point \(epoch 2\)"),
])
def test_refused_branches_name_the_problem_and_leave_nothing(trunk, tmp_path, extra, message):
    out = tmp_path / "refused"
    with pytest.raises(ValueError, match=message):
        train(_cfg("mnist_cnn_at_fr", out, "epochs=3", f"branch_from={trunk}", *extra))
    assert not out.exists()


def test_cli_refusal_is_one_line_exit_2(trunk, tmp_path, capsys):
    assert main(["mnist_cnn_at_fr", *TINY, "epochs=3", "batch_size=8", f"--out_dir={tmp_path / 'x'}",
                 f"--branch_from={trunk}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fr-fast train: error: cannot branch") and "\n" not in err
    assert main(["mnist_cnn_at_fr", *TINY, "epochs=3", f"--out_dir={trunk.parent}", f"--branch_from={trunk}"]) == 2
    assert "a branch is a new run: choose another --out_dir" in capsys.readouterr().err


def test_a_branch_from_a_nan_checkpoint_is_refused_before_its_folder_exists(trunk, tmp_path, capsys):
    poisoned = tmp_path / "trunk" / "last.pt"
    poisoned.parent.mkdir()
    state = load_checkpoint(trunk)
    next(v for v in state["model"].values() if v.is_floating_point()).view(-1)[0] = float("nan")
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "version")}, poisoned)
    out = tmp_path / "branch"
    assert main(["mnist_cnn_at_fr", *TINY, "epochs=3", f"--out_dir={out}", f"--branch_from={poisoned}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{poisoned} holds non-finite values (model." in err
    assert not out.exists()
