"""TrainConfig: presets, base: inheritance, overrides, and the errors for unknown / ill-typed fields."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fr_fast.config import CONFIG_DIRS, TrainConfig, config_from_dict, load_config, parse_overrides

PRESETS = sorted(CONFIG_DIRS[0].glob("*.yaml"))


def test_defaults_are_the_paper_recipe():
    cfg = load_config()
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size, cfg.epochs) == (0.1, 0.9, 5e-4, 128, 100)
    assert cfg.lr_milestones == [75, 90] and cfg.attack_steps == 10
    assert cfg.eps == pytest.approx(8 / 255) and cfg.alpha == pytest.approx(2 / 255)
    # FR and WA start with the first lr decay (sec. 5).
    assert cfg.resolved_fr_start() == 75 and cfg.resolved_wa_start() == 75


def test_overrides_parse_types():
    cfg = load_config(None, ["--lr=0.05", "fr=frwa", "--eps=8/255", "--compile", "--lr_milestones=[3,7]",
                             "--weight-decay=2e-4", "--model_kwargs={width: 8}", "--data_dir=123", "--resume"])
    assert cfg.lr == 0.05 and cfg.fr == "frwa" and cfg.compile is True
    assert cfg.eps == pytest.approx(8 / 255) and cfg.lr_milestones == [3, 7]
    assert cfg.weight_decay == pytest.approx(2e-4) and cfg.model_kwargs == {"width": 8}
    assert cfg.data_dir == "123" and cfg.resume == "last"
    assert isinstance(load_config(None, ["epochs=3"]).lr, float)
    assert load_config(None, ["fr_start_epoch=null"]).fr_start_epoch is None
    assert load_config(None, ["fr_start_epoch=4"]).fr_start_epoch == 4


def test_unknown_field_is_named_with_suggestion():
    with pytest.raises(ValueError, match=r"unknown config field 'lamda'.*did you mean lam"):
        load_config(None, ["--lamda=0.2"])
    with pytest.raises(ValueError, match="unknown config field 'nope'"):
        config_from_dict({"nope": 1})


@pytest.mark.parametrize("override, field, expected", [
    ("epochs=2.5", "epochs", "int"),
    ("lr=fast", "lr", "float"),
    ("compile=3", "compile", "bool"),
    ("lr_milestones=5", "lr_milestones", "list"),
    ("model_kwargs=[1]", "model_kwargs", "dict"),
    ("batch_size=true", "batch_size", "int"),
])
def test_ill_typed_field_is_named(override, field, expected):
    with pytest.raises(ValueError, match=rf"'{field}' expects .*{expected}.*got"):
        load_config(None, [override])


@pytest.mark.parametrize("override, message", [
    ("method=sgd", "method must be one of"),
    ("fr=wa", "fr must be one of"),
    ("eps=-0.1", r"eps must be in \(0, 1\], got -0.1"),
    ("eps=0", r"eps must be in \(0, 1\]"),
    ("eps=2", r"eps must be in \(0, 1\]"),
    ("epochs=0", r"epochs must be in \[1, inf\), got 0"),
    ("lr=nan", r"lr must be in \(0, inf\), got nan"),
    ("lr=.inf", r"lr must be in \(0, inf\), got inf"),
    ("lr=0", r"lr must be in \(0, inf\)"),
    ("momentum=nan", r"momentum must be in \[0, 1\)"),
    ("momentum=1", r"momentum must be in \[0, 1\)"),
    ("lam=-0.1", r"lam must be in \[0, inf\)"),
    ("lam=.nan", r"lam must be in \[0, inf\)"),
    ("lr_gamma=0", r"lr_gamma must be in \(0, 1\]"),
    ("lr_gamma=1.5", r"lr_gamma must be in \(0, 1\]"),
    ("weight_decay=-1e-4", r"weight_decay must be in \[0, inf\)"),
    ("max_train_batches=-1", r"max_train_batches must be in \[1, inf\), got -1"),
    ("max_val_batches=0", r"max_val_batches must be in \[1, inf\)"),
    ("bn_recalibrate_batches=-2", r"bn_recalibrate_batches must be in \[1, inf\)"),
    ("lr_milestones=[-1,3]", r"lr_milestones must be in \[0, inf\), got \[-1, 3\]"),
    ("cpu_threads=0", r"cpu_threads must be in \[1, inf\)"),
    ("lr_milestones=[9,3]", "increasing"),
    ("amp=fp8", "amp must be one of"),
])
def test_invalid_values(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_frwa_needs_average_before_fr():
    with pytest.raises(ValueError, match="wa_start_epoch"):
        load_config(None, ["fr=frwa", "fr_start_epoch=0", "wa_start_epoch=5"])


def test_override_without_value():
    with pytest.raises(ValueError, match="needs a value"):
        parse_overrides(["--lr"])


def test_base_inheritance(tmp_path: Path):
    (tmp_path / "parent.yaml").write_text("lr: 0.2\nepochs: 7\nmethod: trades\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nepochs: 3\n")
    cfg = load_config(tmp_path / "child.yaml", ["--lam=0.3"])
    assert (cfg.lr, cfg.epochs, cfg.method, cfg.lam) == (0.2, 3, "trades", 0.3)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ValueError, match="inherits from itself"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "bad.yaml").write_text("base: parent.yaml\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        load_config(tmp_path / "bad.yaml")


def test_missing_preset():
    with pytest.raises(FileNotFoundError, match="no_such_preset"):
        load_config("no_such_preset")


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_loads(preset: Path):
    cfg = load_config(preset)
    assert isinstance(cfg, TrainConfig)
    assert dataclasses.asdict(cfg)["dataset"] == cfg.dataset


def test_paper_presets_follow_the_paper():
    assert load_config("cifar10_resnet18_trades_frwa").weight_decay == pytest.approx(2e-4)
    assert load_config("cifar10_resnet18_mart_fr").mart_beta == 6.0
    awp = load_config("cifar10_resnet18_awp_frwa")
    assert (awp.epochs, awp.lr_milestones, awp.fr, awp.resolved_fr_start()) == (200, [100, 150], "frwa", 100)
    svhn = load_config("svhn_resnet18_at_frwa")
    assert (svhn.lr, svhn.epochs, svhn.lr_milestones) == (0.01, 30, [15, 25])
    tiny = load_config("tinyimagenet_resnet18_at_fr")
    assert tiny.lam == 0.05 and tiny.dataset == "tinyimagenet"
    assert load_config("tinyimagenet_resnet18_lmodel").low_pass_bandwidth == 32
    assert load_config("cifar10_resnet18_lmodel").low_pass_bandwidth == 16
    assert load_config("cifar10_wrn34_10_at_frwa").model == "wrn34_10"
