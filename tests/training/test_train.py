"""End-to-end training: every method x {none, FR, FR/WA}, exact resume after an exception, NaN guard, CLI, paper
presets.

All runs are tiny (a few batches of the embedded MNIST or random images, width-4 CNN) so each takes seconds.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import fr_fast.training.train as train_mod
from fr_fast.cli.train import main
from fr_fast.config.train_config import CONFIG_DIRS, load_config
from fr_fast.runs.checkpoint import load_checkpoint, load_model
from fr_fast.training.averaging import WeightAverage
from fr_fast.training.train import train

TINY = ["epochs=2", "lr_milestones=[1]", "batch_size=16", "max_train_batches=2", "max_val_batches=1",
        "attack_steps=2", "eval_pgd_steps=2", "model_kwargs={width: 4}", "progress=false",
        "bn_recalibrate_batches=1", "device=cpu", "cpu_threads=1"]


def _tiny_cfg(preset: str, out_dir: Path, *extra: str):
    return load_config(preset, [*TINY, f"out_dir={out_dir}", *extra])


@pytest.mark.parametrize("fr", ["none", "fr", "frwa"])
@pytest.mark.parametrize("method", ["natural", "at", "trades", "mart", "awp"])
def test_cpu_preset_runs_end_to_end(method, fr, tmp_path):
    preset = f"mnist_cnn_{method}" + ("" if fr == "none" else f"_{fr}")
    cfg = _tiny_cfg(preset, tmp_path)
    assert (cfg.method, cfg.fr) == (method, fr)
    summary = train(cfg)
    history = summary["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in history)
    # FR switches on at the first lr decay (epoch index 1 here); FR/WA then has an averaged teacher.
    assert [h["fr"] for h in history] == [False, fr != "none"]
    assert history[1]["lr"] == pytest.approx(cfg.lr * cfg.lr_gamma)
    assert history[1]["wa_models"] == (2 if fr == "frwa" else 0)
    assert [h["awp"] for h in history] == [method == "awp"] * 2
    assert all(0 <= h["val_pgd"] <= h["val_clean"] + 1e-9 for h in history)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 2 and (state["average"] is not None) == (fr == "frwa")
    assert (tmp_path / "best.pt").is_file()
    model, run = load_model(tmp_path / "best.pt")
    assert run["method"] == method and run["num_classes"] == 10
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


class _Killed(Exception):
    pass


def _states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_exception_mid_epoch_then_resume_equals_uninterrupted(tmp_path, monkeypatch):
    """In-process: an exception in epoch 3 (FR/WA, TRADES), then --resume. Real SIGKILLs: test_kill.py."""
    extra = ["epochs=3", "max_train_batches=3", "deterministic=true"]
    full = train(_tiny_cfg("mnist_cnn_trades_frwa", tmp_path / "full", *extra))

    calls = {"n": 0}
    real_loss = train_mod.training_loss

    def dying_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:  # the second batch of the third epoch
            raise _Killed()
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_mod, "training_loss", dying_loss)
    with pytest.raises(_Killed):
        train(_tiny_cfg("mnist_cnn_trades_frwa", tmp_path / "killed", *extra))
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["epoch"] == 2
    monkeypatch.setattr(train_mod, "training_loss", real_loss)
    resumed = train(_tiny_cfg("mnist_cnn_trades_frwa", tmp_path / "killed", *extra, "resume=last"))

    _states_equal(full["model"].state_dict(), resumed["model"].state_dict())
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "killed" / "last.pt")
    _states_equal(a["average"], b["average"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert [h["val_pgd"] for h in full["history"]] == [h["val_pgd"] for h in resumed["history"]]
    assert len((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()) == 3


def test_resume_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="last.pt"):
        train(_tiny_cfg("mnist_cnn_at", tmp_path, "resume=last"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real_loss = train_mod.training_loss
    calls = {"n": 0}

    def nan_loss(*args, **kwargs):
        calls["n"] += 1
        loss, logits = real_loss(*args, **kwargs)
        return (loss * float("nan") if calls["n"] == 3 else loss), logits  # epoch 2, step 0

    monkeypatch.setattr(train_mod, "training_loss", nan_loss)
    cfg = _tiny_cfg("mnist_cnn_at", tmp_path)
    with pytest.raises(RuntimeError, match=r"loss became nan at epoch 2 .*step 0.*last good checkpoint"):
        train(cfg)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_main_cli(tmp_path, capsys):
    assert main(["mnist_cnn_at", "--print-config", "--lr=0.3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["lr"] == 0.3 and printed["dataset"] == "mnist"
    assert main(["mnist_cnn_at", "--lrr=0.3"]) == 2
    assert "did you mean lr" in capsys.readouterr().err
    assert main(["mnist_cnn_at", *TINY, "epochs=1", f"--out_dir={tmp_path}"]) == 0
    assert "best epoch (by val_pgd)" in capsys.readouterr().out


@pytest.mark.parametrize("method, fr, select_by, expected", [
    ("natural", "none", "auto", "val_clean"), ("at", "none", "auto", "val_pgd"), ("natural", "fr", "auto", "val_pgd"),
    ("at", "none", "clean", "val_clean")])
def test_best_checkpoint_metric(tmp_path, method, fr, select_by, expected):
    cfg = _tiny_cfg("mnist_cnn_at", tmp_path, f"--method={method}", f"--fr={fr}", f"--select_by={select_by}", "epochs=2")
    summary = train(cfg)
    assert summary["selected_by"] == expected
    best = max(summary["history"], key=lambda m: m[expected])  # first maximum, as the trainer keeps
    assert summary["best_epoch"] == best["epoch"]
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == best["epoch"]


def test_l_model_trains_a_plain_model_on_low_pass_data(tmp_path):
    """The paper's L-model: the training (and validation) images are LPF_k(x), the model has no filter."""
    from fr_fast.models import LowPass
    from fr_fast.spectral.fourier import low_pass
    from fr_fast.training.runtime import runtime

    cfg = _tiny_cfg("mnist_cnn_natural", tmp_path, "low_pass_bandwidth=8", "epochs=1")
    assert cfg.low_pass_in == "data"
    with runtime(cfg) as rt:
        filtered, _, kwargs = train_mod._loaders(cfg, rt)
        plain, _, _ = train_mod._loaders(load_config("mnist_cnn_natural", [*TINY, f"out_dir={tmp_path}"]), rt)
        (x_f, y_f), (x, y) = next(iter(filtered)), next(iter(plain))
    assert torch.equal(y_f, y) and not torch.allclose(x_f, x)
    torch.testing.assert_close(x_f, low_pass(x, 8))
    assert kwargs["low_pass_bandwidth"] is None
    summary = train(cfg)
    assert not any(isinstance(m, LowPass) for m in summary["model"].modules())
    assert load_checkpoint(tmp_path / "last.pt")["model_kwargs"]["low_pass_bandwidth"] is None
    with pytest.raises(ValueError, match=r"low_pass_bandwidth must be in \[1, 28\]"):
        train(_tiny_cfg("mnist_cnn_natural", tmp_path / "big", "low_pass_bandwidth=40", "epochs=1"))


