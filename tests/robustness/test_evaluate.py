"""Tests of fr_fast.robustness.evaluate: the report, its sanity checks, and the `fr-fast eval` entry point."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fr_fast.cli import eval as eval_cli
from fr_fast.robustness import evaluate as ev

EPS = 0.1  # MNIST-scale radius where the tiny model is partly robust


@pytest.fixture(scope="module")
def mnist(mnist_model):
    """The shared trained MNIST CNN (tests/conftest.py) with 200 held-out digits as a TensorDataset."""
    model, x, y = mnist_model
    return model, TensorDataset(x[:200], y[:200])


def test_report_on_a_trained_model(mnist):
    model, data = mnist
    report = ev.evaluate(model, data, eps=EPS, attacks=("clean", "pgd10", "cw10", "aa"), aa_version="fast",
                         aa_steps=5, n_examples=100, batch_size=64, curve_examples=60, curve_steps=10,
                         progress=False)
    x, y = data.tensors
    with torch.no_grad():
        clean = 100 * (model(x[:100]).argmax(1) == y[:100]).float().mean().item()
    acc = {name: row["accuracy"] for name, row in report["attacks"].items()}
    assert report["n_examples"] == 100
    assert acc["clean"] == pytest.approx(clean)
    assert acc["pgd10"] < acc["clean"] - 20  # the attacks bite
    assert acc["aa"] <= acc["pgd10"] + 3
    assert report["worst_case"] <= min(acc[n] for n in ("pgd10", "cw10", "aa"))
    assert report["attacks"]["pgd10"]["settings"] == {"attack": "pgd", "loss": "ce", "eps": EPS, "alpha": EPS / 4,
                                                     "steps": 10, "restarts": 1, "random_start": True}
    assert report["attacks"]["cw10"]["settings"]["loss"] == "cw"
    assert report["attacks"]["aa"]["settings"]["version"] == "fast"
    curve = report["eps_curve"]
    assert curve["eps"] == pytest.approx([0, EPS / 4, EPS / 2, EPS, 2 * EPS])
    assert curve["n_examples"] == 60 and curve["attack"] == "pgd10"
    assert curve["accuracy"][0] == pytest.approx(100 * (model(x[:60]).argmax(1) == y[:60]).float().mean().item())
    assert all(a >= b for a, b in zip(curve["accuracy"], curve["accuracy"][1:]))
    assert report["large_eps"]["accuracy"] <= 2.0
    assert report["checks"] == {"robust_le_clean": True, "monotone_in_eps": True, "large_eps_breaks": True,
                                "pgd_aa_agree": True}
    assert report["warnings"] == []
    json.dumps(report)  # JSON-serialisable as is


def test_report_is_reproducible_and_leaves_rng_alone(mnist):
    model, data = mnist
    state = torch.random.get_rng_state()
    runs = [ev.evaluate(model, data, eps=EPS, attacks=("pgd5",), n_examples=50, eps_curve=False, progress=False)
            for _ in range(2)]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert runs[0]["attacks"]["pgd5"]["correct"] == runs[1]["attacks"]["pgd5"]["correct"]


@pytest.mark.parametrize("as_loader", [False, True])
def test_n_examples_with_datasets_and_loaders(mnist, as_loader):
    model, data = mnist
    source = DataLoader(data, batch_size=16) if as_loader else data
    report = ev.evaluate(model, source, eps=EPS, attacks=("clean",), n_examples=37, batch_size=16,
                         eps_curve=False, progress=False)
    x, y = data.tensors
    with torch.no_grad():
        expected = int((model(x[:37]).argmax(1) == y[:37]).sum())
    assert report["n_examples"] == 37
    assert report["attacks"]["clean"]["correct"] == expected


def test_plain_list_of_batches(mnist):
    model, data = mnist
    x, y = data.tensors
    report = ev.evaluate(model, [(x[:10], y[:10]), (x[10:20], y[10:20])], eps=EPS, attacks=("clean", "pgd3"),
                         eps_curve=False, progress=False)
    assert report["n_examples"] == 20
    assert "worst_case" in report and "eps_curve" not in report


def _fake_report(clean=80.0, pgd=40.0, aa=39.0, curve=(80.0, 70.0, 60.0, 40.0, 10.0), large=0.0):
    return {"attacks": {"clean": {"accuracy": clean}, "pgd20": {"accuracy": pgd}, "aa": {"accuracy": aa}},
            "eps_curve": {"eps": [0, 2 / 255, 4 / 255, 8 / 255, 16 / 255], "accuracy": list(curve)},
            "large_eps": {"eps": 0.5, "accuracy": large}}


def test_sanity_checks_pass_on_a_healthy_report():
    checks, warnings = ev.sanity_checks(_fake_report())
    assert all(checks.values()) and len(checks) == 4 and warnings == []


@pytest.mark.parametrize("kwargs, failed, phrase", [
    (dict(pgd=85.0, aa=84.0), "robust_le_clean", "above clean"),
    (dict(curve=(80.0, 70.0, 72.0, 40.0, 10.0)), "monotone_in_eps", "rises"),
    (dict(large=15.0), "large_eps_breaks", "0.5"),
    (dict(pgd=50.0, aa=40.0), "pgd_aa_agree", "gradient masking"),
    (dict(pgd=40.0, aa=48.0), "pgd_aa_agree", "not working"),
])
def test_sanity_checks_flag_problems(kwargs, failed, phrase):
    checks, warnings = ev.sanity_checks(_fake_report(**kwargs))
    assert [k for k, ok in checks.items() if not ok] == [failed]
    assert len(warnings) == 1 and phrase in warnings[0]


def test_warnings_reach_the_report_for_a_masked_model(mnist):
    # A model whose argmax is computed from sign-quantised inputs has zero input gradient almost
    # everywhere: gradient attacks stall, so the large-eps check must fire.
    model, data = mnist
    masked = nn.Sequential(_Quantise(), copy.deepcopy(model)).eval()
    report = ev.evaluate(masked, data, eps=EPS, attacks=("clean", "pgd5"), n_examples=40, curve_examples=40,
                         curve_steps=3, progress=False)
    assert report["checks"]["large_eps_breaks"] is False
    assert any("gradient masking" in w for w in report["warnings"])


class _Quantise(nn.Module):
    def forward(self, x):
        return x + ((x > 0.5).float() - x).detach()  # straight-through would leak gradients: detach kills them


def test_attack_spec_parsing():
    assert ev.attack_spec("pgd50", 8 / 255, 2 / 255).settings["steps"] == 50
    assert ev.attack_spec("cw", 8 / 255, 2 / 255).settings["steps"] == ev.CW_STEPS
    assert ev.attack_spec("cw7", 8 / 255, 2 / 255).settings["steps"] == 7
    for bad in ("pgd", "fgsm", "aa2"):
        with pytest.raises(ValueError, match="attack"):
            ev.attack_spec(bad, 8 / 255, 2 / 255)
    with pytest.raises(ValueError, match="aa_version"):
        ev.attack_spec("aa", 8 / 255, 2 / 255, aa_version="plus")


def test_evaluate_rejects_bad_arguments(mnist):
    model, data = mnist
    with pytest.raises(ValueError, match="eps"):
        ev.evaluate(model, data, eps=-1.0, progress=False)
    with pytest.raises(ValueError, match="duplicates"):
        ev.evaluate(model, data, eps=EPS, attacks=("clean", "clean"), progress=False)
    with pytest.raises(ValueError, match="n_examples"):
        ev.evaluate(model, data, eps=EPS, n_examples=0, progress=False)
    with pytest.raises(ValueError, match="empty"):
        ev.evaluate(model, [], eps=EPS, attacks=("clean",), eps_curve=False, progress=False)


def test_cli_on_a_checkpoint(tmp_path, capsys):
    checkpoint = pytest.importorskip("fr_fast.runs.checkpoint")
    models = pytest.importorskip("fr_fast.models")
    torch.manual_seed(0)
    kwargs = dict(name="small_cnn", num_classes=10, in_channels=1)
    model = models.build_model(**kwargs)
    config = {"dataset": "mnist", "data_dir": None, "model": "small_cnn", "eps": 0.3, "pad_to": None}
    path = tmp_path / "best.pt"
    checkpoint.save_checkpoint({"config": config, "model_kwargs": kwargs, "model": model.state_dict()}, path)
    out = tmp_path / "report.json"
    rc = eval_cli.main([str(path), "--n-examples", "12", "--batch-size", "8", "--attacks", "clean,pgd2",
                  "--eps", "8/255", "--no-eps-curve", "--no-progress", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["n_examples"] == 12 and report["dataset"] == "mnist"
    assert report["eps"] == pytest.approx(8 / 255)
    assert set(report["attacks"]) == {"clean", "pgd2"}
    printed = capsys.readouterr().out
    assert "pgd2" in printed and "acc %" in printed


def test_cli_missing_checkpoint(tmp_path, capsys):
    pytest.importorskip("fr_fast.runs.checkpoint")
    assert eval_cli.main([str(tmp_path / "nope.pt"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.pt" in err and "does not exist" in err


def test_cli_checks_out_before_any_work(tmp_path, capsys, monkeypatch):
    import fr_fast.runs.checkpoint

    def no_work(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before --out was checked")

    monkeypatch.setattr(fr_fast.runs.checkpoint, "load_model", no_work)
    assert eval_cli.main([str(tmp_path / "any.pt"), "--out", "/nonexistent/r.json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/nonexistent" in err and "does not exist" in err


def _checkpoint_naming(tmp_path, data_dir):
    from fr_fast.models import build_model
    from fr_fast.runs.checkpoint import save_checkpoint

    kwargs = dict(name="small_cnn", num_classes=10, in_channels=1, width=4)
    path = tmp_path / "foreign.pt"
    save_checkpoint({"config": {"dataset": "mnist", "data_dir": str(data_dir), "model": "small_cnn", "eps": 0.3,
                                "pad_to": None}, "model_kwargs": kwargs, "model": build_model(**kwargs).state_dict()},
                    path)
    return path


def test_cli_announces_a_data_dir_taken_from_the_checkpoint(tmp_path, capsys):
    path = _checkpoint_naming(tmp_path, tmp_path / "planted")
    assert eval_cli.main([str(path), "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "planted" in err[0] and "taken from the checkpoint" in err[0] and "--data-dir" in err[0]
    assert "error" in err[1] and "planted" in err[1]
    # --data_dir wins, and nothing is announced
    assert eval_cli.main([str(path), "--no-progress", "--device", "cpu", "--data_dir", str(tmp_path / "mine")]) == 2
    err = capsys.readouterr().err
    assert "taken from the checkpoint" not in err and "planted" not in err and "mine" in err


def _checkpoint_with_average(tmp_path, **config):
    """A small_cnn checkpoint whose student and weight average differ (AveragedModel layout, as the trainer)."""
    from torch.optim.swa_utils import AveragedModel

    from fr_fast.models import build_model
    from fr_fast.runs.checkpoint import save_checkpoint

    kwargs = dict(name="small_cnn", num_classes=10, in_channels=1, width=4)
    torch.manual_seed(0)
    student, other = build_model(**kwargs), build_model(**kwargs)
    average = AveragedModel(other)
    path = tmp_path / "best.pt"
    save_checkpoint({"config": {"dataset": "mnist", "data_dir": None, "model": "small_cnn", "eps": 0.3,
                                "pad_to": None, "fr": "frwa", **config},
                     "model_kwargs": kwargs, "model": student.state_dict(), "teacher": average.state_dict()}, path)
    return path, student, other


@pytest.mark.parametrize("role, auto", [("teacher", "student"), ("evaluated", "average"), ("both", "average")])
def test_load_model_weights_student_average_auto(tmp_path, role, auto):
    from fr_fast.runs.checkpoint import load_model

    path, student, average = _checkpoint_with_average(tmp_path, wa_role=role)
    x = torch.rand(2, 1, 28, 28)
    for weights, reference in [("student", student), ("average", average), ("auto", {"student": student,
                                                                                     "average": average}[auto])]:
        model, cfg = load_model(path, weights=weights)
        assert cfg["weights"] == (auto if weights == "auto" else weights)
        torch.testing.assert_close(model(x), reference.eval()(x))


def test_load_model_without_average(tmp_path):
    from fr_fast.models import build_model
    from fr_fast.runs.checkpoint import load_model, save_checkpoint

    kwargs = dict(name="small_cnn", num_classes=10, in_channels=1, width=4)
    path = tmp_path / "m.pt"
    save_checkpoint({"config": {"dataset": "mnist", "wa_role": "evaluated"}, "model_kwargs": kwargs,
                     "model": build_model(**kwargs).state_dict(), "teacher": None}, path)
    assert load_model(path)[1]["weights"] == "student"
    with pytest.raises(ValueError, match="no weight average.*--weights student"):
        load_model(path, weights="average")


def test_cli_prints_the_paper_numbers_beside_the_measured(tmp_path, capsys):
    path, _, _ = _checkpoint_with_average(tmp_path, paper_row="t6-at-frwa", wa_role="teacher")
    out = tmp_path / "report.json"
    assert eval_cli.main([str(path), "--n-examples", "8", "--attacks", "clean,pgd20",
                    "--no-eps-curve", "--no-progress", "--device", "cpu", "--weights", "average",
                    "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "weights: average" in printed and "paper: Table 6: AT + FR/WA (t6-at-frwa)" in printed
    line = next(l for l in printed.splitlines() if l.startswith("pgd20 ") and "55.12" in l)
    measured = json.loads(out.read_text())["attacks"]["pgd20"]["accuracy"]
    assert f"{measured - 55.12:+.2f}" in line
    report = json.loads(out.read_text())
    assert report["paper"] == {"row": "t6-at-frwa", "label": "t6-at-frwa", "like_for_like": True,
                               "accuracy": {"clean": 81.74, "pgd20": 55.12, "pgd50": 54.88, "cw": 52.21, "aa": 50.16}}
    assert report["weights"] == "average"


def _fake_cifar10(root, n=24, seed=0):
    """A CIFAR-10 folder of random images (the pickled batch format the reader expects)."""
    import pickle

    import numpy as np
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n).tolist(), "batch_label": name}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    return root


def test_l_model_table1_evaluation_on_generated_data(tmp_path, capsys):
    """Table 1's protocol for an L-model: the plain model on LPF_k(x) for every bandwidth of the row, PGD-20 on
    unfiltered inputs, each beside the paper's column."""
    from fr_fast.models import LowPass, build_model
    from fr_fast.runs.checkpoint import load_model, save_checkpoint
    from fr_fast.spectral.fourier import low_pass

    data = _fake_cifar10(tmp_path / "cifar10")
    kwargs = dict(name="small_cnn", num_classes=10, in_channels=3, width=4)
    torch.manual_seed(0)
    path = tmp_path / "best.pt"
    save_checkpoint({"config": {"dataset": "cifar10", "data_dir": str(data), "model": "small_cnn", "eps": 8 / 255,
                                "pad_to": None, "low_pass_bandwidth": 16, "low_pass_in": "data",
                                "paper_row": "t1-cifar10-lmodel"},
                     "model_kwargs": {**kwargs, "low_pass_bandwidth": None},
                     "model": build_model(**kwargs).state_dict()}, path)
    out = tmp_path / "report.json"
    assert eval_cli.main([str(path), "--attacks", "clean,pgd20", "--no-eps-curve", "--no-progress",
                          "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    model, _ = load_model(path)
    assert not any(isinstance(m, LowPass) for m in model.modules())  # a plain model
    from fr_fast.data import load_dataset
    test = load_dataset("cifar10", "test", str(data))
    x, y = torch.stack([test[i][0] for i in range(len(test))]), torch.tensor([test[i][1] for i in range(len(test))])
    with torch.no_grad():
        for k in (4, 8, 12, 16, 20, 24, 28, 32):
            expected = 100 * (model(low_pass(x, k)).argmax(1) == y).float().mean().item()
            assert report["lpf"][str(k)] == pytest.approx(expected)
    assert report["lpf"]["32"] == pytest.approx(report["attacks"]["clean"]["accuracy"])  # 32 = unfiltered
    assert report["attacks"]["pgd20"]["settings"]["steps"] == 20
    assert report["paper"]["like_for_like"] and report["paper"]["accuracy"]["lpf16"] == 91.45
    assert report["paper"]["accuracy"]["clean"] == 92.03  # the unfiltered column
    printed = capsys.readouterr().out
    line = next(l for l in printed.splitlines() if l.startswith("lpf4 "))
    assert "18.41" in line and f"{report['lpf']['4'] - 18.41:+.2f}" in line


def test_modified_paper_row_is_not_compared_like_for_like(tmp_path, capsys):
    path, _, _ = _checkpoint_with_average(tmp_path, wa_role="teacher",
                                          paper_row="modified from t6-at-frwa: dataset=mnist, model=small_cnn")
    out = tmp_path / "report.json"
    assert eval_cli.main([str(path), "--n-examples", "8", "--attacks", "clean", "--no-eps-curve", "--no-progress",
                          "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "modified from t6-at-frwa: dataset=mnist, model=small_cnn" in printed
    assert "not comparable" in printed and "measured" not in printed and "paper: Table 6" not in printed
    report = json.loads(out.read_text())["paper"]
    assert (report["row"], report["like_for_like"]) == ("t6-at-frwa", False)
