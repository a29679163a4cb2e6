"""configs/paper.yaml: every row of Tables 1-8 resolves to a valid config; --paper, published numbers, docs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fr_fast.cli.train import main as train_main
from fr_fast.config import paper
from fr_fast.config.train_config import CONFIG_DIRS, config_to_dict, load_config

TABLES, ALL_ROWS = paper.load_paper()
ROWS = [r for r in ALL_ROWS if r.figure is None]
FIGURE_ROWS = [r for r in ALL_ROWS if r.figure is not None]
DOCS = Path(__file__).resolve().parents[2] / "docs" / "presets.md"
# Rows per table in the paper: Table 1 (4 datasets x natural / L-model / robust), Table 2 (4 x 3),
# Table 3 (6 defenses), Table 4 (2 models x 3), Tables 5-8 (4 methods x 3).
EXPECTED_ROWS = {1: 12, 2: 12, 3: 6, 4: 6, 5: 12, 6: 12, 7: 12, 8: 12}


def test_paper_yaml_covers_tables_1_to_8():
    assert sorted(TABLES) == list(range(1, 9))
    counts = {t: sum(r.table == t for r in ROWS) for t in TABLES}
    assert counts == EXPECTED_ROWS
    assert len({r.id for r in ALL_ROWS}) == len(ALL_ROWS)
    assert len({paper._key(r.title) for r in ALL_ROWS}) == len(ALL_ROWS)


def test_figure_6_rows_branch_from_the_at_trunk_before_the_decay():
    assert paper.figures() and {r.figure for r in FIGURE_ROWS} == {6}
    trunk = paper.row_config(FIGURE_ROWS[0].branch["row"])
    assert (trunk.method, trunk.fr, trunk.dataset) == ("at", "none", "cifar10")
    lams, distances = [], []
    for row in FIGURE_ROWS:
        cfg = paper.row_config(row.id)
        assert row.branch == {"row": "t6-at", "epoch": trunk.lr_milestones[0]} and row.paper == {}
        assert (cfg.fr, cfg.fft, cfg.resolved_fr_start()) == ("fr", "2d", row.branch["epoch"])
        different = {k for k in ("model", "dataset", "batch_size", "eps", "alpha", "lr", "lr_milestones", "seed",
                                 "attack_steps", "epochs") if getattr(cfg, k) != getattr(trunk, k)}
        assert not different  # a branch of the trunk's checkpoint may differ only in FR settings
        (distances if row.id.startswith("f6-dist") else lams).append(cfg.distance if row.id.startswith("f6-dist")
                                                                     else cfg.lam)
    assert lams == [0.01, 0.05, 0.1, 0.15, 0.2] and distances == ["l1", "l2", "cosine"]
    assert paper.find_row("Figure 6: lambda 0.15").id == "f6-lam-015"


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_every_row_resolves_to_a_valid_config(row):
    cfg = paper.row_config(row.id)
    assert cfg.paper_row == row.id and Path(cfg.out_dir).parent.name == row.id
    assert (cfg.fft, cfg.attack_mode, cfg.batch_size) == ("2d", "eval", 128)  # the authors' code, see deviations
    assert cfg.resolved_fr_start() < cfg.epochs
    dataset = next(p.split("/")[1] for p in row.compose if p.startswith("dataset/"))
    assert cfg.dataset == dataset
    assert cfg.lam == (0.05 if dataset == "tinyimagenet" else 0.1)
    for key in ("clean", "pgd20", "pgd50", "cw", "aa", "lpf"):
        values = row.paper.get(key)
        for v in (values.values() if isinstance(values, dict) else [values] if values is not None else []):
            assert 0.0 <= float(v) <= 100.0


def test_rows_follow_the_paper_settings():
    t7 = paper.row_config("Table 7: TRADES + FR")
    assert (t7.method, t7.fr, t7.dataset, t7.weight_decay, t7.trades_beta) == ("trades", "fr", "cifar100", 2e-4, 6.0)
    svhn_awp = paper.row_config("t5-awp-frwa")
    assert (svhn_awp.lr, svhn_awp.epochs, svhn_awp.lr_milestones, svhn_awp.fr) == (0.01, 200, [100, 150], "frwa")
    assert svhn_awp.resolved_awp() == (0.01, 5, 0.01)  # AT-AWP's train_svhn.py warms up for 5 epochs
    assert paper.row_config("t6-awp-frwa").resolved_awp() == (0.01, 0, 0.01)  # its CIFAR scripts do not
    assert paper.row_config("t5-awp", ["--awp_warmup=0"]).resolved_awp()[1] == 0
    svhn = paper.row_config("t2-svhn-at-fr")
    assert (svhn.lr, svhn.epochs, svhn.lr_milestones) == (0.01, 30, [15, 25])
    assert paper.row_config("t1-tinyimagenet-lmodel").low_pass_bandwidth == 32
    assert paper.row_config("t1-cifar100-lmodel").low_pass_bandwidth == 16
    assert paper.row_config("t4-wrn34-15-at-frwa").model == "wrn34_15"
    assert paper.row_config("t4-resnet152-at").model == "resnet152"
    assert paper.row_config("Table 3: AT + FR/WA").model == "wrn34_10"
    assert paper.row_config("t6-at-frwa").wa_role == "teacher"


def test_find_row_by_title_or_id_and_errors():
    assert paper.find_row("table 7:trades+FR").id == "t7-trades-fr"
    assert paper.find_row("T6-AWP").title == "Table 6: AWP"
    with pytest.raises(ValueError, match=r"no paper row.*did you mean.*Table 7: TRADES \+ FR"):
        paper.find_row("Table 7: TRADES + FRR")


def test_overrides_apply_on_top_of_a_row():
    cfg = paper.row_config("t6-at-fr", ["--epochs=80", "--out_dir=elsewhere"])
    assert (cfg.epochs, cfg.out_dir, cfg.paper_row) == (80, "elsewhere", "modified from t6-at-fr: epochs=80")


def test_published_numbers_for_eval():
    assert paper.published_for_eval("t7-trades-fr") == {"clean": 55.57, "pgd20": 30.08, "pgd50": 29.95,
                                                        "cw": 25.93, "aa": 25.05}
    natural = paper.published_for_eval("t1-cifar10-natural")
    assert (natural["clean"], natural["pgd20"], natural["lpf4"], natural["lpf32"]) == (94.43, 0.0, 12.6, 94.43)
    lmodel = paper.published_for_eval("t1-cifar10-lmodel", {"low_pass_bandwidth": 16, "low_pass_in": "data"})
    assert (lmodel["clean"], lmodel["pgd20"], lmodel["lpf16"], lmodel["lpf8"]) == (92.03, 0.05, 91.45, 45.29)
    # the filter inside the model: every input is LowPass16(x), compared with the training bandwidth's column
    assert paper.published_for_eval("t1-cifar10-lmodel", {"low_pass_bandwidth": 16, "low_pass_in": "model"}) \
        == {"clean": 91.45, "pgd20": 0.05}


def test_a_row_keeps_its_label_only_without_training_changes():
    assert paper.row_config("t6-at-fr", ["--device=cpu", "--num_workers=4", "--lr=0.1", "--out_dir=x"]).paper_row \
        == "t6-at-fr"  # where it runs, and a value equal to the row's, change nothing
    cfg = paper.row_config("Table 6: AT + FR", ["--dataset=fashion_mnist", "--model=small_cnn", "--epochs=2",
                                                "--fr_start_epoch=0", "--out_dir=x"])
    assert cfg.paper_row == "modified from t6-at-fr: dataset=fashion_mnist, epochs=2, fr_start_epoch=0, model=small_cnn"
    assert paper.parse_row_label(cfg.paper_row) == ("t6-at-fr", True)
    assert paper.parse_row_label("t6-at-fr") == ("t6-at-fr", False)
    assert paper.row_config("t6-at-fr", ["--amp=bf16", "--out_dir=x"]).paper_row == "modified from t6-at-fr: amp=bf16"
    assert paper.row_config("t6-at", ["--lr_milestones=[10, 20]", "--out_dir=x"]).paper_row \
        == "modified from t6-at: lr_milestones=[10, 20]"


def test_docs_presets_md_is_up_to_date():
    assert DOCS.read_text() == paper.presets_markdown(), \
        "docs/presets.md is stale: python -m fr_fast.config.paper --write docs/presets.md"
    text = DOCS.read_text()
    assert all(f"`{r.id}`" in text for r in ROWS)


def test_train_cli_paper_print_config(capsys):
    assert train_main(["--paper", "Table 8: MART + FR/WA", "--print-config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    expected = config_to_dict(paper.row_config("t8-mart-frwa"))
    assert Path(shown.pop("out_dir")).parent == Path(expected.pop("out_dir")).parent  # runs/<row id>/<UTC time>
    assert shown == expected
    assert (shown["wa_role"], shown["attack_mode"], shown["paper_row"]) == ("teacher", "eval", "t8-mart-frwa")


def test_train_cli_errors_are_one_line(capsys):
    assert train_main(["--paper", "Table 9: AT", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "no paper row" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert train_main(["mnist_cnn_at_fr", "--epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "fr_start_epoch" in err and "Traceback" not in err


def test_paper_row_is_not_a_training_change_on_resume():
    import dataclasses

    from fr_fast.training.resume import resume_changes

    cfg = paper.row_config("t6-at-fr")
    assert resume_changes(config_to_dict(cfg), dataclasses.replace(cfg, paper_row=None)) == {}
    assert "lam" in resume_changes(config_to_dict(cfg), dataclasses.replace(cfg, lam=0.2))


def test_paper_rows_and_gpu_presets_train_in_float32():
    from fr_fast.config.paper import load_paper, row_config
    for row in load_paper()[1]:
        assert row_config(row.id, ["--out_dir=/tmp/unused"]).amp == "off", row.id
    for preset in sorted(CONFIG_DIRS[0].glob("*.yaml")):
        if preset.name == "paper.yaml" or preset.name.startswith(("mnist", "fashion_mnist")):
            continue
        assert load_config(preset, ["--out_dir=/tmp/unused"]).amp == "off", preset.name
    assert row_config("t6-at-fr", ["--amp=bf16", "--out_dir=/tmp/unused"]).amp == "bf16"  # the speed switch