def test_l_model_with_the_filter_in_the_model(tmp_path):
    from fr_fast.models import LowPass

    summary = train(_tiny_cfg("mnist_cnn_natural", tmp_path, "low_pass_bandwidth=8", "low_pass_in=model", "epochs=1"))
    assert isinstance(summary["model"][0], LowPass) and summary["model"][0].bandwidth == 8
    model, _ = load_model(tmp_path / "last.pt")  # the filter is part of the saved model
    assert load_checkpoint(tmp_path / "last.pt")["model_kwargs"]["low_pass_bandwidth"] == 8
    assert isinstance(model[0], LowPass) and model[0].bandwidth == 8


PAPER_PRESETS = sorted(p.stem for p in CONFIG_DIRS[0].glob("*.yaml")
                       if not p.stem.startswith(("mnist", "fashion", "paper")))
SLOW = {"cifar10_wrn34_10_at_fr", "cifar10_wrn34_10_at_frwa"}  # WideResNet-34-10: ~46M parameters


@pytest.mark.parametrize("preset", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW else p
                                    for p in PAPER_PRESETS])
def test_paper_preset_runs_one_step_on_random_data(preset, tmp_path):
    """Each paper preset trains one step (FR/WA switched on at once) on random images of its dataset's shape."""
    cfg = load_config(preset, ["fake_data=4", "batch_size=2", "epochs=1", "max_train_batches=1",
                               "max_val_batches=1", "attack_steps=1", "eval_pgd_steps=1", "fr_start_epoch=0",
                               "wa_start_epoch=0", "bn_recalibrate_batches=1", "device=cpu", "cpu_threads=1", "amp=off",
                               "progress=false", f"out_dir={tmp_path}"])
    summary = train(cfg)
    assert summary["history"][0]["fr"] == (cfg.fr != "none")
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["config"]["dataset"] == cfg.dataset and state["epoch"] == 1
    size = 64 if cfg.dataset == "tinyimagenet" else 32
    num_classes = {"cifar100": 100, "tinyimagenet": 200}.get(cfg.dataset, 10)
    model, _ = load_model(tmp_path / "last.pt")
    assert model(torch.rand(1, 3, size, size)).shape == (1, num_classes)


