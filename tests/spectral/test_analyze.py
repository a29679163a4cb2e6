"""End-to-end test of `fr-fast analyze` on a tiny untrained checkpoint and embedded MNIST."""
import json

import pytest
import torch

from fr_fast.cli import analyze as analyze_cli
from fr_fast.spectral import analyze, plots


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    ckpt = pytest.importorskip("fr_fast.runs.checkpoint")
    from fr_fast.models import build_model

    kwargs = {"name": "small_cnn", "num_classes": 10, "in_channels": 1, "width": 4}
    torch.manual_seed(0)
    model = build_model(**kwargs)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    ckpt.save_checkpoint({"config": {"dataset": "mnist", "data_dir": None, "model": "small_cnn", "eps": 0.3},
                          "model_kwargs": kwargs, "model": model.state_dict()}, path)
    return str(path)


def test_analyze_writes_all_figures_and_data(checkpoint, tmp_path):
    out = tmp_path / "res"
    rc = analyze_cli.main([checkpoint, checkpoint, "--names", "a", "b", "--out", str(out), "--n-images", "6",
                       "--heatmap-images", "2", "--panel-images", "2", "--steps", "2", "--bandwidths", "7", "28",
                       "--batch-size", "4", "--device", "cpu"])
    assert rc == 0
    for name in ("filtered_accuracy.png", "filtered_accuracy.csv", "band_accuracy.png", "band_accuracy.json",
                 "perturbation_spectrum.png", "perturbation_examples.png", "fourier_heatmap.png",
                 "fourier_heatmap.json", "panel_a.png", "panel_b.png", "summary.md", "meta.json",
                 "perturbation_examples.json"):
        assert (out / name).stat().st_size > 0, name
    # every figure can be redrawn from the data files alone
    redrawn = {p.rsplit("/", 1)[1] for p in plots.replot(out)}
    assert redrawn == {p.name for p in out.glob("*.png")}
    acc = json.loads((out / "filtered_accuracy.json").read_text())
    # the same checkpoint twice sees the same images: identical results
    assert acc["low_pass"]["a"] == acc["low_pass"]["b"]
    heat = json.loads((out / "fourier_heatmap.json").read_text())["a"]
    assert len(heat) == 28 and len(heat[0]) == 28
    meta = json.loads((out / "meta.json").read_text())
    assert meta["a"]["eps"] == 0.3 and meta["a"]["n_images"] == 6
    bands = json.loads((out / "band_accuracy.json").read_text())["a"]
    # a full-bandwidth low-pass keeps the whole perturbation: same accuracy as the PGD attack itself
    assert bands["lpf_delta"]["28"] == pytest.approx(bands["robust"])


def test_analyze_rejects_bad_arguments(checkpoint, tmp_path, capsys):
    assert analyze_cli.main([checkpoint, "--out", str(tmp_path), "--what", "lpf,nope"]) == 2
    assert "--what" in capsys.readouterr().err
    assert analyze_cli.main([checkpoint, "--out", str(tmp_path), "--what", "lpf", "--bandwidths", "40"]) == 2
    assert "bandwidths" in capsys.readouterr().err
    assert analyze_cli.main([str(tmp_path / "missing.pt"), "--out", str(tmp_path)]) == 2


def test_default_bandwidths():
    assert analyze.default_bandwidths(32) == [4, 8, 12, 16, 20, 24, 28, 32]
    assert analyze.default_bandwidths(28) == [4, 8, 12, 16, 20, 24, 28]
    assert analyze.default_bandwidths(64) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert analyze.default_bandwidths(30)[-1] == 30


def test_analyze_checks_out_before_loading(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert analyze_cli.main([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "file" / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not writable" in err and "missing.pt" not in err
