"""TrainConfig: presets, base: inheritance, overrides, and the errors for unknown / ill-typed fields."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import fr_fast
from fr_fast.config.train_config import CONFIG_DIRS, TrainConfig, config_from_dict, load_config, parse_overrides

PRESETS = sorted(p for p in CONFIG_DIRS[0].glob("*.yaml") if p.stem != "paper")


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
        config_from_dict({"nope": 1}, TrainConfig)


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
    ("cpu_threads=0", r"cpu_threads must be in \[1, 4096\]"),
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
        parse_overrides(["--lr"], TrainConfig)


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


def test_base_list_composes_in_order(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("lr: 0.2\nepochs: 7\n")
    (tmp_path / "b.yaml").write_text("lr: 0.3\nmethod: mart\n")
    (tmp_path / "c.yaml").write_text("base: [a.yaml, b]\nepochs: 9\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert (cfg.lr, cfg.epochs, cfg.method) == (0.3, 9, "mart")  # later bases win, own values win over all
    (tmp_path / "d.yaml").write_text("base: {a: 1}\n")
    with pytest.raises(ValueError, match="'base'.*list"):
        load_config(tmp_path / "d.yaml")


def test_paper_yaml_is_not_a_preset():
    with pytest.raises(ValueError, match="--paper"):
        load_config("paper")


def test_new_fields_are_checked_and_shown():
    cfg = load_config()
    assert (cfg.wa_role, cfg.attack_mode) == ("teacher", "eval")
    for override, message in [("wa_role=student", "wa_role must be one of"), ("attack_mode=test", "attack_mode")]:
        with pytest.raises(ValueError, match=message):
            load_config(None, [override])


@pytest.mark.parametrize("method, expected", [("at", "train"), ("natural", "train"), ("trades", "eval"),
                                              ("mart", "eval")])
def test_attack_mode_auto_is_the_reference_code(method, expected):
    assert load_config(None, [f"method={method}", "attack_mode=auto"]).resolved_attack_mode() == expected
    assert load_config(None, [f"method={method}"]).resolved_attack_mode() == "eval"  # the default: the FR code's
    assert load_config(None, ["method=awp", "attack_mode=auto", f"awp_base={'trades' if method == 'trades' else 'at'}"]) \
        .resolved_attack_mode() == ("eval" if method == "trades" else "train")


def test_defaults_are_the_published_recipe():
    """TrainConfig() and a preset-less fr-fast train are the CIFAR-10 ResNet18 profile the paper rows use."""
    from fr_fast.config.paper import row_config
    published = row_config("t6-at-fr", ["--out_dir=x"])
    default = load_config(None, ["fr=fr", "out_dir=x"])
    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("paper_row", "data_dir")]
    assert {f: getattr(default, f) for f in fields} == {f: getattr(published, f) for f in fields}
    assert (default.fft, default.lam, default.attack_mode, default.amp) == ("2d", 0.1, "eval", "off")
    assert (TrainConfig().fft, TrainConfig().lr_milestones, TrainConfig().epochs) == ("2d", [75, 90], 100)
    import inspect

    import fr_fast
    assert inspect.signature(fr_fast.fr_loss).parameters["fft"].default == "1d"  # Eq. 2 as printed
    assert inspect.signature(fr_fast.FRLoss).parameters["fft"].default == "1d"


def test_awp_defaults_follow_the_awp_code_per_base():
    at_awp = load_config(None, ["method=awp", "awp_base=at", "lr=0.1"])
    assert at_awp.resolved_awp() == (0.01, 0, 0.01)
    trades_awp = load_config(None, ["method=awp", "awp_base=trades", "lr=0.1"])
    assert trades_awp.resolved_awp() == (0.005, 9, 0.1)  # proxy lr = the initial lr
    explicit = load_config(None, ["method=awp", "awp_base=trades", "awp_gamma=0.02", "awp_warmup=0",
                                  "awp_proxy_lr=0.05"])
    assert explicit.resolved_awp() == (0.02, 0, 0.05)
    assert load_config("method/awp_trades").resolved_awp()[:2] == (0.005, 9)


def test_fr_that_never_switches_on_is_an_error_naming_the_field():
    with pytest.raises(ValueError, match=r"fr_start_epoch.*milestone \(6\).*epochs=1"):
        load_config("mnist_cnn_at_fr", ["epochs=1"])
    with pytest.raises(ValueError, match="fr_start_epoch"):
        load_config("cifar10_resnet18_at_frwa", ["epochs=75"])
    assert load_config("mnist_cnn_at_fr", ["epochs=1", "fr_start_epoch=0"]).resolved_fr_start() == 0
    assert load_config("mnist_cnn_at_fr", ["epochs=1", "fr_start_epoch=5"]).fr_start_epoch == 5  # meant: allowed
    assert load_config("mnist_cnn_at_fr", ["epochs=7"]).resolved_fr_start() == 6
    load_config("mnist_cnn_at", ["epochs=1"])  # no FR, nothing to switch on


def test_weight_average_that_never_switches_on_is_an_error():
    # evaluated: the average is created at the end of epoch index wa_start - 1 = the first milestone.
    cfg = load_config("mnist_cnn_at", ["wa=true", "wa_role=evaluated", "epochs=7"])
    assert cfg.resolved_wa_start() == 7 and cfg.wa_evaluated and not cfg.wa_teacher
    with pytest.raises(ValueError, match="wa_start_epoch"):
        load_config("mnist_cnn_at", ["wa=true", "wa_role=evaluated", "epochs=6"])
    assert load_config("mnist_cnn_at", ["wa=true", "epochs=6", "wa_start_epoch=9"]).wa_start_epoch == 9


def test_wa_roles():
    teacher = load_config("mnist_cnn_at_frwa")
    assert teacher.wa_teacher and not teacher.wa_evaluated and teacher.resolved_wa_start() == 6
    evaluated = load_config("mnist_cnn_at_frwa", ["wa_role=evaluated"])
    assert not evaluated.wa_teacher and evaluated.wa_evaluated and evaluated.resolved_wa_start() == 7
    both = load_config("mnist_cnn_at_frwa", ["wa_role=both"])
    assert both.wa_teacher and both.wa_evaluated
    plain = load_config("mnist_cnn_at_fr", ["wa=true", "wa_role=evaluated"])
    assert plain.wa_evaluated and not plain.wa_teacher


def _authors_fr(teacher, adv):
    """The authors' FR term: torch.rfft(signal_ndim=2, onesided=False) of both logits, nn.L1Loss (mean)."""
    import torch
    spec = lambda z: torch.view_as_real(torch.fft.fft2(z))  # noqa: E731  (B, C, 2): the old rfft layout
    return torch.nn.L1Loss()(spec(adv), spec(teacher))


