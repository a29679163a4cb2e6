"""`fr-fast analyze CHECKPOINT [CHECKPOINT ...] --out DIR`: the paper's Fourier-domain analyses.

Writes, for all checkpoints together (several models on one figure where it makes sense):

* ``lpf`` -> ``filtered_accuracy.{png,csv,json}`` and ``summary.md``: accuracy on low/high-pass
  filtered test images per bandwidth (paper Table 1).
* ``spectrum`` -> ``perturbation_spectrum.{png,json}`` (mean |FFT| of PGD perturbations, Fig. 2)
  and ``perturbation_examples.{png,json}`` (per-image spectra, A.4; the json also holds the images and
  perturbations, so that :func:`fr_fast.spectral.plots.replot` can redraw every figure from the folder).
* ``bands`` -> ``band_accuracy.{png,json,csv}``: robust accuracy with low/high-pass filtered
  perturbations and clean accuracy of low-pass inputs (Fig. 3).
* ``heatmap`` -> ``fourier_heatmap.{png,json}``: Fourier heat maps (Fig. 4, Yin et al. 2019).
* ``panel`` -> ``panel_<model>.png``: image, its LPF/HPF parts, the perturbation and its spectrum
  (Fig. 1 style).

The attack is PGD-``--steps`` (default 20) with the checkpoint's eps and step eps/4, run once per
model and image and shared by the ``spectrum``, ``bands`` and ``panel`` analyses.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from fr_fast._optional import require
from fr_fast.config.fields import check_ranges, knob
from fr_fast.data import load_dataset
from fr_fast.robustness import attacks
from fr_fast.runs import runinfo
from fr_fast.runs.checkpoint import checkpoint_data_dir, load_model
from fr_fast.runs.runfolder import check_dir_creatable, ensure_writable_dir
from fr_fast.spectral import analyses as sp
from fr_fast.spectral import plots
from fr_fast.spectral.fourier import HPF_DEFINITIONS
from fr_fast.utils.checks import check_device
from fr_fast.utils.files import write_text
from fr_fast.utils.progress import Progress

ANALYSES = ("lpf", "spectrum", "bands", "heatmap", "panel")


def default_bandwidths(size: int) -> list[int]:
    """Bandwidths swept for ``size x size`` images: 4, 8, ..., 32 up to 32 px (paper), size/8 steps above."""
    step = 4 if size <= 32 else max(1, size // 8)
    bws = list(range(step, size + 1, step))
    return bws if bws and bws[-1] == size else bws + [size]


class _MemoAttack:
    """PGD whose result is remembered per input batch, so the analyses of one model share one attack."""

    def __init__(self, eps: float, alpha: float, steps: int):
        self.eps, self.alpha, self.steps = eps, alpha, steps
        self._cache: dict[str, Tensor] = {}

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        key = hashlib.sha1(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        if key not in self._cache:
            self._cache[key] = attacks.pgd(model, x, y, eps=self.eps, alpha=self.alpha, steps=self.steps).detach()
        return self._cache[key]


def _model_names(paths: list[str], names: list[str] | None) -> list[str]:
    if names:
        if len(names) != len(paths):
            raise ValueError(f"--names gives {len(names)} names for {len(paths)} checkpoints")
        return names
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    # e.g. runs/at/last.pt and runs/at_fr/last.pt: name them by their run folder
    return [f"{Path(p).parent.name}/{Path(p).stem}" for p in paths]


def _parse_what(text: str) -> list[str]:
    what = [w.strip() for w in text.split(",") if w.strip()]
    bad = [w for w in what if w not in ANALYSES]
    if bad or not what:
        raise ValueError(f"--what must be a comma-separated subset of {','.join(ANALYSES)}, got {text!r}")
    return what


@dataclass
class AnalyzeOptions:
    """The options of ``fr-fast analyze`` (one ``--name`` each; help generated from these fields)."""

    out: Union[str, None] = knob(None, "results folder (created; required)")
    what: str = knob(",".join(ANALYSES), "comma-separated subset of the analyses")
    names: Union[list[str], None] = knob(None, "display names, one per checkpoint (null: from the file names)")
    n_images: int = knob(1000, "test images for lpf/spectrum/bands (paper: 2000)")
    heatmap_images: int = knob(200, "test images for the Fourier heat map")
    heatmap_norm: float = knob(4.0, "L2 norm v of the Fourier basis noise")
    bandwidths: Union[list[int], None] = knob(None, "bandwidths to sweep (null: 4, 8, ..., image size)")
    panel_bandwidth: int = knob(8, "LPF/HPF bandwidth of the panel figure")
    hpf: str = knob("paper", "high-pass definition: paper (sec. 3: keep the k x k centre of the unshifted "
                    "spectrum, the highest frequencies; Fig. 3) | complement (identity - LPF)")
    panel_images: int = knob(4, "images in the panel figure")
    eps: Union[float, None] = knob(None, "L-inf radius of the attack (null: the checkpoint's eps)")
    steps: int = knob(20, "PGD steps (paper: 20)")
    batch_size: int = knob(250, "batch size")
    data_dir: Union[str, None] = knob(None, "data set folder (null: the checkpoint's data_dir)")
    device: Union[str, None] = knob(None, "cpu | cuda | cuda:N (null: cuda if available, else cpu)")
    seed: int = knob(0, "seed of the test-image subset and heat-map signs")
    progress: bool = knob(True, "progress display (bars on a terminal, plain periodic lines otherwise)")

    def __post_init__(self) -> None:
        check_ranges(self, ANALYZE_RANGES)


# Valid values of the numeric options (as TrainConfig's RANGES; None, where allowed, always passes).
ANALYZE_RANGES = {"n_images": "[1, inf)", "heatmap_images": "[1, inf)", "heatmap_norm": "(0, inf)",
                  "bandwidths": "[1, inf)", "panel_bandwidth": "[1, inf)", "panel_images": "[1, inf)",
                  "eps": "[0, 1]", "steps": "[1, inf)", "batch_size": "[1, inf)", "seed": "[0, 4294967295]"}


def _load_test(cfg: dict, data_dir: str | None, n: int, seed: int):
    ds = load_dataset(cfg["dataset"], "test", checkpoint_data_dir(cfg, data_dir, "fr-fast analyze"),
                      pad_to=cfg.get("pad_to"))
    if len(ds) == 0:
        raise ValueError(f"the {cfg['dataset']} test set is empty")
    # a seeded random subset: test files may be sorted by class
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[: min(n, len(ds))]
    return Subset(ds, idx.tolist())


def _stack(ds, n: int) -> tuple[Tensor, Tensor]:
    xs, ys = zip(*(ds[i] for i in range(min(n, len(ds)))))
    return torch.stack(xs), torch.as_tensor(ys)


def analyze(checkpoints: list[str], args: AnalyzeOptions) -> dict[str, Any]:
    """Run the analyses ``args.what`` on each checkpoint, write figures, tables and summary.md to ``args.out``;
    returns {"meta", "low_pass", "high_pass", "bands", "spectra", "heatmaps", "written"} (written: the files)."""
    if not args.out:
        raise ValueError("--out is required: the folder for the figures and tables")
    if args.hpf not in HPF_DEFINITIONS:
        raise ValueError(f"--hpf must be one of {', '.join(HPF_DEFINITIONS)}, got {args.hpf!r}")
    check_dir_creatable(args.out, "--out folder")  # first, without making it: a failed check leaves nothing
    require("matplotlib", "fr-fast analyze (its figures)")  # before minutes of analysis, not after
    what = _parse_what(args.what)
    device = check_device(args.device)
    for path in checkpoints:
        if os.path.isdir(path):
            raise IsADirectoryError(f"checkpoint {path!r} is a folder; give a checkpoint file in it, e.g. "
                                    f"{os.path.join(path, 'best.pt')!r}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {path!r} not found")
    names = _model_names(checkpoints, args.names)
    out = ensure_writable_dir(args.out, "--out folder")  # before any computation, after the argument checks
    environment = runinfo.describe(device)  # the analyses run in float32, contiguous, eager
    print(runinfo.banner("analyze", environment), flush=True)
    n_eval = max(args.n_images, args.heatmap_images, args.panel_images)
    show = args.progress
    # one stage = one analysis of one model; "spectrum" and "panel" share a stage
    per_model = len([w for w in what if w != "panel"]) + ("panel" in what and "spectrum" not in what)
    stages = Progress(per_model * len(names), "analyze", "stage", enabled=show)

    low, high, spectra, examples, bands, heatmaps, meta = {}, {}, {}, {}, {}, {}, {}
    for name, path in zip(names, checkpoints):
        model, cfg = load_model(path, device=device)
        model.eval()
        test = _load_test(cfg, args.data_dir, n_eval, args.seed)
        x0, _ = test[0]
        size = min(x0.shape[-2:])
        bws = args.bandwidths or default_bandwidths(size)
        if any(b < 1 or b > size for b in bws):
            raise ValueError(f"--bandwidths must lie in [1, {size}] for {name} ({tuple(x0.shape)} images), got {bws}")
        eps = float(args.eps if args.eps is not None else cfg["eps"])
        attack = _MemoAttack(eps, eps / 4, args.steps)
        loader = DataLoader(Subset(test, range(min(args.n_images, len(test)))), batch_size=args.batch_size)
        meta[name] = {"checkpoint": str(path), "dataset": cfg["dataset"], "model": cfg.get("model"),
                      "eps": eps, "pgd_steps": args.steps, "pgd_alpha": eps / 4, "bandwidths": bws, "hpf": args.hpf,
                      "n_images": min(args.n_images, len(test)), "runtime": environment}

        if "lpf" in what:
            stages.set_description(f"analyze {name}: lpf")
            low[name] = sp.filtered_accuracy(model, loader, bws, "low", progress=show)
            high[name] = sp.filtered_accuracy(model, loader, bws, "high", progress=show, hpf=args.hpf)
            stages.update(1)
        if "bands" in what:
            stages.set_description(f"analyze {name}: bands")
            bands[name] = sp.perturbation_band_accuracy(model, loader, eps, bws, attack=attack, progress=show,
                                                        hpf=args.hpf)
            stages.update(1)
        if "spectrum" in what or "panel" in what:
            stages.set_description(f"analyze {name}: spectrum")
            res = sp.perturbation_spectrum(model, loader, eps, None, attack=attack,
                                           n_examples=args.panel_images, progress=show)
            spectra[name] = res.mean
            examples[name] = res
            stages.update(1)
        if "heatmap" in what:
            stages.set_description(f"analyze {name}: heatmap")
            hx, hy = _stack(test, args.heatmap_images)
            g = torch.Generator().manual_seed(args.seed)
            heatmaps[name] = sp.fourier_heatmap(model, hx, hy, args.heatmap_norm, generator=g,
                                                batch_size=None, progress=show)
            meta[name].update(heatmap_images=len(hy), heatmap_norm=args.heatmap_norm)
            stages.update(1)
    stages.set_description("analyze")
    stages.close()

    written = []
    if low:
        written.append(plots.plot_filtered_accuracy(low, out / "filtered_accuracy.png", high=high))
        rows = {f"{n} LPF": r for n, r in low.items()} | {f"{n} HPF": r for n, r in high.items()}
        plots.save_accuracy_csv(rows, out / "filtered_accuracy.csv")
        plots.save_json({"low_pass": low, "high_pass": high}, out / "filtered_accuracy.json")
    if bands:
        written.append(plots.plot_band_accuracy(bands, out / "band_accuracy.png"))
        plots.save_json(bands, out / "band_accuracy.json")
        rows = {f"{n} {key}": r[key] for n, r in bands.items() for key in ("lpf_input", "lpf_delta", "hpf_delta")}
        plots.save_accuracy_csv(rows, out / "band_accuracy.csv")
    if "spectrum" in what and spectra:
        written.append(plots.plot_spectra(spectra, out / "perturbation_spectrum.png"))
        plots.save_json(spectra, out / "perturbation_spectrum.json")
        written.append(plots.plot_spectrum_examples({n: list(r.spectra) for n, r in examples.items()},
                                                    out / "perturbation_examples.png"))
    if heatmaps:
        written.append(plots.plot_fourier_heatmaps(heatmaps, out / "fourier_heatmap.png",
                                                   title=plots.heatmap_title(args.heatmap_norm)))
        plots.save_json(heatmaps, out / "fourier_heatmap.json")
    if examples:  # the examples' images, perturbations and spectra: what replot needs to redraw both figures
        plots.save_json({n: {"x": r.x, "delta": r.delta, "spectra": r.spectra} for n, r in examples.items()},
                        out / "perturbation_examples.json")
    if "panel" in what:
        for name, r in examples.items():
            bw = min(args.panel_bandwidth, min(r.x.shape[-2:]))
            meta[name]["panel_bandwidth"] = bw
            written.append(plots.plot_panel(r.x, r.delta, bw, out / f"panel_{plots.slug(name)}.png",
                                            title=plots.panel_title(name, meta[name])))
    plots.save_json(meta, out / "meta.json")
    _write_summary(out / "summary.md", meta, low, high, bands)
    written.append(out / "summary.md")
    return {"meta": meta, "low_pass": low, "high_pass": high, "bands": bands, "spectra": spectra,
            "heatmaps": heatmaps, "written": written}


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _write_summary(path: Path, meta: dict, low: dict, high: dict, bands: dict) -> None:
    lines = ["# fr-fast analyze summary", ""]
    for name, m in meta.items():
        lines.append(f"- **{name}**: {m['dataset']} / {m['model']}, eps={m['eps']:.4g}, "
                     f"PGD-{m['pgd_steps']}, {m['n_images']} test images ({m['checkpoint']})")
    if meta:
        lines += ["", "Produced with: " + runinfo.banner("analyze", next(iter(meta.values()))["runtime"])]
    fmt = lambda v: f"{100 * v:.1f}"  # noqa: E731
    for title, results in (("Accuracy (%) on low-pass filtered inputs", low),
                           ("Accuracy (%) on high-pass filtered inputs", high)):
        if results:
            bws = sorted({k for r in results.values() for k in r})
            lines += ["", f"## {title}", ""]
            lines += _md_table(["model", *map(str, bws)],
                               [[n, *(fmt(r[k]) if k in r else "" for k in bws)] for n, r in results.items()])
    if bands:
        lines += ["", "## Perturbation bands (%): clean / PGD accuracy, then per bandwidth", ""]
        for n, r in bands.items():
            bws = r["bandwidths"]
            lines += [f"**{n}**: clean {fmt(r['clean'])}, PGD {fmt(r['robust'])}", ""]
            lines += _md_table(["series", *map(str, bws)],
                               [[key, *(fmt(r[key][k]) for k in bws)] for key in ("lpf_input", "lpf_delta", "hpf_delta")])
            lines.append("")
    write_text(path, "\n".join(lines) + "\n")

