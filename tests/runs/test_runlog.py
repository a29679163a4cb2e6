"""What a run tells: the banner (device, threads, amp, memory format, compile, kernels, versions), plain
progress lines without escape codes off a terminal, metrics.csv / TensorBoard, and the RobustBench entry."""
from __future__ import annotations

import csv
import importlib.util
import io
import json

import pytest
import torch

from fr_fast.cli import analyze
from fr_fast.cli import eval as evaluate
from fr_fast.cli.train import main as train_main
from fr_fast.models import build_model
from fr_fast.ops import functional as ops
from fr_fast.robustness.robustbench import eps_text
from fr_fast.runs import runinfo
from fr_fast.runs.checkpoint import load_checkpoint, save_checkpoint
from fr_fast.utils.progress import Progress

TINY = ["epochs=2", "lr_milestones=[1]", "batch_size=16", "max_train_batches=2", "max_val_batches=1",
        "attack_steps=1", "eval_pgd_steps=1", "model_kwargs={width: 4}", "bn_recalibrate_batches=1", "device=cpu",
        "cpu_threads=1"]
HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


def _assert_banner(line: str, command: str) -> None:
    assert line.startswith(f"fr-fast {command} | device cpu"), line
    for label in ("threads", "amp", "memory format", "compile", "kernels", "torch", "fr_fast"):
        assert f"| {label} " in line, label
    assert f"| kernels {ops.backend('cpu')}" in line and f"| torch {torch.__version__}" in line


def test_describe_and_banner_agree():
    info = runinfo.describe("cpu", amp_dtype=torch.bfloat16, memory_format=torch.channels_last, compile=True)
    assert info["amp"] == "bfloat16" and info["memory_format"] == "channels_last" and info["compile"] is True
    assert info["kernels"] == ops.backend("cpu") and info["threads"] == torch.get_num_threads()
    line = runinfo.banner("train", info)
    _assert_banner(line, "train")
    assert "| amp bfloat16 |" in line and "| compile on |" in line and "\n" not in line


def test_plain_progress_lines_have_eta_and_no_escape_codes(monkeypatch):
    monkeypatch.setenv("FR_FAST_PROGRESS_INTERVAL", "0")
    stream = io.StringIO()  # not a terminal
    bar = Progress(4, "eval aa", "img", stream=stream)
    for _ in range(2):
        bar.update(1)
    bar.set_postfix({"aa %": "12.5"})
    bar.update(2)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("eval aa: 1/4 img (25%) |") and "ETA" in lines[0]
    assert lines[-2].endswith("| aa % 12.5") and "done in" in lines[-1]
    assert "\x1b" not in stream.getvalue() and "\r" not in stream.getvalue()
    silent = io.StringIO()
    Progress(3, "x", stream=silent, enabled=False).close()
    assert silent.getvalue() == ""


def test_train_banner_plain_progress_and_metrics_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FR_FAST_PROGRESS_INTERVAL", "0")
    assert train_main(["mnist_cnn_at", *TINY, "--progress", f"--out_dir={tmp_path}"]) == 0
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err and "\r" not in out + err
    _assert_banner(out.splitlines()[0], "train")
    assert "epoch 1/2: 1/2 batch (50%)" in err and "ETA" in err
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    with open(tmp_path / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(history) == 2
    assert list(rows[0])[:8] == ["epoch", "lr", "train_loss", "train_acc_pct", "val_clean_pct", "val_pgd_pct",
                                 "images_per_s", "epoch_time_s"]
    for row, h in zip(rows, history):
        assert float(row["val_pgd_pct"]) == pytest.approx(h["val_pgd"])
        assert float(row["train_acc_pct"]) == pytest.approx(h["train_acc"])
        assert 0.0 <= float(row["val_clean_pct"]) <= 100.0
    run = json.loads((tmp_path / "run.json").read_text())
    assert runinfo.banner("train", run["runtime"]) == out.splitlines()[0]
    assert load_checkpoint(tmp_path / "last.pt")["runtime"] == run["runtime"]


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed")
def test_tensorboard_scalars(tmp_path, capsys):
    assert train_main(["mnist_cnn_at", *TINY, "--no-progress", "--tensorboard", f"--out_dir={tmp_path}"]) == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"val_pgd_pct", "train_acc_pct", "train_loss"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("val_pgd_pct")] == [1, 2]