@pytest.mark.parametrize("preset, classes, authors_lam", [
    ("cifar100_resnet18_at_fr", 100, 0.1), ("cifar100_resnet18_at_frwa", 100, 0.1),
    ("tinyimagenet_resnet18_at_fr", 200, 0.05), ("tinyimagenet_resnet18_at_frwa", 200, 0.05),
    ("cifar10_resnet18_trades_fr", 10, 0.1), ("svhn_resnet18_at_fr", 10, 0.1)])
def test_paper_presets_have_the_authors_fr_strength(preset, classes, authors_lam):
    """The preset's FR term equals the authors' formulation with their lambda on random (128, C) logits."""
    import torch

    import fr_fast

    cfg = load_config(preset)
    torch.manual_seed(classes)
    teacher, adv = torch.randn(cfg.batch_size, classes), torch.randn(cfg.batch_size, classes)
    ours = fr_fast.FRLoss(cfg.lam, cfg.distance, cfg.fft)(teacher, adv)
    assert cfg.batch_size == 128
    assert ours.item() == pytest.approx(authors_lam * _authors_fr(teacher, adv).item(), rel=0.05)
    assert cfg.attack_mode == "eval" and cfg.resolved_attack_mode() == "eval"  # the authors' pgd_whitebox


def test_cpu_presets_say_which_fr_form_they_use():
    text = (CONFIG_DIRS[0] / "mnist_cnn_at.yaml").read_text()
    assert "fft: 1d" in text and load_config("fashion_mnist_cnn_at_fr").fft == "1d"


@pytest.mark.parametrize("fft", ["1d", "2d"])
@pytest.mark.parametrize("distance", ["l1", "l2", "cosine"])
def test_every_fr_setting_the_config_accepts_runs(distance, fft):
    """Whatever (distance, fft) the config accepts, the FR term computes with a finite gradient: a setting
    that would fail only when FR first switches on (epoch 75 of a paper row) is refused when it is read."""
    cfg = TrainConfig(fr="fr", distance=distance, fft=fft)
    teacher = torch.randn(4, 10, dtype=torch.float64)
    adv = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
    value = fr_fast.fr_loss(teacher, adv, cfg.distance, "mean", cfg.fft)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(adv.grad).all() and adv.grad.abs().sum() > 0
