"""experiments/reproduce_gpu.py: one trunk forked into AT / AT+FR / AT+FR/WA, every schedule lets FR switch on."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from fr_fast.config.train_config import load_config

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def _script():
    import sys
    sys.path.insert(0, str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location("reproduce_gpu", EXPERIMENTS / "reproduce_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("epochs", range(2, 60))
def test_every_sized_schedule_switches_fr_and_wa_on(epochs):
    script = _script()
    trunk, milestones = script.schedule(epochs)
    assert 1 <= trunk < epochs and milestones[0] == trunk
    args = script.parse(["--dry-run", "--out", "unused"])
    for method in script.METHODS:  # the old sizing (milestone at the last epoch) refused at_fr / at_frwa at 2 epochs
        cfg = load_config(script.PRESET, script.overrides(method, 0, args, epochs, Path("unused"),
                                                          branch_from=Path("trunk/last.pt")))
        assert cfg.fr == "none" or cfg.resolved_fr_start() == trunk
        assert not cfg.uses_wa or cfg.resolved_wa_start() == trunk


def test_size_epochs_fits_the_budget():
    script = _script()
    args = script.parse(["--out", "unused", "--n-test", "10000", "--n-aa", "1000"])
    probes = [{"images_per_s": 1500.0, "startup_s": 12.0} for _ in range(3)]  # 4.5 k img/s summed
    epochs, plan = script.size_epochs(probes, args, 330.0)
    trunk = script.schedule(epochs)[0]
    used = trunk * plan["trunk_epoch_s"] + (epochs - trunk) * plan["fork_epoch_s"]
    assert plan["fits"] and used <= 0.85 * (330 - 2 * plan["startup_s"] - plan["evaluation_s"])
    more = script.schedule(epochs + 1)[0]
    assert more * plan["trunk_epoch_s"] + (epochs + 1 - more) * plan["fork_epoch_s"] > used


def test_dry_run_forks_three_methods_from_one_trunk(tmp_path):
    script = _script()
    out = tmp_path / "out"
    result = script.main(["--dry-run", "--in-process", "--fixed-epochs", "2", "--out", str(out),
                          "--override=--fake_data=40"])
    saved = json.loads((out / "gpu_fmnist.json").read_text())
    assert saved["device"] == "CPU (dry run)" and saved == json.loads(json.dumps(result))
    assert sorted(r["method"] for r in saved["runs"]) == ["at", "at_fr", "at_frwa"]
    for run in saved["runs"]:
        assert (run["seed"], run["epochs"], run["aa_n"]) == (0, 2, 8)
        assert all(0.0 <= run[k] <= 100.0 for k in ("clean", "pgd20", "cw", "aa"))
    records = {r["method"]: r for r in map(json.loads, map(Path.read_text, (out / "runs").glob("*_seed0.json")))
               if r["role"] == "fork"}
    # one trunk: the forks' first epoch is the same epoch; FR changes the second
    assert len({records[m]["history"][0]["train_loss"] for m in records}) == 1
    assert records["at"]["history"][1]["train_loss"] != records["at_fr"]["history"][1]["train_loss"]
    assert [h["fr"] for h in records["at_frwa"]["history"]] == [False, True]
    assert (out / "table.md").read_text().count("| at") == 3 and (out / "curves.png").stat().st_size > 0