@pytest.mark.skipif(HAS_TENSORBOARD, reason="tensorboard is installed")
def test_tensorboard_missing_is_a_one_line_error(tmp_path, capsys):
    assert train_main(["mnist_cnn_at", *TINY, "--no-progress", "--tensorboard", f"--out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install tensorboard" in err


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    kwargs = dict(name="small_cnn", num_classes=10, in_channels=1, width=4)
    path = tmp_path / "mnist_at" / "best.pt"
    save_checkpoint({"config": {"dataset": "mnist", "data_dir": None, "model": "small_cnn", "eps": 0.3,
                                "pad_to": None, "model_kwargs": {"width": 4}},
                     "model_kwargs": kwargs, "model": build_model(**kwargs).state_dict()}, path)
    return path


def test_eval_banner_progress_per_attack_and_robustbench_entry(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FR_FAST_PROGRESS_INTERVAL", "0")
    report_path, entry_path = tmp_path / "report.json", tmp_path / "rb.json"
    assert evaluate.main([str(checkpoint), "--n-examples", "8", "--batch-size", "4", "--attacks", "clean,pgd2,aa",
                          "--aa-version", "fast", "--aa-steps", "2", "--no-eps-curve", "--device", "cpu",
                          "--out", str(report_path), "--robustbench-json", str(entry_path)]) == 0
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err
    _assert_banner(out.splitlines()[0], "eval")
    assert "eval aa: 4/8 img (50%)" in err and "ETA" in err and "eval pgd2:" in err
    report, entry = json.loads(report_path.read_text()), json.loads(entry_path.read_text())
    assert report["runtime"]["kernels"] == ops.backend("cpu")
    assert set(entry) >= {"name", "architecture", "dataset", "threat_model", "eps", "clean_acc", "autoattack_acc",
                          "additional_data", "number_forward_passes", "evaluation"}
    assert entry["name"] == "mnist_at" and entry["dataset"] == "mnist" and entry["threat_model"] == "Linf"
    assert entry["architecture"] == "SmallCNN (width=4)" and entry["eps"] == "0.3"
    assert entry["clean_acc"] == f"{report['attacks']['clean']['accuracy']:.2f}"
    assert entry["autoattack_acc"] == f"{report['attacks']['aa']['accuracy']:.2f}"
    assert entry["additional_data"] is False and entry["number_forward_passes"] == 1
    assert entry["evaluation"]["autoattack"] == report["attacks"]["aa"]["settings"]
    assert entry["evaluation"]["n_examples"] == 8 and "8 of 10000 test images" in entry["footnote"]
    # without AutoAttack there is no entry to write: refused before any work
    assert evaluate.main([str(checkpoint), "--attacks", "clean,pgd2", "--robustbench-json", str(entry_path)]) == 2
    assert "needs the clean and aa attacks" in capsys.readouterr().err


def test_eps_text():
    assert eps_text(8 / 255) == "8/255" and eps_text(0.3) == "0.3" and eps_text(0.5 / 255) == f"{0.5 / 255:g}"


def test_analyze_banner_stage_progress_and_percent_csv(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FR_FAST_PROGRESS_INTERVAL", "0")
    out_dir = tmp_path / "res"
    assert analyze.main([str(checkpoint), "--out", str(out_dir), "--what", "lpf", "--n-images", "4",
                         "--bandwidths", "28", "--batch-size", "4", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err
    _assert_banner(out.splitlines()[0], "analyze")
    assert "analyze best: lpf: 1/1 stage (100%)" in err
    meta = json.loads((out_dir / "meta.json").read_text())
    assert meta["best"]["runtime"]["kernels"] == ops.backend("cpu")
    assert "| kernels " in (out_dir / "summary.md").read_text()
    acc = json.loads((out_dir / "filtered_accuracy.json").read_text())["low_pass"]["best"]["28"]
    with open(out_dir / "filtered_accuracy.csv") as fh:
        row = next(r for r in csv.DictReader(fh) if r["series"] == "best LPF")
    assert float(row["bw28_acc_pct"]) == pytest.approx(100 * acc, abs=0.01)
