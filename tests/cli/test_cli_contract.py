"""The command line's contract (issues 26.6 and 27.4): one spelling, one precedence rule, input checked like
``train`` in every command, one line per mistake, and the top-level commands (--version, presets, usage).

Each malformed invocation below ended in a traceback, was silently accepted or misled before.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fr_fast._version import __version__
from fr_fast.cli import demo, train
from fr_fast.cli import main as cli
from fr_fast.cli.presets import preset_rows
from fr_fast.config.train_config import load_config
from fr_fast.runs.metrics_log import MetricsLog

ROOT = Path(__file__).resolve().parents[2]
TINY = ["fake_data=16", "epochs=1", "lr_milestones=[]", "batch_size=8", "max_train_batches=1", "max_val_batches=1",
        "attack_steps=1", "eval_pgd_steps=1", "model_kwargs={width: 2}", "--no-progress", "--device=cpu"]


def _printed(argv: list[str], capsys) -> dict:
    assert cli.main(["train", "mnist_cnn_at", *argv, "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("argv, message", [
    (["eval", "{ck}", "--device", "bogus"], "device must be cpu, cuda or cuda:N, got 'bogus'"),
    (["eval", "{ck}", "--device=tpu"], "device must be cpu, cuda or cuda:N, got 'tpu'"),
    (["eval", "{ck}", "--threads", "-1"], "threads must be in [1, 4096], got -1"),
    (["eval", "{ck}", "--eps", "5"], "eps must be in [0, 1], got 5.0"),
    (["eval", "{ck}", "--n-examples", "0"], "n_examples must be in [1, inf)"),
    (["eval", "{ck}", "--aa-version", "turbo"], "aa-version must be one of"),
    (["analyze", "{ck}", "--steps", "-1", "--out", "{tmp}/a"], "steps must be in [1, inf), got -1"),
    (["analyze", "{ck}", "--device", "tpu", "--out", "{tmp}/a"], "device must be cpu, cuda or cuda:N"),
    (["analyze", "{ck}", "--heatmap-norm", "0", "--out", "{tmp}/a"], "heatmap_norm must be in (0, inf)"),
    (["train", "mnist_cnn_at", "--device=tpu", "--print-config"], "device must be auto, cpu, cuda or cuda:N"),
    (["train", "mnist_cnn_at", "pad_to=1", "--print-config"], "pad_to=1 is smaller than the 28px mnist images"),
    (["train", "mnist_cnn_at", "model_kwargs={std: [0]}", "--print-config"], "model_kwargs may not set std"),
    (["train", "mnist_cnn_at", "--epochs", "\u0663", "--print-config"], "'epochs' expects int, got '\u0663'"),
    (["train", "mnist_cnn_at", "--lr", "\u0661", "--print-config"], "'lr' expects float, got '\u0661'"),
    (["train", "--dataset=imagenet", "--print-config"], "unknown dataset 'imagenet'"),
    (["train", "mnist_cnn_at", "--model=resnet9", "--print-config"], "unknown model 'resnet9'"),
    (["train", "mnist_cnn_at", "--resume-override", "--print-config"], "--resume-override changes a resumed run"),
    (["train", "mnist_cnn_at", "--cpu-threads", "100000000000000000000", "--print-config"],
     "cpu_threads must be in [1, 4096]"),
    (["train", "mnist_cnn_at", "--name", "../escape", "--print-config"], "name must be 1-100 characters"),
    (["train", "{tmp}/dup.yaml", "--print-config"], "key 'epochs' appears twice in one mapping"),
    (["train", "{tmp}/empty.yaml", "--print-config"], "empty.yaml is empty"),
    (["train", "{tmp}/latin1.yaml", "--print-config"], "latin1.yaml is not UTF-8 text"),
    (["train", "mnist_cnn_at", "model_kwargs={width: 1, width: 2}", "--print-config"], "appears twice"),
    (["eval", "{tmp}"], "is a folder; give a checkpoint file in it"),
    (["analyze", "{tmp}", "--out", "{tmp}/a"], "is a folder; give a checkpoint file in it"),
    (["demo", "--test-examples", "\u0663"], "expected a whole number >= 1"),
])
def test_malformed_invocations_are_one_line_exit_2(argv, message, tmp_path, capsys):
    (tmp_path / "dup.yaml").write_text("base: mnist_cnn_at.yaml\nepochs: 3\nepochs: 4\n")
    (tmp_path / "empty.yaml").write_text("# nothing here\n")
    (tmp_path / "latin1.yaml").write_bytes("epochs: 3  # \u00e9\n".encode("latin1"))
    argv = [a.replace("{ck}", str(tmp_path / "missing.pt")).replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own usage errors (one line, status 2) exit from the parser
        code = exc.code
    assert code == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "a").exists()  # checked before the output folder is made


def test_eval_on_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert cli.main(["eval", str(tmp_path / "x.pt"), "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_model_construction_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["train", "mnist_cnn_at", *TINY, "model_kwargs={width: 100000000000}",
                     f"--out-dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot build model 'small_cnn' with width=100000000000" in err
    assert not (tmp_path / "run").exists()  # a failed start leaves no folder


@pytest.mark.parametrize("argv, expected", [
    (["--lr", "0.1", "lr=0.5"], 0.5),
    (["lr=0.5", "--lr", "0.1"], 0.1),
    (["--lr=0.1", "--lr", "0.3"], 0.3),
    (["--lr_milestones", "3", "5", "lr=0.2"], 0.2),  # a list option does not swallow key=value
])
def test_the_last_value_given_wins(argv, expected, capsys):
    assert _printed(argv, capsys)["lr"] == pytest.approx(expected)


def test_a_bare_resume_never_swallows_key_value(capsys):
    printed = _printed(["--resume", "lam=0.3"], capsys)
    assert (printed["resume"], printed["lam"]) == ("last", 0.3)
    assert _printed(["--out-dir", "lam=0.3"], capsys)["out_dir"] == "lam=0.3"  # a required value stays a value


@pytest.mark.parametrize("command", ["train", "eval", "analyze", "demo"])
def test_one_spelling_with_dashes_and_underscore_aliases(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = capsys.readouterr().out
    assert "--data-dir" in text and "--data_dir" not in text and "--batch-size" in text
    if command in ("train", "demo"):
        assert "--out-dir" in text and "--cpu-threads" in text and "--out_dir" not in text


def test_underscore_and_dash_spellings_mean_the_same(capsys):
    assert _printed(["--data_dir=/d", "--cpu_threads=2"], capsys) == _printed(["--data-dir=/d", "--cpu-threads=2"],
                                                                               capsys)
    assert _printed(["data-dir=/d"], capsys)["data_dir"] == "/d"


def test_version_presets_and_bare_usage(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"fr-fast {__version__}"
    assert cli.main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("usage: fr-fast <command>") and "presets" in captured.err
    assert cli.main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["preset", "dataset", "model", "method"]
    rows = {line.split()[0]: line.split(maxsplit=3)[1:] for line in lines[1:]}
    assert rows["mnist_cnn_at_fr"] == ["mnist", "small_cnn", "at + FR"]
    assert rows["cifar10_resnet18_trades_frwa"] == ["cifar10", "resnet18", "trades + FR/WA"]
    assert "paper" not in rows and len(rows) == len(preset_rows()) >= 40


def test_name_labels_the_run_in_its_folder_runs_and_compare(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("mnist_cnn_at", ["name=baseline"])
    assert cfg.out_dir == str(Path("runs") / "mnist_cnn_at" / "baseline")
    for name in ("baseline", "with-fr"):  # two named runs of one preset, read back as runs/<preset>
        folder = tmp_path / "runs" / "mnist_cnn_at" / name
        folder.mkdir(parents=True)
        MetricsLog(folder, [], {"config": {"name": name, "epochs": 1, "method": "at"}}).append(
            {"epoch": 1, "val_clean": 50.0, "val_pgd": 20.0})
    assert cli.main(["compare", "runs/mnist_cnn_at", "--plot", "curves.png"]) == 0
    out = capsys.readouterr().out
    assert "| baseline " in out and "| with-fr " in out and (tmp_path / "curves.png").is_file()
    assert cli.main(["compare", "runs"]) == 0  # a folder of preset folders too
    assert cli.main(["runs", "runs"]) == 0 and "| with-fr " in capsys.readouterr().out
    assert cli.main(["compare", "curves.png"]) == 2


def test_demo_spells_like_train(tmp_path, capsys):
    assert demo.main(["--epochs", "zero"]) == 2
    assert "'epochs' expects int" in capsys.readouterr().err
    assert train.main(["mnist_cnn_at", "--epochs=2", "epochs=3", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == 3


def test_ctrl_c_during_imports_is_one_line():
    """SIGINT while torch and the command load (the first seconds): one line and 130, never a traceback."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "fr_fast", "train", "mnist_cnn_at", "--print-config"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    while proc.poll() is None:  # repeated: the first may land before Python has its handler
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    out, err = proc.communicate()
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and err.count("\n") == 1 and "interrupted (Ctrl-C)" in err, err


def test_training_prints_the_run_eta(tmp_path, capsys):
    assert cli.main(["train", "mnist_cnn_at", *TINY, "epochs=3", f"--out-dir={tmp_path / 'run'}"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 3 and all(" | run ETA " in line for line in lines[:2]) and "ETA" not in lines[2]


def test_run_eta_is_mean_epoch_time_times_epochs_left():
    from fr_fast.training.run_report import run_eta

    assert run_eta(100.0, 130.0, first_epoch=2, epochs_done=5, epochs=10) == pytest.approx(50.0)  # resumed at 2
    assert run_eta(0.0, 10.0, first_epoch=0, epochs_done=10, epochs=10) == 0.0


def test_autoattack_reports_each_stage(mnist_model):
    pytest.importorskip("torchattacks")
    from fr_fast.robustness.attacks import autoattack

    model, x, y = mnist_model
    stages: list[str] = []
    autoattack(model, x[:4], y[:4], eps=0.1, version="standard", steps=2, n_queries=5, on_stage=stages.append)
    assert stages[0] == "APGD-CE (1/4)"
    assert set(stages) <= {"APGD-CE (1/4)", "APGD-T (2/4)", "FAB-T (3/4)", "Square (4/4)"}
