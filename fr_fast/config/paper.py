"""The paper's tables as runnable rows: ``configs/paper.yaml`` read, resolved and rendered.

Each row names the table, the row label, the profiles it composes (``dataset/…``, ``model/…``,
``method/…``), the fields it sets on top and the published numbers. :func:`row_config` turns a row into a
:class:`~fr_fast.config.train_config.TrainConfig` (``fr-fast train --paper "Table 7: TRADES + FR"``),
:func:`published_for_eval` gives the numbers ``fr-fast eval`` prints beside its own, and
:func:`presets_markdown` renders docs/presets.md (``python -m fr_fast.config.paper --write docs/presets.md``).
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fr_fast.config.fields import config_from_dict, load_yaml, parse_overrides
from fr_fast.config.train_config import CONFIG_DIRS, RUN_CONTROL_FIELDS, TrainConfig, compose, config_to_dict
from fr_fast.runs.runfolder import run_dir

PAPER_FILE = "paper.yaml"
EVAL_COLUMNS = ("clean", "pgd20", "pgd50", "cw", "aa")  # the attack names of fr_fast.robustness.evaluate
_COLUMN_TITLES = {"clean": "Clean", "pgd20": "PGD-20", "pgd50": "PGD-50", "cw": "C&W", "aa": "AA"}


@dataclass(frozen=True)
class PaperRow:
    """One row of a paper table: how to train it and what the paper reports."""

    id: str
    table: int | None
    row: str
    compose: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)  # the row's "set:" fields
    paper: dict[str, Any] = field(default_factory=dict)
    note: str | None = None
    figure: int | None = None  # a figure's run (Fig. 6 ablations) instead of a table row
    branch: dict[str, Any] | None = None  # {row, epoch}: the trunk checkpoint the paper continues from

    @property
    def title(self) -> str:
        """"Table 7: TRADES + FR" (or "Figure 6: lambda 0.5"): the name ``--paper`` accepts besides the id."""
        return f"Table {self.table}: {self.row}" if self.figure is None else f"Figure {self.figure}: {self.row}"


def paper_file() -> Path:
    """Path of configs/paper.yaml (source checkout or the copy inside the package)."""
    for folder in CONFIG_DIRS:
        if (folder / PAPER_FILE).is_file():
            return folder / PAPER_FILE
    raise FileNotFoundError(f"{PAPER_FILE} not found in {', '.join(map(str, CONFIG_DIRS)) or 'any configs folder'}")


def _raw(path: str | Path | None) -> dict[str, Any]:
    path = Path(path) if path is not None else paper_file()
    return _parse(str(path.resolve()), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _parse(path: str, _mtime_ns: int) -> dict[str, Any]:
    return load_yaml(Path(path).read_text(encoding="utf-8"))


def deviations(path: str | Path | None = None) -> list[str]:
    """paper.yaml's list of the choices where the rows differ from the text or the authors' code."""
    return [str(d) for d in _raw(path).get("deviations", [])]


def load_paper(path: str | Path | None = None) -> tuple[dict[int, str], list[PaperRow]]:
    """(table titles, rows) of paper.yaml."""
    raw = _raw(path)
    tables = {int(k): str(v) for k, v in raw["tables"].items()}
    rows = [PaperRow(id=r["id"], table=int(r["table"]) if "table" in r else None, row=r["row"],
                     compose=tuple(r["compose"]), settings=dict(r.get("set") or {}), paper=dict(r.get("paper") or {}),
                     note=r.get("note"), figure=r.get("figure"), branch=r.get("branch_from"))
            for r in raw["rows"]]
    return tables, rows


def figures(path: str | Path | None = None) -> dict[int, str]:
    """paper.yaml's figure titles (figures whose runs are rows too: Fig. 6's ablations)."""
    return {int(k): str(v) for k, v in (_raw(path).get("figures") or {}).items()}


def _key(text: str) -> str:
    return re.sub(r"\s+", "", text).lower()


def find_row(query: str, rows: list[PaperRow] | None = None) -> PaperRow:
    """The row whose id or "Table N: label" matches ``query`` (case and spaces ignored)."""
    rows = load_paper()[1] if rows is None else rows
    wanted = _key(query)
    for row in rows:
        if wanted in (_key(row.id), _key(row.title)):
            return row
    close = difflib.get_close_matches(query, [r.title for r in rows] + [r.id for r in rows], n=3, cutoff=0.5)
    hint = f"; did you mean {' | '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"no paper row {query!r} in {PAPER_FILE} (docs/presets.md lists them){hint}")


def row_values(row: PaperRow) -> dict[str, Any]:
    """The raw config mapping of a row: its profiles, its fields and ``paper_row``."""
    folder = paper_file().parent
    values = compose({"base": list(row.compose), **row.settings}, folder, f"{PAPER_FILE} row {row.id!r}")
    values["paper_row"] = row.id
    return values


def row_config(query: str, overrides: list[str] | None = None) -> TrainConfig:
    """The TrainConfig of a paper row (id or "Table N: label") with ``--key=value`` overrides on top.

    ``paper_row`` is the row id while no override changes a field that shapes the training (everything but
    ``RUN_CONTROL_FIELDS``); otherwise "modified from <id>: field=value, …" (:func:`row_label`).
    """
    row = find_row(query)
    values = row_values(row)
    values.update(parse_overrides(list(overrides or []), TrainConfig))
    if values.get("out_dir") is None:  # runs/<row id>/<UTC time>, as presets name theirs
        values["out_dir"] = run_dir(row.id, values.get("resume"))
    where = f"{PAPER_FILE} row {row.id!r}"
    cfg = config_from_dict(values, TrainConfig, where=where)
    published = config_from_dict({**row_values(row), "out_dir": cfg.out_dir}, TrainConfig, where=where)
    changed = {name: value for name, value in config_to_dict(cfg).items()
               if name not in RUN_CONTROL_FIELDS and getattr(published, name) != value}
    return dataclasses.replace(cfg, paper_row=row_label(row.id, changed))


_MODIFIED = re.compile(r"^modified from ([^:\s]+): (.+)$")


def row_label(row_id: str, changed: dict[str, Any]) -> str:
    """``paper_row`` of a run of ``row_id``: the id, or "modified from <id>: a=1, b=x" (sorted by field)."""
    if not changed:
        return row_id
    return f"modified from {row_id}: " + ", ".join(f"{k}={_show(v)}" for k, v in sorted(changed.items()))


def parse_row_label(label: str) -> tuple[str, bool]:
    """(row id, modified?) of a ``paper_row`` value written by :func:`row_label`."""
    match = _MODIFIED.match(label)
    return (match.group(1), True) if match else (label, False)


def _show(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def published_for_eval(row_id: str, cfg: dict[str, Any] | None = None) -> dict[str, float]:
    """The paper's numbers of ``row_id`` keyed by evaluate's attack names (clean, pgd20, …).

    Table 1 rows also give ``lpf<k>``: the accuracy on inputs low-pass filtered to bandwidth k (what
    ``fr-fast eval`` measures for them), and "clean" is the unfiltered column. An L-model trained with the
    filter inside the model (``low_pass_in: model``) sees LowPass(x) for every input, so its "clean" is
    compared with the column of its training bandwidth instead.
    """
    row = find_row(row_id)
    if "lpf" not in row.paper:
        return {k: float(row.paper[k]) for k in EVAL_COLUMNS if k in row.paper}
    lpf = {int(k): float(v) for k, v in row.paper["lpf"].items()}
    cfg = cfg or {}
    in_model = cfg.get("low_pass_in") == "model" and cfg.get("low_pass_bandwidth")
    band = cfg["low_pass_bandwidth"] if in_model else max(lpf)
    out = {"pgd20": float(row.paper["pgd20"])}
    if band in lpf:
        out["clean"] = lpf[band]
    if not in_model:
        out.update({f"lpf{k}": v for k, v in lpf.items()})
    return out


def table1_bandwidths(row_id: str) -> list[int]:
    """The low-pass bandwidths of a Table 1 row (empty for the other tables)."""
    return sorted(int(k) for k in find_row(row_id).paper.get("lpf", {}))


def comparison_table(report: dict[str, Any], label: str, cfg: dict[str, Any] | None = None) -> str:
    """The measured accuracies of an evaluation ``report`` beside the paper's numbers for the run's ``paper_row``
    ``label`` (a row id, or "modified from <id>: …").

    ``report["lpf"]`` ({bandwidth: accuracy %}, Table 1) is compared as rows ``lpf<k>``. A modified run is
    not the row: the published numbers are printed under its "modified from" heading, for reference, with
    no difference column.
    """
    row_id, modified = parse_row_label(label)
    row = find_row(row_id)
    published = published_for_eval(row_id, cfg)
    measured = {name: result["accuracy"] for name, result in report["attacks"].items()}
    measured.update({f"lpf{k}": v for k, v in (report.get("lpf") or {}).items()})
    if modified:
        return "\n".join([label, f"published numbers of {row.title}, a different configuration (not comparable): "
                          + ", ".join(f"{k} {_fmt(v)}" for k, v in published.items())])
    lines = [f"paper: {row.title} ({row.id})", f"{'attack':<8} {'measured':>9} {'paper':>7} {'diff':>7}"]
    for name, ours in measured.items():
        theirs = published.get(name)
        diff = f"{ours - theirs:+7.2f}" if theirs is not None else f"{'-':>7}"
        lines.append(f"{name:<8} {ours:>9.2f} {_fmt(theirs) if theirs is not None else '-':>7} {diff}")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else str(value)


def presets_markdown(path: str | Path | None = None) -> str:
    """docs/presets.md: every row of paper.yaml with its composition and published numbers."""
    tables, rows = load_paper(path)
    out = ["# Paper presets", "",
           "Generated from `configs/paper.yaml` by `python -m fr_fast.config.paper --write docs/presets.md`; do not edit.",
           "Train a row with `fr-fast train --paper ID` (or `--paper \"Table N: row\"`); any `--key=value` overrides it.",
           "Profiles live in `configs/dataset/`, `configs/model/` and `configs/method/`; the dataset profiles carry",
           "the paper's recipe (FR in the authors' `fft: 2d` form, training attacks in eval mode, float32, WA as FR's teacher).",
           ""]
    for number, title in tables.items():
        members = [r for r in rows if r.table == number]
        out += [f"## Table {number}", "", title + ".", ""]
        if number == 1:
            bands = sorted({int(b) for r in members for b in r.paper["lpf"]})
            out += ["| id | row | composition | LPF accuracy by bandwidth k | PGD-20 |", "|---|---|---|---|---:|"]
            for r in members:
                lpf = ", ".join(f"{k}: {_fmt(v)}" for k, v in r.paper["lpf"].items())
                out.append(f"| `{r.id}` | {r.row} | {_composition(r)} | {lpf} | {_fmt(r.paper['pgd20'])} |")
            out.append("")
            out.append(f"Bandwidths: {', '.join(map(str, bands))} (32 or 64 = unfiltered).")
        else:
            cols = [c for c in EVAL_COLUMNS if any(c in r.paper for r in members)]
            out += ["| id | row | composition | " + " | ".join(_COLUMN_TITLES[c] for c in cols) + " |",
                    "|---|---|---|" + "---:|" * len(cols)]
            for r in members:
                out.append(f"| `{r.id}` | {r.row} | {_composition(r)} | "
                           + " | ".join(_fmt(r.paper.get(c, "")) for c in cols) + " |")
        notes = [r for r in members if r.note]
        if notes:
            out += [""] + [f"- `{r.id}`: {r.note}" for r in notes]
        out.append("")
    for number, title in figures(path).items():
        members = [r for r in rows if r.figure == number]
        out += [f"## Figure {number}", "", title + ".", "", "| id | run | composition | branches from |",
                "|---|---|---|---|"]
        for r in members:
            origin = f"`{r.branch['row']}` after {r.branch['epoch']} epochs" if r.branch else ""
            out.append(f"| `{r.id}` | {r.row} | {_composition(r)} | {origin} |")
        notes = [r for r in members if r.note]
        out += ([""] + [f"- `{r.id}`: {r.note}" for r in notes] if notes else []) + [""]
    out += ["## Deviations and readings", ""] + [f"- {d}" for d in deviations(path)] + [""]
    return "\n".join(out)


def _composition(row: PaperRow) -> str:
    parts = [p.split("/", 1)[-1] for p in row.compose]
    parts += [f"{k}={v}" for k, v in row.settings.items()]
    return " + ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """``python -m fr_fast.config.paper [--write FILE]``: print (or write) docs/presets.md."""
    parser = argparse.ArgumentParser(prog="python -m fr_fast.config.paper", description=main.__doc__)
    parser.add_argument("--write", default=None, help="write the markdown here instead of printing it")
    args = parser.parse_args(argv)
    text = presets_markdown()
    if args.write:
        Path(args.write).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
