"""The command line: generated --help, the --key value / --flag / --no-flag forms, one-line user errors."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from fr_fast.cli import analyze, demo, train
from fr_fast.cli import eval as evaluate
from fr_fast.cli.args import field_help, type_name
from fr_fast.config.fields import knob
from fr_fast.config.train_config import TrainConfig
from fr_fast.spectral.analyze import AnalyzeOptions

ROOT = Path(__file__).resolve().parents[2]
OPTION_CLASSES = (TrainConfig, evaluate.EvalOptions, AnalyzeOptions)


def _help(main, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare whitespace-folded


@pytest.mark.parametrize("cls", OPTION_CLASSES, ids=lambda c: c.__name__)
def test_every_option_field_has_a_description(cls):
    helps = field_help(cls)  # raises TypeError naming any field declared without knob(default, help)
    assert set(helps) == {f.name for f in dataclasses.fields(cls)}
    assert all(len(text) > 8 and "\n" not in text for text in helps.values())


def test_a_field_without_description_is_caught():
    @dataclasses.dataclass
    class Partial:
        documented: int = knob(1, "a documented field")
        bare: int = 2

    with pytest.raises(TypeError, match="bare"):
        field_help(Partial)


@pytest.mark.parametrize("main, cls", [(train.main, TrainConfig), (evaluate.main, evaluate.EvalOptions),
                                      (analyze.main, AnalyzeOptions)], ids=["train", "eval", "analyze"])
def test_help_lists_every_field_with_type_default_and_description(main, cls, capsys):
    text = _help(main, capsys)
    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        option = "--" + f.name.replace("_", "-")  # one spelling shown everywhere: dashes
        assert option in text, option
        if "_" in f.name:
            assert f"--{f.name} " not in text and f"--{f.name}\n" not in text, f"{f.name}: shown twice"
        assert " ".join(helps[f.name].split()) in text, f.name
    assert "[float, default: 0.1]" in text or cls is not TrainConfig  # lam / lr: type and default shown
    assert "--no-progress" in text


def test_type_names():
    assert type_name(int) == "int"
    assert type_name(int | None) == type_name(typing.Optional[int]) == "int | None"
    assert type_name(list[int]) == "list[int]"


@pytest.mark.parametrize("argv, expected", [
    (["--epochs", "3"], {"epochs": 3}),
    (["--epochs=3"], {"epochs": 3}),
    (["epochs=3"], {"epochs": 3}),
    (["--lr", "8/255", "--weight-decay", "2e-4"], {"lr": 8 / 255, "weight_decay": 2e-4}),
    (["--no-progress", "--wa"], {"progress": False, "wa": True}),
    (["--progress=false", "--compile=true"], {"progress": False, "compile": True}),
    (["--no-bn-recalibrate"], {"bn_recalibrate": False}),
    (["--lr_milestones", "2", "5"], {"lr_milestones": [2, 5]}),
    (["--lr_milestones=[2,5]"], {"lr_milestones": [2, 5]}),
    (["--resume"], {"resume": "last"}),
    (["--resume", "runs/x/last.pt", "--fr_start_epoch", "null"], {"resume": "runs/x/last.pt", "fr_start_epoch": None}),
])
def test_train_option_forms(argv, expected, capsys):
    assert train.main(["mnist_cnn_at", *argv, "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    for key, value in expected.items():
        assert printed[key] == pytest.approx(value) if isinstance(value, float) else printed[key] == value, key


def test_options_and_positionals_mix_in_any_order(capsys):
    assert train.main(["--epochs", "7", "mnist_cnn_at", "lam=0.3", "--print-config", "--fr", "fr"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["epochs"], printed["lam"], printed["fr"], printed["dataset"]) == (7, 0.3, "fr", "mnist")


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "three"], "'epochs' expects int"),
    (["--progress=maybe"], "--progress expects true or false"),
    (["--lamda", "0.2"], "did you mean lam"),
    (["--lr_milestones=[3,"], "cannot parse the value of 'lr_milestones'"),
    (["--method", "sgd"], "method must be one of"),
])
def test_bad_values_are_one_line_exit_2(argv, message, capsys):
    assert train.main(["mnist_cnn_at", *argv, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("fr-fast train: error:")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("FR_FAST_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "fr_fast", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_missing_data_set_exits_2_with_one_line_and_no_traceback(tmp_path):
    result = _cli("train", "cifar10_resnet18_at", f"--data_dir={tmp_path / 'nowhere'}",
                  f"--out_dir={tmp_path / 'r'}", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fr-fast train: error: CIFAR-10 not found"), result.stderr
    debug = _cli("train", "no_such_preset", "--debug", cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_user_errors_of_every_command_exit_2_with_one_line(tmp_path, capsys):
    """Unknown preset, URL as a path, unreadable or missing checkpoint: one line on stderr, status 2."""
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    cases = [
        (train.main, ["no_such_preset"], "config preset 'no_such_preset' not found"),
        (train.main, ["mnist_cnn_at", "--resume", "https://example.org/last.pt", f"--out_dir={tmp_path / 'r'}",
                      "--fake_data", "8", "--device", "cpu", "--no-progress"], "is a URL"),
        (evaluate.main, [str(junk), "--device", "cpu"], "not a readable fr_fast checkpoint"),
        (evaluate.main, ["https://example.org/best.pt"], "is a URL"),
        (analyze.main, [str(tmp_path / "missing.pt"), "--out", str(tmp_path / "a")], "not found"),
    ]
    for main, argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (argv, err)


def test_demo_takes_the_same_field_options(tmp_path, capsys):
    assert demo.main(["--epochs", "1", "--lr_milestones", "1", "--fr_start_epoch", "0", "--max_train_batches", "2",
                      "--max_val_batches", "1",
                      "--attack_steps", "1", "--eval_pgd_steps", "1", "--no-progress", "--model_kwargs", "{width: 4}",
                      "--out-dir", str(tmp_path / "demo"), "--test-examples", "20", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "1 epochs" in out and "clean accuracy" in out and (tmp_path / "demo" / "metrics.csv").is_file()
    assert demo.main(["--epochs", "zero"]) == 2
    assert "'epochs' expects int" in capsys.readouterr().err


def test_demo_help_shows_the_values_the_demo_trains_with(capsys):
    """The demo starts from its preset, so its help shows the preset's values, not TrainConfig's defaults."""
    from fr_fast.config.train_config import load_config

    preset = load_config(demo.PRESET)
    assert (preset.dataset, preset.epochs) != (TrainConfig().dataset, TrainConfig().epochs)  # else no check
    text = " ".join(_help(demo.main, capsys).split())
    assert f"default: {preset.dataset}]" in text and f"[int, default: {preset.epochs}]" in text
    assert f"default: {TrainConfig().dataset}]" not in text
