"""The outputs of experiments/reproduce_gpu.py, rebuilt from its per-run records at any moment.

``OUT/runs/<method>_seed<s>.json`` (one per fork, written by its worker as soon as it exists) and
``OUT/meta.json`` (the driver's plan) -> ``gpu_fmnist.json`` (``device`` and ``runs``: method, seed, epochs,
clean, pgd20, cw, aa, aa_n; accuracies in percent, None where a run was cut off before that evaluation),
``table.md`` and, on request, ``curves.png``. Files are replaced atomically: several workers write them.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

COLUMNS = ("clean", "pgd20", "cw", "aa")


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as JSON through a temporary file and a rename (readers never see half a file)."""
    write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the results from other users of the folder
    os.replace(tmp, path)


def meta_of(out: Path) -> dict:
    path = out / "meta.json"
    return json.loads(path.read_text()) if path.exists() else {"device": "?"}


def records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json")) if p.name[0] != "."]


def runs_table(recs: list[dict]) -> list[dict]:
    """The ``runs`` list of gpu_fmnist.json: one entry per fork."""
    rows = []
    for r in recs:
        if r.get("role") != "fork":
            continue
        acc = r.get("accuracy", {})
        rows.append({"method": r["method"], "seed": r["seed"], "epochs": r["epochs"],
                     **{c: acc.get(c) for c in COLUMNS}, "aa_n": r.get("aa_n"),
                     "trunk_epochs": r.get("trunk_epochs"), "best_epoch": r.get("best_epoch"),
                     "images_per_s": r.get("images_per_s"), "train_s": r.get("train_s")})
    return rows


def _cell(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"  # cut off before this evaluation
    return f"{values[0]:.2f}" if len(values) == 1 else f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table_markdown(meta: dict, rows: list[dict]) -> str:
    by_method: dict[str, list[dict]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    lines = [f"{meta.get('device')}; {meta.get('model')}, batch {meta.get('batch_size')}"
             f"{' (CUDA graph)' if meta.get('cuda_graph') else ''}; one AT trunk of {meta.get('trunk_epochs')} epochs "
             f"forked at the first lr decay, {meta.get('epochs')} epochs in all (lr milestones "
             f"{meta.get('lr_milestones')}); test: clean, PGD-20, CW∞ on {meta.get('n_test')} images, AutoAttack "
             f"'{meta.get('aa_version')}' on the first {meta.get('n_aa')}; accuracy in %, mean ± std over seeds.", "",
             "| method | seeds | clean | PGD-20 | CW∞ | AA | best epoch | img/s per fork | fork train s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method, runs in by_method.items():
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(_cell([r[c] for r in runs]) for c in COLUMNS)
                     + f" | {','.join(str(r['best_epoch']) for r in runs)} | "
                     f"{statistics.mean(r['images_per_s'] or 0 for r in runs):.0f} | "
                     f"{statistics.mean(r['train_s'] or 0 for r in runs):.0f} |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, meta: dict, curves: bool = False) -> dict:
    """gpu_fmnist.json and table.md (and curves.png) from the records so far; returns gpu_fmnist.json's dict."""
    recs = records(out)
    rows = runs_table(recs)
    result = {"device": meta.get("device"), "runs": rows,
              "setting": {k: v for k, v in meta.items() if k not in ("device", "plan")}, "plan": meta.get("plan")}
    write_json(out / "gpu_fmnist.json", result)
    write_text(out / "table.md", table_markdown(meta, rows))
    if curves:
        plot_curves([r for r in recs if r.get("role") == "fork"], out / "curves.png", meta.get("trunk_epochs"))
    return result


def plot_curves(recs: list[dict], path: Path, trunk_epochs: int | None) -> None:
    """Validation clean and PGD-20 accuracy per epoch of every fork (the shared trunk epochs included)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no curves.png", flush=True)
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    for r in recs:
        epochs = [h["epoch"] for h in r["history"] if "val_pgd" in h]
        for ax, key in zip(axes, ("val_clean", "val_pgd")):
            ax.plot(epochs, [h[key] for h in r["history"] if key in h], marker=".", label=f"{r['method']} s{r['seed']}")
    for ax, title in zip(axes, ("validation clean accuracy (%)", "validation PGD-20 accuracy (%)")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if trunk_epochs:
            ax.axvline(trunk_epochs + 0.5, color="grey", ls=":", lw=1)
    if recs:
        axes[1].legend(fontsize=7, title="fork (dotted: first lr decay)", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
