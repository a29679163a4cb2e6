"""`fr-fast runs` / `fr-fast compare`: two tiny finished runs side by side, one unfinished, the curves PNG."""
from __future__ import annotations

import json

import pytest

from fr_fast.cli import main as cli
from fr_fast.config.train_config import load_config
from fr_fast.runs.compare import COLUMNS, load_run, plot_curves
from fr_fast.training.train import train

TINY = ["epochs=2", "lr_milestones=[1]", "batch_size=16", "max_train_batches=2", "max_val_batches=1",
        "attack_steps=1", "eval_pgd_steps=1", "model_kwargs={width: 4}", "progress=false",
        "bn_recalibrate_batches=1", "device=cpu", "cpu_threads=1"]


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    summaries = {name: train(load_config(preset, [*TINY, f"out_dir={root / name}"]))
                 for name, preset in (("at", "mnist_cnn_at"), ("at_frwa", "mnist_cnn_at_frwa"))}
    report = {"attacks": {"clean": {"accuracy": 91.5}, "pgd20": {"accuracy": 40.25}, "aa": {"accuracy": 38.0}}}
    (root / "at" / "eval.json").write_text(json.dumps(report))
    # an unfinished run: its history stops before cfg.epochs
    train(load_config("mnist_cnn_at", [*TINY, "epochs=3", "lr_milestones=[2]", f"out_dir={root / 'partial'}"]))
    lines = (root / "partial" / "metrics.jsonl").read_text().splitlines()
    (root / "partial" / "metrics.jsonl").write_text("\n".join(lines[:1]) + "\n")
    return root, summaries


def _table(text: str) -> dict[str, dict[str, str]]:
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]
    header = rows[0]
    assert tuple(header) == COLUMNS
    return {r[0]: dict(zip(header, r)) for r in rows[1:]}


def test_runs_table_of_finished_runs(runs_root, capsys):
    root, summaries = runs_root
    assert cli.main(["runs", str(root)]) == 0
    out = capsys.readouterr().out
    table = _table(out)
    assert set(table) == {"at", "at_frwa"} and "1 unfinished runs not shown" in out
    at, frwa = table["at"], table["at_frwa"]
    assert (at["method"], at["lambda"], frwa["method"], frwa["lambda"]) == ("at", "-", "at+FR/WA", "0.1")
    for name, row in table.items():
        s = summaries[name]
        assert row["epochs"] == "2/2" and row["best epoch"] == str(s["best_epoch"])
        assert row["val clean %"] == f"{s['best_val_clean']:.2f}" and row["val PGD %"] == f"{s['best_val_pgd']:.2f}"
    assert (at["eval clean %"], at["eval PGD-20 %"], at["eval AA %"]) == ("91.50", "40.25", "38.00")
    assert frwa["eval AA %"] == "-"
    assert cli.main(["runs", str(root), "--all"]) == 0
    assert _table(capsys.readouterr().out)["partial"]["epochs"] == "1/3"


def test_compare_named_runs_and_plot(runs_root, tmp_path, capsys):
    root, _ = runs_root
    png = tmp_path / "curves.png"
    assert cli.main(["compare", str(root / "at_frwa"), str(root / "at"), "--plot", str(png)]) == 0
    table = _table(capsys.readouterr().out)
    assert list(table) == [str(root / "at_frwa"), str(root / "at")]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_run(root / "at").finished and not load_run(root / "partial").finished


def test_compare_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["compare", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a run folder" in err
    assert cli.main(["runs", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_curves_have_whole_epoch_ticks_and_one_accuracy_scale(runs_root, tmp_path, monkeypatch):
    plt = pytest.importorskip("matplotlib.pyplot")
    root, _ = runs_root
    figures, close = [], plt.close
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to inspect it
    plot_curves([load_run(root / "at"), load_run(root / "at_frwa")], tmp_path / "curves.png")
    (fig,) = figures
    clean, robust = fig.axes
    fig.canvas.draw()
    ticks = [t for t in clean.get_xticks() if clean.get_xlim()[0] <= t <= clean.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)  # 2 epochs: no 0.25, 0.5, ... ticks
    assert clean.get_shared_y_axes().joined(clean, robust) and clean.get_ylabel() == "accuracy (%)"
    assert [line.get_label() for line in robust.get_lines()] == [str(root / "at"), str(root / "at_frwa")]
    close(fig)