def _capture_step_calls(monkeypatch):
    """Record the attack mode and the FR teacher each training step uses."""
    calls = {"mode": [], "teacher": [], "fr": []}
    craft, loss = train_mod.craft_adversarial, train_mod.training_loss

    def craft_spy(*args, mode=None, **kwargs):
        calls["mode"].append(mode)
        return craft(*args, mode=mode, **kwargs)

    def loss_spy(*args, fr=None, teacher=None, **kwargs):
        calls["fr"].append(fr is not None)
        calls["teacher"].append(teacher)
        return loss(*args, fr=fr, teacher=teacher, **kwargs)

    monkeypatch.setattr(train_mod, "craft_adversarial", craft_spy)
    monkeypatch.setattr(train_mod, "training_loss", loss_spy)
    return calls


@pytest.mark.parametrize("role", ["teacher", "evaluated", "both"])
def test_wa_roles_choose_teacher_validation_and_selection(role, tmp_path, monkeypatch):
    calls = _capture_step_calls(monkeypatch)
    recalibrated = []
    monkeypatch.setattr(WeightAverage, "recalibrate_bn",
                        lambda self, *a, **k: recalibrated.append(self.n_averaged) or 0)
    cfg = _tiny_cfg("mnist_cnn_at_frwa", tmp_path, "fake_data=64", "epochs=3", f"wa_role={role}")
    summary = train(cfg)
    history = summary["history"]
    # teacher/both: the average starts from the weights after epoch index 0 (the last one before the decay) so
    # that it is FR's teacher from the decay on; evaluated: from the weights after the first decayed-lr epoch
    # (the authors' code). Its BN statistics are re-estimated at creation and after every update.
    counts = [1, 2, 3] if role != "evaluated" else [0, 1, 2]
    assert [h["wa_models"] for h in history] == counts
    assert recalibrated == [c for c in counts if c]
    teachers = calls["teacher"][cfg.max_train_batches:]  # the FR epochs (index 1 and 2)
    assert all(calls["fr"][cfg.max_train_batches:]) and not any(calls["fr"][:cfg.max_train_batches])
    assert all((t is not None) == (role != "evaluated") for t in teachers)
    evaluated = role in ("evaluated", "both")
    assert summary["selected_by"] == ("avg_val_pgd" if evaluated else "val_pgd")
    assert all(("avg_val_pgd" in h) == (evaluated and h["wa_models"] > 0) for h in history)
    state = load_checkpoint(tmp_path / "best.pt")
    assert state["average"] is not None and state["model"] is not None  # both always saved
    _, run = load_model(tmp_path / "best.pt")
    assert run["weights"] == ("average" if evaluated else "student")


@pytest.mark.parametrize("preset, extra, expected", [
    ("mnist_cnn_at_fr", [], "train"), ("mnist_cnn_trades", [], "eval"),
    ("mnist_cnn_at_fr", ["attack_mode=eval"], "eval"), ("mnist_cnn_mart", ["attack_mode=train"], "train")])
def test_training_attack_mode(preset, extra, expected, tmp_path, monkeypatch):
    calls = _capture_step_calls(monkeypatch)
    train(_tiny_cfg(preset, tmp_path, "fake_data=32", "epochs=1", "fr_start_epoch=0", *extra))
    assert calls["mode"] and set(calls["mode"]) == {expected}


def test_fr_that_never_switches_on_stops_before_training(tmp_path, capsys):
    assert main(["mnist_cnn_at_fr", "--epochs=1", f"--out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "fr_start_epoch" in err and "milestone" in err and "Traceback" not in err
    assert not (tmp_path / "last.pt").exists()


@pytest.mark.parametrize("mode, expected", [("default", None), ("reduce-overhead", "reduce-overhead")])
def test_compile_mode_reaches_torch_compile(monkeypatch, mode, expected):
    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: seen.append(mode) or model)
    cfg = load_config("mnist_cnn_at", ["--compile", f"--compile_mode={mode}"])
    model = torch.nn.Linear(2, 2)
    attack_model, train_model = train_mod.wrap_models(cfg, model)
    assert seen == [expected, expected] and attack_model is model and train_model is model


def test_compile_mode_is_checked():
    with pytest.raises(ValueError, match="compile_mode"):
        load_config("mnist_cnn_at", ["--compile_mode=fast"])


def test_split_seed_fixes_the_validation_set_across_training_seeds(tmp_path):
    def val_images(*extra):
        _, val, _ = train_mod._datasets(_tiny_cfg("mnist_cnn_at", tmp_path, *extra))
        return torch.stack([val[i][0] for i in range(len(val))])

    base = val_images()
    assert torch.equal(base, val_images("seed=7"))  # another training seed, the same validation images
    assert not torch.equal(base, val_images("split_seed=7"))


def test_missing_data_leaves_no_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["cifar10_resnet18_at", f"--data_dir={tmp_path / 'nothing'}", f"--out_dir={out}", "--device=cpu",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
